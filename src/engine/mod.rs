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

use std::collections::{BTreeMap, VecDeque};
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
    Started { pid: i64, version: String },
    Output(String),
    Heartbeat,
    Completed { retcode: i64 },
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
        output: String,
    },
    RunEnded(RunOutcome),
}

#[derive(Clone, Debug, PartialEq)]
pub struct RunOutcome {
    pub success: bool,
    pub succeeded: usize,
    pub total: usize,
}

#[derive(Clone, Debug, PartialEq)]
enum State {
    /// Published; waiting for Salt's confirmation (no timeout).
    Expected,
    Confirmed {
        at: Mono,
        last_beat: Mono,
    },
    Done,
}

#[derive(Debug)]
struct Target {
    state: State,
    output: String,
    kill_requested: bool,
    started: bool,
}

#[derive(Debug)]
pub struct Run {
    spec: RunSpec,
    /// The publish reply arrived: the expected set is known.
    published: bool,
    targets: BTreeMap<String, Target>,
    actions: VecDeque<Action>,
    killed: bool,
    phase2_announced: bool,
    ended: bool,
    /// Each ended target's exit code.
    codes: BTreeMap<String, i64>,
    /// Batches still to publish after the current one.
    batches_left: usize,
}

impl Run {
    pub fn new(spec: RunSpec) -> Run {
        Run {
            spec,
            published: false,
            targets: BTreeMap::new(),
            actions: VecDeque::new(),
            killed: false,
            phase2_announced: false,
            ended: false,
            codes: BTreeMap::new(),
            batches_left: 0,
        }
    }

    pub fn spec(&self) -> &RunSpec {
        &self.spec
    }

    fn target(&mut self, machine: &str) -> &mut Target {
        self.targets
            .entry(machine.to_string())
            .or_insert_with(|| Target {
                state: State::Expected,
                output: String::new(),
                kill_requested: false,
                started: false,
            })
    }

    /// The targets were resolved before publishing (`number_of_targets`, `batch_size`,
    /// per-machine maintenance): `down` did not answer Salt's ping and end with 255; `batches`
    /// more publishes will follow the first, each after the previous one is done.
    pub fn handle_resolved(&mut self, down: &[String], batches: usize, now: Mono) {
        for m in down {
            self.target(m);
            self.end(m, codes::ERROR, Some("Target did not respond".into()), now);
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
            let killed = self.killed;
            self.target(m).kill_requested |= killed;
        }
        for m in missing {
            self.target(m);
            self.end(m, codes::ERROR, Some("Target did not respond".into()), now);
        }
        self.check_end(now);
    }

    /// The publish failed for good (the driver retried): every target fails with the reason.
    pub fn handle_publish_failed(&mut self, error: &str, now: Mono) {
        self.published = true;
        self.log(format!("SALT-MASTER ERROR: {error}"));
        let open: Vec<String> = self.open_targets();
        for m in open {
            self.end(
                &m,
                codes::ERROR,
                Some(format!("SALT-MASTER ERROR: {error}")),
                now,
            );
        }
        self.check_end(now);
    }

    /// Salt's return for the wrapper's launch on `machine`.
    pub fn handle_salt_return(&mut self, machine: &str, retcode: i64, text: &str, now: Mono) {
        if self.spec.legacy {
            // The command's own result: output and exit code.
            let t = self.target(machine);
            if t.state == State::Expected {
                t.output = text.to_string();
                let code = if t.kill_requested && retcode != 0 {
                    codes::KILLED
                } else {
                    retcode
                };
                self.end(machine, code, None, now);
                self.check_end(now);
            }
            return;
        }
        let t = self.target(machine);
        if matches!(t.state, State::Confirmed { .. }) && retcode == 0 {
            // The wrapper's `start` came first; Salt agrees.
            self.log(format!("Salt confirmed wrapper started on {machine}"));
            return;
        }
        if t.state != State::Expected {
            return; // the target already ended
        }
        if retcode == 0 {
            t.state = State::Confirmed {
                at: now,
                last_beat: now,
            };
            let kill = t.kill_requested;
            self.log(format!("Salt confirmed wrapper started on {machine}"));
            self.actions.push_back(Action::TargetConfirmed {
                machine: machine.into(),
            });
            if kill {
                self.actions.push_back(Action::SendKill {
                    machine: machine.into(),
                });
            }
        } else {
            self.log(format!(
                "Wrapper execution failed on {machine} (retcode={retcode}): {text}"
            ));
            self.end(machine, retcode, Some(text.to_string()), now);
        }
        self.check_end(now);
    }

