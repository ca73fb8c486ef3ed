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
