//! Helpers shared by the tests that run the examples as real processes.

#![allow(dead_code)] // each test binary uses some of these

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

/// The example binary `name`, as `cargo test` builds it for this package (the examples of
/// a package are built before its tests run; this test does not build anything itself).
pub fn example_bin(name: &str) -> PathBuf {
    // target/<profile>/deps/<test> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("examples").join(name))
        .unwrap();
    assert!(
        bin.exists(),
        "{} is missing: run these tests with `cargo test -p shmetrics-examples` (which builds the \
         examples first), or `cargo build -p shmetrics-examples --examples` before a single test",
        bin.display()
    );
    bin
}

pub use shmetrics_testing::free_port;

/// Whether something accepts connections on `port`.
pub fn answers(port: u16) -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Whether the server answers `/health` with 200 (a refused or reset connection while it
/// starts is a "not yet").
pub fn health(port: u16) -> bool {
    answers(port)
        && shmetrics_testing::try_http_request(([127, 0, 0, 1], port).into(), "GET", "/health", &[])
            .is_ok_and(|(status, ..)| status == 200)
}

/// Waits (at most a minute) until the server on `port` serves `/health`.
pub fn wait_healthy(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !health(port) {
        assert!(Instant::now() < deadline, "the supervisor never served /health");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops a supervisor with SIGTERM (SIGKILL after 20 s).
pub fn stop(mut child: Child) {
    // SAFETY: kill(2) on a process this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
