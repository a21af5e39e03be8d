//! Shared parts of the multi-worker example servers (`examples/axum_workers.rs`,
//! `examples/actix_workers.rs`): a supervisor that runs N worker processes on one port,
//! the metrics directory, and logging.
//!
//! Like gunicorn or Sanic with `--workers`: the supervisor binds the port once and hands
//! the listening socket to every worker (file descriptor 3, systemd's socket-activation
//! convention), so the workers share one accept queue. A worker that dies is restarted
//! with the same worker id, so it resumes its slot file in the store directory; SIGTERM
//! or SIGINT stops all workers gracefully.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use shmetrics_core::Store;

/// Environment variable that turns the executable into worker `<id>`.
pub const WORKER_VAR: &str = "SHMETRICS_EXAMPLE_WORKER";

/// A worker that exits sooner than this after it started failed to start.
pub const START_GRACE: Duration = Duration::from_secs(5);

/// Failed starts in a row after which the supervisor gives up: it stops every worker,
/// releases the port and exits with an error (so that systemd reports the unit failed).
pub const MAX_FAILED_STARTS: u32 = 5;

/// The application this deployment runs as: `SHMETRICS_APPLICATION` (a systemd template
/// unit sets it to its instance name, so one binary can serve several APIs), or `default`.
pub fn application(default: &str) -> String {
    match std::env::var(shmetrics_core::ENV_APPLICATION) {
        Ok(a) if !a.trim().is_empty() => a.trim().to_string(),
        _ => default.to_string(),
    }
}

/// Command-line options of the example servers.
#[derive(Clone, Debug)]
pub struct Options {
    /// Worker processes (default 4).
    pub workers: usize,
    /// Port (default 10010).
    pub port: u16,
    /// Address to listen on (default 127.0.0.1; `0.0.0.0` in a container).
    pub host: IpAddr,
    /// Store directory (default: `PROMETHEUS_MULTIPROC_DIR`, then
    /// `/dev/shm/prometheus/<application>`, then the temporary directory).
    pub dir: Option<PathBuf>,
    /// Whether requests are measured (`--no-metrics` serves without the metrics
    /// middleware, to measure its overhead).
    pub metrics: bool,
    /// Whether the latency histogram has native buckets too (`--native-histograms`): a
    /// Prometheus started with `--enable-feature=native-histograms` scrapes them.
    pub native: bool,
    /// Whether the axum example also runs axum-prometheus' layer (`--axum-prometheus`), a
    /// library that counts requests through the `metrics` facade: its series are merged
    /// across workers like the rest.
    pub axum_prometheus: bool,
    /// Whether each worker samples its process metrics (`--no-process-metrics` turns them
    /// off, to measure what they cost).
    pub process_metrics: bool,
    /// Whether the request metrics are the framework's usual in-process library instead
    /// (`--peer`: axum-prometheus or actix-web-prom, each with its own `/metrics`): to
    /// compare. Each worker then answers `/metrics` with its own requests only, and the
    /// `metrics` facade goes to axum-prometheus' recorder (axum) or nowhere (actix).
    pub peer: bool,
}

impl Options {
    /// Parses `--workers N --port P --host H --dir D` (and `--help`).
    pub fn from_args(application: &str) -> Result<Options, String> {
        let mut o = Options {
            workers: 4,
            port: 10010,
            host: IpAddr::from([127, 0, 0, 1]),
            dir: None,
            metrics: true,
            native: false,
            axum_prometheus: false,
            process_metrics: true,
            peer: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
            match a.as_str() {
                "--workers" => {
                    o.workers = value("--workers")?
                        .parse()
                        .map_err(|e| format!("--workers: {e}"))?
                }
                "--port" => o.port = value("--port")?.parse().map_err(|e| format!("--port: {e}"))?,
                "--host" => o.host = value("--host")?.parse().map_err(|e| format!("--host: {e}"))?,
                "--dir" => o.dir = Some(value("--dir")?.into()),
                "--no-metrics" => o.metrics = false,
                "--native-histograms" => o.native = true,
                "--axum-prometheus" => o.axum_prometheus = true,
                "--no-process-metrics" => o.process_metrics = false,
                "--peer" => o.peer = true,
                "-h" | "--help" => {
                    return Err(format!(
                        "usage: {application} [--workers N (4)] [--port P (10010)] [--host ADDR (127.0.0.1)] [--dir DIR] [--no-metrics] [--native-histograms] [--axum-prometheus] [--no-process-metrics] [--peer]\n\
                         DIR defaults to $PROMETHEUS_MULTIPROC_DIR, then /dev/shm/prometheus/{application}.\n\
                         METRICS_AUTH_TOKEN protects /metrics with a bearer token; ENABLE_METRICS=false turns it off.\n\
                         --native-histograms gives the latency histogram native buckets too (Prometheus with\n\
                         --enable-feature=native-histograms scrapes them). --axum-prometheus (axum) adds\n\
                         axum-prometheus' layer, whose `metrics` counters the store merges like the rest.\n\
                         Each worker samples its process metrics every second (service and per-worker views)\n\
                         unless --no-process-metrics. --peer measures requests with axum-prometheus (axum) or\n\
                         actix-web-prom (actix) instead, each worker serving its own /metrics: for comparisons."
                    ));
                }
                other => return Err(format!("unknown argument {other:?} (try --help)")),
            }
        }
        if o.workers == 0 {
            return Err("--workers must be at least 1".into());
        }
        Ok(o)
    }
}