    /// After a restart: `machine` had ended with `code` before (recorded already, so no
    /// action); it counts toward the run's outcome.
    pub fn handle_recovered(&mut self, machine: &str, code: i64) {
        self.target(machine).state = State::Done;
        self.codes.insert(machine.to_string(), code);
    }

    /// `machine` answered neither the job nor Salt's probe.
    pub fn handle_target_down(&mut self, machine: &str, now: Mono) {
        let legacy = self.spec.legacy;
        let t = self.target(machine);
        if t.state == State::Expected {
            // A legacy job terminated on request leaves no return: that is the kill's result.
            if legacy && t.kill_requested {
                self.end(
                    machine,
                    codes::KILLED,
                    Some("[Job terminated by user request]".into()),
                    now,
                );
            } else {
                self.end(
                    machine,
                    codes::ERROR,
                    Some("Target did not respond".into()),
                    now,
                );
            }
            self.check_end(now);
        }
    }

    pub fn handle_wrapper(&mut self, machine: &str, event: WrapperEvent, now: Mono) {
        let t = self.target(machine);
        if t.state == State::Done {
            return;
        }
        // Anything from the wrapper proves it runs: confirmed even if Salt's return is late.
        if t.state == State::Expected {
            t.state = State::Confirmed {
                at: now,
                last_beat: now,
            };
            let kill = t.kill_requested;
            self.actions.push_back(Action::TargetConfirmed {
                machine: machine.into(),
            });
            if kill {
                self.actions.push_back(Action::SendKill {
                    machine: machine.into(),
                });
            }
        }
        let t = self.target(machine);
        if let State::Confirmed { last_beat, .. } = &mut t.state {
            *last_beat = now;
        }
        match event {
            WrapperEvent::Started { .. } => t.started = true,
            WrapperEvent::Output(data) => t.output.push_str(&data),
            WrapperEvent::Heartbeat => {}
            WrapperEvent::Completed { retcode } => {
                self.end(machine, retcode, None, now);
                self.actions.push_back(Action::ConfirmComplete {
                    machine: machine.into(),
                });
            }
            WrapperEvent::Error(e) => self.end(
                machine,
                codes::ERROR,
                Some(format!("Wrapper error: {e}")),
                now,
            ),
        }
        self.check_end(now);
    }

    /// Kills one target (`Some`) or the whole run (`None`).
    pub fn handle_kill(&mut self, machine: Option<&str>, now: Mono) {
        let machines: Vec<String> = match machine {
            Some(m) => vec![m.to_string()],
            None => {
                self.killed = true;
                self.open_targets()
            }
        };
        let legacy = self.spec.legacy;
        let mut term = Vec::new();
        for m in machines {
            let t = self.target(&m);
            if t.state == State::Done || t.kill_requested {
                continue;
            }
            t.kill_requested = true;
            if legacy {
                term.push(m);
            } else if matches!(t.state, State::Confirmed { .. }) {
                self.actions.push_back(Action::SendKill { machine: m });
            }
        }
        if !term.is_empty() {
            self.actions.push_back(Action::TermJob { machines: term });
        }
        self.check_end(now);
    }

