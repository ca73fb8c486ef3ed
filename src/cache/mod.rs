//! ElastiCache: the Redis (or Valkey) the chat servers fan messages out through. It owns
//! the cache subnet group on the private subnets and the replication group, both found by
//! their derived names and checked for the stack tag. The group is encrypted in transit
//! and at rest, with failover and Multi-AZ when it has replicas. With `redis.shards` 1 its
//! cluster mode is off and the chat servers get its primary endpoint; with more it is a
//! Redis Cluster (cluster mode on, one node group per shard) and they get its
//! configuration endpoint.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use aws_sdk_elasticache::operation::create_cache_subnet_group::CreateCacheSubnetGroupError;
use aws_sdk_elasticache::operation::create_replication_group::CreateReplicationGroupError;
use aws_sdk_elasticache::types::{
    CacheSubnetGroup, ClusterMode, MultiAzStatus, ReplicationGroup, SourceType, Tag,
};

use crate::aws::{CACHE_NEW_SUBNET_GROUP, CACHE_NEW_SUBNETS, Call, found, made, once_known};
use crate::engine::{Action, Backoff, Step, planned_id, wait_for};
use crate::names::{Names, STACK_TAG};
use crate::stack::Stack;
use modify::{Fix, apply, fixes, refuse_downgrade};

mod modify;
mod teardown;
#[cfg(test)]
mod tests;

pub use teardown::deletables;

const PORT: u16 = 6379;
/// How long a change may take to show in ElastiCache's describe ([`wait_under_way`]).
const UNDER_WAY_WITHIN: Duration = Duration::from_secs(60);

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
fn version_numbers(version: &str) -> Vec<u32> {
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

/// Whether the group is a Redis Cluster (cluster mode on).
/// Whether ElastiCache may upgrade the engine's minor version in the maintenance window:
/// that is how its security fixes arrive, so yes unless stack.yaml pins a minor version
/// (`7.0`), which an upgrade to `7.1` would leave behind and the next `up` refuse as a
/// downgrade. A pinned major (`6.x`) takes its minors.
fn auto_minor_version_upgrade(redis: &crate::spec::RedisSpec) -> bool {
    redis
        .engine_version
        .as_deref()
        .is_none_or(|version| version.ends_with(".x"))
}

fn cluster_mode(group: &ReplicationGroup) -> bool {
    group.cluster_enabled() == Some(true)
}

/// Where the chat servers reach Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redis {
    pub address: String,
    pub port: u16,
    /// In-transit encryption: clients must speak TLS (`rediss://`).
    pub tls: bool,
}

/// Creates or converges the subnet group on `subnet_ids` and the replication group in
/// `security_group`, and waits until Redis is available.
pub async fn ensure(stack: &Stack, subnet_ids: &[String], security_group: &str) -> Result<Redis> {
    ensure_subnet_group(stack, subnet_ids).await?;
    let id = stack.names.replication_group();
    let step = stack.progress.step(format!("redis {id}"));
    step.run(
        ensure_replication_group(stack, security_group, &step),
        |redis| format!("{}:{}", redis.address, redis.port),
    )
    .await
}

async fn ensure_subnet_group(stack: &Stack, subnet_ids: &[String]) -> Result<()> {
    let name = stack.names.cache_subnet_group();
    let step = stack.progress.step(format!("cache subnet group {name}"));
    let work = async {
        let elasticache = &stack.clients.elasticache;
        let group = match describe_subnet_group(stack, &name).await? {
            Some(group) => group,
            None => {
                let reason = format!("on {}", subnet_ids.join(" "));
                if !stack.make(Action::Create, format!("cache subnet group {name}"), reason) {
                    return Ok("planned");
                }
                step.set("creating");
                // The private subnets may be seconds old.
                let call = format!("CreateCacheSubnetGroup {name}");
                let created = once_known(stack.pace, &call, &CACHE_NEW_SUBNETS, || async {
                    let sent = elasticache
                        .create_cache_subnet_group()
                        .cache_subnet_group_name(&name)
                        .cache_subnet_group_description(format!(
                            "realtime-stack {}: Redis in the private subnets",
                            stack.names.stack()
                        ))
                        .set_subnet_ids(Some(subnet_ids.to_vec()))
                        .set_tags(Some(tags(stack, "cache-subnet-group")))
                        .send()
                        .await;
                    made(
                        sent,
                        CreateCacheSubnetGroupError::is_cache_subnet_group_already_exists_fault,
                    )
                })
                .await?;
                if created {
                    return Ok("created");
                }
                // Made by that lost create: taken as found, owner and all.
                describe_subnet_group(stack, &name).await?.with_context(|| {
                    format!("ElastiCache says {name} exists, yet does not describe it: run `up` again")
                })?
            }
        };
        require_ours(
            stack,
            group.arn(),
            &format!("the cache subnet group {name}"),
        )
        .await?;
        let have: BTreeSet<&str> = group
            .subnets()
            .iter()
            .filter_map(|subnet| subnet.subnet_identifier())
            .collect();
        let want: BTreeSet<&str> = subnet_ids.iter().map(String::as_str).collect();
        let reason = format!("move to {}", subnet_ids.join(" "));
        if have == want || !stack.make(Action::Update, format!("cache subnet group {name}"), reason)
        {
            return Ok("unchanged");
        }
        step.set("moving to the stack's private subnets");
        elasticache
            .modify_cache_subnet_group()
            .cache_subnet_group_name(&name)
            .set_subnet_ids(Some(subnet_ids.to_vec()))
            .send()
            .await
            .call(format!("ModifyCacheSubnetGroup {name}"))?;
        Ok("subnets updated")
    };
    step.run(work, |outcome| (*outcome).to_owned()).await?;
    Ok(())
}

