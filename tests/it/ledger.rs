//! The fire ledger on the lab: the daemon stopped for three minutes with jobs every 20 s under
//! each misfire policy (the ledger, the catch-up runs and `/metrics` after the restart), and a
//! second daemon started by mistake on the same database (no slot fired twice).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::engine_lab::poll_run;
use crate::lab::lab;
use crate::support::{Daemon, write};

/// A job every 20 s on one minion, with a misfire policy.
fn job(name: &str, minion: &str, sec: &str, extra: &str) -> String {
    format!(
        "{name}:\n  sec: '{sec}'\n  min: '*'\n  hour: '*'\n  dom: '*'\n  mon: '*'\n  dow: '*'\n  targets: {minion}\n  command: 'true'\n  wrapper_path: {}\n{extra}",
        env!("CARGO_BIN_EXE_sp-wrapper")
    )
}

/// A job's ledger rows, newest first.
fn slots(d: &Daemon, job: &str) -> Vec<Value> {
    let (status, body) = d.call("GET", &format!("/api/v1/jobs/{job}/slots?limit=200"), None);
    assert_eq!(status, 200, "{body}");
    body["slots"].as_array().cloned().unwrap_or_default()
}

fn secs(v: &Value) -> i64 {
    v.as_str()
        .and_then(|s| s.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_second())
        .unwrap_or_else(|| panic!("not a time: {v}"))
}

