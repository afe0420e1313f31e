//! The machines hub's decisions as a sans-IO state machine: which connection speaks for which
//! target, run tokens, output de-duplication across reconnects, kills repeated until the target
//! completes, and the typed events for the engine. Inputs are connection changes, decoded
//! messages with their arrival instant, commands and `now`; outputs are drained with
//! [`Registry::poll_output`]. No channels, no awaits, no clock reads: the shell in `mod.rs` does
//! the I/O and reads the clocks, so the tests drive it with virtual time.
//!
//! Every input costs the same whatever the number of runs and targets: connections and targets
//! are found by map lookups, and kills wait in their own heap, so a retry visits only the kills
//! that are due.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{Adopted, HubCommand, HubEvent, HubEventKind, KILL_RETRY, LATE_RESULTS_FOR, WINDOW};
use crate::protocol::{self, AckType, DaemonMsg, Ext, WrapperMsg, codes};

/// A connection, as numbered by the shell.
pub type ConnId = u64;

/// What the shell must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Send this message on the connection (dropped if it is gone or does not read).
    Send { conn: ConnId, msg: DaemonMsg },
    /// Close the connection, after what was sent before.
    Close { conn: ConnId },
    /// Report to the engine.
    Event(HubEvent),
}

/// Why a message was not taken; the text is what the wrapper reads.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    /// The message raced its connection's close: there is no one to answer.
    #[error("connection closed")]
    ConnectionGone,
    #[error("this connection belongs to {instance}:{machine}")]
    OtherTarget { instance: String, machine: String },
    #[error("Job no longer exists on server (stopped or restarted)")]
    RunGone,
    #[error("wrong run token")]
    BadToken,
    /// A tokenless (original) wrapper for a run that needs a token.
    #[error(
        "this run needs a run token; wrappers that send none are accepted only with \
         saltpeter_config.allow_legacy_wrappers: true, for jobs whose wrapper is not sp-wrapper"
    )]
    MissingToken,
    /// Salt has not named this machine for the run (yet: the publish reply may still be on
    /// its way, so the wrapper is told to try again rather than to give up).
    #[error("{machine} is not (yet) a target of {instance}")]
    NotATarget { instance: String, machine: String },
    /// A `resume` this daemon cannot have acknowledged.
    #[error("resume {resume} is past the output this daemon acknowledged ({next_seq} message(s))")]
    BadResume { resume: i64, next_seq: i64 },
}

impl Refusal {
    fn code(&self) -> &'static str {
        match self {
            Refusal::ConnectionGone | Refusal::OtherTarget { .. } | Refusal::BadResume { .. } => {
                codes::BAD_MESSAGE
            }
            Refusal::RunGone => codes::JOB_NOT_FOUND,
            Refusal::NotATarget { .. } => codes::NOT_A_TARGET,
            Refusal::BadToken | Refusal::MissingToken => codes::BAD_TOKEN,
        }
    }

    /// A connection that spoke for another target may still speak for its own.
    fn closes(&self) -> bool {
        !matches!(self, Refusal::OtherTarget { .. })
    }
}

/// Where a target's kill stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kill {
    NotAsked,
    /// Asked for; sent when the target's wrapper (re)connects.
    AwaitingConnection,
    /// Sent; sent again at this instant unless the target completes first. The heap entry with
    /// this instant is the live one; any other entry for the target is stale.
    RetryAt(Instant),
}

struct Target {
    /// The next output seq to accept.
    next_seq: i64,
    conn: Option<ConnId>,
    started: bool,
    /// `Some(retcode)` once the wrapper sent `complete`.
    completed: Option<i64>,
    /// The engine recorded the result.
    confirmed: bool,
    kill: Kill,
    /// Taken over from before a restart and not reconnected since: only then may a wrapper
    /// say it had more output acknowledged than this daemon has (acknowledged in the moments
    /// before a crash). In any other case a `resume` past `next_seq` is a lie.
    may_resume_past: bool,
}

struct Run {
    job_name: String,
    token: Option<String>,
    /// Wrappers that send no token are accepted (`allow_legacy_wrappers`, original wrapper).
    tokenless: bool,
    /// The machines Salt named for the run; no one else may speak for it.
    targets: HashMap<String, Target>,
    /// The run is over; only its targets that never completed are kept, until this instant.
    ended: Option<Instant>,
}

#[derive(Default)]
struct Conn {
    /// The (instance, machine) this connection speaks for, from its first message on.
    bound: Option<(String, String)>,
    protocol: u32,
}

/// A sent kill's next retry. Field order is the heap order: earliest first.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct KillDue {
    due: Instant,
    instance: String,
    machine: String,
}

