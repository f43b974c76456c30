//! Serving a router: hyper's HTTP/1 server, one task per connection, with
//! the limits a sidecar next to untrusted callers needs: a cap on open
//! connections, a deadline for the request head (slowloris), a bound on
//! header bytes, a deadline on each stalled write (a client that stops
//! reading would otherwise keep its connection slot, and the response it
//! does not read, forever), a minimum read rate across writes
//! ([`super::min_rate`]: one that reads a little now and then would
//! otherwise do the same), and a graceful drain on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;

use super::hangup::ClientSocket;
use super::min_rate::MinReadRate;

/// Limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Time a client has to send a complete request head.
    pub header_timeout: Duration,
    /// Longest a response write may wait for the client to read; then the
    /// connection is closed.
    pub write_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
}

/// Largest request head (request line and headers).
pub const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// The send buffer asked for on each served connection (Linux doubles it
/// for its own bookkeeping). Left to itself Linux grows it to a few MiB,
/// and a full buffer that large becomes writable again only after about a
/// MiB has drained: at a few tens of KiB a second that is longer than
/// `request_timeout`, so an honest reader well above the minimum rate
/// ([`super::min_rate::MIN_READ_RATE`]) was cut off (an outside review: 32
/// and 64 KiB/s readers of a 16 MB answer). With this size the wait for
/// room is a few seconds at the minimum rate.
pub const SEND_BUFFER: usize = 64 * 1024;

/// Per-connection socket settings: no Nagle delay (answers are written
/// whole), and the send buffer of [`SEND_BUFFER`].
fn tune(stream: &tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(stream, SEND_BUFFER);
}

/// Serves `router` on `listener` until `shutdown` completes, then stops
/// accepting, lets in-flight requests finish for up to `drain_timeout`,
/// and returns. Bind the listener yourself (port 0 in tests).
pub async fn serve(listener: TcpListener, router: Router, limits: ServeLimits, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let service = TowerToHyperService::new(router);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            () = &mut shutdown => break,
        };
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly
                    // instead of spinning on the error.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        tune(&stream);
        let socket = ClientSocket(std::os::fd::AsRawFd::as_raw_fd(&stream));
        let mut stream = TimeoutStream::new(stream);
        stream.set_write_timeout(Some(limits.write_timeout));
        let stream = MinReadRate::new(Box::pin(stream), limits.write_timeout);
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(MAX_REQUEST_HEAD)
            .serve_connection(TokioIo::new(stream), WithSocket(service.clone(), socket));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _slot = slot;
            let _ = connection.await;
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!(timeout = ?limits.drain_timeout, "requests still running at the end of the drain; stopping anyway");
    }
}

/// A connection's service: each request carries the connection it came in
/// on (for [`super::hangup`]).
#[derive(Clone)]
struct WithSocket<S>(S, ClientSocket);

impl<S> hyper::service::Service<hyper::Request<hyper::body::Incoming>> for WithSocket<S>
where
    S: hyper::service::Service<hyper::Request<hyper::body::Incoming>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, mut request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        request.extensions_mut().insert(self.1);
        self.0.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn served_connections_get_a_small_send_buffer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let before = rustix::net::sockopt::socket_send_buffer_size(&server).unwrap();
        tune(&server);
        let after = rustix::net::sockopt::socket_send_buffer_size(&server).unwrap();
        // Linux reports twice what was asked for, and no longer grows it.
        assert_eq!(after, 2 * SEND_BUFFER, "before: {before}");
        assert!(server.nodelay().unwrap());
    }
}
