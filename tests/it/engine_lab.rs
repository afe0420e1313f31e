//! The daemon end to end on a real Salt lab: a due job is published natively, confirmed by
//! Salt (Phase 1) and followed over the wrapper protocol (Phase 2) to one exit code per target:
//! success, a missing wrapper (127), a non-executable one (126), and a job timeout (124); and the
//! commands through the API: run now, kill (143), overlap, maintenance, a master that goes away.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::lab::lab;
use crate::support::{Daemon, write};

const WITHIN: Duration = Duration::from_secs(90);

pub(crate) fn job(name: &str, extra: &str) -> String {
    // Wrappers outliving this test give up delivering after a minute.
    format!(
        "{name}:\n  sec: '*/20'\n  min: '*'\n  hour: '*'\n  dom: '*'\n  mon: '*'\n  dow: '*'\n  targets: '*'\n  env:\n    SP_DELIVERY_TIMEOUT: 60\n{extra}"
    )
}

#[test]
fn jobs_run_through_salt_and_the_wrapper_with_honest_exit_codes() {
    let (lab, _guard) = lab();
    let dir = tempfile::tempdir().unwrap();
    let noexec = dir.path().join("not-executable");
    std::fs::write(&noexec, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&noexec, std::fs::Permissions::from_mode(0o644)).unwrap();
    let logdir = dir.path().join("log");
    let settings = lab.daemon_settings(&logdir);
    write(dir.path(), "01-settings.yaml", &settings);
    let jobs = [
        job("ok", "  command: echo \"hello from $SP_MACHINE_ID\"\n"),
        job(
            "missing",
            "  command: 'true'\n  wrapper_path: /nonexistent/sp-wrapper\n",
        ),
        job(
            "noexec",
            &format!("  command: 'true'\n  wrapper_path: {}\n", noexec.display()),
        ),
        job("slow", "  command: sleep 600\n  timeout: 3\n"),
        job(
            "legacy",
            "  command: echo \"legacy $SP_JOB_NAME\"\n  use_wrapper: false\n",
        ),
    ]
    .concat();
    write(dir.path(), "jobs.yaml", &jobs);
    let mut daemon = Daemon::start(dir.path());
    let minions = lab.minions();
    for name in ["ok", "missing", "noexec", "slow", "legacy"] {
        daemon.expect_line(&format!("Firing {name}_"), WITHIN);
    }
    for m in &minions {
        daemon.expect_line(&format!(":{m}: exit code 0 (success)"), WITHIN);
    }
    let failed = daemon.expect_line("Wrapper execution failed on", WITHIN);
    assert!(
        failed.contains("retcode=127") || failed.contains("retcode=126"),
        "{failed}"
    );
    // Every target of every job gets its code; collect until all are seen.
    let mut want: Vec<String> = Vec::new();
    for m in &minions {
        want.push(format!(":{m}: exit code 127 (wrapper not found)"));
        want.push(format!(":{m}: exit code 126 (wrapper not executable)"));
        want.push(format!(":{m}: exit code 124 (job timeout)"));
    }
    for w in &want {
        if !daemon.seen.iter().any(|l| l.contains(w)) {
            daemon.expect_line(w, WITHIN);
        }
    }
    // Legacy mode: Salt's own return is the result.
    for m in &minions {
        let legacy_ok = |l: &String| {
            l.contains("Result for legacy_") && l.contains(&format!(":{m}: exit code 0"))
        };
        let deadline = std::time::Instant::now() + WITHIN;
        while !daemon.seen.iter().any(legacy_ok) {
            assert!(
                std::time::Instant::now() < deadline,
                "no legacy result for {m}"
            );
            daemon.expect_line(&format!(":{m}: exit code 0 (success)"), WITHIN);
        }
    }
    assert!(
        daemon
            .seen
            .iter()
            .any(|l| l.contains("Waiting for Salt to return job"))
    );
    assert!(
        daemon
            .seen
            .iter()
            .any(|l| l.contains("Completed: 3/3 targets successful"))
    );
    let not_found = daemon
        .seen
        .iter()
        .find(|l| l.contains("(retcode=127)"))
        .unwrap();
    assert!(
        not_found.contains("not found") || not_found.contains("No such file"),
        "{not_found}"
    );
    // The job's text log, in the original's record formats.
    let log = std::fs::read_to_string(logdir.join("ok.log")).unwrap();
    assert!(log.contains("###### Starting ok_"), "{log}");
    assert!(log.contains(" on minion-1 at "), "{log}");
    assert!(
        log.contains("**** Exit Code 0 ******\nhello from minion-1\n"),
        "{log}"
    );
    assert!(log.contains("###### Finished ok_"), "{log}");
    let missing = std::fs::read_to_string(logdir.join("missing.log")).unwrap();
    assert!(missing.contains("**** Exit Code 127 ******"), "{missing}");
}

