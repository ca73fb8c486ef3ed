//! The least a chat relay over Redis pub/sub does per message, as a floor to measure
//! chat-server against: it reads a client's `send` frame, PUBLISHes it to the room's
//! channel, and writes each push to the room's connections on this instance, with a task
//! per connection. No history, sign-in, presence, limits or reconnects: a baseline for
//! `scripts/bench-chat.sh`, not a server to run (BENCHMARKS.md, stop 31).
//!
//! ```sh
//! cargo build --release -p chat-server --example floor-relay --target x86_64-unknown-linux-musl
//! CHAT_SERVER=<target>/x86_64-unknown-linux-musl/release/examples/floor-relay \
//!   scripts/bench-chat.sh --phases moderate
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use clap::Parser;
use futures_util::{SinkExt as _, StreamExt as _};
use redis::aio::{MultiplexedConnection, PubSubSink};
use serde_json::{Value, json};
use tokio::sync::mpsc;

#[cfg(target_env = "musl")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A bare chat relay over Redis pub/sub, a baseline for chat-bench. Of the flags
/// bench-chat.sh gives chat-server it reads these two and ignores the rest.
#[derive(Parser)]
#[command(ignore_errors = true)]
struct Args {
    #[arg(long)]
    listen: String,
    #[arg(long)]
    redis_url: String,
}

/// Each room's connections on this instance, by room name.
type Rooms = Arc<Mutex<HashMap<String, Vec<mpsc::UnboundedSender<Utf8Bytes>>>>>;

#[derive(Clone)]
struct Relay {
    rooms: Rooms,
    publish: MultiplexedConnection,
    subscribe: PubSubSink,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = redis::Client::open(args.redis_url.as_str()).context("--redis-url")?;
    let publish = client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to {}", args.redis_url))?;
    let (subscribe, mut pushes) = client.get_async_pubsub().await?.split();
    let rooms = Rooms::default();
    tokio::spawn({
        let rooms = rooms.clone();
        async move {
            while let Some(push) = pushes.next().await {
                let Ok(frame) = push.get_payload::<String>() else {
                    continue;
                };
                let frame = Utf8Bytes::from(frame);
                let room = push.get_channel_name().trim_start_matches("room:");
                for member in rooms.lock().expect("rooms").get(room).into_iter().flatten() {
                    let _ = member.send(frame.clone());
                }
            }
        }
    });
    let relay = Relay {
        rooms,
        publish,
        subscribe,
    };
    let router = axum::Router::new()
        .route("/ws", get(upgrade))
        .with_state(relay);
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    // bench-chat.sh reads the address from this line, as from chat-server's log.
    eprintln!("listening addr={}", listener.local_addr()?);
    axum::serve(listener, router).await?;
    Ok(())
}

async fn upgrade(
    ws: WebSocketUpgrade,
    Query(query): Query<HashMap<String, String>>,
    State(relay): State<Relay>,
) -> Response {
    let room = query.get("room").cloned().unwrap_or_default();
    ws.on_upgrade(move |socket| serve(socket, room, relay))
}

/// One connection: its `send` frames published, its room's pushes written.
async fn serve(socket: WebSocket, room: String, mut relay: Relay) {
    let (member, mut pushed) = mpsc::unbounded_channel();
    let first_here = {
        let mut rooms = relay.rooms.lock().expect("rooms");
        let members = rooms.entry(room.clone()).or_default();
        members.push(member.clone());
        members.len() == 1
    };
    let channel = format!("room:{room}");
    if first_here && relay.subscribe.subscribe(&channel).await.is_err() {
        return;
    }
    let (mut sink, mut stream) = socket.split();
    if sink
        .send(Message::Text(r#"{"type":"hello"}"#.into()))
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            incoming = stream.next() => {
                let Some(Ok(Message::Text(text))) = incoming else { break };
                let Ok(send) = serde_json::from_str::<Value>(&text) else { continue };
                let frame = json!({
                    "type": "message", "room": room, "name": send["name"], "text": send["text"],
                });
                let published: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(frame.to_string())
                    .query_async(&mut relay.publish)
                    .await;
                if published.is_err() {
                    break;
                }
            }
            Some(frame) = pushed.recv() => {
                if sink.send(Message::Text(frame)).await.is_err() {
                    break;
                }
            }
        }
    }
    if let Some(members) = relay.rooms.lock().expect("rooms").get_mut(&room) {
        members.retain(|other| !other.same_channel(&member));
    }
}
