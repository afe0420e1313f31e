//! The original Saltpeter's HTTP endpoints and UI WebSocket (reference §6), so its React UI
//! keeps working: `config` first on every connection, `status` (then `details` and
//! `output_chunk` for subscribed jobs) after changes, the timeline reply typed and with its
//! `id` echoed, integer `retcode`, and output positions in JavaScript string units (UTF-16).
//! Updates are pushed: a connection wakes on the store's commits, config changes and its own
//! messages, and sends at most one update per [`UPDATE_GAP`]; an idle one costs nothing.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::{ApiError, AppState, Snapshot};
use crate::config::Targets;
use crate::control::RunRef;
use crate::history::{RunDetail, RunRow};

pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/version", get(version))
        .route("/config", get(config))
        .route("/running", get(running))
        .route("/timeline", get(|| async { Json(json!({})) }))
        .route("/ws", get(ws))
}

async fn version() -> Json<Value> {
    Json(json!({ "version": crate::VERSION, "last_build": env!("CARGO_PKG_VERSION") }))
}

/// The original's `config` dict, with `env` values and credentials redacted.
fn config_json(snap: &Snapshot) -> Value {
    let mut crons = serde_json::Map::new();
    for (name, job) in &snap.config.jobs {
        let fields: Vec<&str> = job.expression.split_whitespace().collect();
        let field = |i: usize| fields.get(i).copied().unwrap_or("*");
        crons.insert(
            name.clone(),
            json!({
                "sec": field(0), "min": field(1), "hour": field(2), "dom": field(3),
                "mon": field(4), "dow": field(5), "year": field(6),
                "targets": match &job.targets { Targets::Expr(e) => e.clone(), Targets::List(l) => l.join(",") },
                "target_type": job.target_type.as_str(),
                "command": job.command,
                "cwd": job.cwd.clone().unwrap_or_default(),
                "user": job.user.clone().unwrap_or_default(),
                "timeout": job.timeout_secs.unwrap_or(0),
                "number_of_targets": job.number_of_targets,
                "batch_size": job.batch_size,
                "group": job.group,
                "use_wrapper": job.use_wrapper,
                "env": job.env.keys().map(|k| (k.clone(), json!("<redacted>"))).collect::<serde_json::Map<_, _>>(),
            }),
        );
    }
    let s = &snap.config.settings;
    json!({
        "crons": crons,
        "maintenance": { "global": snap.maintenance.global, "machines": snap.maintenance.machines },
        "serial": snap.changed.as_millisecond() as f64 / 1000.0,
        "saltpeter_config": {
            "api_ws": s.api_ws.unwrap_or(true),
            "api_ws_port": s.api_ws_port,
            "api_ws_bind_addr": s.api_ws_bind_addr,
            "machines_ws_port": s.machines_ws_port,
            "machines_ws_bind_addr": s.machines_ws_bind_addr,
            "default_saltpeter_server_host": s.default_saltpeter_server_host,
            "default_wrapper_path": s.default_wrapper_path,
            "default_timezone": s.default_timezone,
            "logdir": s.logdir,
        },
    })
}

async fn config(State(state): State<AppState>) -> Json<Value> {
    Json(config_json(&state.snapshot()))
}

fn running_json(running: &[RunDetail]) -> Value {
    let mut map = serde_json::Map::new();
    for r in running {
        let machines: Vec<&str> = r
            .targets
            .iter()
            .filter(|t| t.state == "expected" || t.state == "running")
            .map(|t| t.machine.as_str())
            .collect();
        map.insert(
            r.run.instance.clone(),
            json!({ "started": r.run.started_at, "name": r.run.job, "machines": machines, "stop_signal": false }),
        );
    }
    Value::Object(map)
}

async fn running(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(running_json(&state.history.running().await?)))
}

async fn ws(State(state): State<AppState>, req: Request) -> Response {
    if let Err(refused) = state.websocket_allowed(&req) {
        return refused.into_response();
    }
    let token = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")))
        .map(String::from);
    let may_act = state.authorize(req.headers(), token.as_deref()).is_ok();
    super::ws::upgrade(req, move |socket| session(state, socket, may_act))
}

