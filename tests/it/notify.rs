//! Notifications on the lab, through the real daemon: a job failing twice then succeeding
//! tells its webhook of each failure and of the recovery (signed, with the job, slot, targets,
//! exit codes and their meanings) and, for a twin job, email of the second failure in a row
//! and the recovery, across a SIGKILL of the daemon between the runs; a webhook
//! that is down, then slow, then up gets the delivery once, and the run never waited for it.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::engine_lab::poll_run;
use crate::lab::{Lab, lab};
use crate::smtp_sink::Sink;
use crate::support::{Daemon, write};
use crate::webhook_sink::{Reply, Request, WebhookSink};

const SECRET: &str = "shared-hmac-secret";

/// The daemon's settings on the lab, with `more` lines of `saltpeter_config`.
fn settings(lab: &Lab, dir: &std::path::Path, more: &str) {
    let text = lab.daemon_settings(&dir.join("log")) + more;
    write(dir, "01-settings.yaml", &text);
}

/// A job on one minion whose command fails (exit 1) until it has run `fail` times, counting
/// its runs in `counter`.
fn flaky(
    name: &str,
    minion: &str,
    sec: &str,
    counter: &std::path::Path,
    fail: u32,
    notify: &str,
) -> String {
    format!(
        "{name}:\n  sec: '{sec}'\n  min: '*'\n  hour: '*'\n  dom: '*'\n  mon: '*'\n  dow: '*'\n  targets: {minion}\n  command: 'n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; echo run $n; [ $n -gt {fail} ] || exit 1'\n  wrapper_path: {}\n  notify: {notify}\n",
        env!("CARGO_BIN_EXE_sp-wrapper"),
        c = counter.display(),
    )
}

