//! The local emulator: one process per stack (`realtime-stack local-emulator`, started
//! by `up --local`, stopped by `destroy --local`) doing on this machine what AWS does
//! with what LocalStack only records.
//!
//! - EC2: every running instance of the stack is booted here from its user-data (with
//!   its own metadata service, which lives as long as the instance); an instance that is
//!   terminated or stopped has its services stopped as an OS shutdown would, SIGTERM and
//!   the unit's stop timeout, so its server drains.
//! - The load balancer: it follows the target group's registrations, health-checks the
//!   targets with the group's own settings (path, interval, timeout, thresholds), proxies
//!   one loopback port to the healthy ones ([`super::proxy`]), and keeps a deregistered
//!   target's open connections for the deregistration delay before it cuts them.
//! - The load balancer's part in the Auto Scaling group's health checks: a target found
//!   unhealthy is reported to the group (SetInstanceHealth), which replaces it once its
//!   grace period is over, as AWS does with the ELB health check type.
//!
//! Every round it writes what the load balancer sees to `status.json`, which the
//! `--local` commands read where they would call DescribeTargetHealth on AWS.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aws_sdk_ec2::types::InstanceStateName;
use aws_sdk_elasticloadbalancingv2::types::TargetGroup;

use super::environment::stack_at;
use super::proxy::{self, Targets};
use super::state::{State, StateDir, Status, TargetStatus, now_millis};
use super::{BootSettings, LocalInstance, LocalRedis, Stop, free_port, http_status, stop_services};
use crate::engine::Changes;
use crate::spec::StackSpec;
use crate::stack::Stack;
use crate::{instances, load_balancer};

/// How often LocalStack is read.
const ROUND: Duration = Duration::from_millis(500);

/// `realtime-stack local-emulator`: what it needs to emulate one stack.
#[derive(clap::Args, Debug, Clone)]
pub struct EmulatorArgs {
    /// The stack file
    #[arg(long)]
    pub file: PathBuf,
    /// The stack's state directory
    #[arg(long)]
    pub state_dir: PathBuf,
    /// LocalStack
    #[arg(long)]
    pub endpoint: String,
    #[arg(long)]
    pub region: String,
}

/// What the emulator shares between its loops.
struct Emulator {
    stack: Stack,
    state_dir: StateDir,
    endpoint: String,
    redis: LocalRedis,
    /// What the instances' Redis endpoint tag stands for here: the primary endpoint, or a
    /// cluster's first server.
    redis_address: String,
    /// Instances booted here, with the loopback port their server listens on.
    booted: Mutex<HashMap<String, (LocalInstance, u16)>>,
    targets: Arc<Targets>,
    /// What the load balancer saw at its last round, once it has had one.
    status: Mutex<Option<Status>>,
}

/// Runs the emulator until SIGTERM or SIGINT; then it stops every instance it booted.
pub async fn run(args: EmulatorArgs) -> Result<()> {
    let spec = StackSpec::load(&args.file)?;
    let stack = stack_at(spec, &args.endpoint, &args.region, Changes::default()).await;
    let state_dir = StateDir::at(args.state_dir.clone());
    let mut state = state_dir.load()?;
    let redis = LocalRedis::running(&state_dir.redis(), &state.redis_ports())
        .context("the stack's local Redis is not running: run `up --local` again")?;
    let listener = bind_load_balancer(&mut state).await?;
    // A cluster's clients start from any node; a group with cluster mode off is reached
    // through its primary endpoint, which follows a failover.
    let (redis_address, primary_endpoint) = if redis.is_cluster() {
        (redis.address(), None)
    } else {
        let endpoint = bind_recorded(
            &mut state.redis_endpoint_port,
            "the local Redis's primary endpoint",
        )
        .await?;
        let address = endpoint.local_addr()?.to_string();
        (
            address,
            Some(tokio::spawn(super::endpoint::serve(
                endpoint,
                redis.clone(),
            ))),
        )
    };
    state_dir.update(|recorded| {
        recorded.load_balancer_port = state.load_balancer_port;
        recorded.redis_endpoint_port = state.redis_endpoint_port;
        recorded.emulator_pid = Some(std::process::id());
        Ok(())
    })?;
    let emulator = Arc::new(Emulator {
        stack,
        state_dir,
        endpoint: args.endpoint,
        redis,
        redis_address,
        booted: Mutex::default(),
        targets: Arc::default(),
        status: Mutex::default(),
    });
    log(&format!(
        "emulating stack {} on {}; load balancer on http://{}/",
        emulator.stack.spec.name,
        emulator.endpoint,
        listener.local_addr()?
    ));
    let proxy = tokio::spawn(proxy::serve(listener, emulator.targets.clone()));
    let instances = tokio::spawn(follow_instances(emulator.clone()));
    let load_balancer = tokio::spawn(follow_target_group(emulator.clone()));
    let heartbeat = tokio::spawn(write_status(emulator.clone()));
    wait_for_signal().await?;
    log("stopping");
    proxy.abort();
    if let Some(primary_endpoint) = primary_endpoint {
        primary_endpoint.abort();
    }
    instances.abort();
    load_balancer.abort();
    heartbeat.abort();
    let booted: Vec<(LocalInstance, u16)> = emulator
        .booted
        .lock()
        .expect("booted lock")
        .drain()
        .map(|(_, booted)| booted)
        .collect();
    for (instance, _) in booted {
        stop_services(&instance.sandbox, Stop::Now)?;
    }
    Ok(())
}

