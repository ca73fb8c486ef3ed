//! The chat page of instances booted from their real user-data, in headless Chromium,
//! signed in: after `realtime-stack up --local` of a stack with `chat.auth.generate`, two
//! browsers open the stack's one URL, the local load balancer's, with tokens minted by
//! `realtime-stack token`, and land on different instances; a message sent from one page
//! shows on the other under the sender's token name, carried through the local Redis,
//! and each page lists both users online; `status --local` shows both instances healthy
//! and `logs --local --boot` their boot service's lines. A screenshot of each page is
//! left in the test artefacts directory.

mod support;

use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use support::browser::{
    Chromedriver, WAIT, artifacts_dir, messages, online, send_text, text_of, wait_connected,
};
use support::{DestroyLocal, TestStack, poll_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_message_on_one_booted_instance_shows_on_the_other() {
    // Fails here, before anything is created, when Chromium is not installed.
    let driver = Chromedriver::start();
    support::localstack().await;
    let suffix = support::unique_suffix();
    let stack = TestStack::signed_in("b");
    // Declared before the browsers: dropped after them, so the servers outlive the pages.
    let _destroy = DestroyLocal(&stack);
    let outputs = stack.up_local().await;
    let (alice, bob) = (
        stack.user_token("u-alice", "Alice"),
        stack.user_token("u-bob", "Bob"),
    );
    let url = outputs["url"].as_str().expect("url").to_owned();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with('/'),
        "{url} is not the local load balancer's http://127.0.0.1:<port>/"
    );
    let ids = support::instance_ids(&outputs);
    assert_eq!(ids.len(), 2);
    // What an operator sees of it: both instances healthy behind that one URL, and what
    // their boot service said.
    let status: serde_json::Value =
        serde_json::from_slice(&stack.run(&["status", "--local", "--output", "json"]).stdout)
            .expect("status prints JSON");
    assert_eq!(status["url"], url.as_str());
    let instances = status["instances"].as_array().expect("instances");
    assert!(
        instances.len() == 2 && instances.iter().all(|i| i["healthy"] == true),
        "{status:#}"
    );
    let boot = String::from_utf8(stack.run(&["logs", "--local", "--boot"]).stdout).unwrap();
    for id in &ids {
        assert!(
            boot.lines()
                .any(|line| line.starts_with(&format!("{id} | "))
                    && line.contains("realtime-stack boot:")),
            "{id}'s boot lines in:\n{boot}"
        );
    }

    let profiles = tempfile::tempdir().unwrap();
    let sender = driver.browser(&profiles.path().join("sender")).await;
    let receiver = driver.browser(&profiles.path().join("receiver")).await;
    let text = format!("hello across instances ({suffix})");
    let checks = AssertUnwindSafe(async {
        // The page takes a token handed over in the address's fragment, which never
        // reaches a server, and keeps it for the tab.
        sender
            .goto(&format!("{url}#token={alice}"))
            .await
            .expect("opening the sender's page");
        receiver
            .goto(&format!("{url}#token={bob}"))
            .await
            .expect("opening the receiver's page");
        // Each page shows the instance it is connected to, whose id it has from the
        // instance metadata; the load balancer spreads new connections round robin, so a
        // reload lands the receiver on the other instance.
        let on_sender = wait_connected(&sender, "the sender's page").await;
        let mut on_receiver = wait_connected(&receiver, "the receiver's page").await;
        for _ in 0..5 {
            if on_receiver != on_sender {
                break;
            }
            receiver
                .refresh()
                .await
                .expect("reloading the receiver's page");
            on_receiver = wait_connected(&receiver, "the receiver's page").await;
        }
        assert!(ids.contains(&on_sender) && ids.contains(&on_receiver));
        assert_ne!(on_sender, on_receiver, "the pages are on two instances");

        assert_eq!(text_of(&sender, "#user").await, "Alice");
        assert_eq!(text_of(&receiver, "#user").await, "Bob");
        send_text(&sender, &text).await;
        let shown = poll_until(WAIT, "the message on the receiver's page", || async {
            messages(&receiver)
                .await
                .into_iter()
                .find(|message| message.contains(&text))
        })
        .await;
        assert!(shown.contains("Alice"), "the token's name: {shown}");
        for page in [&sender, &receiver] {
            poll_until(WAIT, "both users in the online list", || async {
                (online(page).await == ["Alice", "Bob"]).then_some(())
            })
            .await;
        }
        // And the sender's own page shows it too, having had it back through Redis.
        poll_until(WAIT, "the message on the sender's page", || async {
            messages(&sender)
                .await
                .iter()
                .any(|message| message.contains(&text))
                .then_some(())
        })
        .await;

        for (page, file) in [
            (&sender, "booted-browser-instance-0.png"),
            (&receiver, "booted-browser-instance-1.png"),
        ] {
            let path = artifacts_dir().join(file);
            std::fs::write(&path, page.screenshot().await.expect("a screenshot"))
                .unwrap_or_else(|err| panic!("writing {}: {err}", path.display()));
            eprintln!("screenshot: {}", path.display());
        }
    })
    .catch_unwind()
    .await;
    // The sessions end whatever happened; chromedriver and destroy --local follow on drop.
    let _ = sender.close().await;
    let _ = receiver.close().await;
    if let Err(panic) = checks {
        std::panic::resume_unwind(panic);
    }
}
