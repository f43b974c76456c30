//! Ending a `wasi:http` component's work once its answer can no longer be
//! delivered. The component runs on a task of its own (its body streams
//! after the head is handed back), so dropping the caller's future alone
//! would leave it running, holding a slot and a pool instance, until its
//! deadline. [`Cancel`] aborts the task when the caller goes away before
//! the head, and [`CancelOnDropBody`] when the response body is dropped
//! before its end (the client hung up mid-answer). Either also raises the
//! invocation's [`Stop`]: an abort reaches a task only when it next yields,
//! and a host call stepping a SQLite statement on the task's own thread
//! does not yield until the statement ends; the statement reads the stop.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::task::AbortHandle;

use crate::stop::{RaiseOnDrop, Stop};

/// Aborts a task and raises its invocation's stop when dropped, unless
/// [`Cancel::disarm`]ed.
pub(super) struct Cancel {
    task: Option<AbortHandle>,
    stop: Option<RaiseOnDrop>,
}

impl Cancel {
    pub(super) fn new(task: AbortHandle, stop: &Stop) -> Self {
        Cancel { task: Some(task), stop: Some(stop.raise_on_drop()) }
    }

    /// The task may finish on its own.
    pub(super) fn disarm(mut self) {
        self.task = None;
        if let Some(stop) = self.stop.take() {
            stop.disarm();
        }
    }
}

impl Drop for Cancel {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        // The stop is raised as `self.stop` drops.
    }
}

/// A response body that aborts the component's task if it is dropped
/// before its last frame; once the body has ended, the task may finish on
/// its own (a component may work on after answering, within its deadline).
pub(super) struct CancelOnDropBody<B> {
    inner: B,
    cancel: Option<Cancel>,
}

impl<B> CancelOnDropBody<B> {
    pub(super) fn new(inner: B, cancel: Cancel) -> Self {
        CancelOnDropBody { inner, cancel: Some(cancel) }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for CancelOnDropBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            // Delivered whole: nothing to cancel any more.
            if let Some(cancel) = self.cancel.take() {
                cancel.disarm();
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