/// Per connection: what the client is subscribed to and how far its output has been sent.
#[derive(Default)]
struct Conn {
    subscribed: BTreeSet<String>,
    /// (job, machine) → (instance, byte offset, UTF-16 position) of output sent.
    sent: HashMap<(String, String), (String, u64, u64)>,
    serial: i64,
    /// Run and kill commands are accepted (see [`AppState::authorize`]).
    may_act: bool,
}

/// The least time between two updates to one client: a stream of commits becomes one update
/// per gap, the original's cadence (it sent one every 2 s, changed or not), so 100 clients of
/// a busy run cost what they did; after a quiet spell the update goes at once.
const UPDATE_GAP: Duration = Duration::from_secs(2);

async fn session<S>(state: AppState, socket: WebSocketStream<S>, may_act: bool)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = socket.split();
    let mut conn = Conn {
        may_act,
        ..Conn::default()
    };
    // Both subscribed before the first read, so no change in between is missed.
    let mut commits = Some(state.history.subscribe());
    let mut snapshots = Some(state.snapshots());
    let snap = state.snapshot();
    conn.serial = snap.changed.as_millisecond();
    // `config` must come first: the UI reloads itself otherwise.
    let mut first = vec![config_msg(&snap)];
    let last = state.history.last_runs().await.unwrap_or_default();
    first.push(status_msg(&state, &last).await);
    first.push(json!({ "timeline": {} }));
    for m in first {
        if tx.send(Message::text(m.to_string())).await.is_err() {
            return;
        }
    }
    let mut last_sent = Instant::now();
    // Armed when something changed: the next update is due at `last_sent + UPDATE_GAP`. A
    // timer only while an update is due (rate limiting, not polling).
    let due = tokio::time::sleep_until(last_sent);
    tokio::pin!(due);
    let mut armed = false;
    let arm = |due: Pin<&mut Sleep>, armed: &mut bool, last_sent: Instant| {
        if !*armed {
            due.reset(last_sent + UPDATE_GAP);
            *armed = true;
        }
    };
    loop {
        let outgoing: Vec<Value> = tokio::select! {
            notice = next_commit(&mut commits) => {
                // Any commit may change `status` (targets, last runs), lost notices too.
                match notice {
                    Some(()) => arm(due.as_mut(), &mut armed, last_sent),
                    None => commits = None,
                }
                continue;
            }
            changed = next_snapshot(&mut snapshots) => {
                match changed {
                    true => arm(due.as_mut(), &mut armed, last_sent),
                    false => snapshots = None,
                }
                continue;
            }
            () = &mut due, if armed => {
                armed = false;
                last_sent = Instant::now();
                broadcast(&state, &mut conn).await
            }
            msg = rx.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let (out, effect) = handle(&state, &mut conn, text.as_str()).await;
                    match effect {
                        Effect::Updated => {
                            last_sent = Instant::now();
                            // A full update, unless the config changed too (`broadcast` says).
                            if state.snapshot().changed.as_millisecond() == conn.serial {
                                armed = false;
                            }
                        }
                        // A command changes things: the client sees the outcome in an update.
                        Effect::Acted => arm(due.as_mut(), &mut armed, last_sent),
                        Effect::None => {}
                    }
                    out
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => Vec::new(),
            },
        };
        for m in outgoing {
            if tx.send(Message::text(m.to_string())).await.is_err() {
                return;
            }
        }
    }
}

/// The next commit notice; pending forever once the store is gone.
async fn next_commit(commits: &mut Option<crate::history::Commits>) -> Option<()> {
    match commits {
        Some(c) => c.next().await.map(|_| ()),
        None => std::future::pending().await,
    }
}

