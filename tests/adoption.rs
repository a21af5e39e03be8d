//! The one-line setups of both adapters (`MetricsLayer::pair`, `Metrics::with_endpoint`)
//! record the same series and serve `/metrics`; the plain constructors of both leave the
//! scrape endpoint out of the counts alike.

use axum::Router;
use axum::body::Body;
use http::Request;
use shmetrics_core::http::{HttpMetrics, MetricsEndpoint};
use shmetrics_core::{CONTENT_TYPE, Snapshot, Store};
use tower::ServiceExt;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::builder(dir.path()).application("adoption").open().unwrap();
    (dir, store)
}

fn users(snap: &Snapshot) -> Option<u64> {
    snap.counter(
        "http_requests",
        &[("method", "GET"), ("path", "/users/{id}"), ("status", "200")],
    )
}

/// Every `path` value of the request families.
fn paths(snap: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for name in ["http_requests", "http_request_duration_seconds"] {
        let Some(fam) = snap.family(name) else { continue };
        for s in &fam.series {
            if let Some(i) = s.label_names(fam).iter().position(|n| n == "path") {
                out.push(s.labels[i].to_string());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// (status, content type, body) of `GET path` through an axum app.
fn axum_get(app: &Router, path: &str, auth: Option<&str>) -> (u16, String, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = Request::get(path);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let res = app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status().as_u16();
        let ct = res
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
        (status, ct, String::from_utf8_lossy(&body).into_owned())
    })
}

/// (status, content type, body) of `method path` through an actix app service.
macro_rules! actix_call {
    ($app:expr, $method:expr, $path:expr, $auth:expr) => {{
        let mut req = actix_web::test::TestRequest::default().method($method).uri($path);
        if let Some(a) = $auth {
            req = req.insert_header(("authorization", a));
        }
        let res = actix_web::test::call_service(&$app, req.to_request()).await;
        let status = res.status().as_u16();
        let ct = res
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = actix_web::test::read_body(res).await;
        (status, ct, String::from_utf8_lossy(&body).into_owned())
    }};
}

#[test]
fn axum_pair_records_requests_and_serves_metrics_without_counting_scrapes() {
    let (_dir, store) = store();
    let (layer, metrics) = shmetrics_tower::MetricsLayer::pair(&store).unwrap();
    let app: Router = Router::new()
        .route("/users/{id}", axum::routing::get(|| async { "user" }))
        .merge(metrics)
        .layer(layer);
    for i in 0..3 {
        assert_eq!(axum_get(&app, &format!("/users/{i}"), None).0, 200);
    }
    let (status, ct, body) = axum_get(&app, "/metrics", None);
    assert_eq!((status, ct.as_str()), (200, CONTENT_TYPE));
    assert!(
        body.contains(r#"http_requests_total{method="GET",path="/users/{id}",status="200"} 3"#),
        "{body}"
    );
    axum_get(&app, "/metrics", None);
    let snap = store.snapshot().unwrap();
    assert_eq!(users(&snap), Some(3));
    assert_eq!(paths(&snap), ["/users/{id}"], "scrapes are not counted");
}

#[actix_web::test]
async fn actix_with_endpoint_records_requests_and_serves_metrics_without_counting_scrapes() {
    let (_dir, store) = store();
    let app = actix_web::test::init_service(
        actix_web::App::new()
            .wrap(shmetrics_actix::Metrics::with_endpoint(&store).unwrap())
            .route("/users/{id}", actix_web::web::get().to(|| async { "user" })),
    )
    .await;
    for i in 0..3 {
        let (status, _, _) = actix_call!(
            app,
            actix_web::http::Method::GET,
            &format!("/users/{i}"),
            None::<&str>
        );
        assert_eq!(status, 200);
    }
    let (status, ct, body) = actix_call!(app, actix_web::http::Method::GET, "/metrics", None::<&str>);
    assert_eq!((status, ct.as_str()), (200, CONTENT_TYPE));
    assert!(
        body.contains(r#"http_requests_total{method="GET",path="/users/{id}",status="200"} 3"#),
        "{body}"
    );
    let (status, _, _) = actix_call!(app, actix_web::http::Method::HEAD, "/metrics", None::<&str>);
    assert_eq!(status, 200);
    // Another method on the endpoint's path goes to the app (which has no such route),
    // and is not counted either.
    let (status, _, _) = actix_call!(app, actix_web::http::Method::POST, "/metrics", None::<&str>);
    assert_eq!(status, 404);
    let snap = store.snapshot().unwrap();
    assert_eq!(users(&snap), Some(3));
    assert_eq!(paths(&snap), ["/users/{id}"], "scrapes are not counted");
}

#[test]
fn axum_pair_with_options_serves_its_path_and_token() {
    let (_dir, store) = store();
    let builder = HttpMetrics::builder(&store).metrics_path(Some("/internal/metrics"));
    let endpoint = MetricsEndpoint::new(&store).bearer_token(Some("s3cret"));
    let (layer, metrics) = shmetrics_tower::MetricsLayer::pair_with(builder, endpoint).unwrap();
    let app: Router = Router::new()
        .route("/users/{id}", axum::routing::get(|| async { "user" }))
        .merge(metrics)
        .layer(layer);
    axum_get(&app, "/users/1", None);
    assert_eq!(axum_get(&app, "/internal/metrics", None).0, 401);
    assert_eq!(axum_get(&app, "/internal/metrics", Some("Bearer s3cret")).0, 200);
    assert_eq!(axum_get(&app, "/metrics", None).0, 404);
    let snap = store.snapshot().unwrap();
    // `/metrics` is an ordinary (unmatched) path here; the endpoint's path is not counted.
    assert_eq!(paths(&snap), ["/users/{id}", "unmatched"]);
}

#[actix_web::test]
async fn actix_with_endpoint_from_options_serves_its_path_and_token() {
    let (_dir, store) = store();
    let builder = HttpMetrics::builder(&store).metrics_path(Some("/internal/metrics"));
    let endpoint = MetricsEndpoint::new(&store).bearer_token(Some("s3cret"));
    let app = actix_web::test::init_service(
        actix_web::App::new()
            .wrap(shmetrics_actix::Metrics::with_endpoint_from(builder, endpoint).unwrap())
            .route("/users/{id}", actix_web::web::get().to(|| async { "user" })),
    )
    .await;
    actix_call!(app, actix_web::http::Method::GET, "/users/1", None::<&str>);
    let get = actix_web::http::Method::GET;
    assert_eq!(
        actix_call!(app, get.clone(), "/internal/metrics", None::<&str>).0,
        401
    );
    assert_eq!(
        actix_call!(app, get.clone(), "/internal/metrics", Some("Bearer s3cret")).0,
        200
    );
    assert_eq!(actix_call!(app, get, "/metrics", None::<&str>).0, 404);
    let snap = store.snapshot().unwrap();
    assert_eq!(paths(&snap), ["/users/{id}", "unmatched"]);
}

/// `MetricsLayer::new` and `Metrics::new` with the app's own `/metrics` route: scrapes
/// are left out by both, so both count the same.
#[actix_web::test]
async fn plain_constructors_of_both_adapters_leave_the_endpoint_out_alike() {
    let (_dir, axum_store) = store();
    let app: Router = Router::new()
        .route("/users/{id}", axum::routing::get(|| async { "user" }))
        .route(
            "/metrics",
            shmetrics_tower::metrics_route(MetricsEndpoint::new(&axum_store)),
        )
        .layer(shmetrics_tower::MetricsLayer::new(&axum_store).unwrap());
    let (_dir2, actix_store) = store();
    let actix = actix_web::test::init_service(
        actix_web::App::new()
            .wrap(shmetrics_actix::Metrics::new(&actix_store).unwrap())
            .service(shmetrics_actix::metrics_resource(
                "/metrics",
                MetricsEndpoint::new(&actix_store),
            ))
            .route("/users/{id}", actix_web::web::get().to(|| async { "user" })),
    )
    .await;
    for path in ["/users/1", "/metrics", "/users/2", "/metrics"] {
        let a = std::thread::scope(|s| s.spawn(|| axum_get(&app, path, None).0).join().unwrap());
        let b = actix_call!(actix, actix_web::http::Method::GET, path, None::<&str>).0;
        assert_eq!((a, b), (200, 200), "{path}");
    }
    let a = axum_store.snapshot().unwrap();
    let b = actix_store.snapshot().unwrap();
    assert_eq!((users(&a), users(&b)), (Some(2), Some(2)));
    assert_eq!(paths(&a), ["/users/{id}"]);
    assert_eq!(paths(&b), ["/users/{id}"]);
}
