//! The `/metrics` resource and handler.

use actix_web::http::StatusCode;
use actix_web::http::header::{ACCEPT, ACCEPT_ENCODING, AUTHORIZATION, HeaderMap, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, Resource, web};
use shmetrics_core::http::{EndpointResponse, MetricsEndpoint, ScrapeRequest};

/// A resource serving `endpoint` on `GET path` (and `HEAD`): a fresh registry per scrape,
/// the format the scraper's `Accept` asks for (OpenMetrics by default, Prometheus text
/// 0.0.4, protobuf), the bearer token and `ENABLE_METRICS` switch of
/// [`MetricsEndpoint::from_env`], gzip when accepted. An ordinary resource: other
/// middleware composes with it.
///
/// ```
/// use actix_web::App;
/// use shmetrics_core::http::MetricsEndpoint;
/// # let dir = tempfile::tempdir().unwrap();
/// # let store = shmetrics_core::Store::open(dir.path())?;
/// let endpoint = MetricsEndpoint::from_env(&store)?;
/// let app = App::new().service(shmetrics_actix::metrics_resource("/metrics", endpoint));
/// # let _ = app;
/// # Ok::<(), shmetrics_core::Error>(())
/// ```
pub fn metrics_resource(path: &str, endpoint: MetricsEndpoint) -> Resource {
    let exact = path.to_string();
    web::resource(path)
        .app_data(web::Data::new(endpoint))
        // actix-web matches routes on the percent-decoded path (`/%6detrics` is
        // `/metrics`), axum on the path as sent: the endpoint answers the path as
        // configured only, on both.
        .guard(actix_web::guard::fn_guard(move |ctx| {
            ctx.head().uri.path() == exact
        }))
        .route(web::get().to(metrics_handler))
        // HEAD, as axum's `get` route answers it: the head of the GET answer, no body.
        .route(web::head().to(metrics_handler))
}

/// The `/metrics` handler; expects `web::Data<MetricsEndpoint>` in the app data (as
/// [`metrics_resource`] sets up). The merge reads files, so it runs on the blocking pool.
pub async fn metrics_handler(req: HttpRequest, endpoint: web::Data<MetricsEndpoint>) -> HttpResponse {
    answer(endpoint.get_ref().clone(), req.headers()).await
}

/// The answer of `endpoint` to a request with `headers` (its `Authorization`, `Accept` and
/// `Accept-Encoding`), scraped on the blocking pool.
pub(crate) async fn answer(endpoint: MetricsEndpoint, headers: &HeaderMap) -> HttpResponse {
    let header = |name| headers.get(name).map(|v: &HeaderValue| v.as_bytes().to_vec());
    let auth = header(AUTHORIZATION);
    let accept = header(ACCEPT);
    let encoding = header(ACCEPT_ENCODING);
    let respond = move || {
        endpoint.respond(ScrapeRequest {
            authorization: auth.as_deref(),
            accept: accept.as_deref(),
            accept_encoding: encoding.as_deref(),
        })
    };
    match web::block(respond).await {
        Ok(r) => into_response(r),
        Err(e) => {
            tracing::error!("scrape task failed: {e}");
            HttpResponse::InternalServerError().body("scrape failed\n")
        }
    }
}

/// Turns the framework-neutral answer into an actix response.
pub fn into_response(r: EndpointResponse) -> HttpResponse {
    let mut res =
        HttpResponse::build(StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    for (name, value) in r.headers {
        res.insert_header((name, value));
    }
    res.body(r.body)
}
