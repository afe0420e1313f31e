//! Gathering one job's returns, the way Salt's own client does, as a sans-IO state machine:
//! wait `timeout` for returns; then probe the silent minions with `saltutil.find_job`; a minion
//! that reports the job running is waited for again, one that answers neither is down.
//! Driven by inputs and `now` (a monotonic offset), so its tests need no clock.
//!
//! Before it gives up on a minion it asks its driver to read Salt's job cache once (a return
//! the event bus lost is no reason to call a minion down). Cost: a return is a map update and a
//! deadline touches only the minions still open.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use super::wire::JobRet;

/// Where one expected minion stands.
#[derive(Clone, Debug, PartialEq)]
pub enum MinionState {
    Waiting,
    /// Probed with `saltutil.find_job`; no answer yet.
    Probed,
    Returned(Box<JobRet>),
    NoReturn(NoReturn),
}

/// Why a minion will not return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoReturn {
    /// Named by a `list` target but has no accepted key.
    NoKey,
    /// Answered neither the job nor the probe.
    NotResponding,
    /// The probe said the job is not running there, and no return came.
    JobNotRunning,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GatherAction {
    /// Publish `saltutil.find_job <jid>` to these minions and feed their answers to
    /// [`Gather::handle_probe_reply`].
    Probe(Vec<String>),
    /// Read this job's returns from the master's job cache, feed them to
    /// [`Gather::handle_return`], then call [`Gather::handle_timeout`] again: some minions are
    /// about to be given up on.
    CheckCache,
    /// This minion will not return (reported once, when it is given up on).
    GaveUp { minion: String, why: NoReturn },
}

#[derive(Debug)]
pub struct Gather {
    jid: String,
    timeout: Duration,
    gather_timeout: Duration,
    minions: BTreeMap<String, MinionState>,
    /// Minions still waiting or probed: "is it done" is `is_empty`, a deadline visits only these.
    open: BTreeSet<String>,
    /// Minions whose probe said "not running": ended at the deadline unless a return comes.
    not_running: BTreeSet<String>,
    /// The job cache was read for this deadline already.
    cache_checked: bool,
    deadline: Option<Duration>,
    actions: VecDeque<GatherAction>,
}

impl Gather {
    /// `timeout`: how long to wait for returns before probing; `gather_timeout`: how long a
    /// probe may take (Salt's `--timeout` and `gather_job_timeout`).
    pub fn new(
        jid: &str,
        minions: &[String],
        missing: &[String],
        now: Duration,
        timeout: Duration,
        gather_timeout: Duration,
    ) -> Gather {
        let mut states: BTreeMap<String, MinionState> = minions
            .iter()
            .map(|m| (m.clone(), MinionState::Waiting))
            .collect();
        for m in missing {
            states.insert(m.clone(), MinionState::NoReturn(NoReturn::NoKey));
        }
        let open = minions
            .iter()
            .filter(|m| !missing.contains(m))
            .cloned()
            .collect();
        let mut gather = Gather {
            jid: jid.to_string(),
            timeout,
            gather_timeout,
            minions: states,
            open,
            not_running: BTreeSet::new(),
            cache_checked: false,
            deadline: None,
            actions: VecDeque::new(),
        };
        if !gather.is_done() {
            gather.deadline = Some(now + timeout);
        }
        gather
    }

    pub fn jid(&self) -> &str {
        &self.jid
    }

    /// A return for this job. Returns whether it was new (a late return after a minion was
    /// given up on still counts).
    pub fn handle_return(&mut self, ret: JobRet) -> bool {
        if ret.jid != self.jid {
            return false;
        }
        self.open.remove(&ret.id);
        match self.minions.get_mut(&ret.id) {
            Some(MinionState::Returned(_)) => false,
            Some(state) => {
                *state = MinionState::Returned(Box::new(ret));
                true
            }
            // A minion the master did not expect (e.g. a key accepted since): keep it.
            None => {
                self.minions
                    .insert(ret.id.clone(), MinionState::Returned(Box::new(ret)));
                true
            }
        }
    }

