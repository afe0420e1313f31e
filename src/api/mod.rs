//! The HTTP side: the versioned REST API (`/api/v1`, described by `proto/api/openapi.json`),
//! the original Saltpeter's endpoints and UI WebSocket (so its React UI keeps working), the
//! embedded web UI, and Prometheus metrics. It reads the history store and a snapshot of the
//! config, and acts only through [`Control`] commands.
//!
//! Must not know: Salt, the wrapper protocol, the engine, SQL.

mod access;
mod legacy;
mod metrics;
mod rest;
mod ui;
mod ws;

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::watch;

pub use self::access::StoreTokens;
use self::access::{Access, request_host};
use crate::config::{Config, Diagnostic, Maintenance, Settings};
use crate::control::{Control, Refusal};
use crate::history::{History, HistoryError, MaintenanceState};
use crate::metrics::Metrics;

/// The header that marks a mutation as sent by a program (the CLI, the UI's script) rather than
/// by an HTML form or a beacon: a browser sends it cross-origin only after a CORS preflight,
/// which the API never grants. Any value will do; clients send `1`.
pub const REQUEST_HEADER: &str = "x-saltpeter-request";

/// What the API shows of the daemon's config, replaced on every reload or maintenance switch.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub config: Config,
    /// The findings of the load in force (`saltpeter check` of the running config).
    pub diagnostics: Vec<Diagnostic>,
    /// Maintenance in force: the config file's and the API's switches together.
    pub maintenance: Maintenance,
    /// The API's own switches (persisted in the database).
    pub switched: MaintenanceState,
    pub changed: jiff::Timestamp,
}

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    control: Control,
    history: History,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    access: Arc<Access>,
    pub metrics: Metrics,
}

impl AppState {
    pub fn new(
        control: Control,
        history: History,
        snapshot: watch::Receiver<Arc<Snapshot>>,
        settings: &Settings,
        metrics: Metrics,
    ) -> AppState {
        // Read once: a rename while running needs a restart, as for the bind address.
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok());
        let hosts_file = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        AppState {
            control,
            history,
            snapshot,
            access: Arc::new(Access::new(settings, hostname.as_deref(), &hosts_file)),
            metrics,
        }
    }

    /// Where the daemon puts the API tokens it reads from the store.
    pub fn store_tokens(&self) -> StoreTokens {
        self.access.stored().clone()
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// A receiver of config snapshots that wakes on the next change, for live views.
    fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        let mut rx = self.snapshot.clone();
        rx.mark_unchanged();
        rx
    }

    /// Whether the request may change things: an operator's bearer token, or an open API.
    fn authorize(&self, headers: &HeaderMap, query_token: Option<&str>) -> Result<(), ApiError> {
        Ok(self.access.authorize(headers, query_token)?)
    }

    /// A browser may open the UI WebSocket only under one of the API's names and from its own
    /// origin or an allowed one (the original accepted any site: cross-site WebSocket
    /// hijacking, and DNS rebinding).
    fn websocket_allowed(&self, req: &Request) -> Result<(), ApiError> {
        let host = request_host(req);
        self.access.check_host(host)?;
        Ok(self.access.check_site(req.headers(), host)?)
    }
}

/// Every mutating request passes the browser-safety rules before its handler runs (and so
/// before the token check), on loopback too.
async fn guard_mutations(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let mutation = matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if mutation
        && let Err(denied) = state
            .access
            .check_mutation(req.headers(), request_host(&req))
    {
        return ApiError::from(denied).into_response();
    }
    next.run(req).await
}

/// The UI's pages and scripts are served only under the API's own names (DNS rebinding).
async fn known_host_only(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Err(denied) = state.access.check_host(request_host(&req)) {
        return ApiError::from(denied).into_response();
    }
    next.run(req).await
}

/// A JSON error: `{"error": "<message>"}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn not_found(what: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("{what} not found"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<HistoryError> for ApiError {
    fn from(e: HistoryError) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> ApiError {
        let status = match &r {
            Refusal::UnknownJob(_) | Refusal::NotRunning(_) | Refusal::UnknownTarget { .. } => {
                StatusCode::NOT_FOUND
            }
            Refusal::Maintenance(_) | Refusal::AlreadyRunning { .. } => StatusCode::CONFLICT,
            Refusal::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Refusal::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, r.to_string())
    }
}

/// The whole router.
pub fn router(state: AppState) -> axum::Router {
    let ui = ui::routes().route_layer(from_fn_with_state(state.clone(), known_host_only));
    axum::Router::new()
        .merge(rest::routes())
        .merge(legacy::routes())
        .merge(ui)
        .route("/metrics", axum::routing::get(metrics::handler))
        // On every route, present and future; unknown paths still get their 404.
        .route_layer(from_fn_with_state(state.clone(), guard_mutations))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        // Large bodies are refused before they are read.
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(state)
}

/// Serves until the process ends; a failing connection only ends itself.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState) {
    if let Err(e) = axum::serve(listener, router(state)).await {
        tracing::error!(error = %e, "the API server stopped");
    }
}

/// An [`AppState`] for unit tests, without a daemon.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A job that never comes due by itself.
    const JOBS: &str = "long:\n  sec: 0\n  min: 0\n  hour: 0\n  dom: 1\n  mon: 1\n  dow: '*'\n  year: 2099\n  targets: '*'\n  command: echo hi\n";

    /// The state over `history` with the job `long`, the sender of its config snapshots, and
    /// the receiving end of its commands (nobody carries them out).
    pub(crate) fn state(
        history: History,
    ) -> (
        AppState,
        watch::Sender<Arc<Snapshot>>,
        tokio::sync::mpsc::Receiver<crate::control::Command>,
    ) {
        let config = crate::config::load_valid(JOBS);
        let snapshot = Snapshot {
            config: config.clone(),
            diagnostics: Vec::new(),
            maintenance: Maintenance::default(),
            switched: MaintenanceState::default(),
            changed: jiff::Timestamp::from_second(1_800_000_000).expect("in range"),
        };
        let (snapshots, rx) = watch::channel(Arc::new(snapshot));
        let (control, commands) = Control::new(4);
        let state = AppState::new(control, history, rx, &config.settings, Metrics::default());
        (state, snapshots, commands)
    }
}
