//! Room fan-out inside one process: per room with local clients, a queue of its
//! entries ([`channel`]), a queue of its presence and typing events (made when the first
//! client that wants them joins), and the id of the last stream entry this instance has
//! delivered for that room.
//!
//! The Redis reader ([`crate::reader`]) takes the rooms joined since it last asked and
//! the rooms nobody listens to any more, and publishes what it receives; connections
//! subscribe. Each queue's capacity is the per-client send queue: a client that falls
//! that far behind the room's entries is disconnected, while the sender never waits for
//! anyone. Events go on a queue of their own so that a burst of them (an instance's
//! thousand members expiring at once) can never push a client behind on messages, and
//! clients that did not ask for them are not even woken by them.

pub mod channel;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

use crate::protocol::StreamId;
use channel::{Receiver, Sender};

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
    entries: Sender<Outgoing>,
    /// Made when the first client that wants events joins.
    events: Option<Sender<Outgoing>>,
    last_id: StreamId,
    /// The reader's subscription to the room's live channel is confirmed.
    live: bool,
}

/// A connection's hold on a room, from [`Hub::join`]: its entries, parked until
/// [`Hub::start`], and its events if it asked for them.
pub struct Joined {
    pub entries: Receiver<Outgoing>,
    pub events: Option<Receiver<Outgoing>>,
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
    /// How long a room's queues gather wake-ups ([`channel`]).
    window: Duration,
    /// Wakes the reader when a room is joined.
    changed: Notify,
    /// Wakes joins waiting for a room to be live.
    went_live: Notify,
}

