//! The native Salt client against a real master and minions (the lab): publish, returns from
//! the event bus, Salt's error texts, byte-exact commands, a stale key, a master restart, the
//! job cache, and a down minion.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use rmpv::Value;
use saltpeter::salt::bus::{self, BusMessage};
use saltpeter::salt::gather::MinionState;
use saltpeter::salt::job::{self, Progress};
use saltpeter::salt::{Publish, SaltClient, SaltSettings, Tgt, jobcache, wire};
use tokio::sync::mpsc;

use crate::lab::{Lab, lab};
use crate::support::bin;

fn salt(lab: &Lab, args: &[&str]) -> (i32, Vec<serde_json::Value>, String) {
    let out = bin()
        .args(["salt", "--salt-config", lab.master_config(), "--json"])
        .args(args)
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (
        out.status.code().unwrap_or(-1),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn returns(lines: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    lines.iter().filter(|l| l.get("minion").is_some()).collect()
}

/// Waits until every lab minion answers test.ping again (after a restart).
pub fn wait_all_answer(lab: &Lab) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (code, lines, _) = salt(lab, &["--timeout", "3", "*", "test.ping"]);
        if code == 0 && returns(&lines).len() == lab.minions().len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "minions did not come back: {lines:?}"
        );
    }
}

#[test]
fn test_ping_reaches_every_minion() {
    let (lab, _guard) = lab();
    let (code, lines, err) = salt(lab, &["*", "test.ping"]);
    assert_eq!(code, 0, "{err}");
    let mut ids: Vec<&str> = returns(&lines)
        .iter()
        .map(|r| r["minion"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, lab.minions());
    assert!(
        returns(&lines)
            .iter()
            .all(|r| r["return"] == true && r["retcode"] == 0)
    );
    let summary = &lines.last().unwrap()["summary"];
    assert_eq!(summary["succeeded"].as_array().unwrap().len(), 3);
}

#[test]
fn a_missing_file_gives_127_with_salts_error_text() {
    let (lab, _guard) = lab();
    let (code, lines, _) = salt(lab, &["minion-1", "cmd.run", "/nonexistent/sp-wrapper"]);
    assert_eq!(code, 1);
    let ret = returns(&lines)[0];
    assert_eq!(ret["retcode"], 127);
    // The lab runs minions with SHELL=/bin/sh: dash's wording, bash's where /bin/sh is bash.
    let text = ret["return"].as_str().unwrap();
    assert!(
        text.contains("/nonexistent/sp-wrapper: not found")
            || text.contains("/nonexistent/sp-wrapper: No such file or directory"),
        "{ret}"
    );
}

#[test]
fn a_down_minion_is_reported_as_not_returned() {
    let (lab, _guard) = lab();
    lab.ctl(&["stop-minion", "minion-3"]);
    let (code, lines, err) = salt(lab, &["--timeout", "2", "*", "test.ping"]);
    lab.ctl(&["start-minion", "minion-3"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(returns(&lines).len(), 2);
    let silent = lines.last().unwrap()["summary"]["did_not_return"].clone();
    assert_eq!(silent, serde_json::json!(["minion-3 (not responding)"]));
    assert!(err.contains("asking whether the job runs there"), "{err}");
    // A list target naming a minion without a key is not waited for.
    let (code, lines, _) = salt(lab, &["-C", "list", "minion-1,ghost-9", "test.ping"]);
    assert_eq!(code, 1);
    assert_eq!(
        lines.last().unwrap()["summary"]["did_not_return"],
        serde_json::json!(["ghost-9 (no accepted key)"])
    );
    wait_all_answer(lab);
}

async fn connected_bus(settings: &SaltSettings) -> mpsc::Receiver<BusMessage> {
    let (tx, mut rx) = mpsc::channel(4096);
    tokio::spawn(bus::subscribe(settings.event_source(), tx));
    job::wait_connected(&mut rx, Duration::from_secs(10))
        .await
        .unwrap();
    rx
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn a_tricky_command_and_env_arrive_byte_for_byte_via_run_all() {
    let (lab, _guard) = lab();
    block_on(tricky_command(lab));
}

async fn tricky_command(lab: &Lab) {
    let settings = SaltSettings::load(Some(lab.master_config().as_ref())).unwrap();
    let mut rx = connected_bus(&settings).await;
    let mut client = SaltClient::new(settings);
    let body =
        "line1 \\ back\\\\slash \"double\" 'single' $NOT_EXPANDED `tick`\n\ttabbed\r\nx=1; echo";
    let command = format!("cat <<'END'\n{body}\nEND\nprintf '%s' \"$TRICKY\"");
    let tricky_env = "it's \"quoted\" \\n $HOME";
    let mut p = Publish::new(Tgt::Expr("minion-2".into()), "glob", "cmd.run_all");
    p.kwargs.insert("cmd".into(), Value::from(command.as_str()));
    p.kwargs.insert(
        "env".into(),
        Value::Map(vec![(Value::from("TRICKY"), Value::from(tricky_env))]),
    );
    p.kwargs.insert("cwd".into(), Value::from("/tmp"));
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
    let MinionState::Returned(ret) = &g.minions()["minion-2"] else {
        panic!("{:?}", g.minions())
    };
    assert_eq!(ret.retcode, Some(0), "{:?}", ret.ret);
    let stdout = wire::value_text(wire::get(&ret.ret, "stdout").unwrap());
    // cmd.run_all strips the trailing newline of the whole output only.
    assert_eq!(stdout, format!("{body}\n{tricky_env}"));
}

#[test]
fn returns_missed_while_the_bus_was_down_come_from_the_job_cache() {
    let (lab, _guard) = lab();
    block_on(recovered_from_cache(lab));
}

async fn recovered_from_cache(lab: &Lab) {
    let settings = SaltSettings::load(Some(lab.master_config().as_ref())).unwrap();
    // A bus we control: it drops every event of the job, then "reconnects".
    let mut real = connected_bus(&settings).await;
    let (tx, mut rx) = mpsc::channel(4096);
    let (cachedir, hash_type) = (settings.cachedir.clone(), settings.hash_type.clone());
    let mut client = SaltClient::new(settings);
    let jid = client.next_jid();
    let watched = jid.clone();
    let relay = tokio::spawn(async move {
        while let Some(m) = real.recv().await {
            if let BusMessage::Event(e) = &m
                && e.job_ret().is_some_and(|r| r.jid == watched)
            {
                // Lost. The master fires the event before it writes its job cache: wait for
                // the cache entry, then say the bus reconnected.
                let deadline = Instant::now() + Duration::from_secs(10);
                while jobcache::returns(&cachedir, &hash_type, &watched)
                    .unwrap()
                    .is_empty()
                {
                    assert!(
                        Instant::now() < deadline,
                        "the master never wrote its job cache"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let down = BusMessage::Disconnected {
                    reason: "test cut".into(),
                    retry_in: Duration::ZERO,
                };
                tx.send(down).await.unwrap();
                let up = BusMessage::Connected(saltpeter::salt::EventSource::Tcp("test".into()));
                tx.send(up).await.unwrap();
                continue;
            }
            if tx.send(m).await.is_err() {
                return;
            }
        }
    });
    let mut p = Publish::new(Tgt::Expr("minion-1".into()), "glob", "cmd.run");
    p.args = vec![Value::from("echo from-cache")];
    p.jid = jid;
    let mut recovered = Vec::new();
    let g = job::run(
        &mut client,
        &mut rx,
        p,
        Duration::from_secs(10),
        Duration::from_secs(10),
        |pr| {
            if let Progress::Returned {
                ret,
                recovered: true,
            } = pr
            {
                recovered.push(wire::value_text(&ret.ret));
            }
        },
    )
    .await
    .unwrap();
    relay.abort();
    assert!(g.is_done());
    assert_eq!(recovered, ["from-cache"]);
}

#[test]
fn tap_survives_a_master_restart_and_the_client_recovers_the_new_key() {
    let (lab, _guard) = lab();
    let mut tap = bin()
        .args([
            "tap",
            "--salt-config",
            lab.master_config(),
            "--json",
            "--tag",
            "salt/job/*/ret/*",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = |stream: Box<dyn std::io::Read + Send>| {
        let (tx, rx) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        rx
    };
    let out = lines(Box::new(tap.stdout.take().unwrap()));
    let err = lines(Box::new(tap.stderr.take().unwrap()));
    let expect = |rx: &std_mpsc::Receiver<String>, needle: &str, within: Duration| {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!("no {needle:?} within {within:?}"),
            }
        }
    };
    expect(&err, "tap: listening on", Duration::from_secs(10));

    // One long-lived client across the restart: its socket breaks and its key goes stale.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let settings = SaltSettings::load(Some(lab.master_config().as_ref())).unwrap();
    let mut client = SaltClient::new(settings);
    client.request_timeout = Duration::from_secs(10);
    let ping = Publish::new(Tgt::Expr("minion-1".into()), "glob", "test.ping");
    let first = rt.block_on(client.publish(&ping)).unwrap();
    expect(&out, &first.jid, Duration::from_secs(10));

    lab.ctl(&["restart-master"]);
    expect(&err, "tap: reconnected", Duration::from_secs(30));
    // The first request after the restart may fail while the master's workers boot; the
    // client then rebuilds its socket and re-reads the (new) key.
    let deadline = Instant::now() + Duration::from_secs(60);
    let second = loop {
        match rt.block_on(client.publish(&ping)) {
            Ok(p) => break p,
            Err(e) => assert!(Instant::now() < deadline, "publish never recovered: {e}"),
        }
    };
    assert_ne!(first.jid, second.jid);
    wait_all_answer(lab);
    let third = rt.block_on(client.publish(&ping)).unwrap();
    expect(&out, &third.jid, Duration::from_secs(30));
    let _ = tap.kill();
    let _ = tap.wait();
}

#[test]
fn tap_with_a_jid_shows_returns_already_in_the_job_cache() {
    let (lab, _guard) = lab();
    let (code, lines, _) = salt(lab, &["*", "cmd.run", "echo cached"]);
    assert_eq!(code, 0);
    let jid = lines.last().unwrap()["summary"]["jid"]
        .as_str()
        .unwrap()
        .to_string();
    // The master fires return events before it writes its job cache: wait for the cache.
    let settings = SaltSettings::load(Some(lab.master_config().as_ref())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while jobcache::returns(&settings.cachedir, &settings.hash_type, &jid)
        .unwrap()
        .len()
        < 3
    {
        assert!(
            Instant::now() < deadline,
            "the master never wrote its job cache"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = bin()
        .args([
            "tap",
            "--salt-config",
            lab.master_config(),
            "--json",
            "--jid",
            &jid,
            "--count",
            "3",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 3);
    assert!(
        events
            .iter()
            .all(|e| e["recovered"] == true && e["data"]["return"] == "cached")
    );
}

#[test]
fn saltpeter_salt_matches_what_salts_own_cli_reports() {
    let (lab, _guard) = lab();
    let out = lab
        .salt_cli()
        .args(["*", "cmd.run", "echo same", "--out=json", "--static"])
        .output()
        .unwrap();
    let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (_, lines, _) = salt(lab, &["*", "cmd.run", "echo same"]);
    for r in returns(&lines) {
        assert_eq!(theirs[r["minion"].as_str().unwrap()], r["return"]);
    }
}

#[test]
fn a_master_with_ipc_mode_tcp_is_read_over_loopback_tcp() {
    let (lab, _guard) = lab();
    let dir = format!("/tmp/saltpeter-tcp-lab-{}", lab.env["SALT_VERSION"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/lab/lab.sh");
    let start = std::process::Command::new(script)
        .args([
            "start",
            "--ipc-mode",
            "tcp",
            "--minions",
            "1",
            "--dir",
            &dir,
            "--salt",
            &lab.env["SALT_VERSION"],
        ])
        .output()
        .unwrap();
    assert!(
        start.status.success(),
        "{}",
        String::from_utf8_lossy(&start.stderr)
    );
    let master = format!("{dir}/etc/master");
    let settings = SaltSettings::load(Some(master.as_ref())).unwrap();
    assert!(matches!(
        settings.event_source(),
        saltpeter::salt::EventSource::Tcp(_)
    ));
    let out = bin()
        .args(["salt", "--salt-config", &master, "minion-1", "test.ping"])
        .output()
        .unwrap();
    let stop = std::process::Command::new(script)
        .args(["stop", "--dir", &dir])
        .status()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("minion-1:\n    true"));
    assert!(stop.success());
}
