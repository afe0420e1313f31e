//! One file's YAML → typed definitions plus findings. Pure: takes the text, never the disk.
//! Global defaults (time zone, wrapper path...) are not applied here but in `assemble`, so a
//! file's last good version can be re-resolved when another file changes them.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::tz::TimeZone;

use super::diagnostic::{Code, Sink, suggest};
use super::notify::{Channel, Channels, NotifyPolicy, Smtp, SmtpAddr, Webhook, When};
use super::{Concurrency, MisfirePolicy, TargetType, Targets, WrapperLogLevel};
use crate::schedule::{Cron, DomDow, Field};
use crate::yaml::{self, Kind, Node, Pos};

/// The value that makes the original allow overlapping runs.
pub const OVERLAP_MAGIC: &str = "i know what i am doing!";

/// The largest `misfire_window`: a year, in seconds.
const MISFIRE_WINDOW_MAX: u64 = 31_536_000;
/// The largest `misfire_max`.
const MISFIRE_MAX_MAX: u64 = 1000;
/// The most `retries` a job may have.
const RETRIES_MAX: u64 = 10;
/// The longest `retry_delay`: a day, in seconds.
const RETRY_DELAY_MAX: u64 = 86_400;
/// The largest `{consecutive_failures: N}`.
const CONSECUTIVE_FAILURES_MAX: u64 = 1000;
/// The largest `{running_longer_than: SECONDS}`: a year.
const RUNNING_LONGER_MAX: u64 = 31_536_000;
/// The largest `timeout` of a notification channel, in seconds.
const CHANNEL_TIMEOUT_MAX: u64 = 300;
/// The largest `notify_max_per_hour`.
const NOTIFY_MAX_PER_HOUR_MAX: u64 = 100_000;

/// A job as written in its file, before global defaults are applied.
#[derive(Clone, Debug)]
pub struct JobDef {
    pub name: String,
    pub pos: Pos,
    pub cron: Cron,
    /// The seven fields as written, space-separated.
    pub expression: String,
    pub timezone: Option<String>,
    pub targets: Targets,
    pub target_type: TargetType,
    pub command: String,
    pub user: Option<String>,
    pub cwd: Option<String>,
    pub env: BTreeMap<String, String>,
    pub timeout: Option<u64>,
    pub number_of_targets: u32,
    pub batch_size: u32,
    pub use_wrapper: bool,
    pub wrapper_path: Option<String>,
    pub wrapper_loglevel: Option<WrapperLogLevel>,
    pub wrapper_logdir: Option<String>,
    pub saltpeter_server_host: Option<String>,
    pub allow_overlap: bool,
    pub concurrency: Concurrency,
    /// `None` (absent): `saltpeter_config.default_misfire*` applies, each key on its own.
    pub misfire: Option<MisfirePolicy>,
    pub misfire_window: Option<u64>,
    pub misfire_max: Option<u32>,
    /// Fraction (0..=1) of targets that must succeed; `None`: all of them.
    pub success_threshold: Option<f64>,
    /// Attempts after the first for targets that failed (0: none).
    pub retries: u32,
    /// Seconds before the first retry; doubled for each later one.
    pub retry_delay: u64,
    pub lockfile: Option<String>,
    /// Fired only by daemons whose `master_name` this is (several daemons on one store).
    pub master: Option<String>,
    /// `None` (absent): `saltpeter_config.notify` applies. `Some`: replaces it, and turns
    /// notifications off when it names no condition or no channel (`notify: {}`).
    pub notify: Option<NotifyDef>,
}

/// A `notify` section as written (a job's, or `saltpeter_config.notify`), before its channel
/// names are checked against `notify_channels`, which another file may define.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyDef {
    /// Where its value starts.
    pub pos: Pos,
    pub when: Vec<When>,
    /// Channel names, each with where it is written.
    pub to: Vec<(String, Pos)>,
}

impl NotifyDef {
    /// The policy as written; `None` (no notifications) when `when` or `to` is empty.
    pub fn policy(&self) -> Option<NotifyPolicy> {
        if self.when.is_empty() || self.to.is_empty() {
            return None;
        }
        Some(NotifyPolicy {
            when: self.when.clone(),
            to: self.to.iter().map(|(name, _)| name.clone()).collect(),
        })
    }
}

/// A typed `saltpeter_config` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SettingValue {
    Str(String),
    Bool(bool),
    Port(u16),
    LogLevel(WrapperLogLevel),
    Misfire(MisfirePolicy),
    Count(u64),
    List(Vec<String>),
    Tokens(Vec<ApiToken>),
    Channels(Channels),
    Notify(NotifyDef),
}

/// One `saltpeter_config.api_tokens` entry: a named bearer token and what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiToken {
    pub name: String,
    pub token: String,
    /// May run, kill, switch maintenance and reload (else read-only).
    pub operator: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SettingKind {
    Str,
    Bool,
    Port,
    LogLevel,
    TimeZone,
    Count,
    /// Bytes per second, at least 1.
    ByteRate,
    /// `skip`, `latest` or `all`.
    Misfire,
    /// Seconds, 1 to a year.
    MisfireWindow,
    /// 1 to 1000.
    MisfireMax,
    /// A file path (not a URL).
    Path,
    List,
    Tokens,
    /// `notify_channels`: names to channels.
    NotifyChannels,
    /// A `notify` policy (null: none).
    Notify,
    /// 1 to 100000.
    NotifyMaxPerHour,
    /// Accepted for compatibility, not used.
    Ignored,
}

