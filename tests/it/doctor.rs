//! `saltpeter doctor` on the lab: every check passes against a good config and a running
//! daemon; then one planted failure per check (a broken config, a key that is not there, a
//! master that does not answer, an event bus it cannot read, a machines host the minions cannot
//! reach, a missing wrapper, the original Python wrapper, a database it cannot write, no daemon
//! behind the API), each named by its exact `FAIL <check>:` line and exit 1; and
//! `sp-wrapper --version`, which doctor runs on the minions.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::lab::{Lab, lab};
use crate::support::{Daemon, bin, free_port, write};

const CHECKS: [&str; 9] = [
    "config",
    "salt-config",
    "master-key",
    "publish",
    "event-bus",
    "machines-port",
    "wrapper",
    "database",
    "api",
];

/// A job that never fires (doctor needs its targets, not its runs).
const JOB: &str = "doctored:\n  sec: 0\n  min: 0\n  hour: 0\n  dom: 1\n  mon: 1\n  dow: '*'\n  year: 2099\n  targets: '*'\n  command: 'true'\n";

struct Doctor {
    code: i32,
    lines: Vec<String>,
    took: Duration,
}

impl Doctor {
    fn run(dir: &Path) -> Doctor {
        let started = Instant::now();
        let out = bin()
            .args(["doctor", "-c"])
            .arg(dir)
            .output()
            .expect("run saltpeter doctor");
        let doctor = Doctor {
            code: out.status.code().unwrap_or(-1),
            lines: String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(String::from)
                .collect(),
            took: started.elapsed(),
        };
        eprintln!(
            "doctor took {:?}, exit {}:\n{}\n{}",
            doctor.took,
            doctor.code,
            doctor.lines.join("\n"),
            String::from_utf8_lossy(&out.stderr)
        );
        doctor
    }

    /// Each check's status word, in the order printed: `ok config`, `FAIL api`...
    fn statuses(&self) -> Vec<String> {
        self.lines
            .iter()
            .map(|l| {
                let (status, rest) = l.split_once(' ').unwrap_or((l, ""));
                let check = rest.trim_start().split(':').next().unwrap_or_default();
                format!("{status} {check}")
            })
            .collect()
    }

    fn line(&self, check: &str) -> &str {
        self.lines
            .iter()
            .find(|l| {
                l.split_once(' ')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with(&format!("{check}:")))
            })
            .unwrap_or_else(|| panic!("no line for {check}: {:#?}", self.lines))
    }

    /// Asserts every check's status: `ok` unless `other` says otherwise.
    fn expect(&self, other: &[(&str, &str)], code: i32) {
        let want: Vec<String> = CHECKS
            .iter()
            .map(|c| {
                let status = other
                    .iter()
                    .find(|(check, _)| check == c)
                    .map_or("ok", |(_, s)| s);
                format!("{status} {c}")
            })
            .collect();
        assert_eq!(self.statuses(), want, "{:#?}", self.lines);
        assert_eq!(self.code, code, "{:#?}", self.lines);
        // Every check is bounded; on the lab the whole run takes seconds.
        assert!(self.took < Duration::from_secs(40), "took {:?}", self.took);
    }
}

