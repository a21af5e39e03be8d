//! The `metrics` facade through the shmetrics recorder: the same samples as
//! metrics-exporter-prometheus for the same program, exact totals across real processes
//! and threads through SIGKILL, keys in any label order as one series, counted refusals,
//! idle series removed only when no process touches them, and no allocation per call.
//!
//! The binary is its own child: with `SHMETRICS_TEST_ROLE` set it runs one role instead of
//! the tests.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use metrics::Unit;
use shmetrics_core::recorder::{Matcher, RecorderBuilder};
use shmetrics_core::{Reader, Store};
use shmetrics_testing::expositions::{Family, parse_text};
use shmetrics_testing::{CountingAllocator, RoleProc, read_stdin_line, say, wait_for_stdin_eof};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

type Test = fn() -> Result<(), Failed>;

#[rustfmt::skip]
const TESTS: &[(&str, Test)] = &[
    ("the_same_samples_as_metrics_exporter_prometheus", conformance),
    ("totals_exact_across_4_processes_x_4_threads_through_sigkill", exact),
    ("label_orders_one_series_conflicts_a_counted_drop", keys_and_refusals),
    ("idle_series_go_only_when_no_process_touches_them", idle),
    ("a_counter_in_a_hot_loop_allocates_nothing", no_allocation),
];

fn main() {
    shmetrics_testing::run_tests_or_role(TESTS, run_role);
}

fn run_role(role: &str, args: &[String]) {
    let dir = &args[0];
    match role {
        "emit" => role_emit(dir, args[1].parse().expect("process")),
        "touch" => role_touch(dir),
        "loop" => role_loop(dir),
        other => panic!("unknown role {other}"),
    }
}

fn open(dir: &str) -> Store {
    Store::builder(dir)
        .application("recorder-test")
        .open()
        .expect("open store")
}

const LATENCY_BUCKETS: [f64; 5] = [0.005, 0.01, 0.1, 1.0, 10.0];

/// What a program emits through the facade: descriptions with units, counters with labels
/// in varying order, an absolute counter, gauges set, raised and lowered, histograms, a
/// name and a label name Prometheus cannot take, a label value to escape.
fn emit_program() {
    metrics::describe_counter!("http_requests_total", Unit::Count, "Requests served");
    metrics::describe_counter!("sent", Unit::Bytes, "Bytes sent");
    metrics::describe_gauge!("pool_connections", "Connections in the pool");
    metrics::describe_histogram!("request_latency", Unit::Seconds, "Request latency");
    for (i, route) in ["/a", "/b", "/c"].into_iter().enumerate() {
        for _ in 0..=i {
            metrics::counter!("http_requests_total", "method" => "GET", "route" => route).increment(2);
            metrics::counter!("http_requests_total", "route" => route, "method" => "GET").increment(1);
        }
        metrics::counter!("sent", "route" => route).increment(1000 * (i as u64 + 1));
        for v in [0.002, 0.007, 0.05, 0.5, 5.0, 50.0].iter().skip(i) {
            metrics::histogram!("request_latency", "route" => route).record(*v);
        }
    }
    metrics::counter!("kernel_ticks").absolute(100);
    metrics::counter!("kernel_ticks").absolute(40);
    metrics::gauge!("pool_connections", "pool" => "db").set(10.0);
    metrics::gauge!("pool_connections", "pool" => "db").increment(2.5);
    metrics::gauge!("pool_connections", "pool" => "db").decrement(1.0);
    metrics::gauge!("pool_connections", "pool" => "cache").set(-3.0);
    metrics::counter!("http.client.requests", "user-agent" => "curl/8", "path" => "a\"b\\c\nd").increment(7);
}

/// Samples by (sample name, labels): (family type, value).
type Samples = BTreeMap<(String, Vec<(String, String)>), (String, f64)>;

/// Samples by (sample name, labels): summed, as a counter's or bucket's samples that a
/// key in two label orders gives twice in metrics-exporter-prometheus' output.
fn summed(families: &[Family]) -> Samples {
    let mut out = BTreeMap::new();
    for f in families {
        for (name, labels, v) in &f.samples {
            if name.ends_with("_created") {
                continue;
            }
            // Bucket bounds as the float they name: `1` and `1.0` are one bound.
            let labels: Vec<(String, String)> = labels
                .iter()
                .map(|(k, v)| match (k.as_str(), v.parse::<f64>()) {
                    ("le", Ok(b)) => (k.clone(), format!("{b:?}")),
                    _ => (k.clone(), v.clone()),
                })
                .collect();
            let e = out.entry((name.clone(), labels)).or_insert((f.ty.clone(), 0.0));
            if f.ty == "gauge" {
                e.1 = *v;
            } else {
                e.1 += v;
            }
        }
    }
    out
}

