//! Email notifications over SMTP (STARTTLS, implicit TLS, auth), through `lettre`, blocking
//! (run it off the async runtime).
//!
//! `smtp://` talks plain SMTP, upgraded with STARTTLS when `starttls` is set (and refused if the
//! server does not offer it); `smtps://` is TLS from the first byte. Certificates are checked
//! against the public roots plus `ca_file`. One connection per message, each step of it
//! (connect, each read or write) within `timeout_secs`.
//!
//! The message: `From`, one `To` per address, the notice's subject and plain-text rendering, an
//! `X-Saltpeter-Delivery: <id>` header, and a `Message-ID` that is the same every time a
//! delivery is sent ([`message_id`]), so a repeat after a crash between sending and recording
//! can be recognised.

use std::time::Duration;

use lettre::Transport;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::SmtpTransport;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};

use super::notice::Notice;
use super::send_error::{SendError, first_line, redact};
use crate::config::notify::Smtp;

const DELIVERY_HEADER: HeaderName = HeaderName::new_from_ascii_str("X-Saltpeter-Delivery");

/// Sends `notice` as one message to every address in `smtp.to`.
pub fn send(smtp: &Smtp, delivery: i64, notice: &Notice) -> Result<(), SendError> {
    let secrets: Vec<&str> = smtp.password.as_deref().into_iter().collect();
    let message = build_message(smtp, delivery, notice)?;
    let transport = transport(smtp)?;
    transport
        .send(&message)
        .map(|_| ())
        .map_err(|e| classify(&e, smtp, &secrets))
}

/// The `Message-ID` of a delivery: `<saltpeter-delivery-<id>.<ms>@<host>>`, where `<ms>` is
/// when the notice was decided (Unix milliseconds; left out if it does not parse) and `<host>`
/// the daemon that decided it. The same for every attempt of one delivery, and different for
/// a delivery of the same id from another database.
pub fn message_id(delivery: i64, notice: &Notice) -> String {
    let host = domain_part(&notice.daemon)
        .or_else(|| domain_part(&crate::hostname()))
        .unwrap_or_else(|| "localhost".to_string());
    match notice.at.parse::<jiff::Timestamp>() {
        Ok(at) => format!(
            "<saltpeter-delivery-{delivery}.{}@{host}>",
            at.as_millisecond()
        ),
        Err(_) => format!("<saltpeter-delivery-{delivery}@{host}>"),
    }
}

/// A host name fit for the right side of a `Message-ID`, or `None`.
fn domain_part(host: &str) -> Option<String> {
    let clean: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .collect();
    let clean = clean.trim_matches('.').to_string();
    (!clean.is_empty()).then_some(clean)
}

fn mailbox(address: &str) -> Result<Mailbox, SendError> {
    address.parse::<Mailbox>().map_err(|e| SendError::Address {
        address: address.to_string(),
        reason: e.to_string(),
    })
}

fn build_message(smtp: &Smtp, delivery: i64, notice: &Notice) -> Result<Message, SendError> {
    let mut builder = Message::builder()
        .from(mailbox(&smtp.from)?)
        .subject(notice.subject())
        .message_id(Some(message_id(delivery, notice)))
        .raw_header(HeaderValue::new(DELIVERY_HEADER, delivery.to_string()))
        .header(ContentType::TEXT_PLAIN);
    for to in &smtp.to {
        builder = builder.to(mailbox(to)?);
    }
    builder
        .body(notice.text())
        .map_err(|e| SendError::Setup(format!("cannot build the message: {e}")))
}

fn transport(smtp: &Smtp) -> Result<SmtpTransport, SendError> {
    let addr = smtp
        .addr()
        .map_err(|e| SendError::Setup(format!("the smtp URL {e}")))?;
    let timeout = Duration::from_secs(smtp.timeout_secs.max(1));
    let mut builder = SmtpTransport::builder_dangerous(addr.host.as_str())
        .port(addr.port)
        .timeout(Some(timeout));
    if addr.implicit_tls || smtp.starttls {
        let mut params = TlsParameters::builder(addr.host.clone());
        if let Some(path) = &smtp.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| SendError::Setup(format!("cannot read ca_file {path}: {e}")))?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(SendError::Setup(format!(
                    "ca_file {path} holds no PEM certificate"
                )));
            }
            let cert = Certificate::from_pem(&pem)
                .map_err(|e| SendError::Setup(format!("ca_file {path}: {e}")))?;
            params = params.add_root_certificate(cert);
        }
        let params = params
            .build_rustls()
            .map_err(|e| SendError::Setup(format!("TLS settings: {e}")))?;
        builder = builder.tls(if addr.implicit_tls {
            Tls::Wrapper(params)
        } else {
            Tls::Required(params)
        });
    } else {
        builder = builder.tls(Tls::None);
    }
    if smtp.user.is_some() || smtp.password.is_some() {
        builder = builder.credentials(Credentials::new(
            smtp.user.clone().unwrap_or_default(),
            smtp.password.clone().unwrap_or_default(),
        ));
    }
    Ok(builder.build())
}

