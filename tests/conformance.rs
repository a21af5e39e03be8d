//! One conformance suite, two adapters: the same requests (matched, unmatched, excluded,
//! 4xx, 5xx, streaming, dropped, odd methods) sent to an axum server with
//! `shmetrics-tower` and to an actix-web server with `shmetrics-actix` give the same merged
//! series and values.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use shmetrics_core::http::{HttpMetrics, MetricsEndpoint};
use shmetrics_core::{MergedFamily, Snapshot, Store, Value};
use shmetrics_testing::http_request;

const STREAM_PAUSE: Duration = Duration::from_millis(200);
const SLOW: Duration = Duration::from_millis(1500);

fn metrics(store: &Store) -> HttpMetrics {
    HttpMetrics::builder(store)
        .exclude("/metrics")
        .exclude("/health")
        .build()
        .unwrap()
}

/// The axum version of the app, on a background thread.
fn axum_server(store: Store) -> SocketAddr {
    use axum::Router;
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = Router::new()
                .route("/users/{id}", get(|| async { "user" }))
                .route("/orders", post(|| async { (StatusCode::CREATED, "created") }))
                .route(
                    "/error",
                    get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
                )
                .route("/bad", get(|| async { (StatusCode::BAD_REQUEST, "bad") }))
                .route("/health", get(|| async { "ok" }))
                .route(
                    "/stream",
                    get(|| async {
                        let s = futures_util::stream::unfold(0, |i| async move {
                            match i {
                                0 => Some((Ok::<_, std::io::Error>("first "), 1)),
                                1 => {
                                    tokio::time::sleep(STREAM_PAUSE).await;
                                    Some((Ok("second"), 2))
                                }
                                _ => None,
                            }
                        });
                        Body::from_stream(s)
                    }),
                )
                .route(
                    "/slow",
                    get(|| async {
                        tokio::time::sleep(SLOW).await;
                        "late"
                    }),
                )
                .route(
                    "/metrics",
                    shmetrics_tower::metrics_route(MetricsEndpoint::new(&store)),
                )
                .layer(shmetrics_tower::MetricsLayer::from_metrics(metrics(&store)));
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    addr
}

/// The actix-web version of the same app, on a background thread (two worker threads).
fn actix_server(store: Store) -> SocketAddr {
    use actix_web::{App, HttpResponse, HttpServer, web};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let mw = shmetrics_actix::Metrics::from_metrics(metrics(&store));
            let endpoint = MetricsEndpoint::new(&store);
            HttpServer::new(move || {
                App::new()
                    .wrap(mw.clone())
                    .service(shmetrics_actix::metrics_resource("/metrics", endpoint.clone()))
                    .service(web::resource("/users/{id}").route(web::get().to(|| async { "user" })))
                    .route(
                        "/orders",
                        web::post().to(|| async { HttpResponse::Created().body("created") }),
                    )
                    .route(
                        "/error",
                        web::get().to(|| async { HttpResponse::InternalServerError().body("boom") }),
                    )
                    .route(
                        "/bad",
                        web::get().to(|| async { HttpResponse::BadRequest().body("bad") }),
                    )
                    .route("/health", web::get().to(|| async { "ok" }))
                    .route(
                        "/stream",
                        web::get().to(|| async {
                            let s = futures_util::stream::unfold(0, |i| async move {
                                match i {
                                    0 => {
                                        Some((Ok::<_, std::io::Error>(web::Bytes::from_static(b"first ")), 1))
                                    }
                                    1 => {
                                        actix_web::rt::time::sleep(STREAM_PAUSE).await;
                                        Some((Ok(web::Bytes::from_static(b"second")), 2))
                                    }
                                    _ => None,
                                }
                            });
                            HttpResponse::Ok().streaming(s)
                        }),
                    )
                    .route(
                        "/slow",
                        web::get().to(|| async {
                            actix_web::rt::time::sleep(SLOW).await;
                            "late"
                        }),
                    )
            })
            .workers(2)
            // Stop handling a request whose client went away (as hyper does); see the crate docs.
            .h1_allow_half_closed(false)
            .listen(listener)
            .unwrap()
            .run()
            .await
            .unwrap();
        });
    });
    addr
}

