//! A room's queue of frames inside the process: one sender (the fan-out, under the hub's
//! lock), a receiver per connection that follows the room. Like
//! `tokio::sync::broadcast`, except in what it costs a room that is quiet: nothing is
//! allocated until frames are queued, and what a burst allocated is given back once
//! every receiver has read it. A process may follow tens of thousands of rooms, most of
//! them silent at any moment, and a channel that preallocates its capacity would hold
//! `capacity` slots for each.
//!
//! A receiver that falls `capacity` frames behind has lost the oldest ones: its next
//! receive says how many ([`Lagged`]), and the connection decides what that means. A
//! receiver may also be made parked ([`Receiver::parked`]): it keeps the room followed
//! but queues nothing until [`Receiver::start`], so a client that takes long to join (a
//! replay) cannot fall behind before it has begun.
//!
//! A channel may gather its wake-ups over a window ([`Sender::new`]): the first frame
//! after a quiet spell wakes the receivers at once, and frames that follow within the
//! window wake them once, at its end, all together. A receiver woken once writes what
//! it finds with one flush, so a busy room costs a wake-up and a write per connection
//! per window instead of per frame; a quiet room's frames go out as before.
//!
//! A receiver may name who writes its frames ([`Receiver::set_direct`]): a wake then asks
//! that writer to write them on the waking thread ([`Direct`]), and wakes the receiver's
//! task only if it could not finish. A room's wake so writes its connections one after
//! another on one thread, where waking a task per connection spread them over every
//! worker, which then contended for the room's queue and the frames' reference counts
//! (a quarter less CPU per delivery in a crowded room; BENCHMARKS.md, issue 22). A wake
//! writes at most [`DIRECT_WRITES`] receivers itself: a larger room's others are woken,
//! first, for the other workers to write meanwhile. Waking may now take the time of
//! those writes, so a send hands the caller the receivers due a wake ([`Wake`]), to wake
//! once it has let go of its own locks (the hub's).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

/// A queue that grew past this gives the memory back once it is empty again.
const KEPT_SLOTS: usize = 16;
/// Frames gathered in a window that wake the receivers before its end: as many as a
/// receiver writes with one flush. A room this busy gains nothing more by waiting, and
/// a client waiting for its own message back (a sender that keeps a few in flight)
/// is not held to one round per window.
const WAKE_BATCH: usize = 32;
/// Receivers a wake writes on its own thread at most (about a millisecond of sends
/// here); the rest of a larger room's are woken, and written by other worker threads.
const DIRECT_WRITES: usize = 256;

/// Frames lost to a receiver that fell behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lagged(pub u64);

struct Slot<T> {
    value: T,
    /// Active receivers that have not read it yet.
    unread: usize,
}

struct State<T> {
    queue: VecDeque<Slot<T>>,
    /// The position of `queue[0]`; positions count every frame ever sent.
    head: u64,
    /// Receivers, parked or not.
    receivers: usize,
    /// Receivers that take frames.
    active: usize,
    /// Receivers waiting for the next frame; woken and emptied by each send.
    wakers: Vec<Waiting>,
    /// Bumped by each wake: tells a receiver whether its waker is still in `wakers`.
    generation: u64,
    /// When the receivers were last woken, and whether a wake is due at the end of the
    /// window that followed.
    last_wake: Option<Instant>,
    wake_due: bool,
    /// Frames sent since the last wake.
    unwoken: usize,
}

impl<T> State<T> {
    fn tail(&self) -> u64 {
        self.head + self.queue.len() as u64
    }

    /// Takes the wakers of the receivers waiting, to wake once the lock is let go.
    fn take_wakers(&mut self) -> Vec<Waiting> {
        self.generation += 1;
        self.last_wake = Some(Instant::now());
        self.wake_due = false;
        self.unwoken = 0;
        let waiting = self.wakers.len();
        std::mem::replace(&mut self.wakers, Vec::with_capacity(waiting))
    }

    /// Drops the frames at the front that every receiver has read.
    fn trim(&mut self) {
        while self.queue.front().is_some_and(|slot| slot.unread == 0) {
            self.queue.pop_front();
            self.head += 1;
        }
        if self.queue.is_empty() && self.queue.capacity() > KEPT_SLOTS {
            self.queue.shrink_to(KEPT_SLOTS);
        }
    }
}

struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    /// Wake-ups after the first are gathered over this long; zero: each send wakes.
    window: Duration,
}

