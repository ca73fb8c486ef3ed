//! The reading half of a connection: the first room's join, then every frame the client
//! sends. `send` is validated, rate-limited and stored; `join` and `leave` change the
//! rooms the connection follows (at most `--max-rooms-per-connection`); `typing` is
//! published to the room; `history` is answered with a page of older messages;
//! everything wrong is answered with an error frame, and a
//! connection whose errors stop being occasional is closed with 1008.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use futures_util::StreamExt as _;
use futures_util::stream::SplitStream;

use super::rooms::{self, Answer, JoinError};
use super::{
    CLOSE_INVALID_DATA, CLOSE_POLICY, CLOSE_PROTOCOL, CLOSE_RATE, CLOSE_TOO_BIG, CLOSE_TRY_LATER,
    Connection, Ending, Replies, Reply,
};
use crate::auth::Identity;
use crate::connection::StoreError;
use crate::history::{self, PageError};
use crate::limits::{ConnectionSlot, TokenBucket};
use crate::protocol::{
    ClientFrame, HistoryRequest, JoinRequest, Rejection, SendRequest, ServerFrame,
    parse_client_frame,
};
use crate::state::AppState;
use crate::store::RoomState;

/// Error frames a connection can earn in a burst before it is closed with 1008...
const ABUSE_BURST: f64 = 20.0;
/// ...and how fast that allowance comes back.
const ABUSE_REFILL_PER_SEC: f64 = 1.0;
/// Messages refused for the rate that a connection may send in a burst before it is
/// closed with [`CLOSE_RATE`], as a multiple of the rate burst (at least
/// [`MIN_FLOOD_BURST`]); the allowance refills at the message rate.
const FLOOD_BURST_FACTOR: f64 = 5.0;
const MIN_FLOOD_BURST: f64 = 50.0;
/// Joins a connection may make per second once it has used its burst: as many as its
/// room limit (so a page can open its whole sidebar at once), and at least this.
const JOINS_PER_SEC: f64 = 5.0;
const JOIN_BURST: f64 = 10.0;
/// One typing event per room per this; more are dropped quietly (a page sends one per
/// keystroke, and others only need to know someone is typing).
const TYPING_EVERY: Duration = Duration::from_secs(1);
/// Pages of history a connection may ask for in a burst, and per second after it: a
/// page scrolling back asks one per screenful.
const PAGES_BURST: f64 = 10.0;
const PAGES_PER_SEC: f64 = 2.0;

/// The first room, as the upgrade checked it.
pub(super) struct Start {
    pub first: JoinRequest,
    pub room_state: Option<RoomState>,
}

/// A room the connection is in.
struct Membership {
    has_history: bool,
    present: bool,
    last_typing: Option<Instant>,
}

pub(super) struct Reader<'a> {
    state: &'a AppState,
    connection: &'a Connection,
    replies: Replies,
    /// This connection's place in its address's quota, held for its lifetime.
    slot: ConnectionSlot,
    /// The room of a `send` without one: the first room.
    default_room: String,
    rooms: HashMap<String, Membership>,
    rate: TokenBucket,
    abuse: TokenBucket,
    flood: TokenBucket,
    joins: TokenBucket,
    pages: TokenBucket,
}

impl<'a> Reader<'a> {
    pub fn new(
        state: &'a AppState,
        connection: &'a Connection,
        replies: Replies,
        slot: ConnectionSlot,
    ) -> Self {
        Reader {
            state,
            connection,
            replies,
            slot,
            default_room: String::new(),
            rooms: HashMap::new(),
            rate: TokenBucket::new(state.rate_burst, state.rate_per_sec),
            abuse: TokenBucket::new(ABUSE_BURST, ABUSE_REFILL_PER_SEC),
            flood: TokenBucket::new(
                (state.rate_burst * FLOOD_BURST_FACTOR).max(MIN_FLOOD_BURST),
                state.rate_per_sec,
            ),
            joins: TokenBucket::new((state.max_rooms as f64).max(JOIN_BURST), JOINS_PER_SEC),
            pages: TokenBucket::new(PAGES_BURST, PAGES_PER_SEC),
        }
    }

