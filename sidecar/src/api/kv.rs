//! The key-value store's admin routes (read-only, behind the admin
//! listener's token like every admin route):
//!
//! - `GET /admin/kv/usage[?plugin=P]`: each plugin loaded with a `[kv]`
//!   grant (or plugin `P`, granted or not), its keys and bytes per bucket
//!   and in all, and its quotas;
//! - `GET /admin/kv/{plugin}/keys?bucket=&prefix=&cursor=&limit=`: one
//!   page of keys (at most 1000), with the cursor of the next;
//! - `GET /admin/kv/{plugin}/value?bucket=&key=[&raw=1]`: one value,
//!   shown safely (escaped text or hex, bounded), or its exact bytes with
//!   `raw=1`.
//!
//! Keys are guest data: each is shown escaped and bounded (`key`), and
//! when that is not the key itself, also as `key_hex`, its exact bytes.
//! This is the operator's door to every plugin's data, so it exists only
//! on the admin listener.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::Api;
use super::errors::respond;
use super::invoke::json;
use crate::ErrorKind;
use crate::guest_text;
use crate::services::kv::backend::{MAX_PAGE, Namespace};
use crate::services::kv::operator::{SHOWN_KEY, show_key, show_value};
use crate::services::kv::policy::DEFAULT_BUCKET;
use crate::services::kv::{KvError, KvReader, KvStore};

/// The routes, to be merged into the admin router.
pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/admin/kv/usage", get(usage))
        .route("/admin/kv/{plugin}/keys", get(keys))
        .route("/admin/kv/{plugin}/value", get(value))
}

/// The query's parameters; a name given twice keeps its last value.
fn params(query: Option<String>) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect()
}

fn error(e: &KvError) -> Response {
    respond(e.kind(), &e.to_string(), None)
}

fn store(api: &Api) -> Result<&Arc<KvStore>, Response> {
    api.services.kv.as_ref().ok_or_else(|| respond(ErrorKind::Unavailable, "no key-value store is configured", None))
}

async fn reader(store: &KvStore) -> Result<KvReader, Response> {
    store.reader().await.map_err(|e| error(&e))
}

/// The namespace a request names; the names are checked (`a-z0-9_-`), and
/// quoted back escaped when they are not valid.
fn namespace(plugin: &str, params: &HashMap<String, String>) -> Result<Namespace, Response> {
    let bucket = params.get("bucket").map(String::as_str).filter(|b| !b.is_empty()).unwrap_or(DEFAULT_BUCKET);
    Namespace::new(plugin, bucket).map_err(|e| error(&e))
}

async fn usage(State(api): State<Arc<Api>>, RawQuery(query): RawQuery) -> Response {
    let params = params(query);
    let store = match store(&api) {
        Ok(store) => store,
        Err(response) => return response,
    };
    let granted = store.granted();
    let wanted: Vec<(String, Option<_>)> = match params.get("plugin") {
        Some(plugin) => {
            if let Err(e) = Namespace::new(plugin, DEFAULT_BUCKET) {
                return error(&e);
            }
            let grant = granted.iter().find(|(name, _)| name == plugin).map(|(_, policy)| policy.clone());
            vec![(plugin.clone(), grant)]
        }
        None => granted.into_iter().map(|(name, policy)| (name, Some(policy))).collect(),
    };
    let mut plugins = Vec::with_capacity(wanted.len());
    if !wanted.is_empty() {
        let reader = match reader(store).await {
            Ok(reader) => reader,
            Err(response) => return response,
        };
        for (plugin, grant) in &wanted {
            match reader.plugin_usage(plugin, grant.as_ref()).await {
                Ok(usage) => plugins.push(usage),
                Err(e) => return error(&e),
            }
        }
    }
    json(StatusCode::OK, &serde_json::json!({ "plugins": plugins }))
}

/// A key as JSON: `key` is safe to print; `key_hex` (only when `key` is
/// not the key itself) gives its exact bytes.
fn key_json(key: &str) -> serde_json::Value {
    if guest_text::is_plain(key, SHOWN_KEY) {
        serde_json::json!({ "key": key })
    } else {
        serde_json::json!({ "key": show_key(key), "key_hex": hex::encode(key) })
    }
}

async fn keys(
    State(api): State<Arc<Api>>,
    plugin: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Response {
    let Ok(Path(plugin)) = plugin else { return super::errors::bad_path() };
    let params = params(query);
    let namespace = match namespace(&plugin, &params) {
        Ok(ns) => ns,
        Err(response) => return response,
    };
    let limit = match params.get("limit").map(|l| l.parse::<u32>()) {
        None => MAX_PAGE,
        Some(Ok(limit)) => limit,
        Some(Err(_)) => return respond(ErrorKind::InvalidInput, "limit must be a number from 1 to 1000", None),
    };
    let store = match store(&api) {
        Ok(store) => store,
        Err(response) => return response,
    };
    let reader = match reader(store).await {
        Ok(reader) => reader,
        Err(response) => return response,
    };
    let prefix = params.get("prefix").map(String::as_str).unwrap_or("");
    let cursor = params.get("cursor").map(String::as_str).filter(|c| !c.is_empty());
    match reader.list_keys(&namespace, prefix, cursor, limit).await {
        Ok(page) => json(
            StatusCode::OK,
            &serde_json::json!({
                "plugin": namespace.plugin(),
                "bucket": namespace.bucket(),
                "keys": page.keys.iter().map(|k| key_json(k)).collect::<Vec<_>>(),
                "cursor": page.cursor,
            }),
        ),
        Err(e) => error(&e),
    }
}

async fn value(
    State(api): State<Arc<Api>>,
    plugin: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Response {
    let Ok(Path(plugin)) = plugin else { return super::errors::bad_path() };
    let params = params(query);
    let namespace = match namespace(&plugin, &params) {
        Ok(ns) => ns,
        Err(response) => return response,
    };
    let Some(key) = params.get("key") else {
        return respond(ErrorKind::InvalidInput, "the key parameter is missing", None);
    };
    let store = match store(&api) {
        Ok(store) => store,
        Err(response) => return response,
    };
    let reader = match reader(store).await {
        Ok(reader) => reader,
        Err(response) => return response,
    };
    let raw = params.get("raw").is_some_and(|r| r == "1" || r == "true");
    match reader.get(&namespace, key).await {
        Ok(Some(value)) if raw => ([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response(),
        Ok(Some(value)) => {
            let mut answer = key_json(key);
            answer["plugin"] = namespace.plugin().into();
            answer["bucket"] = namespace.bucket().into();
            answer["value"] = serde_json::to_value(show_value(&value)).unwrap_or_default();
            json(StatusCode::OK, &answer)
        }
        Ok(None) => respond(
            ErrorKind::NotFound,
            &format!(
                "no key `{}` in bucket `{}` of plugin `{}`",
                show_key(key),
                namespace.bucket(),
                namespace.plugin()
            ),
            None,
        ),
        Err(e) => error(&e),
    }
}
