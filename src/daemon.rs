//! `saltpeter run`: loads the config directory, keeps it fresh (file-system notifications and
//! SIGHUP), fires due jobs by the wall clock, and carries out the API's commands (run now,
//! kill, maintenance, reload) one at a time. Wiring only: the decisions live in `config`,
//! `scheduler` and `engine`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use std::sync::Arc;

use tokio::sync::watch;

use crate::api;
use crate::clock::{self, Wake, WallTimer};
use crate::config::{self, Concurrency, Config, Diagnostic, Job, Loader, Severity};
use crate::control::{Command, Control, Refusal, RunRef};
use crate::coordinator::Coordinator;
use crate::history::db::Database;
use crate::history::fleet::{self, DaemonInfo};
use crate::history::{History, HistoryError, InFlight, MaintenanceState, Retention};
use crate::joblog;
use crate::journal::{Claim, SkipReason, SlotFate, Trigger};
use crate::metrics::Metrics;
use crate::salt::SaltSettings;
use crate::salt::bus::BusMessage;
use crate::scheduler::{Decision, InstanceIds, Planner};

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
    #[error("cannot listen for {what} on {addr}: {source}")]
    Listen {
        /// Which listener: the machines hub or the API.
        what: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("machines_ws_tls_cert/machines_ws_tls_key: {0}")]
    Tls(#[from] crate::agents::TlsError),
    #[error(transparent)]
    History(#[from] crate::history::HistoryError),
    #[error(transparent)]
    Randomness(#[from] crate::coordinator::RandomnessError),
}

/// Switches debug logging on or off (`saltpeter_config.debug`); `false` when the operator's
/// own log filter is in force and the switch was not applied.
pub type LogLevel = Box<dyn Fn(bool) -> bool + Send>;

/// Runs until SIGTERM or SIGINT.
pub async fn run(dir: PathBuf, log_level: LogLevel) -> Result<(), DaemonError> {
    // Run tokens come from the kernel's randomness: without it, refuse to start rather than
    // hand out guessable tokens.
    crate::coordinator::random_token()?;
    let mut loader = Loader::new(&crate::hostname());
    let (config, diagnostics) = load(&dir, &mut loader, None)?;
    let settings = config.settings.clone();
    let database = Database::parse(&settings.database).map_err(|source| HistoryError::Open {
        path: "saltpeter_config.database".into(),
        source,
    })?;
    let history = History::connect(
        &database,
        Retention {
            output_cap: usize::try_from(settings.output_cap).unwrap_or(usize::MAX),
            max_age_days: settings.history_max_age_days,
            max_runs_per_job: settings.history_max_runs_per_job,
        },
        crate::history::QUEUE_LIMIT,
    )?;
    // This daemon's row in the store: its heartbeat is its lease on the runs it owns. The
    // runs it owned before a restart are its own again.
    let me = DaemonInfo {
        name: settings.daemon_name.clone(),
        master: settings.master_name.clone(),
        host: crate::hostname(),
        pid: std::process::id(),
        version: crate::VERSION.into(),
        api_url: if settings.api_ws == Some(false) {
            String::new()
        } else {
            format!(
                "http://{}:{}",
                settings.default_saltpeter_server_host, settings.api_ws_port
            )
        },
        machines_url: settings.machines_ws_url(&settings.default_saltpeter_server_host),
    };
    let others = history.register(me, fleet::LEASE).await?;
    info!(daemon = %settings.daemon_name, database = %database.shown(), other_daemons = others, "history store open");
    let switched = history.maintenance().await.unwrap_or_default();
    // Runs in flight when the daemon last stopped: their wrappers are reconnecting.
    let node = format!("{}:{}", settings.daemon_name, std::process::id());
    let adopted: Vec<InFlight> = history
        .in_flight()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|run| match run.claimed_by.as_deref().and_then(live_daemon) {
            Some(pid) => {
                warn!(instance = %run.instance, pid, "{} was started by another saltpeter daemon on this database (pid {pid}), which is still running; it is not adopted here", run.instance);
                false
            }
            None => true,
        })
        .collect();
    // The plan goes on after each job's last claimed slot: what fell due while the daemon was
    // down is decided by each job's misfire policy at the first turn of the loop.
    let heads = history.heads().await.unwrap_or_default();
    let start = clock::now();
    // Joining daemons that are running (a shared store): they fire what falls due, so this
    // one plans from now on; what fell due while every daemon was down is caught up (by
    // each job's misfire policy) only by the first daemon back.
    let resume = if others > 0 {
        info!(
            others,
            "other daemons hold current leases on this store; planning from now (they fired what fell due before)"
        );
        HashMap::new()
    } else {
        heads
            .iter()
            .filter_map(|(job, h)| Some((job.clone(), h.resume_from?)))
            .collect()
    };
    let mut planner = Planner::resuming(resume, start);
    let changes = planner.set_jobs(&config.jobs, start);
    if others == 0
        && let Err(e) = history.planned(changes.fresh.clone(), start).await
    {
        warn!(error = %e, "cannot note the jobs planned afresh; slots due while the daemon is down before their first run will not be accounted for");
    }
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
    let (hub, mut hub_events) = start_hub(&config, &adopted).await?;
    // Salt: the master's settings, its event bus (subscribed before anything is published), and
    // a worker that publishes so a slow master never stalls this loop.
    let salt_settings = match SaltSettings::from_config(&settings.salt) {
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
    // Twice as many publishes at once as the master has request workers, so none of them
    // idles while a reply travels back: a burst of due jobs is published in parallel, and a
    // probe never waits behind a launch that is retrying.
    let (salt_reply_tx, mut salt_reply_rx) = mpsc::channel(1024);
    let pool = salt_settings.as_ref().map_or(1, |s| 2 * s.worker_threads);
    let publisher = crate::salt::publisher::Publisher::spawn(
        salt_settings
            .clone()
            .ok_or_else(|| "see the error at start-up".to_string()),
        pool,
        salt_reply_tx,
    );
    // Every step of every run goes to the history store.
    let metrics = Metrics::default();
    metrics.count_wrappers(hub.open_connections());
    metrics.watch_store(history.health());
    for (job, head) in &heads {
        if let Some(at) = head.last_fired {
            metrics.last_fired(job, at);
        }
    }
    let mut coordinator = Coordinator::new(
        hub,
        publisher,
        salt_settings,
        history.clone(),
        metrics.clone(),
    );
    // Notifications: each job's policy, the streaks a restart resumes, and the outbox's
    // sender (it picks up what was pending before the restart).
    coordinator.set_policies(&config.jobs, settings.notify_max_per_hour);
    match history.streaks().await {
        Ok(streaks) => coordinator.resume_streaks(streaks),
        Err(e) => warn!(error = %e, "cannot read the notification streaks; they start afresh"),
    }
    // Attempts of failed targets planned before a restart go ahead at their time.
    match history.pending_retries().await {
        Ok(pending) => coordinator.resume_retries(pending),
        Err(e) => warn!(error = %e, "cannot read the planned retries; they are not carried out"),
    }
    let (channels, channels_rx) = watch::channel(settings.notify_channels.clone());
    crate::notify::outbox::spawn(history.clone(), channels_rx, metrics.clone());
    for run in &adopted {
        coordinator.adopt(run, config.jobs.get(&run.job), &settings);
    }
    let (control, mut commands) = Control::new(256);
    let mut daemon = Daemon {
        dir,
        loader,
        config,
        diagnostics,
        switched,
        planner,
        instances: InstanceIds::default(),
        node,
        coordinator,
        history: history.clone(),
        channels,
        snapshot: None,
        metrics: metrics.clone(),
        log_level,
        lease: Lease {
            renewed: std::time::Instant::now(),
            tried: std::time::Instant::now(),
        },
        api_tokens: api::StoreTokens::default(),
    };
    daemon.apply_debug(None);
    let (snapshot_tx, snapshot_rx) = watch::channel(daemon.snapshot());
    daemon.snapshot = Some(snapshot_tx);
    if settings.api_ws == Some(false) {
        info!("api_ws: false; the HTTP API and web UI are off");
    } else {
        let addr = format!("{}:{}", settings.api_ws_bind_addr, settings.api_ws_port);
        let listener = bind(
            "the HTTP API and web UI (api_ws_bind_addr:api_ws_port)",
            &addr,
        )
        .await?;
        info!("API and web UI on http://{addr}");
        let state = api::AppState::new(control, history, snapshot_rx, &settings, metrics);
        daemon.api_tokens = state.store_tokens();
        // Before the first request: a stored token guards the API from its first moment.
        match daemon.history.api_tokens().await {
            Ok(tokens) => daemon.api_tokens.set(tokens),
            Err(e) => {
                warn!(error = %e, "cannot read the API tokens kept in the store; only the config's are accepted until the next heartbeat")
            }
        }
        tokio::spawn(api::serve(listener, state));
    }

    // Leases, adoption and commands: every heartbeat, and at once when PostgreSQL tells of a
    // command for this daemon.
    let mut beat = tokio::time::interval(fleet::BEAT_EVERY);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (wake_tx, mut wake_rx) = mpsc::channel::<String>(64);
    if let Database::Postgres(url) = &database {
        crate::history::db::listen(url.clone(), fleet::COMMANDS_CHANNEL, wake_tx);
    }
    loop {
        // A slow (or full) store is backpressure on wrappers (they spool), never memory here;
        // a stop is still heard while it lasts.
        tokio::select! {
            biased;
            _ = term.recv() => break,
            _ = int.recv() => break,
            () = daemon.history.writable() => {}
        }
        let deadline = [
            daemon.planner.next_deadline(),
            daemon.coordinator.next_retry(),
        ]
        .into_iter()
        .flatten()
        .min();
        let run_deadline = daemon.coordinator.next_deadline();
        tokio::select! {
            // In this order: what has arrived is handled before any deadline is judged, so a
            // backlog of wrapper messages never turns into a lost heartbeat.
            biased;
            _ = term.recv() => break,
            _ = int.recv() => break,
            Some(event) = hub_events.recv() => {
                daemon.renew_if_stale().await;
                daemon.coordinator.handle_hub(event);
                // The rest of a burst in the same turn (bounded): one per turn, this loop
                // would wait behind every ready connection task for each event.
                for _ in 1..crate::agents::DRAIN {
                    // A full store queue stops the burst too (the loop's top waits for it).
                    if !daemon.history.is_writable() {
                        break;
                    }
                    let Ok(event) = hub_events.try_recv() else { break };
                    daemon.coordinator.handle_hub(event);
                }
            }
            Some(message) = bus_rx.recv() => {
                daemon.renew_if_stale().await;
                if let BusMessage::Event(e) = &message {
                    let stamp = crate::salt::wire::get(&e.data, "_stamp")
                        .and_then(|v| crate::salt::wire::parse_stamp(&crate::salt::wire::value_text(v)));
                    daemon.metrics.bus_event(stamp);
                }
                match &message {
                    BusMessage::Connected(_) => daemon.metrics.bus_state(true),
                    BusMessage::Disconnected { .. } => daemon.metrics.bus_state(false),
                    _ => {}
                }
                daemon.coordinator.handle_bus(message);
            }
            Some(reply) = salt_reply_rx.recv() => {
                daemon.renew_if_stale().await;
                daemon.coordinator.handle_salt_reply(reply);
            }
            Some(command) = commands.recv() => daemon.handle_command(command).await,
            Some(()) = reload_rx.recv() => {
                info!("config directory changed; reloading");
                daemon.reload();
            }
            _ = hup.recv() => {
                info!("SIGHUP; reloading");
                daemon.reload();
            }
            wake = timer.sleep_until(deadline) => {
                let now = clock::now();
                match wake {
                    Ok(Wake::ClockChanged) => {
                        warn!(now = %now, "the wall clock was set; re-planning");
                        daemon.planner.clock_changed(now);
                    }
                    Ok(Wake::Deadline) => {}
                    Err(e) => error!(error = %e, "wall-clock timer failed"),
                }
                daemon.due(now).await;
                daemon.retry(now);
            }
            _ = sleep_until_opt(run_deadline) => {
                daemon.renew_if_stale().await;
                daemon.coordinator.handle_timeout();
            }
            _ = beat.tick() => daemon.beat().await,
            Some(whom) = wake_rx.recv() => {
                if whom.is_empty() || whom == daemon.config.settings.daemon_name {
                    daemon.carry_out_commands(None).await;
                }
            }
        }
    }
    info!("Saltpeter stopping");
    // What the store has been sent is written before the process ends.
    let _ = daemon.history.flush().await;
    Ok(())
}

/// The loop's state: the config in force, the schedule, the runs in flight.
struct Daemon {
    dir: PathBuf,
    loader: Loader,
    config: Config,
    diagnostics: Vec<Diagnostic>,
    /// Maintenance switched through the API (persisted), on top of the config file's.
    switched: MaintenanceState,
    planner: Planner,
    instances: InstanceIds,
    /// Who claims slots in the ledger (`host:pid`), shown to anyone refused one.
    node: String,
    coordinator: Coordinator,
    history: History,
    /// The notification channels in force, for the outbox's sender.
    channels: watch::Sender<crate::config::notify::Channels>,
    snapshot: Option<watch::Sender<Arc<api::Snapshot>>>,
    metrics: Metrics,
    log_level: LogLevel,
    lease: Lease,
    /// The API tokens kept in the store, as the API checks them (renewed every heartbeat).
    api_tokens: api::StoreTokens,
}

/// When this daemon's lease in the store was last renewed, and last tried.
struct Lease {
    renewed: std::time::Instant,
    tried: std::time::Instant,
}

impl Daemon {
    /// Maintenance in force: the config file's and the API's switches together.
    fn maintenance(&self) -> config::Maintenance {
        let mut m = self.config.maintenance.clone();
        m.global |= self.switched.global;
        for machine in &self.switched.machines {
            if !m.machines.contains(machine) {
                m.machines.push(machine.clone());
            }
        }
        m
    }

    fn snapshot(&self) -> Arc<api::Snapshot> {
        Arc::new(api::Snapshot {
            config: self.config.clone(),
            diagnostics: self.diagnostics.clone(),
            maintenance: self.maintenance(),
            switched: self.switched.clone(),
            changed: clock::now(),
        })
    }

    fn publish_snapshot(&self) {
        if let Some(tx) = &self.snapshot {
            tx.send_replace(self.snapshot());
        }
    }

    /// Everything due at `now`: each slot's fate is decided (the misfire policy, maintenance,
    /// the overlap rule), claimed in the ledger in one transaction, and only then carried out:
    /// a run starts only for a slot this daemon claimed.
    async fn due(&mut self, now: jiff::Timestamp) {
        // Jobs pinned to another master are that master's daemons' to claim.
        let master = &self.config.settings.master_name;
        let decisions: Vec<Decision> = self
            .planner
            .due(now)
            .into_iter()
            .filter(|d| d.job().master.as_ref().is_none_or(|m| m == master))
            .collect();
        if decisions.is_empty() {
            return;
        }
        let mut claims = Vec::with_capacity(decisions.len());
        // Jobs given a fire in this turn: a second fire of one (`misfire: all`) finds it running.
        let mut firing: HashMap<String, String> = HashMap::new();
        let global = self.maintenance().global;
        for decision in &decisions {
            let job = decision.job();
            let claim = match decision {
                Decision::Missed(m) => Claim {
                    job: job.name.clone(),
                    slot: Some(m.first),
                    last: (m.last != m.first).then_some(m.last),
                    count: m.count,
                    fate: SlotFate::Missed(m.reason),
                    trigger: Trigger::Schedule,
                    instance: None,
                    detail: if m.exact {
                        m.detail.clone()
                    } else {
                        format!("{} (counting stopped at {})", m.detail, m.count)
                    },
                    at: now,
                },
                Decision::Fire(f) => {
                    let running = firing
                        .get(&job.name)
                        .cloned()
                        .or_else(|| self.coordinator.running_instance(&job.name));
                    let (fate, instance, detail) = if global {
                        (
                            SlotFate::Skipped(SkipReason::Maintenance),
                            None,
                            "Global maintenance mode active".to_string(),
                        )
                    } else if let Some(running) =
                        running.filter(|_| job.concurrency == Concurrency::Forbid)
                    {
                        let detail = format!("{running} is still running");
                        (SlotFate::Skipped(SkipReason::Overlap), None, detail)
                    } else {
                        let instance = InstanceIds::slot(&job.name, f.slot);
                        firing.insert(job.name.clone(), instance.clone());
                        (SlotFate::Fired, Some(instance), String::new())
                    };
                    Claim {
                        job: job.name.clone(),
                        slot: Some(f.slot),
                        last: None,
                        count: 1,
                        fate,
                        trigger: if f.catch_up {
                            Trigger::CatchUp
                        } else {
                            Trigger::Schedule
                        },
                        instance,
                        detail,
                        at: now,
                    }
                }
            };
            claims.push(claim);
        }
        // A missed gap's notifications are stored with its row, in the claim's transaction.
        let notices: Vec<_> = claims
            .iter()
            .map(|c| self.coordinator.notices_for(c))
            .collect();
        let claiming = std::time::Instant::now();
        let answers = self
            .history
            .claim_notifying(claims.clone(), notices, &self.node)
            .await;
        let took = claiming.elapsed();
        self.metrics.claim_took(took);
        debug!(
            slots = claims.len(),
            took_ms = took.as_millis() as u64,
            "claimed in the ledger"
        );
        let answers = match answers {
            Ok(answers) => answers,
            Err(e) => {
                for claim in &claims {
                    error!(job = %claim.job, slot = ?claim.slot, error = %e, "cannot claim this slot of {} in the ledger; it is not fired", claim.job);
                    self.metrics.unclaimed(&claim.job);
                }
                return;
            }
        };
        let logdir = PathBuf::from(&self.config.settings.logdir);
        for ((decision, claim), answer) in decisions.iter().zip(&claims).zip(answers) {
            let job = decision.job().clone();
            let slot = claim.slot.map(|s| s.to_string()).unwrap_or_default();
            if let Err(taken) = answer {
                // Another daemon on the shared store won it: that is how several daemons
                // share the work, not a fault.
                let holder = taken
                    .claimed_by
                    .rsplit_once(':')
                    .map_or("", |(name, _)| name);
                if holder != self.config.settings.daemon_name {
                    self.metrics.claimed_elsewhere();
                    debug!(job = %job.name, %slot, claimed_by = %taken.claimed_by, "slot {slot} of {} claimed by daemon {}", job.name, taken.claimed_by);
                    continue;
                }
                warn!(
                    job = %job.name,
                    %slot,
                    claimed_by = %taken.claimed_by,
                    "slot {slot} of {} was already claimed ({}{}) by {}; not fired here",
                    job.name,
                    taken.state,
                    taken.instance.map(|i| format!(" as {i}")).unwrap_or_default(),
                    taken.claimed_by,
                );
                continue;
            }
            self.metrics.slot(claim);
            match claim.fate {
                SlotFate::Missed(reason) => {
                    warn!(job = %job.name, count = claim.count, reason = reason.as_str(), "{} slot(s) of {} missed from {slot}: {}", claim.count, job.name, claim.detail);
                }
                SlotFate::Skipped(SkipReason::Maintenance) => {
                    info!(job = %job.name, "Maintenance mode active: {} not started", job.name);
                    let record = joblog::Record::Maintenance {
                        instance: &job.name,
                        machine: "",
                        why: "Global maintenance mode active",
                    };
                    self.coordinator.job_log(&logdir, &job.name, &record);
                }
                SlotFate::Skipped(_) => {
                    let running = self
                        .coordinator
                        .running_instance(&job.name)
                        .unwrap_or_default();
                    warn!(job = %job.name, "{running} is still running; this slot of {} is skipped (overlap)", job.name);
                    self.coordinator.job_log(
                        &logdir,
                        &job.name,
                        &joblog::Record::Overlap { running: &running },
                    );
                }
                SlotFate::Fired => {
                    let Decision::Fire(fire) = decision else {
                        continue;
                    };
                    if job.concurrency == Concurrency::Replace {
                        let _ = self.make_room(&job);
                    }
                    let late = now.duration_since(fire.slot);
                    self.metrics.fire_lateness(late.unsigned_abs());
                    let instance = claim.instance.clone().unwrap_or_default();
                    if let Err(e) =
                        self.start(&job, &instance, claim.trigger, claim.slot, late.as_millis())
                    {
                        error!(job = %job.name, error = %e, "this slot of {} is claimed but not started", job.name);
                    }
                }
            }
        }
    }

    /// Starts the attempts of failed targets due by `now` (`retries`): a run of the same
    /// slot for those targets only, named after the slot's first run.
    fn retry(&mut self, now: jiff::Timestamp) {
        for plan in self.coordinator.due_retries(now) {
            let instance = plan.instance();
            let Some(job) = self.config.jobs.get(&plan.job).cloned() else {
                warn!(job = %plan.job, %instance, "{} is no longer configured; its planned attempt {instance} is dropped", plan.job);
                self.coordinator.retry_dropped(&plan);
                continue;
            };
            if self.maintenance().global {
                info!(job = %job.name, %instance, "Maintenance mode active: attempt {instance} not started");
                self.coordinator.retry_dropped(&plan);
                continue;
            }
            let attempt = Arc::new(Job {
                targets: config::Targets::List(plan.machines.clone()),
                target_type: config::TargetType::List,
                number_of_targets: 0,
                batch_size: 0,
                ..(*job).clone()
            });
            match self.start(&attempt, &instance, Trigger::Retry, plan.slot, 0) {
                Ok(()) => self.coordinator.attempt_started(&plan),
                Err(e) => {
                    error!(job = %job.name, error = %e, "attempt {instance} not started");
                    self.coordinator.retry_dropped(&plan);
                }
            }
        }
    }

    fn start(
        &mut self,
        job: &Arc<Job>,
        instance: &str,
        trigger: Trigger,
        slot: Option<jiff::Timestamp>,
        late_ms: i128,
    ) -> Result<(), crate::coordinator::RandomnessError> {
        match slot {
            Some(slot) => {
                info!(job = %job.name, trigger = trigger.as_str(), slot = %slot, late_ms, "Firing {instance}!")
            }
            None => info!(job = %job.name, trigger = trigger.as_str(), "Firing {instance}!"),
        }
        let maintenance = self.maintenance().machines;
        self.coordinator.fire(crate::coordinator::Firing {
            job,
            instance,
            settings: &self.config.settings,
            maintenance: &maintenance,
            trigger,
            scheduled: slot,
        })
    }

    /// "Run now": refused during global maintenance and while an instance runs (unless the
    /// job allows overlap or replaces). The loop runs one command at a time, so two clicks
    /// cannot both start.
    async fn run_now(&mut self, name: &str) -> Result<String, Refusal> {
        let job = self
            .config
            .jobs
            .get(name)
            .cloned()
            .ok_or_else(|| Refusal::UnknownJob(name.into()))?;
        if self.maintenance().global {
            return Err(Refusal::Maintenance(name.into()));
        }
        if let Some(running) = self
            .coordinator
            .running_instance(&job.name)
            .filter(|_| job.concurrency == Concurrency::Forbid)
        {
            return Err(Refusal::AlreadyRunning { running });
        }
        // A manual run is a ledger row too (with no slot), written before anything is sent.
        let instance = self.instances.manual(&job.name, clock::now());
        let claim = Claim {
            job: job.name.clone(),
            slot: None,
            last: None,
            count: 1,
            fate: SlotFate::Fired,
            trigger: Trigger::Manual,
            instance: Some(instance.clone()),
            detail: String::new(),
            at: clock::now(),
        };
        self.history
            .claim(vec![claim], &self.node)
            .await
            .map_err(|e| Refusal::Failed(format!("cannot record the run in the ledger: {e}")))?;
        let _ = self.make_room(&job);
        self.start(&job, &instance, Trigger::Manual, None, 0)
            .map_err(|e| Refusal::Failed(e.to_string()))?;
        Ok(instance)
    }

    /// The overlap rule before a start: `Err(running instance)` when the job forbids overlap;
    /// with `concurrency: replace` the running instance is killed first.
    fn make_room(&mut self, job: &Job) -> Result<(), String> {
        let Some(running) = self.coordinator.running_instance(&job.name) else {
            return Ok(());
        };
        match job.concurrency {
            Concurrency::Forbid => Err(running),
            Concurrency::Replace => {
                info!(job = %job.name, "{running} is replaced by a new run (concurrency: replace)");
                let _ = self.coordinator.kill(&running, None);
                Ok(())
            }
            Concurrency::Allow => Ok(()),
        }
    }

    async fn handle_command(&mut self, command: Command) {
        match command {
            Command::RunNow { job, reply } => {
                // Pinned to another master: a daemon of that master starts it.
                if let Some(master) = self.pinned_elsewhere(&job) {
                    match self.route_run_now(&job, &master).await {
                        Ok((id, daemon)) => {
                            let history = self.history.clone();
                            tokio::spawn(async move {
                                let _ = reply.send(routed_outcome(&history, id, &daemon).await);
                            });
                        }
                        Err(why) => {
                            warn!(job = %job, "run now refused: {why}");
                            let _ = reply.send(Err(why));
                        }
                    }
                    return;
                }
                let result = self.run_now(&job).await;
                match &result {
                    Ok(instance) => info!(job = %job, "run now: {instance} started"),
                    Err(why) => warn!(job = %job, "run now refused: {why}"),
                }
                let _ = reply.send(result);
            }
            Command::Kill {
                run,
                machine,
                reply,
            } => {
                let instance = match run {
                    RunRef::Instance(i) => Some(i),
                    RunRef::Job(job) => self.coordinator.running_instance(&job),
                };
                let result = match instance {
                    None => Err(Refusal::NotRunning("(no instance of that job)".into())),
                    Some(i) => {
                        info!(instance = %i, machine = ?machine, "kill requested");
                        match self.coordinator.kill(&i, machine.as_deref()) {
                            Ok(()) => Ok(i),
                            // Not here: maybe another daemon on the store owns it.
                            Err(Refusal::NotRunning(_)) => self.route_kill(&i, machine).await,
                            Err(other) => Err(other),
                        }
                    }
                };
                let _ = reply.send(result);
            }
            Command::Maintenance { change, reply } => {
                let result = self
                    .history
                    .set_maintenance(change.machine.clone(), change.on)
                    .await
                    .map_err(|e| Refusal::Failed(e.to_string()));
                if let Ok(state) = &result {
                    info!(machine = ?change.machine, on = change.on, "maintenance switched");
                    self.switched = state.clone();
                    self.publish_snapshot();
                }
                let _ = reply.send(result.map(|_| ()));
            }
            Command::Reload { reply } => {
                info!("reload requested through the API");
                self.reload();
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// Renews this daemon's lease; lets go of runs another daemon took over, takes over runs
    /// whose owner's lease ran out, and carries out commands sent to this daemon.
    /// Woken after a pause (SIGSTOP, a frozen VM) past a heartbeat or two, the lease may have
    /// run out and another daemon adopted some runs: nothing is judged before the lease is
    /// renewed and those runs let go. An instant's comparison per input otherwise.
    async fn renew_if_stale(&mut self) {
        if self.lease_stale() {
            self.beat().await;
        }
    }

    /// Whether the last renewal of this daemon's lease is older than two heartbeats (and no
    /// renewal was tried in the last second, so a store that is away is not asked per event).
    fn lease_stale(&self) -> bool {
        let now = std::time::Instant::now();
        now.duration_since(self.lease.renewed) > 2 * fleet::BEAT_EVERY
            && now.duration_since(self.lease.tried) > Duration::from_secs(1)
    }

    async fn beat(&mut self) {
        self.lease.tried = std::time::Instant::now();
        let beat = match self.history.beat(fleet::LEASE).await {
            Ok(beat) => {
                self.lease.renewed = self.lease.tried;
                beat
            }
            Err(e) => {
                warn!(error = %e, "cannot renew this daemon's lease in the store; retrying at the next heartbeat");
                return;
            }
        };
        self.metrics
            .handed_over(beat.adopted.len(), beat.lost.len());
        for instance in &beat.lost {
            if self.coordinator.release(instance) {
                warn!(%instance, "{instance} was taken over by another daemon (this one's lease ran out); it no longer acts on it");
            }
        }
        for run in &beat.adopted {
            info!(instance = %run.instance, job = %run.job, "adopting {}: the daemon that owned it stopped renewing its lease", run.instance);
            let hub_run = hub_adopted(run, &self.config);
            let job = self.config.jobs.get(&run.job).cloned();
            self.coordinator
                .adopt_live(run, hub_run, job.as_ref(), &self.config.settings);
        }
        self.coordinator.set_peers(beat.peers);
        self.api_tokens.set(beat.api_tokens);
        // Switched through another daemon's API (a shared store): in force here too.
        if beat.maintenance != self.switched {
            info!(global = beat.maintenance.global, machines = ?beat.maintenance.machines, "maintenance switched through another daemon");
            self.switched = beat.maintenance;
            self.publish_snapshot();
        }
        self.carry_out_commands(Some(beat.commands)).await;
    }

    /// Carries out the commands other daemons' APIs queued for this one (`None`: read them).
    async fn carry_out_commands(&mut self, commands: Option<Vec<fleet::CommandRow>>) {
        let commands = match commands {
            Some(c) => c,
            None => match self.history.commands().await {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "cannot read the commands for this daemon");
                    return;
                }
            },
        };
        for c in commands {
            let outcome = match (c.kind.as_str(), &c.instance) {
                ("kill", Some(instance)) => {
                    info!(%instance, machine = ?c.machine, "kill requested through another daemon");
                    match self.coordinator.kill(instance, c.machine.as_deref()) {
                        Ok(()) => "done".to_string(),
                        Err(why) => format!("refused: {why}"),
                    }
                }
                ("run-now", _) => match c.job.as_deref() {
                    Some(job) => match self.run_now(job).await {
                        Ok(instance) => {
                            info!(%job, "run now through another daemon: {instance} started");
                            format!("started {instance}")
                        }
                        Err(why) => format!("refused: {why}"),
                    },
                    None => "refused: no job named".to_string(),
                },
                (kind, _) => format!("refused: unknown command {kind}"),
            };
            if let Err(e) = self.history.command_done(c.id, outcome).await {
                warn!(error = %e, id = c.id, "cannot record a command as carried out");
            }
        }
    }

    /// The master `job` is pinned to, when that is not this daemon's (`master: NAME`).
    fn pinned_elsewhere(&self, job: &str) -> Option<String> {
        self.config
            .jobs
            .get(job)?
            .master
            .clone()
            .filter(|m| *m != self.config.settings.master_name)
    }

    /// A run-now of a job pinned to another master, queued for a live daemon of that master:
    /// the command's id and the daemon's name.
    async fn route_run_now(&mut self, job: &str, master: &str) -> Result<(i64, String), Refusal> {
        let daemons = self
            .history
            .daemons(fleet::LEASE)
            .await
            .map_err(|e| Refusal::Failed(e.to_string()))?;
        let Some(daemon) = daemons
            .into_iter()
            .find(|d| d.alive && d.info.master == master)
        else {
            return Err(Refusal::Failed(format!(
                "{job} is pinned to master {master} (master: {master}), and no daemon of that master is alive"
            )));
        };
        let command = fleet::CommandRow {
            id: 0,
            kind: "run-now".into(),
            instance: None,
            machine: None,
            job: Some(job.to_string()),
        };
        let id = self
            .history
            .send_command(&daemon.info.name, command)
            .await
            .map_err(|e| Refusal::Failed(e.to_string()))?;
        info!(%job, daemon = %daemon.info.name, "run now of {job} sent to daemon {} (master {master})", daemon.info.name);
        Ok((id, daemon.info.name))
    }

    /// A kill of a run this daemon does not hold: sent to the daemon that owns it, if any.
    async fn route_kill(
        &mut self,
        instance: &str,
        machine: Option<String>,
    ) -> Result<String, Refusal> {
        let owner = self
            .history
            .owner_of(instance)
            .await
            .map_err(|e| Refusal::Failed(e.to_string()))?;
        match owner {
            Some(owner) if owner != self.config.settings.daemon_name => {
                let command = fleet::CommandRow {
                    id: 0,
                    kind: "kill".into(),
                    instance: Some(instance.to_string()),
                    machine,
                    job: None,
                };
                self.history
                    .send_command(&owner, command)
                    .await
                    .map_err(|e| Refusal::Failed(e.to_string()))?;
                info!(%instance, %owner, "kill of {instance} sent to daemon {owner}, which owns it");
                Ok(instance.to_string())
            }
            _ => Err(Refusal::NotRunning(instance.to_string())),
        }
    }

    /// `saltpeter_config.debug` sets the log level (at start, and on a reload that changed it).
    fn apply_debug(&self, was: Option<bool>) {
        let on = self.config.settings.debug;
        if was == Some(on) || (was.is_none() && !on) {
            return;
        }
        let level = if on { "debug" } else { "info" };
        if (self.log_level)(on) {
            info!("saltpeter_config.debug: {on}; log level set to {level}");
        } else {
            warn!(
                "saltpeter_config.debug: {on} is ignored: the log filter given with --log or SALTPETER_LOG is in force"
            );
        }
    }

    fn reload(&mut self) {
        match load(&self.dir, &mut self.loader, Some(&self.config.settings)) {
            Ok((new, diagnostics)) => {
                let now = clock::now();
                let changes = self.planner.set_jobs(&new.jobs, now);
                if !changes.fresh.is_empty() {
                    let (history, fresh) = (self.history.clone(), changes.fresh.clone());
                    tokio::spawn(async move {
                        if let Err(e) = history.planned(fresh, now).await {
                            warn!(error = %e, "cannot note the jobs planned afresh");
                        }
                    });
                }
                info!(
                    added = changes.added.len(),
                    rescheduled = changes.rescheduled.len(),
                    updated = changes.updated.len(),
                    removed = changes.removed.len(),
                    jobs = new.jobs.len(),
                    "config reloaded"
                );
                debug!(?changes, "reload details");
                let was = self.config.settings.debug;
                self.coordinator
                    .set_policies(&new.jobs, new.settings.notify_max_per_hour);
                self.channels
                    .send_replace(new.settings.notify_channels.clone());
                self.config = new;
                self.apply_debug(Some(was));
                self.diagnostics = diagnostics;
                self.publish_snapshot();
            }
            // The directory itself is gone or unreadable: keep everything running as it is.
            Err(e) => error!(error = %e, "reload failed; the running config stays in force"),
        }
    }
}

/// The pid in `host:pid` when it names another saltpeter process alive on this machine: a
/// second daemon started by mistake on the same database must leave its runs alone.
fn live_daemon(claimed_by: &str) -> Option<u32> {
    let (host, pid) = claimed_by.rsplit_once(':')?;
    let pid: u32 = pid.parse().ok()?;
    if host != crate::hostname() || pid == std::process::id() {
        return None;
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim() == "saltpeter").then_some(pid)
}

/// Binds the machines hub (wrappers connect here) on the configured address, with TLS when a
/// certificate is configured.
async fn start_hub(
    config: &config::Config,
    adopted: &[InFlight],
) -> Result<
    (
        crate::agents::Hub,
        tokio::sync::mpsc::Receiver<crate::agents::HubEvent>,
    ),
    DaemonError,
> {
    let settings = &config.settings;
    let addr = format!(
        "{}:{}",
        settings.machines_ws_bind_addr, settings.machines_ws_port
    );
    let listener = bind("wrappers (machines_ws_bind_addr:machines_ws_port)", &addr).await?;
    let tls = match (
        &settings.machines_ws_tls_cert,
        &settings.machines_ws_tls_key,
    ) {
        (Some(cert), Some(key)) => Some(crate::agents::server_tls(cert.as_ref(), key.as_ref())?),
        _ => None,
    };
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    info!("machines hub listening on {scheme}://{addr}");
    let adopted = adopted.iter().map(|r| hub_adopted(r, config)).collect();
    let options = crate::agents::HubOptions {
        tls,
        adopted,
        max_output_rate: settings.machines_ws_max_output_rate,
    };
    Ok(crate::agents::spawn(listener, options))
}

/// How long a run-now sent to another daemon is waited for.
const ROUTED_WAIT: Duration = Duration::from_secs(15);

/// The answer to a run-now another daemon carries out: read from its command row (that daemon
/// is woken by NOTIFY or its next heartbeat), a short bounded wait on a task of its own.
async fn routed_outcome(history: &History, id: i64, daemon: &str) -> Result<String, Refusal> {
    let deadline = tokio::time::Instant::now() + ROUTED_WAIT;
    loop {
        match history.command_outcome(id).await {
            Ok(Some(outcome)) => {
                return match outcome.strip_prefix("started ") {
                    Some(instance) => Ok(instance.to_string()),
                    None => Err(Refusal::Failed(format!("daemon {daemon}: {outcome}"))),
                };
            }
            Ok(None) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(None) => {
                return Err(Refusal::Failed(format!(
                    "daemon {daemon} has not started it within {} s (it may still)",
                    ROUTED_WAIT.as_secs()
                )));
            }
            Err(e) => return Err(Refusal::Failed(e.to_string())),
        }
    }
}

/// A run from the store as the hub takes it over: its wrappers resume at the stored seq.
fn hub_adopted(run: &InFlight, config: &config::Config) -> crate::agents::Adopted {
    crate::agents::Adopted {
        instance: run.instance.clone(),
        job_name: run.job.clone(),
        token: Some(run.token.clone()),
        tokenless: config
            .jobs
            .get(&run.job)
            .is_some_and(|j| crate::coordinator::accepts_tokenless(j, &config.settings)),
        targets: run
            .open
            .iter()
            .map(|t| (t.machine.clone(), t.next_seq))
            .collect(),
    }
}

async fn bind(what: &'static str, addr: &str) -> Result<tokio::net::TcpListener, DaemonError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Listen {
            what,
            addr: addr.to_string(),
            source,
        })
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Loads the directory and logs every finding. `running` is the settings in force, whose
/// start-up-only values are kept.
fn load(
    dir: &Path,
    loader: &mut Loader,
    running: Option<&config::Settings>,
) -> Result<(Config, Vec<Diagnostic>), DaemonError> {
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
    Ok((config, loaded.diagnostics))
}
