//! [`ResponseBody`]: the response body, recording the request when it ends or is dropped.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::route::{Guard, grpc_status};

pin_project! {
    #[derive(Debug)]
    /// Response body of [`Metrics`](crate::Metrics). It carries the request's tracker: the
    /// request is recorded (latency included) when the body ends, fails, or is dropped
    /// (client gone mid-response), and the in-flight gauge goes down with it.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        guard: Option<Guard>,
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(inner: B, guard: Option<Guard>) -> Self {
        ResponseBody { inner, guard }
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(g), Some(trailers)) = (this.guard.as_mut(), f.trailers_ref()) {
                    if g.grpc {
                        if let Some(code) = grpc_status(trailers) {
                            g.tracker.set_status(code);
                        }
                    }
                }
            }
            Some(Err(_)) | None => {
                if let Some(g) = this.guard.take() {
                    g.finish();
                }
            }
        }
        Poll::Ready(frame)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
