//! Loader tests: defaults, last good versions, duplicates across files, start-up-only keys.

use super::*;

fn file(name: &str, text: &str) -> SourceFile {
    SourceFile {
        path: name.to_string(),
        group: name.rsplit_once('.').unwrap().0.to_string(),
        text: Ok(text.to_string()),
    }
}

const GOOD: &str = "
backup:
  min: '*/5'
  hour: '*'
  dom: '*'
  mon: '*'
  dow: '*'
  targets: 'web*'
  command: echo hi
";

#[test]
fn defaults_match_the_original() {
    let loaded = Loader::new("master1").load(&[file("a.yaml", GOOD)]);
    // The original's default wrapper sends no run token: said, not an error.
    let codes: Vec<Code> = loaded.diagnostics.iter().map(|d| d.code).collect();
    assert_eq!(codes, [Code::TokenlessWrapper]);
    assert!(!loaded.config.settings.allow_legacy_wrappers);
    let job = &loaded.config.jobs["backup"];
    assert!(job.runs_original_wrapper());
    assert_eq!(job.group, "a");
    assert_eq!(job.expression, "0 */5 * * * * *");
    assert_eq!(job.timeout_secs, Some(3600));
    assert!(job.use_wrapper);
    assert_eq!(job.target_type, TargetType::Glob);
    assert_eq!(job.wrapper_path, "/usr/local/bin/sp_wrapper.py");
    assert_eq!(job.saltpeter_server_host, "master1");
    assert_eq!(job.timezone, "UTC");
    assert!(!job.allow_overlap);
}

#[test]
fn global_defaults_apply_to_every_file_and_zero_timeout_means_none() {
    let cfg = "saltpeter_config:\n  default_timezone: Europe/Berlin\n  default_wrapper_path: /opt/sp-wrapper\n";
    let b = GOOD.replace("backup", "other").replace(
        "echo hi",
        "true\n  timeout: 0\n  timezone: America/New_York",
    );
    let loaded = Loader::new("h").load(&[
        file("a.yaml", GOOD),
        file("b.yaml", &b),
        file("z.yaml", cfg),
    ]);
    assert_eq!(loaded.diagnostics, []);
    let jobs = &loaded.config.jobs;
    assert_eq!(jobs["backup"].timezone, "Europe/Berlin");
    assert_eq!(jobs["backup"].wrapper_path, "/opt/sp-wrapper");
    assert_eq!(jobs["other"].timezone, "America/New_York");
    assert_eq!(jobs["other"].timeout_secs, None);
}

#[test]
fn a_broken_file_keeps_its_last_good_version() {
    let mut loader = Loader::new("h");
    assert_eq!(loader.load(&[file("a.yaml", GOOD)]).config.jobs.len(), 1);
    let broken = GOOD.replace("'*/5'", "'*/500'");
    let loaded = loader.load(&[file("a.yaml", &broken)]);
    assert_eq!(loaded.errors(), 1);
    assert!(
        loaded
            .diagnostics
            .iter()
            .any(|d| d.code == Code::KeptLastGood)
    );
    assert_eq!(loaded.config.jobs["backup"].expression, "0 */5 * * * * *");
    // Still broken on the next reload: still the same last good version.
    let loaded = loader.load(&[file("a.yaml", &broken)]);
    assert_eq!(loaded.config.jobs["backup"].expression, "0 */5 * * * * *");
    // Fixed: the new version is taken.
    let fixed = GOOD.replace("'*/5'", "'*/7'");
    assert_eq!(
        loader.load(&[file("a.yaml", &fixed)]).config.jobs["backup"].expression,
        "0 */7 * * * * *"
    );
    // Removed: its jobs go.
    assert!(loader.load(&[]).config.jobs.is_empty());
}

#[test]
fn a_file_that_never_loaded_contributes_nothing() {
    let unreadable = SourceFile {
        path: "u.yaml".into(),
        group: "u".into(),
        text: Err("permission denied".into()),
    };
    let loaded = Loader::new("h").load(&[file("a.yaml", "x: [\n"), unreadable]);
    assert!(loaded.config.jobs.is_empty());
    assert_eq!(loaded.errors(), 2);
}

#[test]
fn a_clashing_new_file_never_replaces_a_running_job() {
    let mut loader = Loader::new("h");
    loader.load(&[file("z.yaml", GOOD)]);
    let clash = GOOD.replace("echo hi", "echo clash");
    let loaded = loader.load(&[file("a.yaml", &clash), file("z.yaml", GOOD)]);
    assert_eq!(loaded.config.jobs["backup"].command, "echo hi");
    let dup = loaded
        .diagnostics
        .iter()
        .find(|d| d.code == Code::DuplicateJob)
        .unwrap();
    assert_eq!(
        dup.to_string(),
        "a.yaml:2:1: error: job `backup` is already defined in z.yaml:2:1; this definition is ignored"
    );
}

