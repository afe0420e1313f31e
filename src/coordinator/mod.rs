//! The one owner of every run in flight: turns a fire into a publish through Salt, feeds each
//! [`Run`] what Salt's event bus and the machines hub report (routing by jid and instance), and
//! carries out the runs' actions. Publishing happens in a separate task so a slow master never
//! stalls the loop. Wiring only: the decisions are the engine's.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rmpv::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::agents::{Hub, HubCommand, HubEvent, HubEventKind};
use crate::config::{Job, Settings, TargetType, Targets};
use crate::control::Refusal;
use crate::engine::{Action, Mono, Run, RunSpec, WrapperEvent};
use crate::history::{History, InFlight};
use crate::joblog;
use crate::journal::{RunEvent, Trigger};
use crate::metrics::Metrics;
use crate::salt::bus::BusMessage;
use crate::salt::gather::{Gather, GatherAction, MinionState};
use crate::salt::wire::{self, JidGen};
use crate::salt::{
    JobRet, Publish, PublishError, Published, SaltClient, SaltSettings, Tgt, jobcache,
};

/// How long Salt returns are awaited before silent minions are probed, and how long a probe
/// may take (Salt's own defaults are 5 and 10 s).
const GATHER_INTERVAL: Duration = Duration::from_secs(10);
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a launch is retried while the master cannot be reached.
const LAUNCH_RETRY_FOR: Duration = Duration::from_secs(300);

/// A publish for the Salt worker, and what it answers.
#[derive(Debug)]
pub struct SaltRequest {
    instance: String,
    publish: Publish,
    purpose: Purpose,
}

/// Why something is published.
#[derive(Clone, Debug)]
pub enum Purpose {
    /// The job itself (the wrapper, or the command in legacy mode).
    Launch,
    /// `test.ping` to find the responsive targets first (subsets, batches, maintenance).
    Resolve,
    /// `saltutil.find_job` to these silent minions.
    Probe(Vec<String>),
    /// `saltutil.term_job` (legacy kill).
    Term,
}

#[derive(Debug)]
pub struct SaltReply {
    instance: String,
    purpose: Purpose,
    result: Result<Published, String>,
}

/// Publishes one request at a time; retries a launch while the master is unreachable (a busy
/// or restarting master must not fail a job).
pub async fn salt_worker(
    settings: Option<SaltSettings>,
    mut requests: mpsc::UnboundedReceiver<SaltRequest>,
    replies: mpsc::Sender<SaltReply>,
) {
    let mut client = settings.map(SaltClient::new);
    while let Some(req) = requests.recv().await {
        let result = match client.as_mut() {
            None => Err("the Salt master's settings could not be read (see saltpeter_config.salt_master_config)".into()),
            Some(client) => {
                let started = Instant::now();
                let mut backoff = Duration::from_millis(200);
                loop {
                    match client.publish(&req.publish).await {
                        Ok(p) => break Ok(p),
                        Err(e @ (PublishError::Connect { .. } | PublishError::Timeout { .. } | PublishError::Transport { .. }))
                            if matches!(req.purpose, Purpose::Launch | Purpose::Resolve) && started.elapsed() < LAUNCH_RETRY_FOR =>
                        {
                            warn!(instance = %req.instance, error = %e, "Salt master unreachable; retrying the launch");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                        Err(e) => break Err(e.to_string()),
                    }
                }
            }
        };
        let reply = SaltReply {
            instance: req.instance,
            purpose: req.purpose,
            result,
        };
        if replies.send(reply).await.is_err() {
            return;
        }
    }
}

struct RunCtx {
    run: Run,
    jid: String,
    gather: Option<Gather>,
    /// Where the job's text log goes (`saltpeter_config.logdir` when it fired).
    logdir: std::path::PathBuf,
    /// The job's publish; batches change only its target.
    template: Publish,
    /// Batches still to publish (`batch_size`), each after the previous one is done.
    batches: VecDeque<Vec<String>>,
    /// The `test.ping` that finds the responsive targets, while it is out.
    resolving: Option<Resolving>,
    /// `number_of_targets` (0: all).
    pick: usize,
    /// `batch_size` (0: all at once).
    batch_size: usize,
    /// Machines under maintenance when the run fired.
    maintenance: Vec<String>,
    /// Bytes of each target's output already reported to the journal.
    streamed: HashMap<String, usize>,
}

impl Coordinator {
    /// Routes `jid`'s returns to `instance` (in `map`: launches, resolutions or probes) and
    /// remembers it, so the run's end removes exactly its own entries.
    fn route(&mut self, map: Route, jid: &str, instance: &str) {
        let table = match map {
            Route::Launch => &mut self.jids,
            Route::Resolve => &mut self.resolves,
            Route::Probe => &mut self.probes,
        };
        table.insert(jid.to_string(), instance.to_string());
        self.routes
            .entry(instance.to_string())
            .or_default()
            .push(jid.to_string());
    }

    /// The run's end: its routes, its index entry and its context go.
    fn forget(&mut self, instance: &str) {
        for jid in self.routes.remove(instance).unwrap_or_default() {
            self.jids.remove(&jid);
            self.resolves.remove(&jid);
            self.probes.remove(&jid);
        }
        if let Some(ctx) = self.runs.remove(instance) {
            let job = &ctx.run.spec().job;
            if let Some(list) = self.by_job.get_mut(job) {
                list.retain(|i| i != instance);
                if list.is_empty() {
                    self.by_job.remove(job);
                }
            }
        }
    }

    fn insert_run(&mut self, instance: String, ctx: RunCtx) {
        self.by_job
            .entry(ctx.run.spec().job.clone())
            .or_default()
            .push(instance.clone());
        self.runs.insert(instance, ctx);
    }
}

/// Where every step of every run goes: the history store (in order) and the metrics. A field
/// of its own, so events can be recorded while a run's context is borrowed.
struct Journal {
    history: History,
    metrics: Metrics,
}

impl Journal {
    fn record(&self, event: RunEvent) {
        self.metrics.observe(&event);
        self.history.record(event);
    }
}

#[derive(Clone, Copy)]
enum Route {
    Launch,
    Resolve,
    Probe,
}

struct Resolving {
    expected: Vec<String>,
    missing: Vec<String>,
    answered: BTreeSet<String>,
    deadline: Mono,
}

/// How long the targets' `test.ping` is awaited before non-responders count as down.
const RESOLVE_WAIT: Duration = Duration::from_secs(10);

/// Appends to the job's text log; a log that cannot be written is reported, not fatal.
///
/// The record is formatted here and written by a background thread, in order: a burst of due
/// jobs must not wait on thousands of file opens.
pub fn job_log(logdir: &std::path::Path, job: &str, record: &joblog::Record<'_>) {
    let text = joblog::format(record, crate::clock::now());
    let _ = job_log_writer().send((logdir.to_path_buf(), job.to_string(), text));
}

type LogLine = (std::path::PathBuf, String, String);

fn job_log_writer() -> &'static std::sync::mpsc::Sender<LogLine> {
    static WRITER: std::sync::OnceLock<std::sync::mpsc::Sender<LogLine>> =
        std::sync::OnceLock::new();
    WRITER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<LogLine>();
        std::thread::spawn(move || {
            for (logdir, job, text) in rx {
                if let Err(e) = joblog::append_text(&logdir, &job, &text) {
                    warn!(error = %e, logdir = %logdir.display(), "cannot write the job log of {job}");
                }
            }
        });
        tx
    })
}

