//! ElastiCache: the Redis (or Valkey) the chat servers fan messages out through. It owns
//! the cache subnet group on the private subnets and the replication group (cluster mode
//! off, encrypted in transit and at rest, with failover and Multi-AZ when it has
//! replicas), both found by their derived names and checked for the stack tag.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use aws_sdk_elasticache::types::{
    AutomaticFailoverStatus, CacheSubnetGroup, MultiAzStatus, ReplicationGroup, SourceType, Tag,
};

use crate::aws::{Call, delete_outcome};
use crate::engine::{Action, Deletable, DeleteError, DeleteFuture, Step, planned_id, wait_for};
use crate::names::{Names, STACK_TAG};
use crate::stack::Stack;

const PORT: u16 = 6379;

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
        let Some(group) = describe_subnet_group(stack, &name).await? else {
            let reason = format!("on {}", subnet_ids.join(" "));
            if !stack.make(Action::Create, format!("cache subnet group {name}"), reason) {
                return Ok("planned");
            }
            step.set("creating");
            elasticache
                .create_cache_subnet_group()
                .cache_subnet_group_name(&name)
                .cache_subnet_group_description(format!(
                    "realtime-stack {}: Redis in the private subnets",
                    stack.names.stack()
                ))
                .set_subnet_ids(Some(subnet_ids.to_vec()))
                .set_tags(Some(tags(stack, "cache-subnet-group")))
                .send()
                .await
                .call(format!("CreateCacheSubnetGroup {name}"))?;
            return Ok("created");
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
            let reason = format!(
                "{} {} on {}, {} replica(s), encrypted in transit and at rest",
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
            create_group(stack, &id, security_group).await?;
            // Just created from the spec: nothing can differ.
            endpoint(&wait_available(stack, step, &id).await?)
        }
        Some(group) => {
            let what = format!("the replication group {id}");
            // A group still being created (after an interrupted `up`) shows its tags
            // only once available: checked then.
            let owner_known = refuse_foreign(stack, group.arn(), &what).await?;
            refuse_unchangeable(stack, &group)?;
            if stack.planning() {
                // What is to change is known now; only `up` waits for a group still busy.
                for fix in fixes(stack, &group).await? {
                    stack.make(Action::Update, format!("redis {id}"), fix.to_string());
                }
                return endpoint(&group);
            }
            let mut group = wait_available(stack, step, &id).await?;
            if !owner_known {
                require_ours(stack, group.arn(), &what).await?;
            }
            for fix in fixes(stack, &group).await? {
                stack.make(Action::Update, format!("redis {id}"), fix.to_string());
                step.set(&fix.to_string());
                apply(stack, &id, &fix).await?;
                group = wait_available(stack, step, &id).await?;
            }
            endpoint(&group)
        }
    }
}

async fn create_group(stack: &Stack, id: &str, security_group: &str) -> Result<()> {
    let redis = &stack.spec.redis;
    let failover = redis.replicas >= 1;
    stack
        .clients
        .elasticache
        .create_replication_group()
        .replication_group_id(id)
        .replication_group_description(format!(
            "realtime-stack {}: chat fan-out",
            stack.names.stack()
        ))
        .engine(&redis.engine)
        .set_engine_version(redis.engine_version.clone())
        .cache_node_type(&redis.node_type)
        .num_cache_clusters(1 + i32::try_from(redis.replicas)?)
        .automatic_failover_enabled(failover)
        .multi_az_enabled(failover)
        .transit_encryption_enabled(true)
        .at_rest_encryption_enabled(true)
        .cache_subnet_group_name(stack.names.cache_subnet_group())
        .security_group_ids(security_group)
        .port(i32::from(PORT))
        .set_tags(Some(tags(stack, "redis")))
        .send()
        .await
        .call(format!("CreateReplicationGroup {id}"))?;
    Ok(())
}

