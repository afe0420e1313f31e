//! The job text log's writer: a thread of its own, so a burst of due jobs never waits on file
//! opens and a target's result is written from the store (streamed, under `output_cap`), never
//! from memory. Records keep their order per daemon.

use std::collections::hash_map::Entry as Slot;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use tracing::warn;

use super::core::JobLogEntry;
use crate::history::{History, HistoryError, OutputReader};
use crate::joblog;

type Entry = (PathBuf, String, JobLogEntry);

/// The handle: sending never blocks.
pub struct JobLogWriter {
    tx: mpsc::Sender<Entry>,
}

impl JobLogWriter {
    /// Starts the thread; results are read from `history` once committed, through a
    /// read-only connection of the thread's own.
    pub fn spawn(history: History) -> JobLogWriter {
        let (tx, rx) = mpsc::channel::<Entry>();
        let runtime = tokio::runtime::Handle::current();
        let spawned = std::thread::Builder::new()
            .name("job-log".into())
            .spawn(move || {
                let reader = history
                    .output_reader()
                    .inspect_err(|e| warn!(error = %e, "job log: cannot open the history to read results; they are written without their output"))
                    .ok();
                while let Ok(first) = rx.recv() {
                    // Everything queued so far is one burst: one wait for the store's commit
                    // for all its results (a query per target would end the store's group
                    // commits thousands of times at the end of a large run).
                    let burst: Vec<Entry> = std::iter::once(first).chain(rx.try_iter()).collect();
                    let results = burst
                        .iter()
                        .any(|(_, _, e)| matches!(e, JobLogEntry::MachineResult { .. }));
                    if results {
                        wait_stored(&runtime, &history);
                    }
                    // One read transaction and one open file per job log for the burst.
                    let mut files = Files::default();
                    let write_all = |reader: Option<&OutputReader>| {
                        for (logdir, job, entry) in burst {
                            write_entry(&mut files, &logdir, &job, entry, reader);
                        }
                        files.flush();
                    };
                    match reader.as_ref() {
                        Some(r) => r.snapshot(|r| write_all(Some(r))),
                        None => write_all(None),
                    }
                }
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start the job log writer; job logs are off");
        }
        JobLogWriter { tx }
    }

    pub fn send(&self, logdir: PathBuf, job: String, entry: JobLogEntry) {
        let _ = self.tx.send((logdir, job, entry));
    }
}

/// Waits until what was recorded before is committed (retrying while the store cannot commit,
/// so a result is written with its output).
fn wait_stored(runtime: &tokio::runtime::Handle, history: &History) {
    loop {
        match runtime.block_on(history.flush()) {
            Ok(()) | Err(HistoryError::Stopped) => return,
            Err(_) => std::thread::sleep(std::time::Duration::from_secs(1)),
        }
    }
}

/// Job logs open at once while a burst is written (each keeps a descriptor and 8 KiB).
const MAX_OPEN: usize = 256;

/// The job logs a burst writes to, each opened once (each keeps its own lines in order). A
/// burst can be a thousand jobs due in one second: finding a log and its directory is a hash
/// lookup.
#[derive(Default)]
struct Files {
    open: HashMap<PathBuf, std::io::BufWriter<std::fs::File>>,
    dirs: HashSet<PathBuf>,
}

impl Files {
    fn get(
        &mut self,
        logdir: &Path,
        job: &str,
    ) -> std::io::Result<&mut std::io::BufWriter<std::fs::File>> {
        let path = logdir.join(format!("{job}.log"));
        // Bounded descriptors and buffers, whatever the burst: write out and close, go on.
        if self.open.len() >= MAX_OPEN && !self.open.contains_key(&path) {
            self.flush();
            self.open.clear();
        }
        match self.open.entry(path) {
            Slot::Occupied(f) => Ok(f.into_mut()),
            Slot::Vacant(slot) => {
                if !self.dirs.contains(logdir) {
                    std::fs::create_dir_all(logdir)?;
                    self.dirs.insert(logdir.to_path_buf());
                }
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(slot.key())?;
                Ok(slot.insert(std::io::BufWriter::new(file)))
            }
        }
    }

