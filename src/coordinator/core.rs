//! The coordinator's decisions as a sans-IO state machine: which runs are in flight, which jid
//! and instance each Salt return and wrapper message belongs to, target resolution and batches,
//! probes of silent minions, kills, and one heap of deadlines for every run. Inputs are the
//! daemon's events with the `now` they happened at; outputs are [`Effect`]s the async shell
//! (`mod.rs`) carries out in order.
//!
//! Must not know: sockets, channels, clocks, files, randomness (the token and the shuffle's
//! bytes come in as inputs). Cost: an input touches its own run only (hash lookups, the run's
//! own O(log n) engine), and a deadline costs O(log runs).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tracing::{debug, info, warn};

use super::launch;
use crate::agents::{HubCommand, HubEvent, HubEventKind};
use crate::config::{Job, Settings};
use crate::control::Refusal;
use crate::engine::{Action, Mono, Run, RunSpec, WrapperEvent};
use crate::history::InFlight;
use crate::joblog::{self, Record};
use crate::journal::{RunEvent, Trigger};
use crate::salt::bus::BusMessage;
use crate::salt::gather::{Gather, GatherAction};
use crate::salt::wire::JidGen;
use crate::salt::{JobRet, Publish, PublishError, Published, Tgt, command};

/// How long Salt returns are awaited before silent minions are probed, and how long a probe
/// may take (Salt's own defaults are 5 and 10 s).
pub const GATHER_INTERVAL: Duration = Duration::from_secs(10);
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a launch is retried while the master cannot be reached.
pub const LAUNCH_RETRY_FOR: Duration = Duration::from_secs(300);
/// How long the targets' `test.ping` is awaited before non-responders count as down.
pub const RESOLVE_WAIT: Duration = Duration::from_secs(10);

/// The instant an input happened: monotonic for deadlines, wall-clock for records.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub mono: Mono,
    pub wall: Timestamp,
}

/// A run to start: `job` as `instance` (`<job>_<id>`). `maintenance` are the machines under
/// maintenance now; `scheduled` is the slot it was due at (none for a manual run).
#[derive(Clone, Copy, Debug)]
pub struct Firing<'a> {
    pub job: &'a Arc<Job>,
    pub instance: &'a str,
    pub settings: &'a Settings,
    pub maintenance: &'a [String],
    pub trigger: Trigger,
    pub scheduled: Option<Timestamp>,
}

/// Why something is published.
#[derive(Clone, Debug, PartialEq)]
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

/// What the shell must do, in order.
#[derive(Debug)]
pub enum Effect {
    /// Publish through the Salt worker pool; the reply comes back to
    /// [`Core::handle_salt_reply`] with `instance` and `purpose`.
    Publish {
        instance: String,
        purpose: Purpose,
        publish: Publish,
        /// Retry while the master is unreachable (launches: a busy master fails nothing).
        retry: bool,
    },
    /// Send to the hub now.
    Hub(HubCommand),
    /// Send to the hub once the store has committed everything recorded before it (the
    /// wrapper forgets its result once acknowledged).
    HubAfterCommit(HubCommand),
    /// One step of a run, for the history store and the metrics.
    Record(RunEvent),
    /// A record for the job's text log.
    JobLog {
        logdir: PathBuf,
        job: String,
        entry: JobLogEntry,
    },
    /// Read `jid`'s returns from the master's job cache and give them to
    /// [`Core::handle_cached_returns`].
    ReadJobCache { instance: String, jid: String },
}

#[derive(Debug, PartialEq)]
pub enum JobLogEntry {
    /// A formatted record.
    Text(String),
    /// A target's result with its output, which the writer reads from the store (the daemon
    /// keeps no output in memory).
    MachineResult {
        instance: String,
        machine: String,
        code: i64,
        at: Timestamp,
    },
}

struct RunCtx {
    run: Run,
    jid: String,
    gather: Option<Gather>,
    /// Where the job's text log goes (`saltpeter_config.logdir` when it fired).
    logdir: PathBuf,
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
    /// Published in several batches: what is left is stored as each one is published.
    batched: bool,
    /// The jid of a launch sent before a restart whose reply was not recorded: the next
    /// launch uses it again (minions that got it ignore it the second time).
    relaunch_jid: Option<String>,
    /// Something of the run reached Salt (a publish was answered), before or after a restart.
    launched: bool,
    /// Machines under maintenance when the run fired.
    maintenance: BTreeSet<String>,
    /// The earliest deadline of this run in the heap (entries for other instants are stale).
    armed: Option<Mono>,
}

