//! The run lifecycle as a sans-IO state machine: one [`Run`] per fired job instance, driven by
//! inputs (Salt's confirmations, wrapper events from the hub, kills, "target down") and the
//! monotonic `now` it is given; it answers with [`Action`]s and its next deadline.
//!
//! Phase 1 (no timeout: a busy master never fails a job): each expected minion is confirmed by
//! its Salt return with retcode 0 (or by its wrapper's `start`, which proves the same), or ends
//! at once with Salt's retcode and text. Phase 2 (confirmed targets only): heartbeats must keep
//! coming (else 253), the job's timeout counts from confirmation (plus a grace, else 124).
//!
//! Must not know: sockets, Salt's or the protocol's wire types, clocks, the config directory.
//! Every method name follows quinn's convention: `handle_*` inputs, `poll_*` outputs.
//!
//! Cost: every input costs O(log n) in the run's targets (a hash lookup, counters for "is it
//! over", ordered sets for the deadlines); the output itself never passes through here, so a
//! run's memory does not grow with what its jobs print.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

/// A monotonic instant, as an offset from an arbitrary origin chosen by the driver.
pub type Mono = Duration;

/// The exit codes saltpeter itself gives (the others are the job's).
pub mod codes {
    pub const TIMEOUT: i64 = 124;
    pub const NOT_EXECUTABLE: i64 = 126;
    pub const NOT_FOUND: i64 = 127;
    pub const KILLED: i64 = 143;
    pub const HEARTBEAT_LOST: i64 = 253;
    pub const LOCKED: i64 = 254;
    pub const ERROR: i64 = 255;
}

/// What an exit code means, for people.
pub fn meaning(code: i64) -> &'static str {
    match code {
        0 => "success",
        codes::TIMEOUT => "job timeout",
        codes::NOT_EXECUTABLE => "wrapper not executable",
        codes::NOT_FOUND => "wrapper not found",
        codes::KILLED => "killed by user request",
        codes::HEARTBEAT_LOST => "heartbeat lost",
        codes::LOCKED => "overlap refused by the wrapper's lock",
        codes::ERROR => "error",
        129..=192 => "killed by a signal",
        _ => "the command's exit status",
    }
}

/// How long a kill may take before the daemon ends the target itself: the wrapper's own
/// escalation (SIGTERM, 5 s, SIGKILL) and its report fit well within it.
pub const KILL_WAIT: Duration = Duration::from_secs(10);

/// A negative code from the original wrapper within this of the job's timeout is its timeout
/// kill (its clock starts a little before the daemon's confirmation does).
const TIMEOUT_SLACK: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq)]
pub struct RunSpec {
    pub job: String,
    pub instance: String,
    /// The job's timeout (`None`: no limit), counted from each target's confirmation.
    pub timeout: Option<Duration>,
    /// How long a confirmed target may stay silent.
    pub heartbeat_timeout: Duration,
    /// Added to `timeout` before the daemon ends a target itself (the wrapper should first).
    pub timeout_grace: Duration,
    /// Fraction of targets that must succeed; `None`: all (the original's rule).
    pub success_threshold: Option<f64>,
    /// Legacy mode (`use_wrapper: false`): Salt runs the command itself; its return is the
    /// result (no Phase 2), and a kill is Salt's `saltutil.term_job`.
    pub legacy: bool,
}

/// What one target ended with.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetResult {
    pub code: i64,
    /// Saltpeter's or Salt's own text, when the code is not the job's.
    pub note: Option<String>,
    pub confirmed_at: Option<Mono>,
    pub ended_at: Mono,
}