/// Every `saltpeter_config` key and its type. Start-up-only keys: `Settings::restart_required`.
const SETTINGS: &[(&str, SettingKind)] = &[
    ("logdir", SettingKind::Str),
    ("debug", SettingKind::Bool),
    ("api_ws", SettingKind::Bool),
    ("api_ws_port", SettingKind::Port),
    ("api_ws_bind_addr", SettingKind::Str),
    ("machines_ws_port", SettingKind::Port),
    ("machines_ws_bind_addr", SettingKind::Str),
    ("machines_ws_tls_cert", SettingKind::Str),
    ("machines_ws_tls_key", SettingKind::Str),
    ("machines_ws_max_output_rate", SettingKind::ByteRate),
    ("default_saltpeter_server_host", SettingKind::Str),
    ("default_wrapper_path", SettingKind::Str),
    ("default_wrapper_loglevel", SettingKind::LogLevel),
    ("default_wrapper_logdir", SettingKind::Str),
    ("default_timezone", SettingKind::TimeZone),
    ("default_misfire", SettingKind::Misfire),
    ("default_misfire_window", SettingKind::MisfireWindow),
    ("default_misfire_max", SettingKind::MisfireMax),
    ("salt_master_config", SettingKind::Str),
    ("salt_interface", SettingKind::Str),
    ("salt_ret_port", SettingKind::Port),
    ("salt_sock_dir", SettingKind::Str),
    ("salt_cachedir", SettingKind::Str),
    ("salt_user", SettingKind::Str),
    ("database", SettingKind::Path),
    ("daemon_name", SettingKind::Str),
    ("master_name", SettingKind::Str),
    ("output_cap", SettingKind::Count),
    ("history_max_age_days", SettingKind::Count),
    ("history_max_runs_per_job", SettingKind::Count),
    ("api_tokens", SettingKind::Tokens),
    ("api_allowed_origins", SettingKind::List),
    ("allow_legacy_wrappers", SettingKind::Bool),
    ("notify_channels", SettingKind::NotifyChannels),
    ("notify", SettingKind::Notify),
    ("notify_max_per_hour", SettingKind::NotifyMaxPerHour),
    ("elasticsearch", SettingKind::Ignored),
    ("opensearch", SettingKind::Ignored),
    ("elasticsearch_index", SettingKind::Ignored),
    ("opensearch_index", SettingKind::Ignored),
];

#[derive(Clone, Debug, Default)]
pub struct MaintenanceDef {
    pub global: Option<(bool, Pos)>,
    pub machines: Option<(Vec<String>, Pos)>,
}

/// Everything one file defines.
#[derive(Clone, Debug, Default)]
pub struct FileDoc {
    pub jobs: Vec<JobDef>,
    pub settings: BTreeMap<&'static str, (SettingValue, Pos)>,
    pub maintenance: Option<MaintenanceDef>,
}

const JOB_KEYS: &[&str] = &[
    "sec",
    "min",
    "hour",
    "dom",
    "mon",
    "dow",
    "year",
    "targets",
    "target_type",
    "command",
    "user",
    "cwd",
    "env",
    "timeout",
    "number_of_targets",
    "batch_size",
    "use_wrapper",
    "wrapper_path",
    "wrapper_loglevel",
    "wrapper_logdir",
    "saltpeter_server_host",
    "allow_overlap",
    "concurrency",
    "misfire",
    "misfire_window",
    "misfire_max",
    "success_threshold",
    "retries",
    "retry_delay",
    "lockfile",
    "master",
    "timezone",
    "dom_dow",
    "notify",
    "hard_timeout",
    "soft_timeout",
    "utc",
    "group",
];

const RESERVED: [&str; 2] = ["saltpeter_config", "saltpeter_maintenance"];

/// Parses and validates one file. `file` is the name findings carry.
pub fn validate_file(file: &str, text: &str) -> (FileDoc, Vec<super::Diagnostic>) {
    let mut sink = Sink::new(file);
    let doc = validate(text, &mut sink);
    (doc, sink.found)
}

fn validate(text: &str, sink: &mut Sink) -> FileDoc {
    let mut doc = FileDoc::default();
    let parsed = match yaml::parse(text) {
        Ok(parsed) => parsed,
        Err(e) => {
            sink.error(e.pos, Code::Yaml, format!("invalid YAML: {}", e.message));
            return doc;
        }
    };
    for dup in &parsed.duplicates {
        sink.error(
            dup.pos,
            Code::DuplicateKey,
            format!(
                "duplicate key `{}` (first defined at line {}); the first one would be used",
                dup.key, dup.first.line
            ),
        );
    }
    let Some(root) = parsed.root.filter(|r| !r.is_null()) else {
        sink.warning(
            Pos { line: 1, col: 1 },
            Code::EmptyFile,
            "file is empty; it defines no jobs",
        );
        return doc;
    };
    let Some(entries) = root.as_map() else {
        sink.error(
            root.pos,
            Code::NotAMapping,
            format!(
                "a job file must be a mapping of job names to jobs, found {}",
                root.describe()
            ),
        );
        return doc;
    };
    for (key, value) in entries {
        let name = key.key_text();
        match name.as_str() {
            "saltpeter_config" => settings(value, sink, &mut doc.settings),
            "saltpeter_maintenance" => doc.maintenance = maintenance(value, sink),
            // Hidden keys hold YAML anchors shared by jobs (`.defaults: &defaults {...}`).
            n if n.starts_with('.') => {}
            n if n.starts_with("saltpeter_") => {
                let hint = suggest(n, &RESERVED)
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                sink.error(
                    key.pos,
                    Code::UnknownKey,
                    format!("unknown section `{n}`{hint}"),
                );
            }
            _ => {
                if let Some(job) = job(&name, key.pos, value, sink) {
                    doc.jobs.push(job);
                }
            }
        }
    }
    doc
}

// === scalar readers ===

/// A string-like scalar (numbers and booleans are kept as written).
fn string(node: &Node, what: &str, sink: &mut Sink) -> Option<String> {
    match &node.kind {
        Kind::Scalar(s) if !s.is_null() => Some(s.text.clone()),
        _ => {
            sink.error(
                node.pos,
                Code::WrongType,
                format!("`{what}` must be a string, found {}", node.describe()),
            );
            None
        }
    }
}

fn boolean(node: &Node, what: &str, sink: &mut Sink) -> Option<bool> {
    let s = node.as_scalar();
    if let Some(b) = s.and_then(|s| s.as_bool()) {
        return Some(b);
    }
    if let Some(b) = s.and_then(|s| s.as_legacy_bool()) {
        sink.warning(
            node.pos,
            Code::LegacyBool,
            format!(
                "`{what}: {}` is a YAML 1.1 boolean; write `{b}`",
                s.map(|s| s.text.as_str()).unwrap_or_default()
            ),
        );
        return Some(b);
    }
    sink.error(
        node.pos,
        Code::WrongType,
        format!("`{what}` must be true or false, found {}", node.describe()),
    );
    None
}

fn unsigned(node: &Node, what: &str, max: u64, sink: &mut Sink) -> Option<u64> {
    ranged(node, what, 0, max, sink)
}

