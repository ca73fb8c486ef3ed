//! Redis storage of rooms. A room `r` is three kinds of keys, all hash-tagged `{r}` so
//! that one script touches one Redis Cluster slot:
//!
//! - `chat:{r}:log`: the stream of messages (fields `name`, `text`, `prev` = id of the
//!   entry before it, and `sub` for a signed-in author), trimmed to the history length;
//! - `chat:{r}:meta`: a hash with the room's `epoch` (a random name for this history,
//!   created only when the hash is missing, so it changes exactly when history was lost)
//!   and `last` (the newest entry's id);
//! - `chat:{r}:cid:<cid>/<author>`: the id an author's message was stored as, for
//!   300 s, so that a retry is stored once (`chat:{r}:cid-api:<caller>:<cid>` for the
//!   server API's, so that its callers and the WebSocket's clients each have their own);
//! - `chat:{r}:deleted`: the ids of the room's deleted messages (see [`Store::delete`]);
//! - the pub/sub channel `chat:{r}:live`, on which the append script publishes each new
//!   entry (see [`crate::reader`]).
//!
//! Memory is bounded three ways, all in the append script: at most `--history-len`
//! entries, none older than `--history-max-age-secs`, and both keys expire
//! `--room-ttl-secs` after the room's last write.
//!
//! Appends go through one Lua script ([`APPEND`]) so the epoch, the `prev` link and the
//! entry can never disagree. Reads return raw [`Entry`]s, decodable or not, so callers
//! page by the raw id.
//!
//! A deleted message keeps its entry, so the `prev` links that recovery and the fan-out
//! follow stay whole: a tombstone entry (`deletes` = its id) is appended after it, and
//! its id is kept in the room's deleted set, which replays and pages of history consult
//! ([`RANGE`]) so that they never send its text again.

use std::sync::Arc;

use redis::Script;
use redis::streams::StreamRangeReply;

use crate::config::Config;
use crate::connection::{Redis, Request, StoreError, Target};
use crate::protocol::{Bound, ChatMessage, EntryFrame, SendRequest, StreamId};

/// Entries read per page when replaying.
pub const PAGE: usize = 500;

const APPEND: &str = include_str!("lua/append.lua");
const ROOM_STATE: &str = include_str!("lua/room_state.lua");
const RANGE: &str = include_str!("lua/range.lua");
const DELETE: &str = include_str!("lua/delete.lua");
/// How long a client id is remembered: a retry within this is stored once (as in
/// Centrifuge's idempotent publish).
const CID_TTL_SECS: u64 = 300;

pub fn stream_key(room: &str) -> String {
    format!("chat:{{{room}}}:log")
}

fn meta_key(room: &str) -> String {
    format!("chat:{{{room}}}:meta")
}

/// Where a message's client id is remembered. A client id is its author's: two authors
/// who pick the same `cid` are two messages. A WebSocket author's key has the `cid` first,
/// which cannot hold a `/`, so no two (cid, author) pairs share one; a server API caller's
/// (`from` = `api`, its `sub` the caller) is in a namespace of its own, the caller's
/// length first since a `sub` may hold `:`.
fn cid_key(room: &str, message: &SendRequest, cid: &str) -> String {
    match (message.from.as_deref(), message.sub.as_deref()) {
        (Some("api"), Some(caller)) => {
            format!("chat:{{{room}}}:cid-api:{}:{caller}:{cid}", caller.len())
        }
        _ => format!("chat:{{{room}}}:cid:{cid}/{}", message.author()),
    }
}

fn deleted_key(room: &str) -> String {
    format!("chat:{{{room}}}:deleted")
}

/// The pub/sub channel of a room's new entries.
pub fn live_channel(room: &str) -> String {
    format!("chat:{{{room}}}:live")
}

/// The room of a live channel, the inverse of [`live_channel`].
pub fn room_of_channel(channel: &str) -> Option<&str> {
    channel.strip_prefix("chat:{")?.strip_suffix("}:live")
}

