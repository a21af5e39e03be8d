//! Native histograms: bucketing as Prometheus' clients do it, exact merges across real
//! processes (threads, SIGKILL, compaction), other schemas merged at the coarsest, the
//! bucket limit, a count that reaches a chunk's limit, removals and fork.
//!
//! The binary is its own child: with `SHMETRICS_TEST_ROLE` set it runs one role instead of
//! the tests.

use std::collections::BTreeMap;
use std::time::Duration;

use libtest_mimic::Failed;
use prometheus_client::metrics::histogram::{Histogram as PcHistogram, NativeHistogramConfig};
use prometheus_client::registry::Registry;
use shmetrics_core::{Format, Histogram, NativeBuckets, NativeOpts, Opts, Store};
use shmetrics_testing::expositions;
use shmetrics_testing::{RoleProc, read_stdin_line, say, wait_for_stdin_eof};

const PROCS: usize = 4;
const THREADS: usize = 4;
const ITERS: usize = 40_000;
const SCHEMA: i8 = 4;

type Test = fn() -> Result<(), Failed>;

#[rustfmt::skip]
const TESTS: &[(&str, Test)] = &[
    ("bucket_indexes_agree_with_prometheus_client_at_every_schema", indexes_agree),
    ("merged_buckets_are_exact_across_4_processes_x_4_threads_through_sigkill_and_compaction", exact_across_processes),
    ("processes_declaring_other_schemas_merge_at_the_coarsest", other_schemas),
    ("the_bucket_limit_halves_resolution_and_keeps_every_count", bucket_limit),
    ("a_count_at_a_chunks_limit_goes_on_in_a_new_chunk", chunk_limit),
    ("a_removed_native_series_comes_back_with_new_counts_only", removal),
    ("native_only_histograms_show_count_and_sum_in_text_and_buckets_in_protobuf", text_and_protobuf),
    ("on_a_full_filesystem_buckets_wait_in_memory_and_reach_the_file", full_filesystem),
    ("a_fork_child_counts_in_its_own_file", fork_child),
    ("files_stay_version_1_until_a_native_histogram_is_declared", version_bump),
];

fn main() {
    shmetrics_testing::run_tests_or_role(TESTS, run_role);
}

fn run_role(role: &str, args: &[String]) {
    let dir = &args[0];
    match role {
        "observe" => role_observe(dir, args[1].parse().expect("process number")),
        "schema" => role_schema(dir, args[1].parse().expect("schema")),
        "slot" => role_slot(dir, args[1].parse().expect("observations")),
        "full" => role_full(dir),
        "fork" => role_fork(dir),
        other => panic!("unknown role {other}"),
    }
}

fn open(dir: &str) -> Store {
    Store::builder(dir)
        .application("native-test")
        .open()
        .expect("open store")
}

fn native(store: &Store, name: &str, opts: NativeOpts) -> shmetrics_core::Family<Histogram> {
    store
        .register::<Histogram>(
            Opts::new(name, "Native histogram")
                .label_names(["kind"])
                .native(opts),
        )
        .expect("declare")
}

/// Exact binary fractions (sums stay exact whatever the order): zero, negatives, values on
/// and around bucket boundaries of every schema.
fn spread() -> Vec<f64> {
    let mut v = vec![0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 1024.0, -3.0, 0.125, 7.0 / 8.0];
    for k in 1..200u32 {
        v.push(f64::from(k) / 64.0);
        v.push(-f64::from(k * 3) / 16.0);
    }
    v
}

/// Magnitudes from the smallest subnormal to the largest finite, and values inside the
/// default zero bucket (2^-128).
fn extremes() -> Vec<f64> {
    vec![
        5e-324,
        -5e-324,
        1e-310,
        1e-300,
        1e-40,
        -2.9e-39,
        2.0f64.powi(-128),
        1e-30,
        1e300,
        -1e300,
        1.7976931348623157e308,
        3.0e200,
        -1e-200,
    ]
}

/// The observations of thread `t` of process `p`, series `kind`.
fn sequence(kind: &str, p: usize, t: usize) -> impl Iterator<Item = f64> {
    let values = if kind == "spread" { spread() } else { extremes() };
    let n = values.len();
    (0..ITERS).map(move |i| values[(i * 7 + t * 13 + p * 31) % n])
}