/// What went wrong, in one line without the password, and whether it may pass.
fn classify(e: &lettre::transport::smtp::Error, smtp: &Smtp, secrets: &[&str]) -> SendError {
    use std::error::Error as _;
    use std::io::ErrorKind;
    let addr = smtp.addr().map_or_else(
        |_| smtp.url.clone(),
        |a| {
            if a.host.contains(':') {
                format!("[{}]:{}", a.host, a.port)
            } else {
                format!("{}:{}", a.host, a.port)
            }
        },
    );
    let secs = smtp.timeout_secs.max(1);
    let safe = |text: String| redact(&text, secrets);
    if let Some(code) = e.status() {
        let text = e
            .source()
            .map(|s| first_line(&s.to_string()))
            .unwrap_or_default();
        return SendError::Smtp {
            code: u16::from(code),
            text: safe(text),
        };
    }
    // The cause: an I/O error (a timeout, a refusal, a TLS failure inside it) or a TLS error.
    let mut cause = e.source();
    while let Some(err) = cause {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return SendError::Tls(safe(tls.to_string()));
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return SendError::Tls(safe(tls.to_string()));
            }
            match io.kind() {
                ErrorKind::TimedOut | ErrorKind::WouldBlock => {
                    return SendError::Timeout { secs };
                }
                ErrorKind::ConnectionRefused => return SendError::Refused { addr },
                _ => {
                    return SendError::Connection {
                        addr,
                        reason: safe(io.to_string()),
                    };
                }
            }
        }
        cause = err.source();
    }
    let what = e
        .source()
        .map_or_else(|| e.to_string(), |s| first_line(&s.to_string()));
    if e.is_tls() {
        SendError::Tls(safe(what))
    } else if e.is_client() {
        // STARTTLS not offered, no usable AUTH mechanism, non-ASCII the server cannot take.
        SendError::Setup(safe(format!("SMTP server {addr}: {what}")))
    } else if e.is_response() {
        SendError::Protocol(safe(format!("bad SMTP reply from {addr}: {what}")))
    } else {
        SendError::Connection {
            addr,
            reason: safe(what),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::{Event, TargetResult};

    fn notice() -> Notice {
        Notice {
            version: 1,
            event: Event::Failure,
            job: "backup".into(),
            slot: Some("2025-06-10T06:13:20Z".into()),
            last_slot: None,
            slots: None,
            instance: Some("backup-1".into()),
            trigger: Some("schedule".into()),
            started_at: None,
            ended_at: None,
            at: "2025-06-10T06:13:21.5Z".into(),
            summary: "failed on 1 of 2 targets".into(),
            consecutive_failures: 1,
            attempts: 1,
            succeeded: 1,
            total: 2,
            targets: vec![TargetResult {
                machine: "web1".into(),
                code: Some(3),
                meaning: "job's own code".into(),
                note: None,
            }],
            targets_omitted: 0,
            detail: None,
            daemon: "master.example.com".into(),
        }
    }

    #[test]
    fn the_message_id_is_stable_for_a_delivery() {
        let n = notice();
        assert_eq!(
            message_id(42, &n),
            "<saltpeter-delivery-42.1749536001500@master.example.com>"
        );
        assert_eq!(message_id(42, &n), message_id(42, &n.clone()));
        assert_ne!(message_id(42, &n), message_id(43, &n));
        let odd = Notice {
            at: "not a time".into(),
            daemon: "bad host name!".into(),
            ..n
        };
        assert_eq!(message_id(7, &odd), "<saltpeter-delivery-7@badhostname>");
    }

    fn smtp() -> Smtp {
        Smtp {
            url: "smtp://127.0.0.1:2525".into(),
            starttls: false,
            user: None,
            password: None,
            from: "saltpeter@example.com".into(),
            to: vec![
                "ops@example.com".into(),
                "Oncall <oncall@example.com>".into(),
            ],
            timeout_secs: 5,
            ca_file: None,
        }
    }

    #[test]
    fn the_message_has_the_headers_and_the_text() {
        let msg = build_message(&smtp(), 42, &notice()).unwrap();
        let text = String::from_utf8(msg.formatted()).unwrap();
        for want in [
            "From: saltpeter@example.com\r\n",
            "To: ops@example.com, Oncall <oncall@example.com>\r\n",
            "Subject: [saltpeter] backup: failed on 1 of 2 targets\r\n",
            "Message-ID: <saltpeter-delivery-42.1749536001500@master.example.com>\r\n",
            "X-Saltpeter-Delivery: 42\r\n",
            "Content-Type: text/plain; charset=utf-8\r\n",
            "web1  3 (job's own code)",
        ] {
            assert!(text.contains(want), "no {want:?} in:\n{text}");
        }
        assert_eq!(msg.envelope().to().len(), 2);
    }

    #[test]
    fn a_bad_address_is_permanent() {
        let mut s = smtp();
        s.to.push("not an address".into());
        let e = build_message(&s, 1, &notice()).unwrap_err();
        assert!(matches!(e, SendError::Address { .. }), "{e:?}");
        assert!(!e.retryable());
        assert!(e.to_string().contains("not an address"), "{e}");
    }

    #[test]
    fn a_missing_ca_file_is_a_setup_error() {
        let mut s = smtp();
        s.starttls = true;
        s.ca_file = Some("/nonexistent/ca.pem".into());
        let e = transport(&s).unwrap_err();
        assert!(matches!(e, SendError::Setup(_)), "{e:?}");
        assert!(!e.retryable());
    }
}
