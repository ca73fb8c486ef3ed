//! The wire protocol: the JSON frames exchanged over `/ws`, Redis stream ids, and
//! the validation of everything a client can send (room names, `since`, names, texts).
//!
//! Nothing here does I/O; the connection handler calls into it and turns a
//! [`Rejection`] into an `error` frame.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// Longest room name accepted in `/ws?room=`.
pub const MAX_ROOM_LEN: usize = 64;
/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 32;
/// Longest message text, in characters.
pub const MAX_TEXT_CHARS: usize = 2000;
/// Largest text frame answered with an error frame rather than parsed. A 2000-character
/// text of 4-byte characters, JSON-escaped, still fits.
pub const MAX_FRAME_BYTES: usize = 16 * 1024;
/// Hard cap enforced by the WebSocket layer itself: a larger frame or message ends the
/// connection (close 1009) because it is never buffered whole.
pub const HARD_MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Longest client-chosen token (`epoch`, `cid`).
pub const MAX_TOKEN_LEN: usize = 64;

/// Most messages sent for `history=N`.
pub const MAX_HISTORY: usize = 200;

/// The room clients join when they give none.
pub const DEFAULT_ROOM: &str = "lobby";

/// Checks a room name: 1 to [`MAX_ROOM_LEN`] characters of `[A-Za-z0-9_-]`.
pub fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= MAX_ROOM_LEN
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks a client-supplied token (an epoch it was given, a client message id): 1 to
/// [`MAX_TOKEN_LEN`] characters of `[A-Za-z0-9_:.-]`, safe in a Redis key and a log line.
pub fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.'))
}

/// A Redis stream entry id (`<ms>-<seq>`). Ordered the way Redis orders entries, which
/// the string form is not (`"9-0" > "10-0"` as strings).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("not a stream id (expected <ms>-<seq>): {0:?}")]
pub struct BadStreamId(String);

impl FromStr for StreamId {
    type Err = BadStreamId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadStreamId(s.chars().take(64).collect());
        // Redis accepts a bare `<ms>` meaning `<ms>-0`; clients may too.
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        Ok(StreamId {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Frames the server sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame<'a> {
    /// First frame of every connection. `epoch` names the room's history (absent while
    /// the room has none); `recovered`/`reason` answer a `since`, when one was given.
    Hello {
        instance: &'a str,
        room: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
        /// Who the connection speaks for, when the server verifies tokens.
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<&'a crate::auth::Identity>,
    },
    /// In-band: messages of the room were lost to this connection while it was open
    /// (the instance's reader resumed after they were trimmed, or Redis lost them).
    Recovery {
        room: &'a str,
        recovered: bool,
        reason: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
    },
    Message {
        id: String,
        room: &'a str,
        name: &'a str,
        text: &'a str,
        /// Milliseconds since the epoch, taken from the stream id (Redis's clock), so every
        /// instance reports the same time for a message.
        ts: u64,
    },
    /// A `send` with a `cid` was stored (now or, for a repeated `cid`, before) as `id`.
    Ack { cid: &'a str, id: String },
    Error {
        code: &'static str,
        message: String,
        /// The `cid` of the `send` refused, when it had a valid one.
        #[serde(skip_serializing_if = "Option::is_none")]
        cid: Option<&'a str>,
    },
}

impl ServerFrame<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialize")
    }
}

/// A chat message as stored in a room's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub id: StreamId,
    pub room: String,
    pub name: String,
    pub text: String,
}

impl ChatMessage {
    pub fn to_json(&self) -> String {
        ServerFrame::Message {
            id: self.id.to_string(),
            room: &self.room,
            name: &self.name,
            text: &self.text,
            ts: self.id.ms,
        }
        .to_json()
    }
}

/// A validated `send` request.
#[derive(Debug, PartialEq, Eq)]
pub struct SendRequest {
    pub name: String,
    pub text: String,
    /// The client's id for this message: a retry with the same one is stored once.
    pub cid: Option<String>,
}

/// Why a client frame was refused; `code` is the stable machine-readable part of the
/// `error` frame.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub code: &'static str,
    pub message: String,
    pub cid: Option<String>,
}

impl Rejection {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
            cid: None,
        }
    }

    /// The same rejection, naming the `send` it answers.
    pub fn with_cid(self, cid: Option<String>) -> Self {
        Rejection { cid, ..self }
    }

    pub fn to_frame(&self) -> String {
        ServerFrame::Error {
            code: self.code,
            message: self.message.clone(),
            cid: self.cid.as_deref(),
        }
        .to_json()
    }
}

