//! `/api/v1`: jobs, runs, targets' output (whole, from an offset, or followed live as
//! server-sent events), run now, kill, maintenance, reload, diagnostics. The shapes are
//! documented in `proto/api/openapi.json`, which the tests check responses against.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::config::{Concurrency, Job, Targets};
use crate::control::{MaintenanceChange, RunRef};
use crate::history::RunRow;

pub const OPENAPI: &str = include_str!("../../proto/api/openapi.json");

pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/jobs/{job}", get(job))
        .route("/api/v1/jobs/{job}/runs", get(runs))
        .route("/api/v1/jobs/{job}/run", post(run_now))
        .route("/api/v1/jobs/{job}/kill", post(kill_job))
        .route("/api/v1/runs/{instance}", get(run))
        .route("/api/v1/runs/{instance}/kill", post(kill_run))
        .route(
            "/api/v1/runs/{instance}/targets/{machine}/output",
            get(output),
        )
        .route(
            "/api/v1/runs/{instance}/targets/{machine}/output/stream",
            get(output_stream),
        )
        .route(
            "/api/v1/maintenance",
            get(maintenance).post(set_maintenance),
        )
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/diagnostics", get(diagnostics))
        .route("/api/v1/status", get(status))
        .route("/api/v1/timeline", get(timeline))
}

async fn openapi() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/yaml")],
        OPENAPI,
    )
}

fn targets_json(job: &Job) -> Value {
    match &job.targets {
        Targets::Expr(e) => json!(e),
        Targets::List(l) => json!(l),
    }
}

/// A job as the API shows it; `env` values never leave the daemon.
fn job_json(job: &Job, last: Option<&RunRow>, running: &[String]) -> Value {
    let now = crate::clock::now();
    let mut next = Vec::new();
    let mut at = now;
    while next.len() < 3 {
        match job.schedule.next_after(at) {
            Some(t) => {
                next.push(t.to_string());
                at = t;
            }
            None => break,
        }
    }
    json!({
        "name": job.name,
        "group": job.group,
        "source": job.source,
        "schedule": job.expression,
        "timezone": job.timezone,
        "next_runs": next,
        "targets": targets_json(job),
        "target_type": job.target_type.as_str(),
        "command": job.command,
        "user": job.user,
        "cwd": job.cwd,
        "env": job.env.keys().collect::<Vec<_>>(),
        "timeout": job.timeout_secs,
        "number_of_targets": job.number_of_targets,
        "batch_size": job.batch_size,
        "use_wrapper": job.use_wrapper,
        "concurrency": match job.concurrency {
            Concurrency::Forbid => "forbid",
            Concurrency::Allow => "allow",
            Concurrency::Replace => "replace",
        },
        "success_threshold": job.success_threshold,
        "last_run": last,
        "running": running,
    })
}

async fn running_by_job(state: &AppState) -> Result<HashMap<String, Vec<String>>, ApiError> {
    let mut by_job: HashMap<String, Vec<String>> = HashMap::new();
    for r in state.history.running().await? {
        by_job.entry(r.run.job).or_default().push(r.run.instance);
    }
    Ok(by_job)
}

async fn jobs(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let snap = state.snapshot();
    let last = state.history.last_runs().await?;
    let running = running_by_job(&state).await?;
    let list: Vec<Value> = snap
        .config
        .jobs
        .values()
        .map(|j| {
            job_json(
                j,
                last.get(&j.name),
                running.get(&j.name).map_or(&[][..], Vec::as_slice),
            )
        })
        .collect();
    Ok(Json(
        json!({ "jobs": list, "maintenance": snap.maintenance.global }),
    ))
}

async fn job(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let snap = state.snapshot();
    let job = snap
        .config
        .jobs
        .get(&name)
        .ok_or_else(|| ApiError::not_found(format!("job {name:?}")))?;
    let last = state.history.last_runs().await?;
    let running = running_by_job(&state).await?;
    let mut v = job_json(
        job,
        last.get(&name),
        running.get(&name).map_or(&[][..], Vec::as_slice),
    );
    v["skipped"] = json!(state.history.skips(&name, 20).await?);
    Ok(Json(v))
}

