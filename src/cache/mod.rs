//! ElastiCache: the Redis (or Valkey) the chat servers fan messages out through. It owns
//! the cache subnet group on the private subnets and the replication group, both found by
//! their derived names and checked for the stack tag. The group is encrypted in transit
//! and at rest, with failover and Multi-AZ when it has replicas. With `redis.shards` 1 its
//! cluster mode is off and the chat servers get its primary endpoint; with more it is a
//! Redis Cluster (cluster mode on, one node group per shard) and they get its
//! configuration endpoint.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use aws_sdk_elasticache::operation::create_cache_subnet_group::CreateCacheSubnetGroupError;
use aws_sdk_elasticache::operation::create_replication_group::CreateReplicationGroupError;
use aws_sdk_elasticache::types::{
    CacheSubnetGroup, ClusterMode, MultiAzStatus, ReplicationGroup, Tag,
};

use crate::aws::{CACHE_NEW_SUBNET_GROUP, CACHE_NEW_SUBNETS, Call, found, made, once_known};
use crate::engine::{Action, Step, planned_id, wait_for};
use crate::names::{Names, STACK_TAG};
use crate::stack::Stack;
use modify::{Fix, apply, fixes};
use preflight::cluster_parameter_group;
use progress::{group_events, refuse_unscaled, wait_available, wait_under_way};

mod modify;
mod preflight;
mod progress;
mod teardown;
#[cfg(test)]
mod tests;

pub use preflight::{EngineVersion, check_changes, engine_version};
pub use teardown::deletables;

const PORT: u16 = 6379;

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

/// Whether the group is a Redis Cluster (cluster mode on).
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
