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
