//! Benchmark: two real `saltpeter run` daemons on one PostgreSQL store with 10,000 jobs due
//! within one minute (about 167 a second, every second): slots fired per second across both,
//! each claim transaction's latency (p50, p99, max), fire lateness, and the ledger checked
//! afterwards (every slot exactly once). The jobs point at a Salt master that does not exist,
//! so only the daemons' own path and the store are measured (each run then fails at once).
//! Needs a server: `SALTPETER_BENCH_POSTGRES=postgres://postgres@127.0.0.1:55432/postgres`
//! (`contrib/lab/pg.sh start` gives one). `SALTPETER_BENCH_JOBS` sets the count.
//! Run with `cargo bench --bench ha_claims`.

#[path = "../tests/common/net.rs"]
mod net;

use net::free_port;

#[path = "../tests/common/reaped.rs"]
mod reaped;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use jiff::Timestamp;

fn quantiles(mut v: Vec<u64>) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.sort_unstable();
    let q = |f: f64| v[((v.len() as f64 * f) as usize).min(v.len() - 1)];
    format!(
        "p50 {} ms, p99 {} ms, max {} ms ({} samples)",
        q(0.5),
        q(0.99),
        v[v.len() - 1],
        v.len()
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Ok(server) = std::env::var("SALTPETER_BENCH_POSTGRES") else {
        eprintln!("SALTPETER_BENCH_POSTGRES unset (contrib/lab/pg.sh start gives a server)");
        return;
    };
    let jobs: usize = std::env::var("SALTPETER_BENCH_JOBS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let name = format!("sp_bench_{}", std::process::id());
    let mut admin = postgres::Client::connect(&server, postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    let base = server.split_once('?').map_or(server.as_str(), |(b, _)| b);
    let url = format!(
        "{}/{name}?sslmode=disable",
        base.rsplit_once('/').map_or(base, |(r, _)| r)
    );
    // The minute after the daemons have started: job i is due at its second of it.
    let start = Timestamp::now() + Duration::from_secs(30);
    let minute = Timestamp::from_second(start.as_second() / 60 * 60 + 60).unwrap();
    let utc = minute.to_zoned_datetime(jiff::tz::TimeZone::UTC);
    let mut jobs_yaml = String::new();
    for i in 0..jobs {
        jobs_yaml += &format!(
            "job{i}:\n  sec: {}\n  min: {}\n  hour: {}\n  dom: '*'\n  mon: '*'\n  dow: '*'\n  targets: 'nowhere{i}'\n  command: 'true'\n",
            i % 60,
            utc.minute(),
            utc.hour()
        );
    }
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut daemons = Vec::new();
    for (n, dir) in dirs.iter().enumerate() {
        let text = format!(
            "saltpeter_config:\n  salt_master_config: {}\n  machines_ws_bind_addr: 127.0.0.1\n  machines_ws_port: {}\n  api_ws: false\n  database: '{url}'\n  daemon_name: d{n}\n  logdir: {}\n",
            dir.path().join("no-master").display(),
            free_port(),
            dir.path().join("log").display()
        );
        std::fs::write(dir.path().join("settings.yaml"), text).unwrap();
        std::fs::write(dir.path().join("jobs.yaml"), &jobs_yaml).unwrap();
        let mut child = reaped::Reaped(
            Command::new(env!("CARGO_BIN_EXE_saltpeter"))
                .args(["run", "-c"])
                .arg(dir.path())
                .env("SALTPETER_LOG", "info,saltpeter::daemon=debug")
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let out = child.stdout.take().unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send((n, line)).is_err() {
                    break;
                }
            }
        });
        daemons.push(child);
    }
    drop(tx);
    let until = Instant::now()
        + Duration::from_millis(
            (minute.as_millisecond() - Timestamp::now().as_millisecond()).max(0) as u64 + 75_000,
        );
    let mut fired = [0usize; 2];
    let mut late = Vec::new();
    let mut claims = Vec::new();
    let mut per_second = std::collections::BTreeMap::<i64, usize>::new();
    while fired.iter().sum::<usize>() < jobs {
        let Ok((n, line)) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) else {
            break;
        };
        let stamp = || -> Timestamp { line.split_whitespace().next().unwrap().parse().unwrap() };
        if line.contains("Firing ") {
            fired[n] += 1;
            let at = stamp();
            // The job's slot is its second of the minute (from its name).
            let job: usize = line
                .split("Firing job")
                .nth(1)
                .and_then(|r| r.split('_').next())
                .and_then(|i| i.parse().ok())
                .unwrap_or(0);
            let slot = minute + Duration::from_secs((job % 60) as u64);
            late.push(at.duration_since(slot).as_millis().max(0) as u64);
            *per_second.entry(at.as_second()).or_default() += 1;
        } else if let Some(ms) = line
            .split("took_ms=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
        {
            claims.push(ms);
        }
    }
    drop(daemons);
    let total: usize = fired.iter().sum();
    let seconds = per_second.len().max(1);
    println!(
        "{jobs} jobs due within one minute, two daemons on one PostgreSQL: {total} fired ({} by d0, {} by d1) in {seconds} s, {:.0} slots/s on average, {} at most in one second",
        fired[0],
        fired[1],
        total as f64 / seconds as f64,
        per_second.values().max().copied().unwrap_or(0)
    );
    println!("claim transaction latency: {}", quantiles(claims));
    println!("fire lateness: {}", quantiles(late));
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let row = c
        .query_one(
            "SELECT COUNT(*), COUNT(DISTINCT (job, slot_ms)), COUNT(*) FILTER (WHERE state = 'fired') FROM slots WHERE slot_ms IS NOT NULL",
            &[],
        )
        .unwrap();
    let (rows, distinct, fired_rows): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    println!("ledger: {rows} rows, {distinct} distinct slots, {fired_rows} fired");
    assert_eq!(rows, distinct, "a slot claimed twice");
    drop(c);
    let _ = admin.batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"));
}
