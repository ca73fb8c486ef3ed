//! The wire protocol: the JSON frames exchanged over `/ws`, Redis stream ids, and
//! the validation of everything a client can send (room names, `since`, names, texts).
//!
//! Nothing here does I/O; the connection handler calls into it and turns a
//! [`Rejection`] into an `error` frame.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest room name accepted in `/ws?room=`.
pub const MAX_ROOM_LEN: usize = 64;
/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 32;
/// Longest message text, in characters.
pub const MAX_TEXT_CHARS: usize = 2000;
/// Largest text frame answered with an error frame rather than parsed. A 2000-character
/// text of 4-byte characters, JSON-escaped, still fits.
pub const MAX_FRAME_BYTES: usize = 16 * 1024;
/// Hard cap enforced by the WebSocket layer itself: a larger frame or message ends the
/// connection (close 1009) because it is never buffered whole.
pub const HARD_MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Longest client-chosen token (`epoch`, `cid`).
pub const MAX_TOKEN_LEN: usize = 64;

/// Most messages sent for `history=N`.
pub const MAX_HISTORY: usize = 200;

/// Most members a `presence` frame lists; its `count` says how many there are.
pub const MAX_LISTED_MEMBERS: usize = 1000;

/// The room clients join when they give none.
pub const DEFAULT_ROOM: &str = "lobby";

/// Checks a room name: 1 to [`MAX_ROOM_LEN`] characters of `[A-Za-z0-9_-]`.
pub fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= MAX_ROOM_LEN
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks a client-supplied token (an epoch it was given, a client message id): 1 to
/// [`MAX_TOKEN_LEN`] characters of `[A-Za-z0-9_:.-]`, safe in a Redis key and a log line.
pub fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.'))
}

/// A checked room name, or a rejection saying what a room name may be.
pub fn parse_room(room: &str) -> Result<String, Rejection> {
    if valid_room(room) {
        return Ok(room.to_owned());
    }
    Err(Rejection::new(
        "invalid_room",
        format!("invalid room: use 1 to {MAX_ROOM_LEN} characters of A-Z a-z 0-9 _ -"),
    ))
}

/// A `since` position: a stream id.
pub fn parse_since(since: &str) -> Result<StreamId, Rejection> {
    since
        .parse()
        .map_err(|e| Rejection::new("invalid_since", format!("invalid since: {e}")))
}

/// An `epoch` as a client repeats it.
pub fn parse_epoch(epoch: &str) -> Result<String, Rejection> {
    if valid_token(epoch) {
        return Ok(epoch.to_owned());
    }
    Err(Rejection::new(
        "invalid_epoch",
        format!("invalid epoch: use 1 to {MAX_TOKEN_LEN} characters of A-Z a-z 0-9 _ - : ."),
    ))
}

/// A `history` count, capped at [`MAX_HISTORY`].
pub fn parse_history(history: &str) -> Result<usize, Rejection> {
    history
        .parse::<usize>()
        .map(|n| n.min(MAX_HISTORY))
        .map_err(|_| history_rejection())
}

fn history_rejection() -> Rejection {
    Rejection::new(
        "invalid_history",
        format!("invalid history: a number of messages (at most {MAX_HISTORY} are sent)"),
    )
}

/// A Redis stream entry id (`<ms>-<seq>`). Ordered the way Redis orders entries, which
/// the string form is not (`"9-0" > "10-0"` as strings).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("not a stream id (expected <ms>-<seq>): {0:?}")]
pub struct BadStreamId(String);

