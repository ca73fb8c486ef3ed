//! The HTTP surface: routes, the embedded chat page and its `/config`, `/healthz` and
//! `/metrics`.
//! `/ws` is handled in [`crate::ws`], the server API under `/api/v1` in [`crate::api`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::serve::{ListenerExt as _, TapIo};
use tokio::net::{TcpListener, TcpStream};

use crate::state::AppState;
use crate::{api, ws};

const PAGE: &str = include_str!("../static/index.html");

/// The listener for the server's connections, with Nagle's algorithm off on each one.
/// A chat writes small frames that must go at once: with Nagle, a frame written while
/// the one before is not yet acknowledged waits for that acknowledgement, which the
/// client (or the load balancer) delays by up to 40 ms.
pub fn listener(listener: TcpListener) -> TapIo<TcpListener, fn(&mut TcpStream)> {
    listener.tap_io(nagle_off)
}

fn nagle_off(stream: &mut TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::warn!(%error, "cannot set TCP_NODELAY on a connection");
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/config", get(page_config))
        .route("/ws", get(ws::upgrade))
        .merge(api::router())
        .with_state(state)
}

async fn page() -> impl IntoResponse {
    // A new binary ships a new page; browsers must not keep an old one.
    ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE))
}

/// What the page needs to know before it connects: whether it must sign in, and where
/// it can fetch a token by itself.
async fn page_config(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let config = serde_json::json!({
        "auth": state.auth.is_some(),
        "token_url": state.auth_token_url,
    });
    ([(header::CACHE_CONTROL, "no-cache")], axum::Json(config))
}

/// 200 only when this instance should get traffic: not draining, Redis accepting
/// writes, and the fan-out reader reading.
async fn healthz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let metrics = &state.metrics;
    if metrics.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if !metrics.redis_writable.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "redis unavailable\n")
    } else if !metrics.redis_up.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "redis reader down\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state
            .metrics
            .render(state.hub.room_count(), state.presence.counts()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener as _;

    #[tokio::test]
    async fn every_accepted_connection_has_nagle_off() {
        let bound = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = bound.local_addr().unwrap();
        let mut listener = listener(bound);
        let client = TcpStream::connect(addr).await.unwrap();
        let (accepted, peer) = listener.accept().await;
        assert_eq!(peer, client.local_addr().unwrap());
        assert!(accepted.nodelay().unwrap());
    }
}