#[test]
fn start_up_only_settings_are_reported_and_kept() {
    let mut loader = Loader::new("h");
    let old = loader
        .load(&[file(
            "a.yaml",
            "saltpeter_config:\n  machines_ws_port: 8889\n",
        )])
        .config
        .settings;
    let new = loader
        .load(&[file(
            "a.yaml",
            "saltpeter_config:\n  machines_ws_port: 9999\n  logdir: /tmp/x\n",
        )])
        .config
        .settings;
    assert_eq!(
        old.restart_required(&new),
        [("machines_ws_port", "8889".to_string(), "9999".to_string())]
    );
    let kept = old.keep_startup_values(new);
    assert_eq!(
        (kept.machines_ws_port, kept.logdir.as_str()),
        (8889, "/tmp/x")
    );
}

#[test]
fn maintenance_later_files_override() {
    let a = "saltpeter_maintenance:\n  global: false\n  machines: [m1]\n";
    let b = "saltpeter_maintenance:\n  global: true\n";
    let loaded = Loader::new("h").load(&[file("a.yaml", a), file("b.yaml", b)]);
    assert_eq!(
        loaded.config.maintenance,
        Maintenance {
            global: true,
            machines: vec!["m1".into()]
        }
    );
}

#[test]
fn the_wrapper_url_follows_tls_and_the_port() {
    let mut s = Settings::defaults("h");
    assert_eq!(s.machines_ws_url("master1"), "ws://master1:8889");
    s.machines_ws_tls_cert = Some("/etc/saltpeter/cert.pem".into());
    s.machines_ws_port = 9443;
    assert_eq!(s.machines_ws_url("::1"), "wss://[::1]:9443");
}

#[test]
fn misfire_defaults_come_from_saltpeter_config_and_job_keys_win() {
    let default = Misfire {
        policy: MisfirePolicy::Latest,
        window_secs: 60,
        max: 10,
    };
    assert_eq!(Misfire::default(), default);
    assert_eq!(Settings::defaults("h").default_misfire, default);
    // A job without the keys gets latest/60/10.
    let loaded = Loader::new("h").load(&[file("a.yaml", GOOD)]);
    assert_eq!(loaded.errors(), 0, "{:?}", loaded.diagnostics);
    assert_eq!(loaded.config.jobs["backup"].misfire, default);

    // `saltpeter_config` overrides the defaults, each key on its own; the later file wins.
    let cfg = "saltpeter_config:\n  default_misfire: all\n  default_misfire_window: 300\n  default_misfire_max: 5\n";
    let later = "saltpeter_config:\n  default_misfire_max: 7\n";
    let own = GOOD.replace("backup", "own").replace(
        "echo hi",
        "true\n  misfire: skip\n  misfire_window: 30\n  misfire_max: 2",
    );
    let window_only = GOOD
        .replace("backup", "window-only")
        .replace("echo hi", "true\n  misfire_window: 900");
    let mut loader = Loader::new("h");
    let loaded = loader.load(&[
        file("a.yaml", GOOD),
        file("b.yaml", &own),
        file("c.yaml", &window_only),
        file("y.yaml", cfg),
        file("z.yaml", later),
    ]);
    assert_eq!(loaded.errors(), 0, "{:?}", loaded.diagnostics);
    // `misfire_max` with `skip`: said, not an error.
    let no_effect: Vec<String> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.code == Code::NoEffect)
        .map(|d| d.to_string())
        .collect();
    assert_eq!(
        no_effect,
        ["b.yaml:12:16: warning: `misfire_max` has no effect unless `misfire: all`"]
    );
    let jobs = &loaded.config.jobs;
    let misfire = |policy, window_secs, max| Misfire {
        policy,
        window_secs,
        max,
    };
    assert_eq!(jobs["backup"].misfire, misfire(MisfirePolicy::All, 300, 7));
    assert_eq!(jobs["own"].misfire, misfire(MisfirePolicy::Skip, 30, 2));
    assert_eq!(
        jobs["window-only"].misfire,
        misfire(MisfirePolicy::All, 900, 7)
    );

    // A reload that drops the defaults re-resolves the unchanged job files.
    let loaded = loader.load(&[file("a.yaml", GOOD), file("c.yaml", &window_only)]);
    assert_eq!(loaded.config.jobs["backup"].misfire, default);
    assert_eq!(
        loaded.config.jobs["window-only"].misfire,
        misfire(MisfirePolicy::Latest, 900, 10)
    );
}

#[test]
fn misfire_keys_are_validated() {
    let bad = GOOD.replace(
        "echo hi",
        "true\n  misfire: latest\n  misfire_window: 31536001\n  misfire_max: x",
    );
    let loaded = Loader::new("h").load(&[file("a.yaml", &bad)]);
    let found: Vec<String> = loaded.diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        found,
        [
            "a.yaml:11:19: error: `misfire_window` must be between 1 and 31536000, found 31536001",
            "a.yaml:12:16: error: `misfire_max` must be a whole number, found a string",
        ]
    );
    assert!(loaded.config.jobs.is_empty());
}
