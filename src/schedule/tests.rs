//! Schedule tests: DST in Europe/Berlin and America/New_York, and properties checked against
//! an independent per-second oracle (`Cron::matches`).

use super::*;
use proptest::prelude::*;

fn schedule(expr: &str, tz: &str) -> Schedule {
    let f: Vec<&str> = expr.split(' ').collect();
    let cron = Cron::parse(f.try_into().unwrap(), DomDow::And).unwrap();
    Schedule::new(cron, TimeZone::get(tz).unwrap())
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// The next `n` fire times after `from`, formatted in the schedule's zone.
fn nexts(s: &Schedule, from: &str, n: usize) -> Vec<String> {
    let mut at = ts(from);
    (0..n)
        .map(|_| {
            at = s.next_after(at).unwrap();
            format_in_zone(at, s.time_zone())
        })
        .collect()
}

#[test]
fn berlin_spring_forward_gap_slot_fires_once_at_the_transition() {
    let s = schedule("0 30 2 * * * *", "Europe/Berlin");
    assert_eq!(
        nexts(&s, "2025-03-29T12:00:00Z", 3),
        [
            "2025-03-30T03:00:00+02:00",
            "2025-03-31T02:30:00+02:00",
            "2025-04-01T02:30:00+02:00"
        ]
    );
    // Four slots inside the gap collapse into one fire at 03:00.
    let s = schedule("0 */15 * * * * *", "Europe/Berlin");
    assert_eq!(
        nexts(&s, "2025-03-30T01:40:00+01:00", 4),
        [
            "2025-03-30T01:45:00+01:00",
            "2025-03-30T03:00:00+02:00",
            "2025-03-30T03:15:00+02:00",
            "2025-03-30T03:30:00+02:00"
        ]
    );
}

#[test]
fn berlin_fall_back_repeated_slot_fires_once_on_first_pass() {
    let s = schedule("0 30 2 * * * *", "Europe/Berlin");
    assert_eq!(
        nexts(&s, "2025-10-25T12:00:00Z", 2),
        ["2025-10-26T02:30:00+02:00", "2025-10-27T02:30:00+01:00"]
    );
    let s = schedule("0 */30 * * * * *", "Europe/Berlin");
    assert_eq!(
        nexts(&s, "2025-10-26T01:50:00+02:00", 4),
        [
            "2025-10-26T02:00:00+02:00",
            "2025-10-26T02:30:00+02:00",
            "2025-10-26T03:00:00+01:00",
            "2025-10-26T03:30:00+01:00"
        ]
    );
    // Asked from inside the second pass, the repeated slots are not fired again.
    assert_eq!(
        nexts(&s, "2025-10-26T02:10:00+01:00", 1),
        ["2025-10-26T03:00:00+01:00"]
    );
}

#[test]
fn new_york_transitions() {
    let s = schedule("0 30 2 * * * *", "America/New_York");
    assert_eq!(
        nexts(&s, "2025-03-08T12:00:00Z", 3),
        [
            "2025-03-09T03:00:00-04:00",
            "2025-03-10T02:30:00-04:00",
            "2025-03-11T02:30:00-04:00"
        ]
    );
    let s = schedule("0 30 1 * * * *", "America/New_York");
    assert_eq!(
        nexts(&s, "2025-11-01T12:00:00Z", 2),
        ["2025-11-02T01:30:00-04:00", "2025-11-03T01:30:00-05:00"]
    );
}

#[test]
fn utc_is_plain_and_subsecond_starts_truncate() {
    let s = schedule("0 * * * * * *", "UTC");
    assert_eq!(
        nexts(&s, "2025-01-01T00:00:00.999Z", 1),
        ["2025-01-01T00:01:00+00:00"]
    );
    assert_eq!(
        nexts(&s, "2025-01-01T00:00:59.5Z", 1),
        ["2025-01-01T00:01:00+00:00"]
    );
    let s = schedule("0 0 0 1 1 * 2030", "UTC");
    assert_eq!(s.next_after(ts("2030-01-01T00:00:00Z")), None);
}

// === properties ===

/// A random, valid 7-field expression built from grammar pieces.
fn field_strategy(lo: u32, hi: u32) -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_string()),
        (lo..=hi).prop_map(|v| v.to_string()),
        (lo..=hi, lo..=hi).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
        (1..=(hi - lo).max(1)).prop_map(|n| format!("*/{n}")),
        (lo..=hi, lo..=hi, 1..=(hi - lo).max(1)).prop_map(|(a, b, n)| format!(
            "{}-{}/{n}",
            a.min(b),
            a.max(b)
        )),
        prop::collection::vec(lo..=hi, 1..4).prop_map(|v| v
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")),
    ]
}

