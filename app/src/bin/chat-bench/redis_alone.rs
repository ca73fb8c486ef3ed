//! The `redis` phase of chat-bench: Redis alone, without the chat servers, so that what
//! more primaries add shows on a machine where the servers would saturate first.
//!
//! It makes the calls the servers make for each message: the append script
//! (lua/append.lua, the same file) by `EVALSHA` on the room's keys, publishing the entry
//! on the room's channel (`PUBLISH`, or `SPUBLISH` on a cluster, routed by the room's
//! slot). `--redis-subscribers` followers subscribe to every room, as that many instances
//! with clients in every room would (`SUBSCRIBE`, or `SSUBSCRIBE` per room), so each
//! message is also delivered by Redis that many times; they read without decoding. Per primary it reads, before and
//! after, `INFO cpu` (the process's user + system CPU) and `INFO commandstats` (its
//! `EVALSHA` calls): the share of the messages each primary got and its CPU per message.
//! From those it projects the saturation throughput if each primary had a core to itself
//! (as each ElastiCache node has its own vCPUs): the rate at which the busiest primary's
//! core is full.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::future::join_all;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::Args;
use crate::readings::{clock_ticks_per_sec, cpu_seconds};

const APPEND: &str = include_str!("../../lua/append.lua");

/// CPU seconds and `EVALSHA` calls of one primary so far.
#[derive(Clone, Copy)]
struct Reading {
    cpu: f64,
    calls: u64,
}

/// One primary: its address and a connection for readings.
struct Primary {
    address: String,
    conn: MultiplexedConnection,
}

impl Primary {
    async fn read(&mut self) -> anyhow::Result<Reading> {
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .arg("commandstats")
            .query_async(&mut self.conn)
            .await?;
        let field = |name: &str| info.lines().find_map(|line| line.strip_prefix(name));
        let cpu = |name: &str| -> f64 {
            field(name)
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0)
        };
        let calls = field("cmdstat_evalsha:calls=")
            .and_then(|rest| rest.split(',').next())
            .and_then(|calls| calls.parse().ok())
            .unwrap_or(0);
        Ok(Reading {
            cpu: cpu("used_cpu_user:") + cpu("used_cpu_sys:"),
            calls,
        })
    }
}

/// The primaries: the one Redis, or those `CLUSTER NODES` lists with slots.
async fn primaries(args: &Args, url: &str) -> anyhow::Result<Vec<Primary>> {
    let mut first = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let addresses = if args.redis_cluster {
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut first)
            .await?;
        nodes
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let primary = fields.get(2)?.contains("master") && fields.len() > 8;
                primary.then(|| fields[1].split('@').next().unwrap_or_default().to_owned())
            })
            .collect()
    } else {
        vec![
            url.trim_start_matches("redis://")
                .trim_end_matches('/')
                .to_owned(),
        ]
    };
    let mut primaries = Vec::new();
    for address in addresses {
        let conn = redis::Client::open(format!("redis://{address}"))?
            .get_multiplexed_async_connection()
            .await?;
        primaries.push(Primary { address, conn });
    }
    Ok(primaries)
}

fn channel(room: usize) -> String {
    format!("chat:{{bench-{room}}}:live")
}

/// One follower of every room: a plain socket to each primary, subscribed to every
/// room's channel (on a cluster, `SSUBSCRIBE` on every primary: those not serving the
/// channel's slot refuse it with `MOVED`), that reads and counts what Redis delivers
/// without decoding it, so that following costs the load generator next to nothing and
/// Redis, not this process, is what saturates. Counts deliveries in `delivered`.
async fn follower(
    args: &Args,
    primaries: &[Primary],
    delivered: Arc<AtomicU64>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let subscribe = if args.redis_cluster {
        "SSUBSCRIBE"
    } else {
        "SUBSCRIBE"
    };
    let mut commands = Vec::new();
    for room in 0..args.redis_rooms {
        let channel = channel(room);
        commands.extend_from_slice(
            format!(
                "*2\r\n${}\r\n{subscribe}\r\n${}\r\n{channel}\r\n",
                subscribe.len(),
                channel.len()
            )
            .as_bytes(),
        );
    }
    let mut readers = Vec::new();
    for primary in primaries {
        let mut socket = tokio::net::TcpStream::connect(&primary.address).await?;
        socket.write_all(&commands).await?;
        let delivered = delivered.clone();
        readers.push(tokio::spawn(async move {
            // `message` or `smessage`, as the head of each delivery (RESP2).
            const MARK: &[u8] = b"message\r\n";
            let mut buffer = vec![0u8; 64 * 1024];
            let mut carried = 0;
            while let Ok(n) = socket.read(&mut buffer[carried..]).await {
                if n == 0 {
                    break;
                }
                let filled = carried + n;
                let seen = buffer[..filled]
                    .windows(MARK.len())
                    .filter(|w| *w == MARK)
                    .count();
                delivered.fetch_add(seen as u64, Ordering::Relaxed);
                // Keep the tail that could start a mark cut in two.
                carried = (MARK.len() - 1).min(filled);
                buffer.copy_within(filled - carried..filled, 0);
            }
        }));
    }
    Ok(readers)
}

