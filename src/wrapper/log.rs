//! The wrapper's local log, `<SP_WRAPPER_LOGDIR>/<job>.log`, with the original's line format
//! (`YYYY-mm-dd HH:MM:SS [<instance>] <message>`, UTC) and levels (`off`, `normal`, `debug`).
//! The command itself is logged at `debug` only: it may hold secrets.

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;

use super::settings::{LogLevel, Settings};

pub struct Log {
    level: LogLevel,
    instance: String,
    file: Option<Mutex<File>>,
}

impl Log {
    /// Opens the log; a log that cannot be opened is skipped (the job still runs).
    pub fn open(settings: &Settings) -> Log {
        let file = (settings.log_level != LogLevel::Off)
            .then(|| {
                std::fs::create_dir_all(&settings.log_dir).ok()?;
                let name = super::settings::file_name(&settings.job_name);
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(settings.log_dir.join(format!("{name}.log")))
                    .ok()
            })
            .flatten()
            .map(Mutex::new);
        Log {
            level: settings.log_level,
            instance: settings.job_instance.clone(),
            file,
        }
    }

    pub fn normal(&self, message: &str) {
        if self.level != LogLevel::Off {
            self.write(message);
        }
    }

    pub fn debug(&self, message: &str) {
        if self.level == LogLevel::Debug {
            self.write(message);
        }
    }

    fn write(&self, message: &str) {
        let Some(file) = &self.file else { return };
        let stamp = crate::protocol::timestamp_now();
        // `2025-12-23T10:00:00.123456+00:00` → `2025-12-23 10:00:00`
        let when = format!("{} {}", &stamp[..10], &stamp[11..19]);
        if let Ok(mut f) = file.lock() {
            let _ = writeln!(f, "{when} [{}] {message}", self.instance);
        }
    }
}