/// The store directory: `--dir`, `PROMETHEUS_MULTIPROC_DIR`, `/dev/shm/prometheus/<app>`,
/// or (without `/dev/shm`) the temporary directory.
pub fn metrics_dir(options: &Options, application: &str) -> PathBuf {
    if let Some(d) = &options.dir {
        return d.clone();
    }
    if let Some(d) = std::env::var_os(shmetrics_core::ENV_DIR).filter(|d| !d.is_empty()) {
        return d.into();
    }
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    base.join("prometheus").join(application)
}

/// Logs to stderr through `tracing` (`RUST_LOG`, default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

/// What a worker gets from the supervisor.
#[derive(Debug)]
pub struct Worker {
    /// The application this deployment runs as (see [`application`]).
    pub application: String,
    /// Worker id (0..N), stable across restarts.
    pub id: u64,
    /// The shared listening socket.
    pub listener: TcpListener,
    /// The store, opened with the worker id as its slot.
    pub store: Store,
    /// The supervisor's options.
    pub options: Options,
}

/// Runs the example: as the supervisor, or (when started by it) as a worker, which
/// calls `worker_main`. `application` is the default application name ([`application`]).
pub fn main(
    application: &str,
    worker_main: fn(Worker) -> Result<(), Box<dyn std::error::Error>>,
) -> ExitCode {
    init_logging();
    let application = &self::application(application);
    if let Ok(id) = std::env::var(WORKER_VAR) {
        return match run_worker(application, &id, worker_main) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("worker {id}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let options = match Options::from_args(application) {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    match supervise(application, &options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run_worker(
    application: &str,
    id: &str,
    worker_main: fn(Worker) -> Result<(), Box<dyn std::error::Error>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let id: u64 = id.parse()?;
    let options = Options::from_args(application)?;
    let listener = listenfd::ListenFd::from_env()
        .take_tcp_listener(0)?
        .ok_or("no listening socket from the supervisor (LISTEN_FDS)")?;
    let dir = std::env::var_os(shmetrics_core::ENV_DIR)
        .ok_or("PROMETHEUS_MULTIPROC_DIR not set by the supervisor")?;
    let store = Store::builder(dir)
        .application(application)
        .worker_id(id)
        .open()?;
    // Every `metrics::counter!` (and gauge, histogram) of the application and its
    // libraries goes into the store too (with `--peer`, axum-prometheus installs its own).
    if !options.peer {
        shmetrics_core::recorder::install(&store)?;
    }
    tracing::info!(worker = id, pid = std::process::id(), "worker started");
    worker_main(Worker {
        application: application.to_string(),
        id,
        listener,
        store,
        options,
    })
}

/// Starts this worker's process metrics, the service's and its own (`worker` label), with
/// the tokio runtime's when `runtime` is given. A failure is logged: the worker serves
/// without them.
pub fn process_metrics(
    w: &Worker,
    runtime: Option<tokio::runtime::Handle>,
) -> Option<shmetrics_core::process::ProcessMetrics> {
    if !w.options.process_metrics {
        return None;
    }
    let mut b = shmetrics_core::process::ProcessMetrics::builder(&w.store).per_worker(true);
    if let Some(h) = runtime {
        b = b.tokio_runtime(h);
    }
    match b.start() {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!("process metrics off: {e}");
            None
        }
    }
}

/// The supervisor: binds, starts the workers, restarts the ones that die, and stops
/// them all on SIGTERM or SIGINT.
fn supervise(application: &str, options: &Options) -> Result<(), Box<dyn std::error::Error>> {
    let dir = metrics_dir(options, application);
    // Create and check the directory, and the endpoint's settings, now: a clear error
    // before the port is bound and any worker starts.
    let store = Store::builder(&dir).application(application).open()?;
    shmetrics_core::http::MetricsEndpoint::from_env(&store)?;
    drop(store);
    let addr = SocketAddr::new(options.host, options.port);
    let listener = bind(addr)?;
    tracing::info!(
        "{application}: {} workers on http://{addr} (metrics at /metrics), metrics directory {}",
        options.workers,
        dir.display()
    );
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&stop))?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&stop))?;

    let spawn = |id: usize| -> std::io::Result<Child> {
        let fd: OwnedFd = listener.try_clone()?.into();
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(std::env::args_os().skip(1))
            .env(WORKER_VAR, id.to_string())
            .env(shmetrics_core::ENV_APPLICATION, application)
            .env(shmetrics_core::ENV_DIR, &dir)
            .env("LISTEN_FDS", "1")
            .env_remove("LISTEN_PID");
        cmd.fd_mappings(vec![FdMapping {
            parent_fd: fd,
            child_fd: 3,
        }])
        .map_err(std::io::Error::other)?;
        cmd.spawn()
    };
    let mut workers: Vec<Slot> = Vec::with_capacity(options.workers);
    for id in 0..options.workers {
        workers.push(Slot {
            child: Some(spawn(id)?),
            started: Instant::now(),
            failed_starts: 0,
            restart_at: None,
        });
    }
    let mut gave_up = None;
    while !stop.load(Ordering::Relaxed) && gave_up.is_none() {
        std::thread::sleep(Duration::from_millis(100));
        for (id, w) in workers.iter_mut().enumerate() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if let Some(child) = &mut w.child {
                let Some(status) = child.try_wait()? else { continue };
                let pid = child.id();
                w.child = None;
                let ran = w.started.elapsed();
                if ran < START_GRACE {
                    w.failed_starts += 1;
                } else {
                    w.failed_starts = 0;
                }
                if w.failed_starts >= MAX_FAILED_STARTS {
                    gave_up = Some(format!(
                        "worker {id} failed to start {} times in a row (last: {status}, {ran:.1?} after \
                         starting; its error is logged above): giving up",
                        w.failed_starts
                    ));
                    break;
                }
                // A worker that dies at once, again and again, is restarted later and later.
                let delay = match w.failed_starts {
                    0 => Duration::ZERO,
                    n => Duration::from_secs(1 << (n - 1).min(4)),
                };
                tracing::warn!(
                    worker = id,
                    pid,
                    %status,
                    failed_starts = w.failed_starts,
                    "worker exited {ran:.1?} after starting; restarting it in {delay:?}"
                );
                w.restart_at = Some(Instant::now() + delay);
            }
            if w.restart_at.is_some_and(|t| Instant::now() >= t) {
                w.restart_at = None;
                w.child = Some(spawn(id)?);
                w.started = Instant::now();
            }
        }
    }
    tracing::info!("stopping {} workers", workers.len());
    for child in workers.iter().filter_map(|w| w.child.as_ref()) {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for child in workers.iter_mut().filter_map(|w| w.child.as_mut()) {
        loop {
            if child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                tracing::warn!(pid = child.id(), "worker did not stop in time; killing it");
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    drop(listener);
    if let Some(why) = gave_up {
        return Err(why.into());
    }
    tracing::info!("stopped");
    Ok(())
}

/// A worker process of the supervisor, and its restarts.
struct Slot {
    /// `None` while waiting to be restarted.
    child: Option<Child>,
    started: Instant,
    /// Exits within [`START_GRACE`] of starting, in a row.
    failed_starts: u32,
    restart_at: Option<Instant>,
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Longest `/slow` delay.
pub const MAX_SLOW_MS: u64 = 10_000;

/// The request metrics of the examples: the defaults, and native buckets on the latency
/// histogram (beside its classic ones) with `--native-histograms`.
pub fn http_metrics(store: &Store, options: &Options) -> shmetrics_core::http::HttpMetricsBuilder {
    let builder = shmetrics_core::http::HttpMetrics::builder(store);
    if options.native {
        builder.native(shmetrics_core::NativeOpts::default())
    } else {
        builder
    }
}

/// The `/metrics` endpoint of the examples: `METRICS_AUTH_TOKEN`, `ENABLE_METRICS` (an
/// unknown value fails the worker's start), and a build-info gauge of the caller's own in
/// the same exposition.
pub fn metrics_endpoint(
    store: &Store,
    application: &str,
) -> shmetrics_core::Result<shmetrics_core::http::MetricsEndpoint> {
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct BuildLabels {
        application: String,
        version: &'static str,
    }
    let application = application.to_string();
    Ok(
        shmetrics_core::http::MetricsEndpoint::from_env(store)?.registry(move |registry| {
            let info = Family::<BuildLabels, Gauge>::default();
            info.get_or_create(&BuildLabels {
                application: application.clone(),
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
            registry.register(
                "shmetrics_example_build_info",
                "Build of the example server",
                info,
            );
        }),
    )
}
