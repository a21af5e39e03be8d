//! The `scrape` tool, run as a real process on real directories.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use shmetrics_testing::ensure_python_prometheus_client;

/// The `scrape` tool, built by cargo for this test.
fn scrape_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_scrape"))
}

fn scrape(args: &[&str]) -> Output {
    Command::new(scrape_bin())
        .args(args)
        .env_remove(shmetrics_core::ENV_DIR)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn python_helper() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../metrics-core/tests/python_multiprocess.py")
}

/// Families of an exposition, as Python's strict OpenMetrics parser reads it.
fn parse_strict(text: &str) -> serde_json::Value {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    let out = Command::new("python3")
        .arg(python_helper())
        .arg("parse")
        .arg(file.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn prints_a_mixed_directory() {
    ensure_python_prometheus_client();
    let dir = tempfile::tempdir().unwrap();
    // A Python worker that has exited, and a live shmetrics store.
    let status = Command::new("python3")
        .arg(python_helper())
        .args(["worker", "0"])
        .env(shmetrics_core::ENV_DIR, dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let store = shmetrics_core::Store::open(dir.path()).unwrap();
    store.counter("native_jobs", "Jobs").unwrap().inc_by(7);
    std::fs::write(dir.path().join("counter_99.db"), b"garbage").unwrap();

    let out = scrape(&[dir.path().to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.ends_with("# EOF\n"));
    assert!(text.contains("native_jobs_total 7\n"), "{text}");
    assert!(text.contains("jobs_total 10\n"), "{text}");
    assert!(text.contains("shmetrics_corrupt_files 1.0\n"), "{text}");
    let parsed = parse_strict(&text);
    assert_eq!(parsed["payload_bytes"]["type"], "summary");
    assert_eq!(parsed["latency_seconds"]["type"], "histogram");
    // The skipped file is named on stderr.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("counter_99.db"), "{err}");

    let out = scrape(&["--without-self-metrics", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("shmetrics_"));

    // The other formats, each read back by its own parser.
    let d = dir.path().to_str().unwrap();
    let out = scrape(&["--format", "text", d]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("# TYPE native_jobs_total counter\nnative_jobs_total 7\n"),
        "{text}"
    );
    assert!(!text.contains("# EOF"));
    let parsed = shmetrics_testing::expositions::parse_text(&[("text", &text)]);
    let families = parsed.into_iter().next().unwrap().unwrap();
    assert!(
        families
            .iter()
            .any(|f| f.name == "native_jobs" && f.ty == "counter")
    );
    let out = scrape(&["--format", "protobuf", d]);
    assert_eq!(out.status.code(), Some(0));
    let families = shmetrics_testing::expositions::parse_protobuf(&out.stdout).unwrap();
    assert!(
        families
            .iter()
            .any(|f| f.name == "native_jobs" && f.ty == "counter")
    );
    let out = scrape(&["--format", "json", d]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown format"));
}

#[test]
fn missing_directory_is_exit_code_2() {
    let out = scrape(&["/nonexistent/metrics/dir"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/metrics/dir: does not exist"), "{err}");

    let out = scrape(&[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PROMETHEUS_MULTIPROC_DIR is not set") && err.contains("usage:"),
        "{err}"
    );

    let out = scrape(&["--bogus"]);
    assert_eq!(out.status.code(), Some(2));
}
