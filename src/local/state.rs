//! What runs on this machine for one stack, recorded in its state directory,
//! `.localstack/local-stack/<stack>/`, so that every `--local` command finds it:
//! `state.json` (the ports and pids of what runs, changed under `state.lock`), `status.json` (how the local load
//! balancer sees the targets, rewritten by the emulator every round), `redis/`,
//! `instances/<id>/` (one sandbox per booted instance) and `emulator.log`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The ports and pids of what runs for one stack.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct State {
    /// The local Redis's port: the only server's, or the port clients of the cluster
    /// start from.
    pub redis_port: Option<u16>,
    /// Every server of the local Redis, when there is more than one (a Redis Cluster, or a
    /// primary and its replicas).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redis_cluster_ports: Vec<u16>,
    /// The local load balancer's port: the stack's one URL, kept from run to run.
    pub load_balancer_port: Option<u16>,
    /// The local Redis's primary endpoint (cluster mode off), kept from run to run: the
    /// instances' servers are configured with it.
    #[serde(default)]
    pub redis_endpoint_port: Option<u16>,
    /// The emulator process (`realtime-stack local-emulator`).
    pub emulator_pid: Option<u32>,
    /// Instance id -> the loopback port its server listens on.
    pub instances: BTreeMap<String, u16>,
}

/// `--local` runs from the source tree: it needs `scripts/localstack.sh`, and `up` builds
/// the chat-server from the workspace.
pub fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

impl State {
    /// The ports of the local Redis's servers, as [`super::LocalRedis::running`] takes them.
    pub fn redis_ports(&self) -> Vec<u16> {
        if self.redis_cluster_ports.is_empty() {
            self.redis_port.into_iter().collect()
        } else {
            self.redis_cluster_ports.clone()
        }
    }

    /// Records the local Redis's servers.
    pub fn set_redis_ports(&mut self, ports: Vec<u16>) {
        self.redis_port = ports.first().copied();
        self.redis_cluster_ports = if ports.len() > 1 { ports } else { Vec::new() };
    }
}

/// How the local load balancer sees one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetStatus {
    /// `initial`, `healthy`, `unhealthy` or `draining`, as the ALB names them.
    pub state: String,
    pub reason: Option<String>,
}

/// What the emulator last saw, with when.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Milliseconds since the epoch.
    pub written_at: u64,
    pub targets: BTreeMap<String, TargetStatus>,
}

impl Status {
    /// Whether it was written within `within`: the emulator writes it every round.
    pub fn fresh(&self, within: Duration) -> bool {
        now_millis().saturating_sub(self.written_at) <= within.as_millis() as u64
    }
}

pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// The state directory of one stack.
#[derive(Debug, Clone)]
pub struct StateDir(PathBuf);

impl StateDir {
    /// `$LOCALSTACK_HOME/local-stack/<stack>`, LocalStack's home defaulting to the
    /// checkout's `.localstack/`.
    pub fn of(repository: &Path, stack: &str) -> Self {
        let home = std::env::var_os("LOCALSTACK_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| repository.join(".localstack"));
        Self(home.join("local-stack").join(stack))
    }

    pub fn at(path: PathBuf) -> Self {
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn load(&self) -> Result<State> {
        read_json(&self.0.join("state.json")).map(Option::unwrap_or_default)
    }

    /// Changes the recorded state with `change`, under an exclusive lock on
    /// `state.lock`: the emulator and the `--local` commands change it from different
    /// processes, and a read-modify-write must not drop another's change.
    pub fn update<T>(&self, change: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        std::fs::create_dir_all(&self.0)
            .with_context(|| format!("cannot create {}", self.0.display()))?;
        let path = self.0.join("state.lock");
        let lock = std::fs::File::create(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        lock.lock()
            .with_context(|| format!("cannot lock {}", path.display()))?;
        let mut state = self.load()?;
        let result = change(&mut state)?;
        write_json(&self.0.join("state.json"), &state)?;
        Ok(result)
    }

    /// The emulator's last status, if it wrote one.
    pub fn status(&self) -> Result<Option<Status>> {
        read_json(&self.0.join("status.json"))
    }

    pub fn save_status(&self, status: &Status) -> Result<()> {
        write_json(&self.0.join("status.json"), status)
    }

    pub fn redis(&self) -> PathBuf {
        self.0.join("redis")
    }

    pub fn sandbox(&self, instance_id: &str) -> PathBuf {
        self.0.join("instances").join(instance_id)
    }

    pub fn emulator_log(&self) -> PathBuf {
        self.0.join("emulator.log")
    }

    /// Removes the whole directory; nothing to do when it is not there.
    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.0) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                Err(err).context(format!("cannot remove {}", self.0.display()))
            }
            _ => Ok(()),
        }
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).with_context(|| {
            format!(
                "{} is damaged: stop what it lists by hand, delete it and run again",
                path.display()
            )
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).context(format!("reading {}", path.display())),
    }
}

/// Written to a temporary file and renamed into place, so a reader never sees half of it.
fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let dir = path.parent().context("a state file has a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let temporary = path.with_extension("json.tmp");
    std::fs::write(&temporary, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The emulator records instance ports while `up --local` records Redis's: changes
    /// made at the same time from different places all land.
    #[test]
    fn concurrent_updates_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = StateDir::at(dir.path().join("stack"));
        let writers: Vec<_> = (0..4)
            .map(|writer| {
                let state_dir = state_dir.clone();
                std::thread::spawn(move || {
                    for n in 0..25u16 {
                        state_dir
                            .update(|state| {
                                state.instances.insert(format!("i-{writer}-{n}"), n);
                                Ok(())
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        assert_eq!(state_dir.load().unwrap().instances.len(), 100);
    }
}
