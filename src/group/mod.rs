//! The EC2 Auto Scaling group that keeps the instances: over both private subnets,
//! attached to the target group, replacing an instance the load balancer finds unhealthy
//! (the ELB health check type) once the grace period that covers its boot is over,
//! removing instances of the oldest launch template first, AZ rebalancing left on, as AWS
//! has it by default. It launches from the stack's launch template ([`template`]) and is
//! found by its name and owned only when it carries the stack's tag.
//!
//! The Redis endpoint reaches the instances as a group tag propagated at launch; the
//! instances launched while Redis was still being created are tagged directly
//! ([`ensure_redis_tag`], with [`crate::instances::ensure_redis_tag`]). Which instances to
//! replace, and when, is [`crate::deploy`]'s to decide.

pub mod scaling;
pub mod template;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use aws_sdk_autoscaling::operation::create_auto_scaling_group::CreateAutoScalingGroupError;
use aws_sdk_autoscaling::types::{LaunchTemplateSpecification, Tag};
use aws_smithy_types::date_time::Format;
use serde::Serialize;

use crate::aws::{Call, GROUP_BUSY, error_code, explain, made, once_known};
use crate::engine::{Action, Deletable, DeleteError, DeleteFuture, is_planned};
use crate::names::{REDIS_ENDPOINT_TAG, STACK_TAG};
use crate::stack::Stack;
use template::Template;

/// The role tag of the group.
pub const ROLE: &str = "instances";
/// The oldest launch template version goes first on scale in, then the oldest instance:
/// a roll's instances are the last to go.
const TERMINATION_POLICIES: [&str; 2] = ["OldestLaunchTemplate", "OldestInstance"];
/// The load balancer's health checks decide, not only EC2's status checks.
const HEALTH_CHECK_TYPE: &str = "ELB";
/// The group launches whatever version of the template is its default.
const TEMPLATE_VERSION: &str = "$Default";
/// How long a first `up` may wait for Redis (as [`crate::cache`] does): the instances it
/// launched meanwhile wait for their Redis tag and must not be replaced for it.
const REDIS_CREATION: i32 = 3600;

/// One instance of the group, as Auto Scaling describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub zone: String,
    /// `Pending`, `InService`, `Terminating`...
    pub lifecycle: String,
    /// `Healthy` or `Unhealthy`, as the group last judged it.
    pub health: String,
}

impl Member {
    /// Launching or in service: counted in the group's capacity.
    pub fn serving(&self) -> bool {
        self.lifecycle.starts_with("Pending") || self.lifecycle == "InService"
    }

    /// Leaving the group: deregistered, draining, then terminated.
    pub fn leaving(&self) -> bool {
        self.lifecycle.starts_with("Terminating")
    }
}

/// The group as `up`, `status` and a roll see it.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub desired: usize,
    pub min: usize,
    pub max: usize,
    pub members: Vec<Member>,
    pub grace_seconds: i32,
    group: aws_sdk_autoscaling::types::AutoScalingGroup,
}

/// The group's wanted size: its minimum, its maximum and the desired capacity it starts
/// at. Without `scaling`, `instances.count` all three (a roll raises the maximum while it
/// runs); with it, `scaling.min` and `scaling.max`, starting at `instances.count` (brought
/// between them), the scaling policy's to change from then on.
pub fn capacity(stack: &Stack) -> (usize, usize, usize) {
    let count = stack.spec.instances.count as usize;
    match stack.spec.scaling {
        None => (count, count, count),
        Some(scaling) => {
            let (min, max) = (scaling.min as usize, scaling.max as usize);
            (min, max, count.clamp(min, max))
        }
    }
}

/// The health check grace period: the boot's, `instances.health_timeout_seconds`; for a
/// group created while Redis does not exist yet, Redis's creation too, so that the
/// instances waiting for their Redis tag are not replaced for failing their health checks.
pub fn grace_seconds(stack: &Stack, redis_exists: bool) -> i32 {
    let boot = i32::try_from(stack.spec.instances.health_timeout_seconds).unwrap_or(i32::MAX);
    if redis_exists {
        boot
    } else {
        boot.saturating_add(REDIS_CREATION)
    }
}

