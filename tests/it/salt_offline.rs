//! The Salt client and commands when the master is away: bounded errors, never a hang, and a
//! clean exit on Ctrl-C. No lab needed.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use saltpeter::salt::{Publish, PublishError, SaltClient, SaltSettings, Tgt};

use crate::support::{bin, dead_master};

#[tokio::test]
async fn a_silent_or_closed_request_port_fails_within_the_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    // Accepts TCP but never speaks ZMTP.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hole.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    let settings = SaltSettings::load(Some(&dead_master(dir.path(), port))).unwrap();
    let mut client = SaltClient::new(settings);
    client.connect_timeout = Duration::from_millis(300);
    client.request_timeout = Duration::from_millis(300);
    let ping = Publish::new(Tgt::Expr("*".into()), "glob", "test.ping");
    let started = Instant::now();
    let err = client.publish(&ping).await.unwrap_err();
    assert!(matches!(err, PublishError::Connect { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        err.to_string().starts_with(&format!(
            "cannot connect to the Salt master at tcp://127.0.0.1:{port}"
        )),
        "{err}"
    );

    // A closed port: the same bounded error, again and again (the client rebuilt its socket).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let settings = SaltSettings::load(Some(&dead_master(dir.path(), closed))).unwrap();
    let mut client = SaltClient::new(settings);
    client.connect_timeout = Duration::from_millis(300);
    for _ in 0..2 {
        assert!(matches!(
            client.publish(&ping).await,
            Err(PublishError::Connect { .. })
        ));
    }
}

#[test]
fn salt_without_a_master_says_so_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let master = dead_master(dir.path(), 1);
    let started = Instant::now();
    let out = bin()
        .args(["salt", "--salt-config"])
        .arg(&master)
        .args(["*", "test.ping"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot subscribe to the Salt master's event bus"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn tap_waits_for_the_master_and_exits_cleanly_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let master = dead_master(dir.path(), 1);
    let mut tap = bin()
        .args(["tap", "--salt-config"])
        .arg(&master)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(tap.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(
        line.contains("unavailable") && line.contains("reconnecting"),
        "{line}"
    );
    kill(Pid::from_raw(tap.id() as i32), Signal::SIGINT).unwrap();
    let status = tap.wait().unwrap();
    assert!(status.success(), "{status}");
}
