//! Hostile test guest: panics on every call (a trap, since guests are built
//! with `panic = "abort"`), after writing to stderr like a real crash would.

wit_bindgen::generate!({ path: "../../wit", world: "gatehouse:services/plugin" });

struct Crash;

impl Guest for Crash {
    fn handle(input: Document) -> Result<Document, Error> {
        panic!("hostile-trap received {} bytes and gave up", input.body.len());
    }

    fn info() -> PluginInfo {
        PluginInfo {
            name: "hostile-trap".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Panics in handle".into(),
        }
    }
}

export!(Crash);
