//! The config directory: job files in the original Saltpeter's format, validated at load into
//! a [`Config`], with findings carrying `file:line:col`.
//!
//! Loading is pure ([`Loader::load`] takes file contents); reading the directory lives in
//! `dir.rs` and watching it in `watch.rs`. A file with errors keeps its last good version in
//! force; a file that never loaded cleanly contributes nothing.
//!
//! Must not know: Salt, the wrapper protocol, the scheduler's clock.

mod diagnostic;
mod dir;
pub mod notify;
mod validate;
pub mod watch;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use jiff::tz::TimeZone;

pub use crate::yaml::Pos;
pub use diagnostic::{Code, Diagnostic, Severity};
pub use dir::{DirError, read_dir};
pub use validate::{
    ApiToken, FileDoc, JobDef, NotifyDef, OVERLAP_MAGIC, SettingValue, validate_file,
};

use self::notify::{Channels, NotifyPolicy};
use crate::schedule::Schedule;
use diagnostic::suggest;

/// Salt's target types (`tgt_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TargetType {
    Glob,
    Pcre,
    List,
    Grain,
    GrainPcre,
    Pillar,
    PillarPcre,
    PillarExact,
    Compound,
    CompoundPillarExact,
    Nodegroup,
    Range,
    Ipcidr,
}

impl TargetType {
    pub const ALL: [TargetType; 13] = [
        TargetType::Glob,
        TargetType::Pcre,
        TargetType::List,
        TargetType::Grain,
        TargetType::GrainPcre,
        TargetType::Pillar,
        TargetType::PillarPcre,
        TargetType::PillarExact,
        TargetType::Compound,
        TargetType::CompoundPillarExact,
        TargetType::Nodegroup,
        TargetType::Range,
        TargetType::Ipcidr,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TargetType::Glob => "glob",
            TargetType::Pcre => "pcre",
            TargetType::List => "list",
            TargetType::Grain => "grain",
            TargetType::GrainPcre => "grain_pcre",
            TargetType::Pillar => "pillar",
            TargetType::PillarPcre => "pillar_pcre",
            TargetType::PillarExact => "pillar_exact",
            TargetType::Compound => "compound",
            TargetType::CompoundPillarExact => "compound_pillar_exact",
            TargetType::Nodegroup => "nodegroup",
            TargetType::Range => "range",
            TargetType::Ipcidr => "ipcidr",
        }
    }

    pub fn parse(text: &str) -> Option<TargetType> {
        TargetType::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

/// A Salt target: an expression, or an explicit list of minion ids (`target_type: list`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Targets {
    Expr(String),
    List(Vec<String>),
}

/// What a due slot does while an instance of the job still runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Concurrency {
    /// Skip the slot (the default; recorded as `overlap`).
    Forbid,
    /// Start anyway (the original's `allow_overlap: 'i know what i am doing!'`).
    Allow,
    /// Kill the running instance, then start.
    Replace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WrapperLogLevel {
    Normal,
    Debug,
    Off,
}

impl WrapperLogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            WrapperLogLevel::Normal => "normal",
            WrapperLogLevel::Debug => "debug",
            WrapperLogLevel::Off => "off",
        }
    }
}

/// What to do with slots that were due while the daemon was down, stalled, or the clock jumped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MisfirePolicy {
    /// Fire none of them.
    Skip,
    /// Fire the latest one.
    Latest,
    /// Fire each of them (up to [`Misfire::max`]).
    All,
}

impl MisfirePolicy {
    pub const ALL: [MisfirePolicy; 3] = [
        MisfirePolicy::Skip,
        MisfirePolicy::Latest,
        MisfirePolicy::All,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MisfirePolicy::Skip => "skip",
            MisfirePolicy::Latest => "latest",
            MisfirePolicy::All => "all",
        }
    }

    pub fn parse(text: &str) -> Option<MisfirePolicy> {
        MisfirePolicy::ALL.into_iter().find(|p| p.as_str() == text)
    }
}

/// The catch-up (misfire) policy of a job: `misfire`, `misfire_window`, `misfire_max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Misfire {
    pub policy: MisfirePolicy,
    /// Slots later than this are never fired (recorded as missed).
    pub window_secs: u64,
    /// With `all`: at most this many catch-up fires per gap.
    pub max: u32,
}

