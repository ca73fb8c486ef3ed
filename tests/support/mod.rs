//! What every LocalStack integration test needs: an `SdkConfig` aimed at the LocalStack
//! that `scripts/localstack.sh` runs on loopback, with throwaway credentials, after
//! checking that it answers. Tests never reach past loopback.

// Each test crate uses its own part of these helpers.
#![allow(dead_code)]

use std::time::{SystemTime, UNIX_EPOCH};

use aws_config::{BehaviorVersion, Region, SdkConfig, retry::RetryConfig};
use aws_sdk_sts::config::Credentials;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:4566";
const HOW_TO_START: &str = "start it with `scripts/localstack.sh start` \
     (or run everything with `scripts/test.sh`)";

/// The LocalStack endpoint: `AWS_ENDPOINT_URL` when it is set, else the script's default.
/// Anything but loopback is refused, so a stray environment can never aim a test at AWS.
pub fn endpoint() -> String {
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| DEFAULT_ENDPOINT.into());
    let host = endpoint
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split([':', '/']).next())
        .unwrap_or_default();
    assert!(
        matches!(host, "127.0.0.1" | "localhost" | "[::1]"),
        "AWS_ENDPOINT_URL={endpoint} is not on loopback: the tests run only against a local LocalStack"
    );
    endpoint
}

/// An `SdkConfig` for LocalStack, once it has answered both a core API (STS) and one that
/// only the project's LocalStack extension provides (ELBv2).
pub async fn localstack() -> SdkConfig {
    let endpoint = endpoint();
    let config = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(&endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            "test",
            "test",
            None,
            None,
            "localstack-tests",
        ))
        .retry_config(RetryConfig::standard().with_max_attempts(2))
        .load()
        .await;
    if let Err(err) = aws_sdk_sts::Client::new(&config)
        .get_caller_identity()
        .send()
        .await
    {
        panic!(
            "LocalStack does not answer on {endpoint} ({}): {HOW_TO_START}",
            aws_sdk_sts::error::DisplayErrorContext(err)
        );
    }
    let elbv2 = aws_sdk_elasticloadbalancingv2::Client::new(&config);
    if let Err(err) = elbv2.describe_load_balancers().send().await {
        panic!(
            "LocalStack on {endpoint} answers but not for ELBv2, so it runs without the project's \
             extension ({}): stop it and {HOW_TO_START}",
            aws_sdk_sts::error::DisplayErrorContext(err)
        );
    }
    // The strict layer of the extension (strict.py) refuses what AWS refuses: without it,
    // a request AWS would refuse passes here.
    let probe = aws_sdk_ec2::Client::new(&config)
        .create_security_group()
        .group_name("sg-strict-probe")
        .description("probe")
        .vpc_id("vpc-0123456789abcdef0")
        .send()
        .await;
    let refused = match &probe {
        Err(err) => err
            .as_service_error()
            .and_then(|err| err.message())
            .is_some_and(|message| message.contains("may not be in the format sg-*")),
        Ok(_) => false,
    };
    assert!(
        refused,
        "LocalStack on {endpoint} runs without the strict layer of the project's extension \
         (a security group named sg-... was not refused: {probe:?}): stop it and {HOW_TO_START}"
    );
    config
}

/// A suffix that keeps the names of one test run apart from any other's in the same
/// LocalStack.
pub fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:x}", std::process::id(), nanos % 0xffff_ffff)
}

/// A stack file for `name` in a fresh directory, serving `chat.<zone>`, shipping the
/// workspace's debug chat-server build (the tests make it; its content is what the
/// instances would run).
pub struct TestStack {
    pub dir: tempfile::TempDir,
    pub name: String,
    pub zone: String,
    /// A file every AWS operation of the CLI's runs is appended to, when set.
    pub call_log: Option<std::path::PathBuf>,
}

