//! The HTTP API through real sockets, with no Salt master (a run's launch waits for it, so it
//! stays in flight): REST answers and refusals, maintenance that survives a restart, tokens,
//! what a browser may be made to send (forms, other sites, DNS rebinding), the WebSocket Origin
//! check, and the original UI's WebSocket message sequence.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

use crate::support::{Daemon, dead_master, free_port, http, write};

/// `long` never comes due by itself; `other` neither. The master is unreachable.
fn setup(dir: &std::path::Path, extra_job: &str) {
    let master = dead_master(&dir.join("salt"), free_port());
    write(
        dir,
        "01-settings.yaml",
        &format!(
            "saltpeter_config:\n  salt_master_config: {}\n  logdir: {}\n",
            master.display(),
            dir.join("log").display()
        ),
    );
    let job = |name: &str| {
        format!(
            "{name}:\n  sec: 0\n  min: 0\n  hour: 0\n  dom: 1\n  mon: 1\n  dow: '*'\n  year: 2099\n  targets: '*'\n  command: echo hi\n  env:\n    API_SECRET: hunter2\n{extra_job}"
        )
    };
    write(dir, "jobs.yaml", &[job("long"), job("other")].concat());
}

/// A mutation as a program sends it: with the header no web page can send without a preflight.
fn act(d: &Daemon, path: &str) -> (u16, Value) {
    http(
        "POST",
        &format!("{}{path}", d.api()),
        None,
        &[("x-saltpeter-request", "1")],
    )
}

