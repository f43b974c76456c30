//! Queries databases through the SQL gateway (`gatehouse:services/sql`).
//!
//! With an empty input it is the example plugin: it lists the products in
//! stock from the embedded application database (alias `app`) and answers
//! `{"products": [{"name": …, "price_cents": …, "stock": …}, …]}`.
//!
//! Otherwise its input is one JSON command, so the tests can drive every
//! part of the door through a real component:
//! - `{"query": SQL, "db": ALIAS, "params": [V…]}` answers
//!   `{"columns": [[name, type]…], "rows": [[V…]…]}`;
//! - `{"query": SQL, "repeat": N, …}` runs the query N times and answers
//!   `{"nanos": [each one's time…]}` (the SQL gateway benchmark);
//! - `{"execute": SQL, "db": ALIAS, "params": [V…]}` answers `{"changed": N}`;
//! - `{"transaction": [STEP…], "db": ALIAS, "end": "commit" | "rollback" |
//!   "leave"}` runs each step (a query or execute command without `db`) in
//!   one transaction and answers `{"results": [...]}`; `leave` returns with
//!   the transaction still open (the host rolls it back); a step with
//!   `"after_ms": N` sleeps N ms first;
//! - `{"hold": N, "db": ALIAS}` begins N transactions and keeps them until
//!   the invocation ends (`{"held": N}`), or answers the error of the first
//!   that fails.
//!
//! A value `V` is `null`, `{"bool": b}`, `{"int": n}`, `{"real": x}`,
//! `{"text": s}` or `{"blob": [bytes]}`, in both directions. Errors from
//! the door are returned as they come, so their kind reaches the caller.

wit_bindgen::generate!({ path: "../../wit", world: "gatehouse:services/plugin" });

use gatehouse::services::sql::{self, Transaction, Value};
use gatehouse::services::types::ErrorKind;
use serde_json::{Value as Json, json};

struct Demo;

impl Guest for Demo {
    fn handle(input: Document) -> Result<Document, Error> {
        let answer = if input.body.iter().all(u8::is_ascii_whitespace) {
            products()?
        } else {
            let command: Json = serde_json::from_slice(&input.body).map_err(|e| invalid(&e.to_string()))?;
            run(&command)?
        };
        Ok(Document { content_type: "application/json".into(), body: answer.to_string().into_bytes() })
    }

    fn info() -> PluginInfo {
        PluginInfo {
            name: "sql-demo".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Queries the application database through the SQL gateway".into(),
        }
    }
}

fn products() -> Result<Json, Error> {
    let rows = sql::query(
        "app",
        "SELECT name, price_cents, stock FROM products WHERE stock > ? ORDER BY name",
        &[Value::Integer(0)],
    )?;
    let products: Vec<Json> = rows
        .rows
        .iter()
        .map(|row| json!({"name": to_json(&row[0]), "price_cents": to_json(&row[1]), "stock": to_json(&row[2])}))
        .collect();
    Ok(json!({ "products": products }))
}

fn run(command: &Json) -> Result<Json, Error> {
    let db = command["db"].as_str().unwrap_or("app");
    if let Some(steps) = command["transaction"].as_array() {
        let transaction = Transaction::begin(db)?;
        let mut results = Vec::new();
        for step in steps {
            results.push(step_in(&transaction, step)?);
        }
        match command["end"].as_str().unwrap_or("commit") {
            "commit" => transaction.commit()?,
            "rollback" => transaction.rollback()?,
            "leave" => std::mem::forget(transaction),
            other => return Err(invalid(&format!("end: {other}"))),
        }
        return Ok(json!({ "results": results }));
    }
    if let Some(n) = command["hold"].as_u64() {
        let mut held = Vec::new();
        for _ in 0..n {
            held.push(Transaction::begin(db)?);
        }
        std::mem::forget(held);
        return Ok(json!({ "held": n }));
    }
    let params = params(&command["params"])?;
    if let (Some(statement), Some(times)) = (command["query"].as_str(), command["repeat"].as_u64()) {
        // The benchmark's loop: each query timed by the guest's clock.
        let mut nanos = Vec::new();
        for _ in 0..times {
            let started = std::time::Instant::now();
            sql::query(db, statement, &params)?;
            nanos.push(started.elapsed().as_nanos() as u64);
        }
        return Ok(json!({ "nanos": nanos }));
    }
    if let Some(statement) = command["query"].as_str() {
        return Ok(rows_json(sql::query(db, statement, &params)?));
    }
    if let Some(statement) = command["execute"].as_str() {
        return Ok(json!({ "changed": sql::execute(db, statement, &params)? }));
    }
    Err(invalid("commands: query, execute, transaction, hold"))
}

fn step_in(transaction: &Transaction, step: &Json) -> Result<Json, Error> {
    pause(step);
    let params = params(&step["params"])?;
    if let Some(statement) = step["query"].as_str() {
        return Ok(rows_json(transaction.query(statement, &params)?));
    }
    if let Some(statement) = step["execute"].as_str() {
        return Ok(json!({ "changed": transaction.execute(statement, &params)? }));
    }
    Err(invalid("a step is a query or an execute"))
}

/// A step's `"after_ms"`: the guest sleeps that long before it (holding
/// what it holds, as a component calling some other service would).
fn pause(step: &Json) {
    if let Some(ms) = step["after_ms"].as_u64() {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

fn rows_json(rows: sql::Rows) -> Json {
    let columns: Vec<Json> = rows.columns.iter().map(|c| json!([c.name, c.type_name])).collect();
    let rows: Vec<Json> = rows.rows.iter().map(|row| Json::Array(row.iter().map(to_json).collect())).collect();
    json!({ "columns": columns, "rows": rows })
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
                        ("bool", Json::Bool(b)) => Value::Boolean(*b),
                        ("int", n) if n.is_i64() => Value::Integer(n.as_i64().expect("i64")),
                        ("real", n) if n.is_number() => Value::Real(n.as_f64().expect("f64")),
                        ("text", Json::String(s)) => Value::Text(s.clone()),
                        ("blob", Json::Array(bytes)) => Value::Blob(
                            bytes.iter().map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok())).collect::<Option<_>>().ok_or_else(|| invalid("blob bytes"))?,
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
        Value::Boolean(b) => json!({ "bool": b }),
        Value::Integer(n) => json!({ "int": n }),
        Value::Real(x) => json!({ "real": x }),
        Value::Text(s) => json!({ "text": s }),
        Value::Blob(bytes) => json!({ "blob": bytes }),
    }
}

fn invalid(message: &str) -> Error {
    Error { kind: ErrorKind::InvalidInput, message: message.into(), retry_after_ms: None }
}

export!(Demo);
