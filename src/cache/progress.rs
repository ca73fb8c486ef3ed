//! How a change to the replication group is followed: until the group and its nodes are
//! `available`, until a change shows in its describe, and ElastiCache's events saying why
//! one did not happen.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use aws_sdk_elasticache::types::{ReplicationGroup, SourceType};

use super::describe_group;
use super::modify::{Fix, fixes};
use crate::aws::Call;
use crate::engine::{Backoff, Step, wait_for};
use crate::stack::Stack;

/// How long a change may take to show in ElastiCache's describe ([`wait_under_way`]).
const UNDER_WAY_WITHIN: Duration = Duration::from_secs(60);

/// Waits until the group and its nodes are `available`, showing its status as it changes.
/// A group being created or modified (by an earlier `up`) is waited for the same way.
pub(super) async fn wait_available(
    stack: &Stack,
    step: &Step,
    id: &str,
) -> Result<ReplicationGroup> {
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
pub(super) async fn wait_under_way(stack: &Stack, id: &str, fix: &Fix) -> Result<()> {
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
pub(super) async fn group_events(
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

/// After a node type change, the group back to `available` on its old node type: a scale
/// down to a node the data does not fit is refused that way, with an event saying so
/// ("Failed to scale down ... because the node has insufficient memory", AWS re:Post,
/// knowledge-center/elasticache-redis-change-node-errors).
pub(super) async fn refuse_unscaled(
    stack: &Stack,
    group: &ReplicationGroup,
    want: &str,
) -> Result<()> {
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
