//! `PROMETHEUS_MULTIPROC_DIR`, the variable Python users already set. One test in this
//! binary, so changing the environment races with nothing.

use shmetrics_core::{ENV_DIR, Error, Store};

#[test]
fn store_from_env() {
    // SAFETY: the only test of this binary; no other thread reads the environment.
    unsafe { std::env::remove_var(ENV_DIR) };
    let e = Store::from_env().unwrap_err();
    assert!(matches!(e, Error::EnvNotSet { .. }));
    let msg = e.to_string();
    assert!(msg.contains("PROMETHEUS_MULTIPROC_DIR is not set"), "{msg}");
    assert!(msg.contains("/dev/shm/prometheus/<api>"), "{msg}");

    // SAFETY: as above.
    unsafe { std::env::set_var(ENV_DIR, "") };
    assert!(matches!(Store::from_env(), Err(Error::EnvNotSet { .. })));

    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("api");
    // SAFETY: as above.
    unsafe { std::env::set_var(ENV_DIR, &sub) };
    let store = Store::from_env().unwrap();
    assert_eq!(store.dir(), sub);
    store.counter("from_env", "x").unwrap().inc();
    assert!(store.file_path().unwrap().starts_with(&sub));
}
