//! Notification settings: channels, the default policy and a job's own, channel names checked
//! across files, and the findings of each broken part.

use super::notify::{Channel, NotifyPolicy, Smtp, SmtpAddr, Webhook, When};
use super::*;

fn file(name: &str, text: &str) -> SourceFile {
    SourceFile {
        path: name.to_string(),
        group: name.rsplit_once('.').unwrap().0.to_string(),
        text: Ok(text.to_string()),
    }
}

/// A job (lines 1-9, run by sp-wrapper so no finding is about its wrapper), then `extra`
/// from line 10.
fn job(name: &str, extra: &str) -> String {
    format!(
        "{name}:\n  min: '*/5'\n  hour: '*'\n  dom: '*'\n  mon: '*'\n  dow: '*'\n  targets: 'web*'\n  command: echo hi\n  wrapper_path: /usr/local/bin/sp-wrapper\n{extra}"
    )
}

const SETTINGS: &str = "\
saltpeter_config:
  notify_channels:
    ops-hook: {webhook: 'https://hooks.example.com/x', secret: 'shared-hmac-secret', timeout: 10}
    ops-mail: {smtp: 'smtp://mail.example.com:587', starttls: true, user: u, password: p,
               from: 'saltpeter@example.com', to: ['ops@example.com'], timeout: 30, ca_file: /etc/ssl/my-ca.pem}
    plain-mail:
      smtp: smtps://mail.example.com
      from: saltpeter@example.com
      to: ops@example.com
  notify: {when: [failure, recovery, missed], to: [ops-hook]}
  notify_max_per_hour: 50
";

fn policy(when: &[When], to: &[&str]) -> Option<NotifyPolicy> {
    Some(NotifyPolicy {
        when: when.to_vec(),
        to: to.iter().map(|s| s.to_string()).collect(),
    })
}

fn rendered(loaded: &Loaded) -> Vec<String> {
    loaded.diagnostics.iter().map(|d| d.to_string()).collect()
}

#[test]
fn without_notify_keys_nobody_is_told() {
    let s = Settings::defaults("h");
    assert!(s.notify_channels.is_empty());
    assert_eq!(s.notify, None);
    assert_eq!(s.notify_max_per_hour, 20);
    let loaded = Loader::new("h").load(&[file("a.yaml", &job("backup", ""))]);
    assert_eq!(loaded.diagnostics, []);
    assert_eq!(loaded.config.jobs["backup"].notify, None);
}

