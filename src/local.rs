//! Booting an instance on this machine: what `realtime-stack up --local` and the
//! instance-boot tests do in place of EC2, which LocalStack records but never runs.
//!
//! An instance booted here runs its real user-data, read back from LocalStack
//! (`DescribeInstanceAttribute userData`) as EC2 hands it to cloud-init, with `sh`, in a
//! sandbox directory that stands for its root file system. The script runs unchanged:
//! IMDSv2, the bounded wait for the Redis endpoint tag, the download from S3 by the
//! presigned link, the SHA-256 check. Three things around it are stood in for:
//!
//! - the instance metadata service: [`Imds`], an IMDSv2 emulator on a loopback port that
//!   answers the token call and serves the instance's id and its tags as LocalStack holds
//!   them, with the Redis endpoint tag's value replaced by a local redis-server's address;
//! - systemd: `scripts/local-service-manager.sh` (through `RTS_SYSTEMCTL`), which starts
//!   the installed binary detached, with the environment file the user-data wrote, on a
//!   loopback port of its own (the local "instances" share one network). The systemd
//!   unit the user-data writes is left unused here: its sandboxing needs root and a
//!   systemd to drive;
//! - ElastiCache: [`LocalRedis`], a TLS-only redis-server with a CA generated for it,
//!   since the rendered user-data says `rediss://`.
//!
//! A sandbox holds `user-data.sh`, `console.log` (the script's output, as EC2's console
//! would show it), the service manager, and `root/` (`RTS_ROOT`: `opt/`, `etc/`, and the
//! server's `run/chat-server.pid` and `var/log/chat-server.log`).

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::artifact::sha256_hex;
use crate::aws::Call;
use crate::names::REDIS_ENDPOINT_TAG;

const SERVICE_MANAGER: &str = include_str!("../scripts/local-service-manager.sh");

/// How long a booted server may take to answer `/healthz` with 200: it connects to Redis
/// first; a loaded two-core machine is slow.
pub const HEALTHY_WITHIN: Duration = Duration::from_secs(60);

/// The programs `--local` runs on this machine, each with the Debian package it comes in:
/// the local redis-server and its certificates, and what the instances' boot script and
/// `scripts/localstack.sh` call.
const LOCAL_PROGRAMS: &[(&str, &str)] = &[
    ("redis-server", "redis-server"),
    ("openssl", "openssl"),
    ("curl", "curl"),
    ("sha256sum", "coreutils"),
    ("sh", "dash"),
    ("bash", "bash"),
    ("python3", "python3"),
];

/// Fails, naming what is missing and how to install it, unless every program `--local`
/// needs is on `PATH`. Called before anything else, so a missing one creates nothing.
pub fn check_programs() -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let on_path = |program: &str| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
    };
    let missing: Vec<(&str, &str)> = LOCAL_PROGRAMS
        .iter()
        .copied()
        .filter(|(program, _)| !on_path(program))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let programs: Vec<&str> = missing.iter().map(|(program, _)| *program).collect();
    let mut packages: Vec<&str> = missing.iter().map(|(_, package)| *package).collect();
    packages.dedup();
    bail!(
        "--local runs on this machine and needs {} which {} not on PATH; nothing was created. \
         Install with `scripts/prerequisites.sh demo`, or `sudo apt-get install -y {}`",
        programs.join(", "),
        if programs.len() == 1 { "is" } else { "are" },
        packages.join(" ")
    )
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .context("cannot bind a loopback port: is the loopback interface up?")?;
    Ok(listener.local_addr()?.port())
}

// ---------------------------------------------------------------- instance metadata

/// An IMDSv2 emulator for one instance on a loopback port; stops when dropped.
pub struct Imds {
    pub url: String,
    server: tokio::task::JoinHandle<()>,
}

struct ImdsState {
    ec2: aws_sdk_ec2::Client,
    instance_id: String,
    redis_address: String,
    tokens: Mutex<HashSet<String>>,
}

