//! Hostile guest (issue 16, finding 1): makes the host hold memory through
//! `wasi:http` resources, which live in the host until the invocation ends
//! and which no linear-memory limit counts. The input names the attack;
//! each runs until the host refuses and answers how far it got:
//!
//! - `fields-clone`: `fields.clone()` of a 60 KiB `fields`, kept, forever;
//! - `from-list`: `fields.from-list` with 60 KiB of values, kept, forever;
//! - `bodies`: outgoing requests whose bodies are written until the host
//!   stops accepting writes, kept, forever;
//! - `unsent URL`: requests with a 60 KiB body handed to
//!   `outgoing-handler` for URL, never awaited, forever;
//! - `big-strings`: requests never sent, each with a 1 MiB method and a
//!   1 MiB authority, kept, forever (an outside review: strings the host
//!   keeps in the request object).
//!
//! Output: `<attack> <objects kept> <why it stopped>`.

wit_bindgen::generate!({ path: "../../wit", world: "gatehouse:services/plugin" });

use std::io::Write;

use wasip2::clocks::monotonic_clock;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

struct HostileHttpState;

const VALUE: usize = 60 * 1024;

impl Guest for HostileHttpState {
    fn handle(input: Document) -> Result<Document, Error> {
        let text = String::from_utf8_lossy(&input.body).trim().to_string();
        let (attack, arg) = text.split_once(' ').unwrap_or((text.as_str(), ""));
        let (kept, why) = match attack {
            "fields-clone" => fields_clone(),
            "from-list" => from_list(),
            "bodies" => bodies(),
            "unsent" => unsent(arg),
            "big-strings" => big_strings(),
            _ => (0, format!("unknown attack `{attack}`")),
        };
        Ok(Document { content_type: "text/plain".into(), body: format!("{attack} {kept} {why}").into_bytes() })
    }

    fn info() -> PluginInfo {
        PluginInfo {
            name: "hostile-http-state".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Holds host memory through wasi:http resources".into(),
        }
    }
}

/// Stops here in any case: 4,000 objects of 60 KiB are 240 MB, plenty to
/// show a missing bound without taking down a shared test machine (an
/// unbounded host held gigabytes).
pub const MAX_OBJECTS: usize = 4_000;

fn big_fields() -> Result<Fields, String> {
    let value = vec![b'x'; VALUE];
    Fields::from_list(&[("x-big".to_string(), value)]).map_err(|e| format!("{e:?}"))
}

fn fields_clone() -> (usize, String) {
    let original = match big_fields() {
        Ok(f) => f,
        Err(e) => return (0, e),
    };
    let mut kept = Vec::new();
    while kept.len() < MAX_OBJECTS {
        let copy = original.clone();
        // One small append per copy, so it is no longer shared.
        if let Err(e) = copy.append("x-n", b"1") {
            return (kept.len(), format!("append: {e:?}"));
        }
        kept.push(copy);
    }
    (kept.len(), "no refusal".into())
}

fn from_list() -> (usize, String) {
    let mut kept = Vec::new();
    while kept.len() < MAX_OBJECTS {
        match big_fields() {
            Ok(f) => kept.push(f),
            Err(e) => return (kept.len(), e),
        }
    }
    (kept.len(), "no refusal".into())
}

fn bodies() -> (usize, String) {
    let chunk = vec![b'x'; VALUE];
    let mut kept = Vec::new();
    while kept.len() < MAX_OBJECTS {
        let request = OutgoingRequest::new(Fields::new());
        let Ok(body) = request.body() else { return (kept.len(), "body refused".into()) };
        let Ok(stream) = body.write() else { return (kept.len(), "write refused".into()) };
        // One write of what the host says it will take (at most 60 KiB
        // here; an unbounded host took 1 MiB per write), without waiting.
        match stream.check_write() {
            Ok(n) => {
                let n = (n as usize).min(chunk.len());
                if let Err(e) = stream.write(&chunk[..n]) {
                    return (kept.len(), format!("write: {e:?}"));
                }
            }
            Err(e) => return (kept.len(), format!("check-write: {e:?}")),
        }
        kept.push((request, body, stream));
    }
    (kept.len(), "no refusal".into())
}

fn big_strings() -> (usize, String) {
    let method = Method::Other("A".repeat(1 << 20));
    let authority = format!("{}.test", "a".repeat((1 << 20) - 5));
    let mut kept = Vec::new();
    while kept.len() < MAX_OBJECTS {
        let request = OutgoingRequest::new(Fields::new());
        if request.set_method(&method).is_err() {
            return (kept.len(), "method refused".into());
        }
        if request.set_authority(Some(&authority)).is_err() {
            return (kept.len(), "authority refused".into());
        }
        kept.push(request);
    }
    (kept.len(), "never refused".into())
}

fn unsent(url: &str) -> (usize, String) {
    let Some((authority, path)) = url.strip_prefix("http://").map(|r| r.split_once('/').unwrap_or((r, ""))) else {
        return (0, "give an http:// URL".into());
    };
    let chunk = vec![b'x'; VALUE];
    let mut kept = Vec::new();
    while kept.len() < MAX_OBJECTS {
        let request = OutgoingRequest::new(Fields::new());
        let _ = request.set_method(&Method::Post);
        let _ = request.set_scheme(Some(&Scheme::Http));
        let _ = request.set_authority(Some(authority));
        let _ = request.set_path_with_query(Some(&format!("/{path}")));
        let Ok(body) = request.body() else { return (kept.len(), "body refused".into()) };
        // Handed over first, as a streaming client does; the body follows.
        let future = match outgoing_handler::handle(request, None) {
            Ok(future) => future,
            Err(e) => return (kept.len(), format!("refused: {e:?}")),
        };
        // A refusal at hand-over resolves at once; a request that was
        // taken stays pending (its server never answers).
        let timer = monotonic_clock::subscribe_duration(50_000_000);
        wasip2::io::poll::poll(&[&future.subscribe(), &timer]);
        match future.get() {
            Some(Ok(Err(e))) => return (kept.len(), format!("refused: {e:?}")),
            Some(Ok(Ok(response))) => return (kept.len(), format!("answered {}", response.status())),
            _ => {}
        }
        {
            let Ok(mut stream) = body.write() else { return (kept.len(), "write refused".into()) };
            if stream.write_all(&chunk).and_then(|()| Write::flush(&mut stream)).is_err() {
                return (kept.len(), "body write failed".into());
            }
        }
        if OutgoingBody::finish(body, None).is_err() {
            return (kept.len(), "finish failed".into());
        }
        kept.push(future);
    }
    (kept.len(), "no refusal".into())
}

export!(HostileHttpState);
