//! Several daemons on one PostgreSQL store, through the real binary on the lab master: each
//! slot fired exactly once whichever daemon wins it (clocks in step or 5 s apart), a run whose
//! daemon is SIGKILLed adopted by the other and ended with every target's code and all its
//! output, a daemon paused past its lease acting no more on the run it lost, and PostgreSQL
//! restarted under both. The server comes from `SALTPETER_TEST_POSTGRES` (the test script
//! starts one); each test gets a database of its own.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::engine_lab::{poll_run, target};
use crate::lab::{Lab, lab};
use crate::support::{Daemon, write};

/// The PostgreSQL server to use; `None` (the test is skipped) outside CI without one.
pub(crate) fn server() -> Option<String> {
    match std::env::var("SALTPETER_TEST_POSTGRES") {
        Ok(s) if !s.is_empty() => Some(s),
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "SALTPETER_TEST_POSTGRES must name a PostgreSQL server in CI (contrib/test.sh starts one)"
            )
        }
        _ => {
            eprintln!("SALTPETER_TEST_POSTGRES unset: skipped");
            None
        }
    }
}

/// A new empty database on `server`; its URL.
pub(crate) fn fresh_database(server: &str, name: &str) -> String {
    let mut admin = postgres::Client::connect(server, postgres::NoTls).unwrap();
    let name = format!("sp_ha_{name}_{}", std::process::id());
    // One statement each: neither may run inside a transaction block.
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    let base = server.split_once('?').map_or(server, |(b, _)| b);
    let root = base.rsplit_once('/').map_or(base, |(r, _)| r);
    format!("{root}/{name}?sslmode=disable")
}

fn sql(url: &str, query: &str) -> Vec<postgres::Row> {
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    c.query(query, &[]).unwrap()
}

/// A daemon named `name` on the lab and the shared `database`, with `jobs`.
fn daemon(
    lab: &Lab,
    name: &str,
    database: &str,
    jobs: &str,
    env: &[(&str, &str)],
) -> (Daemon, tempfile::TempDir) {
    daemon_with(lab, name, database, jobs, env, "")
}

/// [`daemon`] with more `saltpeter_config` lines (indented by two spaces).
fn daemon_with(
    lab: &Lab,
    name: &str,
    database: &str,
    jobs: &str,
    env: &[(&str, &str)],
    more: &str,
) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let settings =
        lab.daemon_settings(&dir.path().join("log")) + &format!("  daemon_name: {name}\n{more}");
    write(dir.path(), "01-settings.yaml", &settings);
    write(dir.path(), "jobs.yaml", jobs);
    let mut d = Daemon::start_shared(dir.path(), database, "", env);
    d.wait_api();
    (d, dir)
}

