//! Ordinary production accidents, with real processes, signals and limits: files that
//! cannot be read for a moment or at all, files of a newer format version, files cut short
//! while they are read, crafted sparse files, low descriptor limits, and stores used
//! across `fork()`. In none of them is a count lost or a process taken down.
//!
//! Like `multiprocess.rs`, the binary is its own child: with `SHMETRICS_TEST_ROLE` set it
//! runs one role instead of the tests.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use shmetrics_core::{Counter, Family, Reader, Store};
use shmetrics_testing::{RoleProc, say, wait_for_stdin_eof};

type Test = fn() -> Result<(), Failed>;

#[rustfmt::skip]
const TESTS: &[(&str, Test)] = &[
    ("an_accumulator_this_process_cannot_read_is_never_replaced", unreadable_accumulator_kept),
    ("files_of_a_newer_format_version_are_left_alone", newer_version_left_alone),
    ("compactions_from_forked_children_lose_nothing", forked_compactions),
    ("files_cut_short_during_a_scrape_loop_never_raise_sigbus", truncation_during_scrapes),
    ("a_writer_whose_file_is_cut_short_keeps_running", writer_file_cut),
    ("a_sigbus_outside_the_stores_mappings_still_ends_the_process", foreign_sigbus_not_swallowed),
    ("a_crafted_sparse_file_allocates_nothing_before_its_records_are_checked", sparse_file),
    ("compaction_of_600_dead_files_works_under_128_descriptors", compaction_low_nofile),
    ("a_slot_worker_starts_beside_2000_dead_files_under_1024_descriptors", start_beside_2000_dead),
    ("300_live_writers_read_exactly_under_128_descriptors", live_writers_low_nofile),
    ("a_growing_live_file_is_never_called_corrupt", growing_live_files),
    ("under_umask_0077_everything_the_store_creates_gets_the_configured_mode", umask_0077),
    ("more_than_1024_writer_files_in_one_process_are_all_released_in_a_fork_child", many_writer_files),
];

fn main() {
    shmetrics_testing::run_tests_or_role(TESTS, run_role);
}

fn run_role(role: &str, args: &[String]) {
    let dir = args[0].as_str();
    match role {
        "writer" => role_writer(dir, args[1].parse().expect("amount")),
        "compact_as" => role_compact_as(dir, args[1].parse().expect("uid")),
        "forkcompact" => role_fork_compact(
            dir,
            args[1].parse().expect("children"),
            args[2].parse().expect("rounds"),
        ),
        "scrapeloop" => role_scrape_loop(dir, args[1].parse().expect("millis")),
        "counterloop" => role_counter_loop(dir),
        "unguarded" => role_unguarded(dir),
        "sparse" => role_sparse(dir),
        "nofile" => role_nofile(dir, args[1].parse().expect("limit"), &args[2]),
        "forkmany" => role_fork_many(dir, args[1].parse().expect("count"), false),
        "livemany" => role_fork_many(dir, args[1].parse().expect("count"), true),
        "grower" => role_grower(dir, args[1].parse().expect("id")),
        "umask" => role_umask(dir),
        "group_reader" => role_group_reader(dir, args[1].parse().expect("gid")),
        "manystores" => role_many_stores(dir, args[1].parse().expect("count")),
        other => panic!("unknown role {other}"),
    }
}

const APP: &str = "accidents-test";

fn builder(dir: &str) -> shmetrics_core::StoreBuilder {
    Store::builder(dir).application(APP)
}

fn jobs(snap: &shmetrics_core::Snapshot) -> Option<u64> {
    snap.counter("jobs", &[])
}

fn set_limit(resource: libc::__rlimit_resource_t, soft: u64) {
    // SAFETY: plain system calls on this process's own limits.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(resource, &mut lim), 0);
        lim.rlim_cur = soft.min(lim.rlim_max);
        assert_eq!(libc::setrlimit(resource, &lim), 0, "setrlimit");
    }
}