// ---------------------------------------------------------------------------------------
// The reference: prometheus-client's own native histogram (Go's bucketing), in one process.

/// (zero count, (negative, index) -> count, schema) of prometheus-client's native histogram
/// after observing `values`.
fn reference(values: impl Iterator<Item = f64>, schema: i8) -> (u64, BTreeMap<(bool, i32), u64>) {
    let h = PcHistogram::new_native(NativeHistogramConfig::with_schema(schema));
    for v in values {
        h.observe(v);
    }
    let mut r = Registry::default();
    r.register("ref", "Reference", h);
    let body = prometheus_client::encoding::prometheus_protobuf::encode_to_vec(&r).unwrap();
    let fams = expositions::decode_protobuf(&body).unwrap();
    let h = fams[0].metric[0].histogram.as_ref().unwrap();
    assert_eq!(h.schema, i32::from(schema));
    let mut buckets = BTreeMap::new();
    for (negative, spans, deltas) in [
        (false, &h.positive_span, &h.positive_delta),
        (true, &h.negative_span, &h.negative_delta),
    ] {
        let mut index = 0i32;
        let mut count = 0i64;
        let mut d = deltas.iter();
        for s in spans {
            index += s.offset;
            for _ in 0..s.length {
                count += d.next().unwrap();
                if count > 0 {
                    buckets.insert((negative, index), count as u64);
                }
                index += 1;
            }
        }
    }
    (h.zero_count, buckets)
}

/// The reference brought down to `schema` (a coarser one: exact by construction).
fn reduced(r: &BTreeMap<(bool, i32), u64>, from: i8, to: i8) -> BTreeMap<(bool, i32), u64> {
    let mut out = BTreeMap::new();
    for ((neg, i), n) in r {
        let j = (((i64::from(*i) - 1) >> (from - to)) + 1) as i32;
        *out.entry((*neg, j)).or_default() += n;
    }
    out
}

fn buckets_of(n: &NativeBuckets) -> BTreeMap<(bool, i32), u64> {
    let mut out = BTreeMap::new();
    for (i, c) in &n.positive {
        out.insert((false, *i), *c);
    }
    for (i, c) in &n.negative {
        out.insert((true, *i), *c);
    }
    out
}

