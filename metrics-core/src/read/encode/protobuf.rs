//! The Prometheus data model of a scrape (prometheus-client's `MetricFamily` messages),
//! and the Prometheus protobuf format written from it.

use prometheus_client::encoding::prometheus_protobuf::{
    self,
    prometheus_data_model::{
        Exemplar as ProtoExemplar, LabelPair, Metric, MetricFamily, MetricType, Summary,
    },
};
use prometheus_client::registry::Registry;
use prost::Message as _;

use std::collections::HashMap;
use std::time::UNIX_EPOCH;

use crate::error::{Error, Result};
use crate::format::MetricType as StoredType;
use crate::read::snapshot::{Exemplar, MergedFamily, Snapshot, Value};

/// The families of `registry` (the caller's own metrics, if any) and of `snapshot`, in
/// prometheus-client's Prometheus data model. Summaries (Python's) keep their type here.
pub(crate) fn families(mut snapshot: Snapshot, mut registry: Registry) -> Result<Vec<MetricFamily>> {
    snapshot.raw_help = true;
    let (summaries, rest): (Vec<MergedFamily>, Vec<MergedFamily>) = std::mem::take(&mut snapshot.families)
        .into_iter()
        .partition(|f| f.metric_type == StoredType::Summary);
    snapshot.families = rest;
    // prometheus-client takes exemplars only from its own metric types: they are put into
    // the messages afterwards, series by series (the collector writes them in order).
    let exemplars: HashMap<String, Vec<SeriesExemplars>> = snapshot
        .families
        .iter()
        .filter(|f| f.series.iter().any(|s| !s.exemplars.is_empty()))
        .map(|f| {
            let name = match f.metric_type {
                StoredType::Counter | StoredType::CounterF64 => format!("{}_total", f.name),
                _ => f.name.clone(),
            };
            let series = f.series.iter().map(|s| {
                let native_only = matches!(&s.value, Value::Histogram(h) if h.buckets.is_empty());
                (native_only, s.exemplars.clone())
            });
            (name, series.collect())
        })
        .collect();
    registry.register_collector(Box::new(snapshot));
    let mut out = prometheus_protobuf::encode(&registry).map_err(|_| Error::Encode)?;
    for fam in &mut out {
        if let Some(series) = exemplars.get(&fam.name) {
            for (m, (native_only, ex)) in fam.metric.iter_mut().zip(series) {
                attach(m, ex, *native_only);
            }
        }
    }
    out.extend(summaries.iter().map(summary_family));
    Ok(out)
}

/// Whether a series is a histogram with native buckets only, and its exemplars.
type SeriesExemplars = (bool, Vec<(usize, Exemplar)>);

/// Puts a series' exemplars into its message: a counter's on the counter, a histogram's
/// on its classic buckets (on the histogram itself for one with native buckets only).
fn attach(m: &mut Metric, exemplars: &[(usize, Exemplar)], native_only: bool) {
    for (i, e) in exemplars {
        let t = e.timestamp.duration_since(UNIX_EPOCH).unwrap_or_default();
        let proto = ProtoExemplar {
            label: e
                .labels
                .iter()
                .map(|(n, v)| LabelPair {
                    name: n.clone(),
                    value: v.clone(),
                })
                .collect(),
            value: e.value,
            timestamp: Some(prost_types::Timestamp {
                seconds: t.as_secs() as i64,
                nanos: t.subsec_nanos() as i32,
            }),
        };
        if let Some(c) = &mut m.counter {
            c.exemplar = Some(proto);
        } else if let Some(h) = &mut m.histogram {
            match h.bucket.get_mut(*i) {
                Some(b) if !native_only => b.exemplar = Some(proto),
                _ => h.exemplars.push(proto),
            }
        }
    }
}

/// A Python summary (count and sum, no quantiles) as a `SUMMARY` family.
fn summary_family(fam: &MergedFamily) -> MetricFamily {
    let metric = fam
        .series
        .iter()
        .filter_map(|s| {
            let Value::Summary { count, sum } = s.value else {
                return None;
            };
            let label = s
                .label_names(fam)
                .iter()
                .zip(s.labels.iter())
                .map(|(n, v)| LabelPair {
                    name: n.clone(),
                    value: v.to_string(),
                })
                .collect();
            Some(Metric {
                label,
                summary: Some(Summary {
                    // Python counts observations in a float; it holds whole numbers.
                    sample_count: count.max(0.0) as u64,
                    sample_sum: sum,
                    ..Default::default()
                }),
                ..Default::default()
            })
        })
        .collect();
    MetricFamily {
        name: fam.name.clone(),
        help: fam.help.clone(),
        r#type: MetricType::Summary as i32,
        metric,
        ..Default::default()
    }
}

/// `families` as length-delimited protobuf messages. A classic histogram's `+Inf` bucket
/// is left out unless it carries an exemplar: Prometheus derives it from the sample count,
/// as it does for Go's clients (which also send it only for an exemplar).
pub(crate) fn encode(mut families: Vec<MetricFamily>) -> Vec<u8> {
    let mut out = Vec::with_capacity(families.iter().map(|f| f.encoded_len() + 8).sum());
    for fam in &mut families {
        for m in &mut fam.metric {
            if let Some(h) = &mut m.histogram {
                h.bucket
                    .retain(|b| b.upper_bound != f64::INFINITY || b.exemplar.is_some());
            }
        }
        // Writing into a Vec cannot run out of room.
        let _ = fam.encode_length_delimited(&mut out);
    }
    out
}
