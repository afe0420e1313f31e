//! The operator's commands that talk to a running daemon through its REST API (`status`,
//! `runs`, `output`, `run-now`, `kill`, `maintenance`): human output by default, `--json` for
//! scripts. Exit codes: 0 done, 1 refused by the daemon (the reason is printed), 2 no daemon,
//! 3 a followed target ended with a non-zero exit code.

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
        println!("saltpeter {} · {} job(s)", s(&v["version"]), v["jobs"]);
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
                "running {} (since {})",
                s(&r["instance"]),
                s(&r["started_at"])
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
