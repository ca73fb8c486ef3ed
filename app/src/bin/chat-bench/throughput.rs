//! `saturation` (deliveries per second while senders keep a window of messages in
//! flight) and `latency` (end-to-end percentiles at a fixed offered rate in one room).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

use crate::Args;
use crate::clients::{connect, latency_text, send_frame, sent_at};

/// Receivers count deliveries until the deadline; senders keep `window` messages in
/// flight (a sender's own echo frees a slot) and count what they receive too.
pub async fn saturation(args: &Args) -> anyhow::Result<(u64, Duration, u64)> {
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
pub async fn latency(args: &Args, epoch: Instant) -> anyhow::Result<Vec<u64>> {
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
