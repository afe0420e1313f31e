//! Who may do what over HTTP: operator tokens (kept as digests, compared in constant time)
//! and the browser-safety rules (the API's own Host names against DNS rebinding; same-origin
//! or allowed pages; mutations no HTML form can send).
//!
//! Must not know: routes, handlers, the daemon.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, PoisonError, RwLock};

use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};

use super::{ApiError, REQUEST_HEADER};
use crate::config::Settings;
use crate::secret::digest;

/// Why a request was refused before its handler did anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum Denied {
    /// The Host is none of the API's names: a DNS-rebinding page (or a misdirected request).
    #[error(
        "unknown Host: this API answers to IP addresses, localhost, the machine's hostname and the hosts of saltpeter_config.api_allowed_origins"
    )]
    UnknownHost,
    /// A mutation a plain HTML form or beacon could send.
    #[error(
        "mutations need Content-Type: application/json or X-Saltpeter-Request: 1 (this keeps web pages from sending them)"
    )]
    NotScripted,
    /// A browser request made by a page of another site.
    #[error("cross-origin request refused (allow it with saltpeter_config.api_allowed_origins)")]
    CrossOrigin,
    #[error(
        "this call needs an operator token (Authorization: Bearer <token>, see saltpeter_config.api_tokens and `saltpeter token add`)"
    )]
    NoToken,
    /// An unknown token and a read-only one get the same answer: a guess learns nothing.
    #[error("this token may not do that (an operator token is needed)")]
    NotPermitted,
}

impl Denied {
    fn status(self) -> StatusCode {
        match self {
            Denied::UnknownHost => StatusCode::MISDIRECTED_REQUEST,
            Denied::NoToken => StatusCode::UNAUTHORIZED,
            Denied::NotScripted | Denied::CrossOrigin | Denied::NotPermitted => {
                StatusCode::FORBIDDEN
            }
        }
    }
}

impl From<Denied> for ApiError {
    fn from(d: Denied) -> ApiError {
        ApiError::new(d.status(), d.to_string())
    }
}

/// A configured token, kept as its digest: every comparison is of 32 bytes, so neither the
/// time taken nor an early length mismatch says anything about the tokens.
#[derive(Debug)]
struct TokenDigest {
    digest: [u8; 32],
    operator: bool,
}

/// The tokens kept in the store (`saltpeter token`), shared by every daemon on it: replaced
/// at start and at each heartbeat, so a revoked one stops working within one.
#[derive(Clone, Debug, Default)]
pub struct StoreTokens(Arc<RwLock<Arc<[TokenDigest]>>>);

impl StoreTokens {
    pub fn set(&self, tokens: Vec<crate::history::tokens::Digest>) {
        let tokens: Arc<[TokenDigest]> = tokens
            .into_iter()
            .map(|t| TokenDigest {
                digest: t.digest,
                operator: t.operator,
            })
            .collect();
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = tokens;
    }

    fn get(&self) -> Arc<[TokenDigest]> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Who may do what, and which names and origins are the API's own (browser safety).
#[derive(Debug)]
pub(super) struct Access {
    tokens: Vec<TokenDigest>,
    stored: StoreTokens,
    /// Mutations need an operator token: not on loopback, or tokens are configured (or
    /// stored, see [`Access::authorize`]).
    guarded: bool,
    /// `api_allowed_origins`, as configured.
    origins: Vec<String>,
    /// The names the API answers to besides IP literals and `localhost` (normalized by
    /// [`host_name`]): the bind address, the machine's names, the allowed origins' hosts.
    names: Vec<String>,
}

impl Access {
    /// `hostname` is the machine's; the names `hosts_file` (`/etc/hosts`) gives its addresses
    /// are its other names (usually the FQDN), found without asking DNS.
    pub(super) fn new(settings: &Settings, hostname: Option<&str>, hosts_file: &str) -> Access {
        let loopback = settings
            .api_ws_bind_addr
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(settings.api_ws_bind_addr == "localhost");
        let mut names = Vec::new();
        if settings.api_ws_bind_addr.parse::<IpAddr>().is_err() {
            names.push(host_name(&settings.api_ws_bind_addr));
        }
        if let Some(h) = hostname.map(host_name).filter(|h| !h.is_empty()) {
            let short = h.split('.').next().unwrap_or_default().to_string();
            for line in hosts_file.lines() {
                let line = line.split('#').next().unwrap_or_default();
                let aliases: Vec<String> = line.split_whitespace().skip(1).map(host_name).collect();
                if aliases.iter().any(|a| *a == h || *a == short) {
                    names.extend(aliases);
                }
            }
            names.extend([h, short]);
        }
        names.extend(
            settings
                .api_allowed_origins
                .iter()
                .filter_map(|o| WebOrigin::parse(o))
                .map(|o| o.host),
        );
        names.sort();
        names.dedup();
        Access {
            tokens: settings
                .api_tokens
                .iter()
                .map(|t| TokenDigest {
                    digest: digest(&t.token),
                    operator: t.operator,
                })
                .collect(),
            stored: StoreTokens::default(),
            guarded: !loopback || !settings.api_tokens.is_empty(),
            origins: settings.api_allowed_origins.clone(),
            names,
        }
    }

