//! The writing half of a connection: the live frames of every room it follows, the
//! reader's replies in their order, pings, and the close at the end of a drain.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use axum::extract::ws::Message;
use futures_util::stream::SelectAll;
use futures_util::{FutureExt as _, SinkExt as _, Stream, StreamExt as _};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::{CLOSE_RESTART, Ending, Reply, Sink, rooms, slow_consumer};
use crate::hub::channel::{Lagged, Receiver};
use crate::hub::{About, Outgoing};
use crate::protocol::{ServerFrame, StreamId};
use crate::state::AppState;

/// Live frames written to a client per flush at most.
const MAX_COALESCED: usize = 32;

/// What went wrong with a room's feed.
#[derive(Debug)]
pub enum FeedError {
    /// The client fell `--send-queue` messages behind: it is disconnected.
    Behind,
    /// The client fell behind the room's events: the members it was told of are stale.
    EventsLost(String),
}

/// A room's live frames as one connection gets them: without the entries its replay
/// already covered, with presence and typing events only if it asked for them (they
/// come on a queue of their own), and without the events it caused itself. Closed
/// (`leave`), it lets go of the room at once and ends.
///
/// It yields every frame ready at once, up to [`MAX_COALESCED`]: the set of feeds puts a
/// feed back (an allocation) each time it yields, which is then once per write rather
/// than once per delivery.
pub struct RoomFeed {
    room: String,
    /// `None` once closed.
    entries: Option<Receiver<Outgoing>>,
    events: Option<Receiver<Outgoing>>,
    /// Wakes the writer's set of feeds to drop this one once closed.
    waker: Option<Waker>,
    skip_through: StreamId,
    connection: u64,
    /// Events were lost while frames gathered before were being yielded: said next.
    events_lost: bool,
}

impl RoomFeed {
    pub fn new(
        room: String,
        entries: Receiver<Outgoing>,
        events: Option<Receiver<Outgoing>>,
        skip_through: StreamId,
        connection: u64,
    ) -> Self {
        RoomFeed {
            room,
            entries: Some(entries),
            events,
            waker: None,
            skip_through,
            connection,
            events_lost: false,
        }
    }

    /// Drops the room's receivers (so the hub may let go of the room) and has the feed
    /// end the next time the set polls it.
    fn close(&mut self) {
        self.entries = None;
        self.events = None;
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

impl Stream for RoomFeed {
    type Item = Result<Vec<Outgoing>, FeedError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            this.waker = Some(cx.waker().clone());
        }
        if std::mem::take(&mut this.events_lost) {
            return Poll::Ready(Some(Err(FeedError::EventsLost(this.room.clone()))));
        }
        let wants = |outgoing: &Outgoing| match outgoing.about {
            About::Entry(id) => id > this.skip_through,
            About::Event { origin } => origin != this.connection,
        };
        let mut ready = Vec::new();
        // Messages first: events never hold them up.
        if let Some(entries) = this.entries.as_mut()
            && gather(entries, cx, &mut ready, wants).is_err()
        {
            // The connection ends: what was gathered would not be written anyway.
            return Poll::Ready(Some(Err(FeedError::Behind)));
        }
        if let Some(events) = this.events.as_mut()
            && gather(events, cx, &mut ready, wants).is_err()
        {
            if ready.is_empty() {
                let room = this.room.clone();
                return Poll::Ready(Some(Err(FeedError::EventsLost(room))));
            }
            this.events_lost = true;
        }
        match (ready.is_empty(), this.entries.is_some()) {
            (false, _) => Poll::Ready(Some(Ok(ready))),
            (true, true) => Poll::Pending,
            (true, false) => Poll::Ready(None),
        }
    }
}

/// Takes what `queue` has ready into `ready`, until it holds [`MAX_COALESCED`] frames,
/// keeping those `wants` keeps; stops at the first loss.
fn gather(
    queue: &mut Receiver<Outgoing>,
    cx: &mut Context<'_>,
    ready: &mut Vec<Outgoing>,
    wants: impl Fn(&Outgoing) -> bool + Copy,
) -> Result<(), Lagged> {
    while ready.len() < MAX_COALESCED {
        match queue.poll_recv_many(cx, MAX_COALESCED - ready.len(), ready) {
            Poll::Ready(Err(lost)) => return Err(lost),
            Poll::Ready(Ok(_)) => ready.retain(wants),
            Poll::Pending => break,
        }
    }
    Ok(())
}