/// Checks a merged series against the reference of `values` at `schema`.
fn check_against(
    what: &str,
    snap: &shmetrics_core::Snapshot,
    kind: &str,
    values: &[f64],
    schema: i8,
) -> Result<(), Failed> {
    let h = snap
        .histogram("latency", &[("kind", kind)])
        .ok_or_else(|| format!("{what}: no {kind} series"))?;
    let n = h
        .native
        .as_ref()
        .ok_or_else(|| format!("{what}: no native buckets"))?;
    let (zero, buckets) = reference(values.iter().copied(), schema);
    let buckets = reduced(&buckets, schema, n.schema);
    if n.schema != schema && kind == "spread" {
        return Err(format!("{what}: {kind} merged at schema {}, declared {schema}", n.schema).into());
    }
    if (n.zero_count, buckets_of(n)) != (zero, buckets.clone()) {
        return Err(format!(
            "{what}: {kind}: zero {} buckets {:?}\nreference: zero {zero} buckets {buckets:?}",
            n.zero_count,
            buckets_of(n)
        )
        .into());
    }
    if h.count() != values.len() as u64 {
        return Err(format!("{what}: count {} of {}", h.count(), values.len()).into());
    }
    let sum: f64 = values.iter().sum();
    let scale: f64 = values.iter().map(|v| v.abs()).sum();
    let exact = kind == "spread";
    if (exact && h.sum != sum) || (!exact && (h.sum - sum).abs() > scale * 1e-12) {
        return Err(format!("{what}: {kind}: sum {} expected {sum}", h.sum).into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------

fn indexes_agree() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path().to_str().unwrap());
    for schema in shmetrics_core::MIN_SCHEMA..=shmetrics_core::MAX_SCHEMA {
        // Every bucket boundary of one power of two (and of the powers around it), the
        // next float up and down, and the values above.
        let mut values = Vec::new();
        let per = 1u32 << schema.max(0);
        for k in -3..4 {
            for j in 0..per {
                let b = (f64::from(j) / f64::from(per)).exp2() * f64::from(k).exp2();
                let (up, down) = (next_up(b), f64::from_bits(b.to_bits() - 1));
                values.extend([b, up, down, -b, -up]);
            }
        }
        values.extend(extremes());
        values.extend(spread());
        let name = format!("idx_{}", schema + 4);
        let h = store.register::<Histogram>(
            Opts::new(&name, "h").native(NativeOpts::default().schema(schema).max_buckets(0)),
        )?;
        let h = h.labels(&[]);
        for v in &values {
            h.observe(*v);
        }
        let snap = store.snapshot()?;
        let n = snap.histogram(&name, &[]).unwrap().native.clone().unwrap();
        let (zero, buckets) = reference(values.iter().copied(), schema);
        let ours = buckets_of(&n);
        let theirs = reduced(&buckets, schema, n.schema);
        if n.zero_count != zero || ours != theirs {
            let diff: Vec<_> = ours
                .iter()
                .filter(|(k, v)| theirs.get(k) != Some(v))
                .take(5)
                .collect();
            return Err(format!(
                "schema {schema}: zero {} vs {zero}; first differences {diff:?}",
                n.zero_count
            )
            .into());
        }
    }
    Ok(())
}

/// The next float above `v` (positive, finite).
fn next_up(v: f64) -> f64 {
    f64::from_bits(v.to_bits() + 1)
}

fn role_observe(dir: &str, p: usize) {
    let store = open(dir);
    let fam = native(
        &store,
        "latency",
        NativeOpts::default().schema(SCHEMA).max_buckets(0),
    );
    say("ready");
    assert_eq!(read_stdin_line(), "go");
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let fam = &fam;
            s.spawn(move || {
                for kind in ["spread", "extremes"] {
                    let h = fam.labels(&[kind]);
                    for v in sequence(kind, p, t) {
                        h.observe(v);
                    }
                }
            });
        }
    });
    say("done");
    wait_for_stdin_eof();
}

fn all_values(kind: &str) -> Vec<f64> {
    (0..PROCS)
        .flat_map(|p| (0..THREADS).flat_map(move |t| sequence(kind, p, t)))
        .collect()
}

fn exact_across_processes() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut procs = RoleProc::start_together("observe", d, PROCS);
    for p in &mut procs {
        p.expect("done", Duration::from_secs(120));
    }
    let (spread, extremes) = (all_values("spread"), all_values("extremes"));
    let check = |what: &str, snap: &shmetrics_core::Snapshot| -> Result<(), Failed> {
        check_against(what, snap, "spread", &spread, SCHEMA)?;
        check_against(what, snap, "extremes", &extremes, SCHEMA)
    };
    let mut reader = shmetrics_core::Reader::new(d)?;
    check("live writers", &reader.snapshot()?)?;
    // SIGKILL one writer: what it recorded stays.
    let victim = procs.remove(1);
    victim.signal(libc::SIGKILL);
    let mut victim = victim;
    victim.wait(Duration::from_secs(10));
    check("after SIGKILL", &reader.snapshot()?)?;
    // The others exit; a new store folds every dead writer into the accumulator.
    for mut p in procs {
        p.close_stdin();
        p.wait(Duration::from_secs(10));
    }
    // Opening folds the dead writers (compaction on open).
    let store = open(d);
    store.compact()?;
    let snap = store.snapshot()?;
    if snap.stats().accumulators != 1 || snap.stats().dead_files != 0 || snap.stats().live_files != 0 {
        return Err(format!("after compaction: {:?}", snap.stats()).into());
    }
    check("after compaction", &snap)?;
    check("read afresh", &shmetrics_core::Reader::new(d)?.snapshot()?)?;
    Ok(())
}

fn role_schema(dir: &str, schema: i8) {
    let store = open(dir);
    let fam = native(
        &store,
        "latency",
        NativeOpts::default().schema(schema).max_buckets(0),
    );
    let h = fam.labels(&["spread"]);
    for v in spread() {
        h.observe(v);
    }
    say("ready");
    wait_for_stdin_eof();
}

