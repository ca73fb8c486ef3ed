//! The target group: its health check and attributes, the instances registered with it,
//! and how the load balancer sees them.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail, ensure as check};
use aws_sdk_elasticloadbalancingv2::types::{
    Matcher, ProtocolEnum, TargetDescription, TargetGroup, TargetHealth, TargetHealthStateEnum,
    TargetTypeEnum,
};
use aws_smithy_types::error::metadata::ProvideErrorMetadata as _;

use super::{
    HEALTH_CHECK_PATH, HEALTHY_THRESHOLD, UNHEALTHY_THRESHOLD, describe, drifted, is_ours,
    not_ours, tags,
};
use crate::aws::{Call, ELB_NEW, found, once_known};
use crate::deploy::Health;
use crate::engine::{Action, Step, is_planned, planned_id};
use crate::network::Network;
use crate::spec::DRAIN_START_SECONDS;
use crate::stack::Stack;

/// The target group of the stack's name, and whether it is the stack's.
pub(super) async fn find_target_group(stack: &Stack) -> Result<Option<(TargetGroup, bool)>> {
    let name = stack.names.target_group();
    let out = stack
        .clients
        .elbv2
        .describe_target_groups()
        .names(&name)
        .send()
        .await;
    let Some(found) = found(out, format!("DescribeTargetGroups {name}"), |err| {
        err.code() == Some("TargetGroupNotFound")
    })?
    else {
        return Ok(None);
    };
    let Some(group) = found.target_groups().first() else {
        return Ok(None);
    };
    let arn = group
        .target_group_arn()
        .context("target group without an ARN")?;
    Ok(Some((group.clone(), is_ours(stack, arn).await?)))
}

/// The health check's interval (`load_balancer.health_check_interval_seconds`) and
/// timeout, which the load balancer wants shorter than the interval.
fn health_check_timing(stack: &Stack) -> (i32, i32) {
    let interval =
        i32::try_from(stack.spec.load_balancer.health_check_interval_seconds).unwrap_or(i32::MAX);
    (interval, 5.min(interval - 1))
}

/// The stack's target group, when it exists and carries the stack's tag.
pub async fn owned_target_group(stack: &Stack) -> Result<Option<TargetGroup>> {
    Ok(find_target_group(stack)
        .await?
        .and_then(|(group, ours)| ours.then_some(group)))
}

/// How long a deregistered target keeps its open connections, in seconds.
pub async fn deregistration_delay(stack: &Stack, target_group_arn: &str) -> Result<u64> {
    let attributes = stack
        .clients
        .elbv2
        .describe_target_group_attributes()
        .target_group_arn(target_group_arn)
        .send()
        .await
        .call(format!(
            "DescribeTargetGroupAttributes {}",
            stack.names.target_group()
        ))?;
    // The ALB's default when the attribute is not reported.
    Ok(attributes
        .attributes()
        .iter()
        .find(|attribute| attribute.key() == Some(DEREGISTRATION_DELAY))
        .and_then(|attribute| attribute.value()?.parse().ok())
        .unwrap_or(300))
}

const DEREGISTRATION_DELAY: &str = "deregistration_delay.timeout_seconds";

/// As long as the server keeps serving open connections after its drain starts, and the
/// seconds the drain takes to start after the group deregisters the instance.
fn deregistration_delay_seconds(stack: &Stack) -> u32 {
    stack.spec.instances.drain_seconds + DRAIN_START_SECONDS
}

/// Whether the health check of `group` is the one wanted: `/healthz` on the traffic
/// port, which answers 503 while the server drains or has lost Redis.
fn health_check_matches(stack: &Stack, group: &TargetGroup) -> bool {
    let (interval, timeout) = health_check_timing(stack);
    group.health_check_enabled() != Some(false)
        && group.health_check_protocol() == Some(&ProtocolEnum::Http)
        && group
            .health_check_port()
            .is_none_or(|port| port == "traffic-port")
        && group.health_check_path() == Some(HEALTH_CHECK_PATH)
        && group.health_check_interval_seconds() == Some(interval)
        && group.health_check_timeout_seconds() == Some(timeout)
        && group.healthy_threshold_count() == Some(HEALTHY_THRESHOLD)
        && group.unhealthy_threshold_count() == Some(UNHEALTHY_THRESHOLD)
        && group.matcher().and_then(Matcher::http_code) == Some("200")
}

pub(super) fn matcher() -> Matcher {
    Matcher::builder().http_code("200").build()
}

