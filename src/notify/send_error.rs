//! Why sending a notification failed, shared by the channels: one line for the log, the API
//! and the outbox's record, and whether trying again later may help.
//!
//! No text here ever holds a webhook's secret, the path of its URL (a chat service's hook URL
//! is itself a secret) or an SMTP password: the senders build these from what is safe to show
//! and pass anything foreign through [`redact`].

/// A failed attempt to deliver one notification.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The webhook answered with a status other than 2xx. `origin` is `scheme://host[:port]`;
    /// `body` the first line of the answer's body (may be empty).
    #[error("HTTP {status} from {origin}{}", colon_then(body))]
    Http {
        status: u16,
        origin: String,
        body: String,
    },
    /// No answer within the channel's timeout.
    #[error("timed out after {secs} s")]
    Timeout { secs: u64 },
    /// Nothing listens at `addr` (`host:port`).
    #[error("connection refused to {addr}")]
    Refused { addr: String },
    /// The connection to `addr` could not be made or was lost (a name that does not resolve,
    /// a reset, a network that cannot be reached…).
    #[error("connection to {addr} failed: {reason}")]
    Connection { addr: String, reason: String },
    /// The TLS handshake failed (an unknown CA, a name mismatch, no common protocol…).
    #[error("TLS: {0}")]
    Tls(String),
    /// An SMTP server's negative reply: 4xx is transient, 5xx permanent.
    #[error("SMTP {code}{}", space_then(text))]
    Smtp { code: u16, text: String },
    /// An email address that does not parse (`from` or one of `to`).
    #[error("bad address `{address}`: {reason}")]
    Address { address: String, reason: String },
    /// The server broke the protocol (a malformed reply, a connection closed mid-exchange).
    #[error("{0}")]
    Protocol(String),
    /// What is configured cannot work as it is: an unreadable `ca_file`, a server that does
    /// not offer STARTTLS or any usable authentication, a bad URL.
    #[error("{0}")]
    Setup(String),
    /// The notification itself cannot be sent as it is (a stored body that does not parse), or
    /// the attempt broke down inside this process.
    #[error("{0}")]
    Body(String),
}

impl SendError {
    /// Whether a later attempt may succeed: timeouts, connection and TLS failures, HTTP 5xx,
    /// 408 and 429, SMTP 4xx, protocol breaks. Not: other HTTP statuses (4xx, and 3xx, which
    /// are not followed), SMTP 5xx, bad addresses, setup errors, a body that cannot be sent.
    pub fn retryable(&self) -> bool {
        match self {
            SendError::Http { status, .. } => http_status_retryable(*status),
            SendError::Smtp { code, .. } => (400..500).contains(code),
            SendError::Timeout { .. }
            | SendError::Refused { .. }
            | SendError::Connection { .. }
            | SendError::Tls(_)
            | SendError::Protocol(_) => true,
            SendError::Address { .. } | SendError::Setup(_) | SendError::Body(_) => false,
        }
    }
}

/// Whether a non-2xx HTTP status is worth another attempt: 5xx, 408 (Request Timeout) and
/// 429 (Too Many Requests).
pub fn http_status_retryable(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

fn colon_then(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

fn space_then(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!(" {text}")
    }
}

/// Longest text kept from a server's answer.
const MAX_LINE: usize = 300;

/// The first non-blank line of `text`, trimmed, without control characters, cut to a few
/// hundred characters: what a server said, fit for a one-line error.
pub fn first_line(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let mut out: String = line
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_LINE)
        .collect();
    if line.chars().count() > MAX_LINE {
        out.push('…');
    }
    out
}

/// `text` with every occurrence of each secret replaced by `(redacted)`. Secrets shorter than
/// 4 characters are left alone (they would match ordinary text, and none would be configured).
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for secret in secrets {
        if secret.chars().count() >= 4 {
            out = out.replace(secret, "(redacted)");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_one_line_and_say_what_happened() {
        let e = SendError::Http {
            status: 500,
            origin: "https://hooks.example.com".into(),
            body: first_line("\n  database is down  \nstack trace…"),
        };
        assert_eq!(
            e.to_string(),
            "HTTP 500 from https://hooks.example.com: database is down"
        );
        let e = SendError::Http {
            status: 404,
            origin: "http://127.0.0.1:8080".into(),
            body: String::new(),
        };
        assert_eq!(e.to_string(), "HTTP 404 from http://127.0.0.1:8080");
        assert_eq!(
            SendError::Timeout { secs: 10 }.to_string(),
            "timed out after 10 s"
        );
        assert_eq!(
            SendError::Refused {
                addr: "127.0.0.1:25".into()
            }
            .to_string(),
            "connection refused to 127.0.0.1:25"
        );
        assert_eq!(
            SendError::Smtp {
                code: 550,
                text: "5.1.1 no such user".into()
            }
            .to_string(),
            "SMTP 550 5.1.1 no such user"
        );
        assert_eq!(
            SendError::Tls("invalid peer certificate: UnknownIssuer".into()).to_string(),
            "TLS: invalid peer certificate: UnknownIssuer"
        );
    }

    #[test]
    fn what_is_retryable() {
        let http = |status| SendError::Http {
            status,
            origin: String::new(),
            body: String::new(),
        };
        for status in [500, 502, 503, 504, 408, 429] {
            assert!(http(status).retryable(), "{status}");
        }
        for status in [301, 302, 307, 400, 401, 403, 404, 410, 413, 422] {
            assert!(!http(status).retryable(), "{status}");
        }
        let smtp = |code| SendError::Smtp {
            code,
            text: String::new(),
        };
        assert!(smtp(421).retryable());
        assert!(smtp(451).retryable());
        assert!(!smtp(535).retryable());
        assert!(!smtp(550).retryable());
        assert!(SendError::Timeout { secs: 1 }.retryable());
        assert!(SendError::Refused { addr: "h:1".into() }.retryable());
        assert!(SendError::Tls("x".into()).retryable());
        assert!(!SendError::Setup("x".into()).retryable());
        assert!(!SendError::Body("x".into()).retryable());
        assert!(
            !SendError::Address {
                address: "x".into(),
                reason: "y".into()
            }
            .retryable()
        );
    }

    #[test]
    fn first_line_is_bounded_and_clean() {
        assert_eq!(first_line(""), "");
        assert_eq!(first_line("a\tb\r\nc"), "a b");
        let long = "x".repeat(1000);
        let line = first_line(&long);
        assert_eq!(line.chars().count(), MAX_LINE + 1);
        assert!(line.ends_with('…'));
    }

    #[test]
    fn redact_hides_secrets_but_not_short_words() {
        assert_eq!(
            redact("auth hunter22 failed", &["hunter22"]),
            "auth (redacted) failed"
        );
        assert_eq!(redact("a b c", &["a"]), "a b c");
    }
}
