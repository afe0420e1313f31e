//! The operator's commands that talk to a running daemon through its REST API (`status`,
//! `runs`, `slots`, `output`, `run-now`, `kill`, `maintenance`): human output by default,
//! `--json` for scripts. Exit codes: 0 done, 1 refused by the daemon (the reason is printed),
//! 2 no daemon, 3 a followed target ended with a non-zero exit code.

use std::io::{BufRead, BufReader, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use serde_json::Value;

#[derive(clap::Args, Clone, Debug)]
pub struct ApiArgs {
    /// The daemon's API.
    #[arg(
        long,
        value_name = "URL",
        env = "SALTPETER_API",
        default_value = "http://127.0.0.1:8888"
    )]
    pub api: String,
    /// A bearer token (needed for run-now, kill and maintenance when the API is guarded).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "SALTPETER_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Print the API's JSON instead of text for people.
    #[arg(long)]
    pub json: bool,
}

/// What the daemon answered: its status and JSON body.
struct Answer {
    status: u16,
    body: Value,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(5)))
        .build()
        .into()
}

fn call(api: &ApiArgs, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Answer> {
    let url = format!("{}{path}", api.api.trim_end_matches('/'));
    let mut req = ureq::http::Request::builder().method(method).uri(&url);
    if let Some(t) = &api.token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    // The API refuses a mutation a web page could have sent; this header says it is not one.
    if method != "GET" {
        req = req.header(saltpeter::api::REQUEST_HEADER, "1");
    }
    let text = body.map(|b| b.to_string()).unwrap_or_default();
    if !text.is_empty() {
        req = req.header("content-type", "application/json");
    }
    let req = req.body(text).context("bad request")?;
    let mut resp = agent()
        .run(req)
        .with_context(|| format!("cannot reach the saltpeter API at {}", api.api))?;
    let status = resp.status().as_u16();
    let raw = resp.body_mut().read_to_string().unwrap_or_default();
    let body = serde_json::from_str(&raw).unwrap_or(Value::String(raw));
    Ok(Answer { status, body })
}

/// A 2xx answer's body, or the daemon's reason as an error (exit 1).
fn ok(answer: Answer) -> Result<Value, Refused> {
    if (200..300).contains(&answer.status) {
        Ok(answer.body)
    } else {
        let why = answer.body["error"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| answer.body.to_string());
        Err(Refused(format!("{why} (HTTP {})", answer.status)))
    }
}

#[derive(Debug)]
struct Refused(String);

fn finish(
    api: &ApiArgs,
    result: anyhow::Result<Result<Value, Refused>>,
    human: impl FnOnce(&Value),
) -> anyhow::Result<ExitCode> {
    match result? {
        Ok(v) => {
            if api.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                human(&v);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(Refused(why)) => {
            eprintln!("saltpeter: refused: {why}");
            Ok(ExitCode::from(1))
        }
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

pub fn status(api: &ApiArgs) -> anyhow::Result<ExitCode> {
    let answer = call(api, "GET", "/api/v1/status", None).map(ok);
    finish(api, answer, |v| {
        println!(
            "saltpeter {} · {} job(s) · daemon {}",
            s(&v["version"]),
            v["jobs"],
            s(&v["daemon"])
        );
        // Every daemon sharing the store, its last heartbeat (its lease) and its runs.
        let daemons = v["daemons"].as_array().cloned().unwrap_or_default();
        if daemons.len() > 1 || daemons.iter().any(|d| d["alive"] != true) {
            println!("daemons:");
            for d in &daemons {
                let runs: Vec<&str> = d["runs"].as_array().into_iter().flatten().map(s).collect();
                println!(
                    "  {:<20} {:<5} last heartbeat {} · pid {} on {} · {} run(s){}",
                    s(&d["name"]),
                    if d["alive"] == true { "alive" } else { "DOWN" },
                    s(&d["last_heartbeat"]),
                    d["pid"],
                    s(&d["host"]),
                    runs.len(),
                    if runs.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", runs.join(", "))
                    }
                );
            }
        }
        if v["maintenance"]["global"] == true {
            println!("MAINTENANCE: global (nothing new starts)");
        }
        let machines = v["maintenance"]["machines"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !machines.is_empty() {
            let list: Vec<&str> = machines.iter().map(s).collect();
            println!("machines under maintenance: {}", list.join(", "));
        }
        let running = v["running"].as_array().cloned().unwrap_or_default();
        if running.is_empty() {
            println!("nothing running");
        }
        for r in running {
            println!(
                "running {} (since {}, owned by {})",
                s(&r["instance"]),
                s(&r["started_at"]),
                s(&r["owner"])
            );
            for t in r["targets"].as_array().into_iter().flatten() {
                println!("  {:<24} {}", s(&t["machine"]), target_state(t));
            }
        }
    })
}

fn target_state(t: &Value) -> String {
    match (t["exit_code"].as_i64(), t["note"].as_str()) {
        (Some(c), _) => format!("exit {c} ({})", s(&t["meaning"])),
        // Why a target still waits (e.g. a probe the master did not take, and the next try).
        (None, Some(why)) => format!("{}: {why}", s(&t["state"])),
        (None, None) => s(&t["state"]).to_string(),
    }
}

pub fn runs(api: &ApiArgs, job: &str, limit: usize) -> anyhow::Result<ExitCode> {
    let answer = call(
        api,
        "GET",
        &format!("/api/v1/jobs/{}/runs?limit={limit}", enc(job)),
        None,
    )
    .map(ok);
    finish(api, answer, |v| {
        let runs = v["runs"].as_array().cloned().unwrap_or_default();
        if runs.is_empty() {
            println!("no runs of {job} recorded");
        }
        for r in runs {
            let result = if r["running"] == true {
                "running".to_string()
            } else {
                format!(
                    "{} {}/{}",
                    if r["success"] == true { "ok" } else { "FAILED" },
                    r["succeeded"],
                    r["total"]
                )
            };
            println!(
                "{:<32} {:<9} {:<30} {}",
                s(&r["instance"]),
                s(&r["trigger"]),
                s(&r["started_at"]),
                result
            );
        }
    })
}

/// `--since`: an RFC 3339 time, or a span back from now (`90s`, `90m`, `2h`, `3d`, `1w`),
/// as the RFC 3339 time the API takes.
pub fn since(text: &str, now: jiff::Timestamp) -> Result<String, String> {
    if let Ok(t) = text.parse::<jiff::Timestamp>() {
        return Ok(t.to_string());
    }
    let bad = || {
        format!(
            "`{text}` is neither an RFC 3339 time (2025-01-01T00:00:00Z) nor a span back from now (90m, 2h, 3d, 1w)"
        )
    };
    let unit = text.chars().last().ok_or_else(bad)?;
    let secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => return Err(bad()),
    };
    let n: i64 = text[..text.len() - 1].parse().map_err(|_| bad())?;
    let back = n.checked_mul(secs).filter(|s| *s >= 0).ok_or_else(bad)?;
    now.checked_sub(jiff::SignedDuration::from_secs(back))
        .map(|t| t.to_string())
        .map_err(|_| bad())
}

/// One ledger row as a line: the slot (or `manual` and when it was asked for), the state, the
/// reason, then a gap's extent or a fired row's run and result, then the detail.
fn slot_line(r: &Value) -> String {
    let when = match r["slot"].as_str() {
        Some(slot) => slot.to_string(),
        None => format!("manual {}", s(&r["claimed_at"])),
    };
    let mut rest = Vec::new();
    let count = r["count"].as_i64().unwrap_or(1);
    if count > 1 || r["last"].is_string() {
        rest.push(format!(
            "{count} slots {}..{}",
            s(&r["slot"]),
            r["last"].as_str().unwrap_or(s(&r["slot"]))
        ));
    }
    if r["state"] == "fired" {
        let result = match (r["success"].as_bool(), r["ended"] == true) {
            (Some(true), _) => "ok",
            (Some(false), _) => "failed",
            (None, false) => "running",
            (None, true) => "ended",
        };
        rest.push(format!("{} {result}", s(&r["instance"])));
    }
    if let Some(d) = r["detail"].as_str().filter(|d| !d.is_empty()) {
        rest.push(d.to_string());
    }
    format!(
        "{when:<31} {:<8} {:<18} {}",
        s(&r["state"]),
        s(&r["reason"]),
        rest.join("  ")
    )
}

/// A job's fire ledger, newest first.
pub fn slots(
    api: &ApiArgs,
    job: &str,
    since: Option<&str>,
    state: Option<&str>,
    limit: Option<usize>,
) -> anyhow::Result<ExitCode> {
    let mut query = Vec::new();
    if let Some(t) = since {
        query.push(format!("since={}", enc(t)));
    }
    if let Some(st) = state {
        query.push(format!("state={}", enc(st)));
    }
    if let Some(n) = limit {
        query.push(format!("limit={n}"));
    }
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{}", query.join("&"))
    };
    let answer = call(
        api,
        "GET",
        &format!("/api/v1/jobs/{}/slots{query}", enc(job)),
        None,
    )
    .map(ok);
    finish(api, answer, |v| {
        let rows = v["slots"].as_array().cloned().unwrap_or_default();
        if rows.is_empty() {
            println!("no slots of {job} recorded");
        }
        for r in &rows {
            println!("{}", slot_line(r).trim_end());
        }
    })
}

pub fn run_now(api: &ApiArgs, job: &str) -> anyhow::Result<ExitCode> {
    let answer = call(api, "POST", &format!("/api/v1/jobs/{}/run", enc(job)), None).map(ok);
    finish(api, answer, |v| println!("started {}", s(&v["instance"])))
}

pub fn kill(api: &ApiArgs, what: &str, target: Option<&str>) -> anyhow::Result<ExitCode> {
    // A job's name kills its running instance; anything else is an instance.
    let is_job = call(api, "GET", &format!("/api/v1/jobs/{}", enc(what)), None)?.status == 200;
    let base = if is_job { "jobs" } else { "runs" };
    let query = target
        .map(|m| format!("?machine={}", enc(m)))
        .unwrap_or_default();
    let answer = call(
        api,
        "POST",
        &format!("/api/v1/{base}/{}/kill{query}", enc(what)),
        None,
    )
    .map(ok);
    finish(api, answer, |v| match target {
        Some(m) => println!("killing {m} of {}", s(&v["instance"])),
        None => println!("killing {}", s(&v["instance"])),
    })
}

pub fn maintenance(api: &ApiArgs, on: bool, machine: Option<&str>) -> anyhow::Result<ExitCode> {
    let mut body = serde_json::json!({ "on": on });
    if let Some(m) = machine {
        body["machine"] = Value::from(m);
    }
    let answer = call(api, "POST", "/api/v1/maintenance", Some(body)).map(ok);
    finish(api, answer, |v| {
        println!(
            "global maintenance: {}",
            if v["global"] == true { "on" } else { "off" }
        );
        let list: Vec<&str> = v["machines"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect();
        println!(
            "machines under maintenance: {}",
            if list.is_empty() {
                "none".to_string()
            } else {
                list.join(", ")
            }
        );
    })
}

/// Prints a run's output (every target, or one); `follow` streams it until the target ends.
pub fn output(
    api: &ApiArgs,
    run: &str,
    target: Option<&str>,
    follow: bool,
) -> anyhow::Result<ExitCode> {
    let detail = match ok(call(
        api,
        "GET",
        &format!("/api/v1/runs/{}", enc(run)),
        None,
    )?) {
        Ok(d) => d,
        Err(Refused(why)) => {
            eprintln!("saltpeter: {why}");
            return Ok(ExitCode::from(1));
        }
    };
    let machines: Vec<String> = detail["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| s(&t["machine"]).to_string())
        .filter(|m| target.is_none_or(|t| t == m))
        .collect();
    if machines.is_empty() {
        eprintln!("saltpeter: {run} has no target {}", target.unwrap_or("yet"));
        return Ok(ExitCode::from(1));
    }
    let many = machines.len() > 1;
    let mut worst = 0;
    for m in &machines {
        if many && !api.json {
            println!("==> {m} <==");
        }
        let code = if follow {
            follow_one(api, run, m)?
        } else {
            let v = ok(call(
                api,
                "GET",
                &format!("/api/v1/runs/{}/targets/{}/output", enc(run), enc(m)),
                None,
            )?)
            .map_err(|Refused(w)| anyhow!(w))?;
            if api.json {
                println!("{}", serde_json::json!({ "machine": m, "output": v }));
            } else {
                print!("{}", s(&v["text"]));
            }
            0
        };
        worst = worst.max(code);
    }
    std::io::stdout().flush()?;
    Ok(if worst != 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

/// Streams one target's output (server-sent events) and reports its end on stderr.
fn follow_one(api: &ApiArgs, run: &str, machine: &str) -> anyhow::Result<i64> {
    let url = format!(
        "{}/api/v1/runs/{}/targets/{}/output/stream",
        api.api.trim_end_matches('/'),
        enc(run),
        enc(machine)
    );
    let mut resp = agent()
        .get(&url)
        .call()
        .with_context(|| format!("cannot reach the saltpeter API at {}", api.api))?;
    if resp.status().as_u16() != 200 {
        let why = resp.body_mut().read_to_string().unwrap_or_default();
        return Err(anyhow!("{run}:{machine}: HTTP {}: {why}", resp.status()));
    }
    eprintln!("following {run}:{machine} (Ctrl-C to stop)");
    let reader = BufReader::new(resp.body_mut().as_reader());
    let mut event = String::new();
    let mut out = std::io::stdout();
    let mut code = None;
    for line in reader.lines() {
        let line = line?;
        if let Some(e) = line.strip_prefix("event: ") {
            event = e.to_string();
        } else if let Some(data) = line.strip_prefix("data: ") {
            let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
            if api.json {
                println!(
                    "{}",
                    serde_json::json!({ "event": event, "machine": machine, "data": v })
                );
                continue;
            }
            match event.as_str() {
                "output" => {
                    write!(out, "{}", s(&v["text"]))?;
                    out.flush()?;
                }
                "end" => {
                    let c = v["exit_code"].as_i64().unwrap_or(255);
                    code = Some(c);
                    eprintln!(
                        "{run}:{machine} ended: exit code {c} ({})",
                        s(&v["meaning"])
                    );
                }
                _ => {}
            }
        }
    }
    code.ok_or_else(|| anyhow!("the stream of {run}:{machine} ended before the target did"))
}

/// Percent-encodes a path segment.
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{since, slot_line};

    #[test]
    fn since_takes_rfc3339_or_a_span_back_from_now() {
        let now: jiff::Timestamp = "2025-01-04T12:00:00Z".parse().unwrap();
        assert_eq!(
            since("2025-01-01T01:00:00+01:00", now).unwrap(),
            "2025-01-01T00:00:00Z"
        );
        assert_eq!(since("90m", now).unwrap(), "2025-01-04T10:30:00Z");
        assert_eq!(since("2h", now).unwrap(), "2025-01-04T10:00:00Z");
        assert_eq!(since("3d", now).unwrap(), "2025-01-01T12:00:00Z");
        assert_eq!(since("30s", now).unwrap(), "2025-01-04T11:59:30Z");
        for bad in ["", "h", "2x", "-2h", "yesterday", "99999999999999w"] {
            assert!(since(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_slot_line_shows_a_gap_a_run_and_the_detail() {
        let gap = json!({"slot": "2025-01-01T00:01:00Z", "last": "2025-01-03T23:59:00Z", "count": 4319,
            "state": "missed", "reason": "daemon down", "detail": "", "instance": null, "success": null, "ended": false});
        let line = slot_line(&gap);
        assert!(line.starts_with("2025-01-01T00:01:00Z"), "{line}");
        assert!(
            line.contains("missed   daemon down")
                && line.contains("4319 slots 2025-01-01T00:01:00Z..2025-01-03T23:59:00Z"),
            "{line}"
        );
        let manual = json!({"slot": null, "last": null, "count": 1, "state": "fired", "reason": null,
            "detail": "", "instance": "j_1735689600", "claimed_at": "2025-01-01T00:00:00Z", "success": null, "ended": false});
        let line = slot_line(&manual);
        assert!(line.starts_with("manual 2025-01-01T00:00:00Z"), "{line}");
        assert!(line.trim_end().ends_with("j_1735689600 running"), "{line}");
        let skipped = json!({"slot": "2025-01-01T00:02:00Z", "last": null, "count": 1, "state": "skipped",
            "reason": "overlap", "detail": "j_1 is still running", "instance": null, "success": null, "ended": false});
        let line = slot_line(&skipped);
        assert!(
            line.contains("skipped  overlap") && line.ends_with("j_1 is still running"),
            "{line}"
        );
        assert!(!line.contains("slots"), "{line}");
    }
}