/// One HTTP/1.1 exchange with exactly these header lines (a browser's, a form's, a rebinding
/// page's): the status and the JSON body, or `Null`.
fn raw(port: u16, request: &str, head: &[&str], body: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut text = format!("{request} HTTP/1.1\r\n");
    for line in head {
        text.push_str(line);
        text.push_str("\r\n");
    }
    text.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    stream.write_all(text.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok());
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (
        status.unwrap_or_else(|| panic!("not HTTP: {answer}")),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

#[test]
fn rest_answers_refusals_and_maintenance_that_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), "");
    let mut d = Daemon::start(dir.path());
    d.wait_api();

    let (code, jobs) = d.call("GET", "/api/v1/jobs", None);
    assert_eq!(code, 200);
    let list = jobs["jobs"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["name"], "long");
    assert_eq!(list[0]["next_runs"][0], "2099-01-01T00:00:00Z");
    assert_eq!(list[0]["env"], json!(["API_SECRET"]));
    for path in ["/api/v1/jobs", "/config", "/api/v1/jobs/long"] {
        let (_, body) = d.call("GET", path, None);
        assert!(!body.to_string().contains("hunter2"), "{path} leaks env");
    }

    let (code, started) = act(&d, "/api/v1/jobs/long/run");
    assert_eq!(code, 202, "{started}");
    let instance = started["instance"].as_str().unwrap().to_string();
    assert!(instance.starts_with("long_"));
    // The launch waits for the master: the run stays in flight, and a second click is refused.
    let (code, again) = act(&d, "/api/v1/jobs/long/run");
    assert_eq!(code, 409, "{again}");
    assert!(
        again["error"]
            .as_str()
            .unwrap()
            .contains(&format!("{instance} is still running")),
        "{again}"
    );
    let (code, run) = d.call("GET", &format!("/api/v1/runs/{instance}"), None);
    assert_eq!(code, 200);
    assert_eq!(
        (run["trigger"].as_str(), run["running"].as_bool()),
        (Some("manual"), Some(true))
    );
    let (_, runs) = d.call("GET", "/api/v1/jobs/long/runs?limit=5", None);
    assert_eq!(runs["runs"][0]["instance"], instance.as_str());
    let (_, status) = d.call("GET", "/running", None);
    assert_eq!(status[&instance]["name"], "long");

    // Refusals: each a JSON error with the right status.
    let (code, e) = act(&d, "/api/v1/jobs/nope/run");
    assert_eq!(
        (code, e["error"].as_str()),
        (404, Some("no job named \"nope\""))
    );
    let (code, e) = act(&d, &format!("/api/v1/runs/{instance}/kill?machine=ghost"));
    assert_eq!(code, 404, "{e}");
    let (code, e) = d.call("GET", "/api/v1/runs/nope", None);
    assert_eq!(
        (code, e["error"].as_str()),
        (404, Some("run \"nope\" not found"))
    );
    let (code, e) = d.call("POST", "/api/v1/maintenance", Some("{\"on\": "));
    assert_eq!(code, 400, "{e}");
    assert!(e["error"].is_string());
    let (code, e) = d.call(
        "POST",
        "/api/v1/maintenance",
        Some("{\"on\": true, \"oops\": 1}"),
    );
    assert_eq!(code, 422);
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `oops`"),
        "{e}"
    );
    let huge = format!("{{\"on\": true, \"machine\": \"{}\"}}", "x".repeat(200_000));
    let (code, _) = d.call("POST", "/api/v1/maintenance", Some(&huge));
    assert_eq!(code, 413);
    let (code, e) = d.call("GET", "/no/such/thing", None);
    assert_eq!((code, e["error"].as_str()), (404, Some("no such endpoint")));

    // Kill the run in flight; it ends when the publish gives up or lands, not before.
    let (code, k) = act(&d, &format!("/api/v1/runs/{instance}/kill"));
    assert_eq!(
        (code, k["instance"].as_str()),
        (200, Some(instance.as_str()))
    );

    // Global maintenance refuses "run now" with the reason, and is shown in the config view.
    let (code, m) = d.call("POST", "/api/v1/maintenance", Some("{\"on\": true}"));
    assert_eq!((code, m["global"].as_bool()), (200, Some(true)), "{m}");
    let (code, m) = d.call(
        "POST",
        "/api/v1/maintenance",
        Some("{\"on\": true, \"machine\": \"m7\"}"),
    );
    assert_eq!((code, m["machines"].clone()), (200, json!(["m7"])));
    let (code, e) = act(&d, "/api/v1/jobs/other/run");
    assert_eq!(code, 409);
    assert!(e["error"].as_str().unwrap().contains("maintenance"), "{e}");
    let (_, config) = d.call("GET", "/config", None);
    assert_eq!(
        config["maintenance"],
        json!({"global": true, "machines": ["m7"]})
    );

    let (_, diag) = d.call("GET", "/api/v1/diagnostics", None);
    assert_eq!(
        (diag["errors"].as_u64(), diag["jobs"].as_u64()),
        (Some(0), Some(2))
    );
    let (_, v) = d.call("GET", "/version", None);
    assert_eq!(v["version"], saltpeter::VERSION);
    let metrics = crate::support::http("GET", &format!("{}/metrics", d.api()), None, &[]).1;
    let text = metrics.as_str().unwrap();
    assert!(text.contains("saltpeter_database_bytes "), "{text}");
    assert!(text.contains("saltpeter_wrappers_connected 0"), "{text}");

    // Restarted on the same database: maintenance is still on.
    let mut d = d.crash_and_restart(dir.path());
    d.wait_api();
    let (_, m) = d.call("GET", "/api/v1/maintenance", None);
    assert_eq!(
        (m["global"].as_bool(), m["machines"].clone()),
        (Some(true), json!(["m7"]))
    );
    let (_, run) = d.call("GET", &format!("/api/v1/runs/{instance}"), None);
    assert_eq!(
        run["instance"],
        instance.as_str(),
        "the run is still in the history"
    );
}

pub fn ws_connect(port: u16, origin: Option<&str>) -> Result<WebSocket<TcpStream>, u16> {
    let mut req = format!("ws://127.0.0.1:{port}/ws")
        .into_client_request()
        .unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    match tungstenite::client(req, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            Err(r.status().as_u16())
        }
        Err(e) => panic!("{e}"),
    }
}

pub fn next_json(ws: &mut WebSocket<TcpStream>) -> Value {
    loop {
        match ws.read().expect("a message") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            _ => continue,
        }
    }
}

fn next_of_type(ws: &mut WebSocket<TcpStream>, ty: &str) -> Value {
    for _ in 0..50 {
        let m = next_json(ws);
        if m["type"] == ty {
            return m;
        }
    }
    panic!("no {ty} message");
}