    /// A minion's answer to the probe: whether the job is still running there.
    pub fn handle_probe_reply(&mut self, minion: &str, running: bool) {
        let Some(state) = self.minions.get_mut(minion) else {
            return;
        };
        if *state != MinionState::Probed {
            return;
        }
        *state = MinionState::Waiting;
        if !running {
            self.not_running.insert(minion.to_string());
        }
    }

    /// The driver learned by other means that `minion` runs the job (its wrapper spoke): it is
    /// no longer waited for, probed or given up on.
    pub fn handle_settled(&mut self, minion: &str) {
        self.open.remove(minion);
        self.not_running.remove(minion);
    }

    /// The probe could not be published (the master is away): those minions wait again; a
    /// master that cannot be reached never makes a minion "not responding".
    pub fn handle_probe_failed(&mut self, minions: &[String]) {
        for m in minions {
            if let Some(state) = self
                .minions
                .get_mut(m)
                .filter(|s| **s == MinionState::Probed)
            {
                *state = MinionState::Waiting;
            }
        }
    }

    /// Advances to `now`. A call before the deadline does nothing. Before anyone is given up
    /// on, the driver is asked once to check the job cache ([`GatherAction::CheckCache`]).
    pub fn handle_timeout(&mut self, now: Duration) {
        if self.deadline.is_none_or(|d| now < d) {
            return;
        }
        let gives_up = self
            .open
            .iter()
            .any(|m| self.minions[m] == MinionState::Probed || self.not_running.contains(m));
        if gives_up && !self.cache_checked {
            self.cache_checked = true;
            self.actions.push_back(GatherAction::CheckCache);
            return;
        }
        self.cache_checked = false;
        let mut probe = Vec::new();
        let open = std::mem::take(&mut self.open);
        for minion in open {
            let state = self
                .minions
                .get_mut(&minion)
                .expect("open minions are known");
            let why = match state {
                MinionState::Probed => NoReturn::NotResponding,
                MinionState::Waiting if self.not_running.contains(&minion) => {
                    NoReturn::JobNotRunning
                }
                MinionState::Waiting => {
                    *state = MinionState::Probed;
                    probe.push(minion.clone());
                    self.open.insert(minion);
                    continue;
                }
                _ => continue,
            };
            *state = MinionState::NoReturn(why);
            self.actions.push_back(GatherAction::GaveUp { minion, why });
        }
        self.not_running.clear();
        self.deadline = None;
        if !probe.is_empty() {
            self.actions.push_back(GatherAction::Probe(probe));
            self.deadline = Some(now + self.gather_timeout);
        }
    }

    pub fn poll_action(&mut self) -> Option<GatherAction> {
        self.actions.pop_front()
    }