impl Default for Misfire {
    fn default() -> Misfire {
        Misfire {
            policy: MisfirePolicy::Latest,
            window_secs: 60,
            max: 10,
        }
    }
}

/// A job ready to run: its file's definition with the global defaults applied.
#[derive(Clone, Debug)]
pub struct Job {
    pub name: String,
    /// The file name without its extension, as in the original.
    pub group: String,
    /// Where the job is defined (`file:line:col`), for messages.
    pub source: String,
    pub schedule: Schedule,
    pub expression: String,
    pub timezone: String,
    pub targets: Targets,
    pub target_type: TargetType,
    pub command: String,
    pub user: Option<String>,
    pub cwd: Option<String>,
    pub env: BTreeMap<String, String>,
    /// `None`: no limit (`timeout: 0`).
    pub timeout_secs: Option<u64>,
    /// 0: every target.
    pub number_of_targets: u32,
    /// 0: all targets at once.
    pub batch_size: u32,
    pub use_wrapper: bool,
    pub wrapper_path: String,
    pub wrapper_loglevel: WrapperLogLevel,
    pub wrapper_logdir: String,
    pub saltpeter_server_host: String,
    /// Overlapping runs are allowed (`concurrency` is not `forbid`); the wrapper's lock is skipped.
    pub allow_overlap: bool,
    pub concurrency: Concurrency,
    /// Catch-up of slots due while the daemon was down or stalled, or skipped by a clock jump.
    pub misfire: Misfire,
    pub success_threshold: Option<f64>,
    pub lockfile: Option<String>,
    /// `master`: only daemons whose `master_name` this is fire the job (several daemons on
    /// one store); `None`: any daemon.
    pub master: Option<String>,
    /// Whom to tell of what: the job's own `notify`, else `saltpeter_config.notify`; `None`:
    /// nobody. Names only channels `Settings::notify_channels` defines.
    pub notify: Option<NotifyPolicy>,
    /// Attempts after the first for the targets that failed (`retries`, 0: none).
    pub retries: u32,
    /// Seconds before the first retry (`retry_delay`); each later one waits twice as long.
    pub retry_delay_secs: u64,
}

impl Job {
    /// The job runs through a wrapper that is not sp-wrapper (by its file name): the
    /// original's Python wrapper, which sends no run token.
    pub fn runs_original_wrapper(&self) -> bool {
        let file = self.wrapper_path.rsplit('/').next().unwrap_or_default();
        self.use_wrapper && file != "sp-wrapper"
    }
}

/// `saltpeter_config`, with defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub logdir: String,
    pub debug: bool,
    /// `None` (unset): the API and UI are served; `Some(false)`: off, as in the original.
    pub api_ws: Option<bool>,
    pub api_ws_port: u16,
    pub api_ws_bind_addr: String,
    pub machines_ws_port: u16,
    pub machines_ws_bind_addr: String,
    /// PEM certificate chain and key: the machines hub serves `wss://` when both are set.
    pub machines_ws_tls_cert: Option<String>,
    pub machines_ws_tls_key: Option<String>,
    /// Output bytes per second the machines hub accepts from one wrapper; past it the hub
    /// stops reading and the wrapper spools.
    pub machines_ws_max_output_rate: u64,
    pub default_saltpeter_server_host: String,
    pub default_wrapper_path: String,
    pub default_wrapper_loglevel: WrapperLogLevel,
    pub default_wrapper_logdir: String,
    pub default_timezone: String,
    /// `default_misfire`, `default_misfire_window`, `default_misfire_max`.
    pub default_misfire: Misfire,
    /// The Salt master's config file (default `/etc/salt/master`), and overrides of what it
    /// says, for setups where the daemon cannot read it or must differ.
    pub salt: SaltOverrides,
    /// The history database: a SQLite file, or a `postgres://` URL shared by several daemons.
    pub database: String,
    /// This daemon's name in a shared store (`daemon_name`, default the host name): it owns
    /// the runs it launches under it, and a restart under the same name takes them back.
    pub daemon_name: String,
    /// The master this daemon serves (`master_name`, default the host name): it fires the jobs
    /// pinned to it (`master: NAME`) and those pinned to none.
    pub master_name: String,
    /// Output bytes kept per target; the middle of longer output is dropped (head and tail kept).
    pub output_cap: u64,
    pub history_max_age_days: u64,
    pub history_max_runs_per_job: u64,
    /// Bearer tokens for the API; mutating calls need an operator's when the API is not on
    /// loopback.
    pub api_tokens: Vec<ApiToken>,
    /// `Origin`s allowed to open the UI WebSocket besides the API's own.
    pub api_allowed_origins: Vec<String>,
    /// Accept wrappers that send no run token (the original's Python wrapper) for jobs whose
    /// wrapper is not sp-wrapper. Off: anyone who reaches the machines port could forge them.
    pub allow_legacy_wrappers: bool,
    /// `notify_channels`: where notifications go, by name.
    pub notify_channels: Channels,
    /// `notify`: the policy of jobs that set none (names only channels of `notify_channels`).
    pub notify: Option<NotifyPolicy>,
    /// `notify_max_per_hour`: notifications per job and hour; past it they are recorded as
    /// suppressed.
    pub notify_max_per_hour: u32,
}

