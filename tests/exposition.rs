//! What `/metrics` serves, through both adapters, over real connections.
//!
//! * Content negotiation: for each `Accept` value a scraper sends, with and without gzip,
//!   the answer carries the format's own content type and parses with that format's parser
//!   (OpenMetrics: Python's strict parser; Prometheus text 0.0.4: Python's 0.0.4 parser and
//!   `promtool check metrics`; protobuf: prometheus-client's messages). `application/json`
//!   gets the default (OpenMetrics), as Prometheus' own client libraries answer: never a 406.
//! * A latency histogram opted into native buckets.
//! * Exemplars of traced requests (W3C `traceparent`, or the application's closure).

use std::net::{SocketAddr, TcpListener};

use shmetrics_core::{Format, Store};
use shmetrics_testing::expositions;
use shmetrics_testing::http_request;

/// What Prometheus 2.42 sends (scrape/scrape.go), without and with
/// `--enable-feature=native-histograms`.
const PROMETHEUS: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
const PROMETHEUS_NATIVE: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
const PROTOBUF: &str =
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";

/// (`Accept`, the format it must get).
const TABLE: &[(Option<&str>, Format)] = &[
    (None, Format::OpenMetrics),
    (Some("*/*"), Format::OpenMetrics),
    (Some(PROMETHEUS), Format::OpenMetrics),
    (Some(PROMETHEUS_NATIVE), Format::Protobuf),
    (Some("text/plain;version=0.0.4"), Format::PrometheusText),
    // VictoriaMetrics' vmagent.
    (
        Some("text/plain;version=0.0.4;q=1,*/*;q=0.1"),
        Format::PrometheusText,
    ),
    (Some(PROTOBUF), Format::Protobuf),
    (Some("application/json"), Format::OpenMetrics),
];

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::builder(dir.path())
        .application("negotiation")
        .open()
        .unwrap();
    let h = store
        .histogram_family("job_duration_seconds", "Job durations", &["queue"], &[0.1, 1.0])
        .unwrap();
    h.labels(&["mail\"box"]).observe(0.5);
    (dir, store)
}

/// An axum app with `MetricsLayer::pair` on a background thread.
fn axum_server(store: Store) -> SocketAddr {
    axum_server_with(store, |b| b)
}

/// The axum app, its request metrics as `options` says.
fn axum_server_with(
    store: Store,
    options: fn(shmetrics_core::http::HttpMetricsBuilder) -> shmetrics_core::http::HttpMetricsBuilder,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let builder = options(shmetrics_core::http::HttpMetrics::builder(&store));
            let endpoint = shmetrics_core::http::MetricsEndpoint::new(&store);
            let (layer, metrics) = shmetrics_tower::MetricsLayer::pair_with(builder, endpoint).unwrap();
            let app = axum::Router::new()
                .route("/users/{id}", axum::routing::get(|| async { "user" }))
                .merge(metrics)
                .layer(layer);
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    addr
}

/// An actix-web app on a background thread: `Metrics::with_endpoint` answers `/metrics`
/// itself, and `metrics_resource` serves the same endpoint on `/resource-metrics`.
fn actix_server(store: Store) -> SocketAddr {
    actix_server_with(store, |b| b)
}

/// The actix-web app, its request metrics as `options` says.
fn actix_server_with(
    store: Store,
    options: fn(shmetrics_core::http::HttpMetricsBuilder) -> shmetrics_core::http::HttpMetricsBuilder,
) -> SocketAddr {
    use actix_web::{App, HttpServer, web};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let endpoint = shmetrics_core::http::MetricsEndpoint::new(&store);
            let builder = options(shmetrics_core::http::HttpMetrics::builder(&store));
            let mw = shmetrics_actix::Metrics::with_endpoint_from(builder, endpoint.clone()).unwrap();
            HttpServer::new(move || {
                App::new()
                    .wrap(mw.clone())
                    .service(shmetrics_actix::metrics_resource(
                        "/resource-metrics",
                        endpoint.clone(),
                    ))
                    .route("/users/{id}", web::get().to(|| async { "user" }))
            })
            .workers(1)
            .listen(listener)
            .unwrap()
            .run()
            .await
            .unwrap();
        });
    });
    addr
}

