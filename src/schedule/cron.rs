//! The original's 7-field cron grammar (`sec min hour dom mon dow year`), parsed into bit sets,
//! and the civil-time search for the next matching second. Knows nothing of time zones.

use std::fmt;

/// One of the seven fields, in the order the original interpolates them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    Sec,
    Min,
    Hour,
    Dom,
    Mon,
    Dow,
    Year,
}

impl Field {
    pub const ALL: [Field; 7] = [
        Field::Sec,
        Field::Min,
        Field::Hour,
        Field::Dom,
        Field::Mon,
        Field::Dow,
        Field::Year,
    ];

    /// The YAML key of this field.
    pub fn key(self) -> &'static str {
        match self {
            Field::Sec => "sec",
            Field::Min => "min",
            Field::Hour => "hour",
            Field::Dom => "dom",
            Field::Mon => "mon",
            Field::Dow => "dow",
            Field::Year => "year",
        }
    }

    /// Inclusive range of plain numeric values (dow also accepts 7 = Sunday).
    fn range(self) -> (u32, u32) {
        match self {
            Field::Sec | Field::Min => (0, 59),
            Field::Hour => (0, 23),
            Field::Dom => (1, 31),
            Field::Mon => (1, 12),
            Field::Dow => (0, 7),
            Field::Year => (YEAR_MIN, YEAR_MAX),
        }
    }

    fn names(self) -> &'static [&'static str] {
        match self {
            Field::Mon => &[
                "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
            ],
            Field::Dow => &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
            _ => &[],
        }
    }

    fn name_base(self) -> u32 {
        if self == Field::Mon { 1 } else { 0 }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

pub const YEAR_MIN: u32 = 1970;
pub const YEAR_MAX: u32 = 2099;

/// A parse error inside one field, with the byte offset of the offending token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FieldError {
    pub field: Field,
    /// Byte offset inside the field's text where the problem starts.
    pub offset: usize,
    pub message: String,
}

/// A fixed-size bit set over small integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Bits<const N: usize>([u64; N]);

impl<const N: usize> Default for Bits<N> {
    fn default() -> Self {
        Bits([0; N])
    }
}

impl<const N: usize> Bits<N> {
    fn set(&mut self, i: u32) {
        self.0[(i / 64) as usize] |= 1 << (i % 64);
    }

    pub fn contains(&self, i: u32) -> bool {
        (i as usize) < N * 64 && self.0[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// The smallest member `>= from`.
    pub fn next_from(&self, from: u32) -> Option<u32> {
        let mut word = (from / 64) as usize;
        if word >= N {
            return None;
        }
        let mut bits = self.0[word] & (u64::MAX << (from % 64));
        loop {
            if bits != 0 {
                return Some(word as u32 * 64 + bits.trailing_zeros());
            }
            word += 1;
            if word >= N {
                return None;
            }
            bits = self.0[word];
        }
    }
}

/// A parsed 7-field expression. Year bits are stored as offsets from 1970.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Cron {
    sec: Bits<1>,
    min: Bits<1>,
    hour: Bits<1>,
    /// Plain days of month 1..=31.
    dom: Bits<1>,
    /// `L`: the last day of the month.
    dom_last: bool,
    /// `Zn`: `n` days before the last day of the month (bit n, 0..=7).
    dom_before_end: Bits<1>,
    mon: Bits<1>,
    /// Plain weekdays 0..=6 (Sunday = 0).
    dow: Bits<1>,
    /// `Ln`: the last weekday `n` of the month (bit n, 0..=6).
    dow_last: Bits<1>,
    year: Bits<3>,
    /// The field was `*`-like (`*`, `?`, `*/n`): only matters for `dom_dow: or`.
    dom_star: bool,
    dow_star: bool,
    /// `dom_dow: or` (Vixie cron) instead of the original's `and`.
    dom_or_dow: bool,
}

/// How day-of-month and day-of-week restrictions combine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DomDow {
    /// Both must match (the original Saltpeter's semantics).
    #[default]
    And,
    /// Either may match when both are restricted (classic Vixie cron).
    Or,
}

