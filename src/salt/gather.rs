//! Gathering one job's returns, the way Salt's own client does, as a sans-IO state machine:
//! wait `timeout` for returns; then probe the silent minions with `saltutil.find_job`; a minion
//! that reports the job running is waited for again, one that answers neither is down.
//! Driven by inputs and `now` (a monotonic offset), so its tests need no clock.
//!
//! Before it gives up on a minion it asks its driver to read Salt's job cache once (a return
//! the event bus lost is no reason to call a minion down). A probe's clock starts when Salt
//! accepted it, never before: a probe that waits for the master, or cannot be delivered, proves
//! nothing, and is tried again with backoff, forever; only Salt's own answer that it knows no
//! such minion ends one at once. Cost: a return is a map update and a
//! deadline touches only the minions still open.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use super::wire::JobRet;

/// Where one expected minion stands.
#[derive(Clone, Debug, PartialEq)]
pub enum MinionState {
    Waiting,
    /// A probe was asked for; Salt has not accepted it yet (no clock runs).
    Sending,
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
    /// Salt matched no such minion for the probe (its key is gone).
    Unknown,
}

impl NoReturn {
    pub fn as_str(self) -> &'static str {
        match self {
            NoReturn::NoKey => "no accepted key",
            NoReturn::NotResponding => "not responding",
            NoReturn::JobNotRunning => "job not running, no return",
            NoReturn::Unknown => "unknown to the master",
        }
    }
}

