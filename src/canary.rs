//! The canary: the service proven from the outside, the way its users reach it. Two
//! WebSocket connections through the stack's URL, landing on two different instances
//! (the load balancer spreads new connections, so it takes a few tries at most); a
//! message sent on one must arrive on the other, which proves the load balancer, both
//! chat servers and the fan-out through Redis at once. `up` ends with it and `status
//! --check` runs it.
//!
//! On AWS the connections go to the load balancer's own DNS name with the domain as the
//! TLS server name and Host, so that a resolver's negative cache of the new alias record
//! does not matter; the certificate is checked against the system's roots.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

/// Where the chat is reached from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The WebSocket URL, `wss://<domain>/ws` or `ws://127.0.0.1:<port>/ws`.
    pub url: String,
    /// Where to connect instead of the URL's host (the load balancer's DNS name, 443).
    pub connect: Option<(String, u16)>,
    /// The CIDRs the load balancer admits, when they may not include this machine.
    pub allowed: Option<Vec<String>>,
}

/// How the canary went.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// A message crossed from one instance to another, taking `millis`.
    Verified {
        millis: u64,
        from: String,
        to: String,
    },
    /// One instance only: it answered its own message.
    Answered { millis: u64, instance: String },
    /// Not run, with why.
    Skipped { why: String },
    /// This machine could not connect, and the load balancer may not admit it.
    Unreachable { why: String },
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Verified { millis, from, to } => {
                write!(
                    f,
                    "chat crosses instances: verified ({millis} ms, {from} → {to})"
                )
            }
            Outcome::Answered { millis, instance } => write!(
                f,
                "chat answers: verified on the only instance, {instance} ({millis} ms)"
            ),
            Outcome::Skipped { why } => write!(f, "canary skipped: {why}"),
            Outcome::Unreachable { why } => write!(f, "canary not run: {why}"),
        }
    }
}

/// The room the canary talks in: one for every run, its history bounded like any room's
/// (each run's message is told apart by its text).
pub const ROOM: &str = "realtime-stack-canary";

/// How long the canary may take in all, and a message to cross.
const WITHIN: Duration = Duration::from_secs(60);
const CROSSING: Duration = Duration::from_secs(10);
/// Connections tried to reach a second instance.
const ATTEMPTS: usize = 30;

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Runs the canary against `endpoint`, which serves `instances` instances.
pub async fn run(endpoint: &Endpoint, instances: usize) -> Result<Outcome> {
    let started = Instant::now();
    let room = format!("room={ROOM}");
    let (mut first, from) = match connect(endpoint, &room).await {
        Ok(connected) => connected,
        Err(err) => {
            return match &endpoint.allowed {
                Some(cidrs) => Ok(Outcome::Unreachable {
                    why: format!(
                        "this machine could not connect ({err:#}), and the load balancer \
                         admits only {} (network.allowed_cidrs); run `realtime-stack status \
                         --check` from an admitted address",
                        cidrs.join(", ")
                    ),
                }),
                None => Err(err.context("the canary could not connect through the stack's URL")),
            };
        }
    };
    let text = format!("canary {:x}", rand_suffix());
    if instances < 2 {
        let sent = Instant::now();
        send(&mut first, &text).await?;
        arrives(&mut first, &text).await.with_context(|| {
            format!("the canary's message to {from} did not come back within {CROSSING:?}")
        })?;
        return Ok(Outcome::Answered {
            millis: millis(sent.elapsed()),
            instance: from,
        });
    }
    let mut second = None;
    for _ in 0..ATTEMPTS {
        let (socket, instance) = connect(endpoint, &room).await?;
        if instance != from {
            second = Some((socket, instance));
            break;
        }
        if started.elapsed() > WITHIN {
            break;
        }
    }
    let Some((mut second, to)) = second else {
        bail!(
            "the canary's {ATTEMPTS} connections all reached {from}: the load balancer sends \
             nothing to the other instances, though they are healthy in the target group"
        );
    };
    let sent = Instant::now();
    send(&mut first, &text).await?;
    arrives(&mut second, &text).await.with_context(|| {
        format!(
            "a message sent on {from} did not arrive on {to} within {CROSSING:?}: the fan-out \
             between instances through Redis does not work (`realtime-stack logs --boot` shows \
             each instance's Redis endpoint)"
        )
    })?;
    Ok(Outcome::Verified {
        millis: millis(sent.elapsed()),
        from,
        to,
    })
}

