//! Changes ElastiCache makes to a replication group in place: engine version, node type,
//! replicas (of each shard), failover and Multi-AZ, the days of automatic backups,
//! automatic minor version upgrades, and the number of shards of a Redis Cluster (online
//! resharding), each applied once the group is available again.

use anyhow::{Result, bail};
use aws_sdk_elasticache::types::{AutomaticFailoverStatus, MultiAzStatus, ReplicationGroup};

use super::preflight::{cluster_parameter_group, version_numbers};
use super::{auto_minor_version_upgrade, cluster_mode};
use crate::aws::Call;
use crate::stack::Stack;

/// A change ElastiCache makes in place; each needs the group available before the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Fix {
    EngineVersion(String),
    NodeType(String),
    AddReplicas(i32),
    RemoveReplicas(i32),
    Failover {
        failover: bool,
        multi_az: bool,
    },
    /// Days of automatic backups; 0 turns them off.
    SnapshotRetention(i32),
    /// Whether ElastiCache upgrades the minor version in the maintenance window.
    AutoMinorVersionUpgrade(bool),
    /// A Redis Cluster's node groups to `count`; when fewer, the ones in `remove` go
    /// (their slots move to the others).
    Reshard {
        count: i32,
        remove: Vec<String>,
    },
}

impl std::fmt::Display for Fix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fix::EngineVersion(version) => write!(f, "upgrading to version {version}"),
            Fix::NodeType(node_type) => write!(f, "changing node type to {node_type}"),
            Fix::AddReplicas(count) | Fix::RemoveReplicas(count) => {
                write!(f, "changing to {count} replica(s)")
            }
            Fix::Failover {
                failover: true,
                multi_az: true,
            } => write!(f, "enabling failover and Multi-AZ"),
            Fix::Failover {
                failover: false,
                multi_az: _,
            } => write!(f, "disabling failover and Multi-AZ"),
            Fix::Failover {
                failover: true,
                multi_az: false,
            } => write!(f, "disabling Multi-AZ (cluster mode keeps failover on)"),
            Fix::SnapshotRetention(0) => write!(f, "turning automatic backups off"),
            Fix::SnapshotRetention(days) => {
                write!(f, "keeping automatic backups for {days} day(s)")
            }
            Fix::AutoMinorVersionUpgrade(true) => {
                write!(f, "turning automatic minor version upgrades on")
            }
            Fix::AutoMinorVersionUpgrade(false) => write!(
                f,
                "turning automatic minor version upgrades off (the version is pinned)"
            ),
            Fix::Reshard { count, remove } if remove.is_empty() => {
                write!(f, "resharding online to {count} shards")
            }
            Fix::Reshard { count, remove } => write!(
                f,
                "resharding online to {count} shards, removing node group(s) {}",
                remove.join(" ")
            ),
        }
    }
}

/// What differs from the spec and can be changed, in an order ElastiCache accepts:
/// Multi-AZ needs a replica in each shard, so replicas come before enabling it and after
/// disabling it. A cluster's surplus shards go first (fewer nodes to change), missing ones
/// come last (made like the others, with their final replicas). A cluster keeps automatic
/// failover on whatever its replicas: cluster mode requires it.
pub(super) async fn fixes(stack: &Stack, group: &ReplicationGroup) -> Result<Vec<Fix>> {
    let redis = &stack.spec.redis;
    let mut fixes = Vec::new();
    let cluster = cluster_mode(group);
    let node_groups = group.node_groups();
    let have_shards = i32::try_from(node_groups.len())?;
    let want_shards = i32::try_from(redis.shards)?;
    if cluster && want_shards < have_shards {
        let mut ids: Vec<String> = node_groups
            .iter()
            .filter_map(|node_group| node_group.node_group_id().map(str::to_owned))
            .collect();
        ids.sort();
        let remove = ids.split_off(usize::try_from(want_shards)?);
        fixes.push(Fix::Reshard {
            count: want_shards,
            remove,
        });
    }
    if let Some(want) = &redis.engine_version
        && let Some(have) = engine_version(stack, group).await?
        && !version_matches(&have, want)
    {
        refuse_downgrade_from(stack, &have)?;
        fixes.push(Fix::EngineVersion(want.clone()));
    }
    if group.cache_node_type() != Some(redis.node_type.as_str()) {
        fixes.push(Fix::NodeType(redis.node_type.clone()));
    }
    // Every shard has a primary and the same replicas.
    let nodes_per_shard = group.member_clusters().len() / node_groups.len().max(1);
    let have = i32::try_from(nodes_per_shard)?.saturating_sub(1);
    let want = i32::try_from(redis.replicas)?;
    let multi_az = want >= 1;
    let failover = multi_az || cluster;
    let failover_on = matches!(
        group.automatic_failover(),
        Some(AutomaticFailoverStatus::Enabled | AutomaticFailoverStatus::Enabling)
    );
    let multi_az_on = group.multi_az() == Some(&MultiAzStatus::Enabled);
    if want > have {
        fixes.push(Fix::AddReplicas(want));
    }
    if failover_on != failover || multi_az_on != multi_az {
        fixes.push(Fix::Failover { failover, multi_az });
    }
    if want < have {
        fixes.push(Fix::RemoveReplicas(want));
    }
    let retention = i32::try_from(redis.snapshot_retention_days)?;
    if group.snapshot_retention_limit().unwrap_or(0) != retention {
        fixes.push(Fix::SnapshotRetention(retention));
    }
    // A group that does not say is left as it is.
    let upgrades = auto_minor_version_upgrade(redis);
    if group
        .auto_minor_version_upgrade()
        .is_some_and(|have| have != upgrades)
    {
        fixes.push(Fix::AutoMinorVersionUpgrade(upgrades));
    }
    if cluster && want_shards > have_shards {
        fixes.push(Fix::Reshard {
            count: want_shards,
            remove: Vec::new(),
        });
    }
    Ok(fixes)
}

