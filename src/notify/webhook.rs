//! Webhook notifications: a signed JSON `POST`, blocking (run it off the async runtime).
//!
//! Headers: `Content-Type: application/json`, `User-Agent: saltpeter/<version>`,
//! `X-Saltpeter-Delivery: <id>` (the same for every attempt of one delivery: a receiver
//! dedupes on it, since a delivery may be repeated after a crash between sending and
//! recording), `X-Saltpeter-Timestamp: <unix seconds>` and, with a secret,
//! `X-Saltpeter-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>` (see
//! [`signature`]; the timestamp in the signed text lets a receiver refuse replays).
//!
//! Any 2xx is delivered. Redirects are not followed: a 3xx fails, as does any 4xx (for good)
//! but 408 and 429, which are retried like 5xx, timeouts and connection failures.

use std::io::Read;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use sha2::Sha256;

use super::send_error::{SendError, first_line, http_status_retryable, redact};
use crate::config::notify::{Webhook, url_origin};

/// Most of a failed answer's body read, for the error's text.
const MAX_ERROR_BODY: u64 = 4096;

/// Posts `body` (the notice's JSON, as stored) to the hook, within `hook.timeout_secs` for the
/// whole exchange. `delivery` identifies the delivery (the same on a retry); `now_unix` is
/// the time sent and signed.
pub fn send(hook: &Webhook, delivery: i64, body: &str, now_unix: i64) -> Result<(), SendError> {
    let secs = hook.timeout_secs.max(1);
    let origin = url_origin(&hook.url).to_string();
    let addr = host_port(&hook.url);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(secs)))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let mut req = agent
        .post(&hook.url)
        .header("Content-Type", "application/json")
        .header(
            "User-Agent",
            concat!("saltpeter/", env!("CARGO_PKG_VERSION")),
        )
        .header("X-Saltpeter-Delivery", delivery.to_string())
        .header("X-Saltpeter-Timestamp", now_unix.to_string());
    if let Some(secret) = &hook.secret {
        req = req.header(
            "X-Saltpeter-Signature",
            format!("sha256={}", signature(secret, now_unix, body)),
        );
    }
    let mut resp = match req.send(body) {
        Ok(resp) => resp,
        Err(e) => return Err(classify_error(e, hook, secs, &origin, &addr)),
    };
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(());
    }
    let mut head = Vec::new();
    let _ = resp
        .body_mut()
        .as_reader()
        .take(MAX_ERROR_BODY)
        .read_to_end(&mut head);
    let text = first_line(&String::from_utf8_lossy(&head));
    Err(SendError::Http {
        status,
        origin,
        body: redact(&text, &secrets(hook)),
    })
}

/// The signature of a body: lowercase hex of HMAC-SHA256 keyed with `secret` over
/// `"<timestamp>.<body>"` (sent as `X-Saltpeter-Signature: sha256=<this>`). A receiver
/// recomputes it from the `X-Saltpeter-Timestamp` header and the raw body, compares in
/// constant time, and refuses timestamps too far from its clock.
pub fn signature(secret: &str, timestamp: i64, body: &str) -> String {
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let tag = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(tag.len() * 2);
    for b in tag.iter() {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// Whether a status means delivered (`Ok`), or else whether another attempt may help.
pub fn classify_status(status: u16) -> Result<(), bool> {
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(http_status_retryable(status))
    }
}

/// What must never show in an error: the secret, and the URL (its path may be a secret).
fn secrets(hook: &Webhook) -> Vec<&str> {
    let mut s = vec![hook.url.as_str()];
    if let Some(secret) = &hook.secret {
        s.push(secret);
    }
    let path = &hook.url[url_origin(&hook.url).len()..];
    if path.len() > 1 {
        s.push(path);
    }
    s
}

fn classify_error(
    e: ureq::Error,
    hook: &Webhook,
    secs: u64,
    origin: &str,
    addr: &str,
) -> SendError {
    use std::io::ErrorKind;
    let safe = |text: String| redact(&text, &secrets(hook));
    match e {
        ureq::Error::Timeout(_) => SendError::Timeout { secs },
        ureq::Error::Io(io) => match io.kind() {
            ErrorKind::TimedOut | ErrorKind::WouldBlock => SendError::Timeout { secs },
            ErrorKind::ConnectionRefused => SendError::Refused {
                addr: addr.to_string(),
            },
            _ => match io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(tls) => SendError::Tls(safe(tls.to_string())),
                None => SendError::Connection {
                    addr: addr.to_string(),
                    reason: safe(io.to_string()),
                },
            },
        },
        ureq::Error::HostNotFound => SendError::Connection {
            addr: addr.to_string(),
            reason: "host not found".into(),
        },
        ureq::Error::ConnectionFailed => SendError::Connection {
            addr: addr.to_string(),
            reason: "connection failed".into(),
        },
        ureq::Error::Rustls(tls) => SendError::Tls(safe(tls.to_string())),
        ureq::Error::Tls(text) => SendError::Tls(text.to_string()),
        ureq::Error::Pem(pem) => SendError::Tls(safe(pem.to_string())),
        ureq::Error::BadUri(_) | ureq::Error::Http(_) | ureq::Error::RequireHttpsOnly(_) => {
            SendError::Setup(format!("bad webhook URL {origin}/…"))
        }
        ureq::Error::Protocol(p) => {
            SendError::Protocol(safe(format!("bad HTTP from {origin}: {p}")))
        }
        other => SendError::Protocol(safe(format!("{origin}: {other}"))),
    }
}

