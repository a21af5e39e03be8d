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

    // The endpoint's switches, as in the seed's production guide.
    use shmetrics_core::http::{ENV_AUTH_TOKEN, ENV_ENABLE, MetricsEndpoint};
    // SAFETY: as above.
    unsafe {
        std::env::remove_var(ENV_AUTH_TOKEN);
        std::env::remove_var(ENV_ENABLE);
    }
    let open = MetricsEndpoint::from_env(&store);
    assert!(open.is_enabled() && !open.requires_token());
    assert_eq!(open.respond(None, None).status, 200);
    // SAFETY: as above.
    unsafe {
        std::env::set_var(ENV_AUTH_TOKEN, "t0ken");
        std::env::set_var(ENV_ENABLE, "true");
    }
    let guarded = MetricsEndpoint::from_env(&store);
    assert_eq!(guarded.respond(None, None).status, 401);
    assert_eq!(guarded.respond(Some(b"Bearer nope"), None).status, 401);
    let ok = guarded.respond(Some(b"Bearer t0ken"), None);
    assert_eq!(ok.status, 200);
    assert!(String::from_utf8(ok.body).unwrap().contains("from_env_total 1"));
    // SAFETY: as above.
    unsafe { std::env::set_var(ENV_ENABLE, "false") };
    assert_eq!(
        MetricsEndpoint::from_env(&store)
            .respond(Some(b"Bearer t0ken"), None)
            .status,
        404
    );
}
