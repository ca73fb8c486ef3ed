//! The fan-out across instances: each instance receives only the rooms it has clients
//! in, on their live channels, and the streams fill in whatever pub/sub did not bring.
//! Real `redis-server`, real servers, real WebSocket clients.

mod common;

use std::time::Duration;

use common::{Client, Redis, Server, followers, poll_until, redis_conn, texts};

async fn wait_followers(conn: &mut redis::aio::MultiplexedConnection, room: &str, want: i64) {
    poll_until(
        Duration::from_secs(15),
        &format!("{want} instance(s) following {room}"),
        || {
            let mut conn = conn.clone();
            async move { (followers(&mut conn, room).await == want).then_some(()) }
        },
    )
    .await;
}

/// An instance follows a room while it has clients there, and lets go once the last
/// one leaves, so Redis sends each instance only what it delivers.
#[tokio::test(flavor = "multi_thread")]
async fn an_instance_follows_a_room_only_while_it_has_clients_there() {
    let redis = Redis::start();
    let a = Server::start("a", &redis.url(), &[]);
    let b = Server::start("b", &redis.url(), &[]);
    let mut conn = redis_conn(&redis.url()).await;

    let mut on_a = Client::connect(&a, "?room=green").await;
    wait_followers(&mut conn, "green", 1).await;
    let mut on_b = Client::connect(&b, "?room=green").await;
    wait_followers(&mut conn, "green", 2).await;
    assert_eq!(followers(&mut conn, "other").await, 0);

    on_b.send("b", "to both").await;
    assert_eq!(on_a.next_message().await["text"], "to both");
    assert_eq!(on_b.next_message().await["text"], "to both");

    drop(on_a);
    wait_followers(&mut conn, "green", 1).await;
    drop(on_b);
    wait_followers(&mut conn, "green", 0).await;
}

/// An entry whose publish never reached an instance (pub/sub delivers at most once:
/// a dropped connection, or a writer that stored without publishing) is read from the
/// stream when the next one shows the gap: delivered once, in order, before it.
#[tokio::test(flavor = "multi_thread")]
async fn an_entry_whose_publish_was_missed_is_read_from_the_stream_in_order() {
    let redis = Redis::start();
    let a = Server::start("a", &redis.url(), &[]);
    let mut conn = redis_conn(&redis.url()).await;
    let mut client = Client::connect(&a, "?room=gap").await;
    client.send("c", "first").await;
    let first = client.next_message().await;

    // Stored as the append script stores it, but never published.
    let missed: String = redis::cmd("XADD")
        .arg("chat:{gap}:log")
        .arg("*")
        .arg("name")
        .arg("w")
        .arg("text")
        .arg("missed")
        .arg("prev")
        .arg(first["id"].as_str().unwrap())
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg("chat:{gap}:meta")
        .arg("last")
        .arg(&missed)
        .query_async(&mut conn)
        .await
        .unwrap();

    client.send("c", "next").await;
    let got = vec![client.next_message().await, client.next_message().await];
    assert_eq!(texts(&got), ["missed", "next"]);
    assert_eq!(got[0]["id"], missed.as_str());
}

/// Many rooms followed by one instance, written from another: every client gets its
/// own room's messages, each once, and nothing of the other rooms.
#[tokio::test(flavor = "multi_thread")]
async fn with_many_rooms_each_message_reaches_its_room_only() {
    const ROOMS: usize = 200;
    let redis = Redis::start();
    let flags = [
        "--max-connections-per-address",
        "1000",
        "--new-rooms-per-minute",
        "1000",
    ];
    let reader = Server::start("a", &redis.url(), &flags);
    let writer_server = Server::start("b", &redis.url(), &flags);
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for room in 0..ROOMS {
        readers.push(Client::connect(&reader, &format!("?room=r{room}")).await);
        writers.push(Client::connect(&writer_server, &format!("?room=r{room}")).await);
    }
    for round in 0..2 {
        for (room, writer) in writers.iter_mut().enumerate() {
            writer.send("w", &format!("r{room} #{round}")).await;
        }
    }
    for (room, client) in readers.iter_mut().enumerate() {
        let got = vec![client.next_message().await, client.next_message().await];
        assert_eq!(texts(&got), [format!("r{room} #0"), format!("r{room} #1")]);
        assert!(got.iter().all(|m| m["room"] == format!("r{room}")));
    }
}
