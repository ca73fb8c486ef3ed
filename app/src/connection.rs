//! Connections to Redis that survive a failover, and errors that say what happened.
//!
//! redis-rs's [`ConnectionManager`] reconnects only on errors it deems unrecoverable:
//! not on `READONLY` (an ElastiCache failover demoted the node this connection is on;
//! it still answers PING), not on `LOADING`, not on response timeouts (a blackholed
//! link). [`Redis::call`] replaces the manager on those, so the next attempt resolves
//! the endpoint again and reaches the new primary, and retries once when the command
//! was certainly not executed. Every call is bounded by [`CALL_TIMEOUT`]. Sockets get
//! TCP keepalive and `TCP_USER_TIMEOUT`, so a dead peer is noticed by the kernel too,
//! also on the fan-out's long-lived connection.
//!
//! On a Redis Cluster (`--redis-cluster`) redis-rs's cluster connection does this
//! itself: it follows `MOVED` and `ASK`, refreshes its slot map after a failover inside
//! the cluster, and reconnects nodes; [`Redis::call`] only bounds each call.

use std::sync::RwLock;
use std::time::Duration;

use anyhow::Context as _;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};
use redis::{
    Client, ConnectionInfo, ErrorKind, FromRedisValue, IntoConnectionInfo as _, ProtocolVersion,
    PushInfo, RedisError, ServerErrorKind, TlsCertificates,
};
use tokio::sync::{OnceCell, mpsc};

use crate::config::Config;

/// Response timeout for one command: generous for a loaded machine, short enough that
/// a client hears `unavailable` and `/healthz` turns 503 within seconds.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on one [`Redis::call`], retries and reconnects included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Bounds, in ms, of the jittered wait before redis-rs retries on a cluster.
const CLUSTER_RETRY_MIN_MS: u64 = 10;
const CLUSTER_RETRY_MAX_MS: u64 = 500;
/// Attempts per call when an error proves the command was not executed.
const ATTEMPTS: usize = 2;

/// Why a Redis call failed, as a client needs to know it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis could not be reached, answered too late, or is not (or not yet) the
    /// primary: the request may be retried.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Redis is out of memory (`OOM`): retrying will not help until room is made.
    #[error("redis is out of memory: {0}")]
    Full(RedisError),
    /// Any other refusal by Redis.
    #[error("redis refused the command: {0}")]
    Refused(RedisError),
}

impl StoreError {
    /// The `code` of the error frame a client gets for this.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Full(_) => "storage_full",
            StoreError::Refused(_) => "storage_error",
        }
    }

    fn from_redis(error: RedisError) -> Self {
        if is_unavailable(&error) {
            StoreError::Unavailable(error.to_string())
        } else if error.code() == Some("OOM") {
            StoreError::Full(error)
        } else {
            StoreError::Refused(error)
        }
    }
}

/// Errors after which this connection should not be used again.
fn is_unavailable(error: &RedisError) -> bool {
    is_not_executed(error)
        || error.is_timeout()
        || error.is_io_error()
        || error.is_connection_dropped()
        || error.kind() == ErrorKind::Server(ServerErrorKind::MasterDown)
}

/// Errors that prove the command was not executed, so sending it again is safe. On a
/// cluster, redis-rs retries the redirections and `TRYAGAIN` itself; one still failing
/// when its retries or the call's time run out (a slot moving, a shard without a
/// primary) is the client's to send again, not a refusal.
fn is_not_executed(error: &RedisError) -> bool {
    matches!(
        error.kind(),
        ErrorKind::Server(
            ServerErrorKind::ReadOnly
                | ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask
        )
    ) || error.is_connection_refusal()
}

/// TCP settings for every Redis socket: keepalive probes after 10 s of silence, and
/// unacknowledged data abandoned after 10 s (`TCP_USER_TIMEOUT`), so a dead link fails
/// the socket instead of hanging it for the kernel's default of minutes.
fn tcp_settings() -> TcpSettings {
    TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(
            TcpKeepalive::new()
                .with_time(Duration::from_secs(10))
                .with_interval(Duration::from_secs(5))
                .with_retries(3),
        )
        .set_user_timeout(Duration::from_secs(10))
}

/// Where Redis is: `REDIS_URL`, the CA to trust, and whether it is a cluster.
#[derive(Clone)]
pub struct Target {
    info: ConnectionInfo,
    ca_pem: Option<Vec<u8>>,
    pub cluster: bool,
}