    /// When [`Gather::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Duration> {
        if self.is_done() { None } else { self.deadline }
    }

    pub fn is_done(&self) -> bool {
        self.open.is_empty()
    }

    pub fn minions(&self) -> &BTreeMap<String, MinionState> {
        &self.minions
    }

    /// The wait before probing, for messages.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value;

    const S: Duration = Duration::from_secs(1);

    fn ret(jid: &str, id: &str) -> JobRet {
        JobRet {
            id: id.into(),
            jid: jid.into(),
            fun: "test.ping".into(),
            fun_args: vec![],
            ret: Value::Boolean(true),
            retcode: Some(0),
            success: Some(true),
            stamp: None,
            out: None,
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn all_return_before_the_timeout() {
        let mut g = Gather::new("1", &names(&["a", "b"]), &[], Duration::ZERO, 5 * S, 10 * S);
        assert_eq!(g.poll_timeout(), Some(5 * S));
        assert!(g.handle_return(ret("1", "a")));
        assert!(!g.handle_return(ret("1", "a")), "duplicates are ignored");
        assert!(!g.handle_return(ret("2", "b")), "other jobs are ignored");
        assert!(g.handle_return(ret("1", "b")));
        assert!(g.is_done());
        assert_eq!(g.poll_timeout(), None);
    }

    #[test]
    fn silent_minions_are_probed_running_ones_waited_for_dead_ones_given_up() {
        let mut g = Gather::new(
            "1",
            &names(&["a", "b", "c", "d"]),
            &names(&["ghost"]),
            Duration::ZERO,
            5 * S,
            10 * S,
        );
        assert_eq!(g.minions()["ghost"], MinionState::NoReturn(NoReturn::NoKey));
        g.handle_return(ret("1", "a"));
        g.handle_timeout(4 * S);
        assert_eq!(
            g.poll_action(),
            None,
            "a spurious early timeout does nothing"
        );
        g.handle_timeout(5 * S);
        assert_eq!(
            g.poll_action(),
            Some(GatherAction::Probe(names(&["b", "c", "d"])))
        );
        assert_eq!(g.poll_timeout(), Some(15 * S));
        g.handle_probe_reply("b", true); // still running
        g.handle_probe_reply("c", false); // not running and no return (yet)
        g.handle_timeout(15 * S);
        // Before giving up on anyone, the job cache is read once.
        assert_eq!(g.poll_action(), Some(GatherAction::CheckCache));
        assert_eq!(g.poll_action(), None);
        assert_eq!(g.minions()["d"], MinionState::Probed);
        g.handle_timeout(15 * S);
        assert_eq!(
            g.poll_action(),
            Some(GatherAction::GaveUp {
                minion: "c".into(),
                why: NoReturn::JobNotRunning
            })
        );
        assert_eq!(
            g.poll_action(),
            Some(GatherAction::GaveUp {
                minion: "d".into(),
                why: NoReturn::NotResponding
            })
        );
        assert_eq!(
            g.minions()["d"],
            MinionState::NoReturn(NoReturn::NotResponding)
        );
        assert_eq!(
            g.minions()["c"],
            MinionState::NoReturn(NoReturn::JobNotRunning)
        );
        assert_eq!(g.poll_action(), Some(GatherAction::Probe(names(&["b"]))));
        assert!(!g.is_done());
        g.handle_return(ret("1", "b"));
        assert!(g.is_done());
        // A late return still counts.
        assert!(g.handle_return(ret("1", "d")));
    }

    #[test]
    fn a_probe_that_could_not_be_sent_proves_nothing() {
        let mut g = Gather::new("1", &names(&["a"]), &[], Duration::ZERO, 5 * S, 10 * S);
        g.handle_timeout(5 * S);
        assert_eq!(g.poll_action(), Some(GatherAction::Probe(names(&["a"]))));
        g.handle_probe_failed(&names(&["a"]));
        g.handle_timeout(15 * S);
        assert_eq!(
            g.minions()["a"],
            MinionState::Probed,
            "probed again, not given up"
        );
        assert_eq!(g.poll_action(), Some(GatherAction::Probe(names(&["a"]))));
    }

    #[test]
    fn a_return_found_in_the_job_cache_saves_a_silent_minion() {
        let mut g = Gather::new("1", &names(&["a"]), &[], Duration::ZERO, 5 * S, 10 * S);
        g.handle_timeout(5 * S);
        assert_eq!(g.poll_action(), Some(GatherAction::Probe(names(&["a"]))));
        g.handle_timeout(15 * S);
        assert_eq!(g.poll_action(), Some(GatherAction::CheckCache));
        // The bus lost it; the cache has it.
        assert!(g.handle_return(ret("1", "a")));
        g.handle_timeout(15 * S);
        assert_eq!(g.poll_action(), None, "nobody given up");
        assert!(g.is_done());
    }

    #[test]
    fn nothing_expected_is_done_at_once() {
        let g = Gather::new("1", &[], &names(&["ghost"]), Duration::ZERO, 5 * S, 10 * S);
        assert!(g.is_done());
        assert_eq!(g.poll_timeout(), None);
    }
}
