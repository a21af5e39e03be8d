//! A library instrumented with the `metrics` facade in every worker: the axum example with
//! axum-prometheus' layer, 4 workers behind one port, requests spread over them by the
//! kernel. The merged `/metrics` counts that library's requests exactly, as it counts the
//! application's own `metrics::counter!` and the store's middleware.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

mod common;
use common::{free_port, stop, wait_healthy};

/// The value of the sample `line_start` (name and labels, exactly as written) in `text`.
fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' '))
        .and_then(|v| v.split(' ').next()?.parse().ok())
}

#[test]
fn axum_prometheus_in_4_workers_is_counted_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(common::example_bin("axum_workers"))
        .args([
            "--workers",
            "4",
            "--port",
            &port.to_string(),
            "--axum-prometheus",
            "--dir",
        ])
        .arg(dir.path())
        .env("SHMETRICS_APPLICATION", "facade-test")
        .env_remove("PROMETHEUS_MULTIPROC_DIR")
        .env_remove("METRICS_AUTH_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_healthy(port);
    let addr = ([127, 0, 0, 1], port).into();
    let request = |method: &str, path: &str| shmetrics_testing::http_request(addr, method, path, &[]);

    // Each request on its own connection: the workers take them from one accept queue.
    let (users, orders, errors) = (60, 30, 12);
    let mut pids = BTreeSet::new();
    for i in 0..users {
        assert_eq!(request("GET", &format!("/users/{i}")).0, 200);
    }
    for _ in 0..orders {
        let (status, _, body) = request("POST", "/orders");
        assert_eq!(status, 201);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        pids.insert(v["pid"].as_u64().unwrap());
    }
    for _ in 0..errors {
        assert_eq!(request("GET", "/error").0, 500);
    }
    let (status, _, body) = request("GET", "/metrics");
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    stop(child);

    assert!(
        pids.len() >= 2,
        "the orders all went to one worker ({pids:?}): the test shows no merge"
    );
    for (labels, want) in [
        (r#"endpoint="/users/{id}",method="GET",status="200""#, users),
        (r#"endpoint="/orders",method="POST",status="201""#, orders),
        (r#"endpoint="/error",method="GET",status="500""#, errors),
    ] {
        let total = sample(&text, &format!("axum_http_requests_total{{{labels}}}"));
        assert_eq!(
            total,
            Some(want as f64),
            "axum_http_requests_total{{{labels}}} in\n{text}"
        );
        let count = sample(
            &text,
            &format!("axum_http_requests_duration_seconds_count{{{labels}}}"),
        );
        assert_eq!(count, Some(want as f64), "duration count {{{labels}}} in\n{text}");
        let inf = sample(
            &text,
            &format!("axum_http_requests_duration_seconds_bucket{{{labels},le=\"+Inf\"}}"),
        );
        assert_eq!(inf, Some(want as f64), "+Inf bucket {{{labels}}} in\n{text}");
    }
    // The in-flight gauge: summed over the live workers, back to zero on finished routes.
    let pending = sample(
        &text,
        r#"axum_http_requests_pending{endpoint="/users/{id}",method="GET"}"#,
    );
    assert_eq!(pending, Some(0.0), "pending in\n{text}");
    // The application's own counter through the facade, and the store's middleware.
    assert_eq!(
        sample(&text, "orders_created_total"),
        Some(orders as f64),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"http_requests_total{method="POST",path="/orders",status="201"}"#
        ),
        Some(orders as f64),
        "{text}"
    );
    // The whole body passes the strict OpenMetrics parser.
    let parsed = shmetrics_testing::expositions::parse_text(&[("openmetrics", &text)]);
    assert!(parsed[0].is_ok(), "{:?}", parsed[0]);
    assert!(
        !text.contains(r#"kind="recorder"} 1"#),
        "a series of the facade was refused:\n{text}"
    );
}
