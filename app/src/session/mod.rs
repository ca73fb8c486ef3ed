//! One WebSocket connection after the upgrade. A reader ([`frames`]) and a writer
//! ([`writer`]) run side by side until either ends the connection: the reader handles
//! the client's frames (sending, joining and leaving rooms, typing) and hands the
//! writer what to write, in order, through one queue ([`Reply`]); the writer follows
//! the rooms joined ([`writer::RoomFeed`]) and sends their live frames, the replies and
//! pings. Joining a room, the first (`?room=`) as every later one, is [`rooms`].
//!
//! Close codes: 1000/1001 as the client asks; 1002 a WebSocket protocol error; 1007 a
//! text frame that is not UTF-8; 1008 sustained invalid input; 1009 frame
//! over the hard size cap; 1012 server restart (end of drain); 1013 Redis
//! unavailable while joining the first room; 4000 slow consumer; 4029 rate limit
//! exceeded; and, when the server verifies sign-in tokens, 4401/4403/4440
//! ([`crate::auth`]) and 4001/4003, a disconnect or ban by the server API
//! ([`crate::moderation`]).

mod frames;
mod rooms;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::auth::{Identity, Refusal};
use crate::drain::Drain;
use crate::limits::ConnectionSlot;
use crate::moderation::Registration;
use crate::protocol::{JoinRequest, Member};
use crate::state::AppState;
use crate::store::RoomState;

/// How long a close frame may take to get out before the socket is simply dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// How long to wait for the client's half of the closing handshake.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(2);
/// Replies waiting for the writer. When it is full the reader waits, so a client that
/// does not read its replies ends as a slow consumer.
const REPLY_QUEUE: usize = 64;

/// RFC 6455 §7.4.1: the endpoint broke the protocol (an unmasked frame, reserved bits
/// set, a fragmented control frame, ...).
pub const CLOSE_PROTOCOL: u16 = 1002;
/// RFC 6455 §7.4.1: data inconsistent with the message type (a text frame that is not
/// UTF-8).
pub const CLOSE_INVALID_DATA: u16 = 1007;
pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_TOO_BIG: u16 = 1009;
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
    /// `?room=` and what came with it: the connection's first room.
    pub first: JoinRequest,
    /// The first room as read at the upgrade, if it was.
    pub room_state: Option<RoomState>,
    /// Who the connection speaks for, when the server verifies tokens.
    pub identity: Option<Identity>,
    /// Who the connection is in rooms' presence: the token's user, or on an open
    /// server a guest who gave `?name=`; `None`: nobody lists it.
    pub member: Option<Member>,
    /// Where the server API's disconnects reach it, when it is a signed-in user's.
    pub registration: Option<Registration>,
}