impl FromStr for StreamId {
    type Err = BadStreamId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadStreamId(s.chars().take(64).collect());
        // Redis accepts a bare `<ms>` meaning `<ms>-0`; clients may too.
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        Ok(StreamId {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Someone present in a room: a signed-in user (`sub` from the token), or on an open
/// server a guest who gave a name (`sub` is `guest:<name>`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Member {
    pub sub: String,
    pub name: String,
}

/// Who a connection speaks for, as `hello` tells it: a verified token's user and when
/// the token expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SignedIn<'a> {
    pub sub: &'a str,
    pub name: &'a str,
    /// Seconds since the Unix epoch.
    pub exp: u64,
}

/// Frames the server sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// First frame of every connection, answering the join of `?room=`. `epoch` names
    /// the room's history (absent while the room has none); `recovered`/`reason` answer
    /// a `since`, when one was given.
    Hello {
        instance: &'a str,
        room: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
        /// Who the connection speaks for, when the server verifies tokens.
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<SignedIn<'a>>,
    },
    /// A `join` frame's answer, as `hello` answers the first room's.
    Joined {
        room: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
    },
    /// A `leave` frame's answer: nothing more of the room follows.
    Left { room: &'a str },
    /// Who is in the room now, each user once however many connections they have:
    /// `count` users, of whom the first [`MAX_LISTED_MEMBERS`] by name are listed.
    Presence {
        room: &'a str,
        count: usize,
        members: &'a [Member],
    },
    /// A user's first connection joined the room.
    MemberJoined { room: &'a str, user: &'a Member },
    /// A user's last connection left the room (or its instance stopped answering).
    MemberLeft { room: &'a str, user: &'a Member },
    /// Someone is typing in the room; never stored.
    Typing { room: &'a str, user: &'a Member },
    /// In-band: messages of the room were lost to this connection while it was open
    /// (the instance's reader resumed after they were trimmed, or Redis lost them).
    Recovery {
        room: &'a str,
        recovered: bool,
        reason: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
    },
    /// A `history` frame's answer: a page of older messages.
    History(&'a crate::history::HistoryPage<'a>),
    /// A `send` with a `cid` was stored (now or, for a repeated `cid`, before) as `id`.
    Ack { cid: &'a str, id: String },
    Error {
        code: &'static str,
        message: String,
        /// The `cid` of the `send` refused, when it had a valid one.
        #[serde(skip_serializing_if = "Option::is_none")]
        cid: Option<&'a str>,
        /// The room the refused frame named, when it named a valid one.
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
    },
}

impl ServerFrame<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialize")
    }
}

/// A stream entry as clients see it, live, in a replay or in a page of history: a
/// message, or the removal of one (in place of the message, or when it happens).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EntryFrame<'a> {
    Message {
        /// The stream id: where the message stands in the room, for `since` and paging.
        #[schema(example = "1700000000000-0")]
        id: String,
        room: &'a str,
        name: &'a str,
        text: &'a str,
        /// Milliseconds since the epoch, taken from the stream id (Redis's clock), so every
        /// instance reports the same time for a message.
        ts: u64,
        /// The author's `sub`: a signed-in user's (as in presence), or the server API
        /// caller's.
        #[serde(skip_serializing_if = "Option::is_none")]
        sub: Option<&'a str>,
        /// `api` for a message posted through the server API; absent for a user's.
        #[serde(skip_serializing_if = "Option::is_none")]
        from: Option<&'a str>,
    },
    /// The message `id` was deleted: show it as removed.
    Deleted {
        room: &'a str,
        #[schema(example = "1700000000000-0")]
        id: String,
    },
}

impl EntryFrame<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("entry frames always serialize")
    }
}

/// A chat message as stored in a room's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub id: StreamId,
    pub room: String,
    pub name: String,
    pub text: String,
    /// The author's `sub`, when they were signed in (or the API caller's).
    pub sub: Option<String>,
    /// Where it was posted from: `api` for the server API, `None` for a WebSocket.
    pub from: Option<String>,
}

impl ChatMessage {
    pub fn frame(&self) -> EntryFrame<'_> {
        EntryFrame::Message {
            id: self.id.to_string(),
            room: &self.room,
            name: &self.name,
            text: &self.text,
            ts: self.id.ms,
            sub: self.sub.as_deref(),
            from: self.from.as_deref(),
        }
    }
}

/// A validated `send` request.
#[derive(Debug, PartialEq, Eq)]
pub struct SendRequest {
    /// The room to post in; `None`: the connection's first room (`?room=`).
    pub room: Option<String>,
    pub name: String,
    pub text: String,
    /// The client's id for this message: a retry with the same one is stored once.
    pub cid: Option<String>,
    /// The author's `sub`, when signed in (or the API caller's).
    pub sub: Option<String>,
    /// `api` for a message posted through the server API.
    pub from: Option<String>,
}

impl SendRequest {
    /// Who a `cid` belongs to: a signed-in user by their `sub`, a guest of an open
    /// server by the name they post under (what a page keeps across reconnects).
    pub fn author(&self) -> String {
        match &self.sub {
            Some(sub) => format!("user:{sub}"),
            None => format!("guest:{}", self.name),
        }
    }
}

/// A validated join: of `?room=` at the upgrade, or of a `join` frame.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinRequest {
    pub room: String,
    pub since: Option<StreamId>,
    pub epoch: Option<String>,
    /// Newest messages to send when nothing is replayed from `since` (capped).
    pub history: usize,
    /// Send the room's members, then who joins, leaves and types.
    pub presence: bool,
}

/// Where a page of history starts, in raw stream ids: the newest entries, those before
/// an id (newest first) or those after one (oldest first).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Bound {
    #[default]
    Newest,
    Before(StreamId),
    After(StreamId),
}

