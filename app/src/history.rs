//! Pages of a room's history, one piece of code for the server API's
//! `GET /api/v1/rooms/{room}/messages` and the WebSocket's `history` frame (the page's
//! scrollback): up to `limit` messages before an id (newest first), after one (oldest
//! first) or from the newest, each once, a deleted one as `deleted` in its place.
//!
//! Pages are cut by raw stream id: the `cursor` of a page is the id of the last entry it
//! examined (a tombstone or an entry that is not a message included), so the next page
//! starts exactly there, with neither a gap nor a duplicate whatever the stream holds.
//! Each page names the room's epoch; a request naming another epoch is refused, since
//! its positions belong to a history that is gone.

use serde::Serialize;

use crate::connection::StoreError;
use crate::protocol::{Bound, EntryFrame, HistoryRequest, StreamId};
use crate::store::{Entry, Store};

/// Reads per page at most: each asks for the messages still missing, so more than one
/// is needed only when tombstones fill a page.
const MAX_READS: usize = 8;

/// A page as read, before it is written out.
pub struct Page {
    room: String,
    epoch: Option<String>,
    entries: Vec<Entry>,
    cursor: Option<StreamId>,
}

/// A page of history, as the server API answers it and, with `"type":"history"`, as
/// the WebSocket does.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HistoryPage<'a> {
    #[schema(example = "lobby")]
    pub room: &'a str,
    /// The room's epoch, which names its history: absent while the room has none. Pass
    /// it back with the next page's `before`/`after`: if the history was lost meanwhile,
    /// that page is refused (`epoch_changed`) instead of mixing two histories.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "9a02c4e1d2f0b377")]
    pub epoch: Option<&'a str>,
    /// Messages, newest first (oldest first for `after`); a deleted one as a `deleted`
    /// frame in its place.
    pub messages: Vec<EntryFrame<'a>>,
    /// Where the next page starts: give it as `before` (or `after`, when paging
    /// forward) for the next page. Absent once the page reached the end of the room's
    /// history.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "1700000000000-0")]
    pub cursor: Option<String>,
}

/// Why a page was not read.
#[derive(Debug)]
pub enum PageError {
    Store(StoreError),
    /// The request named an epoch that is not the room's any more (or the room lost
    /// its history while the page was read).
    EpochChanged,
}

impl From<StoreError> for PageError {
    fn from(error: StoreError) -> Self {
        PageError::Store(error)
    }
}

/// Reads the page `request` asks for.
pub async fn read(store: &Store, request: &HistoryRequest) -> Result<Page, PageError> {
    let mut bound = request.bound;
    let mut epoch = None;
    let mut entries = Vec::new();
    let mut cursor = None;
    for read in 0..MAX_READS {
        let missing = request.limit - entries.len();
        let range = store.range(&request.room, bound, missing).await?;
        if read == 0 {
            if request.epoch.is_some() && range.epoch != request.epoch {
                return Err(PageError::EpochChanged);
            }
            epoch = range.epoch;
        } else if range.epoch != epoch {
            // Lost between two reads of one page: what was read is of another history.
            return Err(PageError::EpochChanged);
        }
        let reached_end = range.entries.len() < missing;
        cursor = if reached_end {
            None
        } else {
            range.entries.last().map(|entry| entry.id)
        };
        entries.extend(
            range
                .entries
                .into_iter()
                .filter(|entry| entry.message.is_some()),
        );
        match cursor {
            Some(last) if entries.len() < request.limit => {
                bound = match bound {
                    Bound::After(_) => Bound::After(last),
                    Bound::Newest | Bound::Before(_) => Bound::Before(last),
                };
            }
            _ => break,
        }
    }
    Ok(Page {
        room: request.room.clone(),
        epoch,
        entries,
        cursor,
    })
}

impl Page {
    pub fn body(&self) -> HistoryPage<'_> {
        HistoryPage {
            room: &self.room,
            epoch: self.epoch.as_deref(),
            messages: self
                .entries
                .iter()
                .filter_map(|entry| entry.frame(&self.room))
                .collect(),
            cursor: self.cursor.map(|id| id.to_string()),
        }
    }
}