/// Whether the config snapshot changed (`false`: its sender is gone); pending forever after.
async fn next_snapshot(
    snapshots: &mut Option<tokio::sync::watch::Receiver<std::sync::Arc<Snapshot>>>,
) -> bool {
    match snapshots {
        Some(s) => s.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

fn config_msg(snap: &Snapshot) -> Value {
    json!({ "type": "config", "config": config_json(snap), "sp_version": crate::VERSION })
}

/// `last` is each job's latest run.
async fn status_msg(state: &AppState, last: &HashMap<String, RunRow>) -> Value {
    let running = state.history.running().await.unwrap_or_default();
    let mut last_state = serde_json::Map::new();
    for (job, r) in last {
        let busy = running.iter().any(|x| &x.run.job == job);
        last_state.insert(
            job.clone(),
            json!({ "last_run": r.started_at, "result_ok": busy || r.success.unwrap_or(false) }),
        );
    }
    json!({ "type": "status", "running": running_json(&running), "last_state": last_state, "sp_version": crate::VERSION })
}

/// `status`, then per subscribed job its new output and `details` (each job's latest run is
/// read once for all of them).
async fn updates(state: &AppState, conn: &mut Conn) -> Vec<Value> {
    let last = state.history.last_runs().await.unwrap_or_default();
    let mut out = vec![status_msg(state, &last).await];
    let jobs: Vec<String> = conn.subscribed.iter().cloned().collect();
    for job in jobs {
        out.extend(job_messages(state, conn, &job, last.get(&job)).await);
    }
    out
}

/// The messages after a change: [`updates`], and `config` when it changed.
async fn broadcast(state: &AppState, conn: &mut Conn) -> Vec<Value> {
    let mut out = updates(state, conn).await;
    let snap = state.snapshot();
    if snap.changed.as_millisecond() != conn.serial {
        conn.serial = snap.changed.as_millisecond();
        out.push(config_msg(&snap));
    }
    out
}

/// Per machine of the job's latest run (`last`): an `output_chunk` with what is new, then
/// `details`.
async fn job_messages(
    state: &AppState,
    conn: &mut Conn,
    job: &str,
    last: Option<&RunRow>,
) -> Vec<Value> {
    let mut out = Vec::new();
    let snap = state.snapshot();
    let detail = match last {
        Some(r) => state.history.run(&r.instance).await.ok().flatten(),
        None => None,
    };
    let mut results = serde_json::Map::new();
    let mut targets = Vec::new();
    if let Some(d) = &detail {
        for t in &d.targets {
            targets.push(t.machine.clone());
            let key = (job.to_string(), t.machine.clone());
            // Positions are per run: a new run's output starts at 0 (the original mixed runs).
            let (mut offset, mut position) = match conn.sent.get(&key) {
                Some((i, o, p)) if *i == d.run.instance => (*o, *p),
                _ => (0, 0),
            };
            if let Ok(Some((slice, done))) = state
                .history
                .output(&d.run.instance, &t.machine, offset)
                .await
                && (!slice.text.is_empty() || offset == 0)
            {
                let units = slice.text.encode_utf16().count() as u64;
                out.push(json!({
                    "type": "output_chunk", "cron": job, "machine": t.machine,
                    "chunk": slice.text, "position": position,
                    "total_length": position + units, "is_complete": done,
                }));
                offset = slice.next;
                position += units;
            }
            conn.sent
                .insert(key, (d.run.instance.clone(), offset, position));
            let retcode = t.exit_code.map_or(json!(""), |c| json!(c));
            results.insert(
                t.machine.clone(),
                json!({
                    "ret": "", "output_length": t.output_bytes, "retcode": retcode,
                    "starttime": t.confirmed_at.clone().unwrap_or_default(),
                    "endtime": t.ended_at.clone().unwrap_or_default(),
                    "wrapper_version": t.wrapper_version.clone().unwrap_or_default(),
                    "last_heartbeat": t.last_heartbeat.clone().unwrap_or_default(),
                    "last_output_seq": 0,
                }),
            );
        }
    }
    let next = snap
        .config
        .jobs
        .get(job)
        .and_then(|j| j.schedule.next_after(crate::clock::now()))
        .map(|t| t.to_string());
    let overlap = state
        .history
        .skips(job, 1)
        .await
        .ok()
        .and_then(|s| s.into_iter().next())
        .is_some_and(|s| s.reason == "overlap" && last.is_some_and(|l| s.at >= l.started_at));
    let failed = detail.as_ref().map_or(0, |d| {
        d.targets
            .iter()
            .filter(|t| t.exit_code.is_some_and(|c| c != 0))
            .count()
    });
    out.push(json!({
        "type": "details", "cron": job,
        "data": {
            "next_run": next, "last_run": last.map(|l| l.started_at.clone()),
            "overlap": overlap,
            "group": snap.config.jobs.get(job).map(|j| j.group.clone()).unwrap_or_default(),
            "targets": targets, "results": results,
            "last_success": last.and_then(|l| l.success).unwrap_or(false),
            "last_failed_count": failed,
            "last_total_count": detail.as_ref().map_or(0, |d| d.targets.len()),
        },
    }));
    out
}

fn names(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}

/// What a client message did besides its replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    None,
    /// The replies are a full update.
    Updated,
    /// A command was tried: an update should follow.
    Acted,
}

/// The client commands (they change things: the same rule as the REST API).
const COMMANDS: [&str; 3] = ["run", "killCron", "killMachine"];

/// One client message, and what it did besides its replies.
async fn handle(state: &AppState, conn: &mut Conn, text: &str) -> (Vec<Value>, Effect) {
    let Ok(msg) = serde_json::from_str::<Value>(text) else {
        tracing::debug!("UI WebSocket: invalid JSON ignored");
        return (Vec::new(), Effect::None);
    };
    // The same precedence as [`answer`].
    let effect = if msg.get("subscribe").is_some() {
        Effect::Updated
    } else if msg.get("unsubscribe").is_some() || msg.get("ack").is_some() {
        Effect::None
    } else if COMMANDS.iter().any(|k| msg.get(*k).is_some()) {
        Effect::Acted
    } else {
        Effect::None
    };
    (answer(state, conn, &msg).await, effect)
}

/// The replies to one client message; only the first key that matches is handled, as in the
/// original.
async fn answer(state: &AppState, conn: &mut Conn, msg: &Value) -> Vec<Value> {
    if let Some(v) = msg.get("subscribe") {
        conn.subscribed.extend(names(v));
        return updates(state, conn).await;
    }
    if let Some(v) = msg.get("unsubscribe") {
        for n in names(v) {
            conn.subscribed.remove(&n);
            conn.sent.retain(|(job, _), _| *job != n);
        }
        return Vec::new();
    }
    if msg.get("ack").is_some() {
        return Vec::new();
    }
    // Commands change things: the same rule as the REST API (an operator token, passed as
    // `?token=` on the WebSocket URL, when the API is guarded).
    let command = COMMANDS.into_iter().find(|k| msg.get(*k).is_some());
    if let Some(k) = command {
        if !conn.may_act {
            return vec![
                json!({ "type": "error", "command": k, "error": "this command needs an operator token (?token= on the WebSocket URL)" }),
            ];
        }
        let result = match k {
            "run" => match msg["run"].as_str() {
                Some(job) => state.control.run_now(job).await.map(|_| ()),
                None => return Vec::new(),
            },
            "killCron" => match msg["killCron"].as_str() {
                Some(job) => state
                    .control
                    .kill(RunRef::Job(job.into()), None)
                    .await
                    .map(|_| ()),
                None => return Vec::new(),
            },
            _ => {
                let m = &msg["killMachine"];
                let (Some(job), Some(machine)) = (m["cron"].as_str(), m["machine"].as_str()) else {
                    return Vec::new();
                };
                let run = match m["job_instance"].as_str() {
                    Some(i) => RunRef::Instance(i.into()),
                    None => RunRef::Job(job.into()),
                };
                state
                    .control
                    .kill(run, Some(machine.into()))
                    .await
                    .map(|_| ())
            }
        };
        if let Err(why) = result {
            // The original answered nothing; an `error` message is ignored by its UI.
            return vec![json!({ "type": "error", "command": k, "error": why.to_string() })];
        }
        return Vec::new();
    }
    if let Some(q) = msg.get("getTimeline") {
        let id = q.get("id").cloned().unwrap_or(Value::Null);
        let now = crate::clock::now();
        let from = q["start_date"]
            .as_str()
            .and_then(|s| date(s, now))
            .unwrap_or(now.as_millisecond() - 3_600_000);
        let to = q["end_date"]
            .as_str()
            .and_then(|s| date(s, now))
            .unwrap_or(now.as_millisecond());
        let content = state.history.timeline(from, to).await.unwrap_or_default();
        let timeline =
            json!({ "content": content, "id": id, "serial": now.as_millisecond() as f64 / 1000.0 });
        return vec![json!({ "type": "timeline", "timeline": timeline })];
    }
    Vec::new()
}

/// An RFC 3339 instant or Elasticsearch date math (`now`, `now-1h`, `now-30m`...), in ms.
fn date(s: &str, now: jiff::Timestamp) -> Option<i64> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Some(t.as_millisecond());
    }
    let rest = s.strip_prefix("now")?;
    let base = now.as_millisecond();
    if rest.is_empty() {
        return Some(base);
    }
    let (sign, amount) = match rest.as_bytes()[0] {
        b'-' => (-1, &rest[1..]),
        b'+' => (1, &rest[1..]),
        _ => return None,
    };
    let unit = amount.chars().last()?;
    let n: i64 = amount[..amount.len() - unit.len_utf8()].parse().ok()?;
    let ms = match unit {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        'w' => 604_800_000,
        _ => return None,
    };
    Some(base + sign * n * ms)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::{FutureExt, SinkExt, StreamExt};
    use serde_json::{Value, json};
    use tokio::io::DuplexStream;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::Role;

    use crate::history::{History, Retention};
    use crate::journal::{RunEvent, Trigger};

    type Client = WebSocketStream<DuplexStream>;

    /// A UI client connected to [`super::session`] over memory.
    async fn connect(state: super::AppState) -> Client {
        let (server, client) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            let socket = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
            super::session(state, socket, false).await;
        });
        WebSocketStream::from_raw_socket(client, Role::Client, None).await
    }

    async fn next(ws: &mut Client) -> Value {
        let read = async {
            loop {
                match ws.next().await.expect("open").expect("a message") {
                    Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                    _ => continue,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("a message within 5 s")
    }

    #[tokio::test]
    async fn an_idle_client_costs_nothing_and_a_commit_reaches_it_promptly() {
        let dir = tempfile::tempdir().unwrap();
        let history = History::open(&dir.path().join("h.db"), Retention::default()).unwrap();
        let (state, _snapshots, _commands) = super::super::testing::state(history.clone());
        let mut ws = connect(state).await;
        let first: Vec<Value> = vec![next(&mut ws).await, next(&mut ws).await];
        assert_eq!(
            (&first[0]["type"], &first[1]["type"]),
            (&json!("config"), &json!("status"))
        );
        assert_eq!(next(&mut ws).await, json!({"timeline": {}}));
        ws.send(Message::text(json!({"subscribe": ["long"]}).to_string()))
            .await
            .unwrap();
        assert_eq!(next(&mut ws).await["type"], "status");
        assert_eq!(next(&mut ws).await["type"], "details");

        // A minute with nothing committed: no message, no query, no timer that wakes it.
        let asked = history.queries();
        tokio::time::pause();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(
            history.queries(),
            asked,
            "an idle client asks the store nothing"
        );
        assert!(
            ws.next().now_or_never().is_none(),
            "an idle client is sent nothing"
        );
        tokio::time::resume();

        // A commit: the update follows at once (the last one was long ago).
        let sent = std::time::Instant::now();
        history.record(RunEvent::Started {
            instance: "long_1".into(),
            job: "long".into(),
            trigger: Trigger::Manual,
            scheduled: None,
            at: jiff::Timestamp::from_second(1_800_000_000).unwrap(),
            token: "t".into(),
        });
        let status = next(&mut ws).await;
        assert_eq!(status["type"], "status");
        assert_eq!(status["running"]["long_1"]["name"], "long");
        let details = next(&mut ws).await;
        assert_eq!(
            (details["type"].as_str(), details["cron"].as_str()),
            (Some("details"), Some("long"))
        );
        assert!(
            sent.elapsed() < Duration::from_secs(2),
            "{:?}",
            sent.elapsed()
        );
    }

    #[test]
    fn timeline_dates_take_iso_and_date_math() {
        let now: jiff::Timestamp = "2026-01-01T12:00:00Z".parse().unwrap();
        let base = now.as_millisecond();
        assert_eq!(super::date("now-1h", now), Some(base - 3_600_000));
        assert_eq!(super::date("now", now), Some(base));
        assert_eq!(
            super::date("2026-01-01T11:00:00.000Z", now),
            Some(base - 3_600_000)
        );
        assert_eq!(super::date("yesterday", now), None);
    }
}
