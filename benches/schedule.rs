//! Benchmark: next-fire computation per job (`Schedule::next_after`), for typical and worst-case
//! expressions. Run with `cargo bench --bench schedule`.

use divan::{Bencher, black_box};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use saltpeter::schedule::{Cron, DomDow, Schedule};

fn main() {
    divan::main();
}

fn schedule(expr: &str, tz: &str) -> Schedule {
    let f: Vec<&str> = expr.split(' ').collect();
    Schedule::new(
        Cron::parse(f.try_into().unwrap(), DomDow::And).unwrap(),
        TimeZone::get(tz).unwrap(),
    )
}

#[divan::bench(args = [
    "* * * * * * *",
    "0 */5 * * * * *",
    "0 30 2 * * * *",
    "0 30 17 * * L5 *",
    "0 0 0 29 2 * *",
    "0 0 0 31 2 * *",
])]
fn next_after_utc(bencher: Bencher, expr: &str) {
    let s = schedule(expr, "UTC");
    let from: Timestamp = "2025-06-15T12:34:56Z".parse().unwrap();
    bencher.bench(|| black_box(&s).next_after(black_box(from)));
}

#[divan::bench]
fn next_after_berlin_daily(bencher: Bencher) {
    let s = schedule("0 30 2 * * * *", "Europe/Berlin");
    let from: Timestamp = "2025-03-29T12:00:00Z".parse().unwrap();
    bencher.bench(|| black_box(&s).next_after(black_box(from)));
}

#[divan::bench]
fn parse_expression(bencher: Bencher) {
    bencher.bench(|| {
        Cron::parse(
            black_box(["0", "*/5", "8-18", "*", "jan-jun", "mon-fri", "*"]),
            DomDow::And,
        )
    });
}
