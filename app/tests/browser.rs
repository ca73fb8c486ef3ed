//! The chat page in headless Chromium, driven through chromedriver: two browsers on two
//! server instances talk to each other, in several rooms, see who is online and who is
//! typing, sign in with tokens, and user text is rendered as text.

mod common;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use common::{
    Client, Redis, Server, WAIT, artifacts_dir, free_port, poll_until, poll_until_equal, tool,
};
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use serde_json::json;

/// chromedriver on a free loopback port; killed on drop.
struct Driver {
    port: u16,
    child: Child,
}

impl Driver {
    fn start() -> Driver {
        let binary = tool("chromedriver", "chromium-driver");
        let port = free_port();
        let child = Command::new(binary)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning chromedriver");
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {port}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Driver { port, child }
    }

    async fn browser(&self, profile: &std::path::Path) -> Browser {
        let chromium = tool("chromium", "chromium");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=900,600",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("starting a Chromium session through chromedriver")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn text_of(browser: &Browser, css: &str) -> String {
    match browser.find(Locator::Css(css)).await {
        Ok(element) => element.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn wait_connected(browser: &Browser, instance: &str) {
    poll_until(WAIT, &format!("page on {instance} to connect"), || async {
        let state = text_of(browser, "#state").await;
        let shown = text_of(browser, "#instance").await;
        (state == "connected" && shown == instance).then_some(())
    })
    .await
}

/// The texts of every element `css` matches, in order.
async fn texts_of(browser: &Browser, css: &str) -> Vec<String> {
    let mut out = Vec::new();
    for element in browser.find_all(Locator::Css(css)).await.unwrap() {
        out.push(element.text().await.unwrap());
    }
    out
}

async fn messages(browser: &Browser) -> Vec<String> {
    texts_of(browser, "#log li.message").await
}

/// Types `text` into the field `id`.
async fn type_into(page: &Browser, id: &str, text: &str) {
    page.find(Locator::Id(id))
        .await
        .unwrap()
        .send_keys(text)
        .await
        .unwrap();
}

/// Clicks the element `id`.
async fn click(page: &Browser, id: &str) {
    page.find(Locator::Id(id))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// A browser with its own profile under `profiles`, on `server`'s page, connected.
async fn open_page(driver: &Driver, profiles: &tempfile::TempDir, server: &Server) -> Browser {
    let page = driver
        .browser(&profiles.path().join(&server.instance))
        .await;
    page.goto(&format!("http://{}/", server.addr))
        .await
        .unwrap();
    wait_connected(&page, &server.instance).await;
    page
}

/// Has `bob` send a marker, and once the page shows it (anything still in flight
/// arrives before it), checks that `text` is shown exactly once.
async fn assert_shown_once(page: &Browser, bob: &mut Client, text: &str) {
    bob.send("bob", "marker").await;
    let shown = wait_shown(page, "marker").await;
    let copies = shown.iter().filter(|m| m.contains(text)).count();
    assert_eq!(copies, 1, "{text:?} in {shown:?}");
}

/// Sets a guest's name, which takes a new connection, and waits for it.
async fn set_name(page: &Browser, name: &str, instance: &str) {
    type_into(page, "name", name).await;
    // The name counts once the field is left.
    click(page, "text").await;
    wait_connected(page, instance).await;
}

/// Joins a room through the sidebar's form; the page shows it.
async fn join_room(page: &Browser, room: &str) {
    type_into(page, "join-room", room).await;
    click(page, "join").await;
    wait_text(page, "#room", &format!("#{room}")).await;
}

/// Shows a room by clicking it in the sidebar.
async fn open_room(page: &Browser, room: &str) {
    page.find(Locator::Css(&format!(
        "#rooms li[data-room={room}] button.room"
    )))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    wait_text(page, "#room", &format!("#{room}")).await;
}

/// Waits until the element `css` shows exactly `want`.
async fn wait_text(page: &Browser, css: &str, want: &str) {
    poll_until_equal(
        WAIT,
        &format!("{css} to show it"),
        || text_of(page, css),
        want,
    )
    .await
}

/// Waits until the online list shows exactly `want`.
async fn wait_online(page: &Browser, want: &[&str]) {
    poll_until_equal(
        WAIT,
        "the online list",
        || texts_of(page, "#members li"),
        want,
    )
    .await
}

/// Types a message into the page's form and submits it.
async fn type_text_and_send(page: &Browser, text: &str) {
    type_into(page, "text", text).await;
    click(page, "send").await;
}

/// Types a name and a message into the page's form and submits it.
async fn type_and_send(page: &Browser, name: &str, text: &str) {
    type_into(page, "name", name).await;
    type_text_and_send(page, text).await;
}

/// Waits until a message containing `needle` is shown; returns every message shown then.
async fn wait_shown(browser: &Browser, needle: &str) -> Vec<String> {
    poll_until(WAIT, &format!("{needle:?} on the page"), || async {
        let all = messages(browser).await;
        all.iter().any(|m| m.contains(needle)).then_some(all)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn two_browsers_on_two_instances_chat() {
    let redis = Redis::start();
    let a = Server::start("instance-a", &redis.url(), &[]);
    let b = Server::start("instance-b", &redis.url(), &[]);
    let driver = Driver::start();
    let profiles = tempfile::tempdir().unwrap();
    let alice = driver.browser(&profiles.path().join("alice")).await;
    let bob = driver.browser(&profiles.path().join("bob")).await;

    let result = async {
        alice.goto(&format!("http://{}/", a.addr)).await.unwrap();
        bob.goto(&format!("http://{}/", b.addr)).await.unwrap();
        wait_connected(&alice, "instance-a").await;
        wait_connected(&bob, "instance-b").await;

        // Markup in a message must show up as text, not become elements.
        let hostile = "<img src=x onerror=\"document.title='owned'\"> hello bob";
        type_and_send(&alice, "alice", hostile).await;

        let seen = poll_until(WAIT, "alice's message on bob's page", || async {
            let all = messages(&bob).await;
            all.into_iter().find(|m| m.contains("hello bob"))
        })
        .await;
        assert!(seen.contains("alice"), "{seen}");
        assert!(seen.contains(hostile), "rendered as text: {seen}");
        assert!(
            bob.find_all(Locator::Css("#log img"))
                .await
                .unwrap()
                .is_empty()
        );
        assert_ne!(bob.title().await.unwrap(), "owned");

        type_and_send(&bob, "bob", "hi alice").await;
        wait_shown(&alice, "hi alice").await;

        let shot = bob.screenshot().await.unwrap();
        let path = artifacts_dir().join("browser-chat-bob.png");
        std::fs::write(&path, shot).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
    .await;
    let _ = alice.close().await;
    let _ = bob.close().await;
    result
}

/// The page survives its server being replaced: on close 1012 it shows the state,
/// reconnects with backoff to the new server on the same address, and with `since`
/// shows the message sent meanwhile exactly once, without repeating older ones, in
/// every room of its sidebar.
#[tokio::test(flavor = "multi_thread")]
async fn page_reconnects_with_since_after_server_restart() {
    let redis = Redis::start();
    let mut a = Server::start("old-a", &redis.url(), &["--drain-secs", "0"]);
    let b = Server::start("b", &redis.url(), &[]);
    let driver = Driver::start();
    let profiles = tempfile::tempdir().unwrap();
    let page = open_page(&driver, &profiles, &a).await;

    let result = async {
        let mut bob = Client::connect(&b, "").await;
        bob.send("bob", "first").await;
        assert_eq!(bob.next_message().await["text"], "first");
        wait_shown(&page, "first").await;
        // A second room in the sidebar, with a message the page has seen.
        let mut in_ops = Client::connect(&b, "?room=ops").await;
        join_room(&page, "ops").await;
        in_ops.send("carol", "ops before").await;
        in_ops.next_message().await;
        wait_shown(&page, "ops before").await;
        open_room(&page, "lobby").await;

        a.sigterm();
        assert!(a.wait_exit().await.success());
        poll_until(WAIT, "the page to notice the restart", || async {
            let log = text_of(&page, "#log").await;
            (log.contains("(1012)")).then_some(())
        })
        .await;
        bob.send("bob", "while away").await;
        assert_eq!(bob.next_message().await["text"], "while away");
        in_ops.send("carol", "ops while away").await;
        in_ops.next_message().await;

        let _new_a = Server::start_at(&a.addr.to_string(), "new-a", &redis.url(), &[]);
        wait_connected(&page, "new-a").await;
        let shown = wait_shown(&page, "while away").await;
        let count =
            |shown: &[String], needle: &str| shown.iter().filter(|m| m.contains(needle)).count();
        assert_eq!(
            (count(&shown, "first"), count(&shown, "while away")),
            (1, 1),
            "{shown:?}"
        );
        // Every room of the sidebar is rejoined from where the page was: what ops got
        // meanwhile counts as unread, and shows once.
        wait_text(&page, "#rooms li[data-room=ops] .unread", "1").await;
        open_room(&page, "ops").await;
        let shown = wait_shown(&page, "ops while away").await;
        assert_eq!(
            (count(&shown, "ops before"), count(&shown, "ops while away")),
            (1, 1),
            "{shown:?}"
        );

        let shot = page.screenshot().await.unwrap();
        std::fs::write(artifacts_dir().join("browser-reconnect.png"), shot).unwrap();
    }
    .await;
    let _ = page.close().await;
    result
}

/// Redis loses the room's history while the page is open: the page says that some
/// messages were missed, drops the log with the hole in it, and shows what comes next.
#[tokio::test(flavor = "multi_thread")]
async fn page_says_when_messages_were_missed() {
    let redis = Redis::start();
    let a = Server::start("a", &redis.url(), &[]);
    let b = Server::start("b", &redis.url(), &[]);
    let driver = Driver::start();
    let profiles = tempfile::tempdir().unwrap();
    let page = open_page(&driver, &profiles, &a).await;

    let result = async {
        let mut bob = Client::connect(&b, "").await;
        bob.send("bob", "before the loss").await;
        wait_shown(&page, "before the loss").await;

        let _: () = redis::cmd("FLUSHALL")
            .query_async(&mut common::redis_conn(&redis.url()).await)
            .await
            .unwrap();
        bob.send("bob", "after the loss").await;
        let shown = poll_until(WAIT, "the notice and the new message", || async {
            let log = text_of(&page, "#log").await;
            (log.contains("some messages were missed") && log.contains("after the loss"))
                .then_some(messages(&page).await)
        })
        .await;
        assert!(
            !shown.iter().any(|m| m.contains("before the loss")),
            "{shown:?}"
        );
        // It rejoined with history=50 (the newest messages): nothing twice.
        assert_shown_once(&page, &mut bob, "after the loss").await;
        let shot = page.screenshot().await.unwrap();
        std::fs::write(artifacts_dir().join("browser-missed.png"), shot).unwrap();
    }
    .await;
    let _ = page.close().await;
    result
}

/// A message typed while the server cannot reach Redis shows as pending, is sent again
/// by the page until the server acknowledges it, and then shows exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn page_resends_pending_messages_once_stored() {
    let redis = Redis::start();
    let proxy = common::Proxy::start(redis.port).await;
    let a = Server::start("a", &proxy.url(), &[]);
    let b = Server::start("b", &redis.url(), &[]);
    a.wait_health(200).await;
    let driver = Driver::start();
    let profiles = tempfile::tempdir().unwrap();
    let page = open_page(&driver, &profiles, &a).await;

    let result = async {
        set_name(&page, "carol", "a").await;
        proxy.cut();
        a.wait_health(503).await;
        type_text_and_send(&page, "through the outage").await;
        poll_until(WAIT, "the message to show as pending", || async {
            let pending = page
                .find_all(Locator::Css("#log li.pending"))
                .await
                .unwrap();
            (!pending.is_empty()).then_some(())
        })
        .await;
        // Answered `unavailable` at least once while the link is down.
        poll_until(WAIT, "a refused send", || async {
            (a.metric("chat_rejected_frames_total").await >= 1.0).then_some(())
        })
        .await;

        proxy.restore();
        wait_shown(&page, "through the outage").await;
        poll_until(WAIT, "the pending mark to go", || async {
            let pending = page
                .find_all(Locator::Css("#log li.pending"))
                .await
                .unwrap();
            pending.is_empty().then_some(())
        })
        .await;
        let mut bob = Client::connect(&b, "").await;
        assert_shown_once(&page, &mut bob, "through the outage").await;
    }
    .await;
    let _ = page.close().await;
    result
}

/// The sidebar, the online list and typing, across two instances: a room joined from
/// the sidebar opens on its recent history, both users are listed in it, one sees the
/// other typing, messages of a room not shown count as unread until it is opened, and
/// a user who closes the page leaves the list.
#[tokio::test(flavor = "multi_thread")]
async fn rooms_who_is_online_and_typing_across_two_instances() {
    let redis = Redis::start();
    let a = Server::start("instance-a", &redis.url(), &[]);
    let b = Server::start("instance-b", &redis.url(), &[]);
    let driver = Driver::start();
    let profiles = tempfile::tempdir().unwrap();
    let alice = open_page(&driver, &profiles, &a).await;
    let bob = open_page(&driver, &profiles, &b).await;

    let result = async {
        let mut earlier = Client::connect(&b, "?room=ops").await;
        earlier.send("carol", "earlier in ops").await;
        earlier.next_message().await;
        drop(earlier);

        set_name(&alice, "alice", "instance-a").await;
        set_name(&bob, "bob", "instance-b").await;
        wait_online(&alice, &["alice", "bob"]).await;
        join_room(&alice, "ops").await;
        wait_shown(&alice, "earlier in ops").await;
        join_room(&bob, "ops").await;
        wait_online(&alice, &["alice", "bob"]).await;
        wait_online(&bob, &["alice", "bob"]).await;

        type_into(&bob, "text", "hello o").await;
        wait_text(&alice, "#typing", "bob is typing…").await;
        type_text_and_send(&bob, "ps").await;
        wait_shown(&alice, "hello ops").await;

        open_room(&alice, "lobby").await;
        type_text_and_send(&bob, "while alice looks elsewhere").await;
        wait_text(&alice, "#rooms li[data-room=ops] .unread", "1").await;
        assert!(
            !messages(&alice)
                .await
                .iter()
                .any(|m| m.contains("while alice looks elsewhere")),
            "a message of ops shows in the lobby"
        );
        open_room(&alice, "ops").await;
        wait_shown(&alice, "while alice looks elsewhere").await;
        wait_text(&alice, "#rooms li[data-room=ops] .unread", "").await;

        let shot = alice.screenshot().await.unwrap();
        let path = artifacts_dir().join("browser-rooms-alice.png");
        std::fs::write(&path, shot).unwrap();
        eprintln!("screenshot: {}", path.display());

        bob.close().await.unwrap();
        wait_online(&alice, &["alice"]).await;
    }
    .await;
    let _ = alice.close().await;
    result
}

/// Waits for the page's sign-in form, pastes `token` and signs in.
async fn sign_in(page: &Browser, token: &str) {
    poll_until(WAIT, "the sign-in form", || async {
        let form = page.find(Locator::Id("signin")).await.unwrap();
        form.is_displayed().await.unwrap().then_some(())
    })
    .await;
    type_into(page, "token", token).await;
    click(page, "signin-button").await;
}

/// With sign-in on, the page asks for a token, then speaks with the token's name on
/// both instances; when the token expires it asks again and carries on.
#[tokio::test(flavor = "multi_thread")]
async fn pages_sign_in_with_tokens_and_ask_again_when_one_expires() {
    let dir = tempfile::tempdir().unwrap();
    let key = common::KeyPair::ed25519(dir.path(), "issuer");
    let auth = ["--auth-public-key-file", key.public_pem_path()];
    let redis = Redis::start();
    let a = Server::start("instance-a", &redis.url(), &auth);
    let b = Server::start("instance-b", &redis.url(), &auth);
    let driver = Driver::start();
    let profiles = tempfile::tempdir().unwrap();
    let token = |sub: &str, name: &str, lifetime: u64| {
        key.token(&json!({"sub": sub, "name": name, "exp": common::unix_now() + lifetime}))
    };
    let alice = driver.browser(&profiles.path().join("alice")).await;
    let bob = driver.browser(&profiles.path().join("bob")).await;

    let result = async {
        alice.goto(&format!("http://{}/", a.addr)).await.unwrap();
        bob.goto(&format!("http://{}/", b.addr)).await.unwrap();
        wait_text(&alice, "#state", "signed out").await;
        sign_in(&alice, &token("u-alice", "Alice", 600)).await;
        wait_connected(&alice, "instance-a").await;
        wait_text(&alice, "#user", "Alice").await;
        sign_in(&bob, &token("u-bob", "Bob", 8)).await;
        wait_connected(&bob, "instance-b").await;
        wait_online(&bob, &["Alice", "Bob"]).await;

        type_text_and_send(&alice, "signed hello").await;
        let shown = wait_shown(&bob, "signed hello").await;
        assert!(
            shown
                .iter()
                .any(|m| m.contains("Alice") && m.contains("signed hello")),
            "{shown:?}"
        );

        // Bob's token runs out: his page asks for a new one, then carries on, without
        // Alice's messages of the meantime going missing.
        wait_text(&bob, "#state", "signed out").await;
        assert!(text_of(&bob, "#signin-why").await.contains("expired"));
        type_text_and_send(&alice, "while bob signs in again").await;
        sign_in(&bob, &token("u-bob", "Bob", 600)).await;
        wait_connected(&bob, "instance-b").await;
        let shown = wait_shown(&bob, "while bob signs in again").await;
        let count = |needle: &str| shown.iter().filter(|m| m.contains(needle)).count();
        assert_eq!(
            (count("signed hello"), count("while bob signs in again")),
            (1, 1),
            "{shown:?}"
        );
        let shot = bob.screenshot().await.unwrap();
        std::fs::write(artifacts_dir().join("browser-signed-in-bob.png"), shot).unwrap();
    }
    .await;
    let _ = alice.close().await;
    let _ = bob.close().await;
    result
}

/// A stand-in for the operator's sign-in service: `GET /token` mints a token for Alice
/// valid `lifetime` seconds, for pages of any origin that send their credentials (CORS),
/// and counts the tokens it gave.
struct TokenService {
    url: String,
    minted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl TokenService {
    async fn start(key: common::KeyPair, lifetime: u64) -> TokenService {
        use axum::http::{HeaderMap, HeaderValue, header};
        let minted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let key = std::sync::Arc::new(key);
        let count = minted.clone();
        let app = axum::Router::new().route(
            "/token",
            axum::routing::get(move |request: HeaderMap| {
                let (key, count) = (key.clone(), count.clone());
                async move {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let token = key.token(&json!({
                        "sub": "u-alice", "name": "Alice", "exp": common::unix_now() + lifetime,
                    }));
                    let origin = request
                        .get(header::ORIGIN)
                        .cloned()
                        .unwrap_or(HeaderValue::from_static("null"));
                    (
                        [
                            (header::ACCESS_CONTROL_ALLOW_ORIGIN, origin),
                            (
                                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                                HeaderValue::from_static("true"),
                            ),
                        ],
                        token,
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        TokenService {
            url,
            minted,
            server,
        }
    }

    fn minted(&self) -> usize {
        self.minted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for TokenService {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// With `--auth-token-url`, the page signs in by itself: it fetches a token from the
/// operator's sign-in service, and when that token expires it fetches another and
/// carries on, never asking its user, and missing nothing in between.
#[tokio::test(flavor = "multi_thread")]
async fn a_page_fetches_its_tokens_from_the_sign_in_service_and_renews_them() {
    let dir = tempfile::tempdir().unwrap();
    let key = common::KeyPair::ed25519(dir.path(), "issuer");
    let public_key = key.public_pem_path().to_owned();
    let service = TokenService::start(key, 6).await;
    let redis = Redis::start();
    let flags = [
        "--auth-public-key-file",
        public_key.as_str(),
        "--auth-token-url",
        service.url.as_str(),
    ];
    let a = Server::start("instance-a", &redis.url(), &flags);
    let b = Server::start("instance-b", &redis.url(), &flags);
    let driver = Driver::start();
    let profiles = tempfile::tempdir().unwrap();
    let page = driver.browser(&profiles.path().join("alice")).await;

    let result = async {
        page.goto(&format!("http://{}/", a.addr)).await.unwrap();
        wait_connected(&page, "instance-a").await;
        wait_text(&page, "#user", "Alice").await;
        assert_eq!(service.minted(), 1);
        type_text_and_send(&page, "signed in by the service").await;
        wait_shown(&page, "signed in by the service").await;

        // The token expires after 6 s: the page gets another and reconnects, with
        // `since`; a message sent meanwhile from the other instance shows once.
        poll_until(WAIT, "a second token", || async {
            (service.minted() >= 2).then_some(())
        })
        .await;
        let token = reqwest::get(&service.url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut other = common::Client::connect(&b, &format!("?token={token}")).await;
        other.send("ignored", "after the renewal").await;
        wait_connected(&page, "instance-a").await;
        let shown = wait_shown(&page, "after the renewal").await;
        assert_eq!(
            shown
                .iter()
                .filter(|m| m.contains("signed in by the service"))
                .count(),
            1,
            "{shown:?}"
        );
        let form = page.find(Locator::Id("signin")).await.unwrap();
        assert!(
            !form.is_displayed().await.unwrap(),
            "the page asked its user"
        );
    }
    .await;
    let _ = page.close().await;
    result
}

/// Scrolls `page`'s log to its top, as a reader dragging it up does.
async fn scroll_to_top(page: &Browser) {
    page.execute("document.getElementById('log').scrollTop = 0;", vec![])
        .await
        .unwrap();
}

/// Whether the message line `text` is within the log's visible part.
async fn in_view(page: &Browser, text: &str) -> bool {
    let script = "const log = document.getElementById('log');
        const line = [...log.querySelectorAll('li.message')]
            .find((li) => li.querySelector('.text') && li.querySelector('.text').textContent === arguments[0]);
        if (!line) return false;
        const top = line.offsetTop - log.offsetTop;
        return top >= log.scrollTop && top + line.offsetHeight <= log.scrollTop + log.clientHeight;";
    page.execute(script, vec![json!(text)])
        .await
        .unwrap()
        .as_bool()
        .unwrap()
}

/// The texts of the message lines shown, oldest first (removed ones as "message
/// removed").
async fn shown_texts(page: &Browser) -> Vec<String> {
    // Read in one script: the log changes under a reader that asks line by line.
    let script =
        "return [...document.querySelectorAll('#log li.message .text, #log li.message .removed')]
        .map((span) => span.textContent);";
    serde_json::from_value(page.execute(script, vec![]).await.unwrap()).unwrap()
}

/// Waits until the message lines shown are `expected`; on a timeout, says what was shown.
async fn wait_shown_texts(page: &Browser, what: &str, expected: &[String]) {
    poll_until_equal(WAIT, what, || shown_texts(page), expected).await
}

/// What a product's backend does to a room through the server API, seen in a page: the
/// page opens on the newest 50 of 120 messages, loads older ones a page at a time when
/// scrolled to the top (what was in view stays in view) until it says it reached the
/// beginning, every message once and in order; a message deleted through the API shows
/// as removed at once, and again after a reload; and when the user is banned the page
/// says so and does not try to reconnect until the ban has ended.
#[tokio::test(flavor = "multi_thread")]
async fn page_scrolls_back_and_shows_deletions_and_bans_from_the_server_api() {
    let dir = tempfile::tempdir().unwrap();
    let key = common::KeyPair::ed25519(dir.path(), "issuer");
    let flags = [
        "--auth-public-key-file",
        key.public_pem_path(),
        "--api-rate-burst",
        "1000",
    ];
    let redis = Redis::start();
    let a = Server::start("instance-a", &redis.url(), &flags);
    a.wait_health(200).await;
    let backend = key.token(&common::api_claims("backend", 600));
    let mut ids = Vec::new();
    for i in 0..120 {
        let body = json!({"name": "bot", "text": format!("m{i}")});
        let (status, posted, _) = common::api(
            &a,
            "POST",
            "/api/v1/rooms/lobby/messages",
            Some(&backend),
            Some(&body),
        )
        .await;
        assert_eq!(status, 200, "{posted}");
        ids.push(posted["id"].as_str().unwrap().to_owned());
    }
    let alice =
        key.token(&json!({"sub": "u-alice", "name": "Alice", "exp": common::unix_now() + 600}));
    let driver = Driver::start();
    let profiles = tempfile::tempdir().unwrap();
    let page = driver.browser(&profiles.path().join("alice")).await;

    let result = async {
        page.goto(&format!("http://{}/#token={alice}", a.addr))
            .await
            .unwrap();
        wait_connected(&page, "instance-a").await;
        let all: Vec<String> = (0..120).map(|i| format!("m{i}")).collect();
        wait_shown_texts(&page, "the newest 50 messages", &all[70..]).await;
        assert!(
            text_of(&page, "#log").await.contains("API"),
            "marked as the API's"
        );

        scroll_to_top(&page).await;
        wait_shown_texts(&page, "the next 50 older messages", &all[20..]).await;
        assert!(
            in_view(&page, "m70").await,
            "what was in view stayed in view"
        );
        scroll_to_top(&page).await;
        wait_shown_texts(&page, "every message, in order, once", &all).await;
        wait_shown_notice(&page, "the beginning of #lobby").await;

        // Deleted through the API: removed at once, in its place.
        let (status, _, _) = common::api(
            &a,
            "DELETE",
            &format!("/api/v1/rooms/lobby/messages/{}", ids[100]),
            Some(&backend),
            None,
        )
        .await;
        assert_eq!(status, 204);
        let mut expected = all.clone();
        expected[100] = "message removed".to_owned();
        wait_shown_texts(&page, "m100 shown as removed", &expected).await;
        page.execute(
            "document.querySelector('#log li.deleted').scrollIntoView({block: 'center'});",
            vec![],
        )
        .await
        .unwrap();
        let shot = page.screenshot().await.unwrap();
        std::fs::write(artifacts_dir().join("browser-scrollback-deleted.png"), shot).unwrap();
        // And after a reload: the newest (of the 50 newest entries, the deletion's one
        // among them), m100 removed among them.
        page.refresh().await.unwrap();
        wait_connected(&page, "instance-a").await;
        wait_shown_texts(&page, "m100 removed after a reload", &expected[71..]).await;

        // Banned for 4 s: the page says so, and waits the ban out before it reconnects.
        let (status, ban, _) = common::api(
            &a,
            "POST",
            "/api/v1/users/u-alice/disconnect",
            Some(&backend),
            Some(&json!({"ban_seconds": 4, "reason": "cooling off"})),
        )
        .await;
        assert_eq!(status, 202);
        wait_text(&page, "#state", "banned").await;
        wait_shown_notice(&page, "You are banned from this chat for 4 s: cooling off.").await;
        let shot = page.screenshot().await.unwrap();
        std::fs::write(artifacts_dir().join("browser-banned.png"), shot).unwrap();
        wait_connected(&page, "instance-a").await;
        let back_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(
            back_ms >= ban["banned_until_ms"].as_u64().unwrap(),
            "back before the ban ended"
        );
        assert!(
            !a.logged("refused websocket: banned"),
            "the page tried to reconnect while banned"
        );
    }
    .await;
    let _ = page.close().await;
    result
}

/// Waits until the log shows a notice containing `needle`.
async fn wait_shown_notice(page: &Browser, needle: &str) {
    poll_until(WAIT, &format!("the notice {needle:?}"), || async {
        texts_of(page, "#log li.notice")
            .await
            .iter()
            .any(|n| n.contains(needle))
            .then_some(())
    })
    .await
}
