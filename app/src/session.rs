//! One WebSocket connection after the upgrade: joining the room (subscription, recovery
//! from `since`, hello, replay), then the live phase in which a writer and a reader run
//! side by side until either ends the connection.
//!
//! Close codes: 1000/1001 as the client asks; 1008 sustained invalid input; 1009 frame
//! over the hard size cap; 1011 internal; 1012 server restart (end of drain); 1013 Redis
//! unavailable while joining; 4000 slow consumer; 4029 rate limit exceeded; and, when
//! the server verifies sign-in tokens, 4401/4403/4440 ([`crate::auth`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::{broadcast, mpsc};
use tokio::time::timeout;

use crate::AppState;
use crate::auth::{Identity, Refusal};
use crate::connection::StoreError;
use crate::hub::Outgoing;
use crate::limits::{ConnectionSlot, TokenBucket};
use crate::protocol::{Rejection, ServerFrame, StreamId, parse_client_frame};
use crate::recovery::{self, Unrecoverable};
use crate::store::{self, Entry, RoomState};

/// How long a close frame may take to get out before the socket is simply dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// How long to wait for the client's half of the closing handshake.
pub const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(2);
/// Error frames a connection can earn in a burst before it is closed with 1008...
const ABUSE_BURST: f64 = 20.0;
/// ...and how fast that allowance comes back.
const ABUSE_REFILL_PER_SEC: f64 = 1.0;
/// Replies (error frames) waiting for the writer. When it is full the reader waits, so
/// a client that does not read its replies ends as a slow consumer.
const REPLY_QUEUE: usize = 64;
/// Live messages written to a client per flush at most.
const MAX_COALESCED: usize = 32;
/// Messages refused for the rate that a connection may send in a burst before it is
/// closed with [`CLOSE_RATE`], as a multiple of the rate burst (at least
/// [`MIN_FLOOD_BURST`]); the allowance refills at the message rate.
const FLOOD_BURST_FACTOR: f64 = 5.0;
const MIN_FLOOD_BURST: f64 = 50.0;

pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_TOO_BIG: u16 = 1009;
pub const CLOSE_INTERNAL: u16 = 1011;
pub const CLOSE_RESTART: u16 = 1012;
pub const CLOSE_TRY_LATER: u16 = 1013;
pub const CLOSE_SLOW_CONSUMER: u16 = 4000;
/// Kept sending faster than the rate limit after being told (`rate_limited`); the
/// mnemonic is HTTP's 429.
pub const CLOSE_RATE: u16 = 4029;