/// A validated request for a page of a room's history: a `history` frame's, or the
/// server API's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRequest {
    pub room: String,
    pub bound: Bound,
    /// Messages in the page, 1 to [`MAX_HISTORY`].
    pub limit: usize,
    /// The epoch the client's positions belong to: a page of another history is
    /// refused (`epoch_changed`) rather than silently mixed with it.
    pub epoch: Option<String>,
}

/// Messages in a page of history when the request names no `limit`.
pub const DEFAULT_PAGE: usize = 50;

/// The bound of a page from `before` and `after` (at most one of them).
pub fn parse_bound(before: Option<&str>, after: Option<&str>) -> Result<Bound, Rejection> {
    let id = |value: &str, code: &'static str, field: &str| {
        value
            .parse::<StreamId>()
            .map_err(|e| Rejection::new(code, format!("invalid {field}: {e}")))
    };
    match (before, after) {
        (None, None) => Ok(Bound::Newest),
        (Some(before), None) => Ok(Bound::Before(id(before, "invalid_before", "before")?)),
        (None, Some(after)) => Ok(Bound::After(id(after, "invalid_after", "after")?)),
        (Some(_), Some(_)) => Err(Rejection::new(
            "invalid_bound",
            "give \"before\" (older messages, newest first) or \"after\" (newer ones, oldest first), not both",
        )),
    }
}

/// A page's `limit`: 1 to [`MAX_HISTORY`] messages; none given, [`DEFAULT_PAGE`].
pub fn parse_limit(limit: Option<u64>) -> Result<usize, Rejection> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_HISTORY as u64).contains(&n) => Ok(n as usize),
        Some(_) => Err(limit_rejection()),
    }
}

pub fn limit_rejection() -> Rejection {
    Rejection::new(
        "invalid_limit",
        format!("invalid limit: a number of messages from 1 to {MAX_HISTORY}"),
    )
}

/// A validated frame from a client.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientFrame {
    Send(SendRequest),
    Join(JoinRequest),
    Leave { room: String },
    Typing { room: String },
    History(HistoryRequest),
}

/// Why a client frame was refused; `code` is the stable machine-readable part of the
/// `error` frame.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub code: &'static str,
    pub message: String,
    pub cid: Option<String>,
    pub room: Option<String>,
}

impl Rejection {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
            cid: None,
            room: None,
        }
    }

    /// The same rejection, naming the `send` it answers.
    pub fn with_cid(self, cid: Option<String>) -> Self {
        Rejection { cid, ..self }
    }

    /// The same rejection, naming the room the refused frame was about.
    pub fn with_room(self, room: &str) -> Self {
        Rejection {
            room: Some(room.to_owned()),
            ..self
        }
    }

    pub fn to_frame(&self) -> String {
        ServerFrame::Error {
            code: self.code,
            message: self.message.clone(),
            cid: self.cid.as_deref(),
            room: self.room.as_deref(),
        }
        .to_json()
    }
}

type Object = serde_json::Map<String, serde_json::Value>;

/// Parses and validates one text frame from a client. With a `speaker` (the user of a
/// verified token) that is the author of a `send`, and the frame's own `name`, if any,
/// is ignored; without one (an open server) a `send` names its author.
pub fn parse_client_frame(raw: &str, speaker: Option<&Member>) -> Result<ClientFrame, Rejection> {
    if raw.len() > MAX_FRAME_BYTES {
        return Err(Rejection::new(
            "too_large",
            format!(
                "frame is {} bytes; the limit is {MAX_FRAME_BYTES}",
                raw.len()
            ),
        ));
    }
    let value: serde_json::Value = serde_json::from_str(raw)
        .map_err(|e| Rejection::new("invalid_json", format!("frame is not JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(Rejection::new(
            "invalid_json",
            "frame must be a JSON object",
        ));
    };
    match object.get("type").and_then(|t| t.as_str()) {
        Some("send") => parse_send(object, speaker).map(ClientFrame::Send),
        Some("join") => parse_join(object).map(ClientFrame::Join),
        Some("leave") => Ok(ClientFrame::Leave {
            room: room_field(object, "leave")?,
        }),
        Some("typing") => Ok(ClientFrame::Typing {
            room: room_field(object, "typing")?,
        }),
        Some("history") => parse_history_frame(object).map(ClientFrame::History),
        Some(other) => Err(Rejection::new(
            "unknown_type",
            format!(
                "unknown frame type {:?}; expected \"send\", \"join\", \"leave\", \"typing\" or \"history\"",
                other.chars().take(32).collect::<String>()
            ),
        )),
        None => Err(Rejection::new(
            "unknown_type",
            "frame needs a string field \"type\"",
        )),
    }
}

