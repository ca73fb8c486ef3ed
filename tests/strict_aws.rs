//! The strict layer of the project's LocalStack extension
//! (scripts/localstack-extension/realtime_stack_localstack/strict.py): each constraint
//! AWS documents on a request the CLI sends, broken on purpose through the AWS SDK clients
//! the CLI uses, and answered with AWS's error code; and next to each, the nearest valid
//! request accepted, so that no rule is wider than AWS's. The pages each rule rests on are
//! cited in strict.py.

mod support;

use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_ec2::types::{
    InstanceMetadataOptionsRequest, InstanceMetadataTagsState, IpPermission, IpRange, Ipv6Range,
    PrefixListId, ResourceType, Tag, TagSpecification, UserIdGroupPair,
};
use aws_sdk_elasticloadbalancingv2::types::{
    LoadBalancerAttribute, ProtocolEnum, RuleCondition, TargetGroupAttribute,
};
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// Fails unless `result` is AWS's refusal `code`, with a message containing `says`.
#[track_caller]
fn refused<T: std::fmt::Debug, E, R>(result: Result<T, SdkError<E, R>>, code: &str, says: &str)
where
    E: ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    let err = result.expect_err(&format!(
        "AWS refuses this with {code}, LocalStack accepted it"
    ));
    let Some(service) = err.as_service_error() else {
        panic!("expected {code}, got {err:?}");
    };
    assert_eq!(service.code(), Some(code), "{err:?}");
    let message = service.message().unwrap_or_default();
    assert!(
        message.contains(says),
        "{code}: {message:?} does not say {says:?}"
    );
}

/// Fails unless `result` succeeded.
#[track_caller]
fn accepted<T, E: std::fmt::Debug, R: std::fmt::Debug>(result: Result<T, SdkError<E, R>>) -> T {
    result.unwrap_or_else(|err| panic!("AWS accepts this, the strict layer refused it: {err:?}"))
}

async fn vpc(ec2: &aws_sdk_ec2::Client) -> String {
    let vpc = ec2.create_vpc().cidr_block("10.40.0.0/16").send().await;
    accepted(vpc)
        .vpc
        .and_then(|vpc| vpc.vpc_id)
        .expect("vpc id")
}

async fn security_group(ec2: &aws_sdk_ec2::Client, vpc_id: &str, name: &str) -> String {
    let created = ec2
        .create_security_group()
        .group_name(name)
        .description("strict test")
        .vpc_id(vpc_id)
        .send()
        .await;
    accepted(created).group_id.expect("group id")
}

fn tcp(port: i32) -> aws_sdk_ec2::types::builders::IpPermissionBuilder {
    IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(port)
        .to_port(port)
}

fn ipv4(port: i32, cidr: &str, description: &str) -> IpPermission {
    tcp(port)
        .ip_ranges(
            IpRange::builder()
                .cidr_ip(cidr)
                .description(description)
                .build(),
        )
        .build()
}

const EC2_DESCRIPTION: &str = "Invalid rule description";

#[tokio::test]
async fn security_group_names_are_refused_starting_with_sg_too_long_or_outside_ec2s_characters() {
    let aws = support::localstack().await;
    let ec2 = aws_sdk_ec2::Client::new(&aws);
    let vpc_id = vpc(&ec2).await;
    let create = |name: String| {
        ec2.create_security_group()
            .group_name(name)
            .description("strict test")
            .vpc_id(&vpc_id)
            .send()
    };
    let refusals = [
        (
            "sg-chat-alb".to_owned(),
            "Group names may not be in the format sg-*",
        ),
        (
            "SG-chat".to_owned(),
            "Group names may not be in the format sg-*",
        ),
        (
            "a".repeat(256),
            "Valid names are strings less than 256 characters",
        ),
        ("the instances' group".to_owned(), "Valid names are strings"),
        ("chat-é".to_owned(), "Valid names are strings"),
    ];
    for (name, says) in refusals {
        refused(create(name).await, "InvalidParameterValue", says);
    }
    accepted(create("chat-sg ._-:/()#,@[]+=&;{}!$*".to_owned()).await);
    accepted(create("b".repeat(255)).await);
}

#[tokio::test]
async fn security_group_descriptions_are_refused_outside_ec2s_characters_or_over_255() {
    let aws = support::localstack().await;
    let ec2 = aws_sdk_ec2::Client::new(&aws);
    let vpc_id = vpc(&ec2).await;
    let create = |name: &str, description: String| {
        ec2.create_security_group()
            .group_name(name)
            .description(description)
            .vpc_id(&vpc_id)
            .send()
    };
    for description in [
        "the load balancer's group".to_owned(),
        "d".repeat(256),
        "naïve".to_owned(),
    ] {
        refused(
            create("described", description).await,
            "InvalidParameterValue",
            "Invalid security group description",
        );
    }
    accepted(create("described", "d".repeat(255)).await);
}

/// Every kind of rule (IPv4, IPv6, prefix list, group pair), ingress and egress, and a
/// description updated later: the same characters and 255 as a group's description. The
/// apostrophe is the load balancer's egress rule of realtime-stack before it was fixed.
#[tokio::test]
async fn rule_descriptions_of_every_kind_are_refused_outside_ec2s_characters_or_over_255() {
    let aws = support::localstack().await;
    let ec2 = aws_sdk_ec2::Client::new(&aws);
    let vpc_id = vpc(&ec2).await;
    let group = security_group(&ec2, &vpc_id, "rules").await;
    let peer = security_group(&ec2, &vpc_id, "peer").await;
    let prefix_list = ec2
        .describe_prefix_lists()
        .send()
        .await
        .expect("DescribePrefixLists")
        .prefix_lists()
        .first()
        .and_then(|list| list.prefix_list_id().map(str::to_owned))
        .expect("a prefix list");
    let bad = "chat server, to the instances' subnet 10.0.2.0/24";
    let kinds = |description: &str| {
        vec![
            ipv4(8080, "10.0.2.0/24", description),
            tcp(8081)
                .ipv6_ranges(
                    Ipv6Range::builder()
                        .cidr_ipv6("2001:db8::/64")
                        .description(description)
                        .build(),
                )
                .build(),
            tcp(443)
                .prefix_list_ids(
                    PrefixListId::builder()
                        .prefix_list_id(&prefix_list)
                        .description(description)
                        .build(),
                )
                .build(),
            tcp(6379)
                .user_id_group_pairs(
                    UserIdGroupPair::builder()
                        .group_id(&peer)
                        .description(description)
                        .build(),
                )
                .build(),
        ]
    };
    for description in [bad.to_owned(), "r".repeat(256)] {
        for permission in kinds(&description) {
            let ingress = ec2
                .authorize_security_group_ingress()
                .group_id(&group)
                .ip_permissions(permission.clone())
                .send()
                .await;
            refused(ingress, "InvalidParameterValue", EC2_DESCRIPTION);
            let egress = ec2
                .authorize_security_group_egress()
                .group_id(&group)
                .ip_permissions(permission)
                .send()
                .await;
            refused(egress, "InvalidParameterValue", EC2_DESCRIPTION);
        }
    }
    let fine = "chat server, to the instances subnet 10.0.2.0/24";
    accepted(
        ec2.authorize_security_group_egress()
            .group_id(&group)
            .set_ip_permissions(Some(kinds(fine)))
            .send()
            .await,
    );
    let update = ec2
        .update_security_group_rule_descriptions_egress()
        .group_id(&group)
        .ip_permissions(ipv4(8080, "10.0.2.0/24", bad))
        .send()
        .await;
    refused(update, "InvalidParameterValue", EC2_DESCRIPTION);
}

