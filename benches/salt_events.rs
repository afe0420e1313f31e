//! Benchmark: event-bus decoding on one core, for typical `ret` events (split the stream,
//! decode the frame, build the typed return view). Run with `cargo bench --bench salt_events`.

use divan::counter::{BytesCount, ItemsCount};
use divan::{Bencher, black_box};
use saltpeter::salt::wire::{self, FrameSplitter};

fn main() {
    divan::main();
}

const EVENTS: usize = 10_000;

fn ret_frame(version: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/proto/salt/{version}/event_job_ret.bin",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn stream(version: &str) -> Vec<u8> {
    ret_frame(version).repeat(EVENTS)
}

#[divan::bench(args = ["3007.16", "3006.29"])]
fn split_decode_ret_events(bencher: Bencher, version: &str) {
    let bytes = stream(version);
    bencher
        .counter(ItemsCount::new(EVENTS))
        .counter(BytesCount::new(bytes.len()))
        .bench(|| {
            let mut splitter = FrameSplitter::default();
            // Read the way the bus does: 64 KiB at a time.
            let mut n = 0;
            for chunk in black_box(&bytes).chunks(64 * 1024) {
                splitter.push(chunk);
                while let Some(frame) = splitter.next_frame() {
                    let event = wire::decode_event(&frame.unwrap()).unwrap();
                    let ret = event.job_ret().unwrap();
                    n += usize::from(ret.retcode == Some(0));
                }
            }
            assert_eq!(n, EVENTS);
        });
}