/// `saltpeter_config.salt_*`: where the Salt master is, when its config file does not say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SaltOverrides {
    pub master_config: Option<String>,
    pub interface: Option<String>,
    pub ret_port: Option<u16>,
    pub sock_dir: Option<String>,
    pub cachedir: Option<String>,
    pub user: Option<String>,
}

impl Settings {
    /// The defaults of the original (reference §1.4), plus `default_timezone: UTC`.
    pub fn defaults(hostname: &str) -> Settings {
        Settings {
            logdir: "/var/log/saltpeter".into(),
            debug: false,
            api_ws: None,
            api_ws_port: 8888,
            api_ws_bind_addr: "0.0.0.0".into(),
            machines_ws_port: 8889,
            machines_ws_bind_addr: "0.0.0.0".into(),
            machines_ws_tls_cert: None,
            machines_ws_tls_key: None,
            // 128 MiB/s, as `agents::DEFAULT_MAX_OUTPUT_RATE` (config knows nothing of the hub).
            machines_ws_max_output_rate: 128 << 20,
            default_saltpeter_server_host: hostname.into(),
            default_wrapper_path: "/usr/local/bin/sp_wrapper.py".into(),
            default_wrapper_loglevel: WrapperLogLevel::Normal,
            default_wrapper_logdir: "/var/log/sp_wrapper".into(),
            default_timezone: "UTC".into(),
            default_misfire: Misfire::default(),
            salt: SaltOverrides::default(),
            database: "/var/lib/saltpeter/history.db".into(),
            daemon_name: hostname.into(),
            master_name: hostname.into(),
            output_cap: 1 << 20,
            history_max_age_days: 30,
            history_max_runs_per_job: 1000,
            api_tokens: Vec::new(),
            api_allowed_origins: Vec::new(),
            allow_legacy_wrappers: false,
            notify_channels: Channels::new(),
            notify: None,
            notify_max_per_hour: 20,
        }
    }

