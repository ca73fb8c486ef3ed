//! The writing half of a connection: the live frames of every room it follows, the
//! reader's replies in their order, pings, and the close at the end of a drain.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use axum::extract::ws::Message;
use futures_util::stream::SelectAll;
use futures_util::{FutureExt as _, SinkExt as _, Stream, StreamExt as _};
use tokio::sync::{broadcast, mpsc};
use tokio::time::timeout;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use super::{CLOSE_RESTART, Ending, Reply, Sink, slow_consumer};
use crate::AppState;
use crate::hub::{About, Outgoing};
use crate::protocol::StreamId;

/// Live frames written to a client per flush at most.
const MAX_COALESCED: usize = 32;

/// A room's live frames as one connection gets them: without the entries its replay
/// already covered, without presence and typing events unless it asked for them, and
/// without the events it caused itself. Closed (`leave`), it lets go of the room at once
/// and ends.
pub struct RoomFeed {
    room: String,
    /// `None` once closed.
    live: Option<BroadcastStream<Outgoing>>,
    /// Wakes the writer's set of feeds to drop this one once closed.
    waker: Option<Waker>,
    skip_through: StreamId,
    events: bool,
    connection: u64,
}

impl RoomFeed {
    pub fn new(
        room: String,
        live: broadcast::Receiver<Outgoing>,
        skip_through: StreamId,
        events: bool,
        connection: u64,
    ) -> Self {
        RoomFeed {
            room,
            live: Some(BroadcastStream::new(live)),
            waker: None,
            skip_through,
            events,
            connection,
        }
    }

    /// Drops the room's receiver (so the hub may let go of the room) and has the feed
    /// end the next time the set polls it.
    fn close(&mut self) {
        self.live = None;
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    fn wants(&self, outgoing: &Outgoing) -> bool {
        match outgoing.about {
            About::Entry(id) => id > self.skip_through,
            About::Event { origin } => self.events && origin != self.connection,
        }
    }
}

impl Stream for RoomFeed {
    type Item = Result<Outgoing, BroadcastStreamRecvError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            this.waker = Some(cx.waker().clone());
        }
        loop {
            let Some(live) = this.live.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(live.poll_next_unpin(cx)) {
                Some(Ok(outgoing)) if !this.wants(&outgoing) => continue,
                other => return Poll::Ready(other),
            }
        }
    }
}

/// The rooms followed. A set that polls only the feeds that were woken, so a message
/// costs the same whether the connection follows one room or a hundred.
type Feeds = SelectAll<RoomFeed>;

/// Sends live frames, replies and pings; ends the connection at the end of the drain,
/// when the client falls behind, when it stops answering, or when the reader says so.
pub(super) async fn write_loop(
    sink: &mut Sink,
    mut replies: mpsc::Receiver<Reply>,
    state: &AppState,
    last_seen: &AtomicU64,
    started: Instant,
) -> Ending {
    let my_turn = state.drain.my_turn();
    tokio::pin!(my_turn);
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + state.ping_interval,
        state.ping_interval,
    );
    let mut feeds = Feeds::new();
    loop {
        let frame = tokio::select! {
            biased;
            _ = &mut my_turn => return Ending::Close(CLOSE_RESTART, "server restart"),
            _ = state.close.cancelled() => return Ending::Close(CLOSE_RESTART, "server restart"),
            Some(reply) = replies.recv() => match reply {
                Reply::Frame(frame) => Message::Text(frame),
                Reply::Replay(frames) => {
                    if let Err(ending) = write_replay(sink, frames, state).await {
                        return ending;
                    }
                    continue;
                }
                Reply::Follow(feed) => {
                    feeds.push(feed);
                    continue;
                }
                Reply::Unfollow(room, left) => {
                    if let Some(feed) = feeds.iter_mut().find(|feed| feed.room == room) {
                        feed.close();
                    }
                    Message::Text(left)
                }
                Reply::Close(code, reason) => return Ending::Close(code, reason),
            },
            _ = ping.tick() => {
                let silent = started.elapsed().saturating_sub(Duration::from_millis(last_seen.load(Ordering::Relaxed)));
                if silent > state.peer_timeout {
                    tracing::debug!(?silent, "dropping unresponsive client");
                    return Ending::Drop;
                }
                Message::Ping(Default::default())
            }
            Some(received) = feeds.next(), if !feeds.is_empty() => match received {
                Ok(outgoing) => live_frame(outgoing, state),
                Err(BroadcastStreamRecvError::Lagged(_)) => return slow_consumer(state),
            },
        };
        match timeout(
            state.write_timeout,
            write_with_ready(sink, frame, &mut feeds, state),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(ending)) => return ending,
            Err(_) => return slow_consumer(state),
        }
    }
}

fn live_frame(outgoing: Outgoing, state: &AppState) -> Message {
    if matches!(outgoing.about, About::Entry(_)) {
        state.metrics.messages_out.fetch_add(1, Ordering::Relaxed);
    }
    Message::Text(outgoing.frame)
}

/// Writes `frame` and the live frames already queued behind it (up to
/// [`MAX_COALESCED`]) with one flush: under load a client gets several messages per
/// write instead of a write each.
async fn write_with_ready(
    sink: &mut Sink,
    frame: Message,
    feeds: &mut Feeds,
    state: &AppState,
) -> Result<(), Ending> {
    sink.feed(frame).await.map_err(|_| Ending::Drop)?;
    for _ in 1..MAX_COALESCED {
        match feeds.next().now_or_never() {
            Some(Some(Ok(outgoing))) => sink
                .feed(live_frame(outgoing, state))
                .await
                .map_err(|_| Ending::Drop)?,
            Some(Some(Err(BroadcastStreamRecvError::Lagged(_)))) => {
                return Err(slow_consumer(state));
            }
            Some(None) | None => break,
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
            state
                .metrics
                .messages_out
                .fetch_add(sent, Ordering::Relaxed);
            Ok(())
        }
        Ok(Err(_)) => Err(Ending::Drop),
        Err(_) => Err(slow_consumer(state)),
    }
}
