use super::*;
use uuid::Uuid;

#[test]
fn text_limits() {
    assert!(check_text("hi").is_ok());
    assert_eq!(check_text("  ").unwrap_err().code, ErrorCode::InvalidText);
    assert!(check_text(&"x".repeat(limits::MAX_TEXT)).is_ok());
    assert!(check_text(&"x".repeat(limits::MAX_TEXT + 1)).is_err());
}

#[test]
fn request_round_trips_with_flat_fields() {
    let text = r#"{"id":7,"op":"create","name":"rust","token":"t"}"#;
    let req: Request = serde_json::from_str(text).unwrap();
    assert_eq!(
        req,
        Request {
            id: 7,
            body: RequestBody::Create {
                name: Some("rust".into()),
                token: "t".into(),
            }
        }
    );
    assert_eq!(serde_json::to_string(&req).unwrap(), text);
}

#[test]
fn integers_are_not_op_names() {
    for op in ["0", "1", "5", "true", "null"] {
        let text = format!(r#"{{"id":1,"op":{op},"user":"a","password":"b"}}"#);
        let err = serde_json::from_str::<Request>(&text).unwrap_err();
        assert!(
            err.to_string().contains("op must be a string"),
            "{op}: {err}"
        );
    }
    assert!(serde_json::from_str::<Request>(r#"{"id":1,"op":"list"}"#).is_ok());
}

#[test]
fn passwords_never_show_in_debug_output() {
    let req = RequestBody::Login {
        user: "alice".into(),
        password: Password("hunter2".into()),
    };
    assert!(!format!("{req:?}").contains("hunter2"));
}

#[test]
fn error_response_is_flat() {
    let resp = Response {
        id: Some(3),
        observed: "127.0.0.1:9".parse().unwrap(),
        body: ResponseBody::Error(ErrorBody::new(ErrorCode::SessionNotFound, "no")),
    };
    let text = serde_json::to_string(&resp).unwrap();
    assert_eq!(
        text,
        r#"{"id":3,"observed":"127.0.0.1:9","type":"error","code":"session_not_found","message":"no"}"#
    );
    assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), resp);
}

#[test]
fn chat_line_is_flat() {
    let msg = ServerMsg::Msg(ChatLine {
        seq: 1,
        time: "2026-11-22T14:03:07Z".parse().unwrap(),
        from: "alice".into(),
        text: "hi".into(),
        id: None,
    });
    assert_eq!(
        serde_json::to_string(&msg).unwrap(),
        r#"{"type":"msg","seq":1,"time":"2026-11-22T14:03:07Z","from":"alice","text":"hi"}"#
    );
}

#[test]
fn welcome_announces_the_rate_limit_as_protocol_md_shows() {
    let msg = ServerMsg::Welcome {
        session: Uuid::nil(),
        name: None,
        members: Vec::new(),
        member_count: 0,
        seq: 0,
        rate_limit: Some(RateLimit {
            per_second: 20.0,
            burst: 50,
        }),
    };
    let text = serde_json::to_string(&msg).unwrap();
    assert!(
        text.ends_with(r#""seq":0,"rate_limit":{"per_second":20.0,"burst":50}}"#),
        "{text}"
    );
}

mod decoders {
    use super::super::*;
    use proptest::prelude::*;

    fn decode_all(bytes: &[u8]) {
        let _ = serde_json::from_slice::<Request>(bytes);
        let _ = serde_json::from_slice::<Response>(bytes);
        let _ = serde_json::from_slice::<ClientMsg>(bytes);
        let _ = serde_json::from_slice::<ServerMsg>(bytes);
        let _ = serde_json::from_slice::<PeerMsg>(bytes);
    }

    proptest! {
        #[test]
        fn any_bytes_decode_to_a_value_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            decode_all(&bytes);
        }

        #[test]
        fn json_shaped_noise_never_panics(
            kind in prop_oneof!["hello", "say", "msg", "dm", "ack", "create", "join", "list", "welcome", "presence"],
            field in "[a-z_]{1,8}",
            value in prop_oneof![Just("1".to_string()), Just("null".to_string()), Just("[]".to_string()), Just("{}".to_string()), "\"[ -~]{0,20}\"".prop_map(|s| s)],
        ) {
            for tag in ["type", "op"] {
                let text = format!(r#"{{"{tag}":"{kind}","id":1,"{field}":{value}}}"#);
                decode_all(text.as_bytes());
            }
        }

        #[test]
        fn say_round_trips(text in "\\PC{0,100}", id in proptest::option::of(any::<u64>())) {
            let msg = ClientMsg::Say { text, id };
            let back: ClientMsg = serde_json::from_str(&serde_json::to_string(&msg).unwrap()).unwrap();
            prop_assert_eq!(back, msg);
        }
    }
}

#[test]
fn leave_reasons_log_as_on_the_wire() {
    for reason in [
        LeaveReason::Left,
        LeaveReason::Disconnected,
        LeaveReason::TooSlow,
    ] {
        let wire = serde_json::to_string(&reason).unwrap();
        assert_eq!(wire, format!("\"{}\"", reason.as_str()));
    }
}