/// The stack's group, if it exists; one of its name that lacks the stack's tag is refused.
pub async fn describe(stack: &Stack) -> Result<Option<Group>> {
    let name = stack.names.auto_scaling_group();
    let described = stack
        .clients
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(&name)
        .send()
        .await
        .call(format!("DescribeAutoScalingGroups {name}"))?;
    let Some(group) = described.auto_scaling_groups().first() else {
        return Ok(None);
    };
    let ours = group
        .tags()
        .iter()
        .any(|tag| stack.names.is_stack_tag(tag.key(), tag.value()));
    anyhow::ensure!(
        ours,
        "an Auto Scaling group named {name} exists but does not carry the tag {STACK_TAG}={}: \
         the name is taken by something that is not this stack's; rename the stack or delete \
         that group",
        stack.names.stack()
    );
    let size = |value: Option<i32>| usize::try_from(value.unwrap_or(0)).unwrap_or(0);
    Ok(Some(Group {
        name: name.clone(),
        desired: size(group.desired_capacity()),
        min: size(group.min_size()),
        max: size(group.max_size()),
        grace_seconds: group.health_check_grace_period().unwrap_or(0),
        members: group
            .instances()
            .iter()
            .map(|instance| Member {
                id: instance.instance_id().unwrap_or_default().to_owned(),
                zone: instance.availability_zone().unwrap_or_default().to_owned(),
                lifecycle: instance
                    .lifecycle_state()
                    .map(|state| state.as_str().to_owned())
                    .unwrap_or_default(),
                health: instance.health_status().unwrap_or_default().to_owned(),
            })
            .collect(),
        group: group.clone(),
    }))
}

/// The group's tags: the stack's (on the group only) and, once Redis exists, its endpoint,
/// propagated to every instance the group launches.
fn tags(stack: &Stack, redis_endpoint: Option<&str>) -> Vec<Tag> {
    let name = stack.names.auto_scaling_group();
    let tag = |key: &str, value: &str, propagate: bool| {
        Tag::builder()
            .resource_id(&name)
            .resource_type("auto-scaling-group")
            .key(key)
            .value(value)
            .propagate_at_launch(propagate)
            .build()
    };
    let mut tags: Vec<Tag> = stack
        .names
        .tags(ROLE)
        .iter()
        .map(|(key, value)| tag(key, value, false))
        .collect();
    if let Some(endpoint) = redis_endpoint {
        tags.push(tag(REDIS_ENDPOINT_TAG, endpoint, true));
    }
    tags
}

/// What the group is attached to and launches.
pub struct Wanted<'a> {
    pub template: &'a Template,
    pub subnets: &'a [String],
    pub target_group_arn: &'a str,
    /// The Redis endpoint when Redis exists already.
    pub redis_endpoint: Option<&'a str>,
}

fn launch_template(template: &Template) -> LaunchTemplateSpecification {
    LaunchTemplateSpecification::builder()
        .launch_template_id(&template.id)
        .version(TEMPLATE_VERSION)
        .build()
}

/// Creates the group, or sets back what drifted: its template, size, subnets, health
/// checks, termination policies, target group, suspended processes and tags. A desired
/// capacity is the group's own between two `up`s only when a scaling policy sets it.
pub async fn ensure(stack: &Stack, wanted: &Wanted<'_>) -> Result<()> {
    let group = match describe(stack).await? {
        Some(group) => group,
        None => {
            if create(stack, wanted).await? {
                return Ok(());
            }
            // Made by a create whose answer was lost: converged as found, owner and all.
            describe(stack).await?.with_context(|| {
                format!(
                    "Auto Scaling says {} exists, yet does not describe it: run `up` again",
                    stack.names.auto_scaling_group()
                )
            })?
        }
    };
    converge(stack, &group, wanted).await
}