/// Waits until the group is `available`, showing its status as it changes. A group being
/// created or modified (by an earlier `up`) is waited for the same way.
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
                "available" => return Ok(Some(group)),
                "create-failed" => bail!(
                    "ElastiCache could not create the replication group {id}: {}. Run \
                     `realtime-stack destroy`, fix the cause, and `up` again",
                    why_create_failed(stack, id).await
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

/// How far back DescribeEvents reaches: ElastiCache keeps events for 14 days.
const EVENTS_KEPT_MINUTES: i32 = 14 * 24 * 60;

/// Why the group's creation failed, in ElastiCache's words: its latest events. The
/// group's status says only `create-failed`
/// (<https://docs.aws.amazon.com/AmazonElastiCache/latest/APIReference/API_DescribeEvents.html>).
async fn why_create_failed(stack: &Stack, id: &str) -> String {
    let events = stack
        .clients
        .elasticache
        .describe_events()
        .source_type(SourceType::ReplicationGroup)
        .source_identifier(id)
        .duration(EVENTS_KEPT_MINUTES)
        .send()
        .await
        .call(format!("DescribeEvents replication-group {id}"));
    let mut events = match events {
        Ok(events) => events.events.unwrap_or_default(),
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
    if group.cluster_enabled() == Some(true) {
        problems.push("it runs in cluster mode".to_owned());
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
         `realtime-stack destroy` and `up` again to re-create it (its data is lost), or \
         change stack.yaml back",
        problems.join("; ")
    )
}

/// A change ElastiCache makes in place; each needs the group available before the next.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fix {
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
async fn fixes(stack: &Stack, group: &ReplicationGroup) -> Result<Vec<Fix>> {
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
fn version_matches(have: &str, want: &str) -> bool {
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

async fn apply(stack: &Stack, id: &str, fix: &Fix) -> Result<()> {
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

fn endpoint(group: &ReplicationGroup) -> Result<Redis> {
    let id = group.replication_group_id().unwrap_or_default();
    let primary = group
        .node_groups()
        .first()
        .and_then(|node_group| node_group.primary_endpoint())
        .and_then(|endpoint| Some((endpoint.address()?, endpoint.port())))
        .with_context(|| format!("the replication group {id} reports no primary endpoint"))?;
    Ok(Redis {
        address: primary.0.to_owned(),
        port: primary.1.map(u16::try_from).transpose()?.unwrap_or(PORT),
        tls: group.transit_encryption_enabled() == Some(true),
    })
}

/// The stack's Redis as `status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub id: String,
    /// `creating`, `available`, `modifying`, `deleting`, `create-failed`, `snapshotting`.
    pub status: String,
    /// `host:port` of the primary, once it has one.
    pub endpoint: Option<String>,
    pub node_type: String,
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

async fn describe_group(
    elasticache: &aws_sdk_elasticache::Client,
    id: &str,
) -> Result<Option<ReplicationGroup>> {
    let described = elasticache
        .describe_replication_groups()
        .replication_group_id(id)
        .send()
        .await;
    match described {
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|err| err.is_replication_group_not_found_fault()) =>
        {
            Ok(None)
        }
        described => Ok(described
            .call(format!("DescribeReplicationGroups {id}"))?
            .replication_groups
            .and_then(|groups| groups.into_iter().next())),
    }
}

async fn describe_subnet_group(stack: &Stack, name: &str) -> Result<Option<CacheSubnetGroup>> {
    let described = stack
        .clients
        .elasticache
        .describe_cache_subnet_groups()
        .cache_subnet_group_name(name)
        .send()
        .await;
    match described {
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|err| err.is_cache_subnet_group_not_found_fault()) =>
        {
            Ok(None)
        }
        described => Ok(described
            .call(format!("DescribeCacheSubnetGroups {name}"))?
            .cache_subnet_groups
            .and_then(|groups| groups.into_iter().next())),
    }
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

/// The stack's replication group and subnet group, the subnet group after the group.
pub async fn deletables(stack: &Stack) -> Result<Vec<Box<dyn Deletable>>> {
    let elasticache = &stack.clients.elasticache;
    let mut found: Vec<Box<dyn Deletable>> = Vec::new();
    let id = stack.names.replication_group();
    let group_owner = match describe_group(elasticache, &id).await? {
        Some(group) => owner(elasticache, &stack.names, group.arn()).await?,
        None => Owner::Other,
    };
    if group_owner != Owner::Other {
        found.push(Box::new(GroupDeletable {
            elasticache: elasticache.clone(),
            id: id.clone(),
            owner_to_confirm: (group_owner == Owner::NotYetReadable).then(|| stack.names.clone()),
        }));
    }
    let name = stack.names.cache_subnet_group();
    if let Some(group) = describe_subnet_group(stack, &name).await?
        && owner(elasticache, &stack.names, group.arn()).await? == Owner::Stack
    {
        found.push(Box::new(SubnetGroupDeletable {
            elasticache: elasticache.clone(),
            name,
            replication_group: id,
        }));
    }
    Ok(found)
}

struct GroupDeletable {
    elasticache: aws_sdk_elasticache::Client,
    id: String,
    /// Set when the group's tags could not be read yet (see [`Owner::NotYetReadable`]):
    /// they are read before it is deleted.
    owner_to_confirm: Option<Names>,
}

impl Deletable for GroupDeletable {
    fn key(&self) -> String {
        format!("elasticache-rg:{}", self.id)
    }

    fn label(&self) -> String {
        format!("redis {}", self.id)
    }

    /// Deleted only once it is gone, so that the subnet group waits for it. ElastiCache
    /// refuses to delete a group still being created or changed
    /// (`InvalidReplicationGroupState`,
    /// <https://docs.aws.amazon.com/AmazonElastiCache/latest/APIReference/API_DeleteReplicationGroup.html>),
    /// and creating one with Multi-AZ takes 15 to 25 minutes, deleting it minutes more:
    /// all of that is waited out as busy, however long, since it ends on its own.
    fn delete(&self) -> DeleteFuture<'_> {
        Box::pin(async move {
            let group = describe_group(&self.elasticache, &self.id)
                .await
                .map_err(DeleteError::Failed)?;
            let Some(group) = group else {
                return Ok(());
            };
            let status = group.status().unwrap_or_default();
            match status {
                "deleting" => return Err(DeleteError::Busy("deleting".to_owned())),
                "creating" | "modifying" | "snapshotting" => {
                    return Err(DeleteError::Busy(format!(
                        "{status}: ElastiCache takes it only once done, waiting"
                    )));
                }
                _ => {}
            }
            if let Some(names) = &self.owner_to_confirm {
                match owner(&self.elasticache, names, group.arn())
                    .await
                    .map_err(DeleteError::Failed)?
                {
                    Owner::Stack => {}
                    Owner::NotYetReadable => {
                        return Err(DeleteError::Busy(format!(
                            "{status}: its tags are not readable yet, waiting"
                        )));
                    }
                    Owner::Other => {
                        return Err(DeleteError::Failed(anyhow::anyhow!(
                            "the replication group {} does not carry the tag {STACK_TAG}={}: \
                             not this stack's, left in place. Delete it by hand if it should go",
                            self.id,
                            names.stack()
                        )));
                    }
                }
            }
            let result = self
                .elasticache
                .delete_replication_group()
                .replication_group_id(&self.id)
                .send()
                .await;
            if result.is_ok() {
                return Err(DeleteError::Busy("deleting".to_owned()));
            }
            delete_outcome(
                result,
                &format!("DeleteReplicationGroup {}", self.id),
                &["ReplicationGroupNotFoundFault"],
            )
        })
    }
}

struct SubnetGroupDeletable {
    elasticache: aws_sdk_elasticache::Client,
    name: String,
    replication_group: String,
}

impl Deletable for SubnetGroupDeletable {
    fn key(&self) -> String {
        format!("elasticache-subnet-group:{}", self.name)
    }

    fn label(&self) -> String {
        format!("cache subnet group {}", self.name)
    }

    fn blocked_by(&self) -> Vec<String> {
        vec![format!("elasticache-rg:{}", self.replication_group)]
    }

    fn delete(&self) -> DeleteFuture<'_> {
        Box::pin(async move {
            let result = self
                .elasticache
                .delete_cache_subnet_group()
                .cache_subnet_group_name(&self.name)
                .send()
                .await;
            delete_outcome(
                result,
                &format!("DeleteCacheSubnetGroup {}", self.name),
                &["CacheSubnetGroupNotFoundFault"],
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_elasticache::Client;
    use aws_sdk_elasticache::error::ErrorMetadata;
    use aws_sdk_elasticache::operation::create_cache_subnet_group::CreateCacheSubnetGroupOutput;
    use aws_sdk_elasticache::operation::create_replication_group::CreateReplicationGroupOutput;
    use aws_sdk_elasticache::operation::delete_cache_subnet_group::{
        DeleteCacheSubnetGroupError, DeleteCacheSubnetGroupOutput,
    };
    use aws_sdk_elasticache::operation::delete_replication_group::{
        DeleteReplicationGroupError, DeleteReplicationGroupOutput,
    };
    use aws_sdk_elasticache::operation::describe_cache_clusters::DescribeCacheClustersOutput;
    use aws_sdk_elasticache::operation::describe_cache_subnet_groups::{
        DescribeCacheSubnetGroupsError, DescribeCacheSubnetGroupsOutput,
    };
    use aws_sdk_elasticache::operation::describe_events::DescribeEventsOutput;
    use aws_sdk_elasticache::operation::describe_replication_groups::{
        DescribeReplicationGroupsError, DescribeReplicationGroupsOutput,
    };
    use aws_sdk_elasticache::operation::list_tags_for_resource::{
        ListTagsForResourceError, ListTagsForResourceOutput,
    };
    use aws_sdk_elasticache::operation::modify_replication_group::ModifyReplicationGroupOutput;
    use aws_sdk_elasticache::types::error::{
        CacheSubnetGroupInUse, CacheSubnetGroupNotFoundFault, InvalidReplicationGroupStateFault,
        ReplicationGroupNotFoundFault,
    };
    use aws_sdk_elasticache::types::{CacheCluster, Event};
    use aws_sdk_elasticache::types::{Endpoint, NodeGroup, Subnet};
    use aws_smithy_mocks::{MockResponse, Rule, RuleMode, mock, mock_client};

    use super::*;
    use crate::aws::Clients;
    use crate::engine::{self, Leftovers, Pace};
    use crate::stack::testing;

    const PRIMARY: &str = "master.chat-redis.abc.use1.cache.amazonaws.com";

    fn subnets() -> Vec<String> {
        vec!["subnet-a".into(), "subnet-b".into()]
    }

    /// The group as the example stack.yaml wants it: redis, one replica.
    fn group(status: &str) -> ReplicationGroup {
        ReplicationGroup::builder()
            .replication_group_id("chat-redis")
            .arn("arn:aws:elasticache:us-east-1:1:replicationgroup:chat-redis")
            .status(status)
            .engine("redis")
            .cache_node_type("cache.t4g.micro")
            .member_clusters("chat-redis-001")
            .member_clusters("chat-redis-002")
            .automatic_failover(AutomaticFailoverStatus::Enabled)
            .multi_az(MultiAzStatus::Enabled)
            .cluster_enabled(false)
            .transit_encryption_enabled(true)
            .at_rest_encryption_enabled(true)
            .node_groups(
                NodeGroup::builder()
                    .primary_endpoint(Endpoint::builder().address(PRIMARY).port(6379).build())
                    .build(),
            )
            .build()
    }

    fn described(group: ReplicationGroup) -> DescribeReplicationGroupsOutput {
        DescribeReplicationGroupsOutput::builder()
            .replication_groups(group)
            .build()
    }

    fn subnet_group() -> DescribeCacheSubnetGroupsOutput {
        let mut group = CacheSubnetGroup::builder()
            .cache_subnet_group_name("chat-cache")
            .arn("arn:aws:elasticache:us-east-1:1:subnetgroup:chat-cache");
        for id in subnets() {
            group = group.subnets(Subnet::builder().subnet_identifier(id).build());
        }
        DescribeCacheSubnetGroupsOutput::builder()
            .cache_subnet_groups(group.build())
            .build()
    }

    fn stack_tagged() -> ListTagsForResourceOutput {
        ListTagsForResourceOutput::builder()
            .tag_list(Tag::builder().key(STACK_TAG).value("chat").build())
            .build()
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_group_is_created_as_specified_and_waited_for_until_available() {
        let no_subnet_group = mock!(Client::describe_cache_subnet_groups).then_error(|| {
            DescribeCacheSubnetGroupsError::CacheSubnetGroupNotFoundFault(
                CacheSubnetGroupNotFoundFault::builder().build(),
            )
        });
        let create_subnet_group = mock!(Client::create_cache_subnet_group)
            .match_requests(|req| req.subnet_ids() == subnets().as_slice())
            .then_output(|| CreateCacheSubnetGroupOutput::builder().build());
        let describe = mock!(Client::describe_replication_groups)
            .sequence()
            .error(|| {
                DescribeReplicationGroupsError::ReplicationGroupNotFoundFault(
                    ReplicationGroupNotFoundFault::builder().build(),
                )
            })
            .output(|| described(group("creating")))
            .times(4)
            .output(|| described(group("available")))
            .build();
        let create = mock!(Client::create_replication_group)
            .match_requests(|req| {
                req.num_cache_clusters() == Some(2)
                    && req.automatic_failover_enabled() == Some(true)
                    && req.multi_az_enabled() == Some(true)
                    && req.transit_encryption_enabled() == Some(true)
                    && req.at_rest_encryption_enabled() == Some(true)
                    && req.engine() == Some("redis")
                    && req.cache_subnet_group_name() == Some("chat-cache")
                    && req.security_group_ids() == ["sg-redis"]
                    && req.tags().iter().any(|tag| tag.key() == Some(STACK_TAG))
            })
            .then_output(|| CreateReplicationGroupOutput::builder().build());
        let mut clients = testing::clients();
        clients.elasticache = mock_client!(
            aws_sdk_elasticache,
            RuleMode::MatchAny,
            [&no_subnet_group, &create_subnet_group, &describe, &create]
        );
        let mut stack = testing::stack(clients);
        stack.pace = Pace::Aws;

        let redis = ensure(&stack, &subnets(), "sg-redis").await.unwrap();

        assert_eq!(
            redis,
            Redis {
                address: PRIMARY.into(),
                port: 6379,
                tls: true
            }
        );
        assert_eq!(create.num_calls(), 1);
        assert_eq!(create_subnet_group.num_calls(), 1);
        assert_eq!(describe.num_calls(), 6);
    }

    #[tokio::test]
    async fn a_group_that_matches_the_spec_is_left_alone() {
        let subnet_group = mock!(Client::describe_cache_subnet_groups).then_output(subnet_group);
        let tags = mock!(Client::list_tags_for_resource).then_output(stack_tagged);
        let describe = mock!(Client::describe_replication_groups)
            .then_output(|| described(group("available")));
        let create_subnet_group = mock!(Client::create_cache_subnet_group)
            .then_output(|| CreateCacheSubnetGroupOutput::builder().build());
        let create = mock!(Client::create_replication_group)
            .then_output(|| CreateReplicationGroupOutput::builder().build());
        let modify = mock!(Client::modify_replication_group)
            .then_output(|| ModifyReplicationGroupOutput::builder().build());
        let mut clients = testing::clients();
        clients.elasticache = mock_client!(
            aws_sdk_elasticache,
            RuleMode::MatchAny,
            [
                &subnet_group,
                &tags,
                &describe,
                &create_subnet_group,
                &create,
                &modify
            ]
        );
        let mut stack = testing::stack(clients);
        stack.pace = Pace::Aws;

        let redis = ensure(&stack, &subnets(), "sg-redis").await.unwrap();

        assert_eq!(redis.address, PRIMARY);
        assert_eq!(create_subnet_group.num_calls(), 0);
        assert_eq!(create.num_calls(), 0);
        assert_eq!(modify.num_calls(), 0);
    }

    #[tokio::test]
    async fn a_changed_node_type_is_modified_in_place() {
        let subnet_group = mock!(Client::describe_cache_subnet_groups).then_output(subnet_group);
        let tags = mock!(Client::list_tags_for_resource).then_output(stack_tagged);
        let describe = mock!(Client::describe_replication_groups)
            .sequence()
            .output(|| described(group("available")))
            .times(2)
            .output(|| described(group("modifying")))
            .output(|| described(group("available")))
            .build();
        let modify = mock!(Client::modify_replication_group)
            .match_requests(|req| {
                req.cache_node_type() == Some("cache.r7g.large")
                    && req.apply_immediately() == Some(true)
            })
            .then_output(|| ModifyReplicationGroupOutput::builder().build());
        let mut clients = testing::clients();
        clients.elasticache = mock_client!(
            aws_sdk_elasticache,
            RuleMode::MatchAny,
            [&subnet_group, &tags, &describe, &modify]
        );
        let mut stack = testing::stack(clients);
        stack.spec.redis.node_type = "cache.r7g.large".into();

        ensure(&stack, &subnets(), "sg-redis").await.unwrap();

        assert_eq!(modify.num_calls(), 1);
        assert_eq!(describe.num_calls(), 4);
    }

    #[tokio::test]
    async fn another_engine_is_an_error_saying_to_re_create() {
        let subnet_group = mock!(Client::describe_cache_subnet_groups).then_output(subnet_group);
        let tags = mock!(Client::list_tags_for_resource).then_output(stack_tagged);
        let describe = mock!(Client::describe_replication_groups)
            .then_output(|| described(group("available")));
        let mut clients = testing::clients();
        clients.elasticache = mock_client!(
            aws_sdk_elasticache,
            RuleMode::MatchAny,
            [&subnet_group, &tags, &describe]
        );
        let mut stack = testing::stack(clients);
        stack.spec.redis.engine = "valkey".into();

        let err = ensure(&stack, &subnets(), "sg-redis")
            .await
            .unwrap_err()
            .to_string();

        assert!(
            err.contains("engine is redis, stack.yaml says valkey"),
            "{err}"
        );
        assert!(err.contains("destroy"), "{err}");
    }

    #[tokio::test]
    async fn replicas_change_around_failover_in_an_order_elasticache_accepts() {
        let mut clients = testing::clients();
        clients.elasticache = mock_client!(aws_sdk_elasticache, []);
        let mut stack = testing::stack(clients);
        let single = ReplicationGroup::builder()
            .cache_node_type("cache.t4g.micro")
            .member_clusters("chat-redis-001")
            .automatic_failover(AutomaticFailoverStatus::Disabled)
            .multi_az(MultiAzStatus::Disabled)
            .build();

        stack.spec.redis.replicas = 2;
        assert_eq!(
            fixes(&stack, &single).await.unwrap(),
            [Fix::AddReplicas(2), Fix::Failover(true)]
        );
        stack.spec.redis.replicas = 0;
        assert_eq!(
            fixes(&stack, &group("available")).await.unwrap(),
            [Fix::Failover(false), Fix::RemoveReplicas(0)]
        );
    }

    #[tokio::test]
    async fn the_subnet_group_is_deleted_after_the_replication_group() {
        let subnet_group = mock!(Client::describe_cache_subnet_groups).then_output(subnet_group);
        let tags = mock!(Client::list_tags_for_resource).then_output(stack_tagged);
        let describe = mock!(Client::describe_replication_groups)
            .then_output(|| described(group("available")));
        let mut clients = testing::clients();
        clients.elasticache = mock_client!(
            aws_sdk_elasticache,
            RuleMode::MatchAny,
            [&subnet_group, &tags, &describe]
        );
        let stack = testing::stack(clients);

        let found = deletables(&stack).await.unwrap();

        let keys: Vec<String> = found.iter().map(|d| d.key()).collect();
        assert_eq!(
            keys,
            [
                "elasticache-rg:chat-redis",
                "elasticache-subnet-group:chat-cache"
            ]
        );
        assert_eq!(found[1].blocked_by(), ["elasticache-rg:chat-redis"]);
    }

    /// What a stack whose Redis exists answers: its subnet group, its tags, and the
    /// replication group in `status`; plus `more`.
    fn existing(status: &'static str, more: &[&Rule]) -> Clients {
        let mut rules = vec![
            mock!(Client::describe_cache_subnet_groups).then_output(subnet_group),
            mock!(Client::list_tags_for_resource).then_output(stack_tagged),
            mock!(Client::describe_replication_groups)
                .then_output(move || described(group(status))),
        ];
        rules.extend(more.iter().map(|rule| (*rule).clone()));
        let mut clients = testing::clients();
        clients.elasticache = mock_client!(aws_sdk_elasticache, RuleMode::MatchAny, &rules);
        clients
    }

    #[tokio::test]
    async fn a_minor_version_left_out_in_stack_yaml_is_not_an_upgrade_every_time() {
        for (want, reported) in [("7.1", "7.1.0"), ("6.x", "6.2.6")] {
            // Only the nodes report the version, and in full.
            let nodes = mock!(Client::describe_cache_clusters).then_output(move || {
                DescribeCacheClustersOutput::builder()
                    .cache_clusters(
                        CacheCluster::builder()
                            .cache_cluster_id("chat-redis-001")
                            .engine_version(reported)
                            .build(),
                    )
                    .build()
            });
            let modify = mock!(Client::modify_replication_group)
                .then_output(|| ModifyReplicationGroupOutput::builder().build());
            let mut stack = testing::stack(existing("available", &[&nodes, &modify]));
            stack.spec.redis.engine_version = Some(want.into());

            ensure(&stack, &subnets(), "sg-redis").await.unwrap();

            assert_eq!(nodes.num_calls(), 1, "{want}");
            assert_eq!(modify.num_calls(), 0, "{want} is {reported}");
        }
        assert!(!version_matches("7.10.0", "7.1"));
        assert!(!version_matches("7.0.7", "6.x"));
    }

    /// A group whose creation failed says why only in its events
    /// (<https://docs.aws.amazon.com/AmazonElastiCache/latest/APIReference/API_DescribeEvents.html>;
    /// terraform-provider-aws's maintainers point users there for `create-failed`,
    /// hashicorp/terraform-provider-aws#8561).
    #[tokio::test]
    async fn a_failed_creation_is_reported_with_elasticaches_reason() {
        let events = mock!(Client::describe_events)
            .match_requests(|req| {
                req.source_type() == Some(&SourceType::ReplicationGroup)
                    && req.source_identifier() == Some("chat-redis")
            })
            .then_output(|| {
                let event = |secs: i64, message: &str| {
                    Event::builder()
                        .source_identifier("chat-redis")
                        .source_type(SourceType::ReplicationGroup)
                        .date(aws_smithy_types::DateTime::from_secs(secs))
                        .message(message)
                        .build()
                };
                // Newest first, as ElastiCache lists them.
                DescribeEventsOutput::builder()
                    .events(event(
                        200,
                        "Failed to create replication group chat-redis: insufficient \
                         capacity for cache.t4g.micro in us-east-1a",
                    ))
                    .events(event(100, "Replication group chat-redis created"))
                    .build()
            });
        let stack = testing::stack(existing("create-failed", &[&events]));

        let err = ensure(&stack, &subnets(), "sg-redis")
            .await
            .unwrap_err()
            .to_string();

        assert_eq!(events.num_calls(), 1);
        assert!(
            err.contains(
                "could not create the replication group chat-redis: Replication group \
                 chat-redis created; Failed to create replication group chat-redis: \
                 insufficient capacity"
            ),
            "{err}"
        );
        assert!(err.contains("realtime-stack destroy"), "{err}");
    }

    /// A replication group on tokio's clock: `creating` for `creating_for`, then
    /// `available`; from the DeleteReplicationGroup ElastiCache accepts, `deleting` for
    /// `deleting_for`, then gone. Its tags (the stack's unless `foreign`) can be read only
    /// while it is available (see [`Owner::NotYetReadable`]). The subnet group stays in use
    /// a moment longer.
    struct Lifetime {
        started: tokio::time::Instant,
        creating_for: Duration,
        deleting_for: Duration,
        deleted_at: Mutex<Option<tokio::time::Instant>>,
        subnet_group_refusals: Mutex<u32>,
        foreign: std::sync::atomic::AtomicBool,
    }

    impl Lifetime {
        fn new(creating_for: Duration, deleting_for: Duration) -> std::sync::Arc<Self> {
            std::sync::Arc::new(Self {
                started: tokio::time::Instant::now(),
                creating_for,
                deleting_for,
                deleted_at: Mutex::new(None),
                subnet_group_refusals: Mutex::new(0),
                foreign: false.into(),
            })
        }

        fn status(&self) -> Option<&'static str> {
            match *self.deleted_at.lock().unwrap() {
                Some(at) if at.elapsed() >= self.deleting_for => None,
                Some(_) => Some("deleting"),
                None if self.started.elapsed() < self.creating_for => Some("creating"),
                None => Some("available"),
            }
        }

        /// The stack's subnet group and replication group as `up` and `destroy` see them.
        fn rules(self: &std::sync::Arc<Self>) -> Vec<Rule> {
            let (describe, delete, delete_subnets) = (self.clone(), self.clone(), self.clone());
            let tags = self.clone();
            let not_found = || {
                ReplicationGroupNotFoundFault::builder()
                    .meta(
                        ErrorMetadata::builder()
                            .code("ReplicationGroupNotFoundFault")
                            .build(),
                    )
                    .build()
            };
            vec![
                mock!(Client::describe_cache_subnet_groups).then_output(subnet_group),
                mock!(Client::list_tags_for_resource)
                    .match_requests(|req| {
                        req.resource_name()
                            .is_some_and(|arn| arn.contains(":subnetgroup:"))
                    })
                    .then_output(stack_tagged),
                mock!(Client::list_tags_for_resource).then_compute_response(move |_| {
                    match tags.status() {
                        Some("available" | "modifying")
                            if tags.foreign.load(std::sync::atomic::Ordering::Relaxed) =>
                        {
                            MockResponse::Output(ListTagsForResourceOutput::builder().build())
                        }
                        Some("available" | "modifying") => MockResponse::Output(stack_tagged()),
                        _ => MockResponse::Error(
                            ListTagsForResourceError::InvalidReplicationGroupStateFault(
                                invalid_state(
                                    "Cluster not in available state to perform tagging operations.",
                                ),
                            ),
                        ),
                    }
                }),
                mock!(Client::describe_replication_groups).then_compute_response(move |_| {
                    match describe.status() {
                        Some(status) => MockResponse::Output(described(group(status))),
                        None => MockResponse::Error(
                            DescribeReplicationGroupsError::ReplicationGroupNotFoundFault(
                                not_found(),
                            ),
                        ),
                    }
                }),
                mock!(Client::delete_replication_group).then_compute_response(
                    move |_| match delete.status() {
                        Some("available") => {
                            *delete.deleted_at.lock().unwrap() = Some(tokio::time::Instant::now());
                            MockResponse::Output(DeleteReplicationGroupOutput::builder().build())
                        }
                        Some(status) => MockResponse::Error(
                            DeleteReplicationGroupError::InvalidReplicationGroupStateFault(
                                invalid_state(&format!(
                                    "Replication group chat-redis has status {status} which is \
                                     not valid for deletion."
                                )),
                            ),
                        ),
                        None => MockResponse::Error(
                            DeleteReplicationGroupError::ReplicationGroupNotFoundFault(not_found()),
                        ),
                    },
                ),
                mock!(Client::delete_cache_subnet_group).then_compute_response(move |_| {
                    let mut refusals = delete_subnets.subnet_group_refusals.lock().unwrap();
                    if delete_subnets.status().is_some() || *refusals == 0 {
                        *refusals += 1;
                        let message = "Cache subnet group chat-cache is currently in use by a \
                                       cache cluster.";
                        return MockResponse::Error(
                            DeleteCacheSubnetGroupError::CacheSubnetGroupInUse(
                                CacheSubnetGroupInUse::builder()
                                    .message(message)
                                    .meta(
                                        ErrorMetadata::builder()
                                            .code("CacheSubnetGroupInUse")
                                            .message(message)
                                            .build(),
                                    )
                                    .build(),
                            ),
                        );
                    }
                    MockResponse::Output(DeleteCacheSubnetGroupOutput::builder().build())
                }),
            ]
        }
    }

    fn invalid_state(message: &str) -> InvalidReplicationGroupStateFault {
        InvalidReplicationGroupStateFault::builder()
            .message(message)
            .meta(
                ErrorMetadata::builder()
                    .code("InvalidReplicationGroupState")
                    .message(message)
                    .build(),
            )
            .build()
    }

    /// Runs `destroy` over the stack's ElastiCache resources at AWS's pace and patience.
    async fn destroy_redis(rules: &[Rule]) -> Result<(), Leftovers> {
        let mut clients = testing::clients();
        clients.elasticache = mock_client!(aws_sdk_elasticache, RuleMode::MatchAny, rules);
        let stack = testing::stack(clients);
        let resources = deletables(&stack).await.unwrap();
        engine::destroy(
            resources,
            &stack.progress,
            Pace::Aws,
            Duration::from_secs(20 * 60),
        )
        .await
    }

    /// `destroy` right after `up` was stopped: the group is still `creating`, which
    /// takes 15 to 25 minutes with Multi-AZ on AWS and cannot be deleted until it ends
    /// (DeleteReplicationGroup: `InvalidReplicationGroupState`,
    /// <https://docs.aws.amazon.com/AmazonElastiCache/latest/APIReference/API_DeleteReplicationGroup.html>;
    /// the same answer, "has status ... which is not valid for deletion", is quoted in
    /// crossplane-contrib/provider-aws#46). Waiting for it is not a lack of progress,
    /// however long it lasts past the 20 minutes of patience.
    #[tokio::test(start_paused = true)]
    async fn destroy_waits_for_a_group_still_creating_then_deletes_it() {
        let lifetime = Lifetime::new(Duration::from_secs(40 * 60), Duration::from_secs(8 * 60));
        let rules = lifetime.rules();

        destroy_redis(&rules).await.unwrap();

        let [_, _, _, _, delete_group, delete_subnet_group] = &rules[..] else {
            unreachable!()
        };
        assert_eq!(delete_group.num_calls(), 1, "deleted once available");
        assert_eq!(delete_subnet_group.num_calls(), 2);
        assert!(lifetime.started.elapsed() >= Duration::from_secs(48 * 60));
        assert_eq!(lifetime.status(), None);
    }

    /// A group an earlier `destroy` left `deleting` (ElastiCache refuses a second
    /// delete: "has status deleting which is not valid for deletion", boto/boto3#1277)
    /// is waited for until gone, then the subnet group, which ElastiCache still says is
    /// in use for a moment (`CacheSubnetGroupInUse`,
    /// <https://docs.aws.amazon.com/AmazonElastiCache/latest/APIReference/API_DeleteCacheSubnetGroup.html>),
    /// is deleted on a later pass.
    #[tokio::test(start_paused = true)]
    async fn destroy_waits_for_a_group_being_deleted_then_deletes_its_subnet_group() {
        let lifetime = Lifetime::new(Duration::ZERO, Duration::from_secs(30 * 60));
        *lifetime.deleted_at.lock().unwrap() = Some(tokio::time::Instant::now());
        let rules = lifetime.rules();

        destroy_redis(&rules).await.unwrap();

        let [_, _, _, _, delete_group, delete_subnet_group] = &rules[..] else {
            unreachable!()
        };
        assert_eq!(delete_group.num_calls(), 0);
        assert_eq!(delete_subnet_group.num_calls(), 2);
        assert!(lifetime.started.elapsed() >= Duration::from_secs(30 * 60));
    }

    /// `up` after an `up` stopped while ElastiCache was creating the group: the group's
    /// tags cannot be read yet, so it waits for the group, then checks it is the stack's.
    #[tokio::test(start_paused = true)]
    async fn up_waits_for_a_group_still_creating_before_reading_whose_it_is() {
        let lifetime = Lifetime::new(Duration::from_secs(25 * 60), Duration::ZERO);
        let mut clients = testing::clients();
        clients.elasticache =
            mock_client!(aws_sdk_elasticache, RuleMode::MatchAny, &lifetime.rules());
        let mut stack = testing::stack(clients);
        stack.pace = Pace::Aws;

        let redis = ensure(&stack, &subnets(), "sg-redis").await.unwrap();

        assert_eq!(redis.address, PRIMARY);
        assert!(lifetime.started.elapsed() >= Duration::from_secs(25 * 60));

        lifetime
            .foreign
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let err = ensure(&stack, &subnets(), "sg-redis").await.unwrap_err();
        assert!(format!("{err:#}").contains("not this stack's"), "{err:#}");
    }

    /// `destroy` of a group still creating whose tags, once readable, are not the stack's:
    /// never deleted, and named in what is left.
    #[tokio::test(start_paused = true)]
    async fn destroy_does_not_delete_a_group_that_turns_out_not_to_be_the_stack_s() {
        let lifetime = Lifetime::new(Duration::from_secs(10 * 60), Duration::ZERO);
        lifetime
            .foreign
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let rules = lifetime.rules();

        let left = destroy_redis(&rules).await.unwrap_err();

        let [_, _, _, _, delete_group, _] = &rules[..] else {
            unreachable!()
        };
        assert_eq!(delete_group.num_calls(), 0);
        assert!(format!("{left}").contains("not this stack's"), "{left}");
    }
}
