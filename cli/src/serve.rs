//! `shmetrics serve`: one HTTP listener, one exposition path per directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::Router;
use prometheus_client::metrics::counter::Counter;
use shmetrics_core::Reader;
use shmetrics_core::http::MetricsEndpoint;

use crate::{Failure, PythonOpts};

/// A directory to serve, and the path it is served at.
struct Served {
    name: Option<String>,
    dir: PathBuf,
    path: String,
}

/// Splits `--dir` values into directories and paths: one unnamed directory at `path`, or
/// named ones at `path/NAME`.
fn plan(dirs: &[String], path: &str) -> Result<Vec<Served>, Failure> {
    if !path.starts_with('/') {
        return Err(Failure::Usage(format!("--path {path:?} must start with /")));
    }
    let base = path.trim_end_matches('/');
    let named = |d: &str| -> Option<(String, PathBuf)> {
        let (name, dir) = d.split_once('=')?;
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        ok.then(|| (name.to_string(), PathBuf::from(dir)))
    };
    if dirs.len() == 1 && named(&dirs[0]).is_none() {
        return Ok(vec![Served {
            name: None,
            dir: PathBuf::from(&dirs[0]),
            path: if base.is_empty() { "/".into() } else { base.into() },
        }]);
    }
    let mut out: Vec<Served> = Vec::new();
    for d in dirs {
        let Some((name, dir)) = named(d) else {
            return Err(Failure::Usage(format!(
                "--dir {d:?}: with several directories each is named, NAME=DIR (NAME of letters, digits, - and _), \
                 and served at {base}/NAME"
            )));
        };
        if out.iter().any(|s| s.name.as_deref() == Some(&name)) {
            return Err(Failure::Usage(format!("--dir: the name {name:?} is given twice")));
        }
        let path = format!("{base}/{name}");
        out.push(Served {
            name: Some(name),
            dir,
            path,
        });
    }
    Ok(out)
}

/// The endpoint of one directory: its reader, the environment's token and switch (or the
/// token file's), and the count of its scrapes that failed (the directory gone or
/// unreadable: a 500, logged), shown in the next one that succeeds.
fn endpoint(
    s: &Served,
    token: Option<&str>,
    python: PythonOpts,
    compaction: Option<std::time::Duration>,
) -> Result<(MetricsEndpoint, Counter), Failure> {
    let reader: Reader = python.reader(&s.dir)?;
    let mut endpoint = MetricsEndpoint::for_reader(reader).env()?;
    if let Some(t) = token {
        endpoint = endpoint.bearer_token(Some(t));
    }
    let failures = Counter::<u64>::default();
    let shown = failures.clone();
    let compactions = match compaction {
        Some(every) => Some(compact_python_every(&s.dir, every)?),
        None => None,
    };
    let endpoint = endpoint.registry(move |r| {
        r.register(
            "shmetrics_exporter_scrape_errors",
            "Scrapes of this directory that failed (the directory missing or unreadable) since the exporter started",
            shown.clone(),
        );
        if let Some(c) = &compactions {
            r.register(
                "shmetrics_exporter_python_folded_files",
                "Files of dead Python processes folded into the Python accumulator since the exporter started",
                c.folded.clone(),
            );
            r.register(
                "shmetrics_exporter_python_compaction_errors",
                "Python compactions that failed (logged) since the exporter started",
                c.errors.clone(),
            );
        }
    });
    Ok((endpoint, failures))
}

/// The counters of a directory's Python compactions.
#[derive(Clone)]
struct Compactions {
    folded: Counter,
    errors: Counter,
}

/// Opens a store on `dir` (an error now if the directory cannot be written) and folds the
/// files of dead Python processes every `every`, in a thread of its own: a scrape never
/// waits for more than the directory lock.
fn compact_python_every(dir: &Path, every: std::time::Duration) -> Result<Compactions, Failure> {
    let store = crate::compacting_store(dir)?;
    let counters = Compactions {
        folded: Counter::default(),
        errors: Counter::default(),
    };
    let c = counters.clone();
    let dir = dir.to_path_buf();
    std::thread::Builder::new()
        .name("compact-python".into())
        .spawn(move || {
            let mut failing = false;
            loop {
                match store.compact_python() {
                    Ok(stats) => {
                        c.folded.inc_by(stats.folded as u64);
                        if stats.folded > 0 || stats.kept > 0 {
                            tracing::debug!(
                                dir = %dir.display(),
                                folded = stats.folded,
                                kept = stats.kept,
                                "folded the files of dead Python processes"
                            );
                        }
                        failing = false;
                    }
                    Err(e) => {
                        c.errors.inc();
                        if !failing {
                            tracing::warn!(dir = %dir.display(), "Python compaction failed (retried): {e}");
                        }
                        failing = true;
                    }
                }
                std::thread::sleep(every);
            }
        })
        .map_err(|e| Failure::Other(format!("cannot start the compaction thread: {e}")))?;
    Ok(counters)
}

fn router(served: Vec<(Served, MetricsEndpoint, Counter)>) -> Router {
    let mut app = Router::new();
    for (s, endpoint, failures) in served {
        let route = shmetrics_tower::metrics_route(endpoint);
        let counted =
            axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
                let failures = failures.clone();
                async move {
                    let res = next.run(req).await;
                    if res.status().is_server_error() {
                        failures.inc();
                    }
                    res
                }
            });
        app = app.route(&s.path, route.layer(counted));
    }
    app
}

pub(crate) fn run(
    dirs: &[String],
    listen: SocketAddr,
    path: &str,
    token_file: Option<&Path>,
    python: PythonOpts,
    compaction: Option<std::time::Duration>,
) -> Result<(), Failure> {
    let served = plan(dirs, path)?;
    let token = match token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| Failure::Usage(format!("--token-file {}: {e}", f.display())))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    // Every directory is checked (exists, readable) before the port is bound.
    let mut routes = Vec::new();
    for s in served {
        let (e, failures) = endpoint(&s, token.as_deref(), python, compaction)?;
        routes.push((s, e, failures));
    }
    for (s, ..) in &routes {
        tracing::info!(
            "serving {} at http://{listen}{}{}",
            s.dir.display(),
            s.path,
            s.name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default()
        );
    }
    let app = router(routes);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(format!("cannot start the runtime: {e}")))?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| Failure::Usage(format!("cannot listen on {listen}: {e}")))?;
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                tracing::info!("stopping");
            })
            .await
            .map_err(|e| Failure::Other(format!("server: {e}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_directory_at_the_path_several_named_under_it() {
        let one = plan(&["/d".into()], "/metrics").ok().unwrap();
        assert_eq!((one[0].path.as_str(), one[0].name.is_none()), ("/metrics", true));
        let two = plan(&["ckms=/a".into(), "kms=/b".into()], "/metrics/")
            .ok()
            .unwrap();
        assert_eq!(two[1].path, "/metrics/kms");
        assert_eq!(two[0].dir, PathBuf::from("/a"));
        assert!(plan(&["/a".into(), "/b".into()], "/metrics").is_err());
        assert!(plan(&["x=/a".into(), "x=/b".into()], "/metrics").is_err());
        assert!(plan(&["/a".into()], "metrics").is_err());
    }
}
