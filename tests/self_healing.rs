//! Self-healing, shown on this machine: `up --local` with two instances in the Auto
//! Scaling group, then one instance's chat-server dies and nobody runs `up`. The local
//! load balancer finds it unhealthy and tells the group (as the ELB health check type
//! does on AWS); the group, once its grace period is over, takes it out of service and
//! launches a replacement, which the emulator boots and the load balancer routes to.
//!
//! Asserted: a replacement is healthy within a bound (the time it took is printed); the
//! clients of the dead instance reconnect to the other one with `since` and miss nothing,
//! every acknowledged message reaching every client exactly once, in order; `status`
//! shows the group's activity and its cause. A chat-server that can never start again
//! (its binary tampered with) is replaced again and again while the other instance keeps
//! serving, and `status` says why. A desired capacity changed by hand, as a scaling
//! policy would change it, is followed by the group and the load balancer.
//!
//! AWS behaviour this rests on: "Amazon EC2 Auto Scaling ... terminates and replaces the
//! unhealthy instance" with the ELB health check type, after the health check grace period
//! (https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-health-checks.html,
//! https://docs.aws.amazon.com/autoscaling/ec2/userguide/health-check-grace-period.html).

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use realtime_stack::local::{StateDir, repository, server_pid};
use serde_json::{Value, json};
use support::{DestroyLocal, TestStack};
use tokio_tungstenite::tungstenite::Message;

/// The group's grace period: `instances.health_timeout_seconds`, at its smallest.
const GRACE: &str = "60";
/// Upper bound for a replacement to be healthy after the kill: the rest of the grace
/// period, the load balancer's thresholds and a boot, on a loaded two-core machine.
const REPLACED_WITHIN: Duration = Duration::from_secs(150);
const WAIT: Duration = Duration::from_secs(30);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn self_healing_stack(prefix: &str) -> TestStack {
    TestStack::local(prefix, 4, &format!("  health_timeout_seconds: {GRACE}\n")).await
}

fn status(stack: &TestStack) -> Value {
    let output = stack.run(&["status", "--local", "--output", "json"]);
    serde_json::from_slice(&output.stdout).expect("status prints JSON")
}