/// Creates the group as `wanted` (`plan`: says it would); false when Auto Scaling answers
/// that it exists already, as it answers the SDK's second attempt at a create whose answer
/// was lost.
async fn create(stack: &Stack, wanted: &Wanted<'_>) -> Result<bool> {
    let name = stack.names.auto_scaling_group();
    let (min, max, desired) = capacity(stack);
    let grace = grace_seconds(stack, wanted.redis_endpoint.is_some());
    let reason = format!(
        "{desired} instance(s) over {}, replaced when unhealthy after a {grace} s grace period",
        wanted.subnets.join(" and ")
    );
    if !stack.make(Action::Create, format!("auto scaling group {name}"), reason) {
        return Ok(true);
    }
    let sent = stack
        .clients
        .autoscaling
        .create_auto_scaling_group()
        .auto_scaling_group_name(&name)
        .launch_template(launch_template(wanted.template))
        .min_size(to_i32(min))
        .max_size(to_i32(max))
        .desired_capacity(to_i32(desired))
        .vpc_zone_identifier(wanted.subnets.join(","))
        .target_group_arns(wanted.target_group_arn)
        .health_check_type(HEALTH_CHECK_TYPE)
        .health_check_grace_period(grace)
        .set_termination_policies(Some(TERMINATION_POLICIES.map(String::from).to_vec()))
        .set_tags(Some(tags(stack, wanted.redis_endpoint)))
        .send()
        .await;
    made(sent, CreateAutoScalingGroupError::is_already_exists_fault)
        .call(format!("CreateAutoScalingGroup {name}"))
}

async fn converge(stack: &Stack, group: &Group, wanted: &Wanted<'_>) -> Result<()> {
    let name = &group.name;
    let resource = format!("auto scaling group {name}");
    let (min, max, desired) = capacity(stack);
    let described = &group.group;
    let mut drift = Vec::new();
    let mut update = stack
        .clients
        .autoscaling
        .update_auto_scaling_group()
        .auto_scaling_group_name(name);
    let template = described.launch_template();
    if template.and_then(|t| t.launch_template_id()) != Some(wanted.template.id.as_str())
        || template.and_then(|t| t.version()) != Some(TEMPLATE_VERSION)
    {
        drift.push(format!(
            "launch template {} {TEMPLATE_VERSION}",
            stack.names.launch_template()
        ));
        update = update.launch_template(launch_template(wanted.template));
    }
    // With a scaling policy, the desired capacity is the policy's between min and max:
    // not drift.
    let desired = match stack.spec.scaling {
        Some(_) => group.desired.clamp(min, max),
        None => desired,
    };
    if (group.min, group.max, group.desired) != (min, max, desired) {
        drift.push(format!(
            "size (min, max, desired) ({}, {}, {}) → ({min}, {max}, {desired})",
            group.min, group.max, group.desired
        ));
        update = update
            .min_size(to_i32(min))
            .max_size(to_i32(max))
            .desired_capacity(to_i32(desired));
    }
    let mut subnets: Vec<&str> = described
        .vpc_zone_identifier()
        .unwrap_or_default()
        .split(',')
        .filter(|subnet| !subnet.is_empty())
        .collect();
    subnets.sort_unstable();
    let mut wanted_subnets: Vec<&str> = wanted.subnets.iter().map(String::as_str).collect();
    wanted_subnets.sort_unstable();
    if subnets != wanted_subnets {
        drift.push(format!("subnets → {}", wanted.subnets.join(" ")));
        update = update.vpc_zone_identifier(wanted.subnets.join(","));
    }
    if described.health_check_type() != Some(HEALTH_CHECK_TYPE) {
        drift.push(format!("health check type → {HEALTH_CHECK_TYPE}"));
        update = update.health_check_type(HEALTH_CHECK_TYPE);
    }
    if described.termination_policies() != TERMINATION_POLICIES {
        drift.push(format!(
            "termination policies → {}",
            TERMINATION_POLICIES.join(", ")
        ));
        update =
            update.set_termination_policies(Some(TERMINATION_POLICIES.map(String::from).to_vec()));
    }
    if !drift.is_empty() && stack.make(Action::Update, &resource, drift.join(", ")) {
        update
            .send()
            .await
            .call(format!("UpdateAutoScalingGroup {name}"))?;
    }
    let autoscaling = &stack.clients.autoscaling;
    if !is_planned(wanted.target_group_arn)
        && !described
            .target_group_arns()
            .iter()
            .any(|arn| arn == wanted.target_group_arn)
        && stack.make(
            Action::Update,
            &resource,
            format!("attach target group {}", stack.names.target_group()),
        )
    {
        autoscaling
            .attach_load_balancer_target_groups()
            .auto_scaling_group_name(name)
            .target_group_arns(wanted.target_group_arn)
            .send()
            .await
            .call(format!("AttachLoadBalancerTargetGroups {name}"))?;
    }
    let suspended: Vec<&str> = described
        .suspended_processes()
        .iter()
        .filter_map(|process| process.process_name())
        .collect();
    if !suspended.is_empty()
        && stack.make(
            Action::Update,
            &resource,
            format!("resume {}", suspended.join(", ")),
        )
    {
        autoscaling
            .resume_processes()
            .auto_scaling_group_name(name)
            .send()
            .await
            .call(format!("ResumeProcesses {name}"))?;
    }
    ensure_tags(stack, group, wanted.redis_endpoint).await
}

