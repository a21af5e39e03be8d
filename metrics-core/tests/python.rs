//! Interop with Python's `prometheus_client` multiprocess files: real Python worker
//! processes write a directory; shmetrics' merge of it must equal Python's own
//! `MultiProcessCollector`, sample by sample (both parsed by Python's strict OpenMetrics
//! parser / collector, then compared here).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use prometheus_client::registry::Registry;
use serde_json::Value as Json;
use shmetrics_core::{GaugeMode, Opts, Reader, Store};
use shmetrics_testing::ensure_python_prometheus_client;

fn helper() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python_multiprocess.py")
}

/// Runs the helper with `args` (and `pythonpath` first on the module path), returns stdout.
fn python(args: &[&str], pythonpath: Option<&Path>) -> String {
    let mut cmd = Command::new("python3");
    cmd.arg(helper()).args(args);
    if let Some(p) = pythonpath {
        cmd.env("PYTHONPATH", p);
    }
    let out = cmd.output().expect("python3");
    assert!(
        out.status.success(),
        "python3 {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// A Python worker process that keeps its metrics files open until dropped.
struct PyWorker {
    child: Child,
    pid: u32,
}

impl PyWorker {
    fn start(dir: &Path, id: usize, pythonpath: Option<&Path>) -> PyWorker {
        PyWorker::spawn(dir, &["worker", &id.to_string()], pythonpath)
    }

    /// A process writing one of the helper's scenarios.
    fn scenario(dir: &Path, name: &str) -> PyWorker {
        PyWorker::spawn(dir, &["scenario", name], None)
    }

    fn spawn(dir: &Path, args: &[&str], pythonpath: Option<&Path>) -> PyWorker {
        let id = args.join(" ");
        let mut cmd = Command::new("python3");
        cmd.arg(helper())
            .args(args)
            .env("PROMETHEUS_MULTIPROC_DIR", dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(p) = pythonpath {
            cmd.env("PYTHONPATH", p);
        }
        let mut child = cmd.spawn().expect("python3 worker");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("worker output");
        assert!(line.starts_with("ready"), "worker {id} said {line:?}");
        let pid = child.id();
        PyWorker { child, pid }
    }

    /// Lets the worker exit normally and waits for it.
    fn finish(mut self) {
        drop(self.child.stdin.take());
        let status = self.child.wait().expect("wait");
        assert!(status.success());
    }

    /// SIGKILL, as an OOM kill would.
    fn kill(mut self) {
        self.child.kill().expect("kill");
        let _ = self.child.wait();
    }
}

impl Drop for PyWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// shmetrics' merge of `dir` (without its self-metrics), as Python's strict parser (of
/// the current client) reads it.
fn shmetrics_view(dir: &Path) -> Json {
    shmetrics_parsed(dir, &[])
}

/// shmetrics' exposition of `dir`, read by Python's strict parser, `le` strings as written.
fn shmetrics_served(dir: &Path) -> Json {
    shmetrics_parsed(dir, &["raw-le"])
}

/// shmetrics' exposition of `dir` (without its self-metrics), through the helper's
/// `parse` with `options`.
fn shmetrics_parsed(dir: &Path, options: &[&str]) -> Json {
    let text = Reader::new(dir)
        .unwrap()
        .snapshot()
        .unwrap()
        .without_self_metrics()
        .encode(Registry::default())
        .unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &text).unwrap();
    let mut args = vec!["parse", file.path().to_str().unwrap()];
    args.extend_from_slice(options);
    serde_json::from_str(&python(&args, None)).unwrap()
}

/// What Python serves for `dir` (its collector, then its exposition with the default
/// escaping, read back by its strict parser), `le` strings as written.
fn python_served(dir: &Path) -> Json {
    serde_json::from_str(&python(&["serve", dir.to_str().unwrap()], None)).unwrap()
}

fn python_view(dir: &Path, pythonpath: Option<&Path>) -> Json {
    serde_json::from_str(&python(&["collect", dir.to_str().unwrap()], pythonpath)).unwrap()
}

fn close(a: &Json, b: &Json) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs()),
        _ => a == b,
    }
}

