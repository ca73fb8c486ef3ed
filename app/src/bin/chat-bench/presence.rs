//! `presence`: what keeping named guests present costs while they are idle, and what a
//! join with presence costs in a full room.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{StreamExt as _, stream};
use tokio_tungstenite::tungstenite::Message;

use crate::Args;
use crate::clients::{Ws, connect_with, percentiles};
use crate::readings::Cpu;

/// Opens `presence_connections` named guests with presence on, `presence_per_room` to a
/// room, spread over the servers; then, idle for `presence_secs`, reads what keeping
/// them present costs the servers and Redis (the heartbeats, and nothing else).
pub async fn presence(args: &Args, tick: f64) -> anyhow::Result<String> {
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