/// One stream entry as stored, whether or not it decodes as a chat message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: StreamId,
    /// The id of the entry appended before this one (`0-0` for a room's first); `None`
    /// when missing or malformed (an entry not written by this server).
    pub prev: Option<StreamId>,
    pub message: Option<ChatMessage>,
    /// A tombstone: the message this entry deletes.
    pub deletes: Option<StreamId>,
    /// The message was deleted since (known to reads that consult the deleted set).
    pub deleted: bool,
}

impl Entry {
    /// What a client is sent for this entry of `room`: the message, or `deleted` in its
    /// place once it was; a tombstone's `deleted`; nothing for an entry this server did
    /// not write.
    pub fn frame<'a>(&'a self, room: &'a str) -> Option<EntryFrame<'a>> {
        match (&self.message, self.deletes) {
            (Some(_), _) if self.deleted => Some(EntryFrame::Deleted {
                room,
                id: self.id.to_string(),
            }),
            (Some(message), _) => Some(message.frame()),
            (None, Some(deletes)) => Some(EntryFrame::Deleted {
                room,
                id: deletes.to_string(),
            }),
            (None, None) => None,
        }
    }
}

/// A range of a room's stream, read with its epoch.
#[derive(Clone, Debug, Default)]
pub struct Range {
    /// In the order asked for.
    pub entries: Vec<Entry>,
    /// `None`: the room has no history.
    pub epoch: Option<String>,
}

/// What [`Store::delete`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deletion {
    /// The tombstone appended.
    Deleted(StreamId),
    /// It had been deleted before: nothing was written.
    Already,
    /// The room holds no message with that id (never did, trimmed, or not a message).
    NotFound,
}

/// What a joining client's recovery is judged against, read in one round trip.
#[derive(Clone, Debug, Default)]
pub struct RoomState {
    /// `None`: the room has no history (never written, expired, or lost).
    pub epoch: Option<String>,
    /// The newest entry's id, `0-0` if the stream is empty.
    pub top: StreamId,
    /// Redis's clock, in milliseconds.
    pub now_ms: u64,
}

/// A message stored by [`Store::append`].
#[derive(Clone, Debug)]
pub struct Appended {
    pub id: StreamId,
    /// The `cid` had been stored before: nothing new was written.
    pub duplicate: bool,
}

#[derive(Clone)]
pub struct Store {
    redis: Arc<Redis>,
    /// Where the fan-out connects its own connection, which receives published entries
    /// as RESP3 pushes on the connection it also sends commands on.
    target: Target,
    /// `PUBLISH`, or on a cluster `SPUBLISH`, which keeps each message inside the shard
    /// of its room instead of broadcasting it to every node.
    publish_command: &'static str,
    append_script: Arc<Script>,
    room_state_script: Arc<Script>,
    range_script: Arc<Script>,
    delete_script: Arc<Script>,
    history_len: u64,
    history_max_age_ms: u64,
    room_ttl_secs: u64,
}

