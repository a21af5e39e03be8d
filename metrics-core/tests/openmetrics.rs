//! The exposition parses with a strict OpenMetrics parser (Python `prometheus_client`'s),
//! whatever the label values and help texts hold, and round-trips every value.

use std::io::Write;
use std::process::{Command, Stdio};

use shmetrics_core::{GaugeMode, Opts, Store};

/// Parses OpenMetrics text from stdin with prometheus_client's strict parser and prints one
/// JSON object per sample: family, type, help, sample name, labels, value.
const PARSER: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
text = sys.stdin.read()
out = []
for fam in text_string_to_metric_families(text):
    for s in fam.samples:
        out.append({"family": fam.name, "type": fam.type, "help": fam.documentation,
                    "name": s.name, "labels": s.labels, "value": s.value})
json.dump(out, sys.stdout)
"#;

/// Runs the strict parser; panics with its error message if it rejects `text`.
pub fn parse_openmetrics(text: &str) -> Vec<Sample> {
    shmetrics_testing::ensure_python_prometheus_client();
    let mut child = Command::new("python3")
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is required for this test");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'prometheus_client'"),
        "this test needs Python's prometheus-client: pip install prometheus-client"
    );
    assert!(
        out.status.success(),
        "strict OpenMetrics parser rejected the exposition:\n{stderr}\n---\n{text}"
    );
    samples_from_json(&String::from_utf8(out.stdout).unwrap())
}

/// Nasty label values: every character class the text format escapes or could trip on.
const NASTY: &[&str] = &[
    "plain",
    "",
    "quote\"inside",
    "\"",
    "back\\slash",
    "\\",
    "trailing\\",
    "\\n-not-a-newline",
    "new\nline",
    "\n",
    "tab\there",
    "braces{}and,commas=eq",
    "# not a comment",
    "héllo wörld",
    "日本語のラベル",
    "emoji 🦀🔥",
    "mixed \"\\\n\\\" end",
    " leading and trailing spaces ",
];

#[test]
fn exposition_parses_strictly_with_hostile_label_values() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::builder(dir.path()).application("om").open().unwrap();
    let help = "Help with \"quotes\", back\\slash,\nnewline and ünïcödé";
    let c = store.counter_family("requests", help, &["v"]).unwrap();
    let g = store
        .gauge_family("level", help, &["v"], GaugeMode::LiveAll)
        .unwrap();
    let h = store
        .register::<shmetrics_core::Histogram>(
            Opts::new("size", help)
                .label_names(["v"])
                .buckets(vec![1.0, 10.0]),
        )
        .unwrap();
    let f = store.counter_f64_family("seconds", help, &["v"]).unwrap();
    for (i, v) in NASTY.iter().enumerate() {
        c.labels(&[v]).inc_by(i as u64 + 1);
        g.labels(&[v]).set(i as f64 - 0.5);
        h.labels(&[v]).observe(i as f64);
        f.labels(&[v]).inc_by(i as f64 * 0.25);
    }
    store.counter("plain", "No labels").unwrap().inc();
    let text = store.scrape().unwrap();
    assert!(text.ends_with("# EOF\n"));
    let samples = parse_openmetrics(&text);

    let pid = std::process::id().to_string();
    for (i, v) in NASTY.iter().enumerate() {
        let find = |name: &str, extra: &[(&str, &str)]| {
            samples
                .iter()
                .find(|s| {
                    s.name == name
                        && s.labels.iter().any(|(k, x)| k == "v" && x == v)
                        && extra
                            .iter()
                            .all(|(k, x)| s.labels.iter().any(|(a, b)| a == k && b == x))
                })
                .unwrap_or_else(|| panic!("no {name} sample for label value {v:?}"))
                .value
        };
        assert_eq!(find("requests_total", &[]), (i + 1) as f64, "{v:?}");
        assert_eq!(find("level", &[("pid", &pid)]), i as f64 - 0.5, "{v:?}");
        assert_eq!(find("size_count", &[]), 1.0, "{v:?}");
        assert_eq!(find("size_sum", &[]), i as f64, "{v:?}");
        assert_eq!(find("size_bucket", &[("le", "+Inf")]), 1.0, "{v:?}");
        assert_eq!(find("seconds_total", &[]), i as f64 * 0.25, "{v:?}");
    }
    let fam_help = samples
        .iter()
        .find(|s| s.family == "requests")
        .unwrap()
        .help
        .clone();
    assert_eq!(fam_help, help);
    assert!(
        samples
            .iter()
            .any(|s| s.name == "plain_total" && s.labels.is_empty() && s.value == 1.0)
    );
    // Self-metrics parse too.
    assert!(
        samples
            .iter()
            .any(|s| s.name == "shmetrics_live_files" && s.value == 1.0)
    );
    assert!(samples.iter().any(|s| s.family == "shmetrics_store_errors"));
}

