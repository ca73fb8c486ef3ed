//! `sidebar`: what following more rooms on one connection costs per delivery.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::bail;
use futures_util::{SinkExt as _, StreamExt as _, stream};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::Args;
use crate::clients::{Ws, connect, message_of, send_frame};
use crate::readings::Cpu;

/// `sidebar_connections` connections each in `count` rooms, and a sender per room
/// sending its share of `sidebar_rate`: every message goes to every connection, so the
/// server CPU per delivery shows what following more rooms on one connection costs.
pub async fn sidebar(args: &Args, count: usize, tick: f64) -> anyhow::Result<String> {
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
