//! Command-line flags and their environment fallbacks: everything an operator can tune.
//! Each flag's `--help` text is the reference; `app/README.md` mirrors it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::auth::{Rules, Verifier};
use crate::limits::Cidr;

/// WebSocket chat server: rooms are Redis Streams, so every instance behind the load
/// balancer sees every message, and a client that reconnects with `since` misses nothing.
#[derive(Debug, Clone, Parser)]
#[command(name = "chat-server", version)]
pub struct Config {
    /// Address to listen on for HTTP and WebSocket.
    #[arg(long, env = "CHAT_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Redis URL, `redis://host:port` or `rediss://host:port` for TLS.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// `REDIS_URL` names a Redis Cluster (ElastiCache with cluster mode enabled: its
    /// configuration endpoint): rooms spread over its shards, live fan-out by sharded
    /// pub/sub.
    #[arg(long, env = "REDIS_CLUSTER", default_value_t = false, action = clap::ArgAction::Set)]
    pub redis_cluster: bool,

    /// PEM file of CA certificates to trust for `rediss://` instead of the built-in
    /// public roots (webpki-roots, which ElastiCache's certificates chain to).
    #[arg(long, env = "REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// Name this instance reports in `hello` frames and logs [default: the hostname].
    #[arg(long, env = "CHAT_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Seconds to keep serving open connections after SIGTERM/SIGINT before closing them
    /// with 1012; match the load balancer's deregistration delay.
    #[arg(long, env = "CHAT_DRAIN_SECS", default_value_t = 30)]
    pub drain_secs: u64,

    /// Comma-separated browser origins allowed to open `/ws` (e.g.
    /// `https://chat.example.com`), or `*`. Empty: only pages served from the same host
    /// (Origin host == Host header). Requests without Origin (non-browsers) are accepted.
    #[arg(long, env = "CHAT_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Messages kept per room in Redis (exact `MAXLEN` trim), at least 1; the window in
    /// which a reconnect with `since` is gap-free.
    #[arg(long, env = "CHAT_HISTORY_LEN", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub history_len: u64,

    /// Seconds a message is kept at most (trimmed by age with `XTRIM MINID` on each write).
    #[arg(long, env = "CHAT_HISTORY_MAX_AGE_SECS", default_value_t = 86_400)]
    pub history_max_age_secs: u64,

    /// Seconds after its last message that a room's keys expire in Redis.
    #[arg(long, env = "CHAT_ROOM_TTL_SECS", default_value_t = 86_400)]
    pub room_ttl_secs: u64,

    /// Open WebSocket connections allowed per client address (429 beyond).
    #[arg(long, env = "CHAT_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 200)]
    pub max_connections_per_address: usize,

    /// Rooms a client address may create (send the first message of) per minute.
    #[arg(long, env = "CHAT_NEW_ROOMS_PER_MINUTE", default_value_t = 10.0)]
    pub new_rooms_per_minute: f64,

    /// Joins a client may make per minute that cost this instance or Redis something
    /// lasting: of a room this instance does not follow yet (a queue and a subscription
    /// here), and into a room's presence (an entry in Redis); each counts one.
    #[arg(long, env = "CHAT_ROOM_JOINS_PER_MINUTE", default_value_t = 600.0)]
    pub room_joins_per_minute: f64,

    /// Comma-separated CIDRs of proxies whose `X-Forwarded-For` is believed (the load
    /// balancer's subnets, e.g. the VPC CIDR). Empty: the TCP peer is the client.
    #[arg(long, env = "CHAT_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<Cidr>,

    /// Seconds between WebSocket pings; keep well inside the load balancer's idle timeout.
    #[arg(long, env = "CHAT_PING_SECS", default_value_t = 20)]
    pub ping_secs: u64,

    /// Seconds without any frame (pong included) from a client before it is dropped as dead.
    #[arg(long, env = "CHAT_PEER_TIMEOUT_SECS", default_value_t = 60)]
    pub peer_timeout_secs: u64,

    /// Messages a client may fall behind its room before it is disconnected (close 4000).
    #[arg(long, env = "CHAT_SEND_QUEUE", default_value_t = 256)]
    pub send_queue: usize,

    /// Milliseconds over which a busy room's messages are gathered before its clients are
    /// woken to write them: the first message after a quiet spell goes out at once, those
    /// within the window after it together at its end, with one write per client. Trades
    /// at most this much latency, in busy rooms only, for fewer wake-ups and writes
    /// (BENCHMARKS.md, issue 22: half the CPU per delivery in a room of 250 at 200
    /// messages/s, for a p99 still below the server's before Nagle's algorithm was
    /// turned off); 0 sends each message on its own.
    #[arg(long, env = "CHAT_FANOUT_WINDOW_MS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub fanout_window_ms: u64,

    /// Seconds a single write to a client may take before it counts as too slow (close 4000).
    #[arg(long, env = "CHAT_WRITE_TIMEOUT_SECS", default_value_t = 10)]
    pub write_timeout_secs: u64,

    /// Sustained messages per second a connection may send.
    #[arg(long, env = "CHAT_RATE_PER_SEC", default_value_t = 5.0)]
    pub rate_per_sec: f64,

    /// Burst of messages a connection may send above the sustained rate.
    #[arg(long, env = "CHAT_RATE_BURST", default_value_t = 10.0)]
    pub rate_burst: f64,

