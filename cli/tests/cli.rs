//! The `shmetrics` command as an operator runs it: `inspect` (table and JSON) on a
//! directory with every kind of file, `serve` (one directory and several, token file,
//! a directory that disappears, SIGTERM), `scrape` and `compact`.
//!
//! The binary is its own child: with `SHMETRICS_TEST_ROLE` set it runs one role instead of
//! the tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use shmetrics_testing::{RoleProc, Test, free_port, say, wait_for_stdin_eof};

#[rustfmt::skip]
const TESTS: &[(&str, Test)] = &[
    ("inspect_shows_every_kind_of_file", inspect),
    ("serve_one_and_several_directories", serve),
    ("scrape_and_compact", scrape_and_compact),
    ("python_churn_of_2000_writers_stays_bounded_and_exact_under_compact_python", python_churn),
];

fn main() {
    shmetrics_testing::run_tests_or_role(TESTS, run_role);
}

fn run_role(role: &str, args: &[String]) {
    match role {
        "writer" => role_writer(&args[0], args.get(1).map(String::as_str)),
        other => panic!("unknown role {other}"),
    }
}

/// A shmetrics writer: one counter, optionally as worker slot `worker`; reports, waits.
fn role_writer(dir: &str, worker: Option<&str>) {
    let mut b = shmetrics_core::Store::builder(dir).application("cli-test");
    if let Some(w) = worker {
        b = b.worker_id(w.parse().unwrap());
    }
    let store = b.open().expect("open");
    store.counter("jobs", "Jobs").expect("counter").inc_by(5);
    say("written");
    wait_for_stdin_eof();
}

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shmetrics"))
}

fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("RUST_LOG", "error")
        .env_remove("PROMETHEUS_MULTIPROC_DIR")
        .output()
        .unwrap()
}

/// Writes Python prometheus_client files into `dir` from a real Python process: a
/// counter, a livesum gauge, a histogram and a summary.
fn python_files(dir: &Path) {
    shmetrics_testing::ensure_python_prometheus_client();
    let script = r#"
import os, sys
from prometheus_client import Counter, Gauge, Histogram, Summary
Counter("py_jobs", "Jobs", ["q"]).labels("a").inc(3)
Gauge("py_inflight", "In flight", multiprocess_mode="livesum").set(2)
Histogram("py_latency_seconds", "Latency").observe(0.2)
Summary("py_size_bytes", "Size").observe(10)
"#;
    let ok = Command::new("python3")
        .args(["-c", script])
        .env("PROMETHEUS_MULTIPROC_DIR", dir)
        .status()
        .unwrap()
        .success();
    assert!(ok, "the Python writer failed");
}

/// What is checked of one file: which, the file found, and the check.
type Check<'a> = (
    &'a str,
    Option<serde_json::Value>,
    &'a dyn Fn(&serde_json::Value) -> bool,
);

