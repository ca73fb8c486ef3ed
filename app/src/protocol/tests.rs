use super::*;

#[test]
fn stream_ids_order_numerically_and_round_trip() {
    let a: StreamId = "9-5".parse().unwrap();
    let b: StreamId = "10-0".parse().unwrap();
    assert!(a < b);
    assert_eq!(b.to_string(), "10-0");
    assert_eq!(
        "17".parse::<StreamId>().unwrap(),
        StreamId { ms: 17, seq: 0 }
    );
    assert!("x-1".parse::<StreamId>().is_err());
    assert!("1-".parse::<StreamId>().is_err());
    assert!("".parse::<StreamId>().is_err());
}

#[test]
fn room_names() {
    assert!(valid_room("lobby"));
    assert!(valid_room("a_b-C9"));
    assert!(!valid_room(""));
    assert!(!valid_room("has space"));
    assert!(!valid_room("ümlaut"));
    assert!(!valid_room(&"x".repeat(MAX_ROOM_LEN + 1)));
}

#[test]
fn tokens() {
    assert!(valid_token("0f3a-b_c:d.e"));
    assert!(!valid_token(""));
    assert!(!valid_token("a b"));
    assert!(!valid_token("{x}"));
    assert!(!valid_token(&"x".repeat(MAX_TOKEN_LEN + 1)));
}

/// The `send` a frame parses as; fails on anything else.
fn send(raw: &str, speaker: Option<&Member>) -> Result<SendRequest, Rejection> {
    match parse_client_frame(raw, speaker)? {
        ClientFrame::Send(send) => Ok(send),
        other => panic!("{raw} parsed as {other:?}"),
    }
}

