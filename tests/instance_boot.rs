//! Instance boot, end to end (DESIGN.md, testing layer 5): after `up` against LocalStack,
//! each instance's user-data, read back from LocalStack, runs on this machine through
//! `realtime_stack::local` (the code `up --local` uses) against a loopback IMDSv2 whose
//! Redis endpoint tag points at a real TLS redis-server. The user-data installs the boot
//! service, which downloads the binary from LocalStack's S3 with no credentials, checks
//! it and starts a real chat-server; two such instances carry a message from a client of
//! one to a client of the other. Then the failures the boot service keeps retrying
//! through until they are gone: a tampered binary, and a Redis tag not written yet. And
//! shellcheck on the scripts, the service manager's stop while the boot service is
//! starting the server, and the chat settings' defaults against chat-server's own.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use realtime_stack::local::{self, BootSettings, LocalInstance, LocalRedis};
use serde_json::{Value, json};
use support::TestStack;
use tokio_tungstenite::tungstenite::Message;

const REDIS_TAG: &str = "realtime-stack:redis-endpoint";
const WAIT: Duration = Duration::from_secs(30);

/// A stack.yaml that leaves the chat settings out runs its servers as chat-server runs
/// when started by hand: the CLI's defaults (`ChatSettings::default`, which the boot
/// script always passes) are chat-server's own, though the two crates write them apart.
#[test]
fn the_stacks_chat_defaults_are_chat_servers_own() {
    let output = Command::new(support::chat_server_binary())
        .arg("--help")
        .output()
        .expect("running chat-server --help");
    assert!(output.status.success(), "{output:?}");
    let help = String::from_utf8(output.stdout).unwrap();
    // Each flag's help ends with "[default: N]", before the next flag's line.
    let default_of = |flag: &str| -> String {
        let after = help
            .split_once(&format!("--{flag} <"))
            .unwrap_or_else(|| panic!("no --{flag} in chat-server --help:\n{help}"))
            .1;
        let block = after.split("\n      --").next().unwrap();
        let default = block
            .split_once("[default: ")
            .unwrap_or_else(|| panic!("--{flag} has no default in chat-server --help"))
            .1;
        default.split(']').next().unwrap().to_owned()
    };
    let stack = realtime_stack::spec::ChatSettings::default();
    for (flag, ours) in [
        ("history-len", stack.history_messages.to_string()),
        (
            "max-rooms-per-connection",
            stack.max_rooms_per_connection.to_string(),
        ),
        ("presence-ttl-secs", stack.presence_ttl_seconds.to_string()),
        ("fanout-window-ms", stack.fanout_window_ms.to_string()),
    ] {
        assert_eq!(default_of(flag), ours, "--{flag}");
    }
}

