//! Benchmark: loading and validating a config directory of 10,000 jobs (100 files of 100
//! jobs), from memory and from disk. Run with `cargo bench --bench config_load`.

use divan::{Bencher, black_box};
use saltpeter::config::{Loader, SourceFile, read_dir};

fn main() {
    divan::main();
}

const FILES: usize = 100;
const JOBS_PER_FILE: usize = 100;

fn file_text(f: usize) -> String {
    let mut text = String::from("saltpeter_config:\n  default_timezone: Europe/Berlin\n");
    for j in 0..JOBS_PER_FILE {
        let i = f * JOBS_PER_FILE + j;
        text += &format!(
            "job_{i}:\n  sec: 0\n  min: '{}'\n  hour: '*/{}'\n  dom: '*'\n  mon: '*'\n  dow: 'mon-fri'\n  targets: 'web{}*'\n  target_type: glob\n  command: |\n    /usr/local/bin/task --id {i} --verbose\n  user: www-data\n  timeout: 600\n  env:\n    TASK: '{i}'\n",
            i % 60,
            1 + i % 12,
            i % 10
        );
    }
    text
}

fn sources() -> Vec<SourceFile> {
    (0..FILES)
        .map(|f| SourceFile {
            path: format!("/etc/saltpeter/f{f:03}.yaml"),
            group: format!("f{f:03}"),
            text: Ok(file_text(f)),
        })
        .collect()
}

#[divan::bench(sample_count = 20)]
fn load_10k_jobs_from_memory(bencher: Bencher) {
    let files = sources();
    bencher.bench(|| {
        let loaded = Loader::new("bench").load(black_box(&files));
        assert_eq!(loaded.config.jobs.len(), FILES * JOBS_PER_FILE);
        loaded
    });
}

#[divan::bench(sample_count = 20)]
fn load_10k_jobs_from_disk(bencher: Bencher) {
    let dir = tempfile::tempdir().unwrap();
    for f in 0..FILES {
        std::fs::write(dir.path().join(format!("f{f:03}.yaml")), file_text(f)).unwrap();
    }
    bencher.bench(|| {
        let files = read_dir(dir.path()).unwrap();
        Loader::new("bench").load(&files)
    });
}
