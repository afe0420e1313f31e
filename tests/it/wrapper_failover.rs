//! The real `sp-wrapper` with several daemon URLs in `SP_WEBSOCKET_URL`, against real machines
//! hubs on loopback: a dead first daemon is skipped at once; when the daemon that launched a
//! run dies, the wrapper goes round the daemons (one that does not know the run yet included)
//! until one adopts the run, and resumes there without losing or repeating output; and with
//! one URL an unknown run is still final.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use saltpeter::agents::{self, Hub, HubCommand, HubEvent, HubEventKind, HubOptions};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

async fn hub(options: HubOptions) -> (Hub, mpsc::Receiver<HubEvent>, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (hub, events) = agents::spawn(listener, options);
    (hub, events, port)
}

fn register(hub: &Hub, instance: &str, token: &str) {
    hub.send_now(HubCommand::Register {
        instance: instance.into(),
        job_name: "job".into(),
        machines: vec!["m1".into()],
        token: Some(token.into()),
        tokenless: false,
    });
}

/// A port nothing listens on.
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A daemon's address that can be switched to a hub, or to nothing: then it drops every
/// connection, open or new (a daemon that died, its port still answering).
async fn switch(to: Option<u16>) -> (u16, watch::Sender<Option<u16>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = watch::channel(to);
    tokio::spawn(async move {
        loop {
            let (mut inbound, _) = listener.accept().await.unwrap();
            let Some(to) = *rx.borrow() else {
                continue;
            };
            let mut changed = rx.clone();
            changed.mark_unchanged();
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", to)).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = changed.changed() => {}
                }
            });
        }
    });
    (port, tx)
}

/// Runs sp-wrapper as Salt would (it detaches at once) with `urls` as `SP_WEBSOCKET_URL`.
fn wrapper(dir: &Path, instance: &str, command: &str, urls: &str, extra: &[(&str, &str)]) {
    let mut env: BTreeMap<&str, String> = BTreeMap::new();
    env.insert("SP_WEBSOCKET_URL", urls.into());
    env.insert("SP_JOB_NAME", "job".into());
    env.insert("SP_JOB_INSTANCE", instance.into());
    env.insert("SP_COMMAND", command.into());
    env.insert("SP_MACHINE_ID", "m1".into());
    env.insert("SP_RUN_TOKEN", "tok".into());
    env.insert("SP_WRAPPER_LOGDIR", dir.join("log").display().to_string());
    env.insert("SP_SPOOL_DIR", dir.join("spool").display().to_string());
    env.insert(
        "SP_LOCKFILE",
        dir.join(format!("{instance}.lock")).display().to_string(),
    );
    env.insert("SP_WRAPPER_LOGLEVEL", "debug".into());
    // Wrappers whose test ended give up soon instead of offering results for an hour.
    env.insert("SP_DELIVERY_TIMEOUT", "20".into());
    for (k, v) in extra {
        env.insert(k, v.to_string());
    }
    let out = Command::new(env!("CARGO_BIN_EXE_sp-wrapper"))
        .envs(env)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The wrapper's own log.
fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("log/job.log")).unwrap_or_default()
}

