//! WebSocket conformance: the Autobahn test suite (`wstest`, installed by
//! scripts/python-tool.sh) against `/ws`: framing, pings and pongs, reserved bits and
//! opcodes, fragmentation, UTF-8 validation, the close handshake and frame limits, as
//! RFC 6455 has them and as a hostile or broken client sends them.
//!
//! Autobahn is written for echo servers, and `/ws` is a chat: its first frame is
//! `hello`, and a frame that is not a chat frame (any of Autobahn's texts, a binary
//! frame, one past the size limit) is answered with an `error` frame, not echoed. So
//! Autobahn's own verdicts fail every case that waits for an echo. Each case is judged
//! here from Autobahn's record of it, with that difference and only that accounted for.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{Client, Redis, Server};
use serde_json::{Value, json};

/// The suite's sections run. Section 9 measures throughput (the benchmarks' business,
/// BENCHMARKS.md); 12 and 13 test permessage-deflate, which the server does not offer.
const SECTIONS: [&str; 8] = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"];

/// How many cases those sections hold in autobahntestsuite 25.10.1: all of them ran.
const CASES: usize = 247;

/// Installs (once) and finds `wstest`, failing with how to get it.
fn wstest() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/python-tool.sh");
    let installed = std::process::Command::new("bash")
        .arg(script)
        .arg("wstest")
        .output()
        .expect("bash");
    assert!(
        installed.status.success(),
        "scripts/python-tool.sh could not install wstest (it needs Python 2.7, python3-venv and PyPI): {}",
        String::from_utf8_lossy(&installed.stderr)
    );
    String::from_utf8(installed.stdout).unwrap().trim().into()
}

/// Autobahn's report, read as JSON. Python writes the lone UTF-16 surrogates of its
/// invalid-UTF-8 cases as `\uD800`-style escapes, which are not JSON text (RFC 8259
/// allows only pairs): each becomes U+FFFD, in the expected and the received alike.
fn read_report(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    let mut sane = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            sane.push(c);
            continue;
        }
        let escaped = chars.next().unwrap_or_default();
        let rest = chars.as_str();
        let surrogate = escaped == 'u'
            && rest
                .get(..4)
                .and_then(|hex| u16::from_str_radix(hex, 16).ok())
                .is_some_and(|unit| (0xD800..=0xDFFF).contains(&unit));
        if surrogate {
            sane.push_str("\\ufffd");
            chars.nth(3);
        } else {
            sane.push(c);
            sane.push(escaped);
        }
    }
    serde_json::from_str(&sane).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text of a received text message; empty for any other event.
fn text_of(event: &Value) -> &str {
    (event[0] == "message" && event[2] == false)
        .then(|| event[1].as_str())
        .flatten()
        .unwrap_or_default()
}

/// Whether the event is the server's `hello`.
fn is_hello(event: &Value) -> bool {
    text_of(event).starts_with(r#"{"type":"hello""#)
}

/// A case's events as the chat protocol has them: the server's `hello` is its own, and
/// each `error` frame is the server refusing a frame that was not a chat frame.
fn received_as_chat(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|event| {
            if is_hello(event) {
                None
            } else if text_of(event).starts_with(r#"{"type":"error""#) {
                Some(json!(["refused"]))
            } else {
                Some(event.clone())
            }
        })
        .collect()
}

/// What Autobahn expects, with each echo in it replaced by the server's refusal.
fn expected_of_chat(alternative: &[Value]) -> Vec<Value> {
    alternative
        .iter()
        .map(|event| {
            if event[0] == "message" {
                json!(["refused"])
            } else {
                event.clone()
            }
        })
        .collect()
}

/// Why the case does not conform, or `None` when it does.
fn judge(case: &Value) -> Option<String> {
    let alternatives: Vec<&Vec<Value>> = case["expected"]
        .as_object()
        .unwrap()
        .values()
        .map(|events| events.as_array().unwrap())
        .collect();
    let received = received_as_chat(case["received"].as_array().unwrap());
    let hellos = case["received"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| is_hello(event))
        .count();
    let waited_for_echo = alternatives
        .iter()
        .any(|events| events.iter().any(|event| event[0] == "message"));
    if hellos > 1 {
        return Some(format!("{hellos} hello frames"));
    }
    if !alternatives
        .iter()
        .any(|events| expected_of_chat(events) == received)
    {
        return Some(format!(
            "received {received:?}, expected one of {alternatives:?} (each echo as a refusal)"
        ));
    }
    let close = case["behaviorClose"].as_str().unwrap_or_default();
    // Where Autobahn waited for an echo that never came, it closes with 1001 (going
    // away) when its wait is up: the server must answer with the code it was sent.
    let answered_autobahns_close = waited_for_echo
        && case["localCloseCode"] == 1001
        && case["remoteCloseCode"] == 1001
        && case["wasClean"] == true;
    if !matches!(close, "OK" | "INFORMATIONAL") && !answered_autobahns_close {
        return Some(format!(
            "close: {close}: {} (the server's code {}, Autobahn's {})",
            case["resultClose"], case["remoteCloseCode"], case["localCloseCode"]
        ));
    }
    None
}