/// Polls until `ready` holds for the job's rows.
fn wait_slots(d: &Daemon, job: &str, what: &str, ready: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let rows = slots(d, job);
        if ready(&rows) {
            return rows;
        }
        assert!(Instant::now() < deadline, "{job}: {what}: {rows:#?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn fired(rows: &[Value]) -> Vec<&Value> {
    rows.iter().filter(|r| r["state"] == "fired").collect()
}

#[test]
fn three_minutes_down_are_accounted_for_under_each_misfire_policy() {
    let (lab, _guard) = lab();
    let minion = lab.minions()[0].clone();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "01-settings.yaml",
        &lab.daemon_settings(&dir.path().join("log")),
    );
    let jobs = [
        job("by_skip", &minion, "*/20", "  misfire: skip\n"),
        job("by_latest", &minion, "*/20", "  misfire: latest\n"),
        // Catch-up fires of one job run side by side.
        job(
            "by_all",
            &minion,
            "*/20",
            "  misfire: all\n  misfire_max: 10\n  concurrency: allow\n",
        ),
    ]
    .concat();
    write(dir.path(), "jobs.yaml", &jobs);
    let names = ["by_skip", "by_latest", "by_all"];
    let mut d = Daemon::start(dir.path());
    d.wait_api();
    for job in names {
        wait_slots(&d, job, "a first fired slot", |rows| {
            !fired(rows).is_empty()
        });
    }
    // Stopped between two slots with nothing in flight: a run adopted at the restart would
    // rightly make the catch-up fires of `concurrency: forbid` jobs overlaps.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, list) = d.call("GET", "/api/v1/jobs", None);
        let idle = list["jobs"].as_array().is_some_and(|jobs| {
            jobs.iter()
                .all(|j| j["running"].as_array().is_some_and(Vec::is_empty))
        });
        let phase = jiff::Timestamp::now().as_second() % 20;
        if idle && (5..15).contains(&phase) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never idle between slots: {list:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    d.signal(nix::sys::signal::Signal::SIGTERM);
    let _ = d.child.wait();
    std::thread::sleep(Duration::from_secs(180));
    let restarted = jiff::Timestamp::now().as_second();
    let state = std::mem::replace(&mut d.state, tempfile::tempdir().unwrap());
    drop(d);
    let mut d = Daemon::start_with(dir.path(), "", state);
    d.wait_api();
    let mut catch_ups = Vec::new();
    for job in names {
        let rows = wait_slots(&d, job, "the missed gap", |rows| {
            rows.iter().any(|r| r["reason"] == "daemon down")
        });
        let at = rows
            .iter()
            .position(|r| r["reason"] == "daemon down")
            .unwrap();
        let gap = &rows[at];
        assert_eq!(gap["state"], "missed", "{gap:#}");
        // The gap starts right after the last slot claimed before the stop (rows are newest
        // first: the next one is older).
        let before = rows.get(at + 1).map(|r| secs(&r["slot"]));
        assert_eq!(
            Some(secs(&gap["slot"])),
            before.map(|b| b + 20),
            "{job}: {rows:#?}"
        );
        let last = gap
            .get("last")
            .filter(|l| !l.is_null())
            .map_or(secs(&gap["slot"]), secs);
        let count = gap["count"].as_i64().unwrap();
        assert_eq!(
            (last - secs(&gap["slot"])) / 20 + 1,
            count,
            "{job}: {gap:#}"
        );
        let caught: Vec<&Value> = rows.iter().filter(|r| r["trigger"] == "catch-up").collect();
        // Nothing between the gap and the catch-up fires: every slot is in one row.
        if let Some(first) = caught.iter().map(|r| secs(&r["slot"])).min() {
            assert_eq!(first, last + 20, "{job}: {rows:#?}");
        } else {
            assert!(
                restarted - last < 25,
                "{job}: slots after the gap: {rows:#?}"
            );
        }
        for r in &caught {
            assert_eq!(r["state"], "fired", "{r:#}");
            assert!(
                restarted - secs(&r["slot"]) <= 61,
                "{job} fired outside its window: {r:#}"
            );
        }
        match job {
            "by_skip" => assert!(caught.is_empty(), "{rows:#?}"),
            "by_latest" => assert_eq!(caught.len(), 1, "{rows:#?}"),
            _ => assert!((2..=4).contains(&caught.len()), "{rows:#?}"),
        }
        // Nine slots of 20 s fall in three minutes: missed plus caught up.
        assert!(
            (8..=11).contains(&(count + caught.len() as i64)),
            "{job}: {rows:#?}"
        );
        catch_ups.extend(
            caught
                .iter()
                .map(|r| r["instance"].as_str().unwrap().to_string()),
        );
    }
    for instance in &catch_ups {
        let run = poll_run(&d, instance, "the catch-up run ending", |run| {
            run["running"] == false
        });
        assert_eq!(run["success"], true, "{run:#}");
    }
    let text = crate::support::http("GET", &format!("{}/metrics", d.api()), None, &[]).1;
    let text = text.as_str().unwrap_or_default();
    for job in names {
        let gap = slots(&d, job)
            .into_iter()
            .find(|r| r["reason"] == "daemon down")
            .unwrap();
        let line = format!(
            "saltpeter_missed_slots_total{{job=\"{job}\",reason=\"daemon down\"}} {}",
            gap["count"]
        );
        assert!(text.contains(&line), "{line} missing from\n{text}");
        assert!(
            text.contains(&format!(
                "saltpeter_seconds_since_last_fired_slot{{job=\"{job}\"}}"
            )),
            "{text}"
        );
    }
}

#[test]
fn a_second_daemon_on_the_same_database_fires_no_slot_the_first_claimed() {
    let (lab, _guard) = lab();
    let minion = lab.minions()[0].clone();
    let jobs = job("every5", &minion, "*/5", "");
    let first_dir = tempfile::tempdir().unwrap();
    write(
        first_dir.path(),
        "01-settings.yaml",
        &lab.daemon_settings(&first_dir.path().join("log")),
    );
    write(first_dir.path(), "jobs.yaml", &jobs);
    let mut first = Daemon::start(first_dir.path());
    first.wait_api();
    // The same jobs and database, its own ports: started by mistake.
    let second_dir = tempfile::tempdir().unwrap();
    write(
        second_dir.path(),
        "01-settings.yaml",
        &lab.daemon_settings(&second_dir.path().join("log")),
    );
    write(second_dir.path(), "jobs.yaml", &jobs);
    write(
        second_dir.path(),
        "02-same-database.yaml",
        &format!(
            "saltpeter_config:\n  database: {}\n",
            first.state.path().join("history.db").display()
        ),
    );
    let mut second = Daemon::start(second_dir.path());
    second.wait_api();
    // Both plan the same slots, one every 5 s: whoever claims a slot first fires it.
    std::thread::sleep(Duration::from_secs(30));
    for d in [&mut first, &mut second] {
        d.signal(nix::sys::signal::Signal::SIGTERM);
        let _ = d.child.wait();
        d.drain();
    }
    let fired_by = |d: &Daemon| -> Vec<String> {
        d.seen
            .iter()
            .filter_map(|l| l.split("Firing ").nth(1))
            .filter_map(|s| s.split('!').next())
            .map(String::from)
            .collect()
    };
    let (a, b) = (fired_by(&first), fired_by(&second));
    assert!(a.len() + b.len() >= 4, "too few fires: {a:?} {b:?}");
    for instance in &b {
        assert!(!a.contains(instance), "{instance} fired by both daemons");
    }
    let refused: Vec<&String> = first
        .seen
        .iter()
        .chain(&second.seen)
        .filter(|l| l.contains("was already claimed"))
        .collect();
    assert!(!refused.is_empty(), "no claim was refused");
    assert!(
        refused.iter().all(|l| l.contains("not fired here")),
        "{refused:?}"
    );
    // Every fire has its ledger row, claimed by the daemon that fired it, and one row per slot.
    let db = rusqlite::Connection::open_with_flags(
        first.state.path().join("history.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let rows: Vec<(i64, String, String)> = db
        .prepare("SELECT slot_ms, instance, claimed_by FROM slots WHERE job = 'every5' AND state = 'fired'")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (fires, d) in [(&a, &first), (&b, &second)] {
        let pid = format!(":{}", d.child.id());
        for i in fires {
            let row = rows.iter().find(|r| &r.1 == i);
            assert!(
                row.is_some_and(|r| r.2.ends_with(&pid)),
                "{i}: {row:?} in {rows:?}"
            );
        }
    }
}
