//! One file's YAML → typed definitions plus findings. Pure: takes the text, never the disk.
//! Global defaults (time zone, wrapper path...) are not applied here but in `assemble`, so a
//! file's last good version can be re-resolved when another file changes them.

use std::collections::BTreeMap;

use jiff::tz::TimeZone;

use super::diagnostic::{Code, Sink, suggest};
use super::{Concurrency, MisfirePolicy, TargetType, Targets, WrapperLogLevel};
use crate::schedule::{Cron, DomDow, Field};
use crate::yaml::{self, Kind, Node, Pos};

/// The value that makes the original allow overlapping runs.
pub const OVERLAP_MAGIC: &str = "i know what i am doing!";

/// The largest `misfire_window`: a year, in seconds.
const MISFIRE_WINDOW_MAX: u64 = 31_536_000;
/// The largest `misfire_max`.
const MISFIRE_MAX_MAX: u64 = 1000;

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
    pub lockfile: Option<String>,
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
    ("output_cap", SettingKind::Count),
    ("history_max_age_days", SettingKind::Count),
    ("history_max_runs_per_job", SettingKind::Count),
    ("api_tokens", SettingKind::Tokens),
    ("api_allowed_origins", SettingKind::List),
    ("allow_legacy_wrappers", SettingKind::Bool),
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
    "lockfile",
    "timezone",
    "dom_dow",
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
        if value.is_null() {
            continue;
        }
        let typed = match kind {
            SettingKind::Str => string(value, name, sink).map(SettingValue::Str),
            // A URL would silently become a relative path (a directory named `postgres:`).
            SettingKind::Path => match string(value, name, sink) {
                Some(url) if url.contains("://") => {
                    sink.error(
                        value.pos,
                        Code::BadValue,
                        format!("`{name}` takes a file path (the embedded SQLite database); `{url}` is a URL, and other databases are not supported yet"),
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
    let get = |k: &str| {
        entries
            .iter()
            .find(|(key, _)| key.key_str() == Some(k))
            .map(|(_, v)| v)
            .filter(|v| !v.is_null())
    };

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
        lockfile,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_is_a_path_not_a_url() {
        let (doc, found) = validate_file(
            "a.yaml",
            "saltpeter_config:\n  database: postgres://db.example/saltpeter\n",
        );
        assert!(doc.settings.is_empty());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].code, Code::BadValue);
        assert!(
            found[0].message.contains("takes a file path"),
            "{}",
            found[0].message
        );
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