    fn apply(&mut self, key: &str, value: &SettingValue) {
        use SettingValue as V;
        match (key, value) {
            ("logdir", V::Str(s)) => self.logdir = s.clone(),
            ("debug", V::Bool(b)) => self.debug = *b,
            ("allow_legacy_wrappers", V::Bool(b)) => self.allow_legacy_wrappers = *b,
            ("api_ws", V::Bool(b)) => self.api_ws = Some(*b),
            ("api_ws_port", V::Port(p)) => self.api_ws_port = *p,
            ("api_ws_bind_addr", V::Str(s)) => self.api_ws_bind_addr = s.clone(),
            ("machines_ws_port", V::Port(p)) => self.machines_ws_port = *p,
            ("machines_ws_bind_addr", V::Str(s)) => self.machines_ws_bind_addr = s.clone(),
            ("machines_ws_tls_cert", V::Str(s)) => self.machines_ws_tls_cert = Some(s.clone()),
            ("machines_ws_tls_key", V::Str(s)) => self.machines_ws_tls_key = Some(s.clone()),
            ("machines_ws_max_output_rate", V::Count(n)) => self.machines_ws_max_output_rate = *n,
            ("default_saltpeter_server_host", V::Str(s)) => {
                self.default_saltpeter_server_host = s.clone()
            }
            ("default_wrapper_path", V::Str(s)) => self.default_wrapper_path = s.clone(),
            ("default_wrapper_loglevel", V::LogLevel(l)) => self.default_wrapper_loglevel = *l,
            ("default_wrapper_logdir", V::Str(s)) => self.default_wrapper_logdir = s.clone(),
            ("default_timezone", V::Str(s)) => self.default_timezone = s.clone(),
            ("default_misfire", V::Misfire(p)) => self.default_misfire.policy = *p,
            ("default_misfire_window", V::Count(n)) => self.default_misfire.window_secs = *n,
            // Validated to 1..=1000.
            ("default_misfire_max", V::Count(n)) => self.default_misfire.max = *n as u32,
            ("salt_master_config", V::Str(s)) => self.salt.master_config = Some(s.clone()),
            ("salt_interface", V::Str(s)) => self.salt.interface = Some(s.clone()),
            ("salt_ret_port", V::Port(p)) => self.salt.ret_port = Some(*p),
            ("salt_sock_dir", V::Str(s)) => self.salt.sock_dir = Some(s.clone()),
            ("salt_cachedir", V::Str(s)) => self.salt.cachedir = Some(s.clone()),
            ("salt_user", V::Str(s)) => self.salt.user = Some(s.clone()),
            ("database", V::Str(s)) => self.database = s.clone(),
            ("daemon_name", V::Str(s)) => self.daemon_name = s.clone(),
            ("master_name", V::Str(s)) => self.master_name = s.clone(),
            ("output_cap", V::Count(n)) => self.output_cap = *n,
            ("history_max_age_days", V::Count(n)) => self.history_max_age_days = *n,
            ("history_max_runs_per_job", V::Count(n)) => self.history_max_runs_per_job = *n,
            ("api_tokens", V::Tokens(t)) => self.api_tokens = t.clone(),
            ("api_allowed_origins", V::List(l)) => self.api_allowed_origins = l.clone(),
            ("notify_channels", V::Channels(c)) => self.notify_channels = c.clone(),
            // Its channel names are checked once every file's settings are in (`assemble`).
            ("notify", V::Notify(def)) => self.notify = def.policy(),
            // Validated to 1..=100000.
            ("notify_max_per_hour", V::Count(n)) => self.notify_max_per_hour = *n as u32,
            _ => unreachable!("validate types every setting: {key}"),
        }
    }

    /// Settings read only at start-up that differ between `self` (running) and `new`, as
    /// `(key, running value, new value)`.
    pub fn restart_required(&self, new: &Settings) -> Vec<(&'static str, String, String)> {
        let mut out = Vec::new();
        let mut check = |key: &'static str, old: String, new: String| {
            if old != new {
                out.push((key, old, new));
            }
        };
        check(
            "api_ws",
            format!("{:?}", self.api_ws),
            format!("{:?}", new.api_ws),
        );
        check("database", self.database.clone(), new.database.clone());
        check(
            "daemon_name",
            self.daemon_name.clone(),
            new.daemon_name.clone(),
        );
        check(
            "master_name",
            self.master_name.clone(),
            new.master_name.clone(),
        );
        check(
            "api_ws_port",
            self.api_ws_port.to_string(),
            new.api_ws_port.to_string(),
        );
        check(
            "api_ws_bind_addr",
            self.api_ws_bind_addr.clone(),
            new.api_ws_bind_addr.clone(),
        );
        check(
            "machines_ws_port",
            self.machines_ws_port.to_string(),
            new.machines_ws_port.to_string(),
        );
        check(
            "machines_ws_bind_addr",
            self.machines_ws_bind_addr.clone(),
            new.machines_ws_bind_addr.clone(),
        );
        let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
        check(
            "machines_ws_tls_cert",
            or_none(&self.machines_ws_tls_cert),
            or_none(&new.machines_ws_tls_cert),
        );
        check(
            "machines_ws_tls_key",
            or_none(&self.machines_ws_tls_key),
            or_none(&new.machines_ws_tls_key),
        );
        check(
            "machines_ws_max_output_rate",
            self.machines_ws_max_output_rate.to_string(),
            new.machines_ws_max_output_rate.to_string(),
        );
        out
    }

    /// `SP_WEBSOCKET_URL` for a wrapper: `ws://` or, with a certificate, `wss://` to `host`.
    pub fn machines_ws_url(&self, host: &str) -> String {
        let scheme = if self.machines_ws_tls_cert.is_some() {
            "wss"
        } else {
            "ws"
        };
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        format!("{scheme}://{host}:{}", self.machines_ws_port)
    }

    /// `new` with the start-up-only settings of `self` kept.
    pub fn keep_startup_values(&self, mut new: Settings) -> Settings {
        new.api_ws = self.api_ws;
        new.database = self.database.clone();
        new.daemon_name = self.daemon_name.clone();
        new.master_name = self.master_name.clone();
        new.api_ws_port = self.api_ws_port;
        new.api_ws_bind_addr = self.api_ws_bind_addr.clone();
        new.machines_ws_port = self.machines_ws_port;
        new.machines_ws_bind_addr = self.machines_ws_bind_addr.clone();
        new.machines_ws_tls_cert = self.machines_ws_tls_cert.clone();
        new.machines_ws_tls_key = self.machines_ws_tls_key.clone();
        new.machines_ws_max_output_rate = self.machines_ws_max_output_rate;
        new
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Maintenance {
    pub global: bool,
    pub machines: Vec<String>,
}

/// The whole validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub jobs: BTreeMap<String, Arc<Job>>,
    pub settings: Settings,
    pub maintenance: Maintenance,
}