/// 60 inbound and 60 outbound rules a group, counted apart for IPv4 and IPv6.
#[tokio::test]
async fn a_group_takes_at_most_sixty_rules_each_way() {
    let aws = support::localstack().await;
    let ec2 = aws_sdk_ec2::Client::new(&aws);
    let vpc_id = vpc(&ec2).await;
    let group = security_group(&ec2, &vpc_id, "quota").await;
    let rules = |ports: std::ops::Range<i32>| -> Vec<IpPermission> {
        ports
            .map(|port| ipv4(port, "10.0.0.0/24", "quota"))
            .collect()
    };
    let ingress = |permissions: Vec<IpPermission>| {
        ec2.authorize_security_group_ingress()
            .group_id(&group)
            .set_ip_permissions(Some(permissions))
            .send()
    };
    let egress = |permissions: Vec<IpPermission>| {
        ec2.authorize_security_group_egress()
            .group_id(&group)
            .set_ip_permissions(Some(permissions))
            .send()
    };
    let (code, says) = (
        "RulesPerSecurityGroupLimitExceeded",
        "The maximum number of rules per security group has been reached",
    );
    refused(ingress(rules(1000..1061)).await, code, says);
    accepted(ingress(rules(1000..1060)).await);
    refused(ingress(rules(2000..2001)).await, code, says);
    // Outbound: the group's allow-all rule and 59 more fit, one more does not.
    accepted(egress(rules(3000..3059)).await);
    refused(egress(rules(4000..4001)).await, code, says);
}

fn ec2_tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

/// Keys of at most 128 characters, values of at most 256, no `aws:` prefix, each key
/// once, 50 tags: at creation (`TagSpecifications`) and in `CreateTags`.
#[tokio::test]
async fn ec2_tags_are_refused_too_long_reserved_or_too_many() {
    let aws = support::localstack().await;
    let ec2 = aws_sdk_ec2::Client::new(&aws);
    let vpc_id = vpc(&ec2).await;
    let breaking = [
        (vec![ec2_tag(&"k".repeat(129), "v")], "1 to 128 characters"),
        (
            vec![ec2_tag("k", &"v".repeat(257))],
            "maximum length of 256",
        ),
        (vec![ec2_tag("aws:owner", "me")], "reserved"),
        (vec![ec2_tag("AWS:owner", "me")], "reserved"),
        (
            vec![ec2_tag("Name", "chat-vpc"), ec2_tag("Name", "mine")],
            "Duplicate tag key 'Name'",
        ),
        (
            (0..51).map(|i| ec2_tag(&format!("k{i}"), "v")).collect(),
            "limit of 50",
        ),
    ];
    for (tags, says) in breaking {
        let at_creation = ec2
            .create_vpc()
            .cidr_block("10.41.0.0/16")
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Vpc)
                    .set_tags(Some(tags.clone()))
                    .build(),
            )
            .send()
            .await;
        refused(at_creation, "InvalidParameterValue", says);
        let later = ec2
            .create_tags()
            .resources(&vpc_id)
            .set_tags(Some(tags))
            .send()
            .await;
        refused(later, "InvalidParameterValue", says);
    }
    accepted(
        ec2.create_tags()
            .resources(&vpc_id)
            .tags(ec2_tag(&"k".repeat(128), &"v".repeat(256)))
            .tags(ec2_tag("realtime-stack:role", "any character: é ' #"))
            .tags(ec2_tag("Name", "chat-vpc"))
            .tags(ec2_tag("name", "keys are case-sensitive"))
            .send()
            .await,
    );
}

/// User data of more than 16 KB before base64; with tags in instance metadata, tag keys
/// of letters, digits and `+ - = . , _ : @` only.
#[tokio::test]
async fn run_instances_refuses_big_user_data_and_metadata_unsafe_tag_keys() {
    let aws = support::localstack().await;
    let ec2 = aws_sdk_ec2::Client::new(&aws);
    let launch = |user_data: &[u8], key: &str| {
        ec2.run_instances()
            .image_id("ami-0123456789abcdef0")
            .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
            .min_count(1)
            .max_count(1)
            .user_data(aws_smithy_types::base64::encode(user_data))
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .instance_metadata_tags(InstanceMetadataTagsState::Enabled)
                    .build(),
            )
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .tags(ec2_tag(key, "v"))
                    .build(),
            )
            .send()
    };
    refused(
        launch(&[b'#'; 16 * 1024 + 1], "team").await,
        "InvalidParameterValue",
        "User data is limited to 16384 bytes",
    );
    for key in ["team/a", "team a", "_index", ".."] {
        refused(
            launch(b"#!/bin/sh\n", key).await,
            "InvalidParameterValue",
            "not valid for an instance that allows tags in its metadata",
        );
    }
}

