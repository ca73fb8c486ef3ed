//! Presence: who is in each room, across every instance, kept in Redis by one Lua script
//! ([`SCRIPT`]) and published on the room's live channel as join and leave events; and
//! typing events, which are only published, never stored.
//!
//! An entry is one connection in one room, for one [`Member`]. Each instance keeps its
//! own entries alive with a heartbeat every third of `--presence-ttl-secs`; the entries
//! of an instance that dies without saying goodbye expire, and the next call on the
//! room by any instance sweeps them and announces who left. A user is announced when
//! their first connection enters a room and when their last one leaves, so tabs count
//! once.
//!
//! Events on the live channel are JSON objects (`{"e":"join","sub":..,"name":..}`),
//! which the fan-out tells apart from the append script's entries (arrays) and hands to
//! the room's clients as frames ([`LiveEvent::frame`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{StreamExt as _, TryStreamExt as _};
use redis::Script;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::connection::{Request, StoreError};
use crate::protocol::{MAX_LISTED_MEMBERS, Member, ServerFrame};
use crate::store::{self, Store};

const SCRIPT: &str = include_str!("lua/presence.lua");
/// Rooms refreshed at once by a heartbeat.
const HEARTBEAT_CONCURRENCY: usize = 32;
/// Entries one call refreshes, and expired entries one call sweeps, at most: no call
/// holds Redis for longer than that many entries take, however big the room.
const SLICE: usize = 500;
/// Sweeps of a room per heartbeat at most (a room where more than this many slices
/// expired at once is swept on at the next heartbeat).
const MAX_SWEEPS: usize = 20;

fn members_key(room: &str) -> String {
    format!("chat:{{{room}}}:presence")
}

fn expiry_key(room: &str) -> String {
    format!("chat:{{{room}}}:presence:exp")
}

fn users_key(room: &str) -> String {
    format!("chat:{{{room}}}:presence:users")
}

fn names_key(room: &str) -> String {
    format!("chat:{{{room}}}:presence:names")
}

/// What an instance publishes on a room's live channel besides its entries.
#[derive(Debug, Serialize, Deserialize)]
pub struct LiveEvent {
    /// `join`, `leave` or `typing`.
    e: String,
    sub: String,
    name: String,
    /// The connection that caused it (`<instance tag>.<connection>`), which does not
    /// get it: its own typing, its own arrival after the member list it was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    o: Option<String>,
}

impl LiveEvent {
    /// Decodes an event payload; `None` if it is not one.
    pub fn decode(payload: &[u8]) -> Option<LiveEvent> {
        serde_json::from_slice(payload).ok()
    }

    /// The frame a room's clients get, and the connection it came from.
    pub fn frame(&self, room: &str) -> Option<(String, Option<&str>)> {
        let user = Member {
            sub: self.sub.clone(),
            name: self.name.clone(),
        };
        let frame = match self.e.as_str() {
            "join" => ServerFrame::MemberJoined { room, user: &user },
            "leave" => ServerFrame::MemberLeft { room, user: &user },
            "typing" => ServerFrame::Typing { room, user: &user },
            _ => return None,
        };
        Some((frame.to_json(), self.o.as_deref()))
    }
}

/// This instance's presence entries, each recorded before it is sent to Redis: what
/// the heartbeat refreshes, and what a connection leaves when it ends, however it ends.
#[derive(Default)]
struct Local {
    /// room → connection → member JSON.
    rooms: HashMap<String, HashMap<String, String>>,
    /// connection → the rooms it entered.
    connections: HashMap<String, HashSet<String>>,
}

impl Local {
    fn insert(&mut self, room: &str, connection: &str, member: String) {
        self.rooms
            .entry(room.to_owned())
            .or_default()
            .insert(connection.to_owned(), member);
        self.connections
            .entry(connection.to_owned())
            .or_default()
            .insert(room.to_owned());
    }

    fn remove(&mut self, room: &str, connection: &str) {
        if let Some(entries) = self.rooms.get_mut(room) {
            entries.remove(connection);
            if entries.is_empty() {
                self.rooms.remove(room);
            }
        }
        if let Some(rooms) = self.connections.get_mut(connection) {
            rooms.remove(room);
            if rooms.is_empty() {
                self.connections.remove(connection);
            }
        }
    }

    /// Forgets every entry of `connection`; the rooms they were in.
    fn remove_connection(&mut self, connection: &str) -> Vec<String> {
        let rooms: Vec<String> = self
            .connections
            .remove(connection)
            .into_iter()
            .flatten()
            .collect();
        for room in &rooms {
            if let Some(entries) = self.rooms.get_mut(room) {
                entries.remove(connection);
                if entries.is_empty() {
                    self.rooms.remove(room);
                }
            }
        }
        rooms
    }
}

