//! libFuzzer target for the config loader (YAML files to diagnostics): see `saltpeter_fuzz::config_load`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| saltpeter_fuzz::config_load::check(data));