/// What a message that was taken needs besides its target.
struct Admitted {
    /// The target changed connection: a pending kill goes to the new one at once.
    newly_bound: bool,
    protocol: u32,
}

/// Every registered run and target, which connection speaks for each, and the kills to repeat.
#[derive(Default)]
pub struct Registry {
    runs: HashMap<String, Run>,
    conns: HashMap<ConnId, Conn>,
    /// Kills sent and not yet completed, by when they are sent again. Entries are never
    /// removed early: one that no longer matches its target's [`Kill::RetryAt`] is dropped
    /// when it comes up.
    kills: BinaryHeap<Reverse<KillDue>>,
    /// Ended runs kept for late results, by when they go (an entry whose run no longer ends at
    /// that instant is stale).
    retire: BinaryHeap<Reverse<(Instant, String)>>,
    out: VecDeque<Output>,
    /// Kill entries looked at by [`Registry::handle_timeout`], to prove a retry does not scan.
    #[cfg(test)]
    kills_visited: usize,
}

impl Target {
    fn new() -> Target {
        Target {
            next_seq: 0,
            conn: None,
            started: false,
            completed: None,
            confirmed: false,
            kill: Kill::NotAsked,
            may_resume_past: false,
        }
    }
}

/// Where one message's replies and events go.
struct Answer<'a> {
    out: &'a mut VecDeque<Output>,
    conn: ConnId,
    instance: &'a str,
    machine: &'a str,
    at: Instant,
    stamp: &'a str,
}

impl Answer<'_> {
    fn send(&mut self, msg: DaemonMsg) {
        self.out.push_back(Output::Send {
            conn: self.conn,
            msg,
        });
    }

    fn ack(&mut self, ack_type: AckType, seq: Option<i64>) {
        let timestamp = self.stamp.to_string();
        self.send(DaemonMsg::Ack {
            ack_type,
            seq,
            timestamp,
            protocol: None,
            window: None,
        });
    }

    fn event(&mut self, kind: HubEventKind) {
        self.out.push_back(Output::Event(HubEvent {
            instance: self.instance.to_string(),
            machine: self.machine.to_string(),
            at: self.at,
            kind,
            held: Default::default(),
        }));
    }
}

impl Target {
    /// A `resume` may pass `next_seq` only for an adopted target's first reconnection, and
    /// never to the end of the sequence space.
    fn check_resume(&mut self, resume: Option<i64>) -> Result<(), Refusal> {
        let past = resume.is_some_and(|r| r >= self.next_seq);
        let first = std::mem::replace(&mut self.may_resume_past, false);
        match resume {
            Some(r) if past && (!first || r == i64::MAX || r < 0) => Err(Refusal::BadResume {
                resume: r,
                next_seq: self.next_seq,
            }),
            _ => Ok(()),
        }
    }

    fn on_connect(&mut self, resume: Option<i64>, protocol: u32, to: &mut Answer) {
        let (instance, machine) = (to.instance, to.machine);
        // The wrapper had more acknowledged than this daemon stored (acknowledged in the last
        // moments before a crash): continue after it, and say so.
        let gap = resume.filter(|r| *r >= self.next_seq).map(|r| {
            warn!(%instance, %machine, from = self.next_seq, to = r, "output acknowledged before a restart was not stored");
            let data = format!(
                "\n[saltpeter: output messages {}..={r} were lost in a daemon restart]\n",
                self.next_seq
            );
            self.next_seq = r + 1;
            HubEventKind::Output { data, seq: r }
        });
        if protocol >= 1 {
            let timestamp = to.stamp.to_string();
            to.send(DaemonMsg::Ack {
                ack_type: AckType::Connect,
                seq: Some(self.next_seq - 1).filter(|s| *s >= 0),
                timestamp,
                protocol: Some(protocol::PROTOCOL_VERSION),
                window: Some(WINDOW),
            });
        } else {
            to.ack(AckType::Connect, None);
        }
        if let Some(gap) = gap {
            to.event(gap);
        }
        info!("WebSocket: Client connected - {instance}:{machine}");
        to.event(HubEventKind::Connected { protocol });
    }

    fn on_start(&mut self, pid: i64, version: String, to: &mut Answer) {
        to.ack(AckType::Start, None);
        // Repeated after every reconnect; the engine hears the first.
        if !self.started {
            self.started = true;
            info!(
                "WebSocket: Job started - {}:{} (PID: {pid})",
                to.instance, to.machine
            );
            to.event(HubEventKind::Started { pid, version });
        }
    }