/// Wrapper events, in the engine's terms.
#[derive(Clone, Debug, PartialEq)]
pub enum WrapperEvent {
    Started {
        pid: i64,
        version: String,
    },
    /// Output went to the journal; the engine only needs to know whether it ended a line
    /// (so a note appended at the end starts on a line of its own).
    Output {
        ends_line: bool,
    },
    Heartbeat,
    Completed {
        retcode: i64,
    },
    Error(String),
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// A log line (INFO), with the original's wording where it had one.
    Log(String),
    SendKill {
        machine: String,
    },
    /// Publish the next batch of targets (`batch_size`); its reply goes to
    /// [`Run::handle_published`] as usual.
    NextBatch,
    /// Legacy mode: ask Salt to terminate the job on these minions.
    TermJob {
        machines: Vec<String>,
    },
    /// Phase 1 is over for this target (Salt's return or the wrapper's first message).
    TargetConfirmed {
        machine: String,
    },
    /// The target's result is recorded: acknowledge the wrapper's `complete`.
    ConfirmComplete {
        machine: String,
    },
    TargetEnded {
        machine: String,
        result: TargetResult,
        /// Text the journal has not seen: Salt's output in legacy mode, then saltpeter's own
        /// note (on a line of its own), as the original showed them after the output.
        text: String,
    },
    RunEnded(RunOutcome),
}

#[derive(Clone, Debug, PartialEq)]
pub struct RunOutcome {
    pub success: bool,
    pub succeeded: usize,
    pub total: usize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    /// Published; waiting for Salt's confirmation (no timeout).
    Expected,
    Confirmed {
        at: Mono,
        last_beat: Mono,
    },
    Done,
}

/// A target, by its index in [`Run::names`] (deadline sets hold indices, not strings).
type Idx = usize;

#[derive(Debug)]
struct Target {
    state: State,
    kill_requested: bool,
    /// When an asked-for kill gives up waiting for the wrapper (its entry in `kills`).
    kill_due: Option<Mono>,
    /// What the journal saw last ended a line (or nothing was printed yet).
    at_line_start: bool,
    /// Salt's return for the launch was seen (its confirmation is logged once).
    salt_seen: bool,
}

#[derive(Debug)]
pub struct Run {
    spec: RunSpec,
    /// The publish reply arrived: the expected set is known.
    published: bool,
    names: Vec<String>,
    index: HashMap<String, Idx>,
    targets: Vec<Target>,
    actions: VecDeque<Action>,
    killed: bool,
    phase2_announced: bool,
    ended: bool,
    /// Targets per state: "is it over" and "who waits" are counters, not scans.
    expected: usize,
    confirmed: usize,
    /// Targets of the current batch that passed Phase 1 (the "Monitoring …" line's count).
    passed_phase1: usize,
    /// Ended targets (including those recovered after a restart) and how many ended 0.
    total: usize,
    succeeded: usize,
    /// Heartbeat deadlines: (last beat, target), one entry per confirmed target.
    beats: BTreeSet<(Mono, Idx)>,
    /// Daemon-side timeouts: (confirmation + timeout + grace, target).
    limits: BTreeSet<(Mono, Idx)>,
    /// Kills not yet answered: (asked + [`KILL_WAIT`], target).
    kills: BTreeSet<(Mono, Idx)>,
    /// Batches still to publish after the current one.
    batches_left: usize,
}

impl Run {
    pub fn new(spec: RunSpec) -> Run {
        Run {
            spec,
            published: false,
            names: Vec::new(),
            index: HashMap::new(),
            targets: Vec::new(),
            actions: VecDeque::new(),
            killed: false,
            phase2_announced: false,
            ended: false,
            expected: 0,
            confirmed: 0,
            passed_phase1: 0,
            total: 0,
            succeeded: 0,
            beats: BTreeSet::new(),
            limits: BTreeSet::new(),
            kills: BTreeSet::new(),
            batches_left: 0,
        }
    }

    pub fn spec(&self) -> &RunSpec {
        &self.spec
    }

    /// The target's index, created (expected) on first sight.
    fn target(&mut self, machine: &str) -> Idx {
        if let Some(i) = self.index.get(machine) {
            return *i;
        }
        let i = self.targets.len();
        self.names.push(machine.to_string());
        self.index.insert(machine.to_string(), i);
        self.targets.push(Target {
            state: State::Expected,
            kill_requested: false,
            kill_due: None,
            at_line_start: true,
            salt_seen: false,
        });
        self.expected += 1;
        i
    }