impl Store {
    /// Prepares the client without contacting Redis: the server starts (and reports 503)
    /// even while Redis is still being created.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let target = Target::new(config)?;
        Ok(Store {
            redis: Arc::new(Redis::new(&target)?),
            publish_command: if target.cluster {
                "SPUBLISH"
            } else {
                "PUBLISH"
            },
            target,
            append_script: Arc::new(Script::new(APPEND)),
            room_state_script: Arc::new(Script::new(ROOM_STATE)),
            range_script: Arc::new(Script::new(RANGE)),
            delete_script: Arc::new(Script::new(DELETE)),
            history_len: config.history_len,
            history_max_age_ms: config.history_max_age_secs.saturating_mul(1000),
            room_ttl_secs: config.room_ttl_secs.max(1),
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// `PUBLISH`, or `SPUBLISH` on a cluster.
    pub fn publish_command(&self) -> &'static str {
        self.publish_command
    }

    /// Stores a message and returns its id; with a `cid` already stored, only returns
    /// the id it was stored as.
    pub async fn append(&self, room: &str, message: &SendRequest) -> Result<Appended, StoreError> {
        let mut invocation = self.append_script.key(stream_key(room));
        invocation.key(meta_key(room)).key(live_channel(room));
        if let Some(cid) = &message.cid {
            invocation.key(cid_key(room, message, cid));
        }
        invocation
            // A fresh epoch: 128 random bits, used only if the room has none.
            .arg(format!("{:032x}", rand::random::<u128>()))
            .arg(self.history_len)
            .arg(self.history_max_age_ms)
            .arg(self.room_ttl_secs)
            .arg(&message.name)
            .arg(&message.text)
            .arg(CID_TTL_SECS)
            .arg(self.publish_command)
            .arg(message.sub.as_deref().unwrap_or_default())
            .arg(message.from.as_deref().unwrap_or_default());
        let (id, _epoch, duplicate): (String, String, u8) =
            self.redis.call(Request::Script(&invocation)).await?;
        Ok(Appended {
            id: parse_id(&id)?,
            duplicate: duplicate == 1,
        })
    }

    /// The room's epoch, newest id and Redis's clock, read atomically (by a script, see
    /// lua/room_state.lua for why not a transaction).
    pub async fn room_state(&self, room: &str) -> Result<RoomState, StoreError> {
        let mut invocation = self.room_state_script.key(stream_key(room));
        invocation.key(meta_key(room));
        let (secs, micros, epoch, top): (u64, u64, Option<String>, String) =
            self.redis.call(Request::Script(&invocation)).await?;
        Ok(RoomState {
            epoch,
            top: match top.as_str() {
                "" => StreamId::default(),
                id => parse_id(id)?,
            },
            now_ms: secs * 1000 + micros / 1000,
        })
    }

    /// The room's epoch, if it has a history.
    pub async fn epoch(&self, room: &str) -> Result<Option<String>, StoreError> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(meta_key(room)).arg("epoch");
        self.redis.call(Request::Cmd(&cmd)).await
    }

    /// Bytes of memory Redis uses (`INFO memory`, `used_memory`). On a cluster `INFO`
    /// goes to every primary and comes back as one answer per node, of which a node that
    /// does not answer is left out.
    pub async fn used_memory(&self) -> Result<UsedMemory, StoreError> {
        let mut cmd = redis::cmd("INFO");
        cmd.arg("memory");
        let info: redis::Value = self.redis.call(Request::Cmd(&cmd)).await?;
        let nodes: Vec<u64> = match &info {
            redis::Value::Map(nodes) => nodes
                .iter()
                .filter_map(|(_, info)| used_memory_of(info))
                .collect(),
            one => used_memory_of(one).into_iter().collect(),
        };
        Ok(UsedMemory {
            largest: nodes.iter().copied().max().unwrap_or(0),
            sum: nodes.iter().sum(),
        })
    }

    /// The newest `count` entries, oldest first, deleted messages marked.
    pub async fn latest(&self, room: &str, count: usize) -> Result<Vec<Entry>, StoreError> {
        let mut entries = self.range(room, Bound::Newest, count).await?.entries;
        entries.reverse();
        Ok(entries)
    }

    /// Up to `count` entries after `after`, oldest first, deleted messages marked.
    pub async fn entries_after(
        &self,
        room: &str,
        after: StreamId,
        count: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        Ok(self.range(room, Bound::After(after), count).await?.entries)
    }

    /// Up to `count` entries from `bound` (newest first, except after an id), deleted
    /// messages marked, and the room's epoch, read together.
    pub async fn range(&self, room: &str, bound: Bound, count: usize) -> Result<Range, StoreError> {
        let (command, start, end) = match bound {
            Bound::Newest => ("XREVRANGE", "+".to_owned(), "-".to_owned()),
            Bound::Before(before) => ("XREVRANGE", format!("({before}"), "-".to_owned()),
            Bound::After(after) => ("XRANGE", format!("({after}"), "+".to_owned()),
        };
        let mut invocation = self.range_script.key(stream_key(room));
        invocation
            .key(deleted_key(room))
            .key(meta_key(room))
            .arg(command)
            .arg(start)
            .arg(end)
            .arg(count);
        let (reply, deleted, epoch): (StreamRangeReply, Vec<String>, Option<String>) =
            self.redis.call(Request::Script(&invocation)).await?;
        let mut entries = entries(room, &reply.ids);
        for entry in &mut entries {
            entry.deleted = deleted
                .iter()
                .any(|id| id.parse::<StreamId>().ok() == Some(entry.id));
        }
        Ok(Range { entries, epoch })
    }

