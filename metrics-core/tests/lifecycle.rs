//! Worker churn, compaction (and crashes in the middle of it), stable worker slots,
//! directory ownership and directory safety, with real processes.
//!
//! Like `multiprocess.rs`, the binary is its own child: with `SHMETRICS_TEST_ROLE` set it
//! runs one role instead of the tests.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use libtest_mimic::Failed;
use shmetrics_core::{GaugeMode, MergedFamily, Reader, Store};
use shmetrics_testing::{RoleProc, read_stdin_line, say, wait_for_stdin_eof};

type Test = fn() -> Result<(), Failed>;

#[rustfmt::skip]
const TESTS: &[(&str, Test)] = &[
    ("churn_2000_writers_leaves_bounded_files_and_exact_totals", churn),
    ("compaction_killed_at_each_step_loses_and_doubles_nothing", compaction_crash),
    ("python_compaction_killed_at_each_step_loses_and_doubles_nothing", python_compaction_crash),
    ("restarted_worker_resumes_its_slot_file", slots),
    ("live_slot_cannot_be_shared", slot_busy),
    ("planted_file_at_a_slot_name_is_skipped_not_an_exit", planted_slot_is_skipped),
    ("slot_schema_change_retires_the_old_file", slot_schema_change),
    ("removed_series_disappear_from_every_workers_scrape", removal_across_processes),
    ("fork_child_of_a_slot_owner_writes_its_own_file", slot_fork),
    ("a_mostrecent_gauge_killed_mid_write_does_not_hang_the_restarted_worker", mostrecent_killed_mid_write),
    ("garbage_left_past_the_published_length_never_reaches_a_series", unpublished_tail),
    ("the_series_limit_holds_across_restarts_of_a_slot", series_limit_across_lives),
    ("a_huge_label_value_or_help_is_refused_and_the_slot_resumes", huge_values),
    ("a_rolling_deploy_that_changes_labels_and_buckets_keeps_every_series_through_compaction", rolling_deploy),
];

fn main() {
    shmetrics_testing::run_tests_or_role(TESTS, run_role);
}

fn run_role(role: &str, args: &[String]) {
    let dir = &args[0];
    match role {
        "churn" => role_churn(dir),
        "writer" => role_writer(dir, args[1].parse().expect("amount")),
        "compactor" => role_compactor(dir, &args[1]),
        "pycompactor" => role_python_compactor(dir, &args[1]),
        "slot" => role_slot(
            dir,
            args[1].parse().expect("slot"),
            args[2].parse().expect("amount"),
            &args[3],
        ),
        "remover" => role_remover(dir),
        "slotfork" => role_slot_fork(dir),
        "setter" => role_setter(dir),
        "appender" => role_appender(dir, &args[1], args[2].parse().expect("count")),
        "flood" => role_flood(dir, &args[1]),
        "huge" => role_huge(dir),
        "release" => role_release(dir, &args[1], args[2].parse().expect("amount")),
        other => panic!("unknown role {other}"),
    }
}

fn builder(dir: &str) -> shmetrics_core::StoreBuilder {
    Store::builder(dir).application("lifecycle-test")
}

/// Families only (no self-metrics), for comparing merges.
fn families(dir: &Path) -> Result<Vec<MergedFamily>, Failed> {
    Ok(Reader::new(dir)?.snapshot()?.families().to_vec())
}

