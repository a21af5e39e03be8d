//! The Prometheus text format 0.0.4, written from prometheus-client's Prometheus data model
//! (the same `MetricFamily` messages the protobuf format sends). prometheus-client has no
//! encoder for it; this one is small on purpose and tested against Python's 0.0.4 parser and
//! `promtool check metrics`.
//!
//! What differs from OpenMetrics: a counter's family is named with its `_total`; no `# EOF`,
//! no `# UNIT`, no `_created` samples, no exemplars; help text escapes only `\` and line
//! feeds. Bucket bounds (`le`) are written as in the other formats
//! ([`format_bound`]): a series keeps its labels whichever format a scraper negotiates.

use std::fmt::Write as _;

use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::{
    LabelPair, Metric, MetricFamily, MetricType,
};

use crate::format::names::{format_bound, write_labels};

/// Writes `families` as Prometheus text 0.0.4. Families without samples are left out (a
/// 0.0.4 family needs at least one).
pub(crate) fn write(out: &mut String, families: &[MetricFamily]) {
    for fam in families.iter().filter(|f| !f.metric.is_empty()) {
        let ty = MetricType::try_from(fam.r#type).unwrap_or(MetricType::Untyped);
        let type_name = match ty {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram | MetricType::GaugeHistogram => "histogram",
            MetricType::Summary => "summary",
            MetricType::Untyped => "untyped",
        };
        if !fam.help.is_empty() {
            out.push_str("# HELP ");
            out.push_str(&fam.name);
            out.push(' ');
            escape_help(out, &fam.help);
            out.push('\n');
        }
        let _ = writeln!(out, "# TYPE {} {type_name}", fam.name);
        for m in &fam.metric {
            write_metric(out, &fam.name, m);
        }
    }
}

fn write_metric(out: &mut String, name: &str, m: &Metric) {
    if let Some(h) = &m.histogram {
        // `+Inf` is the count: an explicit +Inf bucket (or none, for a native-only
        // histogram) is written once, from the count.
        for b in h.bucket.iter().filter(|b| b.upper_bound != f64::INFINITY) {
            sample(out, name, "_bucket", &m.label, Some(&format_bound(b.upper_bound)));
            let _ = writeln!(out, "{}", b.cumulative_count);
        }
        sample(out, name, "_bucket", &m.label, Some("+Inf"));
        let _ = writeln!(out, "{}", h.sample_count);
        sample(out, name, "_sum", &m.label, None);
        value(out, h.sample_sum);
        sample(out, name, "_count", &m.label, None);
        let _ = writeln!(out, "{}", h.sample_count);
    } else if let Some(s) = &m.summary {
        for q in &s.quantile {
            let q_label = format_bound(q.quantile);
            let mut labels = m.label.clone();
            labels.push(LabelPair {
                name: "quantile".into(),
                value: q_label,
            });
            sample(out, name, "", &labels, None);
            value(out, q.value);
        }
        sample(out, name, "_sum", &m.label, None);
        value(out, s.sample_sum);
        sample(out, name, "_count", &m.label, None);
        let _ = writeln!(out, "{}", s.sample_count);
    } else {
        let v = match (&m.counter, &m.gauge, &m.untyped) {
            (Some(c), _, _) => c.value,
            (_, Some(g), _) => g.value,
            (_, _, Some(u)) => u.value,
            _ => return,
        };
        sample(out, name, "", &m.label, None);
        value(out, v);
    }
}

/// Writes `name` + `suffix` and the labels (`le` last, if given), then a space.
fn sample(out: &mut String, name: &str, suffix: &str, labels: &[LabelPair], le: Option<&str>) {
    out.push_str(name);
    out.push_str(suffix);
    let pairs = labels
        .iter()
        .map(|l| (l.name.as_str(), l.value.as_str()))
        .chain(le.map(|v| ("le", v)));
    write_labels(out, pairs);
    out.push(' ');
}

/// A sample value and the line's end: integers without a fraction, other values as
/// Prometheus writes floats (`+Inf`, `-Inf`, `NaN`).
fn value(out: &mut String, v: f64) {
    const EXACT: f64 = (1u64 << 53) as f64;
    if v.fract() == 0.0 && v.abs() < EXACT {
        let _ = writeln!(out, "{}", v as i64);
    } else {
        out.push_str(&format_bound(v));
        out.push('\n');
    }
}

/// Help text as 0.0.4 wants it: `\` and line feeds escaped, nothing else.
fn escape_help(out: &mut String, help: &str) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::{
        Bucket, Counter, Histogram,
    };

    use super::*;

    fn label(n: &str, v: &str) -> LabelPair {
        LabelPair {
            name: n.into(),
            value: v.into(),
        }
    }

    #[test]
    fn counters_histograms_and_escapes() {
        let families = vec![
            MetricFamily {
                name: "jobs_total".into(),
                help: "Jobs \"done\"\\\nsecond line".into(),
                r#type: MetricType::Counter as i32,
                metric: vec![Metric {
                    label: vec![label("queue", "a\"b\\c\nd")],
                    counter: Some(Counter {
                        value: 3.0,
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            },
            MetricFamily {
                name: "lat".into(),
                help: "Latency".into(),
                r#type: MetricType::Histogram as i32,
                metric: vec![Metric {
                    histogram: Some(Histogram {
                        sample_count: 3,
                        sample_sum: 0.75,
                        bucket: vec![
                            Bucket {
                                cumulative_count: 1,
                                upper_bound: 1.0,
                                ..Default::default()
                            },
                            Bucket {
                                cumulative_count: 3,
                                upper_bound: f64::INFINITY,
                                ..Default::default()
                            },
                        ],
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            },
            MetricFamily {
                name: "empty".into(),
                help: "No samples".into(),
                r#type: MetricType::Gauge as i32,
                ..Default::default()
            },
        ];
        let mut out = String::new();
        write(&mut out, &families);
        assert_eq!(
            out,
            "# HELP jobs_total Jobs \"done\"\\\\\\nsecond line\n\
             # TYPE jobs_total counter\n\
             jobs_total{queue=\"a\\\"b\\\\c\\nd\"} 3\n\
             # HELP lat Latency\n\
             # TYPE lat histogram\n\
             lat_bucket{le=\"1.0\"} 1\n\
             lat_bucket{le=\"+Inf\"} 3\n\
             lat_sum 0.75\n\
             lat_count 3\n"
        );
    }
}