impl Imds {
    /// Serves `instance_id`'s metadata, its tags read from `ec2` at each request (so a
    /// tag written or removed later shows, as on EC2), the Redis endpoint tag's value
    /// replaced by `redis_address` (`127.0.0.1:<port>`).
    pub async fn start(
        ec2: aws_sdk_ec2::Client,
        instance_id: &str,
        redis_address: &str,
    ) -> Result<Imds> {
        let state = Arc::new(ImdsState {
            ec2,
            instance_id: instance_id.to_owned(),
            redis_address: redis_address.to_owned(),
            tokens: Mutex::new(HashSet::new()),
        });
        let app = Router::new()
            .route("/latest/api/token", put(issue_token))
            .route("/latest/meta-data/{*path}", get(metadata))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind a loopback port for the metadata service")?;
        let url = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(async move {
            // Ends only when the task is aborted (on drop); accept errors are retried by axum.
            let _ = axum::serve(listener, app).await;
        });
        Ok(Imds { url, server })
    }
}

impl Drop for Imds {
    fn drop(&mut self) {
        self.server.abort();
    }
}

const TOKEN_TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";

/// `PUT /latest/api/token`: like IMDS, a TTL header is required.
async fn issue_token(
    State(state): State<Arc<ImdsState>>,
    headers: HeaderMap,
) -> (StatusCode, String) {
    if !headers.contains_key(TOKEN_TTL_HEADER) {
        return (
            StatusCode::BAD_REQUEST,
            format!("missing {TOKEN_TTL_HEADER}"),
        );
    }
    let mut tokens = state.tokens.lock().expect("token set lock");
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let token = sha256_hex(format!("{}:{nanos}:{}", state.instance_id, tokens.len()));
    tokens.insert(token.clone());
    (StatusCode::OK, token)
}

/// `GET /latest/meta-data/...`: 401 without a token this service issued, as IMDSv2
/// answers when tokens are required; `instance-id` and `tags/instance/<key>` are served.
async fn metadata(
    State(state): State<Arc<ImdsState>>,
    UrlPath(path): UrlPath<String>,
    headers: HeaderMap,
) -> (StatusCode, String) {
    let token_ok = headers
        .get(TOKEN_HEADER)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|token| state.tokens.lock().expect("token set lock").contains(token));
    if !token_ok {
        return (StatusCode::UNAUTHORIZED, "IMDSv2 token required".into());
    }
    if path == "instance-id" {
        return (StatusCode::OK, state.instance_id.clone());
    }
    let Some(key) = path.strip_prefix("tags/instance/") else {
        return (StatusCode::NOT_FOUND, "not found".into());
    };
    match instance_tag(&state, key).await {
        Ok(Some(_)) if key == REDIS_ENDPOINT_TAG => (StatusCode::OK, state.redis_address.clone()),
        Ok(Some(value)) => (StatusCode::OK, value),
        Ok(None) => (StatusCode::NOT_FOUND, "not found".into()),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}")),
    }
}

async fn instance_tag(state: &ImdsState, key: &str) -> Result<Option<String>> {
    let described = state
        .ec2
        .describe_instances()
        .instance_ids(&state.instance_id)
        .send()
        .await
        .call(format!("DescribeInstances {}", state.instance_id))?;
    Ok(described
        .reservations()
        .iter()
        .flat_map(|reservation| reservation.instances())
        .flat_map(|instance| instance.tags())
        .find(|tag| tag.key() == Some(key))
        .and_then(|tag| tag.value().map(str::to_owned)))
}

// ---------------------------------------------------------------- boot

/// What differs between instances booted on one machine.
#[derive(Debug, Clone)]
pub struct BootSettings {
    /// Where the server listens, instead of the app port on every interface.
    pub port: u16,
    /// The local Redis (`127.0.0.1:<port>`) the endpoint tag stands for.
    pub redis_address: String,
    /// The local Redis's test CA, for `rediss://`.
    pub redis_ca_file: Option<PathBuf>,
    /// Bounds the user-data's wait for the Redis tag (its own default is an hour).
    pub tag_wait_seconds: Option<u32>,
}

/// An instance whose user-data has run to the end on this machine.
#[derive(Debug, Clone)]
pub struct Booted {
    pub instance_id: String,
    pub port: u16,
    pub sandbox: PathBuf,
}

impl Booted {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    pub fn log_file(&self) -> PathBuf {
        self.sandbox.join("root/var/log/chat-server.log")
    }

    pub fn console(&self) -> String {
        std::fs::read_to_string(self.sandbox.join("console.log")).unwrap_or_default()
    }
}

