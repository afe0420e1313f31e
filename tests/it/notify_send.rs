//! The notification senders against real servers on loopback. Webhook: the test HTTP listener
//! (`webhook_sink`) recording each request and answering as told (500 then 200, 404, a
//! redirect, a huge body), or reading it and never answering; and a closed port. Email: the
//! lab's SMTP sink (`smtp_sink`) in plain SMTP, STARTTLS with AUTH and a self-signed
//! certificate given as `ca_file`, implicit TLS; a wrong password, an unknown CA and a closed
//! port.

use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use saltpeter::config::notify::{Smtp, Webhook};
use saltpeter::notify::{Event, Notice, SendError, TargetResult, email, webhook};

use crate::smtp_sink::{Sink, self_signed};
use crate::support::free_port;
use crate::webhook_sink::{Reply, Request, WebhookSink};

// ---- webhook -------------------------------------------------------------------------------

/// The sink's URL with a secret in its path, which errors must not show.
fn secret_url(hook: &WebhookSink) -> String {
    format!("http://127.0.0.1:{}/hooks/T0PSECRET/path", hook.port())
}

/// A header the request must have.
fn header<'a>(req: &'a Request, name: &str) -> &'a str {
    req.header(name)
        .unwrap_or_else(|| panic!("no {name} header in {req:#?}"))
}

fn hex(bytes: &str) -> Vec<u8> {
    (0..bytes.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&bytes[i..i + 2], 16).unwrap())
        .collect()
}

const SECRET: &str = "whsec-It-is-a-Secret-to-Everybody";