/// A whole number from `min` to `max`.
fn ranged(node: &Node, what: &str, min: u64, max: u64, sink: &mut Sink) -> Option<u64> {
    match node.as_scalar().and_then(|s| s.as_int()) {
        Some(v) if v >= 0 && (min..=max).contains(&(v as u64)) => Some(v as u64),
        Some(v) => {
            sink.error(
                node.pos,
                Code::BadValue,
                format!("`{what}` must be between {min} and {max}, found {v}"),
            );
            None
        }
        None => {
            sink.error(
                node.pos,
                Code::WrongType,
                format!("`{what}` must be a whole number, found {}", node.describe()),
            );
            None
        }
    }
}

fn time_zone(node: &Node, what: &str, sink: &mut Sink) -> Option<String> {
    let name = string(node, what, sink)?;
    if TimeZone::get(&name).is_ok() {
        return Some(name);
    }
    let known: Vec<String> = jiff::tz::db().available().map(|n| n.to_string()).collect();
    let refs: Vec<&str> = known.iter().map(String::as_str).collect();
    let hint = suggest(&name, &refs)
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default();
    sink.error(
        node.pos,
        Code::BadTimeZone,
        format!(
            "unknown time zone `{name}` (an IANA name such as `Europe/Berlin` is expected){hint}"
        ),
    );
    None
}

fn log_level(node: &Node, what: &str, sink: &mut Sink) -> Option<WrapperLogLevel> {
    let text = string(node, what, sink)?;
    match text.as_str() {
        "normal" => Some(WrapperLogLevel::Normal),
        "debug" => Some(WrapperLogLevel::Debug),
        "off" => Some(WrapperLogLevel::Off),
        _ => {
            sink.error(
                node.pos,
                Code::BadValue,
                format!("`{what}` must be one of normal, debug, off; found `{text}`"),
            );
            None
        }
    }
}

fn misfire_policy(node: &Node, what: &str, sink: &mut Sink) -> Option<MisfirePolicy> {
    let text = string(node, what, sink)?;
    let policy = MisfirePolicy::parse(&text);
    if policy.is_none() {
        sink.error(
            node.pos,
            Code::BadValue,
            format!("`{what}` must be skip, latest or all; found `{text}`"),
        );
    }
    policy
}

fn unknown_key(key: &Node, known: &[&str], section: &str, sink: &mut Sink) {
    let text = key.key_text();
    let hint = suggest(&text, known)
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default();
    sink.warning(
        key.pos,
        Code::UnknownKey,
        format!("unknown key `{text}` in {section}, ignored{hint}"),
    );
}

// === sections ===

fn settings(node: &Node, sink: &mut Sink, out: &mut BTreeMap<&'static str, (SettingValue, Pos)>) {
    let Some(entries) = node.as_map() else {
        if !node.is_null() {
            sink.error(
                node.pos,
                Code::NotAMapping,
                format!(
                    "`saltpeter_config` must be a mapping, found {}",
                    node.describe()
                ),
            );
        }
        return;
    };
    let names: Vec<&str> = SETTINGS.iter().map(|s| s.0).collect();
    for (key, value) in entries {
        let text = key.key_text();
        let Some(&(name, kind)) = SETTINGS.iter().find(|s| s.0 == text) else {
            unknown_key(key, &names, "`saltpeter_config`", sink);
            continue;
        };
        // A null `notify` says "no default policy" (overriding an earlier file's).
        if value.is_null() && kind != SettingKind::Notify {
            continue;
        }
        let typed = match kind {
            SettingKind::Str => string(value, name, sink).map(SettingValue::Str),
            // A URL would silently become a relative path (a directory named `postgres:`).
            SettingKind::Path => match string(value, name, sink) {
                Some(url)
                    if url.contains("://")
                        && !(url.starts_with("postgres://")
                            || url.starts_with("postgresql://")) =>
                {
                    sink.error(
                        value.pos,
                        Code::BadValue,
                        format!("`{name}` takes a file path (the embedded SQLite database) or a `postgres://` URL (a PostgreSQL server several daemons share); `{url}` is neither"),
                    );
                    None
                }
                other => other.map(SettingValue::Str),
            },
            SettingKind::Bool => boolean(value, name, sink).map(SettingValue::Bool),
            SettingKind::Port => match unsigned(value, name, 65_535, sink) {
                Some(0) => {
                    sink.error(
                        value.pos,
                        Code::BadValue,
                        format!("`{name}` must be a port 1-65535, found 0"),
                    );
                    None
                }
                p => p.map(|p| SettingValue::Port(p as u16)),
            },
            SettingKind::LogLevel => log_level(value, name, sink).map(SettingValue::LogLevel),
            SettingKind::TimeZone => time_zone(value, name, sink).map(SettingValue::Str),
            SettingKind::Count => {
                unsigned(value, name, u64::MAX >> 1, sink).map(SettingValue::Count)
            }
            SettingKind::ByteRate => match unsigned(value, name, u64::MAX >> 1, sink) {
                Some(0) => {
                    sink.error(
                        value.pos,
                        Code::BadValue,
                        format!("`{name}` must be at least 1 (bytes per second), found 0"),
                    );
                    None
                }
                n => n.map(SettingValue::Count),
            },
            SettingKind::Misfire => misfire_policy(value, name, sink).map(SettingValue::Misfire),
            SettingKind::MisfireWindow => {
                ranged(value, name, 1, MISFIRE_WINDOW_MAX, sink).map(SettingValue::Count)
            }
            SettingKind::MisfireMax => {
                ranged(value, name, 1, MISFIRE_MAX_MAX, sink).map(SettingValue::Count)
            }
            SettingKind::List => string_list(value, name, sink).map(SettingValue::List),
            SettingKind::Tokens => api_tokens(value, sink).map(SettingValue::Tokens),
            SettingKind::NotifyChannels => notify_channels(value, sink).map(SettingValue::Channels),
            SettingKind::Notify => {
                notify_section(value, "saltpeter_config.notify", sink).map(SettingValue::Notify)
            }
            SettingKind::NotifyMaxPerHour => {
                ranged(value, name, 1, NOTIFY_MAX_PER_HOUR_MAX, sink).map(SettingValue::Count)
            }
            SettingKind::Ignored => {
                sink.warning(
                    key.pos,
                    Code::Unsupported,
                    format!("`{name}` is not supported (saltpeter keeps its history in its own database); ignored"),
                );
                None
            }
        };
        if let Some(v) = typed {
            out.insert(name, (v, value.pos));
        }
    }
}

