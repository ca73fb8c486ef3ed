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

use std::sync::RwLock;
use std::time::Duration;

use anyhow::Context as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};
use redis::{
    Client, ErrorKind, FromRedisValue, IntoConnectionInfo as _, ProtocolVersion, RedisError,
    ServerErrorKind, TlsCertificates,
};

use crate::config::Config;

/// Response timeout for one command: generous for a loaded machine, short enough that
/// a client hears `unavailable` and `/healthz` turns 503 within seconds.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on one [`Redis::call`], retries and reconnects included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
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

/// Errors that prove the command was not executed, so sending it again is safe.
fn is_not_executed(error: &RedisError) -> bool {
    matches!(
        error.kind(),
        ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::BusyLoading)
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

/// The client for `REDIS_URL`, with [`tcp_settings`], speaking `protocol`, without
/// contacting Redis.
pub fn client(config: &Config, protocol: ProtocolVersion) -> anyhow::Result<Client> {
    let info = config
        .redis_url
        .as_str()
        .into_connection_info()
        .context("invalid REDIS_URL")?;
    let settings = info.redis_settings().clone().set_protocol(protocol);
    let info = info
        .set_redis_settings(settings)
        .set_tcp_settings(tcp_settings());
    let client = match &config.redis_ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading REDIS_CA_FILE {}", path.display()))?;
            Client::build_with_tls(
                info,
                TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
        }
        None => Client::open(info),
    };
    client.context("invalid REDIS_URL")
}

/// One thing to send to Redis.
pub enum Request<'a> {
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
    Script(&'a redis::ScriptInvocation<'a>),
}

impl Request<'_> {
    async fn send<T: FromRedisValue>(&self, conn: &mut ConnectionManager) -> redis::RedisResult<T> {
        match self {
            Request::Cmd(cmd) => cmd.query_async(conn).await,
            Request::Pipe(pipe) => pipe.query_async(conn).await,
            Request::Script(script) => script.invoke_async(conn).await,
        }
    }
}

/// Short commands on a shared, replaceable connection manager.
pub struct Redis {
    client: Client,
    /// The manager in use and its generation, so that of many calls failing on the
    /// same manager only the first replaces it.
    current: RwLock<(u64, ConnectionManager)>,
}

impl Redis {
    pub fn new(client: Client) -> anyhow::Result<Self> {
        let manager = lazy_manager(&client)?;
        Ok(Redis {
            client,
            current: RwLock::new((0, manager)),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Sends `request` on the current connection, within [`CALL_TIMEOUT`]; on an error
    /// that means this connection is no good, replaces it, and retries if the command
    /// was certainly not executed.
    pub async fn call<T: FromRedisValue>(&self, request: Request<'_>) -> Result<T, StoreError> {
        let attempts = async {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let (generation, mut conn) = self.current.read().unwrap().clone();
                match request.send(&mut conn).await {
                    Ok(value) => return Ok(value),
                    Err(error) if is_unavailable(&error) => {
                        self.replace(generation, &error);
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
                let generation = self.current.read().unwrap().0;
                self.replace_after(generation, "no answer within the call timeout");
                Err(StoreError::Unavailable(format!(
                    "no answer within {CALL_TIMEOUT:?}"
                )))
            }
        }
    }

    /// Replaces the current connection: the node behind it answers, but is no longer the
    /// one to talk to (a failover demoted it), so the next call resolves the endpoint
    /// again.
    pub fn reconnect(&self, why: &str) {
        let generation = self.current.read().unwrap().0;
        self.replace_after(generation, why);
    }

    fn replace(&self, generation: u64, error: &RedisError) {
        self.replace_after(generation, &error.to_string());
    }

    /// Swaps in a fresh manager if `generation` is still the current one.
    fn replace_after(&self, generation: u64, why: &str) {
        let mut current = self.current.write().unwrap();
        if current.0 != generation {
            return;
        }
        match lazy_manager(&self.client) {
            Ok(manager) => {
                tracing::warn!(why, "replacing the redis connection");
                *current = (generation + 1, manager);
            }
            Err(e) => tracing::error!(error = %e, "cannot create a redis connection manager"),
        }
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
    }
}
