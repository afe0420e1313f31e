//! `GET /metrics`: the daemon's [`crate::metrics::Metrics`] with the database's size.

use axum::extract::State;
use axum::response::IntoResponse;

pub async fn handler(State(state): State<super::AppState>) -> impl IntoResponse {
    let db = state.history.size().await.unwrap_or(0);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(db),
    )
}