/// A config directory for the lab: `saltpeter_config` (the lab's master, this build's
/// wrapper, wrappers calling back on loopback, free ports on loopback, the database in
/// `state`) with `changes` applied, and a job that never fires.
fn config(
    lab: &Lab,
    dir: &Path,
    state: &Path,
    changes: &[(&str, &str)],
) -> BTreeMap<String, String> {
    let mut settings: BTreeMap<String, String> = [
        ("salt_master_config", lab.master_config().to_string()),
        ("default_saltpeter_server_host", "127.0.0.1".into()),
        (
            "default_wrapper_path",
            env!("CARGO_BIN_EXE_sp-wrapper").into(),
        ),
        ("logdir", state.join("log").display().to_string()),
        ("database", state.join("history.db").display().to_string()),
        ("machines_ws_bind_addr", "127.0.0.1".into()),
        ("machines_ws_port", free_port().to_string()),
        ("api_ws_bind_addr", "127.0.0.1".into()),
        ("api_ws_port", free_port().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in changes {
        settings.insert(k.to_string(), v.to_string());
    }
    let text: String = settings
        .iter()
        .map(|(k, v)| format!("  {k}: {v}\n"))
        .collect();
    write(
        dir,
        "00-settings.yaml",
        &format!("saltpeter_config:\n{text}"),
    );
    write(dir, "jobs.yaml", JOB);
    settings
}

#[test]
fn doctor_passes_every_check_on_a_good_lab_with_a_daemon() {
    let (lab, _guard) = lab();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "01-settings.yaml",
        &lab.daemon_settings(&dir.path().join("log")),
    );
    write(dir.path(), "jobs.yaml", JOB);
    let mut daemon = Daemon::start(dir.path());
    // The hub listens before the API does.
    daemon.wait_api();
    let d = Doctor::run(dir.path());
    d.expect(&[], 0);
    assert!(
        d.line("config").ends_with(": 3 file(s), 1 job(s)"),
        "{}",
        d.line("config")
    );
    let publish = d.line("publish");
    assert!(
        publish.starts_with(
            "ok   publish: test.ping to '*' (glob; the targets of job doctored): 3 minion(s) answered: minion-1, minion-2, minion-3"
        ),
        "{publish}"
    );
    assert!(d.line("event-bus").contains(" 3 return event(s) salt/job/"));
    assert_eq!(
        d.line("machines-port"),
        format!(
            "ok   machines-port: 3/3 minion(s) connect to 127.0.0.1:{port} (127.0.0.1:{port} is held already, by the daemon presumably)",
            port = daemon.hub_port
        )
    );
    assert_eq!(
        d.line("wrapper"),
        format!(
            "ok   wrapper: {} on minion-1, minion-2, minion-3: sp-wrapper {} (protocol {})",
            env!("CARGO_BIN_EXE_sp-wrapper"),
            env!("CARGO_PKG_VERSION"),
            saltpeter::protocol::PROTOCOL_VERSION
        )
    );
    assert!(
        d.line("database").contains("is writable (schema version "),
        "{}",
        d.line("database")
    );
    assert_eq!(
        d.line("api"),
        format!(
            "ok   api: http://127.0.0.1:{}/api/v1/status: saltpeter {}, 1 job(s), 0 run(s) in flight",
            daemon.api_port,
            env!("CARGO_PKG_VERSION")
        )
    );
    // The daemon is unharmed: it still answers and took the doctor's visit to its port.
    let (code, _) = daemon.call("GET", "/api/v1/status", None);
    assert_eq!(code, 200);
}

#[test]
fn doctor_without_a_daemon_fails_the_api_and_listens_on_the_machines_port_itself() {
    let (lab, _guard) = lab();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let s = config(lab, dir.path(), state.path(), &[]);
    let d = Doctor::run(dir.path());
    d.expect(&[("api", "FAIL")], 1);
    let port = &s["machines_ws_port"];
    assert_eq!(
        d.line("machines-port"),
        format!(
            "ok   machines-port: 3/3 minion(s) connect to 127.0.0.1:{port} (doctor listened on 127.0.0.1:{port} meanwhile)"
        )
    );
    assert!(
        d.line("database")
            .contains("history.db does not exist yet; "),
        "{}",
        d.line("database")
    );
    assert_eq!(
        d.line("api"),
        format!(
            "FAIL api: http://127.0.0.1:{}/api/v1/status: connection refused (no daemon listens) — fix: start the daemon: systemctl start saltpeter",
            s["api_ws_port"]
        )
    );
    // Doctor created nothing: the database is still to come.
    assert!(!state.path().join("history.db").exists());
}

#[test]
fn doctor_names_a_machines_host_the_minions_cannot_reach() {
    let (lab, _guard) = lab();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    // Doctor listens on 127.0.0.1 only; 127.0.0.2 refuses.
    let s = config(
        lab,
        dir.path(),
        state.path(),
        &[
            ("default_saltpeter_server_host", "127.0.0.2"),
            ("api_ws", "false"),
        ],
    );
    let d = Doctor::run(dir.path());
    d.expect(&[("machines-port", "FAIL"), ("api", "skip")], 1);
    let port = &s["machines_ws_port"];
    let line = d.line("machines-port");
    assert!(
        line.starts_with(&format!(
            "FAIL machines-port: 3 of 3 minion(s) cannot connect to 127.0.0.2:{port}, where wrappers call back (doctor listened on 127.0.0.1:{port} meanwhile): minion-1, minion-2, minion-3: Unable to connect to 127.0.0.2"
        )),
        "{line}"
    );
    assert!(
        line.ends_with(&format!(
            "— fix: set saltpeter_config.default_saltpeter_server_host to a name or address of this host that the minions resolve and reach, and let {port}/tcp through the firewall"
        )),
        "{line}"
    );
    assert_eq!(d.line("api"), "skip api: api_ws: false");
}

#[test]
fn doctor_finds_a_missing_wrapper() {
    let (lab, _guard) = lab();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    config(
        lab,
        dir.path(),
        state.path(),
        &[
            ("default_wrapper_path", "/nonexistent/sp-wrapper"),
            ("api_ws", "false"),
        ],
    );
    let d = Doctor::run(dir.path());
    d.expect(&[("wrapper", "FAIL"), ("api", "skip")], 1);
    assert_eq!(
        d.line("wrapper"),
        "FAIL wrapper: minion-1, minion-2, minion-3: no file at /nonexistent/sp-wrapper — fix: state.apply saltpeter.wrapper (with pillar saltpeter:wrapper:path: /nonexistent/sp-wrapper), or correct the job's wrapper_path"
    );
}

#[test]
fn doctor_tells_the_original_python_wrapper() {
    let (lab, _guard) = lab();
    let original = lab.env["ORIGINAL_WRAPPER"].clone();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let refused = [
        ("default_wrapper_path", original.as_str()),
        ("api_ws", "false"),
    ];
    config(lab, dir.path(), state.path(), &refused);
    let d = Doctor::run(dir.path());
    d.expect(&[("wrapper", "FAIL"), ("api", "skip")], 1);
    assert!(
        d.line("wrapper").starts_with(
            "FAIL wrapper: minion-1, minion-2, minion-3: the original Python wrapper 0.9.30 — fix: state.apply saltpeter.wrapper, then set wrapper_path"
        ),
        "{}",
        d.line("wrapper")
    );
    // Allowed: it works, and doctor says what it is.
    config(
        lab,
        dir.path(),
        state.path(),
        &[refused[0], refused[1], ("allow_legacy_wrappers", "true")],
    );
    let d = Doctor::run(dir.path());
    d.expect(&[("api", "skip")], 0);
    assert_eq!(
        d.line("wrapper"),
        format!(
            "ok   wrapper: {original} on minion-1, minion-2, minion-3: the original Python wrapper 0.9.30 (allow_legacy_wrappers: true)"
        )
    );
}

#[test]
fn doctor_reports_a_master_key_that_is_not_there() {
    let (lab, _guard) = lab();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    // Root reads any file; a cachedir without the key is what tells.
    let cache = tempfile::tempdir().unwrap();
    let cachedir = cache.path().display().to_string();
    config(
        lab,
        dir.path(),
        state.path(),
        &[("salt_cachedir", cachedir.as_str()), ("api_ws", "false")],
    );
    let d = Doctor::run(dir.path());
    d.expect(
        &[
            ("master-key", "FAIL"),
            ("publish", "skip"),
            ("event-bus", "skip"),
            ("machines-port", "skip"),
            ("wrapper", "skip"),
            ("api", "skip"),
        ],
        1,
    );
    assert!(
        d.line("master-key").starts_with(&format!(
            "FAIL master-key: {cachedir}/.root_key does not exist — fix: start the salt-master"
        )),
        "{}",
        d.line("master-key")
    );
    assert!(
        d.line("master-key")
            .contains("run as root or as the master's user (root)")
    );
    assert_eq!(
        d.line("publish"),
        "skip publish: the Salt master cannot be used (above)"
    );
}

#[test]
fn doctor_reports_an_event_bus_it_cannot_read() {
    let (lab, _guard) = lab();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let sock = state.path().join("no-sock");
    let sock_dir = sock.display().to_string();
    config(
        lab,
        dir.path(),
        state.path(),
        &[("salt_sock_dir", sock_dir.as_str()), ("api_ws", "false")],
    );
    let d = Doctor::run(dir.path());
    // The publish still works; its returns are found in the job cache.
    d.expect(&[("event-bus", "FAIL"), ("api", "skip")], 1);
    assert!(
        d.line("event-bus").starts_with(&format!(
            "FAIL event-bus: cannot read the event bus at {sock_dir}/master_event_pub.ipc: "
        )),
        "{}",
        d.line("event-bus")
    );
    assert!(
        d.line("event-bus")
            .contains("— fix: run as root or as the master's user (root); check sock_dir")
    );
}

#[test]
fn doctor_reports_a_database_it_cannot_write() {
    let (lab, _guard) = lab();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    // Root writes anywhere; a path under a regular file is what fails.
    let file = state.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let database = file.join("history.db").display().to_string();
    config(
        lab,
        dir.path(),
        state.path(),
        &[("database", database.as_str()), ("api_ws", "false")],
    );
    let d = Doctor::run(dir.path());
    d.expect(&[("database", "FAIL"), ("api", "skip")], 1);
    assert!(
        d.line("database").starts_with(&format!(
            "FAIL database: cannot create {}: {} is not a directory — fix: let the daemon's user write the database's directory",
            file.display(),
            file.display()
        )),
        "{}",
        d.line("database")
    );
}

#[test]
fn doctor_reports_a_broken_config_and_goes_on_with_what_loaded() {
    let (lab, _guard) = lab();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    config(lab, dir.path(), state.path(), &[("api_ws", "false")]);
    write(dir.path(), "broken.yaml", "oops:\n  sec: [\n");
    let d = Doctor::run(dir.path());
    // The daemon would run the files that load; so are they checked.
    d.expect(&[("config", "FAIL"), ("api", "skip")], 1);
    let shown = dir.path().display();
    assert!(
        d.line("config").starts_with(&format!(
            "FAIL config: 1 error(s) in {shown} (first: {shown}/broken.yaml:"
        )),
        "{}",
        d.line("config")
    );
    assert!(
        d.line("config").ends_with(&format!(
            "; 1 job(s) valid — fix: run `saltpeter check -c {shown}` and correct them"
        )),
        "{}",
        d.line("config")
    );
}

#[test]
fn doctor_without_a_config_directory_skips_the_rest() {
    let d = Doctor::run(Path::new("/nonexistent/saltpeter-config"));
    let mut want = vec![("config", "FAIL")];
    want.extend(CHECKS[1..].iter().map(|c| (*c, "skip")));
    d.expect(&want, 1);
    assert!(
        d.line("config").starts_with(
            "FAIL config: cannot read config directory /nonexistent/saltpeter-config: "
        ),
        "{}",
        d.line("config")
    );
}

#[test]
fn sp_wrapper_version_needs_no_environment() {
    // What doctor and the formula run on minions: no SP_* variables, nothing detached.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sp-wrapper"))
        .arg("--version")
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "sp-wrapper {} (protocol {})\n",
            env!("CARGO_PKG_VERSION"),
            saltpeter::protocol::PROTOCOL_VERSION
        )
    );
    assert!(out.stderr.is_empty());
    let (code, help, _) = crate::support::run(&["doctor", "--help"]);
    assert_eq!(code, 0);
    assert!(help.contains("--target <TGT>"), "{help}");
}

