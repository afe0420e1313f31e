//! Repository hygiene as a test: every source file says what it owns, and no debugging
//! leftovers or disabled tests slip in.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn all_sources() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches"] {
        if root.join(dir).is_dir() {
            rust_files(&root.join(dir), &mut files);
        }
    }
    files
}

#[test]
fn every_file_starts_with_a_module_doc() {
    let missing: Vec<_> = all_sources()
        .into_iter()
        .filter(|p| !std::fs::read_to_string(p).unwrap().starts_with("//!"))
        .collect();
    assert!(
        missing.is_empty(),
        "files without a leading `//!` line: {missing:?}"
    );
}

#[test]
fn no_leftovers() {
    // Assembled so this file does not match itself.
    let banned = [
        ["dbg", "!("].concat(),
        ["todo", "!("].concat(),
        ["unimplemented", "!("].concat(),
        ["#[ig", "nore]"].concat(),
        ["#[should", "_panic"].concat(),
    ];
    for path in all_sources() {
        let text = std::fs::read_to_string(&path).unwrap();
        for b in &banned {
            assert!(
                !text.contains(b.as_str()),
                "{} contains {b}",
                path.display()
            );
        }
        for (i, line) in text.lines().enumerate() {
            assert!(
                line.trim_end() == line,
                "{}:{} has trailing whitespace",
                path.display(),
                i + 1
            );
        }
    }
}

#[test]
fn the_schedule_planner_and_engine_stay_pure() {
    // They are driven by the `now` they are given: no clock, no I/O, no async runtime.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src/schedule"), &mut files);
    rust_files(&root.join("src/scheduler"), &mut files);
    rust_files(&root.join("src/engine"), &mut files);
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for banned in [
            "Timestamp::now",
            "SystemTime",
            "Instant::now",
            "tokio",
            "std::fs",
            "std::net",
            "crate::salt",
            "crate::agents",
            "crate::protocol",
            // The ledger is the daemon's business: the planner only decides.
            "crate::history",
            "rusqlite",
        ] {
            assert!(!text.contains(banned), "{} uses {banned}", path.display());
        }
    }
}

#[test]
fn the_wrapper_and_protocol_use_no_daemon_crates() {
    // They ship to every minion: no async runtime, no daemon-only dependency.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src/wrapper"), &mut files);
    rust_files(&root.join("src/protocol"), &mut files);
    files.push(root.join("src/bin/sp-wrapper.rs"));
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for banned in [
            "tokio",
            "jiff",
            "clap",
            "tracing",
            "rmpv",
            "zeromq",
            "notify",
            "crate::config",
            "crate::salt",
            "crate::agents",
        ] {
            assert!(!text.contains(banned), "{} uses {banned}", path.display());
        }
    }
}

#[test]
fn the_deciding_cores_stay_sans_io() {
    // The coordinator's and the hub's decisions are driven by inputs and the `now` they are
    // given; their async shells own channels, sockets, clocks and files.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in [
        "src/coordinator/core.rs",
        "src/agents/registry.rs",
        "src/salt/gather.rs",
        "src/notify/tracker.rs",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        for banned in [
            "Timestamp::now",
            "SystemTime",
            "Instant::now",
            "clock::now",
            // (An instant is a value like any other; waiting and I/O are the shell's.)
            "tokio::sync",
            "tokio::net",
            "tokio::spawn",
            "tokio::time::sleep",
            "std::fs",
            "std::net",
            "async fn",
            ".await",
        ] {
            assert!(!text.contains(banned), "{file} uses {banned}");
        }
    }
}

#[test]
fn each_wire_crate_lives_in_its_own_module() {
    // One module per external boundary: Salt's wire (msgpack, ZeroMQ), the store (SQLite and
    // PostgreSQL, each in one file), the
    // daemon's WebSocket servers, HTTP, and each notification channel's transport.
    let rules: [(&str, &[&str]); 9] = [
        ("rmpv", &["src/salt/"]),
        ("zeromq", &["src/salt/"]),
        // The store's two engines behind one layer: the rest of the store writes portable SQL
        // through `db.rs` (SQLite stays for the file probe and the SQLite-only tests).
        (
            "rusqlite",
            &[
                "src/history/db.rs",
                "src/history/probe.rs",
                "src/history/tests.rs",
            ],
        ),
        ("postgres", &["src/history/db.rs"]),
        ("tokio_tungstenite", &["src/agents/", "src/api/"]),
        ("axum", &["src/api/"]),
        // Notifications' transports: one file each.
        ("lettre", &["src/notify/email.rs"]),
        ("hmac", &["src/notify/webhook.rs"]),
        ("ureq", &["src/notify/webhook.rs", "src/bin/"]),
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let shown = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .to_string();
        for (krate, allowed) in rules {
            if allowed.iter().any(|a| shown.starts_with(a)) {
                continue;
            }
            let used =
                text.contains(&format!("{krate}::")) || text.contains(&format!("use {krate}"));
            assert!(!used, "{shown} uses {krate}, which belongs to {allowed:?}");
        }
    }
}
