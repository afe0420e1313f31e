//! Benchmark of the whole daemon (`saltpeter run`) holding a fleet: N wrappers connected to one
//! adopted run, heartbeating every 5 s, optionally 10 % of them streaming 1 KiB of output a
//! second, then all completing. Reports the daemon's CPU and memory, output-ack and
//! complete-ack latencies, and checks through the API that the run ended with every target 0.
//! Run with `cargo bench --bench fleet` (FLEET_SIZES=1000,5000 and FLEET_SECS=20 size it;
//! FLEET_STREAMING=0 or 1 runs one case only; FLEET_LOG sets the daemon's log filter, `info`
//! by default).

#[allow(dead_code)] // each benchmark uses part of it
#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::daemon::{Daemon, all_ended_with};
use common::wrapper::{Fleet, Plan, Shared};
use common::{met, mib, ms, quantile};

/// Before the measurement window: connect/start bursts and first heartbeats settle.
const SETTLE: Duration = Duration::from_secs(2);
/// Completions and the first outputs are spread over this (a fleet is never in lockstep).
const SPREAD_MS: u64 = 1000;

struct Row {
    n: usize,
    streamers: usize,
    startup: Duration,
    connected_in: Duration,
    cpu_pct: f64,
    /// This process over the same window: near 100 % it would be the bottleneck.
    own_cpu_pct: f64,
    rss_start: u64,
    rss_end: u64,
    output: Vec<Duration>,
    complete: Vec<Duration>,
    errors: Vec<String>,
    /// Daemon CPU seconds from `stop` to the last `complete` ack: its own work, against waiting.
    completion_cpu: f64,
    /// The API showed the run ended with every target at exit code 0.
    ended: Result<(), String>,
}

impl Row {
    fn per_wrapper_kib(&self) -> f64 {
        (self.rss_end as f64 - self.rss_start as f64) / self.n as f64
    }
}

fn main() {
    if common::listing_only() {
        return;
    }
    let sizes = common::env_counts("FLEET_SIZES", &[1_000, 5_000, 10_000, 20_000]);
    let secs = common::env_u64("FLEET_SECS", 20);
    let largest = sizes.iter().copied().max().unwrap_or(0) as u64;
    // Both this process (the clients) and the daemon (inheriting it) hold one socket each.
    let limit = common::raise_nofile((largest + 4096).max(65_536));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "fleet: {secs} s per case, heartbeats every 5 s, streamers send 1 KiB/s; descriptor limit {limit}"
    );
    // FLEET_STREAMING=0 or 1 runs only that case (to repeat one while measuring a change).
    let cases: Vec<bool> = match std::env::var("FLEET_STREAMING").as_deref() {
        Ok("0") => vec![false],
        Ok("1") => vec![true],
        _ => vec![false, true],
    };
    let mut rows = Vec::new();
    for &n in &sizes {
        if n as u64 + 256 > limit {
            println!(
                "N = {n}: skipped, the descriptor limit is {limit} and this host does not let it be raised (CAP_SYS_RESOURCE)"
            );
            continue;
        }
        for &streaming in &cases {
            let row = rt.block_on(case(n, streaming, Duration::from_secs(secs)));
            print_row(&row);
            rows.push(row);
        }
    }
    print_table(&rows);
}

async fn case(n: usize, streaming: bool, window: Duration) -> Row {
    let daemon = Daemon::start("fleet", n).await;
    let rss_start = daemon.rss_kib();
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let streams = |i: usize| streaming && i.is_multiple_of(10);
    let plan = |i: usize| Plan {
        chunk: if streams(i) { 1024 } else { 0 },
        every: Duration::from_secs(1),
        offset: Duration::from_millis(i as u64 % SPREAD_MS),
        complete_after: Duration::from_millis((i as u64 * 7) % SPREAD_MS),
    };
    let streamers = (0..n).filter(|&i| streams(i)).count();
    let fleet = Fleet::connect(&daemon, plan, &shared, &stop_rx).await;
    let connected_in = fleet.connected_in;
    tokio::time::sleep(SETTLE).await;

    let me = std::process::id();
    let (cpu0, own0, t0) = (
        daemon.cpu_seconds(),
        common::cpu_seconds(me),
        Instant::now(),
    );
    shared.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(window).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let busy = |cpu: f64| cpu / t0.elapsed().as_secs_f64() * 100.0;
    let (cpu_pct, own_cpu_pct) = (
        busy(daemon.cpu_seconds() - cpu0),
        busy(common::cpu_seconds(me) - own0),
    );
    let rss_end = daemon.rss_kib();

    let cpu_stop = daemon.cpu_seconds();
    let _ = stop_tx.send(true);
    // A wrapper that failed to connect reports it too.
    let mut errors = Vec::new();
    let reports = fleet.reports().await;
    let completion_cpu = daemon.cpu_seconds() - cpu_stop;
    let (mut output, mut complete) = (Vec::new(), Vec::new());
    for r in reports {
        output.extend(r.output_acks);
        complete.extend(r.complete_ack);
        if let Some(e) = r.error {
            errors.push(e);
        }
    }
    output.sort();
    complete.sort();
    let ended = match daemon.wait_ended(Duration::from_secs(30)).await {
        Ok((_, run)) => all_ended_with(&run, n, 0),
        Err(e) => Err(e),
    };
    if ended.is_err() || !errors.is_empty() {
        println!("daemon log (last lines):\n{}", daemon.log_tail(15));
    }
    Row {
        n,
        streamers,
        startup: daemon.startup,
        connected_in,
        cpu_pct,
        own_cpu_pct,
        rss_start,
        rss_end,
        output,
        complete,
        errors,
        completion_cpu,
        ended,
    }
}

