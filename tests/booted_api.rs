//! The chat's server API of instances booted from their real user-data, used from the
//! CLI through the stack's one URL: after `realtime-stack up --local` of a stack with
//! `chat.auth.generate` (two instances behind the local load balancer), `chat --local`
//! posts a message that reaches WebSocket clients on both instances, pages the room's
//! history, deletes the message (both clients are told) and kicks a user with a ban:
//! the user's connections on both instances close with 4003, and a reconnect through
//! the load balancer is refused until the ban ends. A token from `token --api` serves
//! `chat --token`; a user's sign-in token does not.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::{Value, json};
use support::{DestroyLocal, TestStack, poll_until};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(60);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What a WebSocket got first: its `hello`, or the close of a refused connection.
enum Opened {
    Hello(Box<Socket>, Value),
    Closed(u16, String),
}

async fn open(url: &str) -> Opened {
    let (mut socket, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connecting in time")
        .expect("connecting through the load balancer");
    match next(&mut socket).await {
        Ok(hello) => Opened::Hello(Box::new(socket), hello),
        Err((code, reason)) => Opened::Closed(code, reason),
    }
}

/// The next JSON frame, or the close code and reason.
async fn next(socket: &mut Socket) -> Result<Value, (u16, String)> {
    loop {
        let frame = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a frame in time");
        match frame {
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text).unwrap()),
            Some(Ok(Message::Close(frame))) => {
                let frame = frame.expect("a close frame with a code");
                return Err((u16::from(frame.code), frame.reason.to_string()));
            }
            Some(Ok(_)) => continue,
            other => panic!("the connection ended without a close frame: {other:?}"),
        }
    }
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_uses_the_server_api_of_a_booted_stack_through_its_load_balancer() {
    support::localstack().await;
    let stack = TestStack::signed_in("a");
    let _destroy = DestroyLocal(&stack);
    let outputs = stack.up_local().await;
    let url = outputs["url"].as_str().expect("url").to_owned();
    let token = |sub: &str| stack.user_token(sub, sub);
    let ws_url = |sub: &str| {
        format!(
            "{}ws?room=lobby&token={}",
            url.replacen("http://", "ws://", 1),
            token(sub)
        )
    };

    // Bob on both instances: the load balancer spreads new connections round robin.
    let mut bob: Vec<(Box<Socket>, String)> = Vec::new();
    for _ in 0..8 {
        let Opened::Hello(socket, hello) = open(&ws_url("u-bob")).await else {
            panic!("bob was refused");
        };
        let instance = hello["instance"].as_str().unwrap().to_owned();
        if !bob.iter().any(|(_, on)| *on == instance) {
            bob.push((socket, instance));
        }
        if bob.len() == 2 {
            break;
        }
    }
    assert_eq!(
        bob.len(),
        2,
        "bob's connections landed on one instance only"
    );
    let Opened::Hello(mut ann, _) = open(&ws_url("u-ann")).await else {
        panic!("ann was refused");
    };

    // Posted from the CLI: both instances deliver it, marked as the API's.
    let id = stdout(&stack.run(&[
        "chat",
        "--local",
        "post",
        "lobby",
        "v42 is live",
        "--name",
        "Deploy bot",
    ]));
    for (socket, instance) in &mut bob {
        let message = next(socket).await.unwrap();
        assert_eq!(
            (&message["id"], &message["text"], &message["from"]),
            (&json!(id), &json!("v42 is live"), &json!("api")),
            "on {instance}"
        );
    }
    assert_eq!(next(&mut ann).await.unwrap()["id"], id.as_str());
    let history = stdout(&stack.run(&["chat", "--local", "history", "lobby"]));
    assert!(
        history.starts_with(&id) && history.contains("Deploy bot [API]: v42 is live"),
        "{history}"
    );
    let page: Value = serde_json::from_str(&stdout(
        &stack.run(&["chat", "--local", "history", "lobby", "--output", "json"]),
    ))
    .unwrap();
    assert_eq!(page["messages"][0]["id"], id.as_str());

    // A token of `token --api`, given with --token: the caller is who it names. A
    // user's sign-in token is refused, and the command says why.
    let api_token = stdout(&stack.run(&["token", "--api", "--sub", "ci"]));
    let posted = stdout(&stack.run(&[
        "chat", "--url", &url, "--token", &api_token, "post", "lobby", "from ci",
    ]));
    let message = next(&mut ann).await.unwrap();
    assert_eq!(
        (&message["id"], &message["sub"]),
        (&json!(posted), &json!("ci"))
    );
    for (socket, _) in &mut bob {
        next(socket).await.unwrap();
    }
    let refused = stack
        .command(&[
            "chat",
            "--url",
            &url,
            "--token",
            &token("u-ann"),
            "post",
            "lobby",
            "x",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("403") && said.contains("token --api"),
        "{said}"
    );

    // Deleted from the CLI: every client is told.
    stack.run(&["chat", "--local", "delete", "lobby", &id]);
    let deleted = json!({"type": "deleted", "room": "lobby", "id": id});
    for (socket, _) in &mut bob {
        assert_eq!(next(socket).await.unwrap(), deleted);
    }

    // Kicked with a ban: both of bob's connections close, on both instances.
    let started = Instant::now();
    let kicked = stdout(&stack.run(&[
        "chat",
        "--local",
        "kick",
        "u-bob",
        "--ban",
        "5s",
        "--reason",
        "cooling off",
    ]));
    assert!(kicked.contains("banned until"), "{kicked}");
    for (socket, instance) in &mut bob {
        let (code, reason) = next(socket).await.unwrap_err();
        assert_eq!(code, 4003, "on {instance}");
        assert!(reason.ends_with(": cooling off"), "{reason}");
    }
    eprintln!(
        "kick: bob's connections on both instances closed {:?} after `chat kick` began",
        started.elapsed()
    );
    match open(&ws_url("u-bob")).await {
        Opened::Closed(code, reason) => {
            assert_eq!(code, 4003);
            assert!(reason.starts_with("banned for "), "{reason}");
        }
        Opened::Hello(..) => panic!("bob was let in while banned"),
    }
    // Ann, in the same room, was not touched; bob is let in once the ban is over.
    assert_eq!(next(&mut ann).await.unwrap(), deleted);
    poll_until(WAIT, "bob to be let in after his ban", || async {
        match open(&ws_url("u-bob")).await {
            Opened::Hello(..) => Some(()),
            Opened::Closed(..) => None,
        }
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "let in before the ban ended"
    );
    let _ = ann.close(None).await;
}