    /// Advances to `now`: heartbeat loss and the daemon-side timeout. Early calls do nothing.
    pub fn handle_timeout(&mut self, now: Mono) {
        let hb = self.spec.heartbeat_timeout;
        let limit = self.spec.timeout.map(|t| t + self.spec.timeout_grace);
        let mut ends = Vec::new();
        for (m, t) in &self.targets {
            let State::Confirmed { at, last_beat } = t.state else {
                continue;
            };
            if limit.is_some_and(|l| now >= at + l) {
                let secs = self.spec.timeout.map_or(0, |t| t.as_secs());
                ends.push((
                    m.clone(),
                    codes::TIMEOUT,
                    format!("[SALTPETER ERROR: Job exceeded timeout of {secs} seconds]"),
                    true,
                ));
            } else if now >= last_beat + hb {
                let note = format!(
                    "[SALTPETER ERROR: Job lost connection - no heartbeat for {} seconds]",
                    hb.as_secs()
                );
                ends.push((m.clone(), codes::HEARTBEAT_LOST, note, false));
            }
        }
        for (m, code, note, kill) in ends {
            if kill {
                self.actions
                    .push_back(Action::SendKill { machine: m.clone() });
            }
            self.end(&m, code, Some(note), now);
        }
        self.check_end(now);
    }

    /// When [`Run::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Mono> {
        let limit = self.spec.timeout.map(|t| t + self.spec.timeout_grace);
        self.targets
            .values()
            .filter_map(|t| match t.state {
                State::Confirmed { at, last_beat } => {
                    let beat = last_beat + self.spec.heartbeat_timeout;
                    Some(limit.map_or(beat, |l| beat.min(at + l)))
                }
                _ => None,
            })
            .min()
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
        self.targets.contains_key(machine)
    }

    /// Targets still waiting for Salt's confirmation.
    pub fn unconfirmed(&self) -> Vec<String> {
        self.targets
            .iter()
            .filter(|(_, t)| t.state == State::Expected)
            .map(|(m, _)| m.clone())
            .collect()
    }

    fn open_targets(&self) -> Vec<String> {
        self.targets
            .iter()
            .filter(|(_, t)| t.state != State::Done)
            .map(|(m, _)| m.clone())
            .collect()
    }

    fn log(&mut self, line: String) {
        self.actions.push_back(Action::Log(line));
    }

    fn end(&mut self, machine: &str, code: i64, note: Option<String>, now: Mono) {
        let t = self.target(machine);
        let confirmed_at = match t.state {
            State::Confirmed { at, .. } => Some(at),
            _ => None,
        };
        t.state = State::Done;
        self.codes.insert(machine.to_string(), code);
        let t = self.target(machine);
        let mut output = std::mem::take(&mut t.output);
        if let Some(n) = &note {
            // Saltpeter's own notes are part of what the user sees, as in the original.
            if !output.is_empty() && !output.ends_with('\n') {
                output.push('\n');
            }
            output.push_str(n);
            output.push('\n');
        }
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
            machine: machine.into(),
            result,
            output,
        });
    }

    fn check_end(&mut self, _now: Mono) {
        if self.ended || !self.published {
            return;
        }
        let expected = self.targets.values().any(|t| t.state == State::Expected);
        let confirmed = self
            .targets
            .values()
            .filter(|t| matches!(t.state, State::Confirmed { .. }))
            .count();
        if !expected && confirmed > 0 && !self.phase2_announced {
            self.phase2_announced = true;
            self.log(format!(
                "Monitoring WebSocket results for {confirmed} confirmed target(s)..."
            ));
        }
        if self.targets.values().all(|t| t.state == State::Done) {
            // Sequential batches: the next one starts when this one is done (unless killed).
            if self.batches_left > 0 && !self.killed {
                self.batches_left -= 1;
                self.published = false;
                self.phase2_announced = false;
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
        let total = self.codes.len();
        let succeeded = self.codes.values().filter(|c| **c == 0).count();
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
