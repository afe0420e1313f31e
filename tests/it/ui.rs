//! The web UI in real headless Chromium (Debian's `chromium`, driven by `playwright-core` from
//! `tests/ui`, both installed by `contrib/test.sh`) against the real daemon on the Salt lab.
//! Screenshots go to `target/ui-screenshots/`.

use std::process::Command;

use crate::lab::lab;
use crate::support::{Daemon, write};
use crate::webhook_sink::WebhookSink;

#[test]
fn the_web_ui_runs_a_job_shows_live_output_and_kills_a_run_in_chromium() {
    let (lab, _guard) = lab();
    assert!(
        std::path::Path::new("tests/ui/node_modules/playwright-core").exists(),
        "playwright-core is missing: contrib/test.sh installs it (npm install --prefix tests/ui)"
    );
    let dir = tempfile::tempdir().unwrap();
    // The long job, killed, tells a webhook of its failure; the page lists the delivery.
    let hook = WebhookSink::start([]);
    let settings = format!(
        "{}  notify_channels:\n    hook: {{webhook: '{}'}}\n",
        lab.daemon_settings(&dir.path().join("log")),
        hook.url
    );
    write(dir.path(), "01-settings.yaml", &settings);
    let job = |name: &str, command: &str| {
        format!(
            "{name}:\n  sec: 0\n  min: 0\n  hour: 0\n  dom: 1\n  mon: 1\n  dow: '*'\n  year: 2099\n  targets: '*'\n  command: {command}\n  env:\n    SP_DELIVERY_TIMEOUT: 60\n"
        )
    };
    let jobs = job("uiecho", "echo hello from the UI on $SP_MACHINE_ID")
        + &job("uilong", "echo started; sleep 602")
        + "  notify: {when: [failure], to: [hook]}\n";
    write(dir.path(), "jobs.yaml", &jobs);
    let mut d = Daemon::start(dir.path());
    d.wait_api();
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("ui-screenshots");
    // Only this run's screenshots count.
    let _ = std::fs::remove_dir_all(&shots);
    let out = Command::new("node")
        .arg("tests/ui/ui.test.mjs")
        .arg(d.api())
        .arg(&shots)
        .output()
        .expect("node (Node.js) is needed for the UI test");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "the UI test failed (screenshots in {}):\n{stdout}\n{stderr}",
        shots.display()
    );
    assert!(stdout.contains("ui: all good"), "{stdout}");
    for shot in [
        "jobs.png",
        "run-ok.png",
        "killed.png",
        "job-notifications.png",
        "timeline.png",
        "jobs-phone.png",
    ] {
        assert!(shots.join(shot).exists(), "{shot} was not taken");
    }
}