/// Waits (by condition) until the wrapper's log has `needle`.
async fn log_shows(dir: &Path, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = log(dir);
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "the wrapper's log never showed {needle:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One target's output and result as a hub saw them (confirmed as the engine would).
async fn outcome(
    hub: &Hub,
    events: &mut mpsc::Receiver<HubEvent>,
    instance: &str,
    within: Duration,
) -> (String, i64) {
    let deadline = tokio::time::Instant::now() + within;
    let mut output = String::new();
    loop {
        let e = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("{instance} did not complete; so far {output:?}"))
            .unwrap();
        match e.kind {
            HubEventKind::Output { data, .. } => output.push_str(&data),
            HubEventKind::Completed { retcode } => {
                hub.send_now(HubCommand::ConfirmComplete {
                    instance: instance.into(),
                    machine: "m1".into(),
                });
                return (output, retcode);
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_dead_first_daemon_costs_one_failed_connect() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, mut events, port) = hub(HubOptions::default()).await;
    register(&hub, "fo1", "tok");
    let (dead, live) = (
        format!("ws://127.0.0.1:{}", dead_port()),
        format!("ws://127.0.0.1:{port}"),
    );
    let started = Instant::now();
    wrapper(
        dir.path(),
        "fo1",
        "echo hi",
        &format!(" {dead} ,,{live}"),
        &[],
    );
    let (output, retcode) = outcome(&hub, &mut events, "fo1", Duration::from_secs(20)).await;
    assert_eq!((output.as_str(), retcode), ("hi\n", 0));
    // No backoff between the two: the first round is not over yet.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let text = log_shows(dir.path(), "result delivered", Duration::from_secs(10)).await;
    assert!(
        text.contains(&format!("connected to the daemon at {live}")),
        "{text}"
    );
    assert!(!text.contains(&format!("daemon at {dead}")), "{text}");
}

/// The launching daemon dies mid-run; the other one does not know the run for a while
/// (`JOB_NOT_FOUND`), then adopts it from the store: the wrapper goes on there with the same
/// token and seqs, and the two daemons together have every line exactly once.
#[tokio::test]
async fn a_run_adopted_by_another_daemon_resumes_there() {
    let dir = tempfile::tempdir().unwrap();
    let (hub_a, mut events_a, port_a) = hub(HubOptions::default()).await;
    register(&hub_a, "fo2", "tok");
    // The second daemon is up from the start but knows nothing of the run.
    let (_hub_b0, _events_b0, port_b0) = hub(HubOptions::default()).await;
    let (front_a, to_a) = switch(Some(port_a)).await;
    let (front_b, to_b) = switch(Some(port_b0)).await;
    let url_b = format!("ws://127.0.0.1:{front_b}");
    wrapper(
        dir.path(),
        "fo2",
        "i=0; while [ $i -lt 200 ]; do i=$((i+1)); echo $i; sleep 0.05; done",
        &format!("ws://127.0.0.1:{front_a},{url_b}"),
        &[],
    );
    // The first daemon streams a while, then dies.
    let mut before = String::new();
    let mut last_seq = -1;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while before.lines().count() < 20 || last_seq < 2 {
        let e = tokio::time::timeout_at(deadline, events_a.recv())
            .await
            .expect("no output at the first daemon")
            .unwrap();
        if let HubEventKind::Output { data, seq } = e.kind {
            before.push_str(&data);
            last_seq = seq;
        }
    }
    to_a.send(None).unwrap();
    // What it had stored by then (the store the other daemon adopts from).
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_secs(1), events_a.recv()).await {
        if let HubEventKind::Output { data, seq } = e.kind {
            before.push_str(&data);
            last_seq = seq;
        }
    }
    assert!(!before.contains("200\n"), "the job ended before the cut");
    // The wrapper goes round both daemons meanwhile, and does not give up.
    log_shows(
        dir.path(),
        &format!("the daemon at {url_b} does not know this run (yet)"),
        Duration::from_secs(10),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (hub_b, mut events_b, port_b) = hub(HubOptions {
        adopted: vec![agents::Adopted {
            instance: "fo2".into(),
            job_name: "job".into(),
            token: Some("tok".into()),
            tokenless: false,
            targets: vec![("m1".into(), last_seq + 1)],
        }],
        ..HubOptions::default()
    })
    .await;
    to_b.send(Some(port_b)).unwrap();
    let (after, retcode) = outcome(&hub_b, &mut events_b, "fo2", Duration::from_secs(60)).await;
    assert_eq!(retcode, 0);
    let got: Vec<u32> = format!("{before}{after}")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(
        got,
        (1..=200).collect::<Vec<u32>>(),
        "lost or repeated output"
    );
    let text = log_shows(dir.path(), "result delivered", Duration::from_secs(10)).await;
    assert!(
        text.contains(&format!("reconnected to the daemon at {url_b}")),
        "{text}"
    );
    assert!(!text.contains("not delivered"), "{text}");
}

#[tokio::test]
async fn with_one_url_an_unknown_run_is_final_and_with_several_it_is_retried_until_the_give_up() {
    let one = tempfile::tempdir().unwrap();
    let several = tempfile::tempdir().unwrap();
    // Neither daemon knows the run.
    let (_hub_a, _events_a, port_a) = hub(HubOptions::default()).await;
    let (_hub_b, _events_b, port_b) = hub(HubOptions::default()).await;
    let (a, b) = (
        format!("ws://127.0.0.1:{port_a}"),
        format!("ws://127.0.0.1:{port_b}"),
    );
    wrapper(one.path(), "fo3", "echo lost", &a, &[]);
    let text = log_shows(
        one.path(),
        "result not delivered: JOB_NOT_FOUND",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        !text.contains(&format!("daemon at {a} does not know")),
        "{text}"
    );
    // With several, until the job's result has waited SP_DELIVERY_TIMEOUT.
    wrapper(
        several.path(),
        "fo4",
        "echo kept",
        &format!("{a},{b}"),
        &[("SP_DELIVERY_TIMEOUT", "3")],
    );
    let text = log_shows(
        several.path(),
        "result not delivered: no daemon acknowledged the result in time (last refusal: JOB_NOT_FOUND",
        Duration::from_secs(15),
    )
    .await;
    for url in [&a, &b] {
        assert!(
            text.contains(&format!("the daemon at {url} does not know this run (yet)")),
            "{text}"
        );
    }
    assert!(text.contains("undelivered output: kept"), "{text}");
}
