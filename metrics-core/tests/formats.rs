//! One merged directory in every exposition format, each read back by its own parser:
//! OpenMetrics by Python's strict parser, the Prometheus text format 0.0.4 by Python's
//! 0.0.4 parser and `promtool check metrics` (no lint finding), protobuf decoded with
//! prometheus-client's messages. All three carry the same families, types and samples.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use prometheus_client::metrics::counter::Counter as PcCounter;
use prometheus_client::registry::Registry;
use shmetrics_core::{Format, GaugeMode, Opts, Snapshot, Store};
use shmetrics_testing::expositions::{self, Family};

/// A directory holding every shape: native families of every type and gauge mode (label
/// values and help texts that need escaping, NaN and infinite gauges, awkward bounds) and
/// the files of a Python `prometheus_client` worker (summaries among them).
fn fixture(dir: &Path) -> Store {
    shmetrics_testing::ensure_python_prometheus_client();
    let mut py = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python_multiprocess.py"))
        .args(["worker", "0"])
        .env("PROMETHEUS_MULTIPROC_DIR", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(py.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("ready"), "{line}");
    drop(py.stdin.take());
    assert!(py.wait().unwrap().success());

    let store = Store::builder(dir).open().unwrap();
    let hostile = ["a\"b", "back\\slash", "new\nline", "日本語", ""];
    let jobs = store
        .counter_family(
            "jobs_processed",
            "Jobs \"done\", by queue\\kind\nsecond line",
            &["queue"],
        )
        .unwrap();
    for (i, v) in hostile.iter().enumerate() {
        jobs.labels(&[v]).inc_by(i as u64 + 1);
    }
    store.counter_f64("cpu_seconds", "CPU time").unwrap().inc_by(1.25);
    for mode in GaugeMode::ALL {
        let g = store
            .gauge_family(&format!("native_{mode}_level"), "A gauge", &["kind"], mode)
            .unwrap();
        g.labels(&["x"]).set(2.5);
        g.labels(&["y"]).set(-7.0);
    }
    let odd = store
        .gauge_family("odd_values", "Odd values", &["which"], GaugeMode::Max)
        .unwrap();
    odd.labels(&["nan"]).set(f64::NAN);
    odd.labels(&["inf"]).set(f64::INFINITY);
    odd.labels(&["-inf"]).set(f64::NEG_INFINITY);
    odd.labels(&["tiny"]).set(5e-324);
    let h = store
        .register::<shmetrics_core::Histogram>(
            Opts::new("request_size_bytes", "Sizes")
                .label_names(["route"])
                .buckets(vec![1e-5, 0.1, 1.0, 100_000.0, 1e6, 1e20]),
        )
        .unwrap();
    for v in [0.0, 1e-6, 0.5, 2.0, 5e5, 1e30] {
        h.labels(&["/a\"b"]).observe(v);
    }
    store
}

/// The caller's own metrics, registered in each scrape's registry.
fn extras() -> Registry {
    let mut r = Registry::default();
    let c: PcCounter = PcCounter::default();
    c.inc_by(3);
    r.register("build_events", "Build events", c);
    r
}

/// Families sorted by name; those without samples left out (the 0.0.4 format has no
/// family without a sample).
fn sorted(mut f: Vec<Family>) -> Vec<Family> {
    f.retain(|f| !f.samples.is_empty());
    f.sort_by(|a, b| a.name.cmp(&b.name));
    f
}

fn encode(snap: &Snapshot, format: Format) -> Vec<u8> {
    snap.clone().encode_as(format, extras()).unwrap()
}

#[test]
fn every_format_parses_with_its_own_parser_and_carries_the_same_samples() {
    let dir = tempfile::tempdir().unwrap();
    let store = fixture(dir.path());
    let snap = store.snapshot().unwrap();

    let om = String::from_utf8(encode(&snap, Format::OpenMetrics)).unwrap();
    let text = String::from_utf8(encode(&snap, Format::PrometheusText)).unwrap();
    let proto = encode(&snap, Format::Protobuf);

    let mut parsed = expositions::parse_text(&[("openmetrics", &om), ("text", &text)]).into_iter();
    let om_families = sorted(parsed.next().unwrap().unwrap_or_else(|e| panic!("{e}\n{om}")));
    let text_families = sorted(parsed.next().unwrap().unwrap_or_else(|e| panic!("{e}\n{text}")));
    let proto_families = sorted(expositions::parse_protobuf(&proto).unwrap());
    // The Python fixture names a gauge `g_sum` (its mode), which promtool's linter flags
    // as a name, whatever the format: that one finding is the fixture's, not the encoder's.
    if let Err(e) = expositions::promtool_check_metrics(&text) {
        let findings: Vec<&str> = e
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty() && !l.starts_with("g_sum non-histogram"))
            .collect();
        let first = e.lines().next().unwrap_or_default();
        let fixture_only =
            first.ends_with("g_sum non-histogram and non-summary metrics should not have \"_sum\" suffix");
        assert!(fixture_only && findings.is_empty(), "{e}\n{text}");
    }

    // The types right in 0.0.4: a counter is one family with its `_total` samples.
    let requests = text_families
        .iter()
        .find(|f| f.name == "jobs_processed")
        .expect("the counter family");
    assert_eq!(requests.ty, "counter");
    assert_eq!(requests.samples.len(), 5);
    assert!(requests.samples.iter().all(|s| s.0 == "jobs_processed_total"));
    assert!(!text_families.iter().any(|f| f.name == "jobs_processed_total"));

    let names = |f: &[Family]| {
        f.iter()
            .map(|f| (f.name.clone(), f.ty.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&om_families),
        names(&text_families),
        "OpenMetrics vs text 0.0.4"
    );
    assert_eq!(
        names(&om_families),
        names(&proto_families),
        "OpenMetrics vs protobuf"
    );
    for ((o, t), p) in om_families.iter().zip(&text_families).zip(&proto_families) {
        assert_eq!(
            o.normalized(),
            t.normalized(),
            "{}: OpenMetrics vs text 0.0.4",
            o.name
        );
        assert_eq!(
            o.normalized(),
            p.normalized(),
            "{}: OpenMetrics vs protobuf",
            o.name
        );
    }
    for want in [
        "payload_bytes",
        "latency_seconds",
        "requests",
        "build_events",
        "shmetrics_series",
    ] {
        assert!(om_families.iter().any(|f| f.name == want), "{want} missing");
    }
    assert_eq!(
        om_families.iter().find(|f| f.name == "payload_bytes").unwrap().ty,
        "summary"
    );

    // Help texts arrive unescaped in protobuf, escaped as each text format wants.
    let pb = expositions::decode_protobuf(&proto).unwrap();
    let jobs = pb.iter().find(|f| f.name == "jobs_processed_total").unwrap();
    assert_eq!(jobs.help, "Jobs \"done\", by queue\\kind\nsecond line");
    assert!(text.contains("# HELP jobs_processed_total Jobs \"done\", by queue\\\\kind\\nsecond line\n"));
    assert!(om.contains("# HELP jobs_processed Jobs \\\"done\\\", by queue\\\\kind\\nsecond line\n"));
}

#[test]
fn an_empty_directory_is_valid_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::builder(dir.path()).open().unwrap();
    let snap = store.snapshot().unwrap();
    let text = String::from_utf8(encode(&snap, Format::PrometheusText)).unwrap();
    expositions::promtool_check_metrics(&text).unwrap();
    let om = String::from_utf8(encode(&snap, Format::OpenMetrics)).unwrap();
    for r in expositions::parse_text(&[("openmetrics", &om), ("text", &text)]) {
        r.unwrap();
    }
    assert!(
        !expositions::parse_protobuf(&encode(&snap, Format::Protobuf))
            .unwrap()
            .is_empty()
    );
}
