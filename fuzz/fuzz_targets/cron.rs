//! libFuzzer target for the cron parser and `next_after`: see `saltpeter_fuzz::cron`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| saltpeter_fuzz::cron::check(data));
