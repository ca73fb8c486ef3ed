//! ElastiCache on this machine: TLS-only redis-servers on loopback ports, detached so
//! that they outlive `up --local`, with a CA and a certificate generated for them. A
//! primary and `redis.replicas` replicas of it (replication over TLS) stand for a group
//! with cluster mode off, whose primary endpoint the emulator plays
//! ([`super::endpoint`]); with `redis.shards` above 1, a Redis Cluster of `shards`
//! primaries with `replicas` replicas each stands for a cluster-mode group, its first
//! server for the configuration endpoint (any node of a cluster tells a client where
//! every slot is).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{free_port, process_is, signal_and_wait};

/// How long a server or the cluster may take to be ready.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// One redis-server: its TLS port, its pid, and the directory of its log and pid file.
#[derive(Debug, Clone)]
pub struct Server {
    pub port: u16,
    pub pid: u32,
    pub dir: PathBuf,
}

/// The local stand-in for ElastiCache with transit encryption: one redis-server, or the
/// servers of a Redis Cluster, with their certificates in one directory.
#[derive(Debug, Clone)]
pub struct LocalRedis {
    pub dir: PathBuf,
    /// The only server, or every server of the cluster (clients start from the first).
    pub servers: Vec<Server>,
}

impl LocalRedis {
    /// Starts one redis-server on a free loopback port, with a CA and a certificate for
    /// 127.0.0.1 generated into `dir` unless they are already there. Blocks until it
    /// accepts connections.
    pub fn start(dir: &Path) -> Result<LocalRedis> {
        ensure_certificates(dir)?;
        let server = Server::start(dir, &|_| dir.to_owned(), None, None)?;
        Ok(LocalRedis {
            dir: dir.to_owned(),
            servers: vec![server],
        })
    }

    /// Starts a primary and `replicas` replicas of it (one shard with cluster mode off, as
    /// an ElastiCache group with replicas), replication over TLS, each server in a
    /// directory of its own below `dir`; blocks until every replica follows the primary.
    pub fn start_replicated(dir: &Path, replicas: u32) -> Result<LocalRedis> {
        ensure_certificates(dir)?;
        let mut redis = LocalRedis {
            dir: dir.to_owned(),
            servers: Vec::new(),
        };
        let mut started = || {
            let primary = Server::start(dir, &|port| node_dir(dir, port), None, None)?;
            let primary_port = primary.port;
            redis.servers.push(primary);
            for _ in 0..replicas {
                let replica =
                    Server::start(dir, &|port| node_dir(dir, port), None, Some(primary_port))?;
                redis.servers.push(replica);
            }
            Ok::<_, anyhow::Error>(())
        };
        let ready = started().and_then(|()| redis.wait_replicated(replicas));
        if let Err(err) = ready {
            let _ = redis.stop();
            return Err(err);
        }
        Ok(redis)
    }

