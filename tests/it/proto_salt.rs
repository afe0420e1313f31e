//! Golden tests for Salt's wire formats over the bytes captured from real 3006.29, 3007.16 and
//! 3008.5 masters in `proto/salt/`: every file decodes to its pinned `.json` twin, and publish
//! requests round-trip. `UPDATE_EXPECT=1` rewrites the twins.

use std::path::{Path, PathBuf};

use saltpeter::salt::wire::{self, FrameSplitter, PublishReply};
use serde_json::{Value as J, json};

const VERSIONS: [&str; 3] = ["3006.29", "3007.16", "3008.5"];

fn dir(version: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("proto/salt")
        .join(version)
}

fn reply_json(r: &PublishReply) -> J {
    match r {
        PublishReply::Published {
            jid,
            minions,
            missing,
        } => json!({"published": {"jid": jid, "minions": minions, "missing": missing}}),
        PublishReply::NoMinions { message } => json!({"no_minions": message}),
        PublishReply::AuthenticationError { message } => json!({"authentication_error": message}),
        PublishReply::AuthorizationError { message } => json!({"authorization_error": message}),
        PublishReply::BadLoad { message } => json!({"bad_load": message}),
        PublishReply::Error { message } => json!({"error": message}),
    }
}

fn events_json(bytes: &[u8]) -> J {
    let mut splitter = FrameSplitter::default();
    splitter.push(bytes);
    let mut out = Vec::new();
    while let Some(frame) = splitter.next_frame() {
        let frame = frame.expect("captured frames are well formed");
        let event = wire::decode_event(&frame).expect("captured events decode");
        let mut j = event.to_json();
        if let Some(ret) = event.job_ret() {
            j["ret_view"] = json!({"id": ret.id, "jid": ret.jid, "fun": ret.fun, "retcode": ret.retcode, "success": ret.success,
                "stamp": ret.stamp.map(|s| s.to_string())});
        }
        if let Some(new) = event.job_new() {
            j["new_view"] = json!({"jid": new.jid, "fun": new.fun, "minions": new.minions, "missing": new.missing});
        }
        // The large return is pinned by size, not spelled out.
        if let Some(s) = j["data"]["return"].as_str().filter(|s| s.len() > 1000) {
            j["data"]["return"] = json!(format!("<{} chars>", s.len()));
        }
        out.push(j);
    }
    assert_eq!(splitter.pending(), 0, "trailing bytes");
    J::Array(out)
}

fn decode_file(path: &Path) -> Option<J> {
    let name = path.file_name()?.to_str()?;
    let bytes = std::fs::read(path).unwrap();
    if name.starts_with("publish_request") {
        let (publish, key) = wire::decode_publish(&bytes).unwrap();
        // Round trip: our encoding of the decoded request means the same to a msgpack reader.
        let again = wire::encode_publish(&publish, &key);
        let (publish2, key2) = wire::decode_publish(&again).unwrap();
        assert_eq!((&publish, &key), (&publish2, &key2), "{name} round trip");
        let original = rmpv::decode::read_value(&mut bytes.as_slice()).unwrap();
        let ours = rmpv::decode::read_value(&mut again.as_slice()).unwrap();
        assert_eq!(
            wire::to_json(&original),
            wire::to_json(&ours),
            "{name}: same envelope"
        );
        Some(wire::to_json(&original))
    } else if name.starts_with("publish_reply") {
        Some(reply_json(&wire::decode_reply(&bytes).unwrap()))
    } else if name.starts_with("event") {
        Some(events_json(&bytes))
    } else {
        None // ZMTP transcripts: reference material for the transport, not decoded here.
    }
}

#[test]
fn every_captured_fixture_matches_its_json_twin() {
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut checked = 0;
    let mut failures = Vec::new();
    for version in VERSIONS {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir(version))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for path in files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "bin" || e == "msgpack"))
        {
            let Some(actual) = decode_file(path) else {
                continue;
            };
            let twin = path.with_extension(format!(
                "{}.json",
                path.extension().unwrap().to_str().unwrap()
            ));
            let text = serde_json::to_string_pretty(&actual).unwrap() + "\n";
            if update {
                std::fs::write(&twin, &text).unwrap();
            } else if std::fs::read_to_string(&twin).unwrap_or_default() != text {
                failures.push(twin.display().to_string());
            }
            checked += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "differ from their twins (UPDATE_EXPECT=1 to accept): {failures:?}"
    );
    assert!(checked >= 39, "only {checked} fixtures checked");
}

#[test]
fn the_facts_saltpeter_relies_on() {
    for version in VERSIONS {
        let d = dir(version);
        let events = events_json(&std::fs::read(d.join("event_ret_retcode127.bin")).unwrap());
        let ret = &events[0]["ret_view"];
        assert_eq!(ret["retcode"], 127, "{version}");
        assert_eq!(ret["success"], false, "{version}");
        assert!(
            events[0]["data"]["return"]
                .as_str()
                .unwrap()
                .contains("No such file or directory"),
            "{version}"
        );
        let reply =
            wire::decode_reply(&std::fs::read(d.join("publish_reply_auth_error.msgpack")).unwrap())
                .unwrap();
        assert!(
            matches!(reply, PublishReply::AuthenticationError { .. }),
            "{version}"
        );
        // Both framings: 3006.29 prefixes a length, the others do not.
        let stream = std::fs::read(d.join("eventbus_stream.bin")).unwrap();
        assert_eq!(stream[0] == 0, version == "3006.29", "{version} framing");
        assert!(events_json(&stream).as_array().unwrap().len() >= 4);
    }
    let top = dir("3007.16");
    let large = events_json(&std::fs::read(top.join("event_ret_large.bin")).unwrap());
    assert_eq!(large[0]["data"]["return"], "<100000 chars>");
    let missing =
        wire::decode_reply(&std::fs::read(top.join("publish_reply_missing.msgpack")).unwrap())
            .unwrap();
    assert!(matches!(missing, PublishReply::Published { missing, .. } if missing == ["ghost-9"]));
    let none =
        wire::decode_reply(&std::fs::read(top.join("publish_reply_no_minions.msgpack")).unwrap())
            .unwrap();
    assert!(matches!(none, PublishReply::NoMinions { message } if message.contains("nosuch*")));
    let (kw, _) = wire::decode_publish(
        &std::fs::read(top.join("publish_request_run_all_kwarg.msgpack")).unwrap(),
    )
    .unwrap();
    assert_eq!(kw.kwargs["cwd"], rmpv::Value::from("/tmp"));
}

#[test]
fn a_stream_split_at_every_byte_gives_the_same_events() {
    for version in VERSIONS {
        let stream = std::fs::read(dir(version).join("eventbus_stream.bin")).unwrap();
        let whole = events_json(&stream);
        let mut splitter = FrameSplitter::default();
        let mut n = 0;
        for b in &stream {
            splitter.push(std::slice::from_ref(b));
            while let Some(f) = splitter.next_frame() {
                wire::decode_event(&f.unwrap()).unwrap();
                n += 1;
            }
        }
        assert_eq!(n, whole.as_array().unwrap().len(), "{version}");
    }
}