fn other_schemas() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut a = RoleProc::spawn("schema", &[d, "6"]);
    a.expect("ready", Duration::from_secs(30));
    let mut b = RoleProc::spawn("schema", &[d, "1"]);
    b.expect("ready", Duration::from_secs(30));
    let snap = shmetrics_core::Reader::new(d)?.snapshot()?;
    let values: Vec<f64> = spread().into_iter().chain(spread()).collect();
    let h = snap
        .histogram("latency", &[("kind", "spread")])
        .ok_or("no series")?;
    let n = h.native.as_ref().ok_or("not native")?;
    if n.schema != 1 {
        return Err(format!("merged at schema {}, expected the coarsest (1)", n.schema).into());
    }
    let (zero, buckets) = reference(values.iter().copied(), 1);
    if (n.zero_count, buckets_of(n)) != (zero, buckets) {
        return Err(format!("merged {:?}", n).into());
    }
    if snap.family("latency").map(|f| f.series.len()) != Some(1) {
        return Err("one series expected".into());
    }
    Ok(())
}

fn bucket_limit() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path().to_str().unwrap());
    let fam = native(&store, "latency", NativeOpts::default().schema(8).max_buckets(12));
    let h = fam.labels(&["spread"]);
    let values = spread();
    for v in &values {
        h.observe(*v);
    }
    let snap = store.snapshot()?;
    let v = snap.histogram("latency", &[("kind", "spread")]).unwrap();
    let n = v.native.as_ref().unwrap();
    if n.positive.len() + n.negative.len() > 12 {
        return Err(format!(
            "{} buckets over the limit of 12",
            n.positive.len() + n.negative.len()
        )
        .into());
    }
    if v.count() != values.len() as u64 {
        return Err(format!("count {} of {}", v.count(), values.len()).into());
    }
    let (zero, buckets) = reference(values.iter().copied(), 8);
    if (n.zero_count, buckets_of(n)) != (zero, reduced(&buckets, 8, n.schema)) {
        return Err(format!("schema {}: {n:?}", n.schema).into());
    }
    Ok(())
}

/// A worker slot: `n` observations of 1.5 (one bucket), then waits.
fn role_slot(dir: &str, n: u64) {
    let store = Store::builder(dir)
        .application("native-test")
        .worker_id(0)
        .open()
        .expect("open");
    let fam = native(&store, "latency", NativeOpts::default().schema(0));
    let h = fam.labels(&["one"]);
    for _ in 0..n {
        h.observe(1.5);
    }
    say("ready");
    wait_for_stdin_eof();
}

fn chunk_limit() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut first = RoleProc::spawn("slot", &[d, "3"]);
    first.expect("ready", Duration::from_secs(30));
    first.close_stdin();
    first.wait(Duration::from_secs(10));
    // As if the first life had counted 2^31 - 2 in that bucket: its count word is set
    // just below the limit in the file (the bucket of 1.5 at schema 0 is index 1).
    let path = dir.path().join("slot-0.shm");
    let mut bytes = std::fs::read(&path)?;
    let mut found = 0;
    let mut at = 128;
    while at + 8 <= bytes.len() {
        let w = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let (kind, len) = (w as u32, (w >> 32) as usize);
        if len == 0 {
            break;
        }
        if kind == 7 {
            // Index 1 is count 1 of chunk 0: the high half of the first count word.
            let word = at + 16;
            let counts = u64::from_le_bytes(bytes[word..word + 8].try_into().unwrap());
            assert_eq!(counts >> 32, 3);
            let set = (counts & 0xffff_ffff) | (((1u64 << 31) - 2) << 32);
            bytes[word..word + 8].copy_from_slice(&set.to_le_bytes());
            found += 1;
        }
        at += len;
    }
    if found != 1 {
        return Err(format!("{found} chunk records").into());
    }
    std::fs::write(&path, &bytes)?;
    let mut second = RoleProc::spawn("slot", &[d, "10"]);
    second.expect("ready", Duration::from_secs(30));
    let snap = shmetrics_core::Reader::new(d)?.snapshot()?;
    let n = snap
        .histogram("latency", &[("kind", "one")])
        .and_then(|h| h.native.clone())
        .ok_or("no series")?;
    let want = (1u64 << 31) - 2 + 10;
    if n.positive != vec![(1, want)] {
        return Err(format!("buckets {:?}, expected [(1, {want})]", n.positive).into());
    }
    let chunks = count_chunks(&std::fs::read(&path)?);
    if chunks != 2 {
        return Err(format!("{chunks} chunks: the full one should have been followed by a new one").into());
    }
    second.close_stdin();
    second.wait(Duration::from_secs(10));
    Ok(())
}

