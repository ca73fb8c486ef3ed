//! The drills on the stack of `up --local`: `drill instance` terminates the listener's
//! instance through the Auto Scaling group while a client keeps sending; the group drains
//! and replaces it. `drill redis` promotes the local Redis's replica (a FAILOVER, as
//! ElastiCache's TestFailover), and the emulator's primary endpoint follows it. No
//! acknowledged message is lost in either. On AWS a drill refuses to run without `--yes`.

mod support;

use serde_json::Value;
use support::{DestroyLocal, TestStack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_instance_replaces_an_instance_and_loses_no_acknowledged_message() {
    let stack = TestStack::local("drill", 4, "").await;
    let _destroy = DestroyLocal(&stack);
    let outputs = stack.up_local().await;
    let before = support::instance_ids(&outputs);

    let output = stack.run(&["drill", "instance", "--local", "--output", "json"]);
    let report: Value = serde_json::from_slice(&output.stdout).expect("drill prints JSON");
    eprintln!("drill instance: {report:#}");
    assert!(before.contains(&report["broke"].as_str().unwrap().to_owned()));
    assert!(!before.contains(&report["recovered"].as_str().unwrap().to_owned()));
    assert_eq!(report["lost"], serde_json::json!([]), "{report:#}");
    assert!(report["acknowledged"].as_u64().unwrap() > 10, "{report:#}");
    assert!(report["reconnects"].as_u64().unwrap() >= 1, "{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_redis_fails_over_to_the_replica_and_loses_no_acknowledged_message() {
    let stack = TestStack::local("rdrill", 4, "").await;
    let _destroy = DestroyLocal(&stack);
    stack.up_local().await;

    let output = stack.run(&["drill", "redis", "--local", "--output", "json"]);
    let report: Value = serde_json::from_slice(&output.stdout).expect("drill prints JSON");
    eprintln!("drill redis: {report:#}");
    assert!(
        report["recovered"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(report["lost"], serde_json::json!([]), "{report:#}");
    assert!(report["acknowledged"].as_u64().unwrap() > 10, "{report:#}");
    // The chat goes on after it: the canary crosses instances through the new primary.
    let checked = String::from_utf8(stack.run(&["status", "--local", "--check"]).stdout).unwrap();
    assert!(
        checked.contains("chat crosses instances: verified"),
        "{checked}"
    );
}

#[test]
fn a_drill_on_aws_wants_yes() {
    let stack = TestStack::new("nodrill", "nodrill.example.test");
    let output = stack.command(&["drill", "instance"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("pass --yes"), "{stderr}");
}
