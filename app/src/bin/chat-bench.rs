//! `chat-bench`: a load generator for `chat-server`, driven by `scripts/bench-chat.sh`,
//! which starts Redis and the servers and passes their addresses and pids here.
//!
//! Phases, each bounded in time or count (`--phases` picks them): delivered messages per
//! second at saturation (senders keep a window of unechoed messages in flight) with the
//! server CPU seconds per 100 000 deliveries (from `/proc/<pid>/stat`); a moderate load
//! (`moderate`: a crowded room and many small rooms, each at a fixed offered rate, far
//! below saturation) with the servers' CPU per delivery, Redis's CPU per message and the
//! latency, where a delivery cannot share its wake-ups and writes with others; end-to-end latency
//! percentiles at a fixed offered rate; the rooms dimension (for each count in `--rooms`,
//! that many rooms with a few receivers each sharing one offered message rate: server CPU
//! per delivery and Redis CPU per message, so the shape over room counts shows); what
//! presence costs (named guests with presence on, idle: server and Redis CPU per entry
//! refreshed by the heartbeats, and what a join with presence costs in a full room);
//! resident memory per idle connection and per quiet room joined (from
//! `/proc/<pid>/status`); and Redis alone (`redis`, driven by `scripts/bench-redis.sh`):
//! the append script as the servers call it, against one primary or every primary of a
//! cluster, with CPU per message per primary, so that what more primaries add shows
//! without the servers in the way.

