//! The Redis health probe behind `/healthz` and `chat_redis_up`: once a second, does
//! Redis accept writes ([`crate::connection::Redis::accepts_writes`]: on one Redis, the
//! node behind our connection is the primary; on a cluster, every slot is served)?
//! Together with the fan-out reader's own report that it is connected and reading, that
//! is "Redis up".

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::Store;

const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Probes Redis every second and publishes the result in `metrics`, until cancelled.
pub async fn run(store: Store, metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let writable = match store.redis().accepts_writes().await {
            Ok(primary) => primary,
            Err(e) => {
                tracing::debug!(error = %e, "health probe failed");
                false
            }
        };
        if metrics.redis_writable.swap(writable, Ordering::Relaxed) != writable {
            if writable {
                tracing::info!("redis accepts writes");
            } else {
                tracing::warn!("redis does not accept writes");
            }
        }
        if writable && let Ok(used) = store.used_memory().await {
            metrics.redis_used_memory.set(used.largest as f64);
            metrics.redis_used_memory_sum.set(used.sum as f64);
        }
        let up = writable && metrics.reader_up.load(Ordering::Relaxed);
        metrics.redis_up.store(up, Ordering::Relaxed);
    }
}
