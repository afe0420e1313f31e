//! Benchmark of the whole daemon (`saltpeter run`) against a runaway job: one adopted target
//! whose wrapper streams 64 KiB output messages as fast as the window allows. Every 5 s it
//! reports the MB/s the daemon acknowledged and its resident memory, then sends `complete` and
//! times its ack and the run's end in the API. Run with `cargo bench --bench runaway`
//! (RUNAWAY_SECS, default 300; the daemon is killed if it passes 4 GB resident).

#[allow(dead_code)] // each benchmark uses part of it
#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::daemon::{Daemon, all_ended_with};
use common::wrapper::{Fleet, Plan, Shared};
use common::{met, mib, ms};

const CHUNK: usize = 64 * 1024;
const SAMPLE: Duration = Duration::from_secs(5);
/// The daemon's memory is read this often, so a short peak (at `complete`, say) is seen.
const POLL: Duration = Duration::from_millis(100);
/// Past this the daemon is bloating without bound: it is killed rather than left to exhaust the
/// host.
const ABORT_RSS_KIB: u64 = 4 * 1024 * 1024;

fn main() {
    if common::listing_only() {
        return;
    }
    let secs = common::env_u64("RUNAWAY_SECS", 300);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(Duration::from_secs(secs)));
}

async fn run(length: Duration) {
    let daemon = Daemon::start("runaway", 1).await;
    let rss_start = daemon.rss_kib();
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let plan = |_| Plan {
        chunk: CHUNK,
        every: Duration::ZERO,
        offset: Duration::ZERO,
        complete_after: Duration::ZERO,
    };
    let fleet = Fleet::connect(&daemon, plan, &shared, &stop_rx).await;
    assert!(fleet.failed.is_empty(), "not connected: {:?}", fleet.failed);
    println!(
        "runaway: one target streaming {} KiB messages for up to {} s; daemon RSS at start {:.1} MiB",
        CHUNK / 1024,
        length.as_secs(),
        mib(rss_start)
    );
    println!("| t s | MB/s acked | daemon RSS MiB |");
    println!("|---:|---:|---:|");
    let started = Instant::now();
    // Who is the bottleneck: the daemon, or this load generator.
    let (daemon_cpu0, own_cpu0) = (
        daemon.cpu_seconds(),
        common::cpu_seconds(std::process::id()),
    );
    let (peak, watcher) = watch_peak(daemon.pid(), rss_start);
    let mut tick = tokio::time::interval(POLL);
    let (mut last_bytes, mut last_at, mut rates) = (0u64, started, Vec::new());
    loop {
        tick.tick().await;
        let done = started.elapsed() >= length || peak.load(Ordering::Relaxed) > ABORT_RSS_KIB;
        if last_at.elapsed() >= SAMPLE || done {
            let (bytes, now) = (shared.acked_bytes.load(Ordering::Relaxed), Instant::now());
            let rate =
                (bytes - last_bytes) as f64 / now.duration_since(last_at).as_secs_f64() / 1e6;
            rates.push(rate);
            println!(
                "| {:.0} | {rate:.1} | {:.1} |",
                started.elapsed().as_secs_f64(),
                mib(daemon.rss_kib())
            );
            (last_bytes, last_at) = (bytes, now);
        }
        if done {
            break;
        }
    }
    let streamed_for = started.elapsed();
    let total = shared.acked_bytes.load(Ordering::Relaxed);
    let busy = |cpu: f64| cpu / streamed_for.as_secs_f64() * 100.0;
    let daemon_cpu = busy(daemon.cpu_seconds() - daemon_cpu0);
    let own_cpu = busy(common::cpu_seconds(std::process::id()) - own_cpu0);
    let _ = stop_tx.send(true);
    let report = fleet.reports().await.pop().unwrap_or_default();
    let ended = match report.complete_sent {
        _ if peak.load(Ordering::Relaxed) > ABORT_RSS_KIB => Err("the daemon was killed".into()),
        Some(sent) => daemon
            .wait_ended(Duration::from_secs(30))
            .await
            .and_then(|(seen, run)| {
                all_ended_with(&run, 1, 0).map(|()| seen.saturating_duration_since(sent))
            }),
        None => Err("complete was never sent".into()),
    };
    let rss_end = daemon.rss_kib();
    watcher.abort();
    let rss_max = peak.load(Ordering::Relaxed);
    let aborted = rss_max > ABORT_RSS_KIB;
    if aborted {
        println!("the daemon passed 4 GB resident and was killed");
    }
    if report.error.is_some() || ended.is_err() {
        println!("daemon log (last lines):\n{}", daemon.log_tail(15));
    }

    let average = total as f64 / streamed_for.as_secs_f64() / 1e6;
    let growth = mib(rss_max.saturating_sub(rss_start));
    println!();
    println!(
        "accepted {:.0} MB in {:.1} s: {average:.1} MB/s on average (5 s samples: min {:.1}, max {:.1})",
        total as f64 / 1e6,
        streamed_for.as_secs_f64(),
        rates.iter().copied().fold(f64::INFINITY, f64::min),
        rates.iter().copied().fold(0.0, f64::max),
    );
    println!(
        "CPU while streaming, % of one core: daemon {daemon_cpu:.0}, this load generator {own_cpu:.0}"
    );
    println!(
        "daemon RSS: {:.1} MiB at start, {:.1} MiB at most (+{growth:.1} MiB, sampled every 100 ms through complete), {:.1} MiB after the run ended",
        mib(rss_start),
        mib(rss_max),
        mib(rss_end)
    );
    println!(
        "complete -> ack: {} ms; complete -> run ended in the API: {}",
        ms(report.complete_ack),
        match &ended {
            Ok(d) => format!("{} ms (target exit 0)", ms(Some(*d))),
            Err(e) => format!("NOT seen: {e}"),
        }
    );
    if let Some(e) = &report.error {
        println!("wrapper error: {e}");
    }
    let within_1s = |d: Option<Duration>| d.is_some_and(|d| d <= Duration::from_secs(1));
    println!();
    println!(
        "Targets: >= 100 MB/s into the daemon: {} ({average:.1}); resident memory flat, within 64 MiB of the start: {} (+{growth:.1} MiB{}); run ended and acknowledged within 1 s of complete: {}",
        met(average >= 100.0),
        met(growth <= 64.0 && !aborted),
        if aborted { ", aborted" } else { "" },
        met(within_1s(report.complete_ack) && within_1s(ended.ok())),
    );
}

/// The daemon's highest resident memory so far, kept up to date until the task is aborted; the
/// daemon is killed once it passes [`ABORT_RSS_KIB`].
fn watch_peak(pid: u32, start: u64) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let peak = Arc::new(AtomicU64::new(start));
    let task = tokio::spawn({
        let peak = peak.clone();
        async move {
            let mut tick = tokio::time::interval(POLL);
            loop {
                tick.tick().await;
                let rss = common::rss_kib(pid);
                peak.fetch_max(rss, Ordering::Relaxed);
                if rss > ABORT_RSS_KIB {
                    let pid = nix::unistd::Pid::from_raw(pid as i32);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                    return;
                }
            }
        }
    });
    (peak, task)
}
