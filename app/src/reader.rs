//! The fan-out: one task per instance that receives, on a dedicated RESP3 connection,
//! the entries the append script publishes on the live channel of every room this
//! instance has clients in, and hands them to the [`Hub`].
//!
//! Redis sends each message only to the instances subscribed to its room, and each
//! arrives as one push the reader decodes once and looks up by room: the work per
//! message, on Redis and here, does not grow with the number of rooms. (It did with
//! the `XREAD` over every followed stream this replaces, see app/README.md.) A room is
//! live as soon as its `SUBSCRIBE` is confirmed, with no blocking read to wait out.
//!
//! On a Redis Cluster the same runs on sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`): each
//! message stays inside the shard of its room, and the connection reaches every shard.
//!
//! Pub/sub delivers at most once, so the stream stays the truth: after subscribing to
//! a room, and whenever an entry's `prev` is not the entry delivered before it (one was
//! missed), the reader reads the stream after the last id it delivered. After a
//! disconnect it subscribes to every room again and catches each up, so nothing Redis
//! kept is lost; when what Redis kept is not everything (trimmed while the reader was
//! away, or lost by Redis) the room's clients are told with a `recovery` frame instead
//! of silently missing messages.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, bail};
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::streams::StreamRangeReply;
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::connection::{COMMAND_TIMEOUT, Target, role_is_master};
use crate::hub::{About, Hub};
use crate::metrics::Metrics;
use crate::presence::LiveEvent;
use crate::protocol::{ServerFrame, StreamId};
use crate::recovery::Unrecoverable;
use crate::store::{self, Entry, Store};