/// The requests, the same for both adapters.
fn scenario(addr: SocketAddr, store: &Store) {
    let send = |m: &str, p: &str| http_request(addr, m, p, &[]).0;
    for i in 0..20 {
        assert_eq!(send("GET", &format!("/users/{i}")), 200);
    }
    for _ in 0..7 {
        assert_eq!(send("POST", "/orders"), 201);
    }
    for _ in 0..3 {
        assert_eq!(send("GET", "/error"), 500);
    }
    for _ in 0..2 {
        assert_eq!(send("GET", "/bad"), 400);
    }
    for i in 0..50 {
        assert_eq!(send("GET", &format!("/wp-admin/{i}.php")), 404);
    }
    for _ in 0..5 {
        assert_eq!(send("GET", "/health"), 200);
    }
    for _ in 0..2 {
        assert_eq!(send("GET", "/metrics"), 200);
    }
    assert_eq!(send("DELETE", "/users/1"), 405);
    assert_eq!(send("PROPFIND", "/users/1"), 405);
    // HEAD of the endpoint: its GET answer's head, no body.
    let (status, head, body) = http_request(addr, "HEAD", "/metrics", &[]);
    assert_eq!(status, 200, "HEAD /metrics");
    assert!(
        head.to_ascii_lowercase().contains("application/openmetrics-text"),
        "{head}"
    );
    assert!(body.is_empty(), "HEAD /metrics sent a body");
    // Percent-encoded and odd request targets.
    assert_eq!(send("GET", "/%6detrics"), 404, "/%6detrics is not the endpoint");
    assert_eq!(send("GET", "/users/%31"), 200);
    assert_eq!(send("GET", "/users/1?x=%ff&y"), 200);
    assert_eq!(send("HEAD", "/nothing/here"), 404);
    assert_eq!(send("GET", "//users/1"), 404);
    let (status, _, body) = http_request(addr, "GET", "/stream", &[]);
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("second"));
    // A client that goes away while its request is being handled.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    wait(store, |snap| {
        snap.gauge("http_requests_in_flight", &[]) == Some(1.0)
    });
    drop(s);
    wait(store, |snap| {
        snap.gauge("http_requests_in_flight", &[]) == Some(0.0)
            && snap.family("http_requests").is_some_and(|f| f.series.len() == 10)
    });
}

fn wait(store: &Store, ok: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let snap = store.snapshot().unwrap();
        if ok(&snap) {
            return snap;
        }
        assert!(Instant::now() < deadline, "not reached: {:#?}", snap.families());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What both adapters must have recorded.
fn check(name: &str, snap: &Snapshot) {
    let c = |m: &str, p: &str, s: &str| {
        snap.counter("http_requests", &[("method", m), ("path", p), ("status", s)])
    };
    let expected = [
        ("GET", "/users/{id}", "200", 22),
        ("POST", "/orders", "201", 7),
        ("GET", "/error", "500", 3),
        ("GET", "/bad", "400", 2),
        ("GET", "unmatched", "404", 52),
        ("HEAD", "unmatched", "404", 1),
        ("DELETE", "/users/{id}", "405", 1),
        ("OTHER", "/users/{id}", "405", 1),
        ("GET", "/stream", "200", 1),
        ("GET", "/slow", "499", 1),
    ];
    for (m, p, s, n) in expected {
        assert_eq!(
            c(m, p, s),
            Some(n),
            "{name}: {m} {p} {s}: {:#?}",
            snap.family("http_requests")
        );
    }
    assert_eq!(
        snap.family("http_requests").unwrap().series.len(),
        expected.len(),
        "{name}"
    );
    let stream = snap
        .histogram(
            "http_request_duration_seconds",
            &[("method", "GET"), ("path", "/stream")],
        )
        .unwrap();
    assert!(
        stream.sum >= STREAM_PAUSE.as_secs_f64(),
        "{name}: stream latency {}",
        stream.sum
    );
    assert_eq!(snap.gauge("http_requests_in_flight", &[]), Some(0.0), "{name}");
}

/// Series and values that must agree between adapters: everything but latency sums and
/// bucket placement, which depend on timing.
fn comparable(f: &MergedFamily) -> Vec<(Vec<String>, String)> {
    f.series
        .iter()
        .map(|s| {
            let v = match &s.value {
                Value::Histogram(h) => format!("count {}", h.count()),
                other => format!("{other:?}"),
            };
            (s.labels.iter().map(|l| l.to_string()).collect(), v)
        })
        .collect()
}

#[test]
fn axum_and_actix_record_the_same_series() {
    let mut results = Vec::new();
    for (name, start) in [
        ("axum", axum_server as fn(Store) -> SocketAddr),
        ("actix", actix_server),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::builder(dir.path())
            .application("conformance")
            .open()
            .unwrap();
        let addr = start(store.clone());
        scenario(addr, &store);
        let snap = store.snapshot().unwrap();
        check(name, &snap);
        results.push((name, snap, dir));
    }
    let (a, b) = (&results[0].1, &results[1].1);
    for fam in [
        "http_requests",
        "http_request_duration_seconds",
        "http_requests_in_flight",
    ] {
        let fa = a.family(fam).unwrap();
        let fb = b.family(fam).unwrap();
        assert_eq!(fa.label_names, fb.label_names, "{fam}");
        assert_eq!(fa.buckets, fb.buckets, "{fam}");
        assert_eq!(
            comparable(fa),
            comparable(fb),
            "{fam} differs between axum and actix"
        );
    }
}
