//! The real `sp-wrapper` binary against the real machines hub on loopback: it detaches at once,
//! streams output in order and complete, survives a cut connection without losing or
//! duplicating anything, obeys kill and timeout (and the process group goes), stops
//! heartbeating when paused, switches user, guards against overlap; and the hub accepts the
//! original protocol.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use saltpeter::agents::{self, Hub, HubCommand, HubEvent, HubEventKind, HubOptions};
use saltpeter::protocol::{DaemonMsg, WrapperMsg};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

struct Harness {
    hub: Hub,
    events: mpsc::Receiver<HubEvent>,
    port: u16,
    dir: tempfile::TempDir,
}

#[derive(Debug, Default)]
struct Outcome {
    pid: Option<i64>,
    output: String,
    retcode: Option<i64>,
    heartbeats: Vec<Instant>,
    connects: usize,
}

impl Harness {
    async fn new(options: HubOptions) -> Harness {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (hub, events) = agents::spawn(listener, options);
        Harness {
            hub,
            events,
            port,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    async fn register(&self, instance: &str, machines: &[&str], token: Option<&str>) {
        self.register_as(instance, machines, token, false);
    }

    /// `tokenless`: the run's job allows the original (tokenless) wrapper.
    fn register_as(&self, instance: &str, machines: &[&str], token: Option<&str>, tokenless: bool) {
        self.hub.send_now(HubCommand::Register {
            instance: instance.into(),
            job_name: "job".into(),
            machines: machines.iter().map(|m| m.to_string()).collect(),
            token: token.map(String::from),
            tokenless,
        });
    }

    /// Runs sp-wrapper as Salt would and checks it detached at once with exit 0.
    fn wrapper(
        &self,
        instance: &str,
        machine: &str,
        command: &str,
        port: u16,
        extra: &[(&str, &str)],
    ) {
        let mut env: BTreeMap<&str, String> = BTreeMap::new();
        env.insert("SP_WEBSOCKET_URL", format!("ws://127.0.0.1:{port}"));
        env.insert("SP_JOB_NAME", "job".into());
        env.insert("SP_JOB_INSTANCE", instance.into());
        env.insert("SP_COMMAND", command.into());
        env.insert("SP_MACHINE_ID", machine.into());
        env.insert(
            "SP_WRAPPER_LOGDIR",
            self.dir.path().join("log").display().to_string(),
        );
        env.insert(
            "SP_SPOOL_DIR",
            self.dir.path().join("spool").display().to_string(),
        );
        env.insert(
            "SP_LOCKFILE",
            self.dir
                .path()
                .join(format!("{instance}-{machine}.lock"))
                .display()
                .to_string(),
        );
        env.insert("SP_WRAPPER_LOGLEVEL", "debug".into());
        // Wrappers whose test ended give up soon instead of offering results for an hour.
        env.insert("SP_DELIVERY_TIMEOUT", "20".into());
        for (k, v) in extra {
            env.insert(k, v.to_string());
        }
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_sp-wrapper"))
            .envs(env)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("Wrapper started successfully"));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "detaching took {:?}",
            started.elapsed()
        );
    }

    /// Collects one target's events until it completes (then confirms, as the engine would).
    async fn outcome(&mut self, instance: &str, machine: &str, within: Duration) -> Outcome {
        self.outcome_with(instance, machine, within, |_, _| {})
            .await
    }

    async fn outcome_with(
        &mut self,
        instance: &str,
        machine: &str,
        within: Duration,
        mut on: impl FnMut(&HubEventKind, &Outcome),
    ) -> Outcome {
        let mut o = Outcome::default();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let e = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("{instance}:{machine} did not complete; so far {o:?}"))
                .unwrap();
            if e.instance != instance || e.machine != machine {
                continue;
            }
            on(&e.kind, &o);
            match e.kind {
                HubEventKind::Started { pid, .. } => o.pid = Some(pid),
                HubEventKind::Output { data, .. } => o.output.push_str(&data),
                HubEventKind::Heartbeat => o.heartbeats.push(Instant::now()),
                HubEventKind::Connected { .. } => o.connects += 1,
                HubEventKind::Completed { retcode } => {
                    o.retcode = Some(retcode);
                    self.hub.send_now(HubCommand::ConfirmComplete {
                        instance: instance.into(),
                        machine: machine.into(),
                    });
                    return o;
                }
                _ => {}
            }
        }
    }
}