/// The healthy instances `status` lists.
fn healthy(status: &Value) -> Vec<String> {
    status["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter(|instance| instance["healthy"] == true)
        .map(|instance| instance["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Every instance `status` lists.
fn healthy_or_not(status: &Value) -> Vec<String> {
    status["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|instance| instance["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The causes of the group's scaling activities that replaced an unhealthy instance.
fn health_replacements(status: &Value) -> usize {
    status["group"]["activities"]
        .as_array()
        .expect("the group's activities")
        .iter()
        .filter(|activity| {
            activity["cause"]
                .as_str()
                .is_some_and(|cause| cause.contains("ELB system health check failure"))
        })
        .count()
}

/// A stream id (`<ms>-<seq>`), ordered as Redis orders them.
fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').expect("a stream id");
    (ms.parse().unwrap(), seq.parse().unwrap())
}

/// Kills the chat-server of `id`, as a crash would: no drain, no close frames.
fn kill_chat_server(stack: &TestStack, id: &str) {
    let sandbox = StateDir::of(repository(), &stack.name).sandbox(id);
    let pid = server_pid(&sandbox).unwrap_or_else(|| panic!("no chat-server runs for {id}"));
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(killed.success(), "kill -KILL {pid}");
}

/// One chat client of the stack's URL, reconnecting with `since` whenever its connection
/// ends, whatever the way.
struct Client {
    ws_url: String,
    ws: Option<Ws>,
    instance: String,
    /// Every message id delivered, in order.
    delivered: Vec<String>,
    /// The instances it was connected to.
    instances: Vec<String>,
}

impl Client {
    async fn connect(url: &str) -> Client {
        let mut client = Client {
            ws_url: format!("{}ws?room=heal", url.replacen("http://", "ws://", 1)),
            ws: None,
            instance: String::new(),
            delivered: Vec::new(),
            instances: Vec::new(),
        };
        client.reconnect().await;
        client
    }

    /// Connects again (with `since` once it saw a message), retrying while the load
    /// balancer still sends it to the dead instance or answers 502.
    async fn reconnect(&mut self) {
        let mut url = self.ws_url.clone();
        if let Some(last) = self.delivered.last() {
            url.push_str(&format!("&since={last}"));
        }
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Ok((mut ws, _))) =
                tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url.as_str())).await
                && let Some(Ok(Message::Text(text))) = ws.next().await
            {
                let hello: Value = serde_json::from_str(text.as_str()).unwrap();
                assert_eq!(hello["type"], "hello", "{hello}");
                self.instance = hello["instance"].as_str().unwrap().to_owned();
                self.instances.push(self.instance.clone());
                self.ws = Some(ws);
                return;
            }
            assert!(Instant::now() < deadline, "could not reconnect to {url}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Reads what arrived within `within`; reconnects when the connection ended.
    async fn read(&mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let ws = self.ws.as_mut().expect("connected");
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Text(text)))) => {
                    let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                    if frame["type"] == "message" {
                        self.delivered
                            .push(frame["id"].as_str().unwrap().to_owned());
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(_) => self.reconnect().await,
            }
        }
    }

    /// Sends `text` with a client id until it is acknowledged; returns the stored id.
    async fn send(&mut self, cid: &str, text: &str) -> String {
        let frame = json!({"type": "send", "name": "healer", "text": text, "cid": cid});
        let deadline = Instant::now() + WAIT;
        loop {
            let ws = self.ws.as_mut().expect("connected");
            if ws.send(Message::text(frame.to_string())).await.is_ok() {
                let until = tokio::time::Instant::now() + Duration::from_secs(5);
                while let Ok(Some(Ok(Message::Text(text)))) =
                    tokio::time::timeout_at(until, ws.next()).await
                {
                    let answer: Value = serde_json::from_str(text.as_str()).unwrap();
                    match answer["type"].as_str() {
                        Some("ack") if answer["cid"] == cid => {
                            return answer["id"].as_str().unwrap().to_owned();
                        }
                        Some("message") => self
                            .delivered
                            .push(answer["id"].as_str().unwrap().to_owned()),
                        _ => {}
                    }
                }
            }
            assert!(Instant::now() < deadline, "{cid} was never acknowledged");
            self.reconnect().await;
        }
    }
}

/// Clients until each of `instances` has one; the rest are dropped.
async fn one_client_each(url: &str, instances: &[String]) -> BTreeMap<String, Client> {
    let mut clients = BTreeMap::new();
    for _ in 0..20 {
        let client = Client::connect(url).await;
        clients.entry(client.instance.clone()).or_insert(client);
        if instances.iter().all(|id| clients.contains_key(id)) {
            return clients;
        }
    }
    panic!("the load balancer never sent a client to each of {instances:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_chat_server_is_replaced_by_the_group_and_its_clients_miss_nothing() {
    let stack = self_healing_stack("heal").await;
    let _destroy = DestroyLocal(&stack);
    let outputs = stack.up_local().await;
    let url = outputs["url"].as_str().expect("url").to_owned();
    let before = support::instance_ids(&outputs);
    assert_eq!(before.len(), 2);
    let mut clients = one_client_each(&url, &before).await;
    let (victim, survivor) = (before[0].clone(), before[1].clone());
    // A first message every client has: what a reconnect asks for everything after.
    let first = clients
        .get_mut(&survivor)
        .unwrap()
        .send("m0", "before the kill")
        .await;
    for client in clients.values_mut() {
        while !client.delivered.contains(&first) {
            client.read(Duration::from_millis(200)).await;
        }
    }

    let killed = Instant::now();
    kill_chat_server(&stack, &victim);
    // Messages keep coming, sent through the survivor, while the victim's client finds
    // its way there.
    let mut acknowledged = Vec::new();
    let mut sent = 0;
    let replacement = loop {
        sent += 1;
        let sender = clients.get_mut(&survivor).unwrap();
        acknowledged.push(
            sender
                .send(&format!("m{sent}"), &format!("message {sent}"))
                .await,
        );
        for client in clients.values_mut() {
            client.read(Duration::from_millis(300)).await;
        }
        let now = healthy(&status(&stack));
        if let Some(new) = now.iter().find(|id| !before.contains(id)) {
            break new.clone();
        }
        assert!(
            killed.elapsed() < REPLACED_WITHIN,
            "no replacement healthy {REPLACED_WITHIN:?} after the kill"
        );
    };
    let took = killed.elapsed();
    eprintln!(
        "a replacement ({replacement}) was healthy {:.1}s after {victim}'s chat-server was \
         killed (the group's grace period is {GRACE}s from the launch)",
        took.as_secs_f64()
    );
    let status = status(&stack);
    assert!(health_replacements(&status) >= 1, "{:#}", status["group"]);
    assert!(
        !healthy(&status).contains(&victim),
        "{victim} is out of service"
    );

    // Every acknowledged message reached every client once, in order.
    for (on, client) in &mut clients {
        let deadline = Instant::now() + WAIT;
        while !acknowledged.iter().all(|id| client.delivered.contains(id)) {
            assert!(
                Instant::now() < deadline,
                "the client of {on} missed messages"
            );
            client.read(Duration::from_millis(200)).await;
        }
        let ids: Vec<(u64, u64)> = client.delivered.iter().map(|id| stream_id(id)).collect();
        assert!(
            ids.windows(2).all(|pair| pair[0] < pair[1]),
            "the client of {on} got a message twice or out of order: {:?}",
            client.delivered
        );
    }
    let moved = &clients[&victim];
    assert!(
        moved.instances.len() > 1 && moved.instance != victim,
        "the victim's client reconnected elsewhere: {:?}",
        moved.instances
    );
    eprintln!(
        "{} messages sent through {survivor} while {victim} died, all delivered once to both \
         clients",
        acknowledged.len()
    );
}

/// The healthy instances `status` lists, once there are `count` of them and nothing else
/// of the group is in service or on its way out.
async fn settled_at(stack: &TestStack, count: usize, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let status = status(stack);
        let healthy = healthy(&status);
        let listed = status["instances"].as_array().map_or(0, Vec::len);
        if healthy.len() == count && listed == count && status["group"]["in_service"] == count {
            return healthy;
        }
        assert!(
            Instant::now() < deadline,
            "the group never settled at {count} healthy instances: {:#}",
            status["instances"]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What a scaling policy does, done by hand: the desired capacity raised, then lowered.
/// The group launches and the load balancer routes to the new instance; then it drains
/// one and the others serve on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desired_capacity_changed_by_hand_is_followed_by_the_group_and_the_load_balancer() {
    let stack = self_healing_stack("size").await;
    let _destroy = DestroyLocal(&stack);
    let outputs = stack.up_local().await;
    let url = outputs["url"].as_str().expect("url").to_owned();
    let before = support::instance_ids(&outputs);
    let autoscaling = aws_sdk_autoscaling::Client::new(&support::localstack().await);
    let group = format!("{}-instances", stack.name);
    let resize = |desired: i32| {
        autoscaling
            .update_auto_scaling_group()
            .auto_scaling_group_name(&group)
            .max_size(desired)
            .desired_capacity(desired)
            .send()
    };

    let raised = Instant::now();
    resize(3).await.expect("UpdateAutoScalingGroup desired 3");
    let three = settled_at(&stack, 3, Duration::from_secs(90)).await;
    let added = three
        .iter()
        .find(|id| !before.contains(id))
        .expect("a new instance")
        .clone();
    eprintln!(
        "desired 2 -> 3: {added} healthy behind the load balancer {:.1}s later",
        raised.elapsed().as_secs_f64()
    );
    let clients = one_client_each(&url, &three).await;
    assert!(clients.contains_key(&added));

    let lowered = Instant::now();
    resize(2).await.expect("UpdateAutoScalingGroup desired 2");
    let two = settled_at(&stack, 2, Duration::from_secs(60)).await;
    eprintln!(
        "desired 3 -> 2: one drained and terminated {:.1}s later, {two:?} serve",
        lowered.elapsed().as_secs_f64()
    );
    let client = Client::connect(&url).await;
    assert!(two.contains(&client.instance));
}

/// A chat-server that can never start again: the binary in the bucket is replaced, so
/// every new instance's boot service refuses it (its SHA-256) and retries for ever. The
/// group replaces the dead instance, then its replacement, then the next, while the other
/// instance serves on; `status` says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_server_that_never_starts_is_replaced_again_and_again() {
    let stack = self_healing_stack("again").await;
    let _destroy = DestroyLocal(&stack);
    let outputs = stack.up_local().await;
    let url = outputs["url"].as_str().expect("url").to_owned();
    let before = support::instance_ids(&outputs);
    let (victim, survivor) = (before[0].clone(), before[1].clone());
    let mut clients = one_client_each(&url, &before).await;

    let artifact = outputs["artifact"].as_str().expect("artifact");
    let (bucket, key) = artifact
        .strip_prefix("s3://")
        .and_then(|rest| rest.split_once('/'))
        .expect("s3://bucket/key");
    let aws = support::localstack().await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&aws)
            .force_path_style(true)
            .build(),
    );
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(aws_sdk_s3::primitives::ByteStream::from_static(
            b"#!/bin/sh\nexit 1\n",
        ))
        .send()
        .await
        .expect("PutObject");
    let killed = Instant::now();
    kill_chat_server(&stack, &victim);

    let mut sent = 0;
    let mut acknowledged = Vec::new();
    loop {
        sent += 1;
        let sender = clients.get_mut(&survivor).unwrap();
        acknowledged.push(
            sender
                .send(&format!("a{sent}"), "the survivor serves")
                .await,
        );
        let status = status(&stack);
        if health_replacements(&status) >= 2 {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(240),
            "not replaced twice: {:#}",
            status["group"]
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!(
        "{victim} and its first replacement were replaced {:.1}s after the kill; {} messages \
         acknowledged by {survivor} meanwhile",
        killed.elapsed().as_secs_f64(),
        acknowledged.len()
    );
    let text = String::from_utf8(stack.run(&["status", "--local"]).stdout).unwrap();
    assert!(
        text.contains("taken out of service in response to an ELB system health check failure"),
        "{text}"
    );
    // And what the replacements' boot service says, through `logs`. They go on being
    // replaced: one listed a moment ago may be gone when `logs` asks for it, or so new
    // that its boot has not got that far, and then the one listed next is read.
    loop {
        let replacement = healthy_or_not(&status(&stack))
            .into_iter()
            .find(|id| !before.contains(id))
            .expect("a replacement listed");
        let read = stack
            .command(&["logs", "--local", "--boot", "--instance", &replacement])
            .output()
            .unwrap();
        let (boot, error) = (
            String::from_utf8_lossy(&read.stdout),
            String::from_utf8_lossy(&read.stderr),
        );
        if boot.contains("refusing to run it") {
            break;
        }
        assert!(
            (read.status.success() || error.contains("is not a live instance"))
                && killed.elapsed() < Duration::from_secs(300),
            "no replacement's boot said it refuses the binary: {boot}{error}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let listener = clients.get_mut(&survivor).unwrap();
    listener.read(Duration::from_millis(500)).await;
    for id in &acknowledged {
        assert!(listener.delivered.contains(id), "{id} was not delivered");
    }
}