pub struct Coordinator {
    origin: Instant,
    runs: HashMap<String, RunCtx>,
    /// Launch jid → instance.
    jids: HashMap<String, String>,
    /// Probe jid → instance.
    probes: HashMap<String, String>,
    /// Target-resolution `test.ping` jid → instance.
    resolves: HashMap<String, String>,
    /// Instance → every jid routed to it (so a run's end costs its own size, not all runs').
    routes: HashMap<String, Vec<String>>,
    /// Job → its instances in flight (the overlap check is a lookup).
    by_job: HashMap<String, Vec<String>>,
    jid_gen: JidGen,
    hub: Hub,
    /// Unbounded on purpose: a burst of due jobs must never stall the loop (each request is
    /// small, and there is at most one per run and probe round).
    salt: mpsc::UnboundedSender<SaltRequest>,
    salt_settings: Option<SaltSettings>,
    bus_down: bool,
    journal: Journal,
    /// Hub commands that must wait until the store has committed what came before them.
    after_commit: mpsc::UnboundedSender<HubCommand>,
}

impl Coordinator {
    pub fn new(
        hub: Hub,
        salt: mpsc::UnboundedSender<SaltRequest>,
        salt_settings: Option<SaltSettings>,
        history: History,
        metrics: Metrics,
    ) -> Coordinator {
        let (after_commit, mut pending) = mpsc::unbounded_channel::<HubCommand>();
        let (store, to_hub) = (history.clone(), hub.clone());
        tokio::spawn(async move {
            // In order, and one commit for every burst.
            while let Some(first) = pending.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = pending.try_recv() {
                    batch.push(more);
                }
                if store.flush().await.is_err() {
                    return;
                }
                for command in batch {
                    to_hub.send(command).await;
                }
            }
        });
        Coordinator {
            after_commit,
            origin: Instant::now(),
            runs: HashMap::new(),
            jids: HashMap::new(),
            probes: HashMap::new(),
            resolves: HashMap::new(),
            routes: HashMap::new(),
            by_job: HashMap::new(),
            jid_gen: JidGen::default(),
            hub,
            salt,
            salt_settings,
            bus_down: false,
            journal: Journal { history, metrics },
        }
    }

    /// Records one step of a run (or a skipped slot) in the history and the metrics.
    pub fn record(&self, event: RunEvent) {
        self.journal.record(event);
    }

    /// Takes over a run that was in flight when the daemon stopped: its wrappers reconnect to
    /// the hub (registered already, see [`crate::agents::Adopted`]), confirmed targets get a
    /// fresh heartbeat clock, unconfirmed ones are looked for in Salt's job cache and probed.
    pub async fn adopt(&mut self, run: &InFlight, job: Option<&Arc<Job>>, settings: &Settings) {
        let now = self.now();
        let spec = run_spec(&run.job, &run.instance, job.map(|j| &**j));
        let jid = run.jid.clone().unwrap_or_else(|| "-".into());
        let machines: Vec<String> = run.open.iter().map(|t| t.machine.clone()).collect();
        let mut engine = Run::new(spec);
        for (m, code) in &run.done {
            engine.handle_recovered(m, *code);
        }
        engine.handle_published(&jid, &machines, &[], now);
        for t in run.open.iter().filter(|t| t.confirmed) {
            engine.handle_wrapper(&t.machine, WrapperEvent::Heartbeat, now);
        }
        let unconfirmed = engine.unconfirmed();
        info!(
            instance = %run.instance,
            confirmed = machines.len() - unconfirmed.len(),
            unconfirmed = unconfirmed.len(),
            "resuming a run that was in flight before the restart"
        );
        let gather = (!unconfirmed.is_empty() && run.jid.is_some())
            .then(|| Gather::new(&jid, &unconfirmed, &[], now, GATHER_INTERVAL, PROBE_TIMEOUT));
        let template = match job {
            Some(j) if j.use_wrapper => launch(j, &run.instance, settings, &run.token),
            Some(j) => launch_legacy(j, &run.instance),
            None => Publish::new(Tgt::List(machines.clone()), "list", "cmd.run_all"),
        };
        self.insert_run(
            run.instance.clone(),
            RunCtx {
                run: engine,
                jid: jid.clone(),
                gather,
                logdir: settings.logdir.clone().into(),
                template,
                batches: VecDeque::new(),
                resolving: None,
                pick: 0,
                batch_size: 0,
                maintenance: Vec::new(),
                streamed: HashMap::new(),
            },
        );
        if run.jid.is_some() {
            self.route(Route::Launch, &jid, &run.instance);
            // Returns that landed while the daemon was down are in the job cache.
            self.recover_jid(&jid, &run.instance).await;
        }
        self.settle(&run.instance).await;
    }

    fn now(&self) -> Mono {
        self.origin.elapsed()
    }

    /// The instance of `job` in flight, if any.
    pub fn running_instance(&self, job: &str) -> Option<String> {
        self.by_job.get(job).and_then(|l| l.first().cloned())
    }

    /// Starts a run of `job` as `instance` (`<job>_<id>`). `maintenance` are the machines under
    /// maintenance now; `scheduled` is the slot it was due at (none for a manual run).
    pub async fn fire(
        &mut self,
        job: &Arc<Job>,
        instance: String,
        settings: &Settings,
        maintenance: &[String],
        trigger: Trigger,
        scheduled: Option<jiff::Timestamp>,
    ) {
        let token = random_token();
        self.record(RunEvent::Started {
            instance: instance.clone(),
            job: job.name.clone(),
            trigger,
            scheduled,
            at: crate::clock::now(),
            token: token.clone(),
        });
        let spec = run_spec(&job.name, &instance, Some(job));
        // Registered before publishing: wrappers (and returns) can beat the publish reply.
        self.hub
            .send(HubCommand::Register {
                instance: instance.clone(),
                job_name: job.name.clone(),
                machines: None,
                token: Some(token.clone()),
            })
            .await;
        let template = if job.use_wrapper {
            launch(job, &instance, settings, &token)
        } else {
            launch_legacy(job, &instance)
        };
        let resolve = job.number_of_targets > 0 || job.batch_size > 0 || !maintenance.is_empty();
        self.insert_run(
            instance.clone(),
            RunCtx {
                run: Run::new(spec),
                jid: String::new(),
                gather: None,
                logdir: settings.logdir.clone().into(),
                template: template.clone(),
                batches: VecDeque::new(),
                resolving: None,
                pick: job.number_of_targets as usize,
                batch_size: job.batch_size as usize,
                maintenance: maintenance.to_vec(),
                streamed: HashMap::new(),
            },
        );
        job_log(
            std::path::Path::new(&settings.logdir),
            &job.name,
            &joblog::Record::Start {
                instance: &instance,
            },
        );
        if resolve {
            // Find the responsive targets first, as the original's test.ping did.
            let mut ping = Publish::new(template.tgt.clone(), &template.tgt_type, "test.ping");
            ping.jid = self.jid_gen.next(crate::clock::now());
            self.route(Route::Resolve, &ping.jid, &instance);
            let _ = self.salt.send(SaltRequest {
                instance,
                publish: ping,
                purpose: Purpose::Resolve,
            });
        } else {
            self.launch(&instance, None).await;
        }
    }

    /// Publishes the run's job, to `batch` (a list target) or to the job's own target.
    async fn launch(&mut self, instance: &str, batch: Option<Vec<String>>) {
        let Some(ctx) = self.runs.get_mut(instance) else {
            return;
        };
        let mut publish = ctx.template.clone();
        if let Some(batch) = batch {
            publish.tgt = Tgt::List(batch);
            publish.tgt_type = "list".into();
        }
        publish.jid = self.jid_gen.next(crate::clock::now());
        ctx.jid = publish.jid.clone();
        let jid = publish.jid.clone();
        self.route(Route::Launch, &jid, instance);
        let _ = self.salt.send(SaltRequest {
            instance: instance.into(),
            publish,
            purpose: Purpose::Launch,
        });
    }

    pub async fn handle_salt_reply(&mut self, reply: SaltReply) {
        let now = self.now();
        let Some(ctx) = self.runs.get_mut(&reply.instance) else {
            return;
        };
        match (reply.purpose, reply.result) {
            (Purpose::Launch, Ok(p)) => {
                let job = ctx.run.spec().job.clone();
                for m in &p.minions {
                    job_log(
                        &ctx.logdir,
                        &job,
                        &joblog::Record::MachineStart {
                            instance: &reply.instance,
                            machine: m,
                        },
                    );
                }
                let mut machines = p.minions.clone();
                machines.extend(p.missing.iter().cloned());
                self.journal.record(RunEvent::Published {
                    instance: reply.instance.clone(),
                    jid: p.jid.clone(),
                    machines,
                });
                if p.minions.is_empty() && p.missing.is_empty() {
                    job_log(
                        &ctx.logdir,
                        &job,
                        &joblog::Record::NoMachines {
                            instance: &reply.instance,
                        },
                    );
                }
                ctx.run
                    .handle_published(&p.jid, &p.minions, &p.missing, now);
                ctx.gather = Some(Gather::new(
                    &p.jid,
                    &p.minions,
                    &p.missing,
                    now,
                    GATHER_INTERVAL,
                    PROBE_TIMEOUT,
                ));
            }
            (Purpose::Launch | Purpose::Resolve, Err(e)) => ctx.run.handle_publish_failed(&e, now),
            (Purpose::Resolve, Ok(p)) => {
                ctx.resolving = Some(Resolving {
                    expected: p.minions,
                    missing: p.missing,
                    answered: BTreeSet::new(),
                    deadline: now + RESOLVE_WAIT,
                });
                self.check_resolved(&reply.instance, false).await;
            }
            (Purpose::Term, _) => {}
            (Purpose::Probe(minions), Ok(p)) => {
                self.route(Route::Probe, &p.jid, &reply.instance);
                debug!(instance = %reply.instance, ?minions, "probing silent minions");
            }
            (Purpose::Probe(minions), Err(_)) => {
                if let Some(g) = ctx.gather.as_mut() {
                    g.handle_probe_failed(&minions);
                }
            }
        }
        self.settle(&reply.instance).await;
    }

    /// Once every pinged target answered (or `timed_out`): choose the run's targets and publish
    /// the first batch.
    async fn check_resolved(&mut self, instance: &str, timed_out: bool) {
        let now = self.now();
        let Some(ctx) = self.runs.get_mut(instance) else {
            return;
        };
        let Some(r) = &ctx.resolving else { return };
        if !timed_out && r.answered.len() < r.expected.len() {
            return;
        }
        let r = ctx.resolving.take().expect("checked");
        let mut down: Vec<String> = r
            .expected
            .iter()
            .filter(|m| !r.answered.contains(*m))
            .cloned()
            .collect();
        down.extend(r.missing.iter().cloned());
        let job = ctx.run.spec().job.clone();
        let mut chosen: Vec<String> = Vec::new();
        for m in r.expected.iter().filter(|m| r.answered.contains(*m)) {
            if ctx.maintenance.contains(m) {
                info!("Target under maintenance: {m} is left out of {instance}");
                let record = joblog::Record::Maintenance {
                    instance,
                    machine: m,
                    why: "Target under maintenance",
                };
                job_log(&ctx.logdir, &job, &record);
                self.journal.record(RunEvent::MachineSkipped {
                    instance: instance.into(),
                    machine: m.clone(),
                });
            } else {
                chosen.push(m.clone());
            }
        }
        if ctx.pick > 0 || ctx.batch_size > 0 {
            shuffle(&mut chosen);
        }
        if ctx.pick > 0 {
            chosen.truncate(ctx.pick);
        }
        let size = if ctx.batch_size > 0 {
            ctx.batch_size
        } else {
            chosen.len().max(1)
        };
        ctx.batches = chosen.chunks(size).map(<[String]>::to_vec).collect();
        ctx.run.handle_resolved(&down, ctx.batches.len(), now);
        match ctx.batches.pop_front() {
            Some(first) => self.launch(instance, Some(first)).await,
            None => {
                job_log(&ctx.logdir, &job, &joblog::Record::NoMachines { instance });
                ctx.run.handle_published("-", &[], &[], now);
            }
        }
        self.settle(instance).await;
    }

    pub async fn handle_bus(&mut self, message: BusMessage) {
        match message {
            BusMessage::Event(event) => {
                let Some(ret) = event.job_ret() else { return };
                if let Some(instance) = self.resolves.get(&ret.jid).cloned() {
                    if let Some(r) = self
                        .runs
                        .get_mut(&instance)
                        .and_then(|c| c.resolving.as_mut())
                        && ret.ret == Value::Boolean(true)
                    {
                        r.answered.insert(ret.id.clone());
                    }
                    self.check_resolved(&instance, false).await;
                } else if let Some(instance) = self.jids.get(&ret.jid).cloned() {
                    self.salt_return(&instance, ret).await;
                } else if let Some(instance) = self.probes.get(&ret.jid).cloned() {
                    let running = matches!(&ret.ret, Value::Map(m) if !m.is_empty());
                    if let Some(g) = self.runs.get_mut(&instance).and_then(|c| c.gather.as_mut()) {
                        g.handle_probe_reply(&ret.id, running);
                    }
                    self.settle(&instance).await;
                }
            }
            BusMessage::Disconnected { reason, .. } => {
                if !self.bus_down {
                    warn!(%reason, "Salt event bus lost; reconnecting");
                }
                self.bus_down = true;
            }
            BusMessage::Connected(source) => {
                if self.bus_down {
                    info!(%source, "Salt event bus back; recovering returns from the job cache");
                    self.bus_down = false;
                    self.recover().await;
                }
            }
            BusMessage::BadFrame(e) => warn!(error = %e, "Salt event bus"),
            BusMessage::BadEvent(e) => warn!(error = %e, "Salt event bus: undecodable event"),
        }
    }

    /// Returns the bus did not deliver are in the master's job cache.
    async fn recover(&mut self) {
        let pending: Vec<(String, String)> = self
            .jids
            .iter()
            .map(|(j, i)| (j.clone(), i.clone()))
            .collect();
        for (jid, instance) in pending {
            self.recover_jid(&jid, &instance).await;
        }
    }

    /// Feeds `instance` the returns of `jid` found in the master's job cache.
    async fn recover_jid(&mut self, jid: &str, instance: &str) {
        let Some(s) = &self.salt_settings else {
            return;
        };
        let returns = jobcache::returns(&s.cachedir, &s.hash_type, jid).unwrap_or_default();
        for ret in returns {
            self.salt_return(instance, ret).await;
        }
    }

    async fn salt_return(&mut self, instance: &str, ret: JobRet) {
        let now = self.now();
        let Some(ctx) = self.runs.get_mut(instance) else {
            return;
        };
        let retcode = ret
            .retcode
            .unwrap_or(if ret.success == Some(false) { 1 } else { 0 });
        ctx.run
            .handle_salt_return(&ret.id, retcode, &salt_text(&ret.ret), now);
        if let Some(g) = ctx.gather.as_mut() {
            g.handle_return(ret);
        }
        self.settle(instance).await;
    }

    pub async fn handle_hub(&mut self, event: HubEvent) {
        let now = self.now();
        let Some(ctx) = self.runs.get_mut(&event.instance) else {
            return;
        };
        let (instance, machine) = (event.instance.clone(), event.machine.clone());
        let wrapper_event = match event.kind {
            HubEventKind::Started { pid, version } => {
                self.journal.record(RunEvent::WrapperStarted {
                    instance,
                    machine,
                    pid,
                    version: version.clone(),
                });
                WrapperEvent::Started { pid, version }
            }
            HubEventKind::Output { data, seq } => {
                *ctx.streamed.entry(machine.clone()).or_default() += data.len();
                self.journal.record(RunEvent::Output {
                    instance,
                    machine,
                    data: data.clone(),
                    seq: Some(seq),
                });
                WrapperEvent::Output(data)
            }
            HubEventKind::Heartbeat => {
                self.journal.record(RunEvent::Heartbeat {
                    instance,
                    machine,
                    at: crate::clock::now(),
                });
                WrapperEvent::Heartbeat
            }
            HubEventKind::Connected { .. } => WrapperEvent::Heartbeat,
            HubEventKind::Completed { retcode } => WrapperEvent::Completed { retcode },
            HubEventKind::WrapperError { error } => WrapperEvent::Error(error),
            HubEventKind::Disconnected => return,
        };
        ctx.run.handle_wrapper(&event.machine, wrapper_event, now);
        self.settle(&event.instance).await;
    }

    /// Kills a run (or one target of it).
    pub async fn kill(&mut self, instance: &str, machine: Option<&str>) -> Result<(), Refusal> {
        let now = self.now();
        let Some(ctx) = self.runs.get_mut(instance) else {
            return Err(Refusal::NotRunning(instance.into()));
        };
        if let Some(m) = machine
            && !ctx.run.has_target(m)
        {
            return Err(Refusal::UnknownTarget {
                instance: instance.into(),
                machine: m.into(),
            });
        }
        ctx.run.handle_kill(machine, now);
        self.settle(instance).await;
        Ok(())
    }

    /// The next time something must be checked.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.runs
            .values()
            .flat_map(|c| {
                [
                    c.run.poll_timeout(),
                    c.gather.as_ref().and_then(Gather::poll_timeout),
                    c.resolving.as_ref().map(|r| r.deadline),
                ]
            })
            .flatten()
            .min()
            .map(|d| self.origin + d)
    }

    pub async fn handle_timeout(&mut self) {
        let now = self.now();
        let instances: Vec<String> = self.runs.keys().cloned().collect();
        for instance in instances {
            let Some(ctx) = self.runs.get_mut(&instance) else {
                continue;
            };
            if ctx.resolving.as_ref().is_some_and(|r| now >= r.deadline) {
                self.check_resolved(&instance, true).await;
                continue;
            }
            ctx.run.handle_timeout(now);
            if let Some(g) = ctx.gather.as_mut() {
                g.handle_timeout(now);
            }
            self.settle(&instance).await;
        }
    }

    /// Carries out a run's actions, probes what Gather asks for, and retires finished runs.
    async fn settle(&mut self, instance: &str) {
        let now = self.now();
        let Some(ctx) = self.runs.get_mut(instance) else {
            return;
        };
        // Minions Salt gave up on: down, unless their wrapper already proved otherwise.
        let mut probes = Vec::new();
        if let Some(g) = ctx.gather.as_mut() {
            // Only minions still unconfirmed need asking.
            let open: Vec<String> = ctx.run.unconfirmed();
            while let Some(GatherAction::Probe(minions)) = g.poll_action() {
                let minions: Vec<String> =
                    minions.into_iter().filter(|m| open.contains(m)).collect();
                if minions.is_empty() {
                    continue;
                }
                probes.push(minions);
            }
            let down: Vec<String> = g
                .minions()
                .iter()
                .filter(|(_, s)| matches!(s, MinionState::NoReturn(_)))
                .map(|(m, _)| m.clone())
                .collect();
            for m in down {
                ctx.run.handle_target_down(&m, now);
            }
        }
        let jid = ctx.jid.clone();
        let (logdir, job) = (ctx.logdir.clone(), ctx.run.spec().job.clone());
        let mut actions = Vec::new();
        while let Some(a) = ctx.run.poll_action() {
            actions.push(a);
        }
        for minions in probes {
            let mut probe = Publish::about_job(minions.clone(), "saltutil.find_job", &jid);
            probe.jid = self.jid_gen.next(crate::clock::now());
            let jid = probe.jid.clone();
            self.route(Route::Probe, &jid, instance);
            let _ = self.salt.send(SaltRequest {
                instance: instance.into(),
                publish: probe,
                purpose: Purpose::Probe(minions),
            });
        }
        for action in actions {
            match action {
                Action::Log(line) => info!("{line}"),
                Action::TermJob { machines } => {
                    let mut term = Publish::about_job(machines, "saltutil.term_job", &jid);
                    term.jid = self.jid_gen.next(crate::clock::now());
                    let request = SaltRequest {
                        instance: instance.into(),
                        publish: term,
                        purpose: Purpose::Term,
                    };
                    let _ = self.salt.send(request);
                }
                Action::NextBatch => {
                    let next = self
                        .runs
                        .get_mut(instance)
                        .and_then(|c| c.batches.pop_front());
                    if let Some(batch) = next {
                        info!(
                            "Starting the next batch of {instance}: {}",
                            batch.join(", ")
                        );
                        Box::pin(self.launch(instance, Some(batch))).await;
                    }
                }
                Action::SendKill { machine } => {
                    self.hub
                        .send(HubCommand::Kill {
                            instance: instance.into(),
                            machine,
                        })
                        .await;
                }
                Action::ConfirmComplete { machine } => {
                    // The wrapper forgets its result once acknowledged: only after the result
                    // is committed (a crash in between must not lose it).
                    let _ = self.after_commit.send(HubCommand::ConfirmComplete {
                        instance: instance.into(),
                        machine,
                    });
                }
                Action::TargetConfirmed { machine } => self.record(RunEvent::Confirmed {
                    instance: instance.into(),
                    machine,
                    at: crate::clock::now(),
                }),
                Action::TargetEnded {
                    machine,
                    result,
                    output,
                } => {
                    // What the journal has not seen yet: Salt's text, saltpeter's own note.
                    let streamed = self
                        .runs
                        .get(instance)
                        .and_then(|c| c.streamed.get(&machine).copied())
                        .unwrap_or(0);
                    if let Some(rest) = output.get(streamed..).filter(|r| !r.is_empty()) {
                        self.record(RunEvent::Output {
                            instance: instance.into(),
                            machine: machine.clone(),
                            data: rest.to_string(),
                            seq: None,
                        });
                    }
                    self.record(RunEvent::TargetEnded {
                        instance: instance.into(),
                        machine: machine.clone(),
                        code: result.code,
                        note: result.note.clone(),
                        at: crate::clock::now(),
                    });
                    debug!(%instance, %machine, code = result.code, output = %output, "target output");
                    let record = joblog::Record::MachineResult {
                        instance,
                        machine: &machine,
                        code: result.code,
                        output: &output,
                    };
                    job_log(&logdir, &job, &record);
                }
                Action::RunEnded(outcome) => {
                    info!(%instance, success = outcome.success, "run ended");
                    self.record(RunEvent::RunEnded {
                        instance: instance.into(),
                        success: outcome.success,
                        succeeded: outcome.succeeded,
                        total: outcome.total,
                        at: crate::clock::now(),
                    });
                    job_log(&logdir, &job, &joblog::Record::End { instance });
                    // After the confirmations queued before it.
                    let _ = self.after_commit.send(HubCommand::Unregister {
                        instance: instance.into(),
                    });
                    self.forget(instance);
                }
            }
        }
    }
}

