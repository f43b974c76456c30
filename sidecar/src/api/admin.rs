//! The admin listener: what is loaded and granted, reload, database
//! health, and the key-value store's read-only view (`api::kv`). Browsers are refused (a request with `Origin`, or from another
//! site by `Sec-Fetch-Site`), and without a token so is any `Host` but a
//! loopback name, against cross-site forms and DNS rebinding. Every
//! request needs `Authorization: Bearer <token>` when a token is set
//! (compared in constant time); without a token the listener must be on
//! a loopback address (checked when the settings are read).

use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};

use super::Api;
use super::invoke::{WithStatus, json};

/// The admin tokens, by name (`[server] admin_token` is `admin`).
pub type AdminTokens = Vec<(String, String)>;

/// Who called, as the audit log names them: the name of the token the
/// request carried, or [`LOOPBACK`] when no token is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub String);

/// The caller's name when the admin API has no token (loopback only):
/// any local process could have called.
pub const LOOPBACK: &str = "loopback";

/// The admin routes, behind the token check.
pub fn router(api: Arc<Api>, tokens: AdminTokens) -> Router {
    let tokens = Arc::new(tokens);
    Router::new()
        .route("/admin/plugins", get(plugins))
        .route("/admin/reload", post(reload))
        .route("/admin/databases", get(databases))
        .merge(super::kv::routes())
        .merge(super::audit::routes())
        .merge(super::approvals::routes())
        .fallback(super::errors::no_route)
        .method_not_allowed_fallback(super::errors::wrong_method)
        .with_state(api)
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            let tokens = tokens.clone();
            async move { authorize(&tokens, request, next).await }
        }))
        .layer(middleware::from_fn(super::edge::edge))
}

async fn authorize(tokens: &[(String, String)], mut request: Request, next: Next) -> Response {
    // The admin API is not for browsers. A page on another site can post a
    // form here (the browser adds `Origin`), and with DNS rebinding read
    // the answers too (the browser sends the attacker's name as `Host`).
    let cross_site = request
        .headers()
        .get("sec-fetch-site")
        .is_some_and(|site| site.as_bytes() != b"none" && site.as_bytes() != b"same-origin");
    if request.headers().contains_key(header::ORIGIN) || cross_site {
        return refuse(
            StatusCode::FORBIDDEN,
            "the admin API does not answer browsers (the request has an Origin or comes from another site)",
        );
    }
    if tokens.is_empty() && !names_loopback(request.headers().get(header::HOST)) {
        return refuse(StatusCode::FORBIDDEN, "without an admin token, Host must be localhost or a loopback address");
    }
    let caller = if tokens.is_empty() {
        LOOPBACK.to_string()
    } else {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, token)| token.trim());
        match which_token(tokens, given) {
            Some(name) => name.to_string(),
            None => {
                let mut response = refuse(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
                response.headers_mut().insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
                return response;
            }
        }
    };
    request.extensions_mut().insert(Caller(caller));
    next.run(request).await
}

/// The name of the token `given` is, comparing it with every token in
/// constant time (all of them, whichever matches), so the time taken says
/// neither how much of a guess was right nor which token it was near.
/// An empty token never matches (`run` refuses one at start).
fn which_token<'a>(tokens: &'a [(String, String)], given: &str) -> Option<&'a str> {
    let mut found = None;
    for (name, expected) in tokens {
        let equal = constant_time_eq(given.as_bytes(), expected.as_bytes()) & !expected.is_empty();
        if equal {
            found = Some(name.as_str());
        }
    }
    found
}

/// A refusal in the JSON error shape every other answer uses (`denied`).
fn refuse(status: StatusCode, message: &str) -> Response {
    super::errors::respond(crate::ErrorKind::Denied, message, None).with_status(status)
}

/// Whether a `Host` header names this machine by loopback: `localhost` or
/// a loopback IP literal, with any port.
fn names_loopback(host: Option<&header::HeaderValue>) -> bool {
    let Some(host) = host.and_then(|h| h.to_str().ok()).filter(|h| !h.contains('@')) else { return false };
    let Ok(authority) = host.parse::<axum::http::uri::Authority>() else { return false };
    let name = authority.host().trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Compares without stopping at the first difference, so the time taken
/// says nothing about how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// What is served, and what the last (re)load refused, with the reasons:
/// plugins (with the version still served, if any), policy files that
/// did not parse, and a policy directory that could not be read.
async fn plugins(State(api): State<Arc<Api>>) -> Response {
    let (directory, files) = api.unserved_policy_files();
    json(
        StatusCode::OK,
        &serde_json::json!({
            "plugins": api.runtime.summaries(),
            "refused": api.runtime.refusals(),
            "refused_policy_files": files,
            "policy_dir_error": directory,
        }),
    )
}

/// Each database alias, where it points (no password) and, when it does
/// not answer, why.
async fn databases(State(api): State<Arc<Api>>) -> Response {
    let health = api.databases.check().await;
    let list: Vec<_> = health
        .iter()
        .map(|h| serde_json::json!({ "alias": h.alias, "target": h.target, "up": h.is_up(), "problem": h.problem }))
        .collect();
    json(StatusCode::OK, &serde_json::json!({ "databases": list }))
}

async fn reload(State(api): State<Arc<Api>>, Extension(Caller(caller)): Extension<Caller>) -> Response {
    let summary = api.reload_by(caller).await;
    let status = if summary.audit_error.is_some() {
        // The audit log could not record the changes: nothing changed.
        StatusCode::SERVICE_UNAVAILABLE
    } else if summary.errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    json(status, &serde_json::to_value(summary).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::{constant_time_eq, names_loopback, which_token};
    use axum::http::HeaderValue;

    #[test]
    fn only_loopback_names_pass_as_host() {
        for host in ["127.0.0.1:8081", "localhost", "LOCALHOST:1", "[::1]:8081", "127.9.9.9"] {
            assert!(names_loopback(Some(&HeaderValue::from_static(host))), "{host}");
        }
        for host in [
            "attacker.example:8081",
            "localhost.attacker.example",
            "attacker.example@localhost",
            "10.0.0.1",
            "0.0.0.0",
            "[::]",
            "",
            "a b",
        ] {
            assert!(!names_loopback(Some(&HeaderValue::from_static(host))), "{host}");
        }
        assert!(!names_loopback(None));
    }

    #[test]
    fn tokens_compare_by_value() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"secret"));
    }

    #[test]
    fn the_caller_is_the_name_of_the_token_it_gave() {
        let tokens = vec![("admin".to_string(), "one".to_string()), ("ci".to_string(), "two".to_string())];
        assert_eq!(which_token(&tokens, "one"), Some("admin"));
        assert_eq!(which_token(&tokens, "two"), Some("ci"));
        assert_eq!(which_token(&tokens, "twoo"), None);
        assert_eq!(which_token(&tokens, ""), None);
        assert_eq!(which_token(&[("empty".to_string(), String::new())], ""), None);
    }
}