#[test]
fn subsets_batches_and_machines_under_maintenance() {
    let (lab, _guard) = lab();
    let dir = tempfile::tempdir().unwrap();
    let settings = lab.daemon_settings(&dir.path().join("log"))
        + "saltpeter_maintenance:\n  machines: [minion-3]\n";
    write(dir.path(), "01-settings.yaml", &settings);
    let jobs = [
        job("pick", "  command: echo picked\n  number_of_targets: 1\n"),
        job("batch", "  command: echo batched\n  batch_size: 1\n"),
    ]
    .concat();
    write(dir.path(), "jobs.yaml", &jobs);
    let mut daemon = Daemon::start(dir.path());
    daemon.expect_line("Target under maintenance: minion-3", WITHIN);
    daemon.expect_line("Starting the next batch of batch_", WITHIN);
    // Both jobs end; collect their run summaries.
    let mut summaries = Vec::new();
    while summaries.len() < 2 {
        let line = daemon.expect_line("Completed: ", WITHIN);
        summaries.push(line);
    }
    let results: Vec<&String> = daemon
        .seen
        .iter()
        .filter(|l| l.contains("Result for "))
        .collect();
    // Results per run instance (a job may have fired more than once meanwhile).
    let per_instance = |job: &str| -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for l in &results {
            if let Some(rest) = l.split("Result for ").nth(1).filter(|r| r.starts_with(job)) {
                *counts
                    .entry(rest.split(':').next().unwrap().to_string())
                    .or_insert(0) += 1;
            }
        }
        counts
    };
    let picked = per_instance("pick_");
    assert!(
        !picked.is_empty() && picked.values().all(|n| *n == 1),
        "number_of_targets: 1 runs on one target: {picked:?}"
    );
    let batched = per_instance("batch_");
    assert_eq!(
        batched.values().next(),
        Some(&2),
        "two batches of one (minion-3 is under maintenance): {batched:?}"
    );
    assert!(
        results
            .iter()
            .all(|l| !l.contains(":minion-3:") && l.contains("exit code 0")),
        "{results:?}"
    );
    job_log_with(
        &dir.path().join("log/batch.log"),
        "Target under maintenance",
    );
}

#[test]
fn a_target_without_a_key_and_a_paused_wrapper() {
    let (lab, _guard) = lab();
    let dir = tempfile::tempdir().unwrap();
    let settings = lab.daemon_settings(&dir.path().join("log"));
    write(dir.path(), "01-settings.yaml", &settings);
    // `ghost-9` has no key; `paused` stops its own wrapper (the shell's parent) after start.
    let jobs = [
        job("listed", "  command: echo listed\n").replace(
            "targets: '*'",
            "targets: [minion-1, ghost-9]\n  target_type: list",
        ),
        job("paused", "  command: kill -STOP $PPID; sleep 40\n")
            .replace("targets: '*'", "targets: minion-2"),
    ]
    .concat();
    write(dir.path(), "jobs.yaml", &jobs);
    let mut daemon = Daemon::start(dir.path());
    daemon.expect_line(":ghost-9: exit code 255 (error)", WITHIN);
    daemon.expect_line("Result for listed_", WITHIN);
    let lost = daemon.expect_line(":minion-2: exit code 253 (heartbeat lost)", WITHIN);
    assert!(lost.contains("Result for paused_"), "{lost}");
    // The stopped wrapper is not coming back: end it (only this job's: other tests run
    // wrappers of their own meanwhile).
    kill_wrappers_of("paused");
    job_log_with(
        &dir.path().join("log/paused.log"),
        "[SALTPETER ERROR: Job lost connection - no heartbeat for 15 seconds]",
    );
}

