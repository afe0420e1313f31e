//! Benchmark on a real Salt lab: for an `echo` job on every lab minion, the time from the
//! scheduled second to (a) the publish reply, (b) every target confirmed (by Salt's return or
//! the wrapper's `start`, whichever came first), and
//! (c) every target's `complete`; medians over SALTPETER_BENCH_RUNS runs (default 20). Reads
//! the daemon's own log timestamps. Run with `cargo bench --bench run_latency`.

#[path = "../tests/common/net.rs"]
mod net;

use net::free_port;

#[path = "../tests/common/lab_env.rs"]
mod lab_env;

#[path = "../tests/common/reaped.rs"]
mod reaped;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use jiff::Timestamp;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs: usize = std::env::var("SALTPETER_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let env = lab_env::lab_env();
    let minions = env["MINIONS"].split_whitespace().count();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        "saltpeter_config:\n  salt_master_config: {}\n  machines_ws_bind_addr: 127.0.0.1\n  machines_ws_port: {port}\n  default_saltpeter_server_host: 127.0.0.1\n  default_wrapper_path: {}\n  logdir: {}\n  api_ws: false\n  database: {}\n\
         bench:\n  sec: '*/2'\n  min: '*'\n  hour: '*'\n  dom: '*'\n  mon: '*'\n  dow: '*'\n  targets: '*'\n  command: echo bench\n",
        env["MASTER_CONFIG"],
        env!("CARGO_BIN_EXE_sp-wrapper"),
        dir.path().join("log").display(),
        dir.path().join("state/history.db").display()
    );
    std::fs::write(dir.path().join("bench.yaml"), config).unwrap();
    let mut daemon = reaped::Reaped(
        Command::new(env!("CARGO_BIN_EXE_saltpeter"))
            .args(["run", "-c"])
            .arg(dir.path())
            .env("SALTPETER_LOG", "info")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = BufReader::new(daemon.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok);
    let stamp = |line: &str| -> Option<Timestamp> { line.split_whitespace().next()?.parse().ok() };
    // Per instance: slot, publish reply, confirmations, completions.
    #[derive(Default)]
    struct Run {
        slot: Option<Timestamp>,
        published: Option<Timestamp>,
        /// First confirmation per minion: Salt's return or the wrapper's start, whichever came first.
        confirmed: BTreeMap<String, Timestamp>,
        completed: Vec<Timestamp>,
    }
    let mut current: BTreeMap<String, Run> = BTreeMap::new();
    let mut last_instance = String::new();
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for line in lines {
        let Some(at) = stamp(&line) else { continue };
        if let Some(rest) = line.split("Firing ").nth(1) {
            let instance = rest.split('!').next().unwrap().to_string();
            let slot: Timestamp = line
                .split("slot=")
                .nth(1)
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
                .unwrap();
            last_instance = instance.clone();
            current.insert(
                instance,
                Run {
                    slot: Some(slot),
                    ..Run::default()
                },
            );
        } else if line.contains("Waiting for Salt to confirm") {
            if let Some(r) = current.get_mut(&last_instance) {
                r.published = Some(at);
            }
        } else if let Some(m) = line.split("Salt confirmed wrapper started on ").nth(1) {
            if let Some(r) = current.get_mut(&last_instance) {
                r.confirmed.entry(m.trim().to_string()).or_insert(at);
            }
        } else if let Some(rest) = line.split("WebSocket: Job started - ").nth(1) {
            let (instance, m) = rest.split_once(':').unwrap();
            let m = m.split_whitespace().next().unwrap();
            if let Some(r) = current.get_mut(instance) {
                r.confirmed.entry(m.to_string()).or_insert(at);
            }
        } else if let Some(rest) = line.split("Result for ").nth(1) {
            let instance = rest.split(':').next().unwrap();
            if let Some(r) = current.get_mut(instance) {
                r.completed.push(at);
                if r.completed.len() == minions {
                    let slot = r.slot.unwrap();
                    let ms = |t: Timestamp| t.duration_since(slot).as_secs_f64() * 1e3;
                    if let (Some(p), Some(conf)) = (r.published, r.confirmed.values().max())
                        && r.confirmed.len() == minions
                    {
                        a.push(ms(p));
                        b.push(ms(*conf));
                        c.push(ms(*r.completed.iter().max().unwrap()));
                    }
                    current.remove(instance);
                    if a.len() >= runs {
                        break;
                    }
                }
            }
        }
    }
    drop(daemon);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|x, y| x.partial_cmp(y).unwrap());
        v[v.len() / 2]
    };
    println!(
        "Salt {} lab, {minions} minions, {} runs of an echo job (from the scheduled second):",
        env["SALT_VERSION"],
        a.len()
    );
    println!(
        "(a) publish reply:                     median {:7.1} ms",
        median(&mut a)
    );
    println!(
        "(b) every target confirmed:           median {:7.1} ms",
        median(&mut b)
    );
    println!(
        "(c) every target's complete recorded:  median {:7.1} ms",
        median(&mut c)
    );
}