/// Launch template names of 3 to 128 letters, digits and `( ) . - / _`; version
/// descriptions of at most 255 characters; and in the template's data, what RunInstances
/// refuses: user data over 16 KB, metadata-unsafe or over-long instance tags.
#[tokio::test]
async fn launch_templates_are_held_to_ec2s_rules() {
    use aws_sdk_ec2::types::{LaunchTemplateTagSpecificationRequest, RequestLaunchTemplateData};

    let aws = support::localstack().await;
    let ec2 = aws_sdk_ec2::Client::new(&aws);
    let suffix = support::unique_suffix();
    let data = |user_data: &[u8], key: &str, value: &str| {
        RequestLaunchTemplateData::builder()
            .image_id("ami-0123456789abcdef0")
            .user_data(aws_smithy_types::base64::encode(user_data))
            .metadata_options(
                aws_sdk_ec2::types::LaunchTemplateInstanceMetadataOptionsRequest::builder()
                    .instance_metadata_tags(
                        aws_sdk_ec2::types::LaunchTemplateInstanceMetadataTagsState::Enabled,
                    )
                    .build(),
            )
            .tag_specifications(
                LaunchTemplateTagSpecificationRequest::builder()
                    .resource_type(ResourceType::Instance)
                    .tags(ec2_tag(key, value))
                    .build(),
            )
            .build()
    };
    let create = |name: String, description: String, data: RequestLaunchTemplateData| {
        ec2.create_launch_template()
            .launch_template_name(name)
            .version_description(description)
            .launch_template_data(data)
            .send()
    };
    let good = || data(b"#!/bin/sh\n", "team", "chat");
    for name in [
        "ab".to_owned(),
        "a".repeat(129),
        format!("chat {suffix}"),
        format!("chat:{suffix}"),
    ] {
        refused(
            create(name, String::new(), good()).await,
            "InvalidLaunchTemplateName.MalformedException",
            "is not valid",
        );
    }
    let name = |what: &str| format!("strict-{what}-{suffix}");
    refused(
        create(name("description"), "d".repeat(256), good()).await,
        "InvalidParameterValue",
        "maximum length of 255",
    );
    refused(
        create(
            name("user-data"),
            String::new(),
            data(&[b'#'; 16 * 1024 + 1], "team", "chat"),
        )
        .await,
        "InvalidParameterValue",
        "User data is limited to 16384 bytes",
    );
    refused(
        create(
            name("metadata-key"),
            String::new(),
            data(b"#!/bin/sh\n", "team/a", "chat"),
        )
        .await,
        "InvalidParameterValue",
        "not valid for an instance that allows tags in its metadata",
    );
    refused(
        create(
            name("tag-value"),
            String::new(),
            data(b"#!/bin/sh\n", "team", &"v".repeat(257)),
        )
        .await,
        "InvalidParameterValue",
        "maximum length of 256",
    );
    let created = accepted(
        create(
            format!("chat-(a)/b_c.{suffix}"),
            "d".repeat(255),
            data(&[b'#'; 16 * 1024], "team", "chat"),
        )
        .await,
    );
    let id = created
        .launch_template
        .and_then(|template| template.launch_template_id)
        .expect("template id");
    let version = ec2
        .create_launch_template_version()
        .launch_template_id(&id)
        .launch_template_data(data(b"#!/bin/sh\n", "team:_index", &"v".repeat(257)));
    refused(
        version.send().await,
        "InvalidParameterValue",
        "maximum length of 256",
    );
}

/// Group names of ASCII 33 to 126 without a colon, at most 255; a desired capacity between
/// min and max, on creation and on an update that names only some of them; tags held to
/// the tag restrictions; policy names of 1 to 255 characters.
#[tokio::test]
async fn auto_scaling_groups_are_held_to_their_documented_rules() {
    use aws_sdk_autoscaling::types::{LaunchTemplateSpecification, Tag as GroupTag};

    let aws = support::localstack().await;
    let ec2 = aws_sdk_ec2::Client::new(&aws);
    let autoscaling = aws_sdk_autoscaling::Client::new(&aws);
    let suffix = support::unique_suffix();
    let vpc_id = vpc(&ec2).await;
    let subnets = two_subnets(&ec2, &vpc_id).await.join(",");
    let template = format!("strict-group-{suffix}");
    accepted(
        ec2.create_launch_template()
            .launch_template_name(&template)
            .launch_template_data(
                aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                    .image_id("ami-0123456789abcdef0")
                    .build(),
            )
            .send()
            .await,
    );
    let group = |name: &str, (min, desired, max): (i32, i32, i32)| {
        autoscaling
            .create_auto_scaling_group()
            .auto_scaling_group_name(name)
            .launch_template(
                LaunchTemplateSpecification::builder()
                    .launch_template_name(&template)
                    .build(),
            )
            .vpc_zone_identifier(&subnets)
            .min_size(min)
            .desired_capacity(desired)
            .max_size(max)
    };
    for name in [
        format!("chat:{suffix}"),
        format!("chat {suffix}"),
        "g".repeat(256),
    ] {
        refused(
            group(&name, (0, 0, 1)).send().await,
            "ValidationError",
            "is not valid",
        );
    }
    let name = format!("strict-{suffix}");
    for sizes in [(1, 0, 2), (0, 3, 2)] {
        refused(
            group(&name, sizes).send().await,
            "ValidationError",
            "must be between the specified min size",
        );
    }
    refused(
        group(&name, (3, 3, 2)).send().await,
        "ValidationError",
        "must be greater than or equal to min bound",
    );
    let tag = |key: &str, value: &str| {
        GroupTag::builder()
            .resource_id(&name)
            .resource_type("auto-scaling-group")
            .key(key)
            .value(value)
            .propagate_at_launch(true)
            .build()
    };
    refused(
        group(&name, (0, 0, 1))
            .tags(tag("aws:owner", "me"))
            .send()
            .await,
        "ValidationError",
        "reserved",
    );
    accepted(
        group(&name, (0, 0, 2))
            .tags(tag(&"k".repeat(128), &"v".repeat(256)))
            .send()
            .await,
    );
    // An update that names only the desired capacity is held to the group's min and max.
    refused(
        autoscaling
            .update_auto_scaling_group()
            .auto_scaling_group_name(&name)
            .desired_capacity(3)
            .send()
            .await,
        "ValidationError",
        "must be between the specified min size",
    );
    refused(
        autoscaling
            .create_or_update_tags()
            .tags(tag("team", &"v".repeat(257)))
            .send()
            .await,
        "ValidationError",
        "maximum length of 256",
    );
    let policy = |policy_name: String| {
        autoscaling
            .put_scaling_policy()
            .auto_scaling_group_name(&name)
            .policy_name(policy_name)
            .policy_type("TargetTrackingScaling")
            .target_tracking_configuration(
                aws_sdk_autoscaling::types::TargetTrackingConfiguration::builder()
                    .predefined_metric_specification(
                        aws_sdk_autoscaling::types::PredefinedMetricSpecification::builder()
                            .predefined_metric_type(
                                aws_sdk_autoscaling::types::MetricType::AsgAverageCpuUtilization,
                            )
                            .build(),
                    )
                    .target_value(50.0)
                    .build(),
            )
            .send()
    };
    refused(
        policy("p".repeat(256)).await,
        "ValidationError",
        "1 to 255 characters",
    );
    accepted(policy("p".repeat(255)).await);
    accepted(
        autoscaling
            .delete_auto_scaling_group()
            .auto_scaling_group_name(&name)
            .force_delete(true)
            .send()
            .await,
    );
}

/// "Characters per VPC endpoint policy: 20,480".
#[tokio::test]
async fn a_vpc_endpoint_policy_over_20480_characters_is_refused() {
    let aws = support::localstack().await;
    let ec2 = aws_sdk_ec2::Client::new(&aws);
    let vpc_id = vpc(&ec2).await;
    let policy = |size: usize| {
        let head = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::"#;
        let tail = r#""}]}"#;
        format!("{head}{}{tail}", "b".repeat(size - head.len() - tail.len()))
    };
    let create = |document: String| {
        ec2.create_vpc_endpoint()
            .vpc_id(&vpc_id)
            .service_name("com.amazonaws.us-east-1.s3")
            .policy_document(document)
            .send()
    };
    refused(create(policy(20_481)).await, "InvalidParameter", "20480");
    accepted(create(policy(20_480)).await);
}