    fn on_output(&mut self, data: String, seq: i64, to: &mut Answer) {
        if seq == self.next_seq {
            self.next_seq += 1;
            to.ack(AckType::Output, Some(seq));
            to.event(HubEventKind::Output { data, seq });
        } else if seq < self.next_seq {
            // Already have it (sent again after a reconnect): acknowledge only.
            to.ack(AckType::Output, Some(seq));
        } else {
            let timestamp = to.stamp.to_string();
            to.send(DaemonMsg::Nack {
                nack_type: "out_of_order".into(),
                expected_seq: self.next_seq,
                received_seq: seq,
                timestamp,
            });
        }
    }

    fn on_complete(&mut self, retcode: i64, to: &mut Answer) {
        if self.confirmed {
            // Recorded already (the ack was lost): acknowledge again.
            to.ack(AckType::Complete, Some(self.next_seq));
        } else if self.completed.is_none() {
            self.completed = Some(retcode);
            info!(
                "WebSocket: Job completed - {}:{} (exit code: {retcode})",
                to.instance, to.machine
            );
            to.event(HubEventKind::Completed { retcode });
        }
        // Else: reported already, and the engine has not recorded it yet; the ack follows
        // its confirmation.
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Takes over a run from before a restart: its wrappers resume at the stored output seq.
    pub fn adopt(&mut self, run: &Adopted) {
        let targets = run
            .targets
            .iter()
            .map(|(machine, next_seq)| {
                let mut t = Target::new();
                t.next_seq = *next_seq;
                t.may_resume_past = true;
                (machine.clone(), t)
            })
            .collect();
        let adopted = Run {
            job_name: run.job_name.clone(),
            token: run.token.clone(),
            tokenless: run.tokenless,
            targets,
            ended: None,
        };
        self.runs.insert(run.instance.clone(), adopted);
    }

    /// What to do next, in order; `None` when there is nothing left.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Registry::handle_timeout`] is due next (a kill to send again, an ended run to
    /// forget).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let kill = self.kills.peek().map(|Reverse(k)| k.due);
        let retire = self.retire.peek().map(|Reverse((at, _))| *at);
        kill.into_iter().chain(retire).min()
    }

    pub fn handle_opened(&mut self, conn: ConnId) {
        self.conns.insert(conn, Conn::default());
    }

    /// The connection is gone; `at`: when the shell saw it go.
    pub fn handle_closed(&mut self, conn: ConnId, at: Instant) {
        let Some((instance, machine)) = self.conns.remove(&conn).and_then(|c| c.bound) else {
            return;
        };
        // A wrapper that reconnected already speaks through its new connection.
        let Some(t) = self
            .target_mut(&instance, &machine)
            .filter(|t| t.conn == Some(conn))
        else {
            return;
        };
        t.conn = None;
        self.out.push_back(Output::Event(HubEvent {
            instance,
            machine,
            at,
            kind: HubEventKind::Disconnected,
            held: Default::default(),
        }));
    }