fn conformance() -> Result<(), Failed> {
    let exporter = metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_recommended_naming(true)
        .add_global_label("service", "api")
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("request_latency".into()),
            &LATENCY_BUCKETS,
        )?
        .build_recorder();
    let handle = exporter.handle();
    metrics::with_local_recorder(&exporter, emit_program);
    let theirs = handle.render();

    let dir = tempfile::tempdir()?;
    let store = open(dir.path().to_str().unwrap());
    let ours = RecorderBuilder::new(&store)
        .add_global_label("service", "api")
        .set_buckets_for_metric(Matcher::Full("request_latency".into()), &LATENCY_BUCKETS)?
        .build();
    metrics::with_local_recorder(&ours, emit_program);
    let text = store.scrape()?;
    let text_004 = String::from_utf8(store.scrape_as(shmetrics_core::Format::PrometheusText)?)?;

    let parsed = parse_text(&[("text", &theirs), ("openmetrics", &text), ("text", &text_004)]);
    let mut parsed = parsed.into_iter();
    let theirs_f = parsed
        .next()
        .unwrap()
        .map_err(|e| format!("exporter output: {e}\n{theirs}"))?;
    let ours_f = parsed
        .next()
        .unwrap()
        .map_err(|e| format!("our OpenMetrics: {e}\n{text}"))?;
    let ours_004 = parsed
        .next()
        .unwrap()
        .map_err(|e| format!("our 0.0.4: {e}\n{text_004}"))?;
    // Our own families (self-metrics) are not the program's.
    let program = |fs: Vec<Family>| -> Vec<Family> {
        fs.into_iter()
            .filter(|f| !f.name.starts_with("shmetrics_"))
            .collect()
    };
    let (want, got, got_004) = (
        summed(&program(theirs_f)),
        summed(&program(ours_f)),
        summed(&program(ours_004)),
    );
    if want != got {
        let only = |a: &BTreeMap<_, _>, b: &BTreeMap<_, _>| -> Vec<String> {
            a.iter()
                .filter(|(k, v)| b.get(*k) != Some(*v))
                .map(|(k, v)| format!("{k:?} = {v:?}"))
                .collect()
        };
        return Err(format!(
            "samples differ.\nonly the exporter's:\n  {}\nonly ours:\n  {}\n--- exporter:\n{theirs}\n--- ours:\n{text}",
            only(&want, &got).join("\n  "),
            only(&got, &want).join("\n  ")
        )
        .into());
    }
    if got_004 != got {
        return Err(format!("our 0.0.4 text carries other samples than our OpenMetrics:\n{text_004}").into());
    }
    for help in [
        "# HELP http_requests Requests served",
        "# HELP sent_bytes Bytes sent",
        "# HELP request_latency_seconds Request latency",
        "# HELP pool_connections Connections in the pool",
    ] {
        if !text.contains(help) {
            return Err(format!("no {help:?} in\n{text}").into());
        }
    }
    if want.len() < 30 {
        return Err(format!("only {} samples compared: the program emits more", want.len()).into());
    }
    println!("{} samples identical", want.len());
    Ok(())
}

const PROCS: u64 = 4;
const THREADS: u64 = 4;
const PER_THREAD: u64 = 20_000;

/// A process emitting through the global recorder from 4 threads: per thread,
/// `PER_THREAD` increments of `jobs_total{queue}` (queue by thread parity, labels in two
/// orders), as many observations, a gauge raised and lowered back; reports, waits.
fn role_emit(dir: &str, p: u64) {
    let store = open(dir);
    RecorderBuilder::new(&store)
        .set_buckets_for_metric(Matcher::Full("job_seconds".into()), &[0.5, 1.0])
        .expect("buckets")
        .install()
        .expect("install");
    say("ready");
    assert_eq!(read_stdin_line(), "go");
    std::thread::scope(|s| {
        for t in 0..THREADS {
            s.spawn(move || {
                let queue = if t % 2 == 0 { "mail" } else { "sms" };
                for i in 0..PER_THREAD {
                    if i % 2 == 0 {
                        metrics::counter!("jobs_total", "queue" => queue, "kind" => "batch").increment(1);
                    } else {
                        metrics::counter!("jobs_total", "kind" => "batch", "queue" => queue).increment(1);
                    }
                    metrics::histogram!("job_seconds").record(if i % 4 == 0 { 0.25 } else { 0.75 });
                    metrics::gauge!("jobs_running").increment(1.0);
                    metrics::gauge!("jobs_running").decrement(1.0);
                }
                metrics::counter!("processes_threads_total").increment(1);
            });
        }
    });
    metrics::counter!("emitter_ticks", "process" => p.to_string()).absolute(1000 + p);
    say("done");
    wait_for_stdin_eof();
}