/// Parses and validates one text frame from a client. With a `speaker` (the name of a
/// verified token) that is the author, and the frame's own `name`, if any, is ignored;
/// without one (an open server) a `send` names its author.
pub fn parse_client_frame(raw: &str, speaker: Option<&str>) -> Result<SendRequest, Rejection> {
    if raw.len() > MAX_FRAME_BYTES {
        return Err(Rejection::new(
            "too_large",
            format!(
                "frame is {} bytes; the limit is {MAX_FRAME_BYTES}",
                raw.len()
            ),
        ));
    }
    let value: serde_json::Value = serde_json::from_str(raw)
        .map_err(|e| Rejection::new("invalid_json", format!("frame is not JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(Rejection::new(
            "invalid_json",
            "frame must be a JSON object",
        ));
    };
    match object.get("type").and_then(|t| t.as_str()) {
        Some("send") => {}
        Some(other) => {
            return Err(Rejection::new(
                "unknown_type",
                format!(
                    "unknown frame type {:?}; expected \"send\"",
                    other.chars().take(32).collect::<String>()
                ),
            ));
        }
        None => {
            return Err(Rejection::new(
                "unknown_type",
                "frame needs a string field \"type\"",
            ));
        }
    }
    let cid = match object.get("cid") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(cid)) if valid_token(cid) => Some(cid.clone()),
        Some(_) => {
            return Err(Rejection::new(
                "invalid_cid",
                format!("\"cid\" must be 1 to {MAX_TOKEN_LEN} characters of A-Z a-z 0-9 _ - : ."),
            ));
        }
    };
    let fields = || -> Result<(&str, &str), Rejection> {
        let name = match speaker {
            Some(name) => name,
            None => string_field(object, "name")?,
        };
        let text = string_field(object, "text")?;
        if speaker.is_none() {
            validate_name(name)?;
        }
        validate_text(text)?;
        Ok((name, text))
    };
    match fields() {
        Ok((name, text)) => Ok(SendRequest {
            name: name.to_owned(),
            text: text.to_owned(),
            cid,
        }),
        Err(rejection) => Err(rejection.with_cid(cid)),
    }
}

fn string_field<'a>(
    object: &'a serde_json::Map<String, serde_json::Value>,
    field: &'static str,
) -> Result<&'a str, Rejection> {
    object.get(field).and_then(|v| v.as_str()).ok_or_else(|| {
        Rejection::new(
            "invalid_field",
            format!("\"send\" needs a string field {field:?}"),
        )
    })
}

pub fn validate_name(name: &str) -> Result<(), Rejection> {
    if name.trim().is_empty() {
        return Err(Rejection::new("invalid_name", "name must not be empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(Rejection::new(
            "name_too_long",
            format!("name is longer than {MAX_NAME_CHARS} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Rejection::new(
            "control_characters",
            "name must not contain control characters",
        ));
    }
    Ok(())
}

fn validate_text(text: &str) -> Result<(), Rejection> {
    if text.trim().is_empty() {
        return Err(Rejection::new("invalid_text", "text must not be empty"));
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(Rejection::new(
            "text_too_long",
            format!("text is longer than {MAX_TEXT_CHARS} characters"),
        ));
    }
    // Multi-line messages are fine; other control characters only serve to garble
    // other people's screens and logs.
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(Rejection::new(
            "control_characters",
            "text must not contain control characters other than newline",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn accepts_a_valid_send() {
        assert_eq!(
            parse_client_frame(r#"{"type":"send","name":"alice","text":"hi\nthere"}"#, None),
            Ok(SendRequest {
                name: "alice".into(),
                text: "hi\nthere".into(),
                cid: None,
            })
        );
        let with_cid =
            parse_client_frame(r#"{"type":"send","name":"a","text":"b","cid":"k-1"}"#, None);
        assert_eq!(with_cid.unwrap().cid.as_deref(), Some("k-1"));
    }

    #[test]
    fn a_signed_in_speaker_is_the_author_whatever_the_frame_says() {
        let as_alice = |raw: &str| parse_client_frame(raw, Some("Alice"));
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
        };
        let v: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["id"], "1700000000000-3");
        assert_eq!(v["ts"], 1_700_000_000_000u64);
        assert_eq!(v["text"], "<b>");
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
            "invalid_name",
            "invalid_text",
            "name_too_long",
            "text_too_long",
            "control_characters",
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

        /// Objects shaped like a `send`, with every field arbitrary or missing.
        fn send_like() -> impl Strategy<Value = Value> {
            let field = prop_oneof![json_value(), any::<String>().prop_map(Value::String)];
            (
                prop_oneof![Just(json!("send")), json_value()],
                prop::option::of(field.clone()),
                prop::option::of(field.clone()),
                prop::option::of(field),
            )
                .prop_map(|(kind, name, text, cid)| {
                    let mut object = serde_json::Map::new();
                    object.insert("type".into(), kind);
                    for (key, value) in [("name", name), ("text", text), ("cid", cid)] {
                        if let Some(value) = value {
                            object.insert(key.into(), value);
                        }
                    }
                    Value::Object(object)
                })
        }

        /// The decoder either accepts a frame whose every field is valid, or refuses it
        /// with a documented code and an error frame that is JSON.
        fn check(raw: &str) {
            match parse_client_frame(raw, None) {
                Ok(send) => {
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
            fn arbitrary_sends_never_panic(value in send_like()) {
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
}