/// Waits until a job's text log holds `needle`: its writer is a thread of its own, which
/// writes a target's result after the store has it (after the daemon printed the result).
fn job_log_with(path: &std::path::Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} not in {}: {log}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls a run until `done` says so.
pub(crate) fn poll_run(
    d: &Daemon,
    instance: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WITHIN;
    loop {
        let (_, run) = d.call("GET", &format!("/api/v1/runs/{instance}"), None);
        if done(&run) {
            return run;
        }
        assert!(Instant::now() < deadline, "{what}: {run:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(crate) fn target<'a>(run: &'a Value, machine: &str) -> &'a Value {
    run["targets"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["machine"] == machine))
        .unwrap_or(&Value::Null)
}

pub(crate) fn far(name: &str, extra: &str) -> String {
    job(name, extra).replace("sec: '*/20'", "sec: 0\n  year: 2099")
}

#[test]
fn run_now_kill_overlap_maintenance_and_a_master_away_through_the_api() {
    let (lab, _guard) = lab();
    let dir = tempfile::tempdir().unwrap();
    let settings = lab.daemon_settings(&dir.path().join("log"));
    write(dir.path(), "01-settings.yaml", &settings);
    let jobs = [
        far("long", "  command: echo started; sleep 601\n"),
        far("emoji", "  command: printf 'h\u{e9}llo \u{1F600}\\n'\n"),
        far("echoer", "  command: echo back\n"),
        job("overlapper", "  command: sleep 9\n").replace("sec: '*/20'", "sec: '*/4'"),
    ]
    .concat();
    write(dir.path(), "jobs.yaml", &jobs);
    let mut d = Daemon::start(dir.path());
    d.wait_api();
    let minions = lab.minions();

    // Run now; every target confirmed; a second click is refused.
    let (code, r) = d.call("POST", "/api/v1/jobs/long/run", None);
    assert_eq!(code, 202, "{r}");
    let long = r["instance"].as_str().unwrap().to_string();
    poll_run(&d, &long, "all targets confirmed", |run| {
        minions.iter().all(|m| target(run, m)["state"] == "running")
    });
    let (code, _) = d.call("POST", "/api/v1/jobs/long/run", None);
    assert_eq!(code, 409);

    // Kill one target, then the whole run: 143 each, and the processes are gone.
    let (code, _) = d.call(
        "POST",
        &format!("/api/v1/runs/{long}/kill?machine=minion-1"),
        None,
    );
    assert_eq!(code, 200);
    let run = poll_run(&d, &long, "minion-1 killed", |run| {
        target(run, "minion-1")["exit_code"] == 143
    });
    assert_eq!(target(&run, "minion-2")["state"], "running");
    assert_eq!(
        target(&run, "minion-1")["meaning"],
        "killed by user request"
    );
    let (code, _) = d.call("POST", "/api/v1/jobs/long/kill", None);
    assert_eq!(code, 200);
    let run = poll_run(&d, &long, "the run killed", |run| run["running"] == false);
    for m in &minions {
        assert_eq!(target(&run, m)["exit_code"], 143, "{run:#}");
    }
    assert_eq!(run["success"], false);
    let gone = Instant::now() + Duration::from_secs(10);
    while std::process::Command::new("pgrep")
        .args(["-f", "sleep 601"])
        .status()
        .unwrap()
        .success()
    {
        assert!(
            Instant::now() < gone,
            "a killed job's process is still there"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its output, whole and followed (server-sent events end with the exit code).
    let (_, out) = d.call(
        "GET",
        &format!("/api/v1/runs/{long}/targets/minion-2/output"),
        None,
    );
    assert!(
        out["text"].as_str().unwrap().starts_with("started\n"),
        "{out}"
    );
    assert_eq!(out["complete"], true);
    let url = format!(
        "{}/api/v1/runs/{long}/targets/minion-2/output/stream",
        d.api()
    );
    let (code, sse) = crate::support::http("GET", &url, None, &[]);
    let sse = sse.as_str().unwrap_or_default().to_string();
    assert_eq!(code, 200);
    assert!(
        sse.contains("event: output") && sse.contains("started"),
        "{sse}"
    );
    assert!(
        sse.contains("event: end") && sse.contains("\"exit_code\":143"),
        "{sse}"
    );

    // The original UI: output positions in JavaScript string units, integer retcode.
    let mut ws = crate::api::ws_connect(d.api_port, None).unwrap();
    ws.send(tungstenite::Message::text(
        json!({"subscribe": ["emoji"]}).to_string(),
    ))
    .unwrap();
    ws.send(tungstenite::Message::text(
        json!({"run": "emoji"}).to_string(),
    ))
    .unwrap();
    let deadline = Instant::now() + WITHIN;
    let mut chunk = None;
    let mut retcode = None;
    while chunk.is_none() || retcode.is_none() {
        assert!(
            Instant::now() < deadline,
            "no output_chunk / retcode for emoji"
        );
        let m = crate::api::next_json(&mut ws);
        if m["type"] == "output_chunk" && m["machine"] == "minion-1" && m["chunk"] != "" {
            chunk = Some(m.clone());
        }
        if m["type"] == "details" {
            let rc = &m["data"]["results"]["minion-1"]["retcode"];
            if rc.is_i64() {
                retcode = rc.as_i64();
            }
        }
    }
    let chunk = chunk.unwrap();
    let text = chunk["chunk"].as_str().unwrap();
    assert_eq!(text, "h\u{e9}llo \u{1F600}\n");
    assert_eq!(chunk["position"], 0);
    assert_eq!(
        chunk["total_length"].as_u64(),
        Some(text.encode_utf16().count() as u64)
    );
    assert_eq!(retcode, Some(0));

    // Overlap: a slot due while the last run still runs is skipped and recorded.
    d.expect_line("this slot of overlapper is skipped (overlap)", WITHIN);
    let (_, j) = d.call("GET", "/api/v1/jobs/overlapper", None);
    assert_eq!(j["skipped"][0]["reason"], "overlap", "{j:#}");

    // Global maintenance: due slots are skipped, run now is refused; running jobs go on.
    let (code, _) = d.call("POST", "/api/v1/maintenance", Some("{\"on\": true}"));
    assert_eq!(code, 200);
    d.expect_line("Maintenance mode active: overlapper not started", WITHIN);
    let (code, e) = d.call("POST", "/api/v1/jobs/echoer/run", None);
    assert_eq!(code, 409, "{e}");
    let (code, _) = d.call("POST", "/api/v1/maintenance", Some("{\"on\": false}"));
    assert_eq!(code, 200);

    // The master stops right after the publish and stays away 20 s: nothing fails.
    let (code, r) = d.call("POST", "/api/v1/jobs/echoer/run", None);
    assert_eq!(code, 202, "{r}");
    let echoer = r["instance"].as_str().unwrap().to_string();
    d.expect_line(&format!("Firing {echoer}!"), WITHIN);
    // Salt accepted the publish; the returns are still to come.
    d.expect_line(
        "Waiting for Salt to confirm wrapper execution for job",
        WITHIN,
    );
    lab.ctl(&["stop-master"]);
    std::thread::sleep(Duration::from_secs(20));
    lab.ctl(&["start-master"]);
    let run = poll_run(&d, &echoer, "echoer done", |run| run["running"] == false);
    for m in &minions {
        assert_eq!(target(&run, m)["exit_code"], 0, "{run:#}");
    }
    // The CLI follows a target's output to its end.
    let out = crate::support::bin()
        .args(["output", &echoer, "minion-1", "--follow", "--api", &d.api()])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(
        (out.status.code(), stdout.as_ref()),
        (Some(0), "back\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{echoer}:minion-1 ended: exit code 0 (success)")),
        "{stderr}"
    );
    crate::salt_lab::wait_all_answer(lab);
}

#[test]
fn a_run_survives_the_daemon_being_killed_and_restarted() {
    let (lab, _guard) = lab();
    let dir = tempfile::tempdir().unwrap();
    let settings = lab.daemon_settings(&dir.path().join("log"));
    write(dir.path(), "01-settings.yaml", &settings);
    let script = "for i in 1 2 3 4 5 6 7 8 9 10; do echo line $i; sleep 1; done";
    write(
        dir.path(),
        "jobs.yaml",
        &far("steady", &format!("  command: {script}\n")),
    );
    let mut d = Daemon::start(dir.path());
    d.wait_api();
    let (code, r) = d.call("POST", "/api/v1/jobs/steady/run", None);
    assert_eq!(code, 202, "{r}");
    let instance = r["instance"].as_str().unwrap().to_string();
    let minions = lab.minions();
    poll_run(&d, &instance, "output flowing", |run| {
        minions.iter().all(|m| {
            target(run, m)["state"] == "running"
                && target(run, m)["output_bytes"].as_u64() > Some(0)
        })
    });

    // SIGKILL: nothing is flushed on the way out. The wrappers keep running and spooling.
    let mut d = d.crash_and_restart(dir.path());
    d.wait_api();
    let run = poll_run(
        &d,
        &instance,
        "the run completing after the restart",
        |run| run["running"] == false,
    );
    assert_eq!(run["success"], true, "{run:#}");
    let expected: String = (1..=10).map(|i| format!("line {i}\n")).collect();
    for m in &minions {
        assert_eq!(target(&run, m)["exit_code"], 0, "{run:#}");
        let (_, out) = d.call(
            "GET",
            &format!("/api/v1/runs/{instance}/targets/{m}/output"),
            None,
        );
        assert_eq!(out["text"].as_str(), Some(expected.as_str()), "{m}: {out}");
    }
    let seen = d.seen.join("\n");
    assert!(!seen.contains("JOB_NOT_FOUND"), "{seen}");
}

/// SIGKILLs the `sp-wrapper` processes running a job named `job` (found by their environment).
fn kill_wrappers_of(job: &str) {
    crate::support::kill_job_processes(job, |comm| comm == "sp-wrapper");
}
