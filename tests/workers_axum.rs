//! Two worker processes serving one store directory (each its own port): a scrape of
//! either returns the same totals.

use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};
use shmetrics_testing::{ROLE_VAR, RoleProc, http_request, say, wait_for_stdin_eof};

fn main() {
    if std::env::var(ROLE_VAR).is_ok() {
        let dir = std::env::args().nth(1).expect("dir");
        server(&dir);
        return;
    }
    let args = Arguments::from_args();
    let tests = vec![Trial::test(
        "two_workers_one_directory_identical_totals",
        two_workers,
    )];
    libtest_mimic::run(&args, tests).exit();
}

/// A worker: an axum app with the layer and `/metrics`, until stdin closes.
fn server(dir: &str) {
    use axum::Router;
    use axum::routing::{get, post};
    use shmetrics_core::http::{HttpMetrics, MetricsEndpoint};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = shmetrics_core::Store::builder(dir)
            .application("workers-test")
            .open()
            .unwrap();
        let metrics = HttpMetrics::builder(&store).exclude("/metrics").build().unwrap();
        let app = Router::new()
            .route("/users/{id}", get(|| async { "user" }))
            .route("/orders", post(|| async { (http::StatusCode::CREATED, "ok") }))
            .route(
                "/metrics",
                shmetrics_tower::metrics_route(MetricsEndpoint::new(&store)),
            )
            .layer(shmetrics_tower::MetricsLayer::from_metrics(metrics));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        say(format!("port {}", listener.local_addr().unwrap().port()));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        tokio::task::spawn_blocking(wait_for_stdin_eof).await.unwrap();
    });
}

fn request(port: u16, method: &str, path: &str) -> (u16, String) {
    let (status, _, body) = http_request(([127, 0, 0, 1], port).into(), method, path, &[]);
    (status, String::from_utf8(body).unwrap())
}

/// The `http_*` sample lines of an exposition.
fn http_lines(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("http_"))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

fn two_workers() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut a = RoleProc::spawn("server", &[d]);
    let mut b = RoleProc::spawn("server", &[d]);
    let pa: u16 = a.expect("port", Duration::from_secs(30)).parse()?;
    let pb: u16 = b.expect("port", Duration::from_secs(30)).parse()?;
    for i in 0..100 {
        assert_eq!(request(pa, "GET", &format!("/users/{i}")).0, 200);
    }
    for _ in 0..50 {
        assert_eq!(request(pb, "POST", "/orders").0, 201);
    }
    for i in 0..30 {
        assert_eq!(request(pa, "GET", &format!("/nope/{i}")).0, 404);
        assert_eq!(request(pb, "GET", &format!("/nope/{i}")).0, 404);
    }
    let (sa, ta) = request(pa, "GET", "/metrics");
    let (sb, tb) = request(pb, "GET", "/metrics");
    assert_eq!((sa, sb), (200, 200));
    let (la, lb) = (http_lines(&ta), http_lines(&tb));
    if la != lb {
        return Err(format!("worker A:\n{}\nworker B:\n{}", la.join("\n"), lb.join("\n")).into());
    }
    for want in [
        r#"http_requests_total{method="GET",path="/users/{id}",status="200"} 100"#,
        r#"http_requests_total{method="POST",path="/orders",status="201"} 50"#,
        r#"http_requests_total{method="GET",path="unmatched",status="404"} 60"#,
        r#"http_request_duration_seconds_count{method="GET",path="unmatched"} 60"#,
        "http_requests_in_flight 0",
    ] {
        if !la.iter().any(|l| l == want) {
            return Err(format!("missing {want:?} in\n{}", la.join("\n")).into());
        }
    }
    if !ta.contains("shmetrics_live_files 2.0") {
        return Err("both workers' files should be live".into());
    }
    a.close_stdin();
    b.close_stdin();
    a.wait(Duration::from_secs(10));
    b.wait(Duration::from_secs(10));
    Ok(())
}
