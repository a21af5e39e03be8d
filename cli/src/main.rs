//! `shmetrics`: serve, scrape, inspect and compact a metrics directory, shmetrics files
//! and Python `prometheus_client` multiprocess files (`PROMETHEUS_MULTIPROC_DIR`) alike.
//!
//! ```sh
//! shmetrics serve --dir /dev/shm/prometheus/ckms --listen 127.0.0.1:9464
//! shmetrics inspect /dev/shm/prometheus/ckms
//! ```
//!
//! Exit codes: 0 on success; 2 for a usage error or a directory that cannot be read; 1
//! for any other failure.

mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc keeps the memory a scrape frees for the next one: with the system allocator,
/// the few megabytes a scrape of a large directory allocates go back to the kernel after
/// each scrape and come back as fresh pages, zeroed and faulted in one by one.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use shmetrics_core::{Format, Inspection, PythonLiveness, Reader};

#[derive(Parser)]
#[command(
    name = "shmetrics",
    version,
    about = "Serve, scrape, inspect and compact a metrics directory: shmetrics files and Python \
             prometheus_client multiprocess files (PROMETHEUS_MULTIPROC_DIR) alike.",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serves the merged view of one or more directories over HTTP, for Prometheus.
    ///
    /// Bearer token from METRICS_AUTH_TOKEN or --token-file (compared in constant time),
    /// ENABLE_METRICS=false switches it off (404), gzip and the format each scraper asks
    /// for (OpenMetrics, Prometheus text 0.0.4, protobuf), the store's self-metrics. Stops
    /// on SIGTERM or SIGINT.
    ///
    /// One directory is served at --path. Several, each named (--dir NAME=DIR), are served
    /// at --path/NAME on the same listener: one exporter for the five APIs of a host, one
    /// Prometheus job (metrics_path) per API.
    ///
    /// Example, beside a gunicorn API:
    ///
    ///   shmetrics serve --dir /dev/shm/prometheus/ckms --listen 127.0.0.1:9464 --python-liveness proc
    ///
    /// Several APIs: shmetrics serve --dir ckms=/dev/shm/prometheus/ckms --dir kms=/dev/shm/prometheus/kms
    /// (scraped at /metrics/ckms and /metrics/kms).
    Serve {
        /// A directory (DIR), or a named one (NAME=DIR, served at PATH/NAME). Repeat for
        /// several (all named).
        #[arg(long = "dir", required = true, value_name = "[NAME=]DIR")]
        dirs: Vec<String>,
        /// Address and port to listen on.
        #[arg(long, default_value = "127.0.0.1:9464", value_name = "ADDR:PORT")]
        listen: std::net::SocketAddr,
        /// Path of the exposition (the prefix of the named directories' paths).
        #[arg(long, default_value = "/metrics")]
        path: String,
        /// A file holding the bearer token scrapers must send (instead of METRICS_AUTH_TOKEN).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        #[command(flatten)]
        python: PythonOpts,
        /// Folds the counter and histogram files of dead Python processes into the
        /// directory's Python accumulator every --compact-interval, and deletes them: a
        /// directory whose workers come and go (max_requests) stays bounded. Needs write
        /// access to the directory, and processes in this exporter's pid namespace. Safe
        /// only when nothing reads the directory with Python's MultiProcessCollector (it
        /// cannot read the accumulator).
        #[arg(long)]
        compact_python: bool,
        /// Seconds between two Python compactions.
        #[arg(long, default_value = "10", value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
        compact_interval: u64,
    },
    /// Prints the merged exposition of a directory.
    ///
    /// Example: shmetrics scrape --format text /dev/shm/prometheus/ckms | promtool check metrics
    Scrape {
        /// The directory (default: PROMETHEUS_MULTIPROC_DIR).
        #[arg(env = "PROMETHEUS_MULTIPROC_DIR")]
        dir: PathBuf,
        /// openmetrics, text (Prometheus 0.0.4) or protobuf (binary, length-delimited).
        #[arg(long, default_value = "openmetrics")]
        format: Format,
        /// Leaves out the shmetrics_* self-metrics.
        #[arg(long)]
        without_self_metrics: bool,
        #[command(flatten)]
        python: PythonOpts,
    },
    /// Shows each file of a directory: its kind, writer, live or dead, series, size, and
    /// why it is not read if it is not; the directory's owner application and problems.
    ///
    /// Example: shmetrics inspect /dev/shm/prometheus/ckms (or --json for scripts)
    Inspect {
        /// The directory (default: PROMETHEUS_MULTIPROC_DIR).
        #[arg(env = "PROMETHEUS_MULTIPROC_DIR")]
        dir: PathBuf,
        /// One JSON object instead of the table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        python: PythonOpts,
    },
    /// Folds the files of dead shmetrics writers into the directory's accumulator now
    /// (what a store does on its own past its threshold); with --python, the counter and
    /// histogram files of dead Python processes too.
    ///
    /// Example: shmetrics compact /dev/shm/prometheus/ckms
    Compact {
        /// The directory (default: PROMETHEUS_MULTIPROC_DIR).
        #[arg(env = "PROMETHEUS_MULTIPROC_DIR")]
        dir: PathBuf,
        /// Also folds the counter and histogram files of Python processes that are gone
        /// into the Python accumulator, and deletes them. Safe only when nothing reads the
        /// directory with Python's MultiProcessCollector (it cannot read the accumulator).
        #[arg(long)]
        python: bool,
    },
}

