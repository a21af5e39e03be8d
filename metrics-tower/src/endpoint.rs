//! The axum route for `/metrics`.

use axum::body::Body;
use axum::routing::MethodRouter;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use shmetrics_core::http::{EndpointResponse, MetricsEndpoint, ScrapeRequest};

/// A `GET` route serving `endpoint`: a fresh registry per scrape, the format the scraper's
/// `Accept` asks for (OpenMetrics by default, Prometheus text 0.0.4, protobuf), the bearer
/// token and `ENABLE_METRICS` switch of [`MetricsEndpoint::from_env`], gzip when accepted.
///
/// It is an ordinary route: other middleware (timeouts, IP filters, the metrics layer
/// itself) composes with it. The merge reads files, so it runs on tokio's blocking pool.
///
/// ```
/// use axum::Router;
/// use shmetrics_core::http::MetricsEndpoint;
/// # let dir = tempfile::tempdir().unwrap();
/// # let store = shmetrics_core::Store::open(dir.path())?;
/// let app: Router = Router::new().route("/metrics", shmetrics_tower::metrics_route(MetricsEndpoint::from_env(&store)?));
/// # Ok::<(), shmetrics_core::Error>(())
/// ```
pub fn metrics_route<S>(endpoint: MetricsEndpoint) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    axum::routing::get(move |headers: HeaderMap| {
        let endpoint = endpoint.clone();
        async move {
            let header = |name| headers.get(name).map(|v: &HeaderValue| v.as_bytes().to_vec());
            let auth = header(http::header::AUTHORIZATION);
            let accept = header(http::header::ACCEPT);
            let encoding = header(http::header::ACCEPT_ENCODING);
            let answer = tokio::task::spawn_blocking(move || {
                endpoint.respond(ScrapeRequest {
                    authorization: auth.as_deref(),
                    accept: accept.as_deref(),
                    accept_encoding: encoding.as_deref(),
                })
            })
            .await;
            match answer {
                Ok(r) => into_response(r),
                Err(e) => {
                    tracing::error!("scrape task failed: {e}");
                    let mut r = Response::new(Body::from("scrape failed\n"));
                    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    r
                }
            }
        }
    })
}

/// Turns the framework-neutral answer into an HTTP response.
pub fn into_response(r: EndpointResponse) -> Response<Body> {
    let mut res = Response::new(Body::from(r.body));
    *res.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in r.headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            res.headers_mut().insert(name, v);
        }
    }
    res
}
