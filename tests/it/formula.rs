//! The Salt formula (`contrib/salt/saltpeter`) on the lab: `saltpeter.wrapper` installs this
//! build's sp-wrapper with every state succeeding and changing something, a second apply
//! changes nothing, and jobs then run through the installed wrapper on every minion;
//! `saltpeter.daemon` renders (it is not applied: it would install a unit on this machine), and
//! the starter config it writes passes `saltpeter check`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Value, json};

use crate::engine_lab::{far, poll_run, target};
use crate::lab::{Lab, lab};
use crate::support::{Daemon, bin, write};

/// The lab master's `file_roots` base directory (`file_roots: {base: [DIR]}`).
fn file_roots(lab: &Lab) -> PathBuf {
    let text = std::fs::read_to_string(lab.master_config()).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("file_roots:"))
        .expect("the lab master has file_roots");
    let inner = line.split_once('[').unwrap().1.split_once(']').unwrap().0;
    PathBuf::from(inner.split(',').next().unwrap().trim())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// Salt's own CLI, one minion, JSON out: that minion's return.
fn salt(lab: &Lab, minion: &str, args: &[String]) -> Value {
    let out = lab
        .salt_cli()
        .args([minion, "--out=json", "--static", "--timeout=120"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let all: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{e}: {text}\n{}", String::from_utf8_lossy(&out.stderr)));
    all[minion].clone()
}

/// Where the formula installs the wrapper on `minion` in this test: one tree per minion, since
/// the lab's minions share one file system (a fleet's do not).
fn pillar(base: &Path, minion: &str) -> Value {
    let root = base.join(minion);
    json!({"saltpeter": {"wrapper": {
        "path": root.join("bin/sp-wrapper"),
        "logdir": root.join("log"),
        "spooldir": root.join("spool"),
    }}})
}

/// `state.apply saltpeter.wrapper` on every minion at once: each minion's state results.
fn apply_wrapper(lab: &Lab, base: &Path) -> Vec<(String, Value)> {
    std::thread::scope(|s| {
        let runs: Vec<_> = lab
            .minions()
            .into_iter()
            .map(|m| {
                s.spawn(move || {
                    let args = [
                        "state.apply".to_string(),
                        "saltpeter.wrapper".to_string(),
                        format!("pillar={}", pillar(base, &m)),
                    ];
                    let states = salt(lab, &m, &args);
                    (m, states)
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    })
}

#[test]
fn the_wrapper_formula_installs_idempotently_and_jobs_run_through_it() {
    let (lab, _guard) = lab();
    let roots = file_roots(lab);
    let formula = roots.join("saltpeter");
    let _ = std::fs::remove_dir_all(&formula);
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/salt/saltpeter");
    copy_dir(&source, &formula);
    // The static (musl) build when the test script made one: what operators ship to minions.
    let wrapper = std::env::var("SALTPETER_STATIC_WRAPPER")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_sp-wrapper").to_string());
    std::fs::copy(&wrapper, formula.join("files/sp-wrapper")).unwrap();
    let base = tempfile::tempdir().unwrap();

    // First apply: every state succeeds and changes something.
    let started = Instant::now();
    let first = apply_wrapper(lab, base.path());
    eprintln!("first apply took {:?}", started.elapsed());
    let ids = [
        "saltpeter-wrapper",
        "saltpeter-wrapper-logdir",
        "saltpeter-wrapper-spooldir",
        "saltpeter-wrapper-version",
    ];
    for (minion, states) in &first {
        let states = states
            .as_object()
            .unwrap_or_else(|| panic!("{minion}: {states}"));
        let mut seen: Vec<&str> = states
            .values()
            .map(|s| s["__id__"].as_str().unwrap())
            .collect();
        seen.sort();
        assert_eq!(seen, ids, "{minion}: {states:#?}");
        for (key, state) in states {
            assert_eq!(state["result"], true, "{minion} {key}: {state:#}");
            let changes = state["changes"].as_object().unwrap();
            assert!(
                !changes.is_empty(),
                "{minion} {key} changed nothing: {state:#}"
            );
        }
        let version = states
            .values()
            .find(|s| s["__id__"] == "saltpeter-wrapper-version")
            .unwrap();
        assert_eq!(
            version["changes"]["stdout"],
            format!(
                "sp-wrapper {} (protocol {})",
                env!("CARGO_PKG_VERSION"),
                saltpeter::protocol::PROTOCOL_VERSION
            )
        );
        let installed = base.path().join(minion).join("bin/sp-wrapper");
        let meta = std::fs::metadata(&installed).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
        assert_eq!(
            std::fs::read(&installed).unwrap(),
            std::fs::read(&wrapper).unwrap()
        );
        assert!(base.path().join(minion).join("log").is_dir());
        assert!(base.path().join(minion).join("spool").is_dir());
    }

    // Second apply: nothing to do.
    let second = apply_wrapper(lab, base.path());
    for (minion, states) in &second {
        let states = states.as_object().unwrap();
        assert_eq!(states.len(), ids.len(), "{minion}: {states:#?}");
        for (key, state) in states {
            assert_eq!(state["result"], true, "{minion} {key}: {state:#}");
            assert_eq!(state["changes"], json!({}), "{minion} {key}: {state:#}");
        }
    }

    // Jobs run through the installed wrappers: one job per minion, each on its own install.
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "01-settings.yaml",
        &lab.daemon_settings(&dir.path().join("log")),
    );
    let jobs: String = lab
        .minions()
        .iter()
        .map(|m| {
            let path = base.path().join(m).join("bin/sp-wrapper");
            far(
                &format!("formula-{m}"),
                &format!(
                    "  command: echo \"installed on $SP_MACHINE_ID\"\n  wrapper_path: {}\n",
                    path.display()
                ),
            )
            .replace("targets: '*'", &format!("targets: {m}"))
        })
        .collect();
    write(dir.path(), "jobs.yaml", &jobs);
    let mut daemon = Daemon::start(dir.path());
    daemon.wait_api();
    let instances: Vec<(String, String)> = lab
        .minions()
        .into_iter()
        .map(|m| {
            let (code, r) = daemon.call("POST", &format!("/api/v1/jobs/formula-{m}/run"), None);
            assert_eq!(code, 202, "{r}");
            (m, r["instance"].as_str().unwrap().to_string())
        })
        .collect();
    for (minion, instance) in &instances {
        let run = poll_run(&daemon, instance, "formula run done", |run| {
            run["running"] == false
        });
        let t = target(&run, minion);
        assert_eq!(t["exit_code"], 0, "{run:#}");
        assert_eq!(run["targets"].as_array().unwrap().len(), 1, "{run:#}");
        let (_, out) = daemon.call(
            "GET",
            &format!("/api/v1/runs/{instance}/targets/{minion}/output"),
            None,
        );
        assert!(
            out.to_string().contains(&format!("installed on {minion}")),
            "{out}"
        );
    }
    drop(daemon);

    // saltpeter.daemon renders with a pillar config; its starter config is a valid one.
    let config = json!({"saltpeter": {
        "config": {"default_wrapper_path": "/usr/local/bin/sp-wrapper", "machines_ws_port": 9889,
                   "default_saltpeter_server_host": "salt.example.com"},
        "daemon": {"read_write_paths": ["/srv/saltpeter"]},
    }});
    let shown = salt(
        lab,
        "minion-1",
        &[
            "state.show_sls".into(),
            "saltpeter.daemon".into(),
            format!("pillar={config}"),
        ],
    );
    let states = shown.as_object().unwrap_or_else(|| panic!("{shown:#}"));
    let function = |id: &str| -> (String, Vec<Value>) {
        let state = &states[id];
        let (module, args) = state
            .as_object()
            .unwrap()
            .iter()
            .find(|(k, _)| !k.starts_with("__"))
            .unwrap_or_else(|| panic!("{id}: {state:#}"));
        let args = args.as_array().unwrap().clone();
        let fun = args.iter().find_map(Value::as_str).unwrap();
        (format!("{module}.{fun}"), args)
    };
    let arg = |args: &[Value], key: &str| -> Value {
        args.iter()
            .find_map(|a| a.get(key).cloned())
            .unwrap_or(Value::Null)
    };
    let (fun, args) = function("saltpeter-daemon");
    assert_eq!(fun, "file.managed");
    assert_eq!(arg(&args, "name"), "/usr/local/bin/saltpeter");
    assert_eq!(arg(&args, "source"), "salt://saltpeter/files/saltpeter");
    assert_eq!(arg(&args, "mode"), "0755");
    let (fun, args) = function("saltpeter-daemon-unit");
    assert_eq!(fun, "file.managed");
    assert_eq!(arg(&args, "name"), "/etc/systemd/system/saltpeter.service");
    let (_, args) = function("saltpeter-daemon-unit-paths");
    assert_eq!(
        arg(&args, "contents"),
        "[Service]\nReadWritePaths=/srv/saltpeter\n"
    );
    let (fun, args) = function("saltpeter-daemon-config");
    assert_eq!(fun, "file.serialize");
    assert_eq!(arg(&args, "name"), "/etc/saltpeter/00-saltpeter.yaml");
    let dataset = arg(&args, "dataset");
    assert_eq!(
        dataset["saltpeter_config"], config["saltpeter"]["config"],
        "{dataset:#}"
    );
    let (fun, args) = function("saltpeter-daemon-service");
    assert_eq!(fun, "service.running");
    assert_eq!(arg(&args, "enable"), true);
    let watched = arg(&args, "watch");
    for id in [
        "saltpeter-daemon",
        "saltpeter-daemon-unit",
        "saltpeter-daemon-config",
    ] {
        assert!(
            watched.as_array().unwrap().contains(&json!({"file": id})),
            "{watched}"
        );
    }
    // The starter config (JSON is YAML) passes the daemon's own checks.
    let check_dir = tempfile::tempdir().unwrap();
    write(check_dir.path(), "00-saltpeter.yaml", &dataset.to_string());
    let out = bin()
        .args(["check", "-c"])
        .arg(check_dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The unit the formula installs is the one in contrib/systemd, and it is hardened.
    let unit = std::fs::read_to_string(source.join("files/saltpeter.service")).unwrap();
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd/saltpeter.service");
    assert_eq!(std::fs::read_to_string(contrib).unwrap(), unit);
    for line in [
        "ExecStart=/usr/local/bin/saltpeter run -c /etc/saltpeter",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=-/var/lib/saltpeter -/var/log/saltpeter",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "StateDirectory=saltpeter",
        "LogsDirectory=saltpeter",
    ] {
        assert!(unit.lines().any(|l| l == line), "no {line} in the unit");
    }
    if let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(formula.join("files/saltpeter.service"))
        .output()
    {
        let err = String::from_utf8_lossy(&out.stderr);
        // It cannot find the binary here; anything else is a fault of the unit.
        let faults: Vec<&str> = err
            .lines()
            .filter(|l| !l.contains("/usr/local/bin/saltpeter") && !l.trim().is_empty())
            .collect();
        eprintln!("systemd-analyze verify: {err}");
        assert!(faults.is_empty(), "{err}");
    }
    let _ = std::fs::remove_dir_all(&formula);
}
