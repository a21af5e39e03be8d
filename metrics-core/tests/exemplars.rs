//! Exemplars across real processes: never torn under writers hammering while a reader
//! scrapes, the newest one wins across processes and survives SIGKILL and compaction, a
//! writer killed mid-write leaves nothing stuck, and labels over the limit are a counted
//! drop.
//!
//! The binary is its own child: with `SHMETRICS_TEST_ROLE` set it runs one role instead of
//! the tests.

use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use shmetrics_core::{Reader, Snapshot, Store};
use shmetrics_testing::{RoleProc, read_stdin_line, say, wait_for_stdin_eof};

type Test = fn() -> Result<(), Failed>;

#[rustfmt::skip]
const TESTS: &[(&str, Test)] = &[
    ("no_exemplar_is_ever_torn_under_writers_in_3_processes_x_3_threads", torn_reads),
    ("the_newest_exemplar_wins_across_processes_through_sigkill_and_compaction", newest_wins),
    ("a_writer_killed_inside_an_exemplar_write_leaves_nothing_stuck", killed_mid_write),
    ("labels_over_128_characters_are_a_counted_drop", over_the_limit),
];

fn main() {
    shmetrics_testing::run_tests_or_role(TESTS, run_role);
}

fn run_role(role: &str, args: &[String]) {
    let dir = &args[0];
    match role {
        "hammer" => role_hammer(dir, args[1].parse().expect("process")),
        "one" => role_one(dir, &args[1]),
        "slot" => role_slot(dir, &args[1]),
        other => panic!("unknown role {other}"),
    }
}

fn open(dir: &str) -> Store {
    Store::builder(dir)
        .application("exemplar-test")
        .open()
        .expect("open store")
}

const BOUNDS: [f64; 4] = [1.0, 10.0, 100.0, 1000.0];

/// The labels an exemplar of `v` carries: its bits as a trace id, and padding whose length
/// follows from them (so that a torn read shows in the labels, their lengths, or the value).
fn labels_of(v: f64) -> (String, String) {
    let bits = v.to_bits();
    (format!("{bits:016x}"), "p".repeat((bits % 61) as usize))
}

fn role_hammer(dir: &str, p: u64) {
    let store = open(dir);
    let h = store
        .histogram_family("work_seconds", "Work", &["kind"], &BOUNDS)
        .expect("histogram");
    let c = store
        .counter_f64_family("work_done", "Work done", &["kind"])
        .expect("counter");
    say("ready");
    assert_eq!(read_stdin_line(), "go");
    let deadline = Instant::now() + Duration::from_millis(2500);
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let (h, c) = (h.labels(&["shared"]).clone(), c.labels(&["shared"]).clone());
            s.spawn(move || {
                let mut i = 0u64;
                while Instant::now() < deadline {
                    // Distinct values, spread over every bucket.
                    let v = ((p << 40) | (t << 32) | i) as f64 % 2000.0 + (i % 7) as f64 * 0.125;
                    let (id, pad) = labels_of(v);
                    h.observe_with_exemplar(v, &[("trace_id", &id), ("pad", &pad)]);
                    c.inc_by_with_exemplar(v, &[("trace_id", &id), ("pad", &pad)]);
                    i += 1;
                }
            });
        }
    });
    say("done");
    wait_for_stdin_eof();
}

/// Every exemplar of the snapshot is whole; returns how many there are.
fn check_whole(snap: &Snapshot) -> Result<usize, String> {
    let mut n = 0;
    for fam in ["work_seconds", "work_done"] {
        let Some(f) = snap.family(fam) else { continue };
        for s in &f.series {
            for (bucket, e) in &s.exemplars {
                let (id, pad) = labels_of(e.value);
                let want = vec![("trace_id".to_string(), id), ("pad".to_string(), pad)];
                if e.labels != want {
                    return Err(format!(
                        "{fam}: torn exemplar: value {} with labels {:?}",
                        e.value, e.labels
                    ));
                }
                if fam == "work_seconds" {
                    let right = BOUNDS.iter().position(|b| e.value <= *b).unwrap_or(BOUNDS.len());
                    if *bucket != right {
                        return Err(format!("value {} on bucket {bucket}, not {right}", e.value));
                    }
                }
                n += 1;
            }
        }
    }
    Ok(n)
}

fn torn_reads() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut procs = RoleProc::start_together("hammer", d, 3);
    let mut reader = Reader::new(d)?;
    let (mut scrapes, mut seen) = (0, 0);
    let deadline = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < deadline {
        seen += check_whole(&reader.snapshot()?)?;
        scrapes += 1;
    }
    for p in &mut procs {
        p.expect("done", Duration::from_secs(30));
    }
    seen += check_whole(&reader.snapshot()?)?;
    println!("{scrapes} scrapes under 3 x 3 writers saw {seen} exemplars, none torn");
    if scrapes < 10 || seen < scrapes {
        return Err(format!("only {scrapes} scrapes and {seen} exemplars: the test proves little").into());
    }
    Ok(())
}