    /// Moves target `i` to `state`, keeping the counters and deadline sets in step.
    fn set_state(&mut self, i: Idx, state: State) {
        let old = self.targets[i].state;
        match old {
            State::Expected => self.expected -= 1,
            State::Confirmed { at, last_beat } => {
                self.confirmed -= 1;
                self.beats.remove(&(last_beat, i));
                if let Some(l) = self.limit() {
                    self.limits.remove(&(at + l, i));
                }
            }
            State::Done => {}
        }
        match state {
            State::Expected => self.expected += 1,
            State::Confirmed { at, last_beat } => {
                self.confirmed += 1;
                self.beats.insert((last_beat, i));
                if let Some(l) = self.limit() {
                    self.limits.insert((at + l, i));
                }
            }
            State::Done => {
                if let Some(due) = self.targets[i].kill_due.take() {
                    self.kills.remove(&(due, i));
                }
            }
        }
        self.targets[i].state = state;
    }

    /// How long after confirmation the daemon ends a target itself.
    fn limit(&self) -> Option<Duration> {
        if self.spec.legacy {
            return None;
        }
        self.spec.timeout.map(|t| t + self.spec.timeout_grace)
    }

    /// Phase 1 is over for target `i` at `now`: its heartbeat clock starts.
    fn confirm(&mut self, i: Idx, now: Mono) {
        self.set_state(
            i,
            State::Confirmed {
                at: now,
                last_beat: now,
            },
        );
        self.passed_phase1 += 1;
        let machine = self.names[i].clone();
        self.actions.push_back(Action::TargetConfirmed {
            machine: machine.clone(),
        });
        if self.targets[i].kill_requested {
            self.actions.push_back(Action::SendKill { machine });
        }
    }

    /// The targets were resolved before publishing (`number_of_targets`, `batch_size`,
    /// per-machine maintenance): `down` did not answer Salt's ping and end with 255; `batches`
    /// more publishes will follow the first, each after the previous one is done.
    pub fn handle_resolved(&mut self, down: &[String], batches: usize, now: Mono) {
        for m in down {
            let i = self.target(m);
            self.end(i, codes::ERROR, Some("Target did not respond".into()), now);
        }
        self.batches_left = batches.saturating_sub(1);
    }

    /// Salt accepted the publish: `minions` are expected; `missing` (list targets without a
    /// key) will never answer.
    pub fn handle_published(
        &mut self,
        jid: &str,
        minions: &[String],
        missing: &[String],
        now: Mono,
    ) {
        self.published = true;
        if self.spec.legacy {
            self.log(format!("Waiting for Salt to return job {jid}..."));
        } else {
            self.log(format!(
                "Waiting for Salt to confirm wrapper execution for job {jid}..."
            ));
        }
        for m in minions {
            // A run killed before Salt answered kills each target as it confirms.
            let i = self.target(m);
            if self.killed && !self.targets[i].kill_requested {
                self.request_kill(i, now);
            }
        }
        for m in missing {
            let i = self.target(m);
            self.end(i, codes::ERROR, Some("Target did not respond".into()), now);
        }
        self.check_end();
    }

    /// The publish failed for good (the driver retried): every target fails with the reason.
    pub fn handle_publish_failed(&mut self, error: &str, now: Mono) {
        self.published = true;
        self.log(format!("SALT-MASTER ERROR: {error}"));
        for i in self.open_targets() {
            self.end(
                i,
                codes::ERROR,
                Some(format!("SALT-MASTER ERROR: {error}")),
                now,
            );
        }
        self.check_end();
    }