/// What the upgrade request asked for, checked.
pub struct Join {
    /// This connection's place in its address's quota, held for its lifetime.
    pub slot: ConnectionSlot,
    pub room: String,
    pub since: Option<StreamId>,
    pub epoch: Option<String>,
    /// Newest messages to send when nothing is replayed from `since` (capped).
    pub history: usize,
    /// The room as read at the upgrade, if it was.
    pub room_state: Option<RoomState>,
    /// Who the connection speaks for, when the server verifies tokens.
    pub identity: Option<Identity>,
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

pub async fn serve(socket: WebSocket, state: Arc<AppState>, join: Join) {
    let metrics = &state.metrics;
    metrics.connections.fetch_add(1, Ordering::Relaxed);
    metrics.connections_total.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = socket.split();
    let ending = run(&mut sink, &mut stream, &state, join).await;
    finish(&mut sink, &mut stream, ending).await;
    metrics.connections.fetch_sub(1, Ordering::Relaxed);
}

/// A connection refused for its sign-in token: closed at once, before `hello`.
pub async fn refuse(socket: WebSocket, slot: ConnectionSlot, code: u16, reason: &'static str) {
    let (mut sink, mut stream) = socket.split();
    finish(&mut sink, &mut stream, Ending::Close(code, reason)).await;
    drop(slot);
}

async fn finish(sink: &mut Sink, stream: &mut SplitStream<WebSocket>, ending: Ending) {
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
}

/// The room subscribed to, and what the client is told about its past.
struct Joined {
    live: broadcast::Receiver<Outgoing>,
    epoch: Option<String>,
    /// `None` when the client gave no `since`.
    verdict: Option<Result<(), Unrecoverable>>,
    /// The first page of the replay after `since` when recovered; else the newest
    /// `history` entries.
    first_page: Vec<Entry>,
}

/// Subscribes before reading history: whatever is stored after the replay's last id
/// arrives live, and live entries at or below it are skipped, so there is neither a gap
/// nor a duplicate at the seam.
async fn join(state: &AppState, join: &Join) -> Result<Joined, StoreError> {
    let room = join.room.as_str();
    let room_state = match &join.room_state {
        Some(known) => known.clone(),
        None => state.store.room_state(room).await?,
    };
    let live = match state.hub.subscribe(room) {
        Some(rx) => rx,
        None => state.hub.join(room, room_state.top),
    };
    let verdict = match join.since {
        None => None,
        Some(since) => {
            let page = state.store.entries_after(room, since, store::PAGE).await?;
            let verdict = recovery::judge(since, join.epoch.as_deref(), &room_state, page.first());
            if verdict.is_ok() {
                return Ok(Joined {
                    live,
                    epoch: room_state.epoch,
                    verdict: Some(verdict),
                    first_page: page,
                });
            }
            Some(verdict)
        }
    };
    // Nothing replayed from `since`: the client starts over, from the newest messages
    // if it asked for them.
    let first_page = match join.history {
        0 => Vec::new(),
        n => state.store.latest(room, n).await?,
    };
    Ok(Joined {
        live,
        epoch: room_state.epoch,
        verdict,
        first_page,
    })
}

async fn send_text(state: &AppState, sink: &mut Sink, text: String) -> bool {
    matches!(
        timeout(state.write_timeout, sink.send(Message::Text(text.into()))).await,
        Ok(Ok(()))
    )
}

async fn run(
    sink: &mut Sink,
    stream: &mut SplitStream<WebSocket>,
    state: &AppState,
    request: Join,
) -> Ending {
    let room = request.room.as_str();
    let joined = join(state, &request).await;
    let hello = match &joined {
        Ok(joined) => ServerFrame::Hello {
            instance: &state.instance,
            room,
            epoch: joined.epoch.as_deref(),
            recovered: joined.verdict.map(|v| v.is_ok()),
            reason: joined
                .verdict
                .and_then(|v| v.err())
                .map(Unrecoverable::code),
            user: request.identity.as_ref(),
        },
        Err(_) => ServerFrame::Hello {
            instance: &state.instance,
            room,
            epoch: None,
            recovered: None,
            reason: None,
            user: request.identity.as_ref(),
        },
    };
    // Hello only once subscribed: a client may rely on receiving every message stored
    // after its hello.
    if !send_text(state, sink, hello.to_json()).await {
        return Ending::Drop;
    }
    let joined = match joined {
        Ok(joined) => joined,
        Err(e) => return unavailable_on_join(state, sink, room, &e).await,
    };
    tracing::debug!(room, since = ?request.since, verdict = ?joined.verdict, "client joined");
    let recovered_since = match (request.since, joined.verdict) {
        (Some(since), Some(Ok(()))) => Some(since),
        _ => None,
    };
    let mut skip_through = recovered_since.unwrap_or_default();
    let mut page = joined.first_page;
    loop {
        let full = page.len() == store::PAGE;
        if let Some(last) = page.last() {
            // Paged by the raw id, so entries that do not decode still move it on.
            skip_through = last.id;
        }
        if let Err(ending) = send_messages(state, sink, &page).await {
            return ending;
        }
        // Only a replay from `since` goes on past its first page.
        if !(full && recovered_since.is_some()) {
            break;
        }
        page = match state
            .store
            .entries_after(room, skip_through, store::PAGE)
            .await
        {
            Ok(page) => page,
            Err(e) => return unavailable_on_join(state, sink, room, &e).await,
        };
    }

    let last_seen = AtomicU64::new(0);
    let started = Instant::now();
    let (replies_tx, replies_rx) = mpsc::channel(REPLY_QUEUE);
    let token_expiry = token_expiry(state, request.identity.as_ref());
    tokio::select! {
        ending = write_loop(sink, joined.live, replies_rx, skip_through, state, &last_seen, started) => ending,
        ending = read_loop(stream, replies_tx, state, &request, joined.epoch.is_some(), &last_seen, started) => ending,
        ending = token_expiry => ending,
    }
}

/// Ends a signed-in connection when its token expires, so that a page fetches a new
/// one and reconnects; never for an open server.
async fn token_expiry(state: &AppState, identity: Option<&Identity>) -> Ending {
    let Some(identity) = identity else {
        return std::future::pending().await;
    };
    tokio::time::sleep(identity.expires_in()).await;
    state.metrics.token_expired.fetch_add(1, Ordering::Relaxed);
    let (code, reason) = Refusal::Expired.close();
    Ending::Close(code, reason)
}

/// Sends the messages among `entries`, in order, as one write: frames are fed to the
/// socket and flushed once.
async fn send_messages(state: &AppState, sink: &mut Sink, entries: &[Entry]) -> Result<(), Ending> {
    let messages: Vec<_> = entries.iter().filter_map(|e| e.message.as_ref()).collect();
    if messages.is_empty() {
        return Ok(());
    }
    let write = async {
        for message in &messages {
            sink.feed(Message::Text(message.to_json().into())).await?;
        }
        sink.flush().await
    };
    match timeout(state.write_timeout, write).await {
        Ok(Ok(())) => {
            let sent = messages.len() as u64;
            state
                .metrics
                .messages_out
                .fetch_add(sent, Ordering::Relaxed);
            Ok(())
        }
        Ok(Err(_)) => Err(Ending::Drop),
        Err(_) => Err(slow_consumer(state)),
    }
}

async fn unavailable_on_join(
    state: &AppState,
    sink: &mut Sink,
    room: &str,
    error: &StoreError,
) -> Ending {
    tracing::warn!(%error, room, "cannot join room");
    let rejection = Rejection::new(error.code(), "chat storage is unavailable; reconnect later");
    let _ = send_text(state, sink, rejection.to_frame()).await;
    Ending::Close(CLOSE_TRY_LATER, "redis unavailable")
}

/// What a client is told when its message could not be stored.
fn store_rejection(error: &StoreError) -> Rejection {
    let message = match error {
        StoreError::Unavailable(_) => {
            "chat storage is unreachable; the message was not stored, send it again"
        }
        StoreError::Full(_) => "chat storage is full; the message was not stored",
        StoreError::Refused(_) => "chat storage refused the message",
    };
    Rejection::new(error.code(), message)
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
    mut replies: mpsc::Receiver<String>,
    skip_through: StreamId,
    state: &AppState,
    last_seen: &AtomicU64,
    started: Instant,
) -> Ending {
    let my_turn = state.drain.my_turn();
    tokio::pin!(my_turn);
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + state.ping_interval,
        state.ping_interval,
    );
    loop {
        let frame = tokio::select! {
            biased;
            _ = &mut my_turn => return Ending::Close(CLOSE_RESTART, "server restart"),
            _ = state.close.cancelled() => return Ending::Close(CLOSE_RESTART, "server restart"),
            Some(reply) = replies.recv() => Message::Text(reply.into()),
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
        match timeout(
            state.write_timeout,
            write_with_ready(sink, frame, &mut live, skip_through, state),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(ending)) => return ending,
            Err(_) => return slow_consumer(state),
        }
    }
}