/// Records one exemplar `{trace_id=ID}` of 0.5 on a histogram and a counter, reports, waits.
fn role_one(dir: &str, id: &str) {
    let store = open(dir);
    let h = store
        .histogram("job_seconds", "Jobs", &BOUNDS)
        .expect("histogram");
    let c = store.counter("jobs", "Jobs").expect("counter");
    h.observe_with_exemplar(0.5, &[("trace_id", id)]);
    c.inc_by_with_exemplar(1, &[("trace_id", id)]);
    say("written");
    wait_for_stdin_eof();
}

/// The trace ids of the histogram's bucket 0 and the counter's exemplar.
fn ids(snap: &Snapshot) -> (Option<String>, Option<String>) {
    let id = |fam: &str| {
        snap.family(fam)
            .and_then(|f| f.series.first())
            .and_then(|s| s.exemplars.first())
            .map(|(_, e)| e.labels[0].1.clone())
    };
    (id("job_seconds"), id("jobs"))
}

fn newest_wins() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut a = RoleProc::spawn("one", &[d, "a"]);
    a.expect("written", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(5));
    let b = {
        let mut b = RoleProc::spawn("one", &[d, "b"]);
        b.expect("written", Duration::from_secs(30));
        b
    };
    let want = (Some("b".to_string()), Some("b".to_string()));
    let got = ids(&Reader::new(d)?.snapshot()?);
    if got != want {
        return Err(format!("live writers: {got:?}").into());
    }
    b.signal(libc::SIGKILL);
    let mut b = b;
    b.wait(Duration::from_secs(10));
    let got = ids(&Reader::new(d)?.snapshot()?);
    if got != want {
        return Err(format!("after SIGKILL of the newest writer: {got:?}").into());
    }
    a.close_stdin();
    a.wait(Duration::from_secs(10));
    // Opening folds both dead writers into the accumulator.
    let store = open(d);
    store.compact()?;
    let snap = store.snapshot()?;
    if snap.stats().dead_files != 0 || snap.stats().accumulators != 1 {
        return Err(format!("not compacted: {:?}", snap.stats()).into());
    }
    let got = ids(&snap);
    if got != want {
        return Err(format!("after compaction: {got:?}").into());
    }
    drop(store);
    std::thread::sleep(Duration::from_millis(5));
    let mut c = RoleProc::spawn("one", &[d, "c"]);
    c.expect("written", Duration::from_secs(30));
    let got = ids(&Reader::new(d)?.snapshot()?);
    if got != (Some("c".to_string()), Some("c".to_string())) {
        return Err(format!("a newer writer after compaction: {got:?}").into());
    }
    Ok(())
}

/// A worker slot: one exemplar with trace id `id`, then waits.
fn role_slot(dir: &str, id: &str) {
    let store = Store::builder(dir)
        .application("exemplar-test")
        .worker_id(0)
        .open()
        .expect("open");
    let c = store.counter("jobs", "Jobs").expect("counter");
    c.inc_by_with_exemplar(1, &[("trace_id", id)]);
    say("written");
    wait_for_stdin_eof();
}

fn killed_mid_write() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut first = RoleProc::spawn("slot", &[d, "first"]);
    first.expect("written", Duration::from_secs(30));
    first.signal(libc::SIGKILL);
    first.wait(Duration::from_secs(10));
    // As a writer killed inside a write leaves it: the sequence odd.
    let path = dir.path().join("slot-0.shm");
    let mut bytes = std::fs::read(&path)?;
    let used = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    let mut at = 128;
    let mut patched = 0;
    while at + 8 <= used {
        let w = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        if w as u32 == 8 {
            let seq = at + 16;
            let s = u64::from_le_bytes(bytes[seq..seq + 8].try_into().unwrap());
            bytes[seq..seq + 8].copy_from_slice(&(s | 1).to_le_bytes());
            patched += 1;
        }
        at += ((w >> 32) as usize).max(8);
    }
    if patched != 1 {
        return Err(format!("{patched} exemplar records").into());
    }
    std::fs::write(&path, &bytes)?;
    let snap = Reader::new(d)?.snapshot()?;
    if ids(&snap).1.is_some() {
        return Err("an exemplar in the middle of a write was read".into());
    }
    // The worker comes back: its exemplar writes work again.
    let mut second = RoleProc::spawn("slot", &[d, "second"]);
    second.expect("written", Duration::from_secs(30));
    let got = ids(&Reader::new(d)?.snapshot()?).1;
    if got.as_deref() != Some("second") {
        return Err(format!("after the restart: {got:?}").into());
    }
    Ok(())
}

fn over_the_limit() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path().to_str().unwrap());
    let c = store.counter("jobs", "Jobs")?;
    let long = "x".repeat(200);
    c.inc_by_with_exemplar(1, &[("trace_id", &long)]);
    c.inc_by_with_exemplar(1, &[("bad name", "x")]);
    let snap = store.snapshot()?;
    if snap.counter("jobs", &[]) != Some(2) {
        return Err("the increments must count whatever happens to their exemplars".into());
    }
    let dropped = snap
        .stats()
        .store_errors
        .iter()
        .find(|(k, _)| *k == "exemplar")
        .map(|(_, n)| *n);
    if dropped != Some(2) {
        return Err(format!("exemplar errors {dropped:?}, expected 2").into());
    }
    if snap
        .family("jobs")
        .is_some_and(|f| f.series.iter().any(|s| !s.exemplars.is_empty()))
    {
        return Err("an invalid exemplar was kept".into());
    }
    Ok(())
}
