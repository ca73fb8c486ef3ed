//! Process-wide counters and gauges, rendered as Prometheus text for `GET /metrics`.
//!
//! A handful of atomics written in the Prometheus text format by hand: a metrics
//! library would add a registry and label machinery this small set does not need.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Default)]
pub struct Metrics {
    pub connections: AtomicU64,
    pub connections_total: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub rejected_frames: AtomicU64,
    pub slow_disconnects: AtomicU64,
    /// Connections refused at the upgrade for their sign-in token.
    pub auth_refused: AtomicU64,
    /// Connections closed when their token expired.
    pub token_expired: AtomicU64,
    /// The node behind the command connection is a primary and answers.
    pub redis_writable: AtomicBool,
    /// The fan-out reader is connected to a primary and its last read succeeded.
    pub reader_up: AtomicBool,
    /// Rooms followed here whose subscription or catch-up is failing (being retried).
    pub rooms_unavailable: AtomicU64,
    /// Both of the above, as of the last health probe.
    pub redis_up: AtomicBool,
    pub draining: AtomicBool,
    /// Redis's `used_memory` (of its largest node, on a cluster), as of the last probe.
    pub redis_used_memory: AtomicU64,
    /// The same summed over a cluster's primaries (one Redis: its own).
    pub redis_used_memory_sum: AtomicU64,
}

impl Metrics {
    /// The metrics, with the gauges read elsewhere: rooms followed here, and presence
    /// entries (connection × room) kept alive here and the rooms they are in.
    pub fn render(&self, rooms: usize, presence: (usize, usize)) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let flag = |b: &AtomicBool| u64::from(b.load(Ordering::Relaxed));
        let rows: [(&str, &str, &str, u64); 18] = [
            (
                "chat_connections",
                "gauge",
                "Open WebSocket connections.",
                get(&self.connections),
            ),
            (
                "chat_connections_total",
                "counter",
                "WebSocket connections accepted.",
                get(&self.connections_total),
            ),
            (
                "chat_messages_in_total",
                "counter",
                "Messages accepted from clients and stored in Redis.",
                get(&self.messages_in),
            ),
            (
                "chat_messages_out_total",
                "counter",
                "Message frames sent to clients (live and replayed).",
                get(&self.messages_out),
            ),
            (
                "chat_rejected_frames_total",
                "counter",
                "Client frames answered with an error frame.",
                get(&self.rejected_frames),
            ),
            (
                "chat_slow_consumer_disconnects_total",
                "counter",
                "Clients disconnected for not keeping up (close 4000).",
                get(&self.slow_disconnects),
            ),
            (
                "chat_auth_refused_total",
                "counter",
                "WebSocket upgrades refused for their sign-in token (close 4401, 4403, 4440).",
                get(&self.auth_refused),
            ),
            (
                "chat_token_expired_disconnects_total",
                "counter",
                "Connections closed when their token expired (close 4440).",
                get(&self.token_expired),
            ),
            (
                "chat_rooms",
                "gauge",
                "Rooms with clients on this instance.",
                rooms as u64,
            ),
            (
                "chat_rooms_unavailable",
                "gauge",
                "Rooms with clients here whose live delivery is failing (their shard does not answer), retried every second.",
                get(&self.rooms_unavailable),
            ),
            (
                "chat_presence_entries",
                "gauge",
                "Presence entries (a connection in a room, for a signed-in user or a named guest) this instance keeps alive.",
                presence.0 as u64,
            ),
            (
                "chat_presence_rooms",
                "gauge",
                "Rooms with presence entries from this instance.",
                presence.1 as u64,
            ),
            (
                "chat_redis_up",
                "gauge",
                "1 if Redis accepts writes and the fan-out reader is reading.",
                flag(&self.redis_up),
            ),
            (
                "chat_redis_writable",
                "gauge",
                "1 if the last probe found a primary (ROLE master) behind the command connection.",
                flag(&self.redis_writable),
            ),
            (
                "chat_redis_reader_up",
                "gauge",
                "1 if the fan-out reader is connected to a primary and reading.",
                flag(&self.reader_up),
            ),
            (
                "chat_redis_used_memory_bytes",
                "gauge",
                "Memory Redis uses (INFO memory used_memory), as of the last probe; on a cluster, its largest primary's.",
                get(&self.redis_used_memory),
            ),
            (
                "chat_redis_used_memory_sum_bytes",
                "gauge",
                "Memory Redis uses, summed over a cluster's primaries (one Redis: its own), as of the last probe.",
                get(&self.redis_used_memory_sum),
            ),
            (
                "chat_draining",
                "gauge",
                "1 once shutdown has begun.",
                flag(&self.draining),
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}
