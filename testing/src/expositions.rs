//! Every exposition format read back by its own parser: OpenMetrics by Python
//! `prometheus_client`'s strict OpenMetrics parser, the Prometheus text format 0.0.4 by
//! Python's 0.0.4 parser (and `promtool check metrics`, which lints it), protobuf decoded
//! with prometheus-client's generated `MetricFamily` messages. All three give the same
//! [`Family`] shape, so a test can compare what each format carried.

use std::io::Write;
use std::process::{Command, Stdio};

pub use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::LabelPair;
use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::{MetricFamily, MetricType};
use prost::Message;

/// One family as a parser saw it: its name (a counter's without `_total`, as OpenMetrics
/// names it), its type (`counter`, `gauge`, `histogram`, `summary`, `unknown`), and its
/// samples: (sample name, labels sorted by name, value). Bucket bounds (`le`) are kept
/// as the text carried them; compare them with [`Family::normalized`].
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    pub name: String,
    pub ty: String,
    pub samples: Vec<Sample>,
}

/// (sample name, labels sorted by name, value).
pub type Sample = (String, Vec<(String, String)>, f64);

/// A sample in comparable form: (sample name, labels, value as text).
pub type Normalized = (String, Vec<(String, String)>, String);

impl Family {
    /// The samples sorted, `le` and `quantile` values rewritten as the float they name,
    /// NaN values as a marker: for comparing formats.
    pub fn normalized(&self) -> Vec<Normalized> {
        let mut out: Vec<_> = self
            .samples
            .iter()
            .map(|(n, labels, v)| {
                let labels = labels
                    .iter()
                    .map(|(k, val)| match k.as_str() {
                        "le" | "quantile" => (k.clone(), format!("{:?}", parse_float(val))),
                        _ => (k.clone(), val.clone()),
                    })
                    .collect();
                let v = if v.is_nan() {
                    "NaN".to_string()
                } else {
                    format!("{v:?}")
                };
                (n.clone(), labels, v)
            })
            .collect();
        out.sort();
        out
    }
}

fn parse_float(s: &str) -> f64 {
    match s {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().unwrap_or(f64::NAN),
    }
}

/// Reads the families of OpenMetrics and 0.0.4 text bodies with Python's parsers, in one
/// Python process: `(format, body)` with format `openmetrics` or `text`. Each result is
/// the parser's families, or its error message.
pub fn parse_text(items: &[(&str, &str)]) -> Vec<Result<Vec<Family>, String>> {
    crate::ensure_python_prometheus_client();
    let input = serde_json::Value::Array(
        items
            .iter()
            .map(|(f, b)| serde_json::json!({"format": f, "body": b}))
            .collect(),
    );
    let mut child = Command::new("python3")
        .args(["-c", PARSE_PY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    parsed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| match r.get("error") {
            Some(e) => Err(e.as_str().unwrap_or_default().to_string()),
            None => Ok(r["families"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| Family {
                    name: f["name"].as_str().unwrap().to_string(),
                    ty: f["type"].as_str().unwrap().to_string(),
                    samples: f["samples"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| {
                            let mut labels: Vec<(String, String)> = s[1]
                                .as_object()
                                .unwrap()
                                .iter()
                                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                                .collect();
                            labels.sort();
                            (
                                s[0].as_str().unwrap().to_string(),
                                labels,
                                parse_float(s[2].as_str().unwrap()),
                            )
                        })
                        .collect(),
                })
                .collect()),
        })
        .collect()
}

const PARSE_PY: &str = r#"
import json, math, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
from prometheus_client.parser import text_string_to_metric_families as text
def val(v):
    if math.isnan(v): return "NaN"
    if math.isinf(v): return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))
out = []
for item in json.load(sys.stdin):
    try:
        parse = om if item["format"] == "openmetrics" else text
        fams = [{"name": f.name, "type": f.type,
                 "samples": [[s.name, s.labels, val(s.value)] for s in f.samples]}
                for f in parse(item["body"])]
        out.append({"families": fams})
    except Exception as e:
        out.append({"error": f"{type(e).__name__}: {e}"})
json.dump(out, sys.stdout)
"#;

/// Decodes a protobuf exposition (length-delimited `MetricFamily` messages) into the same
/// shape as the text parsers give: a classic histogram's `+Inf` bucket from its count, a
/// counter family named without `_total`.
pub fn parse_protobuf(mut body: &[u8]) -> Result<Vec<Family>, String> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let fam = MetricFamily::decode_length_delimited(&mut body).map_err(|e| e.to_string())?;
        out.push(family_of(&fam));
    }
    Ok(out)
}

/// Decodes a protobuf exposition into prometheus-client's messages, as they came.
pub fn decode_protobuf(mut body: &[u8]) -> Result<Vec<MetricFamily>, String> {
    let mut out = Vec::new();
    while !body.is_empty() {
        out.push(MetricFamily::decode_length_delimited(&mut body).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

fn family_of(fam: &MetricFamily) -> Family {
    let ty = MetricType::try_from(fam.r#type).unwrap_or(MetricType::Untyped);
    let name = match ty {
        MetricType::Counter => fam.name.strip_suffix("_total").unwrap_or(&fam.name).to_string(),
        _ => fam.name.clone(),
    };
    let mut samples = Vec::new();
    for m in &fam.metric {
        let mut labels: Vec<(String, String)> = m
            .label
            .iter()
            .map(|l| (l.name.clone(), l.value.clone()))
            .collect();
        labels.sort();
        let with = |extra: (&str, String)| {
            let mut l = labels.clone();
            l.push((extra.0.to_string(), extra.1));
            l.sort();
            l
        };
        if let Some(c) = &m.counter {
            samples.push((format!("{name}_total"), labels.clone(), c.value));
        } else if let Some(g) = &m.gauge {
            samples.push((name.clone(), labels.clone(), g.value));
        } else if let Some(u) = &m.untyped {
            samples.push((name.clone(), labels.clone(), u.value));
        } else if let Some(h) = &m.histogram {
            for b in h.bucket.iter().filter(|b| b.upper_bound != f64::INFINITY) {
                samples.push((
                    format!("{name}_bucket"),
                    with(("le", format!("{:?}", b.upper_bound))),
                    b.cumulative_count as f64,
                ));
            }
            samples.push((
                format!("{name}_bucket"),
                with(("le", "+Inf".into())),
                h.sample_count as f64,
            ));
            samples.push((format!("{name}_count"), labels.clone(), h.sample_count as f64));
            samples.push((format!("{name}_sum"), labels.clone(), h.sample_sum));
        } else if let Some(s) = &m.summary {
            samples.push((format!("{name}_count"), labels.clone(), s.sample_count as f64));
            samples.push((format!("{name}_sum"), labels.clone(), s.sample_sum));
        }
    }
    let ty = match ty {
        MetricType::Counter => "counter",
        MetricType::Gauge => "gauge",
        MetricType::Histogram | MetricType::GaugeHistogram => "histogram",
        MetricType::Summary => "summary",
        MetricType::Untyped => "unknown",
    };
    Family {
        name,
        ty: ty.into(),
        samples,
    }
}

/// Runs `promtool check metrics` (Prometheus' own 0.0.4 parser and linter) on `text`:
/// `Err` with what it printed if it finds anything. Panics if `promtool` is not installed
/// (Debian: `apt-get install prometheus`).
pub fn promtool_check_metrics(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is needed: install Prometheus (Debian: apt-get install prometheus)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("promtool check metrics ({}): {said}", out.status))
    }
}

/// `body` gunzipped.
pub fn gunzip(body: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut out)
        .expect("a gzip body");
    out
}
