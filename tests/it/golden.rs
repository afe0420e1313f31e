//! Golden tests for config findings: each directory under `tests/golden/config` is a config
//! directory whose `saltpeter check` findings are pinned in `expected.txt` (a `before/` and
//! `after/` pair is loaded twice, as a reload). `UPDATE_EXPECT=1` rewrites the files.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use saltpeter::config::{Code, Loaded, Loader, read_dir};

fn golden_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/config")
}

fn render(loaded: &Loaded, dir: &Path, files: usize) -> String {
    let prefix = format!("{}/", dir.display());
    let mut out = String::new();
    for d in &loaded.diagnostics {
        out += &d.to_string().replace(&prefix, "");
        out.push('\n');
    }
    out += &format!(
        "{} error(s), {} warning(s) in {} file(s); {} job(s) valid\n",
        loaded.errors(),
        loaded.warnings(),
        files,
        loaded.config.jobs.len()
    );
    out
}

fn run_case(case: &Path, codes: &mut BTreeSet<Code>) -> Option<String> {
    let mut loader = Loader::new("golden-host");
    // A reload case runs in a scratch directory, so both loads see the same paths.
    let scratch = tempfile::tempdir().unwrap();
    let dir = if case.join("before").is_dir() {
        let copy_in = |from: &Path| {
            for e in std::fs::read_dir(from).unwrap() {
                let e = e.unwrap();
                std::fs::copy(e.path(), scratch.path().join(e.file_name())).unwrap();
            }
        };
        copy_in(&case.join("before"));
        let loaded = loader.load(&read_dir(scratch.path()).unwrap());
        assert_eq!(
            loaded.errors(),
            0,
            "{}: `before` must load cleanly",
            case.display()
        );
        copy_in(&case.join("after"));
        scratch.path().to_path_buf()
    } else {
        case.to_path_buf()
    };
    let files = read_dir(&dir).unwrap();
    let loaded = loader.load(&files);
    codes.extend(loaded.diagnostics.iter().map(|d| d.code));
    let actual = render(&loaded, &dir, files.len());
    let expected_path = case.join("expected.txt");
    drop(scratch);
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&expected_path, &actual).unwrap();
        return None;
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
    (expected != actual).then(|| format!("--- {}\n+++ actual\n{}", expected_path.display(), actual))
}

#[test]
fn every_finding_matches_its_golden_file_and_every_kind_has_one() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(golden_root())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 8, "golden cases are missing");
    let mut codes = BTreeSet::new();
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| run_case(c, &mut codes))
        .collect();
    assert!(
        failures.is_empty(),
        "golden mismatches (rerun with UPDATE_EXPECT=1 to accept):\n{}",
        failures.join("\n")
    );
    let missing: Vec<Code> = Code::ALL
        .into_iter()
        .filter(|c| !codes.contains(c))
        .collect();
    assert!(missing.is_empty(), "no golden case produces {missing:?}");
}

#[test]
fn the_valid_example_has_no_findings() {
    let files = read_dir(&golden_root().join("valid")).unwrap();
    let loaded = Loader::new("h").load(&files);
    assert_eq!(loaded.diagnostics, []);
    let jobs = &loaded.config.jobs;
    assert_eq!(jobs.len(), 3);
    let replace = &jobs["replace-me"];
    assert_eq!(
        (
            replace.concurrency,
            replace.success_threshold,
            replace.allow_overlap
        ),
        (saltpeter::config::Concurrency::Replace, Some(0.9), true)
    );
    assert_eq!(
        jobs["rotate-logs"].concurrency,
        saltpeter::config::Concurrency::Forbid
    );
    let report = &jobs["last-friday-report"];
    assert_eq!(
        (report.timezone.as_str(), report.user.as_deref()),
        ("Europe/Berlin", Some("www-data"))
    );
    assert_eq!(report.env["RETRIES"], "3");
    assert_eq!(jobs["rotate-logs"].timezone, "America/New_York");
    assert_eq!(
        jobs["rotate-logs"].command,
        "find /var/log/app -name '*.gz' -mtime +14 -delete\necho \"done: \\\"rotated\\\"\"\n"
    );
}
