//! `--local`: the stack on this machine, with no AWS account. LocalStack stands for the
//! AWS APIs (started by `scripts/localstack.sh`, which installs it on first use), a TLS
//! redis-server for ElastiCache, and the local emulator ([`super::emulator`]) for what
//! AWS runs: the instances and the load balancer. The commands get an [`Environment`]: its
//! `stack` goes through the same code as on AWS, and it is their [`Platform`], answering
//! target health, console output and the URL from what runs here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::state::{State, StateDir, repository};
use super::{LocalRedis, dev_key, process_is, signal_and_wait};
use crate::aws::{AwsArgs, Call, Clients};
use crate::canary::Endpoint;
use crate::deploy::Health;
use crate::engine::{Changes, Pace, Progress};
use crate::names::Names;
use crate::platform::Platform;
use crate::spec::StackSpec;
use crate::stack::Stack;

/// How old the emulator's status may be before it counts as not running.
const STATUS_FRESH: Duration = Duration::from_secs(10);
/// What stands for the stack's URL while the local load balancer is not running.
const NO_LOAD_BALANCER: &str = "(the local load balancer is not running)";

/// The stack in the LocalStack on this machine, and what runs here for it.
pub struct Environment {
    pub stack: Stack,
    /// The stack file, which the emulator reads too.
    file: PathBuf,
    state_dir: StateDir,
}

impl Environment {
    /// For `up --local`: everything started that the stack needs on this machine -
    /// LocalStack, the hosted zone a user would already have, the local Redis and the
    /// emulator - after checking, before anything else, that every program it runs is
    /// installed.
    pub async fn start(file: &Path, aws: &AwsArgs) -> Result<Environment> {
        super::check_programs()?;
        let mut spec = StackSpec::load(file)?;
        refuse_aws_flags(aws)?;
        let state_dir = StateDir::of(repository(), &spec.name);
        let made_key = dev_key::resolve(&mut spec, &state_dir, true)?;
        let endpoint = localstack("start").await?.context(
            "scripts/localstack.sh could not start LocalStack (see above; \
             `scripts/localstack.sh logs` has its log)",
        )?;
        let environment = Self::connect(file, spec, aws, &endpoint, Changes::default()).await;
        if let Some(private) = made_key {
            environment.stack.progress.note(&format!(
                "made a development key pair for chat sign-in ({}); `realtime-stack token \
                 --sub alice --name Alice` signs a token with it",
                private.display()
            ));
        }
        ensure_hosted_zone(&environment.stack).await?;
        environment.ensure_redis().await?;
        environment.ensure_emulator(&endpoint).await?;
        Ok(environment)
    }

