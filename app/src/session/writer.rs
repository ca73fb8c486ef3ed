//! The writing half of a connection: the live frames of every room it follows, the
//! reader's replies in their order, pings, and the close at the end of a drain.
//!
//! The connection's task writes replies, pings, replays and whatever is left over; the
//! live frames of a connection that follows one room are mostly written by the thread
//! that wakes the room ([`Writer`]), with no wake of the task. The socket's sending half
//! and the feeds sit behind one lock, which either holds while it writes: frames go out
//! whole and in order whoever writes them.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use axum::extract::ws::Message;
use futures_util::stream::SelectAll;
use futures_util::{FutureExt as _, SinkExt as _, Stream, StreamExt as _};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::{CLOSE_RESTART, Ending, Reply, Sink, rooms, slow_consumer};
use crate::hub::channel::{Direct, Lagged, Receiver};
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
    /// The socket failed while a room's waking thread wrote to it: the client is gone.
    SocketGone,
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

    fn set_direct(&mut self, direct: Weak<dyn Direct>) {
        if let Some(entries) = self.entries.as_mut() {
            entries.set_direct(direct.clone());
        }
        if let Some(events) = self.events.as_mut() {
            events.set_direct(direct);
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

/// What the connection writes through: its socket's sending half and the rooms it
/// follows. Held by the connection's task while it writes, and by the thread that wakes
/// a room, which writes an idle connection's frames itself ([`Writer`]).
pub(super) struct Out {
    pub(super) sink: Sink,
    feeds: Feeds,
    /// The task's waker: a waking thread polls the feeds and the socket with it, so
    /// that what it leaves pending wakes the task.
    waker: Option<Waker>,
    /// Left to the task by a waking thread: a feed's error, the frames the socket did
    /// not take, and whether what it took still waits to be flushed.
    stashed: Option<FeedError>,
    unsent: Vec<Outgoing>,
    unflushed: bool,
}

/// The connection's writing half, shared by its task and the rooms it follows. When a
/// room wakes the connection, the waking thread writes what is ready itself if nothing
/// else holds the socket ([`Direct`]): a room's wake then writes its connections from
/// one thread, with no task woken per connection. What it cannot finish at once (a full
/// socket, a lost frame, a feed's error) it leaves in [`Out`] and wakes the task, which
/// finishes it as it would its own write, under the write timeout.
pub(super) struct Writer {
    pub(super) out: futures_util::lock::Mutex<Out>,
    messages_out: metrics::Counter,
}

impl Out {
    /// What the task writes next of its rooms' frames, or what a waking thread left it.
    fn poll_live(&mut self, cx: &mut Context<'_>) -> Poll<Result<Vec<Outgoing>, FeedError>> {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.waker = Some(cx.waker().clone());
        }
        if let Some(error) = self.stashed.take() {
            return Poll::Ready(Err(error));
        }
        if !self.unsent.is_empty() || std::mem::take(&mut self.unflushed) {
            return Poll::Ready(Ok(std::mem::take(&mut self.unsent)));
        }
        if self.feeds.is_empty() {
            return Poll::Pending;
        }
        match self.feeds.poll_next_unpin(cx) {
            Poll::Ready(Some(received)) => Poll::Ready(received),
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    /// Lets go of every room before the close: nothing more is written.
    pub(super) fn close_feeds(&mut self) {
        self.feeds = Feeds::None;
    }

    /// Nothing is left for the task from an earlier wake.
    fn settled(&self) -> bool {
        !self.unflushed && self.stashed.is_none() && self.unsent.is_empty()
    }

    /// Hands the socket the live frames ready, up to [`MAX_COALESCED`], as far as it
    /// takes them now; what it does not take, or a feed's error, is left for the task.
    /// Returns how many messages it took, and whether that was all that was ready.
    fn start_ready(&mut self, cx: &mut Context<'_>) -> (u64, bool) {
        let (mut written, mut messages) = (0, 0);
        while written < MAX_COALESCED {
            let live = match self.feeds.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(live))) => live,
                Poll::Ready(Some(Err(error))) => {
                    self.stashed = Some(error);
                    return (messages, false);
                }
                Poll::Ready(None) | Poll::Pending => return (messages, true),
            };
            let mut live = live.into_iter();
            while let Some(outgoing) = live.next() {
                if !self.sink_ready(cx) {
                    self.unsent.push(outgoing);
                    self.unsent.extend(live);
                    return (messages, false);
                }
                messages += u64::from(matches!(outgoing.about, About::Entry(_)));
                if self
                    .sink
                    .start_send_unpin(Message::Text(outgoing.frame))
                    .is_err()
                {
                    self.stashed = Some(FeedError::SocketGone);
                    return (messages, false);
                }
                written += 1;
            }
        }
        (messages, false)
    }

    /// Whether the socket takes a frame now (the other half may hold it, or its
    /// buffer be full).
    fn sink_ready(&mut self, cx: &mut Context<'_>) -> bool {
        match self.sink.poll_ready_unpin(cx) {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(_)) => {
                self.stashed = Some(FeedError::SocketGone);
                false
            }
            Poll::Pending => false,
        }
    }

    /// Whether what the socket was handed went out at once; if not, the task flushes it.
    fn flush_now(&mut self, cx: &mut Context<'_>) -> bool {
        match self.sink.poll_flush_unpin(cx) {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(_)) => {
                self.stashed = Some(FeedError::SocketGone);
                false
            }
            Poll::Pending => {
                self.unflushed = true;
                false
            }
        }
    }
}

