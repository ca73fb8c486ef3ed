//! The drain after SIGTERM, spread out: each connection is closed (1012) at its own
//! random moment, uniformly over a window that ends a margin before `--drain-secs`, so
//! an instance's clients reconnect to the others a few at a time instead of all in the
//! same quarter second, and all are closed before the load balancer's deregistration
//! delay (set equal to `--drain-secs`) cuts whatever is left.
//!
//! The whole shutdown ends by the drain's deadline: a closing handshake may last until
//! [`LEAVE_RESERVE`] before it, and what the connections leave behind (presence) is
//! taken out of Redis in that reserve.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Share of the drain kept free at its end, at least [`MIN_MARGIN`] but never more than
/// half the drain.
const MARGIN_SHARE: f64 = 0.2;
const MIN_MARGIN: Duration = Duration::from_secs(3);
/// The end of the drain kept for leaving presence, after the last closing handshake.
pub const LEAVE_RESERVE: Duration = Duration::from_secs(1);
/// The least time the connections get to close after the window, however short the
/// drain. A drain under [`LEAVE_RESERVE`] leaves no time for handshakes, so each close
/// frame goes out only if its socket takes it at once; without this floor the process
/// would exit before the connections' tasks even ran, and their clients would see a
/// dropped connection (1006) instead of 1012. A bound, not a wait: the shutdown goes on
/// once every connection has closed, in milliseconds, unless a starved machine holds
/// the connections' tasks back; the stop timeout leaves 15 s past the drain.
pub const CLOSE_FLOOR: Duration = Duration::from_secs(1);

/// How long the closes are spread over, for a drain of `drain`.
pub fn close_window(drain: Duration) -> Duration {
    let margin = drain.mul_f64(MARGIN_SHARE).max(MIN_MARGIN).min(drain / 2);
    drain - margin
}

#[derive(Default)]
pub struct Drain {
    begun: CancellationToken,
    /// When the drain began, the window the closes are spread over, and its deadline.
    plan: OnceLock<Plan>,
}

#[derive(Clone, Copy)]
struct Plan {
    start: Instant,
    window: Duration,
    deadline: Instant,
}

impl Drain {
    /// Starts spreading closes over the window of a drain of `drain` from now; returns
    /// the window.
    pub fn begin(&self, drain: Duration) -> Duration {
        let start = Instant::now();
        let window = close_window(drain);
        let _ = self.plan.set(Plan {
            start,
            window,
            deadline: start + drain,
        });
        self.begun.cancel();
        window
    }

    /// Completes at this connection's moment to close: a uniformly random point of the
    /// window (at once for a connection opened after its point). Call once per
    /// connection and keep the future.
    pub async fn my_turn(&self) {
        self.begun.cancelled().await;
        let plan = *self.plan.get().expect("set before begun is cancelled");
        // Uniform in [0, 1).
        let offset = plan.window.mul_f64(rand::random::<f64>());
        tracing::trace!(
            offset_ms = offset.as_millis() as u64,
            "drain: this connection's turn to close"
        );
        // Boxed: made only once the drain has begun, it is no part of an idle
        // connection's task before.
        Box::pin(tokio::time::sleep_until(plan.start + offset)).await;
    }

    /// When the drain must be over, once it has begun.
    pub fn deadline(&self) -> Option<Instant> {
        self.plan.get().map(|plan| plan.deadline)
    }

    /// When the closing handshakes must be over, once the drain has begun:
    /// [`LEAVE_RESERVE`] before its deadline, which is kept for leaving presence.
    fn handshakes_end(&self) -> Option<Instant> {
        self.deadline()
            .map(|deadline| deadline.checked_sub(LEAVE_RESERVE).unwrap_or(deadline))
    }

    /// Until when the shutdown waits for the connections to close: the end of the
    /// handshakes, but at least [`CLOSE_FLOOR`] from now.
    pub fn closes_until(&self) -> Instant {
        let floor = Instant::now() + CLOSE_FLOOR;
        self.handshakes_end().map_or(floor, |end| end.max(floor))
    }

    /// How long a closing handshake may wait, from now: `wanted`, but during a drain
    /// no later than [`LEAVE_RESERVE`] before its deadline.
    pub fn handshake_time(&self, wanted: Duration) -> Duration {
        match self.handshakes_end() {
            Some(end) => wanted.min(end.saturating_duration_since(Instant::now())),
            None => wanted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_leave_a_margin() {
        assert_eq!(
            close_window(Duration::from_secs(30)),
            Duration::from_secs(24)
        );
        assert_eq!(
            close_window(Duration::from_secs(10)),
            Duration::from_secs(7)
        );
        assert_eq!(close_window(Duration::from_secs(4)), Duration::from_secs(2));
        assert_eq!(close_window(Duration::ZERO), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn handshakes_end_a_reserve_before_the_deadline() {
        let drain = Drain::default();
        let long = Duration::from_secs(10);
        assert_eq!(drain.handshake_time(long), long, "not draining");
        assert_eq!(drain.begin(Duration::from_secs(10)), Duration::from_secs(7));
        assert_eq!(drain.handshake_time(long), Duration::from_secs(9));
        tokio::time::advance(Duration::from_millis(9500)).await;
        assert_eq!(drain.handshake_time(long), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn the_closes_get_a_floor_however_short_the_drain() {
        let drain = Drain::default();
        drain.begin(Duration::from_secs(10));
        assert_eq!(
            drain.closes_until(),
            Instant::now() + Duration::from_secs(9),
            "a reserve before the deadline"
        );
        let instant = Drain::default();
        instant.begin(Duration::ZERO);
        assert_eq!(
            instant.handshake_time(Duration::from_secs(2)),
            Duration::ZERO
        );
        assert_eq!(instant.closes_until(), Instant::now() + CLOSE_FLOOR);
    }
}