#[test]
fn a_full_config_resolves_with_defaults_replacements_and_opt_outs() {
    let jobs = [
        job("inherits", ""),
        job(
            "backup",
            "  notify: {when: [failure, {consecutive_failures: 3}], to: [ops-mail]}\n",
        ),
        job(
            "long",
            "  notify:\n    when: [launch_failure, {running_longer_than: 600}]\n    to: ops-hook\n",
        ),
        job(
            "single",
            "  notify: {when: missed, to: [plain-mail, ops-hook]}\n",
        ),
        job("quiet", "  notify: {}\n"),
        job("nulled", "  notify:\n"),
        job("no-channels", "  notify: {when: [failure], to: []}\n"),
        job("no-conditions", "  notify: {when: [], to: [ops-hook]}\n"),
    ]
    .concat();
    // The channels are defined in a later file than the jobs naming them.
    let loaded = Loader::new("h").load(&[file("a.yaml", &jobs), file("z.yaml", SETTINGS)]);
    assert_eq!(loaded.diagnostics, []);
    let settings = &loaded.config.settings;
    assert_eq!(settings.notify_max_per_hour, 50);
    assert_eq!(
        settings.notify,
        policy(
            &[When::Failure, When::Recovery, When::Missed],
            &["ops-hook"]
        )
    );
    let channels: Vec<(&str, &Channel)> = settings
        .notify_channels
        .iter()
        .map(|(name, c)| (name.as_str(), &**c))
        .collect();
    assert_eq!(
        channels,
        [
            (
                "ops-hook",
                &Channel::Webhook(Webhook {
                    url: "https://hooks.example.com/x".into(),
                    secret: Some("shared-hmac-secret".into()),
                    timeout_secs: 10,
                })
            ),
            (
                "ops-mail",
                &Channel::Smtp(Smtp {
                    url: "smtp://mail.example.com:587".into(),
                    starttls: true,
                    user: Some("u".into()),
                    password: Some("p".into()),
                    from: "saltpeter@example.com".into(),
                    to: vec!["ops@example.com".into()],
                    timeout_secs: 30,
                    ca_file: Some("/etc/ssl/my-ca.pem".into()),
                })
            ),
            (
                "plain-mail",
                &Channel::Smtp(Smtp {
                    url: "smtps://mail.example.com".into(),
                    starttls: false,
                    user: None,
                    password: None,
                    from: "saltpeter@example.com".into(),
                    to: vec!["ops@example.com".into()],
                    timeout_secs: 30,
                    ca_file: None,
                })
            ),
        ]
    );
    let jobs = &loaded.config.jobs;
    let notify = |name: &str| jobs[name].notify.clone();
    assert_eq!(notify("inherits"), settings.notify);
    assert_eq!(
        notify("backup"),
        policy(
            &[When::Failure, When::ConsecutiveFailures(3)],
            &["ops-mail"]
        )
    );
    assert_eq!(
        notify("long"),
        policy(
            &[When::LaunchFailure, When::RunningLongerThan(600)],
            &["ops-hook"]
        )
    );
    assert_eq!(
        notify("single"),
        policy(&[When::Missed], &["plain-mail", "ops-hook"])
    );
    for off in ["quiet", "nulled", "no-channels", "no-conditions"] {
        assert_eq!(notify(off), None, "{off}");
    }

    // A reload without the settings file: no channels, no default, the default rate.
    let loaded = Loader::new("h").load(&[file("a.yaml", &job("inherits", ""))]);
    assert_eq!(loaded.config.settings.notify_max_per_hour, 20);
    assert_eq!(loaded.config.jobs["inherits"].notify, None);
}

#[test]
fn a_later_null_default_turns_the_earlier_one_off() {
    let later = "saltpeter_config:\n  notify: null\n";
    let loaded = Loader::new("h").load(&[
        file("a.yaml", SETTINGS),
        file("b.yaml", later),
        file("c.yaml", &job("inherits", "")),
    ]);
    assert_eq!(
        rendered(&loaded),
        [
            "b.yaml:2:11: warning: `saltpeter_config.notify` is also set in a.yaml:10:11; this later file wins"
        ]
    );
    assert_eq!(loaded.config.settings.notify, None);
    assert_eq!(loaded.config.jobs["inherits"].notify, None);
}

