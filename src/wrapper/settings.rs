//! The wrapper's settings from its `SP_*` environment (the original's names), validated before
//! the wrapper detaches so a bad setting reaches Salt's return, and so Phase 1.

use std::path::PathBuf;
use std::time::Duration;

/// Everything the wrapper needs to run one job on this minion.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The daemons to report to, in order (`SP_WEBSOCKET_URL`: one URL, or several separated
    /// by commas when daemons share a store and adopt each other's runs).
    pub websocket_urls: Vec<String>,
    /// Items of `SP_WEBSOCKET_URL` that are not daemon URLs: skipped, and logged once the log
    /// is open (one bad item must not stop a job that another daemon can take).
    pub ignored_urls: Vec<String>,
    /// CA certificates (PEM) to trust for a `wss://` daemon; the system's when absent.
    pub tls_ca_file: Option<PathBuf>,
    pub job_name: String,
    pub job_instance: String,
    pub command: String,
    /// The Salt minion id (`SP_MACHINE_ID`; the daemon always sends it).
    pub machine: String,
    pub run_token: Option<String>,
    pub cwd: Option<PathBuf>,
    pub user: Option<String>,
    /// `None`: no limit (`SP_TIMEOUT` absent or `0`).
    pub timeout: Option<Duration>,
    /// How long output is batched before it is sent.
    pub output_interval: Duration,
    pub log_level: LogLevel,
    pub log_dir: PathBuf,
    pub allow_overlap: bool,
    pub lockfile: PathBuf,
    /// Where output waits while the daemon is away (`SP_SPOOL_DIR`).
    pub spool_dir: PathBuf,
    /// How long a finished job's result is offered to an unreachable daemon
    /// (`SP_DELIVERY_TIMEOUT`, seconds; default an hour); then the output goes to the log.
    pub delivery_timeout: Duration,
    /// The most output held for the daemon (`SP_SPOOL_MAX_BYTES`); beyond it, head and tail
    /// are kept and the middle is dropped with a note.
    pub spool_max_bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Off,
    Normal,
    Debug,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("{0} environment variable not set")]
    Missing(&'static str),
    #[error("{name}={value:?} is invalid: {why}")]
    Invalid {
        name: &'static str,
        value: String,
        why: String,
    },
}

/// The default place for lock files: root-owned, not world-writable `/tmp`.
pub const DEFAULT_LOCK_DIR: &str = "/run/saltpeter";

