//! The event bus (`saltpeter::salt::wire`): the frame splitter finds the same frames however
//! the stream is cut into reads, every frame it returns is one whole msgpack map that
//! `msgpack_len` and `rmpv` agree on, decoding frames and replies never panics, and events,
//! returns and publish requests built here survive encode → split → decode.

use rmpv::Value;
use saltpeter::salt::wire::{self, Event, FrameSplitter, JobRet, Publish, Tgt};

use super::input::Src;

/// The frame limits the splitter is tried with: the daemon's, and small ones that real
/// inputs reach.
pub const LIMITS: [usize; 5] = [wire::MAX_FRAME, 4096, 300, 64, 16];

/// The target: the input as a stream cut at chosen places, then as recipes to round-trip.
pub fn check(data: &[u8]) {
    let mut src = Src::new(data);
    let max = *src.pick(&LIMITS);
    let cuts: Vec<usize> = (0..src.below(8)).map(|_| src.below(1 << 16)).collect();
    let stream = src.rest();
    check_stream(stream, max, &cuts);
    check_msgpack_len(stream);
    let _ = wire::decode_publish(stream);
    let _ = wire::decode_reply(stream);

    let mut src = Src::new(data);
    event_round_trip(&mut src);
    job_ret_round_trip(&mut src);
    publish_round_trip(&mut src);
}

/// What one pass of the splitter over a stream found.
#[derive(Debug, PartialEq)]
pub struct Split {
    pub frames: Vec<Vec<u8>>,
    pub skipped: usize,
    pub pending: usize,
}

/// Pushes `stream` in pieces ending at `cuts` (taken modulo the length), draining after every
/// push, and checks the splitter's accounting at every step.
pub fn split(stream: &[u8], max: usize, cuts: &[usize]) -> Split {
    let mut ends: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    ends.push(stream.len());
    ends.sort_unstable();
    let mut splitter = FrameSplitter::new(max);
    let mut out = Split {
        frames: Vec::new(),
        skipped: 0,
        pending: 0,
    };
    let mut from = 0;
    for end in ends {
        splitter.push(&stream[from..end]);
        from = end;
        loop {
            let before = splitter.pending();
            let Some(next) = splitter.next_frame() else {
                break;
            };
            let taken = before - splitter.pending();
            match next {
                Ok(frame) => {
                    check_frame(&frame, max);
                    assert!(
                        taken == frame.len() || taken == frame.len() + 4,
                        "a frame of {} bytes consumed {taken}",
                        frame.len()
                    );
                    out.frames.push(frame);
                }
                Err(bad) => {
                    assert!(bad.skipped >= 1, "{bad:?}");
                    assert_eq!(taken, bad.skipped, "{bad:?}");
                    out.skipped += bad.skipped;
                }
            }
        }
    }
    out.pending = splitter.pending();
    out
}

/// The same frames, skips and leftovers whether the stream comes whole, in the given pieces,
/// or a byte at a time.
pub fn check_stream(stream: &[u8], max: usize, cuts: &[usize]) {
    let whole = split(stream, max, &[]);
    let cut = split(stream, max, cuts);
    assert_eq!(whole, cut, "cut at {cuts:?}");
    if stream.len() <= 1024 {
        let every: Vec<usize> = (0..stream.len()).collect();
        assert_eq!(whole, split(stream, max, &every), "read a byte at a time");
    }
    for frame in &whole.frames {
        decode_views(frame);
    }
}

fn check_frame(frame: &[u8], max: usize) {
    assert!(
        matches!(frame.first(), Some(0x80..=0x8f | 0xde | 0xdf)),
        "a frame is a msgpack map: {frame:02x?}"
    );
    assert!(frame.len() <= max, "{} > {max}", frame.len());
    assert_eq!(wire::msgpack_len(frame, max), Ok(Some(frame.len())));
}

/// Decodes a frame and reads every typed view of it: none may panic.
pub fn decode_views(frame: &[u8]) {
    let Ok(event) = wire::decode_event(frame) else {
        return;
    };
    let json = event.to_json();
    assert_eq!(json["tag"], event.tag.as_str());
    let _ = event.jid();
    if let Some(new) = event.job_new() {
        let _ = wire::value_text(&new.tgt);
    }
    if let Some(ret) = event.job_ret() {
        let _ = (ret.exit_code(), ret.text(), ret.pretty());
        let _ = (
            ret.reports_running(),
            ret.is_true(),
            ret.to_event().to_json(),
        );
    }
}

/// `msgpack_len` agrees with `rmpv` on where the first value ends.
pub fn check_msgpack_len(bytes: &[u8]) {
    let mut cursor = bytes;
    let read = rmpv::decode::read_value_with_max_depth(&mut cursor, 256);
    let claimed = wire::msgpack_len(bytes, wire::MAX_FRAME);
    // rmpv reads the reserved marker 0xc1 as nil; the splitter refuses it, as the spec does.
    let reserved = matches!(&claimed, Err(e) if e.contains("0xc1"));
    if read.is_ok() && !reserved {
        assert_eq!(
            claimed,
            Ok(Some(bytes.len() - cursor.len())),
            "rmpv read {read:?}"
        );
    }
    if let Ok(Some(n)) = claimed {
        let mut cursor = &bytes[..n];
        match rmpv::decode::read_value_with_max_depth(&mut cursor, 256) {
            Ok(_) => assert!(cursor.is_empty(), "rmpv left {} byte(s)", cursor.len()),
            Err(rmpv::decode::Error::DepthLimitExceeded) => {}
            Err(e) => panic!("msgpack_len says {n} bytes, rmpv says {e}"),
        }
    }
}

