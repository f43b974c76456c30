//! Noticing that a client hung up while hyper is not reading its
//! connection.
//!
//! hyper learns that a client closed its connection only by reading from
//! it. It reads a request body only when the handler asks for more, and it
//! stops reading once a byte of a next (pipelined) request is in its
//! buffer. A call whose component never reads its body, or whose client
//! sent one byte more, would therefore run on to its deadline after its
//! client was gone, holding its slot and instance (an outside review held a
//! plugin's every slot that way with 20 packets and no open socket). The kernel knows sooner: the client's FIN sets
//! `POLLRDHUP` on the socket even with body bytes still queued before it.
//! [`ClientSocket::watch`] polls for that.
//!
//! A client that half-closes (shuts down its sending side) and waits for
//! its answer is treated as gone, as hyper itself treats it (its default,
//! `half_close(false)`, ends a connection whose client stops sending
//! mid-request).

use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use rustix::event::{PollFd, PollFlags, Timespec};

/// How often a watch looks at the socket.
pub const CHECK_EVERY: Duration = Duration::from_millis(200);

/// The connection a request came in on, put in its extensions by
/// [`super::serve`].
#[derive(Debug, Clone, Copy)]
pub struct ClientSocket(pub(super) RawFd);

impl ClientSocket {
    /// A watch on the client's side of the connection, checked first after
    /// [`CHECK_EVERY`]: a call that ends sooner costs a timer and no system
    /// call. Must be used only while the request is being handled (its
    /// connection is then open); at its first check the watch takes a
    /// descriptor of its own, so a number closed and reused later is never
    /// watched by mistake.
    pub fn watch(self) -> Hangup {
        let start = tokio::time::Instant::now() + CHECK_EVERY;
        let mut tick = tokio::time::interval_at(start, CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Hangup { client: self, socket: None, tick }
    }
}

/// A watch on one client connection: see [`Hangup::gone`].
pub struct Hangup {
    client: ClientSocket,
    /// Our duplicate of the client's descriptor, from the first check on.
    socket: Option<OwnedFd>,
    tick: tokio::time::Interval,
}

impl Hangup {
    /// Completes once the client has closed its side of the connection
    /// (or the connection failed), checking every [`CHECK_EVERY`].
    pub async fn gone(&mut self) {
        std::future::poll_fn(|cx| self.poll_gone(cx)).await
    }

    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.tick.poll_tick(cx).is_ready() {
            if self.closed_now() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }

    /// Linux sets `POLLRDHUP` for a FIN and for everything that ends a TCP
    /// connection (a reset, a retransmission timeout: both shut its
    /// receiving side), so it alone says whether the client is gone.
    #[allow(unsafe_code)]
    fn closed_now(&mut self) -> bool {
        if self.socket.is_none() {
            // SAFETY: a watch is polled only by the connection's own task
            // (in the request's handler or its answer's body), while the
            // connection owns this descriptor.
            let borrowed = unsafe { BorrowedFd::borrow_raw(self.client.0) };
            self.socket = rustix::io::fcntl_dupfd_cloexec(borrowed, 0).ok();
        }
        let Some(socket) = &self.socket else { return false };
        let mut fds = [PollFd::new(socket, PollFlags::RDHUP)];
        let now = Timespec { tv_sec: 0, tv_nsec: 0 };
        match rustix::event::poll(&mut fds, Some(&now)) {
            Ok(0) | Err(_) => false,
            Ok(_) => fds[0].revents().contains(PollFlags::RDHUP),
        }
    }
}

/// Runs `work` to its end, or until the client is gone (`None`: `work` was
/// dropped, which stops a component or takes its caller out of the queue).
pub async fn unless_client_leaves<F: std::future::Future>(hangup: Option<&mut Hangup>, work: F) -> Option<F::Output> {
    match hangup {
        None => Some(work.await),
        Some(hangup) => tokio::select! {
            output = work => Some(output),
            () = hangup.gone() => None,
        },
    }
}

/// A response body that fails once its client is gone, so that hyper drops
/// it (and with it the component) even while the component writes nothing.
pub struct EndsWithClient<B> {
    inner: B,
    hangup: Hangup,
}

impl<B> EndsWithClient<B> {
    /// `inner`, until `hangup` sees the client gone.
    pub fn new(inner: B, hangup: Hangup) -> Self {
        EndsWithClient { inner, hangup }
    }
}

impl<B> Body for EndsWithClient<B>
where
    B: Body<Data = Bytes, Error = std::io::Error> + Unpin,
{
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match self.hangup.poll_gone(cx) {
            Poll::Ready(()) => {
                Poll::Ready(Some(Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "the client hung up"))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    #[tokio::test]
    async fn a_hang_up_is_seen_behind_unread_bytes_and_not_before() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut watch = ClientSocket(server.as_raw_fd()).watch();
        // Bytes waiting unread are not a hang-up.
        client.write_all(&[7u8; 100_000]).await.unwrap();
        let early = tokio::time::timeout(3 * CHECK_EVERY, watch.gone()).await;
        assert!(early.is_err(), "a client with unread bytes taken for gone");
        // The client closes; its bytes are still unread on the server.
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), watch.gone()).await.expect("the hang-up went unseen");
        drop(server);
    }
}