/// `api_tokens: {name: {token: <secret>, role: operator|read-only}}`.
fn api_tokens(node: &Node, sink: &mut Sink) -> Option<Vec<ApiToken>> {
    let Some(entries) = node.as_map() else {
        sink.error(
            node.pos,
            Code::NotAMapping,
            format!(
                "`api_tokens` must map names to {{token, role}}, found {}",
                node.describe()
            ),
        );
        return None;
    };
    let mut out = Vec::new();
    for (key, value) in entries {
        let name = key.key_text();
        let what = format!("api_tokens.{name}");
        let Some(fields) = value.as_map() else {
            sink.error(
                value.pos,
                Code::NotAMapping,
                format!(
                    "`{what}` must be a mapping with `token` and `role`, found {}",
                    value.describe()
                ),
            );
            continue;
        };
        let (mut token, mut operator) = (None, None);
        for (k, v) in fields {
            match k.key_text().as_str() {
                "token" => token = string(v, &format!("{what}.token"), sink),
                "role" => match string(v, &format!("{what}.role"), sink).as_deref() {
                    Some("operator") => operator = Some(true),
                    Some("read-only") => operator = Some(false),
                    Some(other) => sink.error(
                        v.pos,
                        Code::BadValue,
                        format!("`{what}.role` must be operator or read-only, found `{other}`"),
                    ),
                    None => {}
                },
                _ => unknown_key(k, &["token", "role"], &format!("`{what}`"), sink),
            }
        }
        match (token, operator) {
            (Some(token), Some(operator)) if token.len() >= 16 => out.push(ApiToken {
                name,
                token,
                operator,
            }),
            (Some(_), Some(_)) => sink.error(
                value.pos,
                Code::BadValue,
                format!("`{what}.token` is too short to be a secret (16 characters at least)"),
            ),
            _ => sink.error(
                value.pos,
                Code::MissingKey,
                format!("`{what}` needs both `token` and `role`"),
            ),
        }
    }
    Some(out)
}

// === notifications ===

/// The error for a key a section does not take, with "did you mean" when one is close.
fn unknown_key_error(key: &Node, known: &[&str], section: &str, sink: &mut Sink) {
    let text = key.key_text();
    let hint = suggest(&text, known)
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default();
    sink.error(
        key.pos,
        Code::UnknownKey,
        format!(
            "unknown key `{text}` in {section} (it takes {}){hint}",
            known.join(", ")
        ),
    );
}

fn error_count(sink: &Sink) -> usize {
    sink.found.iter().filter(|d| d.is_error()).count()
}

/// A list, a single item standing for a list of one, or null for none.
fn items(node: &Node) -> &[Node] {
    match &node.kind {
        Kind::Seq(items) => items,
        _ if node.is_null() => &[],
        _ => std::slice::from_ref(node),
    }
}

/// The conditions of `notify.when` written as words.
const WHEN_WORDS: [(&str, When); 4] = [
    ("failure", When::Failure),
    ("recovery", When::Recovery),
    ("missed", When::Missed),
    ("launch_failure", When::LaunchFailure),
];
/// The conditions of `notify.when` written as one-key mappings.
const WHEN_COUNTED: [&str; 2] = ["consecutive_failures", "running_longer_than"];
const WHEN_HELP: &str = "failure, recovery, missed, launch_failure, {consecutive_failures: N} or {running_longer_than: SECONDS}";

/// `notify: {when: [...], to: [...]}`; null means no notifications. `what` names it in
/// messages (`notify` or `saltpeter_config.notify`).
fn notify_section(node: &Node, what: &str, sink: &mut Sink) -> Option<NotifyDef> {
    let mut def = NotifyDef {
        pos: node.pos,
        when: Vec::new(),
        to: Vec::new(),
    };
    if node.is_null() {
        return Some(def);
    }
    let Some(entries) = node.as_map() else {
        sink.error(
            node.pos,
            Code::NotAMapping,
            format!(
                "`{what}` must be a mapping with `when` and `to` (`{{}}` for no notifications), found {}",
                node.describe()
            ),
        );
        return None;
    };
    let errors_before = error_count(sink);
    let (mut when_at, mut to_at) = (None, None);
    for (key, value) in entries {
        match key.key_text().as_str() {
            "when" => {
                when_at = Some(key.pos);
                def.when = items(value)
                    .iter()
                    .filter_map(|item| condition(item, what, sink))
                    .collect();
            }
            "to" => {
                to_at = Some(key.pos);
                def.to = channel_names(value, &format!("{what}.to"), sink);
            }
            _ => unknown_key_error(key, &["when", "to"], &format!("`{what}`"), sink),
        }
    }
    if error_count(sink) > errors_before {
        return None;
    }
    match (when_at, to_at) {
        (Some(at), None) if !def.when.is_empty() => sink.warning(
            at,
            Code::NoEffect,
            format!("`{what}.when` has no effect without `to` (the channels to tell): no notifications are sent"),
        ),
        (None, Some(at)) if !def.to.is_empty() => sink.warning(
            at,
            Code::NoEffect,
            format!("`{what}.to` has no effect without `when` (the conditions to tell of): no notifications are sent"),
        ),
        _ => {}
    }
    Some(def)
}

/// One item of `notify.when`.
fn condition(item: &Node, what: &str, sink: &mut Sink) -> Option<When> {
    let known: Vec<&str> = WHEN_WORDS
        .iter()
        .map(|(w, _)| *w)
        .chain(WHEN_COUNTED)
        .collect();
    let unknown = |word: &str, pos: Pos, sink: &mut Sink| {
        let hint = suggest(word, &known)
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_default();
        sink.error(
            pos,
            Code::BadValue,
            format!("unknown condition `{word}` in `{what}.when` (one of {WHEN_HELP}){hint}"),
        );
    };
    match &item.kind {
        Kind::Scalar(s) if !s.is_null() => {
            let word = s.text.as_str();
            if let Some((_, when)) = WHEN_WORDS.iter().find(|(w, _)| *w == word) {
                return Some(*when);
            }
            if WHEN_COUNTED.contains(&word) {
                let unit = if word == "consecutive_failures" {
                    "N"
                } else {
                    "SECONDS"
                };
                sink.error(
                    item.pos,
                    Code::BadValue,
                    format!("`{word}` in `{what}.when` needs a value: `{{{word}: {unit}}}`"),
                );
            } else {
                unknown(word, item.pos, sink);
            }
            None
        }
        Kind::Map(entries) if entries.len() == 1 => {
            let (key, value) = &entries[0];
            let word = key.key_text();
            match word.as_str() {
                "consecutive_failures" => ranged(
                    value,
                    "consecutive_failures",
                    1,
                    CONSECUTIVE_FAILURES_MAX,
                    sink,
                )
                .map(|n| When::ConsecutiveFailures(n as u32)),
                "running_longer_than" => {
                    ranged(value, "running_longer_than", 1, RUNNING_LONGER_MAX, sink)
                        .map(When::RunningLongerThan)
                }
                w if WHEN_WORDS.iter().any(|(k, _)| *k == w) => {
                    sink.error(
                        key.pos,
                        Code::BadValue,
                        format!("`{w}` in `{what}.when` takes no value: write `{w}`"),
                    );
                    None
                }
                w => {
                    unknown(w, key.pos, sink);
                    None
                }
            }
        }
        Kind::Map(entries) if entries.len() > 1 => {
            sink.error(
                item.pos,
                Code::BadValue,
                format!(
                    "each item of `{what}.when` holds one condition; write each as its own item"
                ),
            );
            None
        }
        _ => {
            sink.error(
                item.pos,
                Code::WrongType,
                format!(
                    "each item of `{what}.when` must be one of {WHEN_HELP}, found {}",
                    item.describe()
                ),
            );
            None
        }
    }
}