/// Any msgpack value; floats only when `floats` (NaN is not equal to itself).
pub fn value(src: &mut Src, depth: u32, floats: bool) -> Value {
    let kinds = if depth == 0 { 7 } else { 9 };
    match src.below(kinds) {
        0 => Value::Nil,
        1 => Value::Boolean(src.bool()),
        2 => Value::from(src.i64()),
        3 => Value::from(src.u64()),
        4 => Value::from(src.text(16)),
        5 => Value::Binary(src.bytes(16).to_vec()),
        6 if floats && src.bool() => Value::F64(f64::from_bits(src.u64())),
        6 if floats => Value::F32(f32::from_bits(src.u32())),
        6 => Value::Ext(src.byte() as i8, src.bytes(8).to_vec()),
        7 => Value::Array(
            (0..src.below(4))
                .map(|_| value(src, depth - 1, floats))
                .collect(),
        ),
        _ => Value::Map(
            (0..src.below(4))
                .map(|_| (value(src, depth - 1, floats), value(src, depth - 1, floats)))
                .collect(),
        ),
    }
}

fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).expect("writing to a Vec cannot fail");
    out
}

/// An event frame as Salt writes it, bare or behind a 4-byte length.
pub fn event_frame(tag: &str, data: &Value, prefixed: bool) -> Vec<u8> {
    let mut body = tag.as_bytes().to_vec();
    body.extend_from_slice(b"\n\n");
    body.extend(encode(data));
    let frame = encode(&Value::Map(vec![
        (Value::from("head"), Value::Map(Vec::new())),
        (Value::from("body"), Value::Binary(body)),
    ]));
    if !prefixed {
        return frame;
    }
    let mut out = (frame.len() as u32).to_be_bytes().to_vec();
    out.extend(frame);
    out
}

/// The one frame a stream of exactly one frame holds.
fn only_frame(stream: &[u8]) -> Vec<u8> {
    let got = split(stream, wire::MAX_FRAME, &[]);
    assert_eq!(got.skipped, 0, "{stream:02x?}");
    assert_eq!(got.pending, 0, "{stream:02x?}");
    assert_eq!(got.frames.len(), 1, "{stream:02x?}");
    got.frames.into_iter().next().unwrap_or_default()
}

/// An event with any tag (without line breaks, which end a tag) and any data comes back.
pub fn event_round_trip(src: &mut Src) {
    let tag = src.text(24).replace(['\n', '\r'], "");
    let data = value(src, 3, true);
    let frame = only_frame(&event_frame(&tag, &data, src.bool()));
    let event = wire::decode_event(&frame).expect("a well-formed event decodes");
    assert_eq!(event.tag, tag);
    assert_eq!(encode(&event.data), encode(&data), "{data:?}");
    decode_views(&frame);
}

/// A minion's return, as `JobRet::to_event` puts it on the bus, reads back as itself.
pub fn job_ret_round_trip(src: &mut Src) {
    let word = |src: &mut Src| src.text(10).replace(['\n', '\r', '/'], "");
    let ret = JobRet {
        id: word(src),
        jid: word(src),
        fun: src.text(12),
        fun_args: Vec::new(),
        ret: value(src, 2, false),
        retcode: src.bool().then(|| src.i64()),
        success: src.bool().then(|| src.bool()),
        stamp: None,
        out: None,
    };
    let Event { tag, data } = ret.to_event();
    let frame = only_frame(&event_frame(&tag, &data, false));
    let event = wire::decode_event(&frame).expect("a return decodes");
    assert_eq!(event.job_ret().as_ref(), Some(&ret), "{tag}");
}

/// decode(encode(p)) encodes to the same bytes (compared as bytes: NaN is in play).
pub fn publish_round_trip(src: &mut Src) {
    let mut p = Publish::new(
        if src.bool() {
            Tgt::Expr(src.text(12))
        } else {
            Tgt::List((0..src.below(4)).map(|_| src.text(8)).collect())
        },
        &src.text(8),
        &src.text(12),
    );
    p.args = (0..src.below(4)).map(|_| value(src, 2, true)).collect();
    for _ in 0..src.below(3) {
        p.kwargs.insert(src.text(8), value(src, 2, true));
    }
    p.jid = src.text(20);
    p.user = src.text(8);
    p.ret = src.text(8);
    let key = src.text(16);
    // A trailing `{"__kwarg__": true, ...}` positional argument is where kwargs go: ambiguous.
    let marker = |k: &Value| wire::value_text(k) == "__kwarg__";
    let ambiguous = p.kwargs.keys().any(|k| k == "__kwarg__")
        || matches!(p.args.last(), Some(Value::Map(m)) if m.iter().any(|(k, _)| marker(k)));
    let bytes = wire::encode_publish(&p, &key);
    let (back, back_key) = wire::decode_publish(&bytes).expect("an encoded publish decodes");
    assert_eq!(back_key, key);
    if !ambiguous {
        assert_eq!(wire::encode_publish(&back, &back_key), bytes, "{p:?}");
    }
}