/// One file of the directory as read: its name (`DIR/x.yaml`), its group and its text, or
/// why it could not be read.
#[derive(Clone, Debug)]
pub struct SourceFile {
    pub path: String,
    pub group: String,
    pub text: Result<String, String>,
}

/// The outcome of one load.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub diagnostics: Vec<Diagnostic>,
}

impl Loaded {
    pub fn errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }

    pub fn warnings(&self) -> usize {
        self.diagnostics.len() - self.errors()
    }
}

/// Loads the directory again and again, remembering each file's last good version.
#[derive(Debug)]
pub struct Loader {
    hostname: String,
    last_good: BTreeMap<String, Arc<FileDoc>>,
}

impl Loader {
    pub fn new(hostname: &str) -> Loader {
        Loader {
            hostname: hostname.to_string(),
            last_good: BTreeMap::new(),
        }
    }

    /// Validates every file (in the given order, which is name order) and assembles the
    /// config. Files with errors fall back to their last good version; removed files go.
    pub fn load(&mut self, files: &[SourceFile]) -> Loaded {
        let mut diagnostics = Vec::new();
        let mut effective: Vec<(&SourceFile, Arc<FileDoc>)> = Vec::new();
        let previous = std::mem::take(&mut self.last_good);
        for file in files {
            let (doc, found) = match &file.text {
                Ok(text) => validate_file(&file.path, text),
                Err(why) => {
                    let d = Diagnostic {
                        file: file.path.clone(),
                        pos: Pos { line: 1, col: 1 },
                        severity: Severity::Error,
                        code: Code::Unreadable,
                        message: format!("cannot read file: {why}"),
                    };
                    (FileDoc::default(), vec![d])
                }
            };
            let failed = found.iter().any(Diagnostic::is_error);
            diagnostics.extend(found);
            if !failed {
                let doc = Arc::new(doc);
                self.last_good.insert(file.path.clone(), doc.clone());
                effective.push((file, doc));
            } else if let Some(old) = previous.get(&file.path) {
                diagnostics.push(Diagnostic {
                    file: file.path.clone(),
                    pos: Pos { line: 1, col: 1 },
                    severity: Severity::Warning,
                    code: Code::KeptLastGood,
                    message: format!(
                        "this file has errors; its last good version ({} job(s)) stays in force",
                        old.jobs.len()
                    ),
                });
                self.last_good.insert(file.path.clone(), old.clone());
                effective.push((file, old.clone()));
            }
        }
        let config = self.assemble(&effective, &previous, &mut diagnostics);
        Loaded {
            config,
            diagnostics,
        }
    }

