//! Helpers shared by the tests that run the examples as real processes.

use std::path::PathBuf;
use std::process::Command;

/// The example binary `name`, built (or found up to date) by cargo in this test's profile.
pub fn example_bin(name: &str) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-q", "-p", "shmetrics-examples", "--example", name])
        .status()
        .unwrap();
    assert!(status.success(), "cargo build --example {name} failed");
    // target/debug/deps/<test> -> target/debug/examples/<name>
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name)
}
