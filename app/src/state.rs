//! What every request handler and connection shares: the hub, the store, presence, the
//! limits and settings of a connection, and the shutdown's signals. Built once by
//! `main`, handed to axum as `State<Arc<AppState>>`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::{api, auth, drain, limits, moderation, presence};

/// What every request handler and connection shares.
pub struct AppState {
    pub instance: String,
    pub allowed_origins: Vec<String>,
    pub hub: Arc<Hub>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// Spreads the 1012 closes over the drain.
    pub drain: drain::Drain,
    /// Cancelled at the end of the drain's close window.
    pub close: CancellationToken,
    /// Tracks connection tasks so shutdown can wait for their close frames.
    pub tracker: TaskTracker,
    pub write_timeout: Duration,
    pub ping_interval: Duration,
    pub peer_timeout: Duration,
    pub rate_per_sec: f64,
    pub rate_burst: f64,
    pub trusted_proxies: Vec<limits::Cidr>,
    pub client_limits: Arc<limits::ClientLimits>,
    /// Verifies sign-in tokens; `None`: the server is open.
    pub auth: Option<auth::Verifier>,
    /// Where the page fetches tokens, when the operator has an endpoint for it.
    pub auth_token_url: Option<String>,
    pub presence: Arc<presence::Presence>,
    /// Rooms one connection may be in at once.
    pub max_rooms: usize,
    /// The connections of each signed-in user here, for the server API's disconnects.
    pub moderation: Arc<moderation::Moderation>,
    /// The server API's request budget per caller.
    pub api_budget: api::Budget,
}
