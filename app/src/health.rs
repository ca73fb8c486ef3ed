//! The Redis health probe behind `/healthz` and `chat_redis_up`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::AsyncCommands as _;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::{COMMAND_TIMEOUT, Store};

const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Probes Redis every second and publishes the result in `metrics.redis_up`, until
/// cancelled.
pub async fn run(store: Store, metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut conn = store.commands();
        let ping = conn.ping::<String>();
        let up = matches!(tokio::time::timeout(COMMAND_TIMEOUT, ping).await, Ok(Ok(_)));
        if metrics.redis_up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!("redis reachable");
            } else {
                tracing::warn!("redis unreachable");
            }
        }
    }
}