#[test]
fn a_webhook_is_posted_signed_and_its_answers_are_classified() {
    let big = "x".repeat(100_000);
    let hook = WebhookSink::start([
        Reply::Answer(500, "boom: the database is down\nsecond line".into()),
        Reply::Answer(200, "ok".into()),
        Reply::Answer(404, "no such hook".into()),
        Reply::Answer(302, String::new()),
        Reply::Answer(429, "slow down".into()),
        Reply::Answer(503, big),
    ]);
    let cfg = Webhook {
        url: secret_url(&hook),
        secret: Some(SECRET.into()),
        timeout_secs: 5,
    };
    let body = notice().to_json();
    let now = 1_750_000_000;

    // 500: retryable, with the answer's first line and neither the secret nor the URL's path.
    let e = webhook::send(&cfg, 7, &body, now).unwrap_err();
    assert!(e.retryable(), "{e}");
    assert_eq!(
        e.to_string(),
        format!(
            "HTTP 500 from http://127.0.0.1:{}: boom: the database is down",
            hook.port()
        )
    );
    // The same delivery again: 200.
    webhook::send(&cfg, 7, &body, now + 60).unwrap();

    let reqs = hook.requests();
    assert_eq!(reqs.len(), 2);
    for (req, ts) in reqs.iter().zip([now, now + 60]) {
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/hooks/T0PSECRET/path");
        assert_eq!(req.body, body);
        let h = |name| header(req, name);
        assert_eq!(h("content-type"), "application/json");
        assert_eq!(
            h("user-agent"),
            format!("saltpeter/{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(h("x-saltpeter-delivery"), "7");
        assert_eq!(h("x-saltpeter-timestamp"), ts.to_string());
        // Verified as a receiver would: HMAC-SHA256 over "<timestamp>.<raw body>".
        let sig = h("x-saltpeter-signature")
            .strip_prefix("sha256=")
            .expect("sha256= prefix");
        assert_eq!(sig.len(), 64);
        assert_eq!(sig, sig.to_lowercase());
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("{}.{}", h("x-saltpeter-timestamp"), req.body).as_bytes());
        mac.verify_slice(&hex(sig)).expect("the signature verifies");
        assert_eq!(sig, webhook::signature(SECRET, ts, &body));
        // The body is the notice.
        assert_eq!(Notice::from_json(&req.body).unwrap(), notice());
    }

    // 404: given up at once.
    let e = webhook::send(&cfg, 8, &body, now).unwrap_err();
    assert!(!e.retryable(), "{e}");
    assert!(e.to_string().starts_with("HTTP 404 from"), "{e}");
    assert!(e.to_string().ends_with(": no such hook"), "{e}");

    // 302: not followed (one request), a failure that retrying will not mend.
    let before = hook.requests().len();
    let e = webhook::send(&cfg, 9, &body, now).unwrap_err();
    assert!(matches!(e, SendError::Http { status: 302, .. }), "{e:?}");
    assert!(!e.retryable());
    assert_eq!(
        hook.requests().len(),
        before + 1,
        "the redirect was followed"
    );

    // 429: retryable.
    let e = webhook::send(&cfg, 10, &body, now).unwrap_err();
    assert!(e.retryable() && e.to_string().contains("HTTP 429"), "{e}");

    // A 100 KB answer: at most a bounded line of it in the error.
    let e = webhook::send(&cfg, 11, &body, now).unwrap_err();
    assert!(e.retryable());
    let text = e.to_string();
    assert!(text.len() < 400, "{} chars", text.len());
    assert!(
        !text.contains(SECRET) && !text.contains("T0PSECRET"),
        "{text}"
    );
}

#[test]
fn an_unsigned_webhook_has_no_signature_header() {
    let hook = WebhookSink::start([Reply::Answer(204, String::new())]);
    let cfg = Webhook {
        url: secret_url(&hook),
        secret: None,
        timeout_secs: 5,
    };
    webhook::send(&cfg, 1, "{}", 1).unwrap();
    let req = &hook.requests()[0];
    assert!(req.header("x-saltpeter-signature").is_none());
    assert_eq!(header(req, "x-saltpeter-delivery"), "1");
}

#[test]
fn a_webhook_that_never_answers_times_out_within_its_timeout() {
    // Reads the request, then answers nothing and holds the connection open for long after
    // the timeout.
    let hook = WebhookSink::start([Reply::Hang(Duration::from_secs(30))]);
    let cfg = Webhook {
        url: hook.url.clone(),
        secret: Some(SECRET.into()),
        timeout_secs: 1,
    };
    let started = Instant::now();
    let e = webhook::send(&cfg, 1, "{}", 1).unwrap_err();
    let took = started.elapsed();
    assert_eq!(e, SendError::Timeout { secs: 1 }, "{e}");
    assert_eq!(e.to_string(), "timed out after 1 s");
    assert!(e.retryable());
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[test]
fn a_webhook_on_a_closed_port_is_a_retryable_refusal() {
    let port = free_port();
    let cfg = Webhook {
        url: format!("http://127.0.0.1:{port}/hook"),
        secret: Some(SECRET.into()),
        timeout_secs: 2,
    };
    let e = webhook::send(&cfg, 1, "{}", 1).unwrap_err();
    assert!(e.retryable(), "{e}");
    assert_eq!(
        e.to_string(),
        format!("connection refused to 127.0.0.1:{port}")
    );
}

// ---- email ---------------------------------------------------------------------------------

fn notice() -> Notice {
    Notice {
        version: 1,
        event: Event::Failure,
        job: "nightly-backup".into(),
        slot: Some("2025-06-15T02:00:00Z".into()),
        last_slot: None,
        slots: None,
        instance: Some("nightly-backup-20250615T020000".into()),
        trigger: Some("schedule".into()),
        started_at: Some("2025-06-15T02:00:00Z".into()),
        ended_at: Some("2025-06-15T02:03:10Z".into()),
        at: "2025-06-15T02:03:11Z".into(),
        summary: "failed on 2 of 3 targets".into(),
        consecutive_failures: 2,
        attempts: 1,
        succeeded: 1,
        total: 3,
        targets: vec![
            TargetResult {
                machine: "db-1".into(),
                code: Some(3),
                meaning: "job's own code".into(),
                note: None,
            },
            TargetResult {
                machine: "db-2".into(),
                code: Some(253),
                meaning: "job timeout".into(),
                note: Some("killed after 3600 s".into()),
            },
            TargetResult {
                machine: "db-3".into(),
                code: Some(0),
                meaning: "success".into(),
                note: None,
            },
        ],
        targets_omitted: 0,
        detail: None,
        daemon: "salt-master.example.net".into(),
    }
}

fn smtp(url: String) -> Smtp {
    Smtp {
        url,
        starttls: false,
        user: None,
        password: None,
        from: "Saltpeter <saltpeter@example.net>".into(),
        to: vec!["ops@example.net".into(), "oncall@example.net".into()],
        timeout_secs: 10,
        ca_file: None,
    }
}

#[test]
fn an_email_over_plain_smtp_says_the_job_its_targets_and_their_codes() {
    let sink = Sink::start(&[]);
    let cfg = smtp(format!("smtp://127.0.0.1:{}", sink.port));
    email::send(&cfg, 42, &notice()).unwrap();
    let (m, raw) = sink.message(1);
    assert_eq!(m["from"], "saltpeter@example.net");
    assert_eq!(
        m["to"],
        serde_json::json!(["ops@example.net", "oncall@example.net"])
    );
    assert_eq!(m["tls"], false);
    assert_eq!(
        m["subject"],
        "[saltpeter] nightly-backup: failed on 2 of 3 targets"
    );
    let h = &m["headers"];
    assert_eq!(h["From"], "Saltpeter <saltpeter@example.net>");
    assert_eq!(h["To"], "ops@example.net, oncall@example.net");
    assert_eq!(h["X-Saltpeter-Delivery"], "42");
    let id = email::message_id(42, &notice());
    assert_eq!(h["Message-ID"], id.as_str());
    assert!(id.starts_with("<saltpeter-delivery-42."), "{id}");
    assert!(id.ends_with("@salt-master.example.net>"), "{id}");
    let body = m["body"].as_str().unwrap();
    for want in [
        "failed on 2 of 3 targets",
        "Job:      nightly-backup",
        "Targets:  1 of 3 succeeded",
        "Failures in a row: 2",
        "db-1  3 (job's own code)",
        "db-2  253 (job timeout): killed after 3600 s",
        "db-3  0 (success)",
        "-- saltpeter on salt-master.example.net",
    ] {
        assert!(body.contains(want), "no {want:?} in the body:\n{body}");
    }
    assert!(raw.contains("Content-Type: text/plain"), "{raw}");

    // The same delivery again (as after a crash before it was recorded): the same Message-ID.
    email::send(&cfg, 42, &notice()).unwrap();
    assert_eq!(sink.message(2).0["headers"]["Message-ID"], id.as_str());
}

#[test]
fn an_email_over_starttls_with_auth_and_a_private_ca() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(certs.path());
    let password = "correct-horse-battery";
    let sink = Sink::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--require-starttls",
        "--user",
        "notifier",
        "--password",
        password,
    ]);
    let mut cfg = smtp(format!("smtp://127.0.0.1:{}", sink.port));
    cfg.starttls = true;
    cfg.user = Some("notifier".into());
    cfg.password = Some(password.into());
    cfg.ca_file = Some(cert.display().to_string());
    email::send(&cfg, 5, &notice()).unwrap();
    let (m, _) = sink.message(1);
    assert_eq!(m["tls"], true, "{m}");
    assert_eq!(m["auth_user"], "notifier", "{m}");
    assert_eq!(m["headers"]["X-Saltpeter-Delivery"], "5");

    // A wrong password: refused for good, and the error does not show it.
    let wrong = "wrong-password-1234";
    let mut bad = cfg.clone();
    bad.password = Some(wrong.into());
    let e = email::send(&bad, 6, &notice()).unwrap_err();
    assert!(matches!(e, SendError::Smtp { code: 535, .. }), "{e:?}");
    assert!(!e.retryable(), "{e}");
    let text = format!("{e} {e:?}");
    assert!(!text.contains(wrong) && !text.contains(password), "{text}");

    // Without the private CA the certificate is not trusted: a TLS error.
    let mut untrusted = cfg.clone();
    untrusted.ca_file = None;
    let e = email::send(&untrusted, 7, &notice()).unwrap_err();
    assert!(matches!(e, SendError::Tls(_)), "{e:?}");
    assert!(e.to_string().starts_with("TLS: "), "{e}");

    // STARTTLS asked of a server that does not offer it: refused, not sent in the clear.
    let plain = Sink::start(&[]);
    let mut cfg2 = smtp(format!("smtp://127.0.0.1:{}", plain.port));
    cfg2.starttls = true;
    let e = email::send(&cfg2, 8, &notice()).unwrap_err();
    assert!(!e.retryable(), "{e}");
    assert!(e.to_string().contains("STARTTLS"), "{e}");
    assert_eq!(plain.count(), 0);
    assert_eq!(sink.count(), 1);
}

