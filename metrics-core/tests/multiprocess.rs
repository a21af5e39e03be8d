//! Real processes sharing one store directory: exactness under concurrency, SIGKILL,
//! fork(), every gauge mode with live and dead writers, and a full filesystem.
//!
//! The binary is its own child: with `SHMETRICS_TEST_ROLE` set it runs one role (a
//! single-threaded process, so it may fork) instead of the tests.

use std::sync::LazyLock;
use std::time::Duration;

use libtest_mimic::Failed;
use shmetrics_core::{Counter, Family, GaugeMode, Histogram, Reader, Store, Value};
use shmetrics_testing::{RoleProc, read_stdin_line, say, wait_for_stdin_eof};

const PROCS: usize = 4;
const THREADS: usize = 4;
const ITERS: u64 = 250_000;
/// Observed values cycle through these (exact binary fractions: sums stay exact).
const OBSERVED: [f64; 4] = [0.25, 0.5, 2.0, 8.0];
const BOUNDS: [f64; 3] = [0.3, 1.0, 5.0];

type Test = fn() -> Result<(), Failed>;

#[rustfmt::skip]
const TESTS: &[(&str, Test)] = &[
    ("exact_under_concurrency_4_processes_x_4_threads", exact_under_concurrency),
    ("sigkill_keeps_everything_recorded", sigkill_keeps_everything_recorded),
    ("fork_child_writes_its_own_file", fork_child_writes_its_own_file),
    ("gauge_modes_with_live_and_dead_writers", gauge_modes),
    ("full_filesystem_is_an_error_not_a_signal", full_filesystem),
    ("a_worker_starts_on_a_full_filesystem_and_its_values_reach_the_file_at_the_next_chance", full_at_start),
    ("conflicting_declaration_of_a_live_process_fails", cross_process_conflict),
    ("same_pid_in_two_containers_keeps_two_files", same_pid_in_two_containers),
    ("fork_while_another_thread_creates_series", fork_storm),
];

fn main() {
    shmetrics_testing::run_tests_or_role(TESTS, run_role);
}

fn run_role(role: &str, args: &[String]) {
    let dir = &args[0];
    match role {
        "hammer" => role_hammer(dir),
        "busy" => role_busy(dir),
        "fork" => role_fork(dir),
        "gauges" => role_gauges(dir, args[1].parse().expect("value"), &args[2]),
        "fill" => role_fill(dir, &args[1]),
        "fullstart" => role_full_start(dir, &args[1]),
        "declare" => role_declare(dir, &args[1]),
        "container" => role_container(dir, &args[1]),
        "forkstorm" => role_fork_storm(dir),
        other => panic!("unknown role {other}"),
    }
}

fn open(dir: &str) -> Store {
    Store::builder(dir)
        .application("multiprocess-test")
        .open()
        .expect("open store")
}

// ---------------------------------------------------------------------------------------
// 1. Exactness: PROCS processes x THREADS threads, each ITERS increments and observations.

fn role_hammer(dir: &str) {
    let store = open(dir);
    let work: Family<Counter> = store
        .counter_family("work", "Units of work", &["kind"])
        .expect("counter");
    let sizes: Family<Histogram> = store
        .histogram_family("work_size", "Sizes", &["kind"], &BOUNDS)
        .expect("histogram");
    say("ready");
    assert_eq!(read_stdin_line(), "go");
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                let c = work.labels(&["shared"]);
                let h = sizes.labels(&["shared"]);
                for i in 0..ITERS {
                    c.inc();
                    h.observe(OBSERVED[(i % 4) as usize]);
                }
            });
        }
    });
    say("done");
    wait_for_stdin_eof();
}

