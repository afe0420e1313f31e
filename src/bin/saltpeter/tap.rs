//! `saltpeter tap`: prints the master's event bus live, for people or as JSON lines. Survives
//! master restarts; with `--jid`, that job's returns already sent (or sent while the bus was
//! down) are read from the master's job cache.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use saltpeter::salt::bus::{self, BusMessage};
use saltpeter::salt::{Event, SaltSettings, jobcache, wire};
use tokio::sync::mpsc;

pub struct TapArgs {
    pub salt_config: Option<PathBuf>,
    pub tags: Vec<String>,
    pub jid: Option<String>,
    pub json: bool,
    pub count: Option<u64>,
}

pub async fn run(args: TapArgs) -> anyhow::Result<ExitCode> {
    let settings = SaltSettings::load(args.salt_config.as_deref())?;
    let source = settings.event_source();
    let (tx, mut rx) = mpsc::channel(4096);
    tokio::spawn(bus::subscribe(source.clone(), tx));
    let mut out = std::io::stdout().lock();
    let mut matched = 0u64;
    let mut seen_rets: BTreeSet<String> = BTreeSet::new();
    let mut connected_once = false;
    let mut down_reason: Option<String> = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let message = tokio::select! {
            m = rx.recv() => m,
            _ = &mut ctrl_c => return Ok(ExitCode::SUCCESS),
        };
        let Some(message) = message else {
            return Ok(ExitCode::FAILURE);
        };
        let mut events: Vec<(Event, bool)> = Vec::new();
        match message {
            BusMessage::Connected(src) => {
                if connected_once {
                    eprintln!("tap: reconnected to {src}");
                } else {
                    eprintln!("tap: listening on {src}");
                }
                // Returns of the watched job that the bus cannot show again (already sent, or
                // sent while disconnected) are in the master's job cache.
                if let Some(jid) = &args.jid {
                    for ret in jobcache::returns(&settings.cachedir, &settings.hash_type, jid)
                        .unwrap_or_default()
                    {
                        events.push((ret.to_event(), true));
                    }
                }
                connected_once = true;
                down_reason = None;
            }
            BusMessage::Disconnected { reason, retry_in } => {
                if down_reason.as_deref() != Some(reason.as_str()) {
                    eprintln!(
                        "tap: event bus at {source} unavailable ({reason}); reconnecting every {retry_in:?} or so"
                    );
                    down_reason = Some(reason);
                }
            }
            BusMessage::BadFrame(e) => eprintln!("tap: {e}"),
            BusMessage::BadEvent(e) => eprintln!("tap: skipped an undecodable event: {e}"),
            BusMessage::Event(e) => events.push((e, false)),
        }
        for (event, recovered) in events {
            if !matches(&event, &args) {
                continue;
            }
            if event.job_ret().is_some() && !seen_rets.insert(event.tag.clone()) {
                continue;
            }
            if print(&mut out, &event, recovered, args.json).is_err() {
                return Ok(ExitCode::SUCCESS); // stdout closed (e.g. piped into `head`)
            }
            matched += 1;
            if args.count.is_some_and(|n| matched >= n) {
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

fn matches(event: &Event, args: &TapArgs) -> bool {
    let tag_ok = args.tags.is_empty() || args.tags.iter().any(|g| glob_match(g, &event.tag));
    let jid_ok = args
        .jid
        .as_ref()
        .is_none_or(|j| event.jid() == Some(j.as_str()) || event.tag == *j);
    tag_ok && jid_ok
}

fn print(out: &mut impl Write, event: &Event, recovered: bool, json: bool) -> std::io::Result<()> {
    if json {
        let mut j = event.to_json();
        if recovered {
            j["recovered"] = serde_json::Value::Bool(true);
        }
        writeln!(out, "{j}")?;
    } else {
        let when = wire::get(&event.data, "_stamp")
            .and_then(|s| wire::parse_stamp(&wire::value_text(s)))
            .unwrap_or_else(saltpeter::clock::now);
        let note = if recovered {
            "  (recovered from the job cache)"
        } else {
            ""
        };
        writeln!(out, "{} {}{note}", when.strftime("%H:%M:%S%.3f"), event.tag)?;
        let pretty = serde_json::to_string_pretty(&wire::to_json(&event.data)).unwrap_or_default();
        for line in pretty.lines() {
            writeln!(out, "    {line}")?;
        }
    }
    out.flush()
}

/// `*` (any run) and `?` (one character) glob matching.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("salt/job/*/ret/*", "salt/job/1/ret/m1"));
        assert!(glob_match("salt/auth", "salt/auth"));
        assert!(!glob_match("salt/job/*/new", "salt/job/1/ret/m1"));
        assert!(glob_match("minion_?", "minion_1"));
        assert!(glob_match("*", ""));
    }
}