/// No live (non-zombie) process is left in the group; zombies wait for PID 1, which may be slow.
fn group_gone(pgid: i64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let alive = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| {
                let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                    return false;
                };
                let Some((_, rest)) = stat.rsplit_once(')') else {
                    return false;
                };
                let fields: Vec<&str> = rest.split_whitespace().collect();
                fields.len() > 3 && fields[0] != "Z" && fields[3] == pgid.to_string()
            });
        if !alive {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn happy_path_streams_merged_output_and_the_exit_code() {
    let mut h = Harness::new(HubOptions::default()).await;
    h.register("r1", &["m1"], Some("tok")).await;
    h.wrapper(
        "r1",
        "m1",
        "echo out; echo err >&2; printf 'a\\rb\\n\\377\\n'; exit 3",
        h.port,
        &[("SP_RUN_TOKEN", "tok")],
    );
    let o = h.outcome("r1", "m1", Duration::from_secs(20)).await;
    assert_eq!(o.retcode, Some(3));
    assert_eq!(o.output, "out\nerr\na\rb\n\u{fffd}\n");
    assert!(o.pid.is_some());
}

#[tokio::test]
async fn a_hundred_megabytes_arrive_complete_and_in_order() {
    let mut h = Harness::new(HubOptions::default()).await;
    h.register("big", &["m1"], None).await;
    // About 100 MB: numbered lines, so order and completeness can be checked as they come.
    h.wrapper("big", "m1", "seq 1 12500000", h.port, &[]);
    let mut expect = 1u64;
    let mut partial = String::new();
    let mut bytes = 0usize;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let retcode = loop {
        let e = tokio::time::timeout_at(deadline, h.events.recv())
            .await
            .expect("no completion")
            .unwrap();
        match e.kind {
            HubEventKind::Output { data, .. } => {
                bytes += data.len();
                partial.push_str(&data);
                let complete = partial.rfind('\n').map_or(0, |i| i + 1);
                for line in partial[..complete].lines() {
                    assert_eq!(line.parse::<u64>().unwrap(), expect, "out of order or lost");
                    expect += 1;
                }
                partial.drain(..complete);
            }
            HubEventKind::Completed { retcode } => break retcode,
            _ => {}
        }
    };
    assert_eq!(retcode, 0);
    assert_eq!(expect, 12_500_001);
    eprintln!("100 MB test: {bytes} bytes in {:?}", started.elapsed());
}

/// A TCP relay that can be cut: while cut, it drops its connections and refuses new ones.
async fn relay(to: u16) -> (u16, tokio::sync::watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (cut_tx, cut_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        loop {
            let (mut inbound, _) = listener.accept().await.unwrap();
            if *cut_rx.borrow() {
                drop(inbound);
                continue;
            }
            let mut cut = cut_rx.clone();
            tokio::spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect(("127.0.0.1", to))
                    .await
                    .unwrap();
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cut.wait_for(|c| *c) => {}
                }
            });
        }
    });
    (port, cut_tx)
}

#[tokio::test]
async fn a_connection_cut_for_30_seconds_loses_and_duplicates_nothing() {
    let mut h = Harness::new(HubOptions::default()).await;
    let (port, cut) = relay(h.port).await;
    h.register("cut", &["m1"], None).await;
    // About 45 s of steady output, 20 lines a second.
    h.wrapper(
        "cut",
        "m1",
        "i=0; while [ $i -lt 900 ]; do i=$((i+1)); echo $i; sleep 0.05; done",
        port,
        &[],
    );
    let mut cut_at = None;
    let o = h
        .outcome_with("cut", "m1", Duration::from_secs(180), |kind, o| {
            if cut_at.is_none()
                && matches!(kind, HubEventKind::Output { .. })
                && o.output.len() > 200
            {
                cut.send(true).unwrap();
                cut_at = Some(Instant::now());
                let cut = cut.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(30));
                    cut.send(false).unwrap();
                });
            }
        })
        .await;
    assert!(cut_at.is_some());
    assert_eq!(o.retcode, Some(0));
    let got: Vec<u32> = o.output.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(
        got,
        (1..=900).collect::<Vec<u32>>(),
        "lost or duplicated output"
    );
    assert!(o.connects >= 2, "the wrapper reconnected");
}