fn print_row(r: &Row) {
    println!(
        "N = {} ({} streaming): daemon up with the run adopted in {:.2} s, wrappers connected in {:.2} s; CPU {:.1} % of one core (load generator {:.0} %); RSS {:.1} -> {:.1} MiB ({:.1} KiB per wrapper); output ack p50/p99 {}/{} ms over {}; complete ack p50/p99/max {}/{}/{} ms over {} (daemon CPU while completing {:.2} s)",
        r.n,
        r.streamers,
        r.startup.as_secs_f64(),
        r.connected_in.as_secs_f64(),
        r.cpu_pct,
        r.own_cpu_pct,
        mib(r.rss_start),
        mib(r.rss_end),
        r.per_wrapper_kib(),
        ms(quantile(&r.output, 0.5)),
        ms(quantile(&r.output, 0.99)),
        r.output.len(),
        ms(quantile(&r.complete, 0.5)),
        ms(quantile(&r.complete, 0.99)),
        ms(r.complete.last().copied()),
        r.complete.len(),
        r.completion_cpu,
    );
    if !r.errors.is_empty() {
        println!(
            "  {} wrapper errors, e.g.: {}",
            r.errors.len(),
            r.errors
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    match &r.ended {
        Ok(_) => println!("  run ended, every target exit 0 (API)"),
        Err(e) => println!("  run NOT as expected: {e}"),
    }
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "| wrappers | streaming | connect s | CPU % of 1 core | load gen. CPU % | RSS start MiB | RSS end MiB | KiB/wrapper | output ack p50 / p99 ms | complete ack p50 / p99 / max ms | daemon CPU s completing | run ended, all exit 0 | errors |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---|---:|");
    for r in rows {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} | {} / {} | {} / {} / {} | {:.2} | {} | {} |",
            r.n,
            r.streamers,
            r.connected_in.as_secs_f64(),
            r.cpu_pct,
            r.own_cpu_pct,
            mib(r.rss_start),
            mib(r.rss_end),
            r.per_wrapper_kib(),
            ms(quantile(&r.output, 0.5)),
            ms(quantile(&r.output, 0.99)),
            ms(quantile(&r.complete, 0.5)),
            ms(quantile(&r.complete, 0.99)),
            ms(r.complete.last().copied()),
            r.completion_cpu,
            match &r.ended {
                Ok(_) => "yes".to_string(),
                Err(e) => format!("no: {e}"),
            },
            r.errors.len(),
        );
    }
    println!();
    println!(
        "Targets (issue): 10,000 wrappers with 1,000 streaming: <= 10 % of one core and <= 20 KiB per wrapper; complete acknowledged p99 < 100 ms."
    );
    for r in rows {
        let p99 = quantile(&r.complete, 0.99).unwrap_or(Duration::MAX);
        let mut verdict = format!(
            "N = {} ({} streaming): complete p99 < 100 ms: {}",
            r.n,
            r.streamers,
            met(p99 < Duration::from_millis(100))
        );
        if r.n == 10_000 && r.streamers == 1_000 {
            verdict += &format!(
                "; CPU <= 10 %: {} ({:.1} %); <= 20 KiB per wrapper: {} ({:.1} KiB)",
                met(r.cpu_pct <= 10.0),
                r.cpu_pct,
                met(r.per_wrapper_kib() <= 20.0),
                r.per_wrapper_kib()
            );
        }
        println!("{verdict}");
    }
}