async fn ensure_replication_group(
    stack: &Stack,
    security_group: &str,
    step: &Step,
) -> Result<Redis> {
    let id = stack.names.replication_group();
    match describe_group(&stack.clients.elasticache, &id).await? {
        None => {
            let redis = &stack.spec.redis;
            let shards = match redis.shards {
                1 => String::new(),
                shards => format!("cluster mode, {shards} shards of 1 primary and "),
            };
            let reason = format!(
                "{} {} on {}, {shards}{} replica(s), encrypted in transit and at rest",
                redis.engine,
                redis
                    .engine_version
                    .as_deref()
                    .unwrap_or("(default version)"),
                redis.node_type,
                redis.replicas
            );
            if !stack.make(Action::Create, format!("redis {id}"), reason) {
                return Ok(Redis {
                    address: planned_id("redis endpoint"),
                    port: PORT,
                    tls: true,
                });
            }
            step.set("creating");
            if create_group(stack, &id, security_group).await? {
                // Just created from the spec: nothing can differ.
                return endpoint(&wait_available(stack, step, &id).await?);
            }
            // Made by a create whose answer was lost: taken as found, owner and all.
            let group = describe_group(&stack.clients.elasticache, &id)
                .await?
                .with_context(|| {
                    format!(
                        "ElastiCache says {id} exists, yet does not describe it: run `up` again"
                    )
                })?;
            converge_existing(stack, step, &id, &group).await
        }
        Some(group) => converge_existing(stack, step, &id, &group).await,
    }
}

/// A group of the stack's name that exists: the stack's (checked by its tags), waited for
/// and changed in place to match the spec.
async fn converge_existing(
    stack: &Stack,
    step: &Step,
    id: &str,
    group: &ReplicationGroup,
) -> Result<Redis> {
    let what = format!("the replication group {id}");
    // A group still being created (after an interrupted `up`) shows its tags only once
    // available: checked then.
    // What cannot change in place was refused by preflight (`check_changes`).
    let owner_known = refuse_foreign(stack, group.arn(), &what).await?;
    if stack.planning() {
        // What is to change is known now; only `up` waits for a group still busy.
        for fix in fixes(stack, group).await? {
            stack.make(Action::Update, format!("redis {id}"), fix.to_string());
        }
        return endpoint(group);
    }
    let mut group = wait_available(stack, step, id).await?;
    if !owner_known {
        require_ours(stack, group.arn(), &what).await?;
    }
    for fix in fixes(stack, &group).await? {
        stack.make(Action::Update, format!("redis {id}"), fix.to_string());
        step.set(&fix.to_string());
        apply(stack, id, &fix).await?;
        wait_under_way(stack, id, &fix).await?;
        group = wait_available(stack, step, id).await?;
        if let Fix::NodeType(want) = &fix {
            refuse_unscaled(stack, &group, want).await?;
        }
    }
    endpoint(&group)
}

