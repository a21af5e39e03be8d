//! Two actix-web worker processes on one `SO_REUSEPORT` port and one store directory:
//! whichever answers a scrape, the totals are the same.

use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};
use shmetrics_testing::{ROLE_VAR, RoleProc, http_request, say, wait_for_stdin_eof};

fn main() {
    if std::env::var(ROLE_VAR).is_ok() {
        let args: Vec<String> = std::env::args().skip(1).collect();
        server(&args[0], args[1].parse().unwrap());
        return;
    }
    let args = Arguments::from_args();
    let tests = vec![Trial::test(
        "two_actix_processes_one_port_one_directory",
        two_processes,
    )];
    libtest_mimic::run(&args, tests).exit();
}

/// A worker process: its own `HttpServer` (two worker threads) on the shared port.
fn server(dir: &str, port: u16) {
    use actix_web::{App, HttpServer, web};
    use shmetrics_core::http::{HttpMetrics, MetricsEndpoint};
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_reuse_port(true).unwrap();
    socket.set_reuse_address(true).unwrap();
    socket
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    socket.listen(1024).unwrap();
    let listener: std::net::TcpListener = socket.into();
    actix_web::rt::System::new().block_on(async move {
        let store = shmetrics_core::Store::builder(dir)
            .application("actix-workers")
            .open()
            .unwrap();
        let mw = shmetrics_actix::Metrics::from_metrics(
            HttpMetrics::builder(&store).exclude("/metrics").build().unwrap(),
        );
        let endpoint = MetricsEndpoint::new(&store);
        let server = HttpServer::new(move || {
            App::new()
                .wrap(mw.clone())
                .service(shmetrics_actix::metrics_resource("/metrics", endpoint.clone()))
                .route(
                    "/whoami",
                    web::get().to(|| async { std::process::id().to_string() }),
                )
                .route("/users/{id}", web::get().to(|| async { "user" }))
        })
        .workers(2)
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        say("ready");
        actix_web::rt::spawn(async move {
            let _ = actix_web::rt::task::spawn_blocking(wait_for_stdin_eof).await;
            handle.stop(true).await;
        });
        server.await.unwrap();
    });
}

fn http_lines(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("http_"))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

fn two_processes() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    // A free port for both to share.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut a = RoleProc::spawn("server", &[d, &port.to_string()]);
    let mut b = RoleProc::spawn("server", &[d, &port.to_string()]);
    a.expect("ready", Duration::from_secs(30));
    b.expect("ready", Duration::from_secs(30));
    let mut pids = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let (status, _, body) = http_request(addr, "GET", "/whoami", &[]);
        assert_eq!(status, 200);
        pids.insert(String::from_utf8(body)?);
    }
    if pids.len() != 2 {
        return Err(format!("the kernel should spread requests over both processes: {pids:?}").into());
    }
    for i in 0..100 {
        assert_eq!(http_request(addr, "GET", &format!("/users/{i}"), &[]).0, 200);
    }
    let mut seen = Vec::new();
    for _ in 0..20 {
        let (status, _, body) = http_request(addr, "GET", "/metrics", &[]);
        assert_eq!(status, 200);
        seen.push(http_lines(&String::from_utf8(body)?));
    }
    if seen.iter().any(|s| s != &seen[0]) {
        return Err("scrapes answered by different processes disagree".into());
    }
    for want in [
        r#"http_requests_total{method="GET",path="/whoami",status="200"} 200"#,
        r#"http_requests_total{method="GET",path="/users/{id}",status="200"} 100"#,
        "http_requests_in_flight 0",
    ] {
        if !seen[0].iter().any(|l| l == want) {
            return Err(format!("missing {want:?} in\n{}", seen[0].join("\n")).into());
        }
    }
    a.close_stdin();
    b.close_stdin();
    a.wait(Duration::from_secs(20));
    b.wait(Duration::from_secs(20));
    Ok(())
}
