//! The operator's commands against LocalStack: `status` shows every resource and each
//! instance as the load balancer sees it, `logs` its console, and `policy` is exactly
//! the IAM policy the CLI needs - every AWS operation a whole lifecycle sends (`up`, a
//! second `up` repairing drift by hand, a scale-down, a tag added to every resource,
//! `plan`, `status`, `logs`, `destroy`), recorded by the CLI's own SDK interceptor, is
//! granted, and nothing else.

mod support;

use std::collections::BTreeSet;

use aws_config::SdkConfig;
use aws_sdk_ec2::types::{Filter, IpPermission, IpRange};
use aws_sdk_elasticloadbalancingv2::types::{
    ActionTypeEnum, FixedResponseActionConfig, LoadBalancerAttribute, TargetGroupAttribute,
};
use realtime_stack::artifact::sha256_hex;
use realtime_stack::policy::{granted, iam_action, matches};
use serde_json::Value;
use support::TestStack;

/// Actions the policy grants that no SDK call names: AWS checks them on the deployer's
/// behalf inside another call.
const CHECKED_INSIDE_OTHER_CALLS: [(&str, &str); 2] = [
    // https://docs.aws.amazon.com/elasticloadbalancing/latest/application/elb-service-linked-roles.html
    // https://docs.aws.amazon.com/AmazonElastiCache/latest/dg/using-service-linked-roles.html
    // https://docs.aws.amazon.com/autoscaling/ec2/userguide/autoscaling-service-linked-role.html
    (
        "iam:CreateServiceLinkedRole",
        "the first load balancer, Redis or Auto Scaling group of an account creates the service's role",
    ),
    // https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-launch-template-permissions.html
    (
        "ec2:RunInstances",
        "CreateAutoScalingGroup/UpdateAutoScalingGroup with a launch template: the caller must be allowed to launch from it",
    ),
];

/// Calls `up` makes on AWS in situations this test cannot bring about on LocalStack:
/// repairs of drift LocalStack cannot show, and waits it never needs.
const NOT_CALLED_ON_LOCALSTACK: [(&str, &str); 10] = [
    (
        "elasticache:TestFailover",
        "`drill redis` on AWS: the tests run it with --local, where the local replica is promoted",
    ),
    (
        "elasticloadbalancing:DeregisterTargets",
        "retiring instances launched before the Auto Scaling group: the tests' stacks have none",
    ),
    (
        "autoscaling:AttachLoadBalancerTargetGroups",
        "the target group detached from the group by hand: moto cannot detach it",
    ),
    (
        "elasticache:DescribeEvents",
        "why Redis creation failed: LocalStack's never fails",
    ),
    (
        "route53:GetChange",
        "waiting for a DNS change: LocalStack's changes are INSYNC at once",
    ),
    (
        "ec2:ReplaceRoute",
        "a default route pointing at another gateway: a VPC has only one internet gateway",
    ),
    (
        "ec2:ReplaceRouteTableAssociation",
        "a subnet moved to another route table",
    ),
    (
        "elasticloadbalancing:SetSubnets",
        "the load balancer moved off a public subnet: an ALB needs two subnets in two zones, the stack has exactly those",
    ),
    (
        "elasticache:ModifyCacheSubnetGroup",
        "Redis moved to other subnets: LocalStack's ElastiCache does not implement it",
    ),
    (
        "elasticache:ModifyReplicationGroupShardConfiguration",
        "a cluster resharded: this lifecycle's Redis has one shard (up_destroy's three-shard test reshards)",
    ),
];

/// What someone does by hand that `up` undoes: SSH open to the world.
async fn open_ssh(ec2: &aws_sdk_ec2::Client, group: &str) {
    ec2.authorize_security_group_ingress()
        .group_id(group)
        .ip_permissions(
            IpPermission::builder()
                .ip_protocol("tcp")
                .from_port(22)
                .to_port(22)
                .ip_ranges(IpRange::builder().cidr_ip("0.0.0.0/0").build())
                .build(),
        )
        .send()
        .await
        .unwrap();
}

fn tag_filter(key: &str, value: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{key}"))
        .values(value)
        .build()
}

/// Filters that find the stack's EC2 resource of `role`.
fn role_filters(stack: &TestStack, role: &str) -> Vec<Filter> {
    vec![
        tag_filter("realtime-stack:stack", &stack.name),
        tag_filter("realtime-stack:role", role),
    ]
}