/// Autobahn's cases against one server, judged as a chat: every case conforms (the
/// server's pongs, refusals and close codes are what RFC 6455 asks, in the order it
/// asks), and afterwards the server has not panicked, is healthy, and chats.
#[tokio::test(flavor = "multi_thread")]
async fn autobahn_cases_conform_with_refusals_in_place_of_echoes() {
    let wstest = wstest();
    let redis = Redis::start();
    let server = Server::start("autobahn", &redis.url(), &[]);
    server.wait_health(200).await;
    let dir = tempfile::tempdir().unwrap();
    // Autobahn's own report (HTML and JSON, a page per case) is kept for reading.
    let reports = common::artifacts_dir().join("autobahn");
    let _ = std::fs::remove_dir_all(&reports);
    let spec = json!({
        "outdir": reports,
        "servers": [{"agent": "chat-server", "url": server.ws_url("?room=conformance&name=autobahn")}],
        "cases": SECTIONS,
        "exclude-cases": [],
        "exclude-agent-cases": {},
    });
    let spec_path = dir.path().join("fuzzingclient.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let workdir = dir.path().to_owned();
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(wstest)
            .args(["--mode", "fuzzingclient", "--spec"])
            .arg(spec_path)
            .current_dir(workdir)
            .output()
            .expect("running wstest")
    })
    .await
    .unwrap();
    assert!(
        run.status.success(),
        "wstest failed: {}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );

    let index = read_report(&reports.join("index.json"));
    let cases = index["chat-server"].as_object().expect("the agent's cases");
    let mut sections: BTreeMap<u32, (usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    for (id, summary) in cases {
        let file = reports.join(summary["reportfile"].as_str().unwrap());
        let case = read_report(&file);
        let section = id.split('.').next().unwrap().parse().unwrap();
        let tally = sections.entry(section).or_default();
        tally.0 += 1;
        match judge(&case) {
            None => tally.1 += 1,
            Some(why) => failures.push(format!("{id} ({}): {why}", case["description"])),
        }
    }
    println!("Autobahn section: cases, conforming");
    for (section, (run, conforming)) in &sections {
        println!("  {section:>2}: {run:>3}, {conforming:>3}");
    }
    assert!(
        failures.is_empty(),
        "{} cases do not conform:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(cases.len(), CASES, "cases run");

    assert!(!server.panicked(), "the server panicked");
    server.wait_health(200).await;
    let mut alice = Client::connect(&server, "?room=after").await;
    alice.send("alice", "still here").await;
    assert_eq!(alice.next_message().await["text"], "still here");
}

/// The judging is not vacuous: an echo where a refusal belongs, a missing pong, a second
/// `hello` and a close Autobahn did not expect each fail a case; the refusal, the pong
/// and the close that RFC 6455 asks for pass it.
#[test]
fn the_judging_refuses_what_does_not_conform() {
    let hello = json!([
        "message",
        r#"{"type":"hello","instance":"a","room":"r"}"#,
        false
    ]);
    let refusal = json!([
        "message",
        r#"{"type":"error","code":"invalid_json","message":"frame is not JS ..."#,
        false
    ]);
    let case = |expected: Value, received: Value, close: &str, local: u16, remote: u16| {
        json!({"expected": {"OK": expected}, "received": received, "behaviorClose": close,
            "resultClose": "", "localCloseCode": local, "remoteCloseCode": remote, "wasClean": true})
    };
    let echo = json!([["message", "Hello", false]]);
    let pong = json!([["pong", "payload"]]);

    let refused = case(
        echo.clone(),
        json!([hello, refusal]),
        "WRONG CODE",
        1001,
        1001,
    );
    assert_eq!(judge(&refused), None);
    let ponged = case(
        pong.clone(),
        json!([["pong", "payload"], hello]),
        "OK",
        1000,
        1000,
    );
    assert_eq!(judge(&ponged), None);

    let echoed = case(
        echo.clone(),
        json!([hello, ["message", "Hello", false]]),
        "OK",
        1000,
        1000,
    );
    assert!(judge(&echoed).is_some_and(|why| why.starts_with("received")));
    let no_pong = case(pong.clone(), json!([hello]), "OK", 1000, 1000);
    assert!(judge(&no_pong).is_some_and(|why| why.starts_with("received")));
    let two_hellos = case(
        pong,
        json!([hello, ["pong", "payload"], hello]),
        "OK",
        1000,
        1000,
    );
    assert_eq!(judge(&two_hellos).as_deref(), Some("2 hello frames"));
    let wrong_close = case(echo, json!([hello, refusal]), "WRONG CODE", 1001, 1000);
    assert!(judge(&wrong_close).is_some_and(|why| why.starts_with("close")));
}
