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
//!
//! Faults stay with the room they hit. Subscribing and catching up are tasks of their
//! own, run beside live delivery (a catch-up of 500 rooms holds up no other room); a
//! room whose subscription or read fails (its shard down, a read timing out) is retried
//! on its own every second, while the other rooms go on, and is counted in
//! `chat_rooms_unavailable`. Only the loss of the fan-out's connection itself (or, on
//! one Redis, its node no longer being the primary) starts it all over.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;

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
use crate::protocol::ServerFrame;
use crate::recovery::Unrecoverable;
use crate::store::{self, Entry, Store};

/// Entries read per stream per catch-up read.
const READ_COUNT: usize = 500;
/// Channels per `SUBSCRIBE`.
const BATCH: usize = 500;
/// Rooms caught up at once, beside live delivery.
const CATCH_UPS: usize = 16;
/// Bound on one subscription or catch-up read: a room on a shard that does not answer
/// is given up for now and retried.
const TASK_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the reader checks that its node is still the primary (after a failover
/// the old one may keep its connections) and lets go of rooms nobody listens to.
const ROLE_CHECK: Duration = Duration::from_secs(3);
/// How often rooms that failed are tried again.
const RETRY: Duration = Duration::from_secs(1);

/// Follows every room in `hub`, publishing new entries, until cancelled. Reconnects
/// with backoff when the fan-out's connection is lost.
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
    hub: &Arc<Hub>,
    metrics: &Metrics,
    backoff: &mut Duration,
) -> anyhow::Result<()> {
    let (push_sender, mut pushes) = mpsc::unbounded_channel();
    let mut conn = Live::connect(store.target(), push_sender).await?;
    conn.check().await?;
    // Every room followed before this connection, as if just joined.
    hub.take_joined();
    let mut rooms = Rooms::new(conn.clone(), store.clone(), hub.clone());
    rooms.subscribe(hub.rooms());
    tracing::info!("redis fan-out connected");
    metrics.reader_up.store(true, Ordering::Relaxed);
    *backoff = Duration::from_millis(100);
    let mut role_check = tokio::time::interval(ROLE_CHECK);
    role_check.reset();
    let mut retry = tokio::time::interval(RETRY);
    retry.reset();
    loop {
        metrics.rooms_unavailable.set(rooms.unavailable() as f64);
        tokio::select! {
            push = pushes.recv() => {
                let push = push.context("the fan-out connection closed")?;
                rooms.receive(push).await?;
            }
            Some(done) = rooms.tasks.next(), if !rooms.tasks.is_empty() => rooms.done(done),
            _ = hub.changed() => rooms.subscribe(hub.take_joined()),
            _ = retry.tick() => rooms.retry(),
            _ = role_check.tick() => {
                conn.check().await?;
                rooms.unsubscribe(hub.prune());
            }
        }
    }
}

/// Rooms subscribed to, rooms not, and why not.
type Subscribed = (Vec<String>, Vec<String>, Option<anyhow::Error>);

/// What a task of the reader came back with.
enum Done {
    Subscribed(Subscribed),
    Unsubscribed(Vec<String>, anyhow::Result<()>),
    CaughtUp(String, anyhow::Result<()>),
}

/// The rooms this connection follows, and the work on them in flight.
struct Rooms {
    conn: Live,
    store: Store,
    hub: Arc<Hub>,
    tasks: FuturesUnordered<BoxFuture<'static, Done>>,
    /// Rooms being caught up, and whether an entry arrived meanwhile (read again after).
    catching_up: HashMap<String, bool>,
    /// Rooms waiting for a catch-up slot, in order.
    to_catch_up: VecDeque<String>,
    /// Rooms whose subscription or catch-up failed: tried again at the next retry.
    failed_subscribe: HashSet<String>,
    failed_catch_up: HashSet<String>,
    failed_unsubscribe: HashSet<String>,
    /// Rooms whose channel the cluster let go of: subscribed again once read.
    moved: HashSet<String>,
}

impl Rooms {
    fn new(conn: Live, store: Store, hub: Arc<Hub>) -> Self {
        Rooms {
            conn,
            store,
            hub,
            tasks: FuturesUnordered::new(),
            catching_up: HashMap::new(),
            to_catch_up: VecDeque::new(),
            failed_subscribe: HashSet::new(),
            failed_catch_up: HashSet::new(),
            failed_unsubscribe: HashSet::new(),
            moved: HashSet::new(),
        }
    }

    /// Rooms that cannot be served live now.
    fn unavailable(&self) -> usize {
        self.failed_subscribe.len() + self.failed_catch_up.len()
    }