#[path = "chat-bench/redis_alone.rs"]
mod redis_alone;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use futures_util::{SinkExt as _, StreamExt as _, stream};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Parser)]
#[command(about = "Load generator for chat-server (see scripts/bench-chat.sh)")]
struct Args {
    /// chat-server addresses, comma-separated; clients are spread over them. Every
    /// phase but `redis` needs them.
    #[arg(long, value_delimiter = ',')]
    servers: Vec<SocketAddr>,
    /// Server pids, for CPU and memory readings.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// redis-server pids (every node of a cluster), for Redis CPU per message.
    #[arg(long, value_delimiter = ',')]
    redis_pids: Vec<u32>,
    /// Which phases to run, in this order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "saturation,moderate,latency,rooms,presence,idle"
    )]
    phases: Vec<Phase>,
    /// Sending connections in the saturation and latency phases.
    #[arg(long, default_value_t = 8)]
    senders: usize,
    /// Receive-only connections in the saturation and latency phases.
    #[arg(long, default_value_t = 24)]
    receivers: usize,
    /// Unechoed messages each sender keeps in flight at saturation.
    #[arg(long, default_value_t = 16)]
    window: usize,
    #[arg(long, default_value_t = 15)]
    saturation_secs: u64,
    /// Offered messages per second (all senders together) in the latency phase.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    #[arg(long, default_value_t = 15)]
    latency_secs: u64,
    /// Room counts of the rooms phase, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    rooms: Vec<usize>,
    /// Connections per room in the rooms phase; the first also sends.
    #[arg(long, default_value_t = 3)]
    room_receivers: usize,
    /// Messages per second over all rooms in the rooms phase, spread evenly: the same
    /// deliveries per second at every room count, so only the room count changes.
    #[arg(long, default_value_t = 1000.0)]
    rooms_rate: f64,
    #[arg(long, default_value_t = 15)]
    rooms_secs: u64,
    /// Moderate phase, the crowded room: receivers, and senders (in the room too).
    #[arg(long, default_value_t = 200)]
    moderate_receivers: usize,
    #[arg(long, default_value_t = 50)]
    moderate_senders: usize,
    /// Messages per second offered in the crowded room, all senders together.
    #[arg(long, default_value_t = 200.0)]
    moderate_rate: f64,
    /// Moderate phase, the small rooms: how many, connections each (the first sends),
    /// and messages per second over all of them.
    #[arg(long, default_value_t = 1000)]
    moderate_rooms: usize,
    #[arg(long, default_value_t = 3)]
    moderate_room_connections: usize,
    #[arg(long, default_value_t = 1000.0)]
    moderate_rooms_rate: f64,
    /// Seconds each moderate shape sends (CPU is read over exactly this window).
    #[arg(long, default_value_t = 15)]
    moderate_secs: u64,
    /// Rooms per connection in the sidebar phase, one run each: every connection is in
    /// every room (`?room=` the first, `join` frames the rest).
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    sidebar_rooms: Vec<usize>,
    /// Connections of the sidebar phase, spread over the servers.
    #[arg(long, default_value_t = 100)]
    sidebar_connections: usize,
    /// Messages per second over all the rooms in the sidebar phase.
    #[arg(long, default_value_t = 200.0)]
    sidebar_rate: f64,
    #[arg(long, default_value_t = 10)]
    sidebar_secs: u64,
    /// Connections in the presence phase, each a named guest with presence on.
    #[arg(long, default_value_t = 10_000)]
    presence_connections: usize,
    /// Connections per room in the presence phase.
    #[arg(long, default_value_t = 10)]
    presence_per_room: usize,
    /// Connections per room of the presence phase that ask for the members and events;
    /// the others are only in them. Default: all.
    #[arg(long)]
    presence_watchers: Option<usize>,
    /// Seconds the presence phase stays idle, measuring what the heartbeats cost.
    #[arg(long, default_value_t = 30)]
    presence_secs: u64,
    /// The servers' `--presence-ttl-secs` (they heartbeat every third of it).
    #[arg(long, default_value_t = 30)]
    presence_ttl_secs: u64,
    /// Rooms joined, never written, on the first server for the `joined-rooms` memory
    /// reading: `--max-rooms-per-connection` (100) per connection.
    #[arg(long, default_value_t = 20_000)]
    joined_rooms: usize,
    /// Idle connections to the first server for the memory reading.
    #[arg(long, default_value_t = 19_000)]
    idle: usize,
    /// Connection attempts in flight while opening idle connections.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// `redis` phase: a node of the Redis (any node of a cluster).
    #[arg(long)]
    redis_url: Option<String>,
    /// `redis` phase: `redis_url` is a Redis Cluster (SPUBLISH, commands routed by slot).
    #[arg(long)]
    redis_cluster: bool,
    /// `redis` phase: rooms the messages go to, in turn.
    #[arg(long, default_value_t = 1000)]
    redis_rooms: usize,
    /// `redis` phase: followers of every room (a socket to each primary each), as that
    /// many instances with clients in every room would be.
    #[arg(long, default_value_t = 2)]
    redis_subscribers: usize,
    /// `redis` phase: append calls in flight at once (256 saturate one redis-server here).
    #[arg(long, default_value_t = 256)]
    redis_inflight: usize,
    #[arg(long, default_value_t = 15)]
    redis_secs: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Phase {
    Saturation,
    Latency,
    Rooms,
    Moderate,
    Sidebar,
    Presence,
    Idle,
    JoinedRooms,
    Redis,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let epoch = Instant::now();
    let tick = clock_ticks_per_sec();

    println!("## chat-bench");
    if args.phases.iter().any(|phase| *phase != Phase::Redis) {
        if args.servers.is_empty() || args.pids.is_empty() || args.redis_pids.is_empty() {
            bail!("--servers, --pids and --redis-pids are needed by every phase but redis");
        }
        println!(
            "servers: {:?}; senders {}, receivers {} (spread over the servers)",
            args.servers, args.senders, args.receivers
        );
    }
    for phase in &args.phases {
        match phase {
            Phase::Redis => redis_alone::redis_alone(&args).await?,
            Phase::Saturation => {
                let cpu = Cpu::start(&args, tick)?;
                let (deliveries, elapsed, sent) = saturation(&args).await?;
                let (server_cpu, redis_cpu) = cpu.used()?;
                println!(
                    "saturation ({:.1} s): {sent} messages stored, {deliveries} deliveries -> {:.0} deliveries/s ({:.0} messages/s in)",
                    elapsed.as_secs_f64(),
                    deliveries as f64 / elapsed.as_secs_f64(),
                    sent as f64 / elapsed.as_secs_f64(),
                );
                println!(
                    "server CPU: {server_cpu:.2} s over the servers -> {:.3} CPU-seconds per 100000 deliveries; Redis CPU {redis_cpu:.2} s -> {:.1} µs per message",
                    server_cpu / deliveries.max(1) as f64 * 100_000.0,
                    redis_cpu / sent.max(1) as f64 * 1e6,
                );
            }
            Phase::Latency => {
                let mut latencies = latency(&args, epoch).await?;
                println!(
                    "latency at {} msg/s offered, {} receivers + {} senders ({} samples): {}",
                    args.rate,
                    args.receivers,
                    args.senders,
                    latencies.len(),
                    percentiles(&mut latencies),
                );
            }
            Phase::Rooms => {
                println!(
                    "| rooms | connections | messages | deliveries | server CPU µs/delivery | Redis CPU µs/message | latency |"
                );
                println!("| --- | --- | --- | --- | --- | --- | --- |");
                for &count in &args.rooms {
                    let run = rooms(&args, count, epoch, tick).await?;
                    println!("{run}");
                }
            }
            Phase::Moderate => moderate(&args, epoch, tick).await?,
            Phase::Sidebar => {
                println!(
                    "| rooms per connection | connections | messages | deliveries | server CPU µs/delivery |"
                );
                println!("| --- | --- | --- | --- | --- |");
                for &count in &args.sidebar_rooms {
                    println!("{}", sidebar(&args, count, tick).await?);
                }
            }
            Phase::Presence => println!("{}", presence(&args, tick).await?),
            Phase::JoinedRooms => println!("{}", joined_rooms(&args).await?),
            Phase::Idle => {
                let (opened, per_conn) = idle_memory(&args).await?;
                println!(
                    "idle connections: {opened} open on one server -> {:.1} KiB resident per connection (its RSS delta / connections)",
                    per_conn / 1024.0
                );
            }
        }
    }
    Ok(())
}

