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
use crate::services::kv::{KvError, KvReader};

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

/// The store's operator view, opened if no call has opened it yet.
async fn reader(api: &Api) -> Result<KvReader, KvError> {
    let store = api.services.kv.as_ref().ok_or_else(|| KvError::Unavailable("no store is configured".into()))?;
    store.reader().await
}

/// The namespace a request names; the names are checked (`a-z0-9_-`), and
/// quoted back escaped when they are not valid.
fn namespace(plugin: &str, params: &HashMap<String, String>) -> Result<Namespace, KvError> {
    let bucket = params.get("bucket").map(String::as_str).filter(|b| !b.is_empty()).unwrap_or(DEFAULT_BUCKET);
    Namespace::new(plugin, bucket)
}

async fn usage(State(api): State<Arc<Api>>, RawQuery(query): RawQuery) -> Response {
    usage_of(&api, &params(query)).await.unwrap_or_else(|e| error(&e))
}

async fn usage_of(api: &Api, params: &HashMap<String, String>) -> Result<Response, KvError> {
    let granted = match &api.services.kv {
        Some(store) => store.granted(),
        None => Vec::new(),
    };
    let wanted: Vec<(String, Option<_>)> = match params.get("plugin") {
        Some(plugin) => {
            Namespace::new(plugin, DEFAULT_BUCKET)?;
            let grant = granted.iter().find(|(name, _)| name == plugin).map(|(_, policy)| policy.clone());
            vec![(plugin.clone(), grant)]
        }
        None => granted.into_iter().map(|(name, policy)| (name, Some(policy))).collect(),
    };
    let mut plugins = Vec::with_capacity(wanted.len());
    // With no plugin to show, the store is not opened.
    if !wanted.is_empty() {
        let reader = reader(api).await?;
        for (plugin, grant) in &wanted {
            plugins.push(reader.plugin_usage(plugin, grant.as_ref()).await?);
        }
    }
    Ok(json(StatusCode::OK, &serde_json::json!({ "plugins": plugins })))
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
    keys_of(&api, &plugin, &params(query)).await.unwrap_or_else(|e| error(&e))
}

async fn keys_of(api: &Api, plugin: &str, params: &HashMap<String, String>) -> Result<Response, KvError> {
    let namespace = namespace(plugin, params)?;
    let limit = match params.get("limit").map(|l| l.parse::<u32>()) {
        None => MAX_PAGE,
        Some(Ok(limit)) => limit,
        Some(Err(_)) => return Err(KvError::InvalidInput("limit must be a number from 1 to 1000".into())),
    };
    let prefix = params.get("prefix").map(String::as_str).unwrap_or("");
    let cursor = params.get("cursor").map(String::as_str).filter(|c| !c.is_empty());
    let page = reader(api).await?.list_keys(&namespace, prefix, cursor, limit).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "plugin": namespace.plugin(),
            "bucket": namespace.bucket(),
            "keys": page.keys.iter().map(|k| key_json(k)).collect::<Vec<_>>(),
            "cursor": page.cursor,
        }),
    ))
}

async fn value(
    State(api): State<Arc<Api>>,
    plugin: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Response {
    let Ok(Path(plugin)) = plugin else { return super::errors::bad_path() };
    value_of(&api, &plugin, &params(query)).await.unwrap_or_else(|e| error(&e))
}

async fn value_of(api: &Api, plugin: &str, params: &HashMap<String, String>) -> Result<Response, KvError> {
    let namespace = namespace(plugin, params)?;
    let key = params.get("key").ok_or_else(|| KvError::InvalidInput("the key parameter is missing".into()))?;
    let raw = params.get("raw").is_some_and(|r| r == "1" || r == "true");
    Ok(match reader(api).await?.get(&namespace, key).await? {
        Some(value) if raw => ([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response(),
        Some(value) => {
            let mut answer = key_json(key);
            answer["plugin"] = namespace.plugin().into();
            answer["bucket"] = namespace.bucket().into();
            answer["value"] = serde_json::to_value(show_value(&value)).unwrap_or_default();
            json(StatusCode::OK, &answer)
        }
        None => respond(
            ErrorKind::NotFound,
            &format!(
                "no key `{}` in bucket `{}` of plugin `{}`",
                show_key(key),
                namespace.bucket(),
                namespace.plugin()
            ),
            None,
        ),
    })
}
