//! Scrape cost: one live writer vs a directory where 2,000 writers came and went (folded
//! into the accumulator), with the same 50 series (issue: worker churn).

use criterion::{Criterion, criterion_group, criterion_main};
use shmetrics_benches::{builder, write_churn_series};

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

criterion_group!(benches, churn);
criterion_main!(benches);
