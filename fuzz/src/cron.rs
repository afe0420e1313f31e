//! The cron grammar and `next_after` (`saltpeter::schedule`): any seven fields parse or fail
//! with errors that point inside their field; a parsed expression's next fire time is strictly
//! after the instant asked about, matches the expression (or is the end of a DST gap), is the
//! same from any instant before it, and in UTC is exactly the civil search's answer.

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use saltpeter::schedule::{self, Civil, Cron, DomDow, Schedule};

use super::input::Src;

/// Zones with every kind of transition: none, DST at 02:00 or midnight, half-hour DST,
/// negative DST, two-hour DST, and whole days skipped.
pub const ZONES: [&str; 10] = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "America/Sao_Paulo",
    "Australia/Lord_Howe",
    "Europe/Dublin",
    "Antarctica/Troll",
    "Pacific/Apia",
    "Pacific/Kiritimati",
    "America/St_Johns",
];

/// The target: seven fields, the `dom_dow` rule, a zone and an instant.
pub fn check(data: &[u8]) {
    let mut src = Src::new(data);
    let dom_dow = if src.bool() { DomDow::Or } else { DomDow::And };
    let fields: [String; 7] = std::array::from_fn(|_| field(&mut src));
    let zone = *src.pick(&ZONES);
    let at = instant(&mut src);
    let spread = src.u64();
    let fields: [&str; 7] = std::array::from_fn(|i| fields[i].as_str());
    check_expr(fields, dom_dow, zone, at, spread);
}

/// A field: usually a list of grammar items (numbers near and past the ranges, names, `*`,
/// `?`, ranges, steps, `L`, `Ln`, `Zn`, odd case and spacing), sometimes any text.
pub fn field(src: &mut Src) -> String {
    if src.below(5) == 0 {
        return src.text(10);
    }
    let items: Vec<String> = (0..1 + src.below(3)).map(|_| item(src)).collect();
    let mut text = items.join(",");
    if src.below(8) == 0 {
        text = text.to_uppercase();
    }
    if src.below(16) == 0 {
        text = format!(" {text} ");
    }
    text
}

fn number(src: &mut Src) -> String {
    const NAMES: [&str; 19] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec", "sun",
        "mon", "tue", "wed", "thu", "fri", "sat",
    ];
    match src.below(6) {
        0 | 1 => src.below(64).to_string(),
        2 => (1960 + src.below(160)).to_string(),
        3 => src.pick(&NAMES).to_string(),
        4 => src.u32().to_string(),
        _ => format!("{:02}", src.below(13)),
    }
}

fn item(src: &mut Src) -> String {
    match src.below(10) {
        0 => "*".into(),
        1 => "?".into(),
        2 | 3 => number(src),
        4 => format!("{}-{}", number(src), number(src)),
        5 => format!("*/{}", number(src)),
        6 => format!("{}-{}/{}", number(src), number(src), number(src)),
        7 => format!("{}/{}", number(src), number(src)),
        8 => match src.below(3) {
            0 => "L".into(),
            1 => format!("L{}", src.below(9)),
            _ => format!("L{}-{}", src.below(9), src.below(9)),
        },
        _ => match src.below(2) {
            0 => format!("Z{}", src.below(10)),
            _ => format!("Z{}-{}", src.below(10), src.below(10)),
        },
    }
}

/// Mostly 1960..2110, sometimes anywhere jiff can go, sometimes with a fraction of a second.
pub fn instant(src: &mut Src) -> Timestamp {
    let (lo, hi) = match src.below(4) {
        0 => (Timestamp::MIN.as_second(), Timestamp::MAX.as_second()),
        _ => (-315_619_200, 4_417_977_600),
    };
    let span = (hi - lo) as u64;
    let second = lo + (src.u64() % span) as i64;
    let nanos = if src.below(4) == 0 {
        (src.u32() % 1_000_000_000) as i32 * second.signum() as i32
    } else {
        0
    };
    Timestamp::new(second, nanos).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn civil(at: Timestamp, tz: &TimeZone) -> Civil {
    schedule::to_civil(tz.to_datetime(at))
}

fn utc(c: Civil) -> Timestamp {
    schedule::from_civil(c)
        .to_zoned_datetime(TimeZone::UTC)
        .map(|z| z.timestamp())
        .expect("a civil second the search returned exists")
}

const SECOND: SignedDuration = SignedDuration::from_secs(1);

/// Parses the fields and, when they parse, checks the civil search and `next_after` from `at`
/// in `zone`; `spread` picks an instant between `at` and the answer to ask again from.
pub fn check_expr(fields: [&str; 7], dom_dow: DomDow, zone: &str, at: Timestamp, spread: u64) {
    let cron = match Cron::parse(fields, dom_dow) {
        Ok(cron) => cron,
        Err(errors) => {
            assert!(!errors.is_empty());
            assert!(
                errors.windows(2).all(|w| w[0].field < w[1].field),
                "{errors:?}"
            );
            for e in &errors {
                let text = fields[e.field as usize];
                assert!(
                    e.offset <= text.len(),
                    "{e:?}: offset past the end of `{text}`"
                );
                assert!(!e.to_string().is_empty());
            }
            return;
        }
    };
    // The civil search, against the matcher.
    let from = civil(at, &TimeZone::UTC);
    match cron.next_civil(from) {
        Some(c) => {
            assert!(c >= from, "{c:?} is before {from:?}");
            assert!(cron.matches(c), "{c:?} does not match {fields:?}");
            assert!(cron.matches_day(c.year, c.month, c.day), "{c:?}");
            assert!(
                c == from || !cron.matches(from),
                "{from:?} matches but {c:?} was found"
            );
        }
        None => assert!(
            !cron.matches(from),
            "{from:?} matches but nothing was found"
        ),
    }

    let tz = TimeZone::get(zone).expect("a bundled zone");
    let schedule = Schedule::new(cron.clone(), tz.clone());
    let floor = Timestamp::from_second(at.as_second()).expect("in range");
    let next = schedule.next_after(at);
    if zone == "UTC" {
        let expected = floor
            .checked_add(SECOND)
            .ok()
            .and_then(|start| cron.next_civil(civil(start, &tz)))
            .map(utc);
        assert_eq!(next, expected, "{fields:?} after {at}");
    }
    let Some(next) = next else {
        return;
    };
    assert!(next > floor, "{next} is not after {at}");
    assert_eq!(next.subsec_nanosecond(), 0, "{next}");
    let fires = cron.matches(civil(next, &tz))
        || tz
            .preceding(next + SECOND)
            .next()
            .is_some_and(|t| t.timestamp() == next);
    assert!(
        fires,
        "{next} in {zone} neither matches {fields:?} nor ends a gap"
    );
    // The same answer from any instant in between.
    let gap = next.as_second() - floor.as_second();
    let mid = Timestamp::from_second(floor.as_second() + (spread % gap as u64) as i64)
        .expect("between two instants");
    assert_eq!(schedule.next_after(mid), Some(next), "from {mid}");
    assert_eq!(
        schedule.next_after(next - SECOND),
        Some(next),
        "from a second before"
    );
    if let Some(after) = schedule.next_after(next) {
        assert!(after > next, "{after} is not after {next}");
    }
}