    /// Polls until the primary counts `replicas` replicas connected and in sync.
    fn wait_replicated(&self, replicas: u32) -> Result<()> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let info = self
                .primary()
                .and_then(|port| self.cli_at(port, &["INFO", "replication"]).ok())
                .unwrap_or_default();
            let online = info.matches("state=online").count();
            if online == replicas as usize {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the local Redis's {replicas} replica(s) did not follow the primary within \
                     {}s ({online} in sync); the servers' logs are in {}",
                    READY_WITHIN.as_secs(),
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The port of the server that is the primary now, as ROLE says.
    pub fn primary(&self) -> Option<u16> {
        self.servers.iter().map(|server| server.port).find(|port| {
            self.cli_at(*port, &["ROLE"])
                .is_ok_and(|role| role.starts_with("master"))
        })
    }

    /// A planned failover, as ElastiCache's TestFailover makes one: the primary hands
    /// over to a replica once it has caught up (FAILOVER: no acknowledged write is lost),
    /// and the replica is the primary. Returns the new primary's port.
    pub fn fail_over(&self) -> Result<u16> {
        let old = self
            .primary()
            .context("the local Redis has no primary to fail over")?;
        anyhow::ensure!(
            self.servers.len() > 1 && !self.is_cluster(),
            "the local Redis has no replica to fail over to: set redis.replicas to 1 or more \
             (with one shard)"
        );
        self.cli_at(old, &["FAILOVER"])?;
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(new) = self.primary().filter(|port| *port != old) {
                return Ok(new);
            }
            if Instant::now() >= deadline {
                bail!(
                    "no replica of the local Redis took over from 127.0.0.1:{old} within {}s",
                    READY_WITHIN.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether its servers form a Redis Cluster (cluster mode on).
    pub fn is_cluster(&self) -> bool {
        self.servers
            .first()
            .is_some_and(|server| server.dir.join("nodes.conf").exists())
    }

    /// Starts a Redis Cluster of `shards` primaries with `replicas` replicas each, every
    /// server TLS-only (clients, replication and the cluster bus) in a directory of its
    /// own below `dir`, joins them with `redis-cli --cluster create` and blocks until
    /// every slot is served and every replica follows its primary.
    pub fn start_cluster(dir: &Path, shards: u32, replicas: u32) -> Result<LocalRedis> {
        ensure_certificates(dir)?;
        let count = usize::try_from(shards * (1 + replicas))?;
        let mut redis = LocalRedis {
            dir: dir.to_owned(),
            servers: Vec::with_capacity(count),
        };
        let started = (0..count).try_for_each(|_| {
            // Taken before the server's own port, which is then bound and never handed
            // out again (nor is any running server's).
            let bus_port = free_port()?;
            let server = Server::start(dir, &|port| node_dir(dir, port), Some(bus_port), None)?;
            redis.servers.push(server);
            Ok::<_, anyhow::Error>(())
        });
        let joined = started.and_then(|()| redis.create_cluster(replicas));
        let ready = joined.and_then(|()| redis.wait_cluster_ready(shards, replicas));
        if let Err(err) = ready {
            // Nothing half-made is left running.
            let _ = redis.stop();
            return Err(err);
        }
        Ok(redis)
    }

    /// The servers recorded in `dir` on `ports`, if they all still run: one port is a
    /// single server, more are a cluster's.
    pub fn running(dir: &Path, ports: &[u16]) -> Option<LocalRedis> {
        let servers = match ports {
            [] => return None,
            [port] => vec![Server::running(dir, *port)?],
            ports => ports
                .iter()
                .map(|port| Server::running(&node_dir(dir, *port), *port))
                .collect::<Option<Vec<Server>>>()?,
        };
        Some(LocalRedis {
            dir: dir.to_owned(),
            servers,
        })
    }

    /// The ports of its servers, the one clients start from first.
    pub fn ports(&self) -> Vec<u16> {
        self.servers.iter().map(|server| server.port).collect()
    }

    /// Whether it is what the spec's `shards` and `replicas` stand for: one server with
    /// one shard (replicas are not emulated then), else a cluster of all their servers.
    pub fn matches(&self, shards: u32, replicas: u32) -> bool {
        self.servers.len() == (shards * (1 + replicas)) as usize
            && self.is_cluster() == (shards > 1)
    }

    /// In words, for progress lines and messages.
    pub fn describe(&self) -> String {
        match self.servers.len() {
            1 => format!("redis-server on {}", self.address()),
            count if self.is_cluster() => format!(
                "Redis Cluster of {count} redis-servers, from {}",
                self.address()
            ),
            count => format!(
                "redis-server primary with {} replica(s), from {}",
                count - 1,
                self.address()
            ),
        }
    }

    /// `127.0.0.1:<port>` of the first server: what the Redis endpoint tag stands for
    /// locally.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.servers[0].port)
    }

    /// The CA that signed the servers' certificate (`REDIS_CA_FILE`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Stops every server (SIGTERM, then SIGKILL) that still runs.
    pub fn stop(&self) -> Result<()> {
        self.servers.iter().try_for_each(Server::stop)
    }

    /// The cluster's primaries that serve slots and its replicas, counting only nodes
    /// connected and not failing, as the first server's `CLUSTER NODES` says.
    pub fn cluster_roles(&self) -> Result<(usize, usize)> {
        let nodes = self.cli(&["CLUSTER", "NODES"])?;
        let (mut primaries, mut replicas) = (0, 0);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(flags), Some(link)) = (fields.get(2), fields.get(7)) else {
                continue;
            };
            let has_slots = fields.len() > 8;
            if *link != "connected" || flags.contains("fail") {
                continue;
            }
            if flags.contains("master") && has_slots {
                primaries += 1;
            } else if flags.contains("slave") {
                replicas += 1;
            }
        }
        Ok((primaries, replicas))
    }

    /// `redis-cli --cluster create`: the first `servers / (1 + replicas)` become
    /// primaries, sharing the slots, the others their replicas.
    fn create_cluster(&self, replicas: u32) -> Result<()> {
        let addresses: Vec<String> = self
            .ports()
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let mut args = self.tls_args().to_vec();
        args.extend(["--cluster".to_owned(), "create".to_owned()]);
        args.extend(addresses);
        args.extend([
            "--cluster-replicas".to_owned(),
            replicas.to_string(),
            "--cluster-yes".to_owned(),
        ]);
        run("redis-cli", &args, None, "redis-tools")?;
        Ok(())
    }

    /// Polls until `CLUSTER INFO` says `cluster_state:ok` and every primary and replica
    /// is in place.
    fn wait_cluster_ready(&self, shards: u32, replicas: u32) -> Result<()> {
        let want = (shards as usize, (shards * replicas) as usize);
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let info = self.cli(&["CLUSTER", "INFO"]).unwrap_or_default();
            let roles = self.cluster_roles().ok();
            if info.lines().any(|line| line.trim() == "cluster_state:ok") && roles == Some(want) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the local Redis Cluster ({}) was not ready within {}s: CLUSTER INFO says \
                     {:?}, {roles:?} primaries and replicas up of {want:?}; the servers' logs \
                     are in {}",
                    self.describe(),
                    READY_WITHIN.as_secs(),
                    info.lines().next().unwrap_or_default(),
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A command sent with redis-cli to the first server; its reply.
    fn cli(&self, command: &[&str]) -> Result<String> {
        self.cli_at(self.servers[0].port, command)
    }

    /// A command sent with redis-cli to the server on `port`; its reply.
    fn cli_at(&self, port: u16, command: &[&str]) -> Result<String> {
        let mut args = self.tls_args().to_vec();
        let port = port.to_string();
        args.extend(["-h", "127.0.0.1", "-p", &port].map(str::to_owned));
        args.extend(command.iter().map(|word| (*word).to_owned()));
        run("redis-cli", &args, None, "redis-tools")
    }

    fn tls_args(&self) -> [String; 3] {
        [
            "--tls".to_owned(),
            "--cacert".to_owned(),
            self.ca_file().display().to_string(),
        ]
    }
}

/// The directory of the cluster's server on `port`.
fn node_dir(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!("node-{port}"))
}

impl Server {
    /// Starts redis-server on a free loopback port, TLS only with the certificates in
    /// `certificates`, its files in `dir_of(port)`, as a cluster node with its bus on
    /// `bus_port`, or as a replica of the server on `replica_of`, when given.
    fn start(
        certificates: &Path,
        dir_of: &dyn Fn(u16) -> PathBuf,
        bus_port: Option<u16>,
        replica_of: Option<u16>,
    ) -> Result<Server> {
        // A free port can be taken between probing and binding: try another.
        let mut last_error = None;
        for _ in 0..5 {
            let port = free_port()?;
            if bus_port == Some(port) {
                continue;
            }
            match Self::launch(certificates, &dir_of(port), port, bus_port, replica_of) {
                Ok(server) => return Ok(server),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no free loopback port for redis-server")))
    }

    /// The redis-server recorded in `dir`, if it still runs there on `port`.
    fn running(dir: &Path, port: u16) -> Option<Server> {
        let pid = std::fs::read_to_string(dir.join("redis.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        process_is(pid, "redis-server").then(|| Server {
            port,
            pid,
            dir: dir.to_owned(),
        })
    }

    fn launch(
        certificates: &Path,
        dir: &Path,
        port: u16,
        bus_port: Option<u16>,
        replica_of: Option<u16>,
    ) -> Result<Server> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let log = dir.join("redis.log");
        let pid_file = dir.join("redis.pid");
        let _ = std::fs::remove_file(&log);
        let _ = std::fs::remove_file(&pid_file);
        let path = |name: &str| dir.join(name).display().to_string();
        let certificate = |name: &str| certificates.join(name).display().to_string();
        let mut command = std::process::Command::new("redis-server");
        // daemonize: the server is re-parented away from us, so it outlives `up --local`
        // and nobody is left to reap in a test process.
        command
            .args(["--bind", "127.0.0.1", "--port", "0"])
            .args(["--tls-port", &port.to_string()])
            .args(["--tls-cert-file", &certificate("redis.crt")])
            .args(["--tls-key-file", &certificate("redis.key")])
            .args(["--tls-ca-cert-file", &certificate("ca.crt")])
            .args(["--tls-auth-clients", "no"])
            .args(["--dir", &path("")])
            .args(["--logfile", &path("redis.log")])
            .args(["--pidfile", &path("redis.pid")])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "yes"])
            .args(["--tls-replication", "yes"]);
        if let Some(primary) = replica_of {
            command.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
        }
        if let Some(bus_port) = bus_port {
            // Below the ephemeral range like every port taken here, not port + 10000.
            command
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-port", &bus_port.to_string()])
                .args(["--cluster-config-file", &path("nodes.conf")])
                .args(["--tls-cluster", "yes"]);
        }
        let status = command
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
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let logged = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(server) = Self::running(dir, port)
                && logged.contains("Ready to accept connections")
                && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            {
                return Ok(server);
            }
            if logged.contains("# Failed listening") || logged.contains("Address already in use") {
                bail!("redis-server could not listen on port {port}:\n{logged}");
            }
            if Instant::now() >= deadline {
                bail!(
                    "redis-server did not accept connections on 127.0.0.1:{port} within {}s; its log ({}):\n{logged}",
                    READY_WITHIN.as_secs(),
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it (SIGTERM, then SIGKILL) if it still runs.
    fn stop(&self) -> Result<()> {
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

/// The CA and the servers' certificate in `dir`, generated unless they are there.
fn ensure_certificates(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if dir.join("ca.crt").exists() && dir.join("redis.crt").exists() {
        return Ok(());
    }
    generate_certificates(dir)
}

/// Runs `program` with `args` (in `dir` when given) to completion; its output, or an
/// error saying what failed with what it printed, or which Debian `package` to install.
fn run(
    program: &str,
    args: &[impl AsRef<std::ffi::OsStr>],
    dir: Option<&Path>,
    package: &str,
) -> Result<String> {
    let mut command = std::process::Command::new(program);
    command.args(args).stdin(Stdio::null());
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let output = command
        .output()
        .with_context(|| format!("{program} not found: apt-get install {package}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        let args: Vec<String> = args
            .iter()
            .map(|arg| arg.as_ref().to_string_lossy().into_owned())
            .collect();
        bail!(
            "{program} {} failed ({}): {} {}",
            args.join(" "),
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(stdout)
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
        run("openssl", args, Some(dir), "openssl")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stops the servers when the test ends, passed or not.
    struct Stopped(LocalRedis);

    impl Drop for Stopped {
        fn drop(&mut self) {
            let _ = self.0.stop();
        }
    }

    /// Three shards of a primary and a replica: six TLS redis-servers below the ephemeral
    /// range, every slot served, found again from their ports, and all gone once stopped.
    #[test]
    fn a_local_cluster_runs_its_primaries_and_replicas_and_stops_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let redis = Stopped(LocalRedis::start_cluster(dir.path(), 3, 1).unwrap());
        let cluster = &redis.0;

        assert_eq!(cluster.servers.len(), 6);
        assert!(cluster.matches(3, 1) && !cluster.matches(1, 1) && !cluster.matches(2, 1));
        assert_eq!(cluster.cluster_roles().unwrap(), (3, 3));
        let info = cluster.cli(&["CLUSTER", "INFO"]).unwrap();
        for line in ["cluster_state:ok", "cluster_slots_assigned:16384"] {
            assert!(info.lines().any(|l| l.trim() == line), "{line}: {info}");
        }
        let ports = cluster.ports();
        assert!(ports.iter().all(|port| *port >= 10_000), "{ports:?}");
        let found = LocalRedis::running(dir.path(), &ports).expect("found by its ports");
        assert_eq!(found.ports(), ports);

        cluster.stop().unwrap();

        for server in &cluster.servers {
            assert!(!process_is(server.pid, "redis-server"), "{server:?}");
        }
        assert!(LocalRedis::running(dir.path(), &ports).is_none());
    }
}
