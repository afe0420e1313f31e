//! `/api/v1`: jobs, runs, the fire ledger's slots, targets' output (whole, from an offset, or
//! followed live as server-sent events), run now, kill, maintenance, reload, diagnostics. The
//! shapes are documented in `proto/api/openapi.json`, which the tests check responses against. The
//! mutations reach their handlers only past the router's browser-safety guard (a JSON type or
//! `X-Saltpeter-Request`, the API's own Host and origin); each then checks the token.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::config::notify::{Channels, When};
use crate::config::{Concurrency, Job, Targets};
use crate::control::{MaintenanceChange, RunRef};
use crate::history::ledger::{Head, SlotFilter, SlotRow};
use crate::history::output::Slice;
use crate::history::{Commits, History, RunRow};
use crate::schedule::Schedule;

pub const OPENAPI: &str = include_str!("../../proto/api/openapi.json");

pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/jobs/{job}", get(job))
        .route("/api/v1/jobs/{job}/runs", get(runs))
        .route("/api/v1/jobs/{job}/slots", get(slots))
        .route("/api/v1/jobs/{job}/deliveries", get(job_deliveries))
        .route("/api/v1/deliveries", get(deliveries))
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

/// How late a due slot may be before "nobody claimed it" means the daemon is stuck.
const CLAIM_GRACE: jiff::SignedDuration = jiff::SignedDuration::from_secs(30);

/// Whether the job's last due slot fired, from its ledger head: `None` when there is nothing
/// to judge (no head, or no slot claimed yet and none overdue); `false` when the last claimed
/// slot was skipped or missed, or when the next slot after it is due for more than
/// [`CLAIM_GRACE`] and still unclaimed (the daemon is stuck); `true` otherwise. "After it"
/// means after where the plan resumes: a job planned afresh later (its schedule changed) owes
/// no slot from before that.
fn last_due_fired(head: Option<&Head>, schedule: &Schedule, now: jiff::Timestamp) -> Option<bool> {
    let head = head?;
    let overdue = |from: jiff::Timestamp| {
        schedule
            .next_after(from)
            .is_some_and(|next| now.duration_since(next) > CLAIM_GRACE)
    };
    let from = head.resume_from.max(head.last_claimed);
    if head.last_claimed.is_none() {
        // Planned but never due yet: nothing to say, unless its first slot is overdue.
        return from.filter(|&t| overdue(t)).map(|_| false);
    }
    if head.last_state.as_deref() != Some("fired") {
        return Some(false);
    }
    Some(!from.is_some_and(overdue))
}

/// The ledger head's fields every job shows.
fn head_fields(v: &mut Value, head: Option<&Head>, schedule: &Schedule, now: jiff::Timestamp) {
    v["last_due_fired"] = json!(last_due_fired(head, schedule, now));
    v["last_slot_state"] = json!(head.and_then(|h| h.last_state.as_deref()));
    v["last_slot_reason"] = json!(head.and_then(|h| h.last_reason.as_deref()));
}

/// Whom the job tells of what: its `when` conditions and channels by name and kind (never a
/// channel's URL, address or secret).
fn notify_json(job: &Job, channels: &Channels) -> Value {
    let Some(policy) = &job.notify else {
        return Value::Null;
    };
    let when: Vec<Value> = policy
        .when
        .iter()
        .map(|w| match w {
            When::Failure => json!("failure"),
            When::Recovery => json!("recovery"),
            When::Missed => json!("missed"),
            When::LaunchFailure => json!("launch_failure"),
            When::ConsecutiveFailures(n) => json!({ "consecutive_failures": n }),
            When::RunningLongerThan(s) => json!({ "running_longer_than": s }),
        })
        .collect();
    let to: Vec<Value> = policy
        .to
        .iter()
        .map(|name| json!({ "name": name, "kind": channels.get(name).map(|c| c.kind()) }))
        .collect();
    json!({ "when": when, "to": to })
}