struct Resolving {
    expected: Vec<String>,
    missing: Vec<String>,
    answered: BTreeSet<String>,
    deadline: Mono,
}

#[derive(Clone, Copy)]
enum Route {
    Launch,
    Resolve,
    Probe,
}

/// Randomness the shell supplies for a run that picks or batches its targets.
pub trait Shuffle {
    fn shuffle(&mut self, items: &mut [String]);
}

#[derive(Default)]
pub struct Core {
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
    /// Every run's next deadline, earliest first (stale entries are skipped).
    deadlines: BinaryHeap<Reverse<(Mono, String)>>,
    jid_gen: JidGen,
    bus_down: bool,
    effects: VecDeque<Effect>,
    /// The other live daemons' machines URLs (a shared store): launches name them too.
    peers: Vec<String>,
}

impl Core {
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    fn emit(&mut self, effect: Effect) {
        self.effects.push_back(effect);
    }

    fn record(&mut self, event: RunEvent) {
        self.emit(Effect::Record(event));
    }

    fn job_log(&mut self, logdir: &std::path::Path, job: &str, entry: JobLogEntry) {
        self.emit(Effect::JobLog {
            logdir: logdir.to_path_buf(),
            job: job.to_string(),
            entry,
        });
    }

    fn job_log_record(
        &mut self,
        logdir: &std::path::Path,
        job: &str,
        record: &Record<'_>,
        at: Timestamp,
    ) {
        let text = joblog::format(record, at);
        self.job_log(logdir, job, JobLogEntry::Text(text));
    }

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

    /// Where the other live daemons take wrappers (a shared store), for the next launches.
    pub fn set_peers(&mut self, peers: Vec<String>) {
        self.peers = peers;
    }

    /// Another daemon took `instance` over (this one's lease on it ran out): it is dropped
    /// here with nothing recorded (the new owner records what follows), and its wrappers are
    /// let go so they reconnect to the new owner. `false` if it was not here.
    pub fn release(&mut self, instance: &str) -> bool {
        if !self.runs.contains_key(instance) {
            return false;
        }
        self.forget(instance);
        self.emit(Effect::Hub(HubCommand::Release {
            instance: instance.to_string(),
        }));
        true
    }

    /// How many runs are in flight.
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// The instance of `job` in flight, if any.
    pub fn running_instance(&self, job: &str) -> Option<String> {
        self.by_job.get(job).and_then(|l| l.first().cloned())
    }

    /// Every launch jid in flight with its run (for a recovery from the job cache).
    fn launch_jids(&self) -> Vec<(String, String)> {
        self.jids
            .iter()
            .map(|(j, i)| (j.clone(), i.clone()))
            .collect()
    }