/// A run's limits from its job (the defaults when the job left the config while it ran).
fn run_spec(job_name: &str, instance: &str, job: Option<&Job>) -> RunSpec {
    RunSpec {
        job: job_name.into(),
        instance: instance.into(),
        timeout: job.and_then(|j| j.timeout_secs).map(Duration::from_secs),
        heartbeat_timeout: Duration::from_secs(15),
        timeout_grace: Duration::from_secs(30),
        success_threshold: job.and_then(|j| j.success_threshold),
        legacy: job.is_some_and(|j| !j.use_wrapper),
    }
}

/// The text Salt gives for a wrapper launch: `cmd.run_all`'s stderr (else stdout), or Salt's
/// own error string.
fn salt_text(ret: &Value) -> String {
    let field = |k: &str| {
        wire::get(ret, k)
            .map(wire::value_text)
            .filter(|s| !s.is_empty())
    };
    match ret {
        Value::Map(_) => field("stderr")
            .or_else(|| field("stdout"))
            .unwrap_or_default(),
        other => wire::value_text(other),
    }
}

/// `cmd.run_all` of the wrapper, with the job in the `SP_*` environment as a real keyword
/// argument. `SP_MACHINE_ID` is rendered on each minion from its own grains (one publish serves
/// every target; the host name need not match the minion id).
pub fn launch(job: &Job, instance: &str, settings: &Settings, token: &str) -> Publish {
    let mut env: Vec<(String, String)> = vec![
        (
            "SP_WEBSOCKET_URL".into(),
            settings.machines_ws_url(&job.saltpeter_server_host),
        ),
        ("SP_JOB_NAME".into(), job.name.clone()),
        ("SP_JOB_INSTANCE".into(), instance.into()),
        ("SP_JOB_INSTANCE_NAME".into(), instance.into()),
        ("SP_COMMAND".into(), job.command.clone()),
        (
            "SP_WRAPPER_LOGLEVEL".into(),
            job.wrapper_loglevel.as_str().into(),
        ),
        ("SP_WRAPPER_LOGDIR".into(), job.wrapper_logdir.clone()),
        ("SP_ALLOW_OVERLAP".into(), job.allow_overlap.to_string()),
        (
            "SP_TIMEOUT".into(),
            job.timeout_secs.unwrap_or(0).to_string(),
        ),
        ("SP_RUN_TOKEN".into(), token.into()),
    ];
    for (key, value) in [
        ("SP_CWD", &job.cwd),
        ("SP_USER", &job.user),
        ("SP_LOCKFILE", &job.lockfile),
    ] {
        if let Some(v) = value {
            env.push((key.into(), v.clone()));
        }
    }
    env.extend(job.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut p = Publish::new(salt_target(job), job.target_type.as_str(), "cmd.run_all");
    let cmd = format!(
        "SP_MACHINE_ID={{{{ grains['id'] | tojson }}}} exec {}",
        shell_quote(&job.wrapper_path)
    );
    p.kwargs.insert("cmd".into(), Value::from(cmd));
    p.kwargs.insert("template".into(), Value::from("jinja"));
    p.kwargs.insert("python_shell".into(), Value::from(true));
    p.kwargs.insert(
        "env".into(),
        Value::Map(
            env.into_iter()
                .map(|(k, v)| (Value::from(k), Value::from(v)))
                .collect(),
        ),
    );
    p
}

/// The job's targets as Salt takes them (a `list` target as a list, also when written `a,b`).
fn salt_target(job: &Job) -> Tgt {
    match &job.targets {
        Targets::List(l) => Tgt::List(l.clone()),
        Targets::Expr(e) if job.target_type == TargetType::List => {
            Tgt::List(e.split(',').map(|s| s.trim().to_string()).collect())
        }
        Targets::Expr(e) => Tgt::Expr(e.clone()),
    }
}

/// Legacy mode (`use_wrapper: false`): Salt's `cmd.run` of the command itself, with `cwd`,
/// `runas`, `timeout` and `env` as real keyword arguments.
pub fn launch_legacy(job: &Job, instance: &str) -> Publish {
    let mut p = Publish::new(salt_target(job), job.target_type.as_str(), "cmd.run");
    p.kwargs
        .insert("cmd".into(), Value::from(job.command.as_str()));
    p.kwargs.insert("python_shell".into(), Value::from(true));
    if let Some(cwd) = &job.cwd {
        p.kwargs.insert("cwd".into(), Value::from(cwd.as_str()));
    }
    if let Some(user) = &job.user {
        p.kwargs.insert("runas".into(), Value::from(user.as_str()));
    }
    if let Some(t) = job.timeout_secs {
        p.kwargs.insert("timeout".into(), Value::from(t));
    }
    let mut env: Vec<(Value, Value)> = vec![
        (Value::from("SP_JOB_NAME"), Value::from(job.name.as_str())),
        (Value::from("SP_JOB_INSTANCE_NAME"), Value::from(instance)),
    ];
    env.extend(
        job.env
            .iter()
            .map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str()))),
    );
    p.kwargs.insert("env".into(), Value::Map(env));
    p
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Fisher-Yates with the kernel's randomness (a random subset per run, as the original).
fn shuffle(items: &mut [String]) {
    let mut bytes = vec![0u8; items.len() * 4];
    random_bytes(&mut bytes);
    for i in (1..items.len()).rev() {
        let r = u32::from_le_bytes([
            bytes[i * 4],
            bytes[i * 4 + 1],
            bytes[i * 4 + 2],
            bytes[i * 4 + 3],
        ]);
        items.swap(i, r as usize % (i + 1));
    }
}