/// Entries read per stream per catch-up read.
const READ_COUNT: usize = 500;
/// Channels per `SUBSCRIBE`, and rooms per pipeline of catch-up reads.
const BATCH: usize = 500;
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the reader checks that its node is still the primary (after a failover
/// the old one may keep its connections) and lets go of rooms nobody listens to.
const ROLE_CHECK: Duration = Duration::from_secs(3);

/// Follows every room in `hub`, publishing new entries, until cancelled. Reconnects
/// with backoff on any error.
pub async fn run(store: Store, hub: Arc<Hub>, metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = follow_until_error(&store, &hub, &metrics, &mut backoff) => r,
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

async fn follow_until_error(
    store: &Store,
    hub: &Hub,
    metrics: &Metrics,
    backoff: &mut Duration,
) -> anyhow::Result<()> {
    let (push_sender, mut pushes) = mpsc::unbounded_channel();
    let mut conn = Live::connect(store.target(), push_sender).await?;
    conn.check().await?;
    // Every room followed before this connection, as if just joined.
    hub.take_joined();
    follow(&mut conn, store, hub, hub.rooms()).await?;
    tracing::info!("redis fan-out connected");
    metrics.reader_up.store(true, Ordering::Relaxed);
    *backoff = Duration::from_millis(100);
    let mut role_check = tokio::time::interval(ROLE_CHECK);
    role_check.reset();
    loop {
        tokio::select! {
            push = pushes.recv() => {
                let push = push.context("the fan-out connection closed")?;
                receive(&mut conn, store, hub, push).await?;
            }
            _ = hub.changed() => follow(&mut conn, store, hub, hub.take_joined()).await?,
            _ = role_check.tick() => {
                conn.check().await?;
                let left = hub.prune();
                if !left.is_empty() {
                    conn.unsubscribe(&left).await?;
                }
            }
        }
    }
}

/// The fan-out's connection: to the one Redis, or to every shard of a cluster.
enum Live {
    Single(MultiplexedConnection),
    /// redis-rs subscribes again by itself after a node's connection is lost or its
    /// slots move (a failover inside the cluster), and confirms with `ssubscribe` pushes,
    /// on which the reader catches the room up.
    Cluster(ClusterConnection),
}

impl Live {
    async fn connect(
        target: &Target,
        pushes: mpsc::UnboundedSender<PushInfo>,
    ) -> anyhow::Result<Self> {
        if target.cluster {
            let conn = target
                .cluster_client(ProtocolVersion::RESP3, Some(pushes))?
                .get_async_connection()
                .await
                .context("connecting the fan-out to the cluster")?;
            return Ok(Live::Cluster(conn));
        }
        let conn = target
            .client(ProtocolVersion::RESP3)?
            .get_multiplexed_async_connection_with_config(
                &AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(COMMAND_TIMEOUT))
                    .set_response_timeout(Some(COMMAND_TIMEOUT))
                    .set_push_sender(pushes),
            )
            .await
            .context("connecting the fan-out")?;
        Ok(Live::Single(conn))
    }

    /// Fails unless the one Redis's node is still the primary: after a failover the old
    /// one may keep its connections. (A cluster connection follows failovers itself.)
    async fn check(&mut self) -> anyhow::Result<()> {
        let Live::Single(conn) = self else {
            return Ok(());
        };
        let role: redis::Value = redis::cmd("ROLE")
            .query_async(conn)
            .await
            .context("ROLE on the fan-out's connection")?;
        if !role_is_master(&role) {
            bail!("the fan-out's node is not the primary (failover?)");
        }
        Ok(())
    }

    /// Subscribes to the live channels of `rooms`.
    async fn subscribe(&mut self, rooms: &[String]) -> anyhow::Result<()> {
        let channels = live_channels(rooms);
        match self {
            Live::Single(conn) => conn.subscribe(&channels).await.context("SUBSCRIBE"),
            // One command per channel: rooms hash to different slots (`CROSSSLOT`).
            Live::Cluster(conn) => on_each_shard(conn, &channels, |mut conn, channel| async move {
                conn.ssubscribe(channel).await
            })
            .await
            .map(drop)
            .context("SSUBSCRIBE"),
        }
    }

    /// Lets go of the live channels of `rooms`.
    async fn unsubscribe(&mut self, rooms: &[String]) -> anyhow::Result<()> {
        let channels = live_channels(rooms);
        match self {
            Live::Single(conn) => conn.unsubscribe(&channels).await.context("UNSUBSCRIBE"),
            Live::Cluster(conn) => on_each_shard(conn, &channels, |mut conn, channel| async move {
                conn.sunsubscribe(channel).await
            })
            .await
            .map(drop)
            .context("SUNSUBSCRIBE"),
        }
    }

    /// The replies to `reads`: one pipeline on the one Redis; on a cluster, whose rooms
    /// live in different slots, all at once, each routed to its shard.
    async fn read_all(&mut self, reads: &[redis::Cmd]) -> anyhow::Result<Vec<StreamRangeReply>> {
        match self {
            Live::Single(conn) => {
                let mut pipe = redis::pipe();
                for read in reads {
                    pipe.add_command(read.clone());
                }
                pipe.query_async(conn).await.context("XRANGE catching up")
            }
            Live::Cluster(conn) => on_each_shard(conn, reads, |mut conn, read| async move {
                read.query_async(&mut conn).await
            })
            .await
            .context("XRANGE catching up"),
        }
    }
}

fn live_channels(rooms: &[String]) -> Vec<String> {
    rooms.iter().map(|room| store::live_channel(room)).collect()
}

/// Subscribes to `rooms` and catches each up from where the hub stands.
async fn follow(
    conn: &mut Live,
    store: &Store,
    hub: &Hub,
    rooms: Vec<String>,
) -> anyhow::Result<()> {
    for batch in rooms.chunks(BATCH) {
        conn.subscribe(batch).await?;
        hub.mark_live(batch);
        catch_up(conn, store, hub, batch).await?;
    }
    Ok(())
}

/// Delivers what each room's stream holds after the entry last delivered here, in one
/// pipeline of reads per round.
async fn catch_up(
    conn: &mut Live,
    store: &Store,
    hub: &Hub,
    rooms: &[String],
) -> anyhow::Result<()> {
    let mut pending: Vec<(&str, StreamId)> = rooms
        .iter()
        .filter_map(|room| Some((room.as_str(), hub.position(room)?)))
        .collect();
    while !pending.is_empty() {
        let reads: Vec<redis::Cmd> = pending
            .iter()
            .map(|(room, after)| store::read_after(room, *after, READ_COUNT))
            .collect();
        let replies = conn.read_all(&reads).await?;
        let mut more = Vec::new();
        for ((room, _), reply) in pending.iter().zip(replies) {
            let full = reply.ids.len() == READ_COUNT;
            for entry in store::entries(room, &reply.ids) {
                deliver(store, hub, room, entry).await;
            }
            if full && let Some(last) = hub.position(room) {
                more.push((*room, last));
            }
        }
        pending = more;
    }
    Ok(())
}

/// One push from Redis: an entry published on a live channel, delivered if it is the
/// next one; a gap before it is read from the stream.
async fn receive(conn: &mut Live, store: &Store, hub: &Hub, push: PushInfo) -> anyhow::Result<()> {
    let cluster = matches!(conn, Live::Cluster(_));
    match push.kind {
        PushKind::Message | PushKind::SMessage => {}
        // Subscribed again after a lost connection or moved slots: what was published
        // meanwhile is in the stream.
        PushKind::SSubscribe => {
            if let Some(room) = push.data.first().and_then(room_of_push) {
                catch_up(conn, store, hub, &[room.to_owned()]).await?;
            }
            return Ok(());
        }
        // A shard's node let go of the channel (its slot moved, or a failover made it a
        // replica): subscribe again where the slot lives now, and catch up. The read
        // first, because it is routed by the room's key: the old node answers `MOVED`,
        // and the connection learns the new owner before it subscribes.
        PushKind::SUnsubscribe => {
            if let Some(room) = push.data.first().and_then(room_of_push)
                && hub.position(room).is_some()
            {
                tracing::info!(
                    room,
                    "the cluster moved the room's channel: subscribing again"
                );
                let room = [room.to_owned()];
                catch_up(conn, store, hub, &room).await?;
                follow(conn, store, hub, room.into()).await?;
            }
            return Ok(());
        }
        PushKind::Disconnection if !cluster => bail!("the fan-out connection was lost"),
        _ => return Ok(()),
    }
    let [channel, redis::Value::BulkString(payload)] = &push.data[..] else {
        return Ok(());
    };
    let Some(room) = room_of_push(channel) else {
        return Ok(());
    };
    let Some(last) = hub.position(room) else {
        return Ok(());
    };
    // Entries are arrays; presence and typing events, objects.
    if payload.first() == Some(&b'{') {
        announce_event(hub, room, payload);
        return Ok(());
    }
    match store::published_entry(room, payload) {
        Some(entry) if entry.id <= last => {}
        Some(entry) if entry.prev == Some(last) => deliver(store, hub, room, entry).await,
        // Missed one (or cannot read this one): the stream has them all, in order.
        _ => catch_up(conn, store, hub, &[room.to_owned()]).await?,
    }
    Ok(())
}

/// A presence or typing event, for the room's clients that asked for them.
fn announce_event(hub: &Hub, room: &str, payload: &[u8]) {
    let Some(event) = LiveEvent::decode(payload) else {
        return;
    };
    let Some((frame, origin)) = event.frame(room) else {
        return;
    };
    let origin = origin.map_or(0, |origin| hub.local_connection(origin));
    hub.announce(room, About::Event { origin }, frame.into());
}

/// `command` for every item at once, each on its own handle of the cluster connection,
/// which routes it to the shard of the item's slot.
async fn on_each_shard<T, R, F, Fut>(
    conn: &ClusterConnection,
    items: &[T],
    command: F,
) -> redis::RedisResult<Vec<R>>
where
    T: Clone,
    F: Fn(ClusterConnection, T) -> Fut,
    Fut: Future<Output = redis::RedisResult<R>>,
{
    futures_util::future::join_all(items.iter().map(|item| command(conn.clone(), item.clone())))
        .await
        .into_iter()
        .collect()
}

/// The room of the live channel a push names.
fn room_of_push(channel: &redis::Value) -> Option<&str> {
    let redis::Value::BulkString(channel) = channel else {
        return None;
    };
    store::room_of_channel(std::str::from_utf8(channel).ok()?)
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
        hub.announce(room, About::Entry(entry.id), frame.to_json().into());
    }
    let frame = match entry.frame(room) {
        Some(frame) => Some(frame.to_json().into()),
        None => {
            // Not ours (written by hand?): step over it rather than re-read it forever.
            tracing::warn!(room, id = %entry.id, "skipping malformed stream entry");
            None
        }
    };
    let clients = hub.publish(room, entry.id, frame);
    tracing::trace!(room, id = %entry.id, clients, "delivered");
}