    fn subscribe(&mut self, rooms: Vec<String>) {
        for batch in rooms.chunks(BATCH) {
            let (conn, batch) = (self.conn.clone(), batch.to_vec());
            self.tasks.push(Box::pin(async move {
                Done::Subscribed(conn.subscribe(batch).await)
            }));
        }
    }

    fn unsubscribe(&mut self, rooms: Vec<String>) {
        if rooms.is_empty() {
            return;
        }
        for room in &rooms {
            self.failed_subscribe.remove(room);
            self.failed_catch_up.remove(room);
        }
        let conn = self.conn.clone();
        self.tasks.push(Box::pin(async move {
            let result = bounded(conn.unsubscribe(&rooms)).await;
            Done::Unsubscribed(rooms, result)
        }));
    }

    /// Reads the room's stream after the entry last delivered here, now or once a slot
    /// is free; if it is being read already, once more after that.
    fn catch_up(&mut self, room: String) {
        if let Some(again) = self.catching_up.get_mut(&room) {
            *again = true;
            return;
        }
        self.catching_up.insert(room.clone(), false);
        self.to_catch_up.push_back(room);
        self.start_catch_ups();
    }

    fn start_catch_ups(&mut self) {
        while self.catching_up.len() - self.to_catch_up.len() < CATCH_UPS {
            let Some(room) = self.to_catch_up.pop_front() else {
                return;
            };
            let (conn, store, hub) = (self.conn.clone(), self.store.clone(), self.hub.clone());
            self.tasks.push(Box::pin(async move {
                let result = read_stream(&conn, &store, &hub, &room).await;
                Done::CaughtUp(room, result)
            }));
        }
    }

