//! Schedules: a cron expression in a time zone, and `next_after`, the one function that says
//! when a job fires (used alike by the daemon's planner and by `saltpeter next`).
//!
//! Daylight-saving rules, at 1-second resolution:
//! - a slot in the hour skipped by a spring-forward change fires once, at the first valid
//!   instant after the gap (the transition itself; several such slots collapse into one fire);
//! - a slot in the hour repeated by a fall-back change fires once, at its first occurrence.
//!
//! Pure: no clock reads, no I/O.

mod cron;

pub use cron::{Civil, Cron, DomDow, Field, FieldError, YEAR_MAX, YEAR_MIN};

use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp};

/// A job's schedule: the parsed expression and the zone its fields are read in.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
    tz: TimeZone,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.cron == other.cron && self.tz.iana_name() == other.tz.iana_name()
    }
}

impl Schedule {
    pub fn new(cron: Cron, tz: TimeZone) -> Schedule {
        Schedule { cron, tz }
    }

    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    pub fn cron(&self) -> &Cron {
        &self.cron
    }

    /// The first fire time strictly after `after` (after truncating it to the second), or
    /// `None` when the expression has no match up to the end of 2099.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let floor = Timestamp::from_second(after.as_second()).ok()?;
        let start = self
            .tz
            .to_datetime(floor)
            .checked_add(SignedDuration::from_secs(1))
            .ok()?;
        let mut from = to_civil(start);
        loop {
            let civil = self.cron.next_civil(from)?;
            let at = self.resolve(civil)?;
            // A slot whose first occurrence is already past (the second pass of a repeated
            // hour) is skipped: it fired on the first pass.
            if at > floor {
                return Some(at);
            }
            from = to_civil(
                from_civil(civil)
                    .checked_add(SignedDuration::from_secs(1))
                    .ok()?,
            );
        }
    }

    /// The instant a matching civil second fires at, by the DST rules above.
    fn resolve(&self, civil: Civil) -> Option<Timestamp> {
        let dt = from_civil(civil);
        match self.tz.to_ambiguous_timestamp(dt).offset() {
            AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(dt).ok(),
            AmbiguousOffset::Fold { before, .. } => before.to_timestamp(dt).ok(),
            AmbiguousOffset::Gap { before, .. } => {
                // Read with the pre-gap offset, the civil time lies after the transition;
                // the transition instant is the first valid instant after the gap.
                let late = before.to_timestamp(dt).ok()?;
                let probe = late.checked_add(SignedDuration::from_secs(1)).ok()?;
                let transition = self.tz.preceding(probe).next()?.timestamp();
                Some(transition.min(late))
            }
        }
    }
}

/// A wall-clock date and time as the cron search counts it.
pub fn to_civil(dt: DateTime) -> Civil {
    Civil {
        year: dt.year().max(0) as u32,
        month: dt.month() as u32,
        day: dt.day() as u32,
        hour: dt.hour() as u32,
        minute: dt.minute() as u32,
        second: dt.second() as u32,
    }
}

/// A civil second the cron search returned, as a date and time (it is always valid).
pub fn from_civil(c: Civil) -> DateTime {
    DateTime::constant(
        c.year as i16,
        c.month as i8,
        c.day as i8,
        c.hour as i8,
        c.minute as i8,
        c.second as i8,
        0,
    )
}

/// Formats an instant as RFC 3339 with the zone's UTC offset at that instant
/// (`2025-03-30T03:00:00+02:00`), the form `saltpeter next` prints.
pub fn format_in_zone(at: Timestamp, tz: &TimeZone) -> String {
    at.to_zoned_datetime(tz.clone())
        .strftime("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

#[cfg(test)]
mod tests;
