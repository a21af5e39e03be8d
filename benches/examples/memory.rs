//! Bytes per series in the files, and a worker's resident memory, beside Python's
//! `prometheus_client` multiprocess files for the same series:
//! `cargo run --release -p shmetrics-benches --example memory [SERIES]` (default 10,000)
//! prints a Markdown table (BENCHMARKS.md §13).
//!
//! Each kind is written by its own process (this program run again with `one KIND N`, or
//! Python), into a directory of its own: a family with one label, `N` series, each given a
//! value. A file's bytes are what it holds on `/dev/shm` (allocated blocks, which is what
//! tmpfs charges to memory), divided by `N`. The resident memory is `VmRSS` of the writing
//! process once its series exist, and how much it grew while they were made.
use std::path::Path;
use std::process::Command;

use shmetrics_core::{DEFAULT_BUCKETS, GaugeMode, NativeOpts, Opts, Store};

const KINDS: [&str; 4] = ["counter", "gauge", "histogram", "native"];

/// `VmRSS` of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// Bytes the files of `dir` hold (allocated blocks), and their apparent size.
fn dir_bytes(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut blocks = 0;
    let mut size = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".shm") || name.ends_with(".db") {
            let md = e.metadata().unwrap();
            blocks += md.blocks() * 512;
            size += md.len();
        }
    }
    (blocks, size)
}

/// In a child process: writes `n` series of `kind` into `dir`, prints the resident memory
/// before and after.
fn one(kind: &str, n: usize, dir: &str) {
    let before = rss();
    let store = Store::builder(dir).application("memory").open().unwrap();
    let values: Vec<String> = (0..n).map(|i| format!("/route/{i}")).collect();
    match kind {
        "counter" => {
            let f = store.counter_family("requests", "Requests", &["path"]).unwrap();
            for v in &values {
                f.labels(&[v]).inc();
            }
        }
        "gauge" => {
            let f = store
                .gauge_family("in_flight", "In flight", &["path"], GaugeMode::LiveSum)
                .unwrap();
            for v in &values {
                f.labels(&[v]).set(1.0);
            }
        }
        "histogram" => {
            let f = store
                .histogram_family("latency_seconds", "Latency", &["path"], &DEFAULT_BUCKETS)
                .unwrap();
            for v in &values {
                f.labels(&[v]).observe(0.1);
            }
        }
        "native" => {
            let f = store
                .register::<shmetrics_core::Histogram>(
                    Opts::new("latency_seconds", "Latency")
                        .label_names(["path"])
                        .native(NativeOpts::default()),
                )
                .unwrap();
            for v in &values {
                f.labels(&[v]).observe(0.1);
            }
        }
        other => panic!("unknown kind {other}"),
    }
    println!("{before} {}", rss());
    drop(store);
}

/// What Python writes for the same series, in its own process.
const PYTHON: &str = r#"
import os, sys, resource
from prometheus_client import Counter, Gauge, Histogram

def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

kind, n = sys.argv[1], int(sys.argv[2])
before = rss()
if kind == "counter":
    m = Counter("requests", "Requests", ["path"])
    for i in range(n):
        m.labels(f"/route/{i}").inc()
elif kind == "gauge":
    m = Gauge("in_flight", "In flight", ["path"], multiprocess_mode="livesum")
    for i in range(n):
        m.labels(f"/route/{i}").set(1)
else:
    m = Histogram("latency_seconds", "Latency", ["path"])
    for i in range(n):
        m.labels(f"/route/{i}").observe(0.1)
print(before, rss())
"#;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("one") {
        return one(&args[1], args[2].parse().unwrap(), &args[3]);
    }
    let n: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let me = std::env::current_exe().unwrap();
    println!(
        "| {n} series of | shmetrics bytes/series | Python bytes/series | shmetrics / Python | shmetrics worker RSS (growth) | Python worker RSS (growth) |"
    );
    println!("|---|---|---|---|---|---|");
    for kind in KINDS {
        let ours = tempfile::tempdir_in("/dev/shm").unwrap();
        let out = Command::new(&me)
            .args(["one", kind, &n.to_string(), ours.path().to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let (ours_rss0, ours_rss) = parse_pair(&out.stdout);
        let (ours_bytes, _) = dir_bytes(ours.path());

        let python = (kind != "native").then(|| {
            let dir = tempfile::tempdir_in("/dev/shm").unwrap();
            let out = Command::new("python3")
                .args(["-c", PYTHON, kind, &n.to_string()])
                .env("PROMETHEUS_MULTIPROC_DIR", dir.path())
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let (rss0, rss1) = parse_pair(&out.stdout);
            (dir_bytes(dir.path()).0, rss0, rss1)
        });
        let per = |b: u64| b as f64 / n as f64;
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        match python {
            Some((py_bytes, py0, py1)) => println!(
                "| {kind} | {:.0} | {:.0} | {:.2}x | {:.1} MiB (+{:.1}) | {:.1} MiB (+{:.1}) |",
                per(ours_bytes),
                per(py_bytes),
                per(ours_bytes) / per(py_bytes),
                mib(ours_rss),
                mib(ours_rss.saturating_sub(ours_rss0)),
                mib(py1),
                mib(py1.saturating_sub(py0)),
            ),
            None => println!(
                "| {kind} histogram | {:.0} | (no native histograms in Python's multiprocess mode) | | {:.1} MiB (+{:.1}) | |",
                per(ours_bytes),
                mib(ours_rss),
                mib(ours_rss.saturating_sub(ours_rss0)),
            ),
        }
    }
}

fn parse_pair(out: &[u8]) -> (u64, u64) {
    let text = String::from_utf8_lossy(out);
    let mut it = text.split_whitespace().map(|w| w.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}