    fn assemble(
        &self,
        files: &[(&SourceFile, Arc<FileDoc>)],
        previous: &BTreeMap<String, Arc<FileDoc>>,
        diagnostics: &mut Vec<Diagnostic>,
    ) -> Config {
        let mut settings = Settings::defaults(&self.hostname);
        let mut set_at: BTreeMap<&str, (String, Pos)> = BTreeMap::new();
        let mut maintenance = Maintenance::default();
        let mut default_notify: Option<(&SourceFile, &NotifyDef)> = None;
        for (file, doc) in files {
            for (key, (value, pos)) in &doc.settings {
                if let SettingValue::Notify(def) = value {
                    default_notify = Some((file, def));
                }
                if let Some((other, at)) = set_at.get(key) {
                    diagnostics.push(Diagnostic {
                        file: file.path.clone(),
                        pos: *pos,
                        severity: Severity::Warning,
                        code: Code::Overridden,
                        message: format!(
                            "`saltpeter_config.{key}` is also set in {other}:{}:{}; this later file wins",
                            at.line, at.col
                        ),
                    });
                }
                set_at.insert(key, (file.path.clone(), *pos));
                settings.apply(key, value);
            }
            if let Some(m) = &doc.maintenance {
                if let Some((global, _)) = m.global {
                    maintenance.global = global;
                }
                if let Some((machines, _)) = &m.machines {
                    maintenance.machines = machines.clone();
                }
            }
        }
        // Channels may be defined in another file than the policies naming them.
        settings.notify = default_notify.and_then(|(file, def)| {
            checked_policy(def, &settings.notify_channels, file, diagnostics)
        });
        // Validated already, so the zone exists.
        let default_tz = TimeZone::get(&settings.default_timezone).unwrap_or(TimeZone::UTC);

        // Where each job name is defined: a job defined in two files is kept where it was
        // before (so adding a clashing file never replaces a running job), else in the
        // first file by name.
        let mut defined: BTreeMap<&str, Vec<(&SourceFile, &JobDef)>> = BTreeMap::new();
        for (file, doc) in files {
            for job in &doc.jobs {
                defined
                    .entry(job.name.as_str())
                    .or_default()
                    .push((file, job));
            }
        }
        let mut jobs = BTreeMap::new();
        for (name, defs) in defined {
            let keep = defs
                .iter()
                .position(|(file, _)| {
                    previous
                        .get(&file.path)
                        .is_some_and(|d| d.jobs.iter().any(|j| j.name == name))
                })
                .filter(|_| defs.len() > 1)
                .unwrap_or(0);
            let (kept_file, kept) = defs[keep];
            for (i, (file, def)) in defs.iter().enumerate() {
                if i != keep {
                    diagnostics.push(Diagnostic {
                        file: file.path.clone(),
                        pos: def.pos,
                        severity: Severity::Error,
                        code: Code::DuplicateJob,
                        message: format!(
                            "job `{name}` is already defined in {}:{}:{}; this definition is ignored",
                            kept_file.path, kept.pos.line, kept.pos.col
                        ),
                    });
                }
            }
            let notify = match &kept.notify {
                Some(def) => checked_policy(def, &settings.notify_channels, kept_file, diagnostics),
                None => settings.notify.clone(),
            };
            let job = resolve(kept_file, kept, &settings, &default_tz, notify);
            if let Some(d) = tokenless_finding(&job, &settings, kept_file, kept.pos) {
                diagnostics.push(d);
            }
            jobs.insert(name.to_string(), Arc::new(job));
        }
        diagnostics.sort_by(|a, b| (&a.file, a.pos).cmp(&(&b.file, b.pos)));
        Config {
            jobs,
            settings,
            maintenance,
        }
    }
}

/// A job whose wrapper sends no run token: refused unless `allow_legacy_wrappers`, and a
/// weaker guarantee when allowed; `check` names every such job.
fn tokenless_finding(
    job: &Job,
    settings: &Settings,
    file: &SourceFile,
    pos: Pos,
) -> Option<Diagnostic> {
    if !job.runs_original_wrapper() {
        return None;
    }
    let (name, path) = (&job.name, &job.wrapper_path);
    let message = if settings.allow_legacy_wrappers {
        format!(
            "job `{name}` relies on `saltpeter_config.allow_legacy_wrappers`: its wrapper `{path}` sends no run token, so anyone who can reach the machines port could forge its results; use sp-wrapper"
        )
    } else {
        format!(
            "job `{name}` runs `{path}`, which is not sp-wrapper and may send no run token (the original Python wrapper sends none): such wrappers are refused unless `saltpeter_config.allow_legacy_wrappers: true`"
        )
    };
    Some(Diagnostic {
        file: file.path.clone(),
        pos,
        severity: Severity::Warning,
        code: Code::TokenlessWrapper,
        message,
    })
}

