//! FORMAT.md is precise enough to implement: `tests/format_reader.py`, written from the
//! specification alone, merges a directory exactly as the Rust reader does.

use std::collections::BTreeMap;

use shmetrics_core::{GaugeMode, Opts, Store, Value};

fn fill(store: &Store, scale: u64) {
    let c = store
        .counter_family("req", "Requests", &["route", "code"])
        .unwrap();
    c.labels(&["/a", "200"]).inc_by(3 * scale);
    c.labels(&["/b \"quoted\"", "500"]).inc_by(scale);
    store
        .counter_f64("bytes", "Bytes")
        .unwrap()
        .inc_by(0.5 * scale as f64);
    let h = store
        .register::<shmetrics_core::Histogram>(
            Opts::new("lat", "Latency")
                .label_names(["route"])
                .buckets(vec![0.25, 1.0]),
        )
        .unwrap();
    h.labels(&["/a"]).observe(0.125 * scale as f64);
    h.labels(&["/a"]).observe(4.0);
    for mode in GaugeMode::ALL {
        let g = store
            .gauge_family(&format!("g_{mode}"), "g", &["k"], mode)
            .unwrap();
        g.labels(&["x"]).set(scale as f64 * 1.5);
    }
}

#[test]
fn independent_python_reader_agrees() {
    let dir = tempfile::tempdir().unwrap();
    {
        // A dead file (its store and handles are dropped).
        let dead = Store::builder(dir.path()).application("spec").open().unwrap();
        fill(&dead, 2);
    }
    std::thread::sleep(std::time::Duration::from_millis(2));
    let live = Store::builder(dir.path()).application("spec").open().unwrap();
    fill(&live, 5);
    let snap = live.snapshot().unwrap();
    assert_eq!((snap.stats().live_files, snap.stats().dead_files), (1, 1));

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/format_reader.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let py: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let mut rust: BTreeMap<String, Vec<(Vec<String>, serde_json::Value)>> = BTreeMap::new();
    for fam in snap.families() {
        let series = fam
            .series
            .iter()
            .map(|s| {
                let v = match &s.value {
                    Value::Counter(v) => serde_json::json!(v),
                    Value::CounterF64(v) | Value::Gauge(v) => serde_json::json!(v),
                    Value::Histogram(h) => serde_json::json!({"buckets": h.buckets, "sum": h.sum}),
                    other => panic!("unexpected {other:?}"),
                };
                (s.labels.iter().map(|l| l.to_string()).collect(), v)
            })
            .collect();
        rust.insert(fam.name.clone(), series);
    }
    assert_eq!(
        rust.len(),
        py.as_object().unwrap().len(),
        "families: rust {:?} python {py}",
        rust.keys()
    );
    for (name, series) in &rust {
        let p = &py[name]["series"];
        let p: Vec<(Vec<String>, serde_json::Value)> = p
            .as_array()
            .unwrap_or_else(|| panic!("python has no family {name}"))
            .iter()
            .map(|e| {
                let labels = e[0]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| l.as_str().unwrap().to_string())
                    .collect();
                (labels, e[1].clone())
            })
            .collect();
        let norm = |v: &serde_json::Value| match v.as_f64() {
            Some(f) => serde_json::json!(f),
            None => v.clone(),
        };
        let a: Vec<_> = series.iter().map(|(l, v)| (l.clone(), norm(v))).collect();
        let b: Vec<_> = p.iter().map(|(l, v)| (l.clone(), norm(v))).collect();
        assert_eq!(a, b, "family {name}");
    }
    // The collision rule was exercised: both files have this process's pid.
    let all = snap.family("g_all").unwrap();
    assert_eq!(all.series.len(), 2);
    assert!(
        all.series
            .iter()
            .all(|s| s.labels[1].starts_with(&format!("{}-", std::process::id())))
    );
}
