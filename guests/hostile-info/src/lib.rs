//! Hostile test guest: its `info()` version is 1 MiB long and carries a
//! newline followed by a forged log line, so that printing it on every log
//! line would both flood and forge the log.

wit_bindgen::generate!({ path: "../../wit", world: "gatehouse:services/plugin" });

struct HostileInfo;

impl Guest for HostileInfo {
    fn handle(input: Document) -> Result<Document, Error> {
        Ok(input)
    }

    fn info() -> PluginInfo {
        let mut version = String::from("1.0.0\n2026-01-01T00:00:00.000000Z  INFO gatehouse::runtime: plugin loaded plugin=admin ");
        version.push_str(&"9".repeat(1 << 20));
        PluginInfo { name: "hostile-info".into(), version, description: "Forges a version".into() }
    }
}

export!(HostileInfo);