/// Writes what a receiver has ready from the thread that wakes it, instead of waking
/// its task: a window's wake then writes a room's connections from one thread.
pub trait Direct: Send + Sync {
    /// Whether everything ready was written, so that `registered` (the waker the
    /// receiver was last polled with) need not be woken.
    fn write_ready(&self, registered: &Waker) -> bool;
}

/// Receivers due a wake, from [`Sender::send`]: woken (or written) when dropped, which
/// the caller does once it holds no lock.
#[must_use = "dropped at once, it wakes the receivers under the caller's locks"]
pub struct Wake(Vec<Waiting>);

impl Drop for Wake {
    fn drop(&mut self) {
        write_or_wake(std::mem::take(&mut self.0));
    }
}

struct Waiting {
    waker: Waker,
    direct: Option<Weak<dyn Direct>>,
}

/// Writes the frames of the first [`DIRECT_WRITES`] receivers waiting on this thread,
/// where they can be, and wakes the others' tasks, first, so that other worker threads
/// write theirs meanwhile.
fn write_or_wake(mut waiting: Vec<Waiting>) {
    let direct = waiting.len().min(DIRECT_WRITES);
    for waiting in waiting.drain(direct..) {
        waiting.waker.wake();
    }
    for waiting in waiting {
        let direct = waiting.direct.and_then(|direct| direct.upgrade());
        if !direct.is_some_and(|direct| direct.write_ready(&waiting.waker)) {
            waiting.waker.wake();
        }
    }
}

/// The sending half: the room's, in the hub.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// One connection's place in a room's queue.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// The position of the next frame to read; `None` while parked.
    next: Option<u64>,
    /// Where this receiver's waker sits in `wakers`, and in which generation.
    registered: Option<(u64, usize)>,
    direct: Option<Weak<dyn Direct>>,
}

impl<T: Clone + Send + 'static> Sender<T> {
    /// A channel that queues at most `capacity` frames per receiver, and gathers the
    /// wake-ups of frames sent within `window` of the last wake (zero: none gathered).
    pub fn new(capacity: usize, window: Duration) -> Self {
        Sender {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    head: 0,
                    receivers: 0,
                    active: 0,
                    wakers: Vec::new(),
                    generation: 0,
                    last_wake: None,
                    wake_due: false,
                    unwoken: 0,
                }),
                capacity: capacity.max(1),
                window,
            }),
        }
    }

    /// Queues `value` for every active receiver and wakes those waiting, at once or at
    /// the end of the window; returns how many it was queued for. A receiver `capacity`
    /// frames behind loses the oldest.
    ///
    /// The receivers due a wake at once are left to the caller ([`Wake`]), to wake once
    /// it has let go of its own locks: waking may write their frames on its thread.
    pub fn send(&self, value: T) -> (usize, Wake) {
        let mut state = self.shared.state.lock().unwrap();
        if state.active == 0 {
            return (0, Wake(Vec::new()));
        }
        if state.queue.len() == self.shared.capacity {
            state.queue.pop_front();
            state.head += 1;
        }
        let active = state.active;
        state.queue.push_back(Slot {
            value,
            unread: active,
        });
        state.unwoken += 1;
        if state.wake_due && state.unwoken < WAKE_BATCH {
            return (active, Wake(Vec::new()));
        }
        let window = self.shared.window;
        let wake_at = state.last_wake.map(|last| last + window);
        let full = state.unwoken >= WAKE_BATCH;
        match wake_at.filter(|at| *at > Instant::now() && !full) {
            None => return (active, Wake(state.take_wakers())),
            Some(at) => {
                state.wake_due = true;
                drop(state);
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(at).await;
                    let mut state = shared.state.lock().unwrap();
                    // A full batch may have woken them already.
                    if state.wake_due {
                        let wakers = state.take_wakers();
                        drop(state);
                        write_or_wake(wakers);
                    }
                });
            }
        }
        (active, Wake(Vec::new()))
    }

    /// Sends and wakes at once: for tests, which hold no lock.
    #[cfg(test)]
    pub fn send_now(&self, value: T) -> usize {
        self.send(value).0
    }

    /// A receiver that takes every frame sent from now on.
    pub fn subscribe(&self) -> Receiver<T> {
        let mut receiver = self.parked();
        receiver.start();
        receiver
    }

    /// A receiver that takes nothing until [`Receiver::start`], but counts as one.
    pub fn parked(&self) -> Receiver<T> {
        self.shared.state.lock().unwrap().receivers += 1;
        Receiver {
            shared: self.shared.clone(),
            next: None,
            registered: None,
            direct: None,
        }
    }

    /// Receivers, parked or not.
    pub fn receiver_count(&self) -> usize {
        self.shared.state.lock().unwrap().receivers
    }
}

