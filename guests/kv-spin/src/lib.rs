//! A key-value component written the way a Spin 3 component uses
//! `wasi:keyvalue@0.2.0-draft2` (store, atomics with `cas`/`swap`, batch):
//! a `wasi:http/incoming-handler`, bound with bare `wit-bindgen` on the
//! vendored WIT, unchanged (the `spin-sdk` crate is not in this build's
//! offline registry). Nothing in it knows Gatehouse.
//!
//! Routes (every one takes `bucket=`, default `default`):
//! - `GET /get?key=K`: the value, or 404;
//! - `PUT /set?key=K` (body: the value), `DELETE /delete?key=K`;
//! - `GET /exists?key=K`: `true` or `false`;
//! - `POST /incr?key=K&by=N`: the new value;
//! - `GET /keys`: every key, one per line, following the cursors; after
//!   each page it writes `a-<page>` and `z-<page>` itself (`churn=1`), so
//!   the test sees a scan with writes between its pages;
//! - `GET /page?cursor=C`: one page from cursor `C` (`cursor` and keys);
//! - `GET /hold?n=N`: keeps N more bucket handles and N `cas` handles open
//!   until it answers (what a careless or hostile component does);
//! - `POST /cas-incr?key=K`: adds one with `cas` + `swap`, retrying with
//!   the handle `cas-failed` returns; answers `value retries`;
//! - `POST /cas-blind?key=K` (body: the value): takes a `cas` handle,
//!   overwrites the key itself, then swaps the body in with the stale
//!   handle and, when that fails, once more with the fresh handle
//!   `cas-failed` returns, without reading it; answers `first second`
//!   (`ok` or `failed` each);
//! - `GET /many?keys=a,b`: `get-many`, `key=value` or `key absent` lines;
//! - `POST /set-many` (body: `key=value` lines), `POST /delete-many?keys=a,b`.
//!
//! A store error answers 403 (`access-denied`), 404 (`no-such-store`) or
//! 500 with `other: <text>`.

wit_bindgen::generate!({
    path: "../../wit/deps/keyvalue-0.2.0-draft2",
    world: "wasi:keyvalue/imports@0.2.0-draft2",
});

use std::io::Read;

use wasi::keyvalue::{atomics, batch, store};
use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Spin;