    /// Takes over a run that was in flight when the daemon stopped: its wrappers reconnect to
    /// the hub (registered already), confirmed targets get a fresh heartbeat clock, unconfirmed
    /// ones are looked for in Salt's job cache and probed. A launch sent without a recorded
    /// reply is sent again under its jid (minions that got it ignore it); a run stopped before
    /// any launch starts over.
    pub fn adopt(&mut self, run: &InFlight, job: Option<&Arc<Job>>, settings: &Settings, now: Now) {
        let spec = run_spec(&run.job, &run.instance, job.map(|j| &**j));
        let jid = run.jid.clone().unwrap_or_else(|| "-".into());
        let machines: Vec<String> = run.open.iter().map(|t| t.machine.clone()).collect();
        // Nothing published yet (for good): the run goes on from its first launch.
        let unpublished = run.jid.is_none() && job.is_some();
        let mut engine = Run::new(spec);
        for (m, code) in &run.done {
            engine.handle_recovered(m, *code);
        }
        if unpublished {
            // The first batch is launched again below; the others follow it.
            if !run.batches.is_empty() {
                engine.handle_resolved(&[], run.batches.len(), now.mono);
            }
        } else {
            // Batches not yet published follow the current one (which may be over already).
            if !run.batches.is_empty() {
                engine.handle_resolved(&[], run.batches.len() + 1, now.mono);
            }
            engine.handle_published(&jid, &machines, &[], now.mono);
        }
        for t in run.open.iter().filter(|t| t.confirmed) {
            engine.handle_wrapper(&t.machine, WrapperEvent::Heartbeat, now.mono);
        }
        let unconfirmed = engine.unconfirmed();
        info!(
            instance = %run.instance,
            confirmed = machines.len() - unconfirmed.len(),
            unconfirmed = unconfirmed.len(),
            "resuming a run that was in flight before the restart"
        );
        let gather = (!unconfirmed.is_empty() && run.jid.is_some()).then(|| {
            Gather::new(
                &jid,
                &unconfirmed,
                &[],
                now.mono,
                GATHER_INTERVAL,
                PROBE_TIMEOUT,
            )
        });
        let template = match job {
            Some(j) if j.use_wrapper => {
                launch::wrapper(j, &run.instance, settings, &run.token, &self.peers)
            }
            Some(j) => launch::legacy(j, &run.instance),
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
                batches: run.batches.iter().cloned().collect(),
                resolving: None,
                pick: job.map_or(0, |j| j.number_of_targets as usize),
                batch_size: job.map_or(0, |j| j.batch_size as usize),
                batched: !run.batches.is_empty(),
                relaunch_jid: run.launching.clone(),
                launched: run.jid.is_some(),
                maintenance: BTreeSet::new(),
                armed: None,
            },
        );
        if run.jid.is_some() {
            self.route(Route::Launch, &jid, &run.instance);
            // Returns that landed while the daemon was down are in the job cache.
            self.emit(Effect::ReadJobCache {
                instance: run.instance.clone(),
                jid,
            });
        }
        if unpublished {
            match run.launching {
                Some(_) => {
                    let first = self
                        .runs
                        .get_mut(&run.instance)
                        .and_then(|c| c.batches.pop_front());
                    self.launch(&run.instance, first, now);
                }
                // Stopped while it resolved its targets: nothing ran anywhere yet.
                None => self.begin(&run.instance, now),
            }
        }
        self.settle(&run.instance, now);
    }

    /// Starts a run as `firing` says, with the run token `token`.
    pub fn fire(&mut self, firing: Firing<'_>, token: String, now: Now) {
        let Firing {
            job,
            instance,
            settings,
            maintenance,
            trigger,
            scheduled,
        } = firing;
        self.record(RunEvent::Started {
            instance: instance.to_string(),
            job: job.name.clone(),
            trigger,
            scheduled,
            at: now.wall,
            token: token.clone(),
        });
        let spec = run_spec(&job.name, instance, Some(job));
        // Registered before publishing; its machines are named as Salt names them (a wrapper
        // that beats the publish reply is told to try again).
        self.emit(Effect::Hub(HubCommand::Register {
            instance: instance.to_string(),
            job_name: job.name.clone(),
            machines: Vec::new(),
            token: Some(token.clone()),
            tokenless: launch::accepts_tokenless(job, settings),
        }));
        let template = if job.use_wrapper {
            launch::wrapper(job, instance, settings, &token, &self.peers)
        } else {
            launch::legacy(job, instance)
        };
        let logdir = PathBuf::from(&settings.logdir);
        self.insert_run(
            instance.to_string(),
            RunCtx {
                run: Run::new(spec),
                jid: String::new(),
                gather: None,
                logdir: logdir.clone(),
                template: template.clone(),
                batches: VecDeque::new(),
                resolving: None,
                pick: job.number_of_targets as usize,
                batch_size: job.batch_size as usize,
                batched: false,
                relaunch_jid: None,
                launched: false,
                maintenance: maintenance.iter().cloned().collect(),
                armed: None,
            },
        );
        let start = Record::Start { instance };
        self.job_log_record(&logdir, &job.name, &start, now.wall);
        self.begin(instance, now);
    }

    /// The run's first step: find the responsive targets (subsets, batches, machines under
    /// maintenance), as the original's test.ping did, or publish the job at once.
    fn begin(&mut self, instance: &str, now: Now) {
        let Some(ctx) = self.runs.get(instance) else {
            return;
        };
        if ctx.pick > 0 || ctx.batch_size > 0 || !ctx.maintenance.is_empty() {
            let mut ping = command::ping_like(&ctx.template);
            ping.jid = self.jid_gen.next(now.wall);
            self.route(Route::Resolve, &ping.jid, instance);
            self.emit(Effect::Publish {
                instance: instance.to_string(),
                purpose: Purpose::Resolve,
                publish: ping,
                retry: true,
            });
        } else {
            self.launch(instance, None, now);
        }
    }

    /// Publishes the run's job, to `batch` (a list target) or to the job's own target.
    fn launch(&mut self, instance: &str, batch: Option<Vec<String>>, now: Now) {
        let Some(ctx) = self.runs.get_mut(instance) else {
            return;
        };
        let jid = match ctx.relaunch_jid.take() {
            Some(jid) => jid,
            None => self.jid_gen.next(now.wall),
        };
        let mut publish = ctx.template.clone();
        if let Some(batch) = batch {
            // A list is known before the publish: its wrappers are taken from the first try.
            self.effects.push_back(Effect::Hub(HubCommand::Name {
                instance: instance.into(),
                machines: batch.clone(),
            }));
            publish.tgt = Tgt::List(batch);
            publish.tgt_type = "list".into();
        }
        publish.jid = jid.clone();
        ctx.jid = jid.clone();
        self.route(Route::Launch, &jid, instance);
        // Stored before it is sent: a restart before the reply sends it again, same jid.
        self.record(RunEvent::Launching {
            instance: instance.into(),
            jid: jid.clone(),
        });
        self.emit(Effect::Publish {
            instance: instance.into(),
            purpose: Purpose::Launch,
            publish,
            retry: true,
        });
    }

    /// The Salt worker's answer to an [`Effect::Publish`].
    pub fn handle_salt_reply(
        &mut self,
        instance: &str,
        purpose: Purpose,
        result: Result<Published, PublishError>,
        shuffle: &mut dyn Shuffle,
        now: Now,
    ) {
        let Some(ctx) = self.runs.get_mut(instance) else {
            return;
        };
        match (purpose, result) {
            (Purpose::Launch, Ok(p)) => {
                ctx.launched = true;
                let (job, logdir) = (ctx.run.spec().job.clone(), ctx.logdir.clone());
                // This batch is published: what is left is the rest.
                let left = ctx
                    .batched
                    .then(|| ctx.batches.iter().cloned().collect::<Vec<_>>());
                ctx.run
                    .handle_published(&p.jid, &p.minions, &p.missing, now.mono);
                ctx.gather = Some(Gather::new(
                    &p.jid,
                    &p.minions,
                    &p.missing,
                    now.mono,
                    GATHER_INTERVAL,
                    PROBE_TIMEOUT,
                ));
                for m in &p.minions {
                    let record = Record::MachineStart {
                        instance,
                        machine: m,
                    };
                    self.job_log_record(&logdir, &job, &record, now.wall);
                }
                if p.minions.is_empty() && p.missing.is_empty() {
                    self.job_log_record(&logdir, &job, &Record::NoMachines { instance }, now.wall);
                }
                let mut machines = p.minions;
                machines.extend(p.missing);
                if let Some(batches) = left {
                    self.record(RunEvent::BatchesLeft {
                        instance: instance.into(),
                        batches,
                    });
                }
                self.emit(Effect::Hub(HubCommand::Name {
                    instance: instance.into(),
                    machines: machines.clone(),
                }));
                self.record(RunEvent::Published {
                    instance: instance.into(),
                    jid: p.jid,
                    machines,
                });
            }
            (Purpose::Launch | Purpose::Resolve, Err(e)) => {
                let never_sent = !ctx.launched && e.never_sent();
                ctx.run.handle_publish_failed(&e.to_string(), now.mono);
                if never_sent {
                    // Nothing of it reached Salt: the ledger says its slot was missed.
                    self.record(RunEvent::NotLaunched {
                        instance: instance.into(),
                        why: e.to_string(),
                        at: now.wall,
                    });
                }
            }
            (Purpose::Resolve, Ok(p)) => {
                ctx.resolving = Some(Resolving {
                    expected: p.minions,
                    missing: p.missing,
                    answered: BTreeSet::new(),
                    deadline: now.mono + RESOLVE_WAIT,
                });
                self.check_resolved(instance, false, shuffle, now);
            }
            (Purpose::Term, _) => {}
            (Purpose::Probe(minions), Ok(p)) => {
                let was_troubled = ctx.gather.as_ref().is_some_and(|g| g.trouble().is_some());
                if let Some(g) = ctx.gather.as_mut() {
                    g.handle_probe_sent(&minions, &p.minions, now.mono);
                }
                self.route(Route::Probe, &p.jid, instance);
                debug!(%instance, ?minions, "probing silent minions");
                if was_troubled {
                    self.show_waiting(instance, &minions, None);
                }
            }
            (Purpose::Probe(minions), Err(PublishError::NoMinions { message })) => {
                info!(%instance, ?minions, %message, "Salt knows none of these minions any more");
                if let Some(g) = ctx.gather.as_mut() {
                    g.handle_probe_refused(&minions, &message);
                }
            }
            (Purpose::Probe(minions), Err(e)) => {
                let Some(g) = ctx.gather.as_mut() else {
                    return;
                };
                g.handle_probe_failed(&minions, &e.to_string(), now.mono);
                if let Some((_, at)) = g.trouble() {
                    let wait = at.saturating_sub(now.mono);
                    warn!(%instance, error = %e, retry_in_s = wait.as_secs(), "a probe of silent minions was not delivered; they wait (Phase 1 has no timeout)");
                    let next = now.wall + wait;
                    let why = format!(
                        "probe not delivered: {e}; next try at {}",
                        next.round(jiff::Unit::Second).unwrap_or(next)
                    );
                    self.show_waiting(instance, &minions, Some(why));
                }
            }
        }
        self.settle(instance, now);
    }

    /// Once every pinged target answered (or `timed_out`): choose the run's targets and publish
    /// the first batch.
    fn check_resolved(
        &mut self,
        instance: &str,
        timed_out: bool,
        shuffle: &mut dyn Shuffle,
        now: Now,
    ) {
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
        let (job, logdir) = (ctx.run.spec().job.clone(), ctx.logdir.clone());
        let mut chosen: Vec<String> = Vec::new();
        let mut skipped = Vec::new();
        for m in r.expected.iter().filter(|m| r.answered.contains(*m)) {
            if ctx.maintenance.contains(m) {
                skipped.push(m.clone());
            } else {
                chosen.push(m.clone());
            }
        }
        if ctx.pick > 0 || ctx.batch_size > 0 {
            shuffle.shuffle(&mut chosen);
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
        ctx.run.handle_resolved(&down, ctx.batches.len(), now.mono);
        // Stored until each is published, so a restart goes on with the rest.
        let batched = ctx.batches.len() > 1;
        ctx.batched = batched;
        let all: Vec<Vec<String>> = ctx.batches.iter().cloned().collect();
        let first = ctx.batches.pop_front();
        if first.is_none() {
            ctx.run.handle_published("-", &[], &[], now.mono);
        }
        for m in skipped {
            info!("Target under maintenance: {m} is left out of {instance}");
            let record = Record::Maintenance {
                instance,
                machine: &m,
                why: "Target under maintenance",
            };
            self.job_log_record(&logdir, &job, &record, now.wall);
            self.record(RunEvent::MachineSkipped {
                instance: instance.into(),
                machine: m,
            });
        }
        if batched {
            self.record(RunEvent::BatchesLeft {
                instance: instance.into(),
                batches: all,
            });
        }
        match first {
            Some(first) => self.launch(instance, Some(first), now),
            None => self.job_log_record(&logdir, &job, &Record::NoMachines { instance }, now.wall),
        }
        self.settle(instance, now);
    }

    /// A message from Salt's event bus.
    pub fn handle_bus(&mut self, message: BusMessage, shuffle: &mut dyn Shuffle, now: Now) {
        match message {
            BusMessage::Event(event) => {
                let Some(ret) = event.job_ret() else { return };
                if let Some(instance) = self.resolves.get(&ret.jid).cloned() {
                    if let Some(r) = self
                        .runs
                        .get_mut(&instance)
                        .and_then(|c| c.resolving.as_mut())
                        && ret.is_true()
                    {
                        r.answered.insert(ret.id.clone());
                    }
                    self.check_resolved(&instance, false, shuffle, now);
                } else if let Some(instance) = self.jids.get(&ret.jid).cloned() {
                    self.salt_return(&instance, ret, now);
                    self.settle(&instance, now);
                } else if let Some(instance) = self.probes.get(&ret.jid).cloned() {
                    if let Some(g) = self.runs.get_mut(&instance).and_then(|c| c.gather.as_mut()) {
                        g.handle_probe_reply(&ret.id, ret.reports_running());
                    }
                    self.settle(&instance, now);
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
                    // Returns the bus did not deliver are in the master's job cache.
                    for (jid, instance) in self.launch_jids() {
                        self.emit(Effect::ReadJobCache { instance, jid });
                    }
                }
            }
            BusMessage::BadFrame(e) => warn!(error = %e, "Salt event bus"),
            BusMessage::BadEvent(e) => warn!(error = %e, "Salt event bus: undecodable event"),
        }
    }

    /// Returns read from the job cache for [`Effect::ReadJobCache`]; then whatever the run's
    /// gathering was waiting for ([`GatherAction::CheckCache`]) goes on.
    pub fn handle_cached_returns(&mut self, instance: &str, returns: Vec<JobRet>, now: Now) {
        for ret in returns {
            self.salt_return(instance, ret, now);
        }
        if let Some(g) = self.runs.get_mut(instance).and_then(|c| c.gather.as_mut()) {
            g.handle_timeout(now.mono);
        }
        self.settle(instance, now);
    }

    fn salt_return(&mut self, instance: &str, ret: JobRet, now: Now) {
        let Some(ctx) = self.runs.get_mut(instance) else {
            return;
        };
        // Salt vouches for a minion that returns: one the publish reply did not list (a
        // syndic's, say) becomes a target its wrapper may speak for.
        if !ctx.run.has_target(&ret.id) {
            self.effects.push_back(Effect::Hub(HubCommand::Name {
                instance: instance.into(),
                machines: vec![ret.id.clone()],
            }));
        }
        ctx.run
            .handle_salt_return(&ret.id, ret.exit_code(), &ret.text(), now.mono);
        if let Some(g) = ctx.gather.as_mut() {
            g.handle_return(ret);
        }
    }

    /// An event from the machines hub; `now` is when the hub received it.
    pub fn handle_hub(&mut self, event: HubEvent, now: Now) {
        let Some(ctx) = self.runs.get_mut(&event.instance) else {
            // An ended run's target the daemon had ended itself (the hub still hears it).
            self.handle_late(event, now);
            return;
        };
        if matches!(event.kind, HubEventKind::Completed { .. }) && ctx.run.has_ended(&event.machine)
        {
            self.handle_late(event, now);
            return;
        }
        let HubEvent {
            instance,
            machine,
            kind,
            ..
        } = event;
        let wrapper_event = match kind {
            HubEventKind::Started { pid, version } => {
                self.effects
                    .push_back(Effect::Record(RunEvent::WrapperStarted {
                        instance: instance.clone(),
                        machine: machine.clone(),
                        pid,
                        version: version.clone(),
                    }));
                WrapperEvent::Started { pid, version }
            }
            HubEventKind::Output { data, seq } => {
                let ends_line = data.is_empty() || data.ends_with('\n');
                // The output goes to the store only; the engine keeps none of it.
                self.effects.push_back(Effect::Record(RunEvent::Output {
                    instance: instance.clone(),
                    machine: machine.clone(),
                    data,
                    seq: Some(seq),
                }));
                WrapperEvent::Output { ends_line }
            }
            HubEventKind::Heartbeat => {
                self.effects.push_back(Effect::Record(RunEvent::Heartbeat {
                    instance: instance.clone(),
                    machine: machine.clone(),
                    at: now.wall,
                }));
                WrapperEvent::Heartbeat
            }
            HubEventKind::Connected { .. } => {
                self.effects.push_back(Effect::Record(RunEvent::Connected {
                    instance: instance.clone(),
                    machine: machine.clone(),
                    at: now.wall,
                }));
                WrapperEvent::Heartbeat
            }
            HubEventKind::Completed { retcode } => WrapperEvent::Completed { retcode },
            HubEventKind::WrapperError { error } => WrapperEvent::Error(error),
            HubEventKind::Disconnected => return,
        };
        ctx.run.handle_wrapper(&machine, wrapper_event, now.mono);
        self.settle(&instance, now);
    }

    /// A wrapper heard from after its target ended: its output is stored as it comes, and its
    /// result becomes a note (acknowledged once stored, so the wrapper can stop).
    fn handle_late(&mut self, event: HubEvent, now: Now) {
        let HubEvent {
            instance,
            machine,
            kind,
            ..
        } = event;
        match kind {
            HubEventKind::Output { data, seq } => self.record(RunEvent::Output {
                instance,
                machine,
                data,
                seq: Some(seq),
            }),
            HubEventKind::Completed { retcode } => {
                info!(
                    "Late result for {instance}:{machine}: the wrapper reported exit code {retcode} after the target had ended; kept as a note"
                );
                self.record(RunEvent::LateResult {
                    instance: instance.clone(),
                    machine: machine.clone(),
                    retcode,
                    at: now.wall,
                });
                self.emit(Effect::HubAfterCommit(HubCommand::ConfirmComplete {
                    instance,
                    machine,
                }));
            }
            _ => {}
        }
    }

    /// Kills a run (or one target of it).
    pub fn kill(&mut self, instance: &str, machine: Option<&str>, now: Now) -> Result<(), Refusal> {
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
        ctx.run.handle_kill(machine, now.mono);
        self.settle(instance, now);
        Ok(())
    }

    /// The next time something must be checked (stale heap entries are dropped here).
    pub fn next_deadline(&mut self) -> Option<Mono> {
        while let Some(Reverse((at, instance))) = self.deadlines.peek() {
            if self
                .runs
                .get(instance)
                .is_some_and(|c| c.armed == Some(*at))
            {
                return Some(*at);
            }
            self.deadlines.pop();
        }
        None
    }

    /// Advances to `now`: only the runs whose deadline passed are visited.
    pub fn handle_timeout(&mut self, shuffle: &mut dyn Shuffle, now: Now) {
        let mut due = Vec::new();
        while let Some(Reverse((at, _))) = self.deadlines.peek() {
            if *at > now.mono {
                break;
            }
            let Reverse((at, instance)) = self.deadlines.pop().expect("peeked");
            if let Some(ctx) = self.runs.get_mut(&instance)
                && ctx.armed == Some(at)
            {
                ctx.armed = None;
                due.push(instance);
            }
        }
        for instance in due {
            let Some(ctx) = self.runs.get_mut(&instance) else {
                continue;
            };
            if ctx
                .resolving
                .as_ref()
                .is_some_and(|r| now.mono >= r.deadline)
            {
                self.check_resolved(&instance, true, shuffle, now);
                continue;
            }
            ctx.run.handle_timeout(now.mono);
            if let Some(g) = ctx.gather.as_mut() {
                g.handle_timeout(now.mono);
            }
            self.settle(&instance, now);
        }
    }

    /// Puts the run's next deadline in the heap if it is earlier than the one already there.
    fn rearm(&mut self, instance: &str) {
        let Some(ctx) = self.runs.get_mut(instance) else {
            return;
        };
        let next = [
            ctx.run.poll_timeout(),
            ctx.gather.as_ref().and_then(Gather::poll_timeout),
            ctx.resolving.as_ref().map(|r| r.deadline),
        ]
        .into_iter()
        .flatten()
        .min();
        if let Some(at) = next
            && ctx.armed.is_none_or(|armed| at < armed)
        {
            ctx.armed = Some(at);
            self.deadlines.push(Reverse((at, instance.to_string())));
        }
    }

    /// Says (in the store, for the API, the UI and `saltpeter status`) why these targets still
    /// wait, or that they no longer wait for that reason (`None`).
    fn show_waiting(&mut self, instance: &str, minions: &[String], why: Option<String>) {
        for m in minions {
            self.record(RunEvent::Waiting {
                instance: instance.into(),
                machine: m.clone(),
                why: why.clone(),
            });
        }
    }

    /// Carries out a run's actions, probes what Gather asks for, and retires finished runs.
    fn settle(&mut self, instance: &str, now: Now) {
        let Some(ctx) = self.runs.get_mut(instance) else {
            return;
        };
        let mut probes = Vec::new();
        let mut check_cache = false;
        if let Some(g) = ctx.gather.as_mut() {
            while let Some(action) = g.poll_action() {
                match action {
                    // Only minions still unconfirmed need asking.
                    GatherAction::Probe(minions) => {
                        let minions: Vec<String> = minions
                            .into_iter()
                            .filter(|m| ctx.run.is_unconfirmed(m))
                            .collect();
                        if !minions.is_empty() {
                            probes.push(minions);
                        }
                    }
                    GatherAction::CheckCache => check_cache = true,
                    // Down, unless its wrapper already proved otherwise (the engine knows).
                    GatherAction::GaveUp { minion, detail, .. } => {
                        ctx.run
                            .handle_target_down(&minion, detail.as_deref(), now.mono)
                    }
                }
            }
        }
        let jid = ctx.jid.clone();
        let (logdir, job) = (ctx.logdir.clone(), ctx.run.spec().job.clone());
        let mut actions = Vec::new();
        while let Some(a) = ctx.run.poll_action() {
            actions.push(a);
        }
        if check_cache {
            self.emit(Effect::ReadJobCache {
                instance: instance.into(),
                jid: jid.clone(),
            });
        }
        for minions in probes {
            let mut probe = Publish::about_job(minions.clone(), "saltutil.find_job", &jid);
            probe.jid = self.jid_gen.next(now.wall);
            let probe_jid = probe.jid.clone();
            self.route(Route::Probe, &probe_jid, instance);
            self.emit(Effect::Publish {
                instance: instance.into(),
                purpose: Purpose::Probe(minions),
                publish: probe,
                retry: false,
            });
        }
        for action in actions {
            self.act(instance, &jid, &logdir, &job, action, now);
        }
        self.rearm(instance);
    }

    fn act(
        &mut self,
        instance: &str,
        jid: &str,
        logdir: &std::path::Path,
        job: &str,
        action: Action,
        now: Now,
    ) {
        match action {
            Action::Log(line) => info!("{line}"),
            Action::TermJob { machines } => {
                let mut term = Publish::about_job(machines, "saltutil.term_job", jid);
                term.jid = self.jid_gen.next(now.wall);
                self.emit(Effect::Publish {
                    instance: instance.into(),
                    purpose: Purpose::Term,
                    publish: term,
                    retry: false,
                });
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
                    self.launch(instance, Some(batch), now);
                }
            }
            Action::SendKill { machine } => self.emit(Effect::Hub(HubCommand::Kill {
                instance: instance.into(),
                machine,
            })),
            // The wrapper forgets its result once acknowledged: only after the result is
            // committed (a crash in between must not lose it).
            Action::ConfirmComplete { machine } => {
                self.emit(Effect::HubAfterCommit(HubCommand::ConfirmComplete {
                    instance: instance.into(),
                    machine,
                }))
            }
            Action::TargetConfirmed { machine } => {
                // Its wrapper runs: Salt's gathering need not wait for, probe or give it up.
                if let Some(g) = self.runs.get_mut(instance).and_then(|c| c.gather.as_mut()) {
                    g.handle_settled(&machine);
                }
                self.record(RunEvent::Confirmed {
                    instance: instance.into(),
                    machine,
                    at: now.wall,
                })
            }
            Action::TargetEnded {
                machine,
                result,
                text,
            } => {
                // What the journal has not seen yet: Salt's text, saltpeter's own note.
                if !text.is_empty() {
                    self.record(RunEvent::Output {
                        instance: instance.into(),
                        machine: machine.clone(),
                        data: text,
                        seq: None,
                    });
                }
                self.record(RunEvent::TargetEnded {
                    instance: instance.into(),
                    machine: machine.clone(),
                    code: result.code,
                    note: result.note,
                    at: now.wall,
                });
                let entry = JobLogEntry::MachineResult {
                    instance: instance.into(),
                    machine,
                    code: result.code,
                    at: now.wall,
                };
                self.job_log(logdir, job, entry);
            }
            Action::RunEnded(outcome) => {
                info!(%instance, success = outcome.success, "run ended");
                self.record(RunEvent::RunEnded {
                    instance: instance.into(),
                    success: outcome.success,
                    succeeded: outcome.succeeded,
                    total: outcome.total,
                    at: now.wall,
                });
                self.job_log_record(logdir, job, &Record::End { instance }, now.wall);
                // After the confirmations queued before it.
                self.emit(Effect::HubAfterCommit(HubCommand::Unregister {
                    instance: instance.into(),
                }));
                self.forget(instance);
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

#[cfg(test)]
mod tests;