/// CPU seconds the servers and Redis use from `start` to `used`.
struct Cpu {
    servers: Vec<u32>,
    redis: Vec<u32>,
    tick: f64,
    servers_before: f64,
    redis_before: f64,
}

impl Cpu {
    fn start(args: &Args, tick: f64) -> anyhow::Result<Self> {
        Ok(Cpu {
            servers: args.pids.clone(),
            redis: args.redis_pids.clone(),
            tick,
            servers_before: cpu_seconds(&args.pids, tick)?,
            redis_before: cpu_seconds(&args.redis_pids, tick)?,
        })
    }

    /// (servers, Redis) CPU seconds since `start`.
    fn used(&self) -> anyhow::Result<(f64, f64)> {
        Ok((
            cpu_seconds(&self.servers, self.tick)? - self.servers_before,
            cpu_seconds(&self.redis, self.tick)? - self.redis_before,
        ))
    }
}

/// p50, p99, p99.9 and max of latencies in microseconds.
fn percentiles(latencies: &mut [u64]) -> String {
    latencies.sort_unstable();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1));
        latencies.get(i).copied().unwrap_or(0) as f64 / 1000.0
    };
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        pct(0.50),
        pct(0.99),
        pct(0.999),
        latencies.last().copied().unwrap_or(0) as f64 / 1000.0,
    )
}

/// A fixed offered load: `rooms` rooms of `per_room` connections each, spread over the
/// servers; the first `senders_per_room` of each room also send, together `rate`
/// messages per second over all rooms, evenly and out of phase, each stamped with its
/// send time, for `secs`.
struct Shape {
    /// Names the rooms, so that shapes do not share them.
    name: String,
    rooms: usize,
    per_room: usize,
    senders_per_room: usize,
    rate: f64,
    secs: u64,
}

/// What a [`Shape`] cost, over its sending window only (not the connects, not the tail).
struct Offered {
    connections: usize,
    /// Messages sent, and deliveries received (by every connection, senders included),
    /// in the window.
    sent: u64,
    delivered: u64,
    seconds: f64,
    server_cpu: f64,
    redis_cpu: f64,
    /// End-to-end latency of every delivery, also of those after the window.
    latencies: Vec<u64>,
}

impl Offered {
    fn server_us_per_delivery(&self) -> f64 {
        self.server_cpu / self.delivered.max(1) as f64 * 1e6
    }

    fn redis_us_per_message(&self) -> f64 {
        self.redis_cpu / self.sent.max(1) as f64 * 1e6
    }
}

