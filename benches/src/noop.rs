//! A layer that does nothing but wrap the response body, as a metrics layer must (to see
//! the body end): the floor any such layer pays in axum, whatever it records.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use http_body::{Body, Frame};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

/// The no-op layer.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopLayer;

impl<S> Layer<S> for NoopLayer {
    type Service = Noop<S>;
    fn layer(&self, inner: S) -> Noop<S> {
        Noop(inner)
    }
}

/// The no-op service.
#[derive(Clone, Debug)]
pub struct Noop<S>(S);

impl<S, B, R> Service<Request<B>> for Noop<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    R: Body,
{
    type Response = Response<NoopBody<R>>;
    type Error = S::Error;
    type Future = NoopFuture<S::Future>;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }
    fn call(&mut self, req: Request<B>) -> Self::Future {
        NoopFuture {
            inner: self.0.call(req),
        }
    }
}

pin_project! {
    /// Its future.
    pub struct NoopFuture<F> { #[pin] inner: F }
}

impl<F, R, E> Future for NoopFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<NoopBody<R>>, E>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let res = ready!(self.project().inner.poll(cx))?;
        Poll::Ready(Ok(res.map(|inner| NoopBody { inner })))
    }
}

pin_project! {
    /// Its body.
    pub struct NoopBody<B> { #[pin] inner: B }
}

impl<B: Body> Body for NoopBody<B> {
    type Data = B::Data;
    type Error = B::Error;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