#[test]
fn tokens_guard_commands_and_foreign_origins_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), "");
    let tokens = "  api_tokens:\n    ops:\n      token: operator-secret-123456\n      role: operator\n    viewer:\n      token: viewer-secret-1234567\n      role: read-only\n  api_allowed_origins: ['https://ui.example']\n";
    let mut d = Daemon::start_with(dir.path(), tokens, tempfile::tempdir().unwrap());
    d.wait_api();
    let url = format!("{}/api/v1/jobs/long/run", d.api());
    let scripted = ("x-saltpeter-request", "1");
    let (code, e) = http("POST", &url, None, &[scripted]);
    assert_eq!(code, 401, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer")
    );
    // An unknown token and a read-only one get the same answer, naming neither.
    let unknown = http(
        "POST",
        &url,
        None,
        &[scripted, ("authorization", "Bearer wrong-token-000000000")],
    );
    let read_only = http(
        "POST",
        &url,
        None,
        &[scripted, ("authorization", "Bearer viewer-secret-1234567")],
    );
    assert_eq!(unknown, read_only);
    assert_eq!(unknown.0, 403, "{}", unknown.1);
    let text = unknown.1.to_string();
    assert!(
        !text.contains("viewer") && !text.contains("read-only"),
        "{text}"
    );
    // Tokens do not lift the browser rules: a form with an operator token is still refused.
    let (code, _) = raw(
        d.api_port,
        "POST /api/v1/jobs/long/run",
        &[
            &format!("Host: 127.0.0.1:{}", d.api_port),
            "Authorization: Bearer operator-secret-123456",
            "Content-Type: application/x-www-form-urlencoded",
        ],
        "a=1",
    );
    assert_eq!(code, 403);
    let (code, _) = http(
        "POST",
        &url,
        None,
        &[scripted, ("authorization", "Bearer operator-secret-123456")],
    );
    assert_eq!(code, 202);
    // Reads stay open.
    assert_eq!(d.call("GET", "/api/v1/jobs", None).0, 200);

    assert_eq!(
        ws_connect(d.api_port, Some("https://evil.example")).err(),
        Some(403)
    );
    assert!(ws_connect(d.api_port, Some("https://ui.example")).is_ok());
    assert!(
        ws_connect(
            d.api_port,
            Some(&format!("http://127.0.0.1:{}", d.api_port))
        )
        .is_ok()
    );
    // Without a token the UI WebSocket may watch but not act.
    let mut ws = ws_connect(d.api_port, None).unwrap();
    ws.send(Message::text(json!({"run": "other"}).to_string()))
        .unwrap();
    let e = next_of_type(&mut ws, "error");
    assert!(
        e["error"].as_str().unwrap().contains("operator token"),
        "{e}"
    );
}

