//! `realtime-stack up` and `destroy` against LocalStack, run as a user runs them: the
//! stack's every resource and security property checked through the AWS SDK, a second
//! `up` that changes nothing, an `up` killed half-way that the next one completes, a
//! `destroy` that leaves nothing tagged, and invalid stack files that create nothing.

mod support;

use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use aws_sdk_ec2::types::Filter;
use aws_sdk_elasticloadbalancingv2::types::{ActionTypeEnum, ProtocolEnum};
use futures::StreamExt;
use realtime_stack::artifact::sha256_hex;
use serde_json::{Value, json};
use support::TestStack;

const STACK_TAG: &str = "realtime-stack:stack";

fn stack_filter(name: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{STACK_TAG}"))
        .values(name)
        .build()
}

/// Every live EC2 network resource that carries the stack's tag. (Asked type by type:
/// LocalStack's DescribeTags still lists the tags of deleted resources.)
async fn tagged_ec2_resources(aws: &SdkConfig, name: &str) -> Vec<String> {
    let ec2 = aws_sdk_ec2::Client::new(aws);
    let mut found = Vec::new();
    let vpcs = ec2
        .describe_vpcs()
        .filters(stack_filter(name))
        .send()
        .await
        .unwrap();
    found.extend(
        vpcs.vpcs()
            .iter()
            .filter_map(|v| v.vpc_id().map(str::to_owned)),
    );
    let subnets = ec2
        .describe_subnets()
        .filters(stack_filter(name))
        .send()
        .await
        .unwrap();
    found.extend(
        subnets
            .subnets()
            .iter()
            .filter_map(|s| s.subnet_id().map(str::to_owned)),
    );
    let groups = ec2
        .describe_security_groups()
        .filters(stack_filter(name))
        .send()
        .await
        .unwrap();
    found.extend(
        groups
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id().map(str::to_owned)),
    );
    let gateways = ec2
        .describe_internet_gateways()
        .filters(stack_filter(name))
        .send()
        .await
        .unwrap();
    found.extend(
        gateways
            .internet_gateways()
            .iter()
            .filter_map(|g| g.internet_gateway_id().map(str::to_owned)),
    );
    let tables = ec2
        .describe_route_tables()
        .filters(stack_filter(name))
        .send()
        .await
        .unwrap();
    found.extend(
        tables
            .route_tables()
            .iter()
            .filter_map(|t| t.route_table_id().map(str::to_owned)),
    );
    let endpoints = ec2
        .describe_vpc_endpoints()
        .filters(stack_filter(name))
        .send()
        .await
        .unwrap();
    found.extend(
        endpoints
            .vpc_endpoints()
            .iter()
            .filter(|e| e.state().is_none_or(|s| s.as_str() != "deleted"))
            .filter_map(|e| e.vpc_endpoint_id().map(str::to_owned)),
    );
    found
}

#[tokio::test]
async fn up_builds_the_whole_stack_a_second_up_changes_nothing_and_destroy_removes_it() {
    let aws = support::localstack().await;
    let (stack, zone_id) = TestStack::with_zone(&aws, "t").await;

    let outputs = stack.up();
    assert_eq!(outputs["url"], format!("https://chat.{}/", stack.zone));
    let changes = outputs["changes"].as_array().expect("changes");
    assert!(!changes.is_empty(), "the first up creates things");
    verify_stack(&aws, &stack, &zone_id, &outputs).await;

    let again = stack.up();
    assert_eq!(
        again["changes"],
        Value::Array(vec![]),
        "a second up must not change anything"
    );
    assert_eq!(again["instance_ids"], outputs["instance_ids"]);

    // A tag added to stack.yaml reaches the resources made before (EC2's, the running
    // instances included, without replacing them; the load balancer, Redis and the
    // certificate); then nothing is left to do.
    stack.edit("  team: tests\n", "  team: tests\n  owner: chat\n");
    let tagged = stack.up();
    assert_eq!(tagged["instance_ids"], outputs["instance_ids"]);
    let ec2 = aws_sdk_ec2::Client::new(&aws);
    let owners = ec2
        .describe_tags()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("key")
                .values("owner")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let owned: Vec<&str> = owners
        .tags()
        .iter()
        .filter(|tag| tag.value() == Some("chat"))
        .filter_map(|tag| tag.resource_id())
        .collect();
    let first_instance = outputs["instance_ids"][0].as_str().unwrap();
    assert!(
        owned.iter().any(|id| id.starts_with("vpc-"))
            && owned.iter().any(|id| id.starts_with("sg-"))
            && owned.contains(&first_instance),
        "{owned:?}"
    );
    let balancer = support::load_balancer_arn(&aws, &stack.name).await;
    let balancer_tags = aws_sdk_elasticloadbalancingv2::Client::new(&aws)
        .describe_tags()
        .resource_arns(&balancer)
        .send()
        .await
        .unwrap();
    assert!(
        balancer_tags.tag_descriptions()[0]
            .tags()
            .iter()
            .any(|tag| tag.key() == Some("owner") && tag.value() == Some("chat")),
        "{balancer_tags:?}"
    );
    let redis_tags = aws_sdk_elasticache::Client::new(&aws)
        .list_tags_for_resource()
        .resource_name(replication_group(&aws, &stack.name).await.arn().unwrap())
        .send()
        .await
        .unwrap();
    assert!(
        redis_tags
            .tag_list()
            .iter()
            .any(|tag| tag.key() == Some("owner") && tag.value() == Some("chat")),
        "{redis_tags:?}"
    );
    let certificate_tags = aws_sdk_acm::Client::new(&aws)
        .list_tags_for_certificate()
        .certificate_arn(outputs["certificate_arn"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert!(
        certificate_tags
            .tags()
            .iter()
            .any(|tag| tag.key() == "owner" && tag.value() == Some("chat")),
        "{certificate_tags:?}"
    );
    assert_eq!(stack.up()["changes"], json!([]), "tagged once");

    // Months of access logs: more objects than one DeleteObjects call takes, in a bucket
    // whose versioning someone turned on (a console, an organization's baseline): S3
    // deletes it only with every version and delete marker gone.
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&aws)
            .force_path_style(true)
            .build(),
    );
    let logs = format!("{}-alb-logs-000000000000-us-east-1", stack.name);
    s3.put_bucket_versioning()
        .bucket(&logs)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .expect("PutBucketVersioning");
    futures::stream::iter(0..1_100)
        .map(|n| {
            s3.put_object()
                .bucket(&logs)
                .key(format!(
                    "AWSLogs/000000000000/elasticloadbalancing/log-{n:04}.gz"
                ))
                .body(aws_sdk_s3::primitives::ByteStream::from_static(b"log"))
                .send()
        })
        .buffer_unordered(32)
        .for_each(|put| async {
            put.expect("PutObject into the access-log bucket");
        })
        .await;
    let first = "AWSLogs/000000000000/elasticloadbalancing/log-0000.gz";
    s3.put_object()
        .bucket(&logs)
        .key(first)
        .body(aws_sdk_s3::primitives::ByteStream::from_static(
            b"rewritten",
        ))
        .send()
        .await
        .expect("a second version");
    s3.delete_object()
        .bucket(&logs)
        .key(first)
        .send()
        .await
        .expect("a delete marker");

    stack.run(&["destroy", "--yes"]);
    verify_nothing_left(&aws, &stack, &zone_id).await;

    // Destroying what is gone is not an error.
    stack.run(&["destroy", "--yes"]);
}

/// `redis.shards: 3`: `plan` says it makes a cluster, `up` creates a cluster-mode-enabled
/// replication group of three node groups (a primary and a replica each), the
/// instances' Redis tag is its configuration endpoint and their boot configuration says
/// `REDIS_CLUSTER=true`, `status` shows the shards, a second `up` changes nothing, and
/// `destroy` removes the group.
#[tokio::test]
async fn three_shards_make_a_redis_cluster_whose_configuration_endpoint_the_instances_get() {
    let aws = support::localstack().await;
    let (stack, zone_id) = TestStack::with_zone(&aws, "s").await;
    stack.edit(
        "redis:\n  replicas: 1\n",
        "redis:\n  replicas: 1\n  shards: 3\n",
    );
    let name = &stack.name;

    let plan = stack
        .command(&["plan", "--output", "json"])
        .output()
        .unwrap();
    let plan: Value = serde_json::from_slice(&plan.stdout).expect("plan prints JSON");
    let redis_change = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|change| change["resource"] == format!("redis {name}-redis"))
        .expect("plan creates Redis")
        .clone();
    assert!(
        redis_change["reason"]
            .as_str()
            .unwrap()
            .contains("cluster mode, 3 shards of 1 primary and 1 replica(s)"),
        "{redis_change}"
    );

    let outputs = stack.up();

    let group = replication_group(&aws, name).await;
    assert_eq!(group.cluster_enabled(), Some(true));
    assert_eq!(group.node_groups().len(), 3, "three node groups");
    for node_group in group.node_groups() {
        assert_eq!(
            node_group.node_group_members().len(),
            2,
            "a primary and a replica"
        );
    }
    assert_eq!(group.transit_encryption_enabled(), Some(true));
    assert_eq!(group.at_rest_encryption_enabled(), Some(true));
    assert_eq!(group.multi_az().map(|m| m.as_str()), Some("enabled"));
    let configuration = group
        .configuration_endpoint()
        .expect("configuration endpoint");
    let endpoint = format!(
        "{}:{}",
        configuration.address().unwrap(),
        configuration.port().unwrap()
    );
    assert_eq!(outputs["redis_endpoint"], endpoint);

    let ec2 = aws_sdk_ec2::Client::new(&aws);
    let ids = support::instance_ids(&outputs);
    assert_eq!(ids.len(), 2);
    for id in &ids {
        let described = ec2
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .unwrap();
        let instance = &described.reservations()[0].instances()[0];
        assert_eq!(
            redis_endpoint_tag(instance),
            Some(endpoint.as_str()),
            "Redis endpoint tag of {id}"
        );
        let user_data = realtime_stack::local::user_data(&ec2, id).await.unwrap();
        assert!(
            user_data.contains("REDIS_CLUSTER='true'"),
            "the boot configuration of {id} says it talks to a cluster"
        );
    }

    let status = stack.run(&["status", "--output", "json"]);
    let status: Value = serde_json::from_slice(&status.stdout).expect("status prints JSON");
    assert_eq!(status["redis"]["shards"], 3);
    assert_eq!(status["redis"]["cluster_mode"], true);
    assert_eq!(status["redis"]["nodes"], 6);
    assert_eq!(status["redis"]["endpoint"], endpoint);

    let again = stack.up();
    assert_eq!(again["changes"], json!([]), "a second up changes nothing");

    // Resharded online, as the extension does it for moto (which cannot): fewer shards
    // remove the last node groups, more add node groups like the others; the slots are
    // spread over those there are.
    for (from, to, ids) in [
        ("3", "2", &["0001", "0002"][..]),
        ("2", "4", &["0001", "0002", "0003", "0004"][..]),
    ] {
        stack.edit(&format!("  shards: {from}\n"), &format!("  shards: {to}\n"));
        stack.up();
        let group = replication_group(&aws, name).await;
        let node_groups: Vec<&str> = group
            .node_groups()
            .iter()
            .filter_map(|node_group| node_group.node_group_id())
            .collect();
        assert_eq!(node_groups, ids);
        for node_group in group.node_groups() {
            assert_eq!(node_group.node_group_members().len(), 2, "{node_group:?}");
        }
        let last_slot = group.node_groups().last().and_then(|ng| ng.slots());
        assert!(
            last_slot.is_some_and(|slots| slots.ends_with("-16383")),
            "{last_slot:?}"
        );
        assert_eq!(stack.up()["changes"], json!([]), "resharded once");
    }

    // One shard again is refused by preflight, naming what to do, and changes nothing:
    // not even the instances' launch template, whose boot configuration says whether
    // Redis is a cluster (instances launched later would take the wrong one).
    stack.edit("  shards: 4\n", "  shards: 1\n");
    let refused = up_fails(&stack);
    assert!(
        refused.contains("cluster mode with 4 shard(s), stack.yaml says 1 shard"),
        "{refused}"
    );
    stack.edit("  shards: 1\n", "  shards: 4\n");
    assert_eq!(
        plan_json(&stack, 0)["changes"],
        json!([]),
        "nothing changed"
    );

    stack.run(&["destroy", "--yes"]);
    verify_nothing_left(&aws, &stack, &zone_id).await;
}

