//! The smallest useful plugin: returns its input unchanged. Used by the
//! invocation benchmark to measure the sidecar's own per-call cost.

wit_bindgen::generate!({ path: "../../wit", world: "gatehouse:services/plugin" });

struct Echo;

impl Guest for Echo {
    fn handle(input: Document) -> Result<Document, Error> {
        Ok(input)
    }

    fn info() -> PluginInfo {
        PluginInfo {
            name: "echo".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Returns its input unchanged".into(),
        }
    }
}

export!(Echo);