impl Settings {
    /// Reads the settings from `(name, value)` pairs (the process environment in production).
    pub fn from_vars<'a>(
        vars: impl IntoIterator<Item = (&'a str, &'a str)>,
        hostname: &str,
    ) -> Result<Settings, SettingsError> {
        let vars: std::collections::HashMap<&str, &str> = vars.into_iter().collect();
        let get = |k: &str| vars.get(k).copied().filter(|v| !v.is_empty());
        let need = |k: &'static str| get(k).map(str::to_string).ok_or(SettingsError::Missing(k));
        let invalid = |name: &'static str, value: &str, why: &str| SettingsError::Invalid {
            name,
            value: value.to_string(),
            why: why.to_string(),
        };
        let websocket_url = need("SP_WEBSOCKET_URL")?;
        let (websocket_urls, ignored_urls) = parse_urls(&websocket_url)
            .map_err(|why| invalid("SP_WEBSOCKET_URL", &websocket_url, why))?;
        let job_name = need("SP_JOB_NAME")?;
        let job_instance = need("SP_JOB_INSTANCE")?;
        let command = need("SP_COMMAND")?;
        let timeout = match get("SP_TIMEOUT") {
            None | Some("None") => None,
            Some(v) => match v.trim().parse::<u64>() {
                Ok(0) => None,
                Ok(s) => Some(Duration::from_secs(s)),
                Err(_) => {
                    return Err(invalid(
                        "SP_TIMEOUT",
                        v,
                        "expected whole seconds (0 = no limit)",
                    ));
                }
            },
        };
        let output_interval = match get("SP_OUTPUT_INTERVAL_MS") {
            None => Duration::from_millis(200),
            Some(v) => Duration::from_millis(
                v.parse()
                    .map_err(|_| invalid("SP_OUTPUT_INTERVAL_MS", v, "expected milliseconds"))?,
            ),
        };
        let log_level = match get("SP_WRAPPER_LOGLEVEL").unwrap_or("normal") {
            "normal" => LogLevel::Normal,
            "debug" => LogLevel::Debug,
            "off" => LogLevel::Off,
            other => {
                return Err(invalid(
                    "SP_WRAPPER_LOGLEVEL",
                    other,
                    "expected normal, debug or off",
                ));
            }
        };
        let allow_overlap = match get("SP_ALLOW_OVERLAP")
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("false" | "0" | "no") => false,
            Some("true" | "1" | "yes") => true,
            Some(other) => {
                return Err(invalid("SP_ALLOW_OVERLAP", other, "expected true or false"));
            }
        };
        let safe_name = file_name(&job_name);
        let machine = get("SP_MACHINE_ID").unwrap_or(hostname).to_string();
        let lockfile = get("SP_LOCKFILE").map(PathBuf::from).unwrap_or_else(|| {
            // Per job and minion (several minions may share a host, as in a lab).
            PathBuf::from(DEFAULT_LOCK_DIR)
                .join(format!("{safe_name}@{}.lock", file_name(&machine)))
        });
        let spool_max_bytes = match get("SP_SPOOL_MAX_BYTES") {
            None => 256 * 1024 * 1024,
            Some(v) => v
                .parse()
                .map_err(|_| invalid("SP_SPOOL_MAX_BYTES", v, "expected bytes"))?,
        };
        let cwd = get("SP_CWD").map(PathBuf::from);
        if let Some(dir) = &cwd
            && !dir.is_dir()
        {
            return Err(invalid(
                "SP_CWD",
                &dir.display().to_string(),
                "no such directory",
            ));
        }
        let user = get("SP_USER").map(str::to_string);
        if let Some(name) = &user {
            match nix::unistd::User::from_name(name) {
                Ok(Some(_)) => {}
                Ok(None) => return Err(invalid("SP_USER", name, "no such user")),
                Err(e) => return Err(invalid("SP_USER", name, &e.to_string())),
            }
        }
        Ok(Settings {
            websocket_urls,
            ignored_urls,
            tls_ca_file: get("SP_TLS_CA_FILE").map(PathBuf::from),
            machine,
            run_token: get("SP_RUN_TOKEN").map(str::to_string),
            cwd,
            user,
            timeout,
            output_interval,
            log_level,
            log_dir: PathBuf::from(get("SP_WRAPPER_LOGDIR").unwrap_or("/var/log/sp_wrapper")),
            allow_overlap,
            lockfile,
            delivery_timeout: match get("SP_DELIVERY_TIMEOUT") {
                None => super::DEFAULT_DELIVERY_TIMEOUT,
                Some(v) => Duration::from_secs(
                    v.parse()
                        .map_err(|_| invalid("SP_DELIVERY_TIMEOUT", v, "expected seconds"))?,
                ),
            },
            spool_dir: PathBuf::from(get("SP_SPOOL_DIR").unwrap_or(DEFAULT_LOCK_DIR)),
            spool_max_bytes,
            job_name,
            job_instance,
            command,
        })
    }
}

/// `SP_WEBSOCKET_URL` → (daemon URLs in order, items that are not URLs). Items are separated
/// by commas, trimmed; empty items and repeats are dropped. An item is usable as a single URL
/// always was: `ws://…` or `wss://…`. An error when none is.
pub fn parse_urls(value: &str) -> Result<(Vec<String>, Vec<String>), &'static str> {
    let mut urls: Vec<String> = Vec::new();
    let mut ignored = Vec::new();
    let items: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .collect();
    for item in &items {
        if !(item.starts_with("ws://") || item.starts_with("wss://")) {
            ignored.push(item.to_string());
        } else if !urls.iter().any(|u| u == item) {
            urls.push(item.to_string());
        }
    }
    match (urls.is_empty(), items.len()) {
        (false, _) => Ok((urls, ignored)),
        // The message a single URL always had.
        (true, 0 | 1) => Err("expected ws://host:port"),
        (true, _) => Err("expected ws://host:port, or several separated by commas"),
    }
}

