//! Scrape cost: merge and OpenMetrics encoding of W live writer files with S series each
//! (the same S series in every file, as workers of one service have), with a cold reader
//! (first scrape: open, map and parse every file) and a warm one (repeated scrape: values
//! only); and one live writer vs a directory where 2,000 writers came and went (folded into
//! the accumulator), with the same 50 series.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use shmetrics_benches::{builder, write_churn_series};
use shmetrics_core::{Reader, Snapshot};

fn encode(snapshot: Snapshot) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(snapshot));
    shmetrics_core::encode(&registry).unwrap()
}

fn matrix(c: &mut Criterion) {
    let mut g = c.benchmark_group("scrape");
    for writers in [1usize, 8, 64] {
        for series in [100usize, 1_000, 10_000] {
            let dir = tempfile::tempdir_in("/dev/shm")
                .or_else(|_| tempfile::tempdir())
                .unwrap();
            // Live writers: stores and families stay alive for the whole measurement.
            let mut keep = Vec::with_capacity(writers);
            for w in 0..writers {
                let store = builder(dir.path()).compact_on_open(false).open().unwrap();
                let fam = store
                    .counter_family("http_requests", "Requests", &["method", "path", "status"])
                    .unwrap();
                for i in 0..series {
                    fam.labels(&["GET", &format!("/route/{i}"), "200"])
                        .inc_by(w as u64 + 1);
                }
                keep.push((store, fam));
            }
            let id = format!("{writers}x{series}");
            let text = encode(Reader::new(dir.path()).unwrap().snapshot().unwrap());
            assert!(text.contains(r#"http_requests_total{method="GET",path="/route/0",status="200"}"#));
            let big = writers * series >= 100_000;
            g.sample_size(if big { 10 } else { 30 });
            g.bench_function(BenchmarkId::new("first", &id), |b| {
                b.iter(|| encode(Reader::new(dir.path()).unwrap().snapshot().unwrap()))
            });
            let mut warm = Reader::new(dir.path()).unwrap();
            warm.snapshot().unwrap();
            g.bench_function(BenchmarkId::new("repeated", &id), |b| {
                b.iter(|| encode(warm.snapshot().unwrap()))
            });
            drop(keep);
        }
    }
    g.finish();
}

fn churn(c: &mut Criterion) {
    let live_dir = tempfile::tempdir().unwrap();
    let live = builder(live_dir.path()).open().unwrap();
    write_churn_series(&live);

    let churn_dir = tempfile::tempdir().unwrap();
    for _ in 0..2000 {
        // Each writer's store folds its dead predecessor when it opens.
        let w = builder(churn_dir.path()).open().unwrap();
        write_churn_series(&w);
    }
    let scraper = builder(churn_dir.path()).open().unwrap();
    let files = std::fs::read_dir(churn_dir.path()).unwrap().count();
    assert!(files <= 3, "{files} files after churn");
    assert_eq!(
        scraper
            .snapshot()
            .unwrap()
            .counter("churn_requests", &[("route", "/route/0")]),
        Some(2000)
    );

    let mut g = c.benchmark_group("scrape_churn");
    g.bench_function("one_live_writer_50_series", |b| b.iter(|| live.scrape().unwrap()));
    g.bench_function("after_2000_dead_writers_50_series", |b| {
        b.iter(|| scraper.scrape().unwrap())
    });
    g.finish();
}

criterion_group!(benches, matrix, churn);
criterion_main!(benches);
