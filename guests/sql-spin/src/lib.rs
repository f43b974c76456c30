//! A SQLite component written the way a Spin SDK author writes one, on
//! Spin's own interfaces (`fermyon:spin/sqlite@2.0.0`, the Spin 2 SDK's,
//! and `spin:sqlite/sqlite@3.0.0`, the Spin 3 SDK's), bound with bare
//! `wit-bindgen` on the WIT vendored under `wit/deps/` (the `spin-sdk`
//! crate is not in this build's offline registry). Nothing in its SQL
//! knows Gatehouse; it exports the plugin world's `handle` and `info` only
//! so that the tests can invoke it.
//!
//! Its input is one JSON command; `"version"` is 2 (default) or 3 and
//! `"db"` the label to open (default `"default"`, as `Connection::open_default`
//! does):
//! - `{"todo": TEXT}`: the Spin SDK's sample flow on one connection:
//!   `BEGIN TRANSACTION`, an `INSERT` into `todos`, `END TRANSACTION` as
//!   separate `execute` calls, then a `SELECT` with a parameter; answers
//!   `{"rows": [[V…]…], "last_insert_rowid": N, "changes": N}` (the two
//!   counters on version 3 only). Stops at the first error (`?`), answered
//!   as `{"error": E}`.
//! - `{"steps": [{"sql": S, "params": [V…]}…], "end": "drop" | "leave"}`:
//!   each statement on one connection, going on after errors; answers
//!   `{"results": [R…]}` where `R` is `{"columns": […], "rows": […]}` or
//!   `{"error": E}` (plus the counters on version 3); a step with
//!   `"after_ms": N` sleeps N ms first, holding the connection. `leave` returns
//!   without dropping the connection (whatever it holds open stays open
//!   until the host ends the invocation); `drop` drops it first.
//! - `{"hold": N}`: opens N connections and keeps them all until the
//!   invocation ends (`{"held": N}`), or answers `{"error": E, "opened": K}`
//!   at the first that fails; `"alternate": true` opens them through
//!   versions 2 and 3 in turn.
//!
//! A value `V` is `null`, `{"int": n}`, `{"real": x}`, `{"text": s}` or
//! `{"blob": [bytes]}`; an error `E` is the variant's name, with its text
//! after `": "` for `io`.

wit_bindgen::generate!({
    inline: r#"
        package gatehouse:sql-spin;

        world sql-spin {
            import fermyon:spin/sqlite@2.0.0;
            import spin:sqlite/sqlite@3.0.0;
            use gatehouse:services/types@0.1.0.{document, error, plugin-info};
            export handle: func(input: document) -> result<document, error>;
            export info: func() -> plugin-info;
        }
    "#,
    path: ["../../wit"],
    generate_all,
});

use fermyon::spin::sqlite as v2;
use gatehouse::services::types::ErrorKind;
use serde_json::{Value as Json, json};
use spin::sqlite::sqlite as v3;

struct SqlSpin;

impl Guest for SqlSpin {
    fn handle(input: Document) -> Result<Document, Error> {
        let command: Json = serde_json::from_slice(&input.body).map_err(|e| invalid(&e.to_string()))?;
        let answer = run(&command)?;
        Ok(Document { content_type: "application/json".into(), body: answer.to_string().into_bytes() })
    }

    fn info() -> PluginInfo {
        PluginInfo {
            name: "sql-spin".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "A Spin SDK-style SQLite component on Spin's sqlite interfaces".into(),
        }
    }
}

/// A connection of either version, as the SDK would wrap it.
enum Connection {
    V2(v2::Connection),
    V3(v3::Connection),
}

/// A value as both versions carry it.
#[derive(Clone)]
enum Value {
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
    Null,
}

struct QueryResult {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
}

impl Connection {
    fn open(version: u64, label: &str) -> Result<Connection, String> {
        match version {
            3 => v3::Connection::open(label).map(Connection::V3).map_err(|e| error3(&e)),
            _ => v2::Connection::open(label).map(Connection::V2).map_err(|e| error2(&e)),
        }
    }