    /// Joins the first room, then reads frames until the connection ends.
    pub async fn run(
        &mut self,
        stream: &mut SplitStream<WebSocket>,
        start: Box<Start>,
        last_seen: &AtomicU64,
        started: Instant,
    ) -> Ending {
        // The handlers' futures are boxed: held inline, the largest of them (a join with
        // its replay) would be part of every idle connection's task, for its lifetime.
        if let Err(ending) = Box::pin(self.join_first(start)).await {
            return ending;
        }
        while let Some(frame) = stream.next().await {
            let frame = match frame {
                Ok(frame) => frame,
                Err(e) => return read_error(e),
            };
            last_seen.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
            let outcome = match frame {
                Message::Text(text) => {
                    // Signed in, the token says who speaks; a guest's frames do.
                    let speaker = self
                        .connection
                        .member
                        .as_ref()
                        .filter(|_| self.connection.identity.is_some());
                    match parse_client_frame(&text, speaker) {
                        Ok(ClientFrame::Send(send)) => Box::pin(self.send(send)).await,
                        Ok(ClientFrame::Join(join)) => Box::pin(self.join(join)).await,
                        Ok(ClientFrame::Leave { room }) => Box::pin(self.leave(room)).await,
                        Ok(ClientFrame::Typing { room }) => Box::pin(self.typing(&room)).await,
                        Ok(ClientFrame::History(request)) => Box::pin(self.history(request)).await,
                        Err(rejection) => Err(rejection),
                    }
                }
                Message::Binary(_) => Err(Rejection::new(
                    "unsupported",
                    "binary frames are not supported; send JSON text frames",
                )),
                Message::Close(_) => return Ending::ClientClosed,
                Message::Ping(_) | Message::Pong(_) => Ok(()),
            };
            let outcome = match outcome {
                Ok(()) => Ok(()),
                Err(rejection) => Box::pin(self.refuse(rejection)).await,
            };
            if let Err(ending) = outcome {
                return ending;
            }
        }
        Ending::Drop
    }

    /// Joins `?room=`. When Redis fails, the client still gets its `hello`, then the
    /// error, then close 1013: it should reconnect later.
    async fn join_first(&mut self, start: Box<Start>) -> Result<(), Ending> {
        let Start { first, room_state } = *start;
        self.default_room = first.room.clone();
        let answer = Answer::Hello {
            instance: &self.state.instance,
        };
        match rooms::join(
            self.state,
            self.connection,
            &first,
            room_state,
            answer,
            &self.replies,
        )
        .await
        {
            Ok(joined) => {
                self.enter(first.room, joined);
                Ok(())
            }
            Err(JoinError::Gone) => Err(Ending::Drop),
            Err(JoinError::Refused(rejection)) => {
                self.end_first(&first.room, false, rejection, CLOSE_POLICY, "invalid join")
                    .await
            }
            Err(JoinError::Store { error, answered }) => {
                tracing::warn!(%error, room = first.room, "cannot join room");
                let rejection =
                    Rejection::new(error.code(), "chat storage is unavailable; reconnect later");
                self.end_first(
                    &first.room,
                    answered,
                    rejection,
                    CLOSE_TRY_LATER,
                    "redis unavailable",
                )
                .await
            }
        }
    }

    /// Ends a connection whose first room could not be joined: its `hello` (every
    /// connection gets one first) unless it went out already, the error, the close.
    async fn end_first(
        &self,
        room: &str,
        answered: bool,
        rejection: Rejection,
        code: u16,
        reason: &'static str,
    ) -> Result<(), Ending> {
        if !answered {
            let hello = ServerFrame::Hello {
                instance: &self.state.instance,
                room,
                epoch: None,
                recovered: None,
                reason: None,
                user: self.connection.identity.as_ref().map(Identity::signed_in),
            };
            self.reply(hello.to_json()).await?;
        }
        self.reply(rejection.to_frame()).await?;
        self.close_after_replies(code, reason).await
    }

    /// Has the writer close the connection once it has written every reply before,
    /// and waits for that.
    async fn close_after_replies(&self, code: u16, reason: &'static str) -> Result<(), Ending> {
        if self.replies.send(Reply::Close(code, reason)).await.is_err() {
            return Err(Ending::Drop);
        }
        std::future::pending().await
    }

    fn enter(&mut self, room: String, joined: rooms::Joined) {
        self.rooms.insert(
            room,
            Membership {
                has_history: joined.has_history,
                present: joined.present,
                last_typing: None,
            },
        );
    }

