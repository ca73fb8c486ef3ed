//! A public AWS security scanner on the stack `up` builds: Prowler
//! (https://github.com/prowler-cloud/prowler, installed by scripts/python-tool.sh), pointed at
//! LocalStack, runs the checks of the services the stack uses. Every check on the stack's
//! own resources passes, but those `up` leaves failing on purpose, each named here with
//! why (README, "What stays off, on purpose").
//!
//! Not checked here: Prowler's ElastiCache checks stop on a field moto does not return
//! (its service reads each cache cluster's ARN from DescribeReplicationGroups); what they
//! check (encryption, failover, backups) tests/up_destroy.rs reads from the group.

mod support;

use std::collections::BTreeMap;

use serde_json::Value;
use support::TestStack;

/// The checks run, by service: what a scanner of a realtime stack's kind reports.
const CHECKS: [&str; 15] = [
    "ec2_securitygroup_default_restrict_traffic",
    "ec2_instance_imdsv2_enabled",
    "ec2_ebs_volume_encryption",
    "elbv2_alb_drop_invalid_header_fields_enabled",
    "elbv2_deletion_protection",
    "elbv2_desync_mitigation_mode",
    "elbv2_insecure_ssl_ciphers",
    "elbv2_logging_enabled",
    "elbv2_ssl_listeners",
    "elbv2_waf_acl_attached",
    "s3_bucket_level_public_access_block",
    "s3_bucket_secure_transport_policy",
    "s3_bucket_policy_public_write_access",
    "s3_bucket_lifecycle_enabled",
    "vpc_flow_logs_enabled",
];

/// Findings that fail on purpose: (check, the resource's name or id, why).
const FAILING_ON_PURPOSE: [(&str, &str, &str); 3] = [
    (
        "elbv2_waf_acl_attached",
        "-alb",
        "a WAF web ACL is the operator's choice of rules and price; the chat server refuses \
         what it does not take",
    ),
    (
        "vpc_flow_logs_enabled",
        "vpc/",
        "the security groups admit only what the stack needs and the load balancer logs every \
         request; flow logs would mostly record the chat's own Redis traffic, at a price per GB",
    ),
    (
        "s3_bucket_lifecycle_enabled",
        "-artifacts-",
        "an expiry would delete the binary the group launches new instances from; `up` \
         deletes the builds no instance runs instead",
    ),
];

#[tokio::test]
async fn a_security_scanner_finds_nothing_on_the_stack_but_what_stays_off_on_purpose() {
    let aws = support::localstack().await;
    let (stack, _) = TestStack::with_zone(&aws, "scan").await;
    let outputs = stack.up();
    let ec2 = aws_sdk_ec2::Client::new(&aws);
    let vpc_id = ec2
        .describe_instances()
        .instance_ids(&support::instance_ids(&outputs)[0])
        .send()
        .await
        .unwrap()
        .reservations()[0]
        .instances()[0]
        .vpc_id()
        .unwrap()
        .to_owned();
    let default_group = support::default_security_group(&ec2, &vpc_id)
        .await
        .group_id()
        .unwrap()
        .to_owned();
    // What of everything in this LocalStack is the stack's (other tests share it).
    let mut ours: Vec<String> = vec![
        format!("{}-", stack.name),
        vpc_id.clone(),
        default_group.clone(),
    ];
    ours.extend(support::instance_ids(&outputs));

    let findings = scan(&stack).await;
    let mine: Vec<&Value> = findings
        .iter()
        .filter(|finding| {
            let uid = resource(finding);
            ours.iter().any(|id| uid.contains(id.as_str()))
        })
        .collect();
    let mut by_check: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for finding in &mine {
        by_check
            .entry(finding["metadata"]["event_code"].as_str().unwrap())
            .or_default()
            .push((finding["status_code"].as_str().unwrap(), resource(finding)));
    }
    println!("Prowler on the stack's resources:");
    for (check, results) in &by_check {
        println!("  {check}: {results:?}");
    }
    let seen = |check: &str| by_check.contains_key(check);
    for check in [
        "ec2_securitygroup_default_restrict_traffic",
        "ec2_instance_imdsv2_enabled",
        "elbv2_logging_enabled",
        "elbv2_alb_drop_invalid_header_fields_enabled",
        "elbv2_deletion_protection",
        "elbv2_desync_mitigation_mode",
        "s3_bucket_secure_transport_policy",
        "s3_bucket_level_public_access_block",
    ] {
        assert!(seen(check), "Prowler reported nothing for {check}");
    }
    for finding in &mine {
        if finding["status_code"] == "PASS" {
            continue;
        }
        let check = finding["metadata"]["event_code"].as_str().unwrap();
        let uid = resource(finding);
        let on_purpose = FAILING_ON_PURPOSE
            .iter()
            .find(|(failing, name, _)| *failing == check && uid.contains(name));
        assert!(
            on_purpose.is_some(),
            "{check} fails on {uid}: {}",
            finding["status_detail"]
        );
    }
    stack.run(&["destroy", "--yes"]);
}

fn resource(finding: &Value) -> &str {
    finding["resources"][0]["uid"].as_str().unwrap_or_default()
}

/// Prowler's findings (OCSF JSON) for [`CHECKS`] on the account in LocalStack.
async fn scan(stack: &TestStack) -> Vec<Value> {
    let prowler = support::python_tool("prowler");
    let out = stack.dir.path().join("prowler");
    let run = tokio::process::Command::new(prowler)
        .args(["aws", "--region", "us-east-1", "--scan-unused-services"])
        .arg("--checks")
        .args(CHECKS)
        .args(["--output-formats", "json-ocsf", "--no-banner"])
        .arg("--output-directory")
        .arg(&out)
        .env("AWS_ENDPOINT_URL", support::endpoint())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("running prowler");
    // Prowler exits 3 when a check fails; what failed is for the test to judge.
    assert!(
        matches!(run.status.code(), Some(0 | 3)),
        "prowler failed ({}): {}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    let report = std::fs::read_dir(&out)
        .expect("prowler's output directory")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.to_string_lossy().ends_with(".ocsf.json"))
        .expect("an OCSF report");
    serde_json::from_slice(&std::fs::read(report).unwrap()).expect("OCSF JSON")
}