impl<T: Clone> Receiver<T> {
    /// Has the waking thread write this receiver's frames through `direct`.
    pub fn set_direct(&mut self, direct: Weak<dyn Direct>) {
        self.direct = Some(direct);
    }

    /// Takes every frame sent from now on (a receiver already started is left as it is).
    pub fn start(&mut self) {
        if self.next.is_some() {
            return;
        }
        let mut state = self.shared.state.lock().unwrap();
        state.active += 1;
        self.next = Some(state.tail());
    }

    /// The frames ready, up to `max` (at least one), appended to `out`; or how many were
    /// lost since the last one. One lock for them all: a room's receivers all read at
    /// once, after a wake, from every worker thread.
    pub fn poll_recv_many(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
        out: &mut Vec<T>,
    ) -> Poll<Result<usize, Lagged>> {
        let mut state = self.shared.state.lock().unwrap();
        let Some(next) = self.next else {
            return Poll::Pending;
        };
        if next < state.head {
            self.next = Some(state.head);
            return Poll::Ready(Err(Lagged(state.head - next)));
        }
        let index = (next - state.head) as usize;
        let count = state.queue.len().saturating_sub(index).min(max);
        if count > 0 {
            for slot in state.queue.range_mut(index..index + count) {
                slot.unread -= 1;
                out.push(slot.value.clone());
            }
            self.next = Some(next + count as u64);
            if index == 0 {
                state.trim();
            }
            return Poll::Ready(Ok(count));
        }
        let generation = state.generation;
        match self.registered {
            Some((registered, at)) if registered == generation => {
                let waiting = &mut state.wakers[at];
                if !waiting.waker.will_wake(cx.waker()) {
                    waiting.waker = cx.waker().clone();
                }
            }
            _ => {
                self.registered = Some((generation, state.wakers.len()));
                state.wakers.push(Waiting {
                    waker: cx.waker().clone(),
                    direct: self.direct.clone(),
                });
            }
        }
        Poll::Pending
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock().unwrap();
        state.receivers -= 1;
        let Some(next) = self.next else {
            return;
        };
        state.active -= 1;
        // What it has not read no longer waits for it.
        let from = next.saturating_sub(state.head) as usize;
        for slot in state.queue.iter_mut().skip(from) {
            slot.unread -= 1;
        }
        state.trim();
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;

    use futures_util::Stream;

    use super::*;
    use futures_util::FutureExt as _;
    use futures_util::StreamExt as _;

    /// One frame at a time, for the tests here and the hub's; the server takes what is
    /// ready with [`Receiver::poll_recv_many`].
    impl<T: Clone> Stream for Receiver<T> {
        type Item = Result<T, Lagged>;

        fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            let mut one = Vec::with_capacity(1);
            self.get_mut()
                .poll_recv_many(cx, 1, &mut one)
                .map(|taken| Some(taken.map(|_| one.pop().expect("one frame taken"))))
        }
    }

    fn next(receiver: &mut Receiver<u32>) -> Option<Result<u32, Lagged>> {
        receiver.next().now_or_never().flatten()
    }

    fn queued(sender: &Sender<u32>) -> (usize, usize) {
        let state = sender.shared.state.lock().unwrap();
        (state.queue.len(), state.queue.capacity())
    }

    #[test]
    fn every_receiver_gets_every_frame_sent_after_it_subscribed() {
        let sender = Sender::new(8, Duration::ZERO);
        assert_eq!(sender.send_now(0), 0, "nobody listens");
        let mut a = sender.subscribe();
        assert_eq!(sender.send_now(1), 1);
        let mut b = sender.subscribe();
        assert_eq!(sender.send_now(2), 2);
        assert_eq!(next(&mut a), Some(Ok(1)));
        assert_eq!(next(&mut a), Some(Ok(2)));
        assert_eq!(next(&mut a), None);
        assert_eq!(next(&mut b), Some(Ok(2)));
        assert_eq!(next(&mut b), None);
        assert_eq!(queued(&sender).0, 0, "read by all: gone");
    }

    #[test]
    fn a_quiet_room_holds_no_slots_and_a_burst_gives_its_memory_back() {
        let sender = Sender::new(256, Duration::ZERO);
        let mut a = sender.subscribe();
        assert_eq!(queued(&sender), (0, 0));
        for i in 0..200 {
            sender.send_now(i);
        }
        assert!(queued(&sender).1 >= 200);
        for _ in 0..200 {
            next(&mut a).unwrap().unwrap();
        }
        let (len, capacity) = queued(&sender);
        assert_eq!(len, 0);
        assert!(capacity <= KEPT_SLOTS, "{capacity} slots kept");
    }