#[test]
fn the_boot_scripts_pass_shellcheck() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("shellcheck")
        .arg("--shell=sh")
        .arg(repo.join("scripts/user-data.sh"))
        .arg(repo.join("scripts/instance-boot.sh"))
        .arg(repo.join("scripts/local-service-manager.sh"))
        .output()
        .unwrap_or_else(|err| match err.kind() {
            std::io::ErrorKind::NotFound => {
                panic!("shellcheck not found: apt-get install shellcheck or run scripts/test.sh")
            }
            _ => panic!("running shellcheck: {err}"),
        });
    assert!(
        output.status.success(),
        "shellcheck found problems:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// What these tests boot is what `up` ships: a static musl executable, which runs on every
/// Amazon Linux 2023 whatever glibc the build machine has.
#[test]
fn the_booted_binary_is_static() {
    let bytes = std::fs::read(support::chat_server_binary()).unwrap();
    let (architecture, linkage) = realtime_stack::binary::inspect(&bytes).unwrap();
    assert_eq!(architecture, realtime_stack::binary::Architecture::X86_64);
    assert_eq!(linkage, realtime_stack::binary::Linkage::Static);
}

/// A team on an x86 laptop can ship to Graviton: the cross build is a static aarch64
/// executable, accepted for an arm64 instance type and refused for an x86 one.
#[test]
fn the_graviton_cross_build_is_static_arm64_and_accepted_only_for_arm64() {
    use realtime_stack::binary::{Architecture, Linkage, prepare};
    let path = support::chat_server_binary_for(Architecture::Arm64);
    let no_output = |_: &str| {};

    let binary = prepare(Some(&path), Architecture::Arm64, &no_output).unwrap();
    assert_eq!(binary.architecture, Architecture::Arm64);
    assert_eq!(binary.linkage, Linkage::Static);

    let refused = prepare(Some(&path), Architecture::X86_64, &no_output)
        .unwrap_err()
        .to_string();
    assert!(refused.contains("built for arm64"), "{refused}");
}

/// The moment of the leak CI once showed: a chat-server of a deleted sandbox still running
/// 17 minutes after its test. The boot service was stopped while its `systemctl restart
/// chat-server.service` was in flight (the untagged instance below is dropped as soon as
/// its server answers, which can be before that call has returned). systemd stops a unit's
/// whole cgroup, that call with it; the local service manager must leave nothing of the
/// instance running either. Stand-ins for the two programs make the moment exact: the boot
/// stand-in's call halts (SIGSTOP) before it has done anything, the services are stopped
/// then, and the call is let go on if it is still there.
#[tokio::test]
async fn stopping_while_the_boot_service_starts_the_server_leaves_nothing_running() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = dir.path();
    let _leftovers = KillLeftovers(sandbox);
    let manager = sandbox.join("local-service-manager.sh");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(repo.join("scripts/local-service-manager.sh"), &manager).unwrap();
    make_executable(&manager);
    let root = sandbox.join("root");
    let config = root.join("etc/realtime-stack");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("chat-server.env"), "CHAT_DRAIN_SECS=0\n").unwrap();
    let install = root.join("opt/realtime-stack");
    std::fs::create_dir_all(&install).unwrap();
    // Shell scripts: their command lines name their paths, as the service manager expects.
    let server = install.join("chat-server");
    std::fs::write(&server, "#!/bin/sh\nwhile :; do sleep 1; done\n").unwrap();
    make_executable(&server);
    let in_flight = sandbox.join("in-flight.pid");
    let boot = install.join("boot");
    std::fs::write(
        &boot,
        format!(
            "#!/bin/sh\n\
             sh -c 'echo $$ >\"$1\"; kill -STOP $$; exec \"$RTS_SYSTEMCTL\" restart chat-server.service' \
             systemctl '{}'\n\
             while :; do sleep 1; done\n",
            in_flight.display()
        ),
    )
    .unwrap();
    make_executable(&boot);

    // As the user-data starts it.
    let started = Command::new("sh")
        .arg(&manager)
        .args(["start", "realtime-stack-boot.service"])
        .env("RTS_ROOT", &root)
        .env("RTS_SYSTEMCTL", &manager)
        .env("RTS_LOCAL_LISTEN", "127.0.0.1:9")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        started.status.success(),
        "starting the boot service: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    let call = support::poll_until(WAIT, "the boot service's systemctl call to halt", || {
        let pid = std::fs::read_to_string(&in_flight)
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok());
        async move { pid.filter(|pid| process_state(*pid) == Some('T')) }
    })
    .await;

    local::stop_services(sandbox, local::Stop::Now).unwrap();
    // What the call does if the stop left it: it starts the server, and is then done.
    let _ = Command::new("kill")
        .args(["-CONT", &call.to_string()])
        .stderr(std::process::Stdio::null())
        .status();
    support::poll_until(WAIT, "the systemctl call to end", || {
        let ended = matches!(process_state(call), None | Some('Z'));
        async move { ended.then_some(()) }
    })
    .await;
    let left = processes_of(sandbox);
    assert!(
        left.is_empty(),
        "still running after stop: {left:#?}\nconsole:\n{}",
        std::fs::read_to_string(sandbox.join("console.log")).unwrap_or_default()
    );
    assert_eq!(local::server_pid(sandbox), None);
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The state letter of process `pid` (`R`, `S`, `T` for stopped, `Z`...), if it exists.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name, which may hold spaces and parentheses.
    stat.rsplit_once(") ")?.1.chars().next()
}