/// Chunk records (kind 7) of a store file.
fn count_chunks(bytes: &[u8]) -> usize {
    let used = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    let (mut at, mut n) = (128, 0);
    while at + 8 <= used {
        let w = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        n += usize::from(w as u32 == 7);
        at += ((w >> 32) as usize).max(8);
    }
    n
}

fn removal() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path().to_str().unwrap());
    let fam = native(&store, "latency", NativeOpts::default());
    let h = fam.labels(&["spread"]).clone();
    for v in spread() {
        h.observe(v);
    }
    if !fam.remove(&["spread"])? {
        return Err("nothing removed".into());
    }
    if store
        .snapshot()?
        .histogram("latency", &[("kind", "spread")])
        .is_some()
    {
        return Err("still shown after removal".into());
    }
    for v in [0.5, 0.5, -3.0, 0.0] {
        h.observe(v);
    }
    let snap = store.snapshot()?;
    let v = snap
        .histogram("latency", &[("kind", "spread")])
        .ok_or("gone for good")?;
    let n = v.native.as_ref().unwrap();
    if v.count() != 4 || n.zero_count != 1 || n.positive.len() != 1 || n.negative.len() != 1 || v.sum != -2.0
    {
        return Err(format!("after removal: {v:?}").into());
    }
    Ok(())
}

fn text_and_protobuf() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path().to_str().unwrap());
    let only = native(&store, "latency", NativeOpts::default());
    let both = store.register::<Histogram>(
        Opts::new("both_seconds", "Both")
            .native(NativeOpts::default())
            .buckets(vec![0.1, 1.0]),
    )?;
    for v in [0.05, 0.5, 2.0, 0.0, -1.0] {
        only.labels(&["a"]).observe(v);
        both.labels(&[]).observe(v);
    }
    let snap = store.snapshot()?;
    let om = String::from_utf8(snap.clone().encode_as(Format::OpenMetrics, Registry::default())?)?;
    let text = String::from_utf8(
        snap.clone()
            .encode_as(Format::PrometheusText, Registry::default())?,
    )?;
    let proto = snap.encode_as(Format::Protobuf, Registry::default())?;
    for want in [
        "latency_bucket{kind=\"a\",le=\"+Inf\"} 5\n",
        "latency_count{kind=\"a\"} 5\n",
        "both_seconds_bucket{le=\"0.1\"} 3\n",
    ] {
        if !om.contains(want) || !text.contains(want) {
            return Err(format!("{want:?} missing:\n{om}\n{text}").into());
        }
    }
    for r in expositions::parse_text(&[("openmetrics", &om), ("text", &text)]) {
        r?;
    }
    expositions::promtool_check_metrics(&text)?;
    let fams = expositions::decode_protobuf(&proto)?;
    for name in ["latency", "both_seconds"] {
        let f = fams.iter().find(|f| f.name == name).ok_or(name)?;
        let h = f.metric[0].histogram.as_ref().ok_or(name)?;
        let buckets: i64 = h
            .positive_delta
            .iter()
            .scan(0, |c, d| {
                *c += d;
                Some(*c)
            })
            .sum::<i64>()
            + h.negative_delta
                .iter()
                .scan(0, |c, d| {
                    *c += d;
                    Some(*c)
                })
                .sum::<i64>();
        if h.sample_count != 5 || h.zero_count != 1 || buckets != 4 || h.schema != 3 {
            return Err(format!("{name}: {h:?}").into());
        }
        let classic = h.bucket.len();
        if (name == "latency" && classic != 0) || (name == "both_seconds" && classic != 2) {
            return Err(format!("{name}: {classic} classic buckets").into());
        }
    }
    Ok(())
}

