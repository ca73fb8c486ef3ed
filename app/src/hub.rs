//! Room fan-out inside one process: a broadcast channel per room with local clients, and
//! the id of the last stream entry this instance has delivered for that room.
//!
//! The Redis reader ([`crate::reader`]) asks the hub which rooms to read and from where,
//! and publishes what it reads; connections subscribe. The broadcast channel's capacity
//! is the per-client send queue: a client that falls that far behind gets `Lagged` and is
//! disconnected, while the sender never waits for anyone.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{Notify, broadcast};

use crate::protocol::StreamId;

/// A frame ready to go out: serialized once, shared by every client of the room. `id` is
/// the stream entry it belongs to; a client whose replay already covered it skips it.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub id: StreamId,
    pub frame: Utf8Bytes,
}

struct Room {
    tx: broadcast::Sender<Outgoing>,
    last_id: StreamId,
}

pub struct Hub {
    rooms: Mutex<HashMap<String, Room>>,
    capacity: usize,
    /// Wakes the reader when the first room appears.
    changed: Notify,
}

impl Hub {
    pub fn new(capacity: usize) -> Self {
        Hub {
            rooms: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            changed: Notify::new(),
        }
    }

    /// Subscribes to a room this instance already reads, if it does.
    pub fn subscribe(&self, room: &str) -> Option<broadcast::Receiver<Outgoing>> {
        self.rooms
            .lock()
            .unwrap()
            .get(room)
            .map(|r| r.tx.subscribe())
    }

    /// Subscribes to a room, starting to read it after `start` (the stream's last id,
    /// fetched by the caller) if no one here reads it yet. When two clients race to open
    /// the same room, the first start id wins; either is a valid starting point.
    pub fn join(&self, room: &str, start: StreamId) -> broadcast::Receiver<Outgoing> {
        let mut rooms = self.rooms.lock().unwrap();
        let rx = rooms
            .entry(room.to_owned())
            .or_insert_with(|| Room {
                tx: broadcast::channel(self.capacity).0,
                last_id: start,
            })
            .tx
            .subscribe();
        drop(rooms);
        self.changed.notify_one();
        rx
    }

    /// The rooms to read and the id to read each after. Rooms nobody listens to any more
    /// are forgotten here, under the same lock `join` takes, so a client cannot subscribe
    /// to a room in the instant it is dropped.
    pub fn positions(&self) -> Vec<(String, StreamId)> {
        let mut rooms = self.rooms.lock().unwrap();
        rooms.retain(|_, r| r.tx.receiver_count() > 0);
        rooms
            .iter()
            .map(|(name, r)| (name.clone(), r.last_id))
            .collect()
    }

    /// The id of the last entry delivered in a room, if this instance follows it.
    pub fn position(&self, room: &str) -> Option<StreamId> {
        self.rooms.lock().unwrap().get(room).map(|r| r.last_id)
    }

    /// Waits until some room may have been joined.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// Moves a room past entry `id`, sending `frame` (if any) to the room's local
    /// clients. Ids at or below the last delivered one are ignored, which makes re-reads
    /// after a reconnect harmless. Returns how many clients the frame was queued for.
    pub fn publish(&self, room: &str, id: StreamId, frame: Option<Utf8Bytes>) -> usize {
        let mut rooms = self.rooms.lock().unwrap();
        let Some(room) = rooms.get_mut(room) else {
            return 0;
        };
        if id <= room.last_id {
            return 0;
        }
        room.last_id = id;
        frame.map_or(0, |frame| room.tx.send(Outgoing { id, frame }).unwrap_or(0))
    }

    /// Sends a frame about entry `id` (which comes next) to the room's local clients
    /// without moving the room's position.
    pub fn announce(&self, room: &str, id: StreamId, frame: Utf8Bytes) {
        if let Some(room) = self.rooms.lock().unwrap().get(room) {
            let _ = room.tx.send(Outgoing { id, frame });
        }
    }

    pub fn room_count(&self) -> usize {
        self.rooms.lock().unwrap().len()
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
        assert_eq!(rx.try_recv().unwrap().id, id("6-0"));
        assert!(rx.try_recv().is_err());
        assert_eq!(hub.positions(), vec![("a".to_owned(), id("8-0"))]);
        assert_eq!(hub.position("a"), Some(id("8-0")));
    }

    #[test]
    fn forgets_rooms_without_listeners() {
        let hub = Hub::new(8);
        let rx = hub.join("a", StreamId::default());
        assert_eq!(hub.positions().len(), 1);
        drop(rx);
        assert!(hub.positions().is_empty());
        assert!(hub.subscribe("a").is_none());
    }
}