    /// The handle through which the daemon replaces the stored tokens.
    pub(super) fn stored(&self) -> &StoreTokens {
        &self.stored
    }

    /// Whether a `Host` (or `:authority`) is one of the API's: a browser led here by DNS
    /// rebinding sends the attacker's name. No Host at all (HTTP/1.0 tools) is no browser.
    fn host_allowed(&self, host: Option<&str>) -> bool {
        let Some(host) = host else {
            return true;
        };
        let Some((name, _port)) = split_authority(host) else {
            return false;
        };
        is_ip_literal(&name) || name == "localhost" || self.names.contains(&name)
    }

    pub(super) fn check_host(&self, host: Option<&str>) -> Result<(), Denied> {
        match self.host_allowed(host) {
            true => Ok(()),
            false => Err(Denied::UnknownHost),
        }
    }

    /// An `Origin` listed in `api_allowed_origins` (compared normalized, or verbatim).
    fn listed(&self, origin: &str) -> bool {
        let parsed = WebOrigin::parse(origin);
        self.origins
            .iter()
            .any(|o| o == origin || (parsed.is_some() && WebOrigin::parse(o) == parsed))
    }

    /// The page's origin is the API's own: the request's own host and port, under one of the
    /// API's names (without a Host, any of its names). The scheme is not compared: behind a
    /// proxy that ends TLS, the API cannot tell.
    fn own_origin(&self, origin: &str, host: Option<&str>) -> bool {
        let Some(origin) = WebOrigin::parse(origin) else {
            return false; // `null` (sandboxed frames, files) and the like
        };
        let Some(host) = host else {
            return self.host_allowed(Some(&origin.host));
        };
        let Some((name, port)) = split_authority(host) else {
            return false;
        };
        let port = match port {
            Some(p) => p.parse::<u16>().ok(),
            None => Some(origin.default_port()),
        };
        self.host_allowed(Some(host)) && name == origin.host && port == Some(origin.port)
    }

    /// A browser's request must come from a page of the API's own origin or an allowed one.
    /// `Sec-Fetch-Site` (`none`: typed by the user) is checked too, as browsers leave out
    /// `Origin` on some requests; a listed origin may be of another site.
    pub(super) fn check_site(&self, headers: &HeaderMap, host: Option<&str>) -> Result<(), Denied> {
        // A value that is not text is nothing this API sent: foreign.
        let origin = headers
            .get(header::ORIGIN)
            .map(|v| v.to_str().unwrap_or("null"));
        let listed = origin.is_some_and(|o| self.listed(o));
        let site = headers
            .get("sec-fetch-site")
            .map(|v| v.to_str().unwrap_or_default());
        let same_site = site.is_none_or(|s| matches!(s, "same-origin" | "none"));
        let own = origin.is_none_or(|o| self.own_origin(o, host));
        match listed || (same_site && own) {
            true => Ok(()),
            false => Err(Denied::CrossOrigin),
        }
    }

