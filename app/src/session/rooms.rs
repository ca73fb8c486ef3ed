//! Joining a room, the same for the first room of the upgrade (answered by `hello`) as
//! for a `join` frame (answered by `joined`): follow the room, judge recovery from
//! `since`, enter the room's presence, then hand the writer the answer, the replay, the
//! members and the room's live feed, in that order.
//!
//! The room's live entries are taken only once the replay and the members are out:
//! what the instance delivered meanwhile is read from the stream (the seam), so a
//! joiner of a busy room does not fall `--send-queue` messages behind before it has
//! begun, and is not closed and sent round again. Every page of a replay, and the seam,
//! must follow the one before: a trim between two reads is told (`recovery`), never
//! papered over.

use std::time::Duration;

use axum::extract::ws::Utf8Bytes;

use super::writer::RoomFeed;
use super::{Connection, Replies, Reply};
use crate::auth::Identity;
use crate::connection::StoreError;
use crate::hub;
use crate::protocol::{JoinRequest, Rejection, ServerFrame, StreamId};
use crate::recovery::{self, Unrecoverable};
use crate::state::AppState;
use crate::store::{self, Entry, RoomState};

/// How long a join with presence waits for its instance to subscribe to the room; past
/// it (Redis slow), the join goes on, and an event may be missed.
const LIVE_WAIT: Duration = Duration::from_secs(3);

/// A joined room, ready to be followed.
pub(super) struct Joined {
    /// The room has a history (it is not new).
    pub has_history: bool,
    /// Its presence was entered, and is to be left.
    pub present: bool,
}

/// Why a join did not happen.
pub(super) enum JoinError {
    /// Redis failed us; the client may try again. `answered`: after the room's
    /// `hello` or `joined` went out.
    Store { error: StoreError, answered: bool },
    /// The request was wrong.
    Refused(Rejection),
    /// The writer is gone: the connection is over.
    Gone,
}

impl From<StoreError> for JoinError {
    fn from(error: StoreError) -> Self {
        JoinError::Store {
            error,
            answered: false,
        }
    }
}

impl JoinError {
    fn answered(self) -> Self {
        match self {
            JoinError::Store { error, .. } => JoinError::Store {
                error,
                answered: true,
            },
            other => other,
        }
    }
}

/// The answer to a join: `hello` for the first room, `joined` after.
pub(super) enum Answer<'a> {
    Hello { instance: &'a str },
    Joined,
}

/// Joins `request.room`: everything the client is owed goes to `replies`, ending with
/// the room's live feed. On an error nothing more of the room follows; the presence
/// entered, if any, is left.
pub(super) async fn join(
    state: &AppState,
    connection: &Connection,
    request: &JoinRequest,
    known: Option<RoomState>,
    answer: Answer<'_>,
    replies: &Replies,
) -> Result<Joined, JoinError> {
    let room = request.room.as_str();
    let room_state = match known {
        Some(known) => known,
        None => state.store.room_state(room).await?,
    };
    if let Some(since) = request.since {
        recovery::refuse_future_since(since, &room_state)
            .map_err(|rejection| JoinError::Refused(rejection.with_room(room)))?;
    }
    // Followed before reading history, so that the instance reads the room from here
    // on; its entries are taken once the replay is out (see the module's doc).
    let live = state.hub.join(room, room_state.top, request.presence);
    if request.presence {
        // Presence events are not in any stream: only once the instance is subscribed
        // to the room is a member list read now followed by every change after it.
        let _ = tokio::time::timeout(LIVE_WAIT, state.hub.wait_live(room)).await;
    }
    let present = match &connection.member {
        Some(member) => {
            state
                .presence
                .enter(room, &connection.origin, member)
                .await?;
            true
        }
        None => false,
    };
    let followed = follow(
        state,
        connection,
        request,
        &room_state,
        answer,
        live,
        replies,
    )
    .await;
    if followed.is_err() && present {
        state.presence.leave(room, &connection.origin).await;
    }
    followed?;
    Ok(Joined {
        has_history: room_state.epoch.is_some(),
        present,
    })
}

async fn follow(
    state: &AppState,
    connection: &Connection,
    request: &JoinRequest,
    room_state: &RoomState,
    answer: Answer<'_>,
    live: hub::Joined,
    replies: &Replies,
) -> Result<(), JoinError> {
    let room = request.room.as_str();
    let (verdict, first_page) = first_page(state, request, room_state).await?;
    let recovered = verdict.map(|v| v.is_ok());
    let reason = verdict.and_then(|v| v.err()).map(Unrecoverable::code);
    let epoch = room_state.epoch.as_deref();
    let answer = match answer {
        Answer::Hello { instance } => ServerFrame::Hello {
            instance,
            room,
            epoch,
            recovered,
            reason,
            user: connection.identity.as_ref().map(Identity::signed_in),
        },
        Answer::Joined => ServerFrame::Joined {
            room,
            epoch,
            recovered,
            reason,
        },
    };
    send(replies, Reply::Frame(answer.to_json().into())).await?;
    replay_and_follow(
        state, connection, request, room_state, verdict, first_page, live, replies,
    )
    .await
    .map_err(JoinError::answered)
}