/// `host:port` of a URL (the scheme's port when none is written), for connection errors.
fn host_port(url: &str) -> String {
    let origin = url_origin(url);
    let (scheme, authority) = origin.split_once("://").unwrap_or(("http", origin));
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let has_port = match authority.rfind(']') {
        Some(bracket) => authority[bracket..].contains(':'),
        None => authority.contains(':'),
    };
    if has_port {
        authority.to_string()
    } else if scheme.eq_ignore_ascii_case("https") {
        format!("{authority}:443")
    } else {
        format!("{authority}:80")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_an_independent_hmac() {
        // Computed with Python's standard library:
        //   hmac.new(b"It's a Secret to Everybody",
        //            b'1718000000.{"version":1,"event":"test"}', hashlib.sha256).hexdigest()
        assert_eq!(
            signature(
                "It's a Secret to Everybody",
                1718000000,
                r#"{"version":1,"event":"test"}"#
            ),
            "5575506835581cca34394de804ddc27eb0e8b24b1c538bd9f941a00199589abd"
        );
    }

    #[test]
    fn the_timestamp_is_signed() {
        assert_ne!(signature("s", 1, "{}"), signature("s", 2, "{}"));
        assert_eq!(signature("s", 1, "{}").len(), 64);
    }

    #[test]
    fn statuses_are_classified() {
        for ok in [200, 201, 202, 204, 299] {
            assert_eq!(classify_status(ok), Ok(()), "{ok}");
        }
        for retry in [500, 502, 503, 504, 599, 408, 429] {
            assert_eq!(classify_status(retry), Err(true), "{retry}");
        }
        for permanent in [
            100, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 410, 422,
        ] {
            assert_eq!(classify_status(permanent), Err(false), "{permanent}");
        }
    }

    #[test]
    fn origins_and_addresses_leave_the_path_out() {
        assert_eq!(
            url_origin("https://hooks.example.com/services/T0/B0/secret?x=1"),
            "https://hooks.example.com"
        );
        assert_eq!(
            url_origin("http://127.0.0.1:8080/hook"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            host_port("https://hooks.example.com/x"),
            "hooks.example.com:443"
        );
        assert_eq!(host_port("http://example.com"), "example.com:80");
        assert_eq!(host_port("http://127.0.0.1:8080/hook"), "127.0.0.1:8080");
        assert_eq!(host_port("http://[::1]:9/x"), "[::1]:9");
        assert_eq!(host_port("https://[::1]/x"), "[::1]:443");
    }

    #[test]
    fn errors_never_show_the_secret_or_the_path() {
        let hook = Webhook {
            url: "http://127.0.0.1:9/services/T0/hunter22".into(),
            secret: Some("s3cr3t-value".into()),
            timeout_secs: 1,
        };
        let e = classify_error(
            ureq::Error::BadUri("http://127.0.0.1:9/services/T0/hunter22".into()),
            &hook,
            1,
            url_origin(&hook.url),
            &host_port(&hook.url),
        );
        let text = e.to_string();
        assert!(!text.contains("hunter22"), "{text}");
        assert!(!e.retryable());
    }
}