    /// For the other `--local` commands: the stack in the LocalStack that runs, or None
    /// when LocalStack is not running (it keeps nothing across restarts: nothing of the
    /// stack is left there). `changes` says whether they are made or only planned.
    pub async fn attach(
        file: &Path,
        aws: &AwsArgs,
        changes: Changes,
    ) -> Result<Option<Environment>> {
        let mut spec = StackSpec::load(file)?;
        refuse_aws_flags(aws)?;
        let state_dir = StateDir::of(repository(), &spec.name);
        dev_key::resolve(&mut spec, &state_dir, false)?;
        // Its health check answers slowly on a loaded machine: asked three times, a second
        // apart, before LocalStack counts as not running.
        for attempt in 0..3 {
            if let Some(endpoint) = localstack("status").await? {
                return Ok(Some(
                    Self::connect(file, spec, aws, &endpoint, changes).await,
                ));
            }
            if attempt < 2 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Ok(None)
    }

    /// Stops what runs on this machine for the stack in `file` - the emulator (and with it
    /// every instance it booted) and the local Redis - and removes its state directory.
    pub fn stop(file: &Path, progress: &Progress) -> Result<()> {
        let spec = StackSpec::load(file)?;
        let state_dir = StateDir::of(repository(), &spec.name);
        let state = state_dir.load()?;
        if let Some(pid) = state.emulator_pid.filter(|pid| is_emulator(*pid)) {
            if !signal_and_wait(pid, EMULATOR, "-TERM", Duration::from_secs(60))
                && !signal_and_wait(pid, EMULATOR, "-KILL", Duration::from_secs(5))
            {
                bail!(
                    "the local emulator (pid {pid}) is still running: stop it with `kill -9 {pid}`"
                );
            }
            progress.note("stopped the local emulator and the instances it ran");
        }
        if let Some(redis) = LocalRedis::running(&state_dir.redis(), &state.redis_ports()) {
            redis.stop()?;
            progress.note(&format!("stopped the local {}", redis.describe()));
        }
        state_dir.remove()
    }

    async fn connect(
        file: &Path,
        spec: StackSpec,
        aws: &AwsArgs,
        endpoint: &str,
        changes: Changes,
    ) -> Environment {
        let region = aws.region.clone().unwrap_or_else(|| spec.region.clone());
        let state_dir = StateDir::of(repository(), &spec.name);
        Environment {
            stack: stack_at(spec, endpoint, &region, changes).await,
            file: std::path::absolute(file).unwrap_or_else(|_| file.to_owned()),
            state_dir,
        }
    }

    /// The stack's local Redis: the one recorded if it still runs, else a new one - a
    /// redis-server, or a Redis Cluster with more than one shard. One of another shape
    /// is refused: ElastiCache's group is not re-shaped by `up --local` either.
    async fn ensure_redis(&self) -> Result<()> {
        let dir = self.state_dir.redis();
        let recorded = self.state_dir.load()?.redis_ports();
        let (shards, replicas) = (self.stack.spec.redis.shards, self.stack.spec.redis.replicas);
        let what = if shards > 1 {
            format!("local Redis Cluster (TLS, {shards} shards, {replicas} replica(s) each)")
        } else {
            "local redis-server (TLS)".to_owned()
        };
        let redis = self
            .stack
            .progress
            .step(what)
            .run(
                async move {
                    tokio::task::spawn_blocking(move || {
                        match LocalRedis::running(&dir, &recorded) {
                            Some(redis) if redis.matches(shards, replicas) => Ok(redis),
                            Some(redis) => bail!(
                                "the stack's local Redis is a {}, and stack.yaml asks for {shards} \
                                 shard(s) of 1 primary and {replicas} replica(s): run \
                                 `realtime-stack destroy --local`, then `up --local`",
                                redis.describe()
                            ),
                            None if shards > 1 => LocalRedis::start_cluster(&dir, shards, replicas),
                            None if replicas > 0 => LocalRedis::start_replicated(&dir, replicas),
                            None => LocalRedis::start(&dir),
                        }
                    })
                    .await?
                },
                LocalRedis::describe,
            )
            .await?;
        self.state_dir.update(|state| {
            state.set_redis_ports(redis.ports());
            Ok(())
        })
    }

    /// The stack's emulator: the one recorded if it still runs, else a new one, detached
    /// (it outlives `up --local`), once it reports.
    async fn ensure_emulator(&self, endpoint: &str) -> Result<()> {
        let step = self
            .stack
            .progress
            .step("local emulator (EC2, load balancer)");
        let work = async {
            let state = self.state_dir.load()?;
            if state.emulator_pid.is_some_and(is_emulator) && self.fresh_status()?.is_some() {
                return Ok(());
            }
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.state_dir.emulator_log())
                .context("cannot open the emulator's log")?;
            let mut command = std::process::Command::new(
                std::env::current_exe().context("cannot find the realtime-stack executable")?,
            );
            command
                .arg(EMULATOR)
                .arg("--file")
                .arg(&self.file)
                .arg("--state-dir")
                .arg(self.state_dir.path())
                .args(["--endpoint", endpoint, "--region", &self.stack.region])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            // Its own process group: a Ctrl-C in the terminal of `up --local` is not for it.
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
            let mut child = command.spawn().context("cannot start the local emulator")?;
            let deadline = Instant::now() + STATUS_FRESH * 3;
            loop {
                if self.fresh_status()?.is_some() {
                    return Ok(());
                }
                if child.try_wait()?.is_some() || Instant::now() >= deadline {
                    bail!(
                        "the local emulator did not start; the end of its log ({}):\n{}",
                        self.state_dir.emulator_log().display(),
                        super::instance::tail(
                            &std::fs::read_to_string(self.state_dir.emulator_log())
                                .unwrap_or_default(),
                            15
                        )
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        step.run(work, |_| {
            format!("log: {}", self.state_dir.emulator_log().display())
        })
        .await
    }

    /// A planned failover of the local Redis (one shard with replicas), as ElastiCache's
    /// TestFailover makes one: a replica is promoted, and the emulator's primary endpoint
    /// follows it. Returns the new primary's address.
    pub async fn fail_over_redis(&self) -> Result<String> {
        let dir = self.state_dir.redis();
        let ports = self.state()?.redis_ports();
        let redis = LocalRedis::running(&dir, &ports)
            .context("the stack's local Redis is not running: run `up --local` again")?;
        let port = tokio::task::spawn_blocking(move || redis.fail_over()).await??;
        Ok(format!("127.0.0.1:{port}"))
    }

    fn fresh_status(&self) -> Result<Option<super::state::Status>> {
        Ok(self
            .state_dir
            .status()?
            .filter(|status| status.fresh(STATUS_FRESH)))
    }

    fn state(&self) -> Result<State> {
        self.state_dir.load()
    }

    /// The port of the local load balancer, when it runs.
    fn load_balancer_port(&self) -> Option<u16> {
        self.state().ok().and_then(|state| state.load_balancer_port)
    }
}

impl Platform for Environment {
    async fn target_health(
        &self,
        _stack: &Stack,
        _target_group_arn: &str,
    ) -> Result<BTreeMap<String, Health>> {
        let status = self.fresh_status()?.with_context(|| {
            format!(
                "the local emulator is not running (no status for {}s): run `up --local` \
                 again; its log is {}",
                STATUS_FRESH.as_secs(),
                self.state_dir.emulator_log().display()
            )
        })?;
        Ok(status
            .targets
            .into_iter()
            .map(|(id, target)| {
                let reason = target.reason.unwrap_or_default();
                let health = match target.state.as_str() {
                    "healthy" => Health::Healthy,
                    "initial" => Health::Initial,
                    "unhealthy" => Health::Unhealthy(reason),
                    "draining" => Health::Draining,
                    other => Health::Other(format!("{other}: {reason}")),
                };
                (id, health)
            })
            .collect())
    }

    async fn console_output(&self, _stack: &Stack, instance_id: &str) -> Result<String> {
        let console = self.state_dir.sandbox(instance_id).join("console.log");
        match std::fs::read_to_string(&console) {
            Ok(text) => Ok(text),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(err) => Err(err).context(format!("reading {}", console.display())),
        }
    }

    fn url(&self, _stack: &Stack) -> String {
        match self.load_balancer_port() {
            Some(port) => format!("http://127.0.0.1:{port}/"),
            None => NO_LOAD_BALANCER.to_owned(),
        }
    }

    fn chat_endpoint(&self, _stack: &Stack, _load_balancer_dns: &str) -> Result<Endpoint> {
        let port = self
            .load_balancer_port()
            .context("the local load balancer is not running: start it with `up --local`")?;
        Ok(Endpoint {
            url: format!("ws://127.0.0.1:{port}/ws"),
            connect: None,
            allowed: None,
        })
    }
}

/// The stack of `spec` in the LocalStack at `endpoint`.
pub(super) async fn stack_at(
    spec: StackSpec,
    endpoint: &str,
    region: &str,
    changes: Changes,
) -> Stack {
    let config = super::localstack_config(endpoint, region).await;
    Stack {
        names: Names::new(&spec.name, &spec.tags),
        clients: if changes.is_planning() {
            Clients::read_only(&config)
        } else {
            Clients::new(&config)
        },
        spec,
        progress: if changes.is_planning() {
            Progress::notes_only()
        } else {
            Progress::new()
        },
        pace: Pace::Local,
        region: region.to_owned(),
        changes,
    }
}

/// The hidden subcommand that runs the emulator.
pub const EMULATOR: &str = "local-emulator";

fn is_emulator(pid: u32) -> bool {
    process_is(pid, EMULATOR)
}

fn refuse_aws_flags(aws: &AwsArgs) -> Result<()> {
    if aws.endpoint_url.is_some() || aws.profile.is_some() {
        bail!(
            "--local runs against LocalStack on this machine with test credentials: drop \
             --endpoint-url and --profile, or drop --local"
        );
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::testing;

    fn environment(state_dir: &Path) -> Environment {
        Environment {
            stack: testing::stack(testing::clients()),
            file: PathBuf::from("stack.yaml"),
            state_dir: StateDir::at(state_dir.to_owned()),
        }
    }

    /// A `--local` command that talks to the chat (a drill, the canary) while the local
    /// load balancer is down is told to start it, not handed a URL made of the text that
    /// `status` shows in its place.
    #[test]
    fn the_chat_endpoint_is_the_local_load_balancer_or_an_error_saying_to_start_it() {
        let dir = tempfile::tempdir().unwrap();
        let environment = environment(dir.path());
        let stack = &environment.stack;

        let err = environment
            .chat_endpoint(stack, "")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the local load balancer is not running") && err.contains("`up --local`"),
            "{err}"
        );
        assert_eq!(environment.url(stack), NO_LOAD_BALANCER);

        environment
            .state_dir
            .update(|state| {
                state.load_balancer_port = Some(43210);
                Ok(())
            })
            .unwrap();
        let endpoint = environment.chat_endpoint(stack, "").unwrap();
        assert_eq!(endpoint.url, "ws://127.0.0.1:43210/ws");
        assert_eq!(environment.url(stack), "http://127.0.0.1:43210/");
    }
}