    /// Salt's return for the wrapper's launch on `machine`.
    pub fn handle_salt_return(&mut self, machine: &str, retcode: i64, text: &str, now: Mono) {
        let i = self.target(machine);
        if self.spec.legacy {
            // The command's own result: output and exit code.
            let t = &self.targets[i];
            if t.state == State::Expected {
                let code = if t.kill_requested && retcode != 0 {
                    codes::KILLED
                } else {
                    retcode
                };
                self.end_with(i, code, None, text.to_string(), now);
                self.check_end();
            }
            return;
        }
        let first = !std::mem::replace(&mut self.targets[i].salt_seen, true);
        match self.targets[i].state {
            State::Expected if retcode == 0 => {
                self.log(format!("Salt confirmed wrapper started on {machine}"));
                self.confirm(i, now);
            }
            State::Expected => {
                self.log(format!(
                    "Wrapper execution failed on {machine} (retcode={retcode}): {text}"
                ));
                self.end(i, retcode, Some(text.to_string()), now);
            }
            // The wrapper's first message came first; Salt agrees (operators grep for this).
            _ if retcode == 0 && first => self.log(format!(
                "Salt confirmed wrapper started on {machine} (the wrapper had confirmed first)"
            )),
            _ => {}
        }
        self.check_end();
    }

    /// After a restart: `machine` had ended with `code` before (recorded already, so no
    /// action); it counts toward the run's outcome.
    pub fn handle_recovered(&mut self, machine: &str, code: i64) {
        let i = self.target(machine);
        if self.targets[i].state != State::Done {
            self.set_state(i, State::Done);
            self.count_result(code);
        }
    }

    /// `machine` answered neither the job nor Salt's probe; `why`: Salt's own words, when it
    /// said the minion is unknown to it.
    pub fn handle_target_down(&mut self, machine: &str, why: Option<&str>, now: Mono) {
        let i = self.target(machine);
        let t = &self.targets[i];
        if t.state == State::Expected {
            // A legacy job terminated on request leaves no return: that is the kill's result.
            if self.spec.legacy && t.kill_requested {
                self.end(
                    i,
                    codes::KILLED,
                    Some("[Job terminated by user request]".into()),
                    now,
                );
            } else {
                let note = why.unwrap_or("Target did not respond").to_string();
                self.end(i, codes::ERROR, Some(note), now);
            }
            self.check_end();
        }
    }

    /// A message from `machine`'s wrapper; `now` is when the hub received it, so a backlog
    /// in between never turns into a lost heartbeat.
    pub fn handle_wrapper(&mut self, machine: &str, event: WrapperEvent, now: Mono) {
        let i = self.target(machine);
        match self.targets[i].state {
            State::Done => return,
            // Anything from the wrapper proves it runs: confirmed even if Salt's return is late.
            State::Expected => self.confirm(i, now),
            State::Confirmed { at, last_beat } => {
                if now > last_beat {
                    self.beats.remove(&(last_beat, i));
                    self.beats.insert((now, i));
                    self.targets[i].state = State::Confirmed { at, last_beat: now };
                }
            }
        }
        match event {
            WrapperEvent::Started { .. } | WrapperEvent::Heartbeat => {}
            WrapperEvent::Output { ends_line } => self.targets[i].at_line_start = ends_line,
            WrapperEvent::Completed { retcode } => {
                let (code, note) = self.normalise(i, retcode, now);
                self.end(i, code, note, now);
                self.actions.push_back(Action::ConfirmComplete {
                    machine: machine.into(),
                });
            }
            WrapperEvent::Error(e) => {
                self.end(i, codes::ERROR, Some(format!("Wrapper error: {e}")), now)
            }
        }
        self.check_end();
    }

    /// The original wrapper reports a command killed by signal N as -N (Python's `returncode`),
    /// even after a kill or its timeout: recorded as 143 after a kill, 124 at the job's
    /// timeout, else 128+N as a shell would, with the raw value in the note.
    fn normalise(&self, i: Idx, retcode: i64, now: Mono) -> (i64, Option<String>) {
        if retcode >= 0 {
            return (retcode, None);
        }
        let t = &self.targets[i];
        let signal = retcode.unsigned_abs().min(127) as i64;
        let timed_out = match (t.state, self.spec.timeout) {
            (State::Confirmed { at, .. }, Some(limit)) => now + TIMEOUT_SLACK >= at + limit,
            _ => false,
        };
        let code = if t.kill_requested {
            codes::KILLED
        } else if timed_out {
            codes::TIMEOUT
        } else {
            128 + signal
        };
        let note = format!(
            "[saltpeter: the wrapper reported exit code {retcode} (the command was killed by signal {signal}); recorded as {code}: {}]",
            meaning(code)
        );
        (code, Some(note))
    }