/// Creates the group: with one shard a primary and its replicas, cluster mode off; with
/// more, node groups of a primary and `replicas` replicas each, cluster mode on, which
/// needs automatic failover whatever the replicas
/// (<https://docs.aws.amazon.com/AmazonElastiCache/latest/APIReference/API_CreateReplicationGroup.html>).
/// False when ElastiCache answers that the group exists: the SDK's second attempt at a
/// create whose answer was lost (a timeout, a 5xx), the first having made it.
async fn create_group(stack: &Stack, id: &str, security_group: &str) -> Result<bool> {
    let redis = &stack.spec.redis;
    let multi_az = redis.replicas >= 1;
    let create = stack.clients.elasticache.create_replication_group();
    let create = if redis.shards > 1 {
        create
            .cluster_mode(ClusterMode::Enabled)
            .num_node_groups(i32::try_from(redis.shards)?)
            .replicas_per_node_group(i32::try_from(redis.replicas)?)
            .cache_parameter_group_name(
                cluster_parameter_group(stack, redis.engine_version.as_deref()).await?,
            )
            .automatic_failover_enabled(true)
    } else {
        create
            .num_cache_clusters(1 + i32::try_from(redis.replicas)?)
            .automatic_failover_enabled(multi_az)
    };
    let create = create
        .replication_group_id(id)
        .replication_group_description(format!(
            "realtime-stack {}: chat fan-out",
            stack.names.stack()
        ))
        .engine(&redis.engine)
        .set_engine_version(redis.engine_version.clone())
        .cache_node_type(&redis.node_type)
        .multi_az_enabled(multi_az)
        .transit_encryption_enabled(true)
        .at_rest_encryption_enabled(true)
        .snapshot_retention_limit(i32::try_from(redis.snapshot_retention_days)?)
        .auto_minor_version_upgrade(auto_minor_version_upgrade(redis))
        .cache_subnet_group_name(stack.names.cache_subnet_group())
        .security_group_ids(security_group)
        .port(i32::from(PORT))
        .set_tags(Some(tags(stack, "redis")));
    // The cache subnet group may be seconds old.
    let call = format!("CreateReplicationGroup {id}");
    let created = once_known(stack.pace, &call, &CACHE_NEW_SUBNET_GROUP, || async {
        made(
            create.clone().send().await,
            CreateReplicationGroupError::is_replication_group_already_exists_fault,
        )
    })
    .await?;
    Ok(created)
}

/// Waits until the group and its nodes are `available`, showing its status as it changes.
/// A group being created or modified (by an earlier `up`) is waited for the same way.
async fn wait_available(stack: &Stack, step: &Step, id: &str) -> Result<ReplicationGroup> {
    let last_status = Mutex::new(String::new());
    wait_for(
        step,
        stack.pace,
        "Redis to be available",
        stack.pace.limit(Duration::from_secs(3600)),
        Some((
            stack.pace.limit(Duration::from_secs(20 * 60)),
            "ElastiCache often takes 10 to 20 minutes, longer with Multi-AZ; the replication \
             group's events in the ElastiCache console say what it is doing",
        )),
        || async {
            let group = describe_group(&stack.clients.elasticache, id)
                .await?
                .with_context(|| format!("the replication group {id} vanished while starting"))?;
            let status = group.status().unwrap_or("unknown");
            match status {
                "available" => {
                    let Some(busy) = busy_node(stack, id).await? else {
                        return Ok(Some(group));
                    };
                    step.set(&busy);
                    return Ok(None);
                }
                "create-failed" => bail!(
                    "ElastiCache could not create the replication group {id}: {}. Run \
                     `realtime-stack destroy`, fix the cause, and `up` again",
                    latest_events(stack, id).await
                ),
                "deleting" => bail!(
                    "the replication group {id} is being deleted: wait until it is gone, then \
                     run `realtime-stack up` again"
                ),
                _ => {}
            }
            let mut last = last_status.lock().expect("status lock");
            if *last != status {
                step.set(&format!("{status}, waiting until available"));
                status.clone_into(&mut last);
            }
            Ok(None)
        },
    )
    .await
}

/// Right after a change, ElastiCache's describe may still show the group `available` as
/// it was, and waiting for `available` would then end at once: the next change would be
/// refused (`InvalidReplicationGroupState`) or a node type reported unchanged.
/// terraform-provider-aws waits 30 s after each change before it polls the group
/// (`waitReplicationGroupAvailable`'s delay in internal/service/elasticache). Here the
/// group is polled until it is no longer `available` or shows `fix` made, for at most a
/// minute: a change that shows neither is left to what follows to judge.
async fn wait_under_way(stack: &Stack, id: &str, fix: &Fix) -> Result<()> {
    let started = tokio::time::Instant::now();
    let mut backoff = Backoff::new(stack.pace);
    while started.elapsed() < UNDER_WAY_WITHIN {
        let Some(group) = describe_group(&stack.clients.elasticache, id).await? else {
            return Ok(());
        };
        if group.status() != Some("available") || !fixes(stack, &group).await?.contains(fix) {
            return Ok(());
        }
        backoff.pause().await;
    }
    Ok(())
}