    #[test]
    fn a_receiver_too_far_behind_is_told_how_many_it_lost() {
        let sender = Sender::new(3, Duration::ZERO);
        let mut slow = sender.subscribe();
        let mut quick = sender.subscribe();
        for i in 0..5 {
            sender.send_now(i);
            assert_eq!(next(&mut quick), Some(Ok(i)));
        }
        assert_eq!(next(&mut slow), Some(Err(Lagged(2))));
        assert_eq!(next(&mut slow), Some(Ok(2)));
        drop(slow);
        assert_eq!(queued(&sender).0, 0, "a dropped receiver holds nothing");
        assert_eq!(sender.receiver_count(), 1);
    }

    #[test]
    fn a_receiver_takes_what_is_ready_at_once_up_to_a_bound() {
        let sender = Sender::new(4, Duration::ZERO);
        let mut a = sender.subscribe();
        let mut b = sender.subscribe();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut taken = Vec::new();
        assert!(a.poll_recv_many(&mut cx, 8, &mut taken).is_pending());
        for i in 0..6 {
            sender.send_now(i);
        }
        assert_eq!(
            a.poll_recv_many(&mut cx, 8, &mut taken),
            Poll::Ready(Err(Lagged(2)))
        );
        assert_eq!(a.poll_recv_many(&mut cx, 3, &mut taken), Poll::Ready(Ok(3)));
        assert_eq!(a.poll_recv_many(&mut cx, 3, &mut taken), Poll::Ready(Ok(1)));
        assert_eq!(taken, [2, 3, 4, 5]);
        assert_eq!(queued(&sender).0, 4, "b has read none of them");
        taken.clear();
        assert_eq!(
            b.poll_recv_many(&mut cx, 1, &mut taken),
            Poll::Ready(Err(Lagged(2)))
        );
        assert_eq!(b.poll_recv_many(&mut cx, 8, &mut taken), Poll::Ready(Ok(4)));
        assert_eq!(queued(&sender).0, 0, "read by all: gone");
        assert!(a.poll_recv_many(&mut cx, 8, &mut taken).is_pending());
    }

    #[test]
    fn a_parked_receiver_counts_but_queues_nothing_until_started() {
        let sender = Sender::new(2, Duration::ZERO);
        let mut parked = sender.parked();
        assert_eq!(sender.receiver_count(), 1);
        for i in 0..10 {
            assert_eq!(sender.send_now(i), 0);
        }
        assert_eq!(next(&mut parked), None);
        parked.start();
        sender.send_now(10);
        assert_eq!(next(&mut parked), Some(Ok(10)));
    }

