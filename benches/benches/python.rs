//! Scrape of a directory written by Python's `prometheus_client` in multiprocess mode:
//! 1,000 files of 100 entries (250 workers, each with a counter, a `gauge_all`, a
//! `gauge_livesum` and a histogram file), merged and encoded as OpenMetrics text by
//! shmetrics (a cold reader, as Python's collector is on every scrape, and a warm one)
//! and by Python's own `MultiProcessCollector` + `generate_latest` (timed inside the
//! Python process, interpreter start-up excluded), side by side in one run.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use prometheus_client::registry::Registry;
use shmetrics_core::Reader;

const FILES: usize = 1_000;
const SERIES: usize = 100;

fn helper() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../metrics-core/tests/python_multiprocess.py")
}

fn scrape(reader: &mut Reader) -> String {
    reader.snapshot().unwrap().encode(Registry::default()).unwrap()
}

fn python_dir(c: &mut Criterion) {
    shmetrics_testing::ensure_python_prometheus_client();
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let status = Command::new("python3")
        .arg(helper())
        .args([
            "generate",
            dir.path().to_str().unwrap(),
            &FILES.to_string(),
            &SERIES.to_string(),
        ])
        .status()
        .unwrap();
    assert!(status.success(), "generating the Python directory failed");
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(files, FILES);
    let check = Reader::new(dir.path()).unwrap().snapshot().unwrap();
    assert_eq!(check.stats().python_files, FILES as u64);
    assert_eq!(check.stats().corrupt_files, 0);

    let mut g = c.benchmark_group("python_1000x100");
    g.sample_size(20);
    g.bench_function("shmetrics_first", |b| {
        b.iter(|| scrape(&mut Reader::new(dir.path()).unwrap()))
    });
    let mut warm = Reader::new(dir.path()).unwrap();
    scrape(&mut warm);
    g.bench_function("shmetrics_repeated", |b| b.iter(|| scrape(&mut warm)));
    g.bench_function("shmetrics_snapshot_only", |b| b.iter(|| warm.snapshot().unwrap()));
    // About a second per Python scrape: one iteration per sample, ten samples.
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    g.warm_up_time(Duration::from_millis(500));
    g.bench_function("prometheus_client", |b| {
        b.iter_custom(|iters| {
            let out = Command::new("python3")
                .arg(helper())
                .args(["time", dir.path().to_str().unwrap(), &iters.to_string()])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let secs: f64 = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| l.parse::<f64>().unwrap())
                .sum();
            Duration::from_secs_f64(secs)
        })
    });
    g.finish();
}

criterion_group!(benches, python_dir);
criterion_main!(benches);