/// 128 random bits, hex.
fn random_token() -> String {
    let mut bytes = [0u8; 16];
    random_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Fills `buf` from the kernel's randomness, through one source opened once.
fn random_bytes(buf: &mut [u8]) {
    static URANDOM: std::sync::OnceLock<Option<std::sync::Mutex<std::fs::File>>> =
        std::sync::OnceLock::new();
    let source = URANDOM.get_or_init(|| {
        std::fs::File::open("/dev/urandom")
            .ok()
            .map(std::sync::Mutex::new)
    });
    if let Some(file) = source
        && let Ok(mut f) = file.lock()
    {
        let _ = std::io::Read::read_exact(&mut *f, buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Loader, SourceFile};

    fn job(yaml: &str) -> (Arc<Job>, Settings) {
        let file = SourceFile {
            path: "t.yaml".into(),
            group: "t".into(),
            text: Ok(yaml.into()),
        };
        let loaded = Loader::new("master1").load(&[file]);
        assert_eq!(loaded.errors(), 0, "{:?}", loaded.diagnostics);
        (loaded.config.jobs["j"].clone(), loaded.config.settings)
    }

    const YAML: &str = "j:\n  min: 0\n  hour: 0\n  dom: '*'\n  mon: '*'\n  dow: '*'\n  targets: 'a, b'\n  target_type: list\n  user: www\n  cwd: /srv\n  command: \"echo 'it''s' \\\"q\\\" \\\\ done\"\n  env:\n    FOO: bar\n";

    #[test]
    fn the_wrapper_launch_carries_the_job_in_real_keyword_arguments() {
        let (job, settings) = job(YAML);
        let p = launch(&job, "j_1", &settings, "tok");
        assert_eq!(
            (p.fun.as_str(), p.tgt.clone()),
            ("cmd.run_all", Tgt::List(vec!["a".into(), "b".into()]))
        );
        assert_eq!(p.kwargs["template"], Value::from("jinja"));
        let cmd = wire::value_text(&p.kwargs["cmd"]);
        assert_eq!(
            cmd,
            "SP_MACHINE_ID={{ grains['id'] | tojson }} exec '/usr/local/bin/sp_wrapper.py'"
        );
        let env: HashMap<String, String> = match &p.kwargs["env"] {
            Value::Map(m) => m
                .iter()
                .map(|(k, v)| (wire::value_text(k), wire::value_text(v)))
                .collect(),
            _ => panic!(),
        };
        assert_eq!(env["SP_COMMAND"], "echo 'it''s' \"q\" \\ done");
        assert_eq!(env["SP_WEBSOCKET_URL"], "ws://master1:8889");
        assert_eq!(
            (
                env["SP_JOB_INSTANCE"].as_str(),
                env["SP_RUN_TOKEN"].as_str()
            ),
            ("j_1", "tok")
        );
        assert_eq!(
            (
                env["SP_USER"].as_str(),
                env["SP_CWD"].as_str(),
                env["FOO"].as_str()
            ),
            ("www", "/srv", "bar")
        );
        assert_eq!(
            (env["SP_TIMEOUT"].as_str(), env["SP_ALLOW_OVERLAP"].as_str()),
            ("3600", "false")
        );
    }

    #[test]
    fn the_legacy_launch_is_salts_cmd_run() {
        let (job, _) = job(YAML);
        let p = launch_legacy(&job, "j_1");
        assert_eq!(p.fun, "cmd.run");
        assert_eq!(
            wire::value_text(&p.kwargs["cmd"]),
            "echo 'it''s' \"q\" \\ done"
        );
        assert_eq!(
            (p.kwargs["runas"].clone(), p.kwargs["cwd"].clone()),
            (Value::from("www"), Value::from("/srv"))
        );
        assert_eq!(p.kwargs["timeout"], Value::from(3600));
    }
}