    /// Deletes the message `id` of `room` (see delete.lua).
    pub async fn delete(&self, room: &str, id: StreamId) -> Result<Deletion, StoreError> {
        let mut invocation = self.delete_script.key(stream_key(room));
        invocation
            .key(meta_key(room))
            .key(live_channel(room))
            .key(deleted_key(room))
            .arg(id.to_string())
            .arg(self.history_len)
            .arg(self.room_ttl_secs)
            // A deleted message is stored at most until the age limit trims it, or the
            // room expires after its last write; until then its id must be known.
            .arg(self.history_max_age_ms / 1000 + self.room_ttl_secs)
            .arg(self.publish_command);
        let (outcome, tombstone): (String, String) =
            self.redis.call(Request::Script(&invocation)).await?;
        Ok(match outcome.as_str() {
            "deleted" => Deletion::Deleted(parse_id(&tombstone)?),
            "already" => Deletion::Already,
            _ => Deletion::NotFound,
        })
    }
}

/// Memory Redis uses, in bytes: of its largest node (the one to fill up first) and of
/// all of them together; the same for one Redis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsedMemory {
    pub largest: u64,
    pub sum: u64,
}

/// `used_memory` in one node's `INFO memory` text.
fn used_memory_of(info: &redis::Value) -> Option<u64> {
    let info: String = redis::from_redis_value_ref(info).ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))?
        .trim()
        .parse()
        .ok()
}

/// `XRANGE` of up to `count` entries of the room's stream after `after`, oldest first.
pub fn read_after(room: &str, after: StreamId, count: usize) -> redis::Cmd {
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(stream_key(room))
        .arg(format!("({after}"))
        .arg("+")
        .arg("COUNT")
        .arg(count);
    cmd
}

fn parse_id(id: &str) -> Result<StreamId, StoreError> {
    id.parse().map_err(|e: crate::protocol::BadStreamId| {
        StoreError::Refused(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "stream id",
            e.to_string(),
        )))
    })
}

/// An entry as the append and delete scripts publish it: `[id, prev, name, text, sub,
/// from, deletes]`, `sub` and `from` empty unless set (and the last three absent from
/// older servers); a tombstone has `deletes` and no name or text.
#[derive(serde::Deserialize)]
struct Published(
    String,
    String,
    String,
    String,
    #[serde(default)] String,
    #[serde(default)] String,
    #[serde(default)] String,
);

/// An entry as published on the room's live channel; `None` if it is not one.
pub fn published_entry(room: &str, payload: &[u8]) -> Option<Entry> {
    let Published(id, prev, name, text, sub, from, deletes) =
        serde_json::from_slice(payload).ok()?;
    let id: StreamId = id.parse().ok()?;
    let present = |value: String| Some(value).filter(|value| !value.is_empty());
    let deletes = match present(deletes) {
        Some(deletes) => Some(deletes.parse().ok()?),
        None => None,
    };
    Some(Entry {
        id,
        prev: prev.parse().ok(),
        message: deletes.is_none().then(|| ChatMessage {
            id,
            room: room.to_owned(),
            name,
            text,
            sub: present(sub),
            from: present(from),
        }),
        deletes,
        deleted: false,
    })
}

/// Stream entries as [`Entry`]s; an entry whose id does not parse (impossible from
/// Redis) is left out.
pub fn entries(room: &str, ids: &[redis::streams::StreamId]) -> Vec<Entry> {
    ids.iter().filter_map(|e| entry(room, e)).collect()
}