    /// Marks target `i` as to be killed; if no result comes within [`KILL_WAIT`], the daemon
    /// ends it itself (so every run can be ended, whatever the wrapper or Salt do).
    fn request_kill(&mut self, i: Idx, now: Mono) {
        let t = &mut self.targets[i];
        t.kill_requested = true;
        let due = now + KILL_WAIT;
        t.kill_due = Some(due);
        self.kills.insert((due, i));
    }

    /// Kills one target (`Some`) or the whole run (`None`).
    pub fn handle_kill(&mut self, machine: Option<&str>, now: Mono) {
        let machines: Vec<Idx> = match machine {
            Some(m) => vec![self.target(m)],
            None => {
                self.killed = true;
                self.open_targets()
            }
        };
        let mut term = Vec::new();
        for i in machines {
            let t = &self.targets[i];
            if t.state == State::Done || t.kill_requested {
                continue;
            }
            let confirmed = matches!(t.state, State::Confirmed { .. });
            self.request_kill(i, now);
            if self.spec.legacy {
                term.push(self.names[i].clone());
            } else if confirmed {
                self.actions.push_back(Action::SendKill {
                    machine: self.names[i].clone(),
                });
            }
        }
        if !term.is_empty() {
            self.actions.push_back(Action::TermJob { machines: term });
        }
        self.check_end();
    }

    /// Advances to `now`: heartbeat loss and the daemon-side timeout. Early calls do nothing;
    /// the cost is that of the targets that are due, whatever the run's size.
    pub fn handle_timeout(&mut self, now: Mono) {
        while let Some(&(deadline, i)) = self.limits.first() {
            if now < deadline {
                break;
            }
            let secs = self.spec.timeout.map_or(0, |t| t.as_secs());
            self.actions.push_back(Action::SendKill {
                machine: self.names[i].clone(),
            });
            let note = format!("[SALTPETER ERROR: Job exceeded timeout of {secs} seconds]");
            self.end(i, codes::TIMEOUT, Some(note), now);
        }
        while let Some(&(due, i)) = self.kills.first() {
            if now < due {
                break;
            }
            let note = if self.spec.legacy {
                "[Job terminated by user request]".to_string()
            } else if matches!(self.targets[i].state, State::Expected) {
                // The kill stays pending in the hub: a wrapper that starts late is killed.
                "[Job killed before it started: Salt had not confirmed the wrapper]".to_string()
            } else {
                format!(
                    "[Job terminated by user request - no result from the wrapper within {} seconds]",
                    KILL_WAIT.as_secs()
                )
            };
            self.end(i, codes::KILLED, Some(note), now);
        }
        let hb = self.spec.heartbeat_timeout;
        while let Some(&(last_beat, i)) = self.beats.first() {
            if now < last_beat + hb {
                break;
            }
            let note = format!(
                "[SALTPETER ERROR: Job lost connection - no heartbeat for {} seconds]",
                hb.as_secs()
            );
            self.end(i, codes::HEARTBEAT_LOST, Some(note), now);
        }
        self.check_end();
    }

    /// When [`Run::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Mono> {
        let beat = self
            .beats
            .first()
            .map(|(b, _)| *b + self.spec.heartbeat_timeout);
        let limit = self.limits.first().map(|(l, _)| *l);
        let kill = self.kills.first().map(|(k, _)| *k);
        [beat, limit, kill].into_iter().flatten().min()
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Every target has a result.
    pub fn is_done(&self) -> bool {
        self.ended
    }

    /// Whether `machine` is one of this run's targets.
    pub fn has_target(&self, machine: &str) -> bool {
        self.index.contains_key(machine)
    }