fn exact() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut procs = RoleProc::start_together("emit", d, PROCS as usize);
    for p in &mut procs {
        p.expect("done", Duration::from_secs(120));
    }
    let check = |when: &str| -> Result<(), Failed> {
        let snap = Reader::new(d)?.snapshot()?;
        let per_queue = PROCS * THREADS / 2 * PER_THREAD;
        for queue in ["mail", "sms"] {
            let got = snap.counter("jobs", &[("kind", "batch"), ("queue", queue)]);
            if got != Some(per_queue) {
                return Err(
                    format!("{when}: jobs_total{{queue={queue}}} = {got:?}, want {per_queue}").into(),
                );
            }
        }
        let all = PROCS * THREADS * PER_THREAD;
        let h = match snap.get("job_seconds", &[]) {
            Some(shmetrics_core::Value::Histogram(h)) => h.clone(),
            other => return Err(format!("{when}: job_seconds = {other:?}").into()),
        };
        // Per bucket (not cumulative): 0.25 in the first, 0.75 in the second.
        let want_buckets = vec![all / 4, all * 3 / 4, 0];
        if h.buckets != want_buckets || h.sum != (all / 4) as f64 * 0.25 + (all * 3 / 4) as f64 * 0.75 {
            return Err(format!(
                "{when}: job_seconds buckets {:?} sum {}, want {want_buckets:?}",
                h.buckets, h.sum
            )
            .into());
        }
        if snap.counter("processes_threads", &[]) != Some(PROCS * THREADS) {
            return Err(format!(
                "{when}: processes_threads_total {:?}",
                snap.counter("processes_threads", &[])
            )
            .into());
        }
        for p in 0..PROCS {
            let got = snap.counter("emitter_ticks", &[("process", &p.to_string())]);
            if got != Some(1000 + p) {
                return Err(format!("{when}: emitter_ticks{{process={p}}} = {got:?}").into());
            }
        }
        Ok(())
    };
    check("live writers")?;
    // The gauge is live-summed: every process is back at zero.
    let snap = Reader::new(d)?.snapshot()?;
    if snap.gauge("jobs_running", &[]) != Some(0.0) {
        return Err(format!("jobs_running = {:?}", snap.gauge("jobs_running", &[])).into());
    }
    procs[1].signal(libc::SIGKILL);
    procs[1].wait(Duration::from_secs(10));
    check("after SIGKILL of a writer")?;
    for p in &mut procs {
        p.close_stdin();
        p.wait(Duration::from_secs(10));
    }
    check("after every writer exited")?;
    let store = open(d);
    store.compact()?;
    check("after compaction")?;
    Ok(())
}

fn keys_and_refusals() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path().to_str().unwrap());
    let recorder = RecorderBuilder::new(&store)
        .add_global_label("host", "h1")
        .set_gauge_mode_for_metric(Matcher::Prefix("build_".into()), shmetrics_core::GaugeMode::Max)
        .set_native_histogram_for_metric(
            Matcher::Suffix("_native".into()),
            shmetrics_core::NativeOpts::default(),
        )
        .set_native_histogram_for_metric(
            Matcher::Full("both".into()),
            shmetrics_core::NativeOpts::default(),
        )
        .set_buckets_for_metric(Matcher::Full("both".into()), &[1.0])?
        .build();
    metrics::with_local_recorder(&recorder, || {
        metrics::counter!("orders_total", "a" => "1", "b" => "2").increment(1);
        metrics::counter!("orders_total", "b" => "2", "a" => "1").increment(1);
        // A key's own label overrides the global one.
        metrics::counter!("orders_total", "a" => "1", "b" => "2", "host" => "mine").increment(5);
        // Refused: other label names than the first use, another type under the name.
        metrics::counter!("orders_total", "a" => "1").increment(100);
        metrics::gauge!("orders_total").set(1.0);
        metrics::gauge!("build_info").set(3.0);
        metrics::histogram!("job_native").record(0.3);
        metrics::histogram!("both").record(0.3);
    });
    let snap = store.snapshot()?;
    let got = snap.counter("orders", &[("a", "1"), ("b", "2"), ("host", "h1")]);
    if got != Some(2) {
        return Err(format!("one series for both label orders: {got:?}").into());
    }
    let got = snap.counter("orders", &[("a", "1"), ("b", "2"), ("host", "mine")]);
    if got != Some(5) {
        return Err(format!("the key's label over the global one: {got:?}").into());
    }
    let fam = snap.family("orders").ok_or("no orders family")?;
    if fam.series.len() != 2 {
        return Err(format!("refused keys made series: {:?}", fam.series).into());
    }
    let text = store.scrape()?;
    if !text.contains(r#"shmetrics_store_errors_total{kind="recorder"} 2"#) {
        return Err(format!("the two refusals are not counted:\n{text}").into());
    }
    if fam_mode(&snap, "build_info") != Some(shmetrics_core::GaugeMode::Max) {
        return Err("the gauge mode matcher was not applied".into());
    }
    if fam_mode(&snap, "orders") == Some(shmetrics_core::GaugeMode::LiveSum) {
        return Err("a counter got a gauge mode".into());
    }
    // Native buckets by matcher: native only, or with the classic buckets a matcher gives.
    for (name, classic) in [("job_native", 0), ("both", 2)] {
        match snap.get(name, &[("host", "h1")]) {
            Some(shmetrics_core::Value::Histogram(h))
                if h.native.is_some() && h.buckets.len() == classic && h.count() == 1 => {}
            other => return Err(format!("{name}: {other:?}").into()),
        }
    }
    Ok(())
}