#[test]
fn caller_metrics_share_the_exposition() {
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::registry::Registry;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.counter("jobs", "Jobs").unwrap().inc_by(5);
    let mut registry = Registry::default();
    let info: Gauge = Gauge::default();
    info.set(1);
    registry.register("build_info", "Build information", info);
    store.scrape_into(&mut registry).unwrap();
    let text = shmetrics_core::encode(&registry).unwrap();
    let samples = parse_openmetrics(&text);
    assert!(samples.iter().any(|s| s.name == "build_info" && s.value == 1.0));
    assert!(samples.iter().any(|s| s.name == "jobs_total" && s.value == 5.0));
}

/// One sample as the strict parser saw it.
#[derive(Debug, Clone)]
pub struct Sample {
    pub family: String,
    pub help: String,
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

fn samples_from_json(text: &str) -> Vec<Sample> {
    let v: serde_json::Value = serde_json::from_str(text).expect("parser output is JSON");
    v.as_array()
        .expect("array")
        .iter()
        .map(|o| Sample {
            family: o["family"].as_str().unwrap_or_default().to_string(),
            help: o["help"].as_str().unwrap_or_default().to_string(),
            name: o["name"].as_str().unwrap_or_default().to_string(),
            labels: o["labels"]
                .as_object()
                .expect("labels")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect(),
            value: o["value"].as_f64().unwrap_or(f64::NAN),
        })
        .collect()
}

/// Native histograms write `le` with the same rule as Python's `floatToGoString` (see
/// FORMAT.md), on the bounds where it differs from the shortest decimal: the exposition
/// parses strictly and every bucket keeps its exact bound.
#[test]
fn native_histogram_bounds_are_written_as_python_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let h = store
        .histogram(
            "awkward_seconds",
            "Awkward bounds",
            &[1e-9, 1e-5, 0.1 + 0.2, 1.0, 1e6, 1e20],
        )
        .unwrap();
    for v in [1e-10, 1e-6, 0.2, 0.3, 0.5, 5.0, 2e6, 1e21] {
        h.observe(v);
    }
    let text = store.scrape().unwrap();
    for (le, n) in [
        ("1e-09", 1),
        ("1e-05", 2),
        ("0.30000000000000004", 4),
        ("1.0", 5),
        ("1e+06", 6),
        ("1e+20", 7),
        ("+Inf", 8),
    ] {
        let line = format!("awkward_seconds_bucket{{le=\"{le}\"}} {n}\n");
        assert!(text.contains(&line), "missing {line:?} in\n{text}");
    }
    let parsed = parse_openmetrics(&text);
    let bounds: Vec<f64> = parsed
        .iter()
        .filter(|s| s.name == "awkward_seconds_bucket")
        .map(|s| {
            let le = &s.labels.iter().find(|(k, _)| k == "le").unwrap().1;
            le.parse::<f64>().unwrap()
        })
        .collect();
    assert_eq!(bounds, [1e-9, 1e-5, 0.1 + 0.2, 1.0, 1e6, 1e20, f64::INFINITY]);
}