/// A pinned engine version older than the running one: ElastiCache cannot downgrade.
pub(super) async fn refuse_downgrade(stack: &Stack, group: &ReplicationGroup) -> Result<()> {
    if stack.spec.redis.engine_version.is_none() {
        return Ok(());
    }
    match engine_version(stack, group).await? {
        Some(have) => refuse_downgrade_from(stack, &have),
        None => Ok(()),
    }
}

fn refuse_downgrade_from(stack: &Stack, have: &str) -> Result<()> {
    let redis = &stack.spec.redis;
    let Some(want) = &redis.engine_version else {
        return Ok(());
    };
    if version_matches(have, want) || !is_downgrade(have, want) {
        return Ok(());
    }
    bail!(
        "Redis {} runs {} {have} and stack.yaml pins {want}, an earlier version: ElastiCache \
         upgrades in place but cannot downgrade (ModifyReplicationGroup). Pin {have} or \
         later, or remove redis.engine_version; to run {want}, `destroy` and `up` again \
         (Redis's data is lost)",
        stack.names.replication_group(),
        redis.engine
    )
}

/// Whether the version the nodes report satisfies stack.yaml's: AWS reports the full
/// version (`7.1.0` for `7.1`, `6.2.6` for `6.x`), so comparing the strings would call
/// ModifyReplicationGroup on every `up`.
pub(super) fn version_matches(have: &str, want: &str) -> bool {
    let prefix = want.strip_suffix(".x").unwrap_or(want);
    have == want || have.starts_with(&format!("{prefix}."))
}

/// Whether the pinned `want` is older than the running `have`, by the numbers `want`
/// names (`7.0` against `7.1.0`, `6.x` against `7.1.0`): "you cannot downgrade to an
/// earlier engine version" (ModifyReplicationGroup's EngineVersion).
pub(super) fn is_downgrade(have: &str, want: &str) -> bool {
    let (have, want) = (version_numbers(have), version_numbers(want));
    want.as_slice() < &have[..want.len().min(have.len())]
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
    let (modify, what) = match fix {
        Fix::EngineVersion(version) => {
            // A cluster keeps a cluster-mode parameter group across a major upgrade.
            let redis = &stack.spec.redis;
            let parameter_group = if redis.shards > 1 {
                Some(cluster_parameter_group(stack, Some(version)).await?)
            } else {
                None
            };
            (
                modify
                    .engine_version(version)
                    .set_cache_parameter_group_name(parameter_group),
                "EngineVersion",
            )
        }
        Fix::NodeType(node_type) => (modify.cache_node_type(node_type), "CacheNodeType"),
        Fix::Failover { failover, multi_az } => (
            modify
                .automatic_failover_enabled(*failover)
                .multi_az_enabled(*multi_az),
            "AutomaticFailover",
        ),
        Fix::SnapshotRetention(days) => (
            modify.snapshot_retention_limit(*days),
            "SnapshotRetentionLimit",
        ),
        Fix::AutoMinorVersionUpgrade(upgrades) => (
            modify.auto_minor_version_upgrade(*upgrades),
            "AutoMinorVersionUpgrade",
        ),
        Fix::Reshard { count, remove } => {
            // Slots move online; the chat servers follow MOVED/ASK.
            elasticache
                .modify_replication_group_shard_configuration()
                .replication_group_id(id)
                .node_group_count(*count)
                .set_node_groups_to_remove((!remove.is_empty()).then(|| remove.clone()))
                .apply_immediately(true)
                .send()
                .await
                .call(format!(
                    "ModifyReplicationGroupShardConfiguration {id} NodeGroupCount {count}"
                ))?;
            return Ok(());
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
            return Ok(());
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
            return Ok(());
        }
    };
    modify
        .send()
        .await
        .call(format!("ModifyReplicationGroup {id} {what}"))?;
    Ok(())
}