/// `to: [name, ...]` (or one name): channel names, checked against `notify_channels` only
/// when the files are put together.
fn channel_names(node: &Node, what: &str, sink: &mut Sink) -> Vec<(String, Pos)> {
    let mut out: Vec<(String, Pos)> = Vec::new();
    for item in items(node) {
        let Some(name) = string(item, what, sink) else {
            continue;
        };
        if name.is_empty() {
            sink.error(
                item.pos,
                Code::BadValue,
                format!("`{what}` names an empty channel"),
            );
        } else if out.iter().any(|(n, _)| *n == name) {
            sink.warning(
                item.pos,
                Code::BadValue,
                format!("`{what}` names channel `{name}` twice; it is told once"),
            );
        } else {
            out.push((name, item.pos));
        }
    }
    out
}

/// `notify_channels: {name: {webhook: URL, ...} | {smtp: URL, ...}}`.
fn notify_channels(node: &Node, sink: &mut Sink) -> Option<Channels> {
    let Some(entries) = node.as_map() else {
        sink.error(
            node.pos,
            Code::NotAMapping,
            format!(
                "`notify_channels` must map names to channels (`{{webhook: URL}}` or `{{smtp: URL, ...}}`), found {}",
                node.describe()
            ),
        );
        return None;
    };
    let mut out = Channels::new();
    for (key, value) in entries {
        let name = key.key_text();
        if key.as_scalar().is_none() || name.is_empty() || name.chars().any(char::is_control) {
            sink.error(
                key.pos,
                Code::BadValue,
                format!(
                    "channel name `{}` may not be empty or contain control characters",
                    name.escape_debug()
                ),
            );
            continue;
        }
        if let Some(channel) = channel(&name, key.pos, value, sink) {
            out.insert(name, Arc::new(channel));
        }
    }
    Some(out)
}

const WEBHOOK_KEYS: [&str; 3] = ["webhook", "secret", "timeout"];
const SMTP_KEYS: [&str; 8] = [
    "smtp", "starttls", "user", "password", "from", "to", "timeout", "ca_file",
];
/// The keys of either kind.
const CHANNEL_KEYS: [&str; 10] = [
    "webhook", "smtp", "secret", "starttls", "user", "password", "from", "to", "timeout", "ca_file",
];

/// A mapping's value for `key`, unless absent or null.
fn field<'a>(entries: &'a [(Node, Node)], key: &str) -> Option<&'a Node> {
    entries
        .iter()
        .find(|(k, _)| k.key_str() == Some(key))
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

/// One channel of `notify_channels`; `at` is where its name is.
fn channel(name: &str, at: Pos, node: &Node, sink: &mut Sink) -> Option<Channel> {
    let what = format!("notify_channels.{name}");
    let Some(entries) = node.as_map() else {
        sink.error(
            node.pos,
            Code::NotAMapping,
            format!(
                "`{what}` must be a mapping with `webhook: URL` or `smtp: URL`, found {}",
                node.describe()
            ),
        );
        return None;
    };
    let get = |k: &str| field(entries, k);
    let (webhook, smtp) = (get("webhook"), get("smtp"));
    let keys: &[&str] = match (webhook, smtp) {
        (Some(_), Some(v)) => {
            sink.error(
                v.pos,
                Code::BadValue,
                format!("`{what}` has both `webhook` and `smtp`; a channel is one or the other (define two channels)"),
            );
            return None;
        }
        (None, None) => {
            sink.error(
                at,
                Code::MissingKey,
                format!("`{what}` needs `webhook: URL` or `smtp: URL`"),
            );
            for (key, _) in entries {
                if !key.key_str().is_some_and(|k| CHANNEL_KEYS.contains(&k)) {
                    unknown_key_error(key, &CHANNEL_KEYS, &format!("channel `{what}`"), sink);
                }
            }
            return None;
        }
        (Some(_), None) => &WEBHOOK_KEYS,
        (None, Some(_)) => &SMTP_KEYS,
    };
    let errors_before = error_count(sink);
    let kind = if webhook.is_some() { "webhook" } else { "smtp" };
    for (key, _) in entries {
        if !key.key_str().is_some_and(|k| keys.contains(&k)) {
            unknown_key_error(key, keys, &format!("{kind} channel `{what}`"), sink);
        }
    }
    let sub = |k: &str| format!("{what}.{k}");
    let opt_string = |k: &str, sink: &mut Sink| {
        let v = get(k)?;
        let text = string(v, &sub(k), sink)?;
        if text.is_empty() {
            sink.error(v.pos, Code::BadValue, format!("`{}` is empty", sub(k)));
            return None;
        }
        Some(text)
    };
    let timeout = |default: u64, sink: &mut Sink| match get("timeout") {
        None => Some(default),
        Some(v) => ranged(v, &sub("timeout"), 1, CHANNEL_TIMEOUT_MAX, sink),
    };

    let channel = if let Some(url_node) = webhook {
        let url = string(url_node, &sub("webhook"), sink);
        if let Some(url) = &url
            && !is_http_url(url)
        {
            sink.error(
                url_node.pos,
                Code::BadValue,
                format!(
                    "`{}` must be an http:// or https:// URL, found `{url}`",
                    sub("webhook")
                ),
            );
        }
        let secret = opt_string("secret", sink);
        let timeout_secs = timeout(10, sink);
        Channel::Webhook(Webhook {
            url: url.unwrap_or_default(),
            secret,
            timeout_secs: timeout_secs.unwrap_or_default(),
        })
    } else {
        let url_node = smtp?;
        let url = string(url_node, &sub("smtp"), sink);
        let addr = url.as_deref().and_then(|url| match SmtpAddr::parse(url) {
            Ok(addr) => Some(addr),
            Err(why) => {
                sink.error(
                    url_node.pos,
                    Code::BadValue,
                    format!("`{}` {why}, found `{url}`", sub("smtp")),
                );
                None
            }
        });
        let starttls =
            get("starttls").and_then(|v| boolean(v, &sub("starttls"), sink).map(|b| (b, v.pos)));
        if let (Some((true, at)), Some(addr)) = (starttls, &addr)
            && addr.implicit_tls
        {
            sink.error(
                at,
                Code::BadValue,
                format!("`{}: true` is for `smtp://`; `smtps://` is TLS from the first byte (use one or the other)", sub("starttls")),
            );
        }
        let user = opt_string("user", sink);
        let password = opt_string("password", sink);
        match (get("user"), get("password")) {
            (Some(v), None) => sink.error(
                v.pos,
                Code::MissingKey,
                format!("`{}` needs `password` too", sub("user")),
            ),
            (None, Some(v)) => sink.error(
                v.pos,
                Code::MissingKey,
                format!("`{}` needs `user` too", sub("password")),
            ),
            _ => {}
        }
        let from = match get("from") {
            None => {
                sink.error(
                    at,
                    Code::MissingKey,
                    format!("`{what}` needs `from` (the sender's address)"),
                );
                None
            }
            Some(v) => {
                string(v, &sub("from"), sink).filter(|a| address(a, v.pos, &sub("from"), sink))
            }
        };
        let to = match get("to") {
            None => {
                sink.error(
                    at,
                    Code::MissingKey,
                    format!("`{what}` needs `to` (the recipients' addresses)"),
                );
                Vec::new()
            }
            Some(v) => {
                let list: Vec<String> = items(v)
                    .iter()
                    .filter_map(|item| {
                        string(item, &sub("to"), sink)
                            .filter(|a| address(a, item.pos, &sub("to"), sink))
                    })
                    .collect();
                if items(v).is_empty() {
                    sink.error(v.pos, Code::BadValue, format!("`{}` is empty", sub("to")));
                }
                list
            }
        };
        let timeout_secs = timeout(30, sink);
        let ca_file = opt_string("ca_file", sink);
        Channel::Smtp(Smtp {
            url: url.unwrap_or_default(),
            starttls: starttls.is_some_and(|(b, _)| b),
            user,
            password,
            from: from.unwrap_or_default(),
            to,
            timeout_secs: timeout_secs.unwrap_or_default(),
            ca_file,
        })
    };
    (error_count(sink) == errors_before).then_some(channel)
}