impl Guest for Spin {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let target = request.path_with_query().unwrap_or_default();
        let (route, query) = target.split_once('?').unwrap_or((&target, ""));
        let param = |name: &str| {
            query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=')).map(str::to_string)
        };
        let mut body = Vec::new();
        if let Ok(incoming) = request.consume()
            && let Ok(mut stream) = incoming.stream()
        {
            let _ = stream.read_to_end(&mut body);
        }
        let bucket = param("bucket").unwrap_or_else(|| "default".into());
        let key = param("key").unwrap_or_default();
        let answer = (|| -> Result<(u16, Vec<u8>), store::Error> {
            let bucket = store::open(&bucket)?;
            Ok(match route {
                "/get" => match bucket.get(&key)? {
                    Some(value) => (200, value),
                    None => (404, b"absent".to_vec()),
                },
                "/set" => {
                    bucket.set(&key, &body)?;
                    (200, b"ok".to_vec())
                }
                "/delete" => {
                    bucket.delete(&key)?;
                    (200, b"ok".to_vec())
                }
                "/exists" => (200, bucket.exists(&key)?.to_string().into_bytes()),
                "/incr" => {
                    let by = param("by").and_then(|b| b.parse().ok()).unwrap_or(1);
                    (200, atomics::increment(&bucket, &key, by)?.to_string().into_bytes())
                }
                "/keys" => {
                    let churn = param("churn").is_some();
                    let mut lines = Vec::new();
                    let mut cursor = None;
                    let mut pages = 0;
                    loop {
                        let page = bucket.list_keys(cursor.as_deref())?;
                        pages += 1;
                        lines.extend(page.keys);
                        if churn {
                            bucket.set(&format!("a-{pages}"), b"x")?;
                            bucket.set(&format!("z-{pages}"), b"x")?;
                        }
                        match page.cursor {
                            Some(next) => cursor = Some(next),
                            None => break,
                        }
                    }
                    lines.insert(0, format!("pages {pages}"));
                    (200, lines.join("\n").into_bytes())
                }
                "/page" => {
                    let page = bucket.list_keys(param("cursor").as_deref())?;
                    let next = page.cursor.unwrap_or_else(|| "none".to_string());
                    (200, format!("cursor {next}\n{}", page.keys.join("\n")).into_bytes())
                }
                "/hold" => {
                    let n: usize = param("n").and_then(|n| n.parse().ok()).unwrap_or(0);
                    let mut held = Vec::new();
                    for i in 0..n {
                        held.push((store::open("default")?, atomics::Cas::new(&bucket, &format!("k{i}"))?));
                    }
                    (200, format!("held {}", held.len()).into_bytes())
                }
                "/cas-incr" => {
                    let mut cas = atomics::Cas::new(&bucket, &key)?;
                    let mut retries = 0;
                    loop {
                        let now: i64 = match cas.current()? {
                            Some(bytes) => String::from_utf8_lossy(&bytes).parse().unwrap_or(0),
                            None => 0,
                        };
                        match atomics::swap(cas, (now + 1).to_string().as_bytes()) {
                            Ok(()) => break (200, format!("{} {retries}", now + 1).into_bytes()),
                            Err(atomics::CasError::CasFailed(fresh)) => {
                                retries += 1;
                                cas = fresh;
                            }
                            Err(atomics::CasError::StoreError(error)) => return Err(error),
                        }
                    }
                }
                "/cas-blind" => {
                    let stale = atomics::Cas::new(&bucket, &key)?;
                    bucket.set(&key, b"changed")?;
                    let outcome = |swap: Result<(), atomics::CasError>| match swap {
                        Ok(()) => Ok(("ok", None)),
                        Err(atomics::CasError::CasFailed(fresh)) => Ok(("failed", Some(fresh))),
                        Err(atomics::CasError::StoreError(error)) => Err(error),
                    };
                    let (first, fresh) = outcome(atomics::swap(stale, &body))?;
                    let second = match fresh {
                        Some(fresh) => outcome(atomics::swap(fresh, &body))?.0,
                        None => "-",
                    };
                    (200, format!("{first} {second}").into_bytes())
                }
                "/many" => {
                    let keys: Vec<String> = param("keys").unwrap_or_default().split(',').map(String::from).collect();
                    let lines: Vec<String> = batch::get_many(&bucket, &keys)?
                        .into_iter()
                        .map(|(key, value)| match value {
                            Some(v) => format!("{key}={}", String::from_utf8_lossy(&v)),
                            None => format!("{key} absent"),
                        })
                        .collect();
                    (200, lines.join("\n").into_bytes())
                }
                "/set-many" => {
                    let text = String::from_utf8_lossy(&body);
                    let pairs: Vec<(String, Vec<u8>)> = text
                        .lines()
                        .filter_map(|l| l.split_once('='))
                        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                        .collect();
                    batch::set_many(&bucket, &pairs)?;
                    (200, b"ok".to_vec())
                }
                "/delete-many" => {
                    let keys: Vec<String> = param("keys").unwrap_or_default().split(',').map(String::from).collect();
                    batch::delete_many(&bucket, &keys)?;
                    (200, b"ok".to_vec())
                }
                _ => (404, b"no such route".to_vec()),
            })
        })();
        match answer {
            Ok((status, body)) => respond(out, status, &body),
            Err(store::Error::AccessDenied) => respond(out, 403, b"access-denied"),
            Err(store::Error::NoSuchStore) => respond(out, 404, b"no-such-store"),
            Err(store::Error::Other(text)) => respond(out, 500, format!("other: {text}").as_bytes()),
        }
    }
}

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::from_list(&[("content-type".into(), b"text/plain".to_vec())]).expect("valid header");
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let outgoing = response.body().expect("the body is available once");
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().expect("the stream is available once");
    for chunk in body.chunks(4096) {
        if stream.blocking_write_and_flush(chunk).is_err() {
            break;
        }
    }
    drop(stream);
    let _ = OutgoingBody::finish(outgoing, None);
}

wasip2::http::proxy::export!(Spin);