/// Writes the group's tags that are missing or say something else.
async fn ensure_tags(stack: &Stack, group: &Group, redis_endpoint: Option<&str>) -> Result<()> {
    let have: BTreeMap<&str, (&str, bool)> = group
        .group
        .tags()
        .iter()
        .filter_map(|tag| {
            Some((
                tag.key()?,
                (
                    tag.value().unwrap_or_default(),
                    tag.propagate_at_launch().unwrap_or(false),
                ),
            ))
        })
        .collect();
    let missing: Vec<Tag> = tags(stack, redis_endpoint)
        .into_iter()
        .filter(|tag| {
            have.get(tag.key().unwrap_or_default()).copied()
                != Some((
                    tag.value().unwrap_or_default(),
                    tag.propagate_at_launch().unwrap_or(false),
                ))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = missing.iter().filter_map(Tag::key).collect();
    if !stack.make(
        Action::Update,
        format!("auto scaling group {}", group.name),
        format!("tag {}", keys.join(", ")),
    ) {
        return Ok(());
    }
    stack
        .clients
        .autoscaling
        .create_or_update_tags()
        .set_tags(Some(missing))
        .send()
        .await
        .call(format!("CreateOrUpdateTags {}", group.name))?;
    Ok(())
}

/// Tags the group with the Redis endpoint, which it propagates to every instance it
/// launches from now on.
pub async fn ensure_redis_tag(stack: &Stack, endpoint: &str) -> Result<()> {
    match describe(stack).await? {
        Some(group) => ensure_tags(stack, &group, Some(endpoint)).await,
        // `plan` on a stack whose group does not exist yet: its creation is shown.
        None => Ok(()),
    }
}

/// Sets the grace period to the boot's, once the instances are healthy (a first `up`
/// created the group with Redis's creation in it).
pub async fn settle_grace(stack: &Stack) -> Result<()> {
    let Some(group) = describe(stack).await? else {
        return Ok(());
    };
    let grace = grace_seconds(stack, true);
    if group.grace_seconds == grace
        || !stack.make(
            Action::Update,
            format!("auto scaling group {}", group.name),
            format!(
                "health check grace period {} s → {grace} s",
                group.grace_seconds
            ),
        )
    {
        return Ok(());
    }
    stack
        .clients
        .autoscaling
        .update_auto_scaling_group()
        .auto_scaling_group_name(&group.name)
        .health_check_grace_period(grace)
        .send()
        .await
        .call(format!(
            "UpdateAutoScalingGroup {} grace period",
            group.name
        ))?;
    Ok(())
}

/// Sets the desired capacity and the maximum, those given.
/// Sent again while the group is busy with a scaling activity ([`GROUP_BUSY`]).
pub async fn resize(stack: &Stack, desired: Option<usize>, max: Option<usize>) -> Result<()> {
    let name = stack.names.auto_scaling_group();
    once_known(
        stack.pace,
        &format!("UpdateAutoScalingGroup {name} desired capacity {desired:?}, max {max:?}"),
        &GROUP_BUSY,
        || {
            stack
                .clients
                .autoscaling
                .update_auto_scaling_group()
                .auto_scaling_group_name(&name)
                .set_desired_capacity(desired.map(to_i32))
                .set_max_size(max.map(to_i32))
                .send()
        },
    )
    .await?;
    Ok(())
}

/// What changes the group's size on its own, besides health replacements: the scaling
/// policy's alarms, scheduled actions, and the rebalancing of zones.
/// <https://docs.aws.amazon.com/autoscaling/ec2/userguide/as-suspend-resume-processes.html>
const SCALING_PROCESSES: [&str; 3] = ["AlarmNotification", "ScheduledActions", "AZRebalance"];

/// Suspends ([`SCALING_PROCESSES`]) or resumes the group's own scaling.
pub async fn hold_scaling(stack: &Stack, hold: bool) -> Result<()> {
    let name = stack.names.auto_scaling_group();
    let processes = Some(SCALING_PROCESSES.map(String::from).to_vec());
    let autoscaling = &stack.clients.autoscaling;
    if hold {
        autoscaling
            .suspend_processes()
            .auto_scaling_group_name(&name)
            .set_scaling_processes(processes)
            .send()
            .await
            .call(format!("SuspendProcesses {name}"))?;
    } else {
        autoscaling
            .resume_processes()
            .auto_scaling_group_name(&name)
            .set_scaling_processes(processes)
            .send()
            .await
            .call(format!("ResumeProcesses {name}"))?;
    }
    Ok(())
}

/// Takes `id` out of the group: deregistered from the target group, drained for the
/// deregistration delay, terminated. With `decrement`, the group's desired capacity goes
/// down by one; without, the group launches a replacement. While another instance still
/// drains, the group refuses ([`GROUP_BUSY`]): this one goes once that one has.
pub async fn terminate(stack: &Stack, id: &str, decrement: bool) -> Result<()> {
    once_known(
        stack.pace,
        &format!("TerminateInstanceInAutoScalingGroup {id}"),
        &GROUP_BUSY,
        || {
            stack
                .clients
                .autoscaling
                .terminate_instance_in_auto_scaling_group()
                .instance_id(id)
                .should_decrement_desired_capacity(decrement)
                .send()
        },
    )
    .await?;
    Ok(())
}

/// One scaling activity, as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Activity {
    /// RFC 3339.
    pub started: String,
    pub status: String,
    pub description: String,
    pub cause: String,
}

/// The group as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub name: String,
    pub desired: usize,
    pub min: usize,
    pub max: usize,
    pub in_service: usize,
    pub grace_seconds: i32,
    /// The scaling policy, in words, when there is one.
    pub policy: Option<String>,
    /// The newest first.
    pub activities: Vec<Activity>,
}

