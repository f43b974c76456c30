//! Hostile test guest: spins forever without calling the host, so only the
//! epoch deadline can stop it.

wit_bindgen::generate!({ path: "../../wit", world: "gatehouse:services/plugin" });

struct Spin;

impl Guest for Spin {
    fn handle(input: Document) -> Result<Document, Error> {
        let mut counter: u64 = input.body.len() as u64;
        loop {
            // `black_box` keeps the optimiser from proving the loop useless.
            counter = std::hint::black_box(counter.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }

    fn info() -> PluginInfo {
        PluginInfo {
            name: "hostile-loop".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Never returns from handle".into(),
        }
    }
}

export!(Spin);
