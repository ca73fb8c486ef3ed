//! The drills on the stack of `up --local`: `drill instance` terminates the listener's
//! instance through the Auto Scaling group while a client keeps sending; the group drains
//! and replaces it; no acknowledged message is lost. On AWS a drill refuses to run
//! without `--yes`.

mod support;

use serde_json::Value;
use support::{DestroyLocal, TestStack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_instance_replaces_an_instance_and_loses_no_acknowledged_message() {
    let stack = TestStack::local("drill", "  drain_seconds: 4\n").await;
    let _destroy = DestroyLocal(&stack);
    let outputs = stack.up_local().await;
    let before = support::instance_ids(&outputs);

    let output = stack.run(&["drill", "instance", "--local", "--output", "json"]);
    let report: Value = serde_json::from_slice(&output.stdout).expect("drill prints JSON");
    eprintln!("drill instance: {report:#}");
    assert!(before.contains(&report["terminated"].as_str().unwrap().to_owned()));
    assert!(!before.contains(&report["replacement"].as_str().unwrap().to_owned()));
    assert_eq!(report["lost"], serde_json::json!([]), "{report:#}");
    assert!(report["acknowledged"].as_u64().unwrap() > 10, "{report:#}");
    assert!(report["reconnects"].as_u64().unwrap() >= 1, "{report:#}");
}

#[test]
fn a_drill_on_aws_wants_yes() {
    let stack = TestStack::new("nodrill", "nodrill.example.test");
    let output = stack.command(&["drill", "instance"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("pass --yes"), "{stderr}");
}