/// How many scaling activities `status` shows.
const ACTIVITIES_SHOWN: i32 = 8;

pub async fn summary(stack: &Stack) -> Result<Option<Summary>> {
    let Some(group) = describe(stack).await? else {
        return Ok(None);
    };
    let described = stack
        .clients
        .autoscaling
        .describe_scaling_activities()
        .auto_scaling_group_name(&group.name)
        .max_records(ACTIVITIES_SHOWN)
        .send()
        .await
        .call(format!("DescribeScalingActivities {}", group.name))?;
    let activities = described
        .activities()
        .iter()
        .map(|activity| Activity {
            started: activity
                .start_time()
                .and_then(|time| time.fmt(Format::DateTime).ok())
                .unwrap_or_default(),
            status: activity
                .status_code()
                .map(|status| status.as_str().to_owned())
                .unwrap_or_default(),
            description: activity.description().unwrap_or_default().to_owned(),
            cause: activity.cause().unwrap_or_default().to_owned(),
        })
        .collect();
    let policy = scaling::describe(stack).await?;
    Ok(Some(Summary {
        policy,
        in_service: group
            .members
            .iter()
            .filter(|m| m.lifecycle == "InService")
            .count(),
        name: group.name,
        desired: group.desired,
        min: group.min,
        max: group.max,
        grace_seconds: group.grace_seconds,
        activities,
    }))
}

