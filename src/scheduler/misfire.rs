//! The misfire policy: of the slots of one job due at `now` (a gap after downtime, a stall or
//! a clock jump), which are fired and which are recorded as one missed gap. Pure.
//!
//! - A slot later than `misfire_window` is never fired.
//! - Late for its own slot (the daemon ran but was slow to get there), a job fires its latest
//!   due slot whatever the policy; the earlier slots of the gap are misfires.
//! - After downtime or a clock jump every slot of the gap is a misfire.
//! - Misfires: `skip` fires none, `latest` the latest, `all` each (the latest `misfire_max`
//!   of the gap, the current slot included).

use jiff::{SignedDuration, Timestamp};

use crate::config::{Misfire, MisfirePolicy};
use crate::journal::MissReason;
use crate::schedule::Schedule;

/// Slots of one missed gap counted one by one; a longer gap says "more than".
pub const MAX_COUNTED: u64 = 100_000;

/// Why the slots of a gap were not fired at their second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The daemon was running, only late (a stall, or a burst ahead of it).
    Late,
    DaemonDown,
    ClockJump,
}

impl Cause {
    pub fn reason(self) -> MissReason {
        match self {
            Cause::Late => MissReason::MisfirePolicy,
            Cause::DaemonDown => MissReason::DaemonDown,
            Cause::ClockJump => MissReason::ClockJump,
        }
    }
}

/// The slots not fired, as one contiguous gap from the first due slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    pub first: Timestamp,
    pub last: Timestamp,
    pub count: u64,
    pub exact: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// `(slot, catch_up)`, oldest first; always the tail of the due slots.
    pub fires: Vec<(Timestamp, bool)>,
    pub missed: Option<Gap>,
    /// The latest due slot (fired or missed).
    pub last: Timestamp,
}

/// Decides the slots of `schedule` from `first` (a slot, due) up to `now`.
pub fn plan(
    schedule: &Schedule,
    first: Timestamp,
    now: Timestamp,
    misfire: Misfire,
    cause: Cause,
) -> Plan {
    // How many of the latest due slots may fire, before the window is applied.
    let fire_at_most = match (cause, misfire.policy) {
        (_, MisfirePolicy::All) => misfire.max.max(1) as usize,
        (Cause::Late, _) => 1,
        (_, MisfirePolicy::Latest) => 1,
        (_, MisfirePolicy::Skip) => 0,
    };
    // One more than may fire: the one before the fires ends the missed gap.
    let tail = latest(schedule, first, now, fire_at_most + 1);
    let last = *tail.last().expect("`first` is due");
    let window_start = now
        .checked_sub(SignedDuration::from_secs(
            misfire.window_secs.min(i64::MAX as u64) as i64,
        ))
        .unwrap_or(Timestamp::MIN);
    let fire_from = tail.len().saturating_sub(fire_at_most);
    let fires: Vec<(Timestamp, bool)> = tail[fire_from..]
        .iter()
        .filter(|s| **s >= window_start)
        .map(|s| (*s, !(cause == Cause::Late && *s == last)))
        .collect();
    let missed_last = match fires.first() {
        None => Some(last),
        Some((f, _)) if *f > first => {
            // The slot just before the first fire, found among the tail (or it is `first`).
            let before = tail.iter().rev().find(|s| *s < f).copied();
            Some(before.unwrap_or(first))
        }
        Some(_) => None,
    };
    let missed = missed_last.map(|end| {
        let (count, exact) = count(schedule, first, end);
        Gap {
            first,
            last: end,
            count,
            exact,
        }
    });
    Plan {
        fires,
        missed,
        last,
    }
}

/// The detail of a missed gap, in words.
pub fn detail(misfire: Misfire, cause: Cause, fires: &[(Timestamp, bool)], count: u64) -> String {
    let when = match cause {
        Cause::Late => "the daemon was late for",
        Cause::DaemonDown => "the daemon was down for",
        Cause::ClockJump => "the clock was set forward over",
    };
    let plural = if count == 1 { "slot" } else { "slots" };
    let policy = misfire.policy.as_str();
    let fired = match fires.len() {
        0 => "none was fired".to_string(),
        1 => "the latest was fired".to_string(),
        n => format!("the latest {n} were fired"),
    };
    format!(
        "{when} {count} {plural}; misfire: {policy} (window {} s): {fired}",
        misfire.window_secs
    )
}

/// The latest `k` slots in `[first, upto]`, oldest first (at least `first` when `k` ≥ 1).
/// Looks back from `upto` over a doubling span, so a long gap costs about `k` slots, not its
/// length.
pub fn latest(schedule: &Schedule, first: Timestamp, upto: Timestamp, k: usize) -> Vec<Timestamp> {
    let k = k.max(1);
    let mut back: i64 = 2;
    loop {
        let from = upto
            .checked_sub(SignedDuration::from_secs(back))
            .unwrap_or(Timestamp::MIN)
            .max(first);
        let mut ring = std::collections::VecDeque::with_capacity(k + 1);
        let mut at = if from == first {
            Some(first)
        } else {
            schedule.next_after(from - SignedDuration::from_secs(1))
        };
        while let Some(s) = at.filter(|s| *s <= upto) {
            ring.push_back(s);
            if ring.len() > k {
                ring.pop_front();
            }
            at = schedule.next_after(s);
        }
        if ring.len() >= k || from == first {
            return ring.into();
        }
        back = back.saturating_mul(2);
    }
}

/// Slots in `[first, last]` (both slots), counted up to [`MAX_COUNTED`].
pub fn count(schedule: &Schedule, first: Timestamp, last: Timestamp) -> (u64, bool) {
    let mut n = 1;
    let mut at = first;
    while at < last {
        if n >= MAX_COUNTED {
            return (n, false);
        }
        match schedule.next_after(at) {
            Some(s) if s <= last => {
                n += 1;
                at = s;
            }
            _ => break,
        }
    }
    (n, true)
}
