//! The daemon end to end on a real Salt lab: a due job is published natively, confirmed by
//! Salt (Phase 1) and followed over the wrapper protocol (Phase 2) to one exit code per target:
//! success, a missing wrapper (127), a non-executable one (126), and a job timeout (124).

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::lab::lab;
use crate::support::{Daemon, write};

const WITHIN: Duration = Duration::from_secs(90);

fn job(name: &str, extra: &str) -> String {
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
    let settings = format!(
        "saltpeter_config:\n  salt_master_config: {}\n  default_saltpeter_server_host: 127.0.0.1\n  default_wrapper_path: {}\n  logdir: {}\n",
        lab.master_config(),
        env!("CARGO_BIN_EXE_sp-wrapper"),
        logdir.display()
    );
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
    let settings = format!(
        "saltpeter_config:\n  salt_master_config: {}\n  default_saltpeter_server_host: 127.0.0.1\n  default_wrapper_path: {}\n  logdir: {}\nsaltpeter_maintenance:\n  machines: [minion-3]\n",
        lab.master_config(),
        env!("CARGO_BIN_EXE_sp-wrapper"),
        dir.path().join("log").display()
    );
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
    let log = std::fs::read_to_string(dir.path().join("log/batch.log")).unwrap();
    assert!(log.contains("Target under maintenance"), "{log}");
}

#[test]
fn a_target_without_a_key_and_a_paused_wrapper() {
    let (lab, _guard) = lab();
    let dir = tempfile::tempdir().unwrap();
    let settings = format!(
        "saltpeter_config:\n  salt_master_config: {}\n  default_saltpeter_server_host: 127.0.0.1\n  default_wrapper_path: {}\n  logdir: {}\n",
        lab.master_config(),
        env!("CARGO_BIN_EXE_sp-wrapper"),
        dir.path().join("log").display()
    );
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
    // The stopped wrapper is not coming back: end it.
    let _ = std::process::Command::new("pkill")
        .args(["-KILL", "-f", "-r", "T", "sp-wrapper"])
        .status();
    let log = std::fs::read_to_string(dir.path().join("log/paused.log")).unwrap();
    assert!(
        log.contains("[SALTPETER ERROR: Job lost connection - no heartbeat for 15 seconds]"),
        "{log}"
    );
}