#[test]
fn browsers_cannot_be_made_to_act_and_foreign_hosts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), "");
    // On loopback without tokens: open to programs, not to web pages.
    let mut d = Daemon::start(dir.path());
    d.wait_api();
    let port = d.api_port;
    let host = format!("Host: 127.0.0.1:{port}");
    let own = format!("Origin: http://127.0.0.1:{port}");
    let run = "POST /api/v1/jobs/long/run";

    // What any page could make the operator's browser send: a form, a beacon.
    let form = "Content-Type: application/x-www-form-urlencoded";
    let (code, e) = raw(port, run, &[&host, form], "x=1");
    assert_eq!(code, 403, "{e}");
    assert_eq!(
        e["error"].as_str().map(|m| m
            .contains("mutations need Content-Type: application/json or X-Saltpeter-Request: 1")),
        Some(true),
        "{e}"
    );
    assert_eq!(raw(port, run, &[&host, &own, form], "x=1").0, 403);
    assert_eq!(raw(port, run, &[&host], "").0, 403);
    let (code, e) = raw(
        port,
        "POST /api/v1/maintenance",
        &[&host, "Content-Type: text/plain"],
        "{\"on\": true}",
    );
    assert_eq!(code, 403, "{e}");
    // Another site's script, even with the header (no preflight is ever granted, but a
    // browser that skipped it is refused here too).
    for foreign in [
        "Sec-Fetch-Site: cross-site",
        "Sec-Fetch-Site: same-site",
        "Origin: http://evil.example",
        "Origin: null",
    ] {
        let (code, e) = raw(port, run, &[&host, "X-Saltpeter-Request: 1", foreign], "");
        assert_eq!(code, 403, "{foreign}: {e}");
        assert_eq!(
            e["error"],
            "cross-origin request refused (allow it with saltpeter_config.api_allowed_origins)"
        );
    }
    // DNS rebinding: the page's origin and the Host agree, but the name is the attacker's.
    let (code, e) = raw(
        port,
        run,
        &[
            &format!("Host: evil.example:{port}"),
            &format!("Origin: http://evil.example:{port}"),
            "Sec-Fetch-Site: same-origin",
            "Content-Type: application/json",
        ],
        "{}",
    );
    assert_eq!(code, 421, "{e}");
    assert!(e["error"].as_str().unwrap().contains("unknown Host"), "{e}");
    // Nothing ran, nothing switched.
    let (_, runs) = d.call("GET", "/api/v1/jobs/long/runs", None);
    assert_eq!(runs["runs"], json!([]));
    let (_, m) = d.call("GET", "/api/v1/maintenance", None);
    assert_eq!(m["global"], false);

    // What the UI's own page sends works.
    let (code, started) = raw(
        port,
        run,
        &[
            &host,
            &own,
            "Sec-Fetch-Site: same-origin",
            "X-Saltpeter-Request: 1",
        ],
        "",
    );
    assert_eq!(code, 202, "{started}");
    let (code, m) = raw(
        port,
        "POST /api/v1/maintenance",
        &[&host, &own, "Content-Type: application/json; charset=utf-8"],
        "{\"on\": true, \"machine\": \"m1\"}",
    );
    assert_eq!((code, m["machines"].clone()), (200, json!(["m1"])), "{m}");

    // Reads stay open under any name (curl, Prometheus); the UI and its WebSocket do not.
    assert_eq!(
        raw(port, "GET /api/v1/jobs", &["Host: evil.example"], "").0,
        200
    );
    assert_eq!(
        raw(port, "GET /metrics", &["Host: evil.example"], "").0,
        200
    );
    for path in ["/", "/ui/", "/ui/app.js"] {
        let get = format!("GET {path}");
        let (code, e) = raw(port, &get, &["Host: evil.example"], "");
        assert_eq!(code, 421, "{path}: {e}");
        assert!(e["error"].is_string(), "{e}");
        for name in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
            let (code, _) = raw(port, &get, &[&format!("Host: {name}")], "");
            assert_eq!(code, 200, "{path} under {name}");
        }
    }
    let upgrade = [
        "Upgrade: websocket",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ];
    let evil = format!("Host: evil.example:{port}");
    let (code, e) = raw(
        port,
        "GET /ws",
        &[&[evil.as_str()][..], &upgrade].concat(),
        "",
    );
    assert_eq!(code, 421, "{e}");
    // Under its own name (tungstenite sends `Host: 127.0.0.1:<port>`) the WebSocket opens.
    let mut ws = ws_connect(port, Some(&format!("http://127.0.0.1:{port}"))).unwrap();
    assert_eq!(next_json(&mut ws)["type"], "config");
    assert_eq!(
        ws_connect(port, Some("http://evil.example")).err(),
        Some(403)
    );
}

