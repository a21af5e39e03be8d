//! Helpers shared by the tests that run the examples as real processes.

use std::path::PathBuf;

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
