//! The Prometheus data model of a scrape (prometheus-client's `MetricFamily` messages),
//! and the Prometheus protobuf format written from it.

use prometheus_client::encoding::prometheus_protobuf::{
    self,
    prometheus_data_model::{LabelPair, Metric, MetricFamily, MetricType, Summary},
};
use prometheus_client::registry::Registry;
use prost::Message as _;

use crate::error::{Error, Result};
use crate::format::MetricType as StoredType;
use crate::read::snapshot::{MergedFamily, Snapshot, Value};

/// The families of `registry` (the caller's own metrics, if any) and of `snapshot`, in
/// prometheus-client's Prometheus data model. Summaries (Python's) keep their type here.
pub(crate) fn families(mut snapshot: Snapshot, mut registry: Registry) -> Result<Vec<MetricFamily>> {
    snapshot.raw_help = true;
    let (summaries, rest): (Vec<MergedFamily>, Vec<MergedFamily>) = std::mem::take(&mut snapshot.families)
        .into_iter()
        .partition(|f| f.metric_type == StoredType::Summary);
    snapshot.families = rest;
    registry.register_collector(Box::new(snapshot));
    let mut out = prometheus_protobuf::encode(&registry).map_err(|_| Error::Encode)?;
    out.extend(summaries.iter().map(summary_family));
    Ok(out)
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
/// is left out: Prometheus derives it from the sample count, as it does for Go's clients.
pub(crate) fn encode(mut families: Vec<MetricFamily>) -> Vec<u8> {
    let mut out = Vec::with_capacity(families.iter().map(|f| f.encoded_len() + 8).sum());
    for fam in &mut families {
        for m in &mut fam.metric {
            if let Some(h) = &mut m.histogram {
                h.bucket.retain(|b| b.upper_bound != f64::INFINITY);
            }
        }
        // Writing into a Vec cannot run out of room.
        let _ = fam.encode_length_delimited(&mut out);
    }
    out
}
