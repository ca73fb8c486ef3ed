//! The proof that a deploy is invisible to chat clients. `realtime-stack up --local`
//! runs a stack while real WebSocket clients, connected through the local load
//! balancer's one URL and spread over the instances, keep sending at a steady pace
//! (each message with a `cid`, checked by its `ack`); then `up --local` runs again,
//! with a new build of the chat-server (every instance replaced) or a lower count (an
//! instance removed), while they keep sending.
//!
//! Asserted for both: no client ever met an HTTP error, a refused connection, an error
//! frame or a close other than the drain's 1012; each 1012 was followed by a reconnect
//! with `since` (and the room's epoch) to another instance, whose `hello` says
//! `recovered`; and every message acknowledged was delivered to every client exactly
//! once, in increasing id order. For
//! the new build, every instance is new and runs it (the binary SHA-256 tag, read from
//! LocalStack); for the lower count, only the removed instance's clients were closed.
//! Each prints messages sent, deliveries, reconnects and each client's longest wait
//! between two deliveries.
//!
//! Needs what `up --local` needs (redis-server, openssl...: it fails naming them), a
//! LocalStack (`scripts/localstack.sh start`) and the workspace's chat-server build.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use realtime_stack::artifact::sha256_hex;
use serde_json::{Value, json};
use support::{DestroyLocal, TestStack, instance_ids, poll_until};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// Clients kept connected through the load balancer.
const CLIENTS: usize = 10;
/// Each client's pace: 2 messages a second, well under the server's 5 a second.
const SEND_EVERY: Duration = Duration::from_millis(500);
/// The drain, short so that a roll is quick; the servers spread their closes over its
/// first 3 s (the rest is the margin before the load balancer would cut).
const DRAIN_SECONDS: u32 = 6;
/// Upper bound for a client's connection and for the last messages to arrive.
const WAIT: Duration = Duration::from_secs(30);
const ROOM: &str = "deploy";

/// A stream id (`<ms>-<seq>`), ordered as Redis orders them.
type StreamId = (u64, u64);

fn stream_id(id: &str) -> Option<StreamId> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn show(id: StreamId) -> String {
    format!("{}-{}", id.0, id.1)
}

/// What the test asks of its clients.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Connected, not sending yet.
    Idle,
    Sending,
    /// No new messages; the unacknowledged ones are still sent until acknowledged.
    Settling,
    Quit,
}

/// What one client saw.
#[derive(Default)]
struct Record {
    /// The instance each `hello` named, the first connection's included.
    instances: Vec<String>,
    /// The `since` each connection asked for (none on the first).
    sinces: Vec<Option<StreamId>>,
    /// The room's epoch, from the first `hello`: a reconnect must find it unchanged.
    epoch: Option<String>,
    /// Messages sent and not acknowledged yet: (cid, text), sent again on a reconnect.
    pending: Vec<(String, String)>,
    /// cid -> the id it was stored as.
    acked: HashMap<String, StreamId>,
    /// Every message delivered, in order, with when it arrived.
    delivered: Vec<(StreamId, Instant)>,
    /// Drain closes (1012), each followed by a reconnect (else it is a failure).
    drain_closes: usize,
    /// What went wrong; a client stops at its first failure.
    failures: Vec<String>,
}

impl Record {
    fn last_delivered(&self) -> Option<StreamId> {
        self.delivered.last().map(|(id, _)| *id)
    }

    /// Takes in one text frame of the server's; Err for anything a client must never
    /// see during a deploy.
    fn take(&mut self, text: &str) -> Result<(), String> {
        let frame: Value = serde_json::from_str(text).map_err(|err| format!("{err}: {text}"))?;
        let id = || {
            frame["id"]
                .as_str()
                .and_then(stream_id)
                .ok_or_else(|| format!("no stream id in {frame}"))
        };
        match frame["type"].as_str() {
            Some("message") => self.delivered.push((id()?, Instant::now())),
            Some("ack") => {
                let cid = frame["cid"].as_str().unwrap_or_default().to_owned();
                let id = id()?;
                if let Some(earlier) = self.acked.insert(cid.clone(), id)
                    && earlier != id
                {
                    return Err(format!(
                        "{cid} acknowledged as {} and as {}",
                        show(earlier),
                        show(id)
                    ));
                }
                self.pending.retain(|(pending, _)| *pending != cid);
            }
            _ => return Err(format!("unexpected frame {frame}")),
        }
        Ok(())
    }
}

