//! An EC2 instance booted on this machine. Its user-data, read back from LocalStack as
//! EC2 hands it to cloud-init, runs with `sh` in a sandbox directory that stands for its
//! root file system, with an [`Imds`] of its own and `scripts/local-service-manager.sh`
//! standing for systemd. The user-data installs and starts the boot service, which keeps
//! trying until the chat-server runs, as it does on EC2.
//!
//! A sandbox holds `user-data.sh`, `console.log` (what EC2's console would show: the
//! user-data's and the boot service's lines), the service manager, and `root/`
//! (`RTS_ROOT`: `opt/`, `etc/`, `run/<unit>.pid` and `var/log/chat-server.log`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{Imds, http_status, process_is};
use crate::aws::Call;

const SERVICE_MANAGER: &str = include_str!("../../scripts/local-service-manager.sh");

/// How long a booted server may take to answer `/healthz` with 200: it connects to Redis
/// first; a loaded two-core machine is slow.
pub const HEALTHY_WITHIN: Duration = Duration::from_secs(60);

/// What differs between instances booted on one machine.
#[derive(Debug, Clone)]
pub struct BootSettings {
    /// Where the server listens, instead of the app port on every interface.
    pub port: u16,
    /// The local Redis (`127.0.0.1:<port>`) the endpoint tag stands for.
    pub redis_address: String,
    /// The local Redis's test CA, for `rediss://`.
    pub redis_ca_file: Option<PathBuf>,
    /// LocalStack: where the boot program fetches the binary instead of the regional S3
    /// endpoint.
    pub s3_endpoint: String,
    /// The longest pause between two boot attempts (the program's own is a minute).
    pub max_pause_seconds: Option<u32>,
}

/// An instance whose user-data has run here. Its metadata service lives as long as this
/// value: the boot service may still be waiting for its Redis tag.
pub struct LocalInstance {
    pub id: String,
    pub port: u16,
    pub sandbox: PathBuf,
    _imds: Imds,
}

impl LocalInstance {
    /// Boots `id` in `sandbox`: its user-data run with `sh` against an [`Imds`] of its
    /// own, as cloud-init would, with a clean environment. Returns once the user-data
    /// has installed and started the boot service; the server may not run yet
    /// ([`LocalInstance::wait_healthy`]).
    pub async fn boot(
        ec2: &aws_sdk_ec2::Client,
        autoscaling: &aws_sdk_autoscaling::Client,
        id: &str,
        sandbox: &Path,
        settings: &BootSettings,
    ) -> Result<LocalInstance> {
        let script = user_data(ec2, id).await?;
        let root = sandbox.join("root");
        std::fs::create_dir_all(&root)
            .with_context(|| format!("cannot create the sandbox {}", root.display()))?;
        let script_path = sandbox.join("user-data.sh");
        std::fs::write(&script_path, script)?;
        let manager = sandbox.join("local-service-manager.sh");
        std::fs::write(&manager, SERVICE_MANAGER)?;
        std::fs::set_permissions(&manager, std::fs::Permissions::from_mode(0o755))?;
        let console_path = sandbox.join("console.log");
        let console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&console_path)
            .with_context(|| format!("cannot open {}", console_path.display()))?;

