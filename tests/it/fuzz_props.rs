//! The fuzz targets' checks on stable: the same five entry points (wrapper protocol, event
//! bus, config loader, cron and `next_after`, API bodies) over random inputs from proptest,
//! running the very code the cargo-fuzz targets in `fuzz/` run (`fuzz/src/`, included below),
//! and every input fuzzing has found, as a regression test.

#[path = "../../fuzz/src/lib.rs"]
mod checks;

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::Config;

use checks::input::Src;
use saltpeter::schedule::DomDow;

fn cases(n: u32) -> Config {
    Config {
        cases: n,
        // Failures are kept by hand, below, not in files next to this one.
        failure_persistence: None,
        ..Config::default()
    }
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// `base` with some bytes replaced and maybe cut short: near-misses of real inputs.
fn mutate(base: &[u8], edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    let mut out = base.to_vec();
    if !out.is_empty() {
        for &(at, b) in edits {
            let at = at % out.len();
            out[at] = b;
        }
    }
    if let Some(cut) = cut {
        out.truncate(cut % (out.len() + 1));
    }
    out
}

fn edits() -> impl Strategy<Value = (Vec<(usize, u8)>, Option<usize>)> {
    (
        prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        any::<Option<usize>>(),
    )
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The files under `dir` (one level of subdirectories) whose names end in one of `exts`.
fn fixtures(dir: &str, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root().join(dir)];
    let mut depth = 0;
    while !dirs.is_empty() && depth < 2 {
        for d in std::mem::take(&mut dirs) {
            for entry in std::fs::read_dir(d).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().to_string();
                if path.is_dir() {
                    dirs.push(path);
                } else if exts.iter().any(|e| name.ends_with(e)) {
                    out.push(path);
                }
            }
        }
        depth += 1;
    }
    out.sort();
    assert!(!out.is_empty(), "no fixtures under {dir}");
    out
}

fn read(paths: &[PathBuf], i: usize) -> Vec<u8> {
    std::fs::read(&paths[i % paths.len()]).unwrap()
}

proptest! {
    #![proptest_config(cases(4096))]

    #[test]
    fn wrapper_msg_random(data in bytes(256)) {
        checks::wrapper_msg::check(&data);
    }

    #[test]
    fn wrapper_msg_near_fixtures(i in any::<usize>(), (e, cut) in edits()) {
        let fixture = read(&fixtures("proto/wrapper", &[".json"]), i);
        checks::wrapper_msg::check_text(&String::from_utf8_lossy(&mutate(&fixture, &e, cut)));
    }

    #[test]
    fn bus_frames_random(data in bytes(512)) {
        checks::bus_frames::check(&data);
    }

    #[test]
    fn cron_random(data in bytes(128)) {
        checks::cron::check(&data);
    }
}

proptest! {
    #![proptest_config(cases(1024))]

    #[test]
    fn bus_frames_near_fixtures(
        i in any::<usize>(),
        (e, cut) in edits(),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
        max in any::<usize>(),
    ) {
        let stream = read(&fixtures("proto/salt", &["eventbus_stream.bin", "event_job_ret.bin"]), i);
        let stream = mutate(&stream, &e, cut);
        let limits = checks::bus_frames::LIMITS;
        checks::bus_frames::check_stream(&stream, limits[max % limits.len()], &cuts);
        checks::bus_frames::check_msgpack_len(&stream);
    }

    #[test]
    fn config_load_random(data in bytes(256)) {
        checks::config_load::check(&data);
    }

    #[test]
    fn api_bodies_random(data in bytes(128)) {
        checks::api_bodies::check(&data);
    }
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn config_load_near_fixtures(
        picks in prop::collection::vec(any::<usize>(), 1..4),
        (e, cut) in edits(),
    ) {
        let paths = fixtures("tests/golden/config", &[".yaml", ".yml"]);
        let mut data = Vec::new();
        for (n, i) in picks.iter().enumerate() {
            let text = read(&paths, *i);
            // Edits land in the first file only, so the others stay valid and load.
            let text = if n == 0 { mutate(&text, &e, cut) } else { text };
            if n > 0 {
                data.push(0xff);
            }
            data.extend(text.into_iter().filter(|b| *b != 0xff));
        }
        checks::config_load::check(&data);
    }
}

