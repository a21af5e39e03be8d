//! FORMAT.md is precise enough to implement: `tests/format_reader.py`, written from the
//! specification alone, merges a directory exactly as the Rust reader does.

use std::collections::BTreeMap;

use shmetrics_core::{GaugeMode, NativeOpts, Opts, Store, Value};

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
    // Exemplars (format version 2): the newest per series and bucket wins the merge.
    h.labels(&["/a"])
        .observe_with_exemplar(0.5, &[("trace_id", &format!("t{scale}"))]);
    c.labels(&["/b \"quoted\"", "500"])
        .inc_by_with_exemplar(1, &[("trace_id", &format!("c{scale}")), ("user", "é")]);
    // Native buckets (format version 2): alone, with a bucket limit, and beside classic ones.
    let n = store
        .register::<shmetrics_core::Histogram>(
            Opts::new("nat", "Native")
                .label_names(["route"])
                .native(NativeOpts::default().schema(2).max_buckets(0)),
        )
        .unwrap();
    let both = store
        .register::<shmetrics_core::Histogram>(
            Opts::new("both", "Both")
                .native(NativeOpts::default().schema(5).max_buckets(4))
                .buckets(vec![1.0]),
        )
        .unwrap();
    for v in [0.0, 0.3, -2.5, 1e-9, 7.0 * scale as f64, 1e6] {
        n.labels(&["/a"]).observe(v);
        both.labels(&[]).observe(v);
    }
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
    let open = || Store::builder(dir.path()).application("spec").open().unwrap();
    {
        // A writer that exits; the next store's opening folds it into the accumulator.
        fill(&open(), 2);
    }
    {
        let b = open();
        fill(&b, 3);
        let req = b.counter_family("req", "Requests", &["route", "code"]).unwrap();
        assert!(req.remove(&["/a", "200"]).unwrap());
        req.labels(&["/a", "200"]).inc();
        // A native series removed (baselines with bucket pairs), then observed again.
        let nat = b
            .register::<shmetrics_core::Histogram>(
                Opts::new("nat", "Native")
                    .label_names(["route"])
                    .native(NativeOpts::default().schema(2).max_buckets(0)),
            )
            .unwrap();
        assert!(nat.remove(&["/a"]).unwrap());
        nat.labels(&["/a"]).observe(-2.5);
    }
    std::thread::sleep(std::time::Duration::from_millis(2));
    let live = open();
    fill(&live, 5);
    // A removal by a live process: baselines for the accumulator and for itself.
    let g = live.gauge_family("g_max", "g", &["k"], GaugeMode::Max).unwrap();
    g.remove(&["x"]).unwrap();
    let h = live
        .register::<shmetrics_core::Histogram>(
            Opts::new("lat", "Latency")
                .label_names(["route"])
                .buckets(vec![0.25, 1.0]),
        )
        .unwrap();
    h.clear().unwrap();
    h.labels(&["/a"]).observe(0.5);
    let snap = live.snapshot().unwrap();
    let st = snap.stats();
    assert_eq!(
        (st.live_files, st.dead_files, st.accumulators),
        (1, 0, 1),
        "{st:?}"
    );
    // 6 + 3 folded, removed, 1 after; and 15 live, not covered by that removal's baseline.
    assert_eq!(snap.counter("req", &[("route", "/a"), ("code", "200")]), Some(16));
    assert_eq!(snap.gauge("g_max", &[("k", "x")]), None);
    assert_eq!(
        snap.histogram("lat", &[("route", "/a")]).unwrap().buckets,
        vec![0, 1, 0]
    );

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
                    Value::Histogram(h) => match &h.native {
                        None => serde_json::json!({"buckets": h.buckets, "sum": h.sum}),
                        Some(n) => serde_json::json!({
                            "buckets": h.buckets,
                            "sum": h.sum,
                            "native": {
                                "schema": n.schema,
                                "zero": n.zero_count,
                                "positive": n.positive,
                                "negative": n.negative,
                            },
                        }),
                    },
                    other => panic!("unexpected {other:?}"),
                };
                let v = if s.exemplars.is_empty() {
                    v
                } else {
                    let ex: Vec<serde_json::Value> = s
                        .exemplars
                        .iter()
                        .map(|(b, e)| {
                            let labels: serde_json::Map<String, serde_json::Value> = e
                                .labels
                                .iter()
                                .map(|(k, v)| (k.clone(), serde_json::json!(v)))
                                .collect();
                            let t = e
                                .timestamp
                                .duration_since(std::time::UNIX_EPOCH)
                                .unwrap()
                                .as_nanos() as u64;
                            serde_json::json!([b, labels, e.value, t])
                        })
                        .collect();
                    serde_json::json!({"value": v, "exemplars": ex})
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
                let v = match e.get(2) {
                    Some(ex) => serde_json::json!({"value": e[1].clone(), "exemplars": ex}),
                    None => e[1].clone(),
                };
                (labels, v)
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
    // Per-process gauges: the folded writers' series (pid labels carried by the
    // accumulator) and the live one's.
    let all = snap.family("g_all").unwrap();
    assert_eq!(all.series.len(), 3, "{:?}", all.series);
}
