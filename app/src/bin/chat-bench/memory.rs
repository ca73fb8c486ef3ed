//! `idle` and `joined-rooms`: resident memory per idle connection, and per quiet room
//! followed.

use std::time::Instant;

use anyhow::bail;
use futures_util::{SinkExt as _, StreamExt as _, stream};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::Args;
use crate::clients::{Ws, connect};
use crate::readings::rss_bytes;

/// Joins `joined_rooms` rooms nobody writes to, 100 per connection, on the first server,
/// and reads its resident memory before and after: what a followed room costs an
/// instance while it is quiet.
pub async fn joined_rooms(args: &Args) -> anyhow::Result<String> {
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
pub async fn idle_memory(args: &Args) -> anyhow::Result<(usize, f64)> {
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
