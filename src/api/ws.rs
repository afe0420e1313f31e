//! WebSocket upgrades on the API's HTTP server, with the same tungstenite the machines hub uses
//! (one WebSocket implementation in the binary).

use std::future::Future;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

pub type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Answers the handshake and runs `handle` on the socket once the upgrade completes.
pub fn upgrade<F, Fut>(mut req: Request, handle: F) -> Response
where
    F: FnOnce(Socket) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let headers = req.headers();
    let is_upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|_| is_upgrade)
    else {
        return super::ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint is a WebSocket (send Upgrade: websocket)",
        )
        .into_response();
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return super::ApiError::new(StatusCode::BAD_REQUEST, "connection cannot be upgraded")
            .into_response();
    };
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                // UI messages are small; a client sending megabytes is cut off. A small read
                // buffer (it grows on demand): tungstenite's default is 128 KiB per client.
                let config = WebSocketConfig::default()
                    .read_buffer_size(4 * 1024)
                    .max_message_size(Some(1 << 20))
                    .max_frame_size(Some(1 << 20));
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                handle(socket).await;
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .expect("static response")
}