fn parse_send(object: &Object, speaker: Option<&Member>) -> Result<SendRequest, Rejection> {
    let cid = match object.get("cid") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(cid)) if valid_token(cid) => Some(cid.clone()),
        Some(_) => {
            return Err(Rejection::new(
                "invalid_cid",
                format!("\"cid\" must be 1 to {MAX_TOKEN_LEN} characters of A-Z a-z 0-9 _ - : ."),
            ));
        }
    };
    let fields = || -> Result<SendRequest, Rejection> {
        let room = match object.get("room") {
            None | Some(serde_json::Value::Null) => None,
            Some(_) => Some(room_field(object, "send")?),
        };
        let name = match speaker {
            Some(speaker) => speaker.name.as_str(),
            None => string_field(object, "send", "name")?,
        };
        let text = string_field(object, "send", "text")?;
        if speaker.is_none() {
            validate_name(name)?;
        }
        validate_text(text)?;
        Ok(SendRequest {
            room,
            name: name.to_owned(),
            text: text.to_owned(),
            cid: cid.clone(),
            sub: speaker.map(|speaker| speaker.sub.clone()),
            from: None,
        })
    };
    fields().map_err(|rejection| rejection.with_cid(cid.clone()))
}

fn parse_join(object: &Object) -> Result<JoinRequest, Rejection> {
    let room = room_field(object, "join")?;
    let optional_string = |field: &'static str| -> Result<Option<&str>, Rejection> {
        match object.get(field) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(_) => string_field(object, "join", field).map(Some),
        }
    };
    let parsed = || -> Result<JoinRequest, Rejection> {
        let history = match object.get("history") {
            None | Some(serde_json::Value::Null) => 0,
            Some(n) => n
                .as_u64()
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX).min(MAX_HISTORY))
                .ok_or_else(history_rejection)?,
        };
        let presence = match object.get("presence") {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Bool(on)) => *on,
            Some(_) => {
                return Err(Rejection::new(
                    "invalid_field",
                    "\"presence\" must be true or false",
                ));
            }
        };
        Ok(JoinRequest {
            since: optional_string("since")?.map(parse_since).transpose()?,
            epoch: optional_string("epoch")?.map(parse_epoch).transpose()?,
            history,
            presence,
            room: room.clone(),
        })
    };
    parsed().map_err(|rejection| rejection.with_room(&room))
}

fn parse_history_frame(object: &Object) -> Result<HistoryRequest, Rejection> {
    let room = room_field(object, "history")?;
    let optional_string = |field: &'static str| -> Result<Option<&str>, Rejection> {
        match object.get(field) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(_) => string_field(object, "history", field).map(Some),
        }
    };
    let parsed = || -> Result<HistoryRequest, Rejection> {
        let limit = match object.get("limit") {
            None | Some(serde_json::Value::Null) => None,
            Some(n) => Some(n.as_u64().ok_or_else(limit_rejection)?),
        };
        Ok(HistoryRequest {
            bound: parse_bound(optional_string("before")?, optional_string("after")?)?,
            limit: parse_limit(limit)?,
            epoch: optional_string("epoch")?.map(parse_epoch).transpose()?,
            room: room.clone(),
        })
    };
    parsed().map_err(|rejection| rejection.with_room(&room))
}

/// The `room` of a `kind` frame, checked.
fn room_field(object: &Object, kind: &'static str) -> Result<String, Rejection> {
    parse_room(string_field(object, kind, "room")?)
}

fn string_field<'a>(
    object: &'a Object,
    kind: &'static str,
    field: &'static str,
) -> Result<&'a str, Rejection> {
    object.get(field).and_then(|v| v.as_str()).ok_or_else(|| {
        Rejection::new(
            "invalid_field",
            format!("\"{kind}\" needs a string field {field:?}"),
        )
    })
}

pub fn validate_name(name: &str) -> Result<(), Rejection> {
    if name.trim().is_empty() {
        return Err(Rejection::new("invalid_name", "name must not be empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(Rejection::new(
            "name_too_long",
            format!("name is longer than {MAX_NAME_CHARS} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Rejection::new(
            "control_characters",
            "name must not contain control characters",
        ));
    }
    Ok(())
}

pub fn validate_text(text: &str) -> Result<(), Rejection> {
    if text.trim().is_empty() {
        return Err(Rejection::new("invalid_text", "text must not be empty"));
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(Rejection::new(
            "text_too_long",
            format!("text is longer than {MAX_TEXT_CHARS} characters"),
        ));
    }
    // Multi-line messages are fine; other control characters only serve to garble
    // other people's screens and logs.
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(Rejection::new(
            "control_characters",
            "text must not contain control characters other than newline",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