/// A job name made safe for a file name (lock file, log file).
pub fn file_name(job_name: &str) -> String {
    job_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: [(&str, &str); 4] = [
        ("SP_WEBSOCKET_URL", "ws://master:8889"),
        ("SP_JOB_NAME", "backup"),
        ("SP_JOB_INSTANCE", "backup_1"),
        ("SP_COMMAND", "echo hi"),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Result<Settings, SettingsError> {
        Settings::from_vars(BASE.iter().copied().chain(extra.iter().copied()), "host1")
    }

    #[test]
    fn defaults() {
        let s = with(&[]).unwrap();
        assert_eq!(s.machine, "host1");
        assert_eq!(s.timeout, None);
        assert!(!s.allow_overlap);
        assert_eq!(
            s.lockfile,
            PathBuf::from("/run/saltpeter/backup@host1.lock")
        );
        assert_eq!(s.log_level, LogLevel::Normal);
        assert_eq!(s.websocket_urls, ["ws://master:8889"]);
        assert!(s.ignored_urls.is_empty());
    }

    #[test]
    fn several_daemon_urls_in_order_without_blanks_or_repeats() {
        let ok = |urls: &[&str], ignored: &[&str]| {
            Ok((
                urls.iter().map(|u| u.to_string()).collect::<Vec<_>>(),
                ignored.iter().map(|u| u.to_string()).collect::<Vec<_>>(),
            ))
        };
        assert_eq!(parse_urls("ws://a:1"), ok(&["ws://a:1"], &[]));
        assert_eq!(
            parse_urls(" ws://a:1 , ,wss://b:2,ws://a:1,"),
            ok(&["ws://a:1", "wss://b:2"], &[])
        );
        // A bad item does not stop a job another daemon can take; it is reported apart.
        assert_eq!(
            parse_urls("http://a:1, ws://b:2"),
            ok(&["ws://b:2"], &["http://a:1"])
        );
        assert_eq!(parse_urls("a:1"), Err("expected ws://host:port"));
        assert_eq!(parse_urls(" , "), Err("expected ws://host:port"));
        assert_eq!(
            parse_urls("a:1,b:2"),
            Err("expected ws://host:port, or several separated by commas")
        );
        let s = with(&[("SP_WEBSOCKET_URL", "ws://10.0.0.1:8889,ws://10.0.0.2:8889")]).unwrap();
        assert_eq!(
            s.websocket_urls,
            ["ws://10.0.0.1:8889", "ws://10.0.0.2:8889"]
        );
        // One URL: the error it always had.
        assert_eq!(
            with(&[("SP_WEBSOCKET_URL", "master:8889")])
                .unwrap_err()
                .to_string(),
            "SP_WEBSOCKET_URL=\"master:8889\" is invalid: expected ws://host:port"
        );
        assert_eq!(
            with(&[("SP_WEBSOCKET_URL", "master:8889, other")])
                .unwrap_err()
                .to_string(),
            "SP_WEBSOCKET_URL=\"master:8889, other\" is invalid: \
             expected ws://host:port, or several separated by commas"
        );
    }

    #[test]
    fn errors_name_the_variable() {
        let e = Settings::from_vars([("SP_JOB_NAME", "x")], "h").unwrap_err();
        assert_eq!(
            e.to_string(),
            "SP_WEBSOCKET_URL environment variable not set"
        );
        let e = with(&[("SP_TIMEOUT", "soon")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "SP_TIMEOUT=\"soon\" is invalid: expected whole seconds (0 = no limit)"
        );
        assert!(
            with(&[("SP_USER", "no-such-user-here")])
                .unwrap_err()
                .to_string()
                .contains("no such user")
        );
        assert!(
            with(&[("SP_CWD", "/no/such/dir")])
                .unwrap_err()
                .to_string()
                .contains("no such directory")
        );
        assert_eq!(with(&[("SP_TIMEOUT", "0")]).unwrap().timeout, None);
        assert_eq!(
            with(&[("SP_MACHINE_ID", "minion-7")]).unwrap().machine,
            "minion-7"
        );
    }
}
