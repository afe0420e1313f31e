//! `saltpeter run`: loads the config directory, keeps it fresh (file-system notifications and
//! SIGHUP), and fires due jobs by the wall clock. Wiring only: the decisions live in `config`
//! and `scheduler`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::clock::{self, Wake, WallTimer};
use crate::config::{self, Concurrency, Config, Loader, Severity};
use crate::coordinator::Coordinator;
use crate::joblog;
use crate::salt::SaltSettings;
use crate::scheduler::{Fire, InstanceIds, Planner};

/// How long the directory must be quiet after a change before it is reloaded, so an editor's
/// save (write, rename, chmod...) is one reload.
const RELOAD_QUIET: Duration = Duration::from_millis(300);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Dir(#[from] config::DirError),
    #[error("cannot create the wall-clock timer: {0}")]
    Timer(#[source] std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("cannot listen for wrappers on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("machines_ws_tls_cert/machines_ws_tls_key: {0}")]
    Tls(#[from] crate::agents::TlsError),
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(dir: PathBuf) -> Result<(), DaemonError> {
    let mut loader = Loader::new(&crate::hostname());
    let mut config = load(&dir, &mut loader, None)?;
    let mut planner = Planner::new();
    let mut instances = InstanceIds::default();
    let changes = planner.set_jobs(&config.jobs, clock::now());
    info!(jobs = changes.added.len(), dir = %dir.display(), "Saltpeter {} started", crate::VERSION);

    let (reload_tx, mut reload_rx) = mpsc::channel::<()>(4);
    // Without notifications, SIGHUP still reloads.
    let _watch = match config::watch::watch(&dir, RELOAD_QUIET, reload_tx.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(error = %e, "cannot watch the config directory; reload with SIGHUP");
            None
        }
    };
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut timer = WallTimer::new().map_err(DaemonError::Timer)?;
    let (hub, mut hub_events) = start_hub(&config.settings).await?;
    // Salt: the master's settings, its event bus (subscribed before anything is published), and
    // a worker that publishes so a slow master never stalls this loop.
    let salt_settings = match SaltSettings::from_config(&config.settings.salt) {
        Ok(s) => Some(s),
        Err(e) => {
            error!(error = %e, "cannot read the Salt master's settings; runs will fail until this is fixed and the daemon restarted");
            None
        }
    };
    let (bus_tx, mut bus_rx) = mpsc::channel(16 * 1024);
    if let Some(s) = &salt_settings {
        tokio::spawn(crate::salt::bus::subscribe(s.event_source(), bus_tx));
    }
    let (salt_req_tx, salt_req_rx) = mpsc::unbounded_channel();
    let (salt_reply_tx, mut salt_reply_rx) = mpsc::channel(1024);
    tokio::spawn(crate::coordinator::salt_worker(
        salt_settings.clone(),
        salt_req_rx,
        salt_reply_tx,
    ));
    let mut coordinator = Coordinator::new(hub, salt_req_tx, salt_settings);

    loop {
        let deadline = planner.next_deadline();
        tokio::select! {
            wake = timer.sleep_until(deadline) => {
                let now = clock::now();
                match wake {
                    Ok(Wake::ClockChanged) => {
                        warn!(now = %now, "the wall clock was set; re-planning");
                        planner.clock_changed(now);
                    }
                    Ok(Wake::Deadline) => {}
                    Err(e) => error!(error = %e, "wall-clock timer failed"),
                }
                for fire in planner.due(now) {
                    fire_job(&fire, &mut instances, now, &config, &mut coordinator).await;
                }
            }
            Some(()) = reload_rx.recv() => {
                info!("config directory changed; reloading");
                reload(&dir, &mut loader, &mut config, &mut planner);
            }
            _ = hup.recv() => {
                info!("SIGHUP; reloading");
                reload(&dir, &mut loader, &mut config, &mut planner);
            }
            Some(event) = hub_events.recv() => coordinator.handle_hub(event).await,
            Some(message) = bus_rx.recv() => coordinator.handle_bus(message).await,
            Some(reply) = salt_reply_rx.recv() => coordinator.handle_salt_reply(reply).await,
            _ = sleep_until_opt(coordinator.next_deadline()) => coordinator.handle_timeout().await,
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    info!("Saltpeter stopping");
    Ok(())
}

/// Binds the machines hub (wrappers connect here) on the configured address, with TLS when a
/// certificate is configured.
async fn start_hub(
    settings: &config::Settings,
) -> Result<
    (
        crate::agents::Hub,
        tokio::sync::mpsc::Receiver<crate::agents::HubEvent>,
    ),
    DaemonError,
> {
    let addr = format!(
        "{}:{}",
        settings.machines_ws_bind_addr, settings.machines_ws_port
    );
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: addr.clone(),
            source,
        })?;
    let tls = match (
        &settings.machines_ws_tls_cert,
        &settings.machines_ws_tls_key,
    ) {
        (Some(cert), Some(key)) => Some(crate::agents::server_tls(cert.as_ref(), key.as_ref())?),
        _ => None,
    };
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    info!("machines hub listening on {scheme}://{addr}");
    let options = crate::agents::HubOptions {
        tls,
        ..crate::agents::HubOptions::default()
    };
    Ok(crate::agents::spawn(listener, options))
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn fire_job(
    fire: &Fire,
    instances: &mut InstanceIds,
    now: jiff::Timestamp,
    config: &Config,
    coordinator: &mut Coordinator,
) {
    let job = &fire.job;
    let logdir = Path::new(&config.settings.logdir);
    if config.maintenance.global {
        info!(job = %job.name, "Maintenance mode active: {} not started", job.name);
        let record = joblog::Record::Maintenance {
            instance: &job.name,
            machine: "",
            why: "Global maintenance mode active",
        };
        crate::coordinator::job_log(logdir, &job.name, &record);
        return;
    }
    if let Some(running) = coordinator.running_instance(&job.name) {
        match job.concurrency {
            Concurrency::Forbid => {
                warn!(job = %job.name, "{running} is still running; this slot of {} is skipped (overlap)", job.name);
                crate::coordinator::job_log(
                    logdir,
                    &job.name,
                    &joblog::Record::Overlap { running: &running },
                );
                return;
            }
            Concurrency::Replace => {
                info!(job = %job.name, "{running} is replaced by a new run (concurrency: replace)");
                coordinator.kill(&running, None).await;
            }
            Concurrency::Allow => {}
        }
    }
    let instance = format!("{}_{}", job.name, instances.next(&job.name, now));
    if fire.missed > 0 {
        warn!(job = %job.name, missed = fire.missed, "{} earlier slot(s) of {} were missed (daemon stalled or clock jumped); firing once", fire.missed, job.name);
    }
    let late_ms = now.duration_since(fire.slot).as_millis();
    info!(job = %job.name, slot = %fire.slot, late_ms, "Firing {instance}!");
    coordinator
        .fire(
            job,
            instance,
            &config.settings,
            &config.maintenance.machines,
        )
        .await;
}

/// Loads the directory and logs every finding. `running` is the settings in force, whose
/// start-up-only values are kept.
fn load(
    dir: &Path,
    loader: &mut Loader,
    running: Option<&config::Settings>,
) -> Result<Config, DaemonError> {
    let files = config::read_dir(dir)?;
    let loaded = loader.load(&files);
    for d in &loaded.diagnostics {
        match d.severity {
            Severity::Error => error!("{d}"),
            Severity::Warning => warn!("{d}"),
        }
    }
    let mut config = loaded.config;
    if let Some(running) = running {
        for (key, old, new) in running.restart_required(&config.settings) {
            warn!(
                "saltpeter_config.{key} changed from {old} to {new}; this takes effect after a restart (still using {old})"
            );
        }
        config.settings = running.keep_startup_values(config.settings);
    }
    Ok(config)
}

fn reload(dir: &Path, loader: &mut Loader, config: &mut Config, planner: &mut Planner) {
    match load(dir, loader, Some(&config.settings)) {
        Ok(new) => {
            let changes = planner.set_jobs(&new.jobs, clock::now());
            info!(
                added = changes.added.len(),
                rescheduled = changes.rescheduled.len(),
                updated = changes.updated.len(),
                removed = changes.removed.len(),
                jobs = new.jobs.len(),
                "config reloaded"
            );
            debug!(?changes, "reload details");
            *config = new;
        }
        // The directory itself is gone or unreadable: keep everything running as it is.
        Err(e) => error!(error = %e, "reload failed; the running config stays in force"),
    }
}