/// Compares the two views family by family, sample by sample; panics with every
/// difference.
fn assert_same(ours: &Json, theirs: &Json) {
    let ours = ours.as_object().unwrap();
    let theirs = theirs.as_object().unwrap();
    let mut diffs = Vec::new();
    for (name, t) in theirs {
        let Some(o) = ours.get(name) else {
            diffs.push(format!("family {name} missing"));
            continue;
        };
        for field in ["type", "help"] {
            if o[field] != t[field] {
                diffs.push(format!(
                    "{name}: {field} {} here, {} in Python",
                    o[field], t[field]
                ));
            }
        }
        let key = |s: &Json| format!("{}{}", s[0], s[1]);
        let os: BTreeMap<String, &Json> = o["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (key(s), &s[2]))
            .collect();
        let ts: BTreeMap<String, &Json> = t["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (key(s), &s[2]))
            .collect();
        for (k, tv) in &ts {
            match os.get(k) {
                None => diffs.push(format!("{name}: sample {k} missing")),
                Some(ov) if !close(ov, tv) => diffs.push(format!("{name}: {k} = {ov} here, {tv} in Python")),
                _ => {}
            }
        }
        for k in os.keys().filter(|k| !ts.contains_key(*k)) {
            diffs.push(format!("{name}: extra sample {k}"));
        }
    }
    for name in ours.keys().filter(|n| !theirs.contains_key(*n)) {
        diffs.push(format!("extra family {name}"));
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

/// Compares every sample (name, labels, value) of the two views, whatever family it is in.
fn assert_same_samples(ours: &Json, theirs: &Json) {
    let flat = |v: &Json| -> BTreeMap<String, Json> {
        v.as_object()
            .unwrap()
            .values()
            .flat_map(|f| f["samples"].as_array().unwrap().iter())
            .map(|s| (format!("{}{}", s[0], s[1]), s[2].clone()))
            .collect()
    };
    let (o, t) = (flat(ours), flat(theirs));
    let mut diffs = Vec::new();
    for (k, tv) in &t {
        match o.get(k) {
            None => diffs.push(format!("sample {k} missing")),
            Some(ov) if !close(ov, tv) => diffs.push(format!("{k} = {ov} here, {tv} in Python")),
            _ => {}
        }
    }
    for k in o.keys().filter(|k| !t.contains_key(*k)) {
        diffs.push(format!("extra sample {k}"));
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

fn samples(view: &Json) -> usize {
    view.as_object()
        .unwrap()
        .values()
        .map(|f| f["samples"].as_array().unwrap().len())
        .sum()
}

/// Every type and gauge mode, awkward label values, three workers alive, one exited
/// normally and marked dead by its supervisor, one SIGKILLed and never marked.
#[test]
fn same_merge_as_python_collector() {
    ensure_python_prometheus_client();
    let dir = tempfile::tempdir().unwrap();
    // Started one after another: `mostrecent` gauges have a defined latest writer.
    let workers: Vec<PyWorker> = (0..5).map(|i| PyWorker::start(dir.path(), i, None)).collect();
    let mut workers = workers.into_iter();
    let (w0, w1, w2, w3, w4) = (
        workers.next().unwrap(),
        workers.next().unwrap(),
        workers.next().unwrap(),
        workers.next().unwrap(),
        workers.next().unwrap(),
    );
    let ours = shmetrics_view(dir.path());
    let theirs = python_view(dir.path(), None);
    assert_same(&ours, &theirs);
    assert!(samples(&theirs) > 100, "{} samples", samples(&theirs));
    assert_eq!(theirs.as_object().unwrap().len(), 17);

    let pid3 = w3.pid;
    w3.finish();
    python(
        &["mark-dead", dir.path().to_str().unwrap(), &pid3.to_string()],
        None,
    );
    w4.kill();
    let ours = shmetrics_view(dir.path());
    let theirs = python_view(dir.path(), None);
    assert_same(&ours, &theirs);
    // The worker marked dead left the live gauges; its counters still count.
    let livesum = ours["g_livesum"]["samples"].as_array().unwrap();
    let a = livesum.iter().find(|s| s[1]["kind"] == "a").unwrap();
    assert_eq!(a[2].as_f64(), Some(10.0 - 20.0 + 30.0 + 50.0));
    let s = Reader::new(dir.path()).unwrap().snapshot().unwrap();
    assert_eq!(s.counter("jobs", &[]), None, "Python counters are floats");
    assert_eq!(
        s.get("jobs", &[]),
        Some(&shmetrics_core::Value::CounterF64(
            10.0 + 20.0 + 30.0 + 40.0 + 50.0
        ))
    );
    assert_eq!(s.stats().corrupt_files, 0);
    assert_eq!(s.stats().python_skipped, 0);
    assert!(s.stats().python_files >= 5 * 4);
    drop((w0, w1, w2));
}

/// Files of prometheus_client 0.17 (no timestamp in entries) merge as that version's own
/// collector merges them.
#[test]
fn files_of_clients_before_0_18() {
    ensure_python_prometheus_client();
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("prometheus-client-0.17.1");
    if !cache.join("prometheus_client").is_dir() {
        let wheels = tempfile::tempdir().unwrap();
        let ok = Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "prometheus-client==0.17.1",
                "-d",
            ])
            .arg(wheels.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "pip download prometheus-client==0.17.1 failed (needs PyPI)");
        let wheel = std::fs::read_dir(wheels.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let tmp = cache.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        let ok = Command::new("python3")
            .args(["-m", "zipfile", "-e"])
            .arg(&wheel)
            .arg(&tmp)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot unpack {}", wheel.display());
        let _ = std::fs::rename(&tmp, &cache);
    }
    let old = Some(cache.as_path());
    let version = Command::new("python3")
        .args([
            "-c",
            "import prometheus_client.mmap_dict as m; print(hasattr(m, '_pack_two_doubles'))",
        ])
        .env("PYTHONPATH", &cache)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        "False",
        "0.17 layout expected"
    );
    let dir = tempfile::tempdir().unwrap();
    let workers: Vec<PyWorker> = (0..3).map(|i| PyWorker::start(dir.path(), i, old)).collect();
    let ours = shmetrics_view(dir.path());
    let theirs = python_view(dir.path(), old);
    assert_same(&ours, &theirs);
    assert!(samples(&theirs) > 60, "{} samples", samples(&theirs));
    assert!(
        !ours.as_object().unwrap().contains_key("g_mostrecent"),
        "0.17 has no mostrecent mode"
    );
    drop(workers);
}

/// A directory where Python workers and shmetrics processes write side by side: both
/// merge into one exposition, families of the same name add up.
#[test]
fn python_and_native_files_merge() {
    ensure_python_prometheus_client();
    let dir = tempfile::tempdir().unwrap();
    let py: Vec<PyWorker> = (0..2).map(|i| PyWorker::start(dir.path(), i, None)).collect();
    let store = Store::open(dir.path()).unwrap();
    // The same counter as Python's `requests` (integer here, float there).
    let requests = store
        .register::<shmetrics_core::Counter>(
            Opts::new("requests", "Requests").label_names(["method", "path"]),
        )
        .unwrap();
    requests.labels(&["GET", "plain"]).inc_by(100);
    requests.labels(&["DELETE", "/x"]).inc();
    // Labels in another order than Python's sorted ones.
    let g = store
        .register::<shmetrics_core::Gauge>(
            Opts::new("g_livesum", "Live sum")
                .label_names(["kind"])
                .mode(GaugeMode::LiveSum),
        )
        .unwrap();
    g.labels(&["a"]).set(1000.0);
    let mostrecent = store
        .register::<shmetrics_core::Gauge>(
            Opts::new("g_mostrecent", "Most recent")
                .label_names(["kind"])
                .mode(GaugeMode::MostRecent),
        )
        .unwrap();
    mostrecent.labels(&["b"]).set(-7.0); // later than any Python write
    store.counter("native_jobs", "Native only").unwrap().inc_by(3);
    // Declared differently from Python's `latency_seconds` histogram: Python's is left out.
    store
        .gauge("latency_seconds", "A gauge here", GaugeMode::Max)
        .unwrap()
        .set(1.0);

    let s = Reader::new(dir.path()).unwrap().snapshot().unwrap();
    use shmetrics_core::Value;
    // Python: worker 0 adds 1, worker 1 adds 2 for "plain".
    assert_eq!(
        s.get("requests", &[("method", "GET"), ("path", "plain")]),
        Some(&Value::CounterF64(103.0))
    );
    assert_eq!(
        s.get("requests", &[("method", "DELETE"), ("path", "/x")]),
        Some(&Value::CounterF64(1.0))
    );
    assert_eq!(
        s.get("requests", &[("method", "POST"), ("path", "/orders")]),
        Some(&Value::CounterF64(1.5))
    );
    assert_eq!(s.gauge("g_livesum", &[("kind", "a")]), Some(1000.0 + 10.0 - 20.0));
    assert_eq!(s.gauge("g_mostrecent", &[("kind", "b")]), Some(-7.0));
    assert_eq!(s.counter("native_jobs", &[]), Some(3));
    assert_eq!(s.get("jobs", &[]), Some(&Value::CounterF64(30.0)));
    assert_eq!(s.gauge("latency_seconds", &[]), Some(1.0));
    assert_eq!(s.stats().conflicts, 1);
    assert_eq!(
        s.family("payload_bytes").unwrap().metric_type,
        shmetrics_core::MetricType::Summary
    );

    // The whole exposition parses strictly and keeps the summary type.
    let text = store.scrape().unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &text).unwrap();
    let parsed: Json =
        serde_json::from_str(&python(&["parse", file.path().to_str().unwrap()], None)).unwrap();
    assert_eq!(parsed["payload_bytes"]["type"], "summary");
    assert_eq!(parsed["native_jobs"]["type"], "counter");
    assert_eq!(
        parsed["shmetrics_python_files"]["samples"][0][2].as_f64(),
        Some(s.stats().python_files as f64)
    );
    // Registered as a collector, a summary becomes two gauges with the same samples.
    let mut registry = Registry::default();
    store.scrape_into(&mut registry).unwrap();
    let text = shmetrics_core::encode(&registry).unwrap();
    std::fs::write(file.path(), &text).unwrap();
    let parsed: Json =
        serde_json::from_str(&python(&["parse", file.path().to_str().unwrap()], None)).unwrap();
    assert_eq!(parsed["payload_bytes_count"]["type"], "gauge");
    assert_eq!(
        parsed["payload_bytes_sum"]["samples"].as_array().unwrap().len(),
        1
    );
    drop(py);
}

fn write_entry(out: &mut Vec<u8>, key: &str, value: f64, ts: f64) {
    out.extend_from_slice(&(key.len() as i32).to_ne_bytes());
    out.extend_from_slice(key.as_bytes());
    out.resize(out.len() + 8 - (key.len() + 4) % 8, b' ');
    out.extend_from_slice(&value.to_ne_bytes());
    out.extend_from_slice(&ts.to_ne_bytes());
}

fn py_file(entries: &[(&str, f64)]) -> Vec<u8> {
    let mut body = vec![0u8; 8];
    for (k, v) in entries {
        write_entry(&mut body, k, *v, 0.0);
    }
    let used = body.len() as i32;
    body[..4].copy_from_slice(&used.to_ne_bytes());
    body.resize(body.len().max(4096), 0);
    body
}

/// Truncated, corrupt and foreign Python-named files are skipped and counted; the good
/// files are still served.
#[test]
fn corrupt_python_files_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let good = py_file(&[(r#"["jobs", "jobs_total", {}, "Jobs"]"#, 2.0)]);
    std::fs::write(dir.path().join("counter_1.db"), &good).unwrap();
    std::fs::write(dir.path().join("counter_2.db"), &good).unwrap();
    // Used length past the end of the file.
    let mut truncated = good.clone();
    truncated.truncate(20);
    std::fs::write(dir.path().join("counter_3.db"), &truncated).unwrap();
    // Random bytes.
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.path().join("gauge_all_4.db"), &noise).unwrap();
    // A key that is not prometheus_client's.
    std::fs::write(dir.path().join("counter_5.db"), py_file(&[("{not json", 1.0)])).unwrap();
    // An entry whose length runs past the used length.
    let mut overrun = good.clone();
    overrun[8..12].copy_from_slice(&1000i32.to_ne_bytes());
    std::fs::write(dir.path().join("histogram_6.db"), &overrun).unwrap();
    // A UTF-8 name (prometheus_client 0.22 and later accept them): served escaped, as
    // Python's exposition does (`caf_`).
    std::fs::write(
        dir.path().join("counter_7.db"),
        py_file(&[
            (r#"["caf\u00e9", "caf\u00e9_total", {}, ""]"#, 1.0),
            (r#"["jobs", "jobs_total", {}, "Jobs"]"#, 5.0),
        ]),
    )
    .unwrap();
    // A gauge key in a counter file.
    std::fs::write(
        dir.path().join("counter_8.db"),
        py_file(&[(r#"["t", "t", {}, ""]"#, 1.0)]),
    )
    .unwrap();
    // Not a Python name: foreign, as before.
    std::fs::write(dir.path().join("cache.db"), b"x").unwrap();
    // Empty (a writer between creating and sizing it): nothing, not corrupt.
    std::fs::write(dir.path().join("summary_9.db"), b"").unwrap();
    // A symlink is never followed.
    std::os::unix::fs::symlink(dir.path().join("counter_1.db"), dir.path().join("counter_10.db")).unwrap();

    let mut reader = Reader::new(dir.path()).unwrap();
    for _ in 0..2 {
        let s = reader.snapshot().unwrap();
        let st = s.stats();
        let mut corrupt: Vec<String> = st
            .corrupt
            .iter()
            .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        corrupt.sort();
        assert_eq!(
            corrupt,
            [
                "counter_10.db",
                "counter_3.db",
                "counter_5.db",
                "gauge_all_4.db",
                "histogram_6.db"
            ],
            "{:?}",
            st.corrupt
        );
        assert_eq!(st.corrupt_files, 5);
        assert_eq!(st.foreign_files, 1);
        assert_eq!(st.python_files, 5);
        assert_eq!(st.python_skipped, 1);
        assert_eq!(s.get("jobs", &[]), Some(&shmetrics_core::Value::CounterF64(9.0)));
        assert_eq!(s.get("caf_", &[]), Some(&shmetrics_core::Value::CounterF64(1.0)));
        let reasons: Vec<&str> = st.corrupt.iter().map(|(_, r)| r.as_str()).collect();
        assert!(reasons.iter().any(|r| r.contains("used length")), "{reasons:?}");
        assert!(reasons.iter().any(|r| r.contains("not JSON")), "{reasons:?}");
    }
}

/// Random damage to a real Python file never panics: the file is merged or skipped.
#[test]
fn damaged_python_files_never_panic() {
    use rand::{Rng, SeedableRng};
    let base = py_file(&[
        (r#"["a", "a_total", {"x": "1"}, "A"]"#, 1.0),
        (r#"["a", "a_total", {"x": "2"}, "A"]"#, 2.0),
        (r#"["h", "h_bucket", {"le": "1.0"}, "H"]"#, 3.0),
    ]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let dir = tempfile::tempdir().unwrap();
    let mut reader = Reader::new(dir.path()).unwrap();
    for i in 0..2000 {
        let mut f = base.clone();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..160);
            f[at] = rng.random();
        }
        if i % 5 == 0 {
            f.truncate(rng.random_range(0..200));
        }
        let kind = ["counter", "histogram", "gauge_max", "summary"][i % 4];
        let path = dir.path().join(format!("{kind}_{i}.db"));
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(&f).unwrap();
        drop(file);
        let s = reader.snapshot().unwrap();
        assert_eq!(s.stats().python_files + s.stats().corrupt_files, 1);
        std::fs::remove_file(&path).unwrap();
    }
}

/// A reader kept between scrapes (as a store's is) follows appended entries, files
/// rewritten in place, new and deleted files, and processes coming and going.
#[test]
fn warm_reader_follows_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("counter_1.db");
    let a = r#"["jobs", "jobs_total", {"q": "a"}, "Jobs"]"#;
    let b = r#"["jobs", "jobs_total", {"q": "b"}, "Jobs"]"#;
    let get = |r: &mut Reader, q: &str| match r.snapshot().unwrap().get("jobs", &[("q", q)]) {
        Some(shmetrics_core::Value::CounterF64(v)) => Some(*v),
        _ => None,
    };
    let mut reader = Reader::new(dir.path()).unwrap();
    std::fs::write(&path, py_file(&[(a, 1.0)])).unwrap();
    assert_eq!(get(&mut reader, "a"), Some(1.0));
    // A value changes and an entry is appended (same inode, as Python's mmap writes).
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all(&py_file(&[(a, 2.0), (b, 5.0)])).unwrap();
    drop(f);
    assert_eq!(get(&mut reader, "a"), Some(2.0));
    assert_eq!(get(&mut reader, "b"), Some(5.0));
    // Rewritten in place with other keys at the same offsets.
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all(&py_file(&[(b, 7.0), (a, 3.0)])).unwrap();
    drop(f);
    assert_eq!(get(&mut reader, "a"), Some(3.0));
    assert_eq!(get(&mut reader, "b"), Some(7.0));
    // Another process, then the file deleted: its family goes.
    std::fs::write(dir.path().join("counter_2.db"), py_file(&[(a, 10.0)])).unwrap();
    assert_eq!(get(&mut reader, "a"), Some(13.0));
    std::fs::remove_file(&path).unwrap();
    assert_eq!(get(&mut reader, "a"), Some(10.0));
    assert_eq!(get(&mut reader, "b"), None);
    std::fs::remove_file(dir.path().join("counter_2.db")).unwrap();
    assert!(reader.snapshot().unwrap().family("jobs").is_none());
    // Per-process gauges of 500 short-lived processes, 3 alive at a time: only the live
    // ones show, whatever came before.
    let g = r#"["temp", "temp", {}, "T"]"#;
    for pid in 0..500u32 {
        std::fs::write(
            dir.path().join(format!("gauge_liveall_{pid}.db")),
            py_file(&[(g, pid as f64)]),
        )
        .unwrap();
        if pid >= 3 {
            std::fs::remove_file(dir.path().join(format!("gauge_liveall_{}.db", pid - 3))).unwrap();
        }
        let s = reader.snapshot().unwrap();
        let fam = s.family("temp").unwrap();
        assert_eq!(fam.series.len(), (pid as usize + 1).min(3));
        assert_eq!(s.gauge("temp", &[("pid", &pid.to_string())]), Some(pid as f64));
    }
}

/// The cases of a harder comparison, each against what Python serves for the same
/// directory, sample by sample, HELP text and `le` strings included: `le` as an ordinary
/// label, UTF-8 names, awkward and many bucket bounds, a rolling deploy that added a label
/// and changed buckets (both releases' files side by side), names with colons, namespace,
/// subsystem and unit, counters with and without `_total`, extreme, infinite and NaN
/// values, in-progress gauges left up by a SIGKILL, and writers forked from a parent that
/// already wrote.
#[test]
fn served_as_python_serves_it_on_harder_inputs() {
    ensure_python_prometheus_client();
    let cases: &[(&str, &[&str])] = &[
        ("le as a label", &["le_labels"]),
        ("UTF-8 names", &["utf8_names"]),
        ("bucket bounds", &["awkward_buckets"]),
        ("rolling deploy", &["deploy_old", "deploy_new", "deploy_old"]),
        ("names and values", &["misc"]),
        ("forked writers", &["forked"]),
    ];
    for (what, scenarios) in cases {
        let dir = tempfile::tempdir().unwrap();
        let workers: Vec<PyWorker> = scenarios
            .iter()
            .map(|s| PyWorker::scenario(dir.path(), s))
            .collect();
        let ours = shmetrics_served(dir.path());
        let theirs = python_served(dir.path());
        assert!(samples(&theirs) > 0, "{what}: Python serves nothing");
        eprintln!("{what}: {} samples", samples(&theirs));
        assert_same_samples(&ours, &theirs);
        if *what == "names and values" {
            // prometheus_client 0.26 writes the samples of `app:requests:rate` as
            // `app_requests_rate_total` under `# TYPE app:requests:rate counter`, which its
            // own parser reads as two families: the same samples here, in one family named
            // as they are.
            assert_eq!(ours["app_requests_rate"]["type"], "counter");
            assert_eq!(
                theirs["app:requests:rate"]["samples"].as_array().map(Vec::len),
                Some(0)
            );
        } else {
            assert_same(&ours, &theirs);
        }
        let s = Reader::new(dir.path()).unwrap().snapshot().unwrap();
        assert_eq!(
            s.stats().conflicts + s.stats().python_skipped,
            0,
            "{what}: {:?}",
            s.stats()
        );
        drop(workers);
    }
    // In-progress gauges of a worker killed inside the tracked block stay up, in both.
    let dir = tempfile::tempdir().unwrap();
    let w = PyWorker::scenario(dir.path(), "inprogress");
    w.kill();
    let ours = shmetrics_served(dir.path());
    let theirs = python_served(dir.path());
    assert_same(&ours, &theirs);
    assert_eq!(theirs["in_progress"]["samples"][0][2].as_f64(), Some(1.0));
}

/// Python and native files declaring one family differently (other labels, other
/// buckets): the rule of a rolling deploy, both sets of series shown, each on its own
/// labels and bounds, a series both hold adding up bound by bound; nothing left out.
#[test]
fn python_and_native_declarations_that_differ_keep_every_series() {
    ensure_python_prometheus_client();
    let dir = tempfile::tempdir().unwrap();
    let py = PyWorker::scenario(dir.path(), "mixed");
    let store = Store::open(dir.path()).unwrap();
    store
        .counter_family("mixed_jobs", "Jobs", &["queue", "priority"])
        .unwrap()
        .labels(&["a", "high"])
        .inc_by(5);
    let lat = store
        .histogram_family("mixed_lat", "Latency", &["route"], &[2.0, 5.0])
        .unwrap();
    lat.labels(&["/native"]).observe(1.5);
    lat.labels(&["/both"]).observe(1.5);
    let s = Reader::new(dir.path()).unwrap().snapshot().unwrap();
    use shmetrics_core::Value;
    assert_eq!(s.stats().conflicts, 0);
    assert_eq!(
        s.get("mixed_jobs", &[("queue", "a")]),
        Some(&Value::CounterF64(2.0))
    );
    assert_eq!(
        s.get("mixed_jobs", &[("queue", "a"), ("priority", "high")]),
        Some(&Value::CounterF64(5.0))
    );
    let h = |route: &str| s.histogram("mixed_lat", &[("route", route)]).unwrap().clone();
    let inf = f64::INFINITY;
    assert_eq!(s.family("mixed_lat").unwrap().buckets, vec![2.0, 5.0, inf]);
    assert_eq!((h("/native").bounds, h("/native").buckets), (None, vec![1, 0, 0]));
    assert_eq!(
        (h("/py").bounds.as_deref(), h("/py").buckets),
        (Some(&[1.0, 5.0, inf][..]), vec![0, 1, 0])
    );
    assert_eq!(
        (h("/both").bounds.as_deref(), h("/both").buckets),
        (Some(&[1.0, 2.0, 5.0, inf][..]), vec![1, 1, 0, 0])
    );
    // The exposition parses strictly, every bound where it belongs.
    let ours = shmetrics_served(dir.path());
    let les: Vec<String> = ours["mixed_lat"]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x[1]["route"] == "/py" && x[0] == "mixed_lat_bucket")
        .map(|x| x[1]["le"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(les, ["+Inf", "1.0", "5.0"]);
    drop(py);
}

/// The Python files in `dir`, by name.
fn py_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".db"))
        .collect();
    names.sort();
    names
}

/// A Python compaction folds the counter and histogram files of processes that are gone
/// and leaves everything else: a live process' files, gauges and summaries, and the files
/// of a family it cannot hold in one declaration (two releases' labels or buckets, a name
/// the store refuses). The merge is the same, sample for sample, before and after.
#[test]
fn python_compaction_folds_the_dead_and_keeps_the_rest() {
    ensure_python_prometheus_client();
    let dir = tempfile::tempdir().unwrap();
    let live = PyWorker::start(dir.path(), 0, None);
    for i in 1..4 {
        PyWorker::start(dir.path(), i, None).finish();
    }
    for s in ["deploy_old", "deploy_new", "utf8_names", "awkward_buckets"] {
        PyWorker::scenario(dir.path(), s).finish();
    }
    let before = shmetrics_view(dir.path());
    let names = py_names(dir.path());
    let live_files: Vec<&String> = names
        .iter()
        .filter(|n| n.ends_with(&format!("_{}.db", live.pid)))
        .collect();
    assert_eq!(live_files.len(), 3 + 10, "{live_files:?}");

    let store = Store::open(dir.path()).unwrap();
    let stats = store.compact_python().unwrap();
    let after = shmetrics_view(dir.path());
    assert_same(&after, &before);
    let left = py_names(dir.path());
    // Folded: the dead workers' and the awkward buckets' histogram files, and the counter
    // file with UTF-8 names. Kept: the workers' and the deploys' counter files (they hold
    // `jobs`, which two releases declare with other labels) and the deploys' histogram
    // files (other bounds).
    let histograms = |names: &[String]| names.iter().filter(|n| n.starts_with("histogram_")).count();
    assert_eq!(histograms(&names) - histograms(&left), 4, "left: {left:?}");
    assert_eq!(stats.folded, 4 + 1, "{stats:?}");
    assert_eq!(stats.kept, 3 + 2 + 2, "{stats:?}");
    for f in &live_files {
        assert!(left.contains(f), "the live worker's {f} was touched");
    }
    assert!(left.iter().all(|n| !n.starts_with("gauge_") || names.contains(n)));
    assert_eq!(
        left.iter().filter(|n| n.starts_with("summary_")).count(),
        names.iter().filter(|n| n.starts_with("summary_")).count()
    );

    // The live worker goes: its histogram file is folded by the next compaction.
    live.finish();
    let stats = store.compact_python().unwrap();
    assert_eq!(stats.folded, 1, "{stats:?}");
    assert_same(&shmetrics_view(dir.path()), &before);
}
