//! libFuzzer target for the wrapper protocol decoder: see `saltpeter_fuzz::wrapper_msg`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| saltpeter_fuzz::wrapper_msg::check(data));