/// A civil (wall-clock, zone-less) second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Civil {
    pub year: u32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl Cron {
    /// Parses the seven fields, reporting the first error of each bad field.
    pub fn parse(fields: [&str; 7], dom_dow: DomDow) -> Result<Cron, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut parsed: Vec<Parsed> = Vec::with_capacity(7);
        for (field, text) in Field::ALL.into_iter().zip(fields) {
            match parse_field(field, text) {
                Ok(p) => parsed.push(p),
                Err(e) => {
                    errors.push(e);
                    parsed.push(Parsed::default());
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let [sec, min, hour, dom, mon, dow, year]: [Parsed; 7] =
            parsed.try_into().expect("seven fields");
        let to1 = |p: &Parsed| Bits::<1>([p.values.0[0]]);
        let mut dow_bits = to1(&dow);
        // Weekday 7 is Sunday.
        if dow.values.contains(7) {
            dow_bits.set(0);
        }
        dow_bits.0[0] &= 0x7f;
        let mut year_bits = Bits::<3>::default();
        for y in YEAR_MIN..=YEAR_MAX {
            if year.values.contains(y - YEAR_MIN) {
                year_bits.set(y - YEAR_MIN);
            }
        }
        Ok(Cron {
            sec: to1(&sec),
            min: to1(&min),
            hour: to1(&hour),
            dom: to1(&dom),
            dom_last: dom.last,
            dom_before_end: dom.before_end,
            mon: to1(&mon),
            dow: dow_bits,
            dow_last: dow.last_weekday,
            year: year_bits,
            dom_star: dom.star,
            dow_star: dow.star,
            dom_or_dow: dom_dow == DomDow::Or,
        })
    }

    /// The days of `year-month` that match dom and dow, as bits 1..=31.
    fn day_mask(&self, year: u32, month: u32) -> u64 {
        let len = days_in_month(year, month);
        let all = ((1u64 << len) - 1) << 1;
        let mut dom = self.dom.0[0] & all;
        if self.dom_last {
            dom |= 1 << len;
        }
        for n in 0..=7 {
            if self.dom_before_end.contains(n) && len > n {
                dom |= 1 << (len - n);
            }
        }
        let first = weekday(year, month, 1);
        let mut dow = 0u64;
        // Days 1, 8, 15, 22, 29.
        const WEEKLY: u64 = (1 << 1) | (1 << 8) | (1 << 15) | (1 << 22) | (1 << 29);
        for d in 0..7 {
            if self.dow.contains(d) {
                dow |= WEEKLY << ((d + 7 - first) % 7);
            }
            if self.dow_last.contains(d) {
                let last_wd = (first + len - 1) % 7;
                dow |= 1 << (len - (last_wd + 7 - d) % 7);
            }
        }
        dow &= all;
        let combined = if self.dom_or_dow && !self.dom_star && !self.dow_star {
            dom | dow
        } else {
            dom & dow
        };
        combined & all
    }

    /// Whether one civil second matches (used by tests as an independent oracle).
    pub fn matches(&self, c: Civil) -> bool {
        (YEAR_MIN..=YEAR_MAX).contains(&c.year)
            && self.year.contains(c.year - YEAR_MIN)
            && self.mon.contains(c.month)
            && self.day_mask(c.year, c.month) & (1 << c.day) != 0
            && self.hour.contains(c.hour)
            && self.min.contains(c.minute)
            && self.sec.contains(c.second)
    }

    /// Whether any second of this civil day matches.
    pub fn matches_day(&self, year: u32, month: u32, day: u32) -> bool {
        (YEAR_MIN..=YEAR_MAX).contains(&year)
            && self.year.contains(year - YEAR_MIN)
            && self.mon.contains(month)
            && self.day_mask(year, month) & (1 << day) != 0
    }

    /// The first matching civil second at or after `from`, or `None` past 2099.
    pub fn next_civil(&self, from: Civil) -> Option<Civil> {
        let Civil {
            mut year,
            mut month,
            mut day,
            mut hour,
            mut minute,
            mut second,
        } = from;
        loop {
            if year > YEAR_MAX {
                return None;
            }
            let y = self.year.next_from(year.saturating_sub(YEAR_MIN))? + YEAR_MIN;
            if y != year {
                (year, month, day, hour, minute, second) = (y, 1, 1, 0, 0, 0);
            }
            let Some(m) = self.mon.next_from(month) else {
                (year, month, day, hour, minute, second) = (year + 1, 1, 1, 0, 0, 0);
                continue;
            };
            if m != month {
                (month, day, hour, minute, second) = (m, 1, 0, 0, 0);
            }
            let days = Bits::<1>([self.day_mask(year, month)]);
            let Some(d) = days.next_from(day) else {
                (month, day, hour, minute, second) = (month + 1, 1, 0, 0, 0);
                continue;
            };
            if d != day {
                (day, hour, minute, second) = (d, 0, 0, 0);
            }
            let Some(h) = self.hour.next_from(hour).filter(|h| *h < 24) else {
                (day, hour, minute, second) = (day + 1, 0, 0, 0);
                continue;
            };
            if h != hour {
                (hour, minute, second) = (h, 0, 0);
            }
            let Some(mi) = self.min.next_from(minute).filter(|m| *m < 60) else {
                (hour, minute, second) = (hour + 1, 0, 0);
                continue;
            };
            if mi != minute {
                (minute, second) = (mi, 0);
            }
            let Some(s) = self.sec.next_from(second).filter(|s| *s < 60) else {
                (minute, second) = (minute + 1, 0);
                continue;
            };
            return Some(Civil {
                year,
                month,
                day,
                hour,
                minute,
                second: s,
            });
        }
    }
}

pub fn is_leap(year: u32) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

pub fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Day of week (Sunday = 0) by Sakamoto's method.
pub fn weekday(year: u32, month: u32, day: u32) -> u32 {
    const T: [u32; 12] = [0, 3, 2, 5, 0, 3, 5, 1, 4, 6, 2, 4];
    let y = if month < 3 { year - 1 } else { year };
    (y + y / 4 - y / 100 + y / 400 + T[(month - 1) as usize] + day) % 7
}

// === field parsing ===

#[derive(Debug, Default)]
struct Parsed {
    values: Bits<3>,
    star: bool,
    last: bool,
    before_end: Bits<1>,
    last_weekday: Bits<1>,
}

fn parse_field(field: Field, text: &str) -> Result<Parsed, FieldError> {
    let err = |offset: usize, message: String| FieldError {
        field,
        offset,
        message,
    };
    let lower = text.trim().to_ascii_lowercase();
    let lead = text.len() - text.trim_start().len();
    if lower.is_empty() {
        return Err(err(0, format!("`{field}` is empty")));
    }
    if lower.chars().any(char::is_whitespace) {
        let at = lower.find(char::is_whitespace).unwrap_or(0);
        return Err(err(
            lead + at,
            format!("`{field}` must be a single cron field, found whitespace in `{text}`"),
        ));
    }
    let mut parsed = Parsed::default();
    let (lo, hi) = field.range();
    let mut offset = lead;
    for item in lower.split(',') {
        let item_err = |at: usize, msg: String| err(offset + at, msg);
        if item.is_empty() {
            return Err(item_err(0, format!("empty list item in `{field}`")));
        }
        if item == "*" || item == "?" {
            if item == "?" && !matches!(field, Field::Dom | Field::Dow) {
                return Err(item_err(
                    0,
                    format!("`?` is only allowed in `dom` and `dow`, not in `{field}`"),
                ));
            }
            parsed.star = true;
            for v in lo..=hi {
                parsed
                    .values
                    .set(v - if field == Field::Year { YEAR_MIN } else { 0 });
            }
        } else if item == "l" {
            if field != Field::Dom {
                return Err(item_err(
                    0,
                    format!(
                        "a bare `L` (last day of the month) is only allowed in `dom`, not in `{field}`"
                    ),
                ));
            }
            parsed.last = true;
        } else if let Some(rest) = item.strip_prefix('z') {
            if field != Field::Dom {
                return Err(item_err(
                    0,
                    format!(
                        "`Z` (days before the month's end) is only allowed in `dom`, not in `{field}`"
                    ),
                ));
            }
            let (a, b) = parse_small_range(rest, 0, 7)
                .map_err(|m| item_err(1, format!("bad `Z` item `{item}`: {m}")))?;
            for n in a..=b {
                parsed.before_end.set(n);
            }
        } else if let Some(rest) = item.strip_prefix('l') {
            if field != Field::Dow {
                return Err(item_err(
                    0,
                    format!(
                        "`L<weekday>` (last weekday of the month) is only allowed in `dow`, not in `{field}`"
                    ),
                ));
            }
            let (a, b) = parse_small_range(rest, 0, 7)
                .map_err(|m| item_err(1, format!("bad `L` item `{item}`: {m}")))?;
            for n in a..=b {
                parsed.last_weekday.set(n % 7);
            }
        } else {
            parse_item(field, item, &mut parsed).map_err(|(at, m)| item_err(at, m))?;
        }
        offset += item.len() + 1;
    }
    Ok(parsed)
}

/// `n` or `a-b` within `lo..=hi`, used by `Zn` and `Ln`.
fn parse_small_range(text: &str, lo: u32, hi: u32) -> Result<(u32, u32), String> {
    let num = |s: &str| -> Result<u32, String> {
        let v: u32 = s
            .parse()
            .map_err(|_| format!("expected a number {lo}-{hi}, found `{s}`"))?;
        if v < lo || v > hi {
            return Err(format!("{v} is out of range {lo}-{hi}"));
        }
        Ok(v)
    };
    match text.split_once('-') {
        None => num(text).map(|v| (v, v)),
        Some((a, b)) => {
            let (a, b) = (num(a)?, num(b)?);
            if a > b {
                return Err(format!("range {a}-{b} is descending"));
            }
            Ok((a, b))
        }
    }
}

/// One list item: `v`, `a-b`, `*/n`, `a-b/n` or `a/n`. Errors carry an offset into `item`.
fn parse_item(field: Field, item: &str, parsed: &mut Parsed) -> Result<(), (usize, String)> {
    let (lo, hi) = field.range();
    let (range, step) = match item.split_once('/') {
        Some((r, s)) => {
            let step: u32 = s.parse().map_err(|_| {
                (
                    r.len() + 1,
                    format!("step must be a positive number, found `{s}`"),
                )
            })?;
            if step == 0 {
                return Err((r.len() + 1, "step must be greater than 0".to_string()));
            }
            (r, Some(step))
        }
        None => (item, None),
    };
    let value = |s: &str, at: usize| -> Result<u32, (usize, String)> {
        if let Some(i) = field.names().iter().position(|n| *n == s) {
            return Ok(i as u32 + field.name_base());
        }
        let v: u32 = s.parse().map_err(|_| {
            let what = match field {
                Field::Mon => " or a month name (jan-dec)",
                Field::Dow => " or a day name (sun-sat)",
                _ => "",
            };
            (
                at,
                format!("expected a number {lo}-{hi}{what} in `{field}`, found `{s}`"),
            )
        })?;
        if v < lo || v > hi {
            return Err((at, format!("{v} is out of range for `{field}` ({lo}-{hi})")));
        }
        Ok(v)
    };
    let (start, end) = if range == "*" {
        parsed.star = true;
        (lo, if field == Field::Dow { 6 } else { hi })
    } else if let Some((a, b)) = range.split_once('-') {
        let start = value(a, 0)?;
        let mut end = value(b, a.len() + 1)?;
        // `sat-sun`: an end of Sunday (0) means 7.
        if field == Field::Dow && end == 0 {
            end = 7;
        }
        if start > end {
            return Err((0, format!("range `{range}` in `{field}` is descending")));
        }
        (start, end)
    } else {
        let start = value(range, 0)?;
        // `a/n` runs from `a` to the field's end; a plain `a` is one value.
        let end = if step.is_some() {
            if field == Field::Dow { 6 } else { hi }
        } else {
            start
        };
        (start, end)
    };
    if let Some(step) = step.filter(|s| *s > hi - lo) {
        return Err((
            range.len() + 1,
            format!("step {step} is too large for `{field}` ({lo}-{hi})"),
        ));
    }
    let base = if field == Field::Year { YEAR_MIN } else { 0 };
    let mut v = start;
    while v <= end {
        parsed.values.set(v - base);
        v += step.unwrap_or(1);
    }
    if parsed.values.is_empty() {
        return Err((0, format!("`{range}` matches nothing in `{field}`")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron(expr: &str) -> Cron {
        let f: Vec<&str> = expr.split(' ').collect();
        Cron::parse(f.try_into().unwrap(), DomDow::And).unwrap()
    }

    fn civil(y: u32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Civil {
        Civil {
            year: y,
            month: mo,
            day: d,
            hour: h,
            minute: mi,
            second: s,
        }
    }

    fn err(expr: &str) -> FieldError {
        let f: Vec<&str> = expr.split(' ').collect();
        Cron::parse(f.try_into().unwrap(), DomDow::And)
            .unwrap_err()
            .remove(0)
    }

    #[test]
    fn weekday_matches_known_dates() {
        assert_eq!(weekday(1970, 1, 1), 4); // Thursday
        assert_eq!(weekday(2025, 9, 1), 1); // Monday
        assert_eq!(weekday(2024, 2, 29), 4);
    }

    #[test]
    fn dom_and_dow_are_anded_like_the_original() {
        // Reference §1.6: from 2025-01-01 the next Monday the 1st is 2025-09-01.
        let c = cron("0 0 0 1 * 1 *");
        assert_eq!(
            c.next_civil(civil(2025, 1, 1, 0, 0, 1)),
            Some(civil(2025, 9, 1, 0, 0, 0))
        );
    }

    #[test]
    fn dom_or_dow_follows_vixie() {
        let f = ["0", "0", "0", "1", "*", "1", "*"];
        let c = Cron::parse(f, DomDow::Or).unwrap();
        // 2025-01-01 is a Wednesday; the next Monday is the 6th, before Feb 1.
        assert_eq!(
            c.next_civil(civil(2025, 1, 1, 0, 0, 1)),
            Some(civil(2025, 1, 6, 0, 0, 0))
        );
        // With one side `*`, `or` still restricts by the other side alone.
        let c = Cron::parse(["0", "0", "0", "*", "*", "1", "*"], DomDow::Or).unwrap();
        assert_eq!(
            c.next_civil(civil(2025, 1, 1, 0, 0, 1)),
            Some(civil(2025, 1, 6, 0, 0, 0))
        );
    }

    #[test]
    fn last_day_and_days_before_end() {
        let c = cron("0 0 0 L * * *");
        assert_eq!(
            c.next_civil(civil(2024, 2, 1, 0, 0, 0)),
            Some(civil(2024, 2, 29, 0, 0, 0))
        );
        assert_eq!(
            c.next_civil(civil(2023, 2, 1, 0, 0, 0)),
            Some(civil(2023, 2, 28, 0, 0, 0))
        );
        let c = cron("0 0 0 Z2 * * *");
        assert_eq!(
            c.next_civil(civil(2023, 4, 1, 0, 0, 0)),
            Some(civil(2023, 4, 28, 0, 0, 0))
        );
        let c = cron("0 0 0 Z0-1 * * *");
        assert_eq!(
            c.next_civil(civil(2023, 4, 1, 0, 0, 0)),
            Some(civil(2023, 4, 29, 0, 0, 0))
        );
        assert_eq!(
            c.next_civil(civil(2023, 4, 29, 0, 0, 1)),
            Some(civil(2023, 4, 30, 0, 0, 0))
        );
    }

    #[test]
    fn last_weekday_of_month() {
        // Last Friday of March 2025 is the 28th; last Sunday (L7 = L0) is the 30th.
        let c = cron("0 0 0 * * L5 *");
        assert_eq!(
            c.next_civil(civil(2025, 3, 1, 0, 0, 0)),
            Some(civil(2025, 3, 28, 0, 0, 0))
        );
        let c = cron("0 0 0 * * L7 *");
        assert_eq!(
            c.next_civil(civil(2025, 3, 1, 0, 0, 0)),
            Some(civil(2025, 3, 30, 0, 0, 0))
        );
        let c = cron("0 0 0 * * L1-2 *");
        // March 2025 ends on Monday the 31st, so its last Tuesday is the 25th.
        assert_eq!(
            c.next_civil(civil(2025, 3, 1, 0, 0, 0)),
            Some(civil(2025, 3, 25, 0, 0, 0))
        );
        assert_eq!(
            c.next_civil(civil(2025, 3, 25, 0, 0, 1)),
            Some(civil(2025, 3, 31, 0, 0, 0))
        );
    }

    #[test]
    fn names_steps_and_weekend_ranges() {
        let c = cron("*/15 0 12 * jan-Mar sat-sun *");
        assert_eq!(
            c.next_civil(civil(2025, 3, 31, 0, 0, 0)),
            Some(civil(2026, 1, 3, 12, 0, 0))
        );
        assert_eq!(
            c.next_civil(civil(2026, 1, 3, 12, 0, 1)),
            Some(civil(2026, 1, 3, 12, 0, 15))
        );
        let c = cron("5/20 * * * * * *");
        assert_eq!(
            c.next_civil(civil(2025, 1, 1, 0, 0, 46)),
            Some(civil(2025, 1, 1, 0, 1, 5))
        );
        let c = cron("0 0 0 * * 7 *");
        assert_eq!(
            c.next_civil(civil(2025, 1, 1, 0, 0, 0)),
            Some(civil(2025, 1, 5, 0, 0, 0))
        );
        let c = cron("0 10-20/5 * * * * *");
        assert_eq!(
            c.next_civil(civil(2025, 1, 1, 0, 16, 0)),
            Some(civil(2025, 1, 1, 0, 20, 0))
        );
        assert_eq!(
            c.next_civil(civil(2025, 1, 1, 0, 20, 1)),
            Some(civil(2025, 1, 1, 1, 10, 0))
        );
    }

    #[test]
    fn feb_30_and_past_2099_never_match() {
        assert_eq!(
            cron("0 0 0 30 2 * *").next_civil(civil(1970, 1, 1, 0, 0, 0)),
            None
        );
        assert_eq!(
            cron("0 0 0 * * * 2020").next_civil(civil(2021, 1, 1, 0, 0, 0)),
            None
        );
        assert_eq!(
            cron("59 59 23 31 12 * 2099").next_civil(civil(2099, 1, 1, 0, 0, 0)),
            Some(civil(2099, 12, 31, 23, 59, 59))
        );
    }

    #[test]
    fn leap_day_only_in_leap_years() {
        let c = cron("0 0 0 29 2 * *");
        assert_eq!(c.next_civil(civil(2097, 3, 1, 0, 0, 0)), None);
        assert_eq!(c.next_civil(civil(2096, 3, 1, 0, 0, 0)), None);
        assert_eq!(
            c.next_civil(civil(2025, 1, 1, 0, 0, 0)),
            Some(civil(2028, 2, 29, 0, 0, 0))
        );
    }

    #[test]
    fn errors_point_at_the_bad_token() {
        let e = err("0 5-70 * * * * *");
        assert_eq!((e.field, e.offset), (Field::Min, 2));
        assert_eq!(e.message, "70 is out of range for `min` (0-59)");
        let e = err("0 0 0 * * * 1969");
        assert_eq!(e.message, "1969 is out of range for `year` (1970-2099)");
        let e = err("0 1,2,x * * * * *");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (4, "expected a number 0-59 in `min`, found `x`")
        );
        let e = err("0 55-5 * * * * *");
        assert_eq!(e.message, "range `55-5` in `min` is descending");
        let e = err("*/0 * * * * * *");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (2, "step must be greater than 0")
        );
        let e = err("*/60 * * * * * *");
        assert_eq!(e.message, "step 60 is too large for `sec` (0-59)");
        let e = err("? * * * * * *");
        assert_eq!(
            e.message,
            "`?` is only allowed in `dom` and `dow`, not in `sec`"
        );
        let e = err("0 0 0 * * L *");
        assert!(e.message.contains("only allowed in `dom`"), "{}", e.message);
        let e = err("0 0 0 Z9 * * *");
        assert_eq!(e.message, "bad `Z` item `z9`: 9 is out of range 0-7");
        let e = err("0 0 0 * foo * *");
        assert_eq!(
            e.message,
            "expected a number 1-12 or a month name (jan-dec) in `mon`, found `foo`"
        );
        let e = err("0 0 0 1,,2 * * *");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (2, "empty list item in `dom`")
        );
    }
}