impl Writer {
    pub(super) fn new(sink: Sink, state: &AppState) -> Arc<Self> {
        Arc::new(Writer {
            out: futures_util::lock::Mutex::new(Out {
                sink,
                feeds: Feeds::default(),
                waker: None,
                stashed: None,
                unsent: Vec::new(),
                unflushed: false,
            }),
            messages_out: state.metrics.messages_out.clone(),
        })
    }

    /// What the task writes next of its rooms' frames, or what a waking thread left it.
    /// Between polls it holds no lock, so that waking threads can write meanwhile:
    /// each leaves the feeds registered with the task's waker, or wakes the task.
    async fn next_live(&self) -> Result<Vec<Outgoing>, FeedError> {
        loop {
            let mut out = self.out.lock().await;
            let polled = std::future::poll_fn(|cx| Poll::Ready(out.poll_live(cx))).await;
            drop(out);
            if let Poll::Ready(received) = polled {
                return received;
            }
            // Until the task is woken: by a feed, by a waking thread that left it
            // something, or by another of its branches (then this polls again).
            let mut parked = false;
            std::future::poll_fn(|_| {
                if std::mem::replace(&mut parked, true) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        }
    }
}

impl Direct for Writer {
    fn write_ready(&self, registered: &Waker) -> bool {
        let Some(mut out) = self.out.try_lock() else {
            return false;
        };
        // Only a feed polled with the task's own waker, as the one room of a connection
        // is: a set of feeds polls only those whose own wakers were woken.
        let Some(waker) = out
            .waker
            .clone()
            .filter(|waker| out.settled() && waker.will_wake(registered))
        else {
            return false;
        };
        let mut cx = Context::from_waker(&waker);
        let (messages, all) = out.start_ready(&mut cx);
        self.messages_out.increment(messages);
        let flushed = out.flush_now(&mut cx);
        all && flushed
    }
}

/// Sends live frames, replies and pings; ends the connection at the end of the drain,
/// when the client falls behind, when it stops answering, or when the reader says so.
pub(super) async fn write_loop(
    writer: &Arc<Writer>,
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
    let direct: Weak<dyn Direct> = Arc::downgrade(writer) as Weak<dyn Direct>;
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
                    let replay = async {
                        let mut out = writer.out.lock().await;
                        write_replay(&mut out.sink, frames, state).await
                    };
                    if let Err(ending) = Box::pin(replay).await {
                        return ending;
                    }
                    continue;
                }
                Reply::Follow(mut feed) => {
                    feed.set_direct(direct.clone());
                    writer.out.lock().await.feeds.push(*feed);
                    continue;
                }
                Reply::Unfollow(room) => {
                    writer.out.lock().await.feeds.close(&room);
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
            received = writer.next_live() => match next_of(received, state).await {
                Ok(Some(next)) => next,
                Ok(None) => continue,
                Err(ending) => return ending,
            },
        };
        // Boxed while it runs: inline, the write's state would be part of every idle
        // connection's task (the largest state of an async function sets its size).
        let mut write = Box::pin(async {
            let mut out = writer.out.lock().await;
            write_with_ready(&mut out, next, state).await
        });
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
        Err(FeedError::SocketGone) => Err(Ending::Drop),
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
async fn write_with_ready(out: &mut Out, next: Next, state: &AppState) -> Result<(), Ending> {
    let mut written = feed(&mut out.sink, next, state).await?;
    while written < MAX_COALESCED {
        let Some(Some(received)) = out.feeds.next().now_or_never() else {
            break;
        };
        if let Some(next) = next_of(received, state).await? {
            written += feed(&mut out.sink, next, state).await?;
        }
    }
    out.sink.flush().await.map_err(|_| Ending::Drop)
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
            entries.send_now(entry(id));
        }
        // Its own event is not sent back; the others overflow the queue of 2.
        for origin in [connection, 1, 2, 3] {
            events.send_now(event(origin));
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
        a.send_now(entry("1-0"));
        assert_eq!(next(&mut feeds).unwrap().unwrap(), ["1-0"]);

        feeds.push(feed("b", &b));
        a.send_now(entry("2-0"));
        b.send_now(entry("3-0"));
        let mut both = [next(&mut feeds), next(&mut feeds)].map(|r| r.unwrap().unwrap());
        both.sort();
        assert_eq!(both, [["2-0"], ["3-0"]], "still a's, and b's");
        feeds.close("a");
        a.send_now(entry("4-0"));
        b.send_now(entry("5-0"));
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