impl TestStack {
    pub fn new(name: &str, zone: &str) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let yaml = format!(
            "name: {name}\nregion: us-east-1\ndomain:\n  name: chat.{zone}\n  hosted_zone: {zone}\n\
             network:\n  cidr: 10.20.0.0/16\ninstances:\n  count: 2\n  drain_seconds: 5\n  type: t3.micro\n  binary: {}\n\
             load_balancer:\n  health_check_interval_seconds: 5\n\
             redis:\n  replicas: 1\ntags:\n  team: tests\n",
            chat_server_binary().display()
        );
        std::fs::write(dir.path().join("stack.yaml"), yaml).expect("writing stack.yaml");
        Self {
            dir,
            name: name.to_owned(),
            zone: zone.to_owned(),
            call_log: None,
        }
    }

    /// A stack of a fresh name starting with `prefix`, for `up --local` (which makes the
    /// hosted zone), once LocalStack answers; its instances drain for `drain_seconds`,
    /// with `instances` added to their section.
    pub async fn local(prefix: &str, drain_seconds: u32, instances: &str) -> Self {
        localstack().await;
        let suffix = unique_suffix();
        let name = format!("{prefix}{}", &suffix[suffix.len() - 8..]);
        let stack = Self::new(&name, &format!("{name}.example.test"));
        stack.edit(
            "  drain_seconds: 5\n",
            &format!("  drain_seconds: {drain_seconds}\n{instances}"),
        );
        stack
    }

    /// A stack of a fresh name starting with `prefix`, and its hosted zone in LocalStack
    /// (by id).
    pub async fn with_zone(aws: &SdkConfig, prefix: &str) -> (Self, String) {
        let suffix = unique_suffix();
        let name = format!("{prefix}{}", &suffix[suffix.len() - 8..]);
        let zone = format!("{name}.example.test");
        let zone_id = hosted_zone(aws, &zone).await;
        (Self::new(&name, &zone), zone_id)
    }

    /// A stack of a fresh name starting with `prefix` whose chat requires sign-in, with
    /// the development key pair `up --local` makes (`chat.auth.generate`).
    pub fn signed_in(prefix: &str) -> Self {
        let suffix = unique_suffix();
        let name = format!("{prefix}{}", &suffix[suffix.len() - 8..]);
        let stack = Self::new(&name, &format!("{name}.example.test"));
        stack.edit(
            "tags:
  team: tests
",
            "tags:
  team: tests
chat:
  auth:
    generate: true
",
        );
        stack
    }

    /// A sign-in token of the user `sub` named `name`, from `realtime-stack token`.
    pub fn user_token(&self, sub: &str, name: &str) -> String {
        let minted = self.run(&["token", "--sub", sub, "--name", name, "--ttl", "30m"]);
        String::from_utf8(minted.stdout).unwrap().trim().to_owned()
    }

    /// Ships another build from now on: the workspace's chat-server with a byte more,
    /// so another SHA-256 (it runs the same). Returns the new binary's bytes.
    pub fn rebuild(&self) -> Vec<u8> {
        let mut rebuilt = std::fs::read(chat_server_binary()).expect("the chat-server binary");
        rebuilt.push(b'\n');
        let path = self
            .dir
            .path()
            .join(format!("chat-server-{}", unique_suffix()));
        std::fs::write(&path, &rebuilt).expect("writing the rebuilt binary");
        let yaml = std::fs::read_to_string(self.file()).expect("reading stack.yaml");
        let current = yaml
            .lines()
            .find(|line| line.trim_start().starts_with("binary: "))
            .expect("a binary line")
            .to_owned();
        let yaml = yaml.replace(&current, &format!("  binary: {}", path.display()));
        std::fs::write(self.file(), yaml).expect("writing stack.yaml");
        rebuilt
    }

    pub fn file(&self) -> std::path::PathBuf {
        self.dir.path().join("stack.yaml")
    }

    pub fn domain(&self) -> String {
        format!("chat.{}", self.zone)
    }

    /// `realtime-stack <args> -f <this stack>` against LocalStack.
    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_realtime-stack"));
        command
            .args(args)
            .arg("-f")
            .arg(self.file())
            .env("AWS_ENDPOINT_URL", endpoint())
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            // LocalStack answers at once: poll it at the emulator's pace.
            .env("REALTIME_STACK_PACE", "local")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .stdin(std::process::Stdio::null());
        if let Some(log) = &self.call_log {
            command.env("REALTIME_STACK_CALL_LOG", log);
        }
        command
    }

    /// Runs the CLI to completion; panics with its output when it fails.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        succeeded(args, self.command(args).output())
    }

    /// `up --local --output json`, parsed; the test's own tasks go on while it runs.
    pub async fn up_local(&self) -> serde_json::Value {
        let args = ["up", "--local", "--output", "json"];
        let command = tokio::process::Command::from(self.command(&args)).output();
        let output = succeeded(&args, command.await);
        serde_json::from_slice(&output.stdout).expect("up prints one JSON object")
    }

    /// Replaces `from` in the stack file with `to`; panics when it is not there.
    pub fn edit(&self, from: &str, to: &str) {
        let yaml = std::fs::read_to_string(self.file()).expect("reading stack.yaml");
        assert!(yaml.contains(from), "no {from:?} in stack.yaml:\n{yaml}");
        std::fs::write(self.file(), yaml.replace(from, to)).expect("writing stack.yaml");
    }

    /// `up --yes --output json --no-canary`, parsed: LocalStack alone runs no instance,
    /// so nothing would answer the canary (the `--local` tests run it).
    pub fn up(&self) -> serde_json::Value {
        let output = self.run(&["up", "--yes", "--output", "json", "--no-canary"]);
        serde_json::from_slice(&output.stdout).expect("up prints one JSON object")
    }
}