fn millis(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

/// A connection with `query` (`room=...`) and the instance its `hello` names.
pub(crate) async fn connect(endpoint: &Endpoint, query: &str) -> Result<(Socket, String)> {
    let url = format!("{}?{query}", endpoint.url);
    let connecting = async {
        let (mut socket, _) = match &endpoint.connect {
            Some((host, port)) => {
                let stream = TcpStream::connect((host.as_str(), *port))
                    .await
                    .with_context(|| format!("connecting to {host}:{port}"))?;
                tokio_tungstenite::client_async_tls_with_config(
                    url.as_str(),
                    stream,
                    None,
                    Some(tls()?),
                )
                .await
                .with_context(|| format!("opening {url} through {host}"))?
            }
            None => tokio_tungstenite::connect_async(url.as_str())
                .await
                .with_context(|| format!("opening {url}"))?,
        };
        let hello = next(&mut socket).await?;
        anyhow::ensure!(hello["type"] == "hello", "{url} answered {hello} first");
        let instance = hello["instance"].as_str().unwrap_or_default().to_owned();
        Ok::<_, anyhow::Error>((socket, instance))
    };
    tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .with_context(|| format!("no answer from {url} within 10 s"))?
}

/// TLS checked against the system's roots.
fn tls() -> Result<Connector> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS settings")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Connector::Rustls(Arc::new(config)))
}

pub(crate) async fn next(socket: &mut Socket) -> Result<Value> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(text.as_str())?),
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(err.into()),
            None => bail!("the connection closed"),
        }
    }
}

async fn send(socket: &mut Socket, text: &str) -> Result<()> {
    let frame = json!({"type": "send", "name": "realtime-stack canary", "text": text});
    socket.send(Message::text(frame.to_string())).await?;
    Ok(())
}

/// Waits until a message with `text` arrives on `socket`.
async fn arrives(socket: &mut Socket, text: &str) -> Result<()> {
    let waiting = async {
        loop {
            let frame = next(socket).await?;
            if frame["type"] == "message" && frame["text"] == text {
                return Ok::<_, anyhow::Error>(());
            }
            if frame["type"] == "error" {
                bail!("the chat server answered {frame}");
            }
        }
    };
    tokio::time::timeout(CROSSING, waiting)
        .await
        .context("it did not arrive")?
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::net::TcpListener;

    use super::*;

    /// A chat in miniature on a loopback port: each connection is greeted by instance
    /// `i-<n % instances>`; a `send` is acknowledged, and delivered back to its sender only
    /// (no fan-out between instances) unless `relay`, when every connection gets it.
    async fn fake_chat(instances: usize, relay: bool) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (deliver, _) = tokio::sync::broadcast::channel::<String>(16);
        let count = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::Relaxed);
                let deliver = deliver.clone();
                tokio::spawn(async move {
                    let mut socket = tokio_tungstenite::accept_async(stream).await.unwrap();
                    let hello =
                        json!({"type": "hello", "instance": format!("i-{}", n % instances)});
                    socket.send(Message::text(hello.to_string())).await.unwrap();
                    let mut relayed = deliver.subscribe();
                    loop {
                        tokio::select! {
                            frame = socket.next() => {
                                let Some(Ok(Message::Text(text))) = frame else { return };
                                let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                                let message = json!({"type": "message", "text": frame["text"]});
                                if relay {
                                    let _ = deliver.send(message.to_string());
                                } else {
                                    let _ = socket.send(Message::text(message.to_string())).await;
                                }
                            }
                            Ok(message) = relayed.recv() => {
                                let _ = socket.send(Message::text(message)).await;
                            }
                        }
                    }
                });
            }
        });
        Endpoint {
            url: format!("ws://127.0.0.1:{port}/ws"),
            connect: None,
            allowed: None,
        }
    }

    #[tokio::test]
    async fn a_message_crosses_from_one_instance_to_another() {
        let outcome = run(&fake_chat(2, true).await, 2).await.unwrap();
        let Outcome::Verified { from, to, .. } = &outcome else {
            panic!("{outcome:?}");
        };
        assert_ne!(from, to);
        assert!(
            outcome
                .to_string()
                .starts_with("chat crosses instances: verified (")
        );
    }

    #[tokio::test]
    async fn no_fan_out_between_instances_fails_saying_so() {
        let err = run(&fake_chat(2, false).await, 2).await.unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("did not arrive on i-1"), "{message}");
        assert!(message.contains("through Redis"), "{message}");
    }

    #[tokio::test]
    async fn a_load_balancer_that_sends_everything_to_one_instance_fails_saying_so() {
        let err = run(&fake_chat(1, true).await, 2).await.unwrap_err();
        assert!(format!("{err:#}").contains("all reached i-0"), "{err:#}");
    }

    /// network.allowed_cidrs may leave this machine out: the canary says so rather than
    /// failing a deploy that is healthy.
    #[tokio::test]
    async fn an_address_the_load_balancer_may_refuse_is_reported_not_failed() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let endpoint = Endpoint {
            url: format!("ws://127.0.0.1:{port}/ws"),
            connect: None,
            allowed: Some(vec!["203.0.113.0/24".to_owned()]),
        };
        let outcome = run(&endpoint, 2).await.unwrap();
        assert!(
            matches!(&outcome, Outcome::Unreachable { why } if why.contains("203.0.113.0/24")),
            "{outcome:?}"
        );
        let everyone = Endpoint {
            allowed: None,
            ..endpoint
        };
        assert!(run(&everyone, 2).await.is_err(), "admitted: a failure");
    }
}