/// This instance's presence entries and the calls that keep them in Redis.
pub struct Presence {
    store: Store,
    script: Script,
    lifetime: Duration,
    local: Mutex<Local>,
    /// Held for writing by a heartbeat, for reading by a leave: a heartbeat that took
    /// its list before a connection left would otherwise put it back.
    beating: tokio::sync::RwLock<()>,
}

impl Presence {
    pub fn new(store: Store, lifetime: Duration) -> Self {
        Presence {
            store,
            script: Script::new(SCRIPT),
            lifetime: lifetime.max(Duration::from_secs(1)),
            local: Mutex::new(Local::default()),
            beating: tokio::sync::RwLock::new(()),
        }
    }

    async fn call<T: redis::FromRedisValue>(
        &self,
        room: &str,
        operation: &str,
        args: &[&str],
    ) -> Result<T, StoreError> {
        let mut invocation = self.script.key(members_key(room));
        invocation
            .key(expiry_key(room))
            .key(users_key(room))
            .key(store::live_channel(room))
            .key(names_key(room))
            .arg(self.store.publish_command())
            .arg(self.lifetime.as_millis() as u64)
            .arg(operation)
            .arg(SLICE.min(MAX_LISTED_MEMBERS));
        for arg in args {
            invocation.arg(*arg);
        }
        self.store.redis().call(Request::Script(&invocation)).await
    }

    /// Puts `connection` in `room` as `member`; the room's clients hear of it if the
    /// member was not there yet. The entry is recorded here first, so that
    /// [`Presence::leave_connection`] takes it out of Redis even when this call is
    /// dropped half-way (the connection ended in the middle of its join).
    pub async fn enter(
        &self,
        room: &str,
        connection: &str,
        member: &Member,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(member).expect("a member always serializes");
        self.local
            .lock()
            .unwrap()
            .insert(room, connection, json.clone());
        let entered = self
            .call::<Swept>(room, "enter", &[connection, &json])
            .await
            .map(drop);
        if entered.is_err() {
            // Not refreshed from now on: if Redis did take it, it expires.
            self.local.lock().unwrap().remove(room, connection);
        }
        entered
    }

    /// Takes `connection` out of `room`. A failure is only logged: the entry expires.
    /// Forgotten here only once Redis has answered, so that a leave cut short is done
    /// again by [`Presence::leave_connection`].
    pub async fn leave(&self, room: &str, connection: &str) {
        let _no_heartbeat = self.beating.read().await;
        self.leave_in_redis(room, connection).await;
        self.local.lock().unwrap().remove(room, connection);
    }

    /// Takes `connection` out of every room it entered, whatever became of its joins
    /// and leaves: called once the connection has ended.
    pub async fn leave_connection(&self, connection: &str) {
        let _no_heartbeat = self.beating.read().await;
        let rooms = self.local.lock().unwrap().remove_connection(connection);
        futures_util::future::join_all(
            rooms
                .iter()
                .map(|room| self.leave_in_redis(room, connection)),
        )
        .await;
    }

    /// Takes every entry still kept here out of Redis: at the end of a drain, for the
    /// connections whose own leave has not come (stuck on a socket that takes nothing).
    pub async fn leave_everything(&self) {
        let _no_heartbeat = self.beating.read().await;
        let rooms = std::mem::take(&mut *self.local.lock().unwrap()).rooms;
        let leaves = rooms.into_iter().flat_map(|(room, entries)| {
            let connections: Vec<String> = entries.into_keys().collect();
            connections
                .chunks(SLICE)
                .map(|slice| (room.clone(), slice.to_vec()))
                .collect::<Vec<_>>()
        });
        futures_util::stream::iter(leaves)
            .for_each_concurrent(HEARTBEAT_CONCURRENCY, |(room, connections)| async move {
                let args: Vec<&str> = connections.iter().map(String::as_str).collect();
                if let Err(error) = self.call::<Swept>(&room, "leave", &args).await {
                    tracing::warn!(%error, room, "leaving presence failed; the entries will expire");
                }
            })
            .await;
    }

    async fn leave_in_redis(&self, room: &str, connection: &str) {
        if let Err(error) = self.call::<Swept>(room, "leave", &[connection]).await {
            tracing::warn!(%error, room, "leaving presence failed; the entry will expire");
        }
    }

