//! Drives N requests through an actix-web app (bare or with the metrics middleware), for
//! instruction counts: `valgrind --tool=callgrind --toggle-collect='*requests*'
//! target/release/examples/profile_actix [bare|layer|noop] [N]`. The middleware's cost per
//! request is (layer - bare) / N; `noop` is a middleware that only wraps the body (the
//! floor of any metrics middleware).
use actix_web::{App, test, web};

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let n: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();
    let store = shmetrics_benches::builder(dir.path()).open().unwrap();
    let sys = actix_web::rt::System::new();
    let layer = mode == "layer";
    let route = || web::resource("/users/{id}").route(web::get().to(|| async { "user" }));
    sys.block_on(async {
        if mode == "noop" {
            let app = test::init_service(
                App::new()
                    .wrap(actix_web::middleware::Condition::new(
                        true,
                        shmetrics_benches::noop_actix::NoopMiddleware,
                    ))
                    .service(route()),
            )
            .await;
            requests(&app, n).await;
            return;
        }
        let app = test::init_service(
            App::new()
                .wrap(actix_web::middleware::Condition::new(
                    layer,
                    shmetrics_actix::Metrics::new(&store).unwrap(),
                ))
                .service(route()),
        )
        .await;
        requests(&app, n).await;
    });
    eprintln!("{mode}: {n} requests");
}

/// The measured part: `n` requests (`--toggle-collect='*requests*'` counts only these).
async fn requests<S, B>(app: &S, n: usize)
where
    S: actix_web::dev::Service<
            actix_http::Request,
            Response = actix_web::dev::ServiceResponse<B>,
            Error = actix_web::Error,
        >,
    B: actix_web::body::MessageBody,
{
    for _ in 0..n {
        let req = test::TestRequest::get().uri("/users/42").to_request();
        let res = test::call_service(app, req).await;
        test::read_body(res).await;
    }
}
