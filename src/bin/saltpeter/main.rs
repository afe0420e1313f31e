//! The `saltpeter` command: the daemon (`run`), the operator's tools (`check`, `next`,
//! `import-crontab`, `tap`, `salt`, `doctor`, `token`) and the API clients (`status`, `runs`, `slots`, `output`,
//! `run-now`, `kill`, `maintenance`). Parses arguments, calls the library, maps outcomes to exit
//! codes.

mod client;
mod doctor;
mod notify_test;
mod salt_cmd;
mod tap;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use saltpeter::config::{self, Loader, TargetType};
use saltpeter::crontab::{self, ImportOptions};
use saltpeter::schedule::format_in_zone;

const DEFAULT_DIR: &str = "/etc/saltpeter";

/// Distributed cron for SaltStack fleets.
#[derive(Parser)]
#[command(name = "saltpeter", version = saltpeter::VERSION, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: load the config directory, keep it reloaded, fire jobs when due.
    Run {
        /// The config directory (every *.yaml and *.yml in it).
        #[arg(short = 'c', long = "configdir", value_name = "DIR", default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// Log filter, e.g. `debug` or `saltpeter=debug` (also read from SALTPETER_LOG).
        #[arg(long, value_name = "FILTER")]
        log: Option<String>,
    },
    /// Validate the config directory: print every finding as `file:line:col: severity: message`
    /// and a summary; exit 0 only when there is no error.
    Check {
        #[arg(short = 'c', long = "configdir", value_name = "DIR", default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Print a job's next fire times (RFC 3339, in the job's time zone), exactly as the daemon
    /// will fire them.
    Next {
        #[arg(short = 'c', long = "configdir", value_name = "DIR", default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// The job's name.
        job: String,
        /// How many fire times to print.
        #[arg(short = 'n', value_name = "N", default_value_t = 10)]
        count: usize,
        /// Start after this instant (RFC 3339, e.g. 2025-03-30T00:00:00Z) instead of now.
        #[arg(long, value_name = "RFC3339")]
        from: Option<String>,
    },
    /// Send a test notification through each of a job's notification channels (from this
    /// process; nothing is recorded) and print what each answered; exit 0 only when all
    /// delivered.
    NotifyTest {
        #[arg(short = 'c', long = "configdir", value_name = "DIR", default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// The job's name.
        job: String,
        /// Only this channel.
        #[arg(long, value_name = "NAME")]
        channel: Option<String>,
    },
    /// Check a deployment end to end: the config, the Salt master's config and key, a publish
    /// and its returns on the event bus, the machines port and the wrapper as the minions see
    /// them, the database and the API. One line per check; exit 0 only when all pass.
    Doctor {
        #[arg(short = 'c', long = "configdir", value_name = "DIR", default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// The minions to check (default: the targets of the first job that runs the wrapper).
        #[arg(long, value_name = "TGT")]
        target: Option<String>,
        /// The Salt target type of --target (glob, list, grain, compound...).
        #[arg(
            long = "tgt-type",
            short = 'C',
            value_name = "T",
            default_value = "glob"
        )]
        tgt_type: String,
    },
    /// Print the Salt master's event bus live (debugging).
    Tap {
        /// The Salt master's config file (its includes are read too).
        #[arg(long, value_name = "FILE")]
        salt_config: Option<PathBuf>,
        /// Only events whose tag matches this glob (`*`, `?`); repeatable.
        #[arg(long = "tag", value_name = "GLOB")]
        tags: Vec<String>,
        /// Only events of this job.
        #[arg(long)]
        jid: Option<String>,
        /// One JSON object per line (`tag`, `data`) instead of text for people.
        #[arg(long)]
        json: bool,
        /// Exit after this many matching events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Publish a Salt function natively and print each minion's return as it arrives.
    Salt {
        #[arg(long, value_name = "FILE")]
        salt_config: Option<PathBuf>,
        /// Salt target type (glob, list, grain, compound...).
        #[arg(
            long = "tgt-type",
            short = 'C',
            value_name = "T",
            default_value = "glob"
        )]
        tgt_type: String,
        /// Seconds to wait for returns before asking silent minions whether the job runs.
        #[arg(long, short = 't', value_name = "S", default_value_t = 5)]
        timeout: u64,
        /// One JSON object per return, then a summary object.
        #[arg(long)]
        json: bool,
        /// The target expression (a comma-separated list with `--tgt-type list`).
        target: String,
        /// The function, e.g. `test.ping` or `cmd.run`.
        fun: String,
        /// Positional arguments, and `key=value` keyword arguments (values read as YAML).
        /// Put `--` before arguments that start with `-`.
        args: Vec<String>,
    },
    /// The running daemon at a glance: version, maintenance, runs in flight.
    Status {
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// A job's recorded runs, newest first.
    Runs {
        #[command(flatten)]
        api: client::ApiArgs,
        job: String,
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: usize,
    },
    /// A job's fire ledger, newest first: each scheduled slot fired (with its run and result),
    /// skipped or missed (a gap of slots as one line), and its manual runs.
    Slots {
        #[command(flatten)]
        api: client::ApiArgs,
        job: String,
        /// Only rows since this time: RFC 3339, or a span back from now (90m, 2h, 3d, 1w).
        #[arg(long, value_name = "WHEN", value_parser = parse_since)]
        since: Option<String>,
        /// Only rows in this state: fired, skipped, missed (scheduled slots) or manual.
        #[arg(long, value_name = "STATE")]
        state: Option<String>,
        /// How many rows, 1-1000 (the daemon's default: 100).
        #[arg(long, short = 'n', value_name = "N")]
        limit: Option<usize>,
    },
    /// A run's output: every target's, or one's; `--follow` streams it until the target ends
    /// (exit code 3 when a followed target failed).
    Output {
        #[command(flatten)]
        api: client::ApiArgs,
        /// The run's instance id (`<job>_<id>`, see `saltpeter runs`).
        run: String,
        /// One target (minion id).
        target: Option<String>,
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Start a job now (refused during maintenance or while it runs, unless it may overlap).
    RunNow {
        #[command(flatten)]
        api: client::ApiArgs,
        job: String,
    },
    /// Kill a run (by instance id, or a job's running instance), or one target of it.
    Kill {
        #[command(flatten)]
        api: client::ApiArgs,
        /// A run's instance id or a job's name.
        run_or_job: String,
        #[arg(long, value_name = "MINION")]
        target: Option<String>,
    },
    /// Switch maintenance: global (nothing new starts) or for one machine (left out of runs).
    Maintenance {
        #[command(flatten)]
        api: client::ApiArgs,
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[arg(long, value_name = "MINION")]
        machine: Option<String>,
    },
    /// API tokens kept in the store: accepted by every daemon on it (a shared PostgreSQL
    /// store), beside the config's `api_tokens`. Works on the store directly.
    Token {
        #[arg(short = 'c', long = "configdir", value_name = "DIR", default_value = DEFAULT_DIR, global = true)]
        dir: PathBuf,
        #[command(subcommand)]
        action: token::Action,
    },
    /// Convert a crontab into saltpeter job YAML on standard output.
    ImportCrontab {
        /// The crontab file (`-` for standard input).
        file: PathBuf,
        /// The Salt target of every imported job (default: a placeholder to replace).
        #[arg(long, value_name = "T")]
        targets: Option<String>,
        /// The Salt target type.
        #[arg(long, value_name = "TYPE", default_value = "glob", value_parser = parse_target_type)]
        target_type: TargetType,
        /// System crontab format: a user column follows the five time fields.
        #[arg(long)]
        system: bool,
    },
}

fn parse_since(s: &str) -> Result<String, String> {
    client::since(s, saltpeter::clock::now())
}

fn parse_target_type(s: &str) -> Result<TargetType, String> {
    TargetType::parse(s).ok_or_else(|| {
        let all: Vec<&str> = TargetType::ALL.iter().map(|t| t.as_str()).collect();
        format!("unknown target type `{s}` (one of {})", all.join(", "))
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("saltpeter: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { dir, log } => {
            let level = init_logging(log.as_deref());
            block_on(async { Ok(saltpeter::daemon::run(dir, level).await?) })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { dir } => check(&dir),
        Command::NotifyTest { dir, job, channel } => {
            notify_test::run(&dir, &job, channel.as_deref())
        }
        Command::Doctor {
            dir,
            target,
            tgt_type,
        } => doctor::run(doctor::DoctorArgs {
            dir,
            target,
            tgt_type,
        }),
        Command::Status { api } => client::status(&api),
        Command::Runs { api, job, limit } => client::runs(&api, &job, limit),
        Command::Slots {
            api,
            job,
            since,
            state,
            limit,
        } => client::slots(&api, &job, since.as_deref(), state.as_deref(), limit),
        Command::Output {
            api,
            run,
            target,
            follow,
        } => client::output(&api, &run, target.as_deref(), follow),
        Command::RunNow { api, job } => client::run_now(&api, &job),
        Command::Kill {
            api,
            run_or_job,
            target,
        } => client::kill(&api, &run_or_job, target.as_deref()),
        Command::Maintenance {
            api,
            state,
            machine,
        } => client::maintenance(&api, state == "on", machine.as_deref()),
        Command::Tap {
            salt_config,
            tags,
            jid,
            json,
            count,
        } => block_on(tap::run(tap::TapArgs {
            salt_config,
            tags,
            jid,
            json,
            count,
        })),
        Command::Salt {
            salt_config,
            tgt_type,
            timeout,
            json,
            target,
            fun,
            args,
        } => block_on(salt_cmd::run(salt_cmd::SaltArgs {
            salt_config,
            tgt_type,
            timeout,
            json,
            target,
            fun,
            args,
        })),
        Command::Next {
            dir,
            job,
            count,
            from,
        } => next(&dir, &job, count, from.as_deref()),
        Command::Token { dir, action } => token::run(&dir, action),
        Command::ImportCrontab {
            file,
            targets,
            target_type,
            system,
        } => import(&file, targets, target_type, system),
    }
}

fn block_on<T>(future: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(future)
}

/// Sets up logging; the returned switch lets `saltpeter_config.debug` change the level on
/// reload, unless the operator chose a filter (`--log`, SALTPETER_LOG), which always wins.
fn init_logging(filter: Option<&str>) -> saltpeter::daemon::LogLevel {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, reload};
    let explicit = match filter {
        Some(f) => Some(EnvFilter::new(f)),
        None => EnvFilter::try_from_env("SALTPETER_LOG").ok(),
    };
    let chosen = explicit.is_some();
    let (layer, handle) = reload::Layer::new(explicit.unwrap_or_else(|| EnvFilter::new("info")));
    use std::io::IsTerminal;
    tracing_subscriber::registry()
        .with(layer)
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_ansi(std::io::stdout().is_terminal()),
        )
        .init();
    Box::new(move |debug: bool| {
        if chosen {
            return false;
        }
        let level = if debug { "debug" } else { "info" };
        handle.reload(EnvFilter::new(level)).is_ok()
    })
}

fn check(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let files = config::read_dir(dir)?;
    let loaded = Loader::new(&saltpeter::hostname()).load(&files);
    for d in &loaded.diagnostics {
        println!("{d}");
    }
    println!(
        "{} error(s), {} warning(s) in {} file(s); {} job(s) valid",
        loaded.errors(),
        loaded.warnings(),
        files.len(),
        loaded.config.jobs.len()
    );
    Ok(if loaded.errors() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn next(
    dir: &std::path::Path,
    name: &str,
    count: usize,
    from: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let files = config::read_dir(dir)?;
    let loaded = Loader::new(&saltpeter::hostname()).load(&files);
    let Some(job) = loaded.config.jobs.get(name) else {
        let mut msg = format!("no valid job named `{name}` in {}", dir.display());
        let close = loaded
            .config
            .jobs
            .keys()
            .find(|k| strsim::damerau_levenshtein(k, name) <= 2);
        if let Some(close) = close {
            msg += &format!("; did you mean `{close}`?");
        }
        if loaded.errors() > 0 {
            msg += &format!(
                " ({} error(s) in the directory: run `saltpeter check -c {}`)",
                loaded.errors(),
                dir.display()
            );
        }
        eprintln!("saltpeter: {msg}");
        return Ok(ExitCode::FAILURE);
    };
    let mut at = match from {
        Some(text) => text.parse::<jiff::Timestamp>().with_context(|| {
            format!("--from `{text}` is not an RFC 3339 time such as 2025-03-30T00:00:00Z")
        })?,
        None => saltpeter::clock::now(),
    };
    for _ in 0..count {
        let Some(next) = job.schedule.next_after(at) else {
            eprintln!("saltpeter: `{name}` has no fire time after {at} (schedules end in 2099)");
            break;
        };
        println!("{}", format_in_zone(next, job.schedule.time_zone()));
        at = next;
    }
    Ok(ExitCode::SUCCESS)
}

fn import(
    file: &std::path::Path,
    targets: Option<String>,
    target_type: TargetType,
    system: bool,
) -> anyhow::Result<ExitCode> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read standard input")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let opts = ImportOptions {
        targets,
        target_type,
        system,
        source_name: file.display().to_string(),
    };
    let out = crontab::import(&text, &opts);
    print!("{}", out.yaml);
    for w in &out.warnings {
        eprintln!("saltpeter: warning: {w}");
    }
    for r in &out.rejected {
        eprintln!("saltpeter: error: not imported: {r}");
    }
    eprintln!(
        "saltpeter: {} job(s) imported, {} line(s) rejected",
        out.jobs,
        out.rejected.len()
    );
    Ok(if out.rejected.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
