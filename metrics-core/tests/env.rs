//! `PROMETHEUS_MULTIPROC_DIR`, the variable Python users already set, and the deployment's
//! settings (`SHMETRICS_APPLICATION`, `SHMETRICS_FILE_MODE`, `METRICS_AUTH_TOKEN`,
//! `ENABLE_METRICS`). One test in this binary, so changing the environment races with
//! nothing.

use std::os::unix::fs::PermissionsExt;

use shmetrics_core::{ENV_APPLICATION, ENV_DIR, ENV_FILE_MODE, Error, Store};

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
    let open = MetricsEndpoint::from_env(&store).unwrap();
    assert!(open.is_enabled() && !open.requires_token());
    assert_eq!(open.respond(req(None)).status, 200);
    // SAFETY: as above.
    unsafe {
        std::env::set_var(ENV_AUTH_TOKEN, "t0ken");
        std::env::set_var(ENV_ENABLE, "true");
    }
    let guarded = MetricsEndpoint::from_env(&store).unwrap();
    assert_eq!(guarded.respond(req(None)).status, 401);
    assert_eq!(guarded.respond(req(Some(b"Bearer nope"))).status, 401);
    let ok = guarded.respond(req(Some(b"Bearer t0ken")));
    assert_eq!(ok.status, 200);
    assert!(String::from_utf8(ok.body).unwrap().contains("from_env_total 1"));
    // Every usual false spelling switches the endpoint off; an unknown value is refused.
    for off in ["false", "disabled", "disable", "n", "none", "f", "0.0", "OFF"] {
        // SAFETY: as above.
        unsafe { std::env::set_var(ENV_ENABLE, off) };
        let e = MetricsEndpoint::from_env(&store).unwrap();
        assert_eq!(e.respond(req(Some(b"Bearer t0ken"))).status, 404, "{off}");
    }
    // SAFETY: as above.
    unsafe { std::env::set_var(ENV_ENABLE, "maybe") };
    let e = MetricsEndpoint::from_env(&store).unwrap_err().to_string();
    assert!(e.contains("ENABLE_METRICS") && e.contains("maybe"), "{e}");
    // A token with a trailing newline (written by `echo`) still matches; one with a
    // space inside cannot be sent and is refused.
    // SAFETY: as above.
    unsafe {
        std::env::set_var(ENV_ENABLE, "yes");
        std::env::set_var(ENV_AUTH_TOKEN, "t0ken \n");
    }
    let trimmed = MetricsEndpoint::from_env(&store).unwrap();
    assert_eq!(trimmed.respond(req(Some(b"Bearer t0ken"))).status, 200);
    // SAFETY: as above.
    unsafe { std::env::set_var(ENV_AUTH_TOKEN, "t0 ken") };
    let e = MetricsEndpoint::from_env(&store).unwrap_err().to_string();
    assert!(e.contains("METRICS_AUTH_TOKEN"), "{e}");
    // SAFETY: as above.
    unsafe { std::env::remove_var(ENV_AUTH_TOKEN) };

    // The application identity of a deployment: one binary, two APIs, one directory by
    // mistake: the second is refused.
    let shared = dir.path().join("by-mistake");
    // SAFETY: as above.
    unsafe { std::env::set_var(ENV_APPLICATION, "ckms") };
    let first = Store::builder(&shared).application("same-binary").open().unwrap();
    assert_eq!(first.application(), "ckms");
    // SAFETY: as above.
    unsafe { std::env::set_var(ENV_APPLICATION, "delphix") };
    let e = Store::builder(&shared)
        .application("same-binary")
        .open()
        .unwrap_err();
    assert!(matches!(e, Error::WrongApplication { .. }), "{e}");
    assert!(
        e.to_string().contains("ckms") && e.to_string().contains("delphix"),
        "{e}"
    );
    // SAFETY: as above.
    unsafe { std::env::remove_var(ENV_APPLICATION) };

    // The file mode of a deployment, applied whatever the umask.
    // SAFETY: as above.
    unsafe { std::env::set_var(ENV_FILE_MODE, "0640") };
    let moded = Store::open(dir.path().join("moded")).unwrap();
    moded.counter("m", "m").unwrap().inc();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&moded.file_path().unwrap()), 0o640);
    assert_eq!(mode(&dir.path().join("moded")), 0o750);
    // SAFETY: as above.
    unsafe { std::env::set_var(ENV_FILE_MODE, "rw-r-----") };
    let e = Store::open(dir.path().join("moded")).unwrap_err().to_string();
    assert!(e.contains("SHMETRICS_FILE_MODE"), "{e}");
    // SAFETY: as above.
    unsafe { std::env::remove_var(ENV_FILE_MODE) };
}

/// A scrape request with this `Authorization` header.
fn req(authorization: Option<&[u8]>) -> shmetrics_core::http::ScrapeRequest<'_> {
    shmetrics_core::http::ScrapeRequest {
        authorization,
        ..Default::default()
    }
}