/// The value of header `name` in a response head.
fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

#[test]
fn every_scraper_gets_its_format_from_both_adapters() {
    let (_d1, axum_store) = store();
    let (_d2, actix_store) = store();
    let servers = [
        ("axum", axum_server(axum_store), "/metrics"),
        ("actix middleware", actix_server(actix_store), "/metrics"),
    ];
    let actix_resource = (servers[1].0, servers[1].1, "/resource-metrics");
    let mut texts: Vec<(String, &str, String)> = Vec::new();
    let mut checked = 0;
    for (name, addr, path) in
        servers
            .iter()
            .copied()
            .chain([("actix resource", actix_resource.1, actix_resource.2)])
    {
        for _ in 0..50 {
            if shmetrics_testing::try_http_request(addr, "GET", "/users/1", &[]).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        for (accept, want) in TABLE {
            for gzip in [false, true] {
                let mut headers = Vec::new();
                if let Some(a) = accept {
                    headers.push(("accept", *a));
                }
                if gzip {
                    headers.push(("accept-encoding", "gzip"));
                }
                let what = format!("{name}, Accept {accept:?}, gzip {gzip}");
                let (status, head, body) = http_request(addr, "GET", path, &headers);
                assert_eq!(status, 200, "{what}: {head}");
                assert_eq!(
                    header(&head, "content-type").as_deref(),
                    Some(want.content_type()),
                    "{what}"
                );
                let vary = header(&head, "vary").unwrap_or_default().to_ascii_lowercase();
                assert!(
                    vary.contains("accept") && vary.contains("accept-encoding"),
                    "{what}: {head}"
                );
                assert_eq!(
                    header(&head, "content-encoding").as_deref(),
                    gzip.then_some("gzip"),
                    "{what}"
                );
                let body = if gzip { expositions::gunzip(&body) } else { body };
                match want {
                    Format::Protobuf => {
                        let fams =
                            expositions::parse_protobuf(&body).unwrap_or_else(|e| panic!("{what}: {e}"));
                        assert!(
                            fams.iter()
                                .any(|f| f.name == "job_duration_seconds" && f.ty == "histogram"),
                            "{what}"
                        );
                    }
                    Format::PrometheusText => {
                        let text = String::from_utf8(body).unwrap();
                        expositions::promtool_check_metrics(&text).unwrap_or_else(|e| panic!("{what}: {e}"));
                        texts.push((what, "text", text));
                    }
                    _ => texts.push((what, "openmetrics", String::from_utf8(body).unwrap())),
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 3 * TABLE.len() * 2);
    let items: Vec<(&str, &str)> = texts.iter().map(|(_, f, b)| (*f, b.as_str())).collect();
    for ((what, _, body), parsed) in texts.iter().zip(expositions::parse_text(&items)) {
        let fams = parsed.unwrap_or_else(|e| panic!("{what}: {e}\n{body}"));
        let h = fams
            .iter()
            .find(|f| f.name == "job_duration_seconds")
            .unwrap_or_else(|| panic!("{what}: no histogram\n{body}"));
        assert_eq!(h.ty, "histogram", "{what}");
        assert!(
            h.samples.contains(&(
                "job_duration_seconds_count".into(),
                vec![("queue".into(), "mail\"box".into())],
                1.0
            )),
            "{what}: {:?}",
            h.samples
        );
        let requests = fams.iter().find(|f| f.name == "http_requests").unwrap();
        assert_eq!(requests.ty, "counter", "{what}");
        assert!(
            requests.samples.iter().all(|s| s.0 == "http_requests_total"),
            "{what}"
        );
    }
}

/// Waits for a server to answer.
fn wait_up(addr: SocketAddr) {
    for _ in 0..100 {
        if shmetrics_testing::try_http_request(addr, "GET", "/users/1", &[]).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("the server at {addr} does not answer");
}

#[test]
fn an_opted_in_latency_histogram_is_native_in_protobuf_and_classic_in_text_on_both_adapters() {
    let native =
        |b: shmetrics_core::http::HttpMetricsBuilder| b.native(shmetrics_core::NativeOpts::default());
    let native_only = |b: shmetrics_core::http::HttpMetricsBuilder| {
        b.native(shmetrics_core::NativeOpts::default())
            .classic_buckets(false)
    };
    for (name, start, only) in [
        ("axum", axum_server_with as fn(_, _) -> SocketAddr, false),
        ("actix", actix_server_with, false),
        ("axum native only", axum_server_with, true),
        ("actix native only", actix_server_with, true),
    ] {
        let (_dir, store) = store();
        let addr = start(store, if only { native_only } else { native });
        wait_up(addr);
        for i in 0..9 {
            http_request(addr, "GET", &format!("/users/{i}"), &[]);
        }
        let (_, _, body) = http_request(addr, "GET", "/metrics", &[("accept", PROMETHEUS_NATIVE)]);
        let fams = expositions::decode_protobuf(&body).unwrap();
        let lat = fams
            .iter()
            .find(|f| f.name == "http_request_duration_seconds")
            .unwrap_or_else(|| panic!("{name}: no latency family"));
        let users = lat
            .metric
            .iter()
            .find(|m| m.label.iter().any(|l| l.value == "/users/{id}"))
            .and_then(|m| m.histogram.clone())
            .unwrap_or_else(|| panic!("{name}: no /users/{{id}} latency"));
        assert_eq!(users.schema, 3, "{name}");
        assert!(!users.positive_span.is_empty(), "{name}: {users:?}");
        // Every request of the burst, plus the one that waited for the server to be up.
        let native_count: i64 = users
            .positive_delta
            .iter()
            .scan(0, |c, d| {
                *c += d;
                Some(*c)
            })
            .sum::<i64>()
            + users.zero_count as i64;
        assert!(
            native_count >= 9 && native_count as u64 == users.sample_count,
            "{name}: {users:?}"
        );
        assert_eq!(
            users.bucket.is_empty(),
            only,
            "{name}: classic buckets {:?}",
            users.bucket
        );
        let (_, _, text) = http_request(addr, "GET", "/metrics", &[("accept", "text/plain;version=0.0.4")]);
        let text = String::from_utf8(text).unwrap();
        let classic_le =
            "http_request_duration_seconds_bucket{method=\"GET\",path=\"/users/{id}\",le=\"0.005\"}";
        assert_eq!(text.contains(classic_le), !only, "{name}:\n{text}");
        expositions::promtool_check_metrics(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let (_dir, store) = store();
    let err = shmetrics_core::http::HttpMetrics::builder(&store)
        .classic_buckets(false)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("native"), "{err}");
}

/// The exemplar trace ids of the samples named `sample` in an OpenMetrics body, with the
/// labels of their series.
fn exemplar_ids(body: &str, sample: &str) -> Vec<(String, String)> {
    body.lines()
        .filter(|l| l.starts_with(sample) && l.contains(" # {"))
        .map(|l| {
            let (series, ex) = l.split_once(" # {").unwrap();
            let id = ex.split('"').nth(1).unwrap_or_default().to_string();
            (series.split(' ').next().unwrap_or_default().to_string(), id)
        })
        .collect()
}

#[test]
fn traced_requests_carry_exemplars_on_both_adapters() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let tp = |id: &str, flags: &str| format!("00-{id}-00f067aa0ba902b7-{flags}");
    let every = |b: shmetrics_core::http::HttpMetricsBuilder| b.exemplar_interval(std::time::Duration::ZERO);
    let custom = |b: shmetrics_core::http::HttpMetricsBuilder| {
        b.trace_id(|h: &dyn shmetrics_core::http::RequestHeaders| {
            h.header("x-trace")
                .and_then(shmetrics_core::http::parse_traceparent)
        })
    };
    for (name, start) in [
        ("axum", axum_server_with as fn(_, _) -> SocketAddr),
        ("actix", actix_server_with),
    ] {
        // Default source, default sampling: the first traced request of a bucket wins the
        // interval; untraced and unsampled requests carry nothing.
        let (_d, st) = store();
        let addr = start(st, |b| b);
        wait_up(addr);
        let first = http_request(addr, "GET", "/users/1", &[("traceparent", &tp(TRACE, "01"))]);
        assert_eq!(first.0, 200);
        let other = "00000000000000000000000000000bad";
        http_request(addr, "GET", "/users/2", &[("traceparent", &tp(other, "01"))]);
        http_request(addr, "GET", "/users/3", &[("traceparent", &tp(other, "00"))]);
        http_request(addr, "GET", "/nope", &[]);
        let (_, _, body) = http_request(addr, "GET", "/metrics", &[]);
        let body = String::from_utf8(body).unwrap();
        let counters = exemplar_ids(&body, "http_requests_total");
        assert_eq!(
            counters,
            vec![(
                r#"http_requests_total{method="GET",path="/users/{id}",status="200"}"#.to_string(),
                TRACE.to_string()
            )],
            "{name}: one per series per interval, none without a sampled trace:\n{body}"
        );
        let buckets = exemplar_ids(&body, "http_request_duration_seconds_bucket");
        assert_eq!(buckets.len(), 1, "{name}:\n{body}");
        assert!(
            buckets[0].0.contains(r#"le="0.005""#) && buckets[0].1 == TRACE,
            "{name}: {buckets:?}"
        );
        // The strict OpenMetrics parser takes them; the text format 0.0.4 leaves them out.
        expositions::parse_text(&[("openmetrics", &body)])
            .remove(0)
            .unwrap();
        let (_, _, text) = http_request(addr, "GET", "/metrics", &[("accept", "text/plain;version=0.0.4")]);
        let text = String::from_utf8(text).unwrap();
        assert!(!text.contains(TRACE), "{name}: 0.0.4 has no exemplars");
        expositions::promtool_check_metrics(&text).unwrap();
        // Protobuf: on the counter and on the bucket.
        let (_, _, pb) = http_request(addr, "GET", "/metrics", &[("accept", PROTOBUF)]);
        let fams = expositions::decode_protobuf(&pb).unwrap();
        let hex =
            |l: &[expositions::LabelPair]| l.iter().find(|p| p.name == "trace_id").map(|p| p.value.clone());
        let req = fams.iter().find(|f| f.name == "http_requests_total").unwrap();
        let with: Vec<_> = req
            .metric
            .iter()
            .filter_map(|m| m.counter.as_ref()?.exemplar.as_ref().and_then(|e| hex(&e.label)))
            .collect();
        assert_eq!(with, vec![TRACE.to_string()], "{name}");
        let lat = fams
            .iter()
            .find(|f| f.name == "http_request_duration_seconds")
            .unwrap();
        let on_buckets: Vec<_> = lat
            .metric
            .iter()
            .flat_map(|m| m.histogram.as_ref().unwrap().bucket.iter())
            .filter_map(|b| b.exemplar.as_ref().and_then(|e| hex(&e.label)))
            .collect();
        assert_eq!(on_buckets, vec![TRACE.to_string()], "{name}");

        // Every traced request, when the interval is zero: the latest wins.
        let (_d2, st) = store();
        let addr = start(st, every);
        wait_up(addr);
        http_request(addr, "GET", "/users/1", &[("traceparent", &tp(TRACE, "01"))]);
        http_request(addr, "GET", "/users/2", &[("traceparent", &tp(other, "01"))]);
        let (_, _, body) = http_request(addr, "GET", "/metrics", &[]);
        let body = String::from_utf8(body).unwrap();
        assert_eq!(
            exemplar_ids(&body, "http_requests_total")[0].1,
            other,
            "{name}:\n{body}"
        );

        // The application's closure instead of the traceparent header.
        let (_d3, st) = store();
        let addr = start(st, custom);
        wait_up(addr);
        http_request(addr, "GET", "/users/1", &[("traceparent", &tp(other, "01"))]);
        http_request(addr, "GET", "/users/2", &[("x-trace", &tp(TRACE, "01"))]);
        let (_, _, body) = http_request(addr, "GET", "/metrics", &[]);
        let body = String::from_utf8(body).unwrap();
        let ids: Vec<String> = exemplar_ids(&body, "http_requests_total")
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        assert_eq!(ids, vec![TRACE.to_string()], "{name}:\n{body}");
    }
}
