//! The layer in an axum app: route templates, unmatched and excluded paths, failing
//! routes, streaming bodies, clients that go away, and `/metrics`.

use std::io::Read;

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use shmetrics_core::http::{HttpMetrics, MetricsEndpoint};
use shmetrics_core::{Snapshot, Store};
use shmetrics_tower::{MetricsLayer, RouteLayer, metrics_route};
use tower::{Layer, ServiceExt};

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::builder(dir.path())
        .application("tower-test")
        .open()
        .unwrap();
    (dir, store)
}

fn routes(store: &Store) -> Router {
    Router::new()
        .route("/users/{id}", get(|| async { "user" }))
        .route("/orders", post(|| async { (StatusCode::CREATED, "created") }))
        .route(
            "/error",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .route("/health", get(|| async { "ok" }))
        .route("/metrics", metrics_route(MetricsEndpoint::new(store)))
}

fn layer(store: &Store) -> MetricsLayer {
    MetricsLayer::from_metrics(
        HttpMetrics::builder(store)
            .exclude("/metrics")
            .exclude("/health")
            .build()
            .unwrap(),
    )
}

fn req(method: &str, uri: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap()
}

/// Sends the same requests through `app`; returns nothing (checks come from the store).
async fn traffic<S, B>(app: S)
where
    S: tower::Service<Request<Body>, Response = http::Response<B>, Error = std::convert::Infallible> + Clone,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let send = |r: Request<Body>| {
        let app = app.clone();
        async move {
            let res = app.oneshot(r).await.unwrap();
            let status = res.status();
            res.into_body().collect().await.unwrap();
            status
        }
    };
    for i in 0..10 {
        assert_eq!(send(req("GET", &format!("/users/{i}"))).await, 200);
    }
    for _ in 0..5 {
        assert_eq!(send(req("POST", "/orders")).await, 201);
    }
    for _ in 0..3 {
        assert_eq!(send(req("GET", "/error")).await, 500);
    }
    // A vulnerability scan: 1,000 distinct paths no route knows.
    for i in 0..1000u64 {
        let path = format!("/scan/{:x}/{}.php", i.wrapping_mul(0x9e37_79b9_7f4a_7c15), i);
        assert_eq!(send(req("GET", &path)).await, 404);
    }
    for _ in 0..4 {
        assert_eq!(send(req("GET", "/health")).await, 200);
    }
    for _ in 0..2 {
        assert_eq!(send(req("GET", "/metrics")).await, 200);
    }
    assert_eq!(send(req("PROPFIND", "/users/1")).await, 405);
}

fn check(snap: &Snapshot) {
    let c = |m: &str, p: &str, s: &str| {
        snap.counter("http_requests", &[("method", m), ("path", p), ("status", s)])
    };
    assert_eq!(c("GET", "/users/{id}", "200"), Some(10));
    assert_eq!(c("POST", "/orders", "201"), Some(5));
    assert_eq!(c("GET", "/error", "500"), Some(3));
    assert_eq!(c("GET", "unmatched", "404"), Some(1000));
    assert_eq!(c("OTHER", "/users/{id}", "405"), Some(1));
    let fam = snap.family("http_requests").unwrap();
    assert_eq!(fam.series.len(), 5, "{:#?}", fam.series);
    assert!(
        fam.series
            .iter()
            .all(|s| !s.labels.iter().any(|l| &**l == "/health" || &**l == "/metrics"))
    );
    let h = |m: &str, p: &str| {
        snap.histogram("http_request_duration_seconds", &[("method", m), ("path", p)])
            .map(|h| h.count())
    };
    assert_eq!(h("GET", "/users/{id}"), Some(10));
    assert_eq!(h("GET", "unmatched"), Some(1000));
    assert_eq!(
        snap.family("http_request_duration_seconds").unwrap().series.len(),
        5
    );
    assert_eq!(snap.gauge("http_requests_in_flight", &[]), Some(0.0));
}

#[tokio::test]
async fn router_layer_counts_route_templates_exactly() {
    let (_d, store) = store();
    let app = routes(&store).layer(layer(&store));
    traffic(app).await;
    check(&store.snapshot().unwrap());
}

