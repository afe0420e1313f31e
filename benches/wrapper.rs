//! Benchmarks for the wrapper and the machines hub (run with `cargo bench --bench wrapper`):
//! 1. `sp-wrapper`'s size, time to detach, resident memory while a job runs, and output
//!    throughput from a command through the wrapper into the hub;
//! 2. the hub with many connected wrappers heartbeating every 5 s and some of them streaming
//!    1 KiB/s: the hub process's CPU and memory, and output-ack latency.
//!    SALTPETER_BENCH_CONNS (default 10000), SALTPETER_BENCH_STREAMERS (default 1000) and
//!    SALTPETER_BENCH_SECS (default 30) size it.

#[path = "common/procfs.rs"]
mod procfs;

use procfs::{cpu_seconds, rss_kib};

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use saltpeter::agents::{self, HubCommand, HubEventKind, HubOptions};
use saltpeter::protocol::{DaemonMsg, Ext, Header, WrapperMsg};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--hub-server") {
        let conns = args[i + 1].parse().unwrap();
        return hub_server(conns);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(wrapper_throughput());
    rt.block_on(hub_scale());
}

fn ppid(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

async fn wrapper_throughput() {
    let bin = env!("CARGO_BIN_EXE_sp-wrapper");
    let size = std::fs::metadata(bin).unwrap().len();
    let stripped = std::env::temp_dir().join("sp-wrapper-bench-stripped");
    let _ = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(bin)
        .status();
    let stripped_size = std::fs::metadata(&stripped).map(|m| m.len()).unwrap_or(0);
    println!(
        "sp-wrapper: {size} bytes as built, {stripped_size} bytes stripped (this build: glibc, dynamic)"
    );

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (hub, mut events) = agents::spawn(listener, HubOptions::default());
    let dir = tempfile::tempdir().unwrap();
    const BYTES: u64 = 256 * 1024 * 1024;
    for (instance, command) in [
        ("idle", "sleep 3".to_string()),
        ("bulk", format!("head -c {BYTES} /dev/zero | tr '\\0' x")),
    ] {
        hub.send_now(HubCommand::Register {
            instance: instance.into(),
            job_name: "bench".into(),
            machines: vec!["m".into()],
            token: None,
            tokenless: false,
        });
        let start = Instant::now();
        let out = Command::new(bin)
            .envs([
                ("SP_WEBSOCKET_URL", format!("ws://127.0.0.1:{port}")),
                ("SP_JOB_NAME", "bench".into()),
                ("SP_JOB_INSTANCE", instance.into()),
                ("SP_COMMAND", command),
                ("SP_MACHINE_ID", "m".into()),
                ("SP_WRAPPER_LOGLEVEL", "off".into()),
                ("SP_SPOOL_DIR", dir.path().display().to_string()),
                (
                    "SP_LOCKFILE",
                    dir.path()
                        .join(format!("{instance}.lock"))
                        .display()
                        .to_string(),
                ),
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        let detach = start.elapsed();
        assert!(out.success());
        let mut bytes = 0u64;
        let mut first = None;
        let mut max_rss = 0;
        loop {
            let e = events.recv().await.unwrap();
            match e.kind {
                HubEventKind::Started { pid, .. } => {
                    max_rss = max_rss.max(rss_kib(ppid(pid as u32)));
                    if instance == "idle" {
                        println!("time to detach (Salt sees exit 0): {detach:?}");
                        println!(
                            "wrapper resident memory while a job runs: {} KiB",
                            rss_kib(ppid(pid as u32))
                        );
                    }
                }
                HubEventKind::Output { data, .. } => {
                    first.get_or_insert_with(Instant::now);
                    bytes += data.len() as u64;
                }
                HubEventKind::Completed { .. } => {
                    hub.send_now(HubCommand::ConfirmComplete {
                        instance: instance.into(),
                        machine: "m".into(),
                    });
                    break;
                }
                _ => {}
            }
        }
        if instance == "bulk" {
            let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
            assert_eq!(bytes, BYTES);
            println!(
                "output throughput, command -> wrapper -> hub: {:.0} MiB in {secs:.2} s = {:.0} MiB/s",
                bytes as f64 / 1048576.0,
                bytes as f64 / 1048576.0 / secs
            );
        }
    }
}

fn hub_server(conns: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap().port());
        let (hub, mut events) = agents::spawn(listener, HubOptions::default());
        hub.send_now(HubCommand::Register {
            instance: "scale".into(),
            job_name: "bench".into(),
            machines: (0..conns).map(|i| format!("m{i}")).collect(),
            token: None,
            tokenless: false,
        });
        while events.recv().await.is_some() {}
    });
}