/// The first wait before a probe that could not be delivered is tried again; it doubles up
/// to [`PROBE_RETRY_MAX`].
pub const PROBE_RETRY_FIRST: Duration = Duration::from_secs(10);
pub const PROBE_RETRY_MAX: Duration = Duration::from_secs(120);

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
    /// This minion will not return (reported once, when it is given up on); `detail`: Salt's
    /// own words, when it said so.
    GaveUp {
        minion: String,
        why: NoReturn,
        detail: Option<String>,
    },
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
    /// The wait before the next try of an undelivered probe.
    retry: Duration,
    /// Why the last probe was not delivered, and when it is tried again (cleared on delivery).
    trouble: Option<(String, Duration)>,
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
            .filter(|m| states.get(*m) == Some(&MinionState::Waiting))
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
            retry: PROBE_RETRY_FIRST,
            trouble: None,
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
        // An answer may beat the publish reply that says the probe was accepted.
        if !matches!(state, MinionState::Probed | MinionState::Sending) {
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

    /// Salt accepted the probe at `now`: `matched` are the minions it was sent to, and from
    /// now they have `gather_timeout` to answer. Those Salt did not match are unknown to it.
    pub fn handle_probe_sent(&mut self, minions: &[String], matched: &[String], now: Duration) {
        self.trouble = None;
        self.retry = PROBE_RETRY_FIRST;
        // A set: probes of thousands of minions are answered by lists as long.
        let matched: BTreeSet<&str> = matched.iter().map(String::as_str).collect();
        let mut sent = false;
        for m in minions {
            if !self.open.contains(m) {
                continue;
            }
            if matched.contains(m.as_str()) {
                // Its answer may have come first (then it waits again, judged at the deadline).
                if self.minions.get(m) == Some(&MinionState::Sending) {
                    self.minions.insert(m.clone(), MinionState::Probed);
                }
                sent = true;
            } else if self.minions.get(m) == Some(&MinionState::Sending) {
                let detail =
                    "Salt matched no such minion for the probe (is its key still accepted?)";
                self.give_up(m, NoReturn::Unknown, Some(detail.into()));
            }
        }
        if sent {
            self.deadline = Some(now + self.gather_timeout);
        }
    }

    /// The probe could not be delivered (the master is away or failing): those minions wait
    /// again, and the probe is tried again after a backoff, forever; a master that cannot be
    /// reached never makes a minion "not responding". `why` is shown while they wait.
    pub fn handle_probe_failed(&mut self, minions: &[String], why: &str, now: Duration) {
        let mut any = false;
        for m in minions {
            if let Some(state) = self
                .minions
                .get_mut(m)
                .filter(|s| **s == MinionState::Sending)
            {
                *state = MinionState::Waiting;
                any = true;
            }
        }
        if any {
            let at = now + self.retry;
            self.trouble = Some((why.to_string(), at));
            self.deadline = Some(at);
            self.retry = (self.retry * 2).min(PROBE_RETRY_MAX);
        }
    }

    /// Salt refused the probe for good: it knows none of these minions (`detail`: its words).
    pub fn handle_probe_refused(&mut self, minions: &[String], detail: &str) {
        self.trouble = None;
        for m in minions {
            if self.minions.get(m) == Some(&MinionState::Sending) {
                self.give_up(m, NoReturn::Unknown, Some(detail.to_string()));
            }
        }
    }

    /// Why the last probe was not delivered and when it is tried again (`None` once one was).
    pub fn trouble(&self) -> Option<(&str, Duration)> {
        self.trouble.as_ref().map(|(why, at)| (why.as_str(), *at))
    }

    fn give_up(&mut self, minion: &str, why: NoReturn, detail: Option<String>) {
        self.open.remove(minion);
        self.not_running.remove(minion);
        self.minions
            .insert(minion.to_string(), MinionState::NoReturn(why));
        self.actions.push_back(GatherAction::GaveUp {
            minion: minion.to_string(),
            why,
            detail,
        });
    }

    /// Advances to `now`. A call before the deadline does nothing. Before anyone is given up
    /// on, the driver is asked once to check the job cache ([`GatherAction::CheckCache`]).
    pub fn handle_timeout(&mut self, now: Duration) {
        if self.deadline.is_none_or(|d| now < d) {
            return;
        }
        // A probe Salt has not accepted yet has no clock: nothing is judged meanwhile.
        if self
            .open
            .iter()
            .any(|m| self.minions[m] == MinionState::Sending)
        {
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
                    *state = MinionState::Sending;
                    probe.push(minion.clone());
                    self.open.insert(minion);
                    continue;
                }
                _ => continue,
            };
            *state = MinionState::NoReturn(why);
            self.actions.push_back(GatherAction::GaveUp {
                minion,
                why,
                detail: None,
            });
        }
        self.not_running.clear();
        // The probe's clock starts when Salt accepts it (`handle_probe_sent`).
        self.deadline = None;
        if !probe.is_empty() {
            self.actions.push_back(GatherAction::Probe(probe));
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
        assert_eq!(
            g.poll_timeout(),
            None,
            "no clock until Salt accepts the probe"
        );
        g.handle_probe_sent(&names(&["b", "c", "d"]), &names(&["b", "c", "d"]), 5 * S);
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
                why: NoReturn::JobNotRunning,
                detail: None,
            })
        );
        assert_eq!(
            g.poll_action(),
            Some(GatherAction::GaveUp {
                minion: "d".into(),
                why: NoReturn::NotResponding,
                detail: None,
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
    fn a_probe_that_could_not_be_sent_proves_nothing_and_is_retried_with_backoff_forever() {
        let mut g = Gather::new("1", &names(&["a"]), &[], Duration::ZERO, 5 * S, 10 * S);
        g.handle_timeout(5 * S);
        assert_eq!(g.poll_action(), Some(GatherAction::Probe(names(&["a"]))));
        let mut now = 5 * S;
        let mut waits = Vec::new();
        for _ in 0..8 {
            g.handle_probe_failed(&names(&["a"]), "master unreachable", now);
            let (why, at) = g.trouble().expect("the reason is kept for display");
            assert_eq!(why, "master unreachable");
            assert_eq!(g.poll_timeout(), Some(at));
            waits.push((at - now).as_secs());
            now = at;
            g.handle_timeout(now);
            assert_eq!(g.minions()["a"], MinionState::Sending, "never given up");
            assert_eq!(g.poll_action(), Some(GatherAction::Probe(names(&["a"]))));
        }
        assert_eq!(waits, [10, 20, 40, 80, 120, 120, 120, 120]);
        // Delivered at last: its clock starts now, and the trouble is over.
        g.handle_probe_sent(&names(&["a"]), &names(&["a"]), now);
        assert_eq!(g.trouble(), None);
        assert_eq!(g.poll_timeout(), Some(now + 10 * S));
    }

    /// However long Salt takes to accept a probe, the wait for its answer starts then.
    #[test]
    fn a_slow_probe_is_never_counted_as_an_answer() {
        let mut g = Gather::new("1", &names(&["a"]), &[], Duration::ZERO, 5 * S, 10 * S);
        g.handle_timeout(5 * S);
        assert_eq!(g.poll_action(), Some(GatherAction::Probe(names(&["a"]))));
        // Five minutes later, still no reply from the master for the probe's publish.
        g.handle_timeout(305 * S);
        assert_eq!(g.poll_action(), None);
        assert_eq!(g.minions()["a"], MinionState::Sending);
        g.handle_probe_sent(&names(&["a"]), &names(&["a"]), 306 * S);
        g.handle_timeout(315 * S);
        assert_eq!(
            g.poll_action(),
            None,
            "10 s from acceptance, not from the ask"
        );
        g.handle_timeout(316 * S);
        assert_eq!(g.poll_action(), Some(GatherAction::CheckCache));
    }

    /// Salt's own "no such minion" is an answer: given up at once, with its words.
    #[test]
    fn a_probe_salt_refuses_for_an_unknown_minion_ends_it_at_once() {
        let mut g = Gather::new(
            "1",
            &names(&["a", "b", "c"]),
            &[],
            Duration::ZERO,
            5 * S,
            10 * S,
        );
        g.handle_timeout(5 * S);
        assert_eq!(
            g.poll_action(),
            Some(GatherAction::Probe(names(&["a", "b", "c"])))
        );
        // Salt matched only "a": "b" lost its key meanwhile.
        g.handle_probe_sent(&names(&["a", "b"]), &names(&["a"]), 6 * S);
        match g.poll_action() {
            Some(GatherAction::GaveUp {
                minion,
                why: NoReturn::Unknown,
                detail: Some(_),
            }) => assert_eq!(minion, "b"),
            other => panic!("{other:?}"),
        }
        // A later probe refused outright (no minion matched).
        g.handle_probe_refused(&names(&["c"]), "No minions matched the target.");
        assert_eq!(
            g.poll_action(),
            Some(GatherAction::GaveUp {
                minion: "c".into(),
                why: NoReturn::Unknown,
                detail: Some("No minions matched the target.".into()),
            })
        );
        assert_eq!(g.minions()["a"], MinionState::Probed);
    }

    #[test]
    fn an_answer_that_beats_the_probes_publish_reply_counts() {
        let mut g = Gather::new("1", &names(&["a"]), &[], Duration::ZERO, 5 * S, 10 * S);
        g.handle_timeout(5 * S);
        g.poll_action();
        g.handle_probe_reply("a", true);
        g.handle_probe_sent(&names(&["a"]), &names(&["a"]), 6 * S);
        assert_eq!(
            g.minions()["a"],
            MinionState::Waiting,
            "still running: waited for"
        );
        assert_eq!(
            g.poll_timeout(),
            Some(16 * S),
            "and probed again after the wait"
        );
    }

    #[test]
    fn a_return_found_in_the_job_cache_saves_a_silent_minion() {
        let mut g = Gather::new("1", &names(&["a"]), &[], Duration::ZERO, 5 * S, 10 * S);
        g.handle_timeout(5 * S);
        assert_eq!(g.poll_action(), Some(GatherAction::Probe(names(&["a"]))));
        g.handle_probe_sent(&names(&["a"]), &names(&["a"]), 5 * S);
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