/// The rooms followed. Most connections follow one room: its feed is polled as it is.
/// Several go in a set that polls only the feeds that were woken, so a message costs
/// the same whether the connection follows two rooms or a hundred. (The set costs an
/// idle connection about 500 bytes, and an allocation per write: it puts a feed back
/// each time the feed yields.)
#[derive(Default)]
enum Feeds {
    #[default]
    None,
    One(RoomFeed),
    Many(SelectAll<RoomFeed>),
}

impl Feeds {
    fn push(&mut self, feed: RoomFeed) {
        *self = match std::mem::take(self) {
            Feeds::None => Feeds::One(feed),
            Feeds::One(first) => Feeds::Many([first, feed].into_iter().collect()),
            Feeds::Many(mut set) => {
                set.push(feed);
                Feeds::Many(set)
            }
        };
    }

    /// Closes the feed of `room`, if the connection follows it.
    fn close(&mut self, room: &str) {
        let feed = match self {
            Feeds::None => None,
            Feeds::One(feed) => Some(feed).filter(|feed| feed.room == room),
            Feeds::Many(set) => set.iter_mut().find(|feed| feed.room == room),
        };
        if let Some(feed) = feed {
            feed.close();
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Feeds::None => true,
            Feeds::One(_) => false,
            Feeds::Many(set) => set.is_empty(),
        }
    }
}

/// As the set's: what any feed yields; a feed that ends is dropped; `None` once none
/// is left.
impl Stream for Feeds {
    type Item = Result<Vec<Outgoing>, FeedError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut *self {
            Feeds::None => Poll::Ready(None),
            Feeds::One(feed) => match feed.poll_next_unpin(cx) {
                Poll::Ready(None) => {
                    *self = Feeds::None;
                    Poll::Ready(None)
                }
                polled => polled,
            },
            Feeds::Many(set) => set.poll_next_unpin(cx),
        }
    }
}

/// Sends live frames, replies and pings; ends the connection at the end of the drain,
/// when the client falls behind, when it stops answering, or when the reader says so.
pub(super) async fn write_loop(
    sink: &mut Sink,
    mut replies: mpsc::Receiver<Box<Reply>>,
    state: &AppState,
    last_seen: &AtomicU64,
    started: Instant,
) -> Ending {
    let my_turn = state.drain.my_turn();
    // Made once: a cancellation future registers with the token, which every
    // connection shares, each time it is made.
    let closing = state.close.cancelled();
    tokio::pin!(my_turn, closing);
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + state.ping_interval,
        state.ping_interval,
    );
    let mut feeds = Feeds::default();
    loop {
        let next = tokio::select! {
            biased;
            _ = &mut my_turn => return Ending::Close(CLOSE_RESTART, "server restart"),
            _ = &mut closing => return Ending::Close(CLOSE_RESTART, "server restart"),
            Some(reply) = replies.recv() => match *reply {
                Reply::Frame(frame) => Next::Frame(Message::Text(frame)),
                Reply::Replay(frames) => {
                    // Boxed, as the presence read below: an idle connection's task does
                    // not carry room for either.
                    if let Err(ending) = Box::pin(write_replay(sink, frames, state)).await {
                        return ending;
                    }
                    continue;
                }
                Reply::Follow(feed) => {
                    feeds.push(*feed);
                    continue;
                }
                Reply::Unfollow(room) => {
                    feeds.close(&room);
                    Next::Frame(Message::Text(ServerFrame::Left { room: &room }.to_json().into()))
                }
                Reply::Close(code, reason) => return Ending::Close(code, reason),
            },
            _ = ping.tick() => {
                let silent = started.elapsed().saturating_sub(Duration::from_millis(last_seen.load(Ordering::Relaxed)));
                if silent > state.peer_timeout {
                    tracing::debug!(?silent, "dropping unresponsive client");
                    return Ending::Drop;
                }
                Next::Frame(Message::Ping(Default::default()))
            }
            Some(received) = feeds.next(), if !feeds.is_empty() => match next_of(received, state).await {
                Ok(Some(next)) => next,
                Ok(None) => continue,
                Err(ending) => return ending,
            },
        };
        // Boxed while it runs: inline, the write's state would be part of every idle
        // connection's task (the largest state of an async function sets its size).
        let mut write = Box::pin(write_with_ready(sink, next, &mut feeds, state));
        // Most writes end at once, into the socket's buffer: only one that waits for the
        // client arms the write timeout (a timer, registered and removed, per write).
        let written = match write.as_mut().now_or_never() {
            Some(written) => written,
            None => tokio::select! {
                written = timeout(state.write_timeout, write) => {
                    written.unwrap_or_else(|_| Err(slow_consumer(state)))
                }
                // A write stuck on a client that does not read cannot hold the drain:
                // the socket goes, without a close frame (one cannot follow half a frame).
                _ = &mut closing => Err(Ending::Drop),
            },
        };
        if let Err(ending) = written {
            return ending;
        }
    }
}