/// Everything after the answer: the replay, the members, the seam, the feed.
#[allow(clippy::too_many_arguments)]
async fn replay_and_follow(
    state: &AppState,
    connection: &Connection,
    request: &JoinRequest,
    room_state: &RoomState,
    verdict: Option<Result<(), Unrecoverable>>,
    first_page: Vec<Entry>,
    live: hub::Joined,
    replies: &Replies,
) -> Result<(), JoinError> {
    let room = request.room.as_str();
    let recovered = verdict.map(|v| v.is_ok());
    let recovered_since = request.since.filter(|_| recovered == Some(true));
    let mut replay = Replay {
        state,
        replies,
        room,
        epoch: room_state.epoch.as_deref(),
        // Without a replay from `since`, the client starts where the room stood when it
        // joined: what came after is the seam's.
        through: recovered_since.unwrap_or(room_state.top),
    };
    let mut page = first_page;
    // The first page is the judged one (or the newest `history`, which follows nothing).
    let mut linked = false;
    loop {
        let full = page.len() == store::PAGE;
        replay.send(&page, linked).await?;
        // Only a replay from `since` goes on past its first page.
        if !(full && recovered_since.is_some()) {
            break;
        }
        page = replay.next_page().await?;
        linked = true;
    }
    if request.presence {
        send(replies, Reply::Frame(presence_frame(state, room).await?)).await?;
    }
    let hub::Joined {
        mut entries,
        events,
    } = live;
    let delivered = state.hub.start(room, &mut entries);
    while delivered > replay.through {
        let page = replay.next_page().await?;
        if page.is_empty() {
            // Delivered here, and gone from the stream already.
            replay.lost(delivered).await?;
            break;
        }
        replay.send(&page, true).await?;
    }
    let feed = RoomFeed::new(
        room.to_owned(),
        entries,
        events,
        replay.through,
        connection.number,
    );
    send(replies, Reply::Follow(Box::new(feed))).await
}

/// The `presence` frame of a room: how many users, and the first of them by name.
pub(super) async fn presence_frame(state: &AppState, room: &str) -> Result<Utf8Bytes, StoreError> {
    let (count, members) = state.presence.members(room).await?;
    let frame = ServerFrame::Presence {
        room,
        count,
        members: &members,
    };
    Ok(frame.to_json().into())
}

/// A room's entries on their way to a joining client, page by page.
struct Replay<'a> {
    state: &'a AppState,
    replies: &'a Replies,
    room: &'a str,
    epoch: Option<&'a str>,
    /// The last entry the client has (been sent, or had before).
    through: StreamId,
}

impl Replay<'_> {
    async fn next_page(&self) -> Result<Vec<Entry>, StoreError> {
        self.state
            .store
            .entries_after(self.room, self.through, store::PAGE)
            .await
    }

    /// Sends a page's messages; when `linked`, after a `recovery` notice if its first
    /// entry does not follow the last one sent (entries trimmed between the reads).
    async fn send(&mut self, page: &[Entry], linked: bool) -> Result<(), JoinError> {
        let Some(first) = page.first() else {
            return Ok(());
        };
        if linked && first.prev != Some(self.through) {
            self.lost(first.id).await?;
        }
        // Paged by the raw id, so entries that do not decode still move it on.
        self.through = page.last().map_or(self.through, |last| last.id);
        let frames: Vec<Utf8Bytes> = page
            .iter()
            .filter_map(|entry| Some(entry.frame(self.room)?.to_json().into()))
            .collect();
        if frames.is_empty() {
            return Ok(());
        }
        send(self.replies, Reply::Replay(frames)).await
    }

    /// Tells the client that entries up to `before` are lost to it.
    async fn lost(&mut self, before: StreamId) -> Result<(), JoinError> {
        tracing::warn!(room = self.room, after = %self.through, %before, "entries trimmed while a client joined");
        self.through = self.through.max(before);
        let frame = ServerFrame::Recovery {
            room: self.room,
            recovered: false,
            reason: Unrecoverable::TooOld.code(),
            epoch: self.epoch,
        };
        send(self.replies, Reply::Frame(frame.to_json().into())).await
    }
}

/// The verdict on `since` (`None` without one), and the first page to send: of the
/// replay after `since` when recovered, else the newest `history` entries.
async fn first_page(
    state: &AppState,
    request: &JoinRequest,
    room_state: &RoomState,
) -> Result<(Option<Result<(), Unrecoverable>>, Vec<Entry>), StoreError> {
    let room = request.room.as_str();
    let verdict = match request.since {
        None => None,
        Some(since) => {
            let page = state.store.entries_after(room, since, store::PAGE).await?;
            let verdict =
                recovery::judge(since, request.epoch.as_deref(), room_state, page.first());
            if verdict.is_ok() {
                return Ok((Some(verdict), page));
            }
            Some(verdict)
        }
    };
    // Nothing replayed from `since`: the client starts over, from the newest messages
    // if it asked for them.
    let page = match request.history {
        0 => Vec::new(),
        n => state.store.latest(room, n).await?,
    };
    Ok((verdict, page))
}

async fn send(replies: &Replies, reply: Reply) -> Result<(), JoinError> {
    replies.send(reply).await.map_err(|_| JoinError::Gone)
}
