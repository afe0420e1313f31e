//! Everything Salt: the master's settings, publishing over ZeroMQ, the event bus, the job
//! cache, and gathering a job's returns. The only module that knows Salt's wire formats and
//! the `zeromq` and `rmpv` crates.
//!
//! Must not know: the config directory's job format, the scheduler, wrappers.
//!
//! Salt versions: verified against 3006.29 and 3007.16 masters (the lab and CI), with fixtures
//! from 3008.5 too. No current Salt publishes its event bus over ZeroMQ; it is a msgpack stream
//! on `<sock_dir>/master_event_pub.ipc` (or loopback TCP with `ipc_mode: tcp`).

pub mod args;
pub mod bus;
pub mod client;
pub mod command;
pub mod gather;
pub mod job;
pub mod jobcache;
pub mod masterconf;
pub mod publisher;
pub mod wire;

pub use client::{PublishError, Published, SaltClient};
pub use masterconf::{EventSource, SaltSettings};
pub use wire::{Event, JobNew, JobRet, Publish, Tgt};