fn to_i32(value: usize) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// The destroy loop's key of the stack's group: what the instances and the template wait
/// for.
pub fn deletable_key(stack: &Stack) -> String {
    format!("auto-scaling-group:{}", stack.names.auto_scaling_group())
}

/// The group and its launch template, to delete: the group first, its instances drained.
pub async fn deletables(stack: &Stack) -> Result<Vec<Box<dyn Deletable>>> {
    let mut found: Vec<Box<dyn Deletable>> = Vec::new();
    if describe(stack).await?.is_some() {
        found.push(Box::new(AutoScalingGroup {
            autoscaling: stack.clients.autoscaling.clone(),
            name: stack.names.auto_scaling_group(),
            key: deletable_key(stack),
        }));
    }
    found.extend(template::deletables(stack).await?);
    Ok(found)
}

struct AutoScalingGroup {
    autoscaling: aws_sdk_autoscaling::Client,
    name: String,
    key: String,
}

impl AutoScalingGroup {
    /// Scales the group to nothing, so that its instances drain as on any scale in; then
    /// deletes it once they are gone.
    async fn delete_drained(&self) -> Result<(), DeleteError> {
        let described = self
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(&self.name)
            .send()
            .await
            .call(format!("DescribeAutoScalingGroups {}", self.name))
            .map_err(DeleteError::Failed)?;
        let Some(group) = described.auto_scaling_groups().first() else {
            return Ok(());
        };
        if group.max_size() != Some(0) || group.desired_capacity() != Some(0) {
            self.autoscaling
                .update_auto_scaling_group()
                .auto_scaling_group_name(&self.name)
                .min_size(0)
                .max_size(0)
                .desired_capacity(0)
                .send()
                .await
                .call(format!("UpdateAutoScalingGroup {} to 0", self.name))
                .map_err(DeleteError::Failed)?;
        }
        if !group.instances().is_empty() {
            return Err(DeleteError::Busy(format!(
                "{} instance(s) draining before the group goes",
                group.instances().len()
            )));
        }
        let deleted = self
            .autoscaling
            .delete_auto_scaling_group()
            .auto_scaling_group_name(&self.name)
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(()),
            Err(err)
                if matches!(
                    error_code(&err),
                    Some("ScalingActivityInProgress" | "ResourceInUse")
                ) =>
            {
                Err(DeleteError::Busy(format!(
                    "its last instances are still terminating ({})",
                    error_code(&err).unwrap_or_default()
                )))
            }
            Err(err) => Err(DeleteError::Failed(explain(
                &format!("DeleteAutoScalingGroup {}", self.name),
                err,
            ))),
        }
    }
}

impl Deletable for AutoScalingGroup {
    fn key(&self) -> String {
        self.key.clone()
    }

    fn label(&self) -> String {
        format!("auto scaling group {}", self.name)
    }

    fn delete(&self) -> DeleteFuture<'_> {
        Box::pin(self.delete_drained())
    }
}
