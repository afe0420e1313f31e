//! The checks behind saltpeter's fuzz targets, one module per entry point. Each module's
//! `check(&[u8])` is a whole target: the libFuzzer binaries in `fuzz_targets/` call it on
//! nightly, and `tests/it/fuzz_props.rs` includes this file and calls it on random bytes from
//! proptest on stable, so both run the same invariants. Sibling modules are reached through
//! `super::`, which works in both places.

pub mod api_bodies;
pub mod bus_frames;
pub mod config_load;
pub mod cron;
pub mod input;
pub mod wrapper_msg;
