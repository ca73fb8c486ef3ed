//! Changes ElastiCache makes to a replication group in place: engine version, node type,
//! replicas, failover and Multi-AZ, each applied once the group is available again.

use anyhow::Result;
use aws_sdk_elasticache::types::{AutomaticFailoverStatus, MultiAzStatus, ReplicationGroup};

use crate::aws::Call;
use crate::stack::Stack;

/// A change ElastiCache makes in place; each needs the group available before the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Fix {
    EngineVersion(String),
    NodeType(String),
    AddReplicas(i32),
    RemoveReplicas(i32),
    Failover(bool),
}

impl std::fmt::Display for Fix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fix::EngineVersion(version) => write!(f, "upgrading to version {version}"),
            Fix::NodeType(node_type) => write!(f, "changing node type to {node_type}"),
            Fix::AddReplicas(count) | Fix::RemoveReplicas(count) => {
                write!(f, "changing to {count} replica(s)")
            }
            Fix::Failover(true) => write!(f, "enabling failover and Multi-AZ"),
            Fix::Failover(false) => write!(f, "disabling failover and Multi-AZ"),
        }
    }
}

/// What differs from the spec and can be changed, in an order ElastiCache accepts:
/// failover needs a replica, so replicas come before enabling it and after disabling it.
pub(super) async fn fixes(stack: &Stack, group: &ReplicationGroup) -> Result<Vec<Fix>> {
    let redis = &stack.spec.redis;
    let mut fixes = Vec::new();
    if let Some(want) = &redis.engine_version
        && let Some(have) = engine_version(stack, group).await?
        && !version_matches(&have, want)
    {
        fixes.push(Fix::EngineVersion(want.clone()));
    }
    if group.cache_node_type() != Some(redis.node_type.as_str()) {
        fixes.push(Fix::NodeType(redis.node_type.clone()));
    }
    let have = i32::try_from(group.member_clusters().len())?.saturating_sub(1);
    let want = i32::try_from(redis.replicas)?;
    let failover = want >= 1;
    let failover_on = matches!(
        group.automatic_failover(),
        Some(AutomaticFailoverStatus::Enabled | AutomaticFailoverStatus::Enabling)
    );
    let multi_az_on = group.multi_az() == Some(&MultiAzStatus::Enabled);
    if want > have {
        fixes.push(Fix::AddReplicas(want));
    }
    if failover_on != failover || multi_az_on != failover {
        fixes.push(Fix::Failover(failover));
    }
    if want < have {
        fixes.push(Fix::RemoveReplicas(want));
    }
    Ok(fixes)
}

/// Whether the version the nodes report satisfies stack.yaml's: AWS reports the full
/// version (`7.1.0` for `7.1`, `6.2.6` for `6.x`), so comparing the strings would call
/// ModifyReplicationGroup on every `up`.
pub(super) fn version_matches(have: &str, want: &str) -> bool {
    let prefix = want.strip_suffix(".x").unwrap_or(want);
    have == want || have.starts_with(&format!("{prefix}."))
}

/// The engine version, which only the group's nodes report.
async fn engine_version(stack: &Stack, group: &ReplicationGroup) -> Result<Option<String>> {
    let Some(member) = group.member_clusters().first() else {
        return Ok(None);
    };
    Ok(stack
        .clients
        .elasticache
        .describe_cache_clusters()
        .cache_cluster_id(member)
        .send()
        .await
        .call(format!("DescribeCacheClusters {member}"))?
        .cache_clusters()
        .first()
        .and_then(|cluster| cluster.engine_version().map(str::to_owned)))
}

pub(super) async fn apply(stack: &Stack, id: &str, fix: &Fix) -> Result<()> {
    let elasticache = &stack.clients.elasticache;
    let modify = elasticache
        .modify_replication_group()
        .replication_group_id(id)
        .apply_immediately(true);
    match fix {
        Fix::EngineVersion(version) => {
            modify
                .engine_version(version)
                .send()
                .await
                .call(format!("ModifyReplicationGroup {id} EngineVersion"))?;
        }
        Fix::NodeType(node_type) => {
            modify
                .cache_node_type(node_type)
                .send()
                .await
                .call(format!("ModifyReplicationGroup {id} CacheNodeType"))?;
        }
        Fix::Failover(on) => {
            modify
                .automatic_failover_enabled(*on)
                .multi_az_enabled(*on)
                .send()
                .await
                .call(format!("ModifyReplicationGroup {id} AutomaticFailover"))?;
        }
        Fix::AddReplicas(count) => {
            elasticache
                .increase_replica_count()
                .replication_group_id(id)
                .new_replica_count(*count)
                .apply_immediately(true)
                .send()
                .await
                .call(format!("IncreaseReplicaCount {id}"))?;
        }
        Fix::RemoveReplicas(count) => {
            elasticache
                .decrease_replica_count()
                .replication_group_id(id)
                .new_replica_count(*count)
                .apply_immediately(true)
                .send()
                .await
                .call(format!("DecreaseReplicaCount {id}"))?;
        }
    }
    Ok(())
}