/// Changes by hand what `up` owns, each of which the next `up` must set back.
async fn drift(aws: &SdkConfig, stack: &TestStack, instances: &[String]) {
    let ec2 = aws_sdk_ec2::Client::new(aws);
    let elbv2 = aws_sdk_elasticloadbalancingv2::Client::new(aws);

    // SSH opened to the world on the instances.
    let groups = ec2
        .describe_security_groups()
        .set_filters(Some(role_filters(stack, "instances-sg")))
        .send()
        .await
        .unwrap();
    let instances_sg = groups.security_groups()[0].group_id().unwrap().to_owned();
    open_ssh(&ec2, &instances_sg).await;
    // ...and everything let out again.
    ec2.authorize_security_group_egress()
        .group_id(&instances_sg)
        .ip_permissions(
            IpPermission::builder()
                .ip_protocol("tcp")
                .from_port(0)
                .to_port(65535)
                .ip_ranges(IpRange::builder().cidr_ip("0.0.0.0/0").build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    // The private subnets given a way out to the internet.
    let tables = |role: &'static str| {
        let ec2 = ec2.clone();
        async move {
            ec2.describe_route_tables()
                .set_filters(Some(role_filters(stack, role)))
                .send()
                .await
                .unwrap()
                .route_tables()[0]
                .clone()
        }
    };
    let public = tables("public-rt").await;
    let private = tables("private-rt").await;
    let igw = public
        .routes()
        .iter()
        .find_map(|route| route.gateway_id().filter(|id| id.starts_with("igw-")))
        .unwrap()
        .to_owned();
    ec2.create_route()
        .route_table_id(private.route_table_id().unwrap())
        .destination_cidr_block("0.0.0.0/0")
        .gateway_id(igw)
        .send()
        .await
        .unwrap();
    // The S3 endpoint opened to every bucket.
    let endpoints = ec2
        .describe_vpc_endpoints()
        .filters(tag_filter("realtime-stack:stack", &stack.name))
        .send()
        .await
        .unwrap();
    ec2.modify_vpc_endpoint()
        .vpc_endpoint_id(endpoints.vpc_endpoints()[0].vpc_endpoint_id().unwrap())
        .policy_document(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*"}]}"#,
        )
        .send()
        .await
        .unwrap();
    // The artifact bucket's public access block and default encryption removed.
    let account = aws_sdk_sts::Client::new(aws)
        .get_caller_identity()
        .send()
        .await
        .unwrap()
        .account
        .unwrap();
    let s3 = aws_sdk_s3::Client::new(aws);
    let bucket = format!("{}-artifacts-{account}-us-east-1", stack.name);
    s3.delete_public_access_block()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    s3.delete_bucket_encryption()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    // DNS hostnames turned off in the VPC.
    ec2.modify_vpc_attribute()
        .vpc_id(public.vpc_id().unwrap())
        .enable_dns_hostnames(
            aws_sdk_ec2::types::AttributeBooleanValue::builder()
                .value(false)
                .build(),
        )
        .send()
        .await
        .unwrap();
    // IMDSv1 allowed again, on every instance: the same `up` scales in, and the group may
    // terminate one before `up` checks the instances' metadata options (seen in CI), so
    // the one it keeps must have drifted too.
    for instance in instances {
        ec2.modify_instance_metadata_options()
            .instance_id(instance)
            .http_tokens(aws_sdk_ec2::types::HttpTokensState::Optional)
            // LocalStack (moto) fails without every field.
            .http_put_response_hop_limit(2)
            .http_endpoint(aws_sdk_ec2::types::InstanceMetadataEndpointState::Enabled)
            .instance_metadata_tags(aws_sdk_ec2::types::InstanceMetadataTagsState::Enabled)
            .send()
            .await
            .unwrap();
    }

    // The load balancer: a shorter idle timeout, the default security group, the HTTP
    // listener answering instead of redirecting, another health check, no drain.
    let lb = elbv2
        .describe_load_balancers()
        .names(format!("{}-alb", stack.name))
        .send()
        .await
        .unwrap()
        .load_balancers()[0]
        .clone();
    let lb_arn = lb.load_balancer_arn().unwrap();
    elbv2
        .modify_load_balancer_attributes()
        .load_balancer_arn(lb_arn)
        .attributes(
            LoadBalancerAttribute::builder()
                .key("idle_timeout.timeout_seconds")
                .value("60")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let default_sg = support::default_security_group(&ec2, lb.vpc_id().unwrap())
        .await
        .group_id()
        .unwrap()
        .to_owned();
    // Someone opens SSH in the VPC's default group, which `up` keeps closed.
    open_ssh(&ec2, &default_sg).await;
    elbv2
        .set_security_groups()
        .load_balancer_arn(lb_arn)
        .security_groups(default_sg)
        .send()
        .await
        .unwrap();
    let listeners = elbv2
        .describe_listeners()
        .load_balancer_arn(lb_arn)
        .send()
        .await
        .unwrap();
    let http = listeners
        .listeners()
        .iter()
        .find(|listener| listener.port() == Some(80))
        .unwrap();
    elbv2
        .modify_listener()
        .listener_arn(http.listener_arn().unwrap())
        .default_actions(fixed_response("200", "not chat"))
        .send()
        .await
        .unwrap();
    // /metrics answered by someone else than the load balancer's 404.
    let https = listeners
        .listeners()
        .iter()
        .find(|listener| listener.port() == Some(443))
        .unwrap();
    let metrics = support::metrics_rule(&elbv2, https.listener_arn().unwrap()).await;
    elbv2
        .modify_rule()
        .rule_arn(metrics.rule_arn().unwrap())
        .actions(fixed_response("200", "metrics for everyone"))
        .send()
        .await
        .unwrap();
    let target_group = elbv2
        .describe_target_groups()
        .names(format!("{}-tg", stack.name))
        .send()
        .await
        .unwrap()
        .target_groups()[0]
        .target_group_arn()
        .unwrap()
        .to_owned();
    elbv2
        .modify_target_group()
        .target_group_arn(&target_group)
        .health_check_path("/")
        .send()
        .await
        .unwrap();
    elbv2
        .modify_target_group_attributes()
        .target_group_arn(&target_group)
        .attributes(
            TargetGroupAttribute::builder()
                .key("deregistration_delay.timeout_seconds")
                .value("0")
                .build(),
        )
        .send()
        .await
        .unwrap();
}

fn fixed_response(status: &str, body: &str) -> aws_sdk_elasticloadbalancingv2::types::Action {
    aws_sdk_elasticloadbalancingv2::types::Action::builder()
        .r#type(ActionTypeEnum::FixedResponse)
        .fixed_response_config(
            FixedResponseActionConfig::builder()
                .status_code(status)
                .content_type("text/plain")
                .message_body(body)
                .build(),
        )
        .build()
}

/// `status` and `logs` on a stack that is up, and on an instance that is not one of it.
fn status_and_logs(stack: &TestStack, outputs: &Value) {
    let status: Value = serde_json::from_slice(&stack.run(&["status", "--output", "json"]).stdout)
        .expect("status prints JSON");
    assert_eq!(status["url"], outputs["url"]);
    assert_eq!(
        status["load_balancer"]["dns_name"],
        outputs["load_balancer_dns_name"]
    );
    assert_eq!(status["load_balancer"]["state"], "active");
    assert_eq!(status["redis"]["status"], "available");
    assert_eq!(status["redis"]["endpoint"], outputs["redis_endpoint"]);
    let binary = sha256_hex(std::fs::read(support::chat_server_binary()).unwrap());
    let mut ids = Vec::new();
    for instance in status["instances"].as_array().expect("instances") {
        assert_eq!(instance["state"], "running", "{instance}");
        assert_eq!(instance["healthy"], true, "{instance}");
        assert_eq!(instance["binary_sha256"], binary.as_str());
        assert!(
            instance["zone"]
                .as_str()
                .is_some_and(|z| z.starts_with("us-east-1"))
        );
        assert!(instance["launch_time"].as_str().is_some());
        ids.push(instance["id"].as_str().unwrap().to_owned());
    }
    ids.sort();
    assert_eq!(ids, support::instance_ids(outputs));
    let resources = status["resources"].as_array().expect("resources");
    for kind in [
        "vpc ",
        "load balancer ",
        "redis ",
        "certificate ",
        "bucket ",
    ] {
        assert!(
            resources
                .iter()
                .any(|r| r.as_str().is_some_and(|r| r.starts_with(kind))),
            "{kind}in {resources:#?}"
        );
    }
    let text = String::from_utf8(stack.run(&["status"]).stdout).unwrap();
    assert!(
        text.contains(&format!("{} healthy of {}", ids.len(), ids.len())),
        "{text}"
    );

    stack.run(&["logs", "--instance", &ids[0]]);
    let all = String::from_utf8(stack.run(&["logs"]).stdout).unwrap();
    assert!(
        all.lines()
            .all(|line| ids.iter().any(|id| line.starts_with(&format!("{id} | ")))),
        "every line says its instance:\n{all}"
    );
    let output = stack
        .command(&["logs", "--instance", "i-0123456789abcdef0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("i-0123456789abcdef0 is not a live instance") && stderr.contains(&ids[0]),
        "{stderr}"
    );
}

#[tokio::test]
async fn status_logs_and_a_policy_that_grants_exactly_what_the_cli_calls() {
    let aws = support::localstack().await;
    let (mut stack, _) = TestStack::with_zone(&aws, "o").await;
    let calls = stack.dir.path().join("aws-calls.log");
    stack.call_log = Some(calls.clone());

    let outputs = stack.up();
    status_and_logs(&stack, &outputs);

    drift(&aws, &stack, &support::instance_ids(&outputs)).await;
    let plan = stack.command(&["plan"]).output().unwrap();
    assert_eq!(plan.status.code(), Some(2), "plan sees the drift");
    // A new build rolls through the group while the count goes down.
    stack.rebuild();
    stack.edit("  count: 2\n", "  count: 1\n");
    let repaired = stack.up();
    assert_eq!(support::instance_ids(&repaired).len(), 1);
    let after = stack.command(&["plan"]).output().unwrap();
    assert_eq!(
        after.status.code(),
        Some(0),
        "up repaired every drift:\n{}",
        String::from_utf8_lossy(&after.stdout)
    );
    // A scaling policy, a larger Redis with a replica more and a tag more on every
    // resource; then the policy and the replica go.
    let scaling = "scaling:\n  min: 1\n  max: 2\n";
    stack.edit("redis:\n", &format!("{scaling}redis:\n"));
    stack.edit("  team: tests\n", "  team: tests\n  owner: ops\n");
    stack.edit(
        "  replicas: 1\n",
        "  replicas: 2\n  node_type: cache.t4g.small\n",
    );
    stack.up();
    stack.edit(scaling, "");
    stack.edit("  replicas: 2\n", "  replicas: 1\n");
    stack.up();
    stack.run(&["destroy", "--yes"]);

    let log = std::fs::read_to_string(&calls).expect("the CLI's call log");
    let called: BTreeSet<String> = log.lines().filter_map(iam_action).collect();
    let policy: Value =
        serde_json::from_slice(&stack.run(&["policy", "--account", "000000000000"]).stdout)
            .expect("policy prints JSON");
    let granted = granted(&policy);
    let grants = |action: &str| granted.iter().any(|pattern| matches(pattern, action));
    let missing: Vec<&String> = called.iter().filter(|action| !grants(action)).collect();
    assert!(
        missing.is_empty(),
        "the CLI called what the policy does not grant: {missing:?}"
    );
    let explained: BTreeSet<&str> = CHECKED_INSIDE_OTHER_CALLS
        .iter()
        .chain(&NOT_CALLED_ON_LOCALSTACK)
        .map(|(action, _)| *action)
        .collect();
    // A pattern stands for a family of calls on the stack's own resources: it must name
    // at least one the CLI makes.
    let never_called: Vec<&String> = granted
        .iter()
        .filter(|pattern| {
            !called
                .iter()
                .map(String::as_str)
                .chain(explained.iter().copied())
                .any(|action| matches(pattern, action))
        })
        .collect();
    assert!(
        never_called.is_empty(),
        "the policy grants what the CLI never called: {never_called:?}"
    );
    let stale: Vec<&&str> = explained
        .iter()
        .filter(|action| called.contains(**action) || !grants(action))
        .collect();
    assert!(
        stale.is_empty(),
        "listed as never called here, but called or not granted: {stale:?}"
    );
    lint(&policy, &called);
}

/// Whether two ARN patterns (`*` for any run of characters) match some ARN in common:
/// `arn:aws:ec2:r:a:*/*` covers parliament's `arn:*:ec2:*:*:internet-gateway/*`.
fn overlap(a: &[u8], b: &[u8]) -> bool {
    match (a.split_first(), b.split_first()) {
        (None, None) => true,
        (Some((b'*', rest)), _) => overlap(rest, b) || (!b.is_empty() && overlap(a, &b[1..])),
        (_, Some((b'*', rest))) => overlap(a, rest) || (!a.is_empty() && overlap(&a[1..], b)),
        (Some((x, a_rest)), Some((y, b_rest))) => x == y && overlap(a_rest, b_rest),
        _ => false,
    }
}

/// parliament (a public IAM policy linter, installed by scripts/python-tool.sh) on the
/// policy: each finding is either fixed, or a false positive of one of the kinds below,
/// which the check proves of every detail of the finding.
fn lint(policy: &Value, called: &BTreeSet<String>) {
    let parliament = support::python_tool("parliament");
    let mut run = std::process::Command::new(parliament)
        .args(["--json", "--minimum_severity", "LOW"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("parliament runs");
    std::io::Write::write_all(
        run.stdin.as_mut().unwrap(),
        serde_json::to_string_pretty(policy).unwrap().as_bytes(),
    )
    .unwrap();
    drop(run.stdin.take());
    let findings = run.wait_with_output().unwrap();
    let statements = policy["Statement"].as_array().unwrap();
    // Whether some statement grants `action` on a resource of `format` (parliament's
    // required ARN format, `*` for any run of characters).
    let covered = |action: &str, format: &str| {
        statements.iter().any(|statement| {
            let actions = statement["Action"].as_array().unwrap();
            let resources: Vec<&str> = match &statement["Resource"] {
                Value::Array(resources) => resources.iter().filter_map(Value::as_str).collect(),
                resource => resource.as_str().into_iter().collect(),
            };
            actions
                .iter()
                .any(|pattern| matches(pattern.as_str().unwrap(), action))
                && resources
                    .iter()
                    .any(|resource| overlap(format.as_bytes(), resource.as_bytes()))
        })
    };
    for line in String::from_utf8_lossy(&findings.stdout).lines() {
        let finding: Value = serde_json::from_str(line).expect("parliament prints JSON lines");
        let detail = &finding["detail"];
        match finding["issue"].as_str().unwrap() {
            // The reads that IAM cannot scope, or that show nothing secret, are on `*`
            // as families (`ec2:Describe*`), which keeps the policy within IAM's size.
            "RESOURCE_STAR" => {
                for action in detail.as_array().unwrap() {
                    let name = action.as_str().unwrap().split(':').nth(1).unwrap();
                    assert!(
                        ["Describe", "List", "Get"]
                            .iter()
                            .any(|read| name.starts_with(read)),
                        "a change on `*`: {finding}"
                    );
                }
            }
            // parliament checks each statement alone. RunInstances names the instance,
            // image, subnet, group and interface, each granted by a statement of its own
            // (with its own condition); and a family (`ec2:*Route`) also names actions
            // on resources the stack never has (transit gateway routes), which its
            // statement's resource and tag condition confine to the stack's: none.
            "RESOURCE_MISMATCH" => {
                for item in detail.as_array().unwrap() {
                    let action = item["action"].as_str().unwrap();
                    let format = item["required_format"].as_str().unwrap();
                    assert!(
                        !called.contains(action) || covered(action, format),
                        "{action} is called but no statement grants it on {format}: {finding}"
                    );
                }
            }
            // The deployer writes the access logs bucket's policy (log delivery only, TLS
            // only); the logs in it are the load balancer's to write, not the deployer's.
            "RESOURCE_POLICY_PRIVILEGE_ESCALATION" => {
                let detail = detail.as_str().unwrap();
                assert!(detail.contains("-alb-logs-"), "{finding}");
            }
            _ => panic!("parliament finds what the policy must fix: {finding}"),
        }
    }
    assert!(
        findings.status.success() || !findings.stdout.is_empty(),
        "parliament failed: {}",
        String::from_utf8_lossy(&findings.stderr)
    );
}