#[test]
fn channel_errors_are_reported_where_they_are() {
    let text = "\
saltpeter_config:
  notify_channels:
    both: {webhook: 'https://x.example', smtp: 'smtp://m.example'}
    neither: {secret: s}
    bad-hook: {webhook: 'ftp://x.example', timeout: 0, secert: s, from: a@b}
    bad-mail:
      smtp: 'smtps://m.example:99999'
      user: u
      from: nobody
      to: []
      ca_flie: /x
    tls-mail: {smtp: 'smtps://m.example', starttls: true, password: p, from: a@b, to: c@d}
    no-from: {smtp: 'smtp://user@m.example', to: [c@d, nobody], timeout: 301}
    not-a-map: https://x.example
    typo: {webhok: 'https://x.example'}
";
    let loaded = Loader::new("h").load(&[file("a.yaml", text)]);
    assert_eq!(
        rendered(&loaded),
        [
            "a.yaml:3:48: error: `notify_channels.both` has both `webhook` and `smtp`; a channel is one or the other (define two channels)",
            "a.yaml:4:5: error: `notify_channels.neither` needs `webhook: URL` or `smtp: URL`",
            "a.yaml:5:25: error: `notify_channels.bad-hook.webhook` must be an http:// or https:// URL, found `ftp://x.example`",
            "a.yaml:5:53: error: `notify_channels.bad-hook.timeout` must be between 1 and 300, found 0",
            "a.yaml:5:56: error: unknown key `secert` in webhook channel `notify_channels.bad-hook` (it takes webhook, secret, timeout); did you mean `secret`?",
            "a.yaml:5:67: error: unknown key `from` in webhook channel `notify_channels.bad-hook` (it takes webhook, secret, timeout)",
            "a.yaml:7:13: error: `notify_channels.bad-mail.smtp` has a bad port `99999` (1 to 65535), found `smtps://m.example:99999`",
            "a.yaml:8:13: error: `notify_channels.bad-mail.user` needs `password` too",
            "a.yaml:9:13: error: `notify_channels.bad-mail.from` must be an email address such as ops@example.com, found `nobody`",
            "a.yaml:10:11: error: `notify_channels.bad-mail.to` is empty",
            "a.yaml:11:7: error: unknown key `ca_flie` in smtp channel `notify_channels.bad-mail` (it takes smtp, starttls, user, password, from, to, timeout, ca_file); did you mean `ca_file`?",
            "a.yaml:12:53: error: `notify_channels.tls-mail.starttls: true` is for `smtp://`; `smtps://` is TLS from the first byte (use one or the other)",
            "a.yaml:12:69: error: `notify_channels.tls-mail.password` needs `user` too",
            "a.yaml:13:5: error: `notify_channels.no-from` needs `from` (the sender's address)",
            "a.yaml:13:21: error: `notify_channels.no-from.smtp` must not hold a user name or password; set `user` and `password` instead, found `smtp://user@m.example`",
            "a.yaml:13:56: error: `notify_channels.no-from.to` must be an email address such as ops@example.com, found `nobody`",
            "a.yaml:13:74: error: `notify_channels.no-from.timeout` must be between 1 and 300, found 301",
            "a.yaml:14:16: error: `notify_channels.not-a-map` must be a mapping with `webhook: URL` or `smtp: URL`, found a string",
            "a.yaml:15:5: error: `notify_channels.typo` needs `webhook: URL` or `smtp: URL`",
            "a.yaml:15:12: error: unknown key `webhok` in channel `notify_channels.typo` (it takes webhook, smtp, secret, starttls, user, password, from, to, timeout, ca_file); did you mean `webhook`?",
        ]
    );
    assert!(loaded.config.settings.notify_channels.is_empty());
}

#[test]
fn policy_errors_are_reported_where_they_are() {
    let text = [
        job(
            "words",
            "  notify: {when: [falure, recovered, consecutive_failures], to: [ops]}\n",
        ),
        job(
            "counts",
            "  notify:\n    when: [{consecutive_failures: 0}, {running_longer_than: 31536001}, {consecutive_failure: 2}, {failure: 1}]\n    to: ops\n",
        ),
        job(
            "shapes",
            "  notify: {when: [[failure], {consecutive_failures: 2, running_longer_than: 5}], too: [ops], to: {a: b}}\n",
        ),
        job("scalar", "  notify: false\n"),
        "saltpeter_config:\n  notify: {when: failure, to: ['']}\n  notify_max_per_hour: 0\n".into(),
    ]
    .concat();
    let loaded = Loader::new("h").load(&[file("a.yaml", &text)]);
    assert_eq!(
        rendered(&loaded),
        [
            "a.yaml:10:19: error: unknown condition `falure` in `notify.when` (one of failure, recovery, missed, launch_failure, {consecutive_failures: N} or {running_longer_than: SECONDS}); did you mean `failure`?",
            "a.yaml:10:27: error: unknown condition `recovered` in `notify.when` (one of failure, recovery, missed, launch_failure, {consecutive_failures: N} or {running_longer_than: SECONDS}); did you mean `recovery`?",
            "a.yaml:10:38: error: `consecutive_failures` in `notify.when` needs a value: `{consecutive_failures: N}`",
            "a.yaml:21:35: error: `consecutive_failures` must be between 1 and 1000, found 0",
            "a.yaml:21:61: error: `running_longer_than` must be between 1 and 31536000, found 31536001",
            "a.yaml:21:73: error: unknown condition `consecutive_failure` in `notify.when` (one of failure, recovery, missed, launch_failure, {consecutive_failures: N} or {running_longer_than: SECONDS}); did you mean `consecutive_failures`?",
            "a.yaml:21:99: error: `failure` in `notify.when` takes no value: write `failure`",
            "a.yaml:32:19: error: each item of `notify.when` must be one of failure, recovery, missed, launch_failure, {consecutive_failures: N} or {running_longer_than: SECONDS}, found a list",
            "a.yaml:32:30: error: each item of `notify.when` holds one condition; write each as its own item",
            "a.yaml:32:82: error: unknown key `too` in `notify` (it takes when, to); did you mean `to`?",
            "a.yaml:32:98: error: `notify.to` must be a string, found a mapping",
            "a.yaml:42:11: error: `notify` must be a mapping with `when` and `to` (`{}` for no notifications), found a boolean",
            "a.yaml:44:32: error: `saltpeter_config.notify.to` names an empty channel",
            "a.yaml:45:24: error: `notify_max_per_hour` must be between 1 and 100000, found 0",
        ]
    );
    assert!(loaded.config.jobs.is_empty());
    assert_eq!(loaded.config.settings.notify_max_per_hour, 20);
}

