//! Whether a client that rejoins a room with `since` (and maybe `epoch`) can be made
//! whole, decided the way Centrifugo decides it: only if the room's history is the one
//! the client knew (same epoch) and the replay starts exactly after the client's
//! position and reaches the newest entry. Anything else is reported, never papered over.
//!
//! Pure logic; the connection feeds it what it read from Redis.

use crate::protocol::{Rejection, StreamId};
use crate::store::{Entry, RoomState};

/// Why a client could not be made whole; the `reason` of `hello` and `recovery` frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unrecoverable {
    /// The room's history is not the one the client knew (Redis lost it, or the room
    /// expired and was created again).
    EpochChanged,
    /// Entries after the client's position were trimmed (count or age limits).
    TooOld,
    /// The client's position is past everything the room holds: the newest entries
    /// were lost (an asynchronous replica promoted, a restart without persistence).
    HistoryLost,
}

impl Unrecoverable {
    pub fn code(self) -> &'static str {
        match self {
            Unrecoverable::EpochChanged => "epoch_changed",
            Unrecoverable::TooOld => "too_old",
            Unrecoverable::HistoryLost => "history_lost",
        }
    }
}

/// Decides recovery from `since`, given the room as read before the replay and the
/// first entry after `since` (`None` if there is none).
pub fn judge(
    since: StreamId,
    client_epoch: Option<&str>,
    room: &RoomState,
    first_after: Option<&Entry>,
) -> Result<(), Unrecoverable> {
    match (&room.epoch, client_epoch) {
        (Some(current), Some(known)) if current != known => {
            return Err(Unrecoverable::EpochChanged);
        }
        (None, _) if since == StreamId::default() => return Ok(()),
        (None, Some(_)) => return Err(Unrecoverable::EpochChanged),
        (None, None) => return Err(Unrecoverable::HistoryLost),
        _ => {}
    }
    match first_after {
        Some(entry) if entry.prev == Some(since) => Ok(()),
        Some(_) => Err(Unrecoverable::TooOld),
        None if since == room.top => Ok(()),
        None if since > room.top => Err(Unrecoverable::HistoryLost),
        // Entries up to the top existed a moment ago and are gone now: trimmed.
        None => Err(Unrecoverable::TooOld),
    }
}

/// A `since` whose time is ahead of Redis's clock and of the room's newest entry names
/// a message that does not exist yet; streaming after it would drop every live message.
fn in_the_future(since: StreamId, room: &RoomState) -> bool {
    since.ms > room.now_ms && since > room.top
}

/// Refuses a `since` [in the future](in_the_future), saying why.
pub fn refuse_future_since(since: StreamId, room: &RoomState) -> Result<(), Rejection> {
    if in_the_future(since, room) {
        return Err(Rejection::new(
            "invalid_since",
            format!(
                "invalid since: {since} is after the newest message and after the server's clock"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> StreamId {
        s.parse().unwrap()
    }

    fn room(epoch: Option<&str>, top: &str) -> RoomState {
        RoomState {
            epoch: epoch.map(str::to_owned),
            top: id(top),
            now_ms: 100,
        }
    }

    fn entry(id_: &str, prev: Option<&str>) -> Entry {
        Entry {
            id: id(id_),
            prev: prev.map(id),
            message: None,
            deletes: None,
            deleted: false,
        }
    }

    #[test]
    fn recovered_only_with_a_continuous_replay_in_the_same_epoch() {
        let r = room(Some("e1"), "9-0");
        let next = entry("7-0", Some("5-0"));
        assert_eq!(judge(id("5-0"), Some("e1"), &r, Some(&next)), Ok(()));
        assert_eq!(judge(id("5-0"), None, &r, Some(&next)), Ok(()));
        assert_eq!(judge(id("9-0"), Some("e1"), &r, None), Ok(()));
        assert_eq!(
            judge(id("5-0"), Some("e0"), &r, Some(&next)),
            Err(Unrecoverable::EpochChanged)
        );
        assert_eq!(
            judge(id("4-0"), Some("e1"), &r, Some(&next)),
            Err(Unrecoverable::TooOld)
        );
        let unlinked = entry("7-0", None);
        assert_eq!(
            judge(id("5-0"), None, &r, Some(&unlinked)),
            Err(Unrecoverable::TooOld)
        );
        assert_eq!(
            judge(id("12-0"), Some("e1"), &r, None),
            Err(Unrecoverable::HistoryLost)
        );
        assert_eq!(
            judge(id("8-0"), Some("e1"), &r, None),
            Err(Unrecoverable::TooOld)
        );
    }

    #[test]
    fn a_room_without_history() {
        let empty = room(None, "0-0");
        assert_eq!(judge(id("0-0"), None, &empty, None), Ok(()));
        assert_eq!(
            judge(id("5-0"), Some("e1"), &empty, None),
            Err(Unrecoverable::EpochChanged)
        );
        assert_eq!(
            judge(id("5-0"), None, &empty, None),
            Err(Unrecoverable::HistoryLost)
        );
    }

    #[test]
    fn future_positions() {
        let r = room(Some("e"), "50-0");
        assert!(in_the_future(id("101-0"), &r));
        assert!(!in_the_future(id("100-0"), &r));
        // A stream whose ids ran ahead of a clock that went back is not "the future".
        let ahead = room(Some("e"), "200-0");
        assert!(!in_the_future(id("150-0"), &ahead));
    }
}