/// How Python files are read.
#[derive(clap::Args, Clone, Copy)]
struct PythonOpts {
    /// How the process of a Python live* gauge file (livesum, livemax, ...) is judged
    /// alive: `files`, Python's rule (a file present is a live process: after a SIGKILL
    /// the dead worker's gauges stay counted), or `proc` (only while /proc shows its
    /// process, guarded against pid reuse).
    #[arg(long, value_enum, default_value = "files")]
    python_liveness: Liveness,
}

#[derive(Clone, Copy, ValueEnum)]
enum Liveness {
    Files,
    Proc,
}

impl PythonOpts {
    fn reader(self, dir: &std::path::Path) -> shmetrics_core::Result<Reader> {
        let mut r = Reader::new(dir)?;
        r.python_liveness(match self.python_liveness {
            Liveness::Files => PythonLiveness::Files,
            Liveness::Proc => PythonLiveness::Proc,
        });
        Ok(r)
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            dirs,
            listen,
            path,
            token_file,
            python,
            compact_python,
            compact_interval,
        } => serve::run(
            &dirs,
            listen,
            &path,
            token_file.as_deref(),
            python,
            compact_python.then(|| std::time::Duration::from_secs(compact_interval)),
        ),
        Command::Scrape {
            dir,
            format,
            without_self_metrics,
            python,
        } => scrape(&dir, format, without_self_metrics, python),
        Command::Inspect { dir, json, python } => inspect(&dir, json, python),
        Command::Compact { dir, python } => compact(&dir, python),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("shmetrics: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Other(msg)) => {
            eprintln!("shmetrics: {msg}");
            ExitCode::from(1)
        }
    }
}

/// Why a command failed: the directory or the arguments (exit 2), or anything else (1).
enum Failure {
    Usage(String),
    Other(String),
}

impl From<shmetrics_core::Error> for Failure {
    fn from(e: shmetrics_core::Error) -> Self {
        match e {
            shmetrics_core::Error::Directory { .. } | shmetrics_core::Error::InvalidOption { .. } => {
                Failure::Usage(e.to_string())
            }
            e => Failure::Other(e.to_string()),
        }
    }
}

fn scrape(
    dir: &std::path::Path,
    format: Format,
    without_self_metrics: bool,
    python: PythonOpts,
) -> Result<(), Failure> {
    use std::io::Write;
    let snapshot = python.reader(dir)?.snapshot()?;
    let snapshot = if without_self_metrics {
        snapshot.without_self_metrics()
    } else {
        snapshot
    };
    let body = snapshot.encode_as(format, prometheus_client::registry::Registry::default())?;
    std::io::stdout()
        .lock()
        .write_all(&body)
        .map_err(|e| Failure::Other(format!("cannot write the exposition: {e}")))
}