/// The port of the stack's target group, when it has one on another port than
/// `instances.app_port`: an error saying how to change it. A target group's port cannot
/// change in place, and converge would otherwise move the instances' security group to
/// the new port before the target group refused it, cutting the live instances off.
pub async fn check_app_port(stack: &Stack) -> Result<u16> {
    let want = stack.spec.instances.app_port;
    let Some((group, true)) = find_target_group(stack).await? else {
        return Ok(want);
    };
    match group.port() {
        Some(have) if have != i32::from(want) => bail!(
            "target group {} sends to port {have}, and stack.yaml's instances.app_port is \
             {want}: a target group's port cannot change in place. Set app_port back to \
             {have}, or run destroy, then up",
            stack.names.target_group()
        ),
        _ => Ok(want),
    }
}

/// The target group with its health check and attributes; returns its ARN.
pub async fn ensure_target_group(stack: &Stack, network: &Network) -> Result<String> {
    let elbv2 = &stack.clients.elbv2;
    let name = stack.names.target_group();
    let port = i32::from(stack.spec.instances.app_port);
    let (interval, timeout) = health_check_timing(stack);
    let step = stack.progress.step(format!("target group {name}"));
    let work = async {
        step.set("looking up");
        let arn = match find_target_group(stack).await? {
            Some((_, false)) => return Err(not_ours("target group", &name, stack)),
            Some((group, true)) => {
                let arn = group
                    .target_group_arn()
                    .context("target group without an ARN")?
                    .to_owned();
                check!(
                    group.protocol() == Some(&ProtocolEnum::Http)
                        && group.port() == Some(port)
                        && group.vpc_id() == Some(network.vpc_id.as_str())
                        && group.target_type() == Some(&TargetTypeEnum::Instance),
                    "target group {name} does not match the stack (HTTP to port {port} of \
                     instances in {}), and these settings cannot change: run destroy, then up",
                    network.vpc_id
                );
                let reason = format!(
                    "health check GET {HEALTH_CHECK_PATH} every {interval} s, timeout \
                     {timeout} s, {HEALTHY_THRESHOLD} in a row"
                );
                if !health_check_matches(stack, &group)
                    && stack.make(Action::Update, format!("target group {name}"), reason)
                {
                    step.set("fixing its health check");
                    elbv2
                        .modify_target_group()
                        .target_group_arn(&arn)
                        .health_check_enabled(true)
                        .health_check_protocol(ProtocolEnum::Http)
                        .health_check_port("traffic-port")
                        .health_check_path(HEALTH_CHECK_PATH)
                        .health_check_interval_seconds(interval)
                        .health_check_timeout_seconds(timeout)
                        .healthy_threshold_count(HEALTHY_THRESHOLD)
                        .unhealthy_threshold_count(UNHEALTHY_THRESHOLD)
                        .matcher(matcher())
                        .send()
                        .await
                        .call(format!("ModifyTargetGroup {name}"))?;
                }
                arn
            }
            None => {
                let reason = format!(
                    "HTTP/1.1 to port {port}, health check GET {HEALTH_CHECK_PATH} every \
                     {interval} s, deregistration delay {} s",
                    deregistration_delay_seconds(stack)
                );
                if !stack.make(Action::Create, format!("target group {name}"), reason) {
                    return Ok(planned_id("target group"));
                }
                step.set("creating");
                let created = elbv2
                    .create_target_group()
                    .name(&name)
                    .protocol(ProtocolEnum::Http)
                    // The chat server speaks HTTP/1.1; WebSockets upgrade from it.
                    .protocol_version("HTTP1")
                    .port(port)
                    .vpc_id(&network.vpc_id)
                    .target_type(TargetTypeEnum::Instance)
                    .health_check_enabled(true)
                    .health_check_protocol(ProtocolEnum::Http)
                    .health_check_port("traffic-port")
                    .health_check_path(HEALTH_CHECK_PATH)
                    .health_check_interval_seconds(interval)
                    .health_check_timeout_seconds(timeout)
                    .healthy_threshold_count(HEALTHY_THRESHOLD)
                    .unhealthy_threshold_count(UNHEALTHY_THRESHOLD)
                    .matcher(matcher())
                    .set_tags(Some(tags(stack, "tg")))
                    .send()
                    .await
                    .call(format!("CreateTargetGroup {name}"))?;
                created
                    .target_groups()
                    .first()
                    .and_then(TargetGroup::target_group_arn)
                    .context("CreateTargetGroup returned no target group")?
                    .to_owned()
            }
        };
        ensure_target_group_attributes(stack, &step, &arn).await?;
        Ok(arn)
    };
    step.run(work, |_| {
        format!("HTTP/1.1 to port {port}, {HEALTH_CHECK_PATH}")
    })
    .await
}

