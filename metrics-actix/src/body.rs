//! [`MetricsBody`]: the response body, recording the request when it ends or is dropped.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use actix_web::body::{BodySize, MessageBody};
use actix_web::web::Bytes;
use pin_project_lite::pin_project;
use shmetrics_core::http::RequestTracker;

pin_project! {
    /// Response body of [`MetricsMiddleware`](crate::MetricsMiddleware). It carries the
    /// request's tracker: the request is recorded (latency included) when the body ends,
    /// fails, or is dropped (client gone mid-response).
    #[derive(Debug)]
    pub struct MetricsBody<B> {
        #[pin]
        body: B,
        tracker: Option<RequestTracker>,
    }
}

impl<B> MetricsBody<B> {
    pub(crate) fn new(body: B, tracker: Option<RequestTracker>) -> Self {
        MetricsBody { body, tracker }
    }
}

impl<B: MessageBody> MessageBody for MetricsBody<B> {
    type Error = B::Error;

    #[inline]
    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.project();
        let next = ready!(this.body.poll_next(cx));
        if !matches!(next, Some(Ok(_))) {
            if let Some(t) = this.tracker.take() {
                t.finish();
            }
        }
        Poll::Ready(next)
    }
}