#[tokio::test]
async fn kill_gives_143_and_the_process_group_is_gone() {
    let mut h = Harness::new(HubOptions::default()).await;
    h.register("k", &["m1"], None).await;
    h.wrapper(
        "k",
        "m1",
        "echo started; sleep 600 & sleep 600; echo never",
        h.port,
        &[],
    );
    let hub = h.hub.clone();
    let o = h
        .outcome_with("k", "m1", Duration::from_secs(30), |kind, _| {
            if matches!(kind, HubEventKind::Output { data, .. } if data.contains("started")) {
                let hub = hub.clone();
                tokio::spawn(async move {
                    hub.send_now(HubCommand::Kill {
                        instance: "k".into(),
                        machine: "m1".into(),
                    })
                });
            }
        })
        .await;
    assert_eq!(o.retcode, Some(143));
    assert!(
        o.output.ends_with("\n[Job terminated by user request]\n"),
        "{:?}",
        o.output
    );
    assert!(group_gone(o.pid.unwrap()), "process group survived");
}

/// A kill sent before a target's wrapper connected reaches it when it does.
#[tokio::test]
async fn a_kill_before_the_wrapper_connects_reaches_it_when_it_does() {
    let mut h = Harness::new(HubOptions::default()).await;
    h.register("early", &["m1"], None).await;
    h.hub.send_now(HubCommand::Kill {
        instance: "early".into(),
        machine: "m1".into(),
    });
    h.wrapper("early", "m1", "sleep 600", h.port, &[]);
    let o = h.outcome("early", "m1", Duration::from_secs(30)).await;
    assert_eq!(o.retcode, Some(143));
}

/// A wrapper that beats the publish reply (Salt has not named its machine yet) is told to try
/// again, and is taken once Salt names it; the run's result is its own.
#[tokio::test]
async fn a_wrapper_ahead_of_the_publish_reply_is_taken_once_salt_names_it() {
    let mut h = Harness::new(HubOptions::default()).await;
    h.register("ahead", &[], None).await;
    h.wrapper("ahead", "m1", "echo ran", h.port, &[]);
    // Its first tries are refused (nothing reaches the engine); then Salt names it.
    let early = tokio::time::timeout(Duration::from_millis(500), h.events.recv()).await;
    assert!(
        early.is_err(),
        "an unnamed machine reached the engine: {early:?}"
    );
    h.hub.send_now(HubCommand::Name {
        instance: "ahead".into(),
        machines: vec!["m1".into()],
    });
    let o = h.outcome("ahead", "m1", Duration::from_secs(30)).await;
    assert_eq!((o.retcode, o.output.as_str()), (Some(0), "ran\n"));
}

