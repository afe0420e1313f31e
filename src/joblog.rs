//! The per-job text log, `<logdir>/<job>.log`, in the original's record formats (`start`,
//! `machine_start`, `machine_result`, `end`, `overlap`, `no_machines`, `maintenance`), so
//! whatever read the original's logs keeps working. Formatting is pure; appending is the one
//! piece of I/O, and a log that cannot be written is reported, never fatal.

use std::io::Write;
use std::path::Path;

use jiff::Timestamp;

/// One record.
#[derive(Clone, Debug, PartialEq)]
pub enum Record<'a> {
    Start {
        instance: &'a str,
    },
    MachineStart {
        instance: &'a str,
        machine: &'a str,
    },
    MachineResult {
        instance: &'a str,
        machine: &'a str,
        code: i64,
        output: &'a str,
    },
    End {
        instance: &'a str,
    },
    Overlap {
        running: &'a str,
    },
    NoMachines {
        instance: &'a str,
    },
    Maintenance {
        instance: &'a str,
        machine: &'a str,
        why: &'a str,
    },
}

fn time(at: Timestamp) -> String {
    // Python's `str(datetime)` of an aware UTC time, as the original wrote it.
    at.strftime("%Y-%m-%d %H:%M:%S%.6f+00:00").to_string()
}

/// Each line keeps only its last non-empty `\r` segment (progress bars collapse), as the
/// original did for its logs.
pub fn collapse_carriage_returns(text: &str) -> String {
    text.split('\n')
        .map(|line| line.rsplit('\r').find(|seg| !seg.is_empty()).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A target's result, for a `machine_result` record written in pieces ([`result_head`], the
/// output with [`collapse_carriage_returns`], [`result_tail`]).
#[derive(Clone, Debug)]
pub struct Result<'a> {
    pub instance: &'a str,
    pub machine: &'a str,
    pub code: i64,
    pub at: Timestamp,
}

/// What precedes the output in a `machine_result` record.
pub fn result_head(r: &Result<'_>) -> String {
    format!(
        "########## {} from {} ################\n**** Exit Code {} ******\n",
        r.machine, r.instance, r.code
    )
}

/// What follows the output in a `machine_result` record (with the record's final newline).
pub fn result_tail(r: &Result<'_>) -> String {
    format!(
        "\n####### END {} from {} at {} #########\n",
        r.machine,
        r.instance,
        time(r.at)
    )
}

/// The record's text (without the final newline).
pub fn format(record: &Record<'_>, at: Timestamp) -> String {
    let t = time(at);
    match record {
        Record::Start { instance } => format!("###### Starting {instance} at {t} ################"),
        Record::MachineStart { instance, machine } => {
            format!("###### Starting {instance} on {machine} at {t} ################")
        }
        Record::MachineResult {
            instance,
            machine,
            code,
            output,
        } => {
            let r = Result {
                instance,
                machine,
                code: *code,
                at,
            };
            let tail = result_tail(&r);
            format!(
                "{}{}{}",
                result_head(&r),
                collapse_carriage_returns(output),
                tail.trim_end_matches('\n')
            )
        }
        Record::End { instance } => format!("###### Finished {instance} at {t} ################"),
        Record::Overlap { running } => {
            format!("###### Overlap detected on {running} at {t} ################")
        }
        Record::NoMachines { instance } => {
            format!("!!!!!! No targets matched for {instance} !!!!!!")
        }
        Record::Maintenance {
            instance,
            machine,
            why,
        } => format!(
            "########## {machine} from {instance} ################\n**** Exit Code 0 ******\n{why}\n####### END {machine} from {instance} at {t} #########"
        ),
    }
}

/// Appends a record to `<logdir>/<job>.log` (the file is opened per record, as the original did,
/// so log rotation needs no signal).
pub fn append(logdir: &Path, job: &str, record: &Record<'_>, at: Timestamp) -> std::io::Result<()> {
    append_text(logdir, job, &format(record, at))
}

/// Appends an already formatted record.
pub fn append_text(logdir: &Path, job: &str, text: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(logdir)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logdir.join(format!("{job}.log")))?;
    writeln!(f, "{text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_have_the_originals_shapes() {
        let at: Timestamp = "2025-12-23T10:00:00.123456Z".parse().unwrap();
        assert_eq!(
            format(
                &Record::Start {
                    instance: "backup_1"
                },
                at
            ),
            "###### Starting backup_1 at 2025-12-23 10:00:00.123456+00:00 ################"
        );
        let r = Record::MachineResult {
            instance: "backup_1",
            machine: "web1",
            code: 3,
            output: "a\r50%\r100%\nb",
        };
        assert_eq!(
            format(&r, at),
            "########## web1 from backup_1 ################\n**** Exit Code 3 ******\n100%\nb\n####### END web1 from backup_1 at 2025-12-23 10:00:00.123456+00:00 #########"
        );
        assert_eq!(
            format(&Record::NoMachines { instance: "x_1" }, at),
            "!!!!!! No targets matched for x_1 !!!!!!"
        );
        let dir = tempfile::tempdir().unwrap();
        append(
            &dir.path().join("logs"),
            "backup",
            &Record::End {
                instance: "backup_1",
            },
            at,
        )
        .unwrap();
        append(
            &dir.path().join("logs"),
            "backup",
            &Record::Overlap {
                running: "backup_0",
            },
            at,
        )
        .unwrap();
        let text = std::fs::read_to_string(dir.path().join("logs/backup.log")).unwrap();
        assert_eq!(text.lines().count(), 2);
    }

    #[test]
    fn carriage_returns_collapse_per_line() {
        assert_eq!(collapse_carriage_returns("10%\r20%\r\nok\r\n"), "20%\nok\n");
    }
}