/// `http://` or `https://`, a host, and no spaces or control characters.
fn is_http_url(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    let Some(rest) = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
    else {
        return false;
    };
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    host_end > 0 && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// An email address: something with an `@`, on one line. Says why not.
fn address(text: &str, pos: Pos, what: &str, sink: &mut Sink) -> bool {
    let ok = text.contains('@') && !text.chars().any(char::is_control);
    if !ok {
        sink.error(
            pos,
            Code::BadValue,
            format!(
                "`{what}` must be an email address such as ops@example.com, found `{}`",
                text.escape_debug()
            ),
        );
    }
    ok
}

fn maintenance(node: &Node, sink: &mut Sink) -> Option<MaintenanceDef> {
    let Some(entries) = node.as_map() else {
        if !node.is_null() {
            sink.error(
                node.pos,
                Code::NotAMapping,
                format!(
                    "`saltpeter_maintenance` must be a mapping, found {}",
                    node.describe()
                ),
            );
        }
        return None;
    };
    let mut def = MaintenanceDef::default();
    for (key, value) in entries {
        match key.key_text().as_str() {
            "global" if !value.is_null() => {
                def.global = boolean(value, "global", sink).map(|b| (b, value.pos));
            }
            "machines" if !value.is_null() => {
                def.machines = string_list(value, "machines", sink).map(|m| (m, value.pos));
            }
            "global" | "machines" => {}
            _ => unknown_key(
                key,
                &["global", "machines"],
                "`saltpeter_maintenance`",
                sink,
            ),
        }
    }
    Some(def)
}

fn string_list(node: &Node, what: &str, sink: &mut Sink) -> Option<Vec<String>> {
    match &node.kind {
        Kind::Seq(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.push(string(item, what, sink)?);
            }
            Some(out)
        }
        _ => {
            sink.error(
                node.pos,
                Code::WrongType,
                format!(
                    "`{what}` must be a list of strings, found {}",
                    node.describe()
                ),
            );
            None
        }
    }
}

