//! Golden tests for the wrapper protocol: every fixture in `proto/wrapper/` decodes as the
//! message kind its name says and re-encodes to the same JSON (field order aside).

use std::path::Path;

use saltpeter::protocol::{DaemonMsg, WrapperMsg};

#[test]
fn every_fixture_round_trips() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/wrapper");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let original: serde_json::Value = serde_json::from_str(&text).unwrap();
        let kind = original["type"].as_str().unwrap();
        // Daemon messages are the ones the original server sends.
        let daemon_side =
            ["ack", "nack", "sync_response", "kill"].contains(&kind) || name.starts_with("error_");
        let again: serde_json::Value = if daemon_side {
            let m = DaemonMsg::decode(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            serde_json::from_str(&m.encode()).unwrap()
        } else {
            let m = WrapperMsg::decode(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(m.kind(), kind, "{name}");
            serde_json::from_str(&m.encode()).unwrap()
        };
        assert_eq!(original, again, "{name} does not round-trip");
        seen.push(kind.to_string());
    }
    seen.sort();
    seen.dedup();
    for kind in [
        "connect",
        "start",
        "output",
        "heartbeat",
        "sync_request",
        "complete",
        "error",
        "ack",
        "nack",
        "sync_response",
        "kill",
    ] {
        assert!(seen.contains(&kind.to_string()), "no fixture for {kind}");
    }
}
