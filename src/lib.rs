//! saltpeter: a distributed cron for SaltStack fleets. This crate root only maps modules
//! (see ARCHITECTURE.md for what each owns and must not know).

#[cfg(feature = "daemon")]
pub mod agents;
#[cfg(feature = "daemon")]
pub mod api;
#[cfg(feature = "daemon")]
pub mod clock;
#[cfg(feature = "daemon")]
pub mod config;
#[cfg(feature = "daemon")]
pub mod control;
#[cfg(feature = "daemon")]
pub mod coordinator;
#[cfg(feature = "daemon")]
pub mod crontab;
#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(feature = "daemon")]
pub mod engine;
#[cfg(feature = "daemon")]
pub mod history;
#[cfg(feature = "daemon")]
pub mod joblog;
#[cfg(feature = "daemon")]
pub mod journal;
#[cfg(feature = "daemon")]
pub mod metrics;
#[cfg(feature = "daemon")]
pub mod notify;
pub mod protocol;
#[cfg(feature = "daemon")]
pub mod salt;
#[cfg(feature = "daemon")]
pub mod schedule;
#[cfg(feature = "daemon")]
pub mod scheduler;
#[cfg(feature = "daemon")]
pub mod secret;
pub mod wrapper;
#[cfg(feature = "daemon")]
pub mod yaml;

/// The version `saltpeter --version` prints.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// This machine's host name, the default for `default_saltpeter_server_host` (as the
/// original's `os.uname().nodename`).
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_string())
}