fn events(seen: &[Request]) -> Vec<String> {
    seen.iter()
        .map(|r| r.json()["event"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn verify_signature(r: &Request) {
    let ts: i64 = r.header("x-saltpeter-timestamp").unwrap().parse().unwrap();
    let expected = format!(
        "sha256={}",
        saltpeter::notify::webhook::signature(SECRET, ts, &r.body)
    );
    assert_eq!(r.header("x-saltpeter-signature"), Some(expected.as_str()));
}

#[test]
fn two_failures_and_a_recovery_are_told_once_each_across_a_restart() {
    let (lab, _guard) = lab();
    let minion = lab.minions()[0].clone();
    let sink = WebhookSink::start([]);
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let counter = work.path().join("runs");
    // A second job, the same, tells email only of its second failure in a row and the end.
    let mail = Sink::on(lab, &[]);
    settings(
        lab,
        dir.path(),
        &format!(
            "  notify_channels:\n    hook: {{webhook: '{}', secret: '{SECRET}', timeout: 5}}\n    mail: {{smtp: 'smtp://127.0.0.1:{}', from: 'saltpeter@example.com', to: ['ops@example.com']}}\n",
            sink.url, mail.port
        ),
    );
    let jobs = [
        flaky(
            "flaky",
            &minion,
            "*/20",
            &counter,
            2,
            "{when: [failure, recovery], to: [hook]}",
        ),
        flaky(
            "flaky_mail",
            &minion,
            "*/20",
            &work.path().join("mail-runs"),
            2,
            "{when: [{consecutive_failures: 2}, recovery], to: [mail]}",
        ),
    ];
    write(dir.path(), "jobs.yaml", &jobs.concat());
    let mut d = Daemon::start(dir.path());
    d.wait_api();
    let first = sink.wait("the first failure", Duration::from_secs(60), |s| {
        s.len() == 1
    });
    // Killed between the first failure and the second run: the streak is in the store.
    let d = d.crash_and_restart(dir.path());
    let seen = sink.wait(
        "two failures and a recovery",
        Duration::from_secs(90),
        |s| s.len() >= 3,
    );
    // Nothing more comes: the next successes are quiet, and nothing was sent twice.
    std::thread::sleep(Duration::from_secs(3));
    let seen_after = sink.requests();
    assert_eq!(seen_after.len(), 3, "{:#?}", events(&seen_after));
    assert_eq!(events(&seen), ["failure", "failure", "recovery"]);
    assert_eq!(
        first[0].body, seen[0].body,
        "the first is the one sent before the kill"
    );
    let ids: std::collections::HashSet<_> = seen
        .iter()
        .map(|r| r.header("x-saltpeter-delivery").unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3, "three deliveries, none repeated");
    for (i, r) in seen.iter().enumerate() {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/hook"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        verify_signature(r);
        let body = r.json();
        assert_eq!(body["version"], 1);
        assert_eq!(body["job"], "flaky");
        assert!(
            body["slot"]
                .as_str()
                .is_some_and(|s| s.parse::<jiff::Timestamp>().is_ok()),
            "{body:#}"
        );
        assert!(body["instance"].as_str().unwrap().starts_with("flaky_"));
        assert_eq!(body["total"], 1);
        let target = &body["targets"][0];
        assert_eq!(target["machine"], minion.as_str());
        if i < 2 {
            assert_eq!(target["code"], 1, "{body:#}");
            assert_eq!(target["meaning"], "the command's exit status");
            assert_eq!(body["consecutive_failures"], i as u64 + 1);
            assert_eq!(body["summary"], "failed on 1 of 1 targets");
        } else {
            assert_eq!(target["code"], 0);
            assert_eq!(target["meaning"], "success");
            assert_eq!(body["consecutive_failures"], 0);
        }
    }
    // The API lists them, delivered, newest first; /metrics counts what this process sent.
    let (status, page) = d.call("GET", "/api/v1/jobs/flaky/deliveries", None);
    assert_eq!(status, 200, "{page}");
    let rows = page["deliveries"].as_array().unwrap();
    let states: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["event"].as_str().unwrap(), r["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("recovery", "delivered"),
            ("failure", "delivered"),
            ("failure", "delivered")
        ]
    );
    // Email: one message for the second failure in a row, one for the recovery.
    let deadline = Instant::now() + Duration::from_secs(30);
    while mail.count() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(mail.count(), 2, "two emails");
    let (first_mail, _) = mail.message(1);
    let (second_mail, _) = mail.message(2);
    assert_eq!(first_mail["to"], serde_json::json!(["ops@example.com"]));
    assert_eq!(
        first_mail["subject"],
        "[saltpeter] flaky_mail: failed on 1 of 1 targets"
    );
    let text = first_mail["body"].as_str().unwrap();
    for needed in [
        "Job:      flaky_mail",
        "Failures in a row: 2",
        "Slot:",
        "the command's exit status",
    ] {
        assert!(text.contains(needed), "{needed:?} in {text}");
    }
    assert!(text.contains(&format!("{minion}  1 (")), "{text}");
    assert!(
        second_mail["subject"]
            .as_str()
            .unwrap()
            .contains("recovered"),
        "{second_mail:#}"
    );
    let (_, job) = d.call("GET", "/api/v1/jobs/flaky", None);
    assert_eq!(
        job["notify"]["to"][0],
        serde_json::json!({"name": "hook", "kind": "webhook"})
    );
    assert!(
        !job.to_string().contains(SECRET),
        "no secret in the API: {job}"
    );
    let metrics = crate::support::http("GET", &format!("{}/metrics", d.api()), None, &[]).1;
    let text = metrics.as_str().unwrap_or_default().to_string();
    assert!(
        text.contains("saltpeter_notifications_total{channel=\"hook\",outcome=\"delivered\"} 2"),
        "{text}"
    );
}

#[test]
fn a_webhook_down_then_slow_then_up_gets_the_delivery_once_and_the_run_never_waits() {
    let (lab, _guard) = lab();
    let minion = lab.minions()[0].clone();
    // Down (503), then slower than its 2 s timeout, then up.
    let sink = WebhookSink::start([Reply::Status(503), Reply::Hang(Duration::from_secs(4))]);
    let dir = tempfile::tempdir().unwrap();
    settings(
        lab,
        dir.path(),
        &format!(
            "  notify_channels:\n    hook: {{webhook: '{}', timeout: 2}}\n  notify: {{when: [failure], to: [hook]}}\n",
            sink.url
        ),
    );
    // Started by hand; it always fails. The default policy applies.
    let job = by_hand("failing", &format!("[{minion}]"), "exit 1", "");
    write(dir.path(), "jobs.yaml", &job);
    let mut d = Daemon::start(dir.path());
    d.wait_api();
    let (status, started) = d.call("POST", "/api/v1/jobs/failing/run", Some("{}"));
    assert_eq!(status, 202, "{started}");
    let instance = started["instance"].as_str().unwrap().to_string();
    let run = poll_run(&d, &instance, "the run's end", |r| r["running"] == false);
    let ended = Instant::now();
    assert_eq!(run["success"], false, "{run:#}");
    // The run ended while its notification was still failing: it never waited for it.
    let first = sink.wait("the first attempt", Duration::from_secs(10), |s| {
        !s.is_empty()
    });
    assert!(first.len() < 3, "the run ended before the delivery landed");
    let seen = sink.wait("three attempts", Duration::from_secs(90), |s| s.len() >= 3);
    std::thread::sleep(Duration::from_secs(2));
    let seen = if sink.requests().len() > seen.len() {
        sink.requests()
    } else {
        seen
    };
    assert_eq!(seen.len(), 3, "exactly one landing, no attempt after it");
    assert!(seen[2].at > ended);
    let id = seen[0].header("x-saltpeter-delivery").unwrap();
    for r in &seen {
        assert_eq!(
            r.header("x-saltpeter-delivery"),
            Some(id),
            "one delivery, tried again"
        );
        assert_eq!(r.body, seen[0].body, "the same body every time");
        assert!(
            r.header("x-saltpeter-signature").is_none(),
            "no secret, no signature"
        );
    }
    // Backoff: 10 s after the 503, 30 s after the timeout.
    let gap1 = seen[1].at - seen[0].at;
    let gap2 = seen[2].at - seen[1].at;
    assert!(
        gap1 >= Duration::from_secs(9) && gap1 < Duration::from_secs(20),
        "{gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_secs(29) && gap2 < Duration::from_secs(45),
        "{gap2:?}"
    );
    let (_, page) = d.call("GET", "/api/v1/deliveries?job=failing", None);
    let row: &Value = &page["deliveries"][0];
    assert_eq!(row["state"], "delivered", "{page:#}");
    assert_eq!(row["attempts"], 3);
    assert!(
        row["last_error"].as_str().unwrap().contains("timed out"),
        "{row}"
    );
    d.expect_line("notification delivered", Duration::from_secs(5));
}

/// A job started by hand only (its schedule is 1 January 2099).
fn by_hand(name: &str, targets: &str, command: &str, extra: &str) -> String {
    format!(
        "{name}:\n  sec: 0\n  min: 0\n  hour: 0\n  dom: 1\n  mon: 1\n  dow: '*'\n  year: 2099\n  targets: {targets}\n  target_type: list\n  command: '{command}'\n  wrapper_path: {}\n{extra}",
        env!("CARGO_BIN_EXE_sp-wrapper")
    )
}

fn runs_of(d: &Daemon, job: &str) -> Vec<Value> {
    let (_, page) = d.call("GET", &format!("/api/v1/jobs/{job}/runs"), None);
    page["runs"].as_array().cloned().unwrap_or_default()
}

#[test]
fn failed_targets_are_tried_again_as_attempts_of_one_slot_told_after_the_last() {
    let (lab, _guard) = lab();
    let minions = lab.minions();
    let (m0, m1) = (minions[0].clone(), minions[1].clone());
    let sink = WebhookSink::start([]);
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    settings(
        lab,
        dir.path(),
        &format!(
            "  notify_channels:\n    hook: {{webhook: '{}'}}\n  notify: {{when: [failure, recovery], to: [hook]}}\n",
            sink.url
        ),
    );
    let counter = work.path().join("once");
    let retry = "  retries: 1\n  retry_delay: 2\n";
    let jobs = [
        // Fails its first time only.
        by_hand(
            "once",
            &format!("[{m0}]"),
            &format!(
                "n=$(cat {c} 2>/dev/null || echo 0); echo $((n+1)) > {c}; [ $n -ge 1 ]",
                c = counter.display()
            ),
            retry,
        ),
        // Fails on one target, every time.
        by_hand(
            "twice",
            &format!("[{m0}, {m1}]"),
            &format!("test \"$SP_MACHINE_ID\" != {m1}"),
            retry,
        ),
    ];
    write(dir.path(), "jobs.yaml", &jobs.concat());
    let mut d = Daemon::start(dir.path());
    d.wait_api();
    for job in ["once", "twice"] {
        let (status, body) = d.call("POST", &format!("/api/v1/jobs/{job}/run"), Some("{}"));
        assert_eq!(status, 202, "{body}");
    }
    // Each job: two runs of one slot, the second trying again what failed in the first.
    let deadline = Instant::now() + Duration::from_secs(90);
    let done = |runs: &[Value]| runs.len() == 2 && runs.iter().all(|r| r["running"] == false);
    let (once, twice) = loop {
        let (once, twice) = (runs_of(&d, "once"), runs_of(&d, "twice"));
        if done(&once) && done(&twice) {
            break (once, twice);
        }
        assert!(Instant::now() < deadline, "{once:#?}\n{twice:#?}");
        std::thread::sleep(Duration::from_millis(300));
    };
    // Newest first.
    let (first, second) = (&once[1], &once[0]);
    assert_eq!(
        (first["success"].clone(), first["attempt"].clone()),
        (Value::Bool(false), 1.into())
    );
    assert_eq!(second["success"], true, "{second:#}");
    assert_eq!(second["attempt"], 2);
    assert_eq!(second["trigger"], "retry");
    assert_eq!(second["first_instance"], first["instance"]);
    assert_eq!(
        second["instance"],
        format!("{}_retry2", first["instance"].as_str().unwrap())
    );
    assert!(first["retry_at"].is_null(), "the plan is carried out");
    // The slot's ledger row follows its last attempt: the slot ended 0.
    let (_, slots) = d.call("GET", "/api/v1/jobs/once/slots", None);
    assert_eq!(slots["slots"].as_array().unwrap().len(), 1, "{slots:#}");
    assert_eq!(slots["slots"][0]["instance"], second["instance"]);
    assert_eq!(slots["slots"][0]["success"], true);
    // The retry tried only what failed.
    let (_, detail) = d.call(
        "GET",
        &format!("/api/v1/runs/{}", twice[0]["instance"].as_str().unwrap()),
        None,
    );
    let targets: Vec<&str> = detail["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["machine"].as_str().unwrap())
        .collect();
    assert_eq!(targets, [m1.as_str()]);
    // One notification, for `twice`, after its last attempt; none for `once`, which was
    // never told of a failure.
    let seen = sink.wait("twice's failure", Duration::from_secs(30), |s| {
        !s.is_empty()
    });
    std::thread::sleep(Duration::from_secs(3));
    let seen_all = sink.requests();
    assert_eq!(
        seen_all.len(),
        1,
        "{:#?}",
        seen_all.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    let body = seen[0].json();
    assert_eq!(body["job"], "twice");
    assert_eq!(body["event"], "failure");
    assert_eq!(body["attempts"], 2);
    assert_eq!(body["instance"], twice[0]["instance"]);
    assert_eq!(
        (body["succeeded"].clone(), body["total"].clone()),
        (1.into(), 2.into())
    );
    assert_eq!(body["targets"][0]["machine"], m1.as_str());
    assert_eq!(body["targets"][0]["code"], 1);
    assert_eq!(body["targets"][1]["machine"], m0.as_str());
    assert_eq!(body["targets"][1]["code"], 0);
}