/// Fills its file (series of a counter) under a 16 KiB file size limit, observes into a
/// native histogram, then lifts the limit and scrapes: the chunks that waited in memory
/// reach the file.
fn role_full(dir: &str) {
    shmetrics_testing::limit_file_size(Some(16 << 10));
    let store = open(dir);
    let filler = store.counter_family("filler", "Filler", &["n"]).expect("counter");
    for i in 0..300 {
        filler.labels(&[&format!("{i:05}-{}", "x".repeat(60))]).inc();
    }
    let fam = native(
        &store,
        "latency",
        NativeOpts::default().schema(SCHEMA).max_buckets(0),
    );
    let h = fam.labels(&["spread"]);
    for v in spread() {
        h.observe(v);
    }
    let errors: u64 = store
        .snapshot()
        .map(|s| s.stats().store_errors.iter().map(|(_, n)| *n).sum())
        .unwrap_or(0);
    say(format!("full {errors}"));
    assert_eq!(read_stdin_line(), "room");
    shmetrics_testing::limit_file_size(None);
    std::thread::sleep(Duration::from_millis(700));
    // A scrape of this process is a chance to write what waited.
    store.snapshot().expect("scrape");
    say("flushed");
    wait_for_stdin_eof();
}

fn full_filesystem() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut p = RoleProc::spawn("full", &[d]);
    let line = p.expect("full", Duration::from_secs(60));
    let errors: u64 = line.parse().unwrap_or(0);
    if errors == 0 {
        return Err("the file never ran out of room: the test proves nothing".into());
    }
    p.send("room");
    p.expect("flushed", Duration::from_secs(60));
    let snap = shmetrics_core::Reader::new(d)?.snapshot()?;
    check_against(
        "after the file had room again",
        &snap,
        "spread",
        &spread(),
        SCHEMA,
    )?;
    let filler = snap.family("filler").ok_or("no filler")?;
    if filler.series.len() != 300 {
        return Err(format!("{} filler series of 300", filler.series.len()).into());
    }
    p.close_stdin();
    p.wait(Duration::from_secs(10));
    Ok(())
}

/// Observes in the parent, forks, observes in the child; each reports when done.
fn role_fork(dir: &str) {
    let store = open(dir);
    let fam = native(
        &store,
        "latency",
        NativeOpts::default().schema(SCHEMA).max_buckets(0),
    );
    let h = fam.labels(&["spread"]).clone();
    for v in spread() {
        h.observe(v);
    }
    // SAFETY: this role is single-threaded; the child only observes, reports and exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        for v in spread() {
            h.observe(v);
        }
        say("child done");
        std::thread::sleep(Duration::from_millis(200));
        std::process::exit(0);
    }
    let mut status = 0;
    // SAFETY: waiting for the child forked above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    for v in spread() {
        h.observe(v);
    }
    say("parent done");
    wait_for_stdin_eof();
}

fn fork_child() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut p = RoleProc::spawn("fork", &[d]);
    p.expect("child done", Duration::from_secs(30));
    p.expect("parent done", Duration::from_secs(30));
    let snap = shmetrics_core::Reader::new(d)?.snapshot()?;
    let values: Vec<f64> = (0..3).flat_map(|_| spread()).collect();
    check_against("parent and fork child", &snap, "spread", &values, SCHEMA)?;
    let files = std::fs::read_dir(d)?
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("w-"))
        })
        .count();
    if files != 2 {
        return Err(format!("{files} writer files, expected the parent's and the child's").into());
    }
    Ok(())
}

fn version_bump() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path().to_str().unwrap());
    store.counter("jobs", "Jobs")?.inc();
    let path = store.file_path().ok_or("no file")?;
    let version = |p: &std::path::Path| -> Result<u32, Failed> {
        let b = std::fs::read(p)?;
        Ok(u32::from_le_bytes(b[8..12].try_into().unwrap()))
    };
    if version(&path)? != 1 {
        return Err("a file without native histograms must stay version 1".into());
    }
    native(&store, "latency", NativeOpts::default())
        .labels(&["a"])
        .observe(1.0);
    if version(&path)? != 2 {
        return Err("a file with a native histogram must be version 2".into());
    }
    Ok(())
}
