//! Hostile test guest: tries to open a raw TCP socket, which would bypass
//! the HTTP allowlist. The sidecar must refuse to load it, because its
//! component imports `wasi:sockets`, which no policy grants.

wit_bindgen::generate!({ path: "../../wit", world: "gatehouse:services/plugin" });

use gatehouse::services::types::ErrorKind;
use wasi::sockets::network::IpAddressFamily;

struct RawSocket;

impl Guest for RawSocket {
    fn handle(_input: Document) -> Result<Document, Error> {
        match wasi::sockets::tcp_create_socket::create_tcp_socket(IpAddressFamily::Ipv4) {
            Ok(_) => Ok(Document { content_type: "text/plain".into(), body: b"opened a raw socket".to_vec() }),
            Err(code) => Err(Error {
                kind: ErrorKind::Unavailable,
                message: format!("socket refused: {code:?}"),
                retry_after_ms: None,
            }),
        }
    }

    fn info() -> PluginInfo {
        PluginInfo {
            name: "hostile-socket".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Imports wasi:sockets".into(),
        }
    }
}

export!(RawSocket);