/// Valid values of each field, so random picks reach `next_after` (random text rarely parses).
const FIELDS: [&[&str]; 7] = [
    &["0", "*", "*/15", "5,35", "0-10/5", "59"],
    &["0", "*", "*/5", "30", "15,45", "0-59/29"],
    &["*", "2", "0-23/6", "1,13", "3", "23"],
    &["*", "?", "1", "L", "Z0-2", "15,L", "29", "31", "Z7"],
    &["*", "1", "feb", "jan-mar", "*/3", "2", "12"],
    &["*", "?", "mon-fri", "L5", "0", "sat-sun", "L0-1", "7"],
    &["*", "2025-2030", "2099", "2026", "1970", "*/7"],
];

proptest! {
    #![proptest_config(cases(2048))]

    #[test]
    fn cron_near_valid(
        picks in any::<[usize; 7]>(),
        or in any::<bool>(),
        zone in any::<usize>(),
        at in -315_619_200..4_417_977_600i64,
        spread in any::<u64>(),
    ) {
        let fields: [&str; 7] = std::array::from_fn(|i| FIELDS[i][picks[i] % FIELDS[i].len()]);
        let dom_dow = if or { DomDow::Or } else { DomDow::And };
        let zone = checks::cron::ZONES[zone % checks::cron::ZONES.len()];
        let at = jiff::Timestamp::from_second(at).unwrap();
        checks::cron::check_expr(fields, dom_dow, zone, at, spread);
    }
}

fn wire_max() -> usize {
    saltpeter::salt::wire::MAX_FRAME
}

// === fixed cases the random ones might miss ===

#[test]
fn the_size_limit_is_checked_before_parsing() {
    use saltpeter::protocol::{DecodeError, MAX_MESSAGE_BYTES, WrapperMsg};
    let big = format!(
        "{{\"type\":\"heartbeat\",\"x\":\"{}\"}}",
        "a".repeat(MAX_MESSAGE_BYTES)
    );
    assert!(matches!(
        WrapperMsg::decode(&big),
        Err(DecodeError::TooLarge(_))
    ));
}

