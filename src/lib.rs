//! saltpeter: a distributed cron for SaltStack fleets. This crate root only maps modules.

pub mod config;
pub mod schedule;
pub mod clock;
pub mod scheduler;