fn entry(room: &str, raw: &redis::streams::StreamId) -> Option<Entry> {
    let field =
        |name: &str| -> Option<String> { redis::from_redis_value_ref(raw.map.get(name)?).ok() };
    let id: StreamId = raw.id.parse().ok()?;
    let message = match (field("name"), field("text")) {
        (Some(name), Some(text)) => Some(ChatMessage {
            id,
            room: room.to_owned(),
            name,
            text,
            sub: field("sub"),
            from: field("from"),
        }),
        _ => None,
    };
    Some(Entry {
        id,
        prev: field("prev").and_then(|p| p.parse().ok()),
        message,
        deletes: field("deletes").and_then(|d| d.parse().ok()),
        deleted: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tombstone_frame(entry: &Entry) -> String {
        entry.frame("lobby").unwrap().to_json()
    }

    #[test]
    fn a_deleted_message_is_sent_as_deleted_in_its_place() {
        let mut entry = published_entry("lobby", br#"["5-1","5-0","ann","secret"]"#).unwrap();
        assert!(tombstone_frame(&entry).contains("secret"));
        entry.deleted = true;
        assert_eq!(
            tombstone_frame(&entry),
            r#"{"type":"deleted","room":"lobby","id":"5-1"}"#
        );
    }

    #[test]
    fn api_client_ids_have_a_namespace_per_caller() {
        let send = |sub: Option<&str>, from: Option<&str>| SendRequest {
            room: None,
            name: "n".into(),
            text: "t".into(),
            cid: Some("k".into()),
            sub: sub.map(str::to_owned),
            from: from.map(str::to_owned),
        };
        assert_eq!(
            cid_key("r", &send(None, None), "k"),
            "chat:{r}:cid:k/guest:n"
        );
        assert_eq!(
            cid_key("r", &send(Some("u-1"), None), "k"),
            "chat:{r}:cid:k/user:u-1"
        );
        assert_eq!(
            cid_key("r", &send(Some("a:b"), Some("api")), "c"),
            "chat:{r}:cid-api:3:a:b:c"
        );
        assert_ne!(
            cid_key("r", &send(Some("a"), Some("api")), "b:c"),
            cid_key("r", &send(Some("a:b"), Some("api")), "c")
        );
    }

    #[test]
    fn keys_and_the_live_channel_share_the_room_hash_tag() {
        assert_eq!(stream_key("lobby"), "chat:{lobby}:log");
        assert_eq!(meta_key("lobby"), "chat:{lobby}:meta");
        assert_eq!(live_channel("lobby"), "chat:{lobby}:live");
        assert_eq!(room_of_channel("chat:{lobby}:live"), Some("lobby"));
        assert_eq!(room_of_channel("chat:{lobby}:log"), None);
    }

    #[test]
    fn used_memory_is_read_from_every_node_that_answered() {
        let info = |bytes: u64| {
            redis::Value::BulkString(
                format!("# Memory\r\nused_memory:{bytes}\r\nused_memory_human:1M\r\n").into(),
            )
        };
        assert_eq!(used_memory_of(&info(1024)), Some(1024));
        assert_eq!(used_memory_of(&redis::Value::Nil), None);
    }

    #[test]
    fn a_published_entry_decodes_with_its_link_and_anything_else_does_not() {
        // As Redis's cjson writes it: `/` escaped too.
        let payload = br#"["5-1","5-0","ann","a \/ \"b\"\n"]"#;
        let entry = published_entry("lobby", payload).unwrap();
        assert_eq!(entry.id, "5-1".parse().unwrap());
        assert_eq!(entry.prev, Some("5-0".parse().unwrap()));
        let message = entry.message.unwrap();
        assert_eq!(
            (message.room.as_str(), message.name.as_str()),
            ("lobby", "ann")
        );
        assert_eq!(message.text, "a / \"b\"\n");
        assert_eq!(message.sub, None);
        let signed = published_entry("lobby", br#"["5-2","5-1","Ann","hi","u-ann"]"#).unwrap();
        assert_eq!(signed.message.unwrap().sub.as_deref(), Some("u-ann"));
        let from_api =
            published_entry("lobby", br#"["5-3","5-2","Bot","hi","backend","api"]"#).unwrap();
        assert_eq!(from_api.message.unwrap().from.as_deref(), Some("api"));
        let tombstone = published_entry("lobby", br#"["5-4","5-3","","","","","5-1"]"#).unwrap();
        assert_eq!(
            (tombstone.message, tombstone.deletes),
            (None, Some("5-1".parse().unwrap()))
        );
        let frame = tombstone_frame(
            &published_entry("lobby", br#"["5-4","5-3","","","","","5-1"]"#).unwrap(),
        );
        assert_eq!(frame, r#"{"type":"deleted","room":"lobby","id":"5-1"}"#);
        assert!(published_entry("lobby", b"not json").is_none());
        assert!(published_entry("lobby", br#"["x","0-0","a","b"]"#).is_none());
    }
}
