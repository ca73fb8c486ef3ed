//! Redis failing the way ElastiCache fails: a replica promoted while the old primary
//! stays reachable but read-only, and a link that silently drops every byte. Real
//! primary and replica `redis-server`s behind a TCP proxy that stands for the network.

mod common;

use std::time::{Duration, Instant};

use common::{Client, Conversation, Proxy, Redis, Sending, Server, WAIT, poll_until, redis_conn};
use redis::aio::MultiplexedConnection;

async fn info_field(conn: &mut MultiplexedConnection, field: &str) -> Option<String> {
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(conn)
        .await
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
}

/// The ElastiCache way: writes paused on the primary until the replica has everything,
/// the replica promoted, the endpoint (our proxy) moved to it, the old primary demoted
/// to a replica of the new one. Connections already open stay on the old primary.
async fn fail_over(primary: &Redis, replica: &Redis, proxy: &Proxy) {
    let mut old = redis_conn(&primary.url()).await;
    let mut new = redis_conn(&replica.url()).await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(10_000)
        .arg("WRITE")
        .query_async(&mut old)
        .await
        .unwrap();
    let target = info_field(&mut old, "master_repl_offset").await.unwrap();
    poll_until(WAIT, "the replica to catch up", || {
        let mut new = new.clone();
        let target = target.clone();
        async move { (info_field(&mut new, "master_repl_offset").await? == target).then_some(()) }
    })
    .await;
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut new)
        .await
        .unwrap();
    proxy.set_target(replica.port);
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(replica.port)
        .query_async(&mut old)
        .await
        .unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async(&mut old)
        .await
        .unwrap();
}

/// A replica is promoted while a client keeps sending: the servers notice the old
/// primary refusing writes (`READONLY`), rebuild their connections to the moved
/// endpoint, and sends succeed again within a few seconds; every acknowledged message
/// is in the new primary exactly once and reached the other instance's client.
#[tokio::test(flavor = "multi_thread")]
async fn replica_promoted_while_clients_send() {
    let primary = Redis::start();
    let replica = Redis::start_replica_of(&primary);
    let replica_conn = redis_conn(&replica.url()).await;
    poll_until(WAIT, "the replica to sync", || {
        let mut conn = replica_conn.clone();
        async move { (info_field(&mut conn, "master_link_status").await? == "up").then_some(()) }
    })
    .await;
    let proxy = Proxy::start(primary.port).await;
    let Conversation {
        a,
        b,
        sender,
        mut receiver,
    } = Conversation::start(&proxy.url(), &[], "f").await;

    let mut sending = Sending::start(sender, 10);
    let mut stored = sending.next(10).await;
    let started = Instant::now();
    fail_over(&primary, &replica, &proxy).await;
    sending.event_happened();
    stored.extend(sending.finish().await);
    let first_after = stored
        .iter()
        .find(|sent| sent.after_event)
        .map(|sent| sent.at.duration_since(started))
        .unwrap();
    eprintln!("failover: first message stored {first_after:?} after the failover began");
    assert!(
        first_after < Duration::from_secs(8),
        "sends resumed only after {first_after:?}"
    );

    // Every stored message is in the new primary, in the order the sender saw.
    let mut new_primary = redis_conn(&replica.url()).await;
    let kept: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("chat:{f}:log")
        .arg("-")
        .arg("+")
        .query_async(&mut new_primary)
        .await
        .unwrap();
    let kept_ids: Vec<&str> = kept.ids.iter().map(|e| e.id.as_str()).collect();
    let stored_ids: Vec<&str> = stored.iter().map(|sent| sent.id.as_str()).collect();
    for id in &stored_ids {
        assert!(
            kept_ids.contains(id),
            "stored {id} missing after failover: {kept_ids:?}"
        );
    }
    // ...and every one reached the client on the other instance, in that order.
    assert_eq!(receiver.next_ids(kept_ids.len()).await, kept_ids);
    a.wait_health(200).await;
    b.wait_health(200).await;
}

/// The link to Redis silently drops every byte: a send is answered `unavailable` and
/// `/healthz` turns 503 within the bound app/README.md states; when the link returns,
/// everything recovers without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn blackholed_link_is_noticed_within_the_bound() {
    const BOUND: Duration = Duration::from_secs(5);
    let redis = Redis::start();
    let proxy = Proxy::start(redis.port).await;
    let server = Server::start("a", &proxy.url(), &[]);
    server.wait_health(200).await;
    let mut client = Client::connect(&server, "?room=b").await;
    client.send("alice", "before").await;
    assert_eq!(client.next_message().await["text"], "before");

    proxy.blackhole();
    let blackholed = Instant::now();
    client.send("alice", "into the void").await;
    assert_eq!(client.next_error_code().await, "unavailable");
    let answered = blackholed.elapsed();
    server.wait_health(503).await;
    let unhealthy = blackholed.elapsed();
    poll_until(WAIT, "the reader to report down", || async {
        (server.metric("chat_redis_reader_up").await == 0.0).then_some(())
    })
    .await;
    let reader_down = blackholed.elapsed();
    eprintln!(
        "blackhole: send answered unavailable after {answered:?}, /healthz 503 after {unhealthy:?}, reader down after {reader_down:?}"
    );
    assert!(answered <= BOUND, "send answered after {answered:?}");
    assert!(unhealthy <= BOUND, "/healthz 503 after {unhealthy:?}");
    assert!(
        reader_down <= BOUND + Duration::from_secs(2),
        "reader down after {reader_down:?}"
    );

    proxy.restore();
    let restored = Instant::now();
    server.wait_health(200).await;
    let healthy = restored.elapsed();
    client.send_until_stored("after").await;
    eprintln!(
        "blackhole: /healthz 200 {healthy:?} after the link returned, send stored {:?} after",
        restored.elapsed()
    );
    assert!(restored.elapsed() <= Duration::from_secs(15));
}