impl Hub {
    pub fn new(capacity: usize, window: Duration) -> Self {
        Hub {
            state: Mutex::new(Rooms::default()),
            tag: format!("{:x}", rand::random::<u64>()),
            connections: AtomicU64::new(0),
            capacity: capacity.max(1),
            window,
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

    /// Follows a room, starting to read it after `start` (the stream's last id, fetched
    /// by the caller) if no one here reads it yet. When two clients race to open the
    /// same room, the first start id wins; either is a valid starting point. The
    /// entries are parked: the room stays followed while the caller replays, and
    /// nothing is queued for it until [`Hub::start`]. Events, when `events`, are taken
    /// from now on.
    pub fn join(&self, room: &str, start: StreamId, events: bool) -> Joined {
        let mut state = self.state.lock().unwrap();
        let Rooms { rooms, joined } = &mut *state;
        let mut created = false;
        let followed = rooms.entry(room.to_owned()).or_insert_with(|| {
            created = true;
            joined.push(room.to_owned());
            Room {
                entries: Sender::new(self.capacity, self.window),
                events: None,
                last_id: start,
                live: false,
            }
        });
        let joined = Joined {
            entries: followed.entries.parked(),
            events: events.then(|| {
                followed
                    .events
                    .get_or_insert_with(|| Sender::new(self.capacity, self.window))
                    .subscribe()
            }),
        };
        drop(state);
        // Only a new room is news to the reader.
        if created {
            self.changed.notify_one();
        }
        joined
    }

    /// Starts taking a joined room's entries; returns the id of the last entry
    /// delivered before, which the caller must read from the stream if it needs it.
    pub fn start(&self, room: &str, entries: &mut Receiver<Outgoing>) -> StreamId {
        let state = self.state.lock().unwrap();
        // Under the lock `publish` takes: no entry falls between the id and the start.
        entries.start();
        state.rooms.get(room).map(|r| r.last_id).unwrap_or_default()
    }

    /// The rooms with clients here that asked for presence events.
    pub fn watched(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .rooms
            .iter()
            .filter(|(_, room)| room.events.as_ref().is_some_and(|e| e.receiver_count() > 0))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Whether this instance follows `room` already (joining it costs nothing more).
    pub fn follows(&self, room: &str) -> bool {
        self.state.lock().unwrap().rooms.contains_key(room)
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
            let listened = room.entries.receiver_count() > 0;
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
        let Some(frame) = frame else {
            return 0;
        };
        let (queued, wake) = room.entries.send(Outgoing {
            about: About::Entry(id),
            frame,
        });
        drop(state);
        drop(wake);
        queued
    }

    /// Sends a frame to the room's local clients without moving the room's position:
    /// one about entry `id` (which comes next), or an ephemeral event, to those that
    /// asked for events.
    pub fn announce(&self, room: &str, about: About, frame: Utf8Bytes) {
        let state = self.state.lock().unwrap();
        let Some(room) = state.rooms.get(room) else {
            return;
        };
        let queue = match about {
            About::Entry(_) => Some(&room.entries),
            About::Event { .. } => room.events.as_ref(),
        };
        if let Some(queue) = queue {
            let (_, wake) = queue.send(Outgoing { about, frame });
            drop(state);
            drop(wake);
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

    fn try_recv(rx: &mut Receiver<Outgoing>) -> Option<Outgoing> {
        use futures_util::{FutureExt as _, StreamExt as _};
        rx.next().now_or_never().flatten().map(Result::unwrap)
    }

    fn join(hub: &Hub, room: &str, start: StreamId) -> Receiver<Outgoing> {
        let mut entries = hub.join(room, start, false).entries;
        hub.start(room, &mut entries);
        entries
    }

    #[test]
    fn publishes_each_id_once_and_only_after_start() {
        let hub = Hub::new(8, Duration::ZERO);
        let mut rx = join(&hub, "a", id("5-0"));
        let frame = || Some(Utf8Bytes::from("m"));
        assert_eq!(hub.publish("a", id("4-0"), frame()), 0);
        assert_eq!(hub.publish("a", id("6-0"), frame()), 1);
        assert_eq!(hub.publish("a", id("6-0"), frame()), 0);
        assert_eq!(hub.publish("b", id("7-0"), frame()), 0);
        // An undecodable entry moves the position without a frame.
        assert_eq!(hub.publish("a", id("8-0"), None), 0);
        assert_eq!(try_recv(&mut rx).unwrap().about, About::Entry(id("6-0")));
        assert!(try_recv(&mut rx).is_none());
        assert_eq!(hub.position("a"), Some(id("8-0")));
    }

    #[test]
    fn a_parked_join_starts_at_the_position_it_is_told() {
        let hub = Hub::new(8, Duration::ZERO);
        let frame = || Some(Utf8Bytes::from("m"));
        let mut joined = hub.join("a", id("1-0"), false);
        assert_eq!(
            hub.publish("a", id("2-0"), frame()),
            0,
            "parked: nothing queued"
        );
        assert!(
            hub.follows("a") && hub.prune().is_empty(),
            "but the room is held"
        );
        assert_eq!(hub.start("a", &mut joined.entries), id("2-0"));
        assert_eq!(hub.publish("a", id("3-0"), frame()), 1);
        assert_eq!(
            try_recv(&mut joined.entries).unwrap().about,
            About::Entry(id("3-0"))
        );
    }

    #[test]
    fn events_go_only_to_the_clients_that_asked_for_them() {
        let hub = Hub::new(2, Duration::ZERO);
        let mut plain = join(&hub, "a", id("1-0"));
        let event = || Utf8Bytes::from("e");
        hub.announce("a", About::Event { origin: 0 }, event());
        let mut watcher = hub.join("a", id("1-0"), true);
        for _ in 0..10 {
            hub.announce("a", About::Event { origin: 0 }, event());
        }
        assert!(try_recv(&mut plain).is_none(), "no events, no lag");
        let events = watcher.events.as_mut().unwrap();
        use futures_util::{FutureExt as _, StreamExt as _};
        let lagged = events.next().now_or_never().flatten().unwrap();
        assert!(lagged.is_err(), "the watcher fell behind on events only");
    }

    #[tokio::test]
    async fn a_join_waits_until_the_room_is_live() {
        let hub = std::sync::Arc::new(Hub::new(8, Duration::ZERO));
        let _rx = join(&hub, "a", StreamId::default());
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
        let (here, there) = (Hub::new(1, Duration::ZERO), Hub::new(1, Duration::ZERO));
        let connection = here.new_connection();
        assert_ne!(connection, 0);
        assert_eq!(here.local_connection(&here.origin(connection)), connection);
        assert_eq!(there.local_connection(&here.origin(connection)), 0);
        assert_eq!(here.local_connection("garbage"), 0);
    }

    #[test]
    fn hands_out_each_new_room_once_and_forgets_rooms_without_listeners() {
        let hub = Hub::new(8, Duration::ZERO);
        let a = join(&hub, "a", StreamId::default());
        let a2 = join(&hub, "a", StreamId::default());
        let b = join(&hub, "b", StreamId::default());
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

    /// A room's writer that notes whether the hub's lock was free each time it wrote.
    struct SeesTheHub {
        hub: std::sync::Arc<Hub>,
        free: Mutex<Vec<bool>>,
    }

    impl channel::Direct for SeesTheHub {
        fn write_ready(&self, _: &std::task::Waker) -> bool {
            let free = self.hub.state.try_lock().is_ok();
            self.free.lock().unwrap().push(free);
            true
        }
    }

    #[test]
    fn a_room_is_written_once_the_hub_is_let_go() {
        let hub = std::sync::Arc::new(Hub::new(8, Duration::ZERO));
        let Joined {
            mut entries,
            events,
        } = hub.join("a", id("1-0"), true);
        let mut events = events.unwrap();
        hub.start("a", &mut entries);
        let writer = std::sync::Arc::new(SeesTheHub {
            hub: hub.clone(),
            free: Mutex::new(Vec::new()),
        });
        let direct = std::sync::Arc::downgrade(&writer);
        for receiver in [&mut entries, &mut events] {
            receiver.set_direct(direct.clone());
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(
                receiver
                    .poll_recv_many(&mut cx, 8, &mut Vec::new())
                    .is_pending()
            );
        }
        hub.publish("a", id("2-0"), Some("m".into()));
        hub.announce("a", About::Event { origin: 0 }, "typing".into());
        assert_eq!(
            *writer.free.lock().unwrap(),
            [true, true],
            "a message, then an event, each written with the hub free"
        );
    }
}