    /// How many users are in `room`, and the first [`MAX_LISTED_MEMBERS`] of them by
    /// name, each once however many connections they have.
    pub async fn members(&self, room: &str) -> Result<(usize, Vec<Member>), StoreError> {
        let listed: Vec<redis::Value> = self.call(room, "list", &[]).await?;
        let Some((count, members)) = listed.split_first() else {
            return Ok((0, Vec::new()));
        };
        let count = redis::from_redis_value_ref(count).unwrap_or_default();
        let members = members
            .iter()
            .filter_map(|member| redis::from_redis_value_ref::<String>(member).ok())
            .filter_map(|json| serde_json::from_str(&json).ok())
            .collect();
        Ok((count, members))
    }

    /// Tells the room's clients that `member` is typing.
    pub async fn typing(
        &self,
        room: &str,
        origin: String,
        member: &Member,
    ) -> Result<(), StoreError> {
        let event = LiveEvent {
            e: "typing".into(),
            sub: member.sub.clone(),
            name: member.name.clone(),
            o: Some(origin),
        };
        let mut publish = redis::cmd(self.store.publish_command());
        publish
            .arg(store::live_channel(room))
            .arg(serde_json::to_string(&event).expect("an event always serializes"));
        self.store.redis().call::<()>(Request::Cmd(&publish)).await
    }

    /// Entries kept alive here, and the rooms they are in.
    pub fn counts(&self) -> (usize, usize) {
        let local = self.local.lock().unwrap();
        (
            local.rooms.values().map(HashMap::len).sum(),
            local.rooms.len(),
        )
    }

    /// Refreshes every entry of this instance, room by room, and sweeps the rooms whose
    /// presence is watched here (`watched`), until `stop`.
    pub async fn heartbeat(
        self: Arc<Self>,
        watched: impl Fn() -> Vec<String>,
        stop: CancellationToken,
    ) {
        let mut beat = tokio::time::interval(self.lifetime / 3);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = beat.tick() => {}
            }
            let _no_leaves = self.beating.write().await;
            let mut rooms: HashMap<String, Vec<String>> = self
                .local
                .lock()
                .unwrap()
                .rooms
                .iter()
                .map(|(room, entries)| {
                    let pairs = entries
                        .iter()
                        .flat_map(|(conn, member)| [conn.clone(), member.clone()])
                        .collect();
                    (room.clone(), pairs)
                })
                .collect();
            // A room watched here but with no entry of ours is swept all the same, or the
            // members of an instance that died would stay listed to its watchers.
            for room in watched() {
                rooms.entry(room).or_default();
            }
            let this = &self;
            // The first failure ends the round: with Redis down, every call would wait
            // out its timeout while leaves wait for the round. The entries expire at
            // worst, and the next round that gets through puts them back.
            let round = futures_util::stream::iter(rooms.into_iter().map(Ok))
                .try_for_each_concurrent(HEARTBEAT_CONCURRENCY, |(room, pairs)| async move {
                    this.refresh(&room, &pairs)
                        .await
                        .map_err(|error| (room, error))
                });
            if let Err((room, error)) = round.await {
                tracing::warn!(%error, room, "presence heartbeat failed; the round is cut short");
            }
        }
    }

    /// Refreshes `pairs` (connection, member, ...) in `room`, a slice per call, then
    /// sweeps what expired there, a slice per call.
    async fn refresh(&self, room: &str, pairs: &[String]) -> Result<(), StoreError> {
        let mut more = false;
        for slice in pairs.chunks(2 * SLICE) {
            let args: Vec<&str> = slice.iter().map(String::as_str).collect();
            more |= self.call::<Swept>(room, "enter", &args).await?.more();
        }
        if pairs.is_empty() {
            more = true;
        }
        let mut sweeps = 0;
        while more && sweeps < MAX_SWEEPS {
            more = self.call::<Swept>(room, "sweep", &[]).await?.more();
            sweeps += 1;
        }
        Ok(())
    }
}

/// What a call that changes presence answers: whether expired entries are left.
struct Swept(Vec<i64>);

impl Swept {
    fn more(&self) -> bool {
        self.0.first() == Some(&1)
    }
}

impl redis::FromRedisValue for Swept {
    fn from_redis_value_ref(value: &redis::Value) -> Result<Self, redis::ParsingError> {
        Ok(Swept(redis::from_redis_value_ref(value)?))
    }

    fn from_redis_value(value: redis::Value) -> Result<Self, redis::ParsingError> {
        Self::from_redis_value_ref(&value)
    }
}
