//! `saltpeter notify-test JOB`: sends a test notification through each of the job's channels,
//! straight from this process (not through a daemon's outbox, so nothing is recorded), and
//! prints what each channel answered.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use saltpeter::config::{self, Loader};
use saltpeter::notify::{Event, Notice, outbox};

pub fn run(dir: &Path, name: &str, only: Option<&str>) -> anyhow::Result<ExitCode> {
    let files = config::read_dir(dir)?;
    let loaded = Loader::new(&saltpeter::hostname()).load(&files);
    let Some(job) = loaded.config.jobs.get(name) else {
        eprintln!(
            "saltpeter: no valid job named `{name}` in {} (run `saltpeter check -c {}`)",
            dir.display(),
            dir.display()
        );
        return Ok(ExitCode::FAILURE);
    };
    let Some(policy) = &job.notify else {
        eprintln!(
            "saltpeter: {name} notifies nobody (no `notify` of its own, none in saltpeter_config)"
        );
        return Ok(ExitCode::FAILURE);
    };
    let channels: Vec<&String> = policy
        .to
        .iter()
        .filter(|c| only.is_none_or(|o| o == c.as_str()))
        .collect();
    if channels.is_empty() {
        eprintln!(
            "saltpeter: {name} does not notify `{}`; its channels: {}",
            only.unwrap_or_default(),
            policy.to.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    let now = saltpeter::clock::now();
    let notice = Notice {
        version: 1,
        event: Event::Test,
        job: name.to_string(),
        slot: None,
        last_slot: None,
        slots: None,
        instance: None,
        trigger: None,
        started_at: None,
        ended_at: None,
        at: now.to_string(),
        summary: "a test notification (saltpeter notify-test)".into(),
        consecutive_failures: 0,
        attempts: 0,
        succeeded: 0,
        total: 0,
        targets: Vec::new(),
        targets_omitted: 0,
        detail: None,
        daemon: saltpeter::hostname(),
    };
    let body = notice.to_json();
    let mut failed = 0;
    for (i, name) in channels.iter().enumerate() {
        let Some(channel) = loaded.config.settings.notify_channels.get(*name) else {
            println!("{name}: not defined in notify_channels");
            failed += 1;
            continue;
        };
        let started = Instant::now();
        // Test deliveries are numbered from 0 downwards, apart from the outbox's ids.
        let id = -(i as i64);
        match outbox::send(channel, id, &body, now.as_second()) {
            Ok(()) => println!(
                "{name} ({}): delivered in {:.2} s",
                channel.kind(),
                started.elapsed().as_secs_f64()
            ),
            Err(e) => {
                failed += 1;
                let again = if e.retryable() {
                    " (the daemon would try again)"
                } else {
                    " (the daemon would give up)"
                };
                println!("{name} ({}): failed: {e}{again}", channel.kind());
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