async fn two_subnets(ec2: &aws_sdk_ec2::Client, vpc_id: &str) -> Vec<String> {
    let mut subnets = Vec::new();
    for (cidr, zone) in [
        ("10.40.1.0/24", "us-east-1a"),
        ("10.40.2.0/24", "us-east-1b"),
    ] {
        let subnet = ec2
            .create_subnet()
            .vpc_id(vpc_id)
            .cidr_block(cidr)
            .availability_zone(zone)
            .send()
            .await;
        subnets.push(accepted(subnet).subnet.and_then(|s| s.subnet_id).unwrap());
    }
    subnets
}

/// The ARN of a new load balancer named `{prefix}-<unique>`, in a VPC of its own.
async fn new_load_balancer(aws: &SdkConfig, prefix: &str) -> String {
    let ec2 = aws_sdk_ec2::Client::new(aws);
    let vpc_id = vpc(&ec2).await;
    let subnets = two_subnets(&ec2, &vpc_id).await;
    let suffix = support::unique_suffix();
    let created = aws_sdk_elasticloadbalancingv2::Client::new(aws)
        .create_load_balancer()
        .name(format!("{prefix}-{}", &suffix[suffix.len() - 8..]))
        .set_subnets(Some(subnets))
        .send()
        .await;
    accepted(created).load_balancers()[0]
        .load_balancer_arn()
        .unwrap()
        .to_owned()
}

fn names_that_elb_refuses() -> Vec<(String, &'static str)> {
    vec![
        ("n".repeat(33), "cannot be longer than '32' characters"),
        ("-chat".to_owned(), "cannot begin or end with a hyphen"),
        ("chat-".to_owned(), "cannot begin or end with a hyphen"),
        (
            "chat_alb".to_owned(),
            "only alphanumeric characters and hyphens",
        ),
    ]
}

/// At most 32 letters, digits and hyphens, not at either end; a load balancer's not
/// starting with `internal-`.
#[tokio::test]
async fn load_balancer_and_target_group_names_are_held_to_elbs_rules() {
    let aws = support::localstack().await;
    let ec2 = aws_sdk_ec2::Client::new(&aws);
    let elbv2 = aws_sdk_elasticloadbalancingv2::Client::new(&aws);
    let vpc_id = vpc(&ec2).await;
    let subnets = two_subnets(&ec2, &vpc_id).await;
    let load_balancer = |name: String| {
        elbv2
            .create_load_balancer()
            .name(name)
            .set_subnets(Some(subnets.clone()))
            .send()
    };
    let target_group = |name: String| {
        elbv2
            .create_target_group()
            .name(name)
            .protocol(ProtocolEnum::Http)
            .port(8080)
            .vpc_id(&vpc_id)
            .send()
    };
    for (name, says) in names_that_elb_refuses() {
        refused(load_balancer(name.clone()).await, "ValidationError", says);
        refused(target_group(name).await, "ValidationError", says);
    }
    refused(
        load_balancer("internal-chat".to_owned()).await,
        "ValidationError",
        "cannot begin with 'internal-'",
    );
    let suffix = support::unique_suffix();
    let name = format!("{}-internal", &suffix[suffix.len() - 8..]);
    accepted(load_balancer(name.clone()).await);
    accepted(target_group(format!("internal-{}", &suffix[suffix.len() - 8..])).await);
    accepted(target_group(format!("{}{name}", "t".repeat(32 - name.len()))).await);
}

/// Tag keys of 1 to 128 and values of at most 256 letters, digits, spaces and
/// `_ . : / = + - @`; no `aws:` prefix; each key once (ELB's own `DuplicateTagKeys`).
#[tokio::test]
async fn load_balancer_tags_are_held_to_elbs_rules() {
    let aws = support::localstack().await;
    let ec2 = aws_sdk_ec2::Client::new(&aws);
    let elbv2 = aws_sdk_elasticloadbalancingv2::Client::new(&aws);
    let vpc_id = vpc(&ec2).await;
    let suffix = support::unique_suffix();
    let created = elbv2
        .create_target_group()
        .name(format!("tags-{}", &suffix[suffix.len() - 8..]))
        .protocol(ProtocolEnum::Http)
        .port(8080)
        .vpc_id(&vpc_id)
        .send()
        .await;
    let arn = accepted(created).target_groups()[0]
        .target_group_arn()
        .unwrap()
        .to_owned();
    let tag = |key: &str, value: &str| {
        elbv2
            .add_tags()
            .resource_arns(&arn)
            .tags(
                aws_sdk_elasticloadbalancingv2::types::Tag::builder()
                    .key(key)
                    .value(value)
                    .build(),
            )
            .send()
    };
    refused(tag("aws:team", "chat").await, "ValidationError", "reserved");
    refused(
        tag(&"k".repeat(129), "chat").await,
        "ValidationError",
        "128",
    );
    refused(
        tag("team", &"v".repeat(257)).await,
        "ValidationError",
        "256",
    );
    refused(tag("team#1", "chat").await, "ValidationError", "characters");
    refused(tag("team", "chat's").await, "ValidationError", "characters");
    let twice = elbv2
        .add_tags()
        .resource_arns(&arn)
        .set_tags(Some(
            ["chat-tg", "mine"]
                .map(|value| {
                    aws_sdk_elasticloadbalancingv2::types::Tag::builder()
                        .key("Name")
                        .value(value)
                        .build()
                })
                .to_vec(),
        ))
        .send()
        .await;
    refused(twice, "DuplicateTagKeys", "Duplicate tag key 'Name'");
    accepted(tag("team équipe", "chat_1.2:3/4=5+6-7@8").await);
}

