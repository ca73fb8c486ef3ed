//! `up --local` and `destroy --local`: the whole system on this machine, with no AWS
//! account. LocalStack stands for AWS (started by `scripts/localstack.sh`, which installs
//! it on first use), a TLS redis-server for ElastiCache, and each instance is booted
//! here from its own user-data ([`crate::local`]); the stack itself goes through the
//! same code path as on AWS. What runs locally is recorded in a state directory,
//! `.localstack/local-stack/<stack>/`, so that `destroy --local` and the next
//! `up --local` find it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use aws_config::{BehaviorVersion, Region, retry::RetryConfig};
use aws_sdk_sts::config::Credentials;
use serde::{Deserialize, Serialize};

use super::up::{self, Outputs};
use crate::aws::{AwsArgs, Call, Clients};
use crate::engine::{Pace, Progress};
use crate::local::{self, BootSettings, LocalInstance, LocalRedis};
use crate::names::Names;
use crate::spec::StackSpec;
use crate::stack::Stack;

/// `--local` runs from the source tree: it needs `scripts/localstack.sh`, and `up` builds
/// the chat-server from the workspace.
fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What runs on this machine for one stack.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    redis_port: Option<u16>,
    /// Instance id -> the loopback port its server listens on.
    instances: BTreeMap<String, u16>,
}

/// The state directory of one stack: `state.json`, `redis/`, `instances/<id>/`.
struct StateDir(PathBuf);