#[derive(Deserialize)]
struct Page {
    before: Option<String>,
    limit: Option<usize>,
}

async fn runs(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let limit = page.limit.unwrap_or(50).clamp(1, 500);
    let rows = state.history.runs(&name, page.before, limit).await?;
    let next = (rows.len() == limit)
        .then(|| rows.last().map(|r| r.instance.clone()))
        .flatten();
    Ok(Json(json!({ "runs": rows, "next_before": next })))
}

async fn run(
    State(state): State<AppState>,
    Path(instance): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let detail = state
        .history
        .run(&instance)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("run {instance:?}")))?;
    Ok(Json(json!(detail)))
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn run_now(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state.authorize(&headers, None)?;
    let instance = state.control.run_now(&name).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "instance": instance }))).into_response())
}

#[derive(Deserialize)]
struct KillQuery {
    machine: Option<String>,
}

async fn kill_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<KillQuery>,
) -> Result<Json<Value>, ApiError> {
    state.authorize(&headers, None)?;
    if !state.snapshot().config.jobs.contains_key(&name) {
        return Err(ApiError::not_found(format!("job {name:?}")));
    }
    let instance = state.control.kill(RunRef::Job(name), q.machine).await?;
    Ok(Json(json!({ "instance": instance, "killing": true })))
}

async fn kill_run(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(instance): Path<String>,
    Query(q): Query<KillQuery>,
) -> Result<Json<Value>, ApiError> {
    state.authorize(&headers, None)?;
    let instance = state
        .control
        .kill(RunRef::Instance(instance), q.machine)
        .await?;
    Ok(Json(json!({ "instance": instance, "killing": true })))
}

#[derive(Deserialize)]
struct OffsetQuery {
    offset: Option<u64>,
}

async fn output(
    State(state): State<AppState>,
    Path((instance, machine)): Path<(String, String)>,
    Query(q): Query<OffsetQuery>,
) -> Result<Json<Value>, ApiError> {
    let (slice, done) = state
        .history
        .output(&instance, &machine, q.offset.unwrap_or(0))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("target {machine:?} of run {instance:?}")))?;
    let mut v = json!(slice);
    v["complete"] = json!(done);
    Ok(Json(v))
}