impl Target {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let info = config
            .redis_url
            .as_str()
            .into_connection_info()
            .context("invalid REDIS_URL")?
            .set_tcp_settings(tcp_settings());
        let ca_pem = match &config.redis_ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("reading REDIS_CA_FILE {}", path.display()))?,
            ),
            None => None,
        };
        Ok(Target {
            info,
            ca_pem,
            cluster: config.redis_cluster,
        })
    }

    fn certificates(&self) -> Option<TlsCertificates> {
        self.ca_pem.clone().map(|pem| TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        })
    }

    /// A client of the one Redis (not a cluster) speaking `protocol`, without contacting
    /// it.
    pub fn client(&self, protocol: ProtocolVersion) -> anyhow::Result<Client> {
        let settings = self.info.redis_settings().clone().set_protocol(protocol);
        let info = self.info.clone().set_redis_settings(settings);
        let client = match self.certificates() {
            Some(certificates) => Client::build_with_tls(info, certificates),
            None => Client::open(info),
        };
        client.context("invalid REDIS_URL")
    }

    /// A client of the cluster whose node (or configuration endpoint) `REDIS_URL` names,
    /// speaking `protocol`; pushes (pub/sub) go to `pushes`.
    pub fn cluster_client(
        &self,
        protocol: ProtocolVersion,
        pushes: Option<mpsc::UnboundedSender<PushInfo>>,
    ) -> anyhow::Result<ClusterClient> {
        let mut builder = ClusterClientBuilder::new([self.info.clone()])
            .use_protocol(protocol)
            .connection_timeout(COMMAND_TIMEOUT)
            .response_timeout(COMMAND_TIMEOUT)
            // redis-rs waits at least 1.28 s before retrying a `TRYAGAIN` (a room's slot
            // being moved) or a node that fails over; inside a call bounded by
            // CALL_TIMEOUT that leaves one or two tries. Retry within tens of ms instead.
            .min_retry_wait(CLUSTER_RETRY_MIN_MS)
            .max_retry_wait(CLUSTER_RETRY_MAX_MS)
            .tcp_settings(tcp_settings());
        if let Some(certificates) = self.certificates() {
            builder = builder.certs(certificates);
        }
        if let Some(pushes) = pushes {
            builder = builder.push_sender(pushes);
        }
        builder.build().context("invalid REDIS_URL for a cluster")
    }
}

/// One thing to send to Redis. No transactions: on a cluster, redis-rs does not follow a
/// `MOVED` or `ASK` that comes back inside `EXECABORT` (a slot being moved), while it
/// redirects a script like any command; what must be read or written together is a script.
pub enum Request<'a> {
    Cmd(&'a redis::Cmd),
    Script(&'a redis::ScriptInvocation<'a>),
}

impl Request<'_> {
    async fn send<T: FromRedisValue>(
        &self,
        conn: &mut (impl ConnectionLike + Send),
    ) -> redis::RedisResult<T> {
        match self {
            Request::Cmd(cmd) => cmd.query_async(conn).await,
            Request::Script(script) => script.invoke_async(conn).await,
        }
    }
}

/// One Redis: its client and the connection manager in use.
pub struct Single {
    client: Client,
    /// The manager in use and its generation, so that of many calls failing on the
    /// same manager only the first replaces it.
    current: RwLock<(u64, ConnectionManager)>,
}

/// Short commands on a shared connection.
pub enum Redis {
    /// One primary (and its replicas) behind an endpoint: a replaceable connection manager.
    Single(Box<Single>),
    /// Boxed, like [`Single`]: an instance holds one `Redis`, and the variants differ much
    /// in size.
    Cluster(Box<Cluster>),
}

/// A Redis Cluster: its client and the connection.
pub struct Cluster {
    client: ClusterClient,
    /// Connected on first use, so that the server starts while Redis does not answer.
    conn: OnceCell<ClusterConnection>,
}

impl Redis {
    pub fn new(target: &Target) -> anyhow::Result<Self> {
        if target.cluster {
            return Ok(Redis::Cluster(Box::new(Cluster {
                client: target.cluster_client(ProtocolVersion::RESP2, None)?,
                conn: OnceCell::new(),
            })));
        }
        let client = target.client(ProtocolVersion::RESP2)?;
        let manager = lazy_manager(&client)?;
        Ok(Redis::Single(Box::new(Single {
            client,
            current: RwLock::new((0, manager)),
        })))
    }

    /// Sends `request` within [`CALL_TIMEOUT`]. On one Redis, an error that means the
    /// connection is no good replaces it, and the request is retried if it was certainly
    /// not executed.
    pub async fn call<T: FromRedisValue>(&self, request: Request<'_>) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        let result = self.call_bounded(request).await;
        crate::metrics::redis_call_took(started.elapsed());
        result
    }