fn inspect(dir: &std::path::Path, json: bool, python: PythonOpts) -> Result<(), Failure> {
    let report = python.reader(dir)?.inspect()?;
    if json {
        println!("{}", inspection_json(&report));
    } else {
        print!("{}", inspection_table(&report));
    }
    Ok(())
}

/// A store on `dir` for compactions, under the application that owns the directory.
fn compacting_store(dir: &std::path::Path) -> shmetrics_core::Result<shmetrics_core::Store> {
    let application = Reader::new(dir)?.application();
    let mut builder = shmetrics_core::Store::builder(dir).compact_on_open(false);
    if let Some(app) = &application {
        builder = builder.application(app);
    }
    builder.open()
}

fn compact(dir: &std::path::Path, python: bool) -> Result<(), Failure> {
    let store = compacting_store(dir)?;
    if python {
        let stats = store.compact_python()?;
        println!(
            "folded {} files of dead Python processes ({} deleted, {} kept: see shmetrics inspect); the Python accumulator holds {} series",
            stats.folded, stats.deleted, stats.kept, stats.series
        );
    }
    let stats = store.compact()?;
    println!(
        "folded {} dead writer files ({} deleted, {} leftover temporary files removed); the accumulator holds {} series{}",
        stats.folded,
        stats.deleted,
        stats.temporary_removed,
        stats.series,
        if stats.rewritten {
            ""
        } else {
            " (not rewritten: nothing to fold)"
        }
    );
    Ok(())
}

/// The report as one JSON object.
fn inspection_json(r: &Inspection) -> String {
    let (files, series, bytes) = r.totals();
    serde_json::json!({
        "dir": r.dir.display().to_string(),
        "application": r.application,
        "problems": r.problems,
        "files": r.files.iter().map(|f| serde_json::json!({
            "name": f.name,
            "kind": f.kind,
            "pid": f.pid,
            "worker": f.worker,
            "live": f.live,
            "folded": f.folded,
            "series": f.series,
            "bytes": f.bytes,
            "problem": f.problem,
        })).collect::<Vec<_>>(),
        "totals": {"files": files, "series": series, "bytes": bytes},
    })
    .to_string()
}

/// The report as a table an operator reads at a glance.
fn inspection_table(r: &Inspection) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}  (application: {})",
        r.dir.display(),
        r.application.as_deref().unwrap_or("none recorded")
    );
    for p in &r.problems {
        let _ = writeln!(out, "problem: {p}");
    }
    let rows: Vec<[String; 7]> = r
        .files
        .iter()
        .map(|f| {
            let state = match (f.live, f.folded) {
                (_, true) => "folded",
                (Some(true), _) => "live",
                (Some(false), _) => "dead",
                (None, _) => "-",
            };
            [
                f.name.clone(),
                f.kind.clone(),
                f.pid.clone().unwrap_or_else(|| "-".into()),
                f.worker.map_or("-".into(), |w| w.to_string()),
                state.into(),
                f.series.to_string(),
                f.bytes.to_string(),
            ]
        })
        .collect();
    let head = ["FILE", "KIND", "PID", "WORKER", "STATE", "SERIES", "BYTES"];
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut String, cells: &[&str]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i >= 5 {
                let _ = write!(l, "{c:>w$}  ");
            } else {
                let _ = write!(l, "{c:<w$}  ");
            }
        }
        let _ = writeln!(out, "{}", l.trim_end());
    };
    line(&mut out, &head);
    for (row, f) in rows.iter().zip(&r.files) {
        line(&mut out, &row.iter().map(String::as_str).collect::<Vec<_>>());
        if let Some(p) = &f.problem {
            let _ = writeln!(out, "    ^ {p}");
        }
    }
    let (files, series, bytes) = r.totals();
    let _ = writeln!(out, "total: {files} files, {series} series, {bytes} bytes");
    out
}
