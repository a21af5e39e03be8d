//! The example supervisor as an operator runs it: two APIs of one binary pointed at one
//! directory by mistake, and one API started twice on one directory. The mistake is
//! refused with a clear error, and a supervisor whose workers cannot start does not sit
//! on its port: it backs off, then exits with an error.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{answers, free_port, health, stop, wait_healthy};

/// The `axum_workers` example, built once for the tests of this binary.
fn axum_workers() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| common::example_bin("axum_workers")).clone()
}

/// A supervisor of `application` on `port`, metrics in `dir`, stderr captured.
fn supervisor(application: &str, port: u16, dir: &std::path::Path) -> Child {
    Command::new(axum_workers())
        .args(["--workers", "2", "--port", &port.to_string(), "--dir"])
        .arg(dir)
        .env("SHMETRICS_APPLICATION", application)
        .env("RUST_LOG", "info")
        .env_remove("PROMETHEUS_MULTIPROC_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The tests of this file run one at a time: each takes two free ports and releases them
/// before its supervisors bind them, so two tests at once could be handed the same port.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits for `child` to exit within `timeout`; its status and stderr.
fn exit_of(mut child: Child, timeout: Duration) -> (std::process::ExitStatus, String) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            return (status, err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the supervisor did not exit within {timeout:?}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_second_api_on_the_same_directory_is_refused_before_binding() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2) = (free_port(), free_port());
    let first = supervisor("ckms", p1, dir.path());
    wait_healthy(p1);
    let second = supervisor("delphix", p2, dir.path());
    let (status, err) = exit_of(second, Duration::from_secs(30));
    assert!(!status.success(), "the second API must fail: {err}");
    assert!(
        err.contains("belongs to application \"ckms\", not \"delphix\""),
        "the error should name both APIs: {err}"
    );
    assert!(!answers(p2), "the refused supervisor must not have kept its port");
    assert!(health(p1), "the first API keeps serving");
    stop(first);
}

#[test]
fn a_supervisor_whose_workers_cannot_start_backs_off_and_exits() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2) = (free_port(), free_port());
    let first = supervisor("ckms", p1, dir.path());
    wait_healthy(p1);
    // The same API again on the same directory: its workers' slots are taken.
    let started = Instant::now();
    let second = supervisor("ckms", p2, dir.path());
    let (status, err) = exit_of(second, Duration::from_secs(90));
    let took = started.elapsed();
    assert!(!status.success(), "it must exit with an error: {err}");
    assert!(
        err.contains("is held by live process"),
        "the workers' reason is logged: {err}"
    );
    assert!(err.contains("failed to start 5 times in a row"), "{err}");
    assert!(err.contains("restarting it in 4s"), "restarts back off: {err}");
    assert!(took >= Duration::from_secs(10), "gave up after only {took:?}");
    assert!(!answers(p2), "the port is released");
    assert!(health(p1), "the first supervisor keeps serving");
    stop(first);
}
