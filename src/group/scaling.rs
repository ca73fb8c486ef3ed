//! The group's scaling policy, with `scaling` in stack.yaml: target tracking of the
//! group's average CPU (`ASGAverageCPUUtilization`, which CloudWatch has for every group
//! without an agent on the instances). Auto Scaling then sets the desired capacity
//! between `scaling.min` and `scaling.max`; `up` leaves the desired capacity it chose
//! alone. Without `scaling`, there is no policy and `instances.count` is the size.

use anyhow::Result;
use aws_sdk_autoscaling::types::{
    MetricType, PredefinedMetricSpecification, ScalingPolicy, TargetTrackingConfiguration,
};

use crate::aws::{Call, GROUP_NEW, once_known};
use crate::engine::Action;
use crate::stack::Stack;

const POLICY_TYPE: &str = "TargetTrackingScaling";

/// The stack's policy, if the group has it.
async fn find(stack: &Stack) -> Result<Option<ScalingPolicy>> {
    let group = stack.names.auto_scaling_group();
    let name = stack.names.scaling_policy();
    let described = stack
        .clients
        .autoscaling
        .describe_policies()
        .auto_scaling_group_name(&group)
        .policy_names(&name)
        .send()
        .await
        .call(format!("DescribePolicies {group}"))?;
    Ok(described
        .scaling_policies()
        .iter()
        .find(|policy| policy.policy_name() == Some(name.as_str()))
        .cloned())
}

/// The CPU target `policy` tracks, if it is the kind `up` makes.
fn cpu_target(policy: &ScalingPolicy) -> Option<f64> {
    let tracking = policy.target_tracking_configuration()?;
    let metric = tracking.predefined_metric_specification()?;
    (policy.policy_type() == Some(POLICY_TYPE)
        && metric.predefined_metric_type() == Some(&MetricType::AsgAverageCpuUtilization))
    .then_some(tracking.target_value()?)
}

/// Puts the policy `scaling` asks for, or deletes the stack's when there is no `scaling`.
/// The group must exist (or be planned).
pub async fn ensure(stack: &Stack) -> Result<()> {
    let group = stack.names.auto_scaling_group();
    let name = stack.names.scaling_policy();
    let resource = format!("scaling policy {name}");
    let existing = if super::describe(stack).await?.is_some() {
        find(stack).await?
    } else {
        None
    };
    let Some(scaling) = stack.spec.scaling else {
        if existing.is_some() && stack.make(Action::Delete, &resource, "stack.yaml has no scaling")
        {
            stack
                .clients
                .autoscaling
                .delete_policy()
                .auto_scaling_group_name(&group)
                .policy_name(&name)
                .send()
                .await
                .call(format!("DeletePolicy {name}"))?;
        }
        return Ok(());
    };
    let wanted = f64::from(scaling.cpu_target_percent);
    let what = format!(
        "average CPU {}% between {} and {} instances",
        scaling.cpu_target_percent, scaling.min, scaling.max
    );
    let (action, reason) = match existing.as_ref().map(cpu_target) {
        Some(Some(target)) if (target - wanted).abs() < f64::EPSILON => return Ok(()),
        Some(Some(target)) => (Action::Update, format!("CPU target {target}% → {what}")),
        Some(None) => (Action::Update, format!("another kind of policy → {what}")),
        None => (Action::Create, what),
    };
    if !stack.make(action, &resource, reason) {
        return Ok(());
    }
    let put = stack
        .clients
        .autoscaling
        .put_scaling_policy()
        .auto_scaling_group_name(&group)
        .policy_name(&name)
        .policy_type(POLICY_TYPE)
        .target_tracking_configuration(
            TargetTrackingConfiguration::builder()
                .predefined_metric_specification(
                    PredefinedMetricSpecification::builder()
                        .predefined_metric_type(MetricType::AsgAverageCpuUtilization)
                        .build(),
                )
                .target_value(wanted)
                .build(),
        );
    // The group may be seconds old.
    let call = format!("PutScalingPolicy {name}");
    once_known(stack.pace, &call, &GROUP_NEW, || put.clone().send()).await?;
    Ok(())
}

/// The policy as `status` shows it.
pub async fn describe(stack: &Stack) -> Result<Option<String>> {
    Ok(find(stack).await?.map(|policy| match cpu_target(&policy) {
        Some(target) => format!("keeps the average CPU at {target}%"),
        None => format!(
            "{} (not the kind up makes)",
            policy.policy_type().unwrap_or("a policy")
        ),
    }))
}