    async fn reply(&self, frame: String) -> Result<(), Ending> {
        self.replies
            .send(Reply::Frame(frame.into()))
            .await
            .map_err(|_| Ending::Drop)
    }

    /// Answers a refused frame with its error frame, and ends a connection that keeps
    /// sending wrong ones or keeps sending too fast.
    async fn refuse(&mut self, rejection: Rejection) -> Result<(), Ending> {
        self.state.metrics.rejected_frames.increment(1);
        // Valid but too fast is not invalid input; storage trouble is not the client's
        // fault at all.
        if rejection.code == "rate_limited" {
            if !self.flood.take() {
                return Err(Ending::Close(CLOSE_RATE, "rate limit exceeded"));
            }
        } else if !is_storage_code(rejection.code) && !self.abuse.take() {
            return Err(Ending::Close(CLOSE_POLICY, "too many invalid frames"));
        }
        self.reply(rejection.to_frame()).await
    }

    /// The room a frame is about, if the connection is in it.
    fn membership(&mut self, room: &str) -> Result<&mut Membership, Rejection> {
        self.rooms.get_mut(room).ok_or_else(|| {
            Rejection::new(
                "not_joined",
                format!("not in room {room:?}: send a \"join\" frame first"),
            )
            .with_room(room)
        })
    }

    async fn send(&mut self, message: SendRequest) -> Result<(), Rejection> {
        let room = message
            .room
            .clone()
            .unwrap_or_else(|| self.default_room.clone());
        let membership = self
            .membership(&room)
            .map_err(|r| r.with_cid(message.cid.clone()))?;
        let has_history = membership.has_history;
        if !self.rate.take() {
            return Err(Rejection::new(
                "rate_limited",
                format!(
                    "too many messages: at most {} per second (bursts of {})",
                    self.state.rate_per_sec, self.state.rate_burst
                ),
            )
            .with_cid(message.cid));
        }
        // The first message of a room creates it in Redis: that is what the per-address
        // room budget pays for.
        if !has_history && !self.state.client_limits.take_new_room(&self.slot.client) {
            return Err(Rejection::new(
                "room_limit",
                "too many new rooms from you; try again in a minute",
            )
            .with_room(&room));
        }
        let stored = match self.state.store.append(&room, &message).await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(error = %e, room, "storing a message failed");
                return Err(store_rejection(&e).with_cid(message.cid));
            }
        };
        tracing::trace!(room, id = %stored.id, duplicate = stored.duplicate, "stored");
        if !stored.duplicate {
            self.state.metrics.messages_in.increment(1);
        }
        if let Some(membership) = self.rooms.get_mut(&room) {
            membership.has_history = true;
        }
        if let Some(cid) = &message.cid {
            let ack = ServerFrame::Ack {
                cid,
                id: stored.id.to_string(),
            };
            // A writer gone means the connection is ending anyway.
            let _ = self.replies.send(Reply::Frame(ack.to_json().into())).await;
        }
        Ok(())
    }

    async fn join(&mut self, request: JoinRequest) -> Result<(), Rejection> {
        let room = request.room.as_str();
        let refused = |code, message: String| Err(Rejection::new(code, message).with_room(room));
        if self.rooms.contains_key(room) {
            return refused(
                "already_joined",
                format!("already in room {room:?}; \"leave\" it first to join it anew"),
            );
        }
        if self.rooms.len() >= self.state.max_rooms {
            return refused(
                "too_many_rooms",
                format!(
                    "a connection may be in at most {} rooms; \"leave\" one first",
                    self.state.max_rooms
                ),
            );
        }
        if let Some(identity) = &self.connection.identity
            && !identity.may_join(room)
        {
            return refused(
                "room_not_allowed",
                format!("your sign-in token does not allow room {room:?}"),
            );
        }
        if let Some(identity) = &self.connection.identity
            && let Some(ban) = self.state.moderation.known_ban(&identity.sub)
        {
            return refused("banned", ban.close().reason);
        }
        if !self.joins.take() {
            return refused(
                "rate_limited",
                format!("too many joins: at most {JOINS_PER_SEC} per second"),
            );
        }
        let cost = super::join_cost(self.state, room, self.connection.member.is_some());
        if !self.state.client_limits.take_joins(&self.slot.client, cost) {
            return refused(
                "room_limit",
                "too many new rooms joined from you; try again in a minute".to_owned(),
            );
        }
        match rooms::join(
            self.state,
            self.connection,
            &request,
            None,
            Answer::Joined,
            &self.replies,
        )
        .await
        {
            Ok(joined) => {
                self.enter(request.room, joined);
                Ok(())
            }
            // The connection is ending; nobody to tell.
            Err(JoinError::Gone) => Ok(()),
            Err(JoinError::Refused(rejection)) => Err(rejection),
            Err(JoinError::Store { error, .. }) => {
                tracing::warn!(%error, room, "cannot join room");
                Err(Rejection::new(
                    error.code(),
                    "chat storage is unavailable; the room was not joined, join it again",
                )
                .with_room(room))
            }
        }
    }

    async fn leave(&mut self, room: String) -> Result<(), Rejection> {
        let present = self.membership(&room)?.present;
        self.rooms.remove(&room);
        let _ = self.replies.send(Reply::Unfollow(room.clone())).await;
        if present {
            self.state
                .presence
                .leave(&room, &self.connection.origin)
                .await;
        }
        Ok(())
    }

    async fn typing(&mut self, room: &str) -> Result<(), Rejection> {
        let connection = self.connection;
        let Some(member) = &connection.member else {
            return Err(Rejection::new(
                "name_required",
                "typing needs a name: sign in, or give ?name= on an open server",
            )
            .with_room(room));
        };
        let membership = self.membership(room)?;
        if membership
            .last_typing
            .is_some_and(|last| last.elapsed() < TYPING_EVERY)
        {
            return Ok(());
        }
        // Every room's typing is a publish to every instance following it: it spends
        // the connection's message rate (when there is none left, it is dropped as
        // quietly as the throttle drops it).
        if !self.rate.take() {
            return Ok(());
        }
        let membership = self.membership(room)?;
        membership.last_typing = Some(Instant::now());
        self.state
            .presence
            .typing(room, connection.origin.clone(), member)
            .await
            .map_err(|e| store_rejection(&e).with_room(room))
    }
}

