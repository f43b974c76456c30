//! Hostile upstreams written on raw TCP, for attacks a well-behaved HTTP
//! server library would not let a test make: a server that never reads
//! request bodies (so a body shaped as a request is read as the next
//! request on the connection), one that sends any number of `1xx`
//! heads before its answer, one that declares a body it never sends, and
//! one that switches protocols unasked.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the server does with each connection.
#[derive(Clone, Copy)]
pub enum Behaviour {
    /// Answers each request head with its path as the body and never reads
    /// a body, as Python's `http.server` does for `GET`. The answer to a
    /// request for `/smuggled` is held back until the next request head
    /// arrives on the connection, and then carries that head (with any
    /// credential in it) as its body: whoever sends the next request on
    /// the connection reads it.
    IgnoresBodies,
    /// Sends this many `100 Continue` heads, then `200 done`.
    Informational(usize),
    /// Answers `200` declaring a body of this many bytes, and sends none
    /// of it, keeping the connection open.
    DeclaresAndStalls(u64),
    /// Answers `101 Switching Protocols` to any request, then sends bytes
    /// of its own protocol.
    SwitchesProtocols,
}

pub struct RawUpstream {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    _server: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    pub async fn start(behaviour: Behaviour) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding loopback");
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, behaviour));
            }
        });
        RawUpstream { addr, connections, _server: server }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn response(status: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

async fn serve(mut stream: TcpStream, behaviour: Behaviour) {
    let mut buffer = Vec::new();
    let mut held = false;
    loop {
        let Some(head) = next_head(&mut stream, &mut buffer).await else { return };
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        let mut out = Vec::new();
        match behaviour {
            Behaviour::IgnoresBodies => {
                if std::mem::take(&mut held) {
                    out.extend(response("200 OK", format!("smuggled reply, holding: {head}").as_bytes()));
                }
                if path == "/smuggled" {
                    held = true;
                } else {
                    out.extend(response("200 OK", path.as_bytes()));
                }
            }
            Behaviour::Informational(count) => {
                let continue_head = b"HTTP/1.1 100 Continue\r\n\r\n";
                for _ in 0..count {
                    out.extend_from_slice(continue_head);
                    if out.len() > 64 * 1024 {
                        if stream.write_all(&out).await.is_err() {
                            return;
                        }
                        out.clear();
                    }
                }
                out.extend(response("200 OK", b"done"));
            }
            Behaviour::SwitchesProtocols => {
                out.extend_from_slice(
                    b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: other\r\n\r\n",
                );
                out.extend_from_slice(b"not http at all");
            }
            Behaviour::DeclaresAndStalls(length) => {
                out.extend(format!("HTTP/1.1 200 OK\r\ncontent-length: {length}\r\n\r\n").into_bytes());
            }
        }
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// The next request head on the connection (up to the blank line), leaving
/// whatever follows it in `buffer`; `None` once the peer closes.
async fn next_head(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            buffer.drain(..end + 4);
            return Some(head);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}
