//! `/metrics` as an actix resource: token, switch, gzip; and the middleware in-process.

use std::io::Read;

use actix_web::{App, HttpResponse, test, web};
use shmetrics_core::Store;
use shmetrics_core::http::MetricsEndpoint;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::builder(dir.path())
        .application("actix-test")
        .open()
        .unwrap();
    (dir, store)
}

#[actix_web::test]
async fn metrics_resource_token_switch_and_gzip() {
    let (_d, store) = store();
    store.counter("jobs", "Jobs").unwrap().inc();
    let app = test::init_service(App::new().service(shmetrics_actix::metrics_resource(
        "/metrics",
        MetricsEndpoint::new(&store).bearer_token(Some("s3cret")),
    )))
    .await;
    let res = test::call_service(&app, test::TestRequest::get().uri("/metrics").to_request()).await;
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.headers().get("www-authenticate").unwrap(),
        "Bearer realm=\"metrics\""
    );
    let req = test::TestRequest::get()
        .uri("/metrics")
        .insert_header(("authorization", "Bearer nope"))
        .to_request();
    assert_eq!(test::call_service(&app, req).await.status(), 401);
    let req = test::TestRequest::get()
        .uri("/metrics")
        .insert_header(("authorization", "Bearer s3cret"))
        .to_request();
    let res = test::call_service(&app, req).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers().get("content-type").unwrap(),
        shmetrics_core::CONTENT_TYPE
    );
    let body = test::read_body(res).await;
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        text.contains("jobs_total 1\n") && text.ends_with("# EOF\n"),
        "{text}"
    );

    let req = test::TestRequest::get()
        .uri("/metrics")
        .insert_header(("authorization", "Bearer s3cret"))
        .insert_header(("accept-encoding", "gzip"))
        .to_request();
    let res = test::call_service(&app, req).await;
    assert_eq!(res.headers().get("content-encoding").unwrap(), "gzip");
    let body = test::read_body(res).await;
    let mut text = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut text)
        .unwrap();
    assert!(text.contains("jobs_total 1\n"));

    let off = test::init_service(App::new().service(shmetrics_actix::metrics_resource(
        "/metrics",
        MetricsEndpoint::new(&store).enabled(false),
    )))
    .await;
    let res = test::call_service(&off, test::TestRequest::get().uri("/metrics").to_request()).await;
    assert_eq!(res.status(), 404);
}

#[actix_web::test]
async fn middleware_records_route_templates_and_errors() {
    let (_d, store) = store();
    let app = test::init_service(
        App::new()
            .wrap(shmetrics_actix::Metrics::new(&store).unwrap())
            .service(web::resource("/users/{id}").route(web::get().to(|| async { "user" })))
            .route(
                "/fail",
                web::get().to(|| async {
                    Err::<HttpResponse, _>(actix_web::error::ErrorServiceUnavailable("down"))
                }),
            ),
    )
    .await;
    for i in 0..3 {
        let req = test::TestRequest::get().uri(&format!("/users/{i}")).to_request();
        test::read_body(test::call_service(&app, req).await).await;
    }
    let res = test::call_service(&app, test::TestRequest::get().uri("/fail").to_request()).await;
    assert_eq!(res.status(), 503);
    test::read_body(res).await;
    let res = test::call_service(&app, test::TestRequest::get().uri("/x/y/z").to_request()).await;
    assert_eq!(res.status(), 404);
    test::read_body(res).await;
    let snap = store.snapshot().unwrap();
    let c =
        |p: &str, s: &str| snap.counter("http_requests", &[("method", "GET"), ("path", p), ("status", s)]);
    assert_eq!(c("/users/{id}", "200"), Some(3));
    assert_eq!(c("/fail", "503"), Some(1));
    assert_eq!(c("unmatched", "404"), Some(1));
    assert_eq!(snap.gauge("http_requests_in_flight", &[]), Some(0.0));
}

#[actix_web::test]
async fn route_templates_of_scopes_regexes_and_tails() {
    let (_d, store) = store();
    let app =
        test::init_service(
            App::new()
                .wrap(shmetrics_actix::Metrics::new(&store).unwrap())
                .service(web::scope("/api").service(
                    web::resource("/users/{id}/posts/{post}").route(web::get().to(|| async { "post" })),
                ))
                .service(web::resource(r"/orders/{id:\d+}").route(web::get().to(|| async { "order" })))
                .service(web::resource("/files/{tail:.*}").route(web::get().to(|| async { "file" })))
                .service(web::resource("/static").route(web::get().to(|| async { "static" }))),
        )
        .await;
    // The first request of a worker (here one with a regex) is matched up front; the
    // later ones are read off the router: both give the same template.
    for uri in [
        "/orders/12",
        "/api/users/7/posts/99",
        "/api/users/8/posts/100",
        "/orders/12",
        "/orders/x",
        "/files/a/b/c.txt",
        "/static",
        "/api/nope",
    ] {
        let res = test::call_service(&app, test::TestRequest::get().uri(uri).to_request()).await;
        test::read_body(res).await;
    }
    let snap = store.snapshot().unwrap();
    let c =
        |p: &str, s: &str| snap.counter("http_requests", &[("method", "GET"), ("path", p), ("status", s)]);
    assert_eq!(
        c("/api/users/{id}/posts/{post}", "200"),
        Some(2),
        "{:#?}",
        snap.family("http_requests")
    );
    assert_eq!(c("/orders/{id}", "200"), Some(2));
    assert_eq!(c("/files/{tail}", "200"), Some(1));
    assert_eq!(c("/static", "200"), Some(1));
    assert_eq!(c("unmatched", "404"), Some(2));
    assert_eq!(snap.family("http_requests").unwrap().series.len(), 5);
}