/// The load balancer's port: the one recorded, so that its URL stays the same, else a
/// new one.
async fn bind_load_balancer(state: &mut State) -> Result<tokio::net::TcpListener> {
    bind_recorded(&mut state.load_balancer_port, "the local load balancer").await
}

/// The loopback port `recorded`, so that what uses it keeps reaching it, else a new one,
/// recorded.
async fn bind_recorded(recorded: &mut Option<u16>, what: &str) -> Result<tokio::net::TcpListener> {
    if let Some(port) = *recorded
        && let Ok(listener) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await
    {
        return Ok(listener);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .with_context(|| format!("cannot bind a loopback port for {what}"))?;
    *recorded = Some(listener.local_addr()?.port());
    Ok(listener)
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

fn log(message: &str) {
    eprintln!("[{:.3}] {message}", now_millis() as f64 / 1000.0);
}

// ------------------------------------------------------------------------- EC2

/// Boots the stack's running instances and stops the ones EC2 no longer runs.
async fn follow_instances(emulator: Arc<Emulator>) {
    loop {
        if let Err(err) = instances_round(&emulator).await {
            log(&format!("instances: {err:#}"));
        }
        tokio::time::sleep(ROUND).await;
    }
}

async fn instances_round(emulator: &Arc<Emulator>) -> Result<()> {
    let running: HashSet<String> = instances::describe(&emulator.stack)
        .await?
        .into_iter()
        .filter(|instance| instance.state == InstanceStateName::Running)
        .map(|instance| instance.id)
        .collect();
    let (to_boot, to_stop): (Vec<String>, Vec<String>) = {
        let booted = emulator.booted.lock().expect("booted lock");
        (
            running
                .iter()
                .filter(|id| !booted.contains_key(*id))
                .cloned()
                .collect(),
            booted
                .keys()
                .filter(|id| !running.contains(*id))
                .cloned()
                .collect(),
        )
    };
    for id in to_boot {
        let port = port_for(emulator, &id)?;
        let settings = BootSettings {
            port,
            redis_address: emulator.redis_address.clone(),
            redis_ca_file: Some(emulator.redis.ca_file()),
            s3_endpoint: emulator.endpoint.clone(),
            max_pause_seconds: None,
        };
        let sandbox = emulator.state_dir.sandbox(&id);
        let clients = &emulator.stack.clients;
        match LocalInstance::boot(&clients.ec2, &clients.autoscaling, &id, &sandbox, &settings)
            .await
        {
            Ok(instance) => {
                log(&format!("booted {id} (server on port {port})"));
                emulator
                    .booted
                    .lock()
                    .expect("booted lock")
                    .insert(id, (instance, port));
            }
            Err(err) => log(&format!("booting {id}: {err:#}")),
        }
    }
    for id in to_stop {
        let Some((instance, _)) = emulator.booted.lock().expect("booted lock").remove(&id) else {
            continue;
        };
        log(&format!("{id} is no longer running: stopping its services"));
        // No new connection for a server about to drain: one it closed at once would
        // otherwise be sent straight back to it, if this round comes before the load
        // balancer's notices the deregistration that preceded the termination.
        emulator.targets.drain(&id);
        let emulator = emulator.clone();
        // As an OS shutdown: the server gets its whole drain, the other instances go on.
        tokio::task::spawn_blocking(move || {
            if let Err(err) = stop_services(&instance.sandbox, Stop::Graceful) {
                log(&format!("stopping {id}: {err:#}"));
            }
            forget_port(&emulator, &id);
            log(&format!("{id} stopped"));
        });
    }
    Ok(())
}

/// The recorded port of `id`'s server, or a new free one, recorded.
fn port_for(emulator: &Emulator, id: &str) -> Result<u16> {
    emulator.state_dir.update(|state| {
        if let Some(port) = state.instances.get(id) {
            return Ok(*port);
        }
        let port = loop {
            let port = free_port()?;
            if !state.instances.values().any(|used| *used == port) {
                break port;
            }
        };
        state.instances.insert(id.to_owned(), port);
        Ok(port)
    })
}

fn forget_port(emulator: &Emulator, id: &str) {
    let _ = emulator.state_dir.update(|state| {
        state.instances.remove(id);
        Ok(())
    });
}

// ------------------------------------------------------------------- load balancer

/// What the target group asks of its health checks.
#[derive(Debug, Clone)]
struct HealthCheck {
    path: String,
    interval: Duration,
    timeout: Duration,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    deregistration_delay: Duration,
}

/// The health-check record of one registered target.
#[derive(Debug, Clone, Default)]
struct Checked {
    successes: u32,
    failures: u32,
    state: Option<&'static str>,
    reason: Option<String>,
    next_check: Option<Instant>,
}

/// Follows the target group: registrations, health, draining; routes the proxy.
async fn follow_target_group(emulator: Arc<Emulator>) {
    let mut checked: BTreeMap<String, Checked> = BTreeMap::new();
    let mut draining: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        if let Err(err) = target_group_round(&emulator, &mut checked, &mut draining).await {
            log(&format!("load balancer: {err:#}"));
        }
        tokio::time::sleep(ROUND).await;
    }
}

async fn target_group_round(
    emulator: &Emulator,
    checked: &mut BTreeMap<String, Checked>,
    draining: &mut BTreeMap<String, Instant>,
) -> Result<()> {
    let Some((arn, check)) = target_group(emulator).await? else {
        emulator.record_status(Status::default());
        return Ok(());
    };
    // As LocalStack records them: which instances are registered, not how healthy.
    let registered: HashSet<String> = load_balancer::target_health(&emulator.stack, &arn)
        .await?
        .into_keys()
        .collect();
    let now = Instant::now();

    // Deregistered: no new connections, the open ones kept for the delay.
    for id in checked.keys().filter(|id| !registered.contains(*id)) {
        emulator.targets.drain(id);
        draining.insert(id.clone(), now + check.deregistration_delay);
        log(&format!(
            "{id} deregistered: draining for {}s",
            check.deregistration_delay.as_secs()
        ));
    }
    checked.retain(|id, _| registered.contains(id));
    draining.retain(|id, until| {
        if registered.contains(id) {
            return false;
        }
        if now >= *until {
            emulator.targets.cut(id);
            log(&format!("{id} drained: its connections are cut"));
            return false;
        }
        true
    });

    let ports: HashMap<String, u16> = emulator
        .booted
        .lock()
        .expect("booted lock")
        .iter()
        .map(|(id, (_, port))| (id.clone(), *port))
        .collect();
    let mut status = Status::default();
    for id in &registered {
        let record = checked.entry(id.clone()).or_default();
        match ports.get(id) {
            Some(port) if record.next_check.is_none_or(|next| now >= next) => {
                record.next_check = Some(now + check.interval);
                probe(record, *port, &check).await;
                if record.state == Some("unhealthy") {
                    report_unhealthy(emulator, id).await;
                }
                let healthy = record.state == Some("healthy");
                emulator
                    .targets
                    .set(id, SocketAddr::from(([127, 0, 0, 1], *port)), healthy);
            }
            Some(_) => {}
            None => record.reason = Some("the instance is not booted here yet".to_owned()),
        }
        status.targets.insert(
            id.clone(),
            TargetStatus {
                state: record.state.unwrap_or("initial").to_owned(),
                reason: record.reason.clone(),
            },
        );
    }
    for id in draining.keys() {
        status.targets.insert(
            id.clone(),
            TargetStatus {
                state: "draining".to_owned(),
                reason: Some("Target.DeregistrationInProgress".to_owned()),
            },
        );
    }
    emulator.record_status(status);
    Ok(())
}

impl Emulator {
    fn record_status(&self, status: Status) {
        *self.status.lock().expect("status lock") = Some(status);
    }
}

/// Writes the load balancer's last status every round, stamped with the time: `up
/// --local` and `status` read a fresh file as "the emulator runs". Apart from the rounds,
/// so that a round held up by a slow LocalStack (a loaded machine, many stacks at once)
/// does not pass for a dead emulator.
async fn write_status(emulator: Arc<Emulator>) {
    loop {
        let status = emulator.status.lock().expect("status lock").clone();
        if let Some(mut status) = status {
            status.written_at = now_millis();
            if let Err(err) = emulator.state_dir.save_status(&status) {
                log(&format!("status: {err:#}"));
            }
        }
        tokio::time::sleep(ROUND).await;
    }
}

/// What the load balancer tells the Auto Scaling group of a target that fails its health
/// checks, with the group's ELB health check type: the group takes the instance out of
/// service and replaces it, once its grace period is over
/// (<https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-health-checks.html>,
/// <https://docs.aws.amazon.com/autoscaling/ec2/userguide/health-check-grace-period.html>).
/// LocalStack's Auto Scaling (the project's extension) holds the grace period.
async fn report_unhealthy(emulator: &Emulator, id: &str) {
    let reported = emulator
        .stack
        .clients
        .autoscaling
        .set_instance_health()
        .instance_id(id)
        .health_status("Unhealthy")
        .send()
        .await;
    // An instance outside the group (launched before it) is the load balancer's only.
    if let Err(err) = reported
        && crate::aws::error_code(&err) != Some("ValidationError")
    {
        log(&format!(
            "telling the Auto Scaling group that {id} is unhealthy: {}",
            crate::aws::explain("SetInstanceHealth", err)
        ));
    }
}

/// One health check of a target, counted towards its thresholds as the ALB counts them.
async fn probe(record: &mut Checked, port: u16, check: &HealthCheck) {
    let answer = tokio::time::timeout(check.timeout, http_status(port, &check.path)).await;
    let failure = match answer {
        Ok(Ok(200)) => None,
        Ok(Ok(status)) => Some(format!(
            "Target.ResponseCodeMismatch: Health checks failed with these codes: [{status}]"
        )),
        Ok(Err(err)) => Some(format!("Target.FailedHealthChecks: {err:#}")),
        Err(_) => Some("Target.Timeout: Request timed out".to_owned()),
    };
    match failure {
        None => {
            record.successes += 1;
            record.failures = 0;
            if record.successes >= check.healthy_threshold {
                record.state = Some("healthy");
                record.reason = None;
            }
        }
        Some(reason) => {
            record.failures += 1;
            record.successes = 0;
            if record.failures >= check.unhealthy_threshold {
                record.state = Some("unhealthy");
            }
            record.reason = Some(reason);
        }
    }
}

/// The stack's target group and its health-check settings, if it exists.
async fn target_group(emulator: &Emulator) -> Result<Option<(String, HealthCheck)>> {
    let Some(group) = load_balancer::owned_target_group(&emulator.stack).await? else {
        return Ok(None);
    };
    let arn = group
        .target_group_arn()
        .context("target group without ARN")?;
    let delay = load_balancer::deregistration_delay(&emulator.stack, arn).await?;
    Ok(Some((arn.to_owned(), health_check(&group, delay))))
}

fn health_check(group: &TargetGroup, deregistration_delay: u64) -> HealthCheck {
    let seconds = |value: Option<i32>, default: u64| {
        Duration::from_secs(value.and_then(|v| u64::try_from(v).ok()).unwrap_or(default))
    };
    let count = |value: Option<i32>, default: u32| {
        value.and_then(|v| u32::try_from(v).ok()).unwrap_or(default)
    };
    HealthCheck {
        path: group.health_check_path().unwrap_or("/").to_owned(),
        interval: seconds(group.health_check_interval_seconds(), 30),
        timeout: seconds(group.health_check_timeout_seconds(), 5),
        healthy_threshold: count(group.healthy_threshold_count(), 5),
        unhealthy_threshold: count(group.unhealthy_threshold_count(), 2),
        deregistration_delay: Duration::from_secs(deregistration_delay),
    }
}