/// Health checks (interval 5-300 s, timeout 2-120 s and shorter than the interval,
/// thresholds 2-10), attributes (idle timeout 1-4000 s, deregistration delay 0-3600 s,
/// booleans) and rule priorities (1-50000).
#[tokio::test]
async fn load_balancer_settings_are_held_to_their_documented_ranges() {
    let aws = support::localstack().await;
    let ec2 = aws_sdk_ec2::Client::new(&aws);
    let elbv2 = aws_sdk_elasticloadbalancingv2::Client::new(&aws);
    let vpc_id = vpc(&ec2).await;
    let suffix = support::unique_suffix();
    let target_group = |interval: i32, timeout: i32, threshold: i32| {
        elbv2
            .create_target_group()
            .name(format!("ranges-{}", &suffix[suffix.len() - 8..]))
            .protocol(ProtocolEnum::Http)
            .port(8080)
            .vpc_id(&vpc_id)
            .health_check_interval_seconds(interval)
            .health_check_timeout_seconds(timeout)
            .healthy_threshold_count(threshold)
            .send()
    };
    refused(
        target_group(4, 2, 2).await,
        "ValidationError",
        "between 5 and 300",
    );
    refused(
        target_group(10, 1, 2).await,
        "ValidationError",
        "between 2 and 120",
    );
    refused(
        target_group(10, 5, 11).await,
        "ValidationError",
        "between 2 and 10",
    );
    refused(
        target_group(5, 5, 2).await,
        "ValidationError",
        "smaller than the interval",
    );
    let created = accepted(target_group(5, 4, 2).await);
    let arn = created.target_groups()[0].target_group_arn().unwrap();
    let attribute = |key: &str, value: &str| {
        elbv2
            .modify_target_group_attributes()
            .target_group_arn(arn)
            .attributes(
                TargetGroupAttribute::builder()
                    .key(key)
                    .value(value)
                    .build(),
            )
            .send()
    };
    refused(
        attribute("deregistration_delay.timeout_seconds", "3601").await,
        "InvalidConfigurationRequest",
        "from 0 to 3600",
    );
    // 3600 is AWS's bound, which moto refuses itself (stricter than AWS, by one second).
    accepted(attribute("deregistration_delay.timeout_seconds", "3599").await);
    let idle = elbv2
        .modify_load_balancer_attributes()
        .load_balancer_arn(
            "arn:aws:elasticloadbalancing:us-east-1:000000000000:loadbalancer/app/x/1",
        )
        .attributes(
            LoadBalancerAttribute::builder()
                .key("idle_timeout.timeout_seconds")
                .value("4001")
                .build(),
        )
        .send()
        .await;
    refused(idle, "InvalidConfigurationRequest", "from 1 to 4000");
    let rule = elbv2
        .create_rule()
        .listener_arn("arn:aws:elasticloadbalancing:us-east-1:000000000000:listener/app/x/1/2")
        .priority(50_001)
        .conditions(
            RuleCondition::builder()
                .field("path-pattern")
                .values("/metrics")
                .build(),
        )
        .send()
        .await;
    refused(rule, "ValidationError", "between 1 and 50000");
}

/// A load balancer with deletion protection on is not deleted (`OperationNotPermitted`)
/// until it is turned off; the desync mitigation and X-Forwarded-For modes take only the
/// words AWS lists.
#[tokio::test]
async fn a_protected_load_balancer_is_not_deleted_and_modes_take_awss_words() {
    let aws = support::localstack().await;
    let elbv2 = aws_sdk_elasticloadbalancingv2::Client::new(&aws);
    let arn = new_load_balancer(&aws, "protected").await;
    let attribute = |key: &str, value: &str| {
        elbv2
            .modify_load_balancer_attributes()
            .load_balancer_arn(&arn)
            .attributes(
                LoadBalancerAttribute::builder()
                    .key(key)
                    .value(value)
                    .build(),
            )
            .send()
    };
    let delete = || elbv2.delete_load_balancer().load_balancer_arn(&arn).send();
    refused(
        attribute("routing.http.desync_mitigation_mode", "strict").await,
        "InvalidConfigurationRequest",
        "monitor, defensive, strictest",
    );
    accepted(attribute("routing.http.desync_mitigation_mode", "strictest").await);
    refused(
        attribute("routing.http.xff_header_processing.mode", "keep").await,
        "InvalidConfigurationRequest",
        "append, preserve, remove",
    );
    accepted(attribute("routing.http.xff_header_processing.mode", "preserve").await);

    accepted(attribute("deletion_protection.enabled", "true").await);
    refused(
        delete().await,
        "OperationNotPermitted",
        "deletion protection is enabled",
    );
    accepted(attribute("deletion_protection.enabled", "false").await);
    accepted(delete().await);
}

/// Listener security policies: a name AWS does not offer is refused (`SSLPolicyNotFound`),
/// and the policies AWS added since moto's table (FIPS 2023-04, post-quantum 2025-09) are
/// taken by CreateListener and ModifyListener alike: moto's ModifyListener refused them,
/// so a listener made with the stack's default policy could not be given a new
/// certificate when `domain.name` changed.
#[tokio::test]
async fn listener_security_policies_are_the_ones_elb_offers() {
    let aws = support::localstack().await;
    let elbv2 = aws_sdk_elasticloadbalancingv2::Client::new(&aws);
    let suffix = support::unique_suffix();
    let load_balancer = new_load_balancer(&aws, "tls").await;
    let certificate = aws_sdk_acm::Client::new(&aws)
        .request_certificate()
        .domain_name(format!("tls-{suffix}.example.test"))
        .validation_method(aws_sdk_acm::types::ValidationMethod::Dns)
        .send()
        .await;
    let certificate = accepted(certificate).certificate_arn.unwrap();
    let listener = |policy: &str| {
        elbv2
            .create_listener()
            .load_balancer_arn(&load_balancer)
            .protocol(ProtocolEnum::Https)
            .port(443)
            .ssl_policy(policy)
            .certificates(
                aws_sdk_elasticloadbalancingv2::types::Certificate::builder()
                    .certificate_arn(&certificate)
                    .build(),
            )
            .default_actions(
                aws_sdk_elasticloadbalancingv2::types::Action::builder()
                    .r#type(aws_sdk_elasticloadbalancingv2::types::ActionTypeEnum::FixedResponse)
                    .fixed_response_config(
                        aws_sdk_elasticloadbalancingv2::types::FixedResponseActionConfig::builder()
                            .status_code("200")
                            .build(),
                    )
                    .build(),
            )
            .send()
    };
    refused(
        listener("ELBSecurityPolicy-TLS13-1-2-Res-PQ-2099-01").await,
        "SSLPolicyNotFound",
        "not found",
    );
    let created = accepted(listener("ELBSecurityPolicy-TLS13-1-2-Res-PQ-2025-09").await);
    let listener = created.listeners()[0].listener_arn().unwrap();
    let modify = |policy: &str| {
        elbv2
            .modify_listener()
            .listener_arn(listener)
            .ssl_policy(policy)
            .send()
    };
    refused(
        modify("ELBSecurityPolicy-Made-Up").await,
        "SSLPolicyNotFound",
        "not found",
    );
    for policy in [
        "ELBSecurityPolicy-TLS13-1-2-Ext1-PQ-2025-09",
        "ELBSecurityPolicy-TLS13-1-2-Res-FIPS-2023-04",
        "ELBSecurityPolicy-TLS13-1-2-Res-2021-06",
    ] {
        accepted(modify(policy).await);
        let described = elbv2
            .describe_listeners()
            .listener_arns(listener)
            .send()
            .await;
        assert_eq!(
            accepted(described).listeners()[0].ssl_policy(),
            Some(policy)
        );
    }
}