/// Sends `{"type":"send"}` with `cid`.
fn send_frame(name: &str, cid: &str, text: &str) -> Message {
    Message::text(json!({"type": "send", "name": name, "text": text, "cid": cid}).to_string())
}

/// One client: connects, sends every [`SEND_EVERY`] while the phase says so, and after
/// a 1012 reconnects at once with `since` (the last id it saw) and the room's epoch,
/// sending again what was not acknowledged. Stops at its first failure or at `Quit`.
async fn client(
    index: usize,
    ws_url: String,
    record: Arc<Mutex<Record>>,
    mut phase: watch::Receiver<Phase>,
) {
    let name = format!("c{index}");
    let fail = |failure: String| {
        record
            .lock()
            .unwrap()
            .failures
            .push(format!("client {index}: {failure}"))
    };
    let mut tick = tokio::time::interval(SEND_EVERY);
    // A tick missed while reconnecting is not made up for in a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = 0;
    loop {
        let (since, epoch) = {
            let record = record.lock().unwrap();
            (record.last_delivered(), record.epoch.clone())
        };
        let mut url = ws_url.clone();
        if let Some(since) = since {
            url.push_str(&format!("&since={}", show(since)));
            if let Some(epoch) = &epoch {
                url.push_str(&format!("&epoch={epoch}"));
            }
        }
        let mut ws = match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((ws, _)) => ws,
            Err(err) => return fail(format!("connecting to {url}: {err}")),
        };
        let hello: Value = match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                serde_json::from_str(text.as_str()).unwrap_or_default()
            }
            other => return fail(format!("no hello from {url}: {other:?}")),
        };
        let rejoin = since.is_some();
        if hello["type"] != "hello" || (rejoin && hello["recovered"] != true) {
            return fail(format!("{url} answered {hello}"));
        }
        let pending = {
            let mut record = record.lock().unwrap();
            record
                .instances
                .push(hello["instance"].as_str().unwrap_or_default().to_owned());
            record.sinces.push(since);
            if record.epoch.is_none() {
                record.epoch = hello["epoch"].as_str().map(str::to_owned);
            }
            record.pending.clone()
        };
        for (cid, text) in pending {
            // A send that fails shows as a close or an error on the read side.
            let _ = ws.send(send_frame(&name, &cid, &text)).await;
        }
        loop {
            let sending = *phase.borrow() == Phase::Sending;
            tokio::select! {
                _ = tick.tick(), if sending => {
                    // The phase is read again under the record's lock, under which
                    // `finish` looks for pending messages after it has left `Sending`:
                    // a message begun after that look would never be waited for, and the
                    // other clients would quit before it reached them.
                    let message = {
                        let mut record = record.lock().unwrap();
                        (*phase.borrow() == Phase::Sending).then(|| {
                            sent += 1;
                            let message = (format!("{name}-{sent}"), format!("message {sent} of {name}"));
                            record.pending.push(message.clone());
                            message
                        })
                    };
                    if let Some((cid, text)) = message {
                        let _ = ws.send(send_frame(&name, &cid, &text)).await;
                    }
                }
                changed = phase.changed() => {
                    let now = *phase.borrow();
                    if changed.is_err() || now == Phase::Quit {
                        let _ = ws.close(None).await;
                        return;
                    }
                    if now == Phase::Sending {
                        // The clients' sends spread evenly over the period: messages
                        // arrive every few tens of ms, so a gap in delivery shows.
                        let offset = SEND_EVERY.mul_f64(index as f64 / CLIENTS as f64);
                        tick.reset_at(tokio::time::Instant::now() + offset);
                    }
                }
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        let taken = record.lock().unwrap().take(text.as_str());
                        if let Err(failure) = taken {
                            return fail(failure);
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let code = frame.as_ref().map(|frame| u16::from(frame.code));
                        if code != Some(1012) {
                            return fail(format!("closed with {frame:?}"));
                        }
                        record.lock().unwrap().drain_closes += 1;
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(err)) => return fail(format!("the connection broke: {err}")),
                    None => return fail("the connection ended without a close frame".into()),
                },
            }
        }
    }
}

