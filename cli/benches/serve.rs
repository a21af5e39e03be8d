//! `shmetrics serve` against Python's own exporter, over HTTP, on one directory written by
//! Python's `prometheus_client` in multiprocess mode (1,000 files of 100 entries: 250
//! workers, each with a counter, a `gauge_all`, a `gauge_livesum` and a histogram file).
//! Python serves it with `start_http_server` and a registry holding a
//! `MultiProcessCollector`, as a multiprocess deployment does; both answer the same
//! `GET /metrics`, sent by the same client on a fresh connection each time, in one run.
//!
//! Then `shmetrics serve` on a directory after 2,000 short-lived Python writers, folded by
//! `shmetrics compact --python`, beside one with a single live writer of the same metrics.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use shmetrics_testing::free_port;

const FILES: usize = 1_000;
const SERIES: usize = 100;

/// A server process, stopped when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The body of `GET /metrics` on `port`, once the server answers 200.
fn scrape(port: u16) -> Vec<u8> {
    let (status, _, body) =
        shmetrics_testing::http_request(([127, 0, 0, 1], port).into(), "GET", "/metrics", &[]);
    assert_eq!(status, 200);
    body
}

/// `shmetrics serve` with `dirs` (its `--dir` arguments) on `port`.
fn shmetrics_serve(dirs: &[&str], port: u16) -> Server {
    Server(
        Command::new(env!("CARGO_BIN_EXE_shmetrics"))
            .arg("serve")
            .args(dirs)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "error")
            .env_remove("METRICS_AUTH_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Waits until `GET path` on `port` answers 200.
fn wait_ready(port: u16, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while shmetrics_testing::try_http_request(([127, 0, 0, 1], port).into(), "GET", path, &[])
        .map_or(true, |(s, ..)| s != 200)
    {
        assert!(
            Instant::now() < deadline,
            "the server on {port} never answered {path}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn serve(c: &mut Criterion) {
    shmetrics_testing::ensure_python_prometheus_client();
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("../metrics-core/tests/python_multiprocess.py");
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let d = dir.path().to_str().unwrap();
    let ok = Command::new("python3")
        .arg(&helper)
        .args(["generate", d, &FILES.to_string(), &SERIES.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "generating the Python directory failed");

    let ours_port = free_port();
    let _ours = shmetrics_serve(&["--dir", d], ours_port);
    let py_port = free_port();
    let script = format!(
        "import time\n\
         from prometheus_client import CollectorRegistry, start_http_server, multiprocess\n\
         r = CollectorRegistry()\n\
         multiprocess.MultiProcessCollector(r)\n\
         start_http_server({py_port}, addr='127.0.0.1', registry=r)\n\
         time.sleep(3600)\n"
    );
    let _python = Server(
        Command::new("python3")
            .args(["-c", &script])
            .env("PROMETHEUS_MULTIPROC_DIR", d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_ready(ours_port, "/metrics");
    wait_ready(py_port, "/metrics");
    // Both serve the whole directory.
    let (a, b) = (scrape(ours_port), scrape(py_port));
    assert!(
        a.len() > 1_000_000 && b.len() > 1_000_000,
        "bodies of {} and {} bytes",
        a.len(),
        b.len()
    );

    let mut g = c.benchmark_group("serve_http_python_1000x100");
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    g.warm_up_time(Duration::from_millis(500));
    g.bench_function("shmetrics_serve", |bch| bch.iter(|| scrape(ours_port)));
    g.bench_function("prometheus_client_start_http_server", |bch| {
        bch.iter(|| scrape(py_port))
    });
    g.finish();
}

/// The scrape of a directory that 2,000 Python writers went through (folded), and of one
/// with a single live writer of the same families.
fn after_churn(c: &mut Criterion) {
    let churned = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let one = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    shmetrics_testing::python_churn(churned.path(), 2000, 8, 0);
    let ok = Command::new(env!("CARGO_BIN_EXE_shmetrics"))
        .args(["compact", "--python", churned.path().to_str().unwrap()])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "shmetrics compact --python failed");
    let mut writer = Command::new("python3")
        .arg(shmetrics_testing::python_script("churn.py"))
        .args(["one", one.path().to_str().unwrap()])
        .env("PROMETHEUS_MULTIPROC_DIR", one.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(writer.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("ready"), "{line:?}");
    let _writer = Server(writer);
    let port = free_port();
    let churned_dir = format!("churned={}", churned.path().display());
    let one_dir = format!("one={}", one.path().display());
    let _ours = shmetrics_serve(&["--dir", &churned_dir, "--dir", &one_dir], port);
    let get = |path: &str| {
        let (status, _, body) =
            shmetrics_testing::http_request(([127, 0, 0, 1], port).into(), "GET", path, &[]);
        assert_eq!(status, 200);
        body
    };
    wait_ready(port, "/metrics/one");
    let folded = String::from_utf8(get("/metrics/churned")).unwrap();
    assert!(
        folded.contains("churn_jobs_total{queue=\"sms\"} 2000"),
        "{folded}"
    );
    let mut g = c.benchmark_group("serve_http_after_python_churn");
    g.bench_function("folded_2000_writers", |bch| bch.iter(|| get("/metrics/churned")));
    g.bench_function("one_live_writer", |bch| bch.iter(|| get("/metrics/one")));
    g.finish();
}

criterion_group!(benches, serve, after_churn);
criterion_main!(benches);
