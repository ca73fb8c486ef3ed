//! Test support shared by the integration tests: real `redis-server` processes on free
//! loopback ports (plain, persistent, TLS), real `chat-server` processes, WebSocket and
//! HTTP clients, and polling with timeouts. One piece of code for each.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpStream as TokioTcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Upper bound for anything the tests wait for; generous for a loaded 2-core machine.
pub const WAIT: Duration = Duration::from_secs(30);

/// Where tests leave files worth looking at after a run (screenshots, logs).
pub fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Finds a system tool, failing the test with how to install it when missing.
pub fn tool(name: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("{name} not found: run scripts/test.sh or `apt-get install -y {package}`")
    })
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` every 50 ms until it returns `Some`; `None` once `timeout` has passed.
async fn poll<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `check` until it returns `Some`, panicking with `what` after `timeout`.
pub async fn poll_until<T, F, Fut>(timeout: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll(timeout, check)
        .await
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Polls `probe` until what it reads equals `expected`, panicking after `timeout` with
/// `what`, the value expected and the last one read.
pub async fn poll_until_equal<V, E, F, Fut>(
    timeout: Duration,
    what: &str,
    mut probe: F,
    expected: &E,
) where
    V: PartialEq<E> + std::fmt::Debug,
    E: std::fmt::Debug + ?Sized,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = V>,
{
    let last = std::cell::RefCell::new(None);
    let equal = poll(timeout, || {
        let read = probe();
        let last = &last;
        async move {
            let value = read.await;
            let equal = value == *expected;
            *last.borrow_mut() = Some(value);
            equal.then_some(())
        }
    })
    .await;
    assert!(
        equal.is_some(),
        "timed out after {timeout:?} waiting for {what}: expected {expected:?}, last read {:?}",
        last.borrow()
    );
}

fn kill_child(child: &mut Child, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status();
}

/// Runs `openssl` in `dir`, failing the test with its error output.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new(tool("openssl", "openssl"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------- sign-in keys

/// A signing key pair made by `openssl`, as an identity service would have one: the
/// public half as the PEM file the server is given, the private half signing tokens.
pub struct KeyPair {
    pub public_pem: PathBuf,
    private_der: Vec<u8>,
    algorithm: jsonwebtoken::Algorithm,
}

impl KeyPair {
    pub fn ed25519(dir: &Path, name: &str) -> KeyPair {
        Self::generate(dir, name, &["-algorithm", "ed25519"])
    }

    pub fn p256(dir: &Path, name: &str) -> KeyPair {
        Self::generate(
            dir,
            name,
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        )
    }

    pub fn p384(dir: &Path, name: &str) -> KeyPair {
        Self::generate(
            dir,
            name,
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        )
    }

    fn generate(dir: &Path, name: &str, algorithm: &[&str]) -> KeyPair {
        let private = format!("{name}.pem");
        let public = format!("{name}.pub.pem");
        let der = format!("{name}.der");
        let mut genpkey = vec!["genpkey"];
        genpkey.extend_from_slice(algorithm);
        genpkey.extend(["-out", &private]);
        openssl(dir, &genpkey);
        openssl(dir, &["pkey", "-in", &private, "-pubout", "-out", &public]);
        // PKCS#8, as jsonwebtoken reads private keys (`pkey -outform DER` writes SEC1
        // for EC keys).
        openssl(
            dir,
            &[
                "pkcs8", "-topk8", "-nocrypt", "-in", &private, "-outform", "DER", "-out", &der,
            ],
        );
        KeyPair {
            public_pem: dir.join(public),
            private_der: std::fs::read(dir.join(der)).unwrap(),
            algorithm: if algorithm[1] == "ed25519" {
                jsonwebtoken::Algorithm::EdDSA
            } else {
                jsonwebtoken::Algorithm::ES256
            },
        }
    }

    pub fn public_pem_path(&self) -> &str {
        self.public_pem.to_str().unwrap()
    }

    /// A JWT of `claims`, signed with the private key.
    pub fn token(&self, claims: &Value) -> String {
        let key = match self.algorithm {
            jsonwebtoken::Algorithm::EdDSA => {
                jsonwebtoken::EncodingKey::from_ed_der(&self.private_der)
            }
            _ => jsonwebtoken::EncodingKey::from_ec_der(&self.private_der),
        };
        jsonwebtoken::encode(&jsonwebtoken::Header::new(self.algorithm), claims, &key).unwrap()
    }
}

/// Seconds since the Unix epoch, as JWT times are.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------- redis-server

/// Certificates for a TLS Redis: a CA, and a server certificate for 127.0.0.1 signed by it.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn generate(dir: &Path) -> TlsFiles {
        let run = |args: &[&str]| openssl(dir, args);
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=chat-test-ca",
        ]);
        run(&[
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
        ]);
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        run(&[
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
            "2",
            "-out",
            "redis.crt",
            "-extfile",
            "ext.cnf",
        ]);
        TlsFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join("redis.crt"),
            key: dir.join("redis.key"),
        }
    }
}

/// A `redis-server` child on a loopback port, with its data and log in a temp dir.
/// Killed on drop.
pub struct Redis {
    pub port: u16,
    pub dir: tempfile::TempDir,
    tls: Option<TlsFiles>,
    persistent: bool,
    replica_of: Option<u16>,
    /// A Redis Cluster node: its cluster bus port.
    cluster_port: Option<u16>,
    child: Option<Child>,
}

impl Redis {
    /// A plain in-memory Redis.
    pub fn start() -> Redis {
        Self::launch(false, false, None)
    }

    /// A node with cluster mode enabled, not yet part of any cluster.
    fn start_cluster_node() -> Redis {
        let mut node = Self::new(false, false, None);
        node.cluster_port = Some(0);
        node.spawn_on_free_port()
    }

    /// A plain Redis replicating from `primary` (which it may later replace).
    pub fn start_replica_of(primary: &Redis) -> Redis {
        Self::launch(false, false, Some(primary.port))
    }

    /// A Redis that appends every write to an AOF file (fsync always), so a kill and
    /// restart on the same port keeps the streams.
    pub fn start_persistent() -> Redis {
        Self::launch(true, false, None)
    }

    /// A Redis that speaks only TLS, with a certificate from a CA the test generates.
    pub fn start_tls() -> Redis {
        Self::launch(false, true, None)
    }

    fn launch(persistent: bool, tls: bool, replica_of: Option<u16>) -> Redis {
        Self::new(persistent, tls, replica_of).spawn_on_free_port()
    }

    fn new(persistent: bool, tls: bool, replica_of: Option<u16>) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let tls = tls.then(|| TlsFiles::generate(dir.path()));
        Redis {
            port: 0,
            dir,
            tls,
            persistent,
            replica_of,
            cluster_port: None,
            child: None,
        }
    }

    fn spawn_on_free_port(self) -> Redis {
        let mut redis = self;
        // A free port can be taken between probing and binding; try another.
        for _ in 0..5 {
            redis.port = free_port();
            if redis.cluster_port.is_some() {
                redis.cluster_port = Some(free_port());
            }
            if redis.spawn() {
                return redis;
            }
        }
        panic!(
            "could not start redis-server; see {}",
            redis.log_path().display()
        );
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn ca_file(&self) -> &Path {
        &self.tls.as_ref().expect("not a TLS redis").ca
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Starts redis-server and waits until it accepts connections. Returns false if it
    /// exited (usually: port taken).
    fn spawn(&mut self) -> bool {
        let binary = tool("redis-server", "redis-server");
        let _ = std::fs::remove_file(self.log_path());
        let port = self.port.to_string();
        let mut args: Vec<String> = vec![
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            self.dir.path().display().to_string(),
            "--logfile".into(),
            self.log_path().display().to_string(),
            "--save".into(),
            "".into(),
            "--daemonize".into(),
            "no".into(),
        ];
        if let Some(primary) = self.replica_of {
            args.extend([
                "--replicaof".into(),
                "127.0.0.1".into(),
                primary.to_string(),
            ]);
        }
        if let Some(cluster_port) = self.cluster_port {
            args.extend([
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-port".into(),
                cluster_port.to_string(),
                "--cluster-config-file".into(),
                self.dir.path().join("nodes.conf").display().to_string(),
                "--cluster-node-timeout".into(),
                "2000".into(),
                // Replicas sync at once, not after the default 5 s wait for more.
                "--repl-diskless-sync-delay".into(),
                "0".into(),
            ]);
        }
        if self.persistent {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"].map(String::from));
        } else {
            args.extend(["--appendonly", "no"].map(String::from));
        }
        match &self.tls {
            Some(tls) => args.extend([
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port,
                "--tls-cert-file".into(),
                tls.cert.display().to_string(),
                "--tls-key-file".into(),
                tls.key.display().to_string(),
                "--tls-ca-cert-file".into(),
                tls.ca.display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
            ]),
            None => args.extend(["--port".into(), port]),
        }
        let mut child = Command::new(binary)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning redis-server");
        let deadline = Instant::now() + WAIT;
        loop {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            if log.contains("Ready to accept connections")
                && TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                self.child = Some(child);
                return true;
            }
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not become ready; log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills redis-server hard (SIGKILL: no chance to save anything beyond the AOF).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Starts redis-server again on the same port with the same data directory.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "redis-server did not restart on port {}",
            self.port
        );
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of `redis-server` nodes: primaries with a replica each, every slot
/// assigned (by `redis-cli --cluster create`). Killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    pub fn start(primaries: usize) -> RedisCluster {
        let nodes: Vec<Redis> = (0..primaries * 2)
            .map(|_| Redis::start_cluster_node())
            .collect();
        let output = Command::new(tool("redis-cli", "redis-tools"))
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|node| format!("127.0.0.1:{}", node.port)))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("running redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed:\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = RedisCluster { nodes };
        for node in &cluster.nodes {
            cluster.wait_until(node, "cluster_state:ok");
        }
        // Every replica in sync, so that a failover can happen.
        let deadline = Instant::now() + WAIT;
        for node in &cluster.nodes {
            while cluster.cli(node, &["ROLE"]).starts_with("slave")
                && !cluster
                    .cli(node, &["INFO", "replication"])
                    .contains("master_link_status:up")
            {
                assert!(
                    Instant::now() < deadline,
                    "replica {} never synced",
                    node.port
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster
    }

    /// The URL the servers get: one node, from which they learn the others.
    pub fn url(&self) -> String {
        self.nodes[0].url()
    }

    /// `redis-cli -p <node's port> <args>`'s output.
    pub fn cli(&self, node: &Redis, args: &[&str]) -> String {
        let output = Command::new(tool("redis-cli", "redis-tools"))
            .args(["-p", &node.port.to_string()])
            .args(args)
            .output()
            .expect("running redis-cli");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Waits until `CLUSTER INFO` on `node` shows `line`.
    pub fn wait_until(&self, node: &Redis, line: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let info = self.cli(node, &["CLUSTER", "INFO"]);
            if info.lines().any(|l| l.trim() == line) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} never showed {line}:\n{info}",
                node.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The node that is primary for the slot of `key`.
    pub fn primary_of(&self, key: &str) -> &Redis {
        let slot = self.cli(&self.nodes[0], &["CLUSTER", "KEYSLOT", key]);
        let slot: u16 = slot.trim().parse().expect("a slot number");
        self.nodes
            .iter()
            .find(|node| {
                self.cli(node, &["ROLE"]).starts_with("master") && self.owns_slot(node, slot)
            })
            .expect("a primary for the slot")
    }

    fn owns_slot(&self, node: &Redis, slot: u16) -> bool {
        let nodes = self.cli(node, &["CLUSTER", "NODES"]);
        let Some(me) = nodes.lines().find(|l| l.contains("myself")) else {
            return false;
        };
        me.split_whitespace().skip(8).any(|range| {
            let (low, high) = range.split_once('-').unwrap_or((range, range));
            matches!((low.parse::<u16>(), high.parse::<u16>()), (Ok(low), Ok(high)) if low <= slot && slot <= high)
        })
    }

    /// The node's cluster id (`CLUSTER MYID`).
    pub fn node_id(&self, node: &Redis) -> String {
        self.cli(node, &["CLUSTER", "MYID"]).trim().to_owned()
    }

    /// The count of `code` error replies `node` has sent (`INFO errorstats`), e.g. `ASK`.
    pub fn errors_sent(&self, node: &Redis, code: &str) -> u64 {
        let prefix = format!("errorstat_{code}:count=");
        self.cli(node, &["INFO", "errorstats"])
            .lines()
            .find_map(|line| line.strip_prefix(&prefix)?.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }

    /// A replica of `primary`.
    pub fn replica_of(&self, primary: &Redis) -> &Redis {
        self.nodes
            .iter()
            .find(|node| {
                let role = self.cli(node, &["ROLE"]);
                role.starts_with("slave")
                    && role.lines().nth(2).map(str::trim) == Some(&primary.port.to_string())
            })
            .expect("a replica of the primary")
    }
}

// ---------------------------------------------------------------- chat-server

/// A `chat-server` child process. Killed on drop; its log goes to the test's output.
pub struct Server {
    pub addr: SocketAddr,
    pub instance: String,
    /// Set when the server's log shows a panic (a task's, which the process survives).
    panicked: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Every line the server logged so far.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    child: Child,
}

impl Server {
    /// Starts a server on a random loopback port against `redis_url`, with `extra` flags.
    pub fn start(instance: &str, redis_url: &str, extra: &[&str]) -> Server {
        Self::start_at("127.0.0.1:0", instance, redis_url, extra)
    }

    /// Starts a server on the given address (e.g. the port of one that has exited).
    pub fn start_at(listen: &str, instance: &str, redis_url: &str, extra: &[&str]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_chat-server"));
        // Only the flags below count: the caller's CHAT_*/REDIS_* settings must not leak in.
        for (key, _) in std::env::vars_os() {
            let key_str = key.to_string_lossy();
            if key_str.starts_with("CHAT_") || key_str.starts_with("REDIS_") {
                command.env_remove(&key);
            }
        }
        let mut child = command
            .args(["--listen", listen, "--redis-url", redis_url])
            .args(["--instance-id", instance])
            .args(extra)
            .env("RUST_LOG", "info,chat_server=trace")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning chat-server");
        // Keep draining stderr for the life of the process, or it blocks on a full pipe.
        let stderr = child.stderr.take().unwrap();
        let (addr_tx, addr_rx) = std_mpsc::channel();
        let tag = instance.to_owned();
        let panicked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let saw_panic = panicked.clone();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{tag}] {line}");
                lines.lock().unwrap().push(line.clone());
                if line.contains("panicked") {
                    saw_panic.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                if line.contains("listening")
                    && let Some(addr) = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("addr="))
                {
                    let _ = addr_tx.send(addr.parse::<SocketAddr>().unwrap());
                }
            }
        });
        let addr = addr_rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("chat-server {instance} did not start listening"));
        Server {
            addr,
            instance: instance.to_owned(),
            panicked,
            log,
            child,
        }
    }

    /// Whether any line the server logged so far contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.log
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains(needle))
    }

    /// Every line the server logged so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Whether the server logged a panic so far.
    pub fn panicked(&self) -> bool {
        self.panicked.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws{query}", self.addr)
    }

    pub fn sigterm(&mut self) {
        kill_child(&mut self.child, "-TERM");
    }

    /// Waits for the process to exit by itself.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        poll_until(WAIT, "chat-server to exit", || {
            let status = self.child.try_wait().unwrap();
            async move { status }
        })
        .await
    }

    /// GET a path; returns status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("http://{}{path}", self.addr))
            .await
            .unwrap_or_else(|e| panic!("GET {path} on {}: {e}", self.instance));
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// Polls `/healthz` until it answers `status`.
    pub async fn wait_health(&self, status: u16) {
        poll_until(
            WAIT,
            &format!("/healthz {status} on {}", self.instance),
            || async { (self.get("/healthz").await.0 == status).then_some(()) },
        )
        .await
    }

    /// The value of a metric line `name value` in `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let [value] = self.metrics([name]).await;
        value
    }

    /// The values of `names` in one scrape of `/metrics`: figures the server updates
    /// together are read as of the same moment.
    pub async fn metrics<const N: usize>(&self, names: [&str; N]) -> [f64; N] {
        let (_, body) = self.get("/metrics").await;
        names.map(|name| {
            body.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("metric {name} missing from:\n{body}"))
                .parse()
                .unwrap()
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two servers on one Redis (or cluster), `a` and `b`, both healthy and letting a client
/// send 1 000 messages a second, with a client of `room` on each: `sender` on `a`,
/// `receiver` on `b`. The setting of every test that sends through a Redis fault and
/// checks what crossed to the other instance.
pub struct Conversation {
    pub a: Server,
    pub b: Server,
    pub sender: Client,
    pub receiver: Client,
}

impl Conversation {
    pub async fn start(redis_url: &str, extra: &[&str], room: &str) -> Conversation {
        let mut flags = vec!["--rate-per-sec", "1000", "--rate-burst", "1000"];
        flags.extend_from_slice(extra);
        let a = Server::start("a", redis_url, &flags);
        let b = Server::start("b", redis_url, &flags);
        a.wait_health(200).await;
        b.wait_health(200).await;
        let query = format!("?room={room}");
        let receiver = Client::connect(&b, &query).await;
        let sender = Client::connect(&a, &query).await;
        Conversation {
            a,
            b,
            sender,
            receiver,
        }
    }
}

/// A message a [`Sending`] loop had stored.
pub struct Stored {
    pub id: String,
    /// When it was acknowledged.
    pub at: Instant,
    /// From its first send to its acknowledgement, retries included.
    pub took: Duration,
    /// Whether it was first sent after the loop's event had happened.
    pub after_event: bool,
}

/// A client sending `m0`, `m1`, ... in a task, 20 ms apart, each until stored
/// ([`Client::send_until_stored`]), while the test makes something happen to Redis; it
/// stops once `count` messages sent after the event are stored.
pub struct Sending {
    pub event: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    stored: tokio::sync::mpsc::UnboundedReceiver<Stored>,
}

impl Sending {
    pub fn start(mut sender: Client, count: usize) -> Sending {
        use std::sync::atomic::Ordering;
        let event = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, stored) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn({
            let event = event.clone();
            async move {
                let mut after = 0;
                for i in 0.. {
                    let after_event = event.load(Ordering::SeqCst);
                    let started = Instant::now();
                    let id = sender.send_until_stored(&format!("m{i}")).await;
                    let (at, took) = (Instant::now(), started.elapsed());
                    tx.send(Stored {
                        id,
                        at,
                        took,
                        after_event,
                    })
                    .unwrap();
                    after += usize::from(after_event);
                    if after == count {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Sending {
            event,
            task,
            stored,
        }
    }

    /// The next `n` messages stored.
    pub async fn next(&mut self, n: usize) -> Vec<Stored> {
        let mut stored = Vec::with_capacity(n);
        while stored.len() < n {
            stored.push(self.stored.recv().await.expect("the sender stopped"));
        }
        stored
    }

    /// The event happened: from now on messages count towards the end.
    pub fn event_happened(&self) {
        self.event.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Waits for the loop to end; the messages stored since the last [`Sending::next`].
    pub async fn finish(mut self) -> Vec<Stored> {
        self.task.await.expect("the sender failed");
        let mut stored = Vec::new();
        while let Ok(item) = self.stored.try_recv() {
            stored.push(item);
        }
        stored
    }
}

// ---------------------------------------------------------------- WebSocket client

pub type Ws = WebSocketStream<MaybeTlsStream<TokioTcpStream>>;

/// What the next frame from the server was.
#[derive(Debug)]
pub enum Event {
    Json(Value),
    Closed(Option<CloseFrame>),
}

pub struct Client {
    pub ws: Ws,
    pub hello: Value,
}

impl Client {
    /// Connects to `/ws{query}` and reads the hello frame.
    pub async fn connect(server: &Server, query: &str) -> Client {
        Self::connect_url(&server.ws_url(query)).await
    }

    /// Connects to a WebSocket URL and reads the hello frame.
    pub async fn connect_url(url: &str) -> Client {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("websocket connect timed out")
            .expect("websocket connect failed");
        let mut client = Client {
            ws,
            hello: Value::Null,
        };
        client.hello = client.next_json().await;
        assert_eq!(client.hello["type"], "hello", "first frame must be hello");
        client
    }

    /// Connects to `/ws{query}` offering `protocols` as `Sec-WebSocket-Protocol`, and
    /// returns the protocol the server chose and the first event: the hello (also kept
    /// as `hello`), or the close of a refused connection.
    pub async fn open(
        server: &Server,
        query: &str,
        protocols: &[&str],
    ) -> (Client, Option<String>, Event) {
        let mut request = server.ws_url(query).into_client_request().unwrap();
        if !protocols.is_empty() {
            request.headers_mut().insert(
                "sec-websocket-protocol",
                protocols.join(", ").parse().unwrap(),
            );
        }
        let (ws, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("websocket connect timed out")
            .expect("websocket connect failed");
        let chosen = response
            .headers()
            .get("sec-websocket-protocol")
            .map(|p| p.to_str().unwrap().to_owned());
        let mut client = Client {
            ws,
            hello: Value::Null,
        };
        let first = client.next_event().await;
        if let Event::Json(hello) = &first {
            client.hello = hello.clone();
        }
        (client, chosen, first)
    }

    /// Connects to `/ws{query}` expecting the server to close at once, before hello;
    /// returns the close code and reason.
    pub async fn refused(server: &Server, query: &str, protocols: &[&str]) -> (u16, String) {
        match Self::open(server, query, protocols).await.2 {
            Event::Closed(Some(frame)) => (u16::from(frame.code), frame.reason.to_string()),
            other => panic!("expected a close frame first, got {other:?}"),
        }
    }

    /// Attempts an upgrade with the given Origin; returns the HTTP status of a refusal
    /// or 101.
    pub async fn try_origin(server: &Server, origin: &str) -> u16 {
        let mut request = server.ws_url("").into_client_request().unwrap();
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
        match tokio_tungstenite::connect_async(request).await {
            Ok((_, response)) => response.status().as_u16(),
            Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
            Err(e) => panic!("unexpected websocket error: {e}"),
        }
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// Sends `text` with a fresh client id until it is acknowledged, answering
    /// `unavailable` by sending it again with the same id, as the page does: a send that
    /// timed out may still have been stored, and the id makes the retry a no-op then.
    /// Message frames meanwhile (this client's room) are skipped. Returns the id the
    /// message was stored as.
    pub async fn send_until_stored(&mut self, text: &str) -> String {
        static SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let cid = format!(
            "t{}",
            SENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        self.send_cid("sender", text, &cid).await;
        loop {
            let frame = self.next_json().await;
            match frame["type"].as_str() {
                Some("ack") if frame["cid"] == cid.as_str() => {
                    return frame["id"].as_str().unwrap().into();
                }
                Some("error") if frame["code"] == "unavailable" && frame["cid"] == cid.as_str() => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    self.send_cid("sender", text, &cid).await;
                }
                Some("message") => {}
                _ => panic!("unexpected {frame} while sending {text:?}"),
            }
        }
    }

    /// A `send` carrying a client id, to be acknowledged and stored once.
    pub async fn send_cid(&mut self, name: &str, text: &str, cid: &str) {
        self.send_raw(&json!({"type": "send", "name": name, "text": text, "cid": cid}).to_string())
            .await;
    }

    pub async fn send(&mut self, name: &str, text: &str) {
        self.send_raw(&json!({"type": "send", "name": name, "text": text}).to_string())
            .await;
    }

    /// The next JSON frame or the close, skipping pings and pongs.
    pub async fn next_event(&mut self) -> Event {
        // One deadline for the whole call: pings must not keep extending it.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("timed out waiting for a frame");
            match frame {
                Some(Ok(Message::Text(text))) => {
                    return Event::Json(serde_json::from_str(&text).unwrap());
                }
                Some(Ok(Message::Close(frame))) => return Event::Closed(frame),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Event::Closed(None),
            }
        }
    }

    pub async fn next_json(&mut self) -> Value {
        match self.next_event().await {
            Event::Json(v) => v,
            Event::Closed(frame) => panic!("connection closed ({frame:?}) while expecting a frame"),
        }
    }

    /// The next `message` frame; fails on anything else.
    pub async fn next_message(&mut self) -> Value {
        let frame = self.next_json().await;
        assert_eq!(frame["type"], "message", "expected a message, got {frame}");
        frame
    }

    /// The next `count` message frames; fails on anything else, saying after how many
    /// of them a close came.
    pub async fn next_messages(&mut self, count: usize) -> Vec<Value> {
        let mut messages = Vec::with_capacity(count);
        while messages.len() < count {
            match self.next_event().await {
                Event::Json(frame) => {
                    assert_eq!(frame["type"], "message", "expected a message, got {frame}");
                    messages.push(frame);
                }
                Event::Closed(close) => panic!(
                    "closed ({close:?}) after {} of {count} messages",
                    messages.len()
                ),
            }
        }
        messages
    }

    /// The ids of the next `count` message frames; fails on anything else.
    pub async fn next_ids(&mut self, count: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(count);
        while ids.len() < count {
            ids.push(self.next_message().await["id"].as_str().unwrap().to_owned());
        }
        ids
    }

    /// The next `error` frame's code; fails on anything else.
    pub async fn next_error_code(&mut self) -> String {
        let frame = self.next_json().await;
        assert_eq!(
            frame["type"], "error",
            "expected an error frame, got {frame}"
        );
        frame["code"].as_str().unwrap().to_owned()
    }

    /// Reads until the connection closes, returning the close code (None if it ended
    /// without a close frame) and the message frames seen on the way.
    pub async fn read_until_closed(&mut self) -> (Option<u16>, Vec<Value>) {
        let (close, seen) = self.read_until_closed_with_reason().await;
        (close.map(|(code, _)| code), seen)
    }

    /// As [`Client::read_until_closed`], with the close frame's reason.
    pub async fn read_until_closed_with_reason(&mut self) -> (Option<(u16, String)>, Vec<Value>) {
        let mut seen = Vec::new();
        loop {
            match self.next_event().await {
                Event::Json(v) => seen.push(v),
                Event::Closed(frame) => {
                    let close = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                    return (close, seen);
                }
            }
        }
    }
}

/// Texts of message frames, in order.
pub fn texts(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

// ---------------------------------------------------------------- TCP proxy

/// What the proxy does with the bytes of its connections.
const PASS: u8 = 0;
const BLACKHOLE: u8 = 1;
const REFUSE: u8 = 2;

/// A loopback TCP proxy standing for the network between the servers and Redis: it
/// can be pointed at another Redis (a failover moving the primary endpoint), cut (every
/// connection closed and new ones refused) or blackholed (bytes silently dropped both
/// ways, as a dead link or a lost route does). Stops on drop.
pub struct Proxy {
    pub port: u16,
    shared: std::sync::Arc<ProxyShared>,
    accept: tokio::task::JoinHandle<()>,
}

/// Something to do, once, before the proxy forwards a command holding some bytes.
type Hook = (
    Vec<u8>,
    Box<dyn FnOnce() -> futures_util::future::BoxFuture<'static, ()> + Send>,
);

struct ProxyShared {
    target: std::sync::atomic::AtomicU16,
    mode: std::sync::atomic::AtomicU8,
    /// Bumped to close every open connection.
    cuts: tokio::sync::watch::Sender<u64>,
    before: std::sync::Mutex<Option<Hook>>,
}

impl Proxy {
    pub async fn start(target: u16) -> Proxy {
        use std::sync::atomic::{AtomicU8, AtomicU16};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = std::sync::Arc::new(ProxyShared {
            target: AtomicU16::new(target),
            mode: AtomicU8::new(PASS),
            cuts: tokio::sync::watch::channel(0).0,
            before: std::sync::Mutex::new(None),
        });
        let accept = tokio::spawn({
            let shared = shared.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(proxy_connection(client, shared.clone()));
                }
            }
        });
        Proxy {
            port,
            shared,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// New connections go to `port` from now on; open ones stay where they are.
    pub fn set_target(&self, port: u16) {
        self.shared
            .target
            .store(port, std::sync::atomic::Ordering::SeqCst);
    }

    /// Drops every byte, both ways, on open and new connections, without closing them.
    pub fn blackhole(&self) {
        self.set_mode(BLACKHOLE);
    }

    /// Closes every open connection and refuses new ones.
    pub fn cut(&self) {
        self.set_mode(REFUSE);
        self.shared.cuts.send_modify(|n| *n += 1);
    }

    /// Runs `hook` to its end, once, before forwarding to Redis the first command that
    /// holds `needle`: something happens to Redis at an exact point of a server's work.
    pub fn before_forwarding<F>(&self, needle: &[u8], hook: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let hook: Box<dyn FnOnce() -> futures_util::future::BoxFuture<'static, ()> + Send> =
            Box::new(move || Box::pin(hook));
        *self.shared.before.lock().unwrap() = Some((needle.to_vec(), hook));
    }

    /// Passes bytes again (connections closed by a cut stay closed).
    pub fn restore(&self) {
        self.set_mode(PASS);
    }

    fn set_mode(&self, mode: u8) {
        self.shared
            .mode
            .store(mode, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.cuts.send_modify(|n| *n += 1);
    }
}

async fn proxy_connection(client: TokioTcpStream, shared: std::sync::Arc<ProxyShared>) {
    use std::sync::atomic::Ordering;
    if shared.mode.load(Ordering::SeqCst) == REFUSE {
        return;
    }
    let target = shared.target.load(Ordering::SeqCst);
    let Ok(upstream) = TokioTcpStream::connect(("127.0.0.1", target)).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let mut cuts = shared.cuts.subscribe();
    tokio::select! {
        _ = pump(client_read, upstream_write, &shared, true) => {}
        _ = pump(upstream_read, client_write, &shared, false) => {}
        _ = cuts.changed() => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    shared: &ProxyShared,
    to_redis: bool,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if shared.mode.load(std::sync::atomic::Ordering::SeqCst) == BLACKHOLE {
            continue;
        }
        if to_redis {
            let hook = {
                let mut before = shared.before.lock().unwrap();
                let matches = before.as_ref().is_some_and(|(needle, _)| {
                    buffer[..n].windows(needle.len()).any(|w| w == needle)
                });
                if matches { before.take() } else { None }
            };
            if let Some((_, hook)) = hook {
                hook().await;
            }
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// A plain connection to a Redis for the test's own commands.
/// How many instances are subscribed to a room's live channel.
pub async fn followers(conn: &mut redis::aio::MultiplexedConnection, room: &str) -> i64 {
    let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(format!("chat:{{{room}}}:live"))
        .query_async(conn)
        .await
        .unwrap();
    counts[0].1
}

pub async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

// ---------------------------------------------------------------- server API

/// One request to `server`'s API: `method` on `path` (`/api/v1/...`), with `token` as
/// `Authorization: Bearer` and `body` as JSON. Returns the status, the JSON answer
/// (`Null` for an empty one: every other answer must be JSON) and the headers.
pub async fn api(
    server: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request =
        reqwest::Client::new().request(method, format!("http://{}{path}", server.addr));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = tokio::time::timeout(WAIT, request.send())
        .await
        .expect("the API did not answer in time")
        .expect("the API request failed");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{path} answered {status} with something that is not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    (status, json, headers)
}

/// The claims of a server API token for `sub`, valid for `ttl_secs`.
pub fn api_claims(sub: &str, ttl_secs: u64) -> Value {
    json!({"sub": sub, "scope": "api", "exp": unix_now() + ttl_secs})
}