    #[tokio::test(start_paused = true)]
    async fn sends_within_the_window_wake_the_receivers_once_at_its_end() {
        let window = Duration::from_millis(20);
        let sender = Sender::new(8, window);
        let mut receiver = sender.subscribe();
        let waiting = tokio::spawn(async move {
            let first = receiver.next().await;
            (first, tokio::time::Instant::now(), receiver)
        });
        tokio::task::yield_now().await;
        let quiet = tokio::time::Instant::now();
        sender.send_now(1);
        let (first, woken, mut receiver) = waiting.await.unwrap();
        assert_eq!(first, Some(Ok(1)));
        assert_eq!(
            woken, quiet,
            "the first send after a quiet spell wakes at once"
        );
        let waiting = tokio::spawn(async move {
            let second = receiver.next().await;
            let woken = tokio::time::Instant::now();
            (second, woken, next(&mut receiver))
        });
        tokio::task::yield_now().await;
        sender.send_now(2);
        sender.send_now(3);
        let (second, woken, third) = waiting.await.unwrap();
        assert_eq!((second, third), (Some(Ok(2)), Some(Ok(3))));
        assert_eq!(
            woken,
            quiet + window,
            "woken once, at the end of the window"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_wakes_the_receivers_before_the_window_ends() {
        let sender = Sender::new(64, Duration::from_millis(20));
        let mut receiver = sender.subscribe();
        sender.send_now(0);
        assert_eq!(next(&mut receiver), Some(Ok(0)));
        let waiting = tokio::spawn(async move {
            receiver.next().await;
            tokio::time::Instant::now()
        });
        tokio::task::yield_now().await;
        let sent = tokio::time::Instant::now();
        for i in 1..=WAKE_BATCH as u32 {
            sender.send_now(i);
        }
        assert_eq!(
            waiting.await.unwrap(),
            sent,
            "woken by the batch, not the window"
        );
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send() {
        let sender = Sender::new(4, Duration::ZERO);
        let mut receiver = sender.subscribe();
        let waiting = tokio::spawn(async move { receiver.next().await });
        tokio::task::yield_now().await;
        sender.send_now(7);
        assert_eq!(waiting.await.unwrap(), Some(Ok(7)));
    }

    /// Counts the wakes of a receiver's task.
    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A receiver, and its writer that takes its frames until none is ready (which
    /// registers the receiver again) and says it wrote them all, or not.
    struct Writes {
        receiver: Mutex<Receiver<u32>>,
        written: Mutex<Vec<u32>>,
        finishes: bool,
    }

    impl Direct for Writes {
        fn write_ready(&self, registered: &Waker) -> bool {
            let mut receiver = self.receiver.lock().unwrap();
            let mut cx = Context::from_waker(registered);
            let mut taken = Vec::new();
            while receiver.poll_recv_many(&mut cx, 8, &mut taken).is_ready() {}
            self.written.lock().unwrap().extend(taken);
            self.finishes
        }
    }

    /// A receiver of `sender`, held by a `Writes`, waiting for a frame with a task's
    /// waker that counts its wakes; written through the `Writes` (which finishes or not,
    /// as `writer` says) unless `writer` is `None`.
    fn waiting(sender: &Sender<u32>, writer: Option<bool>) -> (Arc<Wakes>, Arc<Writes>) {
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let writes = Arc::new_cyclic(|writes: &Weak<Writes>| {
            let mut receiver = sender.subscribe();
            if writer.is_some() {
                receiver.set_direct(writes.clone());
            }
            let mut none = Vec::new();
            assert!(
                receiver
                    .poll_recv_many(&mut Context::from_waker(&waker), 8, &mut none)
                    .is_pending()
            );
            Writes {
                receiver: Mutex::new(receiver),
                written: Mutex::new(Vec::new()),
                finishes: writer.unwrap_or(false),
            }
        });
        (wakes, writes)
    }

    fn wakes(wakes: &Wakes) -> usize {
        wakes.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[test]
    fn a_wake_writes_through_the_receivers_writer_and_wakes_only_what_it_left() {
        let sender = Sender::new(8, Duration::ZERO);
        let (finished, writes_all) = waiting(&sender, Some(true));
        let (left, writes_some) = waiting(&sender, Some(false));
        let (plain, _receiver) = waiting(&sender, None);
        let (gone, writer) = waiting(&sender, Some(true));
        drop(writer);
        sender.send_now(1);
        assert_eq!(*writes_all.written.lock().unwrap(), [1]);
        assert_eq!(wakes(&finished), 0, "written: its task sleeps on");
        assert_eq!(*writes_some.written.lock().unwrap(), [1]);
        assert_eq!(wakes(&left), 1, "something left: its task is woken");
        assert_eq!(wakes(&plain), 1, "no writer: woken");
        assert_eq!(wakes(&gone), 1, "its writer is gone: woken");
    }

    #[test]
    fn a_wake_writes_so_many_receivers_itself_and_wakes_the_rest() {
        let sender = Sender::new(8, Duration::ZERO);
        let receivers: Vec<_> = (0..DIRECT_WRITES + 3)
            .map(|_| waiting(&sender, Some(true)))
            .collect();
        let (_, wake) = sender.send(1);
        drop(wake);
        let woken = receivers.iter().filter(|(w, _)| wakes(w) == 1).count();
        let written = receivers
            .iter()
            .filter(|(_, writes)| !writes.written.lock().unwrap().is_empty())
            .count();
        assert_eq!((written, woken), (DIRECT_WRITES, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn the_wake_at_the_end_of_a_window_writes_through_the_receivers_writers() {
        let window = Duration::from_millis(20);
        let sender = Sender::new(8, window);
        let (wakes_a, writes) = waiting(&sender, Some(true));
        sender.send_now(1);
        sender.send_now(2);
        sender.send_now(3);
        assert_eq!(*writes.written.lock().unwrap(), [1], "the first at once");
        tokio::time::sleep(window).await;
        tokio::task::yield_now().await;
        assert_eq!(
            *writes.written.lock().unwrap(),
            [1, 2, 3],
            "the rest at its end"
        );
        assert_eq!(wakes(&wakes_a), 0);
    }
}