    /// A frame that was not a valid message: the wrapper hears why, the connection stays.
    pub fn handle_bad_frame(&mut self, conn: ConnId, why: &str, stamp: &str) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        warn!(conn, error = %why, "machines hub: bad message");
        self.send_error(conn, codes::BAD_MESSAGE, why.to_string(), stamp);
    }

    /// A message from `conn`, read at `at`; `stamp` is the wall-clock time for the replies.
    pub fn handle_message(&mut self, conn: ConnId, msg: WrapperMsg, at: Instant, stamp: &str) {
        let header = msg.header();
        let (instance, machine) = (header.job_instance.clone(), header.machine.clone());
        let resume = match &msg {
            WrapperMsg::Connect { resume, .. } => *resume,
            _ => None,
        };
        let admitted = match self.admit(conn, &instance, &machine, msg.ext(), resume) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                self.refuse(conn, &instance, &machine, refusal, stamp);
                return;
            }
        };
        let Registry { runs, out, .. } = self;
        let Some(t) = runs
            .get_mut(&instance)
            .and_then(|r| r.targets.get_mut(&machine))
        else {
            return;
        };
        let mut to = Answer {
            out,
            conn,
            instance: &instance,
            machine: &machine,
            at,
            stamp,
        };
        match msg {
            WrapperMsg::Connect { resume, .. } => t.on_connect(resume, admitted.protocol, &mut to),
            WrapperMsg::Start { pid, version, .. } => t.on_start(pid, version, &mut to),
            WrapperMsg::Output { data, seq, .. } => t.on_output(data, seq, &mut to),
            WrapperMsg::Heartbeat { header, .. } => {
                let sent = header.timestamp.as_deref().unwrap_or(stamp);
                debug!("WebSocket: Heartbeat from {instance}:{machine} at {sent}");
                to.event(HubEventKind::Heartbeat);
            }
            WrapperMsg::SyncRequest { .. } => to.send(DaemonMsg::SyncResponse {
                last_seq: t.next_seq - 1,
                timestamp: stamp.to_string(),
            }),
            WrapperMsg::Complete { retcode, .. } => t.on_complete(retcode, &mut to),
            WrapperMsg::Error { error, .. } => to.event(HubEventKind::WrapperError { error }),
            WrapperMsg::Killed { .. } => {}
        }
        // A pending kill goes to a newly (re)connected wrapper at once.
        if admitted.newly_bound {
            self.send_kill(&instance, &machine, at, stamp);
        }
    }

    /// A command from the engine; `now` schedules kill retries, `stamp` dates what is sent.
    pub fn handle_command(&mut self, command: HubCommand, now: Instant, stamp: &str) {
        match command {
            HubCommand::Register {
                instance,
                job_name,
                machines,
                token,
                tokenless,
            } => {
                let run = Run {
                    job_name,
                    token,
                    tokenless,
                    targets: HashMap::new(),
                    ended: None,
                };
                self.runs.insert(instance.clone(), run);
                self.name(&instance, machines);
            }
            HubCommand::Name { instance, machines } => self.name(&instance, machines),
            HubCommand::Kill { instance, machine } => self.kill(&instance, machine, now, stamp),
            HubCommand::ConfirmComplete { instance, machine } => {
                self.confirm_complete(&instance, &machine, stamp)
            }
            HubCommand::Unregister { instance } => self.unregister(instance, now),
            HubCommand::Adopt(run) => self.adopt(&run),
            HubCommand::Release { instance } => {
                if let Some(run) = self.runs.remove(&instance) {
                    for t in run.targets.values() {
                        if let Some(conn) = t.conn {
                            self.out.push_back(Output::Close { conn });
                        }
                    }
                }
            }
        }
    }

    /// The run is over. Targets that never completed (ended by the daemon: heartbeat lost,
    /// timeout) are kept for [`LATE_RESULTS_FOR`]; their kill entries go stale.
    fn unregister(&mut self, instance: String, now: Instant) {
        let Some(run) = self.runs.get_mut(&instance) else {
            return;
        };
        run.targets.retain(|_, t| t.completed.is_none());
        for t in run.targets.values_mut() {
            t.kill = Kill::NotAsked;
        }
        if run.targets.is_empty() {
            self.runs.remove(&instance);
            return;
        }
        let until = now + LATE_RESULTS_FOR;
        run.ended = Some(until);
        self.retire.push(Reverse((until, instance)));
    }

    /// Sends again every kill due by `now` (and only those), and forgets ended runs whose late
    /// window is over.
    pub fn handle_timeout(&mut self, now: Instant, stamp: &str) {
        while self
            .retire
            .peek()
            .is_some_and(|Reverse((at, _))| *at <= now)
        {
            let Some(Reverse((at, instance))) = self.retire.pop() else {
                break;
            };
            if self
                .runs
                .get(&instance)
                .is_some_and(|r| r.ended == Some(at))
            {
                self.runs.remove(&instance);
            }
        }
        while self.kills.peek().is_some_and(|Reverse(k)| k.due <= now) {
            let Some(Reverse(k)) = self.kills.pop() else {
                break;
            };
            #[cfg(test)]
            {
                self.kills_visited += 1;
            }
            let live = self
                .target_mut(&k.instance, &k.machine)
                .is_some_and(|t| t.kill == Kill::RetryAt(k.due));
            if live {
                self.send_kill(&k.instance, &k.machine, now, stamp);
            }
        }
    }

    /// Salt named `machines` for the run: their wrappers may speak for it from now on.
    fn name(&mut self, instance: &str, machines: Vec<String>) {
        if let Some(run) = self.runs.get_mut(instance) {
            for m in machines {
                run.targets.entry(m).or_insert_with(Target::new);
            }
        }
    }

    fn kill(&mut self, instance: &str, machine: String, now: Instant, stamp: &str) {
        // A target that has not connected yet gets its kill when it does.
        let Some(t) = self.target_mut(instance, &machine) else {
            return;
        };
        t.kill = Kill::AwaitingConnection;
        self.send_kill(instance, &machine, now, stamp);
    }

    fn confirm_complete(&mut self, instance: &str, machine: &str, stamp: &str) {
        let Some(t) = self.target_mut(instance, machine) else {
            return;
        };
        t.confirmed = true;
        let (conn, seq) = (t.conn, t.next_seq);
        if let Some(conn) = conn {
            self.out.push_back(Output::Send {
                conn,
                msg: DaemonMsg::Ack {
                    ack_type: AckType::Complete,
                    seq: Some(seq),
                    timestamp: stamp.to_string(),
                    protocol: None,
                    window: None,
                },
            });
        }
    }

    /// Sends the target's kill, if one is asked for and it has not completed, to its current
    /// connection, and schedules the next try; without a connection it waits for one.
    fn send_kill(&mut self, instance: &str, machine: &str, now: Instant, stamp: &str) {
        let Some(run) = self.runs.get_mut(instance) else {
            return;
        };
        let Some(t) = run.targets.get_mut(machine) else {
            return;
        };
        if t.kill == Kill::NotAsked || t.completed.is_some() {
            return;
        }
        let Some(conn) = t.conn else {
            t.kill = Kill::AwaitingConnection;
            return;
        };
        let due = now + KILL_RETRY;
        t.kill = Kill::RetryAt(due);
        let msg = DaemonMsg::Kill {
            job_name: run.job_name.clone(),
            job_instance: instance.to_string(),
            machine: machine.to_string(),
            timestamp: stamp.to_string(),
        };
        self.out.push_back(Output::Send { conn, msg });
        self.kills.push(Reverse(KillDue {
            due,
            instance: instance.to_string(),
            machine: machine.to_string(),
        }));
    }

    /// Binds `conn` to the message's target on its first message of any kind and checks that
    /// it may speak for it; the target's current connection becomes `conn`.
    fn admit(
        &mut self,
        conn: ConnId,
        instance: &str,
        machine: &str,
        ext: Option<&Ext>,
        resume: Option<i64>,
    ) -> Result<Admitted, Refusal> {
        let c = self.conns.get_mut(&conn).ok_or(Refusal::ConnectionGone)?;
        // A connection speaks for one target only.
        match &c.bound {
            None => c.bound = Some((instance.to_string(), machine.to_string())),
            Some((i, m)) if i != instance || m != machine => {
                return Err(Refusal::OtherTarget {
                    instance: i.clone(),
                    machine: m.clone(),
                });
            }
            Some(_) => {}
        }
        if let Some(p) = ext.and_then(|e| e.protocol) {
            c.protocol = p;
        }
        let protocol = c.protocol;
        let run = self.runs.get_mut(instance).ok_or(Refusal::RunGone)?;
        // The run token: a wrong one is refused; none at all only where the operator allowed
        // the original wrapper for this job.
        if let Some(expected) = &run.token {
            match ext.and_then(|e| e.token.as_ref()) {
                Some(token) if !crate::secret::same(token.as_bytes(), expected.as_bytes()) => {
                    return Err(Refusal::BadToken);
                }
                None if !run.tokenless => return Err(Refusal::MissingToken),
                _ => {}
            }
        }
        let t = run
            .targets
            .get_mut(machine)
            .ok_or_else(|| Refusal::NotATarget {
                instance: instance.to_string(),
                machine: machine.to_string(),
            })?;
        // Checked before the connection becomes the target's: a lie takes nothing over.
        t.check_resume(resume)?;
        // The connection that spoke last is the target's current one (kills go there).
        let newly_bound = t.conn != Some(conn);
        t.conn = Some(conn);
        Ok(Admitted {
            newly_bound,
            protocol,
        })
    }

    fn refuse(
        &mut self,
        conn: ConnId,
        instance: &str,
        machine: &str,
        refusal: Refusal,
        stamp: &str,
    ) {
        match refusal {
            Refusal::ConnectionGone => return,
            Refusal::BadToken | Refusal::MissingToken | Refusal::BadResume { .. } => {
                warn!(%instance, %machine, error = %refusal, "machines hub: refused a wrapper")
            }
            Refusal::NotATarget { .. } => {
                debug!(%instance, %machine, "machines hub: not a target (yet)")
            }
            _ => {}
        }
        self.send_error(conn, refusal.code(), refusal.to_string(), stamp);
        if refusal.closes() {
            self.out.push_back(Output::Close { conn });
        }
    }

    fn send_error(&mut self, conn: ConnId, code: &str, message: String, stamp: &str) {
        let msg = DaemonMsg::Error {
            code: code.to_string(),
            message,
            timestamp: stamp.to_string(),
        };
        self.out.push_back(Output::Send { conn, msg });
    }

    fn target_mut(&mut self, instance: &str, machine: &str) -> Option<&mut Target> {
        self.runs
            .get_mut(instance)
            .and_then(|r| r.targets.get_mut(machine))
    }
}

#[cfg(test)]
mod tests;