/// The stack's replication group, as ElastiCache describes it.
async fn replication_group(
    aws: &SdkConfig,
    name: &str,
) -> aws_sdk_elasticache::types::ReplicationGroup {
    aws_sdk_elasticache::Client::new(aws)
        .describe_replication_groups()
        .replication_group_id(format!("{name}-redis"))
        .send()
        .await
        .unwrap()
        .replication_groups()[0]
        .clone()
}

/// The Redis endpoint `up` wrote onto an instance's tags.
fn redis_endpoint_tag(instance: &aws_sdk_ec2::types::Instance) -> Option<&str> {
    instance
        .tags()
        .iter()
        .find(|t| t.key() == Some("realtime-stack:redis-endpoint"))
        .and_then(|t| t.value())
}

/// ACM gives every certificate for a domain in an account the same validation CNAME, in
/// every region (as LocalStack does): `destroy` deletes the stack's certificate but keeps
/// the CNAME that another team's certificate for the same domain still renews with.
#[tokio::test]
async fn destroy_keeps_a_validation_cname_another_certificate_still_uses() {
    destroy_keeps_the_validation_cname_of_a_certificate_in(None).await;
}

/// The same for a certificate of another region (a CloudFront one in us-east-1, for a
/// stack elsewhere: hashicorp/terraform-provider-aws#13653).
#[tokio::test]
async fn destroy_keeps_the_validation_cname_of_a_certificate_in_another_region() {
    destroy_keeps_the_validation_cname_of_a_certificate_in(Some("eu-west-1")).await;
}

/// `up`, a certificate for the stack's domain outside the stack (in `region`, or the
/// stack's), `destroy`: the certificate and the CNAME it renews with are still there.
async fn destroy_keeps_the_validation_cname_of_a_certificate_in(region: Option<&'static str>) {
    let aws = support::localstack().await;
    let (stack, zone_id) =
        TestStack::with_zone(&aws, if region.is_some() { "r" } else { "v" }).await;
    stack.up();
    let mut config = aws_sdk_acm::config::Builder::from(&aws);
    if let Some(region) = region {
        config = config.region(aws_sdk_acm::config::Region::new(region));
    }
    let acm = aws_sdk_acm::Client::from_conf(config.build());
    let theirs = acm
        .request_certificate()
        .domain_name(stack.domain())
        .validation_method(aws_sdk_acm::types::ValidationMethod::Dns)
        .send()
        .await
        .unwrap()
        .certificate_arn
        .unwrap();
    let described = acm
        .describe_certificate()
        .certificate_arn(&theirs)
        .send()
        .await
        .unwrap();
    let shared = described.certificate().unwrap().domain_validation_options()[0]
        .resource_record()
        .unwrap()
        .name
        .clone();

    stack.run(&["destroy", "--yes"]);

    let route53 = aws_sdk_route53::Client::new(&aws);
    let records = route53
        .list_resource_record_sets()
        .hosted_zone_id(&zone_id)
        .send()
        .await
        .unwrap();
    let names: Vec<&str> = records
        .resource_record_sets()
        .iter()
        .filter(|set| set.r#type().as_str() == "CNAME")
        .map(|set| set.name())
        .collect();
    assert_eq!(
        names,
        [shared.as_str()],
        "the shared validation CNAME stays"
    );
    let listed = acm.list_certificates().send().await.unwrap();
    let left: Vec<&str> = listed
        .certificate_summary_list()
        .iter()
        .filter(|c| c.domain_name() == Some(stack.domain().as_str()))
        .filter_map(|c| c.certificate_arn())
        .collect();
    assert_eq!(
        left,
        [theirs.as_str()],
        "only the stack's certificate is deleted"
    );

    acm.delete_certificate()
        .certificate_arn(&theirs)
        .send()
        .await
        .unwrap();
}

/// The stack's launch template (by its name) and the numbers of all its versions, read a
/// page at a time.
async fn launch_template_versions(
    ec2: &aws_sdk_ec2::Client,
    stack: &TestStack,
) -> (String, Vec<i64>) {
    let name = format!("{}-instance", stack.name);
    let pages = ec2
        .describe_launch_template_versions()
        .launch_template_name(&name)
        .max_results(100)
        .into_paginator()
        .send()
        .collect::<Vec<_>>()
        .await;
    let mut id = String::new();
    let mut numbers = Vec::new();
    for page in pages {
        for version in page
            .expect("DescribeLaunchTemplateVersions")
            .launch_template_versions()
        {
            id = version.launch_template_id().unwrap_or_default().to_owned();
            numbers.extend(version.version_number());
        }
    }
    (id, numbers)
}

/// A new build reaches the instances: after the chat-server binary changed, `up` replaces
/// every instance, one batch at a time, each new one recording the new SHA-256, and the
/// old ones are terminated, with the builds and launch template versions they ran from
/// (a template holds at most 10 000 versions); a lower `instances.count` then removes one. (LocalStack
/// reports targets healthy at once: the health gate and the drain are the unit tests' and
/// the `--local` rolling deploy test's to show.)
#[tokio::test]
async fn a_new_build_replaces_every_instance_and_a_lower_count_removes_one() {
    let aws = support::localstack().await;
    let (mut stack, _) = TestStack::with_zone(&aws, "r").await;
    let ec2 = aws_sdk_ec2::Client::new(&aws);
    let ids = support::instance_ids;
    let first = ids(&stack.up());
    assert_eq!(first.len(), 2);
    // A template with a long history, as a stack deployed many times before versions were
    // pruned has: more than DeleteLaunchTemplateVersions takes in one call.
    let (template, versions) = launch_template_versions(&ec2, &stack).await;
    assert_eq!(versions, [1]);
    for _ in 0..250 {
        ec2.create_launch_template_version()
            .launch_template_id(&template)
            .launch_template_data(
                aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                    .image_id("ami-00000000000000001")
                    .build(),
            )
            .send()
            .await
            .expect("CreateLaunchTemplateVersion");
    }

    // Another build: the same program with one byte more, so another SHA-256. Both
    // instances go in one batch: the group refuses to take out the second while the
    // first drains (ScalingActivityInProgress, as the extension answers it), and `up`
    // sends it again once the first is gone.
    let rebuilt = stack.rebuild();
    stack.edit(
        "  drain_seconds: 5\n",
        "  drain_seconds: 5\n  batch_size: 2\n",
    );
    let calls = stack.dir.path().join("aws-calls.log");
    stack.call_log = Some(calls.clone());
    let second = ids(&stack.up());
    let log = std::fs::read_to_string(&calls).expect("the CLI's call log");
    let terminations = log
        .lines()
        .filter(|call| call.contains("TerminateInstanceInAutoScalingGroup"))
        .count();
    assert!(
        terminations > 2,
        "the second sent again after a refusal:\n{log}"
    );
    assert_eq!(second.len(), 2);
    assert!(
        second.iter().all(|id| !first.contains(id)),
        "every instance replaced: {first:?} -> {second:?}"
    );
    let rebuilt_sha = sha256_hex(&rebuilt);
    for id in &second {
        assert_eq!(
            support::state_and_binary(&ec2, id).await,
            ("running".to_owned(), Some(rebuilt_sha.clone()))
        );
    }
    for id in &first {
        let (state, _) = support::state_and_binary(&ec2, id).await;
        assert!(
            matches!(state.as_str(), "terminated" | "shutting-down"),
            "{id} is {state}"
        );
    }
    // The bucket keeps the build the instances run, and no other.
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&aws)
            .force_path_style(true)
            .build(),
    );
    let objects = s3
        .list_objects_v2()
        .bucket(format!("{}-artifacts-000000000000-us-east-1", stack.name))
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = objects.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, [format!("chat-server/{rebuilt_sha}")]);
    // The template keeps the version the group launches, and no other.
    assert_eq!(launch_template_versions(&ec2, &stack).await.1, [252]);

    stack.edit("  count: 2\n", "  count: 1\n");
    let third = ids(&stack.up());
    assert_eq!(third.len(), 1);
    assert!(
        second.contains(&third[0]),
        "one of {second:?} stays: {third:?}"
    );
    let removed = second.iter().find(|id| **id != third[0]).unwrap().clone();
    let (state, _) = support::state_and_binary(&ec2, &removed).await;
    assert!(
        matches!(state.as_str(), "terminated" | "shutting-down"),
        "{removed} is {state}"
    );

    stack.run(&["destroy", "--yes"]);
}