/// Appends messages, `redis_inflight` calls at a time, until `until`; returns how many.
async fn append_until<C>(args: &Args, conn: C, until: Instant) -> anyhow::Result<u64>
where
    C: ConnectionLike + Clone + Send + 'static,
{
    let script = Arc::new(redis::Script::new(APPEND));
    let publish = if args.redis_cluster {
        "SPUBLISH"
    } else {
        "PUBLISH"
    };
    let next = Arc::new(AtomicU64::new(0));
    let rooms = args.redis_rooms as u64;
    let calls = (0..args.redis_inflight).map(|_| {
        let (script, next, mut conn) = (script.clone(), next.clone(), conn.clone());
        tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < until {
                let room = next.fetch_add(1, Ordering::Relaxed) % rooms;
                let mut call = script.key(format!("chat:{{bench-{room}}}:log"));
                call.key(format!("chat:{{bench-{room}}}:meta"))
                    .key(channel(room as usize))
                    .arg("bench-epoch")
                    .arg(1000) // the servers' default history length
                    .arg(86_400_000u64)
                    .arg(86_400)
                    .arg("bench")
                    .arg("a message of about the size of a chat line, sixty-four bytes")
                    .arg(300)
                    .arg(publish);
                let _: redis::Value = call.invoke_async(&mut conn).await?;
                done += 1;
            }
            anyhow::Ok(done)
        })
    });
    let mut total = 0;
    for done in join_all(calls).await {
        total += done??;
    }
    Ok(total)
}

pub async fn redis_alone(args: &Args) -> anyhow::Result<()> {
    let Some(url) = args.redis_url.as_deref() else {
        bail!("the redis phase needs --redis-url");
    };
    let mut primaries = primaries(args, url).await?;
    let delivered = Arc::new(AtomicU64::new(0));
    let mut followers = Vec::new();
    for _ in 0..args.redis_subscribers {
        followers.extend(follower(args, &primaries, delivered.clone()).await?);
    }
    // Warm up: every room's keys exist and the script is loaded everywhere.
    let warm_up = Instant::now() + Duration::from_secs(2);
    let duration = Duration::from_secs(args.redis_secs);
    let run = |until| async move {
        if args.redis_cluster {
            let conn = ClusterClientBuilder::new([url])
                .build()?
                .get_async_connection()
                .await?;
            append_until(args, conn, until).await
        } else {
            let conn = redis::Client::open(url)?
                .get_multiplexed_async_connection()
                .await?;
            append_until(args, conn, until).await
        }
    };
    run(warm_up).await?;
    let mut before = Vec::new();
    for primary in &mut primaries {
        before.push(primary.read().await?);
    }
    let delivered_before = delivered.load(Ordering::Relaxed);
    let tick = clock_ticks_per_sec();
    let me = [std::process::id()];
    let own_before = cpu_seconds(&me, tick)?;
    let started = Instant::now();
    let sent = run(started + duration).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let own = cpu_seconds(&me, tick)? - own_before;
    let mut after = Vec::new();
    for primary in &mut primaries {
        after.push(primary.read().await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered = delivered.load(Ordering::Relaxed) - delivered_before;
    for follower in followers {
        follower.abort();
    }

    println!(
        "redis alone, {} primar{} ({}), {} rooms, {} followers, {} calls in flight, {elapsed:.1} s: {sent} messages -> {:.0} messages/s; {delivered} deliveries to the followers ({:.2} per message)",
        primaries.len(),
        if primaries.len() == 1 { "y" } else { "ies" },
        if args.redis_cluster {
            "cluster, SPUBLISH"
        } else {
            "PUBLISH"
        },
        args.redis_rooms,
        args.redis_subscribers,
        args.redis_inflight,
        sent as f64 / elapsed,
        delivered as f64 / sent.max(1) as f64,
    );
    println!(
        "| primary | messages | share | CPU s | CPU busy | CPU µs/message | alone on a core: messages/s |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let mut projection = f64::INFINITY;
    let (mut cpu_total, mut calls_total) = (0.0, 0);
    for ((primary, before), after) in primaries.iter().zip(&before).zip(&after) {
        let calls = after.calls - before.calls;
        let cpu = after.cpu - before.cpu;
        let per_message = cpu / calls.max(1) as f64;
        let share = calls as f64 / sent.max(1) as f64;
        (cpu_total, calls_total) = (cpu_total + cpu, calls_total + calls);
        // Its core is full when total rate × share × CPU per message = 1 s per second.
        projection = projection.min(1.0 / (share * per_message));
        println!(
            "| {} | {calls} | {:.1} % | {cpu:.2} | {:.0} % | {:.1} | {:.0} |",
            primary.address,
            share * 100.0,
            cpu / elapsed * 100.0,
            per_message * 1e6,
            1.0 / per_message,
        );
    }
    println!(
        "all primaries: {:.1} CPU µs per message; load generator: {own:.2} CPU s ({:.0} % of a core); projected saturation with a core per primary (the busiest primary's core full, at this CPU per message): {projection:.0} messages/s",
        cpu_total / calls_total.max(1) as f64 * 1e6,
        own / elapsed * 100.0,
    );
    Ok(())
}