/// The output of a CLI run that succeeded; panics with its output otherwise.
fn succeeded(args: &[&str], output: std::io::Result<std::process::Output>) -> std::process::Output {
    let output = output.expect("running realtime-stack");
    assert!(
        output.status.success(),
        "realtime-stack {args:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `destroy --local` at the end of a test, whether it passed or not.
pub struct DestroyLocal<'a>(pub &'a TestStack);

impl Drop for DestroyLocal<'_> {
    fn drop(&mut self) {
        let output = self.0.command(&["destroy", "--local"]).output();
        if !std::thread::panicking() {
            let output = output.expect("running realtime-stack destroy --local");
            assert!(
                output.status.success(),
                "destroy --local failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// Polls `check` until it returns `Some`, failing with `what` after `timeout`.
pub async fn poll_until<T, F, Fut>(timeout: std::time::Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// An EC2 instance's state (`running`, `terminated`...) and the binary SHA-256 its tag
/// records, as LocalStack describes it.
pub async fn state_and_binary(ec2: &aws_sdk_ec2::Client, id: &str) -> (String, Option<String>) {
    let described = ec2
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .unwrap_or_else(|err| panic!("DescribeInstances {id}: {err:?}"));
    let instance = &described.reservations()[0].instances()[0];
    let binary = instance
        .tags()
        .iter()
        .find(|tag| tag.key() == Some("realtime-stack:binary-sha256"))
        .and_then(|tag| tag.value().map(str::to_owned));
    let state = instance.state().and_then(|state| state.name());
    (
        state
            .map(|name| name.as_str().to_owned())
            .unwrap_or_default(),
        binary,
    )
}

/// The workspace's chat-server as the instances run it: the static musl build that
/// scripts/test.sh makes (`cargo build -p chat-server --target x86_64-unknown-linux-musl`)
/// in the target directory of the test executables.
pub fn chat_server_binary() -> std::path::PathBuf {
    chat_server_binary_for(realtime_stack::binary::Architecture::X86_64)
}

/// The debug musl build of chat-server for `architecture`, which scripts/test.sh makes.
pub fn chat_server_binary_for(
    architecture: realtime_stack::binary::Architecture,
) -> std::path::PathBuf {
    let target = architecture.musl_target();
    let test_exe = std::env::current_exe().expect("test executable path");
    let target_dir = test_exe
        .ancestors()
        .nth(3)
        .expect("the target directory above <profile>/deps/<test>");
    let binary = target_dir.join(target).join("debug").join("chat-server");
    assert!(
        binary.exists(),
        "{} is missing: build it with `cargo build -p chat-server --target {target}` \
         (scripts/test.sh does; the target comes with rust-toolchain.toml, or \
         `rustup target add {target}`; the aarch64 build needs clang)",
        binary.display()
    );
    binary
}

/// The rule of the HTTPS listener `listener_arn` that answers `/metrics` (priority 1).
pub async fn metrics_rule(
    elbv2: &aws_sdk_elasticloadbalancingv2::Client,
    listener_arn: &str,
) -> aws_sdk_elasticloadbalancingv2::types::Rule {
    elbv2
        .describe_rules()
        .listener_arn(listener_arn)
        .send()
        .await
        .expect("DescribeRules")
        .rules()
        .iter()
        .find(|rule| rule.priority() == Some("1"))
        .expect("the /metrics rule")
        .clone()
}

/// The `instance_ids` of `up`'s outputs, sorted.
/// The command of a public tool the tests run (`parliament`, `prowler`), installed by
/// scripts/python-tool.sh into a virtualenv of its own when it is not yet.
pub fn python_tool(tool: &str) -> std::path::PathBuf {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/python-tool.sh");
    let installed = std::process::Command::new("bash")
        .arg(script)
        .arg(tool)
        .output()
        .expect("bash");
    assert!(
        installed.status.success(),
        "scripts/python-tool.sh could not install {tool} (it needs python3-venv and PyPI): {}",
        String::from_utf8_lossy(&installed.stderr)
    );
    String::from_utf8(installed.stdout).unwrap().trim().into()
}

/// The default security group AWS makes with the VPC `vpc_id`.
pub async fn default_security_group(
    ec2: &aws_sdk_ec2::Client,
    vpc_id: &str,
) -> aws_sdk_ec2::types::SecurityGroup {
    let filter = |name: &str, value: &str| {
        aws_sdk_ec2::types::Filter::builder()
            .name(name)
            .values(value)
            .build()
    };
    ec2.describe_security_groups()
        .filters(filter("vpc-id", vpc_id))
        .filters(filter("group-name", "default"))
        .send()
        .await
        .expect("DescribeSecurityGroups")
        .security_groups()[0]
        .clone()
}

pub fn instance_ids(outputs: &serde_json::Value) -> Vec<String> {
    let mut ids: Vec<String> = outputs["instance_ids"]
        .as_array()
        .expect("instance_ids in the outputs")
        .iter()
        .map(|id| id.as_str().expect("an instance id").to_owned())
        .collect();
    ids.sort();
    ids
}

/// The ARN of the stack `name`'s load balancer (`<name>-alb`).
pub async fn load_balancer_arn(aws: &SdkConfig, name: &str) -> String {
    aws_sdk_elasticloadbalancingv2::Client::new(aws)
        .describe_load_balancers()
        .names(format!("{name}-alb"))
        .send()
        .await
        .expect("DescribeLoadBalancers")
        .load_balancers()[0]
        .load_balancer_arn()
        .expect("the load balancer's ARN")
        .to_owned()
}

/// A Route53 hosted zone in LocalStack, as a user of the CLI would already have.
pub async fn hosted_zone(aws: &SdkConfig, name: &str) -> String {
    aws_sdk_route53::Client::new(aws)
        .create_hosted_zone()
        .name(name)
        .caller_reference(unique_suffix())
        .send()
        .await
        .expect("CreateHostedZone")
        .hosted_zone
        .expect("hosted zone")
        .id
}

/// Headless Chromium driven through chromedriver (Debian's `chromium` and
/// `chromium-driver`), for the tests that look at the chat page of booted instances.
pub mod browser {
    use std::net::TcpStream;
    use std::os::unix::process::CommandExt;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use fantoccini::{Client, ClientBuilder, Locator};
    use serde_json::json;

    use super::poll_until;

    const CHROMIUM: &str = "/usr/bin/chromium";
    const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
    const MISSING: &str = "chromium/chromedriver not found: apt-get install chromium chromium-driver or run scripts/test.sh";

    /// Upper bound for what a page waits for; generous for a loaded two-core machine.
    pub const WAIT: Duration = Duration::from_secs(30);

    /// Where tests leave files worth looking at after a run (screenshots).
    pub fn artifacts_dir() -> PathBuf {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-artifacts");
        std::fs::create_dir_all(&dir).expect("creating the test artifacts directory");
        dir
    }

    /// chromedriver on a free loopback port, in a process group of its own so that the
    /// Chromium processes it starts go with it: the whole group is killed on drop.
    pub struct Chromedriver {
        pub port: u16,
        child: Child,
    }

    impl Chromedriver {
        /// Starts chromedriver and waits until it listens; fails (never skips) when
        /// Chromium or chromedriver is not installed.
        pub fn start() -> Chromedriver {
            assert!(
                Path::new(CHROMIUM).is_file() && Path::new(CHROMEDRIVER).is_file(),
                "{MISSING}"
            );
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("a free loopback port")
                .port();
            let child = Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap_or_else(|err| match err.kind() {
                    std::io::ErrorKind::NotFound => panic!("{MISSING}"),
                    _ => panic!("starting {CHROMEDRIVER}: {err}"),
                });
            let mut driver = Chromedriver { port, child };
            let deadline = Instant::now() + WAIT;
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Ok(Some(status)) = driver.child.try_wait() {
                    panic!("chromedriver exited ({status}) before listening on port {port}");
                }
                assert!(
                    Instant::now() < deadline,
                    "chromedriver did not listen on port {port} within {WAIT:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            driver
        }

        /// A headless Chromium session with a fresh profile in `profile`.
        pub async fn browser(&self, profile: &Path) -> Client {
            let mut capabilities = serde_json::Map::new();
            capabilities.insert(
                "goog:chromeOptions".into(),
                json!({
                    "binary": CHROMIUM,
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        "--disable-dev-shm-usage", "--window-size=900,600",
                        format!("--user-data-dir={}", profile.display()),
                    ],
                }),
            );
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            ClientBuilder::new(connector)
                .capabilities(capabilities)
                .connect(&format!("http://127.0.0.1:{}", self.port))
                .await
                .expect("starting a headless Chromium session through chromedriver")
        }
    }

    impl Drop for Chromedriver {
        fn drop(&mut self) {
            // The group's id is chromedriver's pid (process_group(0) above).
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.id())])
                .stderr(Stdio::null())
                .status();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// The text of the element `css` matches, or "" while there is none.
    pub async fn text_of(page: &Client, css: &str) -> String {
        match page.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Waits until the chat page shows it is connected, and returns the instance it shows.
    pub async fn wait_connected(page: &Client, what: &str) -> String {
        poll_until(WAIT, &format!("{what} to connect"), || async {
            let state = text_of(page, "#state").await;
            let instance = text_of(page, "#instance").await;
            (state == "connected" && !instance.is_empty() && instance != "?").then_some(instance)
        })
        .await
    }

    /// Types `text` into a signed-in chat page's message field and sends it.
    pub async fn send_text(page: &Client, text: &str) {
        page.find(Locator::Id("text"))
            .await
            .expect("no #text on the page")
            .send_keys(text)
            .await
            .expect("typing into #text");
        page.find(Locator::Id("send"))
            .await
            .expect("no #send on the page")
            .click()
            .await
            .expect("clicking #send");
    }

    /// The names in the chat page's online list.
    pub async fn online(page: &Client) -> Vec<String> {
        texts_of(page, "#members li").await
    }

    /// The texts of the messages the chat page shows, in order.
    pub async fn messages(page: &Client) -> Vec<String> {
        texts_of(page, "#log li.message").await
    }

    /// The texts of every element `css` matches, in order (none while the page loads).
    async fn texts_of(page: &Client, css: &str) -> Vec<String> {
        let mut texts = Vec::new();
        for item in page.find_all(Locator::Css(css)).await.unwrap_or_default() {
            texts.push(item.text().await.unwrap_or_default());
        }
        texts
    }
}
