//! Many rooms on one connection: `join` and `leave` frames, `send` naming its room,
//! `?room=` as the first join, and the limits. Real `redis-server`, two real servers,
//! real WebSocket clients.

mod common;

use serde_json::{Value, json};

use std::time::Duration;

use common::{Client, Redis, Server, followers, poll_until};

/// Sends a `join` frame and returns its `joined` answer.
async fn join(client: &mut Client, frame: Value) -> Value {
    client.send_raw(&frame.to_string()).await;
    let joined = client.next_json().await;
    assert_eq!(joined["type"], "joined", "expected joined, got {joined}");
    assert_eq!(joined["room"], frame["room"]);
    joined
}

async fn send_to(client: &mut Client, room: &str, text: &str) {
    client
        .send_raw(&json!({"type": "send", "room": room, "name": "n", "text": text}).to_string())
        .await;
}

/// A sidebar of rooms on one connection, across instances: each message arrives once,
/// carrying its room; after `leave` nothing more of that room arrives, and sending to
/// it is refused while the other rooms go on.
#[tokio::test(flavor = "multi_thread")]
async fn one_connection_follows_several_rooms_across_instances_and_leaves_one() {
    let redis = Redis::start();
    let a = Server::start("a", &redis.url(), &[]);
    let b = Server::start("b", &redis.url(), &[]);

    let mut sidebar = Client::connect(&a, "?room=lobby").await;
    assert_eq!(sidebar.hello["room"], "lobby");
    let joined = join(&mut sidebar, json!({"type": "join", "room": "ops"})).await;
    assert!(joined.get("recovered").is_none(), "no since, no verdict");
    join(&mut sidebar, json!({"type": "join", "room": "dev"})).await;

    let mut in_ops = Client::connect(&b, "?room=ops").await;
    let mut in_dev = Client::connect(&b, "?room=dev").await;
    in_ops.send("o", "ops 1").await;
    let got = sidebar.next_message().await;
    assert_eq!(
        (got["room"].as_str(), got["text"].as_str()),
        (Some("ops"), Some("ops 1"))
    );
    in_dev.send("d", "dev 1").await;
    let got = sidebar.next_message().await;
    assert_eq!(
        (got["room"].as_str(), got["text"].as_str()),
        (Some("dev"), Some("dev 1"))
    );

    // A `send` names its room; without one it goes to the first room.
    send_to(&mut sidebar, "ops", "from the sidebar").await;
    assert_eq!(in_ops.next_message().await["text"], "ops 1");
    let got = in_ops.next_message().await;
    assert_eq!(
        (got["room"].as_str(), got["text"].as_str()),
        (Some("ops"), Some("from the sidebar"))
    );
    assert_eq!(sidebar.next_message().await["text"], "from the sidebar");
    sidebar.send("s", "to the lobby").await;
    let got = sidebar.next_message().await;
    assert_eq!(
        (got["room"].as_str(), got["text"].as_str()),
        (Some("lobby"), Some("to the lobby"))
    );

    let mut redis_conn = common::redis_conn(&redis.url()).await;
    assert_eq!(
        followers(&mut redis_conn, "ops").await,
        2,
        "both instances follow ops"
    );
    sidebar
        .send_raw(&json!({"type": "leave", "room": "ops"}).to_string())
        .await;
    assert_eq!(
        sidebar.next_json().await,
        json!({"type": "left", "room": "ops"})
    );
    // Nobody on instance a is in ops any more: it lets go of the room in Redis too.
    poll_until(
        Duration::from_secs(15),
        "instance a to let go of ops",
        || {
            let mut conn = redis_conn.clone();
            async move { (followers(&mut conn, "ops").await == 1).then_some(()) }
        },
    )
    .await;
    in_ops.send("o", "ops after the leave").await;
    // The next frame the sidebar gets is dev's: nothing of ops came before it.
    in_dev.send("d", "dev 2").await;
    let got = sidebar.next_message().await;
    assert_eq!(
        (got["room"].as_str(), got["text"].as_str()),
        (Some("dev"), Some("dev 2"))
    );
    send_to(&mut sidebar, "ops", "not in it").await;
    let refused = sidebar.next_json().await;
    assert_eq!(
        (refused["code"].as_str(), refused["room"].as_str()),
        (Some("not_joined"), Some("ops"))
    );

    // Leaving the first room too leaves `send` without a default.
    sidebar
        .send_raw(&json!({"type": "leave", "room": "lobby"}).to_string())
        .await;
    assert_eq!(sidebar.next_json().await["type"], "left");
    sidebar.send("s", "where to?").await;
    assert_eq!(sidebar.next_error_code().await, "not_joined");
    // And the connection still serves the room it is in.
    send_to(&mut sidebar, "dev", "still here").await;
    assert_eq!(sidebar.next_message().await["text"], "still here");
}

