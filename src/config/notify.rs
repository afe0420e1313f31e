//! Notification settings as configured: the channels (`saltpeter_config.notify_channels`)
//! and when a job tells whom (`notify`, per job or `saltpeter_config.notify` for all).
//! Plain values; sending lives in `crate::notify`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Where notifications go, by name (`notify_channels: {ops-hook: {webhook: …}}`).
pub type Channels = BTreeMap<String, Arc<Channel>>;

/// One configured channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Channel {
    Webhook(Webhook),
    Smtp(Smtp),
}

impl Channel {
    /// `webhook` or `email`, for metrics and the API.
    pub fn kind(&self) -> &'static str {
        match self {
            Channel::Webhook(_) => "webhook",
            Channel::Smtp(_) => "email",
        }
    }
}

/// `{webhook: URL, secret: S, timeout: SECONDS}`: a JSON `POST`, signed with HMAC-SHA256 of
/// the secret when one is set. `Debug` shows neither the secret nor the URL's path (a chat
/// service's hook URL is itself a secret).
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    /// `http://` or `https://`.
    pub url: String,
    pub secret: Option<String>,
    /// Per attempt (default 10 s).
    pub timeout_secs: u64,
}

/// `{smtp: URL, starttls, user, password, from, to, timeout, ca_file}`. `Debug` does not show
/// the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Smtp {
    /// `smtp://host[:port]` (default port 25; 587 is usual with STARTTLS) or
    /// `smtps://host[:port]` (TLS from the first byte, default port 465).
    pub url: String,
    /// Upgrade an `smtp://` connection with STARTTLS (refused if the server does not offer it).
    pub starttls: bool,
    pub user: Option<String>,
    pub password: Option<String>,
    pub from: String,
    pub to: Vec<String>,
    /// Per attempt (default 30 s).
    pub timeout_secs: u64,
    /// PEM bundle of CAs trusted for the server's certificate, besides the public roots.
    pub ca_file: Option<String>,
}

impl Smtp {
    /// Where to connect (the URL was validated at load).
    pub fn addr(&self) -> Result<SmtpAddr, String> {
        SmtpAddr::parse(&self.url)
    }
}

/// An SMTP server, from `smtp://host[:port]` or `smtps://host[:port]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmtpAddr {
    /// `smtps://`: TLS from the first byte.
    pub implicit_tls: bool,
    /// A name or an IP address (an IPv6 address without its brackets).
    pub host: String,
    /// As written, else 465 with `smtps://` and 25 with `smtp://`.
    pub port: u16,
}

impl SmtpAddr {
    /// Parses `smtp://host[:port]` or `smtps://host[:port]` (an IPv6 address in brackets); the
    /// error says what is wrong, for a message after "`…smtp` ".
    pub fn parse(url: &str) -> Result<SmtpAddr, String> {
        let scheme_end = url
            .find("://")
            .ok_or("must be smtp://host[:port] or smtps://host[:port]")?;
        let implicit_tls = match url[..scheme_end].to_ascii_lowercase().as_str() {
            "smtp" => false,
            "smtps" => true,
            _ => return Err("must be smtp://host[:port] or smtps://host[:port]".into()),
        };
        let rest = &url[scheme_end + 3..];
        if rest.contains('@') {
            return Err(
                "must not hold a user name or password; set `user` and `password` instead".into(),
            );
        }
        if rest.contains(['/', '?', '#']) {
            return Err("takes no path: smtp://host[:port] or smtps://host[:port]".into());
        }
        let (host, port) = match rest.strip_prefix('[') {
            Some(bracketed) => {
                let (host, after) = bracketed
                    .split_once(']')
                    .ok_or("has an IPv6 address without its closing `]`")?;
                match after {
                    "" => (host, None),
                    _ => match after.strip_prefix(':') {
                        Some(port) => (host, Some(port)),
                        None => return Err(format!("has `{after}` after the address")),
                    },
                }
            }
            None => match rest.split_once(':') {
                Some((_, port)) if port.contains(':') => {
                    return Err("has an IPv6 address: write it in brackets, `[::1]`".into());
                }
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            },
        };
        if host.is_empty() {
            return Err("has no host".into());
        }
        if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("has a space or a control character in its host".into());
        }
        let port = match port {
            None if implicit_tls => 465,
            None => 25,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("has a bad port `{p}` (1 to 65535)")),
            },
        };
        Ok(SmtpAddr {
            implicit_tls,
            host: host.to_string(),
            port,
        })
    }
}

/// Shown instead of a secret.
const REDACTED: &str = "(redacted)";

/// `scheme://host[:port]` of a URL, without the path and query that may hold a secret.
pub fn url_origin(url: &str) -> &str {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    &url[..end]
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &url_origin(&self.url))
            .field("secret", &self.secret.as_ref().map(|_| REDACTED))
            .field("timeout_secs", &self.timeout_secs)
            .finish()
    }
}

impl fmt::Debug for Smtp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Smtp")
            .field("url", &self.url)
            .field("starttls", &self.starttls)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .field("from", &self.from)
            .field("to", &self.to)
            .field("timeout_secs", &self.timeout_secs)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// One condition of `notify.when`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// Every run that failed.
    Failure,
    /// The first success after failures someone was told of.
    Recovery,
    /// The Nth failure in a row (once per streak).
    ConsecutiveFailures(u32),
    /// A slot that was not fired (daemon down, clock jump, master unreachable).
    Missed,
    /// Salt refused the launch or the wrapper could not start (126, 127), or nothing of the
    /// run reached the master.
    LaunchFailure,
    /// A run still going this many seconds after it started (once per run).
    RunningLongerThan(u64),
}

/// `notify: {when: [...], to: [channel, ...]}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyPolicy {
    pub when: Vec<When>,
    /// Channel names, each defined in `notify_channels`.
    pub to: Vec<String>,
}

impl NotifyPolicy {
    pub fn wants(&self, what: impl Fn(&When) -> bool) -> bool {
        self.when.iter().any(what)
    }
}
