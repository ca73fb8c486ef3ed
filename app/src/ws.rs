//! One WebSocket connection on `/ws`: the checks at the upgrade (room, `since`, Origin),
//! then hello, room subscription, history replay, and the live phase in which a writer
//! and a reader run side by side until either ends the connection.
//!
//! Close codes: 1000/1001 as the client asks; 1008 sustained invalid input; 1009 frame
//! over the hard size cap; 1011 internal; 1012 server restart (end of drain); 1013 Redis
//! unavailable while joining; 4000 slow consumer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use tokio::time::timeout;

use crate::AppState;
use crate::hub::Outgoing;
use crate::protocol::{
    self, HARD_MAX_MESSAGE_BYTES, Rejection, ServerFrame, StreamId, parse_client_frame,
};

/// How long a close frame may take to get out before the socket is simply dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// tungstenite's default read buffer is 128 KiB, allocated and zeroed per connection:
/// most of an idle connection's memory. Chat frames are small; larger ones still work.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// How long to wait for the client's half of the closing handshake.
pub const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(2);
/// Error frames a connection can earn in a burst before it is closed with 1008...
const ABUSE_BURST: f64 = 20.0;
/// ...and how fast that allowance comes back.
const ABUSE_REFILL_PER_SEC: f64 = 1.0;
/// Error frames waiting for the writer; a client that fills this is not reading them.
const ERROR_QUEUE: usize = 16;

pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_TOO_BIG: u16 = 1009;
pub const CLOSE_INTERNAL: u16 = 1011;
pub const CLOSE_RESTART: u16 = 1012;
pub const CLOSE_TRY_LATER: u16 = 1013;
pub const CLOSE_SLOW_CONSUMER: u16 = 4000;

#[derive(Debug, Deserialize)]
pub struct WsParams {
    room: Option<String>,
    since: Option<String>,
}

/// `GET /ws`: refuses bad parameters (400) and foreign browser origins (403) before
/// upgrading.
pub async fn upgrade(
    State(state): State<Arc<AppState>>,
    Query(params): Query<WsParams>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let room = params
        .room
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| protocol::DEFAULT_ROOM.to_owned());
    if !protocol::valid_room(&room) {
        return (
            StatusCode::BAD_REQUEST,
            format!(
                "invalid room: use 1 to {} characters of A-Z a-z 0-9 _ -",
                protocol::MAX_ROOM_LEN
            ),
        )
            .into_response();
    }
    let since = match params.since.filter(|s| !s.is_empty()).map(|s| s.parse()) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(e)) => {
            return (StatusCode::BAD_REQUEST, format!("invalid since: {e}")).into_response();
        }
    };
    if !origin_allowed(&headers, &state.allowed_origins) {
        tracing::info!(origin = ?headers.get(header::ORIGIN), "refused websocket from foreign origin");
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(HARD_MAX_MESSAGE_BYTES)
        .max_frame_size(HARD_MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| {
            let tracker = state.tracker.clone();
            tracker.track_future(serve(socket, state, room, since))
        })
}

/// Browsers always send Origin on WebSocket requests; other clients need not, and
/// cannot be stopped by this check anyway.
fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if !allowed.is_empty() {
        return allowed
            .iter()
            .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin));
    }
    let origin_authority = origin
        .parse::<Uri>()
        .ok()
        .and_then(|u| u.into_parts().authority);
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (origin_authority, host) {
        (Some(a), Some(h)) => a.as_str().eq_ignore_ascii_case(h),
        _ => false,
    }
}

