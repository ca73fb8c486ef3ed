//! What the drills measure: two chat clients through the stack's URL, as users would be,
//! that keep going whatever happens to an instance. The sender sends a message every
//! 200 ms and keeps each until it is acknowledged (sending it again, with its client id,
//! after a reconnect); the listener, on another instance, records every delivery. Both
//! reconnect with `since` the moment their connection ends, by a drain's 1012 or a cut.
//! Afterwards: the longest gap between two deliveries, and the acknowledged messages the
//! listener never got (there must be none).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::SinkExt;
use serde_json::json;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::canary::{Endpoint, Socket, connect, next};

/// The room the drills talk in.
pub const ROOM: &str = "realtime-stack-drill";
const EVERY: Duration = Duration::from_millis(200);
/// How long a connection may take to come back before the drill gives up.
const RECONNECT_WITHIN: Duration = Duration::from_secs(60);

/// What the clients saw.
#[derive(Debug, Default)]
struct Seen {
    /// Client id → stream id, for every acknowledged message.
    acknowledged: BTreeMap<String, String>,
    /// Sent and not acknowledged yet: client id → text.
    pending: BTreeMap<String, String>,
    /// The listener's deliveries: stream id and when.
    delivered: Vec<(String, Instant)>,
    reconnects: usize,
    /// The instances each client was on, in order.
    sender_on: Vec<String>,
    listener_on: Vec<String>,
    failure: Option<String>,
}

/// The figures of a drill, as it reports them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Figures {
    pub acknowledged: usize,
    /// Acknowledged messages the listener never got.
    pub lost: Vec<String>,
    /// The longest time between two deliveries to the listener, in ms.
    pub longest_gap_ms: u64,
    pub reconnects: usize,
}

/// The two clients, running until [`Clients::finish`].
pub struct Clients {
    seen: Arc<Mutex<Seen>>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Clients {
    /// Connects the sender and, on another instance, the listener, and starts them.
    pub async fn start(endpoint: &Endpoint) -> Result<Clients> {
        let query = format!("room={ROOM}");
        let (sender, sender_on) = connect(endpoint, &query).await?;
        let mut listener = None;
        for _ in 0..30 {
            let (socket, instance) = connect(endpoint, &query).await?;
            if instance != sender_on {
                listener = Some((socket, instance));
                break;
            }
        }
        let Some((mut listener, listener_on)) = listener else {
            bail!("every connection reached {sender_on}: the drill needs two instances serving");
        };
        // A first message both have: what the listener asks for everything after when it
        // reconnects.
        let mut sender = sender;
        let frame =
            json!({"type": "send", "name": "drill", "text": "drill starts", "cid": "drill-0"});
        sender.send(Message::text(frame.to_string())).await?;
        let first = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let frame = next(&mut listener).await?;
                if frame["type"] == "message" {
                    return Ok::<_, anyhow::Error>(
                        frame["id"].as_str().unwrap_or_default().to_owned(),
                    );
                }
            }
        })
        .await
        .map_err(|_| {
            anyhow::anyhow!("the drill's first message did not cross instances within 10 s")
        })??;
        let seen = Arc::new(Mutex::new(Seen {
            delivered: vec![(first, Instant::now())],
            sender_on: vec![sender_on],
            listener_on: vec![listener_on],
            ..Seen::default()
        }));
        let (stop, stopped) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(send(
                endpoint.clone(),
                sender,
                seen.clone(),
                stopped.clone(),
            )),
            tokio::spawn(listen(endpoint.clone(), listener, seen.clone(), stopped)),
        ];
        Ok(Clients { seen, stop, tasks })
    }

    /// The instance the listener is on now.
    pub fn listener_on(&self) -> String {
        let seen = self.seen.lock().expect("seen");
        seen.listener_on.last().cloned().unwrap_or_default()
    }

    /// Stops sending, waits (up to `settle`) until every acknowledged message reached the
    /// listener, and says what happened.
    pub async fn finish(self, settle: Duration) -> Result<Figures> {
        let stopping = Instant::now();
        self.stop.send_replace(true);
        loop {
            let done = {
                let seen = self.seen.lock().expect("seen");
                if let Some(failure) = &seen.failure {
                    bail!("{failure}");
                }
                let delivered: Vec<&String> = seen.delivered.iter().map(|(id, _)| id).collect();
                seen.pending.is_empty()
                    && seen.acknowledged.values().all(|id| delivered.contains(&id))
            };
            if done || stopping.elapsed() > settle {
                break;
            }
            tokio::time::sleep(EVERY).await;
        }
        for task in self.tasks {
            task.abort();
        }
        let seen = self.seen.lock().expect("seen");
        let delivered: Vec<&String> = seen.delivered.iter().map(|(id, _)| id).collect();
        let lost = seen
            .acknowledged
            .values()
            .filter(|id| !delivered.contains(id))
            .cloned()
            .collect();
        let longest = seen
            .delivered
            .windows(2)
            .map(|pair| pair[1].1 - pair[0].1)
            .max()
            .unwrap_or_default();
        Ok(Figures {
            acknowledged: seen.acknowledged.len(),
            lost,
            longest_gap_ms: u64::try_from(longest.as_millis()).unwrap_or(u64::MAX),
            reconnects: seen.reconnects,
        })
    }
}