#[test]
fn accepts_a_valid_send() {
    assert_eq!(
        send(r#"{"type":"send","name":"alice","text":"hi\nthere"}"#, None),
        Ok(SendRequest {
            room: None,
            name: "alice".into(),
            text: "hi\nthere".into(),
            cid: None,
            sub: None,
            from: None,
        })
    );
    let with_cid = send(
        r#"{"type":"send","room":"ops","name":"a","text":"b","cid":"k-1"}"#,
        None,
    )
    .unwrap();
    assert_eq!(with_cid.cid.as_deref(), Some("k-1"));
    assert_eq!(with_cid.room.as_deref(), Some("ops"));
}

#[test]
fn joins_leaves_and_typing_name_a_valid_room() {
    assert_eq!(
        parse_client_frame(
            r#"{"type":"join","room":"ops","since":"5-1","epoch":"e1","history":500,"presence":true}"#,
            None
        ),
        Ok(ClientFrame::Join(JoinRequest {
            room: "ops".into(),
            since: Some("5-1".parse().unwrap()),
            epoch: Some("e1".into()),
            history: MAX_HISTORY,
            presence: true,
        }))
    );
    assert_eq!(
        parse_client_frame(r#"{"type":"join","room":"ops"}"#, None),
        Ok(ClientFrame::Join(JoinRequest {
            room: "ops".into(),
            ..JoinRequest::default()
        }))
    );
    assert_eq!(
        parse_client_frame(r#"{"type":"leave","room":"ops"}"#, None),
        Ok(ClientFrame::Leave { room: "ops".into() })
    );
    assert_eq!(
        parse_client_frame(r#"{"type":"typing","room":"ops"}"#, None),
        Ok(ClientFrame::Typing { room: "ops".into() })
    );
    let refused = |raw: &str| {
        let rejection = parse_client_frame(raw, None).unwrap_err();
        (rejection.code, rejection.room)
    };
    assert_eq!(
        refused(r#"{"type":"join","room":"no room"}"#),
        ("invalid_room", None)
    );
    assert_eq!(refused(r#"{"type":"leave"}"#), ("invalid_field", None));
    assert_eq!(
        refused(r#"{"type":"join","room":"ops","since":"x"}"#),
        ("invalid_since", Some("ops".into()))
    );
    assert_eq!(
        refused(r#"{"type":"join","room":"ops","since":5}"#),
        ("invalid_field", Some("ops".into()))
    );
    assert_eq!(
        refused(r#"{"type":"join","room":"ops","epoch":"a b"}"#),
        ("invalid_epoch", Some("ops".into()))
    );
    assert_eq!(
        refused(r#"{"type":"join","room":"ops","history":-1}"#),
        ("invalid_history", Some("ops".into()))
    );
    assert_eq!(
        refused(r#"{"type":"join","room":"ops","presence":"yes"}"#),
        ("invalid_field", Some("ops".into()))
    );
    assert_eq!(
        refused(r#"{"type":"send","room":"a b","name":"a","text":"b"}"#),
        ("invalid_room", None)
    );
}

#[test]
fn a_signed_in_speaker_is_the_author_whatever_the_frame_says() {
    let alice = Member {
        sub: "u-alice".into(),
        name: "Alice".into(),
    };
    let as_alice = |raw: &str| send(raw, Some(&alice));
    assert_eq!(
        as_alice(r#"{"type":"send","text":"hi"}"#)
            .unwrap()
            .sub
            .as_deref(),
        Some("u-alice")
    );
    assert_eq!(
        as_alice(r#"{"type":"send","text":"hi"}"#).unwrap().name,
        "Alice"
    );
    assert_eq!(
        as_alice(r#"{"type":"send","name":"Bob","text":"hi"}"#)
            .unwrap()
            .name,
        "Alice"
    );
    assert_eq!(
        as_alice(r#"{"type":"send","name":7,"text":"hi"}"#)
            .unwrap()
            .name,
        "Alice"
    );
    assert_eq!(
        as_alice(r#"{"type":"send","name":"Bob"}"#)
            .unwrap_err()
            .code,
        "invalid_field"
    );
}

#[test]
fn cids_are_checked_and_named_in_errors() {
    let err = |raw: &str| parse_client_frame(raw, None).unwrap_err();
    assert_eq!(
        err(r#"{"type":"send","name":"a","text":"b","cid":7}"#).code,
        "invalid_cid"
    );
    assert_eq!(
        err(r#"{"type":"send","name":"a","text":"b","cid":"a b"}"#).code,
        "invalid_cid"
    );
    let refused = err(r#"{"type":"send","name":"a","text":"","cid":"k"}"#);
    assert_eq!(
        (refused.code, refused.cid.as_deref()),
        ("invalid_text", Some("k"))
    );
    let frame: serde_json::Value = serde_json::from_str(&refused.to_frame()).unwrap();
    assert_eq!(frame["cid"], "k");
}

#[test]
fn rejects_each_kind_of_bad_frame_with_its_code() {
    let code = |raw: &str| parse_client_frame(raw, None).unwrap_err().code;
    assert_eq!(code("{nope"), "invalid_json");
    assert_eq!(code("[1,2]"), "invalid_json");
    assert_eq!(code(r#"{"type":"dance"}"#), "unknown_type");
    assert_eq!(code(r#"{"name":"a","text":"b"}"#), "unknown_type");
    assert_eq!(code(r#"{"type":"send","text":"b"}"#), "invalid_field");
    assert_eq!(
        code(r#"{"type":"send","name":1,"text":"b"}"#),
        "invalid_field"
    );
    assert_eq!(
        code(r#"{"type":"send","name":" ","text":"b"}"#),
        "invalid_name"
    );
    assert_eq!(
        code(r#"{"type":"send","name":"a","text":""}"#),
        "invalid_text"
    );
    let long_name = format!(
        r#"{{"type":"send","name":"{}","text":"b"}}"#,
        "n".repeat(33)
    );
    assert_eq!(code(&long_name), "name_too_long");
    let long_text = format!(
        r#"{{"type":"send","name":"a","text":"{}"}}"#,
        "t".repeat(2001)
    );
    assert_eq!(code(&long_text), "text_too_long");
    assert_eq!(
        code(r#"{"type":"send","name":"a\u0007","text":"b"}"#),
        "control_characters"
    );
    assert_eq!(
        code(r#"{"type":"send","name":"a","text":"b\u001b[2J"}"#),
        "control_characters"
    );
    assert_eq!(code(&"x".repeat(MAX_FRAME_BYTES + 1)), "too_large");
}

#[test]
fn message_frame_carries_redis_time() {
    let m = ChatMessage {
        id: "1700000000000-3".parse().unwrap(),
        room: "lobby".into(),
        name: "a".into(),
        text: "<b>".into(),
        sub: None,
        from: Some("api".into()),
    };
    let v: serde_json::Value = serde_json::from_str(&m.frame().to_json()).unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["id"], "1700000000000-3");
    assert_eq!(v["ts"], 1_700_000_000_000u64);
    assert_eq!(v["text"], "<b>");
    assert_eq!(v["from"], "api");
    assert!(v.get("sub").is_none());
}

mod fuzz {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::super::*;

    const CODES: &[&str] = &[
        "too_large",
        "invalid_json",
        "unknown_type",
        "invalid_field",
        "invalid_cid",
        "invalid_room",
        "invalid_since",
        "invalid_epoch",
        "invalid_history",
        "invalid_name",
        "invalid_text",
        "name_too_long",
        "text_too_long",
        "control_characters",
        "invalid_before",
        "invalid_after",
        "invalid_bound",
        "invalid_limit",
    ];

    /// Arbitrary JSON, nested a few levels.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((any::<String>(), inner), 0..6)
                    .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        })
    }

    /// Objects shaped like a client frame (`send`, `join`, `leave`, `typing`), with
    /// every field arbitrary or missing.
    fn frame_like() -> impl Strategy<Value = Value> {
        const FIELDS: [&str; 10] = [
            "name", "text", "cid", "room", "since", "history", "presence", "before", "after",
            "limit",
        ];
        let field = prop_oneof![
            json_value(),
            any::<String>().prop_map(Value::String),
            "[a-z0-9-]{1,8}".prop_map(Value::String),
            any::<u32>().prop_map(|n| json!(n)),
        ];
        (
            prop_oneof![
                Just(json!("send")),
                Just(json!("join")),
                Just(json!("leave")),
                Just(json!("typing")),
                Just(json!("history")),
                json_value()
            ],
            prop::collection::vec(prop::option::of(field), FIELDS.len()),
        )
            .prop_map(|(kind, values)| {
                let mut object = serde_json::Map::new();
                object.insert("type".into(), kind);
                for (key, value) in FIELDS.iter().zip(values) {
                    if let Some(value) = value {
                        object.insert((*key).into(), value);
                    }
                }
                Value::Object(object)
            })
    }

    /// The decoder either accepts a frame whose every field is valid, or refuses it
    /// with a documented code and an error frame that is JSON.
    fn check(raw: &str) {
        match parse_client_frame(raw, None) {
            Ok(ClientFrame::Join(JoinRequest { room, .. }))
            | Ok(ClientFrame::Leave { room })
            | Ok(ClientFrame::Typing { room }) => assert!(valid_room(&room)),
            Ok(ClientFrame::History(request)) => {
                assert!(valid_room(&request.room));
                assert!((1..=MAX_HISTORY).contains(&request.limit));
            }
            Ok(ClientFrame::Send(send)) => {
                assert!(
                    !send.name.trim().is_empty() && send.name.chars().count() <= MAX_NAME_CHARS
                );
                assert!(
                    !send.text.trim().is_empty() && send.text.chars().count() <= MAX_TEXT_CHARS
                );
                assert!(send.cid.as_deref().is_none_or(valid_token));
            }
            Err(rejection) => {
                assert!(CODES.contains(&rejection.code), "{}", rejection.code);
                let frame: Value = serde_json::from_str(&rejection.to_frame()).unwrap();
                assert_eq!(frame["type"], "error");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
            check(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn arbitrary_json_never_panics(value in json_value()) {
            check(&value.to_string());
        }

        #[test]
        fn arbitrary_client_frames_never_panic(value in frame_like()) {
            check(&value.to_string());
        }

        #[test]
        fn arbitrary_stream_ids_never_panic(text in any::<String>()) {
            if let Ok(id) = text.parse::<StreamId>() {
                prop_assert_eq!(id.to_string().parse::<StreamId>().unwrap(), id);
            }
        }
    }
}
