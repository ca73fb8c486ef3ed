//! The Redis health probe behind `/healthz` and `chat_redis_up`: once a second, does
//! the node behind our connection accept writes (`ROLE` says master; after a failover
//! the old primary still answers PING but refuses writes; then the connection is
//! replaced, so the next probe reaches whatever the endpoint names now)? Together with the fan-out
//! reader's own report that it is connected and reading, that is "Redis up".

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::connection::{Redis, Request, StoreError};
use crate::metrics::Metrics;
use crate::store::Store;

const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Whether the node `redis` reaches is a primary.
pub async fn is_primary(redis: &Redis) -> Result<bool, StoreError> {
    let role: redis::Value = redis.call(Request::Cmd(&redis::cmd("ROLE"))).await?;
    let primary = role_is_master(&role);
    if !primary {
        // A demoted primary still answers, so nothing else would replace this
        // connection on an instance that is not sending: only a refused write does.
        redis.reconnect("the node behind the connection is not a primary");
    }
    Ok(primary)
}

/// `ROLE`'s first element is `master`, `slave` or `sentinel`.
pub fn role_is_master(role: &redis::Value) -> bool {
    match role {
        redis::Value::Array(items) => matches!(
            items.first(),
            Some(redis::Value::BulkString(kind)) if kind.as_slice() == b"master"
        ),
        _ => false,
    }
}

/// Probes Redis every second and publishes the result in `metrics`, until cancelled.
pub async fn run(store: Store, metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let writable = match is_primary(store.redis()).await {
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
        if writable && let Ok(bytes) = store.used_memory().await {
            metrics.redis_used_memory.store(bytes, Ordering::Relaxed);
        }
        let up = writable && metrics.reader_up.load(Ordering::Relaxed);
        metrics.redis_up.store(up, Ordering::Relaxed);
    }
}