/// A writer that adds `amount` to `jobs`, reports, and exits when its stdin closes.
fn role_writer(dir: &str, amount: u64) {
    let store = builder(dir).compact_on_open(false).open().expect("open");
    store.counter("jobs", "Jobs").expect("counter").inc_by(amount);
    say("written");
    wait_for_stdin_eof();
}

/// `n` dead writer files in `dir`, each with its amount in `jobs`.
fn dead_writers(dir: &str, amounts: &[u64]) {
    let mut ws: Vec<RoleProc> = amounts
        .iter()
        .map(|a| RoleProc::spawn("writer", &[dir, &a.to_string()]))
        .collect();
    for w in &mut ws {
        w.expect("written", Duration::from_secs(30));
    }
    for w in &mut ws {
        w.close_stdin();
        assert!(w.wait(Duration::from_secs(10)).success());
    }
}

fn compact(dir: &str) -> Result<(), Failed> {
    builder(dir).compact_on_open(false).open()?.compact()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// An accumulator that cannot be read is never replaced: its totals stay.

/// As user `uid`, opens the store (which compacts) and compacts again explicitly.
fn role_compact_as(dir: &str, uid: u32) {
    // SAFETY: plain system calls changing this (single-threaded) process's identity.
    unsafe {
        assert_eq!(libc::setgid(uid), 0, "setgid");
        assert_eq!(libc::setuid(uid), 0, "setuid");
    }
    let store = builder(dir).open().expect("open");
    match store.compact() {
        Ok(_) => say("compacted"),
        Err(e) => say(format!("refused {e}")),
    }
    let snap = store.snapshot().expect("scrape");
    say(format!("unreadable {}", snap.stats().unreadable_files));
}

fn unreadable_accumulator_kept() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    dead_writers(d, &[1000, 200]);
    compact(d)?;
    dead_writers(d, &[10]);
    let acc = dir.path().join("accumulator.shm");
    let before = std::fs::read(&acc)?;
    if jobs(&Reader::new(d)?.snapshot()?) != Some(1210) {
        return Err("setup: expected 1210".into());
    }
    // Everything belongs to an unprivileged user, but the accumulator, which that user
    // cannot open: for its processes, a file that cannot be read.
    let nobody = 65534u32;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    for e in std::fs::read_dir(dir.path())? {
        let p = e?.path();
        if p != acc {
            std::os::unix::fs::chown(&p, Some(nobody), Some(nobody))?;
        }
    }
    std::os::unix::fs::chown(dir.path(), Some(nobody), Some(nobody))?;
    std::fs::set_permissions(&acc, std::fs::Permissions::from_mode(0o600))?;
    let mut p = RoleProc::spawn("compact_as", &[d, &nobody.to_string()]);
    let outcome = p.expect("", Duration::from_secs(30));
    let unreadable = p.expect("unreadable", Duration::from_secs(30));
    if !p.wait(Duration::from_secs(10)).success() {
        return Err("the compacting process failed".into());
    }
    if !outcome.starts_with("refused") || !outcome.contains("accumulator.shm cannot be read") {
        return Err(format!("compaction should be refused with a clear error: {outcome}").into());
    }
    if unreadable != "1" {
        return Err(format!("the unreadable accumulator should be reported: {unreadable}").into());
    }
    if std::fs::read(&acc)? != before {
        return Err("the accumulator was replaced".into());
    }
    // Readable again: every count is there.
    for e in std::fs::read_dir(dir.path())? {
        std::os::unix::fs::chown(e?.path(), Some(0), Some(0))?;
    }
    std::os::unix::fs::chown(dir.path(), Some(0), Some(0))?;
    let snap = Reader::new(d)?.snapshot()?;
    if jobs(&snap) != Some(1210) {
        return Err(format!("after the accident: jobs {:?}, expected 1210", jobs(&snap)).into());
    }
    compact(d)?;
    if jobs(&Reader::new(d)?.snapshot()?) != Some(1210) {
        return Err("after a later compaction".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Files of a newer format version: reported, never folded, never deleted, never replaced;
// a worker whose slot file is newer writes an ordinary file.

fn set_version(path: &Path, version: u32) -> Result<(), Failed> {
    let mut bytes = std::fs::read(path)?;
    bytes[8..12].copy_from_slice(&version.to_le_bytes());
    std::fs::write(path, bytes)?;
    Ok(())
}

fn newer_version_left_alone() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    dead_writers(d, &[1000, 200]);
    compact(d)?;
    dead_writers(d, &[10, 5]);
    let acc = dir.path().join("accumulator.shm");
    let newer_dead = std::fs::read_dir(dir.path())?
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("w-"))
        .ok_or("no dead writer file")?;
    // A rolling downgrade: a newer version wrote the accumulator and one dead file.
    set_version(&acc, 3)?;
    set_version(&newer_dead, 3)?;
    let acc_bytes = std::fs::read(&acc)?;
    let dead_bytes = std::fs::read(&newer_dead)?;
    let store = builder(d).open()?; // compacts at open
    let refused = store.compact();
    let snap = store.snapshot()?;
    if refused.is_ok() {
        return Err("compaction over a newer accumulator must be refused".into());
    }
    if snap.stats().newer_files != 2 || snap.stats().corrupt_files != 0 {
        return Err(format!("stats {:?}: expected 2 newer files, 0 corrupt", snap.stats()).into());
    }
    if std::fs::read(&acc)? != acc_bytes || std::fs::read(&newer_dead)? != dead_bytes {
        return Err("a newer file was changed".into());
    }
    // The newer version is back: nothing was lost.
    drop(store);
    set_version(&acc, 1)?;
    set_version(&newer_dead, 1)?;
    let snap = Reader::new(d)?.snapshot()?;
    if jobs(&snap) != Some(1215) {
        return Err(format!("jobs {:?}, expected 1215", jobs(&snap)).into());
    }
    // A slot file of a newer version: left alone, the worker writes an ordinary file.
    let store = builder(d).worker_id(3).open()?;
    store.counter("jobs", "Jobs")?.inc();
    let slot = dir.path().join("slot-3.shm");
    drop(store);
    set_version(&slot, 3)?;
    let slot_bytes = std::fs::read(&slot)?;
    let store = builder(d).worker_id(3).open()?;
    store.counter("jobs", "Jobs")?.inc();
    let own = store.file_path().ok_or("no file")?;
    if own == slot || std::fs::read(&slot)? != slot_bytes {
        return Err(format!(
            "the newer slot file was used or changed (wrote {})",
            own.display()
        )
        .into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The README's pattern: a store opened before fork(), then compactions from every child.

static FORK_STORE: LazyLock<Store> = LazyLock::new(|| {
    let dir = std::env::args().nth(1).expect("dir");
    builder(&dir).compact_threshold(usize::MAX).open().expect("open")
});
static FORK_JOBS: LazyLock<Family<Counter>> =
    LazyLock::new(|| FORK_STORE.counter_family("jobs", "Jobs", &[]).expect("counter"));

const FORK_INC: u64 = 1000;

fn role_fork_compact(_dir: &str, children: usize, rounds: usize) {
    FORK_JOBS.labels(&[]).inc();
    let mut pids = Vec::new();
    for _ in 0..children {
        // SAFETY: this role process is single-threaded.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            for _ in 0..rounds {
                // A short-lived grandchild leaves a dead file to fold.
                // SAFETY: as above (each child is single-threaded).
                let g = unsafe { libc::fork() };
                assert!(g >= 0);
                if g == 0 {
                    FORK_JOBS.labels(&[]).inc_by(FORK_INC);
                    // SAFETY: leave without the parent's exit handlers.
                    unsafe { libc::_exit(0) };
                }
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(g, &mut status, 0) };
                FORK_STORE.compact().expect("compaction");
            }
            // SAFETY: leave without the parent's exit handlers.
            unsafe { libc::_exit(0) };
        }
        pids.push(pid);
    }
    for pid in pids {
        let mut status = 0;
        // SAFETY: waiting for our own children.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(rc == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
    say("done");
}

fn forked_compactions() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let (children, rounds) = (4, 40);
    let mut p = RoleProc::spawn("forkcompact", &[d, &children.to_string(), &rounds.to_string()]);
    p.expect("done", Duration::from_secs(120));
    if !p.wait(Duration::from_secs(10)).success() {
        return Err("the forking process failed".into());
    }
    let want = 1 + (children * rounds) as u64 * FORK_INC;
    let got = jobs(&Reader::new(d)?.snapshot()?);
    if got != Some(want) {
        return Err(format!("jobs {got:?}, expected {want}").into());
    }
    compact(d)?;
    let got = jobs(&Reader::new(d)?.snapshot()?);
    if got != Some(want) {
        return Err(format!("after a final compaction: jobs {got:?}, expected {want}").into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Files cut short or rewritten while a long-lived reader scrapes in a loop.

fn role_scrape_loop(dir: &str, millis: u64) {
    let mut reader = Reader::new(dir).expect("reader");
    let end = Instant::now() + Duration::from_millis(millis);
    let mut n = 0u64;
    let mut errors = 0u64;
    while Instant::now() < end {
        match reader.snapshot() {
            Ok(_) => n += 1,
            Err(_) => errors += 1,
        }
    }
    say(format!("scrapes {n} {errors}"));
}

fn python_writes(dir: &str, script: &str) -> Result<(), Failed> {
    shmetrics_testing::ensure_python_prometheus_client();
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("PROMETHEUS_MULTIPROC_DIR", dir)
        .output()?;
    if !out.status.success() {
        return Err(format!("python: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

const PY_WRITER: &str = r#"
from prometheus_client import Counter, Gauge
c = Counter('py_jobs', 'Jobs', ['queue'])
for i in range(400):
    c.labels('q%d' % i).inc(i)
Gauge('py_level', 'Level', multiprocess_mode='max').set(3)
"#;

fn truncation_during_scrapes() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    python_writes(d, PY_WRITER)?;
    dead_writers(d, &[5, 6, 7]);
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(dir.path())?
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.ends_with(".db") || n.starts_with("w-")
        })
        .collect();
    let originals: Vec<Vec<u8>> = files.iter().map(std::fs::read).collect::<Result<_, _>>()?;
    let mut scraper = RoleProc::spawn("scrapeloop", &[d, "4000"]);
    // Cut, empty and rewrite the files in place, over and over, while it scrapes.
    let end = Instant::now() + Duration::from_millis(3500);
    let mut round = 0usize;
    while Instant::now() < end {
        for (i, (path, bytes)) in files.iter().zip(&originals).enumerate() {
            let f = std::fs::OpenOptions::new().write(true).open(path)?;
            match (round + i) % 4 {
                0 => f.set_len(0)?,
                1 => f.set_len(4096.min(bytes.len() as u64 / 2))?,
                2 => f.set_len(bytes.len() as u64 / 3 + 1)?,
                _ => {
                    use std::io::Write;
                    f.set_len(0)?;
                    (&f).write_all(bytes)?;
                }
            }
        }
        round += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    let line = scraper.expect("scrapes", Duration::from_secs(30));
    let status = scraper.wait(Duration::from_secs(10));
    if let Some(sig) = status.signal() {
        return Err(format!("the scraping process was killed by signal {sig} ({line})").into());
    }
    if !status.success() {
        return Err(format!("the scraping process failed: {status:?}").into());
    }
    let scrapes: u64 = line.split(' ').next().unwrap_or("0").parse()?;
    if scrapes < 10 || round < 10 {
        return Err(format!("too little happened: {line}, {round} rounds of damage").into());
    }
    // Files restored: read exactly as before.
    for (path, bytes) in files.iter().zip(&originals) {
        std::fs::write(path, bytes)?;
    }
    let snap = Reader::new(d)?.snapshot()?;
    if jobs(&snap) != Some(18) || snap.get("py_jobs", &[("queue", "q399")]).is_none() {
        return Err(format!("after restoring the files: jobs {:?}", jobs(&snap)).into());
    }
    Ok(())
}

fn role_counter_loop(dir: &str) {
    let store = builder(dir).open().expect("open");
    let c = store.counter("jobs", "Jobs").expect("counter");
    say(format!("file {}", store.file_path().expect("file").display()));
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            wait_for_stdin_eof();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let mut n = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            c.inc();
            n += 1;
            if n % 1000 == 0 {
                // Scrapes of its own, through the cut file too.
                let _ = store.snapshot();
            }
        }
        say(format!("counted {n}"));
    });
}

fn writer_file_cut() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut w = RoleProc::spawn("counterloop", &[d]);
    let file = w.expect("file", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(200));
    // Someone cuts the live writer's file to nothing, then to a page.
    std::fs::OpenOptions::new().write(true).open(&file)?.set_len(0)?;
    std::thread::sleep(Duration::from_millis(200));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)?
        .set_len(4096)?;
    std::thread::sleep(Duration::from_millis(200));
    w.close_stdin();
    let status = w.wait(Duration::from_secs(30));
    if let Some(sig) = status.signal() {
        return Err(format!("the writer was killed by signal {sig}").into());
    }
    if !status.success() {
        return Err(format!("the writer failed: {status:?}").into());
    }
    // The damaged file is reported, not served as if whole.
    let snap = Reader::new(d)?.snapshot()?;
    if snap.stats().corrupt_files + snap.stats().unreadable_files != 1 {
        return Err(format!("the cut file should be reported: {:?}", snap.stats()).into());
    }
    Ok(())
}

/// Maps a file, cuts it and reads past its new end outside any store code.
fn role_unguarded(dir: &str) {
    // A store in the process: its SIGBUS handler is installed.
    let store = builder(dir).open().expect("open");
    store.counter("jobs", "Jobs").expect("counter").inc();
    let path = Path::new(dir).join("plain-mapping");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("file");
    f.set_len(8192).expect("size");
    // SAFETY: a fresh shared mapping of 8192 bytes of our own file.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    f.set_len(0).expect("cut");
    say("reading");
    // SAFETY: deliberately reads a page past the file's end: the kernel raises SIGBUS.
    let v = unsafe { std::ptr::read_volatile(p.cast::<u8>().add(4096)) };
    say(format!("survived {v}"));
}

fn foreign_sigbus_not_swallowed() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut p = RoleProc::spawn("unguarded", &[d]);
    p.expect("reading", Duration::from_secs(30));
    let status = p.wait(Duration::from_secs(30));
    if status.signal() != Some(libc::SIGBUS) {
        let lines = p.drain();
        return Err(format!("expected the process to end with SIGBUS: {status:?} {lines:?}").into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// A crafted sparse file: nothing is allocated for it before its records are checked.

fn role_sparse(dir: &str) {
    // Heap and anonymous memory limited to 512 MiB: an allocation the size of the file
    // aborts the process (file mappings do not count).
    set_limit(libc::RLIMIT_DATA, 512 << 20);
    let mut reader = Reader::new(dir).expect("reader");
    let snap = reader.snapshot().expect("scrape");
    say(format!(
        "jobs {:?} corrupt {}",
        snap.counter("jobs", &[]),
        snap.stats().corrupt_files
    ));
}

fn sparse_file() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    dead_writers(d, &[42]);
    let good = std::fs::read_dir(dir.path())?
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("w-"))
        .ok_or("no writer file")?;
    let header = std::fs::read(&good)?[..128].to_vec();
    for (name, size) in [
        ("w-1-00000000000000aa.shm", 4u64 << 30),
        ("w-1-00000000000000bb.shm", 900u64 << 20),
    ] {
        let mut h = header.clone();
        h[16..24].copy_from_slice(&size.to_le_bytes()); // used: the whole file
        h[40..48].copy_from_slice(&(size ^ 0x5555).to_le_bytes()); // another writer id
        let path = dir.path().join(name);
        std::fs::write(&path, &h)?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)?
            .set_len(size)?;
    }
    let started = Instant::now();
    let mut p = RoleProc::spawn("sparse", &[d]);
    let line = p.expect("jobs", Duration::from_secs(60));
    let status = p.wait(Duration::from_secs(30));
    if !status.success() {
        return Err(format!("the reader ended with {status:?}").into());
    }
    if line != "Some(42) corrupt 2" {
        return Err(format!("expected the good file merged and both sparse files reported: {line}").into());
    }
    if started.elapsed() > Duration::from_secs(20) {
        return Err(format!("reading took {:?}", started.elapsed()).into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Descriptor limits.

fn role_fork_many(dir: &str, count: usize, live: bool) {
    let store = builder(dir)
        .compact_on_open(false)
        .compact_threshold(usize::MAX)
        .open()
        .expect("open");
    let c = store.counter("jobs", "Jobs").expect("counter");
    let mut pids = Vec::new();
    for _ in 0..count {
        // SAFETY: this role process is single-threaded.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            c.inc_by(3);
            if live {
                say("up");
                // Every child holds the parent's stdin: all exit when the test closes it.
                wait_for_stdin_eof();
            }
            // SAFETY: leave without the parent's exit handlers.
            unsafe { libc::_exit(0) };
        }
        pids.push(pid);
    }
    if !live {
        for pid in pids {
            let mut status = 0;
            // SAFETY: waiting for our own children.
            unsafe { libc::waitpid(pid, &mut status, 0) };
        }
        say("done");
        return;
    }
    wait_for_stdin_eof();
    for pid in pids {
        let mut status = 0;
        // SAFETY: waiting for our own children.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
}

/// Under a soft `RLIMIT_NOFILE` of `limit`: `open` (a store, which compacts), `slot` (a
/// worker with a slot: open, declare, scrape) or `read` (a reader's scrape).
fn role_nofile(dir: &str, limit: u64, what: &str) {
    set_limit(libc::RLIMIT_NOFILE, limit);
    let snap = match what {
        "open" => {
            let store = builder(dir).open().expect("open");
            store.snapshot().expect("scrape")
        }
        "slot" => {
            let store = builder(dir).worker_id(0).open().expect("open");
            store.counter("jobs", "Jobs").expect("declare").inc();
            store.snapshot().expect("scrape")
        }
        _ => Reader::new(dir).expect("reader").snapshot().expect("scrape"),
    };
    let st = snap.stats();
    say(format!(
        "jobs {} dead {} corrupt {} unreadable {}",
        snap.counter("jobs", &[]).unwrap_or(0),
        st.dead_files - st.folded_files,
        st.corrupt_files,
        st.unreadable_files
    ));
}

fn make_dead(d: &str, count: usize) -> Result<(), Failed> {
    let mut p = RoleProc::spawn("forkmany", &[d, &count.to_string()]);
    p.expect("done", Duration::from_secs(300));
    if !p.wait(Duration::from_secs(30)).success() {
        return Err("the forking process failed".into());
    }
    Ok(())
}

fn nofile(d: &str, limit: u64, what: &str) -> Result<String, Failed> {
    let mut p = RoleProc::spawn("nofile", &[d, &limit.to_string(), what]);
    let line = p.expect("jobs", Duration::from_secs(120));
    let status = p.wait(Duration::from_secs(30));
    if !status.success() {
        return Err(format!("{what} under {limit} descriptors ended with {status:?}").into());
    }
    Ok(line)
}

fn compaction_low_nofile() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    make_dead(d, 600)?;
    let line = nofile(d, 128, "open")?;
    if line != format!("{} dead 0 corrupt 0 unreadable 0", 600 * 3) {
        return Err(format!("under 128 descriptors: {line}").into());
    }
    let left = std::fs::read_dir(dir.path())?.count();
    if left > 4 {
        return Err(format!("{left} entries left after compaction").into());
    }
    Ok(())
}

fn start_beside_2000_dead() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    make_dead(d, 2000)?;
    let line = nofile(d, 1024, "slot")?;
    if line != format!("{} dead 0 corrupt 0 unreadable 0", 2000 * 3 + 1) {
        return Err(format!("under 1024 descriptors: {line}").into());
    }
    Ok(())
}

fn live_writers_low_nofile() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let n = 300;
    let mut p = RoleProc::spawn("livemany", &[d, &n.to_string()]);
    for _ in 0..n {
        p.expect("up", Duration::from_secs(120));
    }
    let line = nofile(d, 128, "read");
    p.close_stdin();
    p.wait(Duration::from_secs(60));
    let line = line?;
    if line != format!("{} dead 0 corrupt 0 unreadable 0", n * 3) {
        return Err(format!("{n} live writers under 128 descriptors: {line}").into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Files that grow while they are read are live files growing, not corrupt ones.

fn role_grower(dir: &str, id: u64) {
    let store = builder(dir).open().expect("open");
    let fam = store
        .counter_family("grown", "Series created one after the other", &["n"])
        .expect("counter");
    let total = store.counter("jobs", "Jobs").expect("counter");
    say("ready");
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            wait_for_stdin_eof();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let mut i = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 9_000 {
            // Long label values: the file grows fast.
            fam.labels(&[&format!("{id}-{i:06}-{}", "x".repeat(200))]).inc();
            total.inc();
            i += 1;
        }
        say(format!("made {i}"));
    });
}

fn growing_live_files() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut ws: Vec<RoleProc> = (0..3)
        .map(|i| RoleProc::spawn("grower", &[d, &i.to_string()]))
        .collect();
    for w in &mut ws {
        w.expect("ready", Duration::from_secs(30));
    }
    let mut reader = Reader::new(d)?;
    let end = Instant::now() + Duration::from_secs(4);
    let mut last = 0;
    let mut scrapes = 0;
    while Instant::now() < end {
        let snap = reader.snapshot()?;
        let st = snap.stats();
        if st.corrupt_files + st.unreadable_files != 0 {
            return Err(format!("scrape {scrapes}: a live file was skipped: {:?}", st.corrupt).into());
        }
        let now = jobs(&snap).unwrap_or(0);
        if now < last {
            return Err(format!("scrape {scrapes}: jobs went back from {last} to {now}").into());
        }
        last = now;
        scrapes += 1;
    }
    for w in &mut ws {
        w.close_stdin();
    }
    let mut made = 0;
    for w in &mut ws {
        made += w.expect("made", Duration::from_secs(30)).parse::<u64>()?;
    }
    let snap = reader.snapshot()?;
    if jobs(&snap) != Some(made) {
        return Err(format!("jobs {:?}, the writers made {made}", jobs(&snap)).into());
    }
    if scrapes < 20 {
        return Err(format!("only {scrapes} scrapes").into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Permissions: the configured mode, whatever the umask.

fn role_umask(dir: &str) {
    // SAFETY: umask only changes this process's file creation mask.
    unsafe { libc::umask(0o077) };
    let api = Path::new(dir).join("prometheus").join("api");
    let open = || {
        builder(api.to_str().unwrap())
            .file_mode(0o640)
            .worker_id(0)
            .open()
            .expect("open")
    };
    let store = open();
    store.counter("jobs", "Jobs").expect("counter").inc();
    // A dead writer, folded: the accumulator is created too.
    // SAFETY: this role process is single-threaded.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let s = Store::builder(&api)
            .application(APP)
            .file_mode(0o640)
            .open()
            .expect("open");
        s.counter("jobs", "Jobs").expect("counter").inc_by(10);
        // SAFETY: leave without the parent's exit handlers.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    store.compact().expect("compaction");
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    };
    say(format!(
        "modes {:o} {:o} {:o} {:o} {:o}",
        mode(api.parent().unwrap()),
        mode(&api),
        mode(&api.join(".shmetrics.lock")),
        mode(&api.join("slot-0.shm")),
        mode(&api.join("accumulator.shm")),
    ));
    wait_for_stdin_eof();
}

/// Reads the directory as an unprivileged user of group `gid` (a group scraper).
fn role_group_reader(dir: &str, gid: u32) {
    // SAFETY: plain system calls changing this (single-threaded) process's identity.
    unsafe {
        assert_eq!(libc::setgroups(0, std::ptr::null()), 0, "setgroups");
        assert_eq!(libc::setgid(gid), 0, "setgid");
        assert_eq!(libc::setuid(65534), 0, "setuid");
    }
    match Reader::new(dir).and_then(|mut r| r.snapshot()) {
        Ok(snap) => say(format!(
            "jobs {:?} unreadable {}",
            snap.counter("jobs", &[]),
            snap.stats().unreadable_files
        )),
        Err(e) => say(format!("jobs error {e}")),
    }
}

fn umask_0077() -> Result<(), Failed> {
    let base = tempfile::tempdir()?;
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755))?;
    let d = base.path().to_str().unwrap();
    let mut w = RoleProc::spawn("umask", &[d]);
    let modes = w.expect("modes", Duration::from_secs(30));
    if modes != "750 750 640 640 640" {
        return Err(format!("modes of parent, directory, lock, slot, accumulator: {modes}").into());
    }
    let api = base.path().join("prometheus").join("api");
    let gid = std::fs::metadata(&api)?.gid();
    let mut r = RoleProc::spawn("group_reader", &[api.to_str().unwrap(), &gid.to_string()]);
    let line = r.expect("jobs", Duration::from_secs(30));
    r.wait(Duration::from_secs(10));
    w.close_stdin();
    w.wait(Duration::from_secs(10));
    if line != "Some(11) unreadable 0" {
        return Err(format!("a scraper of the group reads: {line}").into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// More than 1,024 writer files in one process.

fn role_many_stores(dir: &str, count: usize) {
    // Two descriptors per store: raise the soft limit to the hard one.
    set_limit(libc::RLIMIT_NOFILE, u64::MAX);
    let mut stores = Vec::with_capacity(count);
    for i in 0..count {
        let sub = Path::new(dir).join(format!("s{i}"));
        let store = builder(sub.to_str().unwrap()).open().expect("open");
        store.counter("jobs", "Jobs").expect("counter").inc();
        stores.push(store);
    }
    // SAFETY: this role process is single-threaded.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // Lives on, holding what it inherited, until the test closes the pipe.
        wait_for_stdin_eof();
        // SAFETY: leave without the parent's exit handlers.
        unsafe { libc::_exit(0) };
    }
    say("forked");
    // The parent exits: every one of its files must now read as dead.
}

fn many_writer_files() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let count = 1100;
    let mut p = RoleProc::spawn("manystores", &[d, &count.to_string()]);
    p.expect("forked", Duration::from_secs(300));
    let status = p.wait(Duration::from_secs(60));
    let mut live = 0;
    let mut total = 0;
    for i in 0..count {
        let snap = Reader::new(dir.path().join(format!("s{i}")))?.snapshot()?;
        live += snap.stats().live_files;
        total += jobs(&snap).unwrap_or(0);
    }
    p.close_stdin();
    if !status.success() {
        return Err(format!("the process ended with {status:?}").into());
    }
    if live != 0 || total != count as u64 {
        return Err(format!(
            "while a fork child runs, {live} of the exited parent's {count} files still look live (total {total})"
        )
        .into());
    }
    Ok(())
}