/// Replication group ids: 1 to 40 letters, digits and hyphens, a letter first, no hyphen
/// last, no two in a row; and the group's shape within ElastiCache's bounds.
#[tokio::test]
async fn replication_group_ids_are_held_to_elasticaches_rules() {
    let aws = support::localstack().await;
    let elasticache = aws_sdk_elasticache::Client::new(&aws);
    let create = |id: String, clusters: i32, description: &str| {
        elasticache
            .create_replication_group()
            .replication_group_id(id)
            .replication_group_description(description)
            .engine("redis")
            .cache_node_type("cache.t4g.micro")
            .num_cache_clusters(clusters)
            .send()
    };
    for id in [
        "r".repeat(41),
        "1chat".to_owned(),
        "chat--redis".to_owned(),
        "chat-redis-".to_owned(),
        "chat_redis".to_owned(),
    ] {
        refused(
            create(id, 1, "strict test").await,
            "InvalidParameterValue",
            "is not a valid identifier",
        );
    }
    let suffix = support::unique_suffix();
    let id = format!("{}{}", "r".repeat(32), &suffix[suffix.len() - 8..]);
    refused(
        create(id.clone(), 7, "strict test").await,
        "InvalidParameterValue",
        "between 1 and 6",
    );
    refused(
        create(id.clone(), 2, " ").await,
        "InvalidParameterValue",
        "ReplicationGroupDescription must be provided",
    );
    accepted(create(id.clone(), 2, "strict test").await);
    accepted(
        elasticache
            .delete_replication_group()
            .replication_group_id(id)
            .send()
            .await,
    );
}

/// A replication group's engine version is one ElastiCache offers
/// (DescribeCacheEngineVersions, which the extension answers as moto does not), and a
/// default parameter group is of that version's family, or of the default version's when
/// none is pinned: AWS refuses `default.redis6.x.cluster.on` for Redis 7
/// (hashicorp/terraform-provider-aws#27748). A cluster within a new account's quotas,
/// and r6gd nodes only with data tiering.
#[tokio::test]
async fn replication_groups_take_an_offered_version_and_its_familys_parameter_group() {
    let aws = support::localstack().await;
    let elasticache = aws_sdk_elasticache::Client::new(&aws);
    let offered = accepted(
        elasticache
            .describe_cache_engine_versions()
            .engine("valkey")
            .default_only(true)
            .send()
            .await,
    );
    let default = &offered.cache_engine_versions()[0];
    let default_family = default.cache_parameter_group_family().unwrap().to_owned();
    assert_eq!(default.engine(), Some("valkey"));
    let suffix = support::unique_suffix();
    let id = format!("engine-{}", &suffix[suffix.len() - 8..]);
    let create = |engine: &str, version: Option<&str>, parameter_group: &str| {
        elasticache
            .create_replication_group()
            .replication_group_id(&id)
            .replication_group_description("strict test")
            .engine(engine)
            .set_engine_version(version.map(str::to_owned))
            .cache_node_type("cache.t4g.micro")
            .cluster_mode(aws_sdk_elasticache::types::ClusterMode::Enabled)
            .num_node_groups(2)
            .cache_parameter_group_name(parameter_group)
            .send()
    };
    for version in ["7.2", "7.x", "7.1.0"] {
        refused(
            create("redis", Some(version), "default.redis7.cluster.on").await,
            "InvalidParameterValue",
            &format!("Cannot find version {version} for redis"),
        );
    }
    refused(
        create("redis", Some("7.1"), "default.redis6.x.cluster.on").await,
        "InvalidParameterCombination",
        "Expected a parameter group of family redis7 but found one of family redis6.x",
    );
    refused(
        create("valkey", None, "default.valkey7.cluster.on").await,
        "InvalidParameterCombination",
        &format!("family {default_family} but found one of family valkey7"),
    );
    accepted(
        create(
            "valkey",
            None,
            &format!("default.{default_family}.cluster.on"),
        )
        .await,
    );
    // A new account's quotas: 90 shards, and 90 nodes, in one cluster.
    let sized = |shards: i32, replicas: i32, node_type: &str| {
        elasticache
            .create_replication_group()
            .replication_group_id(format!("quota-{}", &suffix[suffix.len() - 8..]))
            .replication_group_description("strict test")
            .engine("redis")
            .cache_node_type(node_type)
            .cluster_mode(aws_sdk_elasticache::types::ClusterMode::Enabled)
            .num_node_groups(shards)
            .replicas_per_node_group(replicas)
            .send()
    };
    refused(
        sized(91, 0, "cache.t4g.micro").await,
        "NodeGroupsPerReplicationGroupQuotaExceeded",
        "The default maximum is 90",
    );
    refused(
        sized(46, 1, "cache.t4g.micro").await,
        "NodeQuotaForClusterExceeded",
        "92 asked, 90 allowed",
    );
    refused(
        sized(2, 1, "cache.r6gd.xlarge").await,
        "InvalidParameterCombination",
        "DataTieringEnabled must be true",
    );
    accepted(
        elasticache
            .delete_replication_group()
            .replication_group_id(&id)
            .send()
            .await,
    );
}

/// Cache subnet group names: at most 255 letters, digits or hyphens; ElastiCache's tags
/// as ELB's.
#[tokio::test]
async fn cache_subnet_group_names_and_cache_tags_are_held_to_elasticaches_rules() {
    let aws = support::localstack().await;
    let ec2 = aws_sdk_ec2::Client::new(&aws);
    let elasticache = aws_sdk_elasticache::Client::new(&aws);
    let vpc_id = vpc(&ec2).await;
    let subnets = two_subnets(&ec2, &vpc_id).await;
    let create = |name: String, key: &str| {
        elasticache
            .create_cache_subnet_group()
            .cache_subnet_group_name(name)
            .cache_subnet_group_description("strict test")
            .set_subnet_ids(Some(subnets.clone()))
            .tags(
                aws_sdk_elasticache::types::Tag::builder()
                    .key(key)
                    .value("chat")
                    .build(),
            )
            .send()
    };
    for name in [
        "c".repeat(256),
        "chat_cache".to_owned(),
        "chat cache".to_owned(),
    ] {
        refused(
            create(name, "team").await,
            "InvalidParameterValue",
            "is not a valid identifier",
        );
    }
    let suffix = support::unique_suffix();
    let name = format!("cache-{}", &suffix[suffix.len() - 8..]);
    refused(
        create(name.clone(), "aws:team").await,
        "InvalidParameterValue",
        "reserved",
    );
    refused(
        create(name.clone(), "team#1").await,
        "InvalidParameterValue",
        "characters",
    );
    accepted(create(name, "team").await);
}

fn s3(aws: &SdkConfig) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(aws)
            .force_path_style(true)
            .build(),
    )
}