#[tokio::test]
async fn layer_outside_the_router_learns_the_route_from_route_layer() {
    let (_d, store) = store();
    let app = layer(&store).layer(routes(&store).layer(RouteLayer));
    traffic(app).await;
    check(&store.snapshot().unwrap());
}

#[tokio::test]
async fn building_the_layer_twice_is_fine() {
    let (_d, store) = store();
    let a = routes(&store).layer(MetricsLayer::new(&store).unwrap());
    let b = routes(&store).layer(MetricsLayer::new(&store).unwrap());
    a.oneshot(req("GET", "/users/1")).await.unwrap();
    b.oneshot(req("GET", "/users/2")).await.unwrap();
    let snap = store.snapshot().unwrap();
    let labels = [("method", "GET"), ("path", "/users/{id}"), ("status", "200")];
    assert_eq!(snap.counter("http_requests", &labels), Some(2));
}

#[tokio::test]
async fn options_prefix_const_labels_status_class() {
    let (_d, store) = store();
    let metrics = HttpMetrics::builder(&store)
        .prefix("ckms")
        .const_label("service", "ckms")
        .status_class(true)
        .buckets(vec![0.1, 1.0])
        .build()
        .unwrap();
    let app = routes(&store).layer(MetricsLayer::from_metrics(metrics));
    app.clone().oneshot(req("GET", "/users/1")).await.unwrap();
    app.oneshot(req("GET", "/nope")).await.unwrap();
    let snap = store.snapshot().unwrap();
    let labels = [
        ("method", "GET"),
        ("path", "/users/{id}"),
        ("status", "2xx"),
        ("service", "ckms"),
    ];
    assert_eq!(snap.counter("ckms_http_requests", &labels), Some(1));
    let labels = [
        ("method", "GET"),
        ("path", "unmatched"),
        ("status", "4xx"),
        ("service", "ckms"),
    ];
    assert_eq!(snap.counter("ckms_http_requests", &labels), Some(1));
    let h = snap.family("ckms_http_request_duration_seconds").unwrap();
    assert_eq!(h.buckets, vec![0.1, 1.0, f64::INFINITY]);
    assert_eq!(
        snap.gauge("ckms_http_requests_in_flight", &[("service", "ckms")]),
        Some(0.0)
    );
}

#[tokio::test]
async fn latency_covers_a_streaming_body() {
    let (_d, store) = store();
    let app = Router::new()
        .route(
            "/stream",
            get(|| async {
                let chunks = futures_util::stream::unfold(0, |i| async move {
                    match i {
                        0 => Some((Ok::<_, std::io::Error>("first "), 1)),
                        1 => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            Some((Ok("second"), 2))
                        }
                        _ => None,
                    }
                });
                Body::from_stream(chunks)
            }),
        )
        .layer(MetricsLayer::new(&store).unwrap());
    let started = Instant::now();
    let res = app.oneshot(req("GET", "/stream")).await.unwrap();
    // The head is back at once; the request is not recorded yet.
    let head = started.elapsed();
    let snap = store.snapshot().unwrap();
    assert_eq!(
        snap.gauge("http_requests_in_flight", &[]),
        Some(1.0),
        "head after {head:?}"
    );
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"first second");
    let snap = store.snapshot().unwrap();
    let h = snap
        .histogram(
            "http_request_duration_seconds",
            &[("method", "GET"), ("path", "/stream")],
        )
        .unwrap();
    assert_eq!(h.count(), 1);
    assert!(h.sum >= 0.2 && h.sum < 5.0, "recorded latency {}s", h.sum);
    assert_eq!(snap.gauge("http_requests_in_flight", &[]), Some(0.0));
}