fn job(name: &str, pos: Pos, node: &Node, sink: &mut Sink) -> Option<JobDef> {
    let errors_before = sink.found.iter().filter(|d| d.is_error()).count();
    if name.is_empty() || name.contains('/') || name.chars().any(char::is_control) {
        sink.error(
            pos,
            Code::BadValue,
            format!(
                "job name `{}` may not be empty or contain `/` or control characters",
                name.escape_debug()
            ),
        );
    }
    let Some(entries) = node.as_map() else {
        sink.error(
            node.pos,
            Code::NotAMapping,
            format!(
                "job `{name}` must be a mapping of keys, found {}",
                node.describe()
            ),
        );
        return None;
    };
    let get = |k: &str| field(entries, k);

    for (key, _) in entries {
        if !key.key_str().is_some_and(|k| JOB_KEYS.contains(&k)) {
            unknown_key(key, JOB_KEYS, &format!("job `{name}`"), sink);
        }
    }

    // Schedule fields.
    let mut missing: Vec<&str> = Vec::new();
    let mut fields: Vec<(String, Option<Pos>, bool)> = Vec::with_capacity(7);
    for field in Field::ALL {
        let default = match field {
            Field::Sec => Some("0"),
            Field::Year => Some("*"),
            _ => None,
        };
        match get(field.key()) {
            Some(v) => match v.as_scalar() {
                Some(s) => fields.push((s.text.clone(), Some(v.pos), !s.plain)),
                None => {
                    sink.error(
                        v.pos,
                        Code::WrongType,
                        format!(
                            "`{field}` must be a cron field such as `*/5`, found {}",
                            v.describe()
                        ),
                    );
                    fields.push(("*".into(), None, false));
                }
            },
            None => match default {
                Some(d) => fields.push((d.into(), None, false)),
                None => {
                    missing.push(field.key());
                    fields.push(("*".into(), None, false));
                }
            },
        }
    }
    for key in ["targets", "command"] {
        if get(key).is_none() {
            missing.push(key);
        }
    }
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|k| format!("`{k}`")).collect();
        let s = if missing.len() == 1 { "" } else { "s" };
        sink.error(
            pos,
            Code::MissingKey,
            format!(
                "job `{name}` is missing the required key{s} {}",
                list.join(", ")
            ),
        );
    }
    let dom_dow = match get("dom_dow") {
        None => DomDow::And,
        Some(v) => match string(v, "dom_dow", sink).as_deref() {
            Some("and") => DomDow::And,
            Some("or") => DomDow::Or,
            Some(other) => {
                sink.error(
                    v.pos,
                    Code::BadValue,
                    format!("`dom_dow` must be `and` or `or`, found `{other}`"),
                );
                DomDow::And
            }
            None => DomDow::And,
        },
    };
    let texts: [&str; 7] = std::array::from_fn(|i| fields[i].0.as_str());
    let cron = match Cron::parse(texts, dom_dow) {
        Ok(cron) => Some(cron),
        // Missing fields are reported once above, not as bad fields.
        Err(_) if !missing.is_empty() => None,
        Err(errors) => {
            for e in errors {
                let (_, at, quoted) = &fields[e.field as usize];
                let at = at.unwrap_or(pos);
                let col = at.col + u32::from(*quoted) + e.offset as u32;
                sink.error(
                    Pos { line: at.line, col },
                    Code::BadCron,
                    format!("bad `{}` field: {}", e.field, e.message),
                );
            }
            None
        }
    };
    if let Some(cron) = &cron {
        let epoch = crate::schedule::Civil {
            year: 1970,
            month: 1,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
        };
        if cron.next_civil(epoch).is_none() {
            sink.warning(
                pos,
                Code::NeverFires,
                format!(
                    "the schedule of job `{name}` matches no date from 1970 to 2099; it never fires"
                ),
            );
        }
    }

    let target_type = match get("target_type") {
        None => TargetType::Glob,
        Some(v) => {
            let text = string(v, "target_type", sink).unwrap_or_default();
            match TargetType::parse(&text) {
                Some(t) => t,
                None => {
                    let names: Vec<&str> = TargetType::ALL.iter().map(|t| t.as_str()).collect();
                    let hint = suggest(&text, &names)
                        .map(|s| format!("; did you mean `{s}`?"))
                        .unwrap_or_default();
                    sink.error(
                        v.pos,
                        Code::BadValue,
                        format!(
                            "unknown target_type `{text}` (one of {}){hint}",
                            names.join(", ")
                        ),
                    );
                    TargetType::Glob
                }
            }
        }
    };
    let targets = match get("targets") {
        None => Targets::Expr(String::new()),
        Some(v) => match &v.kind {
            Kind::Seq(_) if target_type == TargetType::List => {
                Targets::List(string_list(v, "targets", sink).unwrap_or_default())
            }
            Kind::Seq(_) => {
                sink.error(
                    v.pos,
                    Code::WrongType,
                    "`targets` may be a list only with `target_type: list`",
                );
                Targets::Expr(String::new())
            }
            _ => {
                let text = string(v, "targets", sink);
                if text.as_ref().is_some_and(|t| t.trim().is_empty()) {
                    sink.error(v.pos, Code::BadValue, "`targets` is empty");
                }
                Targets::Expr(text.unwrap_or_default())
            }
        },
    };
    let command = match get("command") {
        None => String::new(),
        Some(v) => {
            let text = string(v, "command", sink);
            if text.as_ref().is_some_and(|t| t.trim().is_empty()) {
                sink.error(v.pos, Code::BadValue, "`command` is empty");
            }
            text.unwrap_or_default()
        }
    };

    let opt_string = |k: &str, sink: &mut Sink| get(k).and_then(|v| string(v, k, sink));
    let user = opt_string("user", sink);
    let cwd = opt_string("cwd", sink);
    let wrapper_path = opt_string("wrapper_path", sink);
    let wrapper_logdir = opt_string("wrapper_logdir", sink);
    let saltpeter_server_host = opt_string("saltpeter_server_host", sink);
    let lockfile = opt_string("lockfile", sink);
    let master = opt_string("master", sink);
    let wrapper_loglevel =
        get("wrapper_loglevel").and_then(|v| log_level(v, "wrapper_loglevel", sink));
    let timezone = get("timezone").and_then(|v| time_zone(v, "timezone", sink));

    let mut env = BTreeMap::new();
    if let Some(v) = get("env") {
        match v.as_map() {
            Some(vars) => {
                for (k, val) in vars {
                    let key = k.key_text();
                    if key.is_empty() || key.contains('=') || key.contains('\0') {
                        sink.error(
                            k.pos,
                            Code::BadValue,
                            format!(
                                "`{}` is not a valid environment variable name",
                                key.escape_debug()
                            ),
                        );
                        continue;
                    }
                    if key.starts_with("SP_") {
                        sink.warning(
                            k.pos,
                            Code::Overridden,
                            format!(
                                "env `{key}` overrides a variable saltpeter passes to the wrapper"
                            ),
                        );
                    }
                    match val.as_scalar() {
                        Some(s) if !s.is_null() => {
                            env.insert(key, s.text.clone());
                        }
                        _ => sink.error(
                            val.pos,
                            Code::WrongType,
                            format!(
                                "env `{key}` must be a string or number, found {}",
                                val.describe()
                            ),
                        ),
                    }
                }
            }
            None => sink.error(
                v.pos,
                Code::WrongType,
                format!(
                    "`env` must be a mapping of names to values, found {}",
                    v.describe()
                ),
            ),
        }
    }

    let mut timeout =
        get("timeout").and_then(|v| unsigned(v, "timeout", u64::from(u32::MAX), sink));
    if let Some(v) = get("hard_timeout") {
        let hard = unsigned(v, "hard_timeout", u64::from(u32::MAX), sink);
        if get("timeout").is_some() {
            sink.warning(
                v.pos,
                Code::LegacyKey,
                "`hard_timeout` is ignored because `timeout` is set",
            );
        } else {
            sink.warning(
                v.pos,
                Code::LegacyKey,
                "`hard_timeout` is a legacy name; write `timeout`",
            );
            timeout = hard;
        }
    }
    if let Some(v) = get("soft_timeout") {
        sink.warning(
            v.pos,
            Code::LegacyKey,
            "`soft_timeout` has no effect and is ignored",
        );
    }
    if let Some(v) = get("utc") {
        sink.warning(
            v.pos,
            Code::LegacyKey,
            "`utc` has no effect (the original always used UTC); set `timezone` to choose a zone",
        );
    }
    if let Some(v) = get("group") {
        sink.warning(
            v.pos,
            Code::LegacyKey,
            "`group` is the file's name; this value is ignored",
        );
    }
    let count = |k: &str, sink: &mut Sink| {
        get(k)
            .and_then(|v| unsigned(v, k, u64::from(u32::MAX), sink))
            .unwrap_or(0) as u32
    };
    let number_of_targets = count("number_of_targets", sink);
    let batch_size = count("batch_size", sink);
    let use_wrapper = get("use_wrapper")
        .and_then(|v| boolean(v, "use_wrapper", sink))
        .unwrap_or(true);
    let allow_overlap = match get("allow_overlap") {
        None => false,
        Some(v) if v.as_scalar().is_some_and(|s| s.text == OVERLAP_MAGIC) => true,
        Some(v) => {
            sink.warning(
                v.pos,
                Code::BadValue,
                format!("`allow_overlap` allows overlapping runs only with the value '{OVERLAP_MAGIC}'; overlap stays forbidden"),
            );
            false
        }
    };
    let concurrency = match get("concurrency") {
        None if allow_overlap => Concurrency::Allow,
        None => Concurrency::Forbid,
        Some(v) => match string(v, "concurrency", sink).as_deref() {
            Some("forbid") => Concurrency::Forbid,
            Some("allow") => Concurrency::Allow,
            Some("replace") => Concurrency::Replace,
            Some(other) => {
                sink.error(
                    v.pos,
                    Code::BadValue,
                    format!("`concurrency` must be forbid, allow or replace; found `{other}`"),
                );
                Concurrency::Forbid
            }
            None => Concurrency::Forbid,
        },
    };
    let misfire = get("misfire").and_then(|v| misfire_policy(v, "misfire", sink));
    let misfire_window = get("misfire_window")
        .and_then(|v| ranged(v, "misfire_window", 1, MISFIRE_WINDOW_MAX, sink));
    let misfire_max = get("misfire_max").and_then(|v| {
        ranged(v, "misfire_max", 1, MISFIRE_MAX_MAX, sink).map(|n| (n as u32, v.pos))
    });
    if let (Some((_, at)), Some(policy)) = (misfire_max, misfire)
        && policy != MisfirePolicy::All
    {
        sink.warning(
            at,
            Code::NoEffect,
            "`misfire_max` has no effect unless `misfire: all`",
        );
    }
    let retries = get("retries")
        .and_then(|v| ranged(v, "retries", 0, RETRIES_MAX, sink))
        .unwrap_or(0) as u32;
    let retry_delay = get("retry_delay")
        .and_then(|v| ranged(v, "retry_delay", 1, RETRY_DELAY_MAX, sink))
        .unwrap_or(60);
    if let Some(v) = get("retry_delay")
        && retries == 0
    {
        sink.warning(
            v.pos,
            Code::NoEffect,
            "`retry_delay` has no effect unless `retries` is at least 1",
        );
    }
    let success_threshold = match get("success_threshold") {
        None => None,
        Some(v) => match v
            .as_scalar()
            .filter(|s| s.plain)
            .and_then(|s| s.text.parse::<f64>().ok())
        {
            Some(f) if (0.0..=1.0).contains(&f) => Some(f),
            _ => {
                sink.error(
                    v.pos,
                    Code::BadValue,
                    "`success_threshold` must be a fraction from 0 to 1, e.g. 0.9",
                );
                None
            }
        },
    };

    // Unlike other keys, a null `notify` is not absent: it turns the default off.
    let notify = entries
        .iter()
        .find(|(key, _)| key.key_str() == Some("notify"))
        .and_then(|(_, v)| notify_section(v, "notify", sink));

    let errors_after = sink.found.iter().filter(|d| d.is_error()).count();
    if errors_after > errors_before {
        return None;
    }
    Some(JobDef {
        name: name.to_string(),
        pos,
        cron: cron?,
        expression: texts.join(" "),
        timezone,
        targets,
        target_type,
        command,
        user,
        cwd,
        env,
        timeout: timeout.or(Some(3600)).filter(|t| *t != 0),
        number_of_targets,
        batch_size,
        use_wrapper,
        wrapper_path,
        wrapper_loglevel,
        wrapper_logdir,
        saltpeter_server_host,
        allow_overlap: concurrency != Concurrency::Forbid,
        concurrency,
        misfire,
        misfire_window,
        misfire_max: misfire_max.map(|(n, _)| n),
        success_threshold,
        retries,
        retry_delay,
        lockfile,
        master,
        notify,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_is_a_path_or_a_postgres_url() {
        let (doc, found) = validate_file(
            "a.yaml",
            "saltpeter_config:\n  database: mysql://db.example/saltpeter\n",
        );
        assert!(doc.settings.is_empty());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].code, Code::BadValue);
        assert!(
            found[0].message.contains("or a `postgres://` URL"),
            "{}",
            found[0].message
        );
        for ok in [
            "postgres://sp@db.example/saltpeter",
            "postgresql://db.example/sp?sslmode=require",
            "/var/lib/saltpeter/history.db",
        ] {
            let (doc, found) =
                validate_file("a.yaml", &format!("saltpeter_config:\n  database: {ok}\n"));
            assert!(found.is_empty(), "{ok}: {found:?}");
            assert_eq!(doc.settings.len(), 1);
        }
    }

    #[test]
    fn the_hub_output_rate_is_a_positive_byte_count() {
        let (doc, found) = validate_file(
            "a.yaml",
            "saltpeter_config:\n  machines_ws_max_output_rate: 1000\n",
        );
        assert!(found.is_empty(), "{found:?}");
        assert!(matches!(
            doc.settings.get("machines_ws_max_output_rate"),
            Some((SettingValue::Count(1000), _))
        ));
        let (doc, found) = validate_file(
            "a.yaml",
            "saltpeter_config:\n  machines_ws_max_output_rate: 0\n",
        );
        assert!(doc.settings.is_empty());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].code, Code::BadValue);
        assert_eq!(
            found[0].message,
            "`machines_ws_max_output_rate` must be at least 1 (bytes per second), found 0"
        );
    }
}