/// The clients of one test, and how to steer them.
struct Clients {
    records: Vec<Arc<Mutex<Record>>>,
    phase: watch::Sender<Phase>,
    tasks: Vec<JoinHandle<()>>,
}

impl Clients {
    /// [`CLIENTS`] clients of `url`'s room, connected one after the other so that the
    /// load balancer's round robin spreads them over the instances. The room gets a
    /// first message before, so that every `hello` carries its epoch.
    async fn connect(url: &str) -> Clients {
        let ws_url = format!("{}ws?room={ROOM}", url.replacen("http://", "ws://", 1));
        let (mut first, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .unwrap_or_else(|err| panic!("connecting to {ws_url}: {err}"));
        first
            .send(send_frame("setup", "setup", "the room's first message"))
            .await
            .expect("sending the room's first message");
        let acked = async {
            while let Some(Ok(frame)) = first.next().await {
                if frame
                    .to_text()
                    .is_ok_and(|text| text.contains(r#""type":"ack""#))
                {
                    return true;
                }
            }
            false
        };
        assert!(
            tokio::time::timeout(WAIT, acked).await == Ok(true),
            "the room's first message was not acknowledged within {WAIT:?}"
        );
        let _ = first.close(None).await;

        let (phase, _) = watch::channel(Phase::Idle);
        let mut clients = Clients {
            records: Vec::new(),
            phase,
            tasks: Vec::new(),
        };
        for index in 0..CLIENTS {
            let record = Arc::new(Mutex::new(Record::default()));
            let task = client(
                index,
                ws_url.clone(),
                record.clone(),
                clients.phase.subscribe(),
            );
            clients.tasks.push(tokio::spawn(task));
            clients.records.push(record.clone());
            poll_until(WAIT, &format!("client {index}'s hello"), || {
                let record = record.clone();
                async move {
                    let record = record.lock().unwrap();
                    assert!(record.failures.is_empty(), "{:?}", record.failures);
                    (!record.instances.is_empty()).then_some(())
                }
            })
            .await;
        }
        clients
    }

    fn set(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }

    /// The instance each client is connected to now.
    fn instances(&self) -> Vec<String> {
        self.records
            .iter()
            .map(|record| record.lock().unwrap().instances.last().cloned())
            .map(Option::unwrap_or_default)
            .collect()
    }

    /// Waits until each client has had 3 more messages acknowledged, or fails with what
    /// went wrong.
    async fn wait_sending(&self) {
        let counts: Vec<usize> = self
            .records
            .iter()
            .map(|record| record.lock().unwrap().acked.len())
            .collect();
        poll_until(WAIT, "every client to send 3 more messages", || {
            std::future::ready(
                self.settled(|index, record| record.acked.len() >= counts[index] + 3),
            )
        })
        .await;
    }

    /// Some(()) once `done(index, record)` holds for every client; panics at the first
    /// failure.
    fn settled(&self, done: impl Fn(usize, &Record) -> bool) -> Option<()> {
        let records: Vec<_> = self.records.iter().map(|r| r.lock().unwrap()).collect();
        let failures: Vec<&String> = records.iter().flat_map(|r| &r.failures).collect();
        assert!(failures.is_empty(), "the clients failed: {failures:#?}");
        let mut records = records.iter().enumerate();
        records
            .all(|(index, record)| done(index, record))
            .then_some(())
    }

    /// Stops sending, waits until every message is acknowledged and delivered to every
    /// client, then disconnects them; returns what each saw.
    async fn finish(self) -> Vec<Record> {
        self.set(Phase::Settling);
        let everything = || -> BTreeSet<StreamId> {
            let records = self.records.iter().map(|r| r.lock().unwrap());
            records
                .flat_map(|r| r.acked.values().copied().collect::<Vec<_>>())
                .collect()
        };
        // Whatever is missing then never comes: assert_exactly_once names it.
        poll_until(
            WAIT,
            "every message acknowledged and delivered to all",
            || {
                let newest = everything().last().copied();
                std::future::ready(self.settled(|_, record| {
                    record.pending.is_empty() && record.last_delivered() >= newest
                }))
            },
        )
        .await;
        self.set(Phase::Quit);
        for task in self.tasks {
            task.await.expect("a client task panicked");
        }
        self.records
            .into_iter()
            .map(|record| {
                let record = Arc::try_unwrap(record).ok().expect("the client ended");
                record.into_inner().unwrap()
            })
            .collect()
    }
}

/// Asserts that every acknowledged message reached every client exactly once and in
/// order, and that no reconnect went back to the draining instance (the closes and
/// the recovery were checked by the clients as they happened); prints the figures.
fn assert_exactly_once(scenario: &str, records: &[Record]) {
    let acked: BTreeSet<StreamId> = records
        .iter()
        .flat_map(|record| record.acked.values().copied())
        .collect();
    for (index, record) in records.iter().enumerate() {
        let ids: Vec<StreamId> = record.delivered.iter().map(|(id, _)| *id).collect();
        if let Some(pair) = ids.windows(2).find(|pair| pair[0] >= pair[1]) {
            panic!(
                "client {index} got {} after {}: a duplicate or out of order",
                show(pair[1]),
                show(pair[0])
            );
        }
        assert!(
            record.instances.windows(2).all(|pair| pair[0] != pair[1]),
            "client {index} reconnected to the instance that had just closed it: {:?}",
            record.instances
        );
        let delivered: BTreeSet<StreamId> = ids.into_iter().collect();
        let missing: Vec<StreamId> = acked.difference(&delivered).copied().collect();
        let foreign: Vec<String> = delivered.difference(&acked).copied().map(show).collect();
        assert!(
            missing.is_empty() && foreign.is_empty(),
            "client {index}: {} acknowledged messages never delivered {:?}, {} delivered that \
             nobody had acknowledged {foreign:?}\n{}",
            missing.len(),
            missing.iter().copied().map(show).collect::<Vec<_>>(),
            foreign.len(),
            missing
                .iter()
                .map(|id| explain_missing(records, index, *id))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let deliveries: usize = records.iter().map(|record| record.delivered.len()).sum();
    let reconnects: usize = records.iter().map(|record| record.drain_closes).sum();
    let gaps: Vec<String> = records
        .iter()
        .map(|record| {
            let longest = record
                .delivered
                .windows(2)
                .map(|pair| pair[1].1 - pair[0].1)
                .max()
                .unwrap_or_default();
            format!("{:.2}", longest.as_secs_f64())
        })
        .collect();
    eprintln!(
        "{scenario}: {} messages sent, {deliveries} deliveries to {} clients, {reconnects} \
         reconnects (all after 1012, all recovered); longest gap without a delivery per \
         client (s): {}",
        acked.len(),
        records.len(),
        gaps.join(" ")
    );
}

/// What a failure needs to be told apart: who had message `id` acknowledged and who
/// received it, and client `index`'s connections (instance and `since`) and the ids it
/// received either side of `id`.
fn explain_missing(records: &[Record], index: usize, id: StreamId) -> String {
    let acked_by: Vec<String> = records
        .iter()
        .enumerate()
        .flat_map(|(client, record)| {
            record
                .acked
                .iter()
                .filter(move |(_, acked)| **acked == id)
                .map(move |(cid, _)| format!("client {client} ({cid})"))
        })
        .collect();
    let received_by: Vec<usize> = records
        .iter()
        .enumerate()
        .filter(|(_, record)| record.delivered.iter().any(|(got, _)| *got == id))
        .map(|(client, _)| client)
        .collect();
    let record = &records[index];
    let before = record.delivered.iter().rev().find(|(got, _)| *got < id);
    let after = record.delivered.iter().find(|(got, _)| *got > id);
    let connections: Vec<String> = record
        .instances
        .iter()
        .zip(&record.sinces)
        .map(|(instance, since)| format!("{instance} since {:?}", since.map(show)))
        .collect();
    format!(
        "{}: acknowledged to {acked_by:?}, received by clients {received_by:?}; client {index} \
         received {:?} before it and {:?} after, over the connections {connections:?}",
        show(id),
        before.map(|(got, _)| show(*got)),
        after.map(|(got, _)| show(*got)),
    )
}

/// A stack of `count` instances with a short drain, for `up --local`.
async fn local_stack(prefix: &str, count: u32) -> TestStack {
    let stack = TestStack::local(prefix, DRAIN_SECONDS, "").await;
    stack.edit("  count: 2\n", &format!("  count: {count}\n"));
    stack
}

/// `up --local`, printing how long it took.
async fn timed_up(stack: &TestStack, what: &str) -> Value {
    let started = Instant::now();
    let outputs = stack.up_local().await;
    eprintln!("{what} took {:.1}s", started.elapsed().as_secs_f64());
    outputs
}

/// Clients of the stack's URL, on every one of its instances; returns the instances, the
/// clients, and the instance each client is on.
async fn connect_everywhere(outputs: &Value) -> (Vec<String>, Clients, Vec<String>) {
    let instances = instance_ids(outputs);
    let clients = Clients::connect(outputs["url"].as_str().expect("url")).await;
    let on = clients.instances();
    assert!(
        instances.iter().all(|id| on.contains(id)),
        "the clients are on every instance of {instances:?}: {on:?}"
    );
    (instances, clients, on)
}

/// `up --local` while the clients send, once they are under way.
async fn up_under_load(stack: &TestStack, clients: &Clients) -> Vec<String> {
    clients.set(Phase::Sending);
    clients.wait_sending().await;
    let after = instance_ids(&timed_up(stack, "up --local under load").await);
    // Messages sent after the deploy too: the new instances deliver them.
    clients.wait_sending().await;
    after
}

fn assert_gone(state: &str, id: &str) {
    assert!(
        matches!(state, "terminated" | "shutting-down"),
        "{id} is {state}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_build_rolls_out_under_live_clients_and_loses_nothing() {
    let started = Instant::now();
    let stack = local_stack("roll", 2).await;
    // Before the first `up`: whatever it started is stopped, whatever happens.
    let _destroy = DestroyLocal(&stack);
    let outputs = timed_up(&stack, "the first up --local").await;
    let (before, clients, _) = connect_everywhere(&outputs).await;

    let rebuilt = stack.rebuild();
    let after = up_under_load(&stack, &clients).await;
    let records = clients.finish().await;

    assert_eq!(after.len(), 2);
    assert!(
        after.iter().all(|id| !before.contains(id)),
        "every instance replaced: {before:?} -> {after:?}"
    );
    let aws = support::localstack().await;
    let ec2 = aws_sdk_ec2::Client::new(&aws);
    let sha = sha256_hex(&rebuilt);
    for id in &after {
        assert_eq!(
            support::state_and_binary(&ec2, id).await,
            ("running".to_owned(), Some(sha.clone())),
            "{id} runs the new build"
        );
    }
    for id in &before {
        assert_gone(&support::state_and_binary(&ec2, id).await.0, id);
    }
    for (index, record) in records.iter().enumerate() {
        assert!(
            record.drain_closes > 0 && after.contains(record.instances.last().unwrap()),
            "client {index} was moved by the drain to a new instance: {:?}",
            record.instances
        );
    }
    assert_exactly_once("new build", &records);
    eprintln!("wall time {:.1}s", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_count_drains_the_removed_instance_and_loses_nothing() {
    let started = Instant::now();
    let stack = local_stack("down", 3).await;
    // Before the first `up`: whatever it started is stopped, whatever happens.
    let _destroy = DestroyLocal(&stack);
    let outputs = timed_up(&stack, "the first up --local").await;
    let (before, clients, on) = connect_everywhere(&outputs).await;

    stack.edit("  count: 3\n", "  count: 2\n");
    let after = up_under_load(&stack, &clients).await;
    let records = clients.finish().await;

    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|id| before.contains(id)), "{after:?}");
    let removed = before.iter().find(|id| !after.contains(id)).unwrap();
    let aws = support::localstack().await;
    let ec2 = aws_sdk_ec2::Client::new(&aws);
    assert_gone(&support::state_and_binary(&ec2, removed).await.0, removed);
    for (index, record) in records.iter().enumerate() {
        let was_on_removed = on[index] == *removed;
        assert_eq!(
            record.drain_closes > 0,
            was_on_removed,
            "client {index} (on {}) closed {} times: only the removed {removed}'s clients are",
            on[index],
            record.drain_closes
        );
        assert!(after.contains(record.instances.last().unwrap()));
    }
    assert_exactly_once("count 3 -> 2", &records);
    eprintln!("wall time {:.1}s", started.elapsed().as_secs_f64());
}