/// The processes whose command line names a path under `dir`, with that command line.
fn processes_of(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.to_string_lossy();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(&*needle).then_some((pid, cmdline))
        })
        .collect()
}

/// Kills, on drop, whatever still runs from a sandbox: a failed test leaks nothing.
struct KillLeftovers<'a>(&'a Path);

impl Drop for KillLeftovers<'_> {
    fn drop(&mut self) {
        for (pid, _) in processes_of(self.0) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// The local redis-server, stopped on drop.
struct RedisGuard(LocalRedis);

impl Drop for RedisGuard {
    fn drop(&mut self) {
        let _ = self.0.stop();
    }
}

/// A booted instance, its services stopped on drop.
struct ServerGuard(LocalInstance);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = local::stop_services(&self.0.sandbox, local::Stop::Now);
    }
}

/// `destroy --yes` when the test fails half-way (it runs explicitly at the end otherwise).
struct DestroyOnPanic<'a>(&'a TestStack);

impl Drop for DestroyOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.0.command(&["destroy", "--yes"]).output();
        }
    }
}

/// Boot settings for the local Redis, with LocalStack's S3 and a one-second cap on the
/// pause between boot attempts (an hour-long test otherwise).
fn settings(redis: &LocalRedis) -> BootSettings {
    BootSettings {
        port: local::free_port().unwrap(),
        redis_address: redis.address(),
        redis_ca_file: Some(redis.ca_file()),
        s3_endpoint: support::endpoint(),
        max_pause_seconds: Some(1),
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(instance: &LocalInstance) -> (Ws, Value) {
    connect_to(instance.port, "boot").await
}

async fn connect_to(port: u16, room: &str) -> (Ws, Value) {
    let url = format!("ws://127.0.0.1:{port}/ws?room={room}");
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(&url))
        .await
        .expect("websocket connect timed out")
        .unwrap_or_else(|err| panic!("connecting to {url}: {err}"));
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "hello", "{hello}");
    (ws, hello)
}