    /// Whether `machine` is a target still waiting for Salt's confirmation.
    pub fn is_unconfirmed(&self, machine: &str) -> bool {
        self.index
            .get(machine)
            .is_some_and(|i| self.targets[*i].state == State::Expected)
    }

    /// Whether `machine` is a target that has its result already.
    pub fn has_ended(&self, machine: &str) -> bool {
        self.index
            .get(machine)
            .is_some_and(|i| self.targets[*i].state == State::Done)
    }

    /// Targets still waiting for Salt's confirmation (a scan: for a restart, not per event).
    pub fn unconfirmed(&self) -> Vec<String> {
        (0..self.targets.len())
            .filter(|i| self.targets[*i].state == State::Expected)
            .map(|i| self.names[i].clone())
            .collect()
    }

    fn open_targets(&self) -> Vec<Idx> {
        (0..self.targets.len())
            .filter(|i| self.targets[*i].state != State::Done)
            .collect()
    }

    fn log(&mut self, line: String) {
        self.actions.push_back(Action::Log(line));
    }

    fn count_result(&mut self, code: i64) {
        self.total += 1;
        if code == 0 {
            self.succeeded += 1;
        }
    }

    fn end(&mut self, i: Idx, code: i64, note: Option<String>, now: Mono) {
        self.end_with(i, code, note, String::new(), now);
    }

    /// Ends target `i`; `text` is output the journal has not seen (Salt's, in legacy mode).
    fn end_with(&mut self, i: Idx, code: i64, note: Option<String>, mut text: String, now: Mono) {
        let confirmed_at = match self.targets[i].state {
            State::Confirmed { at, .. } => Some(at),
            _ => None,
        };
        let at_line_start = if text.is_empty() {
            self.targets[i].at_line_start
        } else {
            text.ends_with('\n')
        };
        self.set_state(i, State::Done);
        self.count_result(code);
        if let Some(n) = &note {
            // Saltpeter's own notes are part of what the user sees, as in the original.
            if !at_line_start {
                text.push('\n');
            }
            text.push_str(n);
            text.push('\n');
        }
        let machine = self.names[i].clone();
        self.log(format!(
            "Result for {}:{machine}: exit code {code} ({})",
            self.spec.instance,
            meaning(code)
        ));
        let result = TargetResult {
            code,
            note,
            confirmed_at,
            ended_at: now,
        };
        self.actions.push_back(Action::TargetEnded {
            machine,
            result,
            text,
        });
    }

    fn check_end(&mut self) {
        if self.ended || !self.published {
            return;
        }
        if self.expected == 0 && self.passed_phase1 > 0 && !self.phase2_announced {
            self.phase2_announced = true;
            self.log(format!(
                "Monitoring WebSocket results for {} confirmed target(s)...",
                self.passed_phase1
            ));
        }
        if self.expected == 0 && self.confirmed == 0 {
            // Sequential batches: the next one starts when this one is done (unless killed).
            if self.batches_left > 0 && !self.killed {
                self.batches_left -= 1;
                self.published = false;
                self.phase2_announced = false;
                self.passed_phase1 = 0;
                self.actions.push_back(Action::NextBatch);
                return;
            }
            self.ended = true;
            if self.phase2_announced {
                self.log(format!(
                    "WebSocket: All targets completed for {}, exiting monitor loop",
                    self.spec.job
                ));
            }
            let outcome = self.outcome();
            self.log(format!(
                "Completed: {}/{} targets successful",
                outcome.succeeded, outcome.total
            ));
            self.actions.push_back(Action::RunEnded(outcome));
        }
    }

    /// The run's success: the original's rule (every target 0, and at least one target), or
    /// the job's `success_threshold` fraction.
    fn outcome(&self) -> RunOutcome {
        let (total, succeeded) = (self.total, self.succeeded);
        let success = match self.spec.success_threshold {
            None => total > 0 && succeeded == total,
            Some(f) => total > 0 && succeeded as f64 >= f * total as f64,
        };
        RunOutcome {
            success,
            succeeded,
            total,
        }
    }
}

#[cfg(test)]
mod tests;