#[test]
fn an_email_over_implicit_tls() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(certs.path());
    let sink = Sink::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--implicit-tls",
    ]);
    let mut cfg = smtp(format!("smtps://127.0.0.1:{}", sink.port));
    cfg.ca_file = Some(cert.display().to_string());
    email::send(&cfg, 9, &notice()).unwrap();
    let (m, _) = sink.message(1);
    assert_eq!(m["tls"], true, "{m}");
}

#[test]
fn an_email_to_a_closed_port_is_a_retryable_refusal() {
    let port = free_port();
    let e = email::send(&smtp(format!("smtp://127.0.0.1:{port}")), 1, &notice()).unwrap_err();
    assert!(e.retryable(), "{e}");
    assert_eq!(
        e.to_string(),
        format!("connection refused to 127.0.0.1:{port}")
    );
}

#[test]
fn notify_test_sends_through_each_channel_of_the_job_and_says_what_happened() {
    let hook = WebhookSink::start([]);
    let closed = free_port();
    let dir = tempfile::tempdir().unwrap();
    crate::support::write(
        dir.path(),
        "jobs.yaml",
        &format!(
            "saltpeter_config:\n  notify_channels:\n    up: {{webhook: '{}', secret: s}}\n    down: {{webhook: 'http://127.0.0.1:{closed}/x', timeout: 2}}\nbackup:\n  min: '*'\n  hour: '*'\n  dom: '*'\n  mon: '*'\n  dow: '*'\n  targets: '*'\n  command: 'true'\n  notify: {{when: [failure], to: [up, down]}}\nquiet:\n  min: '*'\n  hour: '*'\n  dom: '*'\n  mon: '*'\n  dow: '*'\n  targets: '*'\n  command: 'true'\n",
            hook.url
        ),
    );
    let path = dir.path().to_str().unwrap();
    let (code, out, err) = crate::support::run(&["notify-test", "-c", path, "backup"]);
    assert_eq!(code, 1, "one channel is down: {out}{err}");
    assert!(out.contains("up (webhook): delivered in"), "{out}");
    assert!(
        out.contains("down (webhook): failed: connection refused")
            && out.contains("would try again"),
        "{out}"
    );
    let got = hook.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json()["event"], "test");
    assert_eq!(got[0].json()["job"], "backup");
    assert!(got[0].header("x-saltpeter-signature").is_some());
    // Only the channel asked for: all delivered, exit 0.
    let (code, out, _) =
        crate::support::run(&["notify-test", "-c", path, "backup", "--channel", "up"]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("down"), "{out}");
    // A job that notifies nobody says so.
    let (code, _, err) = crate::support::run(&["notify-test", "-c", path, "quiet"]);
    assert_eq!(code, 1);
    assert!(err.contains("quiet notifies nobody"), "{err}");
}