/// How a connection ends.
enum Ending {
    /// Send this close frame, then drop.
    Close(u16, &'static str),
    /// The client started the closing handshake; finish it.
    ClientClosed,
    /// The peer is gone or unresponsive; drop without ceremony.
    Drop,
}

type Sink = SplitSink<WebSocket, Message>;

async fn serve(socket: WebSocket, state: Arc<AppState>, room: String, since: Option<StreamId>) {
    let metrics = &state.metrics;
    metrics.connections.fetch_add(1, Ordering::Relaxed);
    metrics.connections_total.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = socket.split();
    let ending = run(&mut sink, &mut stream, &state, &room, since).await;
    match ending {
        Ending::Close(code, reason) => {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            if let Ok(Ok(())) = timeout(CLOSE_GRACE, sink.send(Message::Close(Some(frame)))).await {
                // Wait for the client's close reply: closing the socket with its frames
                // still unread would reset the connection and could destroy our close
                // frame before the client reads it.
                let _ = timeout(CLOSE_REPLY_WAIT, async {
                    while let Some(Ok(_)) = stream.next().await {}
                })
                .await;
            }
        }
        Ending::ClientClosed => {
            let _ = timeout(CLOSE_GRACE, sink.close()).await;
        }
        Ending::Drop => {}
    }
    metrics.connections.fetch_sub(1, Ordering::Relaxed);
}

async fn run(
    sink: &mut Sink,
    stream: &mut SplitStream<WebSocket>,
    state: &AppState,
    room: &str,
    since: Option<StreamId>,
) -> Ending {
    // Subscribe before reading history: whatever is stored after the replay's last id
    // arrives live, and live entries at or below it are skipped, so there is neither a
    // gap nor a duplicate at the seam.
    let setup = async {
        let live = match state.hub.subscribe(room) {
            Some(rx) => rx,
            None => state.hub.join(room, state.store.last_id(room).await?),
        };
        let replay = match since {
            Some(since) => state.store.history_after(room, since).await?,
            None => Vec::new(),
        };
        redis::RedisResult::Ok((live, replay))
    };
    let setup = setup.await;
    // Hello only once subscribed: a client may rely on receiving every message stored
    // after its hello.
    let hello = ServerFrame::Hello {
        instance: &state.instance,
        room,
    };
    if !matches!(
        timeout(
            state.write_timeout,
            sink.send(Message::Text(hello.to_json().into()))
        )
        .await,
        Ok(Ok(()))
    ) {
        return Ending::Drop;
    }
    let (live, replay) = match setup {
        Ok(ok) => ok,
        Err(e) => {
            tracing::warn!(error = %e, room, "cannot join room: redis unavailable");
            let rejection = Rejection::new(
                "unavailable",
                "chat storage is unreachable; reconnect later",
            );
            let _ = timeout(
                state.write_timeout,
                sink.send(Message::Text(rejection.to_frame().into())),
            )
            .await;
            return Ending::Close(CLOSE_TRY_LATER, "redis unavailable");
        }
    };
    let skip_through = replay.last().map(|m| m.id).or(since).unwrap_or_default();
    tracing::debug!(room, ?since, replay = replay.len(), "client joined");
    for message in &replay {
        let frame = Message::Text(message.to_json().into());
        match timeout(state.write_timeout, sink.send(frame)).await {
            Ok(Ok(())) => state.metrics.messages_out.fetch_add(1, Ordering::Relaxed),
            Ok(Err(_)) => return Ending::Drop,
            Err(_) => return slow_consumer(state),
        };
    }

    let last_seen = AtomicU64::new(0);
    let started = Instant::now();
    let (errors_tx, errors_rx) = mpsc::channel(ERROR_QUEUE);
    tokio::select! {
        ending = write_loop(sink, live, errors_rx, skip_through, state, &last_seen, started) => ending,
        ending = read_loop(stream, errors_tx, state, room, &last_seen, started) => ending,
    }
}

fn slow_consumer(state: &AppState) -> Ending {
    state
        .metrics
        .slow_disconnects
        .fetch_add(1, Ordering::Relaxed);
    Ending::Close(CLOSE_SLOW_CONSUMER, "slow consumer")
}

/// Sends live messages, error frames and pings; ends the connection at the end of the
/// drain, when the client falls behind, or when it stops answering.
async fn write_loop(
    sink: &mut Sink,
    mut live: broadcast::Receiver<Outgoing>,
    mut errors: mpsc::Receiver<String>,
    skip_through: StreamId,
    state: &AppState,
    last_seen: &AtomicU64,
    started: Instant,
) -> Ending {
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + state.ping_interval,
        state.ping_interval,
    );
    loop {
        let frame = tokio::select! {
            biased;
            _ = state.close.cancelled() => return Ending::Close(CLOSE_RESTART, "server restart"),
            Some(error) = errors.recv() => Message::Text(error.into()),
            _ = ping.tick() => {
                let silent = started.elapsed().saturating_sub(Duration::from_millis(last_seen.load(Ordering::Relaxed)));
                if silent > state.peer_timeout {
                    tracing::debug!(?silent, "dropping unresponsive client");
                    return Ending::Drop;
                }
                Message::Ping(Default::default())
            }
            received = live.recv() => match received {
                Ok(message) if message.id <= skip_through => continue,
                Ok(message) => {
                    state.metrics.messages_out.fetch_add(1, Ordering::Relaxed);
                    Message::Text(message.frame)
                }
                Err(broadcast::error::RecvError::Lagged(_)) => return slow_consumer(state),
                // The hub keeps a room's sender while anyone is subscribed.
                Err(broadcast::error::RecvError::Closed) => return Ending::Close(CLOSE_INTERNAL, "room closed"),
            },
        };
        match timeout(state.write_timeout, sink.send(frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Ending::Drop,
            Err(_) => return slow_consumer(state),
        }
    }
}

/// Reads client frames: validates, rate-limits and stores `send`s, answers everything
/// else with an error frame, and closes with 1008 once errors stop being occasional.
async fn read_loop(
    stream: &mut SplitStream<WebSocket>,
    errors: mpsc::Sender<String>,
    state: &AppState,
    room: &str,
    last_seen: &AtomicU64,
    started: Instant,
) -> Ending {
    let mut rate = TokenBucket::new(state.rate_burst, state.rate_per_sec);
    let mut abuse = TokenBucket::new(ABUSE_BURST, ABUSE_REFILL_PER_SEC);
    while let Some(frame) = stream.next().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => return read_error(e),
        };
        last_seen.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        let outcome = match frame {
            Message::Text(text) => match parse_client_frame(&text) {
                Ok(_) if !rate.take() => Err(Rejection::new(
                    "rate_limited",
                    format!(
                        "too many messages: at most {} per second (bursts of {})",
                        state.rate_per_sec, state.rate_burst
                    ),
                )),
                Ok(request) => match state.store.append(room, &request.name, &request.text).await {
                    Ok(id) => {
                        tracing::trace!(room, %id, "stored");
                        state.metrics.messages_in.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, room, "XADD failed");
                        Err(Rejection::new(
                            "unavailable",
                            "chat storage is unreachable; the message was not sent, try again",
                        ))
                    }
                },
                Err(rejection) => Err(rejection),
            },
            Message::Binary(_) => Err(Rejection::new(
                "unsupported",
                "binary frames are not supported; send JSON text frames",
            )),
            Message::Close(_) => return Ending::ClientClosed,
            Message::Ping(_) | Message::Pong(_) => Ok(()),
        };
        if let Err(rejection) = outcome {
            state
                .metrics
                .rejected_frames
                .fetch_add(1, Ordering::Relaxed);
            // Redis being down is not the client's fault.
            let abusive = rejection.code != "unavailable" && !abuse.take();
            if abusive || errors.try_send(rejection.to_frame()).is_err() {
                return Ending::Close(CLOSE_POLICY, "too many invalid frames");
            }
        }
    }
    Ending::Drop
}

