//! The HTTP side: the versioned REST API (`/api/v1`, described by `proto/api/openapi.json`),
//! the original Saltpeter's endpoints and UI WebSocket (so its React UI keeps working), the
//! embedded web UI, and Prometheus metrics. It reads the history store and a snapshot of the
//! config, and acts only through [`Control`] commands.
//!
//! Must not know: Salt, the wrapper protocol, the engine, SQL.

mod legacy;
mod metrics;
mod rest;
mod ui;
mod ws;

use std::net::IpAddr;
use std::sync::Arc;

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::watch;

use crate::config::{ApiToken, Config, Diagnostic, Maintenance, Settings};
use crate::control::{Control, Refusal};
use crate::history::{History, HistoryError, MaintenanceState};
use crate::metrics::Metrics;

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
    tokens: Arc<Vec<ApiToken>>,
    /// Mutations need an operator token (not on loopback, or tokens are configured).
    guarded: bool,
    origins: Arc<Vec<String>>,
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
        let loopback = settings
            .api_ws_bind_addr
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(settings.api_ws_bind_addr == "localhost");
        AppState {
            control,
            history,
            snapshot,
            guarded: !loopback || !settings.api_tokens.is_empty(),
            tokens: Arc::new(settings.api_tokens.clone()),
            origins: Arc::new(settings.api_allowed_origins.clone()),
            metrics,
        }
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
        if !self.guarded {
            return Ok(());
        }
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .or(query_token);
        let Some(presented) = presented else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this call needs an operator token (Authorization: Bearer <token>, see saltpeter_config.api_tokens)",
            ));
        };
        match self
            .tokens
            .iter()
            .find(|t| constant_time_eq(t.token.as_bytes(), presented.as_bytes()))
        {
            Some(t) if t.operator => Ok(()),
            Some(t) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("token {:?} is read-only", t.name),
            )),
            None => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unknown token")),
        }
    }

    /// A browser may open the UI WebSocket only from the API's own origin or an allowed one
    /// (the original accepted any site: cross-site WebSocket hijacking).
    fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get("origin").and_then(|v| v.to_str().ok()) else {
            return true; // not a browser
        };
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let bare = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or(origin);
        bare == host || self.origins.iter().any(|o| o == origin)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    axum::Router::new()
        .merge(rest::routes())
        .merge(legacy::routes())
        .merge(ui::routes())
        .route("/metrics", axum::routing::get(metrics::handler))
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
