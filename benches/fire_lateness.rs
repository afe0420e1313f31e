//! Benchmark: fire lateness (the `Firing` log line's time minus the scheduled second) when
//! 10,000 jobs are due in the same second: p50, p99, max. The jobs point at a Salt master that
//! does not exist, so only the daemon's own path is measured (each run then fails at once).
//! Run with `cargo bench --bench fire_lateness` (SALTPETER_BENCH_JOBS sets the count).

#[path = "../tests/common/net.rs"]
mod net;

use net::free_port;

#[path = "../tests/common/reaped.rs"]
mod reaped;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use jiff::Timestamp;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let jobs: usize = std::env::var("SALTPETER_BENCH_JOBS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // All due at one second, far enough ahead for the daemon to start.
    let ahead = Timestamp::now()
        .checked_add(Duration::from_secs(15))
        .unwrap();
    let due = Timestamp::from_second(ahead.as_second()).unwrap();
    let utc = due.to_zoned_datetime(jiff::tz::TimeZone::UTC);
    let mut text = format!(
        "saltpeter_config:\n  salt_master_config: {}\n  machines_ws_bind_addr: 127.0.0.1\n  machines_ws_port: {port}\n  api_ws: false\n  database: {}/state/history.db\n  logdir: {}\n",
        dir.path().join("no-master").display(),
        dir.path().display(),
        dir.path().join("log").display()
    );
    for i in 0..jobs {
        text += &format!(
            "job{i}:\n  sec: {}\n  min: {}\n  hour: {}\n  dom: '*'\n  mon: '*'\n  dow: '*'\n  targets: 'nowhere{i}'\n  command: 'true'\n",
            utc.second(),
            utc.minute(),
            utc.hour()
        );
    }
    std::fs::write(dir.path().join("jobs.yaml"), text).unwrap();
    let mut daemon = reaped::Reaped(
        Command::new(env!("CARGO_BIN_EXE_saltpeter"))
            .args(["run", "-c"])
            .arg(dir.path())
            .env("SALTPETER_LOG", "info")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut late: Vec<u64> = Vec::with_capacity(jobs);
    for line in BufReader::new(daemon.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        if !line.contains("Firing ") {
            continue;
        }
        // The log line's stamp minus the scheduled second.
        let logged: Timestamp = line.split_whitespace().next().unwrap().parse().unwrap();
        late.push(logged.duration_since(due).as_millis() as u64);
        if late.len() == jobs {
            break;
        }
    }
    drop(daemon);
    late.sort();
    let q = |f: f64| late[((late.len() as f64 * f) as usize).min(late.len() - 1)];
    println!(
        "{jobs} jobs due at the same second: fire lateness p50 {} ms, p99 {} ms, max {} ms",
        q(0.5),
        q(0.99),
        late[late.len() - 1]
    );
}