/// What the writer writes next: one frame, or the live frames a room's feed had ready.
enum Next {
    Frame(Message),
    Live(Vec<Outgoing>),
}

/// What to write for what a feed gave: its live frames; after events were lost, the
/// room's members as they are now (nothing, if Redis cannot say); after messages were
/// lost, the end.
async fn next_of(
    received: Result<Vec<Outgoing>, FeedError>,
    state: &AppState,
) -> Result<Option<Next>, Ending> {
    match received {
        Ok(live) => Ok(Some(Next::Live(live))),
        Err(FeedError::Behind) => Err(slow_consumer(state)),
        Err(FeedError::EventsLost(room)) => {
            match Box::pin(rooms::presence_frame(state, &room)).await {
                Ok(frame) => Ok(Some(Next::Frame(Message::Text(frame)))),
                Err(error) => {
                    tracing::warn!(%error, room, "presence events were lost and the members cannot be read");
                    Ok(None)
                }
            }
        }
    }
}

/// Feeds `next` to the socket; returns how many frames that was.
async fn feed(sink: &mut Sink, next: Next, state: &AppState) -> Result<usize, Ending> {
    let live = match next {
        Next::Frame(frame) => {
            sink.feed(frame).await.map_err(|_| Ending::Drop)?;
            return Ok(1);
        }
        Next::Live(live) => live,
    };
    let (count, mut messages) = (live.len(), 0);
    for outgoing in live {
        messages += u64::from(matches!(outgoing.about, About::Entry(_)));
        sink.feed(Message::Text(outgoing.frame))
            .await
            .map_err(|_| Ending::Drop)?;
    }
    state.metrics.messages_out.increment(messages);
    Ok(count)
}

/// Writes `next` and the live frames already queued behind it (up to about
/// [`MAX_COALESCED`]) with one flush: under load a client gets several messages per
/// write instead of a write each.
async fn write_with_ready(
    sink: &mut Sink,
    next: Next,
    feeds: &mut Feeds,
    state: &AppState,
) -> Result<(), Ending> {
    let mut written = feed(sink, next, state).await?;
    while written < MAX_COALESCED {
        let Some(Some(received)) = feeds.next().now_or_never() else {
            break;
        };
        if let Some(next) = next_of(received, state).await? {
            written += feed(sink, next, state).await?;
        }
    }
    sink.flush().await.map_err(|_| Ending::Drop)
}

