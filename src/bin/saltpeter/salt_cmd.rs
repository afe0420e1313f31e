//! `saltpeter salt`: publishes one function natively (no Python start-up), prints each
//! minion's return as it arrives, then a summary. Exit 0 only if every expected minion
//! returned retcode 0.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use saltpeter::salt::gather::MinionState;
use saltpeter::salt::job::{self, Progress};
use saltpeter::salt::{JobRet, Publish, SaltClient, SaltSettings, Tgt, args, bus, wire};
use serde_json::json;
use tokio::sync::mpsc;

pub struct SaltArgs {
    pub salt_config: Option<PathBuf>,
    pub tgt_type: String,
    pub timeout: u64,
    pub json: bool,
    pub target: String,
    pub fun: String,
    pub args: Vec<String>,
}

/// Salt's default `gather_job_timeout`.
const GATHER_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(a: SaltArgs) -> anyhow::Result<ExitCode> {
    let settings = SaltSettings::load(a.salt_config.as_deref())?;
    let (tx, mut rx) = mpsc::channel(4096);
    tokio::spawn(bus::subscribe(settings.event_source(), tx));
    job::wait_connected(&mut rx, Duration::from_secs(10)).await?;
    let tgt = if a.tgt_type == "list" {
        Tgt::List(a.target.split(',').map(str::to_string).collect())
    } else {
        Tgt::Expr(a.target.clone())
    };
    let mut publish = Publish::new(tgt, &a.tgt_type, &a.fun);
    (publish.args, publish.kwargs) = args::split(&a.args);
    let mut client = SaltClient::new(settings);
    let json_out = a.json;
    let mut out = std::io::stdout().lock();
    let gather = job::run(
        &mut client,
        &mut rx,
        publish,
        Duration::from_secs(a.timeout),
        GATHER_TIMEOUT,
        |p| {
            let _ = show(&mut out, &p, json_out);
        },
    )
    .await?;

    let mut ok = Vec::new();
    let mut failed = Vec::new();
    let mut silent = Vec::new();
    for (minion, state) in gather.minions() {
        match state {
            MinionState::Returned(ret) if succeeded(ret) => ok.push(minion.as_str()),
            MinionState::Returned(ret) => {
                failed.push(format!("{minion} (retcode {})", ret.retcode.unwrap_or(1)))
            }
            MinionState::NoReturn(why) => silent.push(format!("{minion} ({})", why.as_str())),
            MinionState::Waiting | MinionState::Sending | MinionState::Probed => {
                silent.push(format!("{minion} (no answer)"))
            }
        }
    }
    if a.json {
        let line = json!({"summary": {"jid": gather.jid(), "succeeded": ok, "failed": failed, "did_not_return": silent}});
        let _ = writeln!(out, "{line}");
    } else {
        let _ = writeln!(
            out,
            "\n{} returned: {} succeeded, {} failed{}; {} did not return{}",
            ok.len() + failed.len(),
            ok.len(),
            failed.len(),
            if failed.is_empty() {
                String::new()
            } else {
                format!(" ({})", failed.join(", "))
            },
            silent.len(),
            if silent.is_empty() {
                String::new()
            } else {
                format!(" ({})", silent.join(", "))
            },
        );
    }
    Ok(if failed.is_empty() && silent.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn succeeded(ret: &JobRet) -> bool {
    ret.retcode.map_or(ret.success != Some(false), |c| c == 0)
}

fn show(out: &mut impl Write, p: &Progress<'_>, json_out: bool) -> std::io::Result<()> {
    match p {
        Progress::Published(published) => {
            if !json_out {
                eprintln!(
                    "jid {}: expecting {} minion(s)",
                    published.jid,
                    published.minions.len()
                );
            }
        }
        Progress::Returned { ret, recovered } => {
            if json_out {
                let line = json!({"minion": ret.id, "return": wire::to_json(&ret.ret), "retcode": ret.retcode,
                    "success": ret.success, "recovered": recovered});
                writeln!(out, "{line}")?;
            } else {
                let code = match ret.retcode {
                    Some(c) if c != 0 => format!(" (retcode {c})"),
                    _ => String::new(),
                };
                let note = if *recovered {
                    " [recovered from the job cache]"
                } else {
                    ""
                };
                writeln!(out, "{}:{code}{note}", ret.id)?;
                let text = ret.pretty();
                for line in text.lines() {
                    writeln!(out, "    {line}")?;
                }
            }
        }
        Progress::Probing(minions) => eprintln!(
            "no return yet from {}; asking whether the job runs there",
            minions.join(", ")
        ),
        Progress::BusDown(reason) => eprintln!("event bus lost ({reason}); reconnecting"),
        Progress::BusUp => eprintln!("event bus back; recovering returns from the job cache"),
    }
    out.flush()
}
