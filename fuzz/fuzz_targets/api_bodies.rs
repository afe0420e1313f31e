//! libFuzzer target for the API's JSON request bodies: see `saltpeter_fuzz::api_bodies`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| saltpeter_fuzz::api_bodies::check(data));