fn inspect() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    // A dead native writer, then an accumulator (a store opening the directory folds it),
    // a live one, Python files, a corrupt native file, a corrupt Python file, a foreign
    // file and a symlink.
    let mut dead = RoleProc::spawn("writer", &[d]);
    dead.expect("written", Duration::from_secs(30));
    dead.close_stdin();
    dead.wait(Duration::from_secs(10));
    let mut folder = RoleProc::spawn("writer", &[d, "3"]);
    folder.expect("written", Duration::from_secs(30));
    python_files(dir.path());
    std::fs::write(
        dir.path().join("broken.shm"),
        b"not a store file at all, long enough to be read",
    )?;
    std::fs::write(dir.path().join("counter_1.db"), [0xffu8; 64])?;
    std::fs::write(dir.path().join("notes.txt"), b"hello")?;
    std::os::unix::fs::symlink("/etc/hostname", dir.path().join("gauge_livesum_2.db"))?;

    let out = run(&["inspect", "--json", d]);
    if !out.status.success() {
        return Err(format!("inspect --json failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let files = v["files"].as_array().ok_or("no files")?;
    let find = |pred: &dyn Fn(&serde_json::Value) -> bool| files.iter().find(|f| pred(f)).cloned();
    let kind = |k: &str| {
        let k = k.to_string();
        move |f: &serde_json::Value| f["kind"] == k.as_str()
    };
    let checks: Vec<Check> = vec![
        ("accumulator", find(&kind("accumulator")), &|f| {
            f["live"].is_null() && f["series"] == 1
        }),
        ("live worker slot 3", find(&kind("native slot")), &|f| {
            f["live"] == true && f["worker"] == 3 && f["series"] == 1 && f["pid"].is_string()
        }),
        (
            "python counter",
            find(&|f| f["kind"] == "python counter" && f["problem"].is_null()),
            &|f| f["series"] == 1,
        ),
        (
            "python gauge livesum",
            find(&|f| f["kind"] == "python gauge livesum" && f["problem"].is_null()),
            &|f| f["series"] == 1,
        ),
        ("python histogram", find(&kind("python histogram")), &|f| {
            f["series"].as_u64() > Some(2)
        }),
        ("python summary", find(&kind("python summary")), &|f| {
            f["series"] == 2
        }),
        ("corrupt native", find(&|f| f["name"] == "broken.shm"), &|f| {
            f["problem"].is_string()
        }),
        ("corrupt python", find(&|f| f["name"] == "counter_1.db"), &|f| {
            f["problem"].as_str().is_some_and(|p| p.starts_with("corrupt"))
        }),
        ("foreign", find(&|f| f["name"] == "notes.txt"), &|f| {
            f["kind"] == "foreign" && f["bytes"] == 5
        }),
        ("symlink", find(&|f| f["name"] == "gauge_livesum_2.db"), &|f| {
            f["problem"].as_str().is_some_and(|p| p.contains("symbolic link"))
        }),
    ];
    for (what, f, ok) in checks {
        match f {
            Some(f) if ok(&f) => {}
            other => return Err(format!("{what}: {other:?}\nin {v:#}").into()),
        }
    }
    if v["application"] != "cli-test" {
        return Err(format!("application: {}", v["application"]).into());
    }
    if v["totals"]["files"].as_u64() != Some(files.len() as u64) {
        return Err(format!("totals: {}", v["totals"]).into());
    }
    // The table: one line per file, the problems under theirs, the totals.
    let out = run(&["inspect", d]);
    let table = String::from_utf8(out.stdout)?;
    for needle in [
        "accumulator",
        "native slot",
        "live",
        "python gauge livesum",
        "python summary",
        "notes.txt",
        "foreign",
        "^ ",
        "total:",
        "(application: cli-test)",
    ] {
        if !table.contains(needle) {
            return Err(format!("no {needle:?} in the table:\n{table}").into());
        }
    }
    // A world-writable directory is a problem of the directory.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))?;
    let v: serde_json::Value = serde_json::from_slice(&run(&["inspect", "--json", d]).stdout)?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
    if !v["problems"].as_array().is_some_and(|p| {
        p.iter()
            .any(|p| p.as_str().is_some_and(|p| p.contains("world-writable")))
    }) {
        return Err(format!("no world-writable problem: {}", v["problems"]).into());
    }
    folder.close_stdin();
    folder.wait(Duration::from_secs(10));
    Ok(())
}

/// A `shmetrics serve` process, killed if a test returns before stopping it.
struct Server(Option<Child>);

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start(args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut c = Command::new(bin());
    c.args(args)
        .env("RUST_LOG", "error")
        .env_remove("METRICS_AUTH_TOKEN")
        .env_remove("ENABLE_METRICS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    Server(Some(c.spawn().unwrap()))
}

fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match shmetrics_testing::try_http_request(([127, 0, 0, 1], port).into(), "GET", path, headers) {
            Ok((status, _, body)) => return (status, String::from_utf8_lossy(&body).into_owned()),
            Err(e) if Instant::now() > deadline => panic!("GET {path}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn stop(mut server: Server) -> Result<(), Failed> {
    let mut child = server.0.take().ok_or("stopped twice")?;
    // SAFETY: kill(2) on a process this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                return Err(format!("serve exited with {status} on SIGTERM").into());
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("serve did not stop on SIGTERM".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn serve() -> Result<(), Failed> {
    let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    python_files(a.path());
    let mut w = RoleProc::spawn("writer", &[b.path().to_str().unwrap()]);
    w.expect("written", Duration::from_secs(30));

    // One directory, a token from a file.
    let token = a
        .path()
        .parent()
        .unwrap()
        .join(format!("token-{}", std::process::id()));
    std::fs::write(&token, "s3cret\n")?;
    let port = free_port();
    let one = start(
        &[
            "serve",
            "--dir",
            a.path().to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--token-file",
            token.to_str().unwrap(),
        ],
        &[],
    );
    let (status, _) = get(port, "/metrics", &[]);
    if status != 401 {
        return Err(format!("without the token: {status}").into());
    }
    let (status, body) = get(port, "/metrics", &[("authorization", "Bearer s3cret")]);
    if status != 200 || !body.contains(r#"py_jobs_total{q="a"} 3"#) || !body.contains("# EOF") {
        return Err(format!("with the token: {status}\n{body}").into());
    }
    stop(one)?;
    std::fs::remove_file(&token)?;

    // Two named directories on one port; one of them removed while served.
    let port = free_port();
    let two = start(
        &[
            "serve",
            "--dir",
            &format!("py={}", a.path().display()),
            "--dir",
            &format!("native={}", b.path().display()),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ],
        &[],
    );
    let (s1, py) = get(port, "/metrics/py", &[]);
    let (s2, native) = get(port, "/metrics/native", &[]);
    if s1 != 200 || !py.contains("py_jobs_total") || py.contains("\njobs_total") {
        return Err(format!("/metrics/py: {s1}\n{py}").into());
    }
    if s2 != 200 || !native.contains("jobs_total 5") || native.contains("py_jobs") {
        return Err(format!("/metrics/native: {s2}\n{native}").into());
    }
    let (s, _) = get(port, "/metrics", &[]);
    if s != 404 {
        return Err(format!("/metrics with named directories: {s}").into());
    }
    let a_path = a.path().to_path_buf();
    a.close()?;
    let (s, _) = get(port, "/metrics/py", &[]);
    if s != 500 {
        return Err(format!("a removed directory: {s}, not 500").into());
    }
    std::fs::create_dir(&a_path)?;
    python_files(&a_path);
    let (s, body) = get(port, "/metrics/py", &[]);
    if s != 200 || !body.contains("shmetrics_exporter_scrape_errors_total 1") {
        return Err(format!("the directory back: {s}\n{body}").into());
    }
    stop(two)?;
    std::fs::remove_dir_all(&a_path)?;

    // A missing directory at start: a clear error, exit 2, nothing bound.
    let out = run(&[
        "serve",
        "--dir",
        "/nonexistent/metrics",
        "--listen",
        "127.0.0.1:0",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(2)
        || !err.contains("/nonexistent/metrics")
        || !err.contains("does not exist")
    {
        return Err(format!("missing directory: {:?} {err}", out.status).into());
    }
    w.close_stdin();
    w.wait(Duration::from_secs(10));
    Ok(())
}

fn scrape_and_compact() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut w = RoleProc::spawn("writer", &[d]);
    w.expect("written", Duration::from_secs(30));
    w.close_stdin();
    w.wait(Duration::from_secs(10));
    let out = run(&["scrape", "--format", "text", "--without-self-metrics", d]);
    let text = String::from_utf8(out.stdout)?;
    if !out.status.success()
        || !text.contains("jobs_total 5")
        || text.contains("shmetrics_")
        || text.contains("# EOF")
    {
        return Err(format!("scrape --format text: {text}").into());
    }
    let out = run(&["scrape", "/nonexistent/metrics"]);
    if out.status.code() != Some(2) {
        return Err(format!("scrape of a missing directory: {:?}", out.status).into());
    }
    let out = run(&["compact", d]);
    let said = String::from_utf8(out.stdout)?;
    if !out.status.success() || !said.contains("folded 1 dead writer files") {
        return Err(format!("compact: {said} {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let v: serde_json::Value = serde_json::from_slice(&run(&["inspect", "--json", d]).stdout)?;
    let kinds: Vec<&str> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["kind"].as_str())
        .collect();
    if kinds != ["accumulator"] {
        return Err(format!("after compact: {kinds:?}").into());
    }
    let text = String::from_utf8(run(&["scrape", d]).stdout)?;
    if !text.contains("jobs_total 5") {
        return Err(format!("after compact: {text}").into());
    }
    Ok(())
}

/// The value of the sample `name{labels}` (labels as written) in an exposition.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

/// Files in `dir` now.
fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// 2,000 short-lived prometheus_client writers (8 at once, 40 ms each, marked dead as they exit
/// as gunicorn's child_exit hook does) under `shmetrics serve --compact-python`: the
/// directory stays within the live writers' files plus those of the writers that exit
/// during one compaction interval; the totals are exact; after the churn the exporter
/// reads no more Python files than one live writer has.
fn python_churn() -> Result<(), Failed> {
    const WRITERS: usize = 2000;
    const AT_ONCE: usize = 8;
    const INTERVAL_S: u64 = 1;
    const SERVING_MS: u64 = 40;
    shmetrics_testing::ensure_python_prometheus_client();
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap().to_string();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = start(
        &[
            "serve",
            "--dir",
            &d,
            "--listen",
            &listen,
            "--compact-python",
            "--compact-interval",
            "1",
        ],
        &[],
    );
    assert_eq!(get(port, "/metrics", &[]).0, 200);

    let started = Instant::now();
    let churn = {
        let d = dir.path().to_path_buf();
        std::thread::spawn(move || shmetrics_testing::python_churn(&d, WRITERS, AT_ONCE, SERVING_MS))
    };
    // Sample the directory and scrape while the writers come and go (bounded: the churn
    // ends, or 5 minutes).
    let mut peak = 0;
    let mut scrapes = 0;
    while !churn.is_finished() && started.elapsed() < Duration::from_secs(300) {
        peak = peak.max(count_files(dir.path()));
        if scrapes < 1000 && started.elapsed().as_millis() as usize / 500 > scrapes {
            let (status, body) = get(port, "/metrics", &[]);
            if status != 200 {
                return Err(format!("scrape during the churn: {status}: {body}").into());
            }
            scrapes += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let expected = churn.join().map_err(|_| "churn.py panicked")?;
    let took = started.elapsed().as_secs_f64();
    // The bound: the live writers' files (counter, histogram, livesum gauge each), those
    // of the writers that exit during a compaction interval (and one more, the time a
    // compaction takes), the churn's own parent's gauge file, the accumulator, the lock
    // and turnstile files.
    let rate = WRITERS as f64 / took;
    let bound = 3 * AT_ONCE + (2.0 * rate * (INTERVAL_S as f64 + 1.0)).ceil() as usize + 4;
    eprintln!(
        "churn: {WRITERS} writers in {took:.1} s ({rate:.0}/s), peak {peak} files, bound {bound}, {scrapes} scrapes"
    );
    if peak > bound {
        return Err(format!("{peak} files at the peak, more than the bound {bound}").into());
    }
    if peak >= 2 * WRITERS {
        return Err(format!("{peak} files: nothing was folded").into());
    }
    // Every Python counter and histogram file is folded within two intervals.
    let deadline = Instant::now() + Duration::from_secs(30);
    let left = loop {
        let left: Vec<String> = std::fs::read_dir(dir.path())?
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("counter_") || n.starts_with("histogram_"))
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if !left.is_empty() {
        return Err(format!("Python files not folded: {left:?}").into());
    }
    let (_, body) = get(port, "/metrics", &[]);
    let want = |k: &str| expected[k].as_f64().unwrap();
    let checks = [
        ("churn_jobs_total{queue=\"mail\"}", want("mail")),
        ("churn_jobs_total{queue=\"sms\"}", want("sms")),
        (
            "churn_latency_seconds_count{route=\"/users/{id}\"}",
            want("count"),
        ),
        ("churn_latency_seconds_sum{route=\"/users/{id}\"}", want("sum")),
        ("churn_in_flight", 0.0),
        (
            "shmetrics_exporter_python_folded_files_total",
            2.0 * WRITERS as f64,
        ),
        ("shmetrics_exporter_python_compaction_errors_total", 0.0),
    ];
    for (series, value) in checks {
        if sample(&body, series) != Some(value) {
            return Err(format!("{series}: {:?}, want {value}\n{body}", sample(&body, series)).into());
        }
    }
    let mut cumulative = 0.0;
    for (i, le) in ["0.25", "1.0", "4.0", "+Inf"].iter().enumerate() {
        cumulative += expected["buckets"][i].as_f64().unwrap();
        let series = format!("churn_latency_seconds_bucket{{route=\"/users/{{id}}\",le=\"{le}\"}}");
        if sample(&body, &series) != Some(cumulative) {
            return Err(format!("{series}: {:?}, want {cumulative}", sample(&body, &series)).into());
        }
    }
    // What a scrape reads now: the accumulator and the Python files of no more than one
    // writer (the churn's parent's gauge file), as a directory with one live writer.
    let python_files = sample(&body, "shmetrics_python_files");
    if python_files.is_none_or(|n| n > 3.0) {
        return Err(format!("the exporter still reads {python_files:?} Python files").into());
    }
    stop(server)?;
    // inspect names the Python accumulator.
    let out = run(&["inspect", "--json", &d]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let acc = report["files"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["name"] == "accumulator-python.shm"))
        .ok_or_else(|| format!("no accumulator-python.shm in {report}"))?;
    if acc["kind"] != "python accumulator" || acc["series"] != 3 {
        return Err(format!("the Python accumulator as inspect shows it: {acc}").into());
    }
    Ok(())
}