#[test]
fn the_original_ui_protocol_message_sequence() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), "");
    let mut d = Daemon::start(dir.path());
    d.wait_api();
    let mut ws = ws_connect(d.api_port, None).unwrap();
    // What the original UI depends on: `config` first, commands as strings, then status.
    let config = next_json(&mut ws);
    assert_eq!(config["type"], "config");
    assert_eq!(config["sp_version"], saltpeter::VERSION);
    let long = &config["config"]["crons"]["long"];
    assert_eq!(
        (long["command"].as_str(), long["group"].as_str()),
        (Some("echo hi"), Some("jobs"))
    );
    assert_eq!(
        (long["year"].as_str(), long["hour"].as_str()),
        (Some("2099"), Some("0"))
    );
    assert_eq!(long["env"]["API_SECRET"], "<redacted>");
    assert_eq!(config["config"]["maintenance"]["global"], false);
    let status = next_json(&mut ws);
    assert_eq!(status["type"], "status");
    assert!(status["running"].is_object() && status["last_state"].is_object());
    assert_eq!(next_json(&mut ws), json!({"timeline": {}}));

    // Subscribing answers at once with status and the job's details.
    ws.send(Message::text(json!({"subscribe": ["long"]}).to_string()))
        .unwrap();
    assert_eq!(next_json(&mut ws)["type"], "status");
    let details = next_json(&mut ws);
    assert_eq!(
        (details["type"].as_str(), details["cron"].as_str()),
        (Some("details"), Some("long"))
    );
    assert_eq!(details["data"]["next_run"], "2099-01-01T00:00:00Z");
    assert_eq!(details["data"]["group"], "jobs");
    assert!(details["data"]["targets"].is_array() && details["data"]["results"].is_object());

    // "Run now" from the UI: the run shows in `status.running` under its job's name.
    ws.send(Message::text(json!({"run": "long"}).to_string()))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let running = loop {
        assert!(Instant::now() < deadline, "the run never showed as running");
        let s = next_of_type(&mut ws, "status");
        if let Some((k, v)) = s["running"].as_object().and_then(|m| m.iter().next()) {
            break (k.clone(), v.clone());
        }
    };
    assert!(running.0.starts_with("long_"));
    assert_eq!(running.1["name"], "long");
    assert!(running.1["started"].as_str().unwrap().contains('T'));
    let (_, status) = d.call("GET", "/api/v1/status", None);
    assert_eq!(status["running"][0]["instance"], running.0.as_str());

    // The timeline reply is typed and echoes the request's id, every time.
    for _ in 0..2 {
        ws.send(Message::text(
            json!({"getTimeline": {"start_date": "now-1h", "end_date": "now", "id": "1700000000000"}}).to_string(),
        ))
        .unwrap();
        let t = next_of_type(&mut ws, "timeline");
        assert_eq!(t["timeline"]["id"], "1700000000000");
        assert!(t["timeline"]["content"].is_array());
    }
    // Garbage is ignored and the connection keeps serving.
    ws.send(Message::text("{not json")).unwrap();
    ws.send(Message::text(json!({"killCron": "long"}).to_string()))
        .unwrap();
    next_of_type(&mut ws, "status");
    assert_eq!(d.call("GET", "/version", None).0, 200);
}