pub(super) async fn ensure_target_group_attributes(
    stack: &Stack,
    step: &Step,
    arn: &str,
) -> Result<()> {
    let elbv2 = &stack.clients.elbv2;
    let wanted = [
        (
            DEREGISTRATION_DELAY,
            deregistration_delay_seconds(stack).to_string(),
        ),
        // Any instance serves any room: Redis fans messages out between them.
        ("stickiness.enabled", "false".to_owned()),
    ];
    // The target group may be seconds old.
    let call = format!("DescribeTargetGroupAttributes {arn}");
    let current = once_known(stack.pace, &call, &ELB_NEW, || {
        elbv2
            .describe_target_group_attributes()
            .target_group_arn(arn)
            .send()
    })
    .await?;
    let changes = drifted(
        current
            .attributes()
            .iter()
            .map(|a| (a.key().map(Into::into), a.value().map(Into::into))),
        &wanted,
    );
    if changes.is_empty()
        || !stack.make(
            Action::Update,
            format!("target group {}", stack.names.target_group()),
            describe(&changes),
        )
    {
        return Ok(());
    }
    step.set("setting attributes");
    let modify = elbv2
        .modify_target_group_attributes()
        .target_group_arn(arn)
        .set_attributes(Some(
            changes
                .into_iter()
                .map(|drift| {
                    aws_sdk_elasticloadbalancingv2::types::TargetGroupAttribute::builder()
                        .key(drift.key)
                        .value(drift.want)
                        .build()
                })
                .collect(),
        ));
    let call = format!("ModifyTargetGroupAttributes {arn}");
    once_known(stack.pace, &call, &ELB_NEW, || modify.clone().send()).await?;
    Ok(())
}

/// How the load balancer sees each target of the group, by instance id.
pub async fn target_health(
    stack: &Stack,
    target_group_arn: &str,
) -> Result<BTreeMap<String, Health>> {
    if is_planned(target_group_arn) {
        return Ok(BTreeMap::new());
    }
    let out = stack
        .clients
        .elbv2
        .describe_target_health()
        .target_group_arn(target_group_arn)
        .send()
        .await
        .call(format!(
            "DescribeTargetHealth {}",
            stack.names.target_group()
        ))?;
    Ok(out
        .target_health_descriptions()
        .iter()
        .filter_map(|description| {
            let id = description.target().and_then(TargetDescription::id)?;
            Some((id.to_owned(), health_of(description.target_health())))
        })
        .collect())
}

/// The load balancer's view of a target in the deploy's terms, with the reason it gives.
fn health_of(health: Option<&TargetHealth>) -> Health {
    let reason = || {
        let reason = health.and_then(TargetHealth::reason).map(|r| r.as_str());
        let description = health.and_then(TargetHealth::description);
        match (reason, description) {
            (Some(reason), Some(description)) => format!("{reason}: {description}"),
            (Some(text), None) | (None, Some(text)) => text.to_owned(),
            (None, None) => "no reason given".to_owned(),
        }
    };
    match health.and_then(TargetHealth::state) {
        Some(TargetHealthStateEnum::Healthy) => Health::Healthy,
        Some(TargetHealthStateEnum::Initial) => Health::Initial,
        Some(TargetHealthStateEnum::Unhealthy) => Health::Unhealthy(reason()),
        Some(TargetHealthStateEnum::Draining) => Health::Draining,
        Some(other) => Health::Other(format!("{}: {}", other.as_str(), reason())),
        None => Health::Other(reason()),
    }
}

fn targets(stack: &Stack, ids: &[String]) -> Vec<TargetDescription> {
    let port = i32::from(stack.spec.instances.app_port);
    ids.iter()
        .map(|id| TargetDescription::builder().id(id).port(port).build())
        .collect()
}

/// Deregisters `ids`: the load balancer sends them no new connections and keeps their open
/// ones for the deregistration delay.
pub async fn deregister(stack: &Stack, target_group_arn: &str, ids: &[String]) -> Result<()> {
    stack
        .clients
        .elbv2
        .deregister_targets()
        .target_group_arn(target_group_arn)
        .set_targets(Some(targets(stack, ids)))
        .send()
        .await
        .call(format!(
            "DeregisterTargets {} {}",
            stack.names.target_group(),
            ids.join(" ")
        ))?;
    Ok(())
}