    fn execute(&self, statement: &str, params: &[Value]) -> Result<QueryResult, String> {
        match self {
            Connection::V2(c) => {
                let params: Vec<v2::Value> = params.iter().cloned().map(to_v2).collect();
                let result = c.execute(statement, &params).map_err(|e| error2(&e))?;
                Ok(QueryResult {
                    columns: result.columns,
                    rows: result.rows.into_iter().map(|r| r.values.into_iter().map(from_v2).collect()).collect(),
                })
            }
            Connection::V3(c) => {
                let params: Vec<v3::Value> = params.iter().cloned().map(to_v3).collect();
                let result = c.execute(statement, &params).map_err(|e| error3(&e))?;
                Ok(QueryResult {
                    columns: result.columns,
                    rows: result.rows.into_iter().map(|r| r.values.into_iter().map(from_v3).collect()).collect(),
                })
            }
        }
    }

    /// Version 3's counters, added to `answer`.
    fn counters(&self, answer: &mut Json) {
        if let Connection::V3(c) = self {
            answer["last_insert_rowid"] = json!(c.last_insert_rowid());
            answer["changes"] = json!(c.changes());
        }
    }
}

fn run(command: &Json) -> Result<Json, Error> {
    let version = command["version"].as_u64().unwrap_or(2);
    let label = command["db"].as_str().unwrap_or("default");
    if let Some(text) = command["todo"].as_str() {
        return Ok(todo(version, label, text).unwrap_or_else(|e| json!({ "error": e })));
    }
    if let Some(steps) = command["steps"].as_array() {
        let connection = match Connection::open(version, label) {
            Ok(c) => c,
            Err(e) => return Ok(json!({ "error": e })),
        };
        let mut results = Vec::new();
        for step in steps {
            if let Some(ms) = step["after_ms"].as_u64() {
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
            let params = params(&step["params"])?;
            let statement = step["sql"].as_str().ok_or_else(|| invalid("a step needs `sql`"))?;
            let mut result = match connection.execute(statement, &params) {
                Ok(rows) => rows_json(&rows),
                Err(e) => json!({ "error": e }),
            };
            connection.counters(&mut result);
            results.push(result);
        }
        match command["end"].as_str().unwrap_or("drop") {
            "drop" => drop(connection),
            "leave" => std::mem::forget(connection),
            other => return Err(invalid(&format!("end: {other}"))),
        }
        return Ok(json!({ "results": results }));
    }
    if let Some(n) = command["hold"].as_u64() {
        let alternate = command["alternate"].as_bool().unwrap_or(false);
        let mut held = Vec::new();
        for opened in 0..n {
            let version = if alternate { 2 + opened % 2 } else { version };
            match Connection::open(version, label) {
                Ok(c) => held.push(c),
                Err(e) => return Ok(json!({ "error": e, "opened": opened })),
            }
        }
        std::mem::forget(held);
        return Ok(json!({ "held": n }));
    }
    Err(invalid("commands: todo, steps, hold"))
}

/// The Spin SDK's SQLite sample, as its authors write it.
fn todo(version: u64, label: &str, text: &str) -> Result<Json, String> {
    let connection = Connection::open(version, label)?;
    connection.execute("BEGIN TRANSACTION", &[])?;
    connection.execute(
        "INSERT INTO todos (description, due) VALUES (?, ?)",
        &[Value::Text(text.into()), Value::Text("2026-12-24".into())],
    )?;
    connection.execute("END TRANSACTION", &[])?;
    let result = connection.execute(
        "SELECT id, description, due FROM todos WHERE due >= ? ORDER BY id",
        &[Value::Text("2026-01-01".into())],
    )?;
    let mut answer = rows_json(&result);
    connection.counters(&mut answer);
    Ok(answer)
}

fn rows_json(result: &QueryResult) -> Json {
    let rows: Vec<Json> = result.rows.iter().map(|row| Json::Array(row.iter().map(to_json).collect())).collect();
    json!({ "columns": result.columns, "rows": rows })
}

fn params(list: &Json) -> Result<Vec<Value>, Error> {
    let Some(list) = list.as_array() else { return Ok(Vec::new()) };
    list.iter()
        .map(|v| {
            Ok(match v {
                Json::Null => Value::Null,
                Json::Object(o) if o.len() == 1 => {
                    let (tag, inner) = o.iter().next().expect("one entry");
                    match (tag.as_str(), inner) {
                        ("int", n) if n.is_i64() => Value::Integer(n.as_i64().expect("i64")),
                        ("real", n) if n.is_number() => Value::Real(n.as_f64().expect("f64")),
                        ("text", Json::String(s)) => Value::Text(s.clone()),
                        ("blob", Json::Array(bytes)) => Value::Blob(
                            bytes
                                .iter()
                                .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                                .collect::<Option<_>>()
                                .ok_or_else(|| invalid("blob bytes"))?,
                        ),
                        _ => return Err(invalid(&format!("parameter {v}"))),
                    }
                }
                _ => return Err(invalid(&format!("parameter {v}"))),
            })
        })
        .collect()
}

fn to_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Integer(n) => json!({ "int": n }),
        Value::Real(x) => json!({ "real": x }),
        Value::Text(s) => json!({ "text": s }),
        Value::Blob(bytes) => json!({ "blob": bytes }),
    }
}

