//! Middleware overhead per request, in-process (tower `oneshot`, actix
//! `test::call_service`, requests built outside the timed part, bodies read to the end):
//! bare axum vs shmetrics-tower vs axum-prometheus; bare actix vs shmetrics-actix vs
//! actix-web-prom. The overhead of a middleware is its time minus the bare app's.

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

fn axum(c: &mut Criterion) {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use http::Request;
    use tower::ServiceExt;

    let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
    let store = shmetrics_benches::builder(dir.path()).open().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let bare: Router = Router::new().route("/users/{id}", get(|| async { "user" }));
    let ours = bare.clone().layer(shmetrics_tower::MetricsLayer::new(&store).unwrap());
    let (peer_layer, _handle) = axum_prometheus::PrometheusMetricLayer::pair();
    let peer = bare.clone().layer(peer_layer);

    let mut g = c.benchmark_group("middleware_axum");
    for (name, app) in [("bare", bare), ("shmetrics_tower", ours), ("axum_prometheus", peer)] {
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

    let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
    let store = shmetrics_benches::builder(dir.path()).open().unwrap();
    let sys = actix_web::rt::System::new();
    let mut g = c.benchmark_group("middleware_actix");

    fn run<S, B>(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, name: &str, sys: &actix_web::rt::SystemRunner, app: S)
    where
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
    run(&mut g, "bare", &sys, bare);
    let ours = sys.block_on(test::init_service(
        App::new()
            .wrap(shmetrics_actix::Metrics::new(&store).unwrap())
            .service(web::resource("/users/{id}").route(web::get().to(|| async { "user" }))),
    ));
    run(&mut g, "shmetrics_actix", &sys, ours);
    let prom = actix_web_prom::PrometheusMetricsBuilder::new("api")
        .endpoint("/metrics")
        .build()
        .unwrap();
    let peer = sys.block_on(test::init_service(
        App::new()
            .wrap(prom)
            .service(web::resource("/users/{id}").route(web::get().to(|| async { "user" }))),
    ));
    run(&mut g, "actix_web_prom", &sys, peer);
    g.finish();
}

criterion_group!(benches, axum, actix);
criterion_main!(benches);