async fn next_json(ws: &mut Ws) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("connection closed")
            .expect("websocket error");
        if let Message::Text(text) = frame {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_boot_from_their_user_data_and_chat_through_redis() {
    let aws = support::localstack().await;
    let (stack, _) = TestStack::with_zone(&aws, "i").await;
    let destroy_on_panic = DestroyOnPanic(&stack);
    let outputs = stack.up();
    let ids = support::instance_ids(&outputs);
    assert_eq!(ids.len(), 2);

    let work = tempfile::tempdir().unwrap();
    let redis = RedisGuard(LocalRedis::start(&work.path().join("redis")).unwrap());
    let ec2 = aws_sdk_ec2::Client::new(&aws);
    let autoscaling = aws_sdk_autoscaling::Client::new(&aws);
    let sandbox = |label: &str| -> PathBuf { work.path().join(label) };

    // The user-data carries nothing secret: no signed link, no credentials. The binary
    // is fetched by its plain S3 address, which only the stack's endpoint may use.
    let user_data = local::user_data(&ec2, &ids[0]).await.unwrap();
    for secret in [
        "X-Amz-",
        "Signature",
        "Credential",
        "Security-Token",
        "AKIA",
        "ASIA",
    ] {
        assert!(!user_data.contains(secret), "user-data contains {secret}");
    }

    // Both instances boot from their own user-data and serve.
    let mut servers = Vec::new();
    for (index, id) in ids.iter().enumerate() {
        let instance = ServerGuard(
            LocalInstance::boot(
                &ec2,
                &autoscaling,
                id,
                &sandbox(&format!("instance-{index}")),
                &settings(&redis.0),
            )
            .await
            .unwrap_or_else(|err| panic!("{err:#}")),
        );
        instance
            .0
            .wait_healthy(local::HEALTHY_WITHIN)
            .await
            .unwrap_or_else(|err| panic!("{err:#}"));
        // The server can answer its health check a moment before the boot program, whose
        // `systemctl start` it is, logs that it started.
        for line in [
            "installing the realtime-stack-boot service",
            "binary verified and installed",
            "chat-server started (attempt 1)",
        ] {
            wait_for_console(&instance.0, line).await;
        }
        let env = std::fs::read_to_string(
            instance
                .0
                .sandbox
                .join("root/etc/realtime-stack/chat-server.env"),
        )
        .unwrap();
        assert!(
            env.contains(&format!("REDIS_URL=rediss://{}", redis.0.address())),
            "{env}"
        );
        assert!(env.contains(&format!("CHAT_INSTANCE_ID={id}")), "{env}");
        // One shard: the endpoint is a primary, not a cluster's.
        assert!(env.contains("REDIS_CLUSTER=false"), "{env}");
        // The test stack's network.cidr: only the load balancer's X-Forwarded-For counts.
        assert!(env.contains("CHAT_TRUSTED_PROXIES=10.20.0.0/16"), "{env}");
        // stack.yaml's chat limits (the defaults here) reach the server.
        for limit in [
            "CHAT_HISTORY_LEN=1000",
            "CHAT_MAX_ROOMS_PER_CONNECTION=100",
            "CHAT_PRESENCE_TTL_SECS=30",
        ] {
            assert!(env.contains(limit), "{limit} in {env}");
        }
        servers.push(instance);
    }

    // A message sent through instance 0 reaches a client of instance 1, through Redis.
    let (mut receiver, hello) = connect(&servers[1].0).await;
    assert_eq!(hello["instance"], ids[1].as_str(), "the id comes from IMDS");
    let (mut sender, hello) = connect(&servers[0].0).await;
    assert_eq!(hello["instance"], ids[0].as_str());
    let text = format!("across instances {}", stack.name);
    sender
        .send(Message::text(
            json!({"type": "send", "name": "alice", "text": text}).to_string(),
        ))
        .await
        .unwrap();
    let received = next_json(&mut receiver).await;
    assert_eq!(received["type"], "message", "{received}");
    assert_eq!(received["text"], text.as_str());
    assert_eq!(received["name"], "alice");
    drop((sender, receiver));
    drop(servers);

    // A binary that is not the one `up` uploaded is refused, attempt after attempt, and
    // nothing is started; once the right one is back, the same boot service starts it.
    let artifact = outputs["artifact"].as_str().expect("artifact");
    let (bucket, key) = artifact
        .strip_prefix("s3://")
        .and_then(|rest| rest.split_once('/'))
        .expect("s3://bucket/key");
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&aws)
            .force_path_style(true)
            .build(),
    );
    let put = |body: Vec<u8>| {
        s3.put_object()
            .bucket(bucket)
            .key(key)
            .body(body.into())
            .send()
    };
    put(b"#!/bin/sh\necho not the chat-server\n".to_vec())
        .await
        .expect("overwriting the artifact");
    let tampered = ServerGuard(
        LocalInstance::boot(
            &ec2,
            &autoscaling,
            &ids[0],
            &sandbox("tampered"),
            &settings(&redis.0),
        )
        .await
        .unwrap_or_else(|err| panic!("{err:#}")),
    );
    wait_for_console(
        &tampered.0,
        "attempt 2 failed: the downloaded binary has SHA-256",
    )
    .await;
    let console = tampered.0.console();
    assert!(console.contains("refusing to run it"), "{console}");
    let root = tampered.0.sandbox.join("root");
    assert!(!root.join("opt/realtime-stack/chat-server").exists());
    assert!(
        local::server_pid(&tampered.0.sandbox).is_none(),
        "no server started"
    );
    put(std::fs::read(support::chat_server_binary()).unwrap())
        .await
        .expect("restoring the artifact");
    tampered
        .0
        .wait_healthy(local::HEALTHY_WITHIN)
        .await
        .unwrap_or_else(|err| panic!("the boot did not heal: {err:#}"));
    drop(tampered);

    // An instance whose Redis tag is not there yet keeps waiting for it, saying so at
    // every attempt, and boots as soon as `up` writes it.
    let tag = |value: Option<&str>| {
        aws_sdk_ec2::types::Tag::builder()
            .key(REDIS_TAG)
            .set_value(value.map(str::to_owned))
            .build()
    };
    let endpoint = outputs["redis_endpoint"].as_str().expect("redis_endpoint");
    ec2.delete_tags()
        .resources(&ids[1])
        .tags(tag(None))
        .send()
        .await
        .expect("DeleteTags");
    let untagged = ServerGuard(
        LocalInstance::boot(
            &ec2,
            &autoscaling,
            &ids[1],
            &sandbox("untagged"),
            &settings(&redis.0),
        )
        .await
        .unwrap_or_else(|err| panic!("{err:#}")),
    );
    wait_for_console(
        &untagged.0,
        &format!("attempt 2 failed: no {REDIS_TAG} tag yet"),
    )
    .await;
    assert!(local::server_pid(&untagged.0.sandbox).is_none());
    ec2.create_tags()
        .resources(&ids[1])
        .tags(tag(Some(endpoint)))
        .send()
        .await
        .expect("CreateTags");
    untagged
        .0
        .wait_healthy(local::HEALTHY_WITHIN)
        .await
        .unwrap_or_else(|err| panic!("the boot did not go on once tagged: {err:#}"));
    drop(untagged);

    drop(redis);
    stack.run(&["destroy", "--yes"]);
    drop(destroy_on_panic);
}

