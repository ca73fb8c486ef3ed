//! The Auto Scaling group LocalStack serves (the project's extension over moto) behaves
//! as AWS documents where moto alone does not, each case sent straight to LocalStack:
//!
//! - launches are spread over the group's zones, the zone with the fewest instances first
//!   ("Amazon EC2 Auto Scaling attempts to distribute instances evenly between the
//!   Availability Zones", https://docs.aws.amazon.com/autoscaling/ec2/userguide/auto-scaling-benefits.html#arch-AutoScalingMultiAZ);
//!   moto put both instances of a two-subnet group into the first subnet;
//! - instances get the launch template's metadata options (IMDSv2 only) and tags;
//! - an instance reported unhealthy is replaced once the group's grace period is over,
//!   and not before (https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_SetInstanceHealth.html,
//!   https://docs.aws.amazon.com/autoscaling/ec2/userguide/health-check-grace-period.html);
//!   moto only records the status;
//! - an instance leaving the group is deregistered from its target group at once and
//!   terminated after the deregistration delay, `Terminating` meanwhile
//!   (https://docs.aws.amazon.com/autoscaling/ec2/userguide/attach-load-balancer-asg.html);
//! - a termination that would take the desired capacity below the minimum is refused
//!   (https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_TerminateInstanceInAutoScalingGroup.html);
//! - the scaling activities say what happened and why, and a group with instances is not
//!   deleted without ForceDelete (https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_DeleteAutoScalingGroup.html).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_autoscaling::types::LaunchTemplateSpecification;
use aws_sdk_ec2::types::{
    LaunchTemplateHttpTokensState, LaunchTemplateInstanceMetadataOptionsRequest,
    LaunchTemplateTagSpecificationRequest, RequestLaunchTemplateData, ResourceType, Tag,
};
use aws_sdk_elasticloadbalancingv2::types::{ProtocolEnum, TargetGroupAttribute};
use support::poll_until;

/// The group's instances by zone, with their lifecycle states.
async fn instances(
    autoscaling: &aws_sdk_autoscaling::Client,
    name: &str,
) -> Vec<(String, String, String, String)> {
    let described = autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(name)
        .send()
        .await
        .expect("DescribeAutoScalingGroups");
    described.auto_scaling_groups()[0]
        .instances()
        .iter()
        .map(|instance| {
            (
                instance.instance_id().unwrap().to_owned(),
                instance.availability_zone().unwrap().to_owned(),
                instance.lifecycle_state().unwrap().as_str().to_owned(),
                instance.health_status().unwrap().to_owned(),
            )
        })
        .collect()
}

fn per_zone(instances: &[(String, String, String, String)]) -> BTreeMap<String, usize> {
    let mut zones = BTreeMap::new();
    for (_, zone, state, _) in instances {
        if state == "InService" {
            *zones.entry(zone.clone()).or_default() += 1;
        }
    }
    zones
}

