//! The config loader (`saltpeter::config::Loader` over `saltpeter::yaml`): any bytes as one
//! or more job files load without panicking, to diagnostics that point into those files,
//! sorted, the same on every load, and a reload with the files changed keeps all that true.

use jiff::Timestamp;
use saltpeter::config::{Loaded, Loader, SourceFile};
use saltpeter::yaml::{self, Kind, Node};

/// The target: the input split at `0xff` bytes (never in UTF-8) into up to four files; a file
/// that is exactly `0xfe` is one that could not be read.
pub fn check(data: &[u8]) {
    let files: Vec<SourceFile> = data
        .split(|b| *b == 0xff)
        .take(4)
        .enumerate()
        .map(|(i, part)| file(i, part))
        .collect();
    check_files(&files);
}

fn file(i: usize, part: &[u8]) -> SourceFile {
    let group = char::from(b'a' + i as u8).to_string();
    SourceFile {
        path: format!("conf/{group}.yaml"),
        group,
        text: match part {
            [0xfe] => Err("Permission denied (os error 13)".into()),
            _ => Ok(String::from_utf8_lossy(part).into_owned()),
        },
    }
}

/// Loads `files`, loads them again on a fresh loader, then reloads with their texts rotated
/// (so files break and heal and their last good versions are used), checking every outcome.
pub fn check_files(files: &[SourceFile]) {
    for f in files {
        if let Ok(text) = &f.text {
            check_yaml(text);
        }
    }
    let mut loader = Loader::new("fuzzhost");
    let first = loader.load(files);
    check_loaded(files, &first, true);
    let fresh = Loader::new("fuzzhost").load(files);
    assert_eq!(
        first.diagnostics, fresh.diagnostics,
        "loading is deterministic"
    );
    assert!(first.config.jobs.keys().eq(fresh.config.jobs.keys()));

    // Each file gets the next one's text, the last the first's.
    let mut rotated = files.to_vec();
    for (file, next) in rotated.iter_mut().zip(files.iter().cycle().skip(1)) {
        file.text = next.text.clone();
    }
    let second = loader.load(&rotated);
    // Findings about a file's last good version point into that version, not the new text.
    check_loaded(&rotated, &second, false);
}

fn lines(text: &str) -> u32 {
    let crlf = text.matches("\r\n").count();
    (text.matches(['\r', '\n']).count() - crlf) as u32 + 1
}

fn check_loaded(files: &[SourceFile], loaded: &Loaded, texts_in_force: bool) {
    let ds = &loaded.diagnostics;
    assert!(
        ds.windows(2)
            .all(|w| (&w[0].file, w[0].pos) <= (&w[1].file, w[1].pos)),
        "diagnostics are sorted by file and position: {ds:#?}"
    );
    assert_eq!(loaded.errors() + loaded.warnings(), ds.len());
    for d in ds {
        let file = files
            .iter()
            .find(|f| f.path == d.file)
            .unwrap_or_else(|| panic!("{d} names a file that was not loaded"));
        assert!(d.pos.line >= 1 && d.pos.col >= 1, "{d}");
        let last = file.text.as_deref().map_or(1, lines);
        assert!(
            !texts_in_force || d.pos.line <= last + 1,
            "{d} is past the end ({last} lines)"
        );
        assert!(d.to_string().ends_with(&d.message));
    }
    let now = Timestamp::from_second(1_766_484_000).expect("in range");
    for (name, job) in &loaded.config.jobs {
        assert_eq!(&job.name, name);
        assert!(
            files.iter().any(|f| job.source.starts_with(&f.path)),
            "job {name} from {}",
            job.source
        );
        if let Some(next) = job.schedule.next_after(now) {
            assert!(next > now, "job {name}: {next} is not after {now}");
        }
    }
}

/// The YAML reader: no panic, and every node it builds has a 1-based position.
pub fn check_yaml(text: &str) {
    let Ok(doc) = yaml::parse(text) else {
        return;
    };
    let mut stack: Vec<&Node> = doc.root.iter().collect();
    while let Some(node) = stack.pop() {
        assert!(node.pos.line >= 1 && node.pos.col >= 1, "{node:?}");
        match &node.kind {
            Kind::Scalar(_) => {}
            Kind::Seq(items) => stack.extend(items),
            Kind::Map(entries) => stack.extend(entries.iter().flat_map(|(k, v)| [k, v])),
        }
    }
    for dup in &doc.duplicates {
        assert!(dup.pos.line >= 1 && dup.first.line >= 1, "{dup:?}");
    }
}