fn to_v2(value: Value) -> v2::Value {
    match value {
        Value::Integer(i) => v2::Value::Integer(i),
        Value::Real(f) => v2::Value::Real(f),
        Value::Text(t) => v2::Value::Text(t),
        Value::Blob(b) => v2::Value::Blob(b),
        Value::Null => v2::Value::Null,
    }
}

fn from_v2(value: v2::Value) -> Value {
    match value {
        v2::Value::Integer(i) => Value::Integer(i),
        v2::Value::Real(f) => Value::Real(f),
        v2::Value::Text(t) => Value::Text(t),
        v2::Value::Blob(b) => Value::Blob(b),
        v2::Value::Null => Value::Null,
    }
}

fn to_v3(value: Value) -> v3::Value {
    match value {
        Value::Integer(i) => v3::Value::Integer(i),
        Value::Real(f) => v3::Value::Real(f),
        Value::Text(t) => v3::Value::Text(t),
        Value::Blob(b) => v3::Value::Blob(b),
        Value::Null => v3::Value::Null,
    }
}

fn from_v3(value: v3::Value) -> Value {
    match value {
        v3::Value::Integer(i) => Value::Integer(i),
        v3::Value::Real(f) => Value::Real(f),
        v3::Value::Text(t) => Value::Text(t),
        v3::Value::Blob(b) => Value::Blob(b),
        v3::Value::Null => Value::Null,
    }
}

fn error2(error: &v2::Error) -> String {
    match error {
        v2::Error::NoSuchDatabase => "no-such-database".into(),
        v2::Error::AccessDenied => "access-denied".into(),
        v2::Error::InvalidConnection => "invalid-connection".into(),
        v2::Error::DatabaseFull => "database-full".into(),
        v2::Error::Io(text) => format!("io: {text}"),
    }
}

fn error3(error: &v3::Error) -> String {
    match error {
        v3::Error::NoSuchDatabase => "no-such-database".into(),
        v3::Error::AccessDenied => "access-denied".into(),
        v3::Error::InvalidConnection => "invalid-connection".into(),
        v3::Error::DatabaseFull => "database-full".into(),
        v3::Error::Io(text) => format!("io: {text}"),
    }
}

fn invalid(message: &str) -> Error {
    Error { kind: ErrorKind::InvalidInput, message: message.into(), retry_after_ms: None }
}

export!(SqlSpin);
