//! Redis: one stream per room (`chat:room:<room>`), appended with XADD and trimmed to
//! the history length; the reader task that follows every room this instance has
//! clients in; and the health probe behind `/healthz`.
//!
//! Connections: a [`ConnectionManager`] (reconnects by itself) for short commands, and
//! a dedicated connection for `XREAD BLOCK`, because a blocking read would stall every
//! command queued behind it on a shared connection and would trip the short response
//! timeout that suits those commands.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands as _, AsyncConnectionConfig, Client, TlsCertificates};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::{ChatMessage, StreamId};

/// How long `XREAD` blocks; also bounds how long a newly joined room waits for its
/// first read when other rooms are quiet.
const BLOCK: Duration = Duration::from_millis(1000);
/// Entries taken per stream per read, so one busy room cannot starve the others.
const READ_COUNT: usize = 500;
/// Response timeout for short commands: generous for a loaded machine, short enough
/// that `/healthz` notices a silent Redis within seconds.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

fn stream_key(room: &str) -> String {
    format!("chat:room:{room}")
}

fn room_of(key: &str) -> Option<&str> {
    key.strip_prefix("chat:room:")
}

#[derive(Clone)]
pub struct Store {
    client: Client,
    commands: ConnectionManager,
    history_len: usize,
}

impl Store {
    /// Prepares the client without contacting Redis: the server starts (and reports 503)
    /// even while Redis is still being created.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let client = match &config.redis_ca_file {
            Some(path) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("reading REDIS_CA_FILE {}", path.display()))?;
                Client::build_with_tls(
                    config.redis_url.as_str(),
                    TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
            }
            None => Client::open(config.redis_url.as_str()),
        }
        .context("invalid REDIS_URL")?;
        let commands = client
            .get_connection_manager_lazy(
                ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(COMMAND_TIMEOUT))
                    .set_response_timeout(Some(COMMAND_TIMEOUT))
                    .set_max_delay(Duration::from_millis(500))
                    .set_number_of_retries(3),
            )
            .context("creating the Redis connection manager")?;
        Ok(Store {
            client,
            commands,
            history_len: config.history_len,
        })
    }

    /// Appends a message to its room's stream and returns the id Redis gave it.
    pub async fn append(&self, room: &str, name: &str, text: &str) -> redis::RedisResult<StreamId> {
        let id: String = redis::cmd("XADD")
            .arg(stream_key(room))
            .arg("MAXLEN")
            .arg("~")
            .arg(self.history_len)
            .arg("*")
            .arg("name")
            .arg(name)
            .arg("text")
            .arg(text)
            .query_async(&mut self.commands.clone())
            .await?;
        id.parse().map_err(|e: crate::protocol::BadStreamId| {
            redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "XADD id",
                e.to_string(),
            ))
        })
    }

    /// The id of the newest entry of a room (`0-0` if the room is empty): where a reader
    /// that starts following the room now begins.
    pub async fn last_id(&self, room: &str) -> redis::RedisResult<StreamId> {
        let reply: StreamRangeReply = self
            .commands
            .clone()
            .xrevrange_count(stream_key(room), "+", "-", 1)
            .await?;
        Ok(reply
            .ids
            .first()
            .and_then(|e| e.id.parse().ok())
            .unwrap_or_default())
    }

    /// Every message of a room after `since`, oldest first, as far as the history goes.
    pub async fn history_after(
        &self,
        room: &str,
        since: StreamId,
    ) -> redis::RedisResult<Vec<ChatMessage>> {
        let mut out = Vec::new();
        let mut after = since;
        loop {
            let reply: StreamRangeReply = self
                .commands
                .clone()
                .xrange_count(stream_key(room), format!("({after}"), "+", READ_COUNT)
                .await?;
            let page = reply.ids.len();
            out.extend(reply.ids.iter().filter_map(|e| decode(room, e)));
            match out.last() {
                Some(last) if page == READ_COUNT => after = last.id,
                _ => return Ok(out),
            }
        }
    }

    /// Probes Redis every second and publishes the result in `metrics.redis_up`, until
    /// cancelled.
    pub async fn run_health(self, metrics: Arc<Metrics>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(HEALTH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let mut conn = self.commands.clone();
            let ping = conn.ping::<String>();
            let up = matches!(tokio::time::timeout(COMMAND_TIMEOUT, ping).await, Ok(Ok(_)));
            if metrics.redis_up.swap(up, Ordering::Relaxed) != up {
                if up {
                    tracing::info!("redis reachable");
                } else {
                    tracing::warn!("redis unreachable");
                }
            }
        }
    }

    /// Follows the streams of every room in `hub`, publishing new entries, until
    /// cancelled. Reconnects with backoff on any error and resumes each room after the
    /// last id it delivered, so nothing Redis kept is lost or repeated.
    pub async fn run_reader(self, hub: Arc<Hub>, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = self.read_until_error(&hub, &mut backoff) => r,
            };
            if let Err(e) = result {
                tracing::warn!(error = format!("{e:#}"), retry_in = ?backoff, "redis reader failed");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn read_until_error(&self, hub: &Hub, backoff: &mut Duration) -> anyhow::Result<()> {
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(
                &AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(COMMAND_TIMEOUT))
                    .set_response_timeout(Some(BLOCK + COMMAND_TIMEOUT)),
            )
            .await
            .context("connecting the stream reader")?;
        tracing::info!("redis stream reader connected");
        *backoff = Duration::from_millis(100);
        let options = StreamReadOptions::default()
            .block(BLOCK.as_millis() as usize)
            .count(READ_COUNT);
        loop {
            let positions = hub.positions();
            if positions.is_empty() {
                // Nothing to follow; `join` notifies, and the timeout lets us notice
                // rooms emptied since.
                let _ = tokio::time::timeout(BLOCK, hub.changed()).await;
                continue;
            }
            let keys: Vec<String> = positions.iter().map(|(room, _)| stream_key(room)).collect();
            let ids: Vec<String> = positions.iter().map(|(_, id)| id.to_string()).collect();
            let reply: Option<StreamReadReply> = conn
                .xread_options(&keys, &ids, &options)
                .await
                .context("XREAD")?;
            for stream in reply.map(|r| r.keys).unwrap_or_default() {
                let Some(room) = room_of(&stream.key) else {
                    continue;
                };
                for entry in &stream.ids {
                    match decode(room, entry) {
                        Some(message) => {
                            let clients = hub.publish(&message);
                            tracing::trace!(room, id = %entry.id, clients, "read");
                        }
                        // Not ours (written by hand?): step over it rather than re-read it forever.
                        None => {
                            tracing::warn!(room, id = %entry.id, "skipping malformed stream entry");
                            if let Ok(id) = entry.id.parse() {
                                hub.skip(room, id);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn decode(room: &str, entry: &redis::streams::StreamId) -> Option<ChatMessage> {
    let field =
        |name: &str| -> Option<String> { redis::from_redis_value_ref(entry.map.get(name)?).ok() };
    let message = ChatMessage {
        id: entry.id.parse().ok()?,
        room: room.to_owned(),
        name: field("name")?,
        text: field("text")?,
    };
    Some(message)
}