fn read_error(e: axum::Error) -> Ending {
    use tokio_tungstenite::tungstenite::Error;
    match e.into_inner().downcast_ref::<Error>() {
        Some(Error::Capacity(_)) => Ending::Close(CLOSE_TOO_BIG, "message too big"),
        _ => Ending::Drop,
    }
}

/// Classic token bucket: `burst` tokens, refilled at `per_sec`.
struct TokenBucket {
    tokens: f64,
    burst: f64,
    per_sec: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(burst: f64, per_sec: f64) -> Self {
        TokenBucket {
            tokens: burst,
            burst,
            per_sec,
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        self.take_at(Instant::now())
    }

    fn take_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_allows_burst_then_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(3.0, 2.0);
        bucket.last = start;
        assert!((0..3).all(|_| bucket.take_at(start)));
        assert!(!bucket.take_at(start));
        assert!(bucket.take_at(start + Duration::from_millis(500)));
        assert!(!bucket.take_at(start + Duration::from_millis(600)));
    }

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn origin_rules() {
        let none: &[String] = &[];
        assert!(origin_allowed(&headers(None, "chat.example.com"), none));
        assert!(origin_allowed(
            &headers(Some("https://chat.example.com"), "chat.example.com"),
            none
        ));
        assert!(origin_allowed(
            &headers(Some("http://127.0.0.1:8080"), "127.0.0.1:8080"),
            none
        ));
        assert!(!origin_allowed(
            &headers(Some("https://evil.example"), "chat.example.com"),
            none
        ));
        assert!(!origin_allowed(
            &headers(Some("null"), "chat.example.com"),
            none
        ));
        let list = ["https://app.example".to_owned()];
        assert!(origin_allowed(
            &headers(Some("https://app.example"), "api.example"),
            &list
        ));
        assert!(!origin_allowed(
            &headers(Some("https://api.example"), "api.example"),
            &list
        ));
        assert!(origin_allowed(
            &headers(Some("https://x.example"), "y"),
            &["*".to_owned()]
        ));
    }
}
