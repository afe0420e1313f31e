//! Benchmark: CPU and memory of an idle daemon (`saltpeter run`) with 10,000 jobs of which none
//! is due during the measurement. Reads the process's CPU time from /proc over a window.
//! Run with `cargo bench --bench idle_cpu` (SALTPETER_IDLE_SECS sets the window, default 30).

#[path = "../tests/common/net.rs"]
mod net;

use net::free_port;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const JOBS: usize = 10_000;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; this is not a test.
    }
    let window = Duration::from_secs(
        std::env::var("SALTPETER_IDLE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30),
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let ports = format!(
        "saltpeter_config:\n  machines_ws_bind_addr: 127.0.0.1\n  machines_ws_port: {port}\n  api_ws: false\n  database: {}\n",
        dir.path().join("state/history.db").display()
    );
    std::fs::write(dir.path().join("00-ports.yaml"), ports).unwrap();
    for f in 0..100 {
        let mut text = String::new();
        for j in 0..JOBS / 100 {
            let i = f * 100 + j;
            // All due on 1 January only.
            text += &format!(
                "job_{i}:\n  sec: {}\n  min: {}\n  hour: {}\n  dom: 1\n  mon: 1\n  dow: '*'\n  targets: '*'\n  command: 'true'\n",
                i % 60,
                (i / 60) % 60,
                (i / 3600) % 24
            );
        }
        std::fs::write(dir.path().join(format!("f{f:03}.yaml")), text).unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_saltpeter"))
        .args(["run", "-c"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().contains("started") {
            break;
        }
    }
    let startup = started.elapsed();
    let pid = child.id();
    let ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    let rss_kib = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let before = ticks();
    std::thread::sleep(window);
    let after = ticks();
    let hz: f64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0);
    let cpu_secs = (after - before) as f64 / hz;
    println!("jobs: {JOBS}");
    println!("start-up to first log line: {startup:?}");
    println!("idle window: {window:?}");
    println!(
        "cpu time in window: {cpu_secs:.3} s ({:.4} % of one core)",
        100.0 * cpu_secs / window.as_secs_f64()
    );
    println!("resident memory: {} KiB", rss_kib());
    let _ = child.kill();
    let _ = child.wait();
}
