//! The chat page of instances booted from their real user-data, in headless Chromium:
//! after `realtime-stack up --local`, a browser on instance 0 sends a message that a
//! browser on instance 1 shows, carried through the local Redis. A screenshot of each
//! page is left in the test artefacts directory.

mod support;

use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use serde_json::Value;
use support::TestStack;
use support::browser::{
    Chromedriver, WAIT, artifacts_dir, messages, poll_until, send_message, wait_connected,
};

/// `destroy --local` at the end of the test, whether it passed or not.
struct DestroyLocal<'a>(&'a TestStack);

impl Drop for DestroyLocal<'_> {
    fn drop(&mut self) {
        let output = self.0.command(&["destroy", "--local"]).output();
        if !std::thread::panicking() {
            let output = output.expect("running realtime-stack destroy --local");
            assert!(
                output.status.success(),
                "destroy --local failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_message_on_one_booted_instance_shows_on_the_other() {
    // Fails here, before anything is created, when Chromium is not installed.
    let driver = Chromedriver::start();
    support::localstack().await;
    let suffix = support::unique_suffix();
    let name = format!("b{}", &suffix[suffix.len() - 8..]);
    let stack = TestStack::new(&name, &format!("{name}.example.test"));
    // Declared before the browsers: dropped after them, so the servers outlive the pages.
    let _destroy = DestroyLocal(&stack);
    let output = stack.run(&["up", "--local", "--output", "json"]);
    let outputs: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    let urls: Vec<&str> = outputs["local_urls"]
        .as_array()
        .expect("local_urls")
        .iter()
        .map(|url| url.as_str().expect("a URL"))
        .collect();
    assert_eq!(urls.len(), 2, "one URL per instance: {outputs}");
    for url in &urls {
        assert!(
            url.starts_with("http://127.0.0.1:") && url.ends_with('/'),
            "{url} is not http://127.0.0.1:<port>/"
        );
    }
    let ids: Vec<&str> = outputs["instance_ids"]
        .as_array()
        .expect("instance_ids")
        .iter()
        .map(|id| id.as_str().expect("an instance id"))
        .collect();

    let profiles = tempfile::tempdir().unwrap();
    let sender = driver.browser(&profiles.path().join("sender")).await;
    let receiver = driver.browser(&profiles.path().join("receiver")).await;
    let text = format!("hello from instance 0 ({suffix})");
    let checks = AssertUnwindSafe(async {
        sender.goto(urls[0]).await.expect("opening instance 0");
        receiver.goto(urls[1]).await.expect("opening instance 1");
        // Each page is served by, and connected to, its own instance, whose id it has
        // from the instance metadata.
        assert_eq!(
            wait_connected(&sender, "the page of instance 0").await,
            ids[0]
        );
        assert_eq!(
            wait_connected(&receiver, "the page of instance 1").await,
            ids[1]
        );

        send_message(&sender, "alice", &text).await;
        let shown = poll_until(WAIT, "the message on the page of instance 1", || async {
            messages(&receiver)
                .await
                .into_iter()
                .find(|message| message.contains(&text))
        })
        .await;
        assert!(shown.contains("alice"), "{shown}");
        // And the sender's own page shows it too, having had it back through Redis.
        poll_until(WAIT, "the message on the page of instance 0", || async {
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