fn cli(d: &Daemon, args: &[&str]) -> (i32, String, String) {
    let out = crate::support::bin()
        .args(args)
        .args(["--api", &d.api()])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_clients_speak_to_the_api() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), "");
    let mut d = Daemon::start(dir.path());
    d.wait_api();
    let (code, out, err) = cli(&d, &["run-now", "long"]);
    assert_eq!(code, 0, "{err}");
    let instance = out.trim().strip_prefix("started ").unwrap().to_string();
    let (code, _, err) = cli(&d, &["run-now", "long"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("is still running (concurrency: forbid) (HTTP 409)"),
        "{err}"
    );
    let (code, out, _) = cli(&d, &["status"]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("running {instance}")), "{out}");
    let (code, out, _) = cli(&d, &["runs", "long", "--json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["runs"][0]["instance"], instance.as_str());
    let (code, out, _) = cli(&d, &["runs", "long"]);
    assert!(
        code == 0 && out.contains(&instance) && out.contains("manual") && out.contains("running"),
        "{out}"
    );
    let (code, out, err) = cli(&d, &["kill", "long"]);
    assert_eq!(
        (code, out.trim()),
        (0, format!("killing {instance}").as_str()),
        "{err}"
    );
    let (code, _, err) = cli(&d, &["kill", "nope_123"]);
    assert_eq!(code, 1, "{err}");
    let (code, out, _) = cli(&d, &["maintenance", "on", "--machine", "m1"]);
    assert_eq!(code, 0);
    assert!(out.contains("machines under maintenance: m1"), "{out}");
    let (code, out, _) = cli(&d, &["maintenance", "off", "--machine", "m1"]);
    assert!(
        code == 0 && out.contains("machines under maintenance: none"),
        "{out}"
    );
    let (code, _, err) = cli(&d, &["output", "nope_1"]);
    assert_eq!(code, 1, "{err}");

    // No daemon there: exit 2 with the address it tried.
    let out = crate::support::bin()
        .args([
            "status",
            "--api",
            &format!("http://127.0.0.1:{}", free_port()),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the saltpeter API"));
}

/// A job every second: `tick` may overlap (each slot starts a run, whose launch waits for the
/// dead master), `solo` may not (its later slots are skipped while the first run waits).
fn every_second(name: &str, extra: &str) -> String {
    format!(
        "{name}:\n  sec: '*'\n  min: '*'\n  hour: '*'\n  dom: '*'\n  mon: '*'\n  dow: '*'\n  targets: '*'\n  command: 'true'\n{extra}"
    )
}

#[test]
fn the_fire_ledger_through_the_api_and_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), "");
    write(
        dir.path(),
        "ticks.yaml",
        &[
            every_second("tick", "  concurrency: allow\n"),
            every_second("solo", ""),
        ]
        .concat(),
    );
    let mut d = Daemon::start(dir.path());
    d.wait_api();

    // A manual run is a row with no slot.
    let (code, started) = act(&d, "/api/v1/jobs/long/run");
    assert_eq!(code, 202, "{started}");
    let instance = started["instance"].as_str().unwrap().to_string();
    let (code, page) = d.call("GET", "/api/v1/jobs/long/slots", None);
    assert_eq!(code, 200, "{page}");
    let rows = page["slots"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{page}");
    assert_eq!(
        (
            rows[0]["trigger"].as_str(),
            rows[0]["state"].as_str(),
            rows[0]["instance"].as_str()
        ),
        (Some("manual"), Some("fired"), Some(instance.as_str())),
        "{page}"
    );
    assert_eq!(rows[0]["slot"], Value::Null);
    assert_eq!(page["next_before"], Value::Null);
    let (code, missed) = d.call("GET", "/api/v1/jobs/long/slots?state=missed", None);
    assert_eq!(
        (code, missed["slots"].clone()),
        (200, json!([])),
        "{missed}"
    );
    for (query, param) in [("state=bogus", "state"), ("limit=0", "limit")] {
        let (code, e) = d.call("GET", &format!("/api/v1/jobs/long/slots?{query}"), None);
        assert_eq!(code, 400, "{query}: {e}");
        assert!(
            e["error"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{param}: ")),
            "{query}: {e}"
        );
    }
    let (code, e) = d.call("GET", "/api/v1/jobs/nope/slots", None);
    assert_eq!(code, 404, "{e}");
    // Its page: no scheduled slot yet (the manual run is not one), the next in 2099.
    let (_, job) = d.call("GET", "/api/v1/jobs/long", None);
    assert_eq!(
        job["slots"],
        json!({"last": null, "next": "2099-01-01T00:00:00Z", "last_due_fired": null}),
        "{job}"
    );

    // The CLI: one line per row; refusals exit 1 with the daemon's reason.
    let (code, out, err) = cli(&d, &["slots", "long"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("manual ") && out.contains("fired") && out.contains(&instance),
        "{out}"
    );
    let (code, out, err) = cli(&d, &["slots", "long", "--since", "1h", "--state", "manual"]);
    assert!(code == 0 && out.contains(&instance), "{out}{err}");
    let (code, out, _) = cli(&d, &["slots", "long", "--state", "missed"]);
    assert!(code == 0 && out.contains("no slots of long"), "{out}");
    let (code, _, err) = cli(&d, &["slots", "long", "--state", "bogus"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("state: ") && err.contains("(HTTP 400)"),
        "{err}"
    );
    let (code, _, err) = cli(&d, &["slots", "nope"]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = cli(&d, &["slots", "long", "--since", "soon"]);
    assert_eq!(code, 2, "{err}");

    // Scheduled slots: each claimed as it comes due, a run's id from its slot's second.
    let (mut ticks, mut skipped) = (0, false);
    let deadline = Instant::now() + Duration::from_secs(30);
    while ticks < 3 || !skipped {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no scheduled fires and skips seen");
        let line = d.expect_line("", left);
        ticks += usize::from(line.contains("Firing tick_"));
        skipped |= line.contains("this slot of solo is skipped (overlap)");
    }
    let (_, page) = d.call("GET", "/api/v1/jobs/tick/slots?state=fired", None);
    let rows = page["slots"].as_array().unwrap();
    assert!(rows.len() >= 3, "{page}");
    for r in rows {
        let slot: jiff::Timestamp = r["slot"].as_str().unwrap().parse().unwrap();
        assert_eq!(r["trigger"], "schedule", "{r}");
        assert_eq!(
            r["instance"],
            format!("tick_{}", slot.as_second()).as_str(),
            "{r}"
        );
    }
    let (_, page) = d.call("GET", "/api/v1/jobs/solo/slots?state=skipped&limit=1", None);
    assert_eq!(page["slots"][0]["reason"], "overlap", "{page}");
    assert!(page["next_before"].is_i64(), "a full page: {page}");

    // The list: one head per job says whether its last due slot fired.
    let (_, list) = d.call("GET", "/api/v1/jobs", None);
    let of = |name: &str| {
        list["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {list}"))
            .clone()
    };
    assert_eq!(
        (
            of("tick")["last_due_fired"].clone(),
            of("tick")["last_slot_state"].clone()
        ),
        (json!(true), json!("fired"))
    );
    let solo = of("solo");
    assert_eq!(
        (
            &solo["last_due_fired"],
            &solo["last_slot_state"],
            &solo["last_slot_reason"]
        ),
        (&json!(false), &json!("skipped"), &json!("overlap")),
        "{solo}"
    );
    assert_eq!(of("long")["last_due_fired"], Value::Null);
    let (_, job) = d.call("GET", "/api/v1/jobs/tick", None);
    assert_eq!(job["slots"]["last"]["state"], "fired", "{job}");
    assert_eq!(job["slots"]["last_due_fired"], true, "{job}");
    let (code, out, _) = cli(&d, &["slots", "solo", "-n", "5"]);
    assert!(
        code == 0 && out.contains("skipped  overlap") && out.contains("is still running"),
        "{out}"
    );
}

/// Polls a reload with `token` until its status is `want` (a heartbeat brings the store's
/// tokens, every 5 s): panics after 12 s.
fn reload_until(d: &Daemon, token: Option<&str>, want: u16) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let deadline = Instant::now() + Duration::from_secs(12);
    loop {
        let mut headers = vec![("x-saltpeter-request", "1")];
        if let Some(b) = &bearer {
            headers.push(("authorization", b.as_str()));
        }
        let (code, body) = http(
            "POST",
            &format!("{}/api/v1/reload", d.api()),
            None,
            &headers,
        );
        if code == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "reload with {token:?}: {code} {body}, not {want}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `saltpeter token` on the store the config directory names: a token made there is accepted
/// by every daemon on that store, listed without its secret, and refused by all once revoked.
/// On SQLite (one daemon) and, with a test server, on PostgreSQL (two daemons).
fn tokens_in_the_store(database: Option<String>) {
    // A config token keeps the loopback API guarded whatever the store holds.
    let guard =
        "  api_tokens:\n    cfg:\n      token: config-secret-123456\n      role: operator\n";
    let dirs: Vec<tempfile::TempDir> = (0..if database.is_some() { 2 } else { 1 })
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let daemons: Vec<Daemon> = dirs
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            setup(dir.path(), "");
            let settings = format!("{guard}  daemon_name: d{i}\n");
            let mut d = match &database {
                Some(url) => Daemon::start_shared(dir.path(), url, &settings, &[]),
                None => Daemon::start_with(dir.path(), &settings, tempfile::tempdir().unwrap()),
            };
            d.wait_api();
            d
        })
        .collect();
    let cli = |args: &[&str]| {
        let mut all = vec!["token"];
        all.extend_from_slice(args);
        all.extend(["-c", dirs[0].path().to_str().unwrap()]);
        crate::support::run(&all)
    };
    let (code, token, err) = cli(&["add", "ops"]);
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_string();
    assert!(token.starts_with("sp_") && token.len() > 40, "{token:?}");
    let (code, _, err) = cli(&["add", "ops"]);
    assert_ne!(code, 0);
    assert!(err.contains("exists already"), "{err}");
    let (code, listed, _) = cli(&["list"]);
    assert_eq!(code, 0);
    assert!(listed.starts_with("ops\toperator\t"), "{listed}");
    assert!(!listed.contains(&token), "the secret is shown once only");
    for d in &daemons {
        reload_until(d, Some(&token), 200);
        reload_until(d, None, 401);
    }
    let (code, _, err) = cli(&["revoke", "ops"]);
    assert_eq!(code, 0, "{err}");
    for d in &daemons {
        reload_until(d, Some(&token), 403);
        reload_until(d, Some("config-secret-123456"), 200);
    }
    let (code, _, err) = cli(&["revoke", "ops"]);
    assert_eq!(code, 1, "{err}");
}

#[test]
fn a_token_made_in_a_sqlite_store_is_accepted_until_revoked() {
    tokens_in_the_store(None);
}

#[test]
fn a_token_made_in_a_shared_store_is_accepted_by_every_daemon_until_revoked() {
    let Some(server) = crate::ha::server() else {
        return;
    };
    tokens_in_the_store(Some(crate::ha::fresh_database(&server, "tokens")));
}