impl StateDir {
    fn of(stack: &str) -> Self {
        let home = std::env::var_os("LOCALSTACK_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| repository().join(".localstack"));
        Self(home.join("local-stack").join(stack))
    }

    fn load(&self) -> Result<State> {
        match std::fs::read(self.0.join("state.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is damaged: stop what it lists by hand, delete it and run again",
                    self.0.join("state.json").display()
                )
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(err) => Err(err).context(format!("reading {}", self.0.display())),
        }
    }

    fn save(&self, state: &State) -> Result<()> {
        std::fs::create_dir_all(&self.0)
            .with_context(|| format!("cannot create {}", self.0.display()))?;
        std::fs::write(self.0.join("state.json"), serde_json::to_vec_pretty(state)?)
            .with_context(|| format!("cannot write {}", self.0.join("state.json").display()))
    }

    fn redis(&self) -> PathBuf {
        self.0.join("redis")
    }

    fn sandbox(&self, instance_id: &str) -> PathBuf {
        self.0.join("instances").join(instance_id)
    }
}

/// `scripts/localstack.sh` with `action`; its messages go to the user, its output (the
/// endpoint) comes back, or None when it exits with an error.
async fn localstack(action: &str) -> Result<Option<String>> {
    let script = repository().join("scripts/localstack.sh");
    if !script.exists() {
        bail!(
            "--local needs the realtime-stack source tree, and {} is missing: run it from a \
             checkout (`cargo run -- up --local`)",
            script.display()
        );
    }
    let output = tokio::process::Command::new("bash")
        .arg(&script)
        .arg(action)
        .stdin(Stdio::null())
        .stderr(if action == "start" {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .output()
        .await
        .context("could not run bash for scripts/localstack.sh")?;
    Ok(output.status.success().then(|| {
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned()
    }))
}

/// The stack, aimed at LocalStack on `endpoint` with its test credentials.
async fn connect(file: &Path, aws: &AwsArgs, endpoint: &str) -> Result<Stack> {
    if aws.endpoint_url.is_some() || aws.profile.is_some() {
        bail!(
            "--local runs against LocalStack on this machine with test credentials: drop \
             --endpoint-url and --profile, or drop --local"
        );
    }
    let spec = StackSpec::load(file)?;
    let region = aws.region.clone().unwrap_or_else(|| spec.region.clone());
    let config = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(region.clone()))
        .credentials_provider(Credentials::new(
            "test",
            "test",
            None,
            None,
            "realtime-stack-local",
        ))
        .retry_config(RetryConfig::standard().with_max_attempts(8))
        .load()
        .await;
    Ok(Stack {
        names: Names::new(&spec.name, &spec.tags),
        clients: Clients::new(&config),
        spec,
        progress: Progress::new(),
        pace: Pace::Local,
        region,
    })
}

/// The hosted zone is the one thing a user brings to `up`; in a fresh LocalStack there
/// is none, so it is made here.
async fn ensure_hosted_zone(stack: &Stack) -> Result<()> {
    let zone = stack.spec.domain.hosted_zone.trim_end_matches('.');
    let route53 = &stack.clients.route53;
    let found = route53
        .list_hosted_zones_by_name()
        .dns_name(zone)
        .send()
        .await
        .call(format!("ListHostedZonesByName {zone}"))?;
    if found
        .hosted_zones()
        .iter()
        .any(|hosted| hosted.name().trim_end_matches('.') == zone)
    {
        return Ok(());
    }
    route53
        .create_hosted_zone()
        .name(zone)
        .caller_reference(format!("realtime-stack-local-{zone}"))
        .send()
        .await
        .call(format!("CreateHostedZone {zone}"))?;
    stack.progress.note(&format!(
        "created hosted zone {zone} in LocalStack, as a user would already have one"
    ));
    Ok(())
}

/// `up --local`: LocalStack, the hosted zone, the normal `up` (without asking: nothing
/// here touches an AWS account) alongside a local redis-server, then every instance
/// booted here and healthy. The outputs carry one URL per booted instance.
pub async fn up(file: &Path, aws: &AwsArgs) -> Result<Outputs> {
    local::check_programs()?;
    let endpoint = localstack("start").await?.context(
        "scripts/localstack.sh could not start LocalStack (see above; `scripts/localstack.sh logs` has its log)",
    )?;
    let stack = connect(file, aws, &endpoint).await?;
    ensure_hosted_zone(&stack).await?;
    let preflight = up::preflight(&stack).await?;
    let state_dir = StateDir::of(&stack.spec.name);
    let (mut outputs, redis) = futures::try_join!(
        up::converge(&stack, &crate::platform::Aws, &preflight),
        ensure_redis(&stack, &state_dir)
    )?;
    outputs.local_urls =
        boot_instances(&stack, &state_dir, &redis, &endpoint, &outputs.instance_ids).await?;
    Ok(outputs)
}

/// The stack's local redis-server: the one recorded if it still runs, else a new one.
async fn ensure_redis(stack: &Stack, state_dir: &StateDir) -> Result<LocalRedis> {
    let mut state = state_dir.load()?;
    let dir = state_dir.redis();
    let recorded = state.redis_port;
    let redis = stack
        .progress
        .step("local redis-server (TLS)")
        .run(
            async move {
                tokio::task::spawn_blocking(move || {
                    match recorded.and_then(|port| LocalRedis::running(&dir, port)) {
                        Some(redis) => Ok(redis),
                        None => LocalRedis::start(&dir),
                    }
                })
                .await?
            },
            |redis| redis.address(),
        )
        .await?;
    state.redis_port = Some(redis.port);
    state_dir.save(&state)?;
    Ok(redis)
}

/// Boots every instance of the stack here, each on the port it had (or a new one), and
/// waits until each answers `/healthz`; stops the servers of instances the stack no
/// longer has. Returns their URLs, in the order of `instance_ids`.
async fn boot_instances(
    stack: &Stack,
    state_dir: &StateDir,
    redis: &LocalRedis,
    endpoint: &str,
    instance_ids: &[String],
) -> Result<Vec<String>> {
    let mut state = state_dir.load()?;
    let gone: Vec<String> = state
        .instances
        .keys()
        .filter(|id| !instance_ids.contains(id))
        .cloned()
        .collect();
    for id in gone {
        local::stop_services(&state_dir.sandbox(&id))?;
        state.instances.remove(&id);
    }
    for id in instance_ids {
        if !state.instances.contains_key(id) {
            let port = loop {
                let port = local::free_port()?;
                if !state.instances.values().any(|used| *used == port) {
                    break port;
                }
            };
            state.instances.insert(id.clone(), port);
        }
    }
    // Recorded before booting, so that `destroy --local` finds a boot that failed.
    state_dir.save(&state)?;
    let boots = instance_ids.iter().map(|id| {
        let settings = BootSettings {
            port: state.instances[id],
            redis_address: redis.address(),
            redis_ca_file: Some(redis.ca_file()),
            s3_endpoint: endpoint.to_owned(),
            max_pause_seconds: None,
        };
        let sandbox = state_dir.sandbox(id);
        async move {
            let step = stack.progress.step(format!("local boot {id}"));
            step.set("running its user-data");
            step.run(
                async {
                    let instance =
                        LocalInstance::boot(&stack.clients.ec2, id, &sandbox, &settings).await?;
                    step.set("waiting for /healthz");
                    instance.wait_healthy(local::HEALTHY_WITHIN).await?;
                    Ok(instance.url())
                },
                |url| url.clone(),
            )
            .await
        }
    });
    futures::future::try_join_all(boots).await
}

/// `destroy --local`: stops the servers booted here and the redis-server, then destroys
/// the stack in LocalStack (if LocalStack is not running, nothing of it is left there:
/// it keeps no state across restarts).
pub async fn destroy(file: &Path, aws: &AwsArgs) -> Result<()> {
    let spec = StackSpec::load(file)?;
    let state_dir = StateDir::of(&spec.name);
    let progress = Progress::new();
    let state = state_dir.load()?;
    for id in state.instances.keys() {
        local::stop_services(&state_dir.sandbox(id))?;
        progress.note(&format!("stopped the chat-server of {id}"));
    }
    if let Some(redis) = state
        .redis_port
        .and_then(|port| LocalRedis::running(&state_dir.redis(), port))
    {
        redis.stop()?;
        progress.note(&format!("stopped redis-server on {}", redis.address()));
    }
    match std::fs::remove_dir_all(&state_dir.0) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(err).context(format!("cannot remove {}", state_dir.0.display()));
        }
    }
    match localstack("status").await? {
        Some(endpoint) => {
            let stack = connect(file, aws, &endpoint).await?;
            super::destroy::delete_all(&stack, true).await
        }
        None => {
            progress.note(&format!(
                "LocalStack is not running: stack '{}' went with it",
                spec.name
            ));
            Ok(())
        }
    }
}