/// A real server on loopback.
async fn serve(app: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test]
async fn a_client_that_goes_away_is_counted_once_and_in_flight_returns_to_zero() {
    let (_d, store) = store();
    let app = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "late"
            }),
        )
        .route(
            "/stream",
            get(|| async {
                let chunks = futures_util::stream::unfold(0u64, |i| async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    (i < 500).then(|| (Ok::<_, std::io::Error>(vec![b'x'; 64 * 1024]), i + 1))
                });
                Body::from_stream(chunks)
            }),
        )
        .layer(MetricsLayer::new(&store).unwrap());
    let addr = serve(app).await;

    // a) Gone while the handler runs (before the response head).
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    wait_until(&store, |snap| {
        snap.gauge("http_requests_in_flight", &[]) == Some(1.0)
    })
    .await;
    drop(s);
    // b) Gone mid-response (after the head, while the body streams).
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 1024];
    let n = s.read(&mut first).await.unwrap();
    assert!(
        std::str::from_utf8(&first[..n])
            .unwrap_or("")
            .starts_with("HTTP/1.1 200")
    );
    drop(s);

    let snap = wait_until(&store, |snap| {
        snap.family("http_requests").is_some_and(|f| f.series.len() == 2)
            && snap.gauge("http_requests_in_flight", &[]) == Some(0.0)
    })
    .await;
    let c =
        |p: &str, s: &str| snap.counter("http_requests", &[("method", "GET"), ("path", p), ("status", s)]);
    assert_eq!(c("/slow", "499"), Some(1), "{:#?}", snap.family("http_requests"));
    assert_eq!(
        c("/stream", "200"),
        Some(1),
        "{:#?}",
        snap.family("http_requests")
    );
    // Nothing more comes later: counted once.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let again = store.snapshot().unwrap();
    assert_eq!(again.family("http_requests"), snap.family("http_requests"));
}

async fn wait_until(store: &Store, ok: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let snap = store.snapshot().unwrap();
        if ok(&snap) {
            return snap;
        }
        assert!(
            Instant::now() < deadline,
            "condition not reached: {:#?}",
            snap.families()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn get_metrics(app: Router, auth: Option<&str>, gzip: bool) -> (StatusCode, http::HeaderMap, Vec<u8>) {
    let mut r = Request::builder().uri("/metrics");
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    if gzip {
        r = r.header("accept-encoding", "gzip");
    }
    let res = app.oneshot(r.body(Body::empty()).unwrap()).await.unwrap();
    let (parts, body) = res.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes().to_vec(),
    )
}

#[tokio::test]
async fn metrics_endpoint_token_and_switch() {
    let (_d, store) = store();
    store.counter("jobs", "Jobs").unwrap().inc();
    let protected = Router::new().route(
        "/metrics",
        metrics_route(MetricsEndpoint::new(&store).bearer_token(Some("s3cret"))),
    );
    let (status, headers, _) = get_metrics(protected.clone(), None, false).await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"metrics\"");
    let (status, _, body) = get_metrics(protected.clone(), Some("Bearer wrong"), false).await;
    assert_eq!(status, 401);
    assert!(!String::from_utf8_lossy(&body).contains("jobs_total"));
    let (status, headers, body) = get_metrics(protected.clone(), Some("Bearer s3cret"), false).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], shmetrics_core::CONTENT_TYPE);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("jobs_total 1\n") && text.ends_with("# EOF\n"),
        "{text}"
    );

    // gzip when the scraper asks for it (Prometheus does).
    let (status, headers, body) = get_metrics(protected, Some("Bearer s3cret"), true).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-encoding"], "gzip");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut text)
        .unwrap();
    assert!(text.contains("jobs_total 1\n"));

    let off = Router::new().route(
        "/metrics",
        metrics_route(MetricsEndpoint::new(&store).enabled(false)),
    );
    let (status, _, _) = get_metrics(off, None, false).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_metrics_route_composes_with_the_layer() {
    // By default the layer leaves the scrape endpoint out.
    let (_d, store) = store();
    let app = Router::new()
        .route("/metrics", metrics_route(MetricsEndpoint::new(&store)))
        .layer(MetricsLayer::new(&store).unwrap());
    get_metrics(app.clone(), None, false).await;
    let (_, _, body) = get_metrics(app, None, false).await;
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("# TYPE http_requests counter") && !text.contains(r#"path="/metrics""#),
        "{text}"
    );

    // With no endpoint path, scrapes are requests like any other.
    let (_d, store) = self::store();
    let metrics = HttpMetrics::builder(&store).metrics_path(None).build().unwrap();
    let app = Router::new()
        .route("/metrics", metrics_route(MetricsEndpoint::new(&store)))
        .layer(MetricsLayer::from_metrics(metrics));
    get_metrics(app.clone(), None, false).await;
    let (_, _, body) = get_metrics(app, None, false).await;
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains(r#"http_requests_total{method="GET",path="/metrics",status="200"} 1"#),
        "{text}"
    );
}
