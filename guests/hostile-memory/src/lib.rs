//! Hostile test guest: allocates 1 MiB blocks, touching each, until the
//! allocator fails. Its memory limit must stop it with a typed error.

wit_bindgen::generate!({ path: "../../wit", world: "gatehouse:services/plugin" });

struct Hog;

impl Guest for Hog {
    fn handle(_input: Document) -> Result<Document, Error> {
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        loop {
            blocks.push(vec![0xA5; 1 << 20]);
            std::hint::black_box(&blocks);
        }
    }

    fn info() -> PluginInfo {
        PluginInfo {
            name: "hostile-memory".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Allocates until it is stopped".into(),
        }
    }
}

export!(Hog);