/// Runs `shape`: connects, sends for its time, and reads the servers' and Redis's CPU
/// at the start and the end of the sending window.
async fn offer(args: &Args, shape: &Shape, epoch: Instant, tick: f64) -> anyhow::Result<Offered> {
    let servers = args.servers.clone();
    let (count, per_room) = (shape.rooms, shape.per_room.max(1));
    let senders_per_room = shape.senders_per_room.clamp(1, per_room);
    let connected: Vec<anyhow::Result<(usize, Ws)>> = stream::iter(0..count * per_room)
        .map(|i| {
            let (room, seat) = (i / per_room, i % per_room);
            let server = servers[(room + seat) % servers.len()];
            let name = format!("bench-{}-{count}-{room}", shape.name);
            async move { Ok((room, connect(server, &name).await?)) }
        })
        .buffer_unordered(args.connect_concurrency)
        .collect()
        .await;
    let mut by_room: Vec<Vec<Ws>> = (0..count).map(|_| Vec::new()).collect();
    for result in connected {
        let (room, ws) = result?;
        by_room[room].push(ws);
    }
    let delivered = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let duration = Duration::from_secs(shape.secs);
    let start = tokio::time::Instant::now() + Duration::from_millis(500);
    let end_sending = start + duration;
    let end_receiving = end_sending + Duration::from_secs(2);
    let all_senders = count * senders_per_room;
    let period = Duration::from_secs_f64(all_senders as f64 / shape.rate);
    // The window's readings, taken by a task of its own at its two ends.
    let window = tokio::spawn({
        let (servers, redis) = (args.pids.clone(), args.redis_pids.clone());
        let (delivered, sent) = (delivered.clone(), sent.clone());
        async move {
            tokio::time::sleep_until(start).await;
            let before = (
                cpu_seconds(&servers, tick)?,
                cpu_seconds(&redis, tick)?,
                delivered.load(Ordering::Relaxed),
                sent.load(Ordering::Relaxed),
            );
            tokio::time::sleep_until(end_sending).await;
            anyhow::Ok((
                cpu_seconds(&servers, tick)? - before.0,
                cpu_seconds(&redis, tick)? - before.1,
                delivered.load(Ordering::Relaxed) - before.2,
                sent.load(Ordering::Relaxed) - before.3,
            ))
        }
    });
    let mut tasks = Vec::new();
    for (room, sockets) in by_room.into_iter().enumerate() {
        for (seat, ws) in sockets.into_iter().enumerate() {
            let (delivered, sent) = (delivered.clone(), sent.clone());
            tasks.push(tokio::spawn(async move {
                let (mut sink, mut incoming) = ws.split();
                let sender = (seat < senders_per_room).then(|| {
                    let sent = sent.clone();
                    tokio::spawn(async move {
                        // Senders send out of phase, spread over the period.
                        let index = room * senders_per_room + seat;
                        let offset = period.mul_f64(index as f64 / all_senders as f64);
                        let mut tick = tokio::time::interval_at(start + offset, period);
                        loop {
                            tick.tick().await;
                            if tokio::time::Instant::now() >= end_sending {
                                break;
                            }
                            let stamp = epoch.elapsed().as_micros();
                            if sink
                                .send(send_frame("r", &latency_text(stamp)))
                                .await
                                .is_err()
                            {
                                break;
                            }
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                        sink
                    })
                });
                let mut samples = Vec::new();
                while let Ok(Some(Ok(frame))) =
                    tokio::time::timeout_at(end_receiving, incoming.next()).await
                {
                    let Message::Text(t) = frame else { continue };
                    let now = epoch.elapsed().as_micros() as u64;
                    if let Some(stamp) = sent_at(&t) {
                        delivered.fetch_add(1, Ordering::Relaxed);
                        samples.push(now.saturating_sub(stamp));
                    }
                }
                if let Some(sender) = sender {
                    let _ = sender.await;
                }
                samples
            }));
        }
    }
    let (server_cpu, redis_cpu, delivered, sent) = window.await??;
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await?);
    }
    Ok(Offered {
        connections: count * per_room,
        sent,
        delivered,
        seconds: duration.as_secs_f64(),
        server_cpu,
        redis_cpu,
        latencies,
    })
}

/// The rooms phase's run at `count` rooms: a row of its table.
async fn rooms(args: &Args, count: usize, epoch: Instant, tick: f64) -> anyhow::Result<String> {
    let shape = Shape {
        name: "rooms".to_owned(),
        rooms: count,
        per_room: args.room_receivers,
        senders_per_room: 1,
        rate: args.rooms_rate,
        secs: args.rooms_secs,
    };
    let mut run = offer(args, &shape, epoch, tick).await?;
    Ok(format!(
        "| {count} | {} | {} ({:.0}/s) | {} | {:.1} | {:.1} | {} |",
        run.connections,
        run.sent,
        run.sent as f64 / run.seconds,
        run.delivered,
        run.server_us_per_delivery(),
        run.redis_us_per_message(),
        percentiles(&mut run.latencies),
    ))
}

