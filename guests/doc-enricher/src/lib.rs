//! Example plugin: enriches a document with language-agnostic metadata
//! (character, word, sentence and paragraph counts, reading time, and the
//! most frequent terms).
//!
//! Input is either `text/plain` or `application/json` with a string field
//! `text` (other fields are passed through). Output is always JSON: the
//! input's fields plus an `enrichment` object.

wit_bindgen::generate!({ path: "../../wit", world: "gatehouse:services/plugin" });

use std::collections::HashMap;

use gatehouse::services::log::{Field, Level, log};
use gatehouse::services::types::ErrorKind;
use serde_json::{Map, Value, json};

/// Average silent reading speed used for the reading-time estimate.
const WORDS_PER_MINUTE: usize = 230;
const TOP_TERMS: usize = 5;

struct Enricher;

impl Guest for Enricher {
    fn handle(input: Document) -> Result<Document, Error> {
        let mut fields = parse(&input)?;
        let text = match fields.get("text") {
            Some(Value::String(text)) => text.clone(),
            _ => return Err(invalid("the JSON object needs a string field `text`")),
        };
        let enrichment = enrich(&text);
        log(
            Level::Info,
            "enriched document",
            &[
                Field { key: "words".into(), value: enrichment["words"].to_string() },
                Field { key: "bytes".into(), value: input.body.len().to_string() },
            ],
        );
        fields.insert("enrichment".into(), enrichment);
        Ok(Document {
            content_type: "application/json".into(),
            body: serde_json::to_vec(&Value::Object(fields)).expect("a JSON object always serialises"),
        })
    }

    fn info() -> PluginInfo {
        PluginInfo {
            name: "doc-enricher".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Adds word, sentence and term statistics to a document".into(),
        }
    }
}

fn parse(input: &Document) -> Result<Map<String, Value>, Error> {
    let media_type = input.content_type.split(';').next().unwrap_or("").trim();
    match media_type {
        "text/plain" | "" => {
            let text = std::str::from_utf8(&input.body).map_err(|e| invalid(&format!("body is not UTF-8: {e}")))?;
            Ok(Map::from_iter([("text".to_string(), Value::String(text.to_string()))]))
        }
        "application/json" => match serde_json::from_slice(&input.body) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(invalid("the JSON body must be an object")),
            Err(e) => Err(invalid(&format!("body is not valid JSON: {e}"))),
        },
        other => Err(invalid(&format!("unsupported content type `{other}`; use text/plain or application/json"))),
    }
}

fn enrich(text: &str) -> Value {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .map(str::to_lowercase)
        .collect();
    let sentences =
        text.split(['.', '!', '?', '。', '！', '？']).filter(|s| s.chars().any(char::is_alphanumeric)).count();
    let paragraphs = text.split("\n\n").filter(|p| !p.trim().is_empty()).count();

    let mut counts: HashMap<&str, usize> = HashMap::new();
    for word in words.iter().filter(|w| w.chars().count() >= 4) {
        *counts.entry(word).or_default() += 1;
    }
    let mut top: Vec<(&str, usize)> = counts.into_iter().collect();
    // Highest count first; ties broken alphabetically so output is stable.
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    top.truncate(TOP_TERMS);

    json!({
        "characters": text.chars().count(),
        "words": words.len(),
        "sentences": sentences,
        "paragraphs": paragraphs,
        "reading_time_seconds": (words.len() * 60).div_ceil(WORDS_PER_MINUTE),
        "top_terms": top.iter().map(|(term, count)| json!({ "term": term, "count": count })).collect::<Vec<_>>(),
    })
}

fn invalid(message: &str) -> Error {
    Error { kind: ErrorKind::InvalidInput, message: message.into(), retry_after_ms: None }
}

export!(Enricher);
