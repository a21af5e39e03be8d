//! Native histograms: one observation (native, classic, both) beside prometheus-client's
//! in-process classic and native histograms; a scrape of 64 writers x 1,000 native series
//! (protobuf) beside the same as classic histograms (OpenMetrics text); and the file bytes
//! a series takes (printed, and recorded in BENCHMARKS.md).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use prometheus_client::metrics::histogram::{Histogram as PcHistogram, NativeHistogramConfig};
use prometheus_client::registry::Registry;
use shmetrics_benches::builder;
use shmetrics_core::{DEFAULT_BUCKETS, Format, Histogram, NativeOpts, Opts, Reader, Store};

/// Latency-like observations: 1 ms to about 1 s, spread log-uniformly (a fixed sequence).
fn latencies() -> Vec<f64> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            1e-3 * 1000f64.powf((x >> 11) as f64 / (1u64 << 53) as f64)
        })
        .collect()
}

fn store_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap()
}

fn classic(store: &Store, name: &str) -> shmetrics_core::Family<Histogram> {
    store
        .register::<Histogram>(
            Opts::new(name, "Latency")
                .label_names(["route"])
                .buckets(DEFAULT_BUCKETS),
        )
        .unwrap()
}

fn native(store: &Store, name: &str) -> shmetrics_core::Family<Histogram> {
    store
        .register::<Histogram>(
            Opts::new(name, "Latency")
                .label_names(["route"])
                .native(NativeOpts::default()),
        )
        .unwrap()
}

fn observe(c: &mut Criterion) {
    let dir = store_dir();
    let store = builder(dir.path()).open().unwrap();
    let values = latencies();
    let both = store
        .register::<Histogram>(
            Opts::new("both_seconds", "Latency")
                .label_names(["route"])
                .native(NativeOpts::default())
                .buckets(DEFAULT_BUCKETS),
        )
        .unwrap();
    let handles = [
        (
            "shmetrics_classic",
            classic(&store, "classic_seconds").labels(&["/a"]).clone(),
        ),
        (
            "shmetrics_native",
            native(&store, "native_seconds").labels(&["/a"]).clone(),
        ),
        ("shmetrics_classic_and_native", both.labels(&["/a"]).clone()),
    ];
    let mut g = c.benchmark_group("histogram_observe");
    for (name, h) in &handles {
        // Every bucket the sequence needs exists before the measurement.
        for v in &values {
            h.observe(*v);
        }
        let mut i = 0;
        g.bench_function(*name, |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(h).observe(black_box(values[i]))
            })
        });
    }
    let pc_classic = PcHistogram::new(DEFAULT_BUCKETS);
    let pc_native = PcHistogram::new_native(NativeHistogramConfig::default());
    for (name, h) in [
        ("prometheus_client_classic", &pc_classic),
        ("prometheus_client_native", &pc_native),
    ] {
        let mut i = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(h).observe(black_box(values[i]))
            })
        });
    }
    g.finish();
}

/// 64 live writers with 1,000 series each, native or classic, every series observed with
/// the whole latency sequence (about 20 native buckets used at schema 3... see `bytes`).
fn writers(dir: &std::path::Path, native_buckets: bool) -> Vec<(Store, shmetrics_core::Family<Histogram>)> {
    let values = latencies();
    (0..64)
        .map(|_| {
            let store = builder(dir).compact_on_open(false).open().unwrap();
            let fam = if native_buckets {
                native(&store, "latency_seconds")
            } else {
                classic(&store, "latency_seconds")
            };
            for s in 0..1000 {
                let h = fam.labels(&[&format!("/route/{s}")]);
                for v in values.iter().skip(s % 7).step_by(41) {
                    h.observe(*v);
                }
            }
            (store, fam)
        })
        .collect()
}

fn scrape(c: &mut Criterion) {
    let mut g = c.benchmark_group("scrape_64x1000_histograms");
    g.sample_size(10);
    for (name, native_buckets, format) in [
        ("native_protobuf", true, Format::Protobuf),
        ("classic_openmetrics", false, Format::OpenMetrics),
        ("classic_protobuf", false, Format::Protobuf),
    ] {
        let dir = store_dir();
        let keep = writers(dir.path(), native_buckets);
        let mut warm = Reader::new(dir.path()).unwrap();
        let body = warm
            .snapshot()
            .unwrap()
            .encode_as(format, Registry::default())
            .unwrap();
        assert!(body.len() > 64_000);
        g.bench_function(BenchmarkId::new("repeated", name), |b| {
            b.iter(|| {
                warm.snapshot()
                    .unwrap()
                    .encode_as(format, Registry::default())
                    .unwrap()
            })
        });
        drop(keep);
    }
    g.finish();
}

/// File bytes per series: 1,000 series of each kind in a file of their own, the used part
/// of the file (records and value slots) divided by the series. Each series gets 20
/// observations in 20 consecutive buckets of schema 3 (about 50 to 280 ms), starting at 16
/// different places (series `s` at bucket `s mod 16` of a chunk): the chunks' alignment
/// averaged out.
fn bytes(_c: &mut Criterion) {
    let per_series = |native_buckets: bool| -> f64 {
        let dir = store_dir();
        let store = builder(dir.path()).open().unwrap();
        let fam = if native_buckets {
            native(&store, "latency_seconds")
        } else {
            classic(&store, "latency_seconds")
        };
        let empty = used(&store);
        for s in 0..1000u32 {
            let h = fam.labels(&[&format!("/route/{s}")]);
            for v in twenty(s % 16) {
                h.observe(v);
            }
        }
        (used(&store) - empty) as f64 / 1000.0
    };
    let classic_bytes = per_series(false);
    let native_bytes = per_series(true);
    let snap_dir = store_dir();
    let store = builder(snap_dir.path()).open().unwrap();
    let h = native(&store, "check_seconds");
    for v in twenty(0) {
        h.labels(&["/a"]).observe(v);
    }
    let snap = store.snapshot().unwrap();
    let n = snap
        .histogram("check_seconds", &[("route", "/a")])
        .unwrap()
        .native
        .clone()
        .unwrap();
    eprintln!(
        "file bytes per series: classic (12 buckets) {classic_bytes:.0}, native ({} buckets used) {native_bytes:.0} ({:.2}x)",
        n.positive.len(),
        native_bytes / classic_bytes
    );
}

/// One observation in each of 20 consecutive buckets of schema 3, the first `shift`
/// buckets after the one of 50 ms.
fn twenty(shift: u32) -> impl Iterator<Item = f64> {
    (0..20).map(move |k| 0.05 * (f64::from(k + shift) / 8.0).exp2() * 1.01)
}

/// Bytes of a store's own file in use (its header's `used` word).
fn used(store: &Store) -> u64 {
    let b = std::fs::read(store.file_path().unwrap()).unwrap();
    u64::from_le_bytes(b[16..24].try_into().unwrap())
}

criterion_group!(benches, observe, scrape, bytes);
criterion_main!(benches);
