//! Hostile test guest: looks for anything of the host's it can read, and
//! reports what it found as JSON lines: environment variables, arguments,
//! stdin, preopened directories, and files it tries to open by path.
//! Everything must come back empty or refused.

wit_bindgen::generate!({ path: "../../wit", world: "gatehouse:services/plugin" });

use std::io::Read;

struct Snoop;

impl Guest for Snoop {
    fn handle(_input: Document) -> Result<Document, Error> {
        let mut report = String::new();
        let env: Vec<String> = std::env::vars_os().map(|(k, v)| format!("{k:?}={v:?}")).collect();
        report.push_str(&format!("env {}\n", env.join(" ")));
        let args: Vec<String> = std::env::args_os().map(|a| format!("{a:?}")).collect();
        report.push_str(&format!("args {}\n", args.join(" ")));
        let mut stdin = Vec::new();
        let read = std::io::stdin().read_to_end(&mut stdin);
        report.push_str(&format!("stdin {} bytes ({})\n", stdin.len(), if read.is_ok() { "ok" } else { "error" }));
        for path in ["/", ".", "/etc", "/tmp", "/proc/self"] {
            match std::fs::read_dir(path) {
                Ok(entries) => report.push_str(&format!("dir {path} OPEN {} entries\n", entries.count())),
                Err(e) => report.push_str(&format!("dir {path} refused {e}\n")),
            }
        }
        for path in ["/etc/passwd", "/etc/hostname", "secret.txt", "/proc/self/environ", "../../etc/passwd"] {
            match std::fs::read(path) {
                Ok(bytes) => report.push_str(&format!("file {path} OPEN {} bytes\n", bytes.len())),
                Err(e) => report.push_str(&format!("file {path} refused {e}\n")),
            }
        }
        match std::fs::write("/tmp/gatehouse-snoop", b"x") {
            Ok(()) => report.push_str("write /tmp/gatehouse-snoop OPEN\n"),
            Err(e) => report.push_str(&format!("write /tmp/gatehouse-snoop refused {e}\n")),
        }
        Ok(Document { content_type: "text/plain".into(), body: report.into_bytes() })
    }

    fn info() -> PluginInfo {
        PluginInfo {
            name: "hostile-snoop".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Looks for the host's environment and files".into(),
        }
    }
}

export!(Snoop);