fn entries(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1. Churn: 2,000 short-lived writers, one after another, each writing the same 50 series.

const CHURN_WRITERS: u64 = 2000;
const CHURN_SERIES: u64 = 50;

fn role_churn(dir: &str) {
    let store = builder(dir).open().expect("open");
    let fam = store
        .counter_family("churn_requests", "Requests", &["route"])
        .expect("counter");
    let h = store
        .histogram_family("churn_seconds", "Latency", &["route"], &[0.1, 1.0])
        .expect("histogram");
    for i in 0..CHURN_SERIES {
        let route = format!("/route/{i}");
        fam.labels(&[&route]).inc();
        h.labels(&[&route]).observe(0.5);
    }
}

fn churn() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut max_entries = 0;
    for i in 0..CHURN_WRITERS {
        let mut p = RoleProc::spawn("churn", &[d]);
        if !p.wait(Duration::from_secs(30)).success() {
            return Err(format!("writer {i} failed").into());
        }
        max_entries = max_entries.max(entries(dir.path()).len());
    }
    // Each writer folds its dead predecessors when it opens the store: besides the lock
    // file, its turnstile and the accumulator, at most the last writer's (dead) file is
    // left.
    let left = entries(dir.path());
    if left.len() > 4 || max_entries > 5 {
        return Err(format!(
            "{} entries left ({left:?}), at most {max_entries} at once",
            left.len()
        )
        .into());
    }
    let snap = Reader::new(dir.path())?.snapshot()?;
    for i in 0..CHURN_SERIES {
        let route = format!("/route/{i}");
        if snap.counter("churn_requests", &[("route", &route)]) != Some(CHURN_WRITERS) {
            return Err(format!(
                "{route}: {:?}",
                snap.counter("churn_requests", &[("route", &route)])
            )
            .into());
        }
        let h = snap
            .histogram("churn_seconds", &[("route", &route)])
            .ok_or("no histogram")?;
        if h.buckets != vec![0, CHURN_WRITERS, 0] || h.sum != 0.5 * CHURN_WRITERS as f64 {
            return Err(format!("{route}: histogram {h:?}").into());
        }
    }
    if snap.family("churn_requests").unwrap().series.len() as u64 != CHURN_SERIES {
        return Err("series count".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 2. A compactor killed with SIGKILL at each step: the next merge is exact.

fn role_writer(dir: &str, amount: u64) {
    let store = builder(dir).open().expect("open");
    let c = store.counter_family("jobs", "Jobs", &["queue"]).expect("counter");
    c.labels(&["mail"]).inc_by(amount);
    c.labels(&[&format!("only-{amount}")]).inc();
    let f = store.counter_f64("bytes", "Bytes").expect("counter");
    f.inc_by(amount as f64 * 0.5);
    let h = store
        .histogram("sizes", "Sizes", &[1.0, 10.0])
        .expect("histogram");
    h.observe(amount as f64);
    for mode in [
        GaugeMode::Sum,
        GaugeMode::Max,
        GaugeMode::Min,
        GaugeMode::All,
        GaugeMode::MostRecent,
    ] {
        store
            .gauge(&format!("g_{mode}"), "g", mode)
            .expect("gauge")
            .set(amount as f64);
    }
    store
        .gauge("in_flight", "g", GaugeMode::LiveSum)
        .expect("gauge")
        .set(1.0);
    say("written");
    wait_for_stdin_eof();
}

fn role_compactor(dir: &str, stop_at: &str) {
    let store = builder(dir).compact_on_open(false).open().expect("open");
    let stats = store
        .compact_with_hook(&|step| {
            if step == stop_at {
                say(format!("at {step}"));
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        })
        .expect("compaction");
    say(format!("compacted {}", stats.folded));
}

fn role_python_compactor(dir: &str, stop_at: &str) {
    let store = builder(dir).compact_on_open(false).open().expect("open");
    let stats = store
        .compact_python_with_hook(&|step| {
            if step == stop_at {
                say(format!("at {step}"));
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        })
        .expect("python compaction");
    say(format!("compacted {} kept {}", stats.folded, stats.kept));
}

/// The Python files in `dir` (their own names, or renamed while folded).
fn python_files(dir: &Path) -> Vec<String> {
    entries(dir)
        .into_iter()
        .filter(|n| n.ends_with(".db") || n.contains(".db.folding-"))
        .collect()
}

/// The Python churn's families as `dir` serves them, checked against the totals
/// `churn.py` printed.
fn check_python_totals(dir: &Path, expected: &serde_json::Value) -> Result<(), Failed> {
    let snap = Reader::new(dir)?.snapshot()?;
    let counter = |queue| match snap.get("churn_jobs", &[("queue", queue)]) {
        Some(shmetrics_core::Value::CounterF64(v)) => *v,
        other => panic!("churn_jobs{{queue={queue}}}: {other:?}"),
    };
    let want = |k: &str| expected[k].as_f64().unwrap();
    if counter("mail") != want("mail") || counter("sms") != want("sms") {
        return Err(format!(
            "churn_jobs mail {} sms {}, want {expected}",
            counter("mail"),
            counter("sms")
        )
        .into());
    }
    let Some(shmetrics_core::Value::Histogram(h)) =
        snap.get("churn_latency_seconds", &[("route", "/users/{id}")])
    else {
        return Err("churn_latency_seconds missing".into());
    };
    let buckets: Vec<u64> = expected["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap())
        .collect();
    if h.buckets != buckets || h.sum != want("sum") {
        return Err(format!("latency buckets {:?} sum {}, want {expected}", h.buckets, h.sum).into());
    }
    // Every writer is gone and marked dead: no live gauge counts.
    if snap.family("churn_in_flight").is_some_and(|f| {
        f.series
            .iter()
            .any(|s| s.value != shmetrics_core::Value::Gauge(0.0))
    }) {
        return Err("churn_in_flight of dead writers".into());
    }
    Ok(())
}

fn python_compaction_crash() -> Result<(), Failed> {
    for step in [
        "locked", "claimed", "written", "renamed", "unlinked", "tidied", "done",
    ] {
        let dir = tempfile::tempdir()?;
        let d = dir.path().to_str().unwrap();
        // An accumulator from an earlier compaction, then more dead writers.
        let first = shmetrics_testing::python_churn(dir.path(), 3, 3, 0);
        let mut c = RoleProc::spawn("pycompactor", &[d, "never"]);
        c.expect("compacted 6 kept 0", Duration::from_secs(30));
        let second = shmetrics_testing::python_churn(dir.path(), 4, 2, 0);
        kill_and_recover(dir.path(), "pycompactor", step)?;
        // The dead files are gone.
        let left = python_files(dir.path());
        if left.iter().any(|n| !n.starts_with("gauge_")) {
            return Err(format!("after recovery from {step:?}: Python files left {left:?}").into());
        }
        // The totals churn.py computed, for both runs.
        let mut sum = first.clone();
        for k in ["mail", "sms", "count", "sum"] {
            sum[k] = (first[k].as_f64().unwrap() + second[k].as_f64().unwrap()).into();
        }
        for i in 0..4 {
            sum["buckets"][i] =
                (first["buckets"][i].as_u64().unwrap() + second["buckets"][i].as_u64().unwrap()).into();
        }
        check_python_totals(dir.path(), &sum)?;
    }
    Ok(())
}

/// Leaves `amounts.len()` dead writer files in `dir` (all alive at once, then all exit:
/// none of them folds another).
fn dead_writers(d: &str, amounts: &[u64]) {
    let mut ws: Vec<RoleProc> = amounts
        .iter()
        .map(|a| RoleProc::spawn("writer", &[d, &a.to_string()]))
        .collect();
    for w in &mut ws {
        w.expect("written", Duration::from_secs(30));
    }
    for w in &mut ws {
        w.close_stdin();
        assert!(w.wait(Duration::from_secs(10)).success());
    }
}

/// Kills a compactor of `role` stopped at `step` with SIGKILL, then runs one to the end:
/// the merge of `dir` must be the same after the kill and after the recovery.
fn kill_and_recover(dir: &Path, role: &str, step: &str) -> Result<(), Failed> {
    let d = dir.to_str().unwrap();
    let expected = families(dir)?;
    let before = entries(dir);
    let mut c = RoleProc::spawn(role, &[d, step]);
    c.expect(&format!("at {step}"), Duration::from_secs(30));
    c.signal(libc::SIGKILL);
    c.wait(Duration::from_secs(10));
    let after_crash = families(dir)?;
    if after_crash != expected {
        return Err(format!(
            "{role} killed at {step:?}: merge changed\nbefore: {expected:#?}\nafter: {after_crash:#?}\nfiles before {before:?} after {:?}",
            entries(dir)
        )
        .into());
    }
    let mut c = RoleProc::spawn(role, &[d, "never"]);
    c.expect("compacted", Duration::from_secs(30));
    let after = families(dir)?;
    if after != expected {
        return Err(format!(
            "after recovery from {role} killed at {step:?}: merge changed\nbefore: {expected:#?}\nafter: {after:#?}"
        )
        .into());
    }
    Ok(())
}

fn compaction_crash() -> Result<(), Failed> {
    for step in ["locked", "written", "renamed", "unlinked", "done"] {
        let dir = tempfile::tempdir()?;
        let d = dir.path().to_str().unwrap();
        // An accumulator from an earlier compaction, then more dead writers.
        dead_writers(d, &[3, 5]);
        let mut c = RoleProc::spawn("compactor", &[d, "never"]);
        c.expect("compacted", Duration::from_secs(30));
        dead_writers(d, &[7, 11, 13]);
        kill_and_recover(dir.path(), "compactor", step)?;
        // The dead files are gone.
        let left: Vec<String> = entries(dir.path())
            .into_iter()
            .filter(|n| n.starts_with("w-"))
            .collect();
        if !left.is_empty() {
            return Err(format!("after recovery from {step:?}: writer files left {left:?}").into());
        }
        // Hand-checked values: 3+5+7+11+13.
        let snap = Reader::new(dir.path())?.snapshot()?;
        let sum = snap.gauge("g_sum", &[]);
        if snap.counter("jobs", &[("queue", "mail")]) != Some(39) || sum != Some(39.0) {
            return Err(format!(
                "jobs {:?} g_sum {sum:?}",
                snap.counter("jobs", &[("queue", "mail")])
            )
            .into());
        }
        if snap.gauge("g_max", &[]) != Some(13.0) || snap.gauge("g_min", &[]) != Some(3.0) {
            return Err("min/max of folded gauges".into());
        }
        if snap.family("g_all").map(|f| f.series.len()) != Some(5) {
            return Err("one all-mode series per folded writer".into());
        }
        if snap.family("in_flight").is_some_and(|f| !f.series.is_empty()) {
            return Err("live gauges of dead writers must not come back".into());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 3. Slots: a worker killed and restarted with the same id writes the same file.

fn role_slot(dir: &str, slot: u64, amount: u64, schema: &str) {
    let store = match builder(dir).worker_id(slot).open() {
        Ok(s) => s,
        Err(e) => {
            say(format!("error {e}"));
            return;
        }
    };
    let buckets: &[f64] = if schema == "v2" { &[0.5, 5.0] } else { &[1.0, 10.0] };
    let c = match store.counter_family("slot_jobs", "Jobs", &["queue"]) {
        Ok(c) => c,
        Err(e) => {
            say(format!("error {e}"));
            return;
        }
    };
    let h = store
        .histogram("slot_sizes", "Sizes", buckets)
        .expect("histogram");
    let busy = store
        .gauge("slot_busy", "Busy", GaugeMode::LiveSum)
        .expect("gauge");
    busy.inc();
    c.labels(&["mail"]).inc_by(amount);
    h.observe(2.0);
    let path = store.file_path().expect("file");
    let ino = std::fs::metadata(&path).expect("stat").ino();
    say(format!("ready {} {ino}", path.display()));
    // Stays busy until killed (or told to go).
    let _ = read_stdin_line();
}

fn slots() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut first = RoleProc::spawn("slot", &[d, "7", "100", "v1"]);
    let a = first.expect("ready", Duration::from_secs(30));
    first.signal(libc::SIGKILL);
    first.wait(Duration::from_secs(10));
    let mut second = RoleProc::spawn("slot", &[d, "7", "50", "v1"]);
    let b = second.expect("ready", Duration::from_secs(30));
    if a != b || !a.contains("slot-7.shm") {
        return Err(
            format!("restarted worker wrote {b}, first wrote {a}: expected the same slot file").into(),
        );
    }
    let snap = Reader::new(dir.path())?.snapshot()?;
    if snap.counter("slot_jobs", &[("queue", "mail")]) != Some(150) {
        return Err(format!(
            "total {:?}, expected 150",
            snap.counter("slot_jobs", &[("queue", "mail")])
        )
        .into());
    }
    if snap.histogram("slot_sizes", &[]).map(|h| h.count()) != Some(2) {
        return Err("histogram of the slot".into());
    }
    // The killed predecessor's busy count did not linger.
    if snap.gauge("slot_busy", &[]) != Some(1.0) {
        return Err(format!(
            "busy {:?}, expected 1 (only the live worker)",
            snap.gauge("slot_busy", &[])
        )
        .into());
    }
    let files: Vec<String> = entries(dir.path())
        .into_iter()
        .filter(|n| n.ends_with(".shm"))
        .collect();
    if files != ["slot-7.shm"] {
        return Err(format!("files {files:?}").into());
    }
    second.send("go");
    second.wait(Duration::from_secs(10));
    Ok(())
}

fn slot_busy() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut first = RoleProc::spawn("slot", &[d, "3", "1", "v1"]);
    first.expect("ready", Duration::from_secs(30));
    let mut second = RoleProc::spawn("slot", &[d, "3", "1", "v1"]);
    let msg = second.expect("error", Duration::from_secs(30));
    let pid = first.pid().to_string();
    if !msg.contains("worker slot 3") || !msg.contains(&pid) {
        return Err(format!("second worker's error should name slot 3 and pid {pid}: {msg}").into());
    }
    first.send("go");
    first.wait(Duration::from_secs(10));
    Ok(())
}

/// Something planted at a slot's name (a symlink, a FIFO, a directory) is not followed,
/// not written and not an exit: the worker writes an ordinary file, and it is counted.
fn planted_slot_is_skipped() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let target = dir.path().join("elsewhere");
    std::fs::write(&target, b"x")?;
    std::os::unix::fs::symlink(&target, dir.path().join("slot-9.shm"))?;
    std::fs::create_dir(dir.path().join("slot-8.shm"))?;
    let fifo = std::ffi::CString::new(dir.path().join("slot-6.shm").to_str().unwrap())?;
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    for slot in ["9", "8", "6"] {
        let mut w = RoleProc::spawn("slot", &[d, slot, "1", "v1"]);
        let ready = w.expect("ready", Duration::from_secs(30));
        if !ready.contains("/w-") {
            return Err(
                format!("slot {slot}: the worker should write an ordinary file, wrote {ready}").into(),
            );
        }
        w.send("go");
        if !w.wait(Duration::from_secs(10)).success() {
            return Err(format!("slot {slot}: worker failed").into());
        }
    }
    if std::fs::read(&target)? != b"x" || !dir.path().join("slot-9.shm").is_symlink() {
        return Err("the planted symlink or its target was changed".into());
    }
    let snap = Reader::new(dir.path())?.snapshot()?;
    let skipped = snap
        .stats()
        .store_errors
        .iter()
        .find(|(k, _)| *k == "slot_skipped")
        .map(|(_, n)| *n);
    if skipped != Some(3) || snap.counter("slot_jobs", &[("queue", "mail")]) != Some(3) {
        return Err(format!(
            "slot_skipped {skipped:?}, jobs {:?}: expected 3 and 3",
            snap.counter("slot_jobs", &[("queue", "mail")])
        )
        .into());
    }
    Ok(())
}

fn slot_schema_change() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut v1 = RoleProc::spawn("slot", &[d, "1", "10", "v1"]);
    v1.expect("ready", Duration::from_secs(30));
    v1.send("go");
    v1.wait(Duration::from_secs(10));
    // A new deployment changes the histogram's buckets: the old slot file is retired.
    let mut v2 = RoleProc::spawn("slot", &[d, "1", "5", "v2"]);
    v2.expect("ready", Duration::from_secs(30));
    let snap = Reader::new(dir.path())?.snapshot()?;
    if snap.counter("slot_jobs", &[("queue", "mail")]) != Some(15) {
        return Err(format!(
            "jobs {:?}, expected 15",
            snap.counter("slot_jobs", &[("queue", "mail")])
        )
        .into());
    }
    // The live declaration is the family's; the old release's observation (2.0, in its
    // bucket 10) stays on its own bound beside the new one's (2.0, in bucket 5).
    let h = snap.histogram("slot_sizes", &[]).ok_or("no histogram")?;
    let fam = snap.family("slot_sizes").unwrap();
    if fam.buckets != vec![0.5, 5.0, f64::INFINITY]
        || h.bounds.as_deref() != Some(&[0.5, 1.0, 5.0, 10.0, f64::INFINITY][..])
        || h.buckets != vec![0, 0, 1, 1, 0]
    {
        return Err(format!("both releases' observations, on their own bounds: {fam:?}").into());
    }
    let names = entries(dir.path());
    if !names.contains("slot-1.shm") || !names.iter().any(|n| n.starts_with("w-")) {
        return Err(format!("expected the new slot file and the retired one: {names:?}").into());
    }
    v2.send("go");
    v2.wait(Duration::from_secs(10));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// remove/clear across processes.

fn role_remover(dir: &str) {
    let store = builder(dir).open().expect("open");
    let c = store.counter_family("jobs", "Jobs", &["queue"]).expect("counter");
    let g = store
        .gauge_family("depth", "Depth", &["queue"], GaugeMode::Max)
        .expect("gauge");
    c.labels(&["mail"]).inc_by(2);
    c.labels(&["sms"]).inc_by(2);
    g.labels(&["mail"]).set(4.0);
    say("ready");
    loop {
        match read_stdin_line().as_str() {
            "remove" => {
                assert!(c.remove(&["mail"]).expect("remove"));
                g.clear().expect("clear");
                say("removed");
            }
            "inc" => {
                c.labels(&["mail"]).inc();
                say("done");
            }
            _ => return,
        }
    }
}

fn removal_across_processes() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut a = RoleProc::spawn("remover", &[d]);
    let mut b = RoleProc::spawn("remover", &[d]);
    a.expect("ready", Duration::from_secs(30));
    b.expect("ready", Duration::from_secs(30));
    let store_a_view = || Reader::new(dir.path()).unwrap().snapshot().unwrap();
    if store_a_view().counter("jobs", &[("queue", "mail")]) != Some(4) {
        return Err("before removal".into());
    }
    a.send("remove");
    a.expect("removed", Duration::from_secs(30));
    let s = store_a_view();
    if s.counter("jobs", &[("queue", "mail")]).is_some() || s.gauge("depth", &[("queue", "mail")]).is_some() {
        return Err(format!("removed series still shown: {:?}", s.family("jobs")).into());
    }
    if s.counter("jobs", &[("queue", "sms")]) != Some(4) {
        return Err("other series must stay".into());
    }
    // The other process increments it again: it comes back with only the new count.
    b.send("inc");
    b.expect("done", Duration::from_secs(30));
    if store_a_view().counter("jobs", &[("queue", "mail")]) != Some(1) {
        return Err(format!(
            "after re-increment: {:?}",
            store_a_view().counter("jobs", &[("queue", "mail")])
        )
        .into());
    }
    // Both exit and are compacted: the removal still holds.
    a.close_stdin();
    b.close_stdin();
    a.wait(Duration::from_secs(10));
    b.wait(Duration::from_secs(10));
    let store = builder(d).open()?;
    let s = store.snapshot()?;
    if s.counter("jobs", &[("queue", "mail")]) != Some(1) || s.counter("jobs", &[("queue", "sms")]) != Some(4)
    {
        return Err(format!("after compaction: {:?}", s.family("jobs")).into());
    }
    if s.stats().accumulators != 1 || s.stats().dead_files != 0 {
        return Err(format!("expected everything folded: {:?}", s.stats()).into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The slot belongs to the process that opened the store: a child it forks writes a file
// of its own, and nothing is counted twice.

fn role_slot_fork(dir: &str) {
    let store = builder(dir).worker_id(4).open().expect("open");
    let c = store.counter("forked_jobs", "Jobs").expect("counter");
    c.inc_by(10);
    // SAFETY: this role process is single-threaded.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        c.inc_by(5);
        let path = store.file_path().expect("child file");
        say(format!("child {}", path.display()));
        // SAFETY: leave the child without running the parent's exit handlers.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    c.inc();
    say(format!("parent {}", store.file_path().expect("file").display()));
}

fn slot_fork() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut p = RoleProc::spawn("slotfork", &[d]);
    let child = p.expect("child", Duration::from_secs(30));
    let parent = p.expect("parent", Duration::from_secs(30));
    p.wait(Duration::from_secs(10));
    if !parent.ends_with("slot-4.shm") || child.ends_with("slot-4.shm") || !child.contains("/w-") {
        return Err(format!("parent wrote {parent}, child {child}").into());
    }
    let snap = Reader::new(dir.path())?.snapshot()?;
    if snap.counter("forked_jobs", &[]) != Some(16) {
        return Err(format!("total {:?}, expected 16", snap.counter("forked_jobs", &[])).into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// A restart resumes a slot file in any state a SIGKILL can leave.

/// Records of a store file, as FORMAT.md lays them out: (kind, byte offset, words).
fn records(bytes: &[u8]) -> Vec<(u32, usize, Vec<u64>)> {
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let used = word(16) as usize;
    let mut out = Vec::new();
    let mut at = 128;
    while at < used {
        let w0 = word(at);
        let len = (w0 >> 32) as usize;
        out.push((w0 as u32, at, (0..len / 8).map(|i| word(at + i * 8)).collect()));
        at += len;
    }
    out
}

/// Byte offsets of the first value slot of every series of family `name` in a file.
fn series_slots(bytes: &[u8], name: &str) -> Vec<usize> {
    let recs = records(bytes);
    let mut id = None;
    for (kind, _, w) in &recs {
        if *kind == 2 {
            let len = w[4] as usize;
            let raw: Vec<u8> = w[5..].iter().flat_map(|x| x.to_le_bytes()).collect();
            if &raw[..len] == name.as_bytes() {
                id = Some(w[1] as u32);
            }
        }
    }
    let Some(id) = id else { return Vec::new() };
    recs.iter()
        .filter(|(kind, _, w)| *kind == 3 && w[1] as u32 == id)
        .map(|(_, _, w)| w[2] as usize)
        .collect()
}

fn word_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// A slot worker that sets two `mostrecent` gauges as fast as it can.
fn role_setter(dir: &str) {
    let store = builder(dir).worker_id(5).open().expect("open");
    let last = store
        .gauge("last_value", "Last", GaugeMode::MostRecent)
        .expect("gauge");
    let live = store
        .gauge("live_last_value", "Last", GaugeMode::LiveMostRecent)
        .expect("gauge");
    last.set(-1.0);
    live.set(-1.0);
    say(format!("ready {}", store.file_path().expect("file").display()));
    let mut i = 0u64;
    loop {
        last.set(i as f64);
        live.set(i as f64);
        i += 1;
    }
}

fn mostrecent_killed_mid_write() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut odd_seen = 0;
    for round in 0..12 {
        let mut w = RoleProc::spawn("setter", &[d]);
        let path = w.expect("ready", Duration::from_secs(30));
        if round > 0 && !path.ends_with("slot-5.shm") {
            return Err(format!("round {round}: the worker did not resume its slot: {path}").into());
        }
        std::thread::sleep(Duration::from_millis(30 + round * 7));
        w.signal(libc::SIGKILL);
        w.wait(Duration::from_secs(10));
        let bytes = std::fs::read(&path)?;
        for name in ["last_value", "live_last_value"] {
            for at in series_slots(&bytes, name) {
                if word_at(&bytes, at) % 2 == 1 {
                    odd_seen += 1;
                }
            }
        }
    }
    if odd_seen == 0 {
        // Make sure the state is met: a kill inside `set` leaves the sequence odd.
        let path = dir.path().join("slot-5.shm");
        let mut bytes = std::fs::read(&path)?;
        for at in series_slots(&bytes, "last_value")
            .into_iter()
            .chain(series_slots(&bytes, "live_last_value"))
        {
            let v = word_at(&bytes, at) | 1;
            bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        std::fs::write(&path, bytes)?;
    }
    // The last restart must get going: ready, and setting.
    let mut w = RoleProc::spawn("setter", &[d]);
    w.expect("ready", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(200));
    let snap = Reader::new(dir.path())?.snapshot()?;
    let last = snap.gauge("last_value", &[]).unwrap_or(-1.0);
    let live = snap.gauge("live_last_value", &[]).unwrap_or(-1.0);
    if last < 1.0 || live < 1.0 {
        return Err(
            format!("the restarted worker does not set its gauges: {last} {live} ({odd_seen} odd)").into(),
        );
    }
    Ok(())
}

/// A slot worker that creates `count` new series `<life>-<i>` of `grown`, one after the
/// other, incrementing each once, then waits.
fn role_appender(dir: &str, life: &str, count: u64) {
    let store = builder(dir).worker_id(6).open().expect("open");
    let fam = store.counter_family("grown", "Grown", &["n"]).expect("counter");
    for i in 0..count {
        fam.labels(&[&format!("{life}-{i}")]).inc();
    }
    say(format!("ready {}", store.file_path().expect("file").display()));
    wait_for_stdin_eof();
}

fn unpublished_tail() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut w = RoleProc::spawn("appender", &[d, "a", "100"]);
    let path = w.expect("ready", Duration::from_secs(30));
    w.signal(libc::SIGKILL);
    w.wait(Duration::from_secs(10));
    // What a writer killed while appending leaves past the published length: the words
    // of a record it never published (series record headers, label bytes).
    let mut bytes = std::fs::read(&path)?;
    let used = word_at(&bytes, 16) as usize;
    let mut at = used;
    let mut k = 0u64;
    while at + 8 <= bytes.len() {
        let junk = if k % 3 == 0 {
            3 | (40 << 32)
        } else {
            0x6162_6364_6566_6768 ^ k
        };
        bytes[at..at + 8].copy_from_slice(&u64::to_le_bytes(junk));
        at += 8;
        k += 1;
    }
    std::fs::write(&path, &bytes)?;
    let mut w = RoleProc::spawn("appender", &[d, "b", "600"]);
    w.expect("ready", Duration::from_secs(30));
    let snap = Reader::new(dir.path())?.snapshot()?;
    let fam = snap.family("grown").ok_or("no family")?;
    if fam.series.len() != 700 {
        return Err(format!("{} series, expected 700", fam.series.len()).into());
    }
    if let Some(s) = fam
        .series
        .iter()
        .find(|s| s.value != shmetrics_core::Value::Counter(1))
    {
        return Err(format!("series {:?} holds {:?}: expected 1", s.labels, s.value).into());
    }
    w.close_stdin();
    w.wait(Duration::from_secs(10));
    Ok(())
}

/// A slot worker with a series limit of 100 that makes 150 new label sets `<life>-<i>`
/// and increments `first-0` (a label set of the first life).
fn role_flood(dir: &str, life: &str) {
    let store = builder(dir).worker_id(2).series_limit(100).open().expect("open");
    let fam = store
        .counter_family("flooded", "Flooded", &["n"])
        .expect("counter");
    fam.labels(&["first-0"]).inc();
    for i in 0..150 {
        fam.labels(&[&format!("{life}-{i}")]).inc();
    }
    say("ready");
    wait_for_stdin_eof();
}

fn series_limit_across_lives() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let lives = ["first", "second", "third", "fourth", "fifth", "sixth"];
    for life in lives {
        let mut w = RoleProc::spawn("flood", &[d, life]);
        w.expect("ready", Duration::from_secs(30));
        w.signal(libc::SIGKILL);
        w.wait(Duration::from_secs(10));
    }
    let snap = Reader::new(dir.path())?.snapshot()?;
    let fam = snap.family("flooded").ok_or("no family")?;
    // 100 series and the overflow series, whatever the number of lives.
    if fam.series.len() != 101 {
        return Err(format!(
            "{} series after {} lives, expected 101",
            fam.series.len(),
            lives.len()
        )
        .into());
    }
    if snap.counter("flooded", &[("n", "first-0")]) != Some(1 + lives.len() as u64) {
        return Err(format!(
            "first-0 = {:?}: a label set of an earlier life keeps its series",
            snap.counter("flooded", &[("n", "first-0")])
        )
        .into());
    }
    let total: u64 = fam
        .series
        .iter()
        .map(|s| match s.value {
            shmetrics_core::Value::Counter(v) => v,
            _ => 0,
        })
        .sum();
    if total != lives.len() as u64 * 151 {
        return Err(format!("total {total}, expected {}", lives.len() * 151).into());
    }
    Ok(())
}

/// A slot worker fed a 16 MiB label value and help text.
fn role_huge(dir: &str) {
    let store = builder(dir).worker_id(4).open().expect("open");
    let huge = "x".repeat(16 << 20);
    let help = store.counter_family("huge_help", &huge, &["k"]);
    say(format!("help {}", help.is_err()));
    let fam = store.counter_family("jobs", "Jobs", &["k"]).expect("counter");
    fam.labels(&["small"]).inc();
    fam.labels(&[&huge]).inc();
    let e = fam.remove(&[&huge]);
    say(format!("remove {}", e.is_err()));
    say("ready");
    wait_for_stdin_eof();
}

fn huge_values() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    for life in 0..2 {
        let mut w = RoleProc::spawn("huge", &[d]);
        if w.expect("help", Duration::from_secs(30)) != "true" {
            return Err("a 16 MiB help text must be refused at the declaration".into());
        }
        if w.expect("remove", Duration::from_secs(30)) != "true" {
            return Err("removing a 16 MiB label value must be refused".into());
        }
        w.expect("ready", Duration::from_secs(30));
        w.signal(libc::SIGKILL);
        w.wait(Duration::from_secs(10));
        let snap = Reader::new(dir.path())?.snapshot()?;
        let want = life + 1;
        if snap.stats().corrupt_files != 0
            || snap.counter("jobs", &[("k", "small")]) != Some(want)
            || snap.counter("jobs", &[("k", "__overflow__")]) != Some(want)
        {
            return Err(format!(
                "life {life}: small {:?}, overflow {:?}, stats {:?}",
                snap.counter("jobs", &[("k", "small")]),
                snap.counter("jobs", &[("k", "__overflow__")]),
                snap.stats()
            )
            .into());
        }
        let refused = snap
            .stats()
            .store_errors
            .iter()
            .find(|(k, _)| *k == "label_value")
            .map(|(_, n)| *n);
        if refused != Some(want) {
            return Err(format!("label_value errors {refused:?}, expected {want}").into());
        }
    }
    let names: Vec<String> = entries(dir.path())
        .into_iter()
        .filter(|n| n.ends_with(".shm"))
        .collect();
    if names != ["slot-4.shm"] {
        return Err(format!("the slot file must be resumed, not moved aside: {names:?}").into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// A rolling deploy whose new release adds a label and changes buckets: both releases'
// series show, on their own labels and bounds, through compactions, with bounded files.

/// A worker of release `v1` (`jobs{queue}`, buckets 1 and 5) or `v2` (`jobs{queue,
/// priority}`, buckets 2 and 5), adding `amount`; exits when its stdin closes.
fn role_release(dir: &str, release: &str, amount: u64) {
    let store = builder(dir).open().expect("open");
    if release == "v1" {
        let jobs = store.counter_family("jobs", "Jobs", &["queue"]).expect("counter");
        jobs.labels(&["a"]).inc_by(amount);
        let lat = store
            .histogram_family("lat", "Latency", &["route"], &[1.0, 5.0])
            .expect("histogram");
        lat.labels(&["/v1"]).observe(1.5);
        lat.labels(&["/both"]).observe(0.5);
    } else {
        let jobs = store
            .counter_family("jobs", "Jobs", &["queue", "priority"])
            .expect("counter");
        jobs.labels(&["a", "high"]).inc_by(amount);
        let lat = store
            .histogram_family("lat", "Latency", &["route"], &[2.0, 5.0])
            .expect("histogram");
        lat.labels(&["/v2"]).observe(1.5);
        lat.labels(&["/both"]).observe(1.5);
    }
    say("written");
    wait_for_stdin_eof();
}

fn release(d: &str, which: &str, amounts: &[u64], live: bool) -> Vec<RoleProc> {
    let mut ws: Vec<RoleProc> = amounts
        .iter()
        .map(|a| RoleProc::spawn("release", &[d, which, &a.to_string()]))
        .collect();
    for w in &mut ws {
        w.expect("written", Duration::from_secs(30));
    }
    if !live {
        for w in &mut ws {
            w.close_stdin();
            assert!(w.wait(Duration::from_secs(10)).success());
        }
        ws.clear();
    }
    ws
}

fn rolling_deploy() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let check = |v1: u64, v2: u64, n1: u64, n2: u64| -> Result<(), Failed> {
        let snap = Reader::new(dir.path())?.snapshot()?;
        let jobs_v1 = snap.counter("jobs", &[("queue", "a")]);
        let jobs_v2 = snap.counter("jobs", &[("queue", "a"), ("priority", "high")]);
        if jobs_v1 != (v1 > 0).then_some(v1)
            || jobs_v2 != (v2 > 0).then_some(v2)
            || snap.stats().conflicts != 0
        {
            return Err(format!(
                "jobs {jobs_v1:?} {jobs_v2:?}, expected {v1} {v2}: {:?}",
                snap.stats()
            )
            .into());
        }
        let inf = f64::INFINITY;
        let h = |r: &str| snap.histogram("lat", &[("route", r)]).cloned();
        let own = |r: &str, bounds: &[f64], buckets: Vec<u64>| -> Result<(), Failed> {
            let v = h(r).ok_or(format!("no series {r}"))?;
            let b = v
                .bounds
                .as_deref()
                .unwrap_or(&snap.family("lat").unwrap().buckets);
            if b != bounds || v.buckets != buckets {
                return Err(format!("{r}: {b:?} {:?}, expected {bounds:?} {buckets:?}", v.buckets).into());
            }
            Ok(())
        };
        if n1 > 0 {
            own("/v1", &[1.0, 5.0, inf], vec![0, n1, 0])?;
        }
        if n2 > 0 {
            own("/v2", &[2.0, 5.0, inf], vec![n2, 0, 0])?;
        }
        match (n1, n2) {
            (0, _) => own("/both", &[2.0, 5.0, inf], vec![n2, 0, 0])?,
            (_, 0) => own("/both", &[1.0, 5.0, inf], vec![n1, 0, 0])?,
            _ => own("/both", &[1.0, 2.0, 5.0, inf], vec![n1, n2, 0, 0])?,
        }
        // A strict parser accepts the exposition.
        let text = snap.encode(Default::default())?;
        let tmp = tempfile::NamedTempFile::new()?;
        std::fs::write(tmp.path(), &text)?;
        let ok = std::process::Command::new("python3")
            .args(["-c", "import sys; from prometheus_client.openmetrics.parser import text_string_to_metric_families as p; list(p(open(sys.argv[1]).read()))"])
            .arg(tmp.path())
            .status()?
            .success();
        if !ok {
            return Err(format!("the exposition does not parse:\n{text}").into());
        }
        Ok(())
    };
    shmetrics_testing::ensure_python_prometheus_client();
    release(d, "v1", &[1, 2, 3], false);
    check(6, 0, 3, 0)?;
    // The new release starts while an old worker still runs; its store folds the dead.
    let old = release(d, "v1", &[10], true);
    let new = release(d, "v2", &[100, 200], true);
    check(16, 300, 4, 2)?;
    drop(old);
    drop(new);
    // Both releases' dead files folded, each declaration into its own accumulator.
    builder(d).open()?.compact()?;
    check(16, 300, 4, 2)?;
    // More churn of the new release, then a rollback: files stay bounded, totals exact.
    for round in 0..3 {
        release(d, "v2", &[1, 1, 1], false);
        builder(d).open()?.compact()?;
        check(16, 303 + 3 * round, 4, 5 + 3 * round)?;
    }
    release(d, "v1", &[4], false);
    builder(d).open()?.compact()?;
    check(20, 309, 5, 11)?;
    let files: Vec<String> = entries(dir.path())
        .into_iter()
        .filter(|n| n.ends_with(".shm"))
        .collect();
    let accumulators = files.iter().filter(|n| n.starts_with("accumulator")).count();
    if accumulators != 2 || files.len() != 2 {
        return Err(format!("expected two accumulators and nothing else: {files:?}").into());
    }
    Ok(())
}