/// `scaling`: `plan` shows the policy; `up` makes the group keep between `min` and `max`
/// instances, with a target-tracking policy on the group's average CPU; a desired capacity
/// the policy changed (here by hand, within min and max) is the policy's, not drift: the
/// next `up` changes nothing and keeps every instance; without `scaling` the policy goes
/// and the group is back to `instances.count`.
#[tokio::test]
async fn scaling_tracks_the_average_cpu_between_min_and_max_and_up_does_not_fight_it() {
    let aws = support::localstack().await;
    let (stack, _) = TestStack::with_zone(&aws, "c").await;
    let name = stack.name.clone();
    let group = format!("{name}-instances");
    let scaling = "scaling:\n  min: 1\n  max: 3\n  cpu_target_percent: 40\n";
    stack.edit("redis:\n", &format!("{scaling}redis:\n"));
    let autoscaling = aws_sdk_autoscaling::Client::new(&aws);

    let plan: Value = serde_json::from_slice(
        &stack
            .command(&["plan", "--output", "json"])
            .output()
            .unwrap()
            .stdout,
    )
    .expect("plan prints JSON");
    assert!(
        plan["changes"].as_array().unwrap().iter().any(|change| {
            change["action"] == "create"
                && change["resource"] == format!("scaling policy {name}-cpu-target")
                && change["reason"] == "average CPU 40% between 1 and 3 instances"
        }),
        "{plan:#}"
    );
    let outputs = stack.up();
    assert_eq!(
        support::instance_ids(&outputs).len(),
        2,
        "it starts at instances.count"
    );
    let policies = autoscaling
        .describe_policies()
        .auto_scaling_group_name(&group)
        .send()
        .await
        .unwrap();
    let policy = &policies.scaling_policies()[0];
    assert_eq!(policy.policy_type(), Some("TargetTrackingScaling"));
    let tracking = policy.target_tracking_configuration().unwrap();
    assert_eq!(tracking.target_value(), Some(40.0));
    assert_eq!(
        tracking
            .predefined_metric_specification()
            .and_then(|metric| metric.predefined_metric_type())
            .map(|metric| metric.as_str()),
        Some("ASGAverageCPUUtilization")
    );
    let size = || async {
        let described = autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(&group)
            .send()
            .await
            .unwrap();
        let group = &described.auto_scaling_groups()[0];
        (
            group.min_size().unwrap(),
            group.max_size().unwrap(),
            group.desired_capacity().unwrap(),
        )
    };
    assert_eq!(size().await, (1, 3, 2));

    // The policy scales out.
    autoscaling
        .update_auto_scaling_group()
        .auto_scaling_group_name(&group)
        .desired_capacity(3)
        .send()
        .await
        .unwrap();
    let again = stack.up();
    assert_eq!(again["changes"], json!([]), "up does not fight the policy");
    assert_eq!(support::instance_ids(&again).len(), 3);
    assert_eq!(size().await, (1, 3, 3));

    // No scaling: no policy, instances.count.
    stack.edit(scaling, "");
    let fixed = stack.up();
    assert_eq!(support::instance_ids(&fixed).len(), 2);
    assert_eq!(size().await, (2, 2, 2));
    let policies = autoscaling
        .describe_policies()
        .auto_scaling_group_name(&group)
        .send()
        .await
        .unwrap();
    assert!(policies.scaling_policies().is_empty());

    stack.run(&["destroy", "--yes"]);
}