/// The moderate phase: the crowded room (`moderate_receivers` + `moderate_senders` in one
/// room, `moderate_rate` messages per second) and the many small rooms
/// (`moderate_rooms` of `moderate_room_connections`, `moderate_rooms_rate`); a row each.
async fn moderate(args: &Args, epoch: Instant, tick: f64) -> anyhow::Result<()> {
    let shapes = [
        Shape {
            name: "crowd".to_owned(),
            rooms: 1,
            per_room: args.moderate_receivers + args.moderate_senders,
            senders_per_room: args.moderate_senders,
            rate: args.moderate_rate,
            secs: args.moderate_secs,
        },
        Shape {
            name: "small".to_owned(),
            rooms: args.moderate_rooms,
            per_room: args.moderate_room_connections,
            senders_per_room: 1,
            rate: args.moderate_rooms_rate,
            secs: args.moderate_secs,
        },
    ];
    println!(
        "| shape | connections | messages/s | deliveries/s | server CPU µs/delivery | deliveries per server CPU-second | Redis CPU µs/message | latency |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for shape in &shapes {
        let mut run = offer(args, shape, epoch, tick).await?;
        let senders = shape.rooms * shape.senders_per_room.min(shape.per_room);
        println!(
            "| {} rooms × {} ({} sending) | {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.1} | {} |",
            shape.rooms,
            shape.per_room,
            senders,
            run.connections,
            run.sent as f64 / run.seconds,
            run.delivered as f64 / run.seconds,
            run.server_us_per_delivery(),
            run.delivered as f64 / run.server_cpu.max(1e-9),
            run.redis_us_per_message(),
            percentiles(&mut run.latencies),
        );
    }
    Ok(())
}

async fn connect(addr: SocketAddr, room: &str) -> anyhow::Result<Ws> {
    connect_with(addr, &format!("room={room}")).await
}

async fn connect_with(addr: SocketAddr, query: &str) -> anyhow::Result<Ws> {
    let url = format!("ws://{addr}/ws?{query}");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .with_context(|| format!("connecting {url}"))?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.contains("\"hello\"") => Ok(ws),
        other => bail!("expected hello from {addr}, got {other:?}"),
    }
}

fn send_frame(name: &str, text: &str) -> Message {
    Message::text(json!({"type": "send", "name": name, "text": text}).to_string())
}

/// The message payload of a text frame, if it is a `message` frame.
fn message_of(text: &str) -> Option<Value> {
    let v: Value = serde_json::from_str(text).ok()?;
    (v["type"] == "message").then_some(v)
}

/// The text of a message that carries its send time (µs since the run's epoch).
fn latency_text(stamp: u128) -> String {
    format!("lat {stamp}")
}

/// The send time a `message` frame carries, if it is one [`latency_text`] made.
fn sent_at(frame: &str) -> Option<u64> {
    message_of(frame)?["text"]
        .as_str()?
        .strip_prefix("lat ")?
        .parse()
        .ok()
}

