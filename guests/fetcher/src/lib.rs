//! Example plugin: fetches a URL through `gatehouse:services/http-client`
//! and returns the response as JSON. The sidecar checks every request
//! against the plugin's `[http]` policy; a refusal comes back as the typed
//! error record, which this plugin returns unchanged. Input and output
//! formats: see `fetch-common`.

wit_bindgen::generate!({ path: "../../wit", world: "gatehouse:services/plugin" });

use fetch_common::{FetchResponse, parse, render};
use gatehouse::services::http_client::{Request, send};
use gatehouse::services::types::ErrorKind;

struct Fetcher;

impl Guest for Fetcher {
    fn handle(input: Document) -> Result<Document, Error> {
        let fetch = parse(&input.body).map_err(|message| Error {
            kind: ErrorKind::InvalidInput,
            message,
            retry_after_ms: None,
        })?;
        let request = Request {
            method: fetch.method,
            url: fetch.url,
            headers: fetch.headers,
            body: fetch.body.map(String::into_bytes),
            timeout_ms: fetch.timeout_ms,
        };
        let mut response = send(&request)?;
        for _ in 1..fetch.repeat {
            response = send(&request)?;
        }
        let output = FetchResponse {
            status: response.status,
            headers: response.headers,
            body: String::from_utf8_lossy(&response.body).into_owned(),
            requests: fetch.repeat,
        };
        Ok(Document { content_type: "application/json".into(), body: render(&output) })
    }

    fn info() -> PluginInfo {
        PluginInfo {
            name: "fetcher".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Fetches an allowlisted URL through gatehouse:services/http-client".into(),
        }
    }
}

export!(Fetcher);
