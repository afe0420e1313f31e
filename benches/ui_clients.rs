//! Benchmark on a real Salt lab (started with `contrib/lab/lab.sh` unless SALTPETER_LAB_ENV
//! names one): the daemon's CPU and memory with nothing running, without and with 100 idle
//! clients of the original UI WebSocket (push, not poll: they should cost nothing), then while a
//! job streams output on every minion, with no UI client and with 100 subscribed to it.
//! Run with `cargo bench --bench ui_clients`.

#[path = "../tests/common/net.rs"]
mod net;

use net::free_port;

#[path = "../tests/common/lab_env.rs"]
mod lab_env;

#[path = "../tests/common/reaped.rs"]
mod reaped;

#[path = "common/procfs.rs"]
mod procfs;

use procfs::{cpu_seconds, rss_kib};

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CLIENTS: usize = 100;
const WINDOW: Duration = Duration::from_secs(15);

fn post(url: &str) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let resp = agent
        .post(url)
        .header("x-saltpeter-request", "1")
        .send_empty()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202, "run now refused");
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let env = lab_env::lab_env();
    let dir = tempfile::tempdir().unwrap();
    let (hub, api) = (free_port(), free_port());
    let config = format!(
        "saltpeter_config:\n  salt_master_config: {}\n  machines_ws_bind_addr: 127.0.0.1\n  machines_ws_port: {hub}\n  api_ws_bind_addr: 127.0.0.1\n  api_ws_port: {api}\n  default_saltpeter_server_host: 127.0.0.1\n  default_wrapper_path: {}\n  logdir: {}\n  database: {}\n\
         stream:\n  sec: 0\n  min: 0\n  hour: 0\n  dom: 1\n  mon: 1\n  dow: '*'\n  year: 2099\n  targets: '*'\n  concurrency: allow\n  command: for i in $(seq 1 400); do echo line $i of a job streaming output for the benchmark; sleep 0.05; done\n",
        env["MASTER_CONFIG"],
        env!("CARGO_BIN_EXE_sp-wrapper"),
        dir.path().join("log").display(),
        dir.path().join("state/history.db").display()
    );
    std::fs::write(dir.path().join("bench.yaml"), config).unwrap();
    let daemon = reaped::Reaped(
        Command::new(env!("CARGO_BIN_EXE_saltpeter"))
            .args(["run", "-c"])
            .arg(dir.path())
            .env("SALTPETER_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = daemon.id();
    let base = format!("http://127.0.0.1:{api}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", api)).is_err() {
        assert!(Instant::now() < deadline, "the API never came up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let minions = env["MINIONS"].split_whitespace().count();
    println!(
        "Salt {} lab, {minions} minions; each streams a 60-byte line every 50 ms",
        env["SALT_VERSION"]
    );

    let measure = |label: &str, run: bool| {
        if run {
            post(&format!("{base}/api/v1/jobs/stream/run"));
            std::thread::sleep(Duration::from_secs(3)); // confirmed and streaming
        }
        let (c0, t0) = (cpu_seconds(pid), Instant::now());
        std::thread::sleep(WINDOW);
        let cpu = (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64() * 100.0;
        println!(
            "{label}: daemon CPU {cpu:.2}% of one core, RSS {:.1} MB",
            rss_kib(pid) as f64 / 1024.0
        );
    };
    let received = Arc::new(AtomicU64::new(0));
    // Clients subscribed to the job, reading until `until`.
    let connect = |until: Duration| -> Vec<std::thread::JoinHandle<()>> {
        (0..CLIENTS)
            .map(|_| {
                let received = received.clone();
                let url = format!("ws://127.0.0.1:{api}/ws");
                std::thread::spawn(move || {
                    let stream = TcpStream::connect(("127.0.0.1", api)).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(1)))
                        .unwrap();
                    let (mut ws, _) = tungstenite::client(url.as_str(), stream).unwrap();
                    ws.send(tungstenite::Message::text(r#"{"subscribe": ["stream"]}"#))
                        .unwrap();
                    let until = Instant::now() + until;
                    while Instant::now() < until {
                        match ws.read() {
                            Ok(tungstenite::Message::Text(t)) => {
                                if t.as_str().contains("\"output_chunk\"") {
                                    received.fetch_add(t.len() as u64, Ordering::Relaxed);
                                }
                            }
                            Ok(_) => {}
                            Err(tungstenite::Error::Io(e))
                                if e.kind() == std::io::ErrorKind::WouldBlock
                                    || e.kind() == std::io::ErrorKind::TimedOut => {}
                            Err(_) => break,
                        }
                    }
                    let _ = ws.close(None);
                })
            })
            .collect()
    };

    measure("idle, no UI client", false);
    let idle = connect(WINDOW + Duration::from_secs(3));
    std::thread::sleep(Duration::from_secs(2)); // connected and subscribed
    measure(&format!("idle, {CLIENTS} UI clients connected"), false);
    for c in idle {
        let _ = c.join();
    }
    measure("streaming, no UI client", true);
    let clients = connect(WINDOW + Duration::from_secs(6));
    measure(&format!("streaming, {CLIENTS} UI clients subscribed"), true);
    for c in clients {
        let _ = c.join();
    }
    println!(
        "the clients received {:.1} MB of output_chunk messages",
        received.load(Ordering::Relaxed) as f64 / 1e6
    );
    // Leftover wrappers finish their jobs and give up delivering on their own.
    drop(daemon);
}