/// Receivers count deliveries until the deadline; senders keep `window` messages in
/// flight (a sender's own echo frees a slot) and count what they receive too.
async fn saturation(args: &Args) -> anyhow::Result<(u64, Duration, u64)> {
    let room = "bench-saturation";
    let delivered = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let mut receivers = Vec::new();
    for i in 0..args.receivers {
        receivers.push(connect(args.servers[i % args.servers.len()], room).await?);
    }
    let mut senders = Vec::new();
    for i in 0..args.senders {
        senders.push(connect(args.servers[i % args.servers.len()], room).await?);
    }
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.saturation_secs);
    let mut tasks = Vec::new();
    for mut ws in receivers {
        let delivered = delivered.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, ws.next()).await {
                if let Message::Text(t) = frame
                    && t.contains("\"type\":\"message\"")
                {
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for (i, mut ws) in senders.into_iter().enumerate() {
        let delivered = delivered.clone();
        let sent = sent.clone();
        let window = args.window;
        tasks.push(tokio::spawn(async move {
            let name = format!("s{i}");
            let mine = format!("\"name\":\"{name}\"");
            let mut in_flight = 0;
            let mut seq = 0u64;
            loop {
                while in_flight < window {
                    if ws
                        .feed(send_frame(&name, &format!("sat {seq}")))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    seq += 1;
                    in_flight += 1;
                }
                if ws.flush().await.is_err() {
                    return;
                }
                match tokio::time::timeout_at(deadline, ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        if t.contains("\"type\":\"message\"") {
                            delivered.fetch_add(1, Ordering::Relaxed);
                            if t.contains(&mine) {
                                in_flight -= 1;
                                sent.fetch_add(1, Ordering::Relaxed);
                            }
                        } else if t.contains("\"type\":\"error\"") {
                            eprintln!("sender {name}: {t}");
                            in_flight -= 1;
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => return,
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    Ok((
        delivered.load(Ordering::Relaxed),
        start.elapsed(),
        sent.load(Ordering::Relaxed),
    ))
}

/// Senders tick at `rate / senders` each, stamping the send time into the text;
/// receivers record now minus stamp. All in one process, so one clock.
async fn latency(args: &Args, epoch: Instant) -> anyhow::Result<Vec<u64>> {
    let room = "bench-latency";
    let mut receivers = Vec::new();
    for i in 0..args.receivers {
        receivers.push(connect(args.servers[i % args.servers.len()], room).await?);
    }
    let mut senders = Vec::new();
    for i in 0..args.senders {
        senders.push(connect(args.servers[(i + 1) % args.servers.len()], room).await?);
    }
    let duration = Duration::from_secs(args.latency_secs);
    let end_sending = tokio::time::Instant::now() + duration;
    // Receivers stay a little longer to collect messages still in flight.
    let end_receiving = end_sending + Duration::from_secs(2);
    let mut collectors = Vec::new();
    for mut ws in receivers {
        collectors.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(end_receiving, ws.next()).await
            {
                let Message::Text(t) = frame else { continue };
                let now = epoch.elapsed().as_micros() as u64;
                if let Some(sent) = sent_at(&t) {
                    samples.push(now.saturating_sub(sent));
                }
            }
            samples
        }));
    }
    let period = Duration::from_secs_f64(args.senders as f64 / args.rate as f64);
    let mut drivers = Vec::new();
    for (i, ws) in senders.into_iter().enumerate() {
        drivers.push(tokio::spawn(async move {
            let (mut sink, mut incoming) = ws.split();
            // Senders are in the room too: keep reading so they never count as slow.
            let drain = tokio::spawn(async move {
                while let Ok(Some(Ok(_))) =
                    tokio::time::timeout_at(end_receiving, incoming.next()).await
                {}
            });
            let name = format!("l{i}");
            let mut tick = tokio::time::interval(period);
            while tokio::time::Instant::now() < end_sending {
                tick.tick().await;
                let stamp = epoch.elapsed().as_micros();
                if sink
                    .send(send_frame(&name, &latency_text(stamp)))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let _ = drain.await;
        }));
    }
    for d in drivers {
        d.await?;
    }
    let mut all = Vec::new();
    for c in collectors {
        all.extend(c.await?);
    }
    Ok(all)
}

/// `sidebar_connections` connections each in `count` rooms, and a sender per room
/// sending its share of `sidebar_rate`: every message goes to every connection, so the
/// server CPU per delivery shows what following more rooms on one connection costs.
async fn sidebar(args: &Args, count: usize, tick: f64) -> anyhow::Result<String> {
    let room = |r: usize| format!("bench-sidebar-{count}-{r}");
    let servers = args.servers.clone();
    let joined: Vec<anyhow::Result<Ws>> = stream::iter(0..args.sidebar_connections)
        .map(|i| {
            let server = servers[i % servers.len()];
            async move {
                let mut ws = connect(server, &room(0)).await?;
                for r in 1..count {
                    let join = json!({"type": "join", "room": room(r)}).to_string();
                    ws.send(Message::text(join)).await?;
                }
                let mut answered = 1;
                while answered < count {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) if t.contains("\"joined\"") => answered += 1,
                        Some(Ok(Message::Text(t))) if t.contains("\"error\"") => {
                            bail!("a join was refused: {t}")
                        }
                        Some(Ok(_)) => {}
                        other => bail!("connection ended while joining: {other:?}"),
                    }
                }
                Ok(ws)
            }
        })
        .buffer_unordered(args.connect_concurrency)
        .collect()
        .await;
    let mut senders = Vec::new();
    for r in 0..count {
        senders.push(connect(servers[r % servers.len()], &room(r)).await?);
    }
    let delivered = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let duration = Duration::from_secs(args.sidebar_secs);
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let end_sending = start + duration;
    let end_receiving = end_sending + Duration::from_secs(2);
    let cpu = Cpu::start(args, tick)?;
    let mut tasks = Vec::new();
    for ws in joined {
        let mut ws = ws?;
        let delivered = delivered.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(end_receiving, ws.next()).await
            {
                if let Message::Text(t) = frame
                    && message_of(&t).is_some()
                {
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let period = Duration::from_secs_f64(count as f64 / args.sidebar_rate);
    for (r, mut ws) in senders.into_iter().enumerate() {
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let offset = period.mul_f64(r as f64 / count as f64);
            let mut tick = tokio::time::interval_at(start + offset, period);
            loop {
                tick.tick().await;
                if tokio::time::Instant::now() >= end_sending
                    || ws.send(send_frame("s", "sidebar")).await.is_err()
                {
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            // Its own messages come back; read them so the server never waits on it.
            while let Ok(Some(Ok(_))) = tokio::time::timeout_at(end_receiving, ws.next()).await {}
        }));
    }
    for task in tasks {
        task.await?;
    }
    let (server_cpu, _) = cpu.used()?;
    let (sent, delivered) = (
        sent.load(Ordering::Relaxed),
        delivered.load(Ordering::Relaxed),
    );
    Ok(format!(
        "| {count} | {} | {sent} | {delivered} | {:.1} |",
        args.sidebar_connections,
        server_cpu / delivered.max(1) as f64 * 1e6,
    ))
}

/// Opens `presence_connections` named guests with presence on, `presence_per_room` to a
/// room, spread over the servers; then, idle for `presence_secs`, reads what keeping
/// them present costs the servers and Redis (the heartbeats, and nothing else).
async fn presence(args: &Args, tick: f64) -> anyhow::Result<String> {
    let servers = args.servers.clone();
    let per_room = args.presence_per_room.max(1);
    let watchers = args.presence_watchers.unwrap_or(per_room).min(per_room);
    let rooms = args.presence_connections.div_ceil(per_room);
    let events = Arc::new(AtomicU64::new(0));
    // The last `watchers` of each room join once the others are in, with presence: a
    // join into a room as full as it gets, each timed to its member list.
    let watches = |i: usize| i % per_room >= per_room - watchers;
    let open = |i: usize| {
        let server = servers[i % servers.len()];
        let query = format!(
            "room=bench-presence-{}&name=u{i}&presence={}",
            i / per_room,
            u8::from(watches(i))
        );
        async move {
            let started = Instant::now();
            let mut ws = connect_with(server, &query).await?;
            if watches(i) {
                while let Some(frame) = ws.next().await {
                    if matches!(frame?, Message::Text(t) if t.contains("\"presence\"")) {
                        break;
                    }
                }
            }
            anyhow::Ok((ws, started.elapsed()))
        }
    };
    let opening = Instant::now();
    let mut connected: Vec<anyhow::Result<(Ws, Duration)>> =
        stream::iter((0..args.presence_connections).filter(|i| !watches(*i)))
            .map(open)
            .buffer_unordered(args.connect_concurrency)
            .collect()
            .await;
    let members_opened = opening.elapsed();
    let joining = Cpu::start(args, tick)?;
    let watching: Vec<anyhow::Result<(Ws, Duration)>> =
        stream::iter((0..args.presence_connections).filter(|i| watches(*i)))
            .map(open)
            .buffer_unordered(args.connect_concurrency)
            .collect()
            .await;
    let (join_server_cpu, join_redis_cpu) = joining.used()?;
    let mut joins: Vec<u64> = watching
        .iter()
        .filter_map(|joined| Some(joined.as_ref().ok()?.1.as_micros() as u64))
        .collect();
    let watcher_joins = joins.len();
    connected.extend(watching);
    let stop = tokio::time::Instant::now() + Duration::from_secs(args.presence_secs);
    let mut readers = Vec::new();
    for joined in connected {
        let (mut ws, _) = joined?;
        let events = events.clone();
        readers.push(tokio::spawn(async move {
            while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(stop, ws.next()).await {
                if matches!(frame, Message::Text(_)) {
                    events.fetch_add(1, Ordering::Relaxed);
                }
            }
            ws
        }));
    }
    // Let the joins' events settle before measuring the steady state.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = Cpu::start(args, tick)?;
    let measured = Instant::now();
    let mut sockets = Vec::new();
    for reader in readers {
        sockets.push(reader.await?);
    }
    let (server_cpu, redis_cpu) = cpu.used()?;
    let beats = measured.elapsed().as_secs_f64() / (args.presence_ttl_secs as f64 / 3.0);
    let refreshes = beats * args.presence_connections as f64;
    drop(sockets);
    Ok(format!(
        "presence: {} guests in {rooms} rooms ({per_room} each), the members in {:.1} s; {watcher_joins} joins with presence into the full rooms: {} (join to member list; server CPU {join_server_cpu:.2} s, Redis CPU {join_redis_cpu:.3} s -> {:.0} µs Redis per join); {} frames after; idle {:.0} s (~{beats:.1} heartbeats): server CPU {server_cpu:.2} s, Redis CPU {redis_cpu:.2} s -> {:.1} µs server, {:.1} µs Redis per entry refreshed",
        args.presence_connections,
        members_opened.as_secs_f64(),
        percentiles(&mut joins),
        join_redis_cpu / watcher_joins.max(1) as f64 * 1e6,
        events.load(Ordering::Relaxed),
        measured.elapsed().as_secs_f64(),
        server_cpu / refreshes.max(1.0) * 1e6,
        redis_cpu / refreshes.max(1.0) * 1e6,
    ))
}

/// Joins `joined_rooms` rooms nobody writes to, 100 per connection, on the first server,
/// and reads its resident memory before and after: what a followed room costs an
/// instance while it is quiet.
async fn joined_rooms(args: &Args) -> anyhow::Result<String> {
    const PER_CONNECTION: usize = 100;
    let pid = &args.pids[..1];
    let server = args.servers[0];
    let before = rss_bytes(pid)?;
    let connections = args.joined_rooms.div_ceil(PER_CONNECTION);
    let opened = Instant::now();
    let open: Vec<anyhow::Result<Ws>> = stream::iter(0..connections)
        .map(|c| async move {
            let first = c * PER_CONNECTION;
            let mut ws = connect(server, &format!("bench-quiet-{first}")).await?;
            for room in first + 1..(first + PER_CONNECTION).min(args.joined_rooms) {
                let join = json!({"type": "join", "room": format!("bench-quiet-{room}")});
                ws.send(Message::text(join.to_string())).await?;
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) if t.contains("\"joined\"") => break,
                        Some(Ok(Message::Text(t))) if t.contains("\"error\"") => {
                            bail!("join refused: {t}")
                        }
                        Some(Ok(_)) => {}
                        other => bail!("connection ended while joining: {other:?}"),
                    }
                }
            }
            Ok(ws)
        })
        .buffer_unordered(args.connect_concurrency.min(50))
        .collect()
        .await;
    let open: Vec<Ws> = open.into_iter().collect::<anyhow::Result<_>>()?;
    let took = opened.elapsed();
    let after = rss_bytes(pid)?;
    let per_room = after.saturating_sub(before) as f64 / args.joined_rooms.max(1) as f64;
    drop(open);
    Ok(format!(
        "joined rooms: {} quiet rooms joined on one server over {connections} connections in {:.1} s -> {:.1} KiB resident per room (its RSS delta / rooms, connections included)",
        args.joined_rooms,
        took.as_secs_f64(),
        per_room / 1024.0
    ))
}

/// Opens `idle` connections to the first server and reads its resident memory before
/// and after: the memory one instance needs per connection.
async fn idle_memory(args: &Args) -> anyhow::Result<(usize, f64)> {
    let pid = &args.pids[..1];
    let before = rss_bytes(pid)?;
    let server = args.servers[0];
    let results: Vec<anyhow::Result<Ws>> = stream::iter(0..args.idle)
        .map(|_| connect(server, "bench-idle"))
        .buffer_unordered(args.connect_concurrency)
        .collect()
        .await;
    let mut open = Vec::new();
    let mut failures = 0;
    for r in results {
        match r {
            Ok(ws) => open.push(ws),
            Err(e) => {
                if failures == 0 {
                    eprintln!("idle connect failed: {e:#}");
                }
                failures += 1;
            }
        }
    }
    if failures > 0 {
        eprintln!("{failures} idle connections failed");
    }
    let after = rss_bytes(pid)?;
    let per_conn = after.saturating_sub(before) as f64 / open.len().max(1) as f64;
    let opened = open.len();
    drop(open);
    Ok((opened, per_conn))
}

fn clock_ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of the processes, in seconds.
fn cpu_seconds(pids: &[u32], ticks_per_sec: f64) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name, which is in parentheses and may contain spaces:
        // index 0 is field 3 (state), so utime (14) and stime (15) are 11 and 12.
        let rest = stat.rsplit_once(')').context("odd /proc/pid/stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields[11].parse()?;
        let stime: f64 = fields[12].parse()?;
        total += (utime + stime) / ticks_per_sec;
    }
    Ok(total)
}

fn rss_bytes(pids: &[u32]) -> anyhow::Result<u64> {
    let mut total = 0;
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .context("no VmRSS")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        total += kib * 1024;
    }
    Ok(total)
}