async fn hub_scale() {
    let conns = env_or("SALTPETER_BENCH_CONNS", 10_000) as usize;
    let streamers = env_or("SALTPETER_BENCH_STREAMERS", 1_000) as usize;
    let secs = env_or("SALTPETER_BENCH_SECS", 30);
    let mut server = Command::new(std::env::current_exe().unwrap())
        .args(["--hub-server", &conns.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let port: u16 = line.trim().parse().unwrap();
    let hub_pid = server.id();

    let (lat_tx, mut lat_rx) = tokio::sync::mpsc::unbounded_channel::<Duration>();
    let connect_start = Instant::now();
    let mut clients = Vec::new();
    for i in 0..conns {
        let lat = lat_tx.clone();
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}"))
            .await
            .unwrap();
        clients.push(tokio::spawn(client(ws, i, i < streamers, lat)));
    }
    println!(
        "hub: {conns} wrappers connected in {:?}",
        connect_start.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (t0, rss0) = (cpu_seconds(hub_pid), rss_kib(hub_pid));
    while lat_rx.try_recv().is_ok() {}
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let t1 = cpu_seconds(hub_pid);
    let mut lats = Vec::new();
    while let Ok(l) = lat_rx.try_recv() {
        lats.push(l);
    }
    lats.sort();
    let rss = rss_kib(hub_pid);
    println!(
        "hub with {conns} wrappers (heartbeat 5 s), {streamers} streaming 1 KiB/s, over {secs} s: CPU {:.1} % of one core",
        100.0 * (t1 - t0) / secs as f64
    );
    println!(
        "hub resident memory: {rss} KiB ({:.1} KiB per connection; {rss0} KiB before the window)",
        rss as f64 / conns as f64
    );
    if !lats.is_empty() {
        let p = |q: f64| lats[((lats.len() as f64 * q) as usize).min(lats.len() - 1)];
        println!(
            "output ack latency over {} outputs: p50 {:?}, p99 {:?}",
            lats.len(),
            p(0.5),
            p(0.99)
        );
    }
    for c in clients {
        c.abort();
    }
    let _ = server.kill();
    let _ = server.wait();
}

async fn client(
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    i: usize,
    streams: bool,
    lat: tokio::sync::mpsc::UnboundedSender<Duration>,
) {
    let (mut sink, mut source) = ws.split();
    let header = Header {
        job_name: "bench".into(),
        job_instance: "scale".into(),
        machine: format!("m{i}"),
        timestamp: None,
    };
    let ext = Ext {
        protocol: Some(1),
        token: None,
    };
    let send = |m: WrapperMsg| Message::text(m.encode());
    sink.send(send(WrapperMsg::Connect {
        header: header.clone(),
        ext: ext.clone(),
        resume: None,
    }))
    .await
    .unwrap();
    sink.send(send(WrapperMsg::Start {
        header: header.clone(),
        pid: i as i64,
        version: "bench".into(),
        ext: ext.clone(),
    }))
    .await
    .unwrap();
    let data = "x".repeat(1023) + "\n";
    let mut seq = 0i64;
    let mut beat = tokio::time::interval(Duration::from_secs(5));
    // Spread the streamers' sends over the second.
    tokio::time::sleep(Duration::from_millis((i % 1000) as u64)).await;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut sent_at = std::collections::HashMap::new();
    loop {
        tokio::select! {
            _ = beat.tick() => {
                if sink.send(send(WrapperMsg::Heartbeat { header: header.clone(), ext: ext.clone() })).await.is_err() { return; }
            }
            _ = tick.tick(), if streams => {
                sent_at.insert(seq, Instant::now());
                let m = WrapperMsg::Output { header: header.clone(), stream: "stdout".into(), data: data.clone(), seq, ext: ext.clone() };
                seq += 1;
                if sink.send(send(m)).await.is_err() { return; }
            }
            m = source.next() => {
                let Some(Ok(Message::Text(t))) = m else { return };
                if let Ok(DaemonMsg::Ack { seq: Some(s), .. }) = DaemonMsg::decode(&t)
                    && let Some(at) = sent_at.remove(&s)
                {
                    let _ = lat.send(at.elapsed());
                }
            }
        }
    }
}
