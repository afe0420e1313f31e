//! The fault suite on the real lab: forged wrapper messages against a run in flight, the
//! original Python wrapper as a real process (its negative codes normalised), the history
//! database on a full file system, SIGKILLs of the daemon (before the publish reply, in Phase 1,
//! between a `complete` and its acknowledgement, during a batch), the master away in Phase 1,
//! and the wrappers' connections cut through a relay for 5 s and for 60 s. Each test has a
//! deadline; none changes a result it must not.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::engine_lab::{far, poll_run, target};
use crate::lab::lab;
use crate::support::{Daemon, write};

/// The value of `var` in the environment of a running `sp-wrapper` of `job`.
fn wrapper_env(job: &str, var: &str) -> Option<String> {
    let prefix = format!("{var}=");
    crate::support::job_processes(job)
        .into_iter()
        .flat_map(|(_, _, vars)| vars)
        .find_map(|v| v.strip_prefix(&prefix).map(String::from))
}

/// Sends `messages` on a fresh connection to the machines hub and returns the replies.
fn forge(port: u16, messages: &[String]) -> Vec<Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}"))
            .await
            .unwrap();
        for m in messages {
            if ws.send(Message::text(m.clone())).await.is_err() {
                break;
            }
        }
        let mut replies = Vec::new();
        while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
            if let Message::Text(t) = m {
                replies.push(serde_json::from_str(&t).unwrap());
            }
        }
        replies
    })
}

fn header(instance: &str, machine: &str) -> String {
    format!(
        r#""job_name": "steady", "job_instance": "{instance}", "machine": "{machine}", "timestamp": "2026-11-30T10:00:00.000000+00:00""#
    )
}

fn error_code(replies: &[Value]) -> Option<&str> {
    replies
        .iter()
        .find(|r| r["type"] == "error")
        .and_then(|r| r["code"].as_str())
}

/// A config directory for a daemon on the lab with these jobs (and settings lines).
fn config_dir(lab: &crate::lab::Lab, jobs: &str, settings: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let base = lab.daemon_settings(&dir.path().join("log"));
    write(dir.path(), "01-settings.yaml", &format!("{base}{settings}"));
    write(dir.path(), "jobs.yaml", jobs);
    dir
}

/// Waits for `instance` to end successfully, each target with exit 0 and the output
/// `expected(machine)`; returns the run.
fn ends_ok(
    d: &Daemon,
    instance: &str,
    minions: &[String],
    expected: impl Fn(&str) -> String,
) -> Value {
    let run = poll_run(d, instance, "the run ending", |run| run["running"] == false);
    assert_eq!(run["success"], true, "{run:#}");
    for m in minions {
        assert_eq!(target(&run, m)["exit_code"], 0, "{run:#}");
        let path = format!("/api/v1/runs/{instance}/targets/{m}/output");
        let (_, out) = d.call("GET", &path, None);
        assert_eq!(
            out["text"].as_str(),
            Some(expected(m).as_str()),
            "{m}: {out}"
        );
    }
    run
}

fn metrics(d: &Daemon) -> String {
    let text = crate::support::http("GET", &format!("{}/metrics", d.api()), None, &[]).1;
    text.as_str().unwrap_or_default().to_string()
}

