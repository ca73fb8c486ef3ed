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

mod clients;
mod memory;
mod offered;
mod presence;
mod readings;
mod redis_alone;
mod sidebar;
mod throughput;

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::bail;
use clap::{Parser, ValueEnum as _};

use clients::percentiles;
use memory::{idle_memory, joined_rooms};
use offered::{moderate, rooms};
use presence::presence;
use readings::{Cpu, clock_ticks_per_sec};
use sidebar::sidebar;
use throughput::{latency, saturation};

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
        default_value = "idle,saturation,moderate,latency,rooms,presence"
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

impl Phase {
    /// Reads the first server's resident memory before and after: a true reading only
    /// on a server no earlier phase has used, since new connections reuse what the heap
    /// kept from the connections before them.
    fn reads_memory(self) -> bool {
        matches!(self, Phase::Idle | Phase::JoinedRooms)
    }
}

/// The first memory phase that runs after another phase has used the servers.
fn memory_phase_after_use(phases: &[Phase]) -> Option<Phase> {
    let mut on_servers = phases.iter().filter(|phase| **phase != Phase::Redis);
    on_servers.next()?;
    on_servers.copied().find(|phase| phase.reads_memory())
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
    if let Some(late) = memory_phase_after_use(&args.phases) {
        println!(
            "note: {} runs after other phases have used the servers, whose heap keeps what they \
             freed: its memory reading counts low. For the figure, run it first or alone \
             (`--phases {0}`).",
            late.to_possible_value()
                .expect("every phase is named on the command line")
                .get_name()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memory_reading_is_noted_once_another_phase_has_used_the_servers() {
        use Phase::*;
        assert_eq!(memory_phase_after_use(&[Idle, Saturation, Moderate]), None);
        assert_eq!(memory_phase_after_use(&[Redis, JoinedRooms]), None);
        assert_eq!(memory_phase_after_use(&[Saturation, Idle]), Some(Idle));
        assert_eq!(
            memory_phase_after_use(&[Idle, JoinedRooms]),
            Some(JoinedRooms)
        );
        assert_eq!(memory_phase_after_use(&[Saturation, Latency]), None);
    }
}
