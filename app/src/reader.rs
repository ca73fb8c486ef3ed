//! The fan-out reader: one task per instance that follows, with `XREAD BLOCK` on a
//! dedicated connection, the streams of every room this instance has clients in, and
//! hands what it reads to the [`Hub`].
//!
//! It resumes each room after the last id it delivered, so a Redis disconnect or
//! restart loses nothing Redis kept; and it checks every entry's `prev` link, so when
//! what Redis kept is not everything (entries trimmed while the reader was away, or
//! lost by Redis) the room's clients are told with a `recovery` frame instead of
//! silently missing messages.
//!
//! A dedicated connection, because a blocking read would stall every command queued
//! behind it on a shared connection and would trip the short response timeout that
//! suits those commands.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamReadOptions, StreamReadReply};
use tokio_util::sync::CancellationToken;

use crate::connection::COMMAND_TIMEOUT;
use crate::health::role_is_master;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::ServerFrame;
use crate::recovery::Unrecoverable;
use crate::store::{self, Entry, Store};

/// How long `XREAD` blocks; also bounds how long a newly joined room waits for its
/// first read when other rooms are quiet.
const BLOCK: Duration = Duration::from_millis(1000);
/// Entries taken per stream per read, so one busy room cannot starve the others.
const READ_COUNT: usize = 500;
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the reader checks that its node is still the primary: after a failover
/// the old one may keep its connections and serve reads that no longer move.
const ROLE_CHECK: Duration = Duration::from_secs(3);

/// Follows the streams of every room in `hub`, publishing new entries, until
/// cancelled. Reconnects with backoff on any error.
pub async fn run(store: Store, hub: Arc<Hub>, metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = read_until_error(&store, &hub, &metrics, &mut backoff) => r,
        };
        metrics.reader_up.store(false, Ordering::Relaxed);
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

async fn read_until_error(
    store: &Store,
    hub: &Hub,
    metrics: &Metrics,
    backoff: &mut Duration,
) -> anyhow::Result<()> {
    let mut conn = store
        .client()
        .get_multiplexed_async_connection_with_config(
            &AsyncConnectionConfig::new()
                .set_connection_timeout(Some(COMMAND_TIMEOUT))
                .set_response_timeout(Some(BLOCK + COMMAND_TIMEOUT)),
        )
        .await
        .context("connecting the stream reader")?;
    ensure_primary(&mut conn).await?;
    let mut role_checked = Instant::now();
    tracing::info!("redis stream reader connected");
    *backoff = Duration::from_millis(100);
    let options = StreamReadOptions::default()
        .block(BLOCK.as_millis() as usize)
        .count(READ_COUNT);
    loop {
        if role_checked.elapsed() >= ROLE_CHECK {
            ensure_primary(&mut conn).await?;
            role_checked = Instant::now();
        }
        metrics.reader_up.store(true, Ordering::Relaxed);
        let positions = hub.positions();
        if positions.is_empty() {
            // Nothing to follow; `join` notifies, and the timeout lets us notice
            // rooms emptied since (and the role check above, a dead link).
            let _ = tokio::time::timeout(BLOCK, hub.changed()).await;
            continue;
        }
        let keys: Vec<String> = positions
            .iter()
            .map(|(room, _)| store::stream_key(room))
            .collect();
        let ids: Vec<String> = positions.iter().map(|(_, id)| id.to_string()).collect();
        let reply: Option<StreamReadReply> =
            redis::AsyncCommands::xread_options(&mut conn, &keys, &ids, &options)
                .await
                .context("XREAD")?;
        for stream in reply.map(|r| r.keys).unwrap_or_default() {
            let Some(room) = store::room_of(&stream.key) else {
                continue;
            };
            for entry in store::entries(room, &stream.ids) {
                deliver(store, hub, room, entry).await;
            }
        }
    }
}

/// Fails unless the reader's node is a primary.
async fn ensure_primary(conn: &mut MultiplexedConnection) -> anyhow::Result<()> {
    let role: redis::Value = redis::cmd("ROLE")
        .query_async(conn)
        .await
        .context("ROLE on the reader's connection")?;
    if !role_is_master(&role) {
        bail!("the reader's node is not the primary (failover?)");
    }
    Ok(())
}

/// Publishes one entry, first telling the room's clients if it does not follow the
/// entry delivered before it.
async fn deliver(store: &Store, hub: &Hub, room: &str, entry: Entry) {
    let Some(last) = hub.position(room) else {
        return;
    };
    if entry.id <= last {
        return;
    }
    if entry.prev != Some(last) {
        tracing::warn!(room, after = %last, next = %entry.id, prev = ?entry.prev, "entries lost before the reader saw them");
        // Only the epoch is fetched here, on this rare path; failing that, the frame
        // goes without it and the client learns it when it rejoins.
        let epoch = store.epoch(room).await.ok().flatten();
        let frame = ServerFrame::Recovery {
            room,
            recovered: false,
            reason: Unrecoverable::HistoryLost.code(),
            epoch: epoch.as_deref(),
        };
        hub.announce(room, entry.id, frame.to_json().into());
    }
    let frame = match &entry.message {
        Some(message) => Some(message.to_json().into()),
        None => {
            // Not ours (written by hand?): step over it rather than re-read it forever.
            tracing::warn!(room, id = %entry.id, "skipping malformed stream entry");
            None
        }
    };
    let clients = hub.publish(room, entry.id, frame);
    tracing::trace!(room, id = %entry.id, clients, "read");
}