/// A job as the API shows it; `env` values never leave the daemon.
fn job_json(
    job: &Job,
    channels: &Channels,
    last: Option<&RunRow>,
    running: &[String],
    head: Option<&Head>,
    now: jiff::Timestamp,
) -> Value {
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
    let mut v = json!({
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
        "notify": notify_json(job, channels),
        "last_run": last,
        "running": running,
    });
    head_fields(&mut v, head, &job.schedule, now);
    v
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
    // One row per job, read once for the whole list.
    let heads = state.history.heads().await?;
    let now = crate::clock::now();
    let list: Vec<Value> = snap
        .config
        .jobs
        .values()
        .map(|j| {
            job_json(
                j,
                &snap.config.settings.notify_channels,
                last.get(&j.name),
                running.get(&j.name).map_or(&[][..], Vec::as_slice),
                heads.get(&j.name),
                now,
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
    let head = state.history.head(&name).await?;
    let head = head.as_ref();
    let now = crate::clock::now();
    let mut v = job_json(
        job,
        &snap.config.settings.notify_channels,
        last.get(&name),
        running.get(&name).map_or(&[][..], Vec::as_slice),
        head,
        now,
    );
    v["skipped"] = json!(state.history.skips(&name, 20).await?);
    v["slots"] = json!({
        "last": last_slot(&state.history, &name, head).await?,
        "next": job.schedule.next_after(now).map(|t| t.to_string()),
        "last_due_fired": last_due_fired(head, &job.schedule, now),
    });
    Ok(Json(v))
}

/// The job's newest scheduled row (not a manual run's). The head says where it is: the row
/// ending at the last claimed slot, in that slot's state, so the query reads only the rows
/// since then.
async fn last_slot(
    history: &History,
    job: &str,
    head: Option<&Head>,
) -> Result<Option<SlotRow>, ApiError> {
    let Some((claimed, state)) = head.and_then(|h| Some((h.last_claimed?, h.last_state.clone()?)))
    else {
        return Ok(None);
    };
    let filter = SlotFilter {
        state: Some(state),
        since_ms: Some(claimed.as_millisecond()),
        before: None,
    };
    Ok(history.slots(job, filter, 1).await?.into_iter().next())
}

/// A query parameter the API could not take: 400, naming it.
fn bad_param(name: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, format!("{name}: {why}"))
}

/// The slots page's parameters, as text: each is checked here, so a bad one gets a JSON error
/// that names it.
#[derive(Deserialize)]
struct SlotsQuery {
    state: Option<String>,
    since: Option<String>,
    before: Option<String>,
    limit: Option<String>,
}

const SLOT_STATES: [&str; 4] = ["fired", "skipped", "missed", "manual"];

impl SlotsQuery {
    fn parse(self) -> Result<(SlotFilter, usize), ApiError> {
        if let Some(s) = &self.state
            && !SLOT_STATES.contains(&s.as_str())
        {
            return Err(bad_param(
                "state",
                format!("{s:?} is not one of {}", SLOT_STATES.join(", ")),
            ));
        }
        let since_ms = match &self.since {
            Some(t) => Some(
                t.parse::<jiff::Timestamp>()
                    .map_err(|_| {
                        bad_param(
                            "since",
                            format!("{t:?} is not an RFC 3339 time such as 2025-01-01T00:00:00Z"),
                        )
                    })?
                    .as_millisecond(),
            ),
            None => None,
        };
        let (before, limit) = page_params(&self.before, &self.limit, "row", 1000, 100)?;
        let filter = SlotFilter {
            state: self.state,
            since_ms,
            before,
        };
        Ok((filter, limit))
    }
}

/// The job's fire ledger, newest first: every scheduled slot's fate (fired, skipped, a missed
/// gap as one row) and its manual runs. A job no longer configured is shown while it has rows.
async fn slots(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<SlotsQuery>,
) -> Result<Json<Value>, ApiError> {
    let (filter, limit) = q.parse()?;
    if !state.snapshot().config.jobs.contains_key(&name)
        && state
            .history
            .slots(&name, SlotFilter::default(), 1)
            .await?
            .is_empty()
    {
        return Err(ApiError::not_found(format!("job {name:?}")));
    }
    let rows = state.history.slots(&name, filter, limit).await?;
    let next = (rows.len() == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    Ok(Json(json!({ "slots": rows, "next_before": next })))
}

/// `before` (an id of `what`) and `limit` (1 to `max`, else `default`) of a paged list, each
/// refused by name when it is not a number in range.
fn page_params(
    before: &Option<String>,
    limit: &Option<String>,
    what: &str,
    max: usize,
    default: usize,
) -> Result<(Option<i64>, usize), ApiError> {
    let before = match before {
        Some(b) => Some(
            b.parse::<i64>()
                .map_err(|_| bad_param("before", format!("{b:?} is not a {what} id")))?,
        ),
        None => None,
    };
    let limit = match limit {
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| bad_param("limit", format!("{l:?} is not a number from 1 to {max}")))?,
        None => default,
    };
    Ok((before, limit))
}

/// Taken as text, so a bad value is refused with its name in a JSON error.
#[derive(Deserialize)]
struct DeliveryPage {
    job: Option<String>,
    before: Option<String>,
    limit: Option<String>,
}

/// Notification deliveries, newest first (of one job with `?job=`), paged by id.
async fn deliveries(
    State(state): State<AppState>,
    Query(page): Query<DeliveryPage>,
) -> Result<Json<Value>, ApiError> {
    let (before, limit) = page_params(&page.before, &page.limit, "delivery", 500, 50)?;
    let rows = state
        .history
        .deliveries(page.job.as_deref(), before, limit)
        .await?;
    let next = (rows.len() == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    Ok(Json(json!({ "deliveries": rows, "next_before": next })))
}

async fn job_deliveries(
    state: State<AppState>,
    Path(name): Path<String>,
    Query(page): Query<DeliveryPage>,
) -> Result<Json<Value>, ApiError> {
    deliveries(
        state,
        Query(DeliveryPage {
            job: Some(name),
            ..page
        }),
    )
    .await
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
    // Subscribed before the first read, so nothing committed in between is missed.
    let commits = state.history.subscribe();
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
    let stream = follow(
        state.history.clone(),
        commits,
        instance,
        machine,
        q.offset.unwrap_or(0),
    )
    .map(|item| {
        let event = match item {
            Followed::Output(slice) => Event::default().event("output").json_data(&slice),
            Followed::End {
                exit_code,
                meaning,
                next,
            } => Event::default().event("end").json_data(json!({
                "exit_code": exit_code, "meaning": meaning, "next": next,
            })),
        };
        Ok::<_, Infallible>(event.unwrap_or_default())
    });
    // The keep-alive comment is for proxies and dead peers; it never touches the store.
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// What following a target yields.
#[derive(Debug, PartialEq)]
enum Followed {
    Output(Slice),
    End {
        exit_code: Option<i64>,
        meaning: Option<String>,
        /// The offset after the last byte.
        next: u64,
    },
}

/// A target's output from `offset` as it is committed, then its end. Reads once at the start,
/// then only after a commit that touched this target (or after notices were missed): an idle
/// follower has no timer and asks the store nothing.
fn follow(
    history: History,
    commits: Commits,
    instance: String,
    machine: String,
    offset: u64,
) -> impl Stream<Item = Followed> {
    struct Follow {
        history: History,
        commits: Commits,
        instance: String,
        machine: String,
        offset: u64,
        done: bool,
        first: bool,
    }
    let follow = Follow {
        history,
        commits,
        instance,
        machine,
        offset,
        done: false,
        first: true,
    };
    futures_util::stream::unfold(follow, |mut f| async move {
        if f.done {
            return None;
        }
        loop {
            if !f.first {
                loop {
                    match f.commits.next().await {
                        Some(n) if n.touched_target(&f.instance, &f.machine) => break,
                        Some(_) => continue,
                        // The store is gone: the read below fails and ends the stream.
                        None => break,
                    }
                }
            }
            f.first = false;
            let Ok(Some((slice, done))) = f.history.output(&f.instance, &f.machine, f.offset).await
            else {
                return None;
            };
            if !slice.text.is_empty() {
                f.offset = slice.next;
                // A finished target's end follows at once: no commit will come to wake it.
                f.first = done;
                return Some((Followed::Output(slice), f));
            }
            if done {
                f.done = true;
                let detail = f.history.run(&f.instance).await.ok().flatten();
                let target =
                    detail.and_then(|d| d.targets.into_iter().find(|t| t.machine == f.machine));
                let end = Followed::End {
                    exit_code: target.as_ref().and_then(|t| t.exit_code),
                    meaning: target.and_then(|t| t.meaning),
                    next: f.offset,
                };
                return Some((end, f));
            }
        }
    })
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
    let daemons = state.history.daemons(crate::history::fleet::LEASE).await?;
    Ok(Json(json!({
        "version": crate::VERSION,
        "daemon": snap.config.settings.daemon_name,
        "daemons": daemons,
        "jobs": snap.config.jobs.len(),
        "maintenance": { "global": snap.maintenance.global, "machines": snap.maintenance.machines },
        "running": running,
    })))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;

    use super::{Followed, follow};
    use crate::history::{History, Retention};
    use crate::journal::{RunEvent, Trigger};

    fn at() -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn output(instance: &str, machine: &str, data: &str) -> RunEvent {
        RunEvent::Output {
            instance: instance.into(),
            machine: machine.into(),
            data: data.into(),
            seq: None,
        }
    }

    fn started(instance: &str) -> RunEvent {
        RunEvent::Started {
            instance: instance.into(),
            job: "j".into(),
            trigger: Trigger::Manual,
            scheduled: None,
            at: at(),
            token: "t".into(),
        }
    }

    #[tokio::test]
    async fn a_finished_target_is_followed_to_its_end_without_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(&dir.path().join("h.db"), Retention::default()).unwrap();
        h.record(started("j_1"));
        h.record(output("j_1", "a", "all of it\n"));
        h.record(RunEvent::TargetEnded {
            instance: "j_1".into(),
            machine: "a".into(),
            code: 3,
            note: None,
            at: at(),
        });
        h.flush().await.unwrap();
        let stream = follow(h.clone(), h.subscribe(), "j_1".into(), "a".into(), 0);
        let items: Vec<Followed> = tokio::time::timeout(Duration::from_secs(5), stream.collect())
            .await
            .expect("the stream ends by itself");
        assert!(matches!(&items[0], Followed::Output(s) if s.text == "all of it\n"));
        assert!(matches!(
            items.get(1),
            Some(Followed::End {
                exit_code: Some(3),
                ..
            })
        ));
        assert_eq!(items.len(), 2);
    }

    #[tokio::test]
    async fn an_idle_follower_costs_nothing_and_wakes_only_for_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(&dir.path().join("h.db"), Retention::default()).unwrap();
        h.record(started("j_1"));
        h.record(RunEvent::Published {
            instance: "j_1".into(),
            jid: "1".into(),
            machines: vec!["a".into(), "b".into()],
        });
        h.record(output("j_1", "a", "hello "));
        h.flush().await.unwrap();
        let stream = follow(h.clone(), h.subscribe(), "j_1".into(), "a".into(), 0);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                let _ = tx.send(item);
            }
        });
        let next = async |rx: &mut tokio::sync::mpsc::UnboundedReceiver<Followed>| {
            tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("within 5 s")
        };
        let Some(Followed::Output(first)) = next(&mut rx).await else {
            panic!("no output");
        };
        assert_eq!(first.text, "hello ");

        // A minute with nothing committed: no read, nothing sent.
        let asked = h.queries();
        tokio::time::pause();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(
            h.queries(),
            asked,
            "an idle follower asks the store nothing"
        );
        assert!(rx.try_recv().is_err());
        tokio::time::resume();

        // Commits about another target and another run: still no read (only the flush's).
        h.record(output("j_1", "b", "other"));
        h.record(started("j_2"));
        h.flush().await.unwrap();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(h.queries(), asked + 1, "a commit elsewhere is not read");
        assert!(rx.try_recv().is_err());

        // Its own target's output, then its end.
        h.record(output("j_1", "a", "world\n"));
        let Some(Followed::Output(more)) = next(&mut rx).await else {
            panic!("no output");
        };
        assert_eq!((more.text.as_str(), more.next), ("world\n", 12));
        h.record(RunEvent::TargetEnded {
            instance: "j_1".into(),
            machine: "a".into(),
            code: 0,
            note: None,
            at: at(),
        });
        assert_eq!(
            next(&mut rx).await,
            Some(Followed::End {
                exit_code: Some(0),
                meaning: Some(crate::engine::meaning(0).to_string()),
                next: 12,
            })
        );
        assert_eq!(next(&mut rx).await, None, "the stream ends after `end`");
    }

    mod ledger {
        use axum::extract::{Path, Query, State};
        use axum::http::StatusCode;
        use jiff::{SignedDuration, Timestamp};

        use super::super::{SlotsQuery, job, last_due_fired, slots};
        use crate::history::ledger::Head;
        use crate::history::{History, Retention};
        use crate::journal::{Claim, MissReason, SkipReason, SlotFate, Trigger};

        fn t(s: &str) -> Timestamp {
            s.parse().unwrap()
        }

        /// Every minute at :00.
        fn minutely() -> crate::schedule::Schedule {
            let config = crate::config::load_valid(
                "m:\n  sec: 0\n  min: '*'\n  hour: '*'\n  dom: '*'\n  mon: '*'\n  dow: '*'\n  targets: '*'\n  command: 'true'\n",
            );
            config.jobs["m"].schedule.clone()
        }

        fn head(claimed: Option<&str>, state: Option<&str>) -> Head {
            Head {
                resume_from: Some(t(claimed.unwrap_or("2025-01-01T00:00:30Z"))),
                last_claimed: claimed.map(t),
                last_state: state.map(String::from),
                last_reason: None,
                last_fired: None,
            }
        }

        #[test]
        fn the_last_due_slot_fired_unless_skipped_missed_or_left_unclaimed() {
            let s = minutely();
            let now = t("2025-01-01T00:01:10Z");
            assert_eq!(last_due_fired(None, &s, now), None, "no head");
            // Planned at 00:00:30, never claimed: the 00:01 slot is 10 s due (within grace).
            let planned = head(None, None);
            assert_eq!(last_due_fired(Some(&planned), &s, now), None);
            // ... but 31 s past it, nobody claimed it: the daemon is stuck.
            let later = t("2025-01-01T00:01:31Z");
            assert_eq!(last_due_fired(Some(&planned), &s, later), Some(false));

            let fired = head(Some("2025-01-01T00:01:00Z"), Some("fired"));
            assert_eq!(last_due_fired(Some(&fired), &s, now), Some(true));
            // The 00:02 slot is exactly 30 s due: still within grace; then past it.
            let edge = t("2025-01-01T00:02:30Z");
            assert_eq!(last_due_fired(Some(&fired), &s, edge), Some(true));
            assert_eq!(
                last_due_fired(Some(&fired), &s, edge + SignedDuration::from_secs(1)),
                Some(false)
            );
            // Planned afresh at 00:05:10 (a new schedule): the 00:02 slot was never owed.
            let replanned = Head {
                resume_from: Some(t("2025-01-01T00:05:10Z")),
                ..fired.clone()
            };
            let soon = t("2025-01-01T00:05:20Z");
            assert_eq!(last_due_fired(Some(&fired), &s, soon), Some(false));
            assert_eq!(last_due_fired(Some(&replanned), &s, soon), Some(true));
            for state in ["skipped", "missed"] {
                let h = head(Some("2025-01-01T00:01:00Z"), Some(state));
                assert_eq!(last_due_fired(Some(&h), &s, now), Some(false), "{state}");
            }
        }

        fn claim(
            slot: Option<&str>,
            last: Option<&str>,
            fate: SlotFate,
            instance: Option<&str>,
        ) -> Claim {
            let at =
                t(last.or(slot).unwrap_or("2025-01-01T00:05:30Z")) + SignedDuration::from_millis(5);
            Claim {
                job: "long".into(),
                slot: slot.map(t),
                last: last.map(t),
                count: if last.is_some() { 3 } else { 1 },
                fate,
                trigger: if slot.is_some() {
                    Trigger::Schedule
                } else {
                    Trigger::Manual
                },
                instance: instance.map(String::from),
                detail: String::new(),
                at,
            }
        }

        fn q(query: &str) -> Query<SlotsQuery> {
            let uri: axum::http::Uri = format!("/x?{query}").parse().unwrap();
            Query::try_from_uri(&uri).unwrap()
        }

        async fn ledger_with_rows() -> (tempfile::TempDir, History) {
            let dir = tempfile::tempdir().unwrap();
            let h = History::open(&dir.path().join("h.db"), Retention::default()).unwrap();
            let claims = vec![
                claim(
                    Some("2025-01-01T00:00:00Z"),
                    None,
                    SlotFate::Fired,
                    Some("long_1735689600"),
                ),
                claim(
                    Some("2025-01-01T00:01:00Z"),
                    Some("2025-01-01T00:03:00Z"),
                    SlotFate::Missed(MissReason::DaemonDown),
                    None,
                ),
                claim(
                    Some("2025-01-01T00:04:00Z"),
                    None,
                    SlotFate::Skipped(SkipReason::Overlap),
                    None,
                ),
                claim(None, None, SlotFate::Fired, Some("long_1735690000")),
            ];
            let answers = h.claim(claims, "test").await.unwrap();
            assert!(answers.iter().all(Result::is_ok));
            (dir, h)
        }

        #[tokio::test]
        async fn slots_pages_filters_and_refuses_bad_parameters_by_name() {
            let (_dir, h) = ledger_with_rows().await;
            let (state, _snapshots, _commands) = crate::api::testing::state(h.clone());
            let get = |query: &str, job: &str| {
                slots(State(state.clone()), Path(job.to_string()), q(query))
            };
            let all = get("", "long").await.unwrap().0;
            let states: Vec<&str> = all["slots"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["state"].as_str().unwrap())
                .collect();
            assert_eq!(states, ["fired", "skipped", "missed", "fired"], "{all}");
            assert_eq!(all["slots"][0]["trigger"], "manual");
            assert_eq!(all["next_before"], serde_json::Value::Null);

            let page = get("limit=2", "long").await.unwrap().0;
            assert_eq!(page["slots"].as_array().unwrap().len(), 2);
            let before = page["next_before"]
                .as_i64()
                .expect("a full page has a next");
            assert_eq!(page["slots"][1]["id"].as_i64(), Some(before));
            let rest = get(&format!("before={before}"), "long").await.unwrap().0;
            assert_eq!(rest["slots"][0]["state"], "missed");
            assert_eq!(rest["slots"][0]["count"], 3);
            assert_eq!(rest["slots"][0]["last"], "2025-01-01T00:03:00Z");

            let missed = get("state=missed", "long").await.unwrap().0;
            assert_eq!(missed["slots"].as_array().unwrap().len(), 1);
            assert_eq!(missed["slots"][0]["reason"], "daemon down");
            let manual = get("state=manual", "long").await.unwrap().0;
            assert_eq!(manual["slots"][0]["instance"], "long_1735690000");
            let since = get("since=2025-01-01T00:03:30Z&state=skipped", "long")
                .await
                .unwrap()
                .0;
            assert_eq!(since["slots"].as_array().unwrap().len(), 1);

            for (query, name) in [
                ("state=bogus", "state"),
                ("since=yesterday", "since"),
                ("limit=0", "limit"),
                ("limit=1001", "limit"),
                ("limit=ten", "limit"),
                ("before=x", "before"),
            ] {
                let e = get(query, "long").await.unwrap_err();
                assert_eq!(e.status, StatusCode::BAD_REQUEST, "{query}");
                assert!(
                    e.message.starts_with(&format!("{name}: ")),
                    "{query}: {}",
                    e.message
                );
            }
            // Not configured and no rows: 404; a configured job with no rows has an empty page.
            let e = get("", "nope").await.unwrap_err();
            assert_eq!(e.status, StatusCode::NOT_FOUND);
            let h2 = History::open(&_dir.path().join("h2.db"), Retention::default()).unwrap();
            let (empty, _s, _c) = crate::api::testing::state(h2);
            let page = slots(State(empty), Path("long".into()), q(""))
                .await
                .unwrap()
                .0;
            assert_eq!(page["slots"], serde_json::json!([]));
        }

        #[tokio::test]
        async fn a_job_shows_its_last_scheduled_slot_and_the_next() {
            let (_dir, h) = ledger_with_rows().await;
            let (state, _snapshots, _commands) = crate::api::testing::state(h);
            let v = job(State(state), Path("long".into())).await.unwrap().0;
            // The manual run is newer, but the last slot is the scheduled one.
            assert_eq!(v["slots"]["last"]["state"], "skipped", "{v}");
            assert_eq!(v["slots"]["last"]["slot"], "2025-01-01T00:04:00Z");
            assert_eq!(v["slots"]["next"], "2099-01-01T00:00:00Z");
            // Its last slot was skipped: not fired.
            assert_eq!(v["slots"]["last_due_fired"], false);
            assert_eq!(v["last_due_fired"], false);
            assert_eq!(
                (
                    v["last_slot_state"].as_str(),
                    v["last_slot_reason"].as_str()
                ),
                (Some("skipped"), Some("overlap"))
            );
            assert!(v["skipped"].is_array(), "the skipped list stays");
        }
    }
}
