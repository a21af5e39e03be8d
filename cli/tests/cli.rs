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
use shmetrics_testing::{RoleProc, Test, say, wait_for_stdin_eof};

#[rustfmt::skip]
const TESTS: &[(&str, Test)] = &[
    ("inspect_shows_every_kind_of_file", inspect),
    ("serve_one_and_several_directories", serve),
    ("scrape_and_compact", scrape_and_compact),
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
