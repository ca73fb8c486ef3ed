//! What ElastiCache offers and what it can change in place, read before anything
//! changes: the engine versions and their parameter group families, and whether the
//! running replication group can become what stack.yaml says (engine, cluster mode,
//! encryption, version, node type).

use anyhow::{Result, bail};
use aws_sdk_elasticache::types::ReplicationGroup;

use super::modify::refuse_downgrade;
use super::{cluster_mode, describe_group};
use crate::aws::Call;
use crate::stack::Stack;

/// An engine version ElastiCache offers, and the family of parameter groups it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineVersion {
    pub version: String,
    pub family: String,
}

/// The engine version a group of the spec's engine gets for `version` (ElastiCache's
/// default when `None`; `6.x` is the newest 6 it offers), as ElastiCache itself names it
/// (DescribeCacheEngineVersions): the default moves as engines are released, and a
/// parameter group of another family is refused ("InvalidParameterCombination: Expected
/// a parameter group of family redis7 but found one of family redis6.x" the day Redis 7
/// became the default, hashicorp/terraform-provider-aws#27748). A version ElastiCache
/// does not offer is an error that lists those it does.
pub async fn engine_version(stack: &Stack, version: Option<&str>) -> Result<EngineVersion> {
    let engine = &stack.spec.redis.engine;
    let offered: Vec<EngineVersion> = stack
        .clients
        .elasticache
        .describe_cache_engine_versions()
        .engine(engine)
        .default_only(version.is_none())
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .call(format!("DescribeCacheEngineVersions {engine}"))?
        .iter()
        .filter_map(|offered| {
            Some(EngineVersion {
                version: offered.engine_version()?.to_owned(),
                family: offered.cache_parameter_group_family()?.to_owned(),
            })
        })
        .collect();
    let chosen = match version {
        None => offered.last(),
        Some(version) => match version.strip_suffix(".x") {
            Some(major) => offered
                .iter()
                .filter(|offered| offered.version.split('.').next() == Some(major))
                .max_by_key(|offered| version_numbers(&offered.version)),
            None => offered.iter().find(|offered| offered.version == version),
        },
    };
    if let Some(chosen) = chosen {
        return Ok(chosen.clone());
    }
    let listed: Vec<&str> = offered
        .iter()
        .map(|offered| offered.version.as_str())
        .collect();
    bail!(
        "ElastiCache offers no {engine} version {} in {} (it offers {}): set \
         redis.engine_version to one of those, or remove it for the engine's default",
        version.unwrap_or("by default"),
        stack.region,
        if listed.is_empty() {
            "none".to_owned()
        } else {
            listed.join(", ")
        }
    )
}

/// The numbers of an engine version, up to the first part that is not one (`6.x` is
/// `[6]`), to compare versions by.
pub(super) fn version_numbers(version: &str) -> Vec<u32> {
    version
        .split('.')
        .map_while(|part| part.parse().ok())
        .collect()
}

/// The default parameter group with `cluster-enabled yes` for the spec's engine at
/// `version` (`default.redis7.cluster.on`, `default.valkey8.cluster.on`): without one,
/// ElastiCache makes the group with cluster mode off whatever else is asked
/// (<https://docs.aws.amazon.com/AmazonElastiCache/latest/dg/ParameterGroups.Engine.html>;
/// hashicorp/terraform-provider-aws#7571).
pub(super) async fn cluster_parameter_group(
    stack: &Stack,
    version: Option<&str>,
) -> Result<String> {
    let family = engine_version(stack, version).await?.family;
    Ok(format!("default.{family}.cluster.on"))
}

/// Preflight: whether ElastiCache can make the running group what the spec says, before
/// anything changes. An engine, cluster mode or encryption it cannot change in place, or
/// a pinned version older than the running one, is refused; and so is a node type other
/// than those ListAllowedNodeTypeModifications returns (a ModifyReplicationGroup's
/// CacheNodeType "must be one of" them, API reference). Says how the node type moves.
pub async fn check_changes(stack: &Stack) -> Result<String> {
    let id = stack.names.replication_group();
    let want = stack.spec.redis.node_type.as_str();
    let elasticache = &stack.clients.elasticache;
    let Some(group) = describe_group(elasticache, &id).await? else {
        return Ok(format!("{want}, for a new group"));
    };
    // Before anything is made: the instances' launch template follows the spec's Redis
    // (cluster mode or not), and must not move to a Redis that `up` then refuses.
    refuse_unchangeable(stack, &group)?;
    refuse_downgrade(stack, &group).await?;
    let have = group.cache_node_type().unwrap_or("an unknown node type");
    if have == want {
        return Ok(format!("{want}, as running"));
    }
    let allowed = elasticache
        .list_allowed_node_type_modifications()
        .replication_group_id(&id)
        .send()
        .await
        .call(format!("ListAllowedNodeTypeModifications {id}"))?;
    let offers = |types: &[String]| types.iter().any(|offered| offered == want);
    if offers(allowed.scale_up_modifications()) {
        return Ok(format!("{have} to {want}, a scale up"));
    }
    if offers(allowed.scale_down_modifications()) {
        return Ok(format!(
            "{have} to {want}, a scale down, which ElastiCache makes only if the data fits"
        ));
    }
    let mut offered: Vec<&str> = allowed
        .scale_up_modifications()
        .iter()
        .chain(allowed.scale_down_modifications())
        .map(String::as_str)
        .collect();
    offered.sort_unstable();
    bail!(
        "ElastiCache cannot move the replication group {id} from {have} to {want}; from {have} \
         it offers {} (ListAllowedNodeTypeModifications). Set redis.node_type to one of \
         those, or to {have}; to run on {want}, `destroy` and `up` again (Redis's data is lost)",
        if offered.is_empty() {
            "no other node type".to_owned()
        } else {
            offered.join(", ")
        }
    );
}

/// Differences ElastiCache cannot change in place: the group must be re-created.
fn refuse_unchangeable(stack: &Stack, group: &ReplicationGroup) -> Result<()> {
    let id = stack.names.replication_group();
    let want = &stack.spec.redis.engine;
    let mut problems = Vec::new();
    if let Some(engine) = group.engine()
        && engine != want
    {
        problems.push(format!("its engine is {engine}, stack.yaml says {want}"));
    }
    let shards = stack.spec.redis.shards;
    match (cluster_mode(group), shards) {
        (true, 1) => problems.push(format!(
            "it runs in cluster mode with {} shard(s), stack.yaml says 1 shard (cluster mode \
             off)",
            group.node_groups().len()
        )),
        (false, 2..) => problems.push(format!(
            "it runs with cluster mode off (one shard), stack.yaml says {shards} shards \
             (cluster mode on)"
        )),
        _ => {}
    }
    if group.transit_encryption_enabled() != Some(true) {
        problems.push("it is not encrypted in transit".to_owned());
    }
    if group.at_rest_encryption_enabled() != Some(true) {
        problems.push("it is not encrypted at rest".to_owned());
    }
    if problems.is_empty() {
        return Ok(());
    }
    bail!(
        "the replication group {id} cannot be changed in place to match stack.yaml: {}. Run \
         `realtime-stack destroy` and `up` again to re-create it (its data is lost), give \
         the stack another name to build a new one beside it, or change stack.yaml back",
        problems.join("; ")
    )
}
