//! Room fan-out inside one process: a broadcast channel per room with local clients, and
//! the id of the last stream entry this instance has delivered for that room.
//!
//! The Redis reader ([`crate::reader`]) takes the rooms joined since it last asked and
//! the rooms nobody listens to any more, and publishes what it receives; connections
//! subscribe. The broadcast channel's capacity
//! is the per-client send queue: a client that falls that far behind gets `Lagged` and is
//! disconnected, while the sender never waits for anyone.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{Notify, broadcast};

use crate::protocol::StreamId;
use crate::random::random_u64;

/// A frame ready to go out: serialized once, shared by every client of the room.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub about: About,
    pub frame: Utf8Bytes,
}

/// What an [`Outgoing`] frame is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum About {
    /// A stream entry (its message, or a `recovery` notice before it): a client whose
    /// replay already covered the entry skips it.
    Entry(StreamId),
    /// An ephemeral event (presence, typing), only for clients that asked for them.
    /// `origin` is the local connection that caused it, which does not get it back; 0
    /// for none here.
    Event { origin: u64 },
}

struct Room {
    tx: broadcast::Sender<Outgoing>,
    last_id: StreamId,
    /// The reader's subscription to the room's live channel is confirmed.
    live: bool,
}

#[derive(Default)]
struct Rooms {
    rooms: HashMap<String, Room>,
    /// Rooms created since the reader last took them.
    joined: Vec<String>,
}

pub struct Hub {
    state: Mutex<Rooms>,
    /// Names this process in the origin of events, so that a connection's own typing
    /// event, coming back from Redis, is told apart from another instance's.
    tag: String,
    connections: AtomicU64,
    capacity: usize,
    /// Wakes the reader when a room is joined.
    changed: Notify,
    /// Wakes joins waiting for a room to be live.
    went_live: Notify,
}

impl Hub {
    pub fn new(capacity: usize) -> Self {
        Hub {
            state: Mutex::new(Rooms::default()),
            tag: format!("{:x}", random_u64()),
            connections: AtomicU64::new(0),
            capacity: capacity.max(1),
            changed: Notify::new(),
            went_live: Notify::new(),
        }
    }