/// The stack's A records in the zone `zone_id`: each name with the DNS name its alias
/// points at.
async fn alias_records(aws: &SdkConfig, zone_id: &str) -> Vec<(String, String)> {
    let records = aws_sdk_route53::Client::new(aws)
        .list_resource_record_sets()
        .hosted_zone_id(zone_id)
        .send()
        .await
        .expect("ListResourceRecordSets");
    records
        .resource_record_sets()
        .iter()
        .filter(|set| set.r#type().as_str() == "A")
        .map(|set| {
            let target = set.alias_target().map(|alias| alias.dns_name().to_owned());
            (set.name().to_owned(), target.unwrap_or_default())
        })
        .collect()
}

/// A changed `domain.name` moves the alias: `policy` lets the old name's records be
/// deleted, `plan` says the old name's alias goes, `up` points the new name at the load
/// balancer and deletes the alias it wrote for the old one (record sets carry no tags:
/// the load balancer's tag says which alias the stack wrote) with the old name's
/// certificate and validation record, and `destroy` leaves no record of either name.
#[tokio::test]
async fn a_changed_domain_moves_the_alias_and_leaves_no_record_behind() {
    let aws = support::localstack().await;
    let (stack, zone_id) = TestStack::with_zone(&aws, "d").await;
    let outputs = stack.up();
    let load_balancer = outputs["load_balancer_dns_name"]
        .as_str()
        .expect("the load balancer's DNS name")
        .to_owned();
    let (old, new) = (
        format!("chat.{}.", stack.zone),
        format!("www.{}.", stack.zone),
    );
    assert_eq!(
        alias_records(&aws, &zone_id).await,
        [(old.clone(), load_balancer.clone())]
    );

    stack.edit(
        &format!("  name: chat.{}\n", stack.zone),
        &format!("  name: www.{}\n", stack.zone),
    );
    // The policy for the edited stack.yaml lets the deployer delete the old name's
    // records, and only delete them.
    let policy: Value =
        serde_json::from_slice(&stack.run(&["policy", "--account", "000000000000"]).stdout)
            .expect("policy prints JSON");
    let retired = json!({
        "route53:ChangeResourceRecordSetsRecordTypes": ["A", "CNAME"],
        "route53:ChangeResourceRecordSetsActions": ["DELETE"]
    });
    assert!(
        policy["Statement"].as_array().unwrap().iter().any(|statement| {
            statement["Condition"]["ForAllValues:StringEquals"] == retired
                && statement["Condition"]["ForAllValues:StringLike"]
                    ["route53:ChangeResourceRecordSetsNormalizedRecordNames"][0]
                    == old.trim_end_matches('.')
        }),
        "{policy:#}"
    );
    let plan = plan_json(&stack, 2);
    let old_alias = format!("dns {} A", old.trim_end_matches('.'));
    assert!(
        plan["changes"]
            .as_array()
            .expect("changes")
            .iter()
            .any(|change| {
                change["action"] == "delete" && change["resource"] == old_alias.as_str()
            }),
        "plan deletes {old_alias}: {plan:#}"
    );
    let moved = stack.up();
    assert_eq!(
        moved["url"],
        format!("https://{}/", new.trim_end_matches('.'))
    );
    assert_eq!(
        alias_records(&aws, &zone_id).await,
        [(new.clone(), load_balancer.clone())],
        "the new name's alias, and not the old one's"
    );
    // The old name's certificate and its validation record went with its alias.
    let records = aws_sdk_route53::Client::new(&aws)
        .list_resource_record_sets()
        .hosted_zone_id(&zone_id)
        .send()
        .await
        .unwrap();
    let left: Vec<&str> = records
        .resource_record_sets()
        .iter()
        .map(|set| set.name())
        .filter(|name| name.ends_with(&old))
        .collect();
    assert!(left.is_empty(), "records of the old name left: {left:?}");
    let certificates = aws_sdk_acm::Client::new(&aws)
        .list_certificates()
        .send()
        .await
        .unwrap();
    let domains: Vec<&str> = certificates
        .certificate_summary_list()
        .iter()
        .filter_map(|certificate| certificate.domain_name())
        .filter(|domain| domain.ends_with(&stack.zone))
        .collect();
    assert_eq!(
        domains,
        [new.trim_end_matches('.')],
        "the new name's certificate only"
    );
    let again = stack.up();
    assert_eq!(again["changes"], json!([]), "a second up changes nothing");

    stack.run(&["destroy", "--yes"]);
    verify_nothing_left(&aws, &stack, &zone_id).await;
}

/// `up --yes` on `stack`, which must fail: what it said on stderr.
fn up_refused(stack: &TestStack) -> String {
    let output = stack
        .command(&["up", "--yes"])
        .output()
        .expect("running up");
    assert!(!output.status.success(), "up should have failed");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `plan --output json`, which must exit with `expected_code`.
fn plan_json(stack: &TestStack, expected_code: i32) -> Value {
    let output = stack
        .command(&["plan", "--output", "json"])
        .output()
        .expect("running plan");
    assert_eq!(
        output.status.code(),
        Some(expected_code),
        "plan exit code; stderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("plan prints JSON")
}

/// `plan` says what `up` would do and does none of it: on a stack that does not exist,
/// every resource to create and no AWS call that changes anything (LocalStack holds
/// nothing afterwards), exit code 2; after `up`, nothing to do, exit code 0; after a
/// change by hand and a new build, the attribute to set back and every instance to
/// replace with the reason, and again nothing changed. A new app port, and a Redis node
/// type ElastiCache does not offer from the running one, are refused by `up` before
/// anything changes; a larger node type is planned.
#[tokio::test]
async fn plan_says_what_up_would_do_and_changes_nothing() {
    let aws = support::localstack().await;
    let (stack, _) = TestStack::with_zone(&aws, "p").await;
    let plan = |expected_code: i32| {
        let plan = plan_json(&stack, expected_code);
        assert_eq!(plan["mutating_calls"], json!([]), "plan changes nothing");
        plan["changes"].as_array().expect("changes").clone()
    };
    let has = |changes: &[Value], action: &str, resource: &str| {
        changes.iter().any(|change| {
            change["action"] == action
                && change["resource"]
                    .as_str()
                    .is_some_and(|r| r.starts_with(resource))
        })
    };

    let changes = plan(2);
    let name = &stack.name;
    for resource in [
        format!("vpc {name}-vpc"),
        format!("security group {name}-instances-sg"),
        format!("redis {name}-redis"),
        format!("load balancer {name}-alb"),
        "listener HTTPS:443".to_owned(),
        format!("certificate {}", stack.domain()),
        format!("launch template {name}-instance"),
        format!("auto scaling group {name}-instances"),
    ] {
        assert!(
            has(&changes, "create", &resource),
            "{resource} in {changes:#?}"
        );
    }
    assert!(
        tagged_ec2_resources(&aws, name).await.is_empty(),
        "plan created nothing"
    );

    stack.up();
    assert_eq!(plan(0), Vec::<Value>::new(), "after up, nothing to do");

    // Someone shortens the idle timeout; the chat-server is rebuilt.
    let elbv2 = aws_sdk_elasticloadbalancingv2::Client::new(&aws);
    let lb_arn = support::load_balancer_arn(&aws, name).await;
    let idle_timeout = |value: &str| {
        aws_sdk_elasticloadbalancingv2::types::LoadBalancerAttribute::builder()
            .key("idle_timeout.timeout_seconds")
            .value(value)
            .build()
    };
    elbv2
        .modify_load_balancer_attributes()
        .load_balancer_arn(&lb_arn)
        .attributes(idle_timeout("60"))
        .send()
        .await
        .unwrap();
    let rebuilt = stack.rebuild();

    let changes = plan(2);
    let update = changes
        .iter()
        .find(|change| change["action"] == "update")
        .expect("an update");
    assert_eq!(update["resource"], format!("load balancer {name}-alb"));
    assert_eq!(update["reason"], "idle_timeout.timeout_seconds 60 → 3600");
    let replaced: Vec<&Value> = changes
        .iter()
        .filter(|change| change["action"] == "replace")
        .collect();
    assert_eq!(replaced.len(), 2, "{changes:#?}");
    let rebuilt_sha = sha256_hex(&rebuilt);
    for change in replaced {
        let reason = change["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("binary sha256 ")
                && reason.ends_with(&format!("→ {}…", &rebuilt_sha[..12])),
            "{reason}"
        );
    }
    let attributes = elbv2
        .describe_load_balancer_attributes()
        .load_balancer_arn(&lb_arn)
        .send()
        .await
        .unwrap();
    assert!(
        attributes.attributes().iter().any(|a| {
            a.key() == Some("idle_timeout.timeout_seconds") && a.value() == Some("60")
        }),
        "plan did not set it back"
    );

    // A tag added in stack.yaml: the launch template takes it, and `plan` says which and
    // for which instances (not "changed by hand").
    stack.edit("  team: tests\n", "  team: tests\n  owner: chat\n");
    let changes = plan(2);
    let template = changes
        .iter()
        .find(|change| change["resource"] == format!("launch template {name}-instance"))
        .unwrap_or_else(|| panic!("{changes:#?}"));
    let reason = template["reason"].as_str().unwrap();
    assert!(
        reason.contains("instance tags owner=chat (the running instances are tagged in place)")
            && !reason.contains("by hand"),
        "{reason}"
    );
    stack.edit("  owner: chat\n", "");

    // A new app port: the target group's port cannot change in place, and `up` says so
    // before it moves the instances' security group off the port they serve on.
    stack.edit(
        "  drain_seconds: 5\n",
        "  drain_seconds: 5\n  app_port: 8081\n",
    );
    let stderr = up_refused(&stack);
    assert!(
        stderr.contains("sends to port 8080, and stack.yaml's instances.app_port is 8081")
            && stderr.contains("Set app_port back to 8080, or run destroy, then up"),
        "{stderr}"
    );
    let ec2 = aws_sdk_ec2::Client::new(&aws);
    let groups = ec2
        .describe_security_groups()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("group-name")
                .values(format!("{name}-instances-sg"))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let ports: Vec<Option<i32>> = groups.security_groups()[0]
        .ip_permissions()
        .iter()
        .map(|permission| permission.from_port())
        .collect();
    assert_eq!(ports, [Some(8080)], "the instances still take their port");
    stack.edit("  app_port: 8081\n", "");

    // A larger Redis node: a scale up ElastiCache offers (ListAllowedNodeTypeModifications,
    // served by the extension), which plan shows. A node type it does not offer from the
    // running one is refused before anything changes, naming those it does.
    stack.edit(
        "  replicas: 1\n",
        "  replicas: 1\n  node_type: cache.m7g.large\n",
    );
    let changes = plan(2);
    assert!(
        changes
            .iter()
            .any(|change| change["resource"] == format!("redis {name}-redis")
                && change["reason"] == "changing node type to cache.m7g.large"),
        "{changes:#?}"
    );
    stack.edit("cache.m7g.large", "cache.c7gn.large");
    let stderr = up_refused(&stack);
    assert!(
        stderr.contains(&format!(
            "ElastiCache cannot move the replication group {name}-redis from cache.t4g.micro \
             to cache.c7gn.large"
        )) && stderr.contains("cache.m7g.large, cache.m7g.xlarge")
            && stderr.contains("Set redis.node_type to one of those, or to cache.t4g.micro"),
        "{stderr}"
    );
    let groups = aws_sdk_elasticache::Client::new(&aws)
        .describe_replication_groups()
        .replication_group_id(format!("{name}-redis"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        groups.replication_groups()[0].cache_node_type(),
        Some("cache.t4g.micro")
    );

    stack.run(&["destroy", "--yes"]);
}

/// A running Redis changed in place, as ElastiCache changes it: the project's LocalStack
/// extension gives moto ModifyReplicationGroup, IncreaseReplicaCount and
/// DecreaseReplicaCount, each taking the group through `modifying` for a while, and an
/// added replica through `creating` a while after the group reads available again, with
/// the next change refused until it is not (hashicorp/terraform-provider-aws#50096). Each
/// change is made once, and a second `plan` has nothing to do.
#[tokio::test]
async fn a_running_redis_is_changed_in_place_and_then_left_alone() {
    let aws = support::localstack().await;
    let (stack, _) = TestStack::with_zone(&aws, "e").await;
    let name = &stack.name;
    let id = format!("{name}-redis");
    let elasticache = aws_sdk_elasticache::Client::new(&aws);
    let redis = || async {
        let group = elasticache
            .describe_replication_groups()
            .replication_group_id(&id)
            .send()
            .await
            .unwrap()
            .replication_groups()[0]
            .clone();
        let nodes: Vec<_> = elasticache
            .describe_cache_clusters()
            .send()
            .await
            .unwrap()
            .cache_clusters()
            .iter()
            .filter(|node| node.replication_group_id() == Some(id.as_str()))
            .cloned()
            .collect();
        (group, nodes)
    };
    let changes = || {
        let plan = plan_json(&stack, 2);
        plan["changes"]
            .as_array()
            .expect("changes")
            .iter()
            .filter(|change| change["resource"] == format!("redis {id}"))
            .map(|change| change["reason"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };

    stack.edit(
        "  replicas: 1\n",
        "  replicas: 0\n  engine_version: \"7.0\"\n  snapshot_retention_days: 1\n",
    );
    stack.up();
    let (group, nodes) = redis().await;
    assert_eq!(group.member_clusters().len(), 1);
    assert_eq!(nodes.len(), 1, "ElastiCache lists the group's node");
    assert_eq!(nodes[0].engine_version(), Some("7.0.0"));
    assert_eq!(
        group.auto_minor_version_upgrade(),
        Some(false),
        "a pinned minor version is not upgraded by ElastiCache"
    );

    stack.edit(
        "  replicas: 0\n  engine_version: \"7.0\"\n  snapshot_retention_days: 1\n",
        "  replicas: 2\n  engine_version: \"7.1\"\n  node_type: cache.t4g.small\n",
    );
    assert_eq!(
        changes(),
        [
            "upgrading to version 7.1",
            "changing node type to cache.t4g.small",
            "changing to 2 replica(s)",
            "enabling failover and Multi-AZ",
            "keeping automatic backups for 7 day(s)",
        ]
    );
    stack.up();
    let (group, nodes) = redis().await;
    assert_eq!(group.status(), Some("available"));
    assert_eq!(group.cache_node_type(), Some("cache.t4g.small"));
    assert_eq!(group.member_clusters().len(), 3);
    assert_eq!(
        group.automatic_failover(),
        Some(&aws_sdk_elasticache::types::AutomaticFailoverStatus::Enabled)
    );
    assert_eq!(
        group.multi_az(),
        Some(&aws_sdk_elasticache::types::MultiAzStatus::Enabled)
    );
    assert_eq!(group.snapshot_retention_limit(), Some(7));
    assert_eq!(nodes.len(), 3);
    for node in &nodes {
        assert_eq!(node.cache_cluster_status(), Some("available"));
        assert_eq!(node.engine_version(), Some("7.1.0"));
        assert_eq!(node.cache_node_type(), Some("cache.t4g.small"));
    }
    assert_eq!(plan_json(&stack, 0)["changes"], json!([]), "made once");

    // Back to a lone primary: failover and Multi-AZ go first, then the replicas; the
    // version no longer pinned, ElastiCache brings its minor versions again.
    stack.edit(
        "  replicas: 2\n  engine_version: \"7.1\"\n",
        "  replicas: 0\n",
    );
    assert_eq!(
        changes(),
        [
            "disabling failover and Multi-AZ",
            "changing to 0 replica(s)",
            "turning automatic minor version upgrades on"
        ]
    );
    stack.up();
    let (group, _) = redis().await;
    assert_eq!(group.member_clusters().len(), 1);
    assert_eq!(group.auto_minor_version_upgrade(), Some(true));
    assert_eq!(
        group.automatic_failover(),
        Some(&aws_sdk_elasticache::types::AutomaticFailoverStatus::Disabled)
    );
    assert_eq!(plan_json(&stack, 0)["changes"], json!([]), "made once");
    support::poll_until(
        Duration::from_secs(30),
        "the removed replicas to be gone",
        || async { (redis().await.1.len() == 1).then_some(()) },
    )
    .await;

    stack.run(&["destroy", "--yes"]);
}

/// `plan` prices the stack as described from the Price List: the project's LocalStack
/// extension serves GetProducts from a test price list (its prices are test data, in
/// scripts/localstack-extension/realtime_stack_localstack/pricing.py): t3.micro 0.01,
/// cache.t4g.micro Redis 0.02 and an Application Load Balancer's hour 0.025 USD, over 730
/// hours.
#[tokio::test]
async fn plan_says_what_the_stack_costs_a_month_from_the_price_list() {
    let aws = support::localstack().await;
    let (stack, _) = TestStack::with_zone(&aws, "c").await;

    let plan = plan_json(&stack, 2);
    assert_eq!(plan["cost_unavailable"], Value::Null, "{plan:#}");
    let cost = &plan["cost"];
    let line = |resource: &str| {
        cost["lines"]
            .as_array()
            .expect("cost lines")
            .iter()
            .find(|line| line["resource"] == resource)
            .unwrap_or_else(|| panic!("{resource} in {cost:#}"))
            .clone()
    };
    let monthly = |value: &Value| value.as_f64().expect("a number");
    // 2 × t3.micro × 0.01 × 730; (1 primary + 1 replica) × 0.02 × 730; 0.025 × 730.
    for (resource, count, usd_per_month) in [
        ("instances", 2, 14.6),
        ("redis nodes", 2, 29.2),
        ("load balancer", 1, 18.25),
    ] {
        let line = line(resource);
        assert_eq!(line["count"], count, "{line:#}");
        assert!(
            (monthly(&line["usd_per_month"]) - usd_per_month).abs() < 1e-9,
            "{line:#}"
        );
    }
    assert!(
        (monthly(&cost["usd_per_month"]) - 62.05).abs() < 1e-9,
        "{cost:#}"
    );
    assert!(tagged_ec2_resources(&aws, &stack.name).await.is_empty());

    let text = stack.command(&["plan"]).output().expect("running plan");
    let text = String::from_utf8_lossy(&text.stdout);
    for expected in [
        "cost: $62.05 a month at on-demand prices in us-east-1 (730 hours, AWS Price List):",
        "instances      2 × t3.micro at $0.01/h: $14.60",
        "redis nodes    2 × cache.t4g.micro (redis) at $0.02/h: $29.20",
        "load balancer  1 × application load balancer at $0.025/h: $18.25",
        "not included: usage-based charges",
    ] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }
}

/// Starts `up` and kills it as it sends `operation` (as the CLI's call log names it):
/// at that phase boundary, the request may or may not have reached AWS.
async fn kill_up_at(aws: &SdkConfig, stack: &TestStack, operation: &str) {
    let log = stack
        .dir
        .path()
        .join(format!("calls-{}.log", support::unique_suffix()));
    let mut child = stack
        .command(&["up", "--yes"])
        .env("REALTIME_STACK_CALL_LOG", &log)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting up");
    let deadline = Instant::now() + Duration::from_secs(180);
    let sent =
        || std::fs::read_to_string(&log).is_ok_and(|calls| calls.lines().any(|c| c == operation));
    while !sent() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "up ended before it sent {operation}"
        );
        assert!(
            Instant::now() < deadline,
            "up did not send {operation} within three minutes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().expect("killing up");
    child.wait().expect("reaping up");
    assert!(
        !tagged_ec2_resources(aws, &stack.name).await.is_empty(),
        "killed after creating something"
    );
}

/// `up` killed as it sends `operation`, twice: `destroy` removes what the first run
/// left, and the next `up` completes what the second left, as if nothing had happened.
async fn killed_at(operation: &str) {
    let aws = support::localstack().await;
    let (stack, zone_id) = TestStack::with_zone(&aws, "k").await;

    kill_up_at(&aws, &stack, operation).await;
    stack.run(&["destroy", "--yes"]);
    verify_nothing_left(&aws, &stack, &zone_id).await;

    kill_up_at(&aws, &stack, operation).await;
    let outputs = stack.up();
    verify_stack(&aws, &stack, &zone_id, &outputs).await;
    stack.run(&["destroy", "--yes"]);
    verify_nothing_left(&aws, &stack, &zone_id).await;
}

#[tokio::test]
async fn up_killed_while_building_the_network() {
    killed_at("EC2:CreateSubnet").await;
}

#[tokio::test]
async fn up_killed_as_redis_is_being_created() {
    killed_at("ElastiCache:CreateReplicationGroup").await;
}

#[tokio::test]
async fn up_killed_after_the_load_balancer() {
    killed_at("Elastic Load Balancing v2:CreateListener").await;
}

#[tokio::test]
async fn up_killed_as_the_auto_scaling_group_is_created() {
    killed_at("Auto Scaling:CreateAutoScalingGroup").await;
}

#[tokio::test]
async fn up_killed_as_dns_is_written() {
    killed_at("Route 53:ChangeResourceRecordSets").await;
}

/// Runs `args` expecting `up` to fail; returns what it printed on stderr.
fn up_fails_with(stack: &TestStack, args: &[&str]) -> String {
    let output = stack.command(args).output().expect("running up");
    assert!(!output.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn up_fails(stack: &TestStack) -> String {
    up_fails_with(stack, &["up", "--yes"])
}

#[tokio::test]
async fn an_invalid_stack_file_is_reported_whole_and_creates_nothing() {
    let aws = support::localstack().await;
    let suffix = support::unique_suffix();
    let name = format!("b{}", &suffix[suffix.len() - 8..]);
    let stack = TestStack::new(&name, &format!("{name}.example.test"));
    let valid = std::fs::read_to_string(stack.file()).unwrap();
    let invalid = valid
        .replace("  count: 2\n", "  count: 0\n  cuont: 3\n")
        .replace("cidr: 10.20.0.0/16", "cidr: 10.20.0.0/33");
    std::fs::write(stack.file(), invalid).unwrap();

    let stderr = up_fails(&stack);
    assert!(
        stderr.contains("3 problems"),
        "every problem is reported: {stderr}"
    );
    assert!(stderr.contains("count"), "{stderr}");
    assert!(
        stderr.contains("did you mean `count`") || stderr.contains("did you mean"),
        "{stderr}"
    );
    assert!(stderr.contains("cidr"), "{stderr}");
    assert!(
        stderr.contains("stack.yaml:"),
        "errors point into the file: {stderr}"
    );
    assert!(
        tagged_ec2_resources(&aws, &name).await.is_empty(),
        "nothing was created"
    );

    // A valid file naming a hosted zone that does not exist: preflight stops it.
    std::fs::write(stack.file(), valid).unwrap();
    let stderr = up_fails(&stack);
    assert!(stderr.contains("no Route53 hosted zone"), "{stderr}");
    assert!(
        tagged_ec2_resources(&aws, &name).await.is_empty(),
        "nothing was created"
    );

    // With the zone, but the domain already served by someone else's record: preflight
    // refuses to replace it.
    let zone_id = support::hosted_zone(&aws, &stack.zone).await;
    let route53 = aws_sdk_route53::Client::new(&aws);
    let record = aws_sdk_route53::types::ResourceRecordSet::builder()
        .name(stack.domain())
        .r#type(aws_sdk_route53::types::RrType::A);
    let address = record
        .clone()
        .ttl(300)
        .resource_records(
            aws_sdk_route53::types::ResourceRecord::builder()
                .value("192.0.2.10")
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    // The same domain served by this stack under its former name (a stack's name cannot
    // change in place): the error says so, and where to run `destroy`.
    let former = record
        .alias_target(
            aws_sdk_route53::types::AliasTarget::builder()
                .dns_name("dualstack.former-alb-1234567890.us-east-1.elb.amazonaws.com")
                .hosted_zone_id("Z35SXDOTRQ7X7K")
                .evaluate_target_health(true)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let change = |action, set: &aws_sdk_route53::types::ResourceRecordSet| {
        route53
            .change_resource_record_sets()
            .hosted_zone_id(&zone_id)
            .change_batch(
                aws_sdk_route53::types::ChangeBatch::builder()
                    .changes(
                        aws_sdk_route53::types::Change::builder()
                            .action(action)
                            .resource_record_set(set.clone())
                            .build()
                            .unwrap(),
                    )
                    .build()
                    .unwrap(),
            )
            .send()
    };
    change(aws_sdk_route53::types::ChangeAction::Create, &address)
        .await
        .unwrap();
    let stderr = up_fails(&stack);
    assert!(
        stderr.contains(&format!(
            "already has a record for {} (A 192.0.2.10)",
            stack.domain()
        )),
        "{stderr}"
    );
    assert!(
        tagged_ec2_resources(&aws, &name).await.is_empty(),
        "nothing was created"
    );
    change(aws_sdk_route53::types::ChangeAction::Delete, &address)
        .await
        .unwrap();
    change(aws_sdk_route53::types::ChangeAction::Create, &former)
        .await
        .unwrap();
    let stderr = up_fails(&stack);
    assert!(
        stderr.contains("points at former's load balancer in us-east-1")
            && stderr.contains("run `destroy` with its stack.yaml first"),
        "{stderr}"
    );
    change(aws_sdk_route53::types::ChangeAction::Delete, &former)
        .await
        .unwrap();

    // A second public zone of the same name (Route53 allows it, and a zone recreated by
    // hand leaves one behind): which one the domain is delegated to is the user's to say.
    let twin = support::hosted_zone(&aws, &stack.zone).await;
    let stderr = up_fails(&stack);
    assert!(
        stderr.contains(&format!("2 public hosted zones named {}", stack.zone))
            && stderr.contains(twin.trim_start_matches("/hostedzone/")),
        "{stderr}"
    );
    assert!(
        tagged_ec2_resources(&aws, &name).await.is_empty(),
        "nothing was created"
    );
    route53
        .delete_hosted_zone()
        .id(&twin)
        .send()
        .await
        .expect("DeleteHostedZone");

    // No terminal to confirm on and no --yes: up refuses.
    let stderr = up_fails_with(&stack, &["up"]);
    assert!(stderr.contains("pass --yes"), "{stderr}");
    assert!(
        tagged_ec2_resources(&aws, &name).await.is_empty(),
        "nothing was created"
    );
}

/// A pinned engine version the spec's shape allows but ElastiCache does not offer (Redis
/// OSS ends at 7.1 there; 7.2 is Valkey's) is refused by preflight, which asks
/// ElastiCache, naming the versions it does offer: nothing is created.
#[tokio::test]
async fn an_engine_version_elasticache_lacks_is_refused_listing_what_it_offers() {
    let aws = support::localstack().await;
    let (stack, _) = TestStack::with_zone(&aws, "v").await;
    stack.edit(
        "redis:\n  replicas: 1\n",
        "redis:\n  replicas: 1\n  engine_version: \"7.2\"\n",
    );

    let stderr = up_refused(&stack);
    assert!(
        stderr.contains("ElastiCache offers no redis version 7.2 in us-east-1")
            && stderr.contains("7.0, 7.1")
            && stderr.contains("set redis.engine_version to one of those"),
        "{stderr}"
    );
    assert!(
        tagged_ec2_resources(&aws, &stack.name).await.is_empty(),
        "nothing was created"
    );
}

/// `up --local` on a machine without redis-server stops before doing anything: the error
/// names the missing program and the command that installs it, and LocalStack holds
/// nothing of the stack afterwards, not even the hosted zone `--local` would create.
#[tokio::test]
async fn up_local_without_redis_server_names_what_to_install_and_creates_nothing() {
    let aws = support::localstack().await;
    let suffix = support::unique_suffix();
    let name = format!("p{}", &suffix[suffix.len() - 8..]);
    let stack = TestStack::new(&name, &format!("{name}.example.test"));
    // Every program `--local` runs, except redis-server.
    let path = tempfile::tempdir().unwrap();
    for program in [
        "redis-cli",
        "openssl",
        "curl",
        "sha256sum",
        "sh",
        "bash",
        "python3",
        "cargo",
    ] {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap())
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
            .unwrap_or_else(|| panic!("{program} not found: run scripts/prerequisites.sh test"));
        std::os::unix::fs::symlink(found, path.path().join(program)).unwrap();
    }

    let output = stack
        .command(&["up", "--local", "--yes"])
        .env("PATH", path.path())
        .output()
        .expect("running up --local");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("needs redis-server which is not on PATH"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was created"), "{stderr}");
    assert!(
        stderr.contains("scripts/prerequisites.sh demo")
            && stderr.contains("apt-get install -y redis-server"),
        "says how to install it: {stderr}"
    );
    assert!(
        tagged_ec2_resources(&aws, &name).await.is_empty(),
        "nothing was created"
    );
    let zones = aws_sdk_route53::Client::new(&aws)
        .list_hosted_zones_by_name()
        .dns_name(&stack.zone)
        .send()
        .await
        .unwrap();
    assert!(
        zones
            .hosted_zones()
            .iter()
            .all(|zone| zone.name().trim_end_matches('.') != stack.zone),
        "no hosted zone was created"
    );
}

/// Every resource and property of shared/DESIGN.md, as AWS (LocalStack) reports it.
async fn verify_stack(aws: &SdkConfig, stack: &TestStack, zone_id: &str, outputs: &Value) {
    let ec2 = aws_sdk_ec2::Client::new(aws);
    let elbv2 = aws_sdk_elasticloadbalancingv2::Client::new(aws);
    let acm = aws_sdk_acm::Client::new(aws);
    let route53 = aws_sdk_route53::Client::new(aws);
    let name = &stack.name;

    // Network: one VPC with DNS on, two public and two private subnets over two zones.
    let vpcs = ec2
        .describe_vpcs()
        .filters(stack_filter(name))
        .send()
        .await
        .unwrap();
    assert_eq!(vpcs.vpcs().len(), 1, "one VPC");
    let vpc_id = vpcs.vpcs()[0].vpc_id().unwrap().to_owned();
    for attribute in [
        aws_sdk_ec2::types::VpcAttributeName::EnableDnsSupport,
        aws_sdk_ec2::types::VpcAttributeName::EnableDnsHostnames,
    ] {
        let described = ec2
            .describe_vpc_attribute()
            .vpc_id(&vpc_id)
            .attribute(attribute.clone())
            .send()
            .await
            .unwrap();
        let on = match attribute {
            aws_sdk_ec2::types::VpcAttributeName::EnableDnsSupport => {
                described.enable_dns_support()
            }
            _ => described.enable_dns_hostnames(),
        }
        .and_then(|value| value.value());
        assert_eq!(on, Some(true), "{attribute:?} is on");
    }
    let subnets = ec2
        .describe_subnets()
        .filters(stack_filter(name))
        .send()
        .await
        .unwrap();
    let subnets = subnets.subnets();
    assert_eq!(subnets.len(), 4, "four subnets");
    let role = |subnet: &aws_sdk_ec2::types::Subnet| {
        subnet
            .tags()
            .iter()
            .find(|tag| tag.key() == Some("realtime-stack:role"))
            .and_then(|tag| tag.value())
            .unwrap_or_default()
            .to_owned()
    };
    let public: Vec<_> = subnets
        .iter()
        .filter(|s| role(s).starts_with("public"))
        .collect();
    let private: Vec<_> = subnets
        .iter()
        .filter(|s| role(s).starts_with("private"))
        .collect();
    assert_eq!((public.len(), private.len()), (2, 2));
    for pair in [&public, &private] {
        assert_ne!(
            pair[0].availability_zone(),
            pair[1].availability_zone(),
            "spread over two zones"
        );
    }
    let private_ids: Vec<String> = private
        .iter()
        .map(|s| s.subnet_id().unwrap().to_owned())
        .collect();
    let public_ids: Vec<String> = public
        .iter()
        .map(|s| s.subnet_id().unwrap().to_owned())
        .collect();

    // Routes: the public subnets go to the internet gateway; the private ones have no
    // default route, only the S3 gateway endpoint.
    let tables = ec2
        .describe_route_tables()
        .filters(Filter::builder().name("vpc-id").values(&vpc_id).build())
        .send()
        .await
        .unwrap();
    let table_of = |subnet: &str| {
        tables
            .route_tables()
            .iter()
            .find(|table| {
                table
                    .associations()
                    .iter()
                    .any(|a| a.subnet_id() == Some(subnet))
            })
            .unwrap_or_else(|| panic!("subnet {subnet} has its own route table"))
            .clone()
    };
    for subnet in &public_ids {
        let table = table_of(subnet);
        assert!(
            table
                .routes()
                .iter()
                .any(|r| r.destination_cidr_block() == Some("0.0.0.0/0")
                    && r.gateway_id().is_some_and(|g| g.starts_with("igw-"))),
            "public subnet {subnet} routes to the internet gateway"
        );
    }
    let private_table = table_of(&private_ids[0]);
    assert_eq!(
        table_of(&private_ids[1]).route_table_id(),
        private_table.route_table_id()
    );
    assert!(
        !private_table
            .routes()
            .iter()
            .any(|r| r.destination_cidr_block() == Some("0.0.0.0/0")),
        "private subnets have no way out but the S3 endpoint"
    );
    let endpoints = ec2
        .describe_vpc_endpoints()
        .filters(Filter::builder().name("vpc-id").values(&vpc_id).build())
        .send()
        .await
        .unwrap();
    let s3_endpoint = endpoints
        .vpc_endpoints()
        .iter()
        .find(|e| e.service_name().is_some_and(|s| s.ends_with(".s3")))
        .expect("an S3 gateway endpoint");
    assert!(
        s3_endpoint
            .route_table_ids()
            .iter()
            .any(|id| Some(id.as_str()) == private_table.route_table_id()),
        "the S3 endpoint is on the private route table"
    );
    // The endpoint admits only the stack's bucket and the Amazon Linux repositories; the
    // bucket admits GetObject only through that endpoint, and nothing without TLS.
    let artifact = outputs["artifact"].as_str().expect("artifact");
    let (bucket, _) = artifact
        .strip_prefix("s3://")
        .and_then(|rest| rest.split_once('/'))
        .expect("s3://bucket/key");
    let endpoint_policy: Value =
        serde_json::from_str(s3_endpoint.policy_document().expect("endpoint policy")).unwrap();
    let resources: Vec<&str> = endpoint_policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|statement| {
            assert_eq!(statement["Effect"], "Allow");
            assert_eq!(statement["Action"], "s3:GetObject");
            statement["Resource"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        resources,
        [
            format!("arn:aws:s3:::{bucket}/*"),
            "arn:aws:s3:::al2023-repos-us-east-1-de612dc2/*".to_owned()
        ]
    );
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(aws)
            .force_path_style(true)
            .build(),
    );
    let policy: Value = serde_json::from_str(
        &s3.get_bucket_policy()
            .bucket(bucket)
            .send()
            .await
            .expect("GetBucketPolicy")
            .policy
            .expect("a bucket policy"),
    )
    .unwrap();
    let statements = policy["Statement"].as_array().unwrap();
    assert_eq!(statements.len(), 2, "{policy}");
    let allow = &statements[0];
    assert_eq!(
        (&allow["Effect"], &allow["Principal"], &allow["Action"]),
        (&json!("Allow"), &json!("*"), &json!("s3:GetObject"))
    );
    assert_eq!(
        allow["Resource"],
        format!("arn:aws:s3:::{bucket}/chat-server/*")
    );
    assert_eq!(
        allow["Condition"],
        json!({"StringEquals": {"aws:SourceVpce": s3_endpoint.vpc_endpoint_id().unwrap()}})
    );
    let tls_only = &statements[1];
    assert_eq!(
        (&tls_only["Effect"], &tls_only["Action"]),
        (&json!("Deny"), &json!("s3:*"))
    );
    assert_eq!(
        tls_only["Condition"],
        json!({"Bool": {"aws:SecureTransport": "false"}})
    );
    let public_access = s3
        .get_public_access_block()
        .bucket(bucket)
        .send()
        .await
        .expect("GetPublicAccessBlock")
        .public_access_block_configuration
        .expect("public access block");
    assert_eq!(public_access.block_public_policy(), Some(true));
    assert_eq!(public_access.restrict_public_buckets(), Some(true));

    // Security groups: 80/443 from the allowed CIDRs to the load balancer only, the app
    // port only from the load balancer's group, Redis only from the instances' group,
    // and port 22 nowhere.
    let groups = ec2
        .describe_security_groups()
        .filters(stack_filter(name))
        .send()
        .await
        .unwrap();
    let group = |role: &str| {
        groups
            .security_groups()
            .iter()
            .find(|g| {
                g.tags()
                    .iter()
                    .any(|t| t.key() == Some("realtime-stack:role") && t.value() == Some(role))
            })
            .unwrap_or_else(|| panic!("security group {role}"))
            .clone()
    };
    let (alb, instances, redis) = (group("alb-sg"), group("instances-sg"), group("redis-sg"));
    let ports = |g: &aws_sdk_ec2::types::SecurityGroup| {
        let mut ports: Vec<i32> = g
            .ip_permissions()
            .iter()
            .filter_map(|p| p.from_port())
            .collect();
        ports.sort();
        ports
    };
    assert_eq!(ports(&alb), [80, 443]);
    assert!(alb.ip_permissions().iter().all(|p| {
        p.ip_ranges()
            .iter()
            .any(|r| r.cidr_ip() == Some("0.0.0.0/0"))
    }));
    assert_eq!(ports(&instances), [8080]);
    assert_eq!(
        instances.ip_permissions()[0].user_id_group_pairs()[0].group_id(),
        alb.group_id()
    );
    assert!(
        instances.ip_permissions()[0].ip_ranges().is_empty(),
        "the app port is not open to any CIDR"
    );
    assert_eq!(ports(&redis), [6379]);
    assert_eq!(
        redis.ip_permissions()[0].user_id_group_pairs()[0].group_id(),
        instances.group_id()
    );
    assert!(
        redis.ip_permissions()[0].ip_ranges().is_empty(),
        "Redis is not open to any CIDR"
    );
    // Egress: the load balancer reaches only the app port in the private subnets, the
    // instances only Redis there and S3 (its prefix list) over HTTPS, Redis nothing.
    let egress = |group: &aws_sdk_ec2::types::SecurityGroup| {
        let mut rules: Vec<String> = group
            .ip_permissions_egress()
            .iter()
            .flat_map(|p| {
                let ports = format!(
                    "{} {}-{}",
                    p.ip_protocol().unwrap_or_default(),
                    p.from_port().unwrap_or(-1),
                    p.to_port().unwrap_or(-1)
                );
                p.ip_ranges()
                    .iter()
                    .map(|r| r.cidr_ip().unwrap_or_default().to_owned())
                    .chain(
                        p.prefix_list_ids()
                            .iter()
                            .map(|l| l.prefix_list_id().unwrap_or_default().to_owned()),
                    )
                    .chain(
                        p.user_id_group_pairs()
                            .iter()
                            .map(|g| g.group_id().unwrap_or_default().to_owned()),
                    )
                    .map(move |peer| format!("{ports} {peer}"))
                    .collect::<Vec<_>>()
            })
            .collect();
        rules.sort();
        rules
    };
    let s3_list = ec2
        .describe_prefix_lists()
        .filters(
            Filter::builder()
                .name("prefix-list-name")
                .values("com.amazonaws.us-east-1.s3")
                .build(),
        )
        .send()
        .await
        .unwrap()
        .prefix_lists()[0]
        .prefix_list_id()
        .unwrap()
        .to_owned();
    assert_eq!(
        egress(&alb),
        [
            "tcp 8080-8080 10.20.128.0/18",
            "tcp 8080-8080 10.20.192.0/18"
        ]
    );
    assert_eq!(
        egress(&instances),
        [
            "tcp 443-443 ".to_owned() + &s3_list,
            "tcp 6379-6379 10.20.128.0/18".to_owned(),
            "tcp 6379-6379 10.20.192.0/18".to_owned(),
        ]
    );
    assert_eq!(egress(&redis), Vec::<String>::new());
    // The VPC's default group, which AWS makes allowing all, allows nothing (CIS AWS
    // Foundations 5.4).
    let default = support::default_security_group(&ec2, &vpc_id).await;
    assert!(
        default.ip_permissions().is_empty() && default.ip_permissions_egress().is_empty(),
        "the default security group keeps rules: {default:?}"
    );
    for g in groups.security_groups() {
        // Protocol -1 (all traffic) has no ports and lets SSH in too.
        assert!(
            !g.ip_permissions()
                .iter()
                .any(|p| p.ip_protocol() == Some("-1")
                    || (p.from_port().unwrap_or(-1) <= 22 && p.to_port().unwrap_or(-1) >= 22)),
            "no SSH in {:?}",
            g.group_name()
        );
    }

    // Redis: encrypted, replicated, with failover, in the stack's subnet group.
    let replication_group = replication_group(aws, name).await;
    assert_eq!(replication_group.transit_encryption_enabled(), Some(true));
    assert_eq!(replication_group.at_rest_encryption_enabled(), Some(true));
    assert_eq!(
        replication_group.snapshot_retention_limit(),
        Some(7),
        "a week of automatic backups"
    );
    assert_eq!(
        replication_group.member_clusters().len(),
        2,
        "a primary and one replica"
    );
    let primary = replication_group.node_groups()[0]
        .primary_endpoint()
        .expect("primary endpoint");
    let redis_endpoint = format!("{}:{}", primary.address().unwrap(), primary.port().unwrap());
    assert_eq!(outputs["redis_endpoint"], redis_endpoint);

    // Instances: in the private subnets, IMDSv2 only, metadata tags on, no public
    // address, no key pair, and the Redis endpoint in their tags.
    let described = ec2
        .describe_instances()
        .filters(stack_filter(name))
        .filters(
            Filter::builder()
                .name("instance-state-name")
                .values("running")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let running: Vec<_> = described
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .collect();
    assert_eq!(running.len(), 2, "two running instances");
    let mut instance_ids: Vec<String> = running
        .iter()
        .map(|i| i.instance_id().unwrap().to_owned())
        .collect();
    instance_ids.sort();
    let mut reported: Vec<String> = outputs["instance_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    reported.sort();
    assert_eq!(instance_ids, reported);
    for instance in &running {
        assert!(
            private_ids
                .iter()
                .any(|id| Some(id.as_str()) == instance.subnet_id()),
            "instance in a private subnet"
        );
        let metadata = instance.metadata_options().expect("metadata options");
        assert_eq!(
            metadata.http_tokens().map(|t| t.as_str()),
            Some("required"),
            "IMDSv2 required"
        );
        assert_eq!(
            metadata.instance_metadata_tags().map(|t| t.as_str()),
            Some("enabled"),
            "metadata tags on"
        );
        assert!(instance.key_name().is_none(), "no key pair");
        assert!(instance.public_ip_address().is_none(), "no public address");
        assert_eq!(
            redis_endpoint_tag(instance),
            Some(redis_endpoint.as_str()),
            "Redis endpoint tag"
        );
    }

    // Load balancer: internet-facing in the public subnets, long idle timeout, invalid
    // headers dropped; HTTPS with the issued certificate and a TLS 1.3 policy; HTTP
    // redirecting to HTTPS; targets on /healthz with the drain-matched delay.
    let load_balancers = elbv2
        .describe_load_balancers()
        .names(format!("{name}-alb"))
        .send()
        .await
        .unwrap();
    let load_balancer = &load_balancers.load_balancers()[0];
    assert_eq!(
        outputs["load_balancer_dns_name"],
        load_balancer.dns_name().unwrap()
    );
    assert_eq!(
        load_balancer.scheme().map(|s| s.as_str()),
        Some("internet-facing")
    );
    let mut lb_subnets: Vec<String> = load_balancer
        .availability_zones()
        .iter()
        .filter_map(|z| z.subnet_id().map(str::to_owned))
        .collect();
    lb_subnets.sort();
    let mut expected_public = public_ids.clone();
    expected_public.sort();
    assert_eq!(lb_subnets, expected_public);
    let lb_arn = load_balancer.load_balancer_arn().unwrap();
    let attributes = elbv2
        .describe_load_balancer_attributes()
        .load_balancer_arn(lb_arn)
        .send()
        .await
        .unwrap();
    let attribute = |key: &str| {
        attributes
            .attributes()
            .iter()
            .find(|a| a.key() == Some(key))
            .and_then(|a| a.value())
            .map(str::to_owned)
    };
    // WebSockets kept open, bad headers dropped, deleted only by `destroy`, and the chat
    // server's reading of X-Forwarded-For holding.
    for (key, value) in [
        ("idle_timeout.timeout_seconds", "3600"),
        ("routing.http.drop_invalid_header_fields.enabled", "true"),
        ("deletion_protection.enabled", "true"),
        ("routing.http.desync_mitigation_mode", "defensive"),
        ("routing.http.xff_header_processing.mode", "append"),
    ] {
        assert_eq!(attribute(key).as_deref(), Some(value), "{key}");
    }
    // Access logs go to the stack's own bucket, which only ELB's log delivery writes
    // into, encrypted, private, and which forgets them after 90 days.
    let logs_bucket = format!("{name}-alb-logs-000000000000-us-east-1");
    assert_eq!(attribute("access_logs.s3.enabled").as_deref(), Some("true"));
    assert_eq!(
        attribute("access_logs.s3.bucket").as_deref(),
        Some(logs_bucket.as_str())
    );
    let logs_policy: Value = serde_json::from_str(
        &s3.get_bucket_policy()
            .bucket(&logs_bucket)
            .send()
            .await
            .expect("the logs bucket's policy")
            .policy
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        logs_policy["Statement"][0]["Principal"],
        json!({"AWS": "arn:aws:iam::127311923021:root"}),
        "us-east-1's Elastic Load Balancing account delivers the logs"
    );
    assert_eq!(
        logs_policy["Statement"][0]["Resource"],
        format!("arn:aws:s3:::{logs_bucket}/AWSLogs/000000000000/*")
    );
    let lifecycle = s3
        .get_bucket_lifecycle_configuration()
        .bucket(&logs_bucket)
        .send()
        .await
        .expect("the logs bucket's lifecycle");
    assert_eq!(
        lifecycle.rules()[0]
            .expiration()
            .and_then(|expiration| expiration.days()),
        Some(90)
    );
    let encryption = s3
        .get_bucket_encryption()
        .bucket(&logs_bucket)
        .send()
        .await
        .expect("the logs bucket's encryption");
    assert!(encryption.server_side_encryption_configuration.is_some());
    let listeners = elbv2
        .describe_listeners()
        .load_balancer_arn(lb_arn)
        .send()
        .await
        .unwrap();
    let listener = |port: i32| {
        listeners
            .listeners()
            .iter()
            .find(|l| l.port() == Some(port))
            .unwrap_or_else(|| panic!("listener {port}"))
            .clone()
    };
    let https = listener(443);
    assert_eq!(https.protocol(), Some(&ProtocolEnum::Https));
    assert_eq!(
        https.ssl_policy(),
        Some("ELBSecurityPolicy-TLS13-1-2-Res-PQ-2025-09"),
        "the default policy: TLS 1.3, restricted TLS 1.2"
    );
    // /metrics is answered 404 by the load balancer itself, before any instance.
    let metrics = support::metrics_rule(&elbv2, https.listener_arn().unwrap()).await;
    let paths: Vec<&str> = metrics
        .conditions()
        .iter()
        .flat_map(|condition| {
            condition
                .path_pattern_config()
                .map(|config| config.values())
                .filter(|values| !values.is_empty())
                .unwrap_or(condition.values())
        })
        .map(String::as_str)
        .collect();
    assert_eq!(paths, ["/metrics", "/metrics/*"]);
    assert_eq!(
        metrics.actions()[0]
            .fixed_response_config()
            .and_then(|config| config.status_code()),
        Some("404")
    );
    let certificate_arn = https.certificates()[0]
        .certificate_arn()
        .unwrap()
        .to_owned();
    assert_eq!(outputs["certificate_arn"], certificate_arn.as_str());
    let http = listener(80);
    let redirect = http.default_actions()[0]
        .redirect_config()
        .expect("port 80 redirects");
    assert_eq!(
        http.default_actions()[0].r#type(),
        Some(&ActionTypeEnum::Redirect)
    );
    assert_eq!(redirect.protocol(), Some("HTTPS"));
    assert_eq!(redirect.port(), Some("443"));
    assert_eq!(redirect.status_code().map(|s| s.as_str()), Some("HTTP_301"));
    let target_groups = elbv2
        .describe_target_groups()
        .names(format!("{name}-tg"))
        .send()
        .await
        .unwrap();
    let target_group = &target_groups.target_groups()[0];
    assert_eq!(target_group.health_check_path(), Some("/healthz"));
    assert_eq!(target_group.port(), Some(8080));
    assert_eq!(
        https.default_actions()[0].target_group_arn(),
        target_group.target_group_arn()
    );
    let tg_attributes = elbv2
        .describe_target_group_attributes()
        .target_group_arn(target_group.target_group_arn().unwrap())
        .send()
        .await
        .unwrap();
    let delay = tg_attributes
        .attributes()
        .iter()
        .find(|a| a.key() == Some("deregistration_delay.timeout_seconds"))
        .and_then(|a| a.value());
    assert_eq!(
        delay,
        Some("10"),
        "deregistration delay: the server's drain (5 s here) and the 5 s it takes to start"
    );
    let health = elbv2
        .describe_target_health()
        .target_group_arn(target_group.target_group_arn().unwrap())
        .send()
        .await
        .unwrap();
    let mut targets: Vec<String> = health
        .target_health_descriptions()
        .iter()
        .filter_map(|d| d.target()?.id().map(str::to_owned))
        .collect();
    targets.sort();
    assert_eq!(targets, instance_ids, "every instance is a target");

    // Certificate: issued, for the domain, validated by the CNAME in the zone.
    let certificate = acm
        .describe_certificate()
        .certificate_arn(&certificate_arn)
        .send()
        .await
        .unwrap()
        .certificate
        .unwrap();
    assert_eq!(certificate.status().map(|s| s.as_str()), Some("ISSUED"));
    assert_eq!(certificate.domain_name(), Some(stack.domain().as_str()));
    let validation = certificate.domain_validation_options()[0]
        .resource_record()
        .expect("validation record");
    let records = route53
        .list_resource_record_sets()
        .hosted_zone_id(zone_id)
        .send()
        .await
        .unwrap();
    let record = |record_name: &str, kind: &str| {
        records
            .resource_record_sets()
            .iter()
            .find(|r| {
                r.name().trim_end_matches('.') == record_name.trim_end_matches('.')
                    && r.r#type().as_str() == kind
            })
            .cloned()
    };
    let cname = record(validation.name(), "CNAME").expect("validation CNAME in the zone");
    assert_eq!(
        cname.resource_records()[0].value().trim_end_matches('.'),
        validation.value().trim_end_matches('.')
    );

    // DNS: the domain is an alias of the load balancer.
    let alias = record(&stack.domain(), "A").expect("alias record for the domain");
    let target = alias.alias_target().expect("an alias");
    assert_eq!(
        target.dns_name().trim_end_matches('.').to_lowercase(),
        load_balancer
            .dns_name()
            .unwrap()
            .trim_end_matches('.')
            .to_lowercase()
    );
}

/// A describe of something deleted fails with AWS's "not found" code for it, not with
/// just any error (a throttled or refused call proves nothing).
fn gone<T: std::fmt::Debug, E>(
    described: Result<
        T,
        aws_smithy_runtime_api::client::result::SdkError<E, aws_smithy_runtime_api::http::Response>,
    >,
    not_found: &str,
) where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::fmt::Debug,
{
    match described {
        Err(err) => assert_eq!(
            err.as_service_error().and_then(|e| e.code()),
            Some(not_found),
            "{err:?}"
        ),
        Ok(found) => panic!("still there ({not_found} expected): {found:?}"),
    }
}

async fn verify_nothing_left(aws: &SdkConfig, stack: &TestStack, zone_id: &str) {
    let name = &stack.name;
    let left = tagged_ec2_resources(aws, name).await;
    let live_instances: Vec<String> = {
        let described = aws_sdk_ec2::Client::new(aws)
            .describe_instances()
            .filters(stack_filter(name))
            .filters(
                Filter::builder()
                    .name("instance-state-name")
                    .values("pending")
                    .values("running")
                    .values("stopped")
                    .build(),
            )
            .send()
            .await
            .unwrap();
        described
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect()
    };
    assert!(
        live_instances.is_empty(),
        "instances left: {live_instances:?}"
    );
    assert!(left.is_empty(), "tagged EC2 resources left: {left:?}");
    let groups = aws_sdk_autoscaling::Client::new(aws)
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(format!("{name}-instances"))
        .send()
        .await
        .unwrap();
    assert!(
        groups.auto_scaling_groups().is_empty(),
        "the Auto Scaling group is left"
    );
    let templates = aws_sdk_ec2::Client::new(aws)
        .describe_launch_templates()
        .filters(stack_filter(name))
        .send()
        .await
        .unwrap();
    assert!(
        templates.launch_templates().is_empty(),
        "the launch template is left"
    );

    let elbv2 = aws_sdk_elasticloadbalancingv2::Client::new(aws);
    gone(
        elbv2
            .describe_load_balancers()
            .names(format!("{name}-alb"))
            .send()
            .await,
        "LoadBalancerNotFound",
    );
    gone(
        elbv2
            .describe_target_groups()
            .names(format!("{name}-tg"))
            .send()
            .await,
        "TargetGroupNotFound",
    );
    let elasticache = aws_sdk_elasticache::Client::new(aws);
    gone(
        elasticache
            .describe_replication_groups()
            .replication_group_id(format!("{name}-redis"))
            .send()
            .await,
        "ReplicationGroupNotFoundFault",
    );
    gone(
        elasticache
            .describe_cache_subnet_groups()
            .cache_subnet_group_name(format!("{name}-cache"))
            .send()
            .await,
        "CacheSubnetGroupNotFoundFault",
    );
    let certificates = aws_sdk_acm::Client::new(aws)
        .list_certificates()
        .send()
        .await
        .unwrap();
    assert!(
        !certificates
            .certificate_summary_list()
            .iter()
            .any(|c| c.domain_name() == Some(stack.domain().as_str())),
        "certificate left"
    );
    let buckets = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(aws)
            .force_path_style(true)
            .build(),
    )
    .list_buckets()
    .send()
    .await
    .unwrap();
    assert!(
        !buckets.buckets().iter().any(|b| b
            .name()
            .is_some_and(|n| n.starts_with(&format!("{name}-artifacts-"))
                || n.starts_with(&format!("{name}-alb-logs-")))),
        "bucket left"
    );
    let records = aws_sdk_route53::Client::new(aws)
        .list_resource_record_sets()
        .hosted_zone_id(zone_id)
        .send()
        .await
        .unwrap();
    let kinds: Vec<String> = records
        .resource_record_sets()
        .iter()
        .map(|r| r.r#type().as_str().to_owned())
        .collect();
    assert!(
        kinds.iter().all(|kind| kind == "SOA" || kind == "NS"),
        "only the zone's own SOA and NS records remain: {kinds:?}"
    );
}