impl Reader<'_> {
    /// Answers a `history` frame with a page of the room's older messages, in one
    /// `history` frame ([`crate::history`]).
    async fn history(&mut self, request: HistoryRequest) -> Result<(), Rejection> {
        let room = request.room.as_str();
        self.membership(room)?;
        if !self.pages.take() {
            return Err(Rejection::new(
                "rate_limited",
                format!("too many history pages: at most {PAGES_PER_SEC} per second"),
            )
            .with_room(room));
        }
        let page = match history::read(&self.state.store, &request).await {
            Ok(page) => page,
            Err(PageError::EpochChanged) => {
                return Err(Rejection::new(
                    "epoch_changed",
                    "the room's history is not the one the epoch names any more: \
                     start again from its newest messages",
                )
                .with_room(room));
            }
            Err(PageError::Store(error)) => {
                tracing::warn!(%error, room, "reading a page of history failed");
                return Err(Rejection::new(
                    error.code(),
                    "chat storage is unavailable; ask for the page again",
                )
                .with_room(room));
            }
        };
        let frame = ServerFrame::History(&page.body()).to_json();
        // A writer gone means the connection is ending anyway.
        let _ = self.replies.send(Reply::Frame(frame.into())).await;
        Ok(())
    }
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

fn is_storage_code(code: &str) -> bool {
    matches!(code, "unavailable" | "storage_full" | "storage_error")
}

/// How a connection whose frames cannot be read ends: with the close code RFC 6455
/// §7.4.1 names for what was wrong, so that the client sees why (not 1006); without one
/// when the peer is gone.
fn read_error(e: axum::Error) -> Ending {
    use tokio_tungstenite::tungstenite::Error;
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match e.into_inner().downcast_ref::<Error>() {
        Some(Error::Capacity(_)) => Ending::Close(CLOSE_TOO_BIG, "message too big"),
        Some(Error::Utf8(_)) => Ending::Close(CLOSE_INVALID_DATA, "text frame is not valid UTF-8"),
        Some(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => Ending::Drop,
        Some(Error::Protocol(_)) => Ending::Close(CLOSE_PROTOCOL, "websocket protocol error"),
        _ => Ending::Drop,
    }
}