    /// A new connection's number, never 0.
    pub fn new_connection(&self) -> u64 {
        self.connections.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A connection's name across instances: `<process tag>.<number>`.
    pub fn origin(&self, connection: u64) -> String {
        format!("{}.{connection}", self.tag)
    }

    /// The number of the local connection `origin` names; 0 if it is not one of ours.
    pub fn local_connection(&self, origin: &str) -> u64 {
        origin
            .split_once('.')
            .filter(|(tag, _)| *tag == self.tag)
            .and_then(|(_, n)| n.parse().ok())
            .unwrap_or(0)
    }

    /// Subscribes to a room, starting to read it after `start` (the stream's last id,
    /// fetched by the caller) if no one here reads it yet. When two clients race to open
    /// the same room, the first start id wins; either is a valid starting point.
    pub fn join(&self, room: &str, start: StreamId) -> broadcast::Receiver<Outgoing> {
        let mut state = self.state.lock().unwrap();
        let Rooms { rooms, joined } = &mut *state;
        let mut created = false;
        let rx = rooms
            .entry(room.to_owned())
            .or_insert_with(|| {
                created = true;
                joined.push(room.to_owned());
                Room {
                    tx: broadcast::channel(self.capacity).0,
                    last_id: start,
                    live: false,
                }
            })
            .tx
            .subscribe();
        drop(state);
        // Only a new room is news to the reader.
        if created {
            self.changed.notify_one();
        }
        rx
    }

    /// The rooms created since the last call.
    pub fn take_joined(&self) -> Vec<String> {
        std::mem::take(&mut self.state.lock().unwrap().joined)
    }

    /// Every room followed here.
    pub fn rooms(&self) -> Vec<String> {
        self.state.lock().unwrap().rooms.keys().cloned().collect()
    }

    /// Forgets the rooms nobody listens to any more and returns them. Under the same
    /// lock `join` takes, so a client cannot subscribe to a room in the instant it is
    /// dropped; a room dropped before the reader took it as joined is not handed out.
    pub fn prune(&self) -> Vec<String> {
        let mut state = self.state.lock().unwrap();
        let mut left = Vec::new();
        state.rooms.retain(|name, room| {
            let listened = room.tx.receiver_count() > 0;
            if !listened {
                left.push(name.clone());
            }
            listened
        });
        let Rooms { rooms, joined } = &mut *state;
        joined.retain(|name| rooms.contains_key(name));
        left
    }

    /// Records that the reader's subscriptions to `rooms` are confirmed.
    pub fn mark_live(&self, rooms: &[String]) {
        let mut state = self.state.lock().unwrap();
        for room in rooms {
            if let Some(room) = state.rooms.get_mut(room) {
                room.live = true;
            }
        }
        drop(state);
        self.went_live.notify_waiters();
    }

    /// Waits until the reader is subscribed to `room`: from then on every event
    /// published in it reaches this instance. (Entries need no wait: the stream has them.)
    pub async fn wait_live(&self, room: &str) {
        loop {
            let notified = self.went_live.notified();
            tokio::pin!(notified);
            // Registered before the check, so a mark in between is not missed.
            notified.as_mut().enable();
            let live = self
                .state
                .lock()
                .unwrap()
                .rooms
                .get(room)
                .is_none_or(|r| r.live);
            if live {
                return;
            }
            notified.await;
        }
    }

    /// The id of the last entry delivered in a room, if this instance follows it.
    pub fn position(&self, room: &str) -> Option<StreamId> {
        self.state
            .lock()
            .unwrap()
            .rooms
            .get(room)
            .map(|r| r.last_id)
    }

    /// Waits until some room may have been joined.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// Moves a room past entry `id`, sending `frame` (if any) to the room's local
    /// clients. Ids at or below the last delivered one are ignored, which makes re-reads
    /// after a reconnect harmless. Returns how many clients the frame was queued for.
    pub fn publish(&self, room: &str, id: StreamId, frame: Option<Utf8Bytes>) -> usize {
        let mut state = self.state.lock().unwrap();
        let Some(room) = state.rooms.get_mut(room) else {
            return 0;
        };
        if id <= room.last_id {
            return 0;
        }
        room.last_id = id;
        frame.map_or(0, |frame| {
            room.tx
                .send(Outgoing {
                    about: About::Entry(id),
                    frame,
                })
                .unwrap_or(0)
        })
    }

    /// Sends a frame to the room's local clients without moving the room's position:
    /// one about entry `id` (which comes next), or an ephemeral event.
    pub fn announce(&self, room: &str, about: About, frame: Utf8Bytes) {
        if let Some(room) = self.state.lock().unwrap().rooms.get(room) {
            let _ = room.tx.send(Outgoing { about, frame });
        }
    }

    pub fn room_count(&self) -> usize {
        self.state.lock().unwrap().rooms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> StreamId {
        s.parse().unwrap()
    }

    #[test]
    fn publishes_each_id_once_and_only_after_start() {
        let hub = Hub::new(8);
        let mut rx = hub.join("a", id("5-0"));
        let frame = || Some(Utf8Bytes::from("m"));
        assert_eq!(hub.publish("a", id("4-0"), frame()), 0);
        assert_eq!(hub.publish("a", id("6-0"), frame()), 1);
        assert_eq!(hub.publish("a", id("6-0"), frame()), 0);
        assert_eq!(hub.publish("b", id("7-0"), frame()), 0);
        // An undecodable entry moves the position without a frame.
        assert_eq!(hub.publish("a", id("8-0"), None), 0);
        assert_eq!(rx.try_recv().unwrap().about, About::Entry(id("6-0")));
        assert!(rx.try_recv().is_err());
        assert_eq!(hub.position("a"), Some(id("8-0")));
    }

    #[tokio::test]
    async fn a_join_waits_until_the_room_is_live() {
        let hub = std::sync::Arc::new(Hub::new(8));
        let _rx = hub.join("a", StreamId::default());
        let waiting = tokio::spawn({
            let hub = hub.clone();
            async move { hub.wait_live("a").await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        hub.mark_live(&["a".to_owned()]);
        waiting.await.unwrap();
        hub.wait_live("not followed").await;
    }

    #[test]
    fn a_connection_s_origin_is_recognised_only_by_its_own_process() {
        let (here, there) = (Hub::new(1), Hub::new(1));
        let connection = here.new_connection();
        assert_ne!(connection, 0);
        assert_eq!(here.local_connection(&here.origin(connection)), connection);
        assert_eq!(there.local_connection(&here.origin(connection)), 0);
        assert_eq!(here.local_connection("garbage"), 0);
    }

    #[test]
    fn hands_out_each_new_room_once_and_forgets_rooms_without_listeners() {
        let hub = Hub::new(8);
        let a = hub.join("a", StreamId::default());
        let a2 = hub.join("a", StreamId::default());
        let b = hub.join("b", StreamId::default());
        drop(b);
        // b was left before the reader took it: pruned, and not handed out as joined.
        assert_eq!(hub.prune(), ["b"]);
        assert_eq!(hub.take_joined(), ["a"]);
        assert!(hub.take_joined().is_empty());
        assert_eq!(hub.rooms(), ["a"]);
        drop(a);
        assert!(hub.prune().is_empty(), "a still has a listener");
        drop(a2);
        assert_eq!(hub.prune(), ["a"]);
        assert!(hub.position("a").is_none(), "a is no longer followed");
        assert_eq!(hub.room_count(), 0);
    }
}
