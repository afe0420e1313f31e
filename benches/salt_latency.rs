//! Benchmark on a real Salt lab (started with `contrib/lab/lab.sh` unless SALTPETER_LAB_ENV
//! names one): publish-to-all-returns latency of `test.ping`, native (this crate) versus Salt's
//! own Python LocalClient in-process, and `saltpeter salt` versus the `salt` CLI start to exit.
//! Medians over SALTPETER_BENCH_RUNS runs (default 20). Run with `cargo bench --bench salt_latency`.

#[path = "../tests/common/lab_env.rs"]
mod lab_env;

use std::process::Command;
use std::time::{Duration, Instant};

use saltpeter::salt::bus;
use saltpeter::salt::job;
use saltpeter::salt::{Publish, SaltClient, SaltSettings, Tgt};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs: usize = std::env::var("SALTPETER_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let env = lab_env::lab_env();
    let master = env["MASTER_CONFIG"].clone();
    let minions = env["MINIONS"].split_whitespace().count();
    println!(
        "Salt {} lab, {minions} minions, {runs} runs each",
        env["SALT_VERSION"]
    );

    // Native, in-process: publish to the last return, one long-lived client and subscription.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let native: Vec<Duration> = rt.block_on(async {
        let settings = SaltSettings::load(Some(master.as_ref())).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
        tokio::spawn(bus::subscribe(settings.event_source(), tx));
        job::wait_connected(&mut rx, Duration::from_secs(10))
            .await
            .unwrap();
        let mut client = SaltClient::new(settings);
        let mut times = Vec::new();
        for i in 0..=runs {
            let p = Publish::new(Tgt::Expr("*".into()), "glob", "test.ping");
            let start = Instant::now();
            let g = job::run(
                &mut client,
                &mut rx,
                p,
                Duration::from_secs(10),
                Duration::from_secs(10),
                |_| {},
            )
            .await
            .unwrap();
            assert_eq!(g.minions().len(), minions);
            if i > 0 {
                times.push(start.elapsed()); // the first run warms up connections
            }
        }
        times
    });
    report("native publish -> all returns (in-process)", &native);

    // Salt's Python client, in-process, same lab.
    let script = format!(
        r#"
import salt.client, time, statistics
c = salt.client.LocalClient(c_path={conf:?})
c.cmd('*', 'test.ping', timeout=10)
ts = []
for _ in range({runs}):
    t = time.perf_counter(); r = c.cmd('*', 'test.ping', timeout=10); ts.append(time.perf_counter() - t)
    assert len(r) == {minions}, r
print(" ".join(str(int(x * 1e6)) for x in ts))
"#,
        conf = master
    );
    let out = Command::new(format!("{}/python", env["SALT_BIN"]))
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let python: Vec<Duration> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|s| Duration::from_micros(s.parse().unwrap()))
        .collect();
    report("Salt LocalClient.cmd -> all returns (in-process)", &python);

    // Whole commands, start to exit.
    let time_cmd = |mut make: Box<dyn FnMut() -> Command>| -> Vec<Duration> {
        (0..runs.min(10))
            .map(|_| {
                let start = Instant::now();
                let out = make().output().unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                start.elapsed()
            })
            .collect()
    };
    let ours = time_cmd(Box::new({
        let master = master.clone();
        move || {
            let mut c = Command::new(env!("CARGO_BIN_EXE_saltpeter"));
            c.args(["salt", "--salt-config", &master, "*", "test.ping"]);
            c
        }
    }));
    report("`saltpeter salt '*' test.ping`, start to exit", &ours);
    let theirs = time_cmd(Box::new({
        let bin = env["SALT_BIN"].clone();
        let conf = std::path::Path::new(&master)
            .parent()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        move || {
            let mut c = Command::new(format!("{bin}/salt"));
            c.args(["-c", &conf, "*", "test.ping"]);
            c
        }
    }));
    report("`salt '*' test.ping`, start to exit", &theirs);
}

fn report(what: &str, times: &[Duration]) {
    let mut sorted = times.to_vec();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    let p90 = sorted[(sorted.len() * 9 / 10).min(sorted.len() - 1)];
    println!(
        "{what:<52} median {:>8.1} ms   p90 {:>8.1} ms   (n={})",
        ms(median),
        ms(p90),
        sorted.len()
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