fn fam_mode(snap: &shmetrics_core::Snapshot, name: &str) -> Option<shmetrics_core::GaugeMode> {
    snap.family(name)
        .filter(|f| f.metric_type == shmetrics_core::MetricType::Gauge)
        .map(|f| f.mode)
}

/// Another process touching `shared_total` every 50 ms until stdin closes.
fn role_touch(dir: &str) {
    let store = open(dir);
    RecorderBuilder::new(&store).install().expect("install");
    metrics::counter!("shared_total").increment(1);
    say("touching");
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        wait_for_stdin_eof();
        let _ = tx.send(());
    });
    while rx.recv_timeout(Duration::from_millis(50)).is_err() {
        metrics::counter!("shared_total").increment(1);
    }
}

fn idle() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let store = open(d);
    let timeout = Duration::from_millis(600);
    let recorder = RecorderBuilder::new(&store).idle_timeout(Some(timeout)).build();
    let mut other = RoleProc::spawn("touch", &[d]);
    other.expect("touching", Duration::from_secs(30));
    metrics::with_local_recorder(&recorder, || {
        metrics::counter!("busy_total").increment(1);
        metrics::counter!("quiet_total").increment(1);
        metrics::counter!("shared_total").increment(1);
    });
    let deadline = Instant::now() + timeout * 4;
    while Instant::now() < deadline {
        metrics::with_local_recorder(&recorder, || metrics::counter!("busy_total").increment(1));
        recorder.sweep_idle()?;
        std::thread::sleep(Duration::from_millis(20));
    }
    let snap = store.snapshot()?;
    if snap.counter("quiet", &[]).is_some() {
        return Err("an idle series is still scraped".into());
    }
    if snap.counter("busy", &[]).is_none() {
        return Err("a series used all along was removed".into());
    }
    if snap.counter("shared", &[]).is_none() {
        return Err("a series another process kept using was removed".into());
    }
    // Used again: it comes back, from what is recorded after the removal.
    metrics::with_local_recorder(&recorder, || metrics::counter!("quiet_total").increment(3));
    let got = store.snapshot()?.counter("quiet", &[]);
    if got != Some(3) {
        return Err(format!("an idle series used again: {got:?}").into());
    }
    other.close_stdin();
    other.wait(Duration::from_secs(10));
    Ok(())
}

/// A counter and a histogram with static labels through the global recorder: the
/// allocations of 10,000 calls after the first.
fn role_loop(dir: &str) {
    let store = open(dir);
    shmetrics_core::recorder::install(&store).expect("install");
    let once = || {
        metrics::counter!("loop_total", "a" => "x", "b" => "y").increment(1);
        metrics::histogram!("loop_seconds", "a" => "x").record(0.1);
        metrics::gauge!("loop_level").set(1.0);
    };
    once();
    ALLOC.reset(false);
    for _ in 0..10_000 {
        once();
    }
    say(format!("allocations {}", ALLOC.count()));
    wait_for_stdin_eof();
}

fn no_allocation() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut p = RoleProc::spawn("loop", &[d]);
    let line = p.expect("allocations", Duration::from_secs(60));
    p.close_stdin();
    p.wait(Duration::from_secs(10));
    if line.trim() != "0" {
        return Err(format!("10,000 calls after the first: {line} allocations").into());
    }
    let snap = Reader::new(d)?.snapshot()?;
    if snap.counter("loop", &[("a", "x"), ("b", "y")]) != Some(10_001) {
        return Err(format!(
            "loop_total: {:?}",
            snap.counter("loop", &[("a", "x"), ("b", "y")])
        )
        .into());
    }
    Ok(())
}