#[test]
fn every_fixture_passes_the_checks() {
    for path in fixtures("proto/wrapper", &[".json"]) {
        let text = std::fs::read_to_string(&path).unwrap();
        checks::wrapper_msg::check_text(&text);
    }
    for path in fixtures("proto/salt", &[".bin"]) {
        let stream = std::fs::read(&path).unwrap();
        checks::bus_frames::check_stream(&stream, wire_max(), &[1, 7, 100, 1000]);
    }
    let config: Vec<u8> = fixtures("tests/golden/config/valid", &[".yaml", ".yml"])
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap().into_iter().chain([0xff]))
        .collect();
    checks::config_load::check(&config);
    checks::api_bodies::check_body(br#"{"on": true}"#);
    checks::api_bodies::check_body(br#"{"on": false, "machine": "web1"}"#);
    checks::api_bodies::check_body(br#"{"on": true, "machine": "*"}"#);
    checks::api_bodies::check_body(br#"{"on": true, "on": false}"#);
}

#[test]
fn cron_checks_hold_across_dst_in_every_zone() {
    let exprs = [
        ["0", "30", "2", "*", "*", "*", "*"],
        ["*", "*", "*", "*", "*", "*", "*"],
        ["0", "0", "0", "L", "*", "*", "*"],
        ["0", "0", "0", "*", "*", "L5", "*"],
        ["*/7", "*/13", "*", "Z0-2", "feb,mar", "*", "2025-2030"],
        ["0", "0", "0", "29", "2", "*", "2097-2099"],
    ];
    let mut src = Src::new(b"");
    for fields in exprs {
        for zone in checks::cron::ZONES {
            for at in [1_711_846_800, 1_729_990_800, 4_102_444_799, -1, 0] {
                let at = jiff::Timestamp::from_second(at).unwrap();
                checks::cron::check_expr(fields, Default::default(), zone, at, src.u64());
            }
        }
    }
}

// === regressions: inputs the fuzz targets found (bytes as the target received them) ===
//
// Each is kept twice: the input as found (named by its libFuzzer artifact), through the whole
// target, and a minimal stream showing the bug, with the outcome now expected.

mod regressions {
    use rmpv::Value;
    use saltpeter::salt::wire::{self, MAX_FRAME};

    use super::checks::api_bodies;
    use super::checks::bus_frames::{self, Split, split};

    fn whole_and_in_pieces(stream: &[u8], pieces: &[usize], expected: Split) {
        assert_eq!(split(stream, MAX_FRAME, &[]), expected, "whole");
        assert_eq!(
            split(stream, MAX_FRAME, pieces),
            expected,
            "cut at {pieces:?}"
        );
        bus_frames::check_stream(stream, MAX_FRAME, pieces);
    }

    /// `wire::FrameSplitter`: after garbage, the resync skipped a `0x00` that starts a length
    /// prefix when its 5th byte was not read yet, so the frame was found only as a bare map
    /// and its prefix reported as garbage, depending on where a read ended.
    #[test]
    fn resync_keeps_a_length_prefix_cut_by_a_read() {
        bus_frames::check(RESYNC_AT_A_READ_BOUNDARY);
        let stream = [0xc1, 0, 0, 0, 4, 0x81, 0xa1, b'a', 1];
        let expected = Split {
            frames: vec![vec![0x81, 0xa1, b'a', 1]],
            skipped: 1,
            pending: 0,
        };
        whole_and_in_pieces(&stream, &[2], expected);
    }

    /// `wire::FrameSplitter`: a length prefix of 16 MiB or more (first byte 1-4, within the
    /// 64 MiB limit) read in pieces of under 5 bytes was refused as garbage; read whole, it
    /// was waited for.
    #[test]
    fn a_long_frames_prefix_read_in_pieces_is_waited_for() {
        bus_frames::check(LONG_PREFIX_READ_IN_PIECES);
        let expected = Split {
            frames: Vec::new(),
            skipped: 0,
            pending: 5,
        };
        whole_and_in_pieces(&[1, 0, 0, 0, 0x80], &[1, 2, 3], expected);
    }

    /// `wire::FrameSplitter`: the resync stopped only at `0x00` while the probe accepts any
    /// prefix within the limit, so a trailing `0x03` was skipped or kept by read boundaries.
    #[test]
    fn resync_stops_where_a_long_frames_prefix_may_start() {
        bus_frames::check(RESYNC_ONTO_A_LONG_PREFIX);
        let expected = Split {
            frames: Vec::new(),
            skipped: 4,
            pending: 1,
        };
        whole_and_in_pieces(b"sion\x03", &[1, 2, 3, 4], expected);
    }

    /// Not a bug (the check was wrong): rmpv reads the reserved marker `0xc1` as nil, the
    /// splitter refuses it, as the msgpack spec does.
    #[test]
    fn the_reserved_marker_is_refused() {
        bus_frames::check(RESERVED_MARKER);
        bus_frames::check_msgpack_len(&[0xc1]);
        assert!(wire::msgpack_len(&[0xc1], MAX_FRAME).is_err());
    }

    /// `wire::to_json`: a map key that is a map was written as its JSON text, escaped again at
    /// every level, so 450 bytes of keys nested in keys took 38 s and 1.8 GB.
    #[test]
    fn map_keys_nested_in_map_keys_stay_small() {
        bus_frames::check(MAP_KEYS_IN_MAP_KEYS);
        let mut v = Value::Map(Vec::new());
        for _ in 0..100 {
            v = Value::Map(vec![(v, Value::from(1))]);
        }
        let json = wire::to_json(&v);
        let key = json.as_object().unwrap().keys().next().unwrap();
        assert!(key.len() <= 1024, "{} bytes", key.len());
        assert!(key.starts_with("{\""), "{key:.40}");
    }

    /// Not fixed here (`src/api/rest.rs` is another change's): serde reads `MaintenanceBody`
    /// from the list of its fields too, so `POST /api/v1/maintenance` takes `[false, "web1"]`,
    /// which the documented schema (an object) does not allow; `"machine": null` is taken as
    /// "left out" too. Pinned, so a stricter server shows up here. `api_bodies`
    /// crash-77c09835fc3fdca645d09d9973bc8517c576609e.
    #[test]
    fn array_and_null_machine_bodies_are_taken() {
        let found = b"\
        \x00\x0d\x0d[false\x0d\x0d,\x20\x0d\x0d\x0d\x0d\x0d\x0d\x22heartbeat\x22\x09\x09\x09\
        \x09\x09\x09\x0d\x0d\x0d\x0d\x09\x09\x09\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20]\
        \x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\
        \x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\
        \x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\
        \x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\
        \x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\
        \x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\
        \x20\x0d\x0d\x0d\x0d\x0d\x0d\x0d\x0d\x0d\x0d\x0d\x0d\x0d\x0d\x0d\x20\x20\x20\x20\x20\
        \x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x0d\x0d\x0d\x0d\x0d\
        \x20\x20\x20\x20\x20\x20\x20\x0d";
        api_bodies::check(found);
        for (body, machine, on) in [
            (&br#"[false, "web1"]"#[..], Some("web1"), false),
            (br#"{"on": true, "machine": null}"#, None, true),
            (br#"[true, null]"#, None, true),
        ] {
            let change = api_bodies::expected(body).unwrap();
            assert_eq!((change.machine.as_deref(), change.on), (machine, on));
            api_bodies::check_body(body);
        }
        for refused in [
            &br#"[true]"#[..],
            br#"[true, "web1", 1]"#,
            br#"[true, "*"]"#,
        ] {
            assert_eq!(api_bodies::expected(refused), None);
            api_bodies::check_body(refused);
        }
    }

    /// `yaml::parse`: aliases of aliases were copied without bound; 511 bytes of job file
    /// ("billion laughs") took the loader past 2 GB. Found by a hand-made input to the
    /// `config_load` target (fuzz/artifacts/config_load/oom-billion-laughs-handmade.yaml).
    #[test]
    fn aliases_of_aliases_are_refused() {
        use saltpeter::config::{Code, Loader, SourceFile};
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let file = SourceFile {
            path: "conf/a.yaml".into(),
            group: "a".into(),
            text: Ok(text),
        };
        let loaded = Loader::new("h").load(&[file]);
        assert_eq!(loaded.diagnostics.len(), 1, "{:?}", loaded.diagnostics);
        let d = &loaded.diagnostics[0];
        assert_eq!((d.code, d.pos.line), (Code::Yaml, 6), "{d}");
        assert!(d.message.contains("more than 1000000 nodes"), "{d}");
    }

    /// `bus_frames` crash-7f3c89e210b428db31364f4b6718e966caaf47cc
    const RESYNC_AT_A_READ_BOUNDARY: &[u8] = b"\
        \x00\x03\x05\x00@\x00\xc8\x00\x82\xa4head\x80test-minion-1\xa7success\xc3\xa6return\xa2h\
        i\xa7retcode\x00\xa3jid\xb420261126031950294346\xa3f\xf4n\xa7cmd.run\xa8r\xa4root\xa6_st\
        amp\xe0\xba2026-11-26T03:19:50.651682\xa2ts\xcek\x07\x02\x00\x00\x00\x00\x00\x00\x00\xa5\
        V";

    /// `bus_frames` crash-e3ede831dea6c49144ee43600c6591c4b0016a6a
    const LONG_PREFIX_READ_IN_PIECES: &[u8] = b"\
        \x00\x03\x05\x00@\x00\xc8\x00\x01\x00\x00\x00\x82\xa4head\x80\xa4headbody\xc4\xd2salt/jo\
        b/20261123591\xfc\xfc\xfc\xfc\xfc\xfc\xfc\xfc\xfc\xfc\xfc\xfc\xfc\xfc\xfc\xfc\xfc\xfc\
        \xfc\xfc\xfc\xfc\xfc026094346/new\xee\x0ai\x89\xa3jd\xb420/20261123526112603195029\xfe\
        \xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\
        \xfe\xfe\xfe\xfe\xfe\xfe\xfe9\xbc\xa1\xff\xef\x00\x00\x00\xfe\xfe\xfe\xfe\xfe\xfe\xfe\
        \xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\
        \xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\
        \xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfa\xfe\xfe\xfe\xfe\xfe\
        \xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xfe\xff\xff\xff\xff\xfe\xfe\xfe\xfe\xfe\
        \xfe4\xff\xff\xff\xff\xffgdat\xa4user\xa4root\xa3fun\xa7cmd.run\xa3arg\x91\xa7echo\x20hi\
        \xa7minions\x93\xadtest-minion-1\xadtest-minion-2\xadtest-minion-3\xa7missing\x90\xa6_st\
        amp\xba2020261126033\x82\xa4head\x80298914";

    /// `bus_frames` crash-3d6f8d3c521eba92b445b7b1a2f3bf90fbe0e7a3
    const RESYNC_ONTO_A_LONG_PREFIX: &[u8] = b"\
        \x00\x00\x83\xa3enc\xa5clear\xa4load\x89\xa3cmd\xa7puq9o3hQHdb\xa3ret\xa0\xa3jid\xa0\xa4\
        use\x01\x00\x00\x00r\xa4root\xa7\xf8\xf8\xf8\xf8\xf8\xf8\xf8\xf8ersion\x03";

    /// `bus_frames` crash-d95c613b2fbdb52c6beee0713c593d848e11fd6b
    const RESERVED_MARKER: &[u8] = b"\
        \x00\xc9\xc9\xc9\xc1\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\
        \xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\
        \xc9\xc9\xc9\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\
        \xff\xff\xff\xff\xff\xff\xff\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\
        \xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc9\xc943\x00433?\x01\x00\x00\
        \x00\x00\x00\x00\x80333\xb3\x033?333\xb3\x03";

    /// `bus_frames` slow-unit-b23f0273ee073e4d03265f0b5a7ada61c1e29fb5
    const MAP_KEYS_IN_MAP_KEYS: &[u8] = b"\
        \x00\x00\x98[\x9e\x9a44444444444444444\xa7versio\xcf\xcf\xcf\xcf\xcf\xcf\xcf\xcf\xcf\xcf\
        \xcf\xcf\xcf\xcf\xcf\xcf\xcf\xcf\xcf\xcfpub\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\
        \xc8\xbe444\xa7versio\xcf\xcf\xcf\xcf\xcf\xcf\xcf\xcf\xcf\xcf\xcf\xcf\xcf\xcf\xcf\xcf\
        \xcf\xcf\xcf\xcfpub\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\
        \xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\x82\x82\x82\x82\x82\x82\x82\x82\
        \x82\x82\x82\x82\x82\x82\x82\x82\x82\x82\x82\x82\x82\x82\x82\x82\x82\x82\x82\x82\xff\xff\
        \xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\
        \xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\
        \xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\
        \xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\
        \xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\
        \xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x82\x82\x82\x82\x82\x82\x82\x82\x82\
        \x82\x82\x82\x82\x82\x82\x82\x82\x82\x82\x82\x82\x82\x82\x82\x82\x82\x82\x82\x82\x82\x82\
        \x82\x82\x82\x82\x82\x82\x82\x82\x82\x82\x82\x82\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\
        \xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbf\
        \x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\
        \x02\x02\x02\x02\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\x02\x00\x00\x00\x00\x00\
        \x00\x00\xbe\xbe\xbe\xbe\x01\x00\x00\x00\x00\x00\x00\x06\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\
        TxAZ31H1eJ44444$4495907051\xff0\xa2";
}
