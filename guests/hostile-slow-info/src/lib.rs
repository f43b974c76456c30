//! Hostile test guest: its `info()` spins forever, which must not hold up
//! the loading of any other plugin.

wit_bindgen::generate!({ path: "../../wit", world: "gatehouse:services/plugin" });

struct SlowInfo;

impl Guest for SlowInfo {
    fn handle(input: Document) -> Result<Document, Error> {
        Ok(input)
    }

    fn info() -> PluginInfo {
        let mut counter: u64 = 1;
        loop {
            counter = std::hint::black_box(counter.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

export!(SlowInfo);