/// A node of the group that is not `available` yet, as "<node> <status>", if any.
/// ElastiCache reports the group `available` while a replica it adds is still `creating`
/// (or one it removes still `deleting`), and refuses the next change to the group with
/// `InvalidCacheClusterState` (hashicorp/terraform-provider-aws#50096): the group is ready
/// for the next change once its nodes are too. The nodes are listed whole: those of a
/// group are all of its cache clusters, and the group may name a removed one no more.
async fn busy_node(stack: &Stack, id: &str) -> Result<Option<String>> {
    let clusters = stack
        .clients
        .elasticache
        .describe_cache_clusters()
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .call("DescribeCacheClusters")?;
    Ok(clusters
        .iter()
        .filter(|cluster| cluster.replication_group_id() == Some(id))
        .find(|cluster| cluster.cache_cluster_status() != Some("available"))
        .map(|cluster| {
            format!(
                "node {} {}, waiting until available",
                cluster.cache_cluster_id().unwrap_or("(unnamed)"),
                cluster
                    .cache_cluster_status()
                    .unwrap_or("in an unknown state")
            )
        }))
}

/// How far back DescribeEvents reaches: ElastiCache keeps events for 14 days.
const EVENTS_KEPT_MINUTES: i32 = 14 * 24 * 60;

/// The events of the group `id` since `since`, or all ElastiCache keeps. They come in
/// pages of at most 100, in an order the API reference does not promise: all are read.
async fn group_events(
    stack: &Stack,
    id: &str,
    since: Option<aws_sdk_elasticache::primitives::DateTime>,
) -> Result<Vec<aws_sdk_elasticache::types::Event>> {
    let request = stack
        .clients
        .elasticache
        .describe_events()
        .source_type(SourceType::ReplicationGroup)
        .source_identifier(id);
    let request = match since {
        Some(since) => request.start_time(since),
        None => request.duration(EVENTS_KEPT_MINUTES),
    };
    request
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .call(format!("DescribeEvents replication-group {id}"))
}

