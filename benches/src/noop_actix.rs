//! An actix-web middleware that does nothing but wrap the response body, as a metrics
//! middleware must (to see the body end): the floor any such middleware pays in actix-web,
//! whatever it records.

use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::web::Bytes;
use pin_project_lite::pin_project;

/// The no-op middleware factory (`App::wrap(NoopMiddleware)`).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopMiddleware;

impl<S, B> Transform<S, ServiceRequest> for NoopMiddleware
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<NoopMessageBody<B>>;
    type Error = actix_web::Error;
    type Transform = NoopService<S>;
    type InitError = ();
    type Future = Ready<Result<NoopService<S>, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(NoopService(service)))
    }
}

/// Its service.
pub struct NoopService<S>(S);

impl<S, B> Service<ServiceRequest> for NoopService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<NoopMessageBody<B>>;
    type Error = actix_web::Error;
    type Future = NoopActixFuture<S::Future>;

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&self, req: ServiceRequest) -> Self::Future {
        NoopActixFuture {
            inner: self.0.call(req),
        }
    }
}

pin_project! {
    /// Its future.
    pub struct NoopActixFuture<F> { #[pin] inner: F }
}

impl<F, B> Future for NoopActixFuture<F>
where
    F: Future<Output = Result<ServiceResponse<B>, actix_web::Error>>,
{
    type Output = Result<ServiceResponse<NoopMessageBody<B>>, actix_web::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let res = std::task::ready!(self.project().inner.poll(cx))?;
        Poll::Ready(Ok(res.map_body(|_, inner| NoopMessageBody { inner })))
    }
}

pin_project! {
    /// Its body.
    pub struct NoopMessageBody<B> { #[pin] inner: B }
}

impl<B: MessageBody> MessageBody for NoopMessageBody<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        self.inner.size()
    }

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        self.project().inner.poll_next(cx)
    }
}
