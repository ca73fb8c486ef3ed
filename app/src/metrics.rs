//! What an operator watches: `GET /metrics` in the Prometheus text format. Counters,
//! gauges and histograms are recorded through the `metrics` facade and rendered by its
//! Prometheus exporter; their handles are made once, here, so that a hot path pays an
//! atomic add, not a lookup. The few values the server itself acts on (whether Redis is
//! up, whether it is draining, how many connections are open) are state it reads, kept
//! as atomics and copied into gauges when the page is rendered.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::metrics::{
    Counter, Gauge, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// Bounds of the latency histograms, in seconds: from half a millisecond (a Redis call on
/// a quiet network) to 5 s (past every timeout).
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
const REDIS_CALL: &str = "chat_redis_call_seconds";
const STORE_TO_DELIVERY: &str = "chat_store_to_delivery_seconds";

pub struct Metrics {
    handle: PrometheusHandle,
    /// Open WebSocket connections.
    pub connections: AtomicU64,
    /// The node behind the command connection is a primary and answers.
    pub redis_writable: AtomicBool,
    /// The fan-out reader is connected to a primary and its last read succeeded.
    pub reader_up: AtomicBool,
    /// Both of the above, as of the last health probe.
    pub redis_up: AtomicBool,
    pub draining: AtomicBool,
    pub connections_total: Counter,
    pub messages_in: Counter,
    pub messages_out: Counter,
    pub rejected_frames: Counter,
    pub slow_disconnects: Counter,
    /// Connections refused at the upgrade for their sign-in token.
    pub auth_refused: Counter,
    /// Connections closed when their token expired.
    pub token_expired: Counter,
    /// Redis's `used_memory` (of its largest node, on a cluster), as of the last probe.
    pub redis_used_memory: Gauge,
    /// The same summed over a cluster's primaries (one Redis: its own).
    pub redis_used_memory_sum: Gauge,
    /// Rooms followed here whose subscription or catch-up is failing (being retried).
    pub rooms_unavailable: Gauge,
}

impl Metrics {
    /// Installs the process's recorder and registers every series, so that each is on
    /// the page (at 0) from the start.
    pub fn install() -> anyhow::Result<Metrics> {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(REDIS_CALL.into()), LATENCY_BUCKETS)?
            .set_buckets_for_metric(Matcher::Full(STORE_TO_DELIVERY.into()), LATENCY_BUCKETS)?
            .install_recorder()?;
        let counter_of = |name: &'static str, help: &'static str| {
            describe_counter!(name, help);
            counter!(name)
        };
        let gauge_of = |name: &'static str, unit: Unit, help: &'static str| {
            describe_gauge!(name, unit, help);
            gauge!(name)
        };
        describe_histogram!(
            REDIS_CALL,
            Unit::Seconds,
            "How long each call to Redis took, retries and reconnects included."
        );
        describe_histogram!(
            STORE_TO_DELIVERY,
            Unit::Seconds,
            "From a message's store in Redis (its stream id, Redis's clock) to this instance handing it to the room's connections."
        );
        for (name, help) in GAUGES_OF_STATE {
            describe_gauge!(*name, *help);
        }
        Ok(Metrics {
            handle,
            connections: AtomicU64::new(0),
            redis_writable: AtomicBool::new(false),
            reader_up: AtomicBool::new(false),
            redis_up: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            connections_total: counter_of(
                "chat_connections_total",
                "WebSocket connections accepted.",
            ),
            messages_in: counter_of(
                "chat_messages_in_total",
                "Messages accepted from clients and stored in Redis.",
            ),
            messages_out: counter_of(
                "chat_messages_out_total",
                "Message frames sent to clients (live and replayed).",
            ),
            rejected_frames: counter_of(
                "chat_rejected_frames_total",
                "Client frames answered with an error frame.",
            ),
            slow_disconnects: counter_of(
                "chat_slow_consumer_disconnects_total",
                "Clients disconnected for not keeping up (close 4000).",
            ),
            auth_refused: counter_of(
                "chat_auth_refused_total",
                "WebSocket upgrades refused for their sign-in token (close 4401, 4403, 4440).",
            ),
            token_expired: counter_of(
                "chat_token_expired_disconnects_total",
                "Connections closed when their token expired (close 4440).",
            ),
            redis_used_memory: gauge_of(
                "chat_redis_used_memory_bytes",
                Unit::Bytes,
                "Memory Redis uses (INFO memory used_memory), as of the last probe; on a cluster, its largest primary's.",
            ),
            redis_used_memory_sum: gauge_of(
                "chat_redis_used_memory_sum_bytes",
                Unit::Bytes,
                "Memory Redis uses, summed over a cluster's primaries (one Redis: its own), as of the last probe.",
            ),
            rooms_unavailable: gauge_of(
                "chat_rooms_unavailable",
                Unit::Count,
                "Rooms with clients here whose live delivery is failing (their shard does not answer), retried every second.",
            ),
        })
    }

    /// The page, with the gauges read elsewhere: rooms followed here, and presence
    /// entries (connection × room) kept alive here and the rooms they are in.
    pub fn render(&self, rooms: usize, presence: (usize, usize)) -> String {
        let flag = |b: &AtomicBool| f64::from(u8::from(b.load(Ordering::Relaxed)));
        let values = [
            self.connections.load(Ordering::Relaxed) as f64,
            rooms as f64,
            presence.0 as f64,
            presence.1 as f64,
            flag(&self.redis_up),
            flag(&self.redis_writable),
            flag(&self.reader_up),
            flag(&self.draining),
        ];
        for ((name, _), value) in GAUGES_OF_STATE.iter().zip(values) {
            gauge!(*name).set(value);
        }
        self.handle.render()
    }

    /// Folds the histograms' samples into their buckets every few seconds, until `stop`.
    pub async fn keep_up(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(UPKEEP);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.handle.run_upkeep(),
            }
        }
    }
}

/// How often the histograms' samples are folded into their buckets.
const UPKEEP: Duration = Duration::from_secs(5);

/// Records how long a call to Redis took.
pub fn redis_call_took(took: Duration) {
    histogram!(REDIS_CALL).record(took);
}

/// Records that this instance handed the entry stored at `stored_ms` (Redis's clock,
/// milliseconds since the Unix epoch) to its room's connections now.
pub fn delivered(stored_ms: u64) {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |now| now.as_millis() as u64);
    histogram!(STORE_TO_DELIVERY).record(now_ms.saturating_sub(stored_ms) as f64 / 1000.0);
}

/// The gauges copied from the server's state at each rendering, in [`Metrics::render`]'s
/// order.
const GAUGES_OF_STATE: &[(&str, &str)] = &[
    ("chat_connections", "Open WebSocket connections."),
    ("chat_rooms", "Rooms with clients on this instance."),
    (
        "chat_presence_entries",
        "Presence entries (a connection in a room, for a signed-in user or a named guest) this instance keeps alive.",
    ),
    (
        "chat_presence_rooms",
        "Rooms with presence entries from this instance.",
    ),
    (
        "chat_redis_up",
        "1 if Redis accepts writes and the fan-out reader is reading.",
    ),
    (
        "chat_redis_writable",
        "1 if the last probe found a primary (ROLE master) behind the command connection.",
    ),
    (
        "chat_redis_reader_up",
        "1 if the fan-out reader is connected to a primary and reading.",
    ),
    ("chat_draining", "1 once shutdown has begun."),
];