#[test]
fn doctor_reports_a_master_that_does_not_answer() {
    // No lab: a master config whose request port and event socket lead nowhere.
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let master = crate::support::dead_master(state.path(), port);
    let settings = format!(
        "saltpeter_config:\n  salt_master_config: {}\n  database: {}\n  api_ws: false\n",
        master.display(),
        state.path().join("history.db").display()
    );
    write(dir.path(), "00-settings.yaml", &settings);
    write(dir.path(), "jobs.yaml", JOB);
    let d = Doctor::run(dir.path());
    d.expect(
        &[
            ("publish", "FAIL"),
            ("event-bus", "FAIL"),
            ("machines-port", "skip"),
            ("wrapper", "skip"),
            ("api", "skip"),
        ],
        1,
    );
    assert!(
        d.line("publish").starts_with(&format!(
            "FAIL publish: publishing test.ping to '*' (glob; the targets of job doctored): cannot connect to the Salt master at tcp://127.0.0.1:{port}"
        )),
        "{}",
        d.line("publish")
    );
    assert!(
        d.line("publish")
            .contains("— fix: start the salt-master (systemctl start salt-master)"),
        "{}",
        d.line("publish")
    );
    assert_eq!(
        d.line("machines-port"),
        "skip machines-port: no minion answered test.ping"
    );
}
