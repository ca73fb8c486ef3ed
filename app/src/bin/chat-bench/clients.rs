//! The benchmark's WebSocket clients: connecting, the frames they send and read, the
//! send time a frame carries, and the percentiles of the latencies read from it.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// p50, p99, p99.9 and max of latencies in microseconds.
pub fn percentiles(latencies: &mut [u64]) -> String {
    latencies.sort_unstable();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1));
        latencies.get(i).copied().unwrap_or(0) as f64 / 1000.0
    };
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        pct(0.50),
        pct(0.99),
        pct(0.999),
        latencies.last().copied().unwrap_or(0) as f64 / 1000.0,
    )
}

pub async fn connect(addr: SocketAddr, room: &str) -> anyhow::Result<Ws> {
    connect_with(addr, &format!("room={room}")).await
}

pub async fn connect_with(addr: SocketAddr, query: &str) -> anyhow::Result<Ws> {
    let url = format!("ws://{addr}/ws?{query}");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .with_context(|| format!("connecting {url}"))?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.contains("\"hello\"") => Ok(ws),
        other => bail!("expected hello from {addr}, got {other:?}"),
    }
}

pub fn send_frame(name: &str, text: &str) -> Message {
    Message::text(json!({"type": "send", "name": name, "text": text}).to_string())
}

/// The message payload of a text frame, if it is a `message` frame.
pub fn message_of(text: &str) -> Option<Value> {
    let v: Value = serde_json::from_str(text).ok()?;
    (v["type"] == "message").then_some(v)
}

/// The text of a message that carries its send time (µs since the run's epoch).
pub fn latency_text(stamp: u128) -> String {
    format!("lat {stamp}")
}

/// The send time a `message` frame carries, if it is one [`latency_text`] made.
pub fn sent_at(frame: &str) -> Option<u64> {
    message_of(frame)?["text"]
        .as_str()?
        .strip_prefix("lat ")?
        .parse()
        .ok()
}