    /// The browser-safety rules for anything that changes state, before any token is looked
    /// at: the API's own Host, a same-origin (or allowed) page, and a request no HTML form can
    /// make (a JSON body or the custom header, both of which need a preflight cross-origin).
    pub(super) fn check_mutation(
        &self,
        headers: &HeaderMap,
        host: Option<&str>,
    ) -> Result<(), Denied> {
        self.check_host(host)?;
        self.check_site(headers, host)?;
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
        match json || headers.contains_key(REQUEST_HEADER) {
            true => Ok(()),
            false => Err(Denied::NotScripted),
        }
    }

    /// An operator's bearer token (or `?token=` where headers cannot be set), unless the API
    /// is open (on loopback without tokens).
    pub(super) fn authorize(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<(), Denied> {
        let stored = self.stored.get();
        if !self.guarded && stored.is_empty() {
            return Ok(());
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .or(query_token)
            .ok_or(Denied::NoToken)?;
        let presented = digest(presented);
        // Every token is compared, without stopping at a match.
        let operator = self
            .tokens
            .iter()
            .chain(stored.iter())
            .fold(false, |ok, t| {
                ok | (crate::secret::same(&t.digest, &presented) & t.operator)
            });
        match operator {
            true => Ok(()),
            false => Err(Denied::NotPermitted),
        }
    }
}

/// An `Origin` (or `api_allowed_origins` entry): scheme, normalized host, port.
#[derive(Clone, Debug, PartialEq, Eq)]
struct WebOrigin {
    scheme: String,
    host: String,
    port: u16,
}

impl WebOrigin {
    fn parse(s: &str) -> Option<WebOrigin> {
        let (scheme, rest) = s.trim().split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = split_authority(authority)?;
        let mut origin = WebOrigin {
            scheme,
            host,
            port: 0,
        };
        origin.port = match port {
            Some(p) => p.parse().ok()?,
            None => origin.default_port(),
        };
        Some(origin)
    }

    fn default_port(&self) -> u16 {
        match self.scheme.as_str() {
            "https" | "wss" => 443,
            _ => 80,
        }
    }
}

/// A host name as compared: lowercase, without the root's trailing dot.
fn host_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The normalized host (see [`host_name`]; an IPv6 literal keeps its brackets) and the port of
/// an authority: `name`, `192.0.2.1` or `[2001:db8::1]`, each with an optional `:port`. `None`
/// for anything else, a bare IPv6 address included.
fn split_authority(authority: &str) -> Option<(String, Option<&str>)> {
    let end = match authority.strip_prefix('[') {
        Some(inner) => inner.find(']')? + 2,
        None => authority.find(':').unwrap_or(authority.len()),
    };
    let (host, rest) = authority.split_at(end);
    let port = match rest {
        "" => None,
        _ => Some(
            rest.strip_prefix(':')
                .filter(|p| p.parse::<u16>().is_ok())?,
        ),
    };
    let valid = !host.is_empty()
        && (!host.starts_with('[') || is_ip_literal(host))
        && !host.contains(['/', '@', '\\', ' ']);
    valid.then(|| (host_name(host), port))
}

/// `192.0.2.1` or `[2001:db8::1]`: no DNS name is involved, so no rebinding either.
fn is_ip_literal(host: &str) -> bool {
    host.parse::<Ipv4Addr>().is_ok()
        || host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .is_some_and(|h| h.parse::<Ipv6Addr>().is_ok())
}

/// The host a request was sent to: its `Host`, or the `:authority` of an absolute URI. A
/// `Host` that is not text is kept as an empty (so unknown) one.
pub(super) fn request_host(req: &Request) -> Option<&str> {
    match req.headers().get(header::HOST) {
        Some(h) => Some(h.to_str().unwrap_or_default()),
        None => req.uri().authority().map(|a| a.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};

    use super::{Access, Denied, WebOrigin, split_authority};
    use crate::api::REQUEST_HEADER;
    use crate::config::{ApiToken, Settings};

    const HOSTS: &str = "127.0.0.1 localhost\n127.0.1.1 master.corp.example master # the FQDN\n10.0.0.9 other.corp.example other\n";

    /// Bound to `bind`, on a machine named `master` (`master.corp.example` in `/etc/hosts`).
    fn access(bind: &str, tokens: &[(&str, bool)], origins: &[&str]) -> Access {
        let mut settings = Settings::defaults("master");
        settings.api_ws_bind_addr = bind.into();
        settings.api_tokens = tokens
            .iter()
            .map(|(t, operator)| ApiToken {
                name: format!("name-of-{t}"),
                token: (*t).into(),
                operator: *operator,
            })
            .collect();
        settings.api_allowed_origins = origins.iter().map(|o| o.to_string()).collect();
        Access::new(&settings, Some("master"), HOSTS)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn authorities_split_into_a_normalized_host_and_a_port() {
        let split = |a| split_authority(a).map(|(h, p)| (h, p.map(String::from)));
        assert_eq!(
            split("Master.Example."),
            Some(("master.example".into(), None))
        );
        assert_eq!(
            split("127.0.0.1:8888"),
            Some(("127.0.0.1".into(), Some("8888".into())))
        );
        assert_eq!(
            split("[::1]:8888"),
            Some(("[::1]".into(), Some("8888".into())))
        );
        assert_eq!(split("[::1]"), Some(("[::1]".into(), None)));
        for bad in [
            "", "::1", "[::1", "[nope]", "a:b", "a:99999", "a b", "u@evil", ":80", "a/b",
        ] {
            assert_eq!(split(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn origins_compare_by_scheme_host_and_effective_port() {
        let o = |s| WebOrigin::parse(s);
        assert_eq!(o("http://Example.COM"), o("http://example.com:80/"));
        assert_ne!(o("http://example.com"), o("https://example.com"));
        assert_ne!(o("http://example.com"), o("http://example.com:8080"));
        assert_eq!(o("null"), None);
        assert_eq!(o("https://example.com/path"), None);
    }

    #[test]
    fn only_the_apis_own_names_are_accepted_as_host() {
        let a = access("0.0.0.0", &[], &["https://ui.example:8443"]);
        for ok in [
            "127.0.0.1:8888",
            "192.0.2.7",
            "[::1]:8888",
            "[2001:db8::1]",
            "localhost:8888",
            "LOCALHOST.",
            "master:8888",
            "master.corp.example",
            "ui.example",
        ] {
            assert!(a.host_allowed(Some(ok)), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8888",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "other.corp.example",
            "::1",
            "",
            "master:x",
        ] {
            assert!(!a.host_allowed(Some(bad)), "{bad}");
            assert_eq!(a.check_host(Some(bad)), Err(Denied::UnknownHost));
        }
        // HTTP/1.0 tools send no Host: no browser, no rebinding.
        assert!(a.host_allowed(None));
        // A name to bind to is one of the API's names.
        assert!(access("cron.corp.example", &[], &[]).host_allowed(Some("cron.corp.example:1")));
    }

    #[test]
    fn browsers_must_come_from_the_apis_own_origin_or_an_allowed_one() {
        let a = access("127.0.0.1", &[], &["https://ui.example"]);
        let host = Some("127.0.0.1:8888");
        let site = |pairs: &[(&str, &str)], host| a.check_site(&headers(pairs), host);
        assert_eq!(site(&[], host), Ok(()), "not a browser");
        assert_eq!(site(&[("origin", "http://127.0.0.1:8888")], host), Ok(()));
        // Behind a proxy that ends TLS: the scheme is not the API's to know.
        assert_eq!(site(&[("origin", "https://127.0.0.1:8888")], host), Ok(()));
        assert_eq!(
            site(
                &[("origin", "http://localhost:8888")],
                Some("localhost:8888")
            ),
            Ok(())
        );
        assert_eq!(site(&[("sec-fetch-site", "same-origin")], host), Ok(()));
        assert_eq!(site(&[("sec-fetch-site", "none")], host), Ok(()));
        for refused in [
            vec![("origin", "http://evil.example")],
            vec![("origin", "http://127.0.0.1:9999")],
            vec![("origin", "null")],
            vec![("sec-fetch-site", "cross-site")],
            vec![("sec-fetch-site", "same-site")],
            vec![
                ("origin", "http://127.0.0.1:8888"),
                ("sec-fetch-site", "cross-site"),
            ],
        ] {
            assert_eq!(
                site(&refused, host),
                Err(Denied::CrossOrigin),
                "{refused:?}"
            );
        }
        // The page's origin must be the request's own host, not merely one of the API's names.
        assert_eq!(
            site(&[("origin", "http://localhost:8888")], host),
            Err(Denied::CrossOrigin)
        );
        // DNS rebinding: the page and the Host agree, but the name is not the API's.
        assert_eq!(
            site(
                &[("origin", "http://evil.example:8888")],
                Some("evil.example:8888")
            ),
            Err(Denied::CrossOrigin)
        );
        // A listed origin is another site by definition.
        assert_eq!(
            site(
                &[
                    ("origin", "https://ui.example"),
                    ("sec-fetch-site", "cross-site")
                ],
                host
            ),
            Ok(())
        );
    }

    #[test]
    fn mutations_need_json_or_the_custom_header() {
        let a = access("127.0.0.1", &[], &[]);
        let host = Some("127.0.0.1:8888");
        let check = |pairs: &[(&str, &str)]| a.check_mutation(&headers(pairs), host);
        assert_eq!(check(&[]), Err(Denied::NotScripted));
        for form in [
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "text/plain",
            "application/jsonp",
        ] {
            assert_eq!(check(&[("content-type", form)]), Err(Denied::NotScripted));
        }
        assert_eq!(check(&[("content-type", "application/json")]), Ok(()));
        assert_eq!(
            check(&[("content-type", "Application/JSON; charset=utf-8")]),
            Ok(())
        );
        assert_eq!(check(&[(REQUEST_HEADER, "1")]), Ok(()));
        assert_eq!(
            check(&[(REQUEST_HEADER, "1"), ("origin", "http://evil.example")]),
            Err(Denied::CrossOrigin)
        );
        assert_eq!(
            a.check_mutation(&headers(&[(REQUEST_HEADER, "1")]), Some("evil.example")),
            Err(Denied::UnknownHost)
        );
        let msg = Denied::NotScripted.to_string();
        assert!(msg.contains("Content-Type: application/json or X-Saltpeter-Request: 1"));
    }

    #[test]
    fn token_failures_do_not_say_which_part_was_wrong() {
        let a = access(
            "127.0.0.1",
            &[("op-secret", true), ("ro-secret", false)],
            &[],
        );
        let auth = |t: &str| a.authorize(&headers(&[("authorization", t)]), None);
        assert_eq!(a.authorize(&HeaderMap::new(), None), Err(Denied::NoToken));
        assert_eq!(auth("Bearer op-secret"), Ok(()));
        assert_eq!(a.authorize(&HeaderMap::new(), Some("op-secret")), Ok(()));
        for wrong in [
            "Bearer ro-secret",
            "Bearer op-secre",
            "Bearer op-secret!",
            "Bearer ",
        ] {
            assert_eq!(auth(wrong), Err(Denied::NotPermitted), "{wrong}");
        }
        assert!(!Denied::NotPermitted.to_string().contains("name-of"));
        // Open on loopback without tokens; guarded when bound beyond it.
        assert_eq!(
            access("127.0.0.1", &[], &[]).authorize(&HeaderMap::new(), None),
            Ok(())
        );
        assert_eq!(
            access("0.0.0.0", &[], &[]).authorize(&HeaderMap::new(), None),
            Err(Denied::NoToken)
        );
    }

    /// Tokens from the store count as the config's do, guard a loopback API while there are
    /// any, and stop counting once replaced (revoked).
    #[test]
    fn stored_tokens_guard_and_authorize_until_replaced() {
        let a = access("127.0.0.1", &[], &[]);
        let auth = |t: &str| a.authorize(&headers(&[("authorization", t)]), None);
        let stored = |t: &str, operator| crate::history::tokens::Digest {
            digest: crate::secret::digest(t),
            operator,
        };
        a.stored()
            .set(vec![stored("op-stored", true), stored("ro-stored", false)]);
        assert_eq!(a.authorize(&HeaderMap::new(), None), Err(Denied::NoToken));
        assert_eq!(auth("Bearer op-stored"), Ok(()));
        assert_eq!(auth("Bearer ro-stored"), Err(Denied::NotPermitted));
        a.stored().set(vec![stored("ro-stored", false)]);
        assert_eq!(auth("Bearer op-stored"), Err(Denied::NotPermitted));
        a.stored().set(Vec::new());
        assert_eq!(a.authorize(&HeaderMap::new(), None), Ok(()), "open again");
    }
}