fn exact_under_concurrency() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut procs: Vec<RoleProc> = (0..PROCS).map(|_| RoleProc::spawn("hammer", &[d])).collect();
    for p in &mut procs {
        p.expect("ready", Duration::from_secs(30));
    }
    // All start together, to contend on the directory and the cache lines.
    for p in &mut procs {
        p.send("go");
    }
    for p in &mut procs {
        p.expect("done", Duration::from_secs(120));
    }
    let total = (PROCS * THREADS) as u64 * ITERS;
    let check = |snap: &shmetrics_core::Snapshot| -> Result<(), Failed> {
        let work = snap.counter("work", &[("kind", "shared")]);
        if work != Some(total) {
            return Err(format!("work = {work:?}, expected {total}").into());
        }
        let h = snap
            .histogram("work_size", &[("kind", "shared")])
            .ok_or("no histogram")?;
        let per = total / 4;
        // Buckets: <=0.3 {0.25}, <=1 {0.5}, <=5 {2.0}, +Inf {8.0}.
        if h.buckets != vec![per, per, per, per] {
            return Err(format!("buckets {:?}, expected 4 x {per}", h.buckets).into());
        }
        let sum = per as f64 * OBSERVED.iter().sum::<f64>();
        if h.sum != sum || h.count() != total {
            return Err(format!("sum {} count {}, expected {sum} {total}", h.sum, h.count()).into());
        }
        Ok(())
    };
    let mut reader = Reader::new(dir.path())?;
    let live = reader.snapshot()?;
    check(&live)?;
    if live.stats().live_files != PROCS as u64 {
        return Err(format!("{} live files, expected {PROCS}", live.stats().live_files).into());
    }
    // Writers exit: nothing changes, the files are now dead.
    for p in &mut procs {
        p.close_stdin();
        assert!(p.wait(Duration::from_secs(30)).success());
    }
    let dead = reader.snapshot()?;
    check(&dead)?;
    if dead.stats().dead_files != PROCS as u64 || dead.stats().live_files != 0 {
        return Err(format!("after exit: {:?}", dead.stats()).into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 2. SIGKILL: a writer killed mid-run loses nothing it recorded; its livesum gauge goes.

fn role_busy(dir: &str) {
    let store = open(dir);
    let ops = store
        .counter_family("ops", "Operations", &["op"])
        .expect("counter");
    let lat = store
        .histogram("op_seconds", "Latency", &BOUNDS)
        .expect("histogram");
    let busy = store
        .gauge("busy_workers", "Busy", GaugeMode::LiveSum)
        .expect("gauge");
    busy.inc();
    let c = ops.labels(&["write"]);
    let mut n: u64 = 0;
    loop {
        c.inc();
        lat.observe(OBSERVED[(n % 4) as usize]);
        n += 1;
        if n % 10_000 == 0 {
            say(format!("count {n}"));
        }
    }
}

fn sigkill_keeps_everything_recorded() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut reader = Reader::new(dir.path())?;

    // a) Frozen with SIGSTOP mid-run, read, then SIGKILL: the merge is unchanged.
    let mut p = RoleProc::spawn("busy", &[d]);
    loop {
        let n: u64 = p.expect("count", Duration::from_secs(30)).parse()?;
        if n >= 50_000 {
            break;
        }
    }
    p.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(50));
    let before = reader.snapshot()?;
    let ops_before = before.counter("ops", &[("op", "write")]).ok_or("no ops")?;
    let hist_before = before.histogram("op_seconds", &[]).ok_or("no histogram")?.clone();
    if before.gauge("busy_workers", &[]) != Some(1.0) {
        return Err(format!("busy before kill: {:?}", before.gauge("busy_workers", &[])).into());
    }
    p.signal(libc::SIGKILL);
    let status = p.wait(Duration::from_secs(10));
    use std::os::unix::process::ExitStatusExt;
    if status.signal() != Some(libc::SIGKILL) {
        return Err(format!("child ended with {status:?}, expected SIGKILL").into());
    }
    let after = reader.snapshot()?;
    if after.counter("ops", &[("op", "write")]) != Some(ops_before) {
        return Err(format!(
            "ops {:?} after kill, {ops_before} before",
            after.counter("ops", &[("op", "write")])
        )
        .into());
    }
    if after.histogram("op_seconds", &[]) != Some(&hist_before) {
        return Err("histogram changed across SIGKILL".into());
    }
    if after.gauge("busy_workers", &[]).is_some() {
        return Err("livesum gauge of a killed writer is still shown".into());
    }
    if after.stats().dead_files != 1 || after.stats().live_files != 0 {
        return Err(format!("files after kill: {:?}", after.stats()).into());
    }

    // b) Killed while running: everything it reported is in the merge, counted once.
    let mut q = RoleProc::spawn("busy", &[d]);
    let mut reported = 0;
    while reported < 30_000 {
        reported = q.expect("count", Duration::from_secs(30)).parse()?;
    }
    q.signal(libc::SIGKILL);
    q.wait(Duration::from_secs(10));
    for l in q.drain() {
        if let Some(n) = l.strip_prefix("count ") {
            reported = reported.max(n.parse()?);
        }
    }
    let end = reader.snapshot()?;
    let ops = end.counter("ops", &[("op", "write")]).ok_or("no ops")?;
    let second = ops - ops_before;
    if second < reported {
        return Err(format!("second writer reported {reported} increments, merge has {second}").into());
    }
    let h = end.histogram("op_seconds", &[]).ok_or("no histogram")?;
    // The counter and the histogram are written one after the other; a kill between the
    // two leaves the histogram at most one behind (per killed writer: compare deltas).
    let h_second = h.count() - hist_before.count();
    if h_second + 1 < second || h_second > second {
        return Err(format!("second writer: histogram count {h_second} vs ops {second}").into());
    }
    if end.gauge("busy_workers", &[]).is_some() {
        return Err("livesum gauge still shown after the second kill".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 3. fork(): a counter declared and used before fork() is written to the child's own file.

static FORK_STORE: LazyLock<Store> = LazyLock::new(|| {
    let dir = std::env::args().nth(1).expect("dir");
    open(&dir)
});
static FORK_JOBS: LazyLock<Family<Counter>> = LazyLock::new(|| {
    FORK_STORE
        .counter_family("jobs", "Jobs", &["queue"])
        .expect("counter")
});

fn role_fork(_dir: &str) {
    let jobs = FORK_JOBS.labels(&["mail"]);
    let per_process = FORK_STORE
        .gauge("jobs_seen_here", "This process's jobs counter", GaugeMode::All)
        .expect("gauge");
    let alive = FORK_STORE
        .gauge("alive", "Live processes", GaugeMode::LiveSum)
        .expect("gauge");
    alive.set(1.0);
    jobs.inc_by(1000);
    // SAFETY: this role process is single-threaded (the test harness is not running here).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // Child: same statics, same handle.
        alive.set(1.0);
        for _ in 0..500 {
            jobs.inc();
        }
        per_process.set(jobs.get() as f64);
        say(format!("child {} {}", std::process::id(), jobs.get()));
        // Lives on until the test closes the pipe (the parent exits first).
        wait_for_stdin_eof();
        // SAFETY: end the child without running the parent's atexit handlers.
        unsafe { libc::_exit(0) };
    }
    for _ in 0..300 {
        jobs.inc();
    }
    per_process.set(jobs.get() as f64);
    say(format!("parent {} {}", std::process::id(), jobs.get()));
}

fn fork_child_writes_its_own_file() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut p = RoleProc::spawn("fork", &[d]);
    let mut parent = String::new();
    let mut child = String::new();
    for _ in 0..2 {
        let l = p.expect("", Duration::from_secs(30));
        if let Some(x) = l.strip_prefix("parent ") {
            parent = x.to_string();
        } else if let Some(x) = l.strip_prefix("child ") {
            child = x.to_string();
        }
    }
    let (ppid, pcount) = parent.split_once(' ').ok_or("no parent line")?;
    let (cpid, ccount) = child.split_once(' ').ok_or("no child line")?;
    if pcount != "1300" || ccount != "500" {
        return Err(
            format!("per-process counts parent {pcount} child {ccount}, expected 1300 and 500").into(),
        );
    }
    // The parent has exited; the child (holding the same inherited pipe) still runs.
    assert!(p.wait(Duration::from_secs(10)).success());
    let snap = Reader::new(dir.path())?.snapshot()?;
    if snap.counter("jobs", &[("queue", "mail")]) != Some(1800) {
        return Err(format!(
            "total {:?}, expected 1800",
            snap.counter("jobs", &[("queue", "mail")])
        )
        .into());
    }
    let fam = snap.family("jobs_seen_here").ok_or("no per-process gauge")?;
    let seen: Vec<(String, f64)> = fam
        .series
        .iter()
        .map(|s| {
            let v = match s.value {
                Value::Gauge(v) => v,
                _ => f64::NAN,
            };
            (s.labels.last().unwrap().to_string(), v)
        })
        .collect();
    let mut want = vec![(ppid.to_string(), 1300.0), (cpid.to_string(), 500.0)];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    let mut seen_sorted = seen.clone();
    seen_sorted.sort_by(|a, b| a.0.cmp(&b.0));
    if seen_sorted != want {
        return Err(format!("per-process gauge {seen:?}, expected {want:?}").into());
    }
    // The dead parent's file is dead even though its child inherited the descriptor:
    // only the child counts as alive.
    if snap.gauge("alive", &[]) != Some(1.0) || snap.stats().live_files != 1 || snap.stats().dead_files != 1 {
        return Err(format!("alive {:?}, stats {:?}", snap.gauge("alive", &[]), snap.stats()).into());
    }
    p.close_stdin();
    // The child is not our direct child; wait until its file is dead.
    let mut reader = Reader::new(dir.path())?;
    for _ in 0..400 {
        if reader.snapshot()?.stats().live_files == 0 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err("forked child did not exit".into())
}

// ---------------------------------------------------------------------------------------
// 4. Gauge modes against hand-computed values, with live and dead writers.

fn role_gauges(dir: &str, value: f64, fate: &str) {
    let store = open(dir);
    for mode in GaugeMode::ALL {
        let fam = store
            .gauge_family(&format!("g_{mode}"), &format!("mode {mode}"), &["k"], mode)
            .expect("gauge");
        let g = fam.labels(&["v"]);
        // Arrive at the value through inc/dec/set, as real code does.
        g.inc();
        g.set(value - 2.0);
        g.add(3.0);
        g.dec();
    }
    say(format!("set {}", std::process::id()));
    if fate == "live" {
        wait_for_stdin_eof();
    }
}

fn gauge_modes() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    // In this order (each one done before the next starts): D dead 20, A live 3,
    // B live 7, C dead 1.
    let plan = [("20", "dead"), ("3", "live"), ("7", "live"), ("1", "dead")];
    let mut procs = Vec::new();
    let mut pids = Vec::new();
    for (value, fate) in plan {
        let mut p = RoleProc::spawn("gauges", &[d, value, fate]);
        pids.push(p.expect("set", Duration::from_secs(30)));
        if fate == "dead" {
            assert!(p.wait(Duration::from_secs(10)).success());
        }
        procs.push(p);
        std::thread::sleep(Duration::from_millis(2));
    }
    let snap = Reader::new(dir.path())?.snapshot()?;
    let v = |mode: &str| snap.gauge(&format!("g_{mode}"), &[("k", "v")]);
    let expected = [
        ("min", 1.0),
        ("livemin", 3.0),
        ("max", 20.0),
        ("livemax", 7.0),
        ("sum", 31.0),
        ("livesum", 10.0),
        ("mostrecent", 1.0),
        ("livemostrecent", 7.0),
    ];
    let mut errors = Vec::new();
    for (mode, want) in expected {
        if v(mode) != Some(want) {
            errors.push(format!("{mode}: {:?}, expected {want}", v(mode)));
        }
        let fam = snap.family(&format!("g_{mode}")).ok_or("missing family")?;
        if fam.label_names != ["k"] {
            errors.push(format!("{mode} labels {:?}", fam.label_names));
        }
    }
    let per_pid = |mode: &str| -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = snap
            .family(&format!("g_{mode}"))
            .map(|f| {
                f.series
                    .iter()
                    .filter_map(|s| match s.value {
                        Value::Gauge(g) => Some((s.labels[1].to_string(), g)),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    };
    let mut all: Vec<(String, f64)> = pids.iter().cloned().zip([20.0, 3.0, 7.0, 1.0]).collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let mut live: Vec<(String, f64)> = vec![(pids[1].clone(), 3.0), (pids[2].clone(), 7.0)];
    live.sort_by(|a, b| a.0.cmp(&b.0));
    if per_pid("all") != all {
        errors.push(format!("all: {:?}, expected {all:?}", per_pid("all")));
    }
    if per_pid("liveall") != live {
        errors.push(format!("liveall: {:?}, expected {live:?}", per_pid("liveall")));
    }
    if snap.family("g_all").map(|f| f.label_names.clone()) != Some(vec!["k".into(), "pid".into()]) {
        errors.push("all mode must add a pid label".into());
    }
    if !errors.is_empty() {
        return Err(errors.join("\n").into());
    }
    // When the live writers exit too, live modes have no series left.
    for p in &mut procs {
        p.close_stdin();
        p.wait(Duration::from_secs(10));
    }
    let snap = Reader::new(dir.path())?.snapshot()?;
    for mode in ["liveall", "livemin", "livemax", "livesum", "livemostrecent"] {
        if let Some(f) = snap.family(&format!("g_{mode}")) {
            if !f.series.is_empty() {
                return Err(format!("{mode} still has series after every writer exited").into());
            }
        }
    }
    if snap.gauge("g_sum", &[("k", "v")]) != Some(31.0) || snap.gauge("g_max", &[("k", "v")]) != Some(20.0) {
        return Err("non-live modes must keep dead writers' values".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 5. Full filesystem: growth fails with an error, no signal, nothing recorded is lost.

const FILL_SERIES: usize = 3000;

/// Limits the size of files this process writes (`"none"`: no limit). The kernel sends
/// SIGXFSZ past the limit; it is ignored so the failure shows up as EFBIG, as a full tmpfs
/// shows up as ENOSPC.
fn limit_file_size(limit: &str) {
    shmetrics_testing::limit_file_size(match limit {
        "none" => None,
        n => Some(n.parse().expect("limit")),
    });
}

fn role_fill(dir: &str, limit: &str) {
    limit_file_size(limit);
    let store = open(dir);
    let fam = store
        .counter_family("filled", "Series until full", &["n"])
        .expect("counter");
    let names: Vec<String> = (0..FILL_SERIES)
        .map(|i| format!("series-{i:05}-{}", "x".repeat(40)))
        .collect();
    for n in &names {
        fam.labels(&[n]).inc();
    }
    say("filled");
    assert_eq!(read_stdin_line(), "more");
    limit_file_size("none");
    // Space is back: after the retry interval every write can bind.
    std::thread::sleep(Duration::from_millis(700));
    for n in &names {
        fam.labels(&[n]).inc();
    }
    say("again");
    wait_for_stdin_eof();
}

struct Tmpfs {
    path: std::path::PathBuf,
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.path).status();
    }
}

/// A 1 MiB tmpfs mounted at `<base>/mnt`, unmounted on drop; `None` where mounting is not
/// permitted (the tests then limit file sizes instead).
fn small_tmpfs(base: &std::path::Path) -> Result<(std::path::PathBuf, Option<Tmpfs>), Failed> {
    let mnt = base.join("mnt");
    std::fs::create_dir(&mnt)?;
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    Ok((mnt.clone(), mounted.then_some(Tmpfs { path: mnt })))
}

fn full_filesystem() -> Result<(), Failed> {
    let base = tempfile::tempdir()?;
    let (mnt, guard) = small_tmpfs(base.path())?;
    let mounted = guard.is_some();
    let (store_dir, limit, filler) = if mounted {
        // Leave about 96 KiB for the store: FILL_SERIES series need about 270 KiB.
        let filler = mnt.join("filler");
        std::fs::write(&filler, vec![1u8; (1024 - 96) << 10])?;
        (mnt.join("store"), "none".to_string(), Some(filler))
    } else {
        eprintln!("full_filesystem: cannot mount a tmpfs here; using RLIMIT_FSIZE instead");
        (base.path().join("store"), (100u64 << 10).to_string(), None)
    };
    std::fs::create_dir(&store_dir)?;
    let d = store_dir.to_str().unwrap();
    let mut p = RoleProc::spawn("fill", &[d, &limit]);
    p.expect("filled", Duration::from_secs(60));
    let snap = Reader::new(&store_dir)?.snapshot()?;
    let errors = snap
        .stats()
        .store_errors
        .iter()
        .find(|(k, _)| *k == "growth")
        .map(|(_, n)| *n)
        .unwrap_or(0);
    let bound = snap.family("filled").map(|f| f.series.len()).unwrap_or(0);
    if errors == 0 || bound == 0 || bound >= FILL_SERIES {
        return Err(format!("growth errors {errors}, series in the file {bound} of {FILL_SERIES}").into());
    }
    // Every series that made it into the file holds exactly its one increment.
    let fam = snap.family("filled").ok_or("no family")?;
    if fam.series.iter().any(|s| s.value != Value::Counter(1)) {
        return Err("a series in the file does not hold 1".into());
    }
    // Space comes back; the series that waited in memory are written, nothing lost.
    if let Some(f) = &filler {
        std::fs::remove_file(f)?;
    }
    p.send("more");
    p.expect("again", Duration::from_secs(60));
    let snap = Reader::new(&store_dir)?.snapshot()?;
    let fam = snap.family("filled").ok_or("no family")?;
    if fam.series.len() != FILL_SERIES {
        return Err(format!(
            "{} series after space came back, expected {FILL_SERIES}",
            fam.series.len()
        )
        .into());
    }
    if let Some(s) = fam.series.iter().find(|s| s.value != Value::Counter(2)) {
        return Err(format!("series {:?} = {:?}, expected 2", s.labels, s.value).into());
    }
    p.close_stdin();
    let status = p.wait(Duration::from_secs(10));
    if !status.success() {
        return Err(format!("writer ended with {status:?}: expected a normal exit, no signal").into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Histogram buckets must agree between live processes; a dead process's old declaration
// (an earlier deployment) does not block a new one.

fn role_declare(dir: &str, bounds: &str) {
    let store = open(dir);
    let b: Vec<f64> = bounds.split(',').map(|x| x.parse().expect("bound")).collect();
    let h = store.histogram("req_seconds", "Latency", &b).expect("declare");
    h.observe(0.5);
    say("declared");
    wait_for_stdin_eof();
}

fn cross_process_conflict() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut other = RoleProc::spawn("declare", &[d, "0.1,1"]);
    other.expect("declared", Duration::from_secs(30));
    let store = open(d);
    // Another type than the live process's: refused, with both declarations named.
    let e = store.gauge("req_seconds", "Latency", GaugeMode::Max).unwrap_err();
    let msg = e.to_string();
    let pid = other.pid().to_string();
    if !msg.contains("already declared differently by live process") || !msg.contains(&pid) {
        return Err(format!("message should name the live process {pid}: {msg}").into());
    }
    if !msg.contains("[0.1, 1, +Inf]") || !msg.contains("gauge (mode max)") {
        return Err(format!("message should show both declarations: {msg}").into());
    }
    // A family that would expose a name the live process's histogram exposes: refused.
    let e = store
        .gauge("req_seconds_count", "Count", GaugeMode::Max)
        .unwrap_err()
        .to_string();
    if !e.contains("req_seconds_count") || !e.contains(&pid) {
        return Err(format!("a clash with a live process should name it ({pid}): {e}").into());
    }
    // Other buckets than the live process's (a rolling deploy that changed them, both
    // releases running): accepted; each process's series keeps its own bounds, and a
    // series both have adds up bound by bound, as Python's collector does.
    let h = store.histogram("req_seconds", "Latency", &[0.1, 2.0])?;
    h.observe(1.5);
    let snap = store.snapshot()?;
    let v = snap.histogram("req_seconds", &[]).ok_or("no histogram")?;
    let bounds = v
        .bounds
        .as_deref()
        .ok_or("the series should have its own bounds")?;
    if bounds != [0.1, 1.0, 2.0, f64::INFINITY]
        || v.buckets != vec![0, 1, 1, 0]
        || snap.stats().conflicts != 0
    {
        return Err(format!(
            "merged {bounds:?} {:?}, conflicts {}",
            v.buckets,
            snap.stats().conflicts
        )
        .into());
    }
    other.close_stdin();
    other.wait(Duration::from_secs(10));
    // Once the other process is gone (a previous deployment), its series stay too.
    let fresh = tempfile::tempdir()?;
    let f = fresh.path().to_str().unwrap();
    let mut old = RoleProc::spawn("declare", &[f, "0.1,1"]);
    old.expect("declared", Duration::from_secs(30));
    old.close_stdin();
    old.wait(Duration::from_secs(10));
    let new = open(f);
    let h = new.histogram("req_seconds", "Latency", &[0.1, 2.0, 4.0])?;
    h.observe(3.0);
    let snap = new.snapshot()?;
    let v = snap.histogram("req_seconds", &[]).ok_or("no histogram")?;
    if v.buckets != vec![0, 1, 0, 1, 0] || snap.stats().conflicts != 0 {
        return Err(format!("merged {:?}, conflicts {}", v.buckets, snap.stats().conflicts).into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// File identity is not the pid: two processes in separate pid namespaces (both pid 1,
// as in two containers sharing /dev/shm) keep separate files and separate series.

fn role_container(dir: &str, marker: &str) {
    let store = open(dir);
    let c = store.counter("container_requests", "Requests").expect("counter");
    c.inc_by(100);
    let g = store
        .gauge("container_marker", "Marker", GaugeMode::LiveAll)
        .expect("gauge");
    g.set(marker.parse().expect("marker"));
    say(format!("pid {}", std::process::id()));
    wait_for_stdin_eof();
}

fn same_pid_in_two_containers() -> Result<(), Failed> {
    let unshare = ["unshare", "--pid", "--fork"];
    let usable = std::process::Command::new(unshare[0])
        .args(&unshare[1..])
        .arg("true")
        .status()
        .is_ok_and(|s| s.success());
    if !usable {
        eprintln!("same_pid_in_two_containers: skipped: `unshare --pid` is not permitted here");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut a = RoleProc::spawn_with(&unshare, "container", &[d, "1"]);
    let mut b = RoleProc::spawn_with(&unshare, "container", &[d, "2"]);
    let pa = a.expect("pid", Duration::from_secs(30));
    let pb = b.expect("pid", Duration::from_secs(30));
    if pa != "1" || pb != "1" {
        return Err(
            format!("expected both writers to be pid 1 in their namespace, got {pa} and {pb}").into(),
        );
    }
    let snap = Reader::new(dir.path())?.snapshot()?;
    if snap.counter("container_requests", &[]) != Some(200) || snap.stats().live_files != 2 {
        return Err(format!(
            "requests {:?}, live files {}",
            snap.counter("container_requests", &[]),
            snap.stats().live_files
        )
        .into());
    }
    let fam = snap.family("container_marker").ok_or("no marker gauge")?;
    let mut seen: Vec<(String, f64)> = fam
        .series
        .iter()
        .map(|s| {
            let v = match s.value {
                Value::Gauge(v) => v,
                _ => f64::NAN,
            };
            (s.labels[0].to_string(), v)
        })
        .collect();
    seen.sort_by(|x, y| x.1.total_cmp(&y.1));
    let distinct = seen.len() == 2 && seen[0].0 != seen[1].0;
    if !distinct || seen[0].1 != 1.0 || seen[1].1 != 2.0 || !seen.iter().all(|(p, _)| p.starts_with("1-")) {
        return Err(format!("per-process series {seen:?}: expected two, pid labels 1-<id>").into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// fork() while another thread is inside the store's slow paths (new label sets, file
// growth): no deadlock in the child, nothing counted twice or lost.

const STORM_FORKS: u64 = 20;
const STORM_SERIES: u64 = 3000;

fn role_fork_storm(dir: &str) {
    let store = open(dir);
    let made = store
        .counter_family("storm_series", "Series", &["n"])
        .expect("counter");
    let children = store
        .counter_family("storm_children", "Children", &["who"])
        .expect("counter");
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let creator = s.spawn(|| {
            for i in 0..STORM_SERIES {
                made.labels(&[&i.to_string()]).inc();
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let mut pids = Vec::new();
        for k in 0..STORM_FORKS {
            // SAFETY: the child only uses the store (fork-safe by design), then _exit.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                for _ in 0..10 {
                    children.labels(&["child"]).inc();
                }
                children.labels(&[&format!("child-{k}")]).inc();
                // SAFETY: leave without unwinding or running the parent's exit handlers.
                unsafe { libc::_exit(0) };
            }
            pids.push(pid);
            std::thread::sleep(Duration::from_micros(300));
        }
        for pid in pids {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
            assert!(rc == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        }
        creator.join().expect("creator thread");
    });
    say("storm done");
}

fn fork_storm() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut p = RoleProc::spawn("forkstorm", &[d]);
    p.expect("storm done", Duration::from_secs(60));
    if !p.wait(Duration::from_secs(10)).success() {
        return Err("storm process failed".into());
    }
    let snap = Reader::new(dir.path())?.snapshot()?;
    let made = snap.family("storm_series").ok_or("no series family")?;
    if made.series.len() as u64 != STORM_SERIES || made.series.iter().any(|s| s.value != Value::Counter(1)) {
        return Err(format!("{} series made, expected {STORM_SERIES} x 1", made.series.len()).into());
    }
    if snap.counter("storm_children", &[("who", "child")]) != Some(STORM_FORKS * 10) {
        return Err(format!(
            "children total {:?}",
            snap.counter("storm_children", &[("who", "child")])
        )
        .into());
    }
    for k in 0..STORM_FORKS {
        if snap.counter("storm_children", &[("who", &format!("child-{k}"))]) != Some(1) {
            return Err(format!("child-{k} missing").into());
        }
    }
    // One file per child plus the parent's.
    if snap.stats().dead_files != STORM_FORKS + 1 {
        return Err(format!("{:?}", snap.stats()).into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// A worker that starts while the filesystem is full: it starts, declares and records in
// memory, and what it recorded reaches the file at its next write of any series.

const START_SERIES: usize = 3000;

fn role_full_start(dir: &str, limit: &str) {
    limit_file_size(limit);
    let store = Store::builder(dir)
        .application("multiprocess-test")
        .worker_id(0)
        .open()
        .expect("the store opens on a full filesystem");
    let fam = store
        .counter_family("started", "Series recorded before there was room", &["n"])
        .expect("declaring works on a full filesystem");
    let level = store
        .gauge("level", "A gauge set before there was room", GaugeMode::Max)
        .expect("declaring works on a full filesystem");
    level.set(5.0);
    for i in 0..START_SERIES {
        fam.labels(&[&format!("series-{i:05}")]).inc();
    }
    let errors = store
        .snapshot()
        .map(|s| s.stats().store_errors.iter().map(|(_, n)| n).sum::<u64>())
        .unwrap_or(0);
    say(format!("started {errors}"));
    assert_eq!(read_stdin_line(), "room");
    limit_file_size("none");
    // Past the retry interval, one write of one series: the next chance for all.
    std::thread::sleep(Duration::from_millis(700));
    fam.labels(&["series-00000"]).inc();
    say("wrote one");
    wait_for_stdin_eof();
}

fn full_at_start() -> Result<(), Failed> {
    let base = tempfile::tempdir()?;
    let (mnt, guard) = small_tmpfs(base.path())?;
    let mounted = guard.is_some();
    let store_dir = if mounted {
        mnt.join("store")
    } else {
        base.path().join("store")
    };
    std::fs::create_dir(&store_dir)?;
    let filler = mnt.join("filler");
    if mounted {
        // Fill the filesystem to the last block.
        use std::io::Write;
        let mut f = std::fs::File::create(&filler)?;
        let block = vec![1u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    } else {
        eprintln!("full_at_start: cannot mount a tmpfs here; using RLIMIT_FSIZE instead");
    }
    let d = store_dir.to_str().unwrap();
    let limit = if mounted { "none" } else { "0" };
    let mut p = RoleProc::spawn("fullstart", &[d, limit]);
    let errors: u64 = p.expect("started", Duration::from_secs(60)).parse()?;
    if errors == 0 {
        return Err("the failures to write should be counted".into());
    }
    if mounted {
        std::fs::remove_file(&filler)?;
    }
    p.send("room");
    p.expect("wrote one", Duration::from_secs(60));
    let snap = Reader::new(&store_dir)?.snapshot()?;
    let fam = snap.family("started").ok_or("no family in the file")?;
    if fam.series.len() != START_SERIES {
        return Err(format!(
            "{} of {START_SERIES} series in the file after one write",
            fam.series.len()
        )
        .into());
    }
    let want = |labels: &[Box<str>]| if &*labels[0] == "series-00000" { 2 } else { 1 };
    if let Some(s) = fam
        .series
        .iter()
        .find(|s| s.value != Value::Counter(want(&s.labels)))
    {
        return Err(format!("series {:?} = {:?}", s.labels, s.value).into());
    }
    if snap.gauge("level", &[]) != Some(5.0) {
        return Err(format!("gauge {:?}, expected 5", snap.gauge("level", &[])).into());
    }
    p.close_stdin();
    let status = p.wait(Duration::from_secs(10));
    if !status.success() {
        return Err(format!("the worker ended with {status:?}").into());
    }
    Ok(())
}