/// Sends replayed messages, in order, as one write: fed to the socket and flushed once.
async fn write_replay(
    sink: &mut Sink,
    frames: Vec<axum::extract::ws::Utf8Bytes>,
    state: &AppState,
) -> Result<(), Ending> {
    let sent = frames.len() as u64;
    let write = async {
        for frame in frames {
            sink.feed(Message::Text(frame)).await?;
        }
        sink.flush().await
    };
    match timeout(state.write_timeout, write).await {
        Ok(Ok(())) => {
            state.metrics.messages_out.increment(sent);
            Ok(())
        }
        Ok(Err(_)) => Err(Ending::Drop),
        Err(_) => Err(slow_consumer(state)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::FutureExt as _;

    use super::*;
    use crate::hub::channel::Sender;

    fn entry(id: &str) -> Outgoing {
        Outgoing {
            about: About::Entry(id.parse().unwrap()),
            frame: id.into(),
        }
    }

    fn event(origin: u64) -> Outgoing {
        Outgoing {
            about: About::Event { origin },
            frame: format!("event from {origin}").into(),
        }
    }

    /// What `feed` (a room's, or a connection's feeds) has ready now.
    fn next(
        feed: &mut (impl Stream<Item = Result<Vec<Outgoing>, FeedError>> + Unpin),
    ) -> Option<Result<Vec<String>, FeedError>> {
        let frames =
            |ready: Vec<Outgoing>| ready.into_iter().map(|o| o.frame.to_string()).collect();
        feed.next().now_or_never().flatten().map(|r| r.map(frames))
    }

    #[test]
    fn a_feed_yields_what_is_ready_at_once_and_says_lost_events_after_the_messages() {
        let (entries, events) = (
            Sender::new(8, Duration::ZERO),
            Sender::new(2, Duration::ZERO),
        );
        let connection = 7;
        let mut feed = RoomFeed::new(
            "a".to_owned(),
            entries.subscribe(),
            Some(events.subscribe()),
            "2-0".parse().unwrap(),
            connection,
        );
        // Covered by the replay, then new.
        for id in ["1-0", "2-0", "3-0", "4-0"] {
            entries.send(entry(id));
        }
        // Its own event is not sent back; the others overflow the queue of 2.
        for origin in [connection, 1, 2, 3] {
            events.send(event(origin));
        }
        let ready = next(&mut feed).unwrap().unwrap();
        assert_eq!(ready, ["3-0", "4-0"], "messages first, in one batch");
        assert!(matches!(next(&mut feed), Some(Err(FeedError::EventsLost(room))) if room == "a"));
        assert_eq!(
            next(&mut feed).unwrap().unwrap(),
            ["event from 2", "event from 3"]
        );
        assert!(next(&mut feed).is_none(), "nothing more: pending");
        feed.close();
        assert!(
            matches!(feed.next().now_or_never(), Some(None)),
            "closed: ended"
        );
    }

    #[test]
    fn one_room_is_followed_as_it_is_and_several_until_each_is_left() {
        let (a, b) = (
            Sender::new(8, Duration::ZERO),
            Sender::new(8, Duration::ZERO),
        );
        let feed = |room: &str, sender: &Sender<Outgoing>| {
            RoomFeed::new(
                room.to_owned(),
                sender.subscribe(),
                None,
                "0-0".parse().unwrap(),
                1,
            )
        };
        let mut feeds = Feeds::default();
        assert!(feeds.is_empty());
        feeds.push(feed("a", &a));
        assert!(matches!(feeds, Feeds::One(_)), "one room: no set");
        a.send(entry("1-0"));
        assert_eq!(next(&mut feeds).unwrap().unwrap(), ["1-0"]);

        feeds.push(feed("b", &b));
        a.send(entry("2-0"));
        b.send(entry("3-0"));
        let mut both = [next(&mut feeds), next(&mut feeds)].map(|r| r.unwrap().unwrap());
        both.sort();
        assert_eq!(both, [["2-0"], ["3-0"]], "still a's, and b's");
        feeds.close("a");
        a.send(entry("4-0"));
        b.send(entry("5-0"));
        assert_eq!(next(&mut feeds).unwrap().unwrap(), ["5-0"], "only b's");
        assert!(next(&mut feeds).is_none());
        feeds.close("b");
        assert!(
            matches!(feeds.next().now_or_never(), Some(None)),
            "none left"
        );
        assert!(feeds.is_empty());

        let mut one = Feeds::default();
        one.push(feed("a", &a));
        one.close("a");
        assert!(
            matches!(one.next().now_or_never(), Some(None)),
            "left: ended"
        );
        assert!(one.is_empty());
    }
}
