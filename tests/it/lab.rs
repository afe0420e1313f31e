//! The real Salt lab for integration tests: a master and three minions started by the
//! project's own `contrib/lab/lab.sh` (Salt 3007.16, or `SALTPETER_SALT_VERSION`). One lab per
//! test run; tests that use it take its lock, since some restart the master or stop a minion.

#[path = "../common/lab_env.rs"]
mod lab_env;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

pub struct Lab {
    pub env: BTreeMap<String, String>,
}

impl Lab {
    pub fn master_config(&self) -> &str {
        &self.env["MASTER_CONFIG"]
    }

    pub fn minions(&self) -> Vec<String> {
        self.env["MINIONS"]
            .split_whitespace()
            .map(String::from)
            .collect()
    }

    /// `saltpeter_config` for a daemon on this lab: its master, this build's wrapper, wrappers
    /// calling back on loopback, job logs under `logdir`.
    pub fn daemon_settings(&self, logdir: &Path) -> String {
        format!(
            "saltpeter_config:\n  salt_master_config: {}\n  default_saltpeter_server_host: 127.0.0.1\n  default_wrapper_path: {}\n  logdir: {}\n",
            self.master_config(),
            env!("CARGO_BIN_EXE_sp-wrapper"),
            logdir.display()
        )
    }

    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/lab/lab.sh")
    }

    /// Runs `lab.sh CMD ARGS --dir <this lab>`.
    pub fn ctl(&self, args: &[&str]) {
        let status = Command::new(Self::script())
            .args(args)
            .args(["--dir", &self.env["LAB_DIR"]])
            .env("SALTPETER_SALT_VERSION", &self.env["SALT_VERSION"])
            .status()
            .unwrap();
        assert!(status.success(), "lab.sh {args:?} failed");
    }

    /// Salt's own CLI in the lab's venv.
    pub fn salt_cli(&self) -> Command {
        let mut c = Command::new(format!("{}/salt", self.env["SALT_BIN"]));
        c.args([
            "-c",
            Path::new(self.master_config())
                .parent()
                .unwrap()
                .to_str()
                .unwrap(),
        ]);
        c
    }
}

static LAB: OnceLock<Lab> = OnceLock::new();
static LOCK: Mutex<()> = Mutex::new(());

/// The lab, started on first use (quick when it is already up), and exclusive access to it.
pub fn lab() -> (&'static Lab, MutexGuard<'static, ()>) {
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let lab = LAB.get_or_init(|| Lab {
        env: lab_env::lab_env(),
    });
    (lab, guard)
}
