//! The job text log's writer: a thread of its own, so a burst of due jobs never waits on file
//! opens and a target's result is written from the store (streamed, under `output_cap`), never
//! from memory. Records keep their order per daemon.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use tracing::warn;

use super::core::JobLogEntry;
use crate::history::History;
use crate::joblog;

type Entry = (PathBuf, String, JobLogEntry);

/// The handle: sending never blocks.
pub struct JobLogWriter {
    tx: mpsc::Sender<Entry>,
}

impl JobLogWriter {
    /// Starts the thread; results are read through `history` on the current runtime.
    pub fn spawn(history: History) -> JobLogWriter {
        let (tx, rx) = mpsc::channel::<Entry>();
        let runtime = tokio::runtime::Handle::current();
        let spawned = std::thread::Builder::new()
            .name("job-log".into())
            .spawn(move || {
                for (logdir, job, entry) in rx {
                    let written = match entry {
                        JobLogEntry::Text(text) => joblog::append_text(&logdir, &job, &text),
                        JobLogEntry::MachineResult {
                            instance,
                            machine,
                            code,
                            at,
                        } => {
                            let output = |offset| {
                                runtime
                                    .block_on(history.output(&instance, &machine, offset))
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
                            write_result(&logdir, &job, &result, output)
                        }
                    };
                    if let Err(e) = written {
                        warn!(error = %e, logdir = %logdir.display(), "cannot write the job log of {job}");
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

/// Appends a `machine_result` record, reading the output page by page from `output(offset)`
/// (text and the next offset; `None` or empty text at the end).
fn write_result(
    logdir: &Path,
    job: &str,
    result: &joblog::Result<'_>,
    mut output: impl FnMut(u64) -> Option<(String, u64)>,
) -> std::io::Result<()> {
    std::fs::create_dir_all(logdir)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logdir.join(format!("{job}.log")))?;
    let mut f = std::io::BufWriter::new(file);
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
    f.write_all(joblog::result_tail(result).as_bytes())?;
    f.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let dir = tempfile::tempdir().unwrap();
        // Pages of 3 bytes split lines and carriage-return runs anywhere.
        let pages = |offset: u64| {
            let start = offset as usize;
            (start < output.len()).then(|| {
                let end = (start + 3).min(output.len());
                (output[start..end].to_string(), end as u64)
            })
        };
        write_result(dir.path(), "backup", &result, pages).unwrap();
        let text = std::fs::read_to_string(dir.path().join("backup.log")).unwrap();
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