/// The user-data `instance_id` was launched with, as EC2 (LocalStack) holds it.
pub async fn user_data(ec2: &aws_sdk_ec2::Client, instance_id: &str) -> Result<String> {
    let described = ec2
        .describe_instance_attribute()
        .instance_id(instance_id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .call(format!("DescribeInstanceAttribute {instance_id} userData"))?;
    let encoded = described
        .user_data()
        .and_then(|value| value.value())
        .with_context(|| format!("instance {instance_id} has no user-data: run up again"))?;
    let bytes = aws_smithy_types::base64::decode(encoded)
        .with_context(|| format!("the user-data of {instance_id} is not base64"))?;
    String::from_utf8(bytes).with_context(|| format!("the user-data of {instance_id} is not text"))
}

/// Boots `instance_id` in `sandbox`: its user-data run with `sh` against an [`Imds`] of
/// its own, as cloud-init would, with a clean environment. Returns once the script has
/// ended; the server it started may not be ready yet ([`wait_healthy`]). On failure the
/// error carries the script's console output, whose last line says why.
pub async fn boot(
    ec2: &aws_sdk_ec2::Client,
    instance_id: &str,
    sandbox: &Path,
    settings: &BootSettings,
) -> Result<Booted> {
    let script = user_data(ec2, instance_id).await?;
    let root = sandbox.join("root");
    std::fs::create_dir_all(&root)
        .with_context(|| format!("cannot create the sandbox {}", root.display()))?;
    let script_path = sandbox.join("user-data.sh");
    std::fs::write(&script_path, script)?;
    let manager = sandbox.join("local-service-manager.sh");
    std::fs::write(&manager, SERVICE_MANAGER)?;
    std::fs::set_permissions(&manager, std::fs::Permissions::from_mode(0o755))?;
    let console_path = sandbox.join("console.log");
    let console = std::fs::File::create(&console_path)?;

    let imds = Imds::start(ec2.clone(), instance_id, &settings.redis_address).await?;
    let mut command = tokio::process::Command::new("sh");
    command
        .arg(&script_path)
        .current_dir(sandbox)
        // cloud-init runs user-data with a minimal environment; ours must not leak in
        // (CHAT_*, REDIS_*, AWS_* would reach the server).
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RTS_IMDS_URL", &imds.url)
        .env("RTS_ROOT", &root)
        .env("RTS_SYSTEMCTL", &manager)
        .env("RTS_LOCAL_LISTEN", format!("127.0.0.1:{}", settings.port))
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console)
        .kill_on_drop(true);
    if let Some(ca) = &settings.redis_ca_file {
        command.env("RTS_LOCAL_REDIS_CA_FILE", ca);
    }
    if let Some(seconds) = settings.tag_wait_seconds {
        command.env("RTS_TAG_WAIT_SECONDS", seconds.to_string());
    }
    // The script bounds its own waits (the tag, each download attempt); this only stops a
    // hung script from hanging the caller.
    let limit = Duration::from_secs(u64::from(settings.tag_wait_seconds.unwrap_or(3600)) + 600);
    let status = tokio::time::timeout(limit, command.status())
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the user-data of {instance_id} did not finish within {}s (console: {})",
                limit.as_secs(),
                console_path.display()
            )
        })?
        .context("could not run `sh`")?;
    drop(imds);
    let booted = Booted {
        instance_id: instance_id.to_owned(),
        port: settings.port,
        sandbox: sandbox.to_owned(),
    };
    if !status.success() {
        bail!(
            "the user-data of {instance_id} failed ({status}); its console output ({}):\n{}",
            console_path.display(),
            booted.console().trim_end()
        );
    }
    Ok(booted)
}

