//! libFuzzer target for the event bus frame splitter and msgpack event decoding: see `saltpeter_fuzz::bus_frames`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| saltpeter_fuzz::bus_frames::check(data));