/// Polls the console of `instance` until it shows `line`.
async fn wait_for_console(instance: &LocalInstance, line: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !instance.console().contains(line) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{line:?} did not show on the console within {WAIT:?}:\n{}",
            instance.console()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `destroy --local` when the test fails half-way.
struct DestroyLocalOnPanic<'a>(&'a TestStack);

impl Drop for DestroyLocalOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.0.command(&["destroy", "--local"]).output();
        }
    }
}

/// `up --local` with `redis.shards: 3`, as the demo runs it with a Redis Cluster: a
/// local cluster of six TLS redis-servers (three primaries with a replica each) and two
/// instances behind one URL. Real WebSocket clients of that URL, on both instances, chat
/// in six rooms whose keys land on all three shards: every client of a room gets every
/// message of it, in one order. `destroy --local` then leaves no redis-server and no
/// chat-server of the stack running, and the URL answers nothing. (One shard, cluster
/// mode off, is what tests/rolling_deploy.rs and tests/booted_browser.rs run locally.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_local_boots_the_instances_here_behind_one_url_and_destroy_local_stops_them() {
    const ROOMS: [&str; 6] = ["room-0", "room-1", "room-2", "room-3", "room-4", "room-5"];
    support::localstack().await;
    let suffix = support::unique_suffix();
    let name = format!("l{}", &suffix[suffix.len() - 8..]);
    // No hosted zone made here: `up --local` creates it, as the demo needs.
    let stack = TestStack::new(&name, &format!("{name}.example.test"));
    stack.edit("  replicas: 1\n", "  replicas: 1\n  shards: 3\n");
    let destroy_on_panic = DestroyLocalOnPanic(&stack);
    let output = stack.run(&["up", "--local", "--output", "json"]);
    let outputs: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    let url = outputs["url"].as_str().expect("url");
    let port: u16 = url
        .strip_prefix("http://127.0.0.1:")
        .and_then(|rest| rest.strip_suffix('/'))
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("{url} is not http://127.0.0.1:<port>/"));
    let ids = support::instance_ids(&outputs);
    assert_eq!(ids.len(), 2);
    // `up` ended with the canary: a message across the two instances, through the URL.
    let canary = &outputs["canary"];
    assert_eq!(canary["result"], "verified", "{outputs:#}");
    assert_ne!(canary["from"], canary["to"]);
    assert!(canary["millis"].as_u64().is_some());
    let checked = String::from_utf8(stack.run(&["status", "--local", "--check"]).stdout).unwrap();
    assert!(
        checked.contains("canary         chat crosses instances: verified ("),
        "{checked}"
    );

    // What runs here for the stack, as its state directory records it.
    let state_dir = local::StateDir::of(local::repository(), &name);
    let state = state_dir.load().unwrap();
    let redis = LocalRedis::running(&state_dir.redis(), &state.redis_ports())
        .expect("the local Redis Cluster runs");
    assert_eq!(redis.servers.len(), 6, "3 primaries with a replica each");
    assert_eq!(redis.cluster_roles().unwrap(), (3, 3));
    let servers: Vec<u32> = ids
        .iter()
        .map(|id| local::server_pid(&state_dir.sandbox(id)).expect("the instance's chat-server"))
        .collect();

    // One URL, as on AWS: the local load balancer spreads connections over both
    // instances, which outlive the command that booted them. Two clients per room, one
    // on each instance.
    assert_eq!(local::http_status(port, "/healthz").await.unwrap(), 200);
    let mut rooms = Vec::new();
    for room in ROOMS {
        let mut clients = Vec::new();
        while clients.len() < 2 {
            let (ws, hello) = connect_to(port, room).await;
            let instance = hello["instance"].as_str().unwrap().to_owned();
            if clients.iter().all(|(_, on)| *on != instance) {
                clients.push((ws, instance));
            }
        }
        let on: std::collections::BTreeSet<&String> = clients.iter().map(|(_, on)| on).collect();
        assert_eq!(
            on.into_iter().cloned().collect::<Vec<_>>(),
            ids,
            "both instances serve"
        );
        rooms.push(clients);
    }
    for (room, clients) in ROOMS.iter().zip(&mut rooms) {
        for (ws, instance) in clients.iter_mut() {
            let send = json!({"type": "send", "name": instance, "text": format!("{room} from {instance}")});
            ws.send(Message::text(send.to_string())).await.unwrap();
        }
    }
    for (room, clients) in ROOMS.iter().zip(&mut rooms) {
        let mut orders = Vec::new();
        for (ws, _) in clients.iter_mut() {
            let mut texts = Vec::new();
            while texts.len() < 2 {
                let frame = next_json(ws).await;
                assert_eq!(frame["type"], "message", "{frame}");
                assert_eq!(frame["room"], *room, "{frame}");
                texts.push(frame["text"].as_str().unwrap().to_owned());
            }
            orders.push(texts);
        }
        assert_eq!(
            orders[0], orders[1],
            "one order on both instances in {room}"
        );
        let mut sorted = orders[0].clone();
        sorted.sort();
        let want: Vec<String> = ids.iter().map(|id| format!("{room} from {id}")).collect();
        assert_eq!(sorted, want);
    }
    // The rooms' histories are on every shard: each primary holds some of them.
    let mut shards = Vec::new();
    for server in &redis.servers {
        let cli = |args: &[&str]| {
            let output = Command::new("redis-cli")
                .args(["--tls", "--cacert"])
                .arg(redis.ca_file())
                .args(["-p", &server.port.to_string()])
                .args(args)
                .output()
                .unwrap();
            String::from_utf8(output.stdout).unwrap()
        };
        if cli(&["ROLE"]).starts_with("master") {
            let mut logs: Vec<String> = cli(&["--scan", "--pattern", "chat:*:log"])
                .lines()
                .filter(|key| !key.contains(realtime_stack::canary::ROOM))
                .map(str::to_owned)
                .collect();
            logs.sort();
            shards.push(logs);
        }
    }
    assert_eq!(shards.len(), 3);
    assert!(
        shards.iter().all(|logs| !logs.is_empty()) && shards.concat().len() == ROOMS.len(),
        "the rooms' streams per primary: {shards:?}"
    );

    stack.run(&["destroy", "--local"]);
    assert!(
        local::http_status(port, "/healthz").await.is_err(),
        "the load balancer on port {port} is still there after destroy --local"
    );
    for server in &redis.servers {
        assert!(
            !local::process_is(server.pid, "redis-server"),
            "redis-server {} (port {}) still runs after destroy --local",
            server.pid,
            server.port
        );
    }
    for pid in &servers {
        assert!(
            !local::process_is(*pid, "chat-server"),
            "chat-server {pid} still runs after destroy --local"
        );
    }
    drop(destroy_on_panic);
}