    async fn call_bounded<T: FromRedisValue>(&self, request: Request<'_>) -> Result<T, StoreError> {
        let (client, current) = match self {
            Redis::Single(single) => (&single.client, &single.current),
            Redis::Cluster(cluster) => {
                let attempt = async {
                    let mut conn = cluster
                        .conn
                        .get_or_try_init(|| cluster.client.get_async_connection())
                        .await?
                        .clone();
                    request.send(&mut conn).await
                };
                return match tokio::time::timeout(CALL_TIMEOUT, attempt).await {
                    Ok(result) => result.map_err(StoreError::from_redis),
                    Err(_) => Err(StoreError::Unavailable(format!(
                        "no answer within {CALL_TIMEOUT:?}"
                    ))),
                };
            }
        };
        let attempts = async {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let (generation, mut conn) = current.read().unwrap().clone();
                match request.send(&mut conn).await {
                    Ok(value) => return Ok(value),
                    Err(error) if is_unavailable(&error) => {
                        replace_after(client, current, generation, &error.to_string());
                        if !(is_not_executed(&error) && attempt < ATTEMPTS) {
                            return Err(StoreError::from_redis(error));
                        }
                    }
                    Err(error) => return Err(StoreError::from_redis(error)),
                }
            }
        };
        match tokio::time::timeout(CALL_TIMEOUT, attempts).await {
            Ok(result) => result,
            Err(_) => {
                let generation = current.read().unwrap().0;
                replace_after(
                    client,
                    current,
                    generation,
                    "no answer within the call timeout",
                );
                Err(StoreError::Unavailable(format!(
                    "no answer within {CALL_TIMEOUT:?}"
                )))
            }
        }
    }

    /// Whether Redis accepts writes. One Redis: the node behind the connection is a
    /// primary (`ROLE`); after a failover the old primary still answers PING but refuses
    /// writes, and nothing else would replace the connection on an instance that is not
    /// sending, so it is replaced here. A cluster: every slot is served
    /// (`cluster_state:ok`).
    pub async fn accepts_writes(&self) -> Result<bool, StoreError> {
        match self {
            Redis::Single(single) => {
                let (client, current) = (&single.client, &single.current);
                let role: redis::Value = self.call(Request::Cmd(&redis::cmd("ROLE"))).await?;
                let primary = role_is_master(&role);
                if !primary {
                    let generation = current.read().unwrap().0;
                    replace_after(
                        client,
                        current,
                        generation,
                        "the node behind the connection is not a primary",
                    );
                }
                Ok(primary)
            }
            Redis::Cluster(_) => {
                let mut cmd = redis::cmd("CLUSTER");
                cmd.arg("INFO");
                let info: String = self.call(Request::Cmd(&cmd)).await?;
                Ok(info.lines().any(|line| line.trim() == "cluster_state:ok"))
            }
        }
    }
}

/// `ROLE`'s first element is `master`, `slave` or `sentinel`.
pub fn role_is_master(role: &redis::Value) -> bool {
    match role {
        redis::Value::Array(items) => matches!(
            items.first(),
            Some(redis::Value::BulkString(kind)) if kind.as_slice() == b"master"
        ),
        _ => false,
    }
}

/// Swaps in a fresh manager if `generation` is still the current one.
fn replace_after(
    client: &Client,
    current: &RwLock<(u64, ConnectionManager)>,
    generation: u64,
    why: &str,
) {
    let mut current = current.write().unwrap();
    if current.0 != generation {
        return;
    }
    match lazy_manager(client) {
        Ok(manager) => {
            tracing::warn!(why, "replacing the redis connection");
            *current = (generation + 1, manager);
        }
        Err(e) => tracing::error!(error = %e, "cannot create a redis connection manager"),
    }
}

/// A manager that connects on first use, so building one never waits on Redis.
fn lazy_manager(client: &Client) -> redis::RedisResult<ConnectionManager> {
    client.get_connection_manager_lazy(
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_max_delay(Duration::from_millis(500))
            .set_number_of_retries(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: &str) -> RedisError {
        let reply = format!("-{code} something\r\n");
        redis::parse_redis_value(reply.as_bytes())
            .unwrap()
            .extract_error()
            .unwrap_err()
    }

    #[test]
    fn errors_are_classified() {
        assert_eq!(
            StoreError::from_redis(server_error("READONLY")).code(),
            "unavailable"
        );
        assert_eq!(
            StoreError::from_redis(server_error("LOADING")).code(),
            "unavailable"
        );
        assert_eq!(
            StoreError::from_redis(server_error("OOM")).code(),
            "storage_full"
        );
        assert_eq!(
            StoreError::from_redis(server_error("ERR")).code(),
            "storage_error"
        );
        let timeout = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert_eq!(StoreError::from_redis(timeout).code(), "unavailable");
        assert!(is_not_executed(&server_error("READONLY")));
        assert!(!is_not_executed(&server_error("OOM")));
        // A cluster's "not now, not here": the client sends again.
        for code in [
            "TRYAGAIN",
            "CLUSTERDOWN",
            "MOVED 3999 127.0.0.1:6381",
            "ASK 3999 127.0.0.1:6381",
        ] {
            assert_eq!(
                StoreError::from_redis(server_error(code)).code(),
                "unavailable",
                "{code}"
            );
        }
    }
}
