//! Captured guest stdout/stderr: each complete line becomes a log event
//! (`info` for stdout, `warn` for stderr) tagged like the guest's own log
//! calls, so a guest can never write raw bytes to the sidecar's terminal
//! unless its policy says `stdio = "inherit"`.
//!
//! Capture is bounded per invocation; past the cap the rest is dropped and
//! one warning says so. Writes never fail, because a guest whose `println!`
//! fails would panic.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi_io::bytes::Bytes;
use wasmtime_wasi_io::poll::Pollable;
use wasmtime_wasi_io::streams::{OutputStream, StreamResult};

use super::Logger;
use crate::bindings::gatehouse::services::log::{Field, Level};

/// Bytes captured per stream per invocation.
pub const MAX_CAPTURE: usize = 64 * 1024;

/// Which of the guest's output streams this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// `wasi:cli/stdout`.
    Stdout,
    /// `wasi:cli/stderr`.
    Stderr,
}

/// A `wasi:cli` output stream that turns lines into log events.
#[derive(Clone)]
pub struct CapturedOutput(Arc<Mutex<LineBuffer>>);

impl CapturedOutput {
    /// Captures `stream` for the plugin `logger` belongs to.
    pub fn new(logger: Logger, stream: Stream) -> Self {
        CapturedOutput(Arc::new(Mutex::new(LineBuffer {
            logger,
            stream,
            pending: Vec::new(),
            captured: 0,
            truncated: false,
        })))
    }

    fn write(&self, bytes: &[u8]) {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).write(bytes);
    }
}

struct LineBuffer {
    logger: Logger,
    stream: Stream,
    pending: Vec<u8>,
    captured: usize,
    truncated: bool,
}

impl LineBuffer {
    fn write(&mut self, bytes: &[u8]) {
        let room = MAX_CAPTURE - self.captured;
        if bytes.len() > room && !self.truncated {
            self.truncated = true;
            let fields = serde_json::json!({ "stream": self.stream_name(), "limit_bytes": MAX_CAPTURE }).to_string();
            self.logger.notice(Level::Warn, "guest output truncated", &fields);
        }
        let kept = &bytes[..bytes.len().min(room)];
        self.captured += kept.len();
        self.pending.extend_from_slice(kept);
        while let Some(newline) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=newline).collect();
            self.emit(&line[..line.len() - 1]);
        }
    }

    fn emit(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            return;
        }
        let level = match self.stream {
            Stream::Stdout => Level::Info,
            Stream::Stderr => Level::Warn,
        };
        self.logger.emit(level, line, &[self.stream_field()]);
    }

    fn stream_field(&self) -> Field {
        Field { key: "stream".into(), value: self.stream_name().into() }
    }

    fn stream_name(&self) -> &'static str {
        match self.stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

impl Drop for LineBuffer {
    /// A last line without a newline is still worth seeing.
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.emit(&rest);
        }
    }
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi_io::async_trait]
impl Pollable for CapturedOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for CapturedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        CapturedOutput::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_CAPTURE)
    }
}

impl AsyncWrite for CapturedOutput {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        CapturedOutput::write(&self, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::services::log::tests::{logged, unbounded};

    const FIELD: &str = r#"{"stream":"stdout"}"#;

    #[test]
    fn each_line_is_an_event_without_its_newline_and_a_last_line_is_kept() {
        let logger = unbounded();
        let out = CapturedOutput::new(logger.clone(), Stream::Stdout);
        out.write(b"one\ntw");
        assert_eq!(logged(&logger), (1, (3 + FIELD.len()) as u64), "the newline is not part of the line");
        out.write(b"o\r\n\nlast");
        assert_eq!(logged(&logger).0, 2, "a CR before the newline goes, an empty line is no event");
        drop(out);
        assert_eq!(logged(&logger), (3, (3 + 3 + 4 + 3 * FIELD.len()) as u64), "the last line, without a newline");
    }

    /// Exactly `MAX_CAPTURE` bytes are captured and nothing is marked cut;
    /// past them nothing is logged and the capture is marked cut.
    #[test]
    fn capture_is_cut_past_its_bound_to_the_byte() {
        let logger = unbounded();
        let out = CapturedOutput::new(logger.clone(), Stream::Stdout);
        let line = [&[b'x'; 1023][..], b"\n"].concat();
        for _ in 0..MAX_CAPTURE / line.len() {
            out.write(&line);
        }
        assert_eq!(logged(&logger).0, (MAX_CAPTURE / line.len()) as u64);
        assert!(!out.0.lock().unwrap().truncated, "nothing was cut");
        out.write(b"y\n");
        out.write(b"z\n");
        assert!(out.0.lock().unwrap().truncated);
        assert_eq!(logged(&logger).0, (MAX_CAPTURE / line.len()) as u64, "nothing past the bound is logged");
    }

    /// Writers through `AsyncWrite` (the path of `wasi:cli@0.3` streams)
    /// are told every byte was taken, so a guest never retries or fails.
    #[tokio::test]
    async fn async_writes_take_every_byte() {
        let logger = unbounded();
        let mut out = CapturedOutput::new(logger.clone(), Stream::Stdout);
        AsyncWriteExt::write_all(&mut out, b"one\ntwo\n").await.unwrap();
        AsyncWriteExt::flush(&mut out).await.unwrap();
        AsyncWriteExt::shutdown(&mut out).await.unwrap();
        assert_eq!(logged(&logger).0, 2);
    }

    /// A guest told its output is a terminal would write colour and cursor
    /// escapes into the log.
    #[test]
    fn captured_output_is_no_terminal() {
        assert!(!CapturedOutput::new(unbounded(), Stream::Stderr).is_terminal());
    }
}