    /// Rooms one connection may be in at once (`join` frames beyond are refused).
    #[arg(long, env = "CHAT_MAX_ROOMS_PER_CONNECTION", default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_rooms_per_connection: u16,

    /// Seconds a presence entry lives unless its instance refreshes it (every third of
    /// this): how long a member of an instance that died stays listed.
    #[arg(long, env = "CHAT_PRESENCE_TTL_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(3..))]
    pub presence_ttl_secs: u64,

    /// PEM public key (Ed25519 or ECDSA P-256) verifying the JWTs clients must present
    /// to open `/ws` (EdDSA or ES256, as the key says). Unset: no sign-in, anyone may
    /// post under any name.
    #[arg(long, env = "CHAT_AUTH_PUBLIC_KEY_FILE")]
    pub auth_public_key_file: Option<PathBuf>,

    /// With a key: tokens must carry this `iss`.
    #[arg(long, env = "CHAT_AUTH_ISSUER", requires = "auth_public_key_file")]
    pub auth_issuer: Option<String>,

    /// With a key: tokens must carry this `aud` (or a list holding it). Unset: tokens
    /// that name an audience are refused.
    #[arg(long, env = "CHAT_AUTH_AUDIENCE", requires = "auth_public_key_file")]
    pub auth_audience: Option<String>,

    /// With a key: seconds the identity service's clock may be ahead of or behind ours:
    /// a token is accepted that long before its `nbf` and after its `exp`, and a
    /// connection is closed that long after its token's `exp`.
    #[arg(long, env = "CHAT_AUTH_LEEWAY_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=300))]
    pub auth_leeway_secs: u64,

    /// With a key: where the chat page fetches a token (GET, with the browser's
    /// credentials; the answer is the token, as text or as `{"token": ...}`), at sign-in
    /// and whenever one expires. Unset: the page asks its user to paste one.
    #[arg(long, env = "CHAT_AUTH_TOKEN_URL", requires = "auth_public_key_file", value_parser = token_url)]
    pub auth_token_url: Option<String>,

    /// Sustained server API requests per second per caller (token `sub`) on this
    /// instance; more get 429.
    #[arg(long, env = "CHAT_API_RATE_PER_SEC", default_value_t = 50.0)]
    pub api_rate_per_sec: f64,

    /// Burst of server API requests per caller above the sustained rate.
    #[arg(long, env = "CHAT_API_RATE_BURST", default_value_t = 100.0)]
    pub api_rate_burst: f64,
}

/// An absolute `http(s)://` URL, for the page to fetch.
fn token_url(value: &str) -> Result<String, String> {
    let uri: axum::http::Uri = value
        .parse()
        .map_err(|e| format!("not a URL ({e}); give https://id.example.com/token"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("https" | "http"), Some(_)) => Ok(value.to_owned()),
        _ => Err(
            "must be an absolute http:// or https:// URL, such as https://id.example.com/token"
                .to_owned(),
        ),
    }
}

impl Config {
    pub fn instance_id(&self) -> String {
        self.instance_id.clone().unwrap_or_else(hostname)
    }

    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_secs)
    }

    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_secs.max(1))
    }

    pub fn peer_timeout(&self) -> Duration {
        Duration::from_secs(self.peer_timeout_secs.max(1))
    }

    pub fn fanout_window(&self) -> Duration {
        Duration::from_millis(self.fanout_window_ms)
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout_secs.max(1))
    }

    /// The token verifier, when a public key is configured.
    pub fn verifier(&self) -> anyhow::Result<Option<Verifier>> {
        self.auth_public_key_file
            .as_deref()
            .map(|key| {
                Verifier::from_file(
                    key,
                    Rules {
                        issuer: self.auth_issuer.as_deref().filter(|i| !i.is_empty()),
                        audience: self.auth_audience.as_deref().filter(|a| !a.is_empty()),
                        leeway: Duration::from_secs(self.auth_leeway_secs),
                    },
                )
            })
            .transpose()
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "chat-server".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_origin_list() {
        let c = Config::try_parse_from([
            "chat-server",
            "--allowed-origins",
            "https://a.example,https://b.example",
        ])
        .unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.drain_secs, 30);
        assert_eq!(c.history_len, 1000);
        assert_eq!(
            c.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        assert!(!c.instance_id().is_empty());
    }

    #[test]
    fn a_token_url_is_absolute_and_needs_a_key() {
        let parse = |url: &str| {
            Config::try_parse_from([
                "chat-server",
                "--auth-public-key-file",
                "k.pem",
                "--auth-token-url",
                url,
            ])
        };
        assert!(parse("https://id.example.com/token").is_ok());
        assert!(parse("/token").is_err());
        assert!(parse("ftp://id.example.com/token").is_err());
        assert!(
            Config::try_parse_from(["chat-server", "--auth-token-url", "https://id.example/t"])
                .is_err()
        );
    }

    /// A history of 0 would trim every entry as it is added: every message would start
    /// a new epoch, and no `since` could ever be recovered.
    #[test]
    fn a_history_of_no_messages_is_refused() {
        let parse = |len: &str| Config::try_parse_from(["chat-server", "--history-len", len]);
        let error = parse("0").unwrap_err().to_string();
        assert!(error.contains("--history-len"), "{error}");
        assert_eq!(parse("1").unwrap().history_len, 1);
    }
}
