//! Process metrics: one sample of `/proc/self` written into the store (the service's and
//! the worker's series), what each worker's sampling thread does once per interval (1 s
//! by default), beside reading `/proc/self/stat` alone with procfs: the floor of any
//! sampler of these values.

use criterion::{Criterion, criterion_group, criterion_main};

fn process(c: &mut Criterion) {
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let store = shmetrics_benches::builder(dir.path())
        .worker_id(0)
        .open()
        .unwrap();
    let sampler = shmetrics_core::process::ProcessMetrics::builder(&store)
        .per_worker(true)
        .interval(std::time::Duration::from_secs(3600))
        .start()
        .unwrap();
    let mut g = c.benchmark_group("process");
    g.bench_function("sample_service_and_worker", |b| b.iter(|| sampler.sample_now()));
    g.bench_function("procfs_stat_only", |b| {
        b.iter(|| procfs::process::Process::myself().unwrap().stat().unwrap())
    });
    g.finish();
}

criterion_group!(benches, process);
criterion_main!(benches);
