//! The `saltpeter` command as a user runs it: exit codes and exact output.

use crate::support::{job, run, write};

#[test]
fn version_and_help() {
    let (code, out, _) = run(&["--version"]);
    assert_eq!(
        (code, out.trim()),
        (
            0,
            format!("saltpeter {}", env!("CARGO_PKG_VERSION")).as_str()
        )
    );
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for sub in ["run", "check", "next", "import-crontab"] {
        assert!(out.contains(sub), "--help lacks {sub}:\n{out}");
    }
    for sub in ["run", "check", "next", "import-crontab"] {
        let (code, out, _) = run(&[sub, "--help"]);
        assert_eq!(code, 0, "{sub} --help");
        assert!(out.contains("Usage: saltpeter"), "{out}");
    }
}

#[test]
fn check_exit_codes_and_summary() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &job("tick", "*/5"));
    let d = dir.path().to_str().unwrap();
    let (code, out, _) = run(&["check", "-c", d]);
    assert_eq!(
        (code, out.as_str()),
        (0, "0 error(s), 0 warning(s) in 1 file(s); 1 job(s) valid\n")
    );

    write(dir.path(), "b.yml", &job("tock", "*/61"));
    let (code, out, _) = run(&["check", "-c", d]);
    assert_eq!(code, 1);
    assert_eq!(
        out,
        format!(
            "{d}/b.yml:2:11: error: bad `sec` field: step 61 is too large for `sec` (0-59)\n1 error(s), 0 warning(s) in 2 file(s); 1 job(s) valid\n"
        )
    );

    let (code, _, err) = run(&["check", "-c", "/nonexistent/saltpeter"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("cannot read config directory /nonexistent/saltpeter"),
        "{err}"
    );
}

#[test]
fn next_prints_rfc3339_in_the_jobs_zone_across_dst() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = job("nightly", "0")
        .replace("min: '*'", "min: 30")
        .replace("hour: '*'", "hour: 2")
        + "  timezone: Europe/Berlin\n";
    write(dir.path(), "a.yaml", &yaml);
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = run(&[
        "next",
        "-c",
        d,
        "nightly",
        "-n",
        "3",
        "--from",
        "2025-03-29T12:00:00Z",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "2025-03-30T03:00:00+02:00\n2025-03-31T02:30:00+02:00\n2025-04-01T02:30:00+02:00\n"
    );
    // Default count is 10.
    let (_, out, _) = run(&["next", "-c", d, "nightly", "--from", "2025-01-01T00:00:00Z"]);
    assert_eq!(out.lines().count(), 10);

    let (code, _, err) = run(&["next", "-c", d, "nightlly"]);
    assert_eq!(code, 1);
    assert!(err.contains("did you mean `nightly`?"), "{err}");
    let (code, _, err) = run(&["next", "-c", d, "nightly", "--from", "yesterday"]);
    assert_eq!(code, 2);
    assert!(err.contains("not an RFC 3339 time"), "{err}");
}

#[test]
fn import_crontab_output_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let tab = dir.path().join("crontab");
    std::fs::write(
        &tab,
        "MAILTO=ops\n*/10 * * * * /usr/bin/php /srv/app/cron.php\n0 3 1 * 0 /opt/monthly.sh\n",
    )
    .unwrap();
    let (code, yaml, err) = run(&["import-crontab", tab.to_str().unwrap(), "--targets", "app*"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("2 job(s) imported, 0 line(s) rejected"),
        "{err}"
    );
    assert!(yaml.contains("dom_dow: or"), "{yaml}");
    let cfg = tempfile::tempdir().unwrap();
    write(cfg.path(), "imported.yaml", &yaml);
    let settings = "saltpeter_config:\n  default_wrapper_path: /usr/local/bin/sp-wrapper\n";
    write(cfg.path(), "00-settings.yaml", settings);
    let (code, out, _) = run(&["check", "-c", cfg.path().to_str().unwrap()]);
    assert_eq!(
        (code, out.as_str()),
        (0, "0 error(s), 0 warning(s) in 2 file(s); 2 job(s) valid\n")
    );

    std::fs::write(&tab, "@reboot /opt/start\n").unwrap();
    let (code, _, err) = run(&["import-crontab", tab.to_str().unwrap(), "--system"]);
    assert_eq!(code, 1);
    assert!(err.contains("@reboot has no saltpeter equivalent"), "{err}");
    let (code, _, err) = run(&[
        "import-crontab",
        tab.to_str().unwrap(),
        "--target-type",
        "blob",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown target type `blob`"), "{err}");
}