/// A new connection after one ended: with `since`, retried until it is back.
async fn reconnect(endpoint: &Endpoint, since: Option<&str>) -> Result<(Socket, String)> {
    let query = match since {
        Some(id) => format!("room={ROOM}&since={id}"),
        None => format!("room={ROOM}"),
    };
    let started = Instant::now();
    loop {
        match connect(endpoint, &query).await {
            Ok(connected) => return Ok(connected),
            Err(err) if started.elapsed() > RECONNECT_WITHIN => {
                return Err(err.context("the drill's client could not reconnect"));
            }
            Err(_) => tokio::time::sleep(EVERY).await,
        }
    }
}

fn fail(seen: &Mutex<Seen>, failure: String) {
    seen.lock().expect("seen").failure.get_or_insert(failure);
}

async fn send(
    endpoint: Endpoint,
    mut socket: Socket,
    seen: Arc<Mutex<Seen>>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(EVERY);
    let mut sent = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick(), if !*stopped.borrow() => {
                sent += 1;
                let (cid, text) = (format!("drill-{sent}"), format!("drill message {sent}"));
                seen.lock().expect("seen").pending.insert(cid.clone(), text.clone());
                let frame = json!({"type": "send", "name": "drill", "text": text, "cid": cid});
                let _ = socket.send(Message::text(frame.to_string())).await;
            }
            _ = stopped.changed() => {}
            frame = next(&mut socket) => match frame {
                Ok(frame) if frame["type"] == "ack" => {
                    let cid = frame["cid"].as_str().unwrap_or_default().to_owned();
                    let id = frame["id"].as_str().unwrap_or_default().to_owned();
                    let mut seen = seen.lock().expect("seen");
                    seen.pending.remove(&cid);
                    seen.acknowledged.insert(cid, id);
                }
                Ok(_) => {}
                Err(_) => {
                    let reconnected = reconnect(&endpoint, None).await;
                    match reconnected {
                        Ok((again, instance)) => {
                            socket = again;
                            let pending: Vec<(String, String)> = {
                                let mut seen = seen.lock().expect("seen");
                                seen.reconnects += 1;
                                seen.sender_on.push(instance);
                                seen.pending.clone().into_iter().collect()
                            };
                            // Sent again with their client ids: stored once.
                            for (cid, text) in pending {
                                let frame = json!({"type": "send", "name": "drill", "text": text, "cid": cid});
                                let _ = socket.send(Message::text(frame.to_string())).await;
                            }
                        }
                        Err(err) => return fail(&seen, format!("{err:#}")),
                    }
                }
            },
        }
    }
}

async fn listen(
    endpoint: Endpoint,
    mut socket: Socket,
    seen: Arc<Mutex<Seen>>,
    _stopped: watch::Receiver<bool>,
) {
    loop {
        match next(&mut socket).await {
            Ok(frame) if frame["type"] == "message" => {
                let id = frame["id"].as_str().unwrap_or_default().to_owned();
                seen.lock()
                    .expect("seen")
                    .delivered
                    .push((id, Instant::now()));
            }
            Ok(_) => {}
            Err(_) => {
                let since = {
                    let seen = seen.lock().expect("seen");
                    seen.delivered.last().map(|(id, _)| id.clone())
                };
                match reconnect(&endpoint, since.as_deref()).await {
                    Ok((again, instance)) => {
                        socket = again;
                        let mut seen = seen.lock().expect("seen");
                        seen.reconnects += 1;
                        seen.listener_on.push(instance);
                    }
                    Err(err) => return fail(&seen, format!("{err:#}")),
                }
            }
        }
    }
}