/// Bucket names: 3 to 63 lowercase letters, digits, dots and hyphens, a letter or digit at
/// each end, no `..`, not an IP address, none of the reserved prefixes and suffixes. (The
/// `--x-s3` suffix is refused too, but the SDK sends such a name to S3 Express's session
/// API, which LocalStack does not have.)
#[tokio::test]
async fn bucket_names_are_held_to_s3s_naming_rules() {
    let aws = support::localstack().await;
    let s3 = s3(&aws);
    let suffix = support::unique_suffix();
    let suffix = &suffix[suffix.len() - 8..];
    for name in [
        format!("b{}", "c".repeat(63)),
        "ab".to_owned(),
        format!("Chat-{suffix}"),
        format!("chat_{suffix}"),
        format!("-chat-{suffix}"),
        format!("chat-{suffix}-"),
        format!("chat..{suffix}"),
        "192.168.5.4".to_owned(),
        format!("xn--chat-{suffix}"),
        format!("sthree-chat-{suffix}"),
        format!("amzn-s3-demo-chat-{suffix}"),
        format!("chat-{suffix}-s3alias"),
        format!("chat-{suffix}--ol-s3"),
        format!("chat-{suffix}.mrap"),
        format!("chat-{suffix}--table-s3"),
    ] {
        let created = s3.create_bucket().bucket(&name).send().await;
        refused(
            created,
            "InvalidBucketName",
            "The specified bucket is not valid",
        );
    }
    let name = format!("sthree{suffix}{}", "x".repeat(63 - 6 - suffix.len()));
    accepted(s3.create_bucket().bucket(&name).send().await);
    accepted(s3.delete_bucket().bucket(&name).send().await);
}

/// Object keys of at most 1024 bytes; bucket tags within the limits, no `aws:` prefix;
/// bucket policies of at most 20 KB.
#[tokio::test]
async fn object_keys_bucket_tags_and_bucket_policies_are_held_to_s3s_limits() {
    let aws = support::localstack().await;
    let s3 = s3(&aws);
    let suffix = support::unique_suffix();
    let bucket = format!("strict-{}", &suffix[suffix.len() - 8..]);
    accepted(s3.create_bucket().bucket(&bucket).send().await);
    let put = |key: String| {
        s3.put_object()
            .bucket(&bucket)
            .key(key)
            .body(aws_sdk_s3::primitives::ByteStream::from_static(b"x"))
            .send()
    };
    refused(
        put("é".repeat(513)).await,
        "KeyTooLongError",
        "Your key is too long",
    );
    accepted(put("k".repeat(1024)).await);
    let tag = |key: &str, value: &str| {
        let tagging = aws_sdk_s3::types::Tagging::builder()
            .tag_set(
                aws_sdk_s3::types::Tag::builder()
                    .key(key)
                    .value(value)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        s3.put_bucket_tagging()
            .bucket(&bucket)
            .tagging(tagging)
            .send()
    };
    refused(
        tag("aws:team", "chat").await,
        "InvalidTag",
        "System tags cannot be added/updated by requester",
    );
    refused(tag(&"k".repeat(129), "chat").await, "InvalidTag", "128");
    refused(tag("team", &"v".repeat(257)).await, "InvalidTag", "256");
    accepted(tag("team", "chat").await);
    let policy = |size: usize| {
        let head = format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Deny","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::{bucket}/"#
        );
        let tail = r#""}]}"#;
        format!("{head}{}{tail}", "p".repeat(size - head.len() - tail.len()))
    };
    let put_policy = |document: String| {
        s3.put_bucket_policy()
            .bucket(&bucket)
            .policy(document)
            .send()
    };
    refused(
        put_policy(policy(20 * 1024 + 1)).await,
        "MalformedPolicy",
        "20480",
    );
    accepted(put_policy(policy(20 * 1024)).await);
}

/// The certificate's domain name: ACM's pattern, and at most 64 octets for the first
/// name; its tags as ELB's; an idempotency token of 1 to 32 word characters.
#[tokio::test]
async fn certificate_requests_are_held_to_acms_rules() {
    let aws = support::localstack().await;
    let acm = aws_sdk_acm::Client::new(&aws);
    let request = |domain: &str, key: &str| {
        acm.request_certificate()
            .domain_name(domain)
            .validation_method(aws_sdk_acm::types::ValidationMethod::Dns)
            .tags(
                aws_sdk_acm::types::Tag::builder()
                    .key(key)
                    .value("chat")
                    .build()
                    .unwrap(),
            )
            .send()
    };
    let long = format!("{}.example.com", "a".repeat(53));
    assert_eq!(long.len(), 65);
    refused(
        request(&long, "team").await,
        "ValidationException",
        "64 octets",
    );
    for domain in [
        "-chat.example.com",
        "chat_1.example.com",
        "example",
        "chat.example.com.",
    ] {
        refused(
            request(domain, "team").await,
            "ValidationException",
            "regular expression pattern",
        );
    }
    refused(
        request("chat.example.com", "aws:team").await,
        "InvalidTagException",
        "reserved",
    );
    accepted(request(&long[1..], "team").await);

    let with_token = |token: String| {
        acm.request_certificate()
            .domain_name("chat.example.com")
            .validation_method(aws_sdk_acm::types::ValidationMethod::Dns)
            .idempotency_token(token)
            .send()
    };
    for token in ["a".repeat(33), "with-dash".to_owned()] {
        refused(
            with_token(token).await,
            "ValidationException",
            "idempotencyToken",
        );
    }
    accepted(with_token(format!("{:_<32}", support::unique_suffix())).await);
}

