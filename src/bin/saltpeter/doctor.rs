//! `saltpeter doctor`: checks a deployment end to end, in the order a job needs it: the config
//! directory, the Salt master's config and key, a publish and its returns on the event bus, the
//! machines port as the minions see it, the wrapper on the minions, the database and the API.
//! One line per check (`ok`, `FAIL ... — fix: ...`, or `skip` when an earlier failure makes it
//! meaningless); every check is bounded in time. Exit 0 only when nothing failed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use saltpeter::config::{self, Config, Job, Loader};
use saltpeter::coordinator::launch::{accepts_tokenless, salt_target};
use saltpeter::history::probe::{self, Probe};
use saltpeter::salt::bus::{self, BusMessage};
use saltpeter::salt::{
    JobRet, Publish, PublishError, Published, SaltClient, SaltSettings, Tgt, jobcache, wire,
};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The most any one check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a Salt check waits for the minions' returns (inside [`CHECK_TIMEOUT`]).
const GATHER_WITHIN: Duration = Duration::from_secs(8);
/// How long to wait for the event bus subscription before publishing anyway.
const BUS_WITHIN: Duration = Duration::from_secs(3);
/// The most minion names shown in one group of a line.
const SHOWN: usize = 8;

pub struct DoctorArgs {
    pub dir: PathBuf,
    pub target: Option<String>,
    pub tgt_type: String,
}

enum Outcome {
    Ok(String),
    Fail { what: String, fix: String },
    Skip(String),
}

fn fail(what: impl Into<String>, fix: impl Into<String>) -> Outcome {
    Outcome::Fail {
        what: what.into(),
        fix: fix.into(),
    }
}

#[derive(Default)]
struct Report {
    failed: bool,
}

impl Report {
    fn line(&mut self, check: &str, outcome: Outcome) -> bool {
        let mut out = std::io::stdout().lock();
        let ok = match outcome {
            Outcome::Ok(found) => {
                let _ = writeln!(out, "ok   {check}: {found}");
                true
            }
            Outcome::Fail { what, fix } => {
                self.failed = true;
                let _ = writeln!(out, "FAIL {check}: {what} — fix: {fix}");
                false
            }
            Outcome::Skip(why) => {
                let _ = writeln!(out, "skip {check}: {why}");
                false
            }
        };
        let _ = out.flush();
        ok
    }
}

/// Runs `f` on a thread of its own, giving up on it after [`CHECK_TIMEOUT`].
fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(CHECK_TIMEOUT).ok()
}

fn too_slow() -> Outcome {
    fail(
        format!("no answer within {}s", CHECK_TIMEOUT.as_secs()),
        "look for what hangs (a dead network file system, a stuck master) and run doctor again",
    )
}

pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let mut report = Report::default();
    let dir = args.dir.clone();
    let shown_dir = dir.display().to_string();

    // 1. The config directory, through the daemon's own loader.
    let loaded = bounded(move || {
        let files = config::read_dir(&dir)?;
        let loaded = Loader::new(&saltpeter::hostname()).load(&files);
        Ok::<_, config::DirError>((files.len(), loaded))
    });
    let config = match loaded {
        None => {
            report.line("config", too_slow());
            None
        }
        Some(Err(e)) => {
            report.line(
                "config",
                fail(
                    e.to_string(),
                    format!("create {shown_dir} with the job files, or pass -c DIR"),
                ),
            );
            None
        }
        Some(Ok((files, loaded))) => {
            let jobs = loaded.config.jobs.len();
            if loaded.errors() > 0 {
                let first = loaded
                    .diagnostics
                    .iter()
                    .find(|d| d.is_error())
                    .map(|d| d.to_string())
                    .unwrap_or_default();
                report.line(
                    "config",
                    fail(
                        format!(
                            "{} error(s) in {shown_dir} (first: {first}); {jobs} job(s) valid",
                            loaded.errors()
                        ),
                        format!("run `saltpeter check -c {shown_dir}` and correct them"),
                    ),
                );
            } else {
                let warnings = match loaded.warnings() {
                    0 => String::new(),
                    n => format!(", {n} warning(s) (see `saltpeter check -c {shown_dir}`)"),
                };
                report.line(
                    "config",
                    Outcome::Ok(format!(
                        "{shown_dir}: {files} file(s), {jobs} job(s){warnings}"
                    )),
                );
            }
            Some(loaded.config)
        }
    };
    let Some(config) = config else {
        for check in [
            "salt-config",
            "master-key",
            "publish",
            "event-bus",
            "machines-port",
            "wrapper",
            "database",
            "api",
        ] {
            report.line(check, Outcome::Skip("no config".into()));
        }
        return Ok(ExitCode::FAILURE);
    };

    // 2. The master's config, as the daemon finds it.
    let overrides = config.settings.salt.clone();
    let salt = match bounded(move || SaltSettings::from_config(&overrides)) {
        None => {
            report.line("salt-config", too_slow());
            None
        }
        Some(Err(e)) => {
            report.line(
                "salt-config",
                fail(
                    e.to_string(),
                    "point saltpeter_config.salt_master_config at the master's config file",
                ),
            );
            None
        }
        Some(Ok(s)) => {
            let source = if s.source.exists() {
                s.source.display().to_string()
            } else {
                format!("{} (absent: Salt's defaults)", s.source.display())
            };
            report.line(
                "salt-config",
                Outcome::Ok(format!(
                    "{source}: request server {}, event bus {}, user {}",
                    s.request_endpoint(),
                    event_source(&s),
                    s.user
                )),
            );
            Some(s)
        }
    };

    // 3. The master's key.
    let key_ok = match &salt {
        None => {
            report.line("master-key", Outcome::Skip("no Salt master config".into()));
            false
        }
        Some(s) => {
            let path = s.key_file();
            let user = s.user.clone();
            let shown = path.display().to_string();
            let outcome = match bounded(move || std::fs::read(&path)) {
                None => too_slow(),
                Some(Ok(key)) if key.iter().all(u8::is_ascii_whitespace) => fail(
                    format!("{shown} is empty"),
                    "restart the salt-master, which writes its key at start",
                ),
                Some(Ok(_)) => Outcome::Ok(format!("{shown} is readable")),
                Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => fail(
                    format!("{shown} does not exist"),
                    format!(
                        "start the salt-master (it writes the key at start) and check that \
                         cachedir and user (saltpeter_config.salt_cachedir, salt_user) are the \
                         running master's; then run as root or as the master's user ({user})"
                    ),
                ),
                Some(Err(e)) => fail(
                    format!("cannot read {shown}: {e}"),
                    format!("run as root or as the master's user ({user})"),
                ),
            };
            report.line("master-key", outcome)
        }
    };

    let plan = Plan::new(&config, &args);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match (&salt, key_ok) {
        (Some(s), true) => runtime.block_on(salt_checks(&mut report, s.clone(), &config, &plan)),
        _ => {
            for check in ["publish", "event-bus", "machines-port", "wrapper"] {
                report.line(
                    check,
                    Outcome::Skip("the Salt master cannot be used (above)".into()),
                );
            }
        }
    }

    // 8. The database.
    let outcome = match saltpeter::history::db::Database::parse(&config.settings.database) {
        Err(e) => fail(
            e.to_string(),
            "set saltpeter_config.database to a file path or a postgres:// URL",
        ),
        Ok(database) => probe_database(database),
    };
    report.line("database", outcome);

    // 9. The API.

    let settings = &config.settings;
    if settings.api_ws == Some(false) {
        report.line("api", Outcome::Skip("api_ws: false".into()));
    } else {
        let url = format!(
            "http://{}:{}/api/v1/status",
            loopback_for(&settings.api_ws_bind_addr),
            settings.api_ws_port
        );
        let shown = url.clone();
        let outcome = match bounded(move || api_status(&url)) {
            None => too_slow(),
            Some(outcome) => outcome,
        };
        let outcome = match outcome {
            Outcome::Fail { what, fix } => Outcome::Fail {
                what: format!("{shown}: {what}"),
                fix,
            },
            Outcome::Ok(found) => Outcome::Ok(format!("{shown}: {found}")),
            skip => skip,
        };
        report.line("api", outcome);
    }

    Ok(if report.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// What the Salt checks aim at: a job's targets, wrapper and call-back host.
struct Plan {
    tgt: Tgt,
    tgt_type: String,
    /// Where the target came from, for the report.
    origin: String,
    /// The job whose wrapper and host are checked (`None`: the defaults; no job at all).
    wrapper: Option<WrapperPlan>,
    host: String,
    port: u16,
    bind: String,
}

struct WrapperPlan {
    path: String,
    /// The daemon takes tokenless (original) wrappers for this path.
    legacy_allowed: bool,
}

impl Plan {
    fn new(config: &Config, args: &DoctorArgs) -> Plan {
        let settings = &config.settings;
        // The first job that runs a wrapper, else the first job.
        let job: Option<&Job> = config
            .jobs
            .values()
            .find(|j| j.use_wrapper)
            .or_else(|| config.jobs.values().next())
            .map(|j| j.as_ref());
        let (tgt, tgt_type, origin) = match (&args.target, job) {
            (Some(t), _) => {
                let tgt = if args.tgt_type == "list" {
                    Tgt::List(t.split(',').map(|m| m.trim().to_string()).collect())
                } else {
                    Tgt::Expr(t.clone())
                };
                (tgt, args.tgt_type.clone(), "--target".to_string())
            }
            (None, Some(job)) => (
                salt_target(job),
                job.target_type.as_str().to_string(),
                format!("the targets of job {}", job.name),
            ),
            (None, None) => (
                Tgt::Expr("*".into()),
                "glob".into(),
                "no job yet: every minion".into(),
            ),
        };
        let wrapper = match job {
            Some(j) if !j.use_wrapper => None,
            Some(j) => Some(WrapperPlan {
                path: j.wrapper_path.clone(),
                legacy_allowed: accepts_tokenless(j, settings),
            }),
            None => Some(WrapperPlan {
                path: settings.default_wrapper_path.clone(),
                legacy_allowed: settings.allow_legacy_wrappers
                    && settings.default_wrapper_path.rsplit('/').next() != Some("sp-wrapper"),
            }),
        };
        let host = job.map_or_else(
            || settings.default_saltpeter_server_host.clone(),
            |j| j.saltpeter_server_host.clone(),
        );
        Plan {
            tgt,
            tgt_type,
            origin,
            wrapper,
            host,
            port: settings.machines_ws_port,
            bind: settings.machines_ws_bind_addr.clone(),
        }
    }

    fn shown_target(&self) -> String {
        match &self.tgt {
            Tgt::Expr(e) => format!("'{e}' ({}; {})", self.tgt_type, self.origin),
            Tgt::List(l) => format!("[{}] (list; {})", l.join(", "), self.origin),
        }
    }
}

/// The event bus as the checks see it.
struct Bus {
    rx: mpsc::Receiver<BusMessage>,
    connected: bool,
    closed: bool,
    last_error: String,
}

/// One publish and what came back within the deadline.
struct Gathered {
    published: Published,
    returns: BTreeMap<String, JobRet>,
    /// Minions whose return arrived as a `salt/job/<jid>/ret/` event.
    via_bus: BTreeSet<String>,
}

impl Gathered {
    fn silent(&self) -> Vec<String> {
        self.published
            .minions
            .iter()
            .filter(|m| !self.returns.contains_key(*m))
            .cloned()
            .collect()
    }
}

#[derive(Debug)]
enum GatherError {
    Publish(PublishError),
    Timeout,
}

/// Publishes `publish` and collects returns from the bus (and, for what the bus did not bring,
/// the job cache) until every expected minion returned or `deadline`.
async fn publish_gather(
    client: &mut SaltClient,
    bus: &mut Bus,
    publish: &Publish,
    deadline: Instant,
) -> Result<Gathered, GatherError> {
    let published = tokio::time::timeout_at(deadline, client.publish(publish))
        .await
        .map_err(|_| GatherError::Timeout)?
        .map_err(GatherError::Publish)?;
    let mut g = Gathered {
        published,
        returns: BTreeMap::new(),
        via_bus: BTreeSet::new(),
    };
    let jid = g.published.jid.clone();
    let settings = client.settings().clone();
    let from_cache = |g: &mut Gathered| {
        if let Ok(rets) = jobcache::returns(&settings.cachedir, &settings.hash_type, &jid) {
            for ret in rets {
                g.returns.entry(ret.id.clone()).or_insert(ret);
            }
        }
    };
    loop {
        if g.silent().is_empty() {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let tick = deadline.min(now + Duration::from_millis(500));
        if bus.closed {
            tokio::time::sleep_until(tick).await;
            from_cache(&mut g);
            continue;
        }
        match tokio::time::timeout_at(tick, bus.rx.recv()).await {
            Ok(Some(BusMessage::Event(event))) => {
                if let Some(ret) = event.job_ret()
                    && ret.jid == jid
                {
                    g.via_bus.insert(ret.id.clone());
                    g.returns.insert(ret.id.clone(), ret);
                }
            }
            Ok(Some(BusMessage::Connected(_))) => bus.connected = true,
            Ok(Some(BusMessage::Disconnected { reason, .. })) => {
                bus.connected = false;
                bus.last_error = reason;
            }
            Ok(Some(_)) => {}
            Ok(None) => bus.closed = true,
            // Returns the bus did not bring (it is down, or lost one) are in the job cache.
            Err(_) => from_cache(&mut g),
        }
    }
    from_cache(&mut g);
    Ok(g)
}

fn event_source(s: &SaltSettings) -> String {
    match s.event_source() {
        saltpeter::salt::EventSource::Unix(p) => p.display().to_string(),
        saltpeter::salt::EventSource::Tcp(a) => format!("tcp://{a}"),
    }
}

/// `a, b, c` with at most [`SHOWN`] names.
fn names<S: AsRef<str>>(all: &[S]) -> String {
    let mut text: Vec<&str> = all.iter().take(SHOWN).map(|s| s.as_ref()).collect();
    let more = all.len().saturating_sub(SHOWN);
    let extra = format!("and {more} more");
    if more > 0 {
        text.push(&extra);
    }
    text.join(", ")
}

/// Minions grouped by what was found on them: `a, b: found; c: other`.
fn grouped(by: &BTreeMap<String, Vec<String>>) -> String {
    by.iter()
        .map(|(found, minions)| format!("{}: {found}", names(minions)))
        .collect::<Vec<_>>()
        .join("; ")
}

fn publish_failure(e: &GatherError, s: &SaltSettings, target: &str) -> Outcome {
    let source = s.source.display();
    match e {
        GatherError::Timeout => fail(
            format!("no answer from the master to a publish of test.ping to {target} in time"),
            format!(
                "is the salt-master running? see its log; check interface and ret_port in {source}"
            ),
        ),
        GatherError::Publish(e) => {
            let fix = match e {
                PublishError::Connect { .. }
                | PublishError::Timeout { .. }
                | PublishError::Transport { .. } => format!(
                    "start the salt-master (systemctl start salt-master), and check interface and \
                     ret_port in {source} (or saltpeter_config.salt_interface, salt_ret_port)"
                ),
                PublishError::Authentication { .. } => format!(
                    "the key is not the running master's: check cachedir and user in {source} \
                     (or saltpeter_config.salt_cachedir, salt_user)"
                ),
                PublishError::Key { .. } => {
                    format!("run as root or as the master's user ({})", s.user)
                }
                PublishError::Authorization { .. } => {
                    "allow root to publish (publisher_acl in the master's config)".into()
                }
                PublishError::NoMinions { .. } => format!(
                    "check the target (the job's targets, or --target) against `salt-key -L`: \
                     nothing matched {target}"
                ),
                _ => "see the salt-master's log".into(),
            };
            fail(format!("publishing test.ping to {target}: {e}"), fix)
        }
    }
}

async fn salt_checks(report: &mut Report, s: SaltSettings, config: &Config, plan: &Plan) {
    // Subscribe before publishing, as `saltpeter salt` does: returns can beat the reply.
    let (tx, rx) = mpsc::channel(4096);
    let subscription = tokio::spawn(bus::subscribe(s.event_source(), tx));
    let mut bus = Bus {
        rx,
        connected: false,
        closed: false,
        last_error: "no answer".into(),
    };
    let until = Instant::now() + BUS_WITHIN;
    while !bus.connected {
        match tokio::time::timeout_at(until, bus.rx.recv()).await {
            Ok(Some(BusMessage::Connected(_))) => bus.connected = true,
            Ok(Some(BusMessage::Disconnected { reason, .. })) => bus.last_error = reason,
            Ok(Some(_)) => {}
            Ok(None) => {
                bus.closed = true;
                break;
            }
            Err(_) => break,
        }
    }
    let mut client = SaltClient::new(s.clone());
    client.connect_timeout = Duration::from_secs(3);
    client.request_timeout = Duration::from_secs(5);

    // 4. A publish: test.ping to the targets.
    let target = plan.shown_target();
    let ping = Publish::new(plan.tgt.clone(), &plan.tgt_type, "test.ping");
    let start = Instant::now();
    let gathered = tokio::time::timeout(
        CHECK_TIMEOUT,
        publish_gather(&mut client, &mut bus, &ping, start + GATHER_WITHIN),
    )
    .await
    .unwrap_or(Err(GatherError::Timeout));
    let answered: Vec<String> = match &gathered {
        Err(e) => {
            report.line("publish", publish_failure(e, &s, &target));
            Vec::new()
        }
        Ok(g) => {
            let answered: Vec<String> = g
                .published
                .minions
                .iter()
                .filter(|m| g.returns.contains_key(*m))
                .cloned()
                .collect();
            let silent = g.silent();
            let outcome = if g.published.minions.is_empty() {
                fail(
                    format!("test.ping to {target} matched no minion"),
                    "check the target against `salt-key -L` (are the minions' keys accepted?)",
                )
            } else if silent.is_empty() {
                Outcome::Ok(format!(
                    "test.ping to {target}: {} minion(s) answered: {} (jid {})",
                    answered.len(),
                    names(&answered),
                    g.published.jid
                ))
            } else {
                fail(
                    format!(
                        "test.ping to {target} (jid {}): {} of {} minion(s) answered; no answer \
                         within {}s from {}",
                        g.published.jid,
                        answered.len(),
                        g.published.minions.len(),
                        GATHER_WITHIN.as_secs(),
                        names(&silent)
                    ),
                    "start those minions or reconnect them to this master (`salt-run manage.down` \
                     lists them), or narrow the job's targets",
                )
            };
            report.line("publish", outcome);
            answered
        }
    };

    // 5. The event bus carried that job's returns.
    let source = event_source(&s);
    let outcome = match &gathered {
        Ok(g) if !g.via_bus.is_empty() => Outcome::Ok(format!(
            "{source}: {} return event(s) salt/job/{}/ret/<minion>",
            g.via_bus.len(),
            g.published.jid
        )),
        _ if !bus.connected => fail(
            format!("cannot read the event bus at {source}: {}", bus.last_error),
            format!(
                "run as root or as the master's user ({}); check sock_dir and ipc_mode in {} \
                 (or saltpeter_config.salt_sock_dir)",
                s.user,
                s.source.display()
            ),
        ),
        Err(_) => Outcome::Skip("no job was published".into()),
        Ok(g) if g.returns.is_empty() => Outcome::Skip("no minion returned".into()),
        Ok(g) => fail(
            format!(
                "connected to {source}, but no salt/job/{}/ret/ event arrived within {}s \
                 (the returns are in the job cache)",
                g.published.jid,
                GATHER_WITHIN.as_secs()
            ),
            format!(
                "check that {source} is the running master's event socket (sock_dir in {}, or \
                 saltpeter_config.salt_sock_dir)",
                s.source.display()
            ),
        ),
    };
    report.line("event-bus", outcome);

    // 6. The machines port, as the minions see it.
    let outcome = if answered.is_empty() {
        Outcome::Skip("no minion answered test.ping".into())
    } else {
        tokio::time::timeout(
            CHECK_TIMEOUT,
            machines_port(&mut client, &mut bus, plan, &answered, config),
        )
        .await
        .unwrap_or_else(|_| too_slow())
    };
    report.line("machines-port", outcome);

    // 7. The wrapper on the minions.
    let outcome = match (&plan.wrapper, answered.is_empty()) {
        (None, _) => Outcome::Skip("the job runs without the wrapper (use_wrapper: false)".into()),
        (_, true) => Outcome::Skip("no minion answered test.ping".into()),
        (Some(w), false) => {
            tokio::time::timeout(CHECK_TIMEOUT, wrapper(&mut client, &mut bus, w, &answered))
                .await
                .unwrap_or_else(|_| too_slow())
        }
    };
    report.line("wrapper", outcome);
    subscription.abort();
}

/// The host part of a URL for an address the daemon binds (a wildcard means this host).
fn loopback_for(bind: &str) -> String {
    match bind {
        "0.0.0.0" | "" => "127.0.0.1".into(),
        "::" | "[::]" => "[::1]".into(),
        a => bracketed(a),
    }
}

async fn machines_port(
    client: &mut SaltClient,
    bus: &mut Bus,
    plan: &Plan,
    minions: &[String],
    config: &Config,
) -> Outcome {
    let start = Instant::now();
    let bind = format!("{}:{}", bracketed(&plan.bind), plan.port);
    // The daemon may not run: listen on its port meanwhile, unless it (or something) holds it.
    let listening = match tokio::net::TcpListener::bind(&bind).await {
        Ok(listener) => {
            let task = tokio::spawn(async move {
                while let Ok((conn, _)) = listener.accept().await {
                    drop(conn);
                }
            });
            Ok(task)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(None),
        Err(e) => Err(Some(e)),
    };
    let held = match &listening {
        Ok(_) => format!("doctor listened on {bind} meanwhile"),
        Err(None) => format!("{bind} is held already, by the daemon presumably"),
        Err(Some(e)) => {
            return fail(
                format!("cannot listen on {bind}: {e}"),
                "set saltpeter_config.machines_ws_bind_addr to an address of this host (or \
                 0.0.0.0) and machines_ws_port to a port the daemon may bind",
            );
        }
    };
    let host = &plan.host;
    let port = plan.port;
    let mut connect = Publish::new(Tgt::List(minions.to_vec()), "list", "network.connect");
    connect.args = vec![host.as_str().into()];
    connect.kwargs.insert("port".into(), port.into());
    connect.kwargs.insert("proto".into(), "tcp".into());
    connect.kwargs.insert("timeout".into(), 3u64.into());
    let gathered = publish_gather(client, bus, &connect, start + GATHER_WITHIN).await;
    if let Ok(task) = listening {
        task.abort();
    }
    let g = match gathered {
        Ok(g) => g,
        Err(GatherError::Timeout) => return too_slow(),
        Err(GatherError::Publish(e)) => {
            return fail(
                format!("publishing network.connect: {e}"),
                "see the salt-master's log",
            );
        }
    };
    let mut reached = Vec::new();
    let mut failed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in minions {
        match g.returns.get(m) {
            Some(ret) => {
                let json = wire::to_json(&ret.ret);
                if json.get("result") == Some(&Value::Bool(true)) {
                    reached.push(m.clone());
                } else {
                    let why = json
                        .get("comment")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .unwrap_or_else(|| ret.pretty());
                    failed.entry(why).or_default().push(m.clone());
                }
            }
            None => failed
                .entry(format!("no answer within {}s", GATHER_WITHIN.as_secs()))
                .or_default()
                .push(m.clone()),
        }
    }
    let setting = if config
        .jobs
        .values()
        .any(|j| j.saltpeter_server_host != config.settings.default_saltpeter_server_host)
    {
        "the job's saltpeter_server_host (or default_saltpeter_server_host)"
    } else {
        "saltpeter_config.default_saltpeter_server_host"
    };
    if failed.is_empty() {
        Outcome::Ok(format!(
            "{}/{} minion(s) connect to {host}:{port} ({held})",
            reached.len(),
            minions.len()
        ))
    } else {
        fail(
            format!(
                "{} of {} minion(s) cannot connect to {host}:{port}, where wrappers call back \
                 ({held}): {}",
                minions.len() - reached.len(),
                minions.len(),
                grouped(&failed)
            ),
            format!(
                "set {setting} to a name or address of this host that the minions resolve and \
                 reach, and let {port}/tcp through the firewall"
            ),
        )
    }
}

/// An address as the host of `host:port`: IPv6 in brackets (a wildcard stays a wildcard, so
/// binding it takes every address, as the daemon does).
fn bracketed(bind: &str) -> String {
    if bind.contains(':') && !bind.starts_with('[') {
        format!("[{bind}]")
    } else {
        bind.to_string()
    }
}

/// The shell run on each minion: what is at the path, and what `--version` says, with an
/// empty environment (no `SP_*`: neither sp-wrapper nor the original runs a job without).
fn wrapper_probe(path: &str) -> String {
    let quoted = format!("'{}'", path.replace('\'', "'\\''"));
    format!(
        "p={quoted}
if [ ! -e \"$p\" ]; then echo kind:missing; exit 0; fi
if [ -d \"$p\" ] || [ ! -x \"$p\" ]; then echo kind:noexec; exit 0; fi
if [ \"$(head -c 2 \"$p\")\" = '#!' ]; then
  if head -n 1 \"$p\" | grep -q python; then echo kind:python; else echo kind:script; fi
else echo kind:binary; fi
t=; command -v timeout >/dev/null 2>&1 && t='timeout 5'
out=$(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin $t \"$p\" --version 2>&1 </dev/null)
echo \"rc:$?\"
printf '%s\\n' \"$out\" | head -n 5
"
    )
}

/// What was found at the wrapper path on one minion: `Ok(description)` or `Err(problem)`.
fn judge_wrapper(w: &WrapperPlan, stdout: &str) -> Result<String, String> {
    let mut lines = stdout.lines();
    let kind = lines
        .next()
        .and_then(|l| l.strip_prefix("kind:"))
        .unwrap_or("?");
    match kind {
        "missing" => return Err(format!("no file at {}", w.path)),
        "noexec" => return Err(format!("{} is not an executable file", w.path)),
        _ => {}
    }
    let rc: i64 = lines
        .next()
        .and_then(|l| l.strip_prefix("rc:"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1);
    let output: Vec<&str> = lines.map(str::trim).filter(|l| !l.is_empty()).collect();
    let first = output.first().copied().unwrap_or_default().to_string();
    // Python flushes its banner only at exit, after its error on stderr: look at every line.
    let banner = output
        .iter()
        .find_map(|l| l.strip_prefix("Saltpeter Wrapper version "))
        .map(str::to_string);
    let named_sp_wrapper = w.path.rsplit('/').next() == Some("sp-wrapper");
    if rc == 0 && first.starts_with("sp-wrapper ") {
        return Ok(first);
    }
    let python = kind == "python" || (!named_sp_wrapper && banner.is_some());
    if python {
        let version = banner.map_or(String::new(), |v| format!(" {v}"));
        let found = format!("the original Python wrapper{version}");
        return if w.legacy_allowed {
            Ok(format!("{found} (allow_legacy_wrappers: true)"))
        } else {
            Err(found)
        };
    }
    if let Some(v) = banner {
        return Ok(format!("sp-wrapper {v} (older, without --version)"));
    }
    Err(format!(
        "{} --version exited {rc}: {}",
        w.path,
        if first.is_empty() {
            "(no output)"
        } else {
            &first
        }
    ))
}

async fn wrapper(
    client: &mut SaltClient,
    bus: &mut Bus,
    w: &WrapperPlan,
    minions: &[String],
) -> Outcome {
    let start = Instant::now();
    let mut probe = Publish::new(Tgt::List(minions.to_vec()), "list", "cmd.run_all");
    probe
        .kwargs
        .insert("cmd".into(), wrapper_probe(&w.path).into());
    probe.kwargs.insert("python_shell".into(), true.into());
    probe.kwargs.insert("shell".into(), "/bin/sh".into());
    probe.kwargs.insert("timeout".into(), 8u64.into());
    let g = match publish_gather(client, bus, &probe, start + GATHER_WITHIN).await {
        Ok(g) => g,
        Err(GatherError::Timeout) => return too_slow(),
        Err(GatherError::Publish(e)) => {
            return fail(
                format!("publishing cmd.run_all: {e}"),
                "see the salt-master's log",
            );
        }
    };
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut problems: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in minions {
        let judged = match g.returns.get(m) {
            None => Err(format!("no answer within {}s", GATHER_WITHIN.as_secs())),
            Some(ret) => {
                let json = wire::to_json(&ret.ret);
                match json.get("stdout").and_then(Value::as_str) {
                    Some(out) => judge_wrapper(w, out),
                    None => Err(format!("Salt: {}", ret.pretty())),
                }
            }
        };
        match judged {
            Ok(v) => found.entry(v).or_default().push(m.clone()),
            Err(p) => problems.entry(p).or_default().push(m.clone()),
        }
    }
    if problems.is_empty() {
        return Outcome::Ok(format!("{} on {}", w.path, grouped(&found)));
    }
    let original = problems.keys().any(|p| p.starts_with("the original"));
    let fix = if original {
        "state.apply saltpeter.wrapper, then set wrapper_path (or default_wrapper_path) to the \
         installed sp-wrapper; or keep the original with allow_legacy_wrappers: true (and a \
         wrapper_path not named sp-wrapper)"
            .to_string()
    } else {
        format!(
            "state.apply saltpeter.wrapper (with pillar saltpeter:wrapper:path: {}), or correct \
             the job's wrapper_path",
            w.path
        )
    };
    let mut all = problems;
    for (v, ms) in found {
        all.entry(v).or_default().extend(ms);
    }
    fail(grouped(&all), fix)
}

/// `GET /api/v1/status`.
fn api_status(url: &str) -> Outcome {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let start_it = "start the daemon: systemctl start saltpeter";
    match agent.get(url).call() {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let body: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
            if status != 200 {
                return fail(
                    format!("answered HTTP {status}: {body}"),
                    "see the daemon's log (journalctl -u saltpeter)",
                );
            }
            let version = body["version"].as_str().unwrap_or("?");
            let mine = if version == saltpeter::VERSION {
                String::new()
            } else {
                format!(" (this doctor is {})", saltpeter::VERSION)
            };
            Outcome::Ok(format!(
                "saltpeter {version}{mine}, {} job(s), {} run(s) in flight",
                body["jobs"].as_u64().unwrap_or(0),
                body["running"].as_array().map_or(0, Vec::len)
            ))
        }
        Err(ureq::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            fail("connection refused (no daemon listens)", start_it)
        }
        Err(e) => fail(
            e.to_string(),
            format!("{start_it}; check api_ws_bind_addr and api_ws_port"),
        ),
    }
}

/// The database check: a SQLite file writable (or creatable), or a PostgreSQL server that
/// answers, with the schema version found.
fn probe_database(database: saltpeter::history::db::Database) -> Outcome {
    use saltpeter::history::db::Database;
    let shown = database.shown();
    let postgres = matches!(database, Database::Postgres(_));
    match bounded(move || probe::probe_database(&database, Duration::from_secs(5))) {
        None => too_slow(),
        Some(Ok(Probe::Writable { schema })) if postgres => Outcome::Ok(format!(
            "{shown} answers (schema version {schema}; the daemon migrates it at start)"
        )),
        Some(Ok(Probe::Writable { schema })) => {
            Outcome::Ok(format!("{shown} is writable (schema version {schema})"))
        }
        Some(Ok(Probe::NotYet { dir, exists })) => Outcome::Ok(format!(
            "{shown} does not exist yet; {} {} (the daemon creates it at start)",
            dir.display(),
            if exists {
                "takes new files"
            } else {
                "can be created"
            }
        )),
        Some(Err(e)) if postgres => fail(
            e.to_string(),
            "check that the PostgreSQL server is up and reachable from here, and the user, \
             password, database and TLS options (sslmode, sslrootcert) in saltpeter_config.database",
        ),
        Some(Err(e)) => fail(
            e.to_string(),
            "let the daemon's user write the database's directory (the systemd unit's \
             StateDirectory=saltpeter gives /var/lib/saltpeter), or set saltpeter_config.database",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(path: &str, legacy_allowed: bool) -> WrapperPlan {
        WrapperPlan {
            path: path.into(),
            legacy_allowed,
        }
    }

    #[test]
    fn wrappers_are_told_apart() {
        let sp = plan("/usr/local/bin/sp-wrapper", false);
        assert_eq!(
            judge_wrapper(&sp, "kind:binary\nrc:0\nsp-wrapper 0.1.0 (protocol 1)\n"),
            Ok("sp-wrapper 0.1.0 (protocol 1)".into())
        );
        assert_eq!(
            judge_wrapper(&sp, "kind:missing\n"),
            Err("no file at /usr/local/bin/sp-wrapper".into())
        );
        assert_eq!(
            judge_wrapper(
                &sp,
                "kind:binary\nrc:2\nSaltpeter Wrapper version 0.0.9\nError: SP_X\n"
            ),
            Ok("sp-wrapper 0.0.9 (older, without --version)".into())
        );
        let py = plan("/usr/local/bin/sp_wrapper.py", false);
        let out = "kind:python\nrc:1\nSaltpeter Wrapper version 0.9.30\nError: SP_WEBSOCKET_URL\n";
        assert_eq!(
            judge_wrapper(&py, out),
            Err("the original Python wrapper 0.9.30".into())
        );
        assert_eq!(
            judge_wrapper(&plan("/usr/local/bin/sp_wrapper.py", true), out),
            Ok("the original Python wrapper 0.9.30 (allow_legacy_wrappers: true)".into())
        );
        assert!(judge_wrapper(&sp, "kind:script\nrc:127\n").is_err());
    }

    #[test]
    fn api_hosts_for_bind_addresses() {
        assert_eq!(loopback_for("0.0.0.0"), "127.0.0.1");
        assert_eq!(loopback_for("::"), "[::1]");
        assert_eq!(loopback_for("fe80::1"), "[fe80::1]");
        assert_eq!(loopback_for("10.0.0.5"), "10.0.0.5");
    }
}