#[tokio::test]
async fn the_group_balances_zones_drains_what_leaves_and_replaces_the_unhealthy() {
    let aws = support::localstack().await;
    let suffix = support::unique_suffix();
    let ec2 = aws_sdk_ec2::Client::new(&aws);
    let elbv2 = aws_sdk_elasticloadbalancingv2::Client::new(&aws);
    let autoscaling = aws_sdk_autoscaling::Client::new(&aws);

    let vpc = ec2
        .create_vpc()
        .cidr_block("10.78.0.0/16")
        .send()
        .await
        .expect("CreateVpc")
        .vpc
        .and_then(|vpc| vpc.vpc_id)
        .unwrap();
    let mut subnets = Vec::new();
    for (cidr, zone) in [
        ("10.78.1.0/24", "us-east-1a"),
        ("10.78.2.0/24", "us-east-1b"),
    ] {
        let subnet = ec2
            .create_subnet()
            .vpc_id(&vpc)
            .cidr_block(cidr)
            .availability_zone(zone)
            .send()
            .await
            .expect("CreateSubnet");
        subnets.push(subnet.subnet.unwrap().subnet_id.unwrap());
    }
    let target_group = elbv2
        .create_target_group()
        .name(format!("tg-{suffix}"))
        .protocol(ProtocolEnum::Http)
        .port(8080)
        .vpc_id(&vpc)
        .send()
        .await
        .expect("CreateTargetGroup")
        .target_groups()[0]
        .target_group_arn()
        .unwrap()
        .to_owned();
    elbv2
        .modify_target_group_attributes()
        .target_group_arn(&target_group)
        .attributes(
            TargetGroupAttribute::builder()
                .key("deregistration_delay.timeout_seconds")
                .value("3")
                .build(),
        )
        .send()
        .await
        .expect("ModifyTargetGroupAttributes");
    let template = ec2
        .create_launch_template()
        .launch_template_name(format!("lt-{suffix}"))
        .launch_template_data(
            RequestLaunchTemplateData::builder()
                .image_id("ami-0123456789abcdef0")
                .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
                .metadata_options(
                    LaunchTemplateInstanceMetadataOptionsRequest::builder()
                        .http_tokens(LaunchTemplateHttpTokensState::Required)
                        .build(),
                )
                .tag_specifications(
                    LaunchTemplateTagSpecificationRequest::builder()
                        .resource_type(ResourceType::Instance)
                        .tags(Tag::builder().key("launched-by").value(&suffix).build())
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .expect("CreateLaunchTemplate")
        .launch_template
        .unwrap()
        .launch_template_id
        .unwrap();
    let name = format!("asg-{suffix}");
    autoscaling
        .create_auto_scaling_group()
        .auto_scaling_group_name(&name)
        .launch_template(
            LaunchTemplateSpecification::builder()
                .launch_template_id(&template)
                .version("$Default")
                .build(),
        )
        .min_size(2)
        .max_size(4)
        .desired_capacity(2)
        .vpc_zone_identifier(subnets.join(","))
        .target_group_arns(&target_group)
        .health_check_type("ELB")
        .health_check_grace_period(2)
        .send()
        .await
        .expect("CreateAutoScalingGroup");

    // One instance in each zone, then two.
    let first = instances(&autoscaling, &name).await;
    assert_eq!(
        per_zone(&first),
        BTreeMap::from([("us-east-1a".to_owned(), 1), ("us-east-1b".to_owned(), 1)]),
        "{first:?}"
    );
    let described = ec2
        .describe_instances()
        .instance_ids(&first[0].0)
        .send()
        .await
        .expect("DescribeInstances");
    let launched = &described.reservations()[0].instances()[0];
    assert_eq!(
        launched
            .metadata_options()
            .and_then(|options| options.http_tokens())
            .map(|tokens| tokens.as_str()),
        Some("required"),
        "the template's metadata options"
    );
    assert!(
        launched
            .tags()
            .iter()
            .any(|tag| tag.key() == Some("launched-by") && tag.value() == Some(suffix.as_str())),
        "the template's tags"
    );
    autoscaling
        .update_auto_scaling_group()
        .auto_scaling_group_name(&name)
        .desired_capacity(4)
        .send()
        .await
        .expect("UpdateAutoScalingGroup");
    let four = instances(&autoscaling, &name).await;
    assert_eq!(
        per_zone(&four),
        BTreeMap::from([("us-east-1a".to_owned(), 2), ("us-east-1b".to_owned(), 2)]),
        "{four:?}"
    );

    // Leaving: deregistered at once, terminated after the delay.
    let leaving = four[0].0.clone();
    autoscaling
        .terminate_instance_in_auto_scaling_group()
        .instance_id(&leaving)
        .should_decrement_desired_capacity(true)
        .send()
        .await
        .expect("TerminateInstanceInAutoScalingGroup");
    let registered = |elbv2: aws_sdk_elasticloadbalancingv2::Client, arn: String| async move {
        elbv2
            .describe_target_health()
            .target_group_arn(arn)
            .send()
            .await
            .expect("DescribeTargetHealth")
            .target_health_descriptions()
            .iter()
            .filter_map(|d| d.target()?.id().map(str::to_owned))
            .collect::<Vec<String>>()
    };
    assert!(
        !registered(elbv2.clone(), target_group.clone())
            .await
            .contains(&leaving)
    );
    let now = instances(&autoscaling, &name).await;
    assert!(
        now.iter()
            .any(|(id, _, state, _)| *id == leaving && state.starts_with("Terminating")),
        "{now:?}"
    );
    poll_until(
        Duration::from_secs(30),
        "the drained instance to go",
        || {
            let autoscaling = autoscaling.clone();
            let (name, leaving) = (name.clone(), leaving.clone());
            async move {
                let now = instances(&autoscaling, &name).await;
                now.iter().all(|(id, ..)| *id != leaving).then_some(())
            }
        },
    )
    .await;
    let state = ec2
        .describe_instances()
        .instance_ids(&leaving)
        .send()
        .await
        .expect("DescribeInstances");
    assert_eq!(
        state.reservations()[0].instances()[0]
            .state()
            .and_then(|s| s.name())
            .map(|s| s.as_str()),
        Some("terminated")
    );

    // Unhealthy: replaced once the grace period is over, not before.
    autoscaling
        .update_auto_scaling_group()
        .auto_scaling_group_name(&name)
        .health_check_grace_period(3600)
        .send()
        .await
        .expect("UpdateAutoScalingGroup");
    let sick = instances(&autoscaling, &name).await[0].0.clone();
    let report = || {
        autoscaling
            .set_instance_health()
            .instance_id(&sick)
            .health_status("Unhealthy")
            .send()
    };
    report().await.expect("SetInstanceHealth");
    let within_grace = instances(&autoscaling, &name).await;
    assert!(
        within_grace
            .iter()
            .any(|(id, _, state, _)| *id == sick && state == "InService"),
        "not replaced within its grace period: {within_grace:?}"
    );
    autoscaling
        .update_auto_scaling_group()
        .auto_scaling_group_name(&name)
        .health_check_grace_period(0)
        .send()
        .await
        .expect("UpdateAutoScalingGroup");
    report().await.expect("SetInstanceHealth");
    let replaced = instances(&autoscaling, &name).await;
    assert!(
        replaced.iter().any(|(id, _, state, health)| *id == sick
            && state.starts_with("Terminating")
            && health == "Unhealthy"),
        "{replaced:?}"
    );
    assert_eq!(
        replaced
            .iter()
            .filter(|(.., state, _)| state == "InService")
            .count(),
        3,
        "a replacement launched: {replaced:?}"
    );
    let activities = autoscaling
        .describe_scaling_activities()
        .auto_scaling_group_name(&name)
        .send()
        .await
        .expect("DescribeScalingActivities");
    let causes: Vec<&str> = activities
        .activities()
        .iter()
        .filter_map(|activity| activity.cause())
        .collect();
    assert!(
        causes
            .iter()
            .any(|cause| cause.contains("ELB system health check failure")),
        "{causes:#?}"
    );
    assert!(
        causes.iter().any(|cause| cause.contains("user request")),
        "{causes:#?}"
    );

    // Below the minimum: refused. A group with instances: not deleted.
    autoscaling
        .update_auto_scaling_group()
        .auto_scaling_group_name(&name)
        .desired_capacity(2)
        .send()
        .await
        .expect("UpdateAutoScalingGroup");
    poll_until(Duration::from_secs(30), "the scale in", || {
        let autoscaling = autoscaling.clone();
        let name = name.clone();
        async move { (instances(&autoscaling, &name).await.len() == 2).then_some(()) }
    })
    .await;
    let last = instances(&autoscaling, &name).await[0].0.clone();
    let refused = autoscaling
        .terminate_instance_in_auto_scaling_group()
        .instance_id(&last)
        .should_decrement_desired_capacity(true)
        .send()
        .await
        .expect_err("below the minimum");
    assert_eq!(
        refused.as_service_error().and_then(|e| e.meta().code()),
        Some("ValidationError")
    );
    let in_use = autoscaling
        .delete_auto_scaling_group()
        .auto_scaling_group_name(&name)
        .send()
        .await
        .expect_err("a group with instances");
    assert_eq!(
        in_use.as_service_error().and_then(|e| e.meta().code()),
        Some("ResourceInUse")
    );
    autoscaling
        .delete_auto_scaling_group()
        .auto_scaling_group_name(&name)
        .force_delete(true)
        .send()
        .await
        .expect("DeleteAutoScalingGroup with ForceDelete");
}
