//! The wrapper protocol decoder (`saltpeter::protocol`): arbitrary text never panics, every
//! message that decodes re-encodes to itself, and built messages survive encode → decode.

use saltpeter::protocol::{AckType, DaemonMsg, Ext, Header, WrapperMsg};

use super::input::Src;

/// The target: the input as a frame's text, then as the recipe for a message to round-trip.
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    check_text(&text);
    let mut src = Src::new(data);
    let msg = wrapper_msg(&mut src);
    round_trip(&msg);
    let msg = daemon_msg(&mut src);
    round_trip_daemon(&msg);
}

/// Decodes `text` both ways; what decodes must re-encode to an equal message.
pub fn check_text(text: &str) {
    if let Ok(msg) = WrapperMsg::decode(text) {
        round_trip(&msg);
    }
    if let Ok(msg) = DaemonMsg::decode(text) {
        round_trip_daemon(&msg);
    }
}

pub fn round_trip(msg: &WrapperMsg) {
    let encoded = msg.encode();
    let again = WrapperMsg::decode(&encoded)
        .unwrap_or_else(|e| panic!("{msg:?} encodes to {encoded}, which does not decode: {e}"));
    assert_eq!(&again, msg, "through {encoded}");
    let json: serde_json::Value = serde_json::from_str(&encoded).expect("encode writes JSON");
    assert_eq!(json["type"], msg.kind(), "{encoded}");
    assert_eq!(
        json["job_name"],
        msg.header().job_name.as_str(),
        "{encoded}"
    );
    // Every message kind but `killed` carries the extensions.
    assert_eq!(msg.ext().is_none(), msg.kind() == "killed");
}

pub fn round_trip_daemon(msg: &DaemonMsg) {
    let encoded = msg.encode();
    let again = DaemonMsg::decode(&encoded)
        .unwrap_or_else(|e| panic!("{msg:?} encodes to {encoded}, which does not decode: {e}"));
    assert_eq!(&again, msg, "through {encoded}");
}

fn opt<'a, T>(src: &mut Src<'a>, f: impl FnOnce(&mut Src<'a>) -> T) -> Option<T> {
    src.bool().then(|| f(src))
}

fn header(src: &mut Src) -> Header {
    Header {
        job_name: src.text(12),
        job_instance: src.text(12),
        machine: src.text(12),
        timestamp: opt(src, |s| s.text(32)),
    }
}

fn ext(src: &mut Src) -> Ext {
    Ext {
        protocol: opt(src, Src::u32),
        token: opt(src, |s| s.text(24)),
    }
}

/// A wrapper message of any kind with any field values.
pub fn wrapper_msg(src: &mut Src) -> WrapperMsg {
    let header = header(src);
    match src.below(8) {
        0 => WrapperMsg::Connect {
            header,
            ext: ext(src),
            resume: opt(src, Src::i64),
        },
        1 => WrapperMsg::Start {
            header,
            pid: src.i64(),
            version: src.text(8),
            ext: ext(src),
        },
        2 => WrapperMsg::Output {
            header,
            stream: src.text(8),
            data: src.text(64),
            seq: src.i64(),
            ext: ext(src),
        },
        3 => WrapperMsg::Heartbeat {
            header,
            ext: ext(src),
        },
        4 => WrapperMsg::SyncRequest {
            header,
            last_acked_seq: src.i64(),
            next_seq: src.i64(),
            ext: ext(src),
        },
        5 => WrapperMsg::Complete {
            header,
            retcode: src.i64(),
            seq: opt(src, Src::i64),
            ext: ext(src),
        },
        6 => WrapperMsg::Error {
            header,
            error: src.text(32),
            ext: ext(src),
        },
        _ => WrapperMsg::Killed { header },
    }
}

/// A daemon message of any kind with any field values.
pub fn daemon_msg(src: &mut Src) -> DaemonMsg {
    match src.below(5) {
        0 => DaemonMsg::Ack {
            ack_type: *src.pick(&[
                AckType::Connect,
                AckType::Start,
                AckType::Output,
                AckType::Complete,
            ]),
            seq: opt(src, Src::i64),
            timestamp: src.text(32),
            protocol: opt(src, Src::u32),
            window: opt(src, Src::u32),
        },
        1 => DaemonMsg::Nack {
            nack_type: src.text(8),
            expected_seq: src.i64(),
            received_seq: src.i64(),
            timestamp: src.text(32),
        },
        2 => DaemonMsg::SyncResponse {
            last_seq: src.i64(),
            timestamp: src.text(32),
        },
        3 => DaemonMsg::Kill {
            job_name: src.text(12),
            job_instance: src.text(12),
            machine: src.text(12),
            timestamp: src.text(32),
        },
        _ => DaemonMsg::Error {
            code: src.text(12),
            message: src.text(32),
            timestamp: src.text(32),
        },
    }
}
