//! `chat-server`: startup and shutdown. Parses the configuration, starts the Redis
//! reader and health probe, serves HTTP/WebSocket, and on SIGTERM/SIGINT drains:
//! `/healthz` turns 503 at once, open connections are closed with 1012 one by one, at
//! random moments spread over the drain minus a margin ([`drain`]), and the process
//! exits 0.
//!
//! Shutdown travels as a [`drain::Drain`] (each connection's moment to close) and two
//! [`CancellationToken`]s: `close` closes whatever is still open at the end of the
//! window, `stop` ends the background tasks afterwards.

mod api;
mod auth;
mod config;
mod connection;
mod drain;
mod health;
mod history;
mod http;
mod hub;
mod limits;
mod metrics;
mod moderation;
mod presence;
mod protocol;
mod reader;
mod recovery;
mod session;
mod state;
mod store;
mod ws;

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use config::Config;
use hub::Hub;
use metrics::Metrics;
use state::AppState;
use store::Store;

/// The static musl build's allocator (see app/Cargo.toml); glibc's own elsewhere.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = Config::parse();
    // Both ring and aws-lc-rs may end up compiled in through dependencies; pick one.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let auth = config.verifier()?;
    let store = Store::new(&config)?;
    let metrics = Arc::new(Metrics::install()?);
    let hub = Arc::new(Hub::new(config.send_queue, config.fanout_window()));
    let stop = CancellationToken::new();
    let background = TaskTracker::new();
    background.spawn(health::run(store.clone(), metrics.clone(), stop.clone()));
    background.spawn(metrics.clone().keep_up(stop.clone()));
    let presence = Arc::new(presence::Presence::new(
        store.clone(),
        Duration::from_secs(config.presence_ttl_secs),
    ));
    background.spawn(presence.clone().heartbeat(
        {
            let hub = hub.clone();
            move || hub.watched()
        },
        stop.clone(),
    ));
    background.spawn(reader::run(
        store.clone(),
        hub.clone(),
        metrics.clone(),
        stop.clone(),
    ));
    let moderation = Arc::new(moderation::Moderation::default());
    if auth.is_some() {
        background.spawn(moderation::follow(
            moderation.clone(),
            store.clone(),
            stop.clone(),
        ));
    }

    let state = Arc::new(AppState {
        instance: config.instance_id(),
        allowed_origins: config.allowed_origins.clone(),
        hub,
        store,
        metrics: metrics.clone(),
        drain: drain::Drain::default(),
        close: CancellationToken::new(),
        tracker: TaskTracker::new(),
        write_timeout: config.write_timeout(),
        ping_interval: config.ping_interval(),
        peer_timeout: config.peer_timeout(),
        rate_per_sec: config.rate_per_sec,
        rate_burst: config.rate_burst,
        trusted_proxies: config.trusted_proxies.clone(),
        client_limits: Arc::new(limits::ClientLimits::new(
            config.max_connections_per_address,
            config.new_rooms_per_minute,
            config.room_joins_per_minute,
        )),
        auth,
        auth_token_url: config.auth_token_url.clone(),
        presence,
        max_rooms: usize::from(config.max_rooms_per_connection),
        moderation,
        api_budget: api::Budget::new(config.api_rate_burst, config.api_rate_per_sec),
    });
    // Before "listening" is logged: a SIGTERM that arrives once we look up must drain.
    let mut signals = Signals::install()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        instance = %state.instance,
        redis = %redacted(&config.redis_url),
        auth = state.auth.is_some(),
        "listening"
    );
    let server = tokio::spawn(
        axum::serve(
            http::listener(listener),
            http::router(state.clone())
                .into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(state.close.clone().cancelled_owned())
        .into_future(),
    );

    signals.recv().await;
    let signalled = tokio::time::Instant::now();
    metrics.draining.store(true, Ordering::Relaxed);
    let window = state.drain.begin(config.drain());
    let deadline = state.drain.deadline().unwrap_or(signalled);
    tracing::info!(
        drain_secs = config.drain_secs,
        ?window,
        connections = metrics.connections.load(Ordering::Relaxed),
        "draining: closing connections with 1012, spread over the window"
    );
    tokio::select! {
        _ = tokio::time::sleep(window) => {}
        _ = signals.recv() => tracing::info!("second signal: ending the drain early"),
    }
    tracing::info!(
        connections = metrics.connections.load(Ordering::Relaxed),
        "closing the remaining connections with 1012"
    );
    // Everything below ends by the deadline, except that the connections always get the
    // close floor (a drain that leaves less): the stop timeout (the drain and a margin)
    // never cuts a presence leave short.
    state.close.cancel();
    state.tracker.close();
    let _ = tokio::time::timeout_at(state.drain.closes_until(), state.tracker.wait()).await;
    // Connections still stuck (a socket that takes nothing) leave presence from here.
    let _ = tokio::time::timeout_at(deadline, state.presence.leave_everything()).await;
    let _ = tokio::time::timeout_at(deadline, server).await;
    stop.cancel();
    background.close();
    let _ = tokio::time::timeout_at(deadline, background.wait()).await;
    tracing::info!(
        elapsed_ms = signalled.elapsed().as_millis() as u64,
        "stopped"
    );
    Ok(())
}

/// SIGTERM (systemd, the load balancer's instance replacement) and SIGINT (a terminal).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// The Redis URL without its password, for logs.
fn redacted(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***{}", &url[at..]),
        _ => url.to_owned(),
    }
}
