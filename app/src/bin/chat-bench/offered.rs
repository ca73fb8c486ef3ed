//! Fixed offered loads (`rooms` and `moderate`): rooms of connections, some of them
//! sending at a set rate, read for the servers' CPU per delivery, Redis's CPU per message
//! and the latency of every delivery.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _, stream};
use tokio_tungstenite::tungstenite::Message;

use crate::Args;
use crate::clients::{Ws, connect, latency_text, percentiles, send_frame, sent_at};
use crate::readings::cpu_seconds;

/// A fixed offered load: `rooms` rooms of `per_room` connections each, spread over the
/// servers; the first `senders_per_room` of each room also send, together `rate`
/// messages per second over all rooms, evenly and out of phase, each stamped with its
/// send time, for `secs`.
pub struct Shape {
    /// Names the rooms, so that shapes do not share them.
    name: String,
    rooms: usize,
    per_room: usize,
    senders_per_room: usize,
    rate: f64,
    secs: u64,
}

/// What a [`Shape`] cost, over its sending window only (not the connects, not the tail).
pub struct Offered {
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
    pub fn server_us_per_delivery(&self) -> f64 {
        self.server_cpu / self.delivered.max(1) as f64 * 1e6
    }

    pub fn redis_us_per_message(&self) -> f64 {
        self.redis_cpu / self.sent.max(1) as f64 * 1e6
    }
}

/// Runs `shape`: connects, sends for its time, and reads the servers' and Redis's CPU
/// at the start and the end of the sending window.
pub async fn offer(
    args: &Args,
    shape: &Shape,
    epoch: Instant,
    tick: f64,
) -> anyhow::Result<Offered> {
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
pub async fn rooms(args: &Args, count: usize, epoch: Instant, tick: f64) -> anyhow::Result<String> {
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
pub async fn moderate(args: &Args, epoch: Instant, tick: f64) -> anyhow::Result<()> {
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
