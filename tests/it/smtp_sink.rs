//! The lab's SMTP sink (`contrib/lab/smtp_sink.py`, aiosmtpd in the lab's venv) as a child
//! process for email tests: plain SMTP, STARTTLS, implicit TLS, AUTH; each message it receives
//! recorded as a file to read back. Also a self-signed certificate for its TLS.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::lab::{Lab, lab};

/// The lab's SMTP sink as a child process on 127.0.0.1, ended when dropped.
pub struct Sink {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Sink {
    /// Starts `smtp_sink.py` with these extra arguments (`--tls-cert`, `--tls-key`,
    /// `--require-starttls`, `--implicit-tls`, `--user`, `--password`) and waits until it
    /// listens.
    pub fn start(args: &[&str]) -> Sink {
        // The lab installs aiosmtpd into its venv and names the sink in lab.env.
        let (lab, guard) = lab();
        drop(guard); // the sink is this test's own; the lab's Salt is not touched
        Sink::on(lab, args)
    }

    /// As [`Sink::start`], for a test that already holds the lab.
    pub fn on(lab: &Lab, args: &[&str]) -> Sink {
        let python = lab.env.get("LAB_PYTHON").expect(
            "lab.env has no LAB_PYTHON: a lab started by an older lab.sh; run contrib/lab/lab.sh start again",
        );
        let script = lab.env.get("SMTP_SINK").expect("lab.env has no SMTP_SINK");
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(python)
            .arg(script)
            .arg("--dir")
            .arg(dir.path())
            .arg("--stdin-eof-exits")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start smtp_sink.py");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("smtp_sink.py did not say ready within 30 s");
        let port = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("smtp_sink.py said {line:?}, not `ready <port>`"));
        Sink { child, port, dir }
    }

    /// The `n`th message received (from 1): its record (envelope, TLS, AUTH user, decoded
    /// headers and body) and its raw text.
    pub fn message(&self, n: usize) -> (serde_json::Value, String) {
        let json = self.dir.path().join(format!("{n}.json"));
        // Written before the server's 250, so present once the send returned.
        let record = std::fs::read_to_string(&json)
            .unwrap_or_else(|e| panic!("no message {n} ({}): {e}", json.display()));
        let raw = std::fs::read_to_string(self.dir.path().join(format!("{n}.eml"))).unwrap();
        (serde_json::from_str(&record).unwrap(), raw)
    }

    /// How many messages it has received.
    pub fn count(&self) -> usize {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".json"))
            })
            .count()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost: (cert path, key path).
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let key =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (cert, pem) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, key.cert.pem()).unwrap();
    std::fs::write(&pem, key.signing_key.serialize_pem()).unwrap();
    (cert, pem)
}