/// Server-sent events: `output` events with new text, then one `end` when the target is done.
async fn output_stream(
    State(state): State<AppState>,
    Path((instance, machine)): Path<(String, String)>,
    Query(q): Query<OffsetQuery>,
) -> Result<Response, ApiError> {
    // Subscribed before the first read, so nothing written in between is missed.
    let live = state.history.subscribe();
    if state
        .history
        .output(&instance, &machine, 0)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found(format!(
            "target {machine:?} of run {instance:?}"
        )));
    }
    struct Follow {
        state: AppState,
        live: tokio::sync::broadcast::Receiver<std::sync::Arc<crate::journal::RunEvent>>,
        instance: String,
        machine: String,
        offset: u64,
        done: bool,
        first: bool,
    }
    let follow = Follow {
        state,
        live,
        instance,
        machine,
        offset: q.offset.unwrap_or(0),
        done: false,
        first: true,
    };
    let stream = futures_util::stream::unfold(follow, |mut f| async move {
        if f.done {
            return None;
        }
        loop {
            if !f.first {
                // The next event about this target, or a second at most (a lagging receiver
                // must not stall the stream).
                let wait = async {
                    loop {
                        match f.live.recv().await {
                            Ok(e) if e.instance() == Some(f.instance.as_str()) => return,
                            Ok(_) => continue,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                            Err(_) => std::future::pending::<()>().await,
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), wait).await;
            }
            f.first = false;
            let Ok(Some((slice, done))) = f
                .state
                .history
                .output(&f.instance, &f.machine, f.offset)
                .await
            else {
                return None;
            };
            if !slice.text.is_empty() {
                f.offset = slice.next;
                let event = Event::default()
                    .event("output")
                    .json_data(&slice)
                    .unwrap_or_default();
                return Some((Ok::<_, Infallible>(event), f));
            }
            if done {
                f.done = true;
                let detail = f.state.history.run(&f.instance).await.ok().flatten();
                let target =
                    detail.and_then(|d| d.targets.into_iter().find(|t| t.machine == f.machine));
                let event = Event::default()
                    .event("end")
                    .json_data(json!({
                        "exit_code": target.as_ref().and_then(|t| t.exit_code),
                        "meaning": target.as_ref().and_then(|t| t.meaning.clone()),
                        "next": f.offset,
                    }))
                    .unwrap_or_default();
                return Some((Ok(event), f));
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn maintenance(State(state): State<AppState>) -> Json<Value> {
    let snap = state.snapshot();
    Json(json!({
        "global": snap.maintenance.global,
        "machines": snap.maintenance.machines,
        "config_file": { "global": snap.config.maintenance.global, "machines": snap.config.maintenance.machines },
        "switched": snap.switched,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintenanceBody {
    on: bool,
    machine: Option<String>,
}

async fn set_maintenance(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<MaintenanceBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    state.authorize(&headers, None)?;
    let Json(body) = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    if body
        .machine
        .as_deref()
        .is_some_and(|m| m.is_empty() || m == "*")
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "machine must be a minion id (leave it out for global maintenance)",
        ));
    }
    state
        .control
        .maintenance(MaintenanceChange {
            machine: body.machine,
            on: body.on,
        })
        .await?;
    // The daemon publishes the new snapshot before it replies.
    Ok(maintenance(State(state)).await)
}

async fn reload(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
) -> Result<Json<Value>, ApiError> {
    state.authorize(&headers, q.token.as_deref())?;
    state.control.reload().await?;
    Ok(diagnostics(State(state)).await)
}

async fn diagnostics(State(state): State<AppState>) -> Json<Value> {
    let snap = state.snapshot();
    let list: Vec<Value> = snap
        .diagnostics
        .iter()
        .map(|d| {
            json!({
                "file": d.file,
                "line": d.pos.line,
                "column": d.pos.col,
                "severity": d.severity.to_string(),
                "message": d.message,
                "text": d.to_string(),
            })
        })
        .collect();
    let errors = snap.diagnostics.iter().filter(|d| d.is_error()).count();
    Json(json!({
        "errors": errors,
        "warnings": snap.diagnostics.len() - errors,
        "diagnostics": list,
        "jobs": snap.config.jobs.len(),
        "loaded_at": snap.changed.to_string(),
    }))
}

#[derive(Deserialize)]
struct TimelineQuery {
    /// How far back, in minutes (default 60, at most 7 days).
    minutes: Option<i64>,
}

/// Targets' starts and results of recent runs, oldest first.
async fn timeline(
    State(state): State<AppState>,
    Query(q): Query<TimelineQuery>,
) -> Result<Json<Value>, ApiError> {
    let minutes = q.minutes.unwrap_or(60).clamp(1, 7 * 24 * 60);
    let to = crate::clock::now().as_millisecond();
    let items = state.history.timeline(to - minutes * 60_000, to).await?;
    Ok(Json(json!({ "minutes": minutes, "items": items })))
}

/// The daemon at a glance: version, maintenance, runs in flight.
async fn status(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let snap = state.snapshot();
    let running = state.history.running().await?;
    Ok(Json(json!({
        "version": crate::VERSION,
        "jobs": snap.config.jobs.len(),
        "maintenance": { "global": snap.maintenance.global, "machines": snap.maintenance.machines },
        "running": running,
    })))
}