/// How a connection ends.
enum Ending {
    /// Send this close frame, then drop.
    Close(u16, &'static str),
    /// The same, with a reason made for this connection.
    Frame(CloseFrame),
    /// The client started the closing handshake; finish it.
    ClientClosed,
    /// The peer is gone or unresponsive; drop without ceremony.
    Drop,
}

/// What the reader hands the writer, in the order the client is to see it.
enum Reply {
    /// One frame (an ack, an error, `hello`, `joined`, `left`, `presence`).
    Frame(Utf8Bytes),
    /// Replayed messages, written with one flush.
    Replay(Vec<Utf8Bytes>),
    /// Start delivering a room's live frames. (Boxed: the queue holds its first 32
    /// replies inline from the start, and most replies are a frame.)
    Follow(Box<writer::RoomFeed>),
    /// Stop delivering a room's frames, then write its `left` frame.
    Unfollow(String),
    /// Write what came before, then close.
    Close(u16, &'static str),
}

/// The reader's end of the queue of [`Reply`]s. They travel boxed: the queue holds room
/// for its first 32 from the start, and an idle connection has none in flight.
struct Replies(mpsc::Sender<Box<Reply>>);

/// The writer is gone: the connection is ending.
struct WriterGone;

impl Replies {
    async fn send(&self, reply: Reply) -> Result<(), WriterGone> {
        self.0.send(Box::new(reply)).await.map_err(|_| WriterGone)
    }
}

/// Who this connection is, for the rooms it joins.
struct Connection {
    /// This connection's number on this instance.
    number: u64,
    /// The number as other instances see it, in presence entries and typing events.
    origin: String,
    identity: Option<Identity>,
    member: Option<Member>,
    registration: Option<Registration>,
}

type Sink = SplitSink<WebSocket, Message>;

/// The connection's task. What the upgrade handed over is taken apart before the task
/// starts, so that the task (which lives as long as the connection) holds only what it
/// uses: an instance keeps tens of thousands of them, mostly idle.
pub fn serve(socket: WebSocket, state: Arc<AppState>, join: Join) -> impl Future<Output = ()> {
    let metrics = &state.metrics;
    metrics.connections.fetch_add(1, Ordering::Relaxed);
    metrics.connections_total.increment(1);
    let number = state.hub.new_connection();
    let connection = Connection {
        number,
        origin: state.hub.origin(number),
        identity: join.identity,
        member: join.member,
        registration: join.registration,
    };
    let (sink, mut stream) = socket.split();
    let writer = writer::Writer::new(sink, &state);
    let start = Box::new(frames::Start {
        first: join.first,
        room_state: join.room_state,
    });
    let slot = join.slot;
    async move {
        let ending = run(&writer, &mut stream, &state, &connection, slot, start).await;
        // What runs after the connection is boxed: held inline, it would be part of
        // every open connection's task.
        Box::pin(async {
            let mut out = writer.out.lock().await;
            out.close_feeds();
            finish(&mut out.sink, &mut stream, ending, &state.drain).await
        })
        .await;
        // Every room's presence this connection entered, also those whose join or
        // leave was cut short when the connection ended.
        Box::pin(state.presence.leave_connection(&connection.origin)).await;
        state.metrics.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What joining `room` costs the client's join budget: one if this instance does not
/// follow the room yet (a queue here, a subscription on Redis), one if the connection
/// enters its presence (an entry in Redis).
pub fn join_cost(state: &AppState, room: &str, enters_presence: bool) -> u32 {
    u32::from(!state.hub.follows(room)) + u32::from(enters_presence)
}

/// A connection refused for its sign-in token or a ban: closed at once, before `hello`.
pub async fn refuse(socket: WebSocket, slot: ConnectionSlot, close: CloseFrame, drain: &Drain) {
    let (mut sink, mut stream) = socket.split();
    finish(&mut sink, &mut stream, Ending::Frame(close), drain).await;
    drop(slot);
}

/// Ends the connection as `ending` says; during a drain, by the time it leaves for the
/// presence leaves.
async fn finish(
    sink: &mut Sink,
    stream: &mut SplitStream<WebSocket>,
    ending: Ending,
    drain: &Drain,
) {
    match ending {
        Ending::Close(code, reason) => {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            close_with(sink, stream, frame, drain).await;
        }
        Ending::Frame(frame) => close_with(sink, stream, frame, drain).await,
        Ending::ClientClosed => {
            let _ = timeout(drain.handshake_time(CLOSE_GRACE), sink.close()).await;
        }
        Ending::Drop => {}
    }
}

/// Sends `frame`, then waits a little for the client's half of the handshake; during a
/// drain, no longer than the drain leaves.
async fn close_with(
    sink: &mut Sink,
    stream: &mut SplitStream<WebSocket>,
    frame: CloseFrame,
    drain: &Drain,
) {
    let sent = timeout(
        drain.handshake_time(CLOSE_GRACE),
        sink.send(Message::Close(Some(frame))),
    );
    if let Ok(Ok(())) = sent.await {
        // Wait for the client's close reply: closing the socket with its frames still
        // unread would reset the connection and could destroy our close frame before
        // the client reads it.
        let _ = timeout(drain.handshake_time(CLOSE_REPLY_WAIT), async {
            while let Some(Ok(_)) = stream.next().await {}
        })
        .await;
    }
}

/// Runs the connection until it ends.
async fn run(
    writer: &Arc<writer::Writer>,
    stream: &mut SplitStream<WebSocket>,
    state: &AppState,
    connection: &Connection,
    slot: ConnectionSlot,
    start: Box<frames::Start>,
) -> Ending {
    let last_seen = AtomicU64::new(0);
    let started = Instant::now();
    let (replies_tx, replies_rx) = mpsc::channel(REPLY_QUEUE);
    let mut reader = frames::Reader::new(state, connection, Replies(replies_tx), slot);
    // Biased: the branches are polled in order, without drawing a random start each
    // time the connection's task wakes.
    tokio::select! {
        biased;
        ending = writer::write_loop(writer, replies_rx, state, &last_seen, started) => ending,
        ending = reader.run(stream, start, &last_seen, started) => ending,
        ending = token_expiry(state, connection.identity.as_ref()) => ending,
        ending = disconnected(connection.registration.as_ref()) => ending,
    }
}

/// Ends a signed-in connection when its token expires, so that a page fetches a new
/// one and reconnects; never for an open server.
async fn token_expiry(state: &AppState, identity: Option<&Identity>) -> Ending {
    let Some(identity) = identity else {
        return std::future::pending().await;
    };
    // Boxed, as the wait below: an open server's connections do not carry room for them.
    Box::pin(tokio::time::sleep(identity.expires_in())).await;
    state.metrics.token_expired.increment(1);
    let (code, reason) = Refusal::Expired.close();
    Ending::Close(code, reason)
}

/// Ends a connection the operator disconnects through the server API (4001, or 4003
/// for a ban); never for one that is not a signed-in user's.
async fn disconnected(registration: Option<&Registration>) -> Ending {
    let Some(registration) = registration else {
        return std::future::pending().await;
    };
    let close = Box::pin(registration.closed()).await;
    Ending::Frame(CloseFrame {
        code: close.code,
        reason: close.reason.into(),
    })
}

fn slow_consumer(state: &AppState) -> Ending {
    state.metrics.slow_disconnects.increment(1);
    Ending::Close(CLOSE_SLOW_CONSUMER, "slow consumer")
}
