//! A minimum read rate for clients: a connection may keep the server's
//! writes waiting (its receive window full) for at most the write timeout
//! plus one second per [`MIN_READ_RATE`] bytes it has taken, in total.
//! A per-write timeout alone does not bound a client that reads a little
//! now and then: one reading 1 KiB a second kept a connection slot, and the
//! answer it did not read, for as long as the answer lasted.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Bytes a second a client must read on average once its allowance of
/// stalls (the write timeout) is spent.
pub const MIN_READ_RATE: u64 = 16 * 1024;

/// A connection whose writes may stall for `grace` plus one second per
/// [`MIN_READ_RATE`] bytes written, in total; past that, writes fail with
/// `TimedOut` and the connection closes.
pub struct MinReadRate<S> {
    inner: S,
    grace: Duration,
    written: u64,
    /// Time writes have waited for the client so far (ended stalls).
    stalled: Duration,
    /// The stall under way: when it began, and when it runs out.
    stall: Option<(Instant, Pin<Box<Sleep>>)>,
}

impl<S> MinReadRate<S> {
    /// Wraps `inner`, allowing `grace` of stalls before the rate counts.
    pub fn new(inner: S, grace: Duration) -> Self {
        MinReadRate { inner, grace, written: 0, stalled: Duration::ZERO, stall: None }
    }

    /// Total stalling this connection has earned so far.
    fn allowance(&self) -> Duration {
        self.grace + Duration::from_secs_f64(self.written as f64 / MIN_READ_RATE as f64)
    }

    /// Bookkeeping around one poll of a write: ends a stall on progress,
    /// starts one (with its timer) on `Pending`, fails once it runs out.
    fn account<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(result) => {
                if let Some((began, _)) = self.stall.take() {
                    self.stalled += began.elapsed();
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                if self.stall.is_none() {
                    let left = self.allowance().saturating_sub(self.stalled);
                    let now = Instant::now();
                    self.stall = Some((now, Box::pin(tokio::time::sleep_until(now + left))));
                }
                let (_, timer) = self.stall.as_mut().expect("set above");
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client reads its answer slower than the minimum rate",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for MinReadRate<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MinReadRate<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        let polled = self.account(cx, polled);
        if let Poll::Ready(Ok(n)) = polled {
            self.written += n as u64;
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        let polled = self.account(cx, polled);
        if let Poll::Ready(Ok(n)) = polled {
            self.written += n as u64;
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.account(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A client reading `chunk` bytes every 50 ms; ends with what it read.
    fn paced_reader(mut client: DuplexStream, chunk: usize) -> tokio::task::JoinHandle<usize> {
        tokio::spawn(async move {
            let mut buf = vec![0u8; chunk];
            let mut total = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => return total,
                    Ok(n) => total += n,
                }
            }
        })
    }

    /// Writes `answer` whole through `poll_write`, or through
    /// `poll_write_vectored` as hyper does over TCP. A write never cut off
    /// fails after 30 s instead of the minutes a trickler would take.
    async fn send(server: &mut MinReadRate<DuplexStream>, answer: &[u8], vectored: bool) -> io::Result<()> {
        let all = async {
            if !vectored {
                return server.write_all(answer).await;
            }
            let mut at = 0;
            while at < answer.len() {
                at += server.write_vectored(&[io::IoSlice::new(&answer[at..])]).await?;
            }
            Ok(())
        };
        tokio::time::timeout(Duration::from_secs(30), all).await.expect("the write went on for 30 s")
    }

    /// Attack: a client that reads 256 bytes every 50 ms (5 KiB/s): no
    /// single write waits long, but the total is cut off after the grace,
    /// long before the 200 s the answer would take at that pace.
    #[tokio::test]
    async fn a_trickling_reader_is_cut_off_and_a_prompt_one_is_not() {
        let answer = vec![b'x'; 1 << 20];
        for vectored in [false, true] {
            let (server, client) = tokio::io::duplex(1024);
            let mut server = MinReadRate::new(server, Duration::from_millis(300));
            let reader = paced_reader(client, 256);
            let error = send(&mut server, &answer, vectored).await.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::TimedOut, "vectored: {vectored}");
            drop(server);
            assert!(reader.await.unwrap() < answer.len() / 4);

            let (server, mut client) = tokio::io::duplex(1024);
            let mut server = MinReadRate::new(server, Duration::from_secs(2));
            let reader = tokio::spawn(async move {
                let mut all = Vec::new();
                client.read_to_end(&mut all).await.map(|_| all.len())
            });
            send(&mut server, &answer, vectored).await.unwrap();
            server.shutdown().await.unwrap();
            drop(server);
            assert_eq!(reader.await.unwrap().unwrap(), answer.len());
        }
    }

    /// A client that keeps pausing but reads 8 KiB every 50 ms (ten times
    /// the minimum rate) stalls the writes far longer in total than the
    /// grace, and is never cut off: what it reads keeps earning time.
    #[tokio::test]
    async fn a_reader_above_the_minimum_rate_is_not_cut_off_however_long_it_pauses() {
        let answer = vec![b'x'; 256 * 1024];
        for vectored in [false, true] {
            let (server, client) = tokio::io::duplex(8 * 1024);
            let mut server = MinReadRate::new(server, Duration::from_millis(300));
            let reader = paced_reader(client, 8 * 1024);
            send(&mut server, &answer, vectored).await.unwrap();
            assert!(server.stalled > Duration::from_millis(600), "{:?}: no longer than the grace", server.stalled);
            server.shutdown().await.unwrap();
            drop(server);
            assert_eq!(reader.await.unwrap(), answer.len());
        }
    }
}