/// Record names: labels of at most 63 octets, names of at most 255, inside the zone.
#[tokio::test]
async fn record_changes_are_held_to_route53s_rules() {
    use aws_sdk_route53::types::{
        Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
    };
    let aws = support::localstack().await;
    let route53 = aws_sdk_route53::Client::new(&aws);
    let suffix = support::unique_suffix();
    let zone = format!("strict{}.example.test", &suffix[suffix.len() - 8..]);
    let zone_id = support::hosted_zone(&aws, &zone).await;
    let upsert = |name: String, ttl: i64| {
        let record = ResourceRecordSet::builder()
            .name(name)
            .r#type(RrType::A)
            .ttl(ttl)
            .resource_records(
                ResourceRecord::builder()
                    .value("192.0.2.1")
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let change = Change::builder()
            .action(ChangeAction::Upsert)
            .resource_record_set(record)
            .build()
            .unwrap();
        route53
            .change_resource_record_sets()
            .hosted_zone_id(&zone_id)
            .change_batch(ChangeBatch::builder().changes(change).build().unwrap())
            .send()
    };
    refused(
        upsert(format!("{}.{zone}", "l".repeat(64)), 60).await,
        "InvalidChangeBatch",
        "DomainLabelTooLong",
    );
    let deep = format!("{}{zone}", "abcdefghi.".repeat(25));
    refused(
        upsert(deep, 60).await,
        "InvalidChangeBatch",
        "DomainNameTooLong",
    );
    refused(
        upsert("chat.other.example.test".to_owned(), 60).await,
        "InvalidChangeBatch",
        "is not permitted in zone",
    );
    refused(
        upsert(format!("chat.{zone}"), -1).await,
        "InvalidChangeBatch",
        "TTL",
    );
    accepted(upsert(format!("{}.{zone}", "l".repeat(63)), 60).await);
}

/// The Price List's GetProducts, as its API reference documents it
/// (<https://docs.aws.amazon.com/aws-cost-management/latest/APIReference/API_pricing_GetProducts.html>,
/// <https://docs.aws.amazon.com/aws-cost-management/latest/APIReference/API_pricing_Filter.html>):
/// MaxResults from 1 to 100, at most 50 filters, a filter type among the five it names, a
/// service code it knows. The project's extension answers it (pricing.py).
#[tokio::test]
async fn the_price_list_holds_get_products_to_its_documented_constraints() {
    use aws_sdk_pricing::types::{Filter, FilterType};
    let aws = support::localstack().await;
    let pricing = aws_sdk_pricing::Client::new(&aws);
    let term = |field: &str, value: &str| {
        Filter::builder()
            .r#type(FilterType::TermMatch)
            .field(field)
            .value(value)
            .build()
            .unwrap()
    };
    let ec2 = || pricing.get_products().service_code("AmazonEC2");

    refused(
        ec2().max_results(101).send().await,
        "InvalidParameterException",
        "MaxResults",
    );
    accepted(ec2().max_results(100).send().await);
    refused(
        ec2()
            .filters(
                Filter::builder()
                    .r#type(FilterType::from("FUZZY_MATCH"))
                    .field("instanceType")
                    .value("t3.micro")
                    .build()
                    .unwrap(),
            )
            .send()
            .await,
        "InvalidParameterException",
        "Filter Type",
    );
    let many = |count: usize| vec![term("instanceType", "t3.micro"); count];
    refused(
        ec2().set_filters(Some(many(51))).send().await,
        "InvalidParameterException",
        "Filters",
    );
    accepted(ec2().set_filters(Some(many(50))).send().await);
    refused(
        pricing
            .get_products()
            .service_code("AmazonNothing")
            .send()
            .await,
        "NotFoundException",
        "AmazonNothing",
    );
    let found = accepted(
        ec2()
            .filters(term("instanceType", "t3.micro"))
            .filters(term("regionCode", "us-east-1"))
            .filters(term("operatingSystem", "Linux"))
            .send()
            .await,
    );
    assert_eq!(found.price_list().len(), 1, "{found:?}");
}

/// A running replication group changed as ElastiCache changes it (the extension's
/// replication_groups.py, on moto, which has no such calls): each refusal AWS documents
/// or a public report shows, then the change it allows, with the group `modifying` and
/// an added node `creating` a while after the group reads available again.
#[tokio::test]
async fn replication_group_changes_are_held_to_elasticaches_rules() {
    let aws = support::localstack().await;
    let elasticache = aws_sdk_elasticache::Client::new(&aws);
    let suffix = support::unique_suffix();
    let id = format!("changes-{}", &suffix[suffix.len() - 8..]);
    accepted(
        elasticache
            .create_replication_group()
            .replication_group_id(&id)
            .replication_group_description("strict test")
            .engine("redis")
            .cache_node_type("cache.t4g.micro")
            .num_cache_clusters(1)
            .send()
            .await,
    );
    let modify = || {
        elasticache
            .modify_replication_group()
            .replication_group_id(&id)
            .apply_immediately(true)
    };
    let replicas = |count: i32, immediately: bool| {
        elasticache
            .increase_replica_count()
            .replication_group_id(&id)
            .new_replica_count(count)
            .apply_immediately(immediately)
            .send()
    };

    // Nothing to change, failover without a replica, a node type not offered.
    refused(
        modify().snapshot_retention_limit(0).send().await,
        "InvalidParameterCombination",
        "No modifications were requested",
    );
    refused(
        modify().automatic_failover_enabled(true).send().await,
        "InvalidParameterCombination",
        "at least one read replica to enable autofailover",
    );
    refused(
        modify().cache_node_type("cache.c7gn.large").send().await,
        "InvalidParameterCombination",
        "ListAllowedNodeTypeModifications",
    );
    // Replica counts: applied at once only, and not to the count there is.
    refused(
        replicas(1, false).await,
        "InvalidParameterValue",
        "ApplyImmediately=False is not currently supported",
    );
    refused(
        replicas(0, true).await,
        "NoOperationFault",
        "already matches current number of replicas",
    );

    // A replica added: the group is modifying, then available while the new node is
    // still creating, and the next change is refused until it is not.
    accepted(replicas(1, true).await);
    refused(
        modify().automatic_failover_enabled(true).send().await,
        "InvalidReplicationGroupState",
        "must be in available state to modify",
    );
    let group_status = || async {
        elasticache
            .describe_replication_groups()
            .replication_group_id(&id)
            .send()
            .await
            .unwrap()
            .replication_groups()[0]
            .status()
            .map(str::to_owned)
    };
    let our_nodes = || async {
        let nodes = elasticache.describe_cache_clusters().send().await.ok()?;
        let statuses: Vec<String> = nodes
            .cache_clusters()
            .iter()
            .filter(|node| node.replication_group_id() == Some(id.as_str()))
            .filter_map(|node| node.cache_cluster_status().map(str::to_owned))
            .collect();
        Some(statuses)
    };
    // The extension keeps the new node creating 1.5 s after the group is available.
    support::poll_until(
        Duration::from_secs(30),
        "the group available, its new node creating",
        || async {
            let available = group_status().await.as_deref() == Some("available");
            let nodes = our_nodes().await?;
            (available && nodes.iter().any(|status| status == "creating")).then_some(())
        },
    )
    .await;
    refused(
        modify().automatic_failover_enabled(true).send().await,
        "InvalidCacheClusterState",
        "not in a valid state",
    );
    support::poll_until(
        Duration::from_secs(30),
        "the new node available",
        || async {
            let nodes = our_nodes().await?;
            (nodes.len() == 2 && nodes.iter().all(|status| status == "available")).then_some(())
        },
    )
    .await;
    accepted(
        modify()
            .automatic_failover_enabled(true)
            .multi_az_enabled(true)
            .send()
            .await,
    );
    support::poll_until(Duration::from_secs(30), "failover on", || async {
        (group_status().await.as_deref() == Some("available")).then_some(())
    })
    .await;
    // With failover on, the last replica stays (hashicorp/terraform-provider-aws#24244).
    refused(
        elasticache
            .decrease_replica_count()
            .replication_group_id(&id)
            .new_replica_count(0)
            .apply_immediately(true)
            .send()
            .await,
        "InvalidParameterValue",
        "at least 1 replica when cluster mode is disabled with auto failover enabled",
    );
    accepted(
        elasticache
            .delete_replication_group()
            .replication_group_id(&id)
            .send()
            .await,
    );
}