/// Writes `frame` and the live messages already queued behind it (up to
/// [`MAX_COALESCED`]) with one flush: under load a client gets several messages per
/// write instead of a write each.
async fn write_with_ready(
    sink: &mut Sink,
    frame: Message,
    live: &mut broadcast::Receiver<Outgoing>,
    skip_through: StreamId,
    state: &AppState,
) -> Result<(), Ending> {
    sink.feed(frame).await.map_err(|_| Ending::Drop)?;
    for _ in 1..MAX_COALESCED {
        match live.try_recv() {
            Ok(message) if message.id <= skip_through => {}
            Ok(message) => {
                state.metrics.messages_out.fetch_add(1, Ordering::Relaxed);
                sink.feed(Message::Text(message.frame))
                    .await
                    .map_err(|_| Ending::Drop)?;
            }
            Err(broadcast::error::TryRecvError::Lagged(_)) => return Err(slow_consumer(state)),
            Err(_) => break,
        }
    }
    sink.flush().await.map_err(|_| Ending::Drop)
}

/// Reads client frames: validates, rate-limits and stores `send`s, answers everything
/// else with an error frame, and closes with 1008 once errors stop being occasional.
async fn read_loop(
    stream: &mut SplitStream<WebSocket>,
    replies: mpsc::Sender<String>,
    state: &AppState,
    request: &Join,
    mut room_has_history: bool,
    last_seen: &AtomicU64,
    started: Instant,
) -> Ending {
    let room = request.room.as_str();
    let speaker = request.identity.as_ref().map(|i| i.name.as_str());
    let mut rate = TokenBucket::new(state.rate_burst, state.rate_per_sec);
    let mut abuse = TokenBucket::new(ABUSE_BURST, ABUSE_REFILL_PER_SEC);
    let mut flood = TokenBucket::new(
        (state.rate_burst * FLOOD_BURST_FACTOR).max(MIN_FLOOD_BURST),
        state.rate_per_sec,
    );
    while let Some(frame) = stream.next().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => return read_error(e),
        };
        last_seen.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        let outcome = match frame {
            Message::Text(text) => match parse_client_frame(&text, speaker) {
                Ok(message) if !rate.take() => Err(Rejection::new(
                    "rate_limited",
                    format!(
                        "too many messages: at most {} per second (bursts of {})",
                        state.rate_per_sec, state.rate_burst
                    ),
                )
                .with_cid(message.cid)),
                // The first message of a room creates it in Redis: that is what the
                // per-address room budget pays for.
                Ok(_)
                    if !room_has_history
                        && !state.address_limits.take_new_room(request.slot.address) =>
                {
                    Err(Rejection::new(
                        "room_limit",
                        "too many new rooms from your address; try again in a minute",
                    ))
                }
                Ok(message) => match state.store.append(room, &message).await {
                    Ok(stored) => {
                        tracing::trace!(room, id = %stored.id, duplicate = stored.duplicate, "stored");
                        if !stored.duplicate {
                            state.metrics.messages_in.fetch_add(1, Ordering::Relaxed);
                        }
                        room_has_history = true;
                        match &message.cid {
                            Some(cid) => {
                                let ack = ServerFrame::Ack {
                                    cid,
                                    id: stored.id.to_string(),
                                };
                                if replies.send(ack.to_json()).await.is_err() {
                                    return Ending::Drop;
                                }
                                Ok(())
                            }
                            None => Ok(()),
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, room, "storing a message failed");
                        Err(store_rejection(&e).with_cid(message.cid))
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
            // Valid but too fast is not invalid input; storage trouble is not the
            // client's fault at all.
            if rejection.code == "rate_limited" {
                if !flood.take() {
                    return Ending::Close(CLOSE_RATE, "rate limit exceeded");
                }
            } else if !is_storage_code(rejection.code) && !abuse.take() {
                return Ending::Close(CLOSE_POLICY, "too many invalid frames");
            }
            if replies.send(rejection.to_frame()).await.is_err() {
                return Ending::Drop;
            }
        }
    }
    Ending::Drop
}

fn is_storage_code(code: &str) -> bool {
    matches!(code, "unavailable" | "storage_full" | "storage_error")
}

fn read_error(e: axum::Error) -> Ending {
    use tokio_tungstenite::tungstenite::Error;
    match e.into_inner().downcast_ref::<Error>() {
        Some(Error::Capacity(_)) => Ending::Close(CLOSE_TOO_BIG, "message too big"),
        _ => Ending::Drop,
    }
}
