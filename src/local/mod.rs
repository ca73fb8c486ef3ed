//! The local emulation layer: what `realtime-stack up --local`, `destroy --local` and
//! the instance-boot tests run on this machine in place of what LocalStack records but
//! never runs. LocalStack stands for the AWS APIs; this layer stands for the machines:
//!
//! - EC2 instances: [`LocalInstance`] runs an instance's real user-data, read back from
//!   LocalStack, in a sandbox directory that stands for its root file system, with
//!   `scripts/local-service-manager.sh` standing for systemd (the boot service and the
//!   chat-server run detached, the server on a loopback port of its own);
//! - the instance metadata service: [`Imds`], an IMDSv2 emulator per instance serving its
//!   id and its tags as LocalStack holds them, the Redis endpoint tag mapped to the
//!   local Redis;
//! - ElastiCache: [`LocalRedis`], a TLS-only redis-server with a CA generated for it,
//!   since the rendered user-data says `rediss://`, or with `redis.shards` above 1 a
//!   Redis Cluster of them;
//! - EC2 and the load balancer at work: the emulator ([`emulator`]), a process per stack
//!   that boots the instances LocalStack says run and proxies one port to them;
//! - for the commands, [`Environment`]: the stack aimed at LocalStack, and the
//!   [`crate::platform::Platform`] that answers from what runs here;
//! - the identity service, for `chat.auth.generate`: a development key pair
//!   ([`dev_private_key`]).
//!
//! Nothing here is on the AWS path: the commands reach it only through `--local`.

mod dev_key;
pub mod emulator;
mod endpoint;
mod environment;
mod imds;
mod instance;
mod proxy;
mod redis;
mod state;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::programs;

pub use dev_key::private_key_path as dev_private_key;
pub use environment::{EMULATOR, Environment};
pub use imds::Imds;
pub use instance::{
    BootSettings, HEALTHY_WITHIN, LocalInstance, Stop, server_pid, stop_services, user_data,
};
pub use redis::LocalRedis;
pub use state::{StateDir, repository};

/// The programs `--local` runs on this machine, each with the Debian package it comes in:
/// the local redis-server, the redis-cli that joins several into a cluster, their
/// certificates, and what the instances' boot script and `scripts/localstack.sh` call.
const LOCAL_PROGRAMS: &[(&str, &str)] = &[
    ("redis-server", "redis-server"),
    ("redis-cli", "redis-tools"),
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
    let missing: Vec<(&str, &str)> = LOCAL_PROGRAMS
        .iter()
        .copied()
        .filter(|(program, _)| !programs::on_path(program))
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

/// An `SdkConfig` for LocalStack at `endpoint`, with its test credentials.
pub async fn localstack_config(endpoint: &str, region: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new(region.to_owned()))
        .credentials_provider(aws_sdk_sts::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "realtime-stack-local",
        ))
        .retry_config(crate::aws::sdk_retries())
        .load()
        .await
}

/// A free loopback port for a program started here that binds it itself (a server, the
/// local Redis). Taken at random below the kernel's ephemeral range: ports in that range
/// are what `bind(0)` hands out - to this process's own listeners too (the metadata
/// services, the load balancer) - so one picked there could be taken again before the
/// program binds it, as a test run once showed.
pub fn free_port() -> Result<u16> {
    const LOWEST: u16 = 10_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let span = u64::from(ephemeral_start.saturating_sub(LOWEST).max(1));
    let random = RandomState::new();
    for attempt in 0..200u64 {
        let port = LOWEST + u16::try_from(random.hash_one(attempt) % span)?;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!(
        "no free loopback port between {LOWEST} and {ephemeral_start}: is the loopback \
         interface up?"
    )
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

/// Whether `pid` is alive and its command line contains `needle`: a pid can be reused,
/// and an exited process nobody has reaped yet has an empty command line.
pub fn process_is(pid: u32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(needle))
}

/// Sends `signal` to `pid`, then polls until it is gone; false if it is still there
/// after `within`.
pub(crate) fn signal_and_wait(pid: u32, needle: &str, signal: &str, within: Duration) -> bool {
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
