//! `saltpeter run` as a process: it fires due jobs, reloads on file changes and SIGHUP, keeps
//! a broken file's last good version, and stops cleanly on SIGTERM.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::{Daemon, job, write};

const WITHIN: Duration = Duration::from_secs(10);

#[test]
fn fires_reloads_and_keeps_the_last_good_version() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &job("tick", "*"));
    let mut daemon = Daemon::start(dir.path());
    let line = daemon.expect_line("Firing tick_", WITHIN);
    assert!(
        line.contains("late_ms="),
        "fires report their lateness: {line}"
    );

    // A new file is picked up by notification, with no signal.
    write(dir.path(), "b.yaml", &job("tock", "*"));
    daemon.expect_line("config reloaded", WITHIN);
    daemon.expect_line("Firing tock_", WITHIN);

    // Broken: reported, and its last good version keeps firing.
    write(
        dir.path(),
        "b.yaml",
        &job("tock", "*").replace("'true'", "[oops"),
    );
    daemon.expect_line("b.yaml:", WITHIN);
    daemon.expect_line("its last good version (1 job(s)) stays in force", WITHIN);
    daemon.expect_line("Firing tock_", WITHIN);

    // A start-up-only key is reported and not applied.
    write(
        dir.path(),
        "c.yaml",
        "saltpeter_config:\n  machines_ws_port: 9999\n",
    );
    let changed = format!(
        "machines_ws_port changed from {} to 9999; this takes effect after a restart",
        daemon.hub_port
    );
    daemon.expect_line(&changed, WITHIN);

    // The machines hub answers on its port (an unknown run is refused, as it should be).
    let hub = std::net::TcpStream::connect(("127.0.0.1", daemon.hub_port));
    assert!(hub.is_ok(), "the machines hub is not listening");

    daemon.signal(Signal::SIGHUP);
    daemon.expect_line("SIGHUP; reloading", WITHIN);

    daemon.signal(Signal::SIGTERM);
    daemon.expect_line("Saltpeter stopping", WITHIN);
    let status = daemon.child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn each_fire_has_its_own_instance_id() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &(job("a", "*") + &job("b", "*")));
    let mut daemon = Daemon::start(dir.path());
    // Compare the ids themselves (whole lines always differ by their timestamps).
    let id = |line: String| {
        line.split("Firing ")
            .nth(1)
            .unwrap()
            .split('!')
            .next()
            .unwrap()
            .to_string()
    };
    let first = id(daemon.expect_line("Firing a_", WITHIN));
    let second = id(daemon.expect_line("Firing a_", WITHIN));
    assert!(
        first.starts_with("a_") && second.starts_with("a_"),
        "{first} {second}"
    );
    assert_ne!(first, second);
}
