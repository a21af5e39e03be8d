//! [`ResponseFuture`]: waits for the response head, then hands the request's tracker to
//! the body.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use crate::body::ResponseBody;
use crate::route::{Guard, grpc_status};

pin_project! {
    #[derive(Debug)]
    /// Response future of [`Metrics`](crate::Metrics).
    ///
    /// Dropped before the response head (the client went away): the request is recorded
    /// with status 499 (gRPC: 1, CANCELLED).
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        guard: Option<Guard>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, guard: Option<Guard>) -> Self {
        ResponseFuture { inner, guard }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut guard = this.guard.take();
        match result {
            Ok(res) => {
                if let Some(g) = &mut guard {
                    if g.grpc {
                        // A "trailers-only" response carries grpc-status in its head;
                        // otherwise it comes in the trailers, at the end of the body.
                        if let Some(code) = grpc_status(res.headers()) {
                            g.tracker.set_status(code);
                        }
                    } else {
                        g.tracker.set_status(res.status().as_u16());
                    }
                }
                Poll::Ready(Ok(res.map(|body| ResponseBody::new(body, guard))))
            }
            Err(e) => {
                if let Some(mut g) = guard {
                    // The service failed without a response: recorded as a server error.
                    g.tracker.set_status(if g.grpc { 13 } else { 500 });
                    g.finish();
                }
                Poll::Ready(Err(e))
            }
        }
    }
}