#[test]
fn half_a_policy_is_said_to_do_nothing() {
    let text = [
        job("no-when", "  notify: {to: [ops-hook]}\n"),
        job("no-to", "  notify: {when: [failure]}\n"),
        "saltpeter_config:\n  notify_channels: {ops-hook: {webhook: 'http://h.example'}}\n  notify_max_per_hour: 100000\n".into(),
    ]
    .concat();
    let loaded = Loader::new("h").load(&[file("a.yaml", &text)]);
    assert_eq!(
        rendered(&loaded),
        [
            "a.yaml:10:12: warning: `notify.to` has no effect without `when` (the conditions to tell of): no notifications are sent",
            "a.yaml:20:12: warning: `notify.when` has no effect without `to` (the channels to tell): no notifications are sent",
        ]
    );
    assert_eq!(loaded.config.jobs["no-when"].notify, None);
    assert_eq!(loaded.config.jobs["no-to"].notify, None);
    assert_eq!(loaded.config.settings.notify_max_per_hour, 100_000);
}

#[test]
fn unknown_channel_names_are_errors_and_left_out() {
    let jobs = [
        job(
            "typo",
            "  notify: {when: [failure], to: [ops-hok, ops-mail]}\n",
        ),
        job("nothing-left", "  notify: {when: [failure], to: [pager]}\n"),
        job("inherits", ""),
    ]
    .concat();
    let settings = SETTINGS.replace("to: [ops-hook]}", "to: [ops-hook, chat]}");
    let loaded = Loader::new("h").load(&[file("a.yaml", &jobs), file("z.yaml", &settings)]);
    assert_eq!(
        rendered(&loaded),
        [
            "a.yaml:10:34: error: channel `ops-hok` is not defined in `saltpeter_config.notify_channels`, so it is never told; did you mean `ops-hook`?",
            "a.yaml:20:34: error: channel `pager` is not defined in `saltpeter_config.notify_channels`, so it is never told (defined: ops-hook, ops-mail, plain-mail)",
            "z.yaml:10:62: error: channel `chat` is not defined in `saltpeter_config.notify_channels`, so it is never told (defined: ops-hook, ops-mail, plain-mail)",
        ]
    );
    let jobs = &loaded.config.jobs;
    // The jobs still run; only the unknown names are left out.
    assert_eq!(jobs.len(), 3);
    assert_eq!(jobs["typo"].notify, policy(&[When::Failure], &["ops-mail"]));
    assert_eq!(jobs["nothing-left"].notify, None);
    let default = policy(
        &[When::Failure, When::Recovery, When::Missed],
        &["ops-hook"],
    );
    assert_eq!(loaded.config.settings.notify, default);
    assert_eq!(jobs["inherits"].notify, default);

    // With no channels at all.
    let loaded = Loader::new("h").load(&[file(
        "a.yaml",
        &job("x", "  notify: {when: [failure], to: [ops]}\n"),
    )]);
    assert_eq!(
        rendered(&loaded),
        [
            "a.yaml:10:34: error: channel `ops` is not defined in `saltpeter_config.notify_channels`, so it is never told (none are defined)"
        ]
    );
    assert_eq!(loaded.config.jobs["x"].notify, None);
}