    fn done(&mut self, done: Done) {
        match done {
            Done::Subscribed((live, failed, error)) => {
                self.hub.mark_live(&live);
                for room in live {
                    self.failed_subscribe.remove(&room);
                    self.catch_up(room);
                }
                if let Some(error) = error {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        rooms = failed.len(),
                        "subscribing failed; trying again"
                    );
                    self.failed_subscribe.extend(failed);
                }
            }
            Done::Unsubscribed(rooms, result) => {
                if let Err(error) = result {
                    tracing::debug!(
                        error = format!("{error:#}"),
                        "unsubscribing failed; trying again"
                    );
                    self.failed_unsubscribe.extend(rooms);
                }
            }
            Done::CaughtUp(room, result) => {
                let again = self.catching_up.remove(&room).unwrap_or(false);
                match result {
                    Ok(()) if self.moved.remove(&room) => self.subscribe(vec![room]),
                    Ok(()) if again => self.catch_up(room),
                    Ok(()) => {
                        self.failed_catch_up.remove(&room);
                    }
                    Err(error) => {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            room,
                            "catching up failed; trying again"
                        );
                        self.failed_catch_up.insert(room);
                    }
                }
                self.start_catch_ups();
            }
        }
    }

    /// Tries again what failed, for the rooms still followed.
    fn retry(&mut self) {
        let followed = |room: &String| self.hub.position(room).is_some();
        let subscribe: Vec<String> = self.failed_subscribe.drain().collect();
        let catch_up: Vec<String> = self.failed_catch_up.drain().collect();
        let unsubscribe: Vec<String> = self.failed_unsubscribe.drain().collect();
        let unsubscribe: Vec<String> = unsubscribe.into_iter().filter(|r| !followed(r)).collect();
        let subscribe: Vec<String> = subscribe.into_iter().filter(followed).collect();
        let catch_up: Vec<String> = catch_up.into_iter().filter(followed).collect();
        if !subscribe.is_empty() {
            self.subscribe(subscribe);
        }
        for room in catch_up {
            self.catch_up(room);
        }
        self.unsubscribe(unsubscribe);
    }

    /// One push from Redis: an entry published on a live channel, delivered if it is
    /// the next one; a gap before it is read from the stream.
    async fn receive(&mut self, push: PushInfo) -> anyhow::Result<()> {
        let cluster = matches!(self.conn, Live::Cluster(_));
        match push.kind {
            PushKind::Message | PushKind::SMessage => {}
            // Subscribed again after a lost connection or moved slots: what was
            // published meanwhile is in the stream.
            PushKind::SSubscribe => {
                if let Some(room) = push.data.first().and_then(room_of_push) {
                    self.catch_up(room.to_owned());
                }
                return Ok(());
            }
            // A shard's node let go of the channel (its slot moved, or a failover made
            // it a replica): subscribe again where the slot lives now, and catch up.
            // The read first, because it is routed by the room's key: the old node
            // answers `MOVED`, and the connection learns the new owner before it
            // subscribes.
            PushKind::SUnsubscribe => {
                if let Some(room) = push.data.first().and_then(room_of_push)
                    && self.hub.position(room).is_some()
                {
                    tracing::info!(
                        room,
                        "the cluster moved the room's channel: subscribing again"
                    );
                    self.moved.insert(room.to_owned());
                    self.catch_up(room.to_owned());
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
        let Some(last) = self.hub.position(room) else {
            return Ok(());
        };
        // Entries are arrays; presence and typing events, objects.
        if payload.first() == Some(&b'{') {
            announce_event(&self.hub, room, payload);
            return Ok(());
        }
        if self.catching_up.contains_key(room) || self.failed_catch_up.contains(room) {
            // The read under way (or the next try) delivers it, in order.
            self.catch_up(room.to_owned());
            return Ok(());
        }
        match store::published_entry(room, payload) {
            Some(entry) if entry.id <= last => {}
            Some(entry) if entry.prev == Some(last) => {
                deliver(&self.store, &self.hub, room, entry).await
            }
            // Missed one (or cannot read this one): the stream has them all, in order.
            _ => self.catch_up(room.to_owned()),
        }
        Ok(())
    }
}

/// `task`, given up after [`TASK_TIMEOUT`].
async fn bounded(task: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::time::timeout(TASK_TIMEOUT, task)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {TASK_TIMEOUT:?}")))
}

/// Delivers what the room's stream holds after the entry last delivered here, page by
/// page until it reaches the end.
async fn read_stream(conn: &Live, store: &Store, hub: &Hub, room: &str) -> anyhow::Result<()> {
    while let Some(after) = hub.position(room) {
        let read = store::read_after(room, after, READ_COUNT);
        let reply = tokio::time::timeout(TASK_TIMEOUT, conn.read(&read))
            .await
            .map_err(|_| anyhow::anyhow!("XRANGE: no answer within {TASK_TIMEOUT:?}"))??;
        let full = reply.ids.len() == READ_COUNT;
        for entry in store::entries(room, &reply.ids) {
            deliver(store, hub, room, entry).await;
        }
        if !full {
            break;
        }
    }
    Ok(())
}

/// The fan-out's connection: to the one Redis, or to every shard of a cluster. Clones
/// share the connection.
#[derive(Clone)]
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

    /// Subscribes to the live channels of `rooms`; returns those it is subscribed to
    /// and, with the error, those it is not (on a cluster, the rooms of the shards that
    /// did not answer).
    async fn subscribe(self, rooms: Vec<String>) -> Subscribed {
        match self {
            Live::Single(mut conn) => {
                let subscribed = bounded(async {
                    conn.subscribe(&live_channels(&rooms))
                        .await
                        .context("SUBSCRIBE")
                })
                .await;
                match subscribed {
                    Ok(()) => (rooms, Vec::new(), None),
                    Err(error) => (Vec::new(), rooms, Some(error)),
                }
            }
            // One command per channel: rooms hash to different slots (`CROSSSLOT`).
            Live::Cluster(conn) => {
                let results = futures_util::future::join_all(rooms.iter().map(|room| {
                    let mut conn = conn.clone();
                    let channel = store::live_channel(room);
                    bounded(async move { conn.ssubscribe(channel).await.context("SSUBSCRIBE") })
                }))
                .await;
                let mut subscribed = (Vec::new(), Vec::new(), None);
                for (room, result) in rooms.into_iter().zip(results) {
                    match result {
                        Ok(()) => subscribed.0.push(room),
                        Err(error) => {
                            subscribed.1.push(room);
                            subscribed.2 = Some(error);
                        }
                    }
                }
                subscribed
            }
        }
    }

    /// Lets go of the live channels of `rooms`.
    async fn unsubscribe(self, rooms: &[String]) -> anyhow::Result<()> {
        let channels = live_channels(rooms);
        match self {
            Live::Single(mut conn) => conn.unsubscribe(&channels).await.context("UNSUBSCRIBE"),
            Live::Cluster(conn) => {
                on_each_shard(&conn, &channels, |mut conn, channel| async move {
                    conn.sunsubscribe(channel).await
                })
                .await
                .map(drop)
                .context("SUNSUBSCRIBE")
            }
        }
    }

    /// A read on this connection (on a cluster, routed to the shard of the room's key).
    async fn read(&self, read: &redis::Cmd) -> anyhow::Result<StreamRangeReply> {
        match self.clone() {
            Live::Single(mut conn) => read.query_async(&mut conn).await,
            Live::Cluster(mut conn) => read.query_async(&mut conn).await,
        }
        .context("XRANGE catching up")
    }
}

fn live_channels(rooms: &[String]) -> Vec<String> {
    rooms.iter().map(|room| store::live_channel(room)).collect()
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
    crate::metrics::delivered(entry.id.ms);
    tracing::trace!(room, id = %entry.id, clients, "delivered");
}