/// Waits until the server of `booted` answers `/healthz` with 200 (it is connected to
/// Redis); fails early, with its log, if it exits.
pub async fn wait_healthy(booted: &Booted, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let last = match http_status(booted.port, "/healthz").await {
            Ok(200) => return Ok(()),
            Ok(status) => format!("HTTP {status}"),
            Err(err) => format!("{err:#}"),
        };
        if server_pid(&booted.sandbox).is_none() {
            bail!(
                "the chat-server of {} exited; its log ({}):\n{}",
                booted.instance_id,
                booted.log_file().display(),
                std::fs::read_to_string(booted.log_file()).unwrap_or_default()
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "the chat-server of {} did not answer /healthz with 200 within {}s (last: {last}); \
                 see its log {}",
                booted.instance_id,
                within.as_secs(),
                booted.log_file().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The status code of `GET <path>` on a loopback port. A few lines of HTTP/1.0 rather
/// than an HTTP client crate: one status line is all that is read.
pub async fn http_status(port: u16, path: &str) -> Result<u16> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .context("no answer within 5s")?
        .with_context(|| format!("GET http://127.0.0.1:{port}{path}"))?;
    let status_line = String::from_utf8_lossy(&response);
    status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("GET http://127.0.0.1:{port}{path}: not an HTTP answer"))
}

/// The pid of the chat-server running in `sandbox`, if it runs.
pub fn server_pid(sandbox: &Path) -> Option<u32> {
    let root = sandbox.join("root");
    let pid = std::fs::read_to_string(root.join("run/chat-server.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let binary = root.join("opt/realtime-stack/chat-server");
    process_is(pid, &binary.to_string_lossy()).then_some(pid)
}

/// Stops the chat-server booted in `sandbox`, through the service manager, as
/// `systemctl stop` would; nothing to do when none runs. Blocks for a few seconds at most.
pub fn stop_server(sandbox: &Path) -> Result<()> {
    let manager = sandbox.join("local-service-manager.sh");
    if !manager.exists() {
        return Ok(());
    }
    let output = std::process::Command::new("sh")
        .arg(&manager)
        .arg("stop")
        .env("RTS_ROOT", sandbox.join("root"))
        .stdin(Stdio::null())
        .output()
        .context("could not run `sh`")?;
    if !output.status.success() {
        bail!(
            "could not stop the chat-server in {}: {}",
            sandbox.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- processes

/// Whether `pid` is alive and its command line contains `needle`: a pid can be reused,
/// and an exited process nobody has reaped yet has an empty command line.
fn process_is(pid: u32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(needle))
}

/// Sends `signal` to `pid`, then polls until it is gone; false if it is still there
/// after `within`.
fn signal_and_wait(pid: u32, needle: &str, signal: &str, within: Duration) -> bool {
    let _ = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + within;
    while process_is(pid, needle) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

// ---------------------------------------------------------------- redis

/// A TLS-only redis-server on a loopback port, detached (it outlives `up --local`), with
/// its certificates, log and pid file in one directory. It stands for ElastiCache with
/// transit encryption.
#[derive(Debug, Clone)]
pub struct LocalRedis {
    pub port: u16,
    pub pid: u32,
    pub dir: PathBuf,
}

impl LocalRedis {
    /// Starts redis-server on a free loopback port, with a CA and a certificate for
    /// 127.0.0.1 generated into `dir` unless they are already there. Blocks until it
    /// accepts connections.
    pub fn start(dir: &Path) -> Result<LocalRedis> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        if !dir.join("ca.crt").exists() || !dir.join("redis.crt").exists() {
            generate_certificates(dir)?;
        }
        // A free port can be taken between probing and binding: try another.
        let mut last_error = None;
        for _ in 0..5 {
            match Self::launch(dir, free_port()?) {
                Ok(redis) => return Ok(redis),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    /// The redis-server recorded in `dir`, if it still runs there on `port`.
    pub fn running(dir: &Path, port: u16) -> Option<LocalRedis> {
        let pid = std::fs::read_to_string(dir.join("redis.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        process_is(pid, "redis-server").then(|| LocalRedis {
            port,
            pid,
            dir: dir.to_owned(),
        })
    }

    fn launch(dir: &Path, port: u16) -> Result<LocalRedis> {
        let log = dir.join("redis.log");
        let pid_file = dir.join("redis.pid");
        let _ = std::fs::remove_file(&log);
        let _ = std::fs::remove_file(&pid_file);
        let path = |name: &str| dir.join(name).display().to_string();
        // daemonize: the server is re-parented away from us, so it outlives `up --local`
        // and nobody is left to reap in a test process.
        let status = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", "0"])
            .args(["--tls-port", &port.to_string()])
            .args(["--tls-cert-file", &path("redis.crt")])
            .args(["--tls-key-file", &path("redis.key")])
            .args(["--tls-ca-cert-file", &path("ca.crt")])
            .args(["--tls-auth-clients", "no"])
            .args(["--dir", &path("")])
            .args(["--logfile", &path("redis.log")])
            .args(["--pidfile", &path("redis.pid")])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .context("redis-server not found: apt-get install redis-server")?;
        if !status.success() {
            bail!(
                "redis-server failed to start ({status}); see {}",
                log.display()
            );
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let logged = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(redis) = Self::running(dir, port)
                && logged.contains("Ready to accept connections")
                && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            {
                return Ok(redis);
            }
            if logged.contains("# Failed listening") || logged.contains("Address already in use") {
                bail!("redis-server could not listen on port {port}:\n{logged}");
            }
            if Instant::now() >= deadline {
                bail!(
                    "redis-server did not accept connections on 127.0.0.1:{port} within 30s; its log ({}):\n{logged}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:<port>`: what the Redis endpoint tag stands for locally.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The CA that signed the server's certificate (`REDIS_CA_FILE`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Stops it (SIGTERM, then SIGKILL) if it still runs.
    pub fn stop(&self) -> Result<()> {
        if !process_is(self.pid, "redis-server") {
            return Ok(());
        }
        if !signal_and_wait(self.pid, "redis-server", "-TERM", Duration::from_secs(10))
            && !signal_and_wait(self.pid, "redis-server", "-KILL", Duration::from_secs(5))
        {
            bail!(
                "redis-server (pid {}) is still running: stop it with `kill -9 {}`",
                self.pid,
                self.pid
            );
        }
        Ok(())
    }
}

/// A CA, and a certificate for 127.0.0.1 signed by it, made with `openssl`.
fn generate_certificates(dir: &Path) -> Result<()> {
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )?;
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=realtime-stack-local-ca",
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "redis.key",
            "-out",
            "redis.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "redis.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-out",
            "redis.crt",
            "-extfile",
            "ext.cnf",
        ],
    ];
    for args in steps {
        let output = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .context("openssl not found: apt-get install openssl")?;
        if !output.status.success() {
            bail!(
                "openssl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput;
    use aws_sdk_ec2::types::{Instance, Reservation, Tag};
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    use super::*;

    /// One HTTP/1.0 exchange with the emulator: status and body.
    async fn request(
        imds: &Imds,
        method: &str,
        path: &str,
        header: Option<(&str, &str)>,
    ) -> (u16, String) {
        let addr = imds.url.strip_prefix("http://").unwrap();
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n");
        if let Some((name, value)) = header {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
        (status, body)
    }

    #[tokio::test]
    async fn the_metadata_service_wants_a_token_and_maps_the_redis_tag_to_the_local_redis() {
        let described = mock!(aws_sdk_ec2::Client::describe_instances).then_output(|| {
            let tag = |key: &str, value: &str| Tag::builder().key(key).value(value).build();
            DescribeInstancesOutput::builder()
                .reservations(
                    Reservation::builder()
                        .instances(
                            Instance::builder()
                                .instance_id("i-1")
                                .tags(tag(
                                    REDIS_ENDPOINT_TAG,
                                    "master.chat-redis.use1.cache.amazonaws.com:6379",
                                ))
                                .tags(tag("Name", "chat-instance-0"))
                                .build(),
                        )
                        .build(),
                )
                .build()
        });
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&described]);
        let imds = Imds::start(ec2, "i-1", "127.0.0.1:7000").await.unwrap();

        assert_eq!(
            request(&imds, "GET", "/latest/meta-data/instance-id", None)
                .await
                .0,
            401
        );
        assert_eq!(
            request(&imds, "PUT", "/latest/api/token", None).await.0,
            400,
            "a TTL is required"
        );
        let (status, token) = request(
            &imds,
            "PUT",
            "/latest/api/token",
            Some((TOKEN_TTL_HEADER, "300")),
        )
        .await;
        assert_eq!(status, 200);
        let with_token = Some((TOKEN_HEADER, token.as_str()));
        assert_eq!(
            request(&imds, "GET", "/latest/meta-data/instance-id", with_token).await,
            (200, "i-1".to_owned())
        );
        let redis_tag = format!("/latest/meta-data/tags/instance/{REDIS_ENDPOINT_TAG}");
        assert_eq!(
            request(&imds, "GET", &redis_tag, with_token).await,
            (200, "127.0.0.1:7000".to_owned())
        );
        assert_eq!(
            request(
                &imds,
                "GET",
                "/latest/meta-data/tags/instance/Name",
                with_token
            )
            .await,
            (200, "chat-instance-0".to_owned())
        );
        assert_eq!(
            request(
                &imds,
                "GET",
                "/latest/meta-data/tags/instance/absent",
                with_token
            )
            .await
            .0,
            404
        );
        assert_eq!(
            request(
                &imds,
                "GET",
                "/latest/meta-data/instance-id",
                Some((TOKEN_HEADER, "forged"))
            )
            .await
            .0,
            401
        );
    }
}