        let imds = Imds::start(
            ec2.clone(),
            autoscaling.clone(),
            id,
            &settings.redis_address,
        )
        .await?;
        let mut command = tokio::process::Command::new("sh");
        command
            .arg(&script_path)
            .current_dir(sandbox)
            // cloud-init runs user-data with a minimal environment; ours must not leak in
            // (CHAT_*, REDIS_*, AWS_* would reach the server).
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RTS_IMDS_URL", &imds.url)
            .env("RTS_S3_ENDPOINT", &settings.s3_endpoint)
            .env("RTS_ROOT", &root)
            .env("RTS_CONSOLE", &console_path)
            .env("RTS_SYSTEMCTL", &manager)
            .env("RTS_LOCAL_LISTEN", format!("127.0.0.1:{}", settings.port))
            .stdin(Stdio::null())
            .stdout(console.try_clone()?)
            .stderr(console)
            .kill_on_drop(true);
        if let Some(ca) = &settings.redis_ca_file {
            command.env("RTS_LOCAL_REDIS_CA_FILE", ca);
        }
        if let Some(seconds) = settings.max_pause_seconds {
            command.env("RTS_MAX_PAUSE_SECONDS", seconds.to_string());
        }
        // The user-data only writes files and starts a service: seconds at most.
        let limit = Duration::from_secs(60);
        let status = tokio::time::timeout(limit, command.status())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the user-data of {id} did not finish within {}s (console: {})",
                    limit.as_secs(),
                    console_path.display()
                )
            })?
            .context("could not run `sh`")?;
        if !status.success() {
            bail!(
                "the user-data of {id} failed ({status}); its console output ({}):\n{}",
                console_path.display(),
                console_of(sandbox).trim_end()
            );
        }
        Ok(LocalInstance {
            id: id.to_owned(),
            port: settings.port,
            sandbox: sandbox.to_owned(),
            _imds: imds,
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// What EC2's console would show: the user-data's and the boot service's lines.
    pub fn console(&self) -> String {
        console_of(&self.sandbox)
    }

    pub fn log_file(&self) -> PathBuf {
        self.sandbox.join("root/var/log/chat-server.log")
    }

    /// Waits until the server answers `/healthz` with 200 (it is connected to Redis);
    /// fails with the console's last lines when it does not, and with the server's log
    /// when it exits.
    pub async fn wait_healthy(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        let mut ever_ran = false;
        loop {
            let last = match http_status(self.port, "/healthz").await {
                Ok(200) => return Ok(()),
                Ok(status) => format!("HTTP {status}"),
                Err(err) => format!("{err:#}"),
            };
            let running = server_pid(&self.sandbox).is_some();
            if ever_ran && !running {
                bail!(
                    "the chat-server of {} exited; its log ({}):\n{}",
                    self.id,
                    self.log_file().display(),
                    std::fs::read_to_string(self.log_file()).unwrap_or_default()
                );
            }
            ever_ran |= running;
            if Instant::now() >= deadline {
                bail!(
                    "the chat-server of {} did not answer /healthz with 200 within {}s (last: {last}); \
                     the end of its console:\n{}",
                    self.id,
                    within.as_secs(),
                    tail(&self.console(), 15)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn console_of(sandbox: &Path) -> String {
    std::fs::read_to_string(sandbox.join("console.log")).unwrap_or_default()
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

/// How to stop an instance's services.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// As systemd at shutdown: SIGTERM, then the unit's `TimeoutStopSec` (the drain and a
    /// margin) before SIGKILL. What an EC2 termination does.
    Graceful,
    /// SIGTERM twice, which ends the server's drain at once: nobody is left to serve.
    Now,
}

/// Stops the boot service and the chat-server of `sandbox` through the service manager,
/// as `systemctl stop` would; nothing to do when none runs. Blocks until they are gone.
pub fn stop_services(sandbox: &Path, how: Stop) -> Result<()> {
    let manager = sandbox.join("local-service-manager.sh");
    if !manager.exists() {
        return Ok(());
    }
    let mut command = std::process::Command::new("sh");
    command
        .arg(&manager)
        .arg("stop")
        .env("RTS_ROOT", sandbox.join("root"))
        .stdin(Stdio::null());
    if let Stop::Graceful = how {
        let unit =
            std::fs::read_to_string(sandbox.join("root/etc/systemd/system/chat-server.service"))
                .unwrap_or_default();
        let timeout = unit
            .lines()
            .find_map(|line| line.strip_prefix("TimeoutStopSec="))
            .unwrap_or("90");
        command.env("RTS_STOP_TIMEOUT", timeout.trim());
    }
    let output = command.output().context("could not run `sh`")?;
    if !output.status.success() {
        bail!(
            "could not stop the services in {}: {}",
            sandbox.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
