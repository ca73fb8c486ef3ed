//! The drain after SIGTERM, spread out: each connection is closed (1012) at its own
//! random moment, uniformly over a window that ends a margin before `--drain-secs`, so
//! an instance's clients reconnect to the others a few at a time instead of all in the
//! same quarter second, and all are closed before the load balancer's deregistration
//! delay (set equal to `--drain-secs`) cuts whatever is left.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::random::random_fraction;

/// Share of the drain kept free at its end, at least [`MIN_MARGIN`] but never more than
/// half the drain.
const MARGIN_SHARE: f64 = 0.2;
const MIN_MARGIN: Duration = Duration::from_secs(3);

/// How long the closes are spread over, for a drain of `drain`.
pub fn close_window(drain: Duration) -> Duration {
    let margin = drain.mul_f64(MARGIN_SHARE).max(MIN_MARGIN).min(drain / 2);
    drain - margin
}

#[derive(Default)]
pub struct Drain {
    begun: CancellationToken,
    /// When the drain began and the window the closes are spread over.
    plan: OnceLock<(Instant, Duration)>,
}

impl Drain {
    /// Starts spreading closes over `window` from now.
    pub fn begin(&self, window: Duration) {
        let _ = self.plan.set((Instant::now(), window));
        self.begun.cancel();
    }

    /// Completes at this connection's moment to close: a uniformly random point of the
    /// window (at once for a connection opened after its point). Call once per
    /// connection and keep the future.
    pub async fn my_turn(&self) {
        self.begun.cancelled().await;
        let (start, window) = *self.plan.get().expect("set before begun is cancelled");
        tokio::time::sleep_until(start + window.mul_f64(random_fraction())).await;
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
}