/// A `join` with `since` and `epoch` is recovered exactly as a reconnect is: the
/// missed messages, oldest first, then live ones; a `join` with `history` gets the
/// newest ones.
#[tokio::test(flavor = "multi_thread")]
async fn a_join_with_since_replays_what_was_missed_in_that_room() {
    let redis = Redis::start();
    let a = Server::start("a", &redis.url(), &[]);
    let mut writer = Client::connect(&a, "?room=ops").await;
    writer.send("w", "first").await;
    let first = writer.next_message().await;
    for text in ["second", "third"] {
        writer.send("w", text).await;
        writer.next_message().await;
    }
    let epoch = Client::connect(&a, "?room=ops").await.hello["epoch"]
        .as_str()
        .expect("a room with history has an epoch")
        .to_owned();
    let mut sidebar = Client::connect(&a, "?room=lobby").await;
    let joined = join(
        &mut sidebar,
        json!({"type": "join", "room": "ops", "since": first["id"], "epoch": epoch}),
    )
    .await;
    assert_eq!(joined["recovered"], true);
    assert_eq!(joined["epoch"], epoch.as_str());
    assert_eq!(sidebar.next_message().await["text"], "second");
    assert_eq!(sidebar.next_message().await["text"], "third");
    writer.send("w", "live").await;
    assert_eq!(sidebar.next_message().await["text"], "live");

    let joined = join(
        &mut sidebar,
        json!({"type": "join", "room": "ops2", "history": 5}),
    )
    .await;
    assert!(
        joined.get("epoch").is_none(),
        "a room without history has no epoch"
    );
    let joined = join(
        &mut sidebar,
        json!({"type": "join", "room": "ops3", "since": first["id"], "epoch": "another"}),
    )
    .await;
    assert_eq!(
        (joined["recovered"].as_bool(), joined["reason"].as_str()),
        (Some(false), Some("epoch_changed"))
    );
}

/// Wrong joins get error frames naming the room, and the connection goes on: a room
/// already joined, one past the limit, a bad name, a `since` in the future.
#[tokio::test(flavor = "multi_thread")]
async fn wrong_joins_get_error_frames_and_the_connection_goes_on() {
    let redis = Redis::start();
    let a = Server::start("a", &redis.url(), &["--max-rooms-per-connection", "2"]);
    let mut client = Client::connect(&a, "?room=lobby").await;
    client
        .send_raw(&json!({"type": "join", "room": "lobby"}).to_string())
        .await;
    let error = client.next_json().await;
    assert_eq!(
        (error["code"].as_str(), error["room"].as_str()),
        (Some("already_joined"), Some("lobby"))
    );
    join(&mut client, json!({"type": "join", "room": "second"})).await;
    client
        .send_raw(&json!({"type": "join", "room": "third"}).to_string())
        .await;
    let error = client.next_json().await;
    assert_eq!(
        (error["code"].as_str(), error["room"].as_str()),
        (Some("too_many_rooms"), Some("third"))
    );
    assert!(
        error["message"].as_str().unwrap().contains("at most 2"),
        "{error}"
    );
    client
        .send_raw(&json!({"type": "join", "room": "no spaces"}).to_string())
        .await;
    assert_eq!(client.next_error_code().await, "invalid_room");
    client
        .send_raw(&json!({"type": "leave", "room": "second"}).to_string())
        .await;
    assert_eq!(client.next_json().await["type"], "left");
    client
        .send_raw(
            &json!({"type": "join", "room": "third", "since": "99999999999999-0"}).to_string(),
        )
        .await;
    let error = client.next_json().await;
    assert_eq!(
        (error["code"].as_str(), error["room"].as_str()),
        (Some("invalid_since"), Some("third"))
    );
    join(&mut client, json!({"type": "join", "room": "third"})).await;
    client.send("c", "still open").await;
    assert_eq!(client.next_message().await["text"], "still open");
}