fn every_two_seconds(name: &str, minion: &str) -> String {
    format!(
        "{name}:\n  sec: '*/2'\n  min: '*'\n  hour: '*'\n  dom: '*'\n  mon: '*'\n  dow: '*'\n  targets: {minion}\n  command: 'true'\n  concurrency: allow\n"
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Every even second in `[from, to]` of `job` has exactly one ledger row, fired, with exactly
/// one run; returns which daemon claimed each slot.
fn every_slot_once(url: &str, job: &str, from: i64, to: i64) -> Vec<(i64, String)> {
    let first = (from / 2000 + 1) * 2000;
    let expected: Vec<i64> = (first..=to).step_by(2000).collect();
    let rows = sql(
        url,
        &format!(
            "SELECT s.slot_ms, s.state, s.claimed_by, (SELECT COUNT(*) FROM runs r WHERE r.job = s.job AND r.scheduled_ms = s.slot_ms)
             FROM slots s WHERE s.job = '{job}' AND s.slot_ms BETWEEN {first} AND {to} ORDER BY s.slot_ms"
        ),
    );
    let slots: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        slots, expected,
        "every slot has one row, none twice, none missing"
    );
    rows.iter()
        .map(|r| {
            let (slot, state, claimed_by, runs): (i64, String, String, i64) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            assert_eq!(
                (state.as_str(), runs),
                ("fired", 1),
                "slot {slot} claimed by {claimed_by}"
            );
            (
                slot,
                claimed_by.split(':').next().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn per_daemon(claims: &[(i64, String)]) -> std::collections::BTreeMap<&str, usize> {
    let mut by = std::collections::BTreeMap::new();
    for (_, daemon) in claims {
        *by.entry(daemon.as_str()).or_insert(0) += 1;
    }
    by
}

#[test]
fn two_daemons_fire_every_slot_exactly_once_for_a_minute() {
    let (lab, _guard) = lab();
    let Some(server) = server() else { return };
    let url = fresh_database(&server, "once");
    let minion = lab.minions()[0].clone();
    let jobs = every_two_seconds("every2", &minion);
    let (d1, _dir1) = daemon(lab, "d1", &url, &jobs, &[]);
    let (d2, _dir2) = daemon(lab, "d2", &url, &jobs, &[]);
    let from = now_ms();
    std::thread::sleep(Duration::from_secs(60));
    let to = now_ms() - 3_000;
    let claims = every_slot_once(&url, "every2", from, to);
    eprintln!("slots claimed per daemon: {:?}", per_daemon(&claims));
    // Both daemons are alive in the one view either API gives.
    let (_, status) = d2.call("GET", "/api/v1/status", None);
    let names: Vec<&str> = status["daemons"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["alive"] == true)
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["d1", "d2"], "{status:#}");
    // Every run ended, with its one target's code.
    let unfinished = sql(
        &url,
        &format!(
            "SELECT instance FROM runs WHERE job = 'every2' AND (ended_ms IS NULL OR success != 1) AND scheduled_ms <= {}",
            to - 10_000
        ),
    );
    assert!(
        unfinished.is_empty(),
        "{} runs not ended well",
        unfinished.len()
    );
    d1.signal(nix::sys::signal::Signal::SIGTERM);
    d2.signal(nix::sys::signal::Signal::SIGTERM);
}

#[test]
fn a_daemon_whose_clock_is_5_s_ahead_still_claims_each_slot_once() {
    let (lab, _guard) = lab();
    let Some(server) = server() else { return };
    let url = fresh_database(&server, "skew");
    let minion = lab.minions()[0].clone();
    let jobs = every_two_seconds("skewed", &minion);
    let (_d1, _dir1) = daemon(lab, "d1", &url, &jobs, &[]);
    let (_d2, _dir2) = daemon(
        lab,
        "d2",
        &url,
        &jobs,
        &[("SALTPETER_CLOCK_SKEW_MS", "5000")],
    );
    let from = now_ms();
    std::thread::sleep(Duration::from_secs(20));
    let to = now_ms() - 3_000;
    let claims = every_slot_once(&url, "skewed", from, to);
    eprintln!(
        "slots claimed per daemon (d2 5 s ahead): {:?}",
        per_daemon(&claims)
    );
    // Once d2 plans (from its own now, 5 s ahead), it reaches every slot first; the slots
    // before that are d1's.
    let d2_from = claims
        .iter()
        .find(|(_, d)| d == "d2")
        .map(|(s, _)| *s)
        .unwrap();
    assert!(d2_from <= from + 8_000, "{claims:?}");
    assert!(
        claims.iter().all(|(s, d)| *s < d2_from || d == "d2"),
        "{claims:?}"
    );
}

/// A long streaming run on two minions, launched by d1.
fn long_job(minions: &[String]) -> String {
    format!(
        "long:\n  sec: 0\n  min: 0\n  hour: 0\n  dom: 1\n  mon: 1\n  dow: '*'\n  year: 2099\n  targets: '{}'\n  target_type: list\n  command: 'for i in $(seq 1 40); do echo line $i; sleep 1; done'\n  env:\n    SP_DELIVERY_TIMEOUT: 180\n",
        minions.join(",")
    )
}

/// Waits until d1 knows d2 as a peer (its launches then name d2 as a fallback).
fn both_alive(d: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, status) = d.call("GET", "/api/v1/status", None);
        let alive = status["daemons"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|d| d["alive"] == true).count());
        if alive == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{status:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // One heartbeat later every daemon has read the other's URL.
    std::thread::sleep(saltpeter::history::fleet::BEAT_EVERY + Duration::from_secs(1));
}

fn output_of(d: &Daemon, instance: &str, machine: &str) -> String {
    let (_, out) = d.call(
        "GET",
        &format!("/api/v1/runs/{instance}/targets/{machine}/output"),
        None,
    );
    out["text"].as_str().unwrap_or_default().to_string()
}

/// Two daemons on a fresh database that know each other, and a long run launched by d1
/// whose two targets stream: (d1, d2, their config dirs, the database URL, the run, the
/// minions).
struct LongRun {
    d1: Daemon,
    d2: Daemon,
    _dirs: [tempfile::TempDir; 2],
    url: String,
    instance: String,
    minions: Vec<String>,
}

fn long_run_on_d1(lab: &Lab, server: &str, name: &str) -> LongRun {
    let url = fresh_database(server, name);
    let minions = lab.minions()[..2].to_vec();
    let jobs = long_job(&minions);
    let (d2, dir2) = daemon(lab, "d2", &url, &jobs, &[]);
    let (d1, dir1) = daemon(lab, "d1", &url, &jobs, &[]);
    both_alive(&d1);
    let (code, r) = d1.call("POST", "/api/v1/jobs/long/run", None);
    assert_eq!(code, 202, "{r}");
    let instance = r["instance"].as_str().unwrap().to_string();
    poll_run(&d1, &instance, "both targets stream", |run| {
        minions
            .iter()
            .all(|m| target(run, m)["output_bytes"].as_u64().unwrap_or(0) > 0)
    });
    LongRun {
        d1,
        d2,
        _dirs: [dir1, dir2],
        url,
        instance,
        minions,
    }
}

#[test]
fn the_run_of_a_killed_daemon_is_adopted_and_ends_with_all_its_output() {
    let (lab, _guard) = lab();
    let Some(server) = server() else { return };
    let LongRun {
        mut d1,
        mut d2,
        url,
        instance,
        minions,
        ..
    } = long_run_on_d1(lab, &server, "adopt");
    d1.signal(nix::sys::signal::Signal::SIGKILL);
    let killed = Instant::now();
    d2.expect_line(&format!("adopting {instance}"), Duration::from_secs(40));
    let adopted = killed.elapsed();
    let adopted_ms = now_ms();
    assert!(
        adopted <= Duration::from_secs(36),
        "adopted after {adopted:?}"
    );
    // Failover, as an operator would time it: the dead owner's last heartbeat, the adoption,
    // the first wrapper back on the new owner.
    d2.expect_line(
        &format!("Client connected - {instance}"),
        Duration::from_secs(20),
    );
    let reconnected_ms = now_ms();
    let last_beat: i64 = sql(&url, "SELECT heartbeat_ms FROM daemons WHERE name = 'd1'")[0].get(0);
    eprintln!(
        "failover: last heartbeat of d1 -> adopted by d2 {} ms -> first wrapper reconnected {} ms later (kill -> adopted {adopted:?})",
        adopted_ms - last_beat,
        reconnected_ms - adopted_ms
    );
    let run = poll_run(&d2, &instance, "the run ends", |run| {
        run["running"] == false
    });
    assert_eq!(run["owner"], "d2");
    for m in &minions {
        assert_eq!(target(&run, m)["exit_code"], 0, "{run:#}");
        let text = output_of(&d2, &instance, m);
        for i in 1..=40 {
            assert!(
                text.contains(&format!("line {i}\n")),
                "{m}: line {i} missing from {text:?}"
            );
        }
    }
    // The wrappers' reconnects are in the history: each target connected to d1, then to d2.
    for m in &minions {
        let t = target(&run, m);
        assert!(t["connections"].as_u64().unwrap_or(0) >= 2, "{m}: {t:#}");
        assert_eq!(t["connected_to"], "d2", "{m}: {t:#}");
    }
    let _ = d1.child.wait();
}

#[test]
fn a_daemon_paused_past_its_lease_no_longer_acts_on_the_run_it_lost() {
    let (lab, _guard) = lab();
    let Some(server) = server() else { return };
    let LongRun {
        mut d1,
        mut d2,
        instance,
        minions,
        ..
    } = long_run_on_d1(lab, &server, "fence");
    // Paused past its lease (and past the wrappers' heartbeat timeout, which it must not
    // judge when it wakes): d2 adopts the run meanwhile.
    d1.signal(nix::sys::signal::Signal::SIGSTOP);
    d2.expect_line(&format!("adopting {instance}"), Duration::from_secs(40));
    std::thread::sleep(Duration::from_secs(3));
    d1.signal(nix::sys::signal::Signal::SIGCONT);
    d1.expect_line(
        &format!("{instance} was taken over by another daemon"),
        Duration::from_secs(15),
    );
    let run = poll_run(&d2, &instance, "the run ends", |run| {
        run["running"] == false
    });
    assert_eq!(run["owner"], "d2");
    for m in &minions {
        // Not a 253 from the paused daemon's stale heartbeat clock: the job's own 0.
        assert_eq!(target(&run, m)["exit_code"], 0, "{run:#}");
    }
    d1.drain_for(Duration::from_secs(1));
    let acted: Vec<&String> = d1
        .seen
        .iter()
        .filter(|l| l.contains(&format!("Result for {instance}")))
        .collect();
    assert!(
        acted.is_empty(),
        "the paused daemon recorded results of a run it lost: {acted:?}"
    );
}

#[test]
fn postgres_restarted_mid_run_loses_no_run_and_fires_no_slot_twice() {
    let (lab, _guard) = lab();
    let Some(server) = server() else { return };
    let Ok(pg_dir) = std::env::var("SALTPETER_TEST_POSTGRES_DIR") else {
        eprintln!("SALTPETER_TEST_POSTGRES_DIR unset: skipped (the server cannot be restarted)");
        return;
    };
    let url = fresh_database(&server, "restart");
    let minions = lab.minions()[..2].to_vec();
    let jobs = long_job(&minions) + &every_two_seconds("every2", &minions[0]);
    let (d1, _dir1) = daemon(lab, "d1", &url, &jobs, &[]);
    let (_d2, _dir2) = daemon(lab, "d2", &url, &jobs, &[]);
    let (code, r) = d1.call("POST", "/api/v1/jobs/long/run", None);
    assert_eq!(code, 202, "{r}");
    let instance = r["instance"].as_str().unwrap().to_string();
    poll_run(&d1, &instance, "both targets stream", |run| {
        minions.iter().all(|m| target(run, m)["state"] == "running")
    });
    let from = now_ms();
    std::thread::sleep(Duration::from_secs(4));
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/lab/pg.sh");
    let status = std::process::Command::new(script)
        .args(["restart", "--dir", &pg_dir])
        .status()
        .unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_secs(10));
    let to = now_ms() - 3_000;
    // No slot twice; a slot whose claim failed while the server was away is either fired
    // late or recorded as missed, with the reason.
    let rows = sql(
        &url,
        &format!(
            "SELECT slot_ms, state, COALESCE(reason, ''), (SELECT COUNT(*) FROM runs r WHERE r.job = s.job AND r.scheduled_ms = s.slot_ms) FROM slots s WHERE job = 'every2' AND COALESCE(last_ms, slot_ms) >= {from} AND slot_ms <= {to} ORDER BY slot_ms"
        ),
    );
    for r in &rows {
        let (slot, state, reason, runs): (i64, String, String, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        match state.as_str() {
            "fired" => assert_eq!(runs, 1, "slot {slot}"),
            "missed" => assert!(!reason.is_empty(), "slot {slot} missed without a reason"),
            other => panic!("slot {slot}: {other}"),
        }
    }
    assert!(rows.len() >= 5, "{} rows", rows.len());
    let run = poll_run(&d1, &instance, "the run ends", |run| {
        run["running"] == false
    });
    for m in &minions {
        assert_eq!(target(&run, m)["exit_code"], 0, "{run:#}");
        let text = output_of(&d1, &instance, m);
        assert!(text.contains("line 40\n"), "{m}: {text:?}");
    }
    let _: Value = run;
}

#[test]
fn a_job_pinned_to_a_master_is_fired_and_run_now_by_that_masters_daemon_only() {
    let (lab, _guard) = lab();
    let Some(server) = server() else { return };
    let url = fresh_database(&server, "pinned");
    let minion = lab.minions()[0].clone();
    let jobs = every_two_seconds("pinned", &minion) + "  master: east\n";
    // d2 serves master `east`, d1 another.
    let (d1, _dir1) = daemon_with(lab, "d1", &url, &jobs, &[], "  master_name: west\n");
    let (d2, _dir2) = daemon_with(lab, "d2", &url, &jobs, &[], "  master_name: east\n");
    let from = now_ms();
    std::thread::sleep(Duration::from_secs(12));
    let to = now_ms() - 3_000;
    let claims = every_slot_once(&url, "pinned", from, to);
    assert!(claims.iter().all(|(_, d)| d == "d2"), "{claims:?}");
    // Run now through the other master's daemon: started by d2, which owns the run.
    let (code, r) = d1.call("POST", "/api/v1/jobs/pinned/run", None);
    assert_eq!(code, 202, "{r}");
    let instance = r["instance"].as_str().unwrap().to_string();
    let run = poll_run(&d2, &instance, "the run ends", |run| {
        run["running"] == false
    });
    assert_eq!(run["owner"], "d2", "{run:#}");
    drop((d1, d2));
}