#[test]
fn a_broken_notify_section_keeps_the_last_good_version() {
    let good = job("backup", "  notify: {when: [failure], to: [ops-hook]}\n");
    let mut loader = Loader::new("h");
    let loaded = loader.load(&[file("a.yaml", &good), file("z.yaml", SETTINGS)]);
    assert_eq!(loaded.diagnostics, []);
    let was = policy(&[When::Failure], &["ops-hook"]);
    assert_eq!(loaded.config.jobs["backup"].notify, was);

    let broken = good.replace("failure", "failures");
    let broken_settings = SETTINGS.replace("timeout: 10}", "timeout: 10, secert: x}");
    let loaded = loader.load(&[file("a.yaml", &broken), file("z.yaml", &broken_settings)]);
    let codes: Vec<(&str, Code)> = loaded
        .diagnostics
        .iter()
        .map(|d| (d.file.as_str(), d.code))
        .collect();
    assert_eq!(
        codes,
        [
            ("a.yaml", Code::KeptLastGood),
            ("a.yaml", Code::BadValue),
            ("z.yaml", Code::KeptLastGood),
            ("z.yaml", Code::UnknownKey),
        ]
    );
    assert_eq!(loaded.config.jobs["backup"].notify, was);
    assert_eq!(loaded.config.settings.notify_channels.len(), 3);

    let fixed = good.replace("[failure]", "[recovery]");
    let loaded = loader.load(&[file("a.yaml", &fixed), file("z.yaml", SETTINGS)]);
    assert_eq!(loaded.diagnostics, []);
    assert_eq!(
        loaded.config.jobs["backup"].notify,
        policy(&[When::Recovery], &["ops-hook"])
    );
}

#[test]
fn smtp_addresses_parse_with_default_ports() {
    let addr = |url: &str| SmtpAddr::parse(url);
    let ok = |implicit_tls, host: &str, port| {
        Ok(SmtpAddr {
            implicit_tls,
            host: host.into(),
            port,
        })
    };
    assert_eq!(
        addr("smtp://mail.example.com"),
        ok(false, "mail.example.com", 25)
    );
    assert_eq!(
        addr("smtps://mail.example.com"),
        ok(true, "mail.example.com", 465)
    );
    assert_eq!(addr("SMTP://m:587"), ok(false, "m", 587));
    assert_eq!(addr("smtps://[::1]:2465"), ok(true, "::1", 2465));
    assert_eq!(addr("smtp://[::1]"), ok(false, "::1", 25));
    for bad in [
        "mail.example.com",
        "http://m",
        "smtp://",
        "smtp://:25",
        "smtp://m:0",
        "smtp://m:+25",
        "smtp://m:x",
        "smtp://m/path",
        "smtp://u:p@m",
        "smtp://::1",
        "smtp://[::1",
        "smtp://[::1]x",
        "smtp://m x",
    ] {
        assert!(addr(bad).is_err(), "{bad}");
    }
}

#[test]
fn debug_output_shows_no_secret() {
    let loaded = Loader::new("h").load(&[file("z.yaml", SETTINGS)]);
    let debug = format!("{:?}", loaded.config.settings);
    for secret in ["shared-hmac-secret", "password: Some(\"p\")", "/x\""] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }
    assert!(
        debug.contains("url: \"https://hooks.example.com\""),
        "{debug}"
    );
    assert!(debug.contains("password: Some(\"(redacted)\")"), "{debug}");
}

#[test]
fn retries_default_to_none_and_are_bounded() {
    // A file with an error is not loaded: the bad job has one of its own.
    let loaded = Loader::new("h").load(&[
        file(
            "a.yaml",
            &[
                job("plain", ""),
                job("again", "  retries: 3\n  retry_delay: 5\n"),
                job("late", "  retry_delay: 5\n"),
            ]
            .concat(),
        ),
        file("b.yaml", &job("many", "  retries: 11\n")),
    ]);
    let jobs = &loaded.config.jobs;
    assert_eq!(
        (jobs["plain"].retries, jobs["plain"].retry_delay_secs),
        (0, 60)
    );
    assert_eq!(
        (jobs["again"].retries, jobs["again"].retry_delay_secs),
        (3, 5)
    );
    let found = rendered(&loaded);
    assert!(
        found
            .iter()
            .any(|d| d.contains("warning")
                && d.contains("`retry_delay` has no effect unless `retries`")),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|d| d.contains("error") && d.contains("retries")),
        "{found:#?}"
    );
}
