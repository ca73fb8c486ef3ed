//! The local stand-in for the Application Load Balancer: one loopback port that forwards
//! HTTP requests and WebSocket upgrades to the target group's targets, as the ALB does.
//! New connections go to healthy targets only (to every registered one when none is
//! healthy: the ALB fails open); a deregistered target gets no new connection while its
//! open ones carry on for the deregistration delay, after which they are cut. Each request
//! gets `X-Forwarded-For`, `-Proto` and `-Port`, the ALB's headers.
//!
//! Forwarding is hyper's client; an upgrade is hyper's upgrade on both sides, spliced
//! with `copy_bidirectional`, so WebSocket frames pass through untouched.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::Result;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;

/// One target as the load balancer routes to it.
struct Target {
    addr: SocketAddr,
    healthy: bool,
    draining: bool,
    /// Set once the deregistration delay is over: its open connections end.
    cut: watch::Sender<bool>,
}

/// The targets the proxy routes to, kept up to date by whoever follows the target group.
#[derive(Default)]
pub struct Targets {
    targets: RwLock<BTreeMap<String, Target>>,
    next: AtomicUsize,
}

impl Targets {
    /// Records a registered target at `addr` and whether it passes its health checks.
    pub fn set(&self, id: &str, addr: SocketAddr, healthy: bool) {
        let mut targets = self.targets.write().expect("targets lock");
        match targets.get_mut(id) {
            Some(target) => {
                target.addr = addr;
                target.healthy = healthy;
                target.draining = false;
            }
            None => {
                targets.insert(
                    id.to_owned(),
                    Target {
                        addr,
                        healthy,
                        draining: false,
                        cut: watch::channel(false).0,
                    },
                );
            }
        }
    }

    /// Stops sending new connections to `id`; its open ones go on.
    pub fn drain(&self, id: &str) {
        if let Some(target) = self.targets.write().expect("targets lock").get_mut(id) {
            target.draining = true;
        }
    }

    /// Ends the open connections of `id` and forgets it.
    pub fn cut(&self, id: &str) {
        if let Some(target) = self.targets.write().expect("targets lock").remove(id) {
            target.cut.send_replace(true);
        }
    }

    /// A target for a new connection, round robin over the healthy ones, and the signal
    /// that ends its connections.
    fn pick(&self) -> Option<(SocketAddr, watch::Receiver<bool>)> {
        let targets = self.targets.read().expect("targets lock");
        let routable: Vec<&Target> = targets.values().filter(|t| !t.draining).collect();
        let healthy: Vec<&Target> = routable.iter().copied().filter(|t| t.healthy).collect();
        let pool = if healthy.is_empty() {
            routable
        } else {
            healthy
        };
        if pool.is_empty() {
            return None;
        }
        let target = pool[self.next.fetch_add(1, Ordering::Relaxed) % pool.len()];
        Some((target.addr, target.cut.subscribe()))
    }
}

#[derive(Clone)]
struct Proxy {
    targets: Arc<Targets>,
    client: Client<HttpConnector, Body>,
    port: u16,
}

/// Serves the load balancer on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, targets: Arc<Targets>) -> Result<()> {
    // Nagle's algorithm off on both sides, as on the chat server: a chat's small frames
    // must not wait for the previous one's delayed acknowledgement.
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let proxy = Proxy {
        targets,
        client: Client::builder(TokioExecutor::new()).build(connector),
        port: listener.local_addr()?.port(),
    };
    let app = axum::Router::new().fallback(forward).with_state(proxy);
    // A socket that refused it would keep Nagle's algorithm: slower, not wrong.
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

/// Headers that belong to one hop, not to the request (RFC 9110, 7.6.1); kept on an
/// upgrade, which needs `Connection` and `Upgrade` to reach the target.
const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
];

async fn forward(
    State(proxy): State<Proxy>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
) -> Response {
    let Some((addr, mut cut)) = proxy.targets.pick() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no registered target\n").into_response();
    };
    let path = request
        .uri()
        .path_and_query()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    let Ok(uri) = format!("http://{addr}{path}").parse() else {
        return (StatusCode::BAD_REQUEST, "unusable request target\n").into_response();
    };
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    let forwarded_for = match headers
        .get("x-forwarded-for")
        .and_then(|value| value.to_str().ok())
    {
        Some(earlier) => format!("{earlier}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", value);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    headers.insert("x-forwarded-port", HeaderValue::from(proxy.port));
    let upgrading = headers.contains_key(header::UPGRADE);
    if !upgrading {
        for name in &HOP_BY_HOP {
            headers.remove(name);
        }
    }
    let client_side = upgrading.then(|| hyper::upgrade::on(&mut request));
    let mut response = match proxy.client.request(request).await {
        Ok(response) => response,
        Err(_) => return (StatusCode::BAD_GATEWAY, "the target did not answer\n").into_response(),
    };
    if let (Some(client_side), StatusCode::SWITCHING_PROTOCOLS) = (client_side, response.status()) {
        let target_side = hyper::upgrade::on(&mut response);
        // The client's side completes only once this 101 has gone out: splice in a task.
        tokio::spawn(async move {
            let (Ok(client), Ok(target)) = tokio::join!(client_side, target_side) else {
                return;
            };
            let (mut client, mut target) = (TokioIo::new(client), TokioIo::new(target));
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut target) => {}
                _ = cut.wait_for(|cut| *cut) => {}
            }
        });
    }
    response.map(Body::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn new_connections_go_round_robin_to_healthy_targets_and_never_to_draining_ones() {
        let targets = Targets::default();
        targets.set("i-1", addr(1), true);
        targets.set("i-2", addr(2), true);
        targets.set("i-3", addr(3), false);
        let picks: Vec<u16> = (0..4).map(|_| targets.pick().unwrap().0.port()).collect();
        assert_eq!(picks, [1, 2, 1, 2]);
        targets.drain("i-1");
        assert!((0..4).all(|_| targets.pick().unwrap().0.port() == 2));
        targets.cut("i-2");
        // No healthy target left: the unhealthy registered one is used (fail open).
        assert_eq!(targets.pick().unwrap().0.port(), 3);
        targets.cut("i-3");
        targets.cut("i-1");
        assert!(targets.pick().is_none());
    }

    #[test]
    fn cutting_a_target_ends_its_connections() {
        let targets = Targets::default();
        targets.set("i-1", addr(1), true);
        let (_, mut cut) = targets.pick().unwrap();
        assert!(!*cut.borrow_and_update());
        targets.drain("i-1");
        assert!(!*cut.borrow_and_update(), "draining keeps them");
        targets.cut("i-1");
        assert!(*cut.borrow_and_update());
    }
}
