//! Shared by the whole-daemon benchmarks (`fleet`, `runaway`): a real `saltpeter run` holding a
//! run adopted from its database (`daemon`), simulated wrappers speaking the protocol to it
//! (`wrapper`), and the small helpers both need (/proc sampling, limits, percentiles, env).

pub mod daemon;
pub mod procfs;
pub mod wrapper;

pub use procfs::{cpu_seconds, rss_kib};

#[path = "../../tests/common/net.rs"]
mod net;

#[path = "../../tests/common/reaped.rs"]
mod reaped;

use std::time::Duration;

/// `cargo test --benches` runs bench binaries with `--list`; these are not tests.
pub fn listing_only() -> bool {
    std::env::args().any(|a| a == "--list")
}

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// A comma-separated list of counts, e.g. `FLEET_SIZES=1000,5000`.
pub fn env_counts(name: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .split(',')
            .filter_map(|s| s.trim().replace('_', "").parse().ok())
            .collect(),
        Err(_) => default.to_vec(),
    }
}

/// Raises this process's descriptor limit to `want` (capped by the hard limit; the daemon it
/// spawns inherits it) and returns the soft limit in force.
pub fn raise_nofile(want: u64) -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < want {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard);
    }
    getrlimit(Resource::RLIMIT_NOFILE).map_or(soft, |(s, _)| s)
}

/// The `q` quantile (0..=1) of sorted samples, nearest rank.
pub fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Milliseconds with one decimal, or `-` when there is no sample.
pub fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.1}", d.as_secs_f64() * 1000.0))
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A target's verdict, as printed beside the figures.
pub fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}