fn expr_strategy() -> impl Strategy<Value = (Vec<String>, DomDow)> {
    (
        field_strategy(0, 59),
        field_strategy(0, 59),
        field_strategy(0, 23),
        prop_oneof![
            field_strategy(1, 31),
            Just("L".into()),
            (0u32..=7).prop_map(|n| format!("Z{n}"))
        ],
        field_strategy(1, 12),
        prop_oneof![
            field_strategy(0, 7),
            (0u32..=6).prop_map(|n| format!("L{n}"))
        ],
        prop_oneof![Just("*".to_string()), field_strategy(2020, 2040)],
        prop_oneof![Just(DomDow::And), Just(DomDow::Or)],
    )
        .prop_map(|(s, mi, h, dom, mon, dow, y, dd)| (vec![s, mi, h, dom, mon, dow, y], dd))
}

fn civil_of(at: Timestamp, tz: &TimeZone) -> Civil {
    to_civil(tz.to_datetime(at))
}

/// No second strictly between `a` and `b` (UTC) matches: exhaustive on the boundary days,
/// day-level (via the oracle) for the days between.
fn assert_no_match_between(cron: &Cron, a: Timestamp, b: Timestamp) {
    let day = |t: Timestamp| t.as_second().div_euclid(86_400);
    let (da, db) = (day(a), day(b));
    let scan = |from: i64, to: i64| {
        for s in from..to {
            let t = Timestamp::from_second(s).unwrap();
            assert!(
                !cron.matches(civil_of(t, &TimeZone::UTC)),
                "missed match at {t}"
            );
        }
    };
    if da == db {
        scan(a.as_second() + 1, b.as_second());
        return;
    }
    scan(a.as_second() + 1, (da + 1) * 86_400);
    for d in da + 1..db {
        let c = civil_of(Timestamp::from_second(d * 86_400).unwrap(), &TimeZone::UTC);
        assert!(
            !cron.matches_day(c.year, c.month, c.day),
            "missed matching day {c:?}"
        );
    }
    scan(db * 86_400, b.as_second());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn next_matches_increases_and_skips_nothing_in_utc(
        (fields, dd) in expr_strategy(),
        start in 1_577_836_800i64..2_208_988_800, // 2020..2040
    ) {
        let refs: Vec<&str> = fields.iter().map(String::as_str).collect();
        let cron = Cron::parse(refs.try_into().unwrap(), dd).unwrap();
        let sched = Schedule::new(cron.clone(), TimeZone::UTC);
        let mut at = Timestamp::from_second(start).unwrap();
        for _ in 0..3 {
            let Some(next) = sched.next_after(at) else {
                // Nothing left: then nothing matches up to 2099 either (day-level check).
                let end = Timestamp::from_second(4_102_444_800).unwrap();
                assert_no_match_between(&cron, at, end);
                break;
            };
            prop_assert!(next > at);
            prop_assert!(cron.matches(civil_of(next, &TimeZone::UTC)));
            assert_no_match_between(&cron, at, next);
            at = next;
        }
    }

    #[test]
    fn next_is_strictly_increasing_and_valid_across_dst(
        (fields, dd) in expr_strategy(),
        start in 1_577_836_800i64..2_208_988_800,
        zone in prop_oneof![Just("Europe/Berlin"), Just("America/New_York"), Just("Australia/Lord_Howe")],
    ) {
        let refs: Vec<&str> = fields.iter().map(String::as_str).collect();
        let cron = Cron::parse(refs.try_into().unwrap(), dd).unwrap();
        let tz = TimeZone::get(zone).unwrap();
        let sched = Schedule::new(cron.clone(), tz.clone());
        let mut at = Timestamp::from_second(start).unwrap();
        for _ in 0..20 {
            let Some(next) = sched.next_after(at) else { break };
            prop_assert!(next > at);
            let civil = civil_of(next, &tz);
            // Either the civil time matches, or `next` is a spring-forward transition that
            // stands in for matching slots inside the gap.
            let is_transition = tz
                .preceding(next.checked_add(SignedDuration::from_secs(1)).unwrap())
                .next()
                .is_some_and(|t| t.timestamp() == next);
            prop_assert!(cron.matches(civil) || is_transition, "{next} in {zone} does not match");
            at = next;
        }
    }
}
