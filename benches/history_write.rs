//! Benchmark of the history store under a run of 1,000 targets streaming output: events stored
//! per second in a burst (batched transactions), and how long the UI's query for the run waits
//! while output streams in steadily. Run with `cargo bench --bench history_write`.

use std::time::{Duration, Instant};

use saltpeter::history::{History, Retention};
use saltpeter::journal::{RunEvent, Trigger};

const TARGETS: usize = 1000;
const CHUNKS: usize = 100;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let h = History::open(&dir.path().join("bench.db"), Retention::default()).unwrap();
    let instance = "bench_1".to_string();
    h.record(RunEvent::Started {
        instance: instance.clone(),
        job: "bench".into(),
        trigger: Trigger::Manual,
        scheduled: None,
        at: jiff::Timestamp::now(),
        token: "t".into(),
    });
    let machines: Vec<String> = (0..TARGETS).map(|i| format!("minion-{i:04}")).collect();
    h.record(RunEvent::Published {
        instance: instance.clone(),
        jid: "1".into(),
        machines: machines.clone(),
    });
    let line = "x".repeat(119) + "\n";
    // A burst: everything at once, as fast as the store can take it.
    let started = Instant::now();
    for seq in 0..CHUNKS {
        for m in &machines {
            h.record(RunEvent::Output {
                instance: instance.clone(),
                machine: m.clone(),
                data: line.clone(),
                seq: Some(seq as i64),
            });
        }
    }
    rt.block_on(h.flush()).unwrap();
    let burst = started.elapsed();
    let events = TARGETS * CHUNKS;
    println!(
        "burst: {events} output events ({TARGETS} targets x {CHUNKS} chunks of 120 B) committed in {:.0} ms = {:.0} events/s ({:.1} MB/s)",
        burst.as_secs_f64() * 1000.0,
        events as f64 / burst.as_secs_f64(),
        (events * 120) as f64 / burst.as_secs_f64() / 1e6
    );

    // Sustained: every target prints 10 lines a second for 10 s, while the UI asks for the run
    // (all 1,000 targets) every 20 ms.
    let writer = {
        let (h, instance, machines, line) =
            (h.clone(), instance.clone(), machines.clone(), line.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            for tick in 0..100u32 {
                for m in &machines {
                    h.record(RunEvent::Output {
                        instance: instance.clone(),
                        machine: m.clone(),
                        data: line.clone(),
                        seq: Some((CHUNKS + tick as usize) as i64),
                    });
                }
                let next = Duration::from_millis(100) * (tick + 1);
                std::thread::sleep(next.saturating_sub(started.elapsed()));
            }
        })
    };
    let mut waits = Vec::new();
    rt.block_on(async {
        while !writer.is_finished() {
            let t = Instant::now();
            h.run(&instance).await.unwrap();
            waits.push(t.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        h.flush().await.unwrap();
    });
    writer.join().unwrap();
    waits.sort();
    let pct = |p: f64| waits[((waits.len() - 1) as f64 * p) as usize];
    let size = rt.block_on(h.size()).unwrap();
    println!(
        "sustained 10,000 events/s for 10 s: a run query (1,000 targets) answered in p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} queries; database {} MB",
        pct(0.5).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0,
        waits.last().unwrap().as_secs_f64() * 1000.0,
        waits.len(),
        size / 1_000_000
    );
}
