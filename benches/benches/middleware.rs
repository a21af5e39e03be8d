//! Middleware overhead per request, in-process (tower `oneshot`, actix
//! `test::call_service`, requests built outside the timed part, bodies read to the end):
//! bare axum vs shmetrics-tower vs axum-prometheus; bare actix vs shmetrics-actix vs
//! actix-web-prom. The overhead of a middleware is its time minus the bare app's.
//!
//! The `*_overhead` groups measure that difference directly: batches of 32 requests to the
//! bare app and to the instrumented one alternate within one timed run, and the reported
//! time is the instrumented batches' total minus the bare ones'. Both halves see the same
//! machine at the same moment, which matters on a shared, noisy host.

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use shmetrics_benches::paired;

/// One request through any tower service answering axum requests, body read to the end.
fn send_any<S, B>(rt: &tokio::runtime::Runtime, svc: &S)
where
    S: tower::Service<
            http::Request<axum::body::Body>,
            Response = http::Response<B>,
            Error = std::convert::Infallible,
        > + Clone,
    B: http_body::Body<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    use tower::ServiceExt;
    let svc = svc.clone();
    rt.block_on(async move {
        let req = http::Request::get("/users/42")
            .body(axum::body::Body::empty())
            .unwrap();
        let res = svc.oneshot(req).await.unwrap();
        axum::body::to_bytes(axum::body::Body::new(res.into_body()), usize::MAX)
            .await
            .unwrap()
    });
}

fn axum(c: &mut Criterion) {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use http::Request;
    use tower::ServiceExt;

    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let store = shmetrics_benches::builder(dir.path()).open().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // As `axum::serve` runs a router: it calls `with_state(())` for every connection,
    // which builds each route's (layered) service once. A router called as a service
    // without it rebuilds every layered handler service on each request.
    let serve = |r: Router| r.with_state::<()>(());
    let routes: Router = Router::new().route("/users/{id}", get(|| async { "user" }));
    let bare = serve(routes.clone());
    let ours = serve(
        routes
            .clone()
            .layer(shmetrics_tower::MetricsLayer::new(&store).unwrap()),
    );
    // axum-prometheus spawns an upkeep task: it is built inside the runtime.
    let _entered = rt.enter();
    let (peer_layer, _handle) = axum_prometheus::PrometheusMetricLayer::pair();
    let peer = serve(routes.clone().layer(peer_layer));

    // The floor of any layer that wraps the body, in axum (see shmetrics_benches::noop).
    let noop = serve(routes.clone().layer(shmetrics_benches::noop::NoopLayer));

    let send = |app: &Router| {
        let app = app.clone();
        rt.block_on(async move {
            let req = Request::get("/users/42").body(Body::empty()).unwrap();
            let res = app.oneshot(req).await.unwrap();
            axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap()
        });
    };
    let mut g = c.benchmark_group("middleware_axum_overhead");
    for (name, app) in [
        ("noop_body_layer", &noop),
        ("shmetrics_tower", &ours),
        ("axum_prometheus", &peer),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|n| paired(n, || send(&bare), || send(app)))
        });
    }
    // The layer around the whole router (RouteLayer inside tells it the route): axum
    // then boxes nothing per route for it.
    use tower::Layer;
    let outside = shmetrics_tower::MetricsLayer::new(&store)
        .unwrap()
        .layer(serve(routes.clone().layer(shmetrics_tower::RouteLayer)));
    let noop_outside = shmetrics_benches::noop::NoopLayer.layer(bare.clone());
    g.bench_function("noop_layer_outside_router", |b| {
        b.iter_custom(|n| paired(n, || send_any(&rt, &bare), || send_any(&rt, &noop_outside)))
    });
    g.bench_function("shmetrics_tower_outside_router", |b| {
        b.iter_custom(|n| paired(n, || send_any(&rt, &bare), || send_any(&rt, &outside)))
    });
    g.finish();

    let mut g = c.benchmark_group("middleware_axum");
    for (name, app) in [
        ("bare", bare),
        ("noop_body_layer", noop),
        ("shmetrics_tower", ours),
        ("axum_prometheus", peer),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || Request::get("/users/42").body(Body::empty()).unwrap(),
                |req| {
                    rt.block_on(async {
                        let res = app.clone().oneshot(req).await.unwrap();
                        axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap()
                    })
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn actix(c: &mut Criterion) {
    use actix_web::dev::{Service, ServiceResponse};
    use actix_web::{App, test, web};

    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let store = shmetrics_benches::builder(dir.path()).open().unwrap();
    let sys = actix_web::rt::System::new();
    fn run<S, B>(
        g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
        name: &str,
        sys: &actix_web::rt::SystemRunner,
        app: S,
    ) where
        S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
        B: actix_web::body::MessageBody,
    {
        g.bench_function(name, |b| {
            b.iter_batched(
                || test::TestRequest::get().uri("/users/42").to_request(),
                |req| {
                    sys.block_on(async {
                        let res = test::call_service(&app, req).await;
                        test::read_body(res).await
                    })
                },
                BatchSize::SmallInput,
            )
        });
    }

    let bare = sys.block_on(test::init_service(
        App::new().service(web::resource("/users/{id}").route(web::get().to(|| async { "user" }))),
    ));
    let ours = sys.block_on(test::init_service(
        App::new()
            .wrap(shmetrics_actix::Metrics::new(&store).unwrap())
            .service(web::resource("/users/{id}").route(web::get().to(|| async { "user" }))),
    ));
    // The floor of any middleware that wraps the body, in actix-web.
    let noop = sys.block_on(test::init_service(
        App::new()
            .wrap(shmetrics_benches::noop_actix::NoopMiddleware)
            .service(web::resource("/users/{id}").route(web::get().to(|| async { "user" }))),
    ));
    let prom = actix_web_prom::PrometheusMetricsBuilder::new("api")
        .endpoint("/metrics")
        .build()
        .unwrap();
    let peer =
        sys.block_on(test::init_service(App::new().wrap(prom).service(
            web::resource("/users/{id}").route(web::get().to(|| async { "user" })),
        )));
    macro_rules! send {
        ($app:expr) => {
            || {
                sys.block_on(async {
                    let req = test::TestRequest::get().uri("/users/42").to_request();
                    let res = test::call_service(&$app, req).await;
                    test::read_body(res).await
                });
            }
        };
    }
    let mut o = c.benchmark_group("middleware_actix_overhead");
    o.bench_function("shmetrics_actix", |b| {
        b.iter_custom(|n| paired(n, send!(bare), send!(ours)))
    });
    o.bench_function("actix_web_prom", |b| {
        b.iter_custom(|n| paired(n, send!(bare), send!(peer)))
    });
    o.finish();
    let mut g = c.benchmark_group("middleware_actix");
    run(&mut g, "bare", &sys, bare);
    // Too close to bare for the paired difference (criterion refuses samples of zero).
    run(&mut g, "noop_body_middleware", &sys, noop);
    run(&mut g, "shmetrics_actix", &sys, ours);
    run(&mut g, "actix_web_prom", &sys, peer);
    g.finish();
}

criterion_group!(benches, axum, actix);
criterion_main!(benches);
