//! The JSON documents the two fetcher guests read and write, shared so
//! that `fetcher` (the `gatehouse:services/http-client` door) and
//! `wasi-fetcher` (the `wasi:http/outgoing-handler` door) are drop-in
//! replacements for each other in tests and benchmarks.
//!
//! Input:
//! ```json
//! {"method": "GET", "url": "https://api.example.com/v1",
//!  "headers": [["accept", "application/json"]], "body": "…",
//!  "timeout_ms": 500, "repeat": 1}
//! ```
//! Only `url` is required. `repeat` sends the same request that many times
//! in one invocation (for load tests) and returns the last response.
//! `"unfinished_body": true` (`wasi-fetcher` only) writes the body but never
//! finishes it, then waits for the response, as a guest that stalls its
//! upload would: the sidecar must give up at the request's deadline.
//! `"upload_ms": N` (`wasi-fetcher` only) writes the body in four parts
//! over about `N` milliseconds, as a slow uploader would.
//!
//! Output: `{"status": 200, "headers": [["content-type", "…"]], "body": "…",
//! "requests": 1}`, the body decoded as UTF-8 (lossily).

use serde::{Deserialize, Serialize};

/// Most requests one invocation may ask for with `repeat`.
pub const MAX_REPEAT: u32 = 100_000;

/// What the guest is asked to send.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchRequest {
    #[serde(default = "get")]
    pub method: String,
    pub url: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    pub timeout_ms: Option<u64>,
    #[serde(default = "one")]
    pub repeat: u32,
    #[serde(default)]
    pub unfinished_body: bool,
    #[serde(default)]
    pub upload_ms: u64,
}

fn get() -> String {
    "GET".into()
}

fn one() -> u32 {
    1
}

/// What the guest returns.
#[derive(Debug, Serialize)]
pub struct FetchResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub requests: u32,
}

/// Parses the input document, or says why it cannot.
pub fn parse(body: &[u8]) -> Result<FetchRequest, String> {
    let request: FetchRequest =
        serde_json::from_slice(body).map_err(|e| format!("input is not a fetch request: {e}"))?;
    if !(1..=MAX_REPEAT).contains(&request.repeat) {
        return Err(format!("repeat must be between 1 and {MAX_REPEAT}"));
    }
    Ok(request)
}

/// Renders the output document.
pub fn render(response: &FetchResponse) -> Vec<u8> {
    serde_json::to_vec(response).expect("a response always serialises")
}