/// Forged messages during a real run: no token, a wrong token, a made-up machine, a
/// `complete` for another run's target, a `resume` far past the stored output and one of
/// i64::MAX. Each is refused, no result changes, and the hub keeps serving the real wrappers.
#[test]
fn forged_messages_change_nothing_and_the_hub_keeps_serving() {
    let (lab, _guard) = lab();
    let script = "for i in 1 2 3 4 5 6 7 8; do echo line $i; sleep 1; done";
    let jobs = [
        far("steady", &format!("  command: {script}\n")),
        far("other", "  command: sleep 8\n"),
    ]
    .concat();
    let dir = config_dir(lab, &jobs, "");
    let mut d = Daemon::start(dir.path());
    d.wait_api();
    let minions = lab.minions();
    let (_, r) = d.call("POST", "/api/v1/jobs/steady/run", None);
    let steady = r["instance"].as_str().unwrap().to_string();
    let (_, r) = d.call("POST", "/api/v1/jobs/other/run", None);
    let other = r["instance"].as_str().unwrap().to_string();
    poll_run(&d, &steady, "output flowing", |run| {
        minions
            .iter()
            .all(|m| target(run, m)["output_bytes"].as_u64() > Some(0))
    });
    let token = wrapper_env("steady", "SP_RUN_TOKEN").expect("a wrapper of the run");
    let port = d.hub_port;
    let m1 = &minions[0];

    let h = header(&steady, m1);
    let no_token = forge(port, &[format!(r#"{{"type": "connect", {h}}}"#)]);
    assert_eq!(error_code(&no_token), Some("BAD_TOKEN"), "{no_token:?}");
    let msg = no_token[0]["message"].as_str().unwrap();
    assert!(msg.contains("allow_legacy_wrappers"), "{msg}");
    let wrong = forge(
        port,
        &[format!(
            r#"{{"type": "complete", {h}, "retcode": 99, "token": "guess"}}"#
        )],
    );
    assert_eq!(error_code(&wrong), Some("BAD_TOKEN"), "{wrong:?}");
    let made_up = header(&steady, "made-up");
    let made_up = forge(
        port,
        &[format!(
            r#"{{"type": "complete", {made_up}, "retcode": 99, "token": "{token}"}}"#
        )],
    );
    assert_eq!(error_code(&made_up), Some("NOT_A_TARGET"), "{made_up:?}");
    // This run's token for another run's target.
    let theirs = header(&other, m1);
    let cross = forge(
        port,
        &[format!(
            r#"{{"type": "complete", {theirs}, "retcode": 99, "token": "{token}"}}"#
        )],
    );
    assert_eq!(error_code(&cross), Some("BAD_TOKEN"), "{cross:?}");
    for resume in [1_000_000, i64::MAX] {
        let lie = forge(
            port,
            &[format!(
                r#"{{"type": "connect", {h}, "token": "{token}", "protocol": 1, "resume": {resume}}}"#
            )],
        );
        assert_eq!(error_code(&lie), Some("BAD_MESSAGE"), "{resume}: {lie:?}");
    }

    // The real wrappers were not disturbed: every result and byte is theirs.
    let expected: String = (1..=8).map(|i| format!("line {i}\n")).collect();
    ends_ok(&d, &steady, &minions, |_| expected.clone());
    ends_ok(&d, &other, &minions, |_| String::new());
    assert!(
        !d.seen.iter().any(|l| l.contains("made-up")),
        "a made-up machine reached the run"
    );
}

/// The original Python wrapper (saltpeter 0.9.30, installed by the lab script) as a real
/// process: success, failure, and its -15 after a kill or a timeout recorded as 143 and 124.
#[test]
fn the_original_python_wrapper_gets_the_contracts_exit_codes() {
    let (lab, _guard) = lab();
    let original = &lab.env["ORIGINAL_WRAPPER"];
    // Three lab minions share one host, and the original's lock file is per job only.
    let wrapper = format!("  wrapper_path: {original}\n  concurrency: allow\n");
    // The original wrapper's lock would refuse a copy left over from an interrupted run.
    for job in ["orig-killed", "orig-slow"] {
        kill_jobs_of(job);
    }
    let jobs = [
        far("orig-ok", &format!("  command: echo fine\n{wrapper}")),
        far(
            "orig-fails",
            &format!("  command: echo bad; exit 3\n{wrapper}"),
        ),
        far("orig-killed", &format!("  command: sleep 120\n{wrapper}")),
        far(
            "orig-slow",
            &format!("  command: sleep 120\n  timeout: 3\n{wrapper}"),
        ),
    ]
    .concat();
    let dir = config_dir(lab, &jobs, "  allow_legacy_wrappers: true\n");
    let mut d = Daemon::start(dir.path());
    d.wait_api();
    let minions = lab.minions();
    let mut instances = Vec::new();
    for job in ["orig-ok", "orig-fails", "orig-killed", "orig-slow"] {
        let (code, r) = d.call("POST", &format!("/api/v1/jobs/{job}/run"), None);
        assert_eq!(code, 202, "{job}: {r}");
        instances.push(r["instance"].as_str().unwrap().to_string());
    }
    let [ok, fails, killed, slow] = &instances[..] else {
        unreachable!()
    };
    poll_run(&d, killed, "the original wrapper running", |run| {
        minions.iter().all(|m| target(run, m)["state"] == "running")
    });
    let (code, _) = d.call("POST", "/api/v1/jobs/orig-killed/kill", None);
    assert_eq!(code, 200);
    let expect = [(ok, 0), (fails, 3), (killed, 143), (slow, 124)];
    for (instance, code) in expect {
        let run = poll_run(&d, instance, "the run ending", |run| {
            run["running"] == false
        });
        for m in &minions {
            let t = target(&run, m);
            assert_eq!(t["exit_code"], code, "{instance}:{m}: {run:#}");
            if code == 143 || code == 124 {
                // The raw value is kept in the note.
                let note = t["note"].as_str().unwrap_or_default();
                assert!(
                    note.contains("reported exit code -15"),
                    "{instance}:{m}: {note}"
                );
            }
        }
    }
    let (_, out) = d.call(
        "GET",
        &format!("/api/v1/runs/{ok}/targets/{}/output", minions[0]),
        None,
    );
    assert_eq!(out["text"], "fine\n");
    // 0.9.30 stops only the shell at a timeout: its `sleep` would outlive the test.
    for job in ["orig-killed", "orig-slow"] {
        kill_jobs_of(job);
    }
}

/// SIGKILLs every process started for `job` (found by its environment): wrappers of any kind
/// and their commands.
fn kill_jobs_of(job: &str) {
    crate::support::kill_job_processes(job, |_| true);
}

/// Mounts a tmpfs of `size` at `dir` (the test script runs as root); unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs (needs root)");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the file system holding `dir` (leaving no free block) with one file.
fn fill(dir: &Path) -> std::path::PathBuf {
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 64 * 1024];
    while std::io::Write::write_all(&mut f, &block).is_ok() {}
    let small = vec![0u8; 512];
    while std::io::Write::write_all(&mut f, &small).is_ok() {}
    let _ = f.sync_all();
    filler
}

/// The database on a file system that fills up during a run: no result is acknowledged while
/// it cannot be stored (the wrappers keep theirs), /metrics says so, and once there is room
/// again every result and byte lands, once.
#[test]
fn a_full_disk_loses_no_acknowledged_result_and_recovers_by_itself() {
    let (lab, _guard) = lab();
    let script = "for i in $(seq 1 40); do echo line $i of a job whose output must survive a full disk; sleep 0.2; done";
    let dir = config_dir(lab, &far("chatty", &format!("  command: {script}\n")), "");
    let mount = tempfile::tempdir().unwrap();
    let _tmpfs = Tmpfs::mount(mount.path(), "4m");
    let state = tempfile::tempdir_in(mount.path()).unwrap();
    let state_dir = state.path().to_path_buf();
    let mut d = Daemon::start_with(dir.path(), "", state);
    d.wait_api();
    let minions = lab.minions();
    let (_, r) = d.call("POST", "/api/v1/jobs/chatty/run", None);
    let instance = r["instance"].as_str().unwrap().to_string();
    poll_run(&d, &instance, "output flowing", |run| {
        minions
            .iter()
            .all(|m| target(run, m)["output_bytes"].as_u64() > Some(0))
    });
    // The disk fills while the job prints and ends.
    let filler = fill(&state_dir);
    let failing = Instant::now() + Duration::from_secs(60);
    loop {
        let text = metrics(&d);
        if text.contains("saltpeter_database_failing 1") {
            break;
        }
        assert!(
            Instant::now() < failing,
            "the store never reported the full disk: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Long enough for every job to finish; nothing may be stored meanwhile as done.
    std::thread::sleep(Duration::from_secs(10));
    let (_, run) = d.call("GET", &format!("/api/v1/runs/{instance}"), None);
    assert_eq!(
        run["running"], true,
        "a result was shown that is not stored: {run:#}"
    );
    // Room again: the daemon recovers by itself.
    std::fs::remove_file(&filler).unwrap();
    let expected: String = (1..=40)
        .map(|i| format!("line {i} of a job whose output must survive a full disk\n"))
        .collect();
    ends_ok(&d, &instance, &minions, |_| expected.clone());
    let text = metrics(&d);
    assert!(text.contains("saltpeter_database_failing 0"), "{text}");
    drop(d);
}

/// SIGKILL of the daemon during the second of three batches: after the restart the second
/// batch's target is taken over and the third batch follows; every target ends once, with its
/// output.
#[test]
fn a_crash_during_the_second_of_three_batches_loses_no_batch() {
    let (lab, _guard) = lab();
    let script = "echo start on $SP_MACHINE_ID; sleep 4; echo done";
    let jobs = far("thirds", &format!("  command: {script}\n  batch_size: 1\n"));
    let dir = config_dir(lab, &jobs, "");
    let mut d = Daemon::start(dir.path());
    d.wait_api();
    let minions = lab.minions();
    let (_, r) = d.call("POST", "/api/v1/jobs/thirds/run", None);
    let instance = r["instance"].as_str().unwrap().to_string();
    // The second batch runs: one target done, one running, one not yet published.
    poll_run(&d, &instance, "the second batch running", |run| {
        let states: Vec<&Value> = minions.iter().map(|m| &target(run, m)["state"]).collect();
        states.iter().filter(|s| **s == "done").count() == 1
            && states.iter().filter(|s| **s == "running").count() == 1
    });
    let mut d = d.crash_and_restart(dir.path());
    d.wait_api();
    let run = ends_ok(&d, &instance, &minions, |m| format!("start on {m}\ndone\n"));
    assert_eq!(run["total"], 3, "{run:#}");
    // The restarted daemon itself published the third batch.
    d.expect_line(
        &format!("Starting the next batch of {instance}"),
        Duration::from_secs(5),
    );
}

/// SIGKILL of the daemon before the publish reply (the master is away, the launch waits for
/// it): the restarted daemon sends the launch again under the jid it stored, and the run ends
/// once on every target.
#[test]
fn a_crash_before_the_publish_reply_relaunches_under_the_same_jid() {
    let (lab, _guard) = lab();
    let jobs = far("early", "  command: echo ran on $SP_MACHINE_ID\n");
    let dir = config_dir(lab, &jobs, "");
    let mut d = Daemon::start(dir.path());
    d.wait_api();
    let minions = lab.minions();
    lab.ctl(&["stop-master"]);
    let (code, r) = d.call("POST", "/api/v1/jobs/early/run", None);
    assert_eq!(code, 202, "{r}");
    let instance = r["instance"].as_str().unwrap().to_string();
    // The run is stored (with its launch's jid) while the publish waits for the master.
    poll_run(&d, &instance, "the run stored", |run| {
        run["running"] == true
    });
    d.signal(nix::sys::signal::Signal::SIGKILL);
    // The minions reconnect to the restarted master before the relaunch: a publish they
    // cannot hear yet would be lost (then the run would rightly end 255).
    lab.ctl(&["start-master"]);
    crate::salt_lab::wait_all_answer(lab);
    let mut d = d.crash_and_restart(dir.path());
    d.wait_api();
    ends_ok(&d, &instance, &minions, |m| format!("ran on {m}\n"));
    crate::salt_lab::wait_all_answer(lab);
}

/// Polls a run until `done` says so, failing after `within`.
fn poll_within(
    d: &Daemon,
    instance: &str,
    what: &str,
    within: Duration,
    mut done: impl FnMut(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (_, run) = d.call("GET", &format!("/api/v1/runs/{instance}"), None);
        if done(&run) {
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {within:?}: {run:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The run's jid is stored and every minion is a target still in Phase 1.
fn published_unconfirmed(run: &Value, minions: &[String]) -> bool {
    !run["jid"].is_null()
        && minions
            .iter()
            .all(|m| target(run, m)["state"] == "expected")
}

/// A wrapper named `sp-wrapper` (so the daemon takes it for sp-wrapper) that sleeps `secs`
/// before it becomes this build's wrapper: Salt returns only after the sleep, which holds the
/// run's targets in Phase 1 meanwhile. Returns its directory (keep it) and its path.
fn sleepy_wrapper(secs: u32) -> (tempfile::TempDir, String) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let shim = dir.path().join("sp-wrapper");
    let text = format!(
        "#!/bin/sh\nsleep {secs}\nexec '{}' \"$@\"\n",
        env!("CARGO_BIN_EXE_sp-wrapper")
    );
    std::fs::write(&shim, text).unwrap();
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = shim.display().to_string();
    (dir, path)
}

/// SIGKILL of the daemon while every target is in Phase 1 (published, Salt has not returned):
/// the restarted daemon takes the run over with all of them unconfirmed, and each ends 0 with
/// its output once.
#[test]
fn a_crash_in_phase_one_loses_no_target() {
    let (lab, _guard) = lab();
    let (_shim_dir, shim) = sleepy_wrapper(10);
    let jobs = far(
        "fault-phase1",
        &format!("  command: echo ran on $SP_MACHINE_ID\n  wrapper_path: {shim}\n"),
    );
    let dir = config_dir(lab, &jobs, "");
    let mut d = Daemon::start(dir.path());
    d.wait_api();
    let minions = lab.minions();
    let (code, r) = d.call("POST", "/api/v1/jobs/fault-phase1/run", None);
    assert_eq!(code, 202, "{r}");
    let instance = r["instance"].as_str().unwrap().to_string();
    poll_within(
        &d,
        &instance,
        "the targets published",
        Duration::from_secs(8),
        |run| published_unconfirmed(run, &minions),
    );
    let mut d = d.crash_and_restart(dir.path());
    // The restarted daemon found every target still waiting for Salt.
    let resumed = d.expect_line("resuming a run that was in flight", Duration::from_secs(30));
    assert!(
        resumed.contains("confirmed=0")
            && resumed.contains(&format!("unconfirmed={}", minions.len())),
        "{resumed}"
    );
    d.wait_api();
    ends_ok(&d, &instance, &minions, |m| format!("ran on {m}\n"));
}

/// SIGSTOP of the daemon once every target runs: the jobs end and their wrappers send
/// `complete`, which no one acknowledges; then SIGKILL and a restart. The wrappers deliver
/// their results again: each target ends 0 with its output once.
#[test]
fn a_crash_between_complete_and_its_acknowledgement_loses_nothing() {
    let (lab, _guard) = lab();
    let jobs = far("fault-unacked", "  command: echo out; sleep 4; echo end\n");
    let dir = config_dir(lab, &jobs, "");
    let mut d = Daemon::start(dir.path());
    d.wait_api();
    let minions = lab.minions();
    let (code, r) = d.call("POST", "/api/v1/jobs/fault-unacked/run", None);
    assert_eq!(code, 202, "{r}");
    let instance = r["instance"].as_str().unwrap().to_string();
    poll_run(&d, &instance, "every target running", |run| {
        minions.iter().all(|m| {
            target(run, m)["state"] == "running"
                && target(run, m)["output_bytes"].as_u64() > Some(0)
        })
    });
    d.signal(nix::sys::signal::Signal::SIGSTOP);
    // The jobs end meanwhile; their wrappers stay to deliver the unacknowledged results.
    std::thread::sleep(Duration::from_secs(8));
    let left = crate::support::job_processes("fault-unacked");
    let mut waiting: Vec<String> = left
        .iter()
        .filter(|(_, comm, _)| comm == "sp-wrapper")
        .filter_map(|(_, _, vars)| {
            vars.iter()
                .find_map(|v| v.strip_prefix("SP_MACHINE_ID=").map(String::from))
        })
        .collect();
    waiting.sort();
    waiting.dedup();
    assert_eq!(
        waiting, minions,
        "a wrapper per target holds its result: {left:?}"
    );
    assert!(
        left.iter().all(|(_, comm, _)| comm == "sp-wrapper"),
        "the jobs themselves have ended: {left:?}"
    );
    let mut d = d.crash_and_restart(dir.path());
    d.wait_api();
    let run = ends_ok(&d, &instance, &minions, |_| "out\nend\n".to_string());
    assert_eq!(run["succeeded"], minions.len(), "{run:#}");
}

/// The lab's master stopped; started again (and every minion answering) when dropped, also
/// when the test fails.
struct MasterAway<'a> {
    lab: &'a crate::lab::Lab,
    away: bool,
}

impl<'a> MasterAway<'a> {
    fn stop(lab: &'a crate::lab::Lab) -> MasterAway<'a> {
        lab.ctl(&["stop-master"]);
        MasterAway { lab, away: true }
    }

    fn start(&mut self) {
        if std::mem::replace(&mut self.away, false) {
            self.lab.ctl(&["start-master"]);
            crate::salt_lab::wait_all_answer(self.lab);
        }
    }
}

impl Drop for MasterAway<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.start();
            return;
        }
        if !self.away {
            return;
        }
        // Unwinding from a failure: no assertion may fail here (that would abort).
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/lab/lab.sh");
        let _ = std::process::Command::new(script)
            .args(["start-master", "--dir", &self.lab.env["LAB_DIR"]])
            .env("SALTPETER_SALT_VERSION", &self.lab.env["SALT_VERSION"])
            .status();
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let out = self
                .lab
                .salt_cli()
                .args(["--static", "--out=json", "--timeout=3", "*", "test.ping"])
                .output();
            let answering = out
                .ok()
                .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
                .and_then(|v| {
                    v.as_object()
                        .map(|o| o.values().filter(|v| **v == true).count())
                })
                .unwrap_or(0);
            if answering == self.lab.minions().len() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// The master stops while every target is in Phase 1: the wrappers start anyway and connect
/// to the daemon directly, which confirms them without Salt's return. The run ends 0 on every
/// target while the master is still away, no target meanwhile ends 255, and /metrics shows the
/// event bus down.
#[test]
fn a_master_away_in_phase_one_fails_nothing() {
    let (lab, _guard) = lab();
    let (_shim_dir, shim) = sleepy_wrapper(20);
    let jobs = far(
        "fault-masterless",
        &format!("  command: echo ran on $SP_MACHINE_ID\n  wrapper_path: {shim}\n"),
    );
    let dir = config_dir(lab, &jobs, "");
    let mut d = Daemon::start(dir.path());
    d.wait_api();
    let minions = lab.minions();
    let (code, r) = d.call("POST", "/api/v1/jobs/fault-masterless/run", None);
    assert_eq!(code, 202, "{r}");
    let instance = r["instance"].as_str().unwrap().to_string();
    poll_within(
        &d,
        &instance,
        "the targets published",
        Duration::from_secs(10),
        |run| published_unconfirmed(run, &minions),
    );
    let mut master = MasterAway::stop(lab);
    let mut bus_down_seen = false;
    let run = poll_within(
        &d,
        &instance,
        "the run ending while the master is away",
        Duration::from_secs(60),
        |run| {
            for m in &minions {
                assert_ne!(target(run, m)["exit_code"], 255, "{m}: {run:#}");
            }
            bus_down_seen |= metrics(&d).contains("saltpeter_event_bus_connected 0");
            run["running"] == false && bus_down_seen
        },
    );
    assert_eq!(run["success"], true, "{run:#}");
    // Every target was confirmed by its wrapper: Salt's returns never came.
    let n = minions.len();
    d.expect_line(
        &format!("Completed: {n}/{n} targets successful"),
        Duration::from_secs(10),
    );
    let salt = "Salt confirmed wrapper started on";
    assert!(
        !d.seen.iter().any(|l| l.contains(salt)),
        "{}",
        d.seen.join("\n")
    );
    master.start();
    ends_ok(&d, &instance, &minions, |m| format!("ran on {m}\n"));
    // The bus comes back by itself.
    let back = Instant::now() + Duration::from_secs(60);
    while !metrics(&d).contains("saltpeter_event_bus_connected 1") {
        assert!(Instant::now() < back, "the event bus did not come back");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A TCP relay in front of the machines hub that can be cut: while cut, it drops its
/// connections and refuses new ones. It counts the connections it passed on; dropping it
/// ends it.
struct Relay {
    port: u16,
    cut: tokio::sync::watch::Sender<bool>,
    to: std::sync::Arc<std::sync::atomic::AtomicU16>,
    passed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Relay {
    fn start() -> Relay {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let to = Arc::new(AtomicU16::new(0));
        let passed = Arc::new(AtomicUsize::new(0));
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let (to2, passed2) = (to.clone(), passed.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                port_tx.send(listener.local_addr().unwrap().port()).unwrap();
                let mut gone = cut_rx.clone();
                loop {
                    let mut inbound = tokio::select! {
                        a = listener.accept() => match a {
                            Ok((s, _)) => s,
                            Err(_) => continue,
                        },
                        changed = gone.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            continue;
                        }
                    };
                    if *cut_rx.borrow() {
                        drop(inbound);
                        continue;
                    }
                    let mut cut = cut_rx.clone();
                    let to = to2.load(Ordering::SeqCst);
                    passed2.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let Ok(mut outbound) =
                            tokio::net::TcpStream::connect(("127.0.0.1", to)).await
                        else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cut.wait_for(|c| *c) => {}
                        }
                    });
                }
            });
        });
        let port = port_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Relay {
            port,
            cut,
            to,
            passed,
        }
    }

    /// Relays to the machines hub on `port` from now on.
    fn aim(&self, port: u16) {
        self.to.store(port, std::sync::atomic::Ordering::SeqCst);
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }

    fn passed(&self) -> usize {
        self.passed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A job whose wrappers reach the daemon through `relay` (`SP_WEBSOCKET_URL` overridden).
fn relayed(name: &str, command: &str, relay: &Relay) -> String {
    far(name, &format!("  command: {command}\n")).replace(
        "    SP_DELIVERY_TIMEOUT: 60\n",
        &format!(
            "    SP_DELIVERY_TIMEOUT: 60\n    SP_WEBSOCKET_URL: ws://127.0.0.1:{}\n",
            relay.port
        ),
    )
}

/// `line 1\n` … `line n\n`.
fn lines(n: u32) -> String {
    (1..=n).map(|i| format!("line {i}\n")).collect()
}

/// The wrappers' connections cut for 5 s in the middle of a 25 s job: they reconnect, no
/// heartbeat deadline passes, and every target ends 0 with its output complete, in order, once.
#[test]
fn a_wrapper_cut_off_for_5_seconds_keeps_its_target() {
    let (lab, _guard) = lab();
    let relay = Relay::start();
    let script = "for i in $(seq 1 25); do echo line $i; sleep 1; done";
    let dir = config_dir(lab, &relayed("fault-cut5", script, &relay), "");
    let mut d = Daemon::start(dir.path());
    relay.aim(d.hub_port);
    d.wait_api();
    let minions = lab.minions();
    let (code, r) = d.call("POST", "/api/v1/jobs/fault-cut5/run", None);
    assert_eq!(code, 202, "{r}");
    let instance = r["instance"].as_str().unwrap().to_string();
    let eight = lines(8).len() as u64;
    poll_run(&d, &instance, "eight lines from every target", |run| {
        minions
            .iter()
            .all(|m| target(run, m)["output_bytes"].as_u64() >= Some(eight))
    });
    let url = wrapper_env("fault-cut5", "SP_WEBSOCKET_URL");
    assert_eq!(url, Some(format!("ws://127.0.0.1:{}", relay.port)));
    let before = relay.passed();
    assert!(before >= minions.len(), "{before}");
    relay.set_cut(true);
    std::thread::sleep(Duration::from_secs(5));
    let (_, run) = d.call("GET", &format!("/api/v1/runs/{instance}"), None);
    relay.set_cut(false);
    for m in &minions {
        assert_eq!(target(&run, m)["state"], "running", "{m}: {run:#}");
    }
    let expected = lines(25);
    let run = ends_ok(&d, &instance, &minions, |_| expected.clone());
    assert_eq!(run["succeeded"], minions.len(), "{run:#}");
    assert!(
        relay.passed() >= before + minions.len(),
        "every wrapper reconnected: {before}, then {} connections",
        relay.passed()
    );
}

/// The wrappers' connections cut for 60 s in an 80 s job: each target ends 253 (no heartbeat
/// for 15 s) while cut; once the relay is back the wrappers reconnect, the output from during
/// and after the cut is stored (complete, in order, once, after the 253's note), and the late
/// exit code 0 is kept as a note: the 253 stands.
#[test]
fn a_wrapper_cut_off_for_60_seconds_ends_253_and_its_late_output_is_kept() {
    let (lab, _guard) = lab();
    let relay = Relay::start();
    let script = "for i in $(seq 1 80); do echo line $i; sleep 1; done";
    let dir = config_dir(lab, &relayed("fault-cut60", script, &relay), "");
    let mut d = Daemon::start(dir.path());
    relay.aim(d.hub_port);
    d.wait_api();
    let minions = lab.minions();
    let (code, r) = d.call("POST", "/api/v1/jobs/fault-cut60/run", None);
    assert_eq!(code, 202, "{r}");
    let instance = r["instance"].as_str().unwrap().to_string();
    let eight = lines(8).len() as u64;
    poll_run(&d, &instance, "eight lines from every target", |run| {
        minions
            .iter()
            .all(|m| target(run, m)["output_bytes"].as_u64() >= Some(eight))
    });
    relay.set_cut(true);
    let cut_at = Instant::now();
    // 15 s without a heartbeat: 253 for every target, and the run is over.
    let run = poll_within(
        &d,
        &instance,
        "253 while cut",
        Duration::from_secs(30),
        |run| run["running"] == false,
    );
    assert_eq!(run["success"], false, "{run:#}");
    for m in &minions {
        assert_eq!(target(&run, m)["exit_code"], 253, "{m}: {run:#}");
    }
    std::thread::sleep(Duration::from_secs(60).saturating_sub(cut_at.elapsed()));
    relay.set_cut(false);
    let late = "after this target had ended";
    let run = poll_within(
        &d,
        &instance,
        "the late results",
        Duration::from_secs(90),
        |run| {
            minions.iter().all(|m| {
                target(run, m)["note"]
                    .as_str()
                    .is_some_and(|n| n.contains(late))
            })
        },
    );
    assert_eq!(run["success"], false, "{run:#}");
    let lost = "[SALTPETER ERROR: Job lost connection - no heartbeat for 15 seconds]";
    for m in &minions {
        let t = target(&run, m);
        assert_eq!(t["exit_code"], 253, "the 253 stands: {m}: {run:#}");
        let note = t["note"].as_str().unwrap();
        assert!(note.starts_with(lost), "{m}: {note}");
        assert!(
            note.contains("[saltpeter: the wrapper reported exit code 0 (success) at "),
            "{m}: {note}"
        );
        let path = format!("/api/v1/runs/{instance}/targets/{m}/output");
        let (_, out) = d.call("GET", &path, None);
        let text = out["text"].as_str().unwrap_or_default();
        // The 253's note where the output stopped, then the rest as it came late.
        assert_eq!(text.matches(lost).count(), 1, "{m}: {text}");
        let without: String = text
            .lines()
            .filter(|l| *l != lost)
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(without, lines(80), "{m}: {text}");
        assert!(
            !text.ends_with(&format!("{lost}\n")),
            "{m}: no output came after the cut: {text}"
        );
    }
    assert!(relay.passed() >= 2 * minions.len(), "{}", relay.passed());
}