/// `def`'s policy without the channels `notify_channels` does not define: each such name is
/// an error at its place and is left out, so the daemon never sees it.
fn checked_policy(
    def: &NotifyDef,
    channels: &Channels,
    file: &SourceFile,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<NotifyPolicy> {
    let known: Vec<&str> = channels.keys().map(String::as_str).collect();
    let mut def = def.clone();
    def.to.retain(|(name, pos)| {
        if channels.contains_key(name) {
            return true;
        }
        let hint = match suggest(name, &known) {
            Some(s) => format!("; did you mean `{s}`?"),
            None if known.is_empty() => " (none are defined)".into(),
            None => format!(" (defined: {})", known.join(", ")),
        };
        diagnostics.push(Diagnostic {
            file: file.path.clone(),
            pos: *pos,
            severity: Severity::Error,
            code: Code::BadValue,
            message: format!(
                "channel `{name}` is not defined in `saltpeter_config.notify_channels`, so it is never told{hint}"
            ),
        });
        false
    });
    def.policy()
}

fn resolve(
    file: &SourceFile,
    def: &JobDef,
    settings: &Settings,
    default_tz: &TimeZone,
    notify: Option<NotifyPolicy>,
) -> Job {
    let (tz, tz_name) = match &def.timezone {
        Some(name) => (TimeZone::get(name).unwrap_or(TimeZone::UTC), name.clone()),
        None => (default_tz.clone(), settings.default_timezone.clone()),
    };
    Job {
        name: def.name.clone(),
        group: file.group.clone(),
        source: format!("{}:{}:{}", file.path, def.pos.line, def.pos.col),
        schedule: Schedule::new(def.cron.clone(), tz),
        expression: def.expression.clone(),
        timezone: tz_name,
        targets: def.targets.clone(),
        target_type: def.target_type,
        command: def.command.clone(),
        user: def.user.clone(),
        cwd: def.cwd.clone(),
        env: def.env.clone(),
        timeout_secs: def.timeout,
        number_of_targets: def.number_of_targets,
        batch_size: def.batch_size,
        use_wrapper: def.use_wrapper,
        wrapper_path: def
            .wrapper_path
            .clone()
            .unwrap_or_else(|| settings.default_wrapper_path.clone()),
        wrapper_loglevel: def
            .wrapper_loglevel
            .unwrap_or(settings.default_wrapper_loglevel),
        wrapper_logdir: def
            .wrapper_logdir
            .clone()
            .unwrap_or_else(|| settings.default_wrapper_logdir.clone()),
        saltpeter_server_host: def
            .saltpeter_server_host
            .clone()
            .unwrap_or_else(|| settings.default_saltpeter_server_host.clone()),
        allow_overlap: def.allow_overlap,
        concurrency: def.concurrency,
        misfire: Misfire {
            policy: def.misfire.unwrap_or(settings.default_misfire.policy),
            window_secs: def
                .misfire_window
                .unwrap_or(settings.default_misfire.window_secs),
            max: def.misfire_max.unwrap_or(settings.default_misfire.max),
        },
        success_threshold: def.success_threshold,
        retries: def.retries,
        retry_delay_secs: def.retry_delay,
        lockfile: def.lockfile.clone(),
        master: def.master.clone(),
        notify,
    }
}

impl fmt::Display for TargetType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One file's text loaded on host `master1`, which must have no errors (for other modules'
/// tests).
#[cfg(test)]
pub fn load_valid(yaml: &str) -> Config {
    let file = SourceFile {
        path: "t.yaml".into(),
        group: "t".into(),
        text: Ok(yaml.into()),
    };
    let loaded = Loader::new("master1").load(&[file]);
    assert_eq!(loaded.errors(), 0, "{:?}", loaded.diagnostics);
    loaded.config
}

#[cfg(test)]
mod notify_tests;
#[cfg(test)]
mod tests;