    fn flush(&mut self) {
        for (path, f) in &mut self.open {
            if let Err(e) = f.flush() {
                warn!(error = %e, log = %path.display(), "cannot write a job log");
            }
        }
    }
}

fn write_entry(
    files: &mut Files,
    logdir: &Path,
    job: &str,
    entry: JobLogEntry,
    reader: Option<&OutputReader>,
) {
    let written = match entry {
        JobLogEntry::Text(text) => files.get(logdir, job).and_then(|f| writeln!(f, "{text}")),
        JobLogEntry::MachineResult {
            instance,
            machine,
            code,
            at,
        } => {
            let output = |offset| {
                reader?
                    .output(&instance, &machine, offset)
                    .ok()
                    .flatten()
                    .map(|(slice, _)| (slice.text, slice.next))
            };
            let result = joblog::Result {
                instance: &instance,
                machine: &machine,
                code,
                at,
            };
            files
                .get(logdir, job)
                .and_then(|f| write_result(f, &result, output))
        }
    };
    if let Err(e) = written {
        warn!(error = %e, logdir = %logdir.display(), "cannot write the job log of {job}");
    }
}

/// Appends a `machine_result` record, reading the output page by page from `output(offset)`
/// (text and the next offset; `None` or empty text at the end).
fn write_result(
    f: &mut impl Write,
    result: &joblog::Result<'_>,
    mut output: impl FnMut(u64) -> Option<(String, u64)>,
) -> std::io::Result<()> {
    f.write_all(joblog::result_head(result).as_bytes())?;
    // Carriage returns collapse per line, so a line split across pages waits for its end.
    let mut partial = String::new();
    let mut offset = 0;
    while let Some((text, next)) = output(offset).filter(|(t, _)| !t.is_empty()) {
        partial.push_str(&text);
        if let Some(end) = partial.rfind('\n') {
            let lines: String = partial.drain(..=end).collect();
            f.write_all(joblog::collapse_carriage_returns(&lines).as_bytes())?;
        }
        if next <= offset {
            break;
        }
        offset = next;
    }
    f.write_all(joblog::collapse_carriage_returns(&partial).as_bytes())?;
    f.write_all(joblog::result_tail(result).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst over many jobs, one of them written to again at its end: each log gets its
    /// own lines, in order, and its directory is made on first use.
    #[test]
    fn a_burst_over_many_jobs_writes_each_log_in_order() {
        let root = tempfile::tempdir().unwrap();
        let logdir = root.path().join("log");
        let mut files = Files::default();
        for i in 0..1_000 {
            let line = JobLogEntry::Text(format!("fired {i}"));
            write_entry(&mut files, &logdir, &format!("job{i}"), line, None);
        }
        let again = JobLogEntry::Text("ended 7".into());
        write_entry(&mut files, &logdir, "job7", again, None);
        files.flush();
        assert!(
            files.open.len() <= MAX_OPEN,
            "{} logs open",
            files.open.len()
        );
        let read = |job: &str| std::fs::read_to_string(logdir.join(format!("{job}.log"))).unwrap();
        assert_eq!(read("job7"), "fired 7\nended 7\n");
        assert_eq!(read("job999"), "fired 999\n");
    }

    #[test]
    fn a_result_streamed_in_pages_reads_as_the_whole_record() {
        let at: jiff::Timestamp = "2025-12-23T10:00:00.123456Z".parse().unwrap();
        let output = "a\r50%\r100%\nb";
        let result = joblog::Result {
            instance: "backup_1",
            machine: "web1",
            code: 3,
            at,
        };
        // Pages of 3 bytes split lines and carriage-return runs anywhere.
        let pages = |offset: u64| {
            let start = offset as usize;
            (start < output.len()).then(|| {
                let end = (start + 3).min(output.len());
                (output[start..end].to_string(), end as u64)
            })
        };
        let mut written = Vec::new();
        write_result(&mut written, &result, pages).unwrap();
        let text = String::from_utf8(written).unwrap();
        let whole = joblog::format(
            &joblog::Record::MachineResult {
                instance: "backup_1",
                machine: "web1",
                code: 3,
                output,
            },
            at,
        );
        assert_eq!(text, format!("{whole}\n"));
    }
}