#[tokio::test]
async fn timeout_gives_124_and_the_process_group_is_gone() {
    let mut h = Harness::new(HubOptions::default()).await;
    h.register("t", &["m1"], None).await;
    let started = Instant::now();
    h.wrapper(
        "t",
        "m1",
        "trap '' TERM; sleep 600",
        h.port,
        &[("SP_TIMEOUT", "2")],
    );
    let o = h.outcome("t", "m1", Duration::from_secs(30)).await;
    assert_eq!(o.retcode, Some(124));
    assert!(
        o.output.ends_with("[Job exceeded timeout of 2 seconds]\n"),
        "{:?}",
        o.output
    );
    // A shell that ignores SIGTERM still goes: SIGKILL after the 5 s grace.
    assert!(
        started.elapsed() >= Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert!(group_gone(o.pid.unwrap()));
}

#[tokio::test]
async fn a_paused_wrapper_stops_heartbeating() {
    let mut h = Harness::new(HubOptions::default()).await;
    h.register("p", &["m1"], None).await;
    h.wrapper("p", "m1", "sleep 30", h.port, &[]);
    // Wait for the start and one heartbeat, then SIGSTOP the wrapper (the shell's parent).
    let mut pid = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut beats = 0;
    while beats < 1 {
        let e = tokio::time::timeout_at(deadline, h.events.recv())
            .await
            .unwrap()
            .unwrap();
        match e.kind {
            HubEventKind::Started { pid: p, .. } => pid = Some(p),
            HubEventKind::Heartbeat => beats += 1,
            _ => {}
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.unwrap())).unwrap();
    let ppid: i32 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let wrapper = nix::unistd::Pid::from_raw(ppid);
    nix::sys::signal::kill(wrapper, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // Twice the heartbeat interval with no heartbeat (the engine turns this into 253).
    let quiet = tokio::time::timeout(Duration::from_secs(11), async {
        loop {
            let e = h.events.recv().await.unwrap();
            if e.kind == HubEventKind::Heartbeat {
                return;
            }
        }
    })
    .await;
    nix::sys::signal::kill(wrapper, nix::sys::signal::Signal::SIGKILL).unwrap();
    assert!(quiet.is_err(), "a stopped wrapper kept heartbeating");
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid.unwrap() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[tokio::test]
async fn runs_as_nobody_with_nobodys_uid_gid_and_groups() {
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let groups =
        nix::unistd::getgrouplist(&std::ffi::CString::new("nobody").unwrap(), nobody.gid).unwrap();
    let mut want_groups: Vec<u32> = groups.iter().map(|g| g.as_raw()).collect();
    want_groups.sort();
    want_groups.dedup();
    let mut h = Harness::new(HubOptions::default()).await;
    h.register("u", &["m1"], None).await;
    h.wrapper(
        "u",
        "m1",
        "id -u; id -g; id -G; echo $USER $HOME",
        h.port,
        &[("SP_USER", "nobody"), ("SP_CWD", "/")],
    );
    let o = h.outcome("u", "m1", Duration::from_secs(20)).await;
    let lines: Vec<&str> = o.output.lines().collect();
    assert_eq!(lines[0], nobody.uid.to_string());
    assert_eq!(lines[1], nobody.gid.to_string());
    let mut got: Vec<u32> = lines[2]
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, want_groups);
    assert_eq!(lines[3], format!("nobody {}", nobody.dir.display()));
}

#[tokio::test]
async fn a_second_instance_reports_254_while_the_first_holds_the_lock() {
    let mut h = Harness::new(HubOptions::default()).await;
    h.register("a", &["m1"], None).await;
    h.register("b", &["m1"], None).await;
    let lock = h.dir.path().join("shared.lock").display().to_string();
    h.wrapper(
        "a",
        "m1",
        "echo first; sleep 3",
        h.port,
        &[("SP_LOCKFILE", &lock)],
    );
    // Wait until the first one runs.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let e = tokio::time::timeout_at(deadline, h.events.recv())
            .await
            .expect("the first wrapper never sent output")
            .unwrap();
        if e.instance == "a" && matches!(e.kind, HubEventKind::Output { .. }) {
            break;
        }
    }
    h.wrapper("b", "m1", "echo second", h.port, &[("SP_LOCKFILE", &lock)]);
    let o = h.outcome("b", "m1", Duration::from_secs(20)).await;
    assert_eq!(o.retcode, Some(254));
    assert!(
        o.output
            .starts_with("LOCKFILE ERROR: Job job already running (PID "),
        "{}",
        o.output
    );
    assert_eq!(
        h.outcome("a", "m1", Duration::from_secs(20)).await.retcode,
        Some(0)
    );
}

#[tokio::test]
async fn background_children_holding_the_pipe_do_not_hang_the_wrapper() {
    let mut h = Harness::new(HubOptions::default()).await;
    h.register("bg", &["m1"], None).await;
    let started = Instant::now();
    h.wrapper("bg", "m1", "sleep 60 & echo done", h.port, &[]);
    let o = h.outcome("bg", "m1", Duration::from_secs(20)).await;
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(o.pid.unwrap() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    assert_eq!((o.retcode, o.output.as_str()), (Some(0), "done\n"));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn bad_settings_fail_before_detaching_with_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_sp-wrapper"))
        .env_clear()
        .envs([
            ("SP_WEBSOCKET_URL", "ws://127.0.0.1:1"),
            ("SP_JOB_NAME", "j"),
            ("SP_JOB_INSTANCE", "j_1"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "Error: SP_COMMAND environment variable not set\n"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_sp-wrapper"))
        .env_clear()
        .envs([
            ("SP_WEBSOCKET_URL", "ws://127.0.0.1:1"),
            ("SP_JOB_NAME", "j"),
            ("SP_JOB_INSTANCE", "j_1"),
            ("SP_COMMAND", "true"),
            ("SP_USER", "no-such-user-anywhere"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("SP_USER=\"no-such-user-anywhere\" is invalid: no such user")
    );
}

/// The original Python wrapper's exact sequence, as a scripted client.
async fn original_client(port: u16, token: Option<&str>) -> Vec<DaemonMsg> {
    use futures_util::{SinkExt, StreamExt};
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}"))
        .await
        .unwrap();
    let h = r#""job_name": "job", "job_instance": "orig", "machine": "m1", "timestamp": "2025-12-23T10:00:00.123456+00:00""#;
    let tok = token
        .map(|t| format!(r#", "token": "{t}""#))
        .unwrap_or_default();
    let script = [
        format!(r#"{{"type": "connect", {h}{tok}}}"#),
        format!(r#"{{"type": "start", {h}, "pid": 99, "version": "0.9.31"}}"#),
        format!(r#"{{"type": "output", {h}, "stream": "stdout", "data": "hello\n", "seq": 0}}"#),
        format!(r#"{{"type": "heartbeat", {h}}}"#),
        format!(r#"{{"type": "output", {h}, "stream": "stdout", "data": "world\n", "seq": 1}}"#),
        format!(r#"{{"type": "output", {h}, "stream": "stdout", "data": "world\n", "seq": 1}}"#),
        format!(r#"{{"type": "sync_request", {h}, "last_acked_seq": 1, "next_seq": 2}}"#),
        format!(r#"{{"type": "complete", {h}, "retcode": 0, "seq": 2}}"#),
    ];
    for line in &script {
        ws.send(tokio_tungstenite::tungstenite::Message::text(line.clone()))
            .await
            .unwrap();
    }
    let mut replies = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            replies.push(DaemonMsg::decode(&t).unwrap());
        }
    }
    replies
}

#[tokio::test]
async fn the_original_protocol_is_accepted_unchanged() {
    let mut h = Harness::new(HubOptions::default()).await;
    // The job allows the original wrapper (`allow_legacy_wrappers`, a wrapper not sp-wrapper).
    h.register_as("orig", &["m1"], Some("secret"), true);
    let port = h.port;
    let client = tokio::spawn(async move { original_client(port, None).await });
    let o = h.outcome("orig", "m1", Duration::from_secs(10)).await;
    assert_eq!(
        (o.retcode, o.output.as_str(), o.pid),
        (Some(0), "hello\nworld\n", Some(99))
    );
    let replies = client.await.unwrap();
    let kinds: Vec<String> = replies
        .iter()
        .map(|r| match r {
            DaemonMsg::Ack { ack_type, seq, .. } => format!("ack {ack_type:?} {seq:?}"),
            DaemonMsg::SyncResponse { last_seq, .. } => format!("sync {last_seq}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "ack Connect None",
            "ack Start None",
            "ack Output Some(0)",
            "ack Output Some(1)",
            "ack Output Some(1)",
            "sync 1",
            "ack Complete Some(2)"
        ]
    );
}

#[tokio::test]
async fn without_legacy_wrappers_a_missing_or_wrong_token_is_refused() {
    let h = Harness::new(HubOptions::default()).await;
    h.register("orig", &["m1"], Some("secret")).await;
    for token in [None, Some("guess")] {
        let replies = original_client(h.port, token).await;
        assert!(
            matches!(&replies[..], [DaemonMsg::Error { code, .. }] if code == "BAD_TOKEN"),
            "{token:?}: {replies:?}"
        );
    }
    // Malformed and unknown messages get an error and the hub keeps serving.
    use futures_util::{SinkExt, StreamExt};
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}", h.port))
        .await
        .unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text("{not json"))
        .await
        .unwrap();
    let reply = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(
        matches!(DaemonMsg::decode(&reply).unwrap(), DaemonMsg::Error { code, .. } if code == "BAD_MESSAGE")
    );
    let unknown = WrapperMsg::decode(
        r#"{"type":"heartbeat","job_name":"j","job_instance":"nope","machine":"m"}"#,
    )
    .unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        unknown.encode(),
    ))
    .await
    .unwrap();
    let reply = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(
        matches!(DaemonMsg::decode(&reply).unwrap(), DaemonMsg::Error { code, .. } if code == "JOB_NOT_FOUND")
    );
}

#[tokio::test]
async fn wss_with_the_daemons_own_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_pem, key_pem) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_pem, key.cert.pem()).unwrap();
    std::fs::write(&key_pem, key.signing_key.serialize_pem()).unwrap();
    let tls = agents::server_tls(&cert_pem, &key_pem).unwrap();
    let mut h = Harness::new(HubOptions {
        tls: Some(tls),
        ..HubOptions::default()
    })
    .await;
    h.register("tls", &["m1"], Some("t0k")).await;
    let url = format!("wss://localhost:{}", h.port);
    let ca = cert_pem.display().to_string();
    h.wrapper(
        "tls",
        "m1",
        "echo over tls",
        h.port,
        &[
            ("SP_WEBSOCKET_URL", &url),
            ("SP_TLS_CA_FILE", &ca),
            ("SP_RUN_TOKEN", "t0k"),
        ],
    );
    let o = h.outcome("tls", "m1", Duration::from_secs(20)).await;
    assert_eq!((o.retcode, o.output.as_str()), (Some(0), "over tls\n"));
    // A plain client is not served by a TLS hub.
    assert!(
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}", h.port))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn the_lock_is_released_when_the_job_ends_even_if_the_daemon_is_away() {
    let mut h = Harness::new(HubOptions::default()).await;
    h.register("second", &["m1"], None).await;
    let lock = h.dir.path().join("job.lock").display().to_string();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The first run cannot deliver its result (nobody listens) but its job is over.
    h.wrapper("first", "m1", "true", dead, &[("SP_LOCKFILE", &lock)]);
    // Wait (by condition) until the first wrapper took the lock and let it go again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let taken = std::fs::read_to_string(&lock).is_ok_and(|pid| !pid.trim().is_empty());
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&lock);
        if taken
            && let Ok(f) = file
            && let Ok(l) = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
        {
            drop(l);
            break;
        }
        assert!(Instant::now() < deadline, "the first wrapper kept its lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.wrapper(
        "second",
        "m1",
        "echo second",
        h.port,
        &[("SP_LOCKFILE", &lock)],
    );
    let o = h.outcome("second", "m1", Duration::from_secs(20)).await;
    assert_eq!((o.retcode, o.output.as_str()), (Some(0), "second\n"));
}

/// After a daemon restart: the run is known before any connection (no `JOB_NOT_FOUND`), the
/// stream resumes at the stored seq, and output the wrapper saw acknowledged but the daemon
/// never stored is reported as a gap, not passed over in silence.
#[tokio::test]
async fn an_adopted_run_resumes_at_the_stored_seq_and_reports_a_gap() {
    use futures_util::{SinkExt, StreamExt};
    let options = HubOptions {
        adopted: vec![agents::Adopted {
            instance: "adopted_1".into(),
            job_name: "job".into(),
            token: Some("secret".into()),
            tokenless: false,
            targets: vec![("m1".into(), 3)],
        }],
        ..HubOptions::default()
    };
    let mut h = Harness::new(options).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}", h.port))
        .await
        .unwrap();
    let head = r#""job_name": "job", "job_instance": "adopted_1", "machine": "m1", "timestamp": "2025-12-23T10:00:00.123456+00:00", "protocol": 1, "token": "secret""#;
    // The wrapper had seq 0..=5 acknowledged; the database holds 0..=2.
    for line in [
        format!(r#"{{"type": "connect", {head}, "resume": 5}}"#),
        format!(r#"{{"type": "output", {head}, "stream": "stdout", "data": "after\n", "seq": 6}}"#),
        format!(r#"{{"type": "complete", {head}, "retcode": 0, "seq": 7}}"#),
    ] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(line))
            .await
            .unwrap();
    }
    let o = h.outcome("adopted_1", "m1", Duration::from_secs(10)).await;
    assert_eq!(
        (o.retcode, o.output.as_str()),
        (
            Some(0),
            "\n[saltpeter: output messages 3..=5 were lost in a daemon restart]\nafter\n"
        )
    );
    let mut acks = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            acks.push(match DaemonMsg::decode(&t).unwrap() {
                DaemonMsg::Ack { ack_type, seq, .. } => format!("ack {ack_type:?} {seq:?}"),
                other => format!("{other:?}"),
            });
        }
    }
    assert_eq!(
        acks,
        [
            "ack Connect Some(5)",
            "ack Output Some(6)",
            "ack Complete Some(7)"
        ]
    );
}
