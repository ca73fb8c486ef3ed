use std::time::Duration;

use aws_sdk_autoscaling::Client;
use aws_sdk_autoscaling::error::ErrorMetadata;
use aws_sdk_autoscaling::operation::terminate_instance_in_auto_scaling_group::{
    TerminateInstanceInAutoScalingGroupError, TerminateInstanceInAutoScalingGroupOutput,
};
use aws_sdk_autoscaling::operation::update_auto_scaling_group::{
    UpdateAutoScalingGroupError, UpdateAutoScalingGroupOutput,
};
use aws_sdk_autoscaling::types::error::{ResourceContentionFault, ScalingActivityInProgressFault};
use aws_smithy_mocks::{RuleMode, mock, mock_client};

use super::*;
use crate::engine::Pace;
use crate::stack::testing;

fn in_progress() -> ScalingActivityInProgressFault {
    ScalingActivityInProgressFault::builder()
        .message("Activity 7f0e is in progress.")
        .meta(
            ErrorMetadata::builder()
                .code("ScalingActivityInProgress")
                .message("Activity 7f0e is in progress.")
                .build(),
        )
        .build()
}

/// An instance taken out while another still drains: the group refuses with
/// `ScalingActivityInProgress` until that one is gone (keikoproj/upgrade-manager#77,
/// kubernetes/kops#6900), and so may a resize (TwiN/aws-eks-asg-rolling-update-handler#16),
/// or with `ResourceContention` while another update to the group is pending.
/// Both are sent again until the group takes them, on AWS's pace; anything else is not.
#[tokio::test(start_paused = true)]
async fn a_group_busy_draining_gets_the_call_again_once_it_is_done() {
    let terminating = mock!(Client::terminate_instance_in_auto_scaling_group)
        .sequence()
        .error(|| {
            TerminateInstanceInAutoScalingGroupError::ScalingActivityInProgressFault(in_progress())
        })
        .times(4)
        .output(|| TerminateInstanceInAutoScalingGroupOutput::builder().build())
        .build();
    let resizing = mock!(Client::update_auto_scaling_group)
        .sequence()
        .error(|| UpdateAutoScalingGroupError::ScalingActivityInProgressFault(in_progress()))
        .error(|| {
            UpdateAutoScalingGroupError::ResourceContentionFault(
                ResourceContentionFault::builder()
                    .meta(
                        ErrorMetadata::builder()
                            .code("ResourceContention")
                            .message(
                                "You already have a pending update to an Auto Scaling resource.",
                            )
                            .build(),
                    )
                    .build(),
            )
        })
        .output(|| UpdateAutoScalingGroupOutput::builder().build())
        .build();
    let mut clients = testing::clients();
    clients.autoscaling = mock_client!(
        aws_sdk_autoscaling,
        RuleMode::MatchAny,
        [&terminating, &resizing]
    );
    let mut stack = testing::stack(clients);
    stack.pace = Pace::Aws;
    let started = tokio::time::Instant::now();

    terminate(&stack, "i-2", true).await.unwrap();
    resize(&stack, Some(2), Some(2)).await.unwrap();

    assert_eq!(terminating.num_calls(), 5);
    assert_eq!(resizing.num_calls(), 3);
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "{:?}",
        started.elapsed()
    );
}

/// A group that stays busy past the longest deregistration delay: the error names the
/// call, AWS's answer and where to look.
#[tokio::test(start_paused = true)]
async fn a_group_busy_for_longer_than_any_drain_is_an_error_saying_where_to_look() {
    let terminating = mock!(Client::terminate_instance_in_auto_scaling_group).then_error(|| {
        TerminateInstanceInAutoScalingGroupError::ScalingActivityInProgressFault(in_progress())
    });
    let mut clients = testing::clients();
    clients.autoscaling = mock_client!(aws_sdk_autoscaling, RuleMode::MatchAny, [&terminating]);
    let mut stack = testing::stack(clients);
    stack.pace = Pace::Aws;

    let err = format!("{:#}", terminate(&stack, "i-2", true).await.unwrap_err());

    assert!(
        err.starts_with(
            "TerminateInstanceInAutoScalingGroup i-2 failed: ScalingActivityInProgress"
        ),
        "{err}"
    );
    assert!(err.contains("`realtime-stack status`"), "{err}");
}

/// The SDK sends a CreateAutoScalingGroup whose answer was lost (a timeout, a 5xx) again,
/// and Auto Scaling answers the second with `AlreadyExists`: the group the first made is
/// described (its stack tag checked) and converged like one found, not refused.
#[tokio::test]
async fn a_group_already_made_by_a_lost_create_is_converged_as_found() {
    use aws_sdk_autoscaling::operation::attach_load_balancer_target_groups::AttachLoadBalancerTargetGroupsOutput;
    use aws_sdk_autoscaling::operation::create_or_update_tags::CreateOrUpdateTagsOutput;
    use aws_sdk_autoscaling::operation::describe_auto_scaling_groups::DescribeAutoScalingGroupsOutput;
    use aws_sdk_autoscaling::types::AutoScalingGroup;
    use aws_sdk_autoscaling::types::error::AlreadyExistsFault;

    let stack_tag = aws_sdk_autoscaling::types::TagDescription::builder()
        .key(STACK_TAG)
        .value("chat")
        .build();
    let describe = mock!(Client::describe_auto_scaling_groups)
        .sequence()
        .output(|| DescribeAutoScalingGroupsOutput::builder().build())
        .output(move || {
            DescribeAutoScalingGroupsOutput::builder()
                .auto_scaling_groups(
                    AutoScalingGroup::builder()
                        .auto_scaling_group_name("chat-instances")
                        .tags(stack_tag.clone())
                        .build(),
                )
                .build()
        })
        .build();
    let create = mock!(Client::create_auto_scaling_group).then_error(|| {
        CreateAutoScalingGroupError::AlreadyExistsFault(
            AlreadyExistsFault::builder()
                .meta(ErrorMetadata::builder().code("AlreadyExists").build())
                .build(),
        )
    });
    let update = mock!(Client::update_auto_scaling_group)
        .then_output(|| UpdateAutoScalingGroupOutput::builder().build());
    let attach = mock!(Client::attach_load_balancer_target_groups)
        .then_output(|| AttachLoadBalancerTargetGroupsOutput::builder().build());
    let tag = mock!(Client::create_or_update_tags)
        .then_output(|| CreateOrUpdateTagsOutput::builder().build());
    let mut clients = testing::clients();
    clients.autoscaling = mock_client!(
        aws_sdk_autoscaling,
        RuleMode::MatchAny,
        [&describe, &create, &update, &attach, &tag]
    );
    let stack = testing::stack(clients);
    let template = Template {
        id: "lt-1".into(),
        version: 1,
        previous: None,
    };
    let subnets = ["subnet-qa".to_owned(), "subnet-qb".to_owned()];

    ensure(
        &stack,
        &Wanted {
            template: &template,
            subnets: &subnets,
            target_group_arn: "arn:tg",
            redis_endpoint: None,
        },
    )
    .await
    .unwrap();

    assert_eq!(create.num_calls(), 1);
    assert_eq!(describe.num_calls(), 2);
    assert_eq!(
        update.num_calls(),
        1,
        "what the lost create made is converged"
    );
}