/// Why a change to the group failed, in ElastiCache's words: its latest events. The
/// group's status says only `create-failed`, or `available` again after a scale that did
/// not happen (<https://docs.aws.amazon.com/AmazonElastiCache/latest/APIReference/API_DescribeEvents.html>).
async fn latest_events(stack: &Stack, id: &str) -> String {
    let mut events = match group_events(stack, id, None).await {
        Ok(events) => events,
        Err(err) => return format!("its events could not be read ({err:#})"),
    };
    events.sort_by_key(|event| event.date().map(|date| (date.secs(), date.subsec_nanos())));
    let latest: Vec<&str> = events
        .iter()
        .rev()
        .take(3)
        .rev()
        .filter_map(|event| event.message())
        .collect();
    if latest.is_empty() {
        "ElastiCache recorded no event saying why".to_owned()
    } else {
        latest.join("; ")
    }
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

/// After a node type change, the group back to `available` on its old node type: a scale
/// down to a node the data does not fit is refused that way, with an event saying so
/// ("Failed to scale down ... because the node has insufficient memory", AWS re:Post,
/// knowledge-center/elasticache-redis-change-node-errors).
async fn refuse_unscaled(stack: &Stack, group: &ReplicationGroup, want: &str) -> Result<()> {
    let have = group.cache_node_type().unwrap_or("an unknown node type");
    if have == want {
        return Ok(());
    }
    let id = stack.names.replication_group();
    bail!(
        "ElastiCache did not move the replication group {id} to {want}: it runs on {have} \
         still ({}). A smaller node type must hold the data and ElastiCache's reserved memory \
         (25 % by default): set redis.node_type to {have} or a larger type, or reduce the data",
        latest_events(stack, &id).await
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

/// Where clients start: the primary endpoint with cluster mode off; with it on, the
/// configuration endpoint, from which cluster clients learn every shard (its node
/// groups have no primary endpoint).
fn endpoint(group: &ReplicationGroup) -> Result<Redis> {
    let id = group.replication_group_id().unwrap_or_default();
    let (endpoint, which) = if cluster_mode(group) {
        (group.configuration_endpoint(), "configuration")
    } else {
        let primary = group.node_groups().first();
        (
            primary.and_then(|node_group| node_group.primary_endpoint()),
            "primary",
        )
    };
    let (address, port) = endpoint
        .and_then(|endpoint| Some((endpoint.address()?, endpoint.port())))
        .with_context(|| format!("the replication group {id} reports no {which} endpoint"))?;
    Ok(Redis {
        address: address.to_owned(),
        port: port.map(u16::try_from).transpose()?.unwrap_or(PORT),
        tls: group.transit_encryption_enabled() == Some(true),
    })
}

/// The stack's Redis as `status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub id: String,
    /// `creating`, `available`, `modifying`, `deleting`, `create-failed`, `snapshotting`.
    pub status: String,
    /// `host:port` of the primary (of the configuration endpoint in cluster mode), once
    /// it has one.
    pub endpoint: Option<String>,
    pub node_type: String,
    /// Node groups: more than one only in cluster mode.
    pub shards: usize,
    /// Whether it is a Redis Cluster (cluster mode on).
    pub cluster_mode: bool,
    pub nodes: usize,
    pub multi_az: bool,
}

/// The stack's replication group, when it exists.
pub async fn summary(stack: &Stack) -> Result<Option<Summary>> {
    let id = stack.names.replication_group();
    let Some(group) = describe_group(&stack.clients.elasticache, &id).await? else {
        return Ok(None);
    };
    Ok(Some(Summary {
        status: group.status().unwrap_or("unknown").to_owned(),
        endpoint: endpoint(&group)
            .ok()
            .map(|redis| format!("{}:{}", redis.address, redis.port)),
        node_type: group.cache_node_type().unwrap_or_default().to_owned(),
        shards: group.node_groups().len(),
        cluster_mode: cluster_mode(&group),
        nodes: group.member_clusters().len(),
        multi_az: group.multi_az() == Some(&MultiAzStatus::Enabled),
        id,
    }))
}

fn tags(stack: &Stack, role: &str) -> Vec<Tag> {
    stack
        .names
        .tags(role)
        .into_iter()
        .map(|(key, value)| Tag::builder().key(key).value(value).build())
        .collect()
}

/// The ARNs of the stack's replication group and cache subnet group, those that exist.
pub async fn arns(stack: &Stack) -> Result<Vec<String>> {
    let group = describe_group(&stack.clients.elasticache, &stack.names.replication_group())
        .await?
        .and_then(|group| group.arn);
    let subnet_group = describe_subnet_group(stack, &stack.names.cache_subnet_group())
        .await?
        .and_then(|group| group.arn);
    Ok(group.into_iter().chain(subnet_group).collect())
}

async fn describe_group(
    elasticache: &aws_sdk_elasticache::Client,
    id: &str,
) -> Result<Option<ReplicationGroup>> {
    let described = elasticache
        .describe_replication_groups()
        .replication_group_id(id)
        .send()
        .await;
    Ok(found(
        described,
        format!("DescribeReplicationGroups {id}"),
        |err| err.is_replication_group_not_found_fault(),
    )?
    .and_then(|out| out.replication_groups)
    .and_then(|groups| groups.into_iter().next()))
}

async fn describe_subnet_group(stack: &Stack, name: &str) -> Result<Option<CacheSubnetGroup>> {
    let described = stack
        .clients
        .elasticache
        .describe_cache_subnet_groups()
        .cache_subnet_group_name(name)
        .send()
        .await;
    Ok(found(
        described,
        format!("DescribeCacheSubnetGroups {name}"),
        |err| err.is_cache_subnet_group_not_found_fault(),
    )?
    .and_then(|out| out.cache_subnet_groups)
    .and_then(|groups| groups.into_iter().next()))
}

/// Whose a resource is, as its tags say.
#[derive(Debug, PartialEq, Eq)]
enum Owner {
    Stack,
    Other,
    /// ElastiCache answers ListTagsForResource on a replication group only while it is
    /// available (`InvalidReplicationGroupState` otherwise: "Cluster not in available state
    /// to perform tagging operations", hashicorp/terraform-provider-aws#33859, and while
    /// creating or deleting, ekristen/aws-nuke#256): known once it is.
    NotYetReadable,
}

/// Whose the resource of `arn` is.
async fn owner(
    elasticache: &aws_sdk_elasticache::Client,
    names: &Names,
    arn: Option<&str>,
) -> Result<Owner> {
    let Some(arn) = arn else {
        return Ok(Owner::Other);
    };
    let tags = elasticache
        .list_tags_for_resource()
        .resource_name(arn)
        .send()
        .await;
    let tags = match tags {
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|err| err.is_invalid_replication_group_state_fault()) =>
        {
            return Ok(Owner::NotYetReadable);
        }
        tags => tags.call(format!("ListTagsForResource {arn}"))?,
    };
    let ours = tags
        .tag_list()
        .iter()
        .any(|tag| names.is_stack_tag(tag.key(), tag.value()));
    Ok(if ours { Owner::Stack } else { Owner::Other })
}

/// A resource of the stack's name that is not the stack's must not be taken over. Returns
/// whether that is known: a replication group's tags cannot be read while it is busy.
async fn refuse_foreign(stack: &Stack, arn: Option<&str>, what: &str) -> Result<bool> {
    match owner(&stack.clients.elasticache, &stack.names, arn).await? {
        Owner::Stack => Ok(true),
        Owner::NotYetReadable => Ok(false),
        Owner::Other => bail!(
            "{what} exists but does not carry the tag {STACK_TAG}={}: it is not this stack's. \
             Delete or rename it, or give the stack another name",
            stack.names.stack()
        ),
    }
}

/// Like [`refuse_foreign`], for a resource whose tags must be readable now.
async fn require_ours(stack: &Stack, arn: Option<&str>, what: &str) -> Result<()> {
    if refuse_foreign(stack, arn, what).await? {
        return Ok(());
    }
    bail!("ElastiCache does not show the tags of {what} yet: run `realtime-stack up` again")
}

/// The node that is the primary of the group's first node group now.
fn primary_node(group: &ReplicationGroup) -> Option<String> {
    group
        .node_groups()
        .first()?
        .node_group_members()
        .iter()
        .find(|member| member.current_role() == Some("primary"))
        .and_then(|member| member.cache_cluster_id())
        .map(str::to_owned)
}

/// `drill redis` on AWS: TestFailover on the primary's node group (the first), then waits
/// until the group is available again with another primary; returns the new primary node.
/// ElastiCache promotes a replica and points the primary endpoint at it, as on a real
/// failure (<https://docs.aws.amazon.com/AmazonElastiCache/latest/APIReference/API_TestFailover.html>).
/// A node's role is reported only with cluster mode off ("CurrentRole ... is only
/// applicable for ... (cluster mode disabled) replication groups", NodeGroupMember); a
/// cluster's new primary is read from the event the same page documents: "Failover from
/// primary node <primary-node-id> to replica node <node-id> completed".
pub async fn test_failover(stack: &Stack, step: &Step) -> Result<String> {
    let id = stack.names.replication_group();
    let elasticache = &stack.clients.elasticache;
    let group = describe_group(elasticache, &id)
        .await?
        .with_context(|| format!("the stack has no replication group {id}: run `up` first"))?;
    let node_group = group
        .node_groups()
        .first()
        .and_then(|node_group| node_group.node_group_id())
        .unwrap_or("0001")
        .to_owned();
    let before = primary_node(&group);
    let asked = aws_sdk_elasticache::primitives::DateTime::from(std::time::SystemTime::now());
    elasticache
        .test_failover()
        .replication_group_id(&id)
        .node_group_id(&node_group)
        .send()
        .await
        .call(format!(
            "TestFailover {id} {node_group} (it needs redis.replicas 1 or more)"
        ))?;
    wait_for(
        step,
        stack.pace,
        "the failover to end",
        stack.pace.limit(Duration::from_secs(30 * 60)),
        None,
        || async {
            let Some(now) = describe_group(elasticache, &id).await? else {
                return Ok(None);
            };
            if now.status() != Some("available") {
                return Ok(None);
            }
            if before.is_some() {
                return Ok(primary_node(&now).filter(|primary| Some(primary) != before.as_ref()));
            }
            promoted_since(stack, &id, asked).await
        },
    )
    .await
}

/// The node a failover of the group `id` since `since` promoted, from its events.
async fn promoted_since(
    stack: &Stack,
    id: &str,
    since: aws_sdk_elasticache::primitives::DateTime,
) -> Result<Option<String>> {
    let events = group_events(stack, id, Some(since)).await?;
    Ok(events.iter().find_map(|event| {
        let message = event.message()?;
        let (_, promoted) = message
            .strip_prefix("Failover from primary node ")?
            .split_once(" to replica node ")?;
        let node = promoted.trim_end_matches('.').strip_suffix(" completed")?;
        Some(node.trim().to_owned())
    }))
}
