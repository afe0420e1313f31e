//! Telling people: what a notification says (`notice`), when a job's runs call for one
//! (`tracker`, sans-IO), and sending it through a channel (`webhook`, `email`).

pub mod email;
pub mod notice;
pub mod outbox;
mod send_error;
pub mod tracker;
pub mod webhook;

pub use notice::{Event, Notice, TargetResult};
pub use send_error::SendError;
