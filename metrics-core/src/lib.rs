//! # shmetrics-core
//!
//! One exact Prometheus `/metrics` endpoint for a service that runs as several worker
//! processes on one host: the Rust counterpart of Python `prometheus_client`'s
//! multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`), without its known failures.
//!
//! Every process writes its samples into its own memory-mapped file in a directory
//! (normally on `/dev/shm`, i.e. RAM); the process that answers a scrape merges all files
//! into one exposition, built in a fresh `prometheus_client` registry: OpenMetrics text,
//! the Prometheus text format 0.0.4 or the Prometheus protobuf format ([`Format`], chosen
//! by the scraper's `Accept` header in the `http` endpoint).
//!
//! * **Exact and cheap**: a write is one atomic operation on a shared page, no lock, no
//!   syscall. Counters and histograms of every process are summed, so totals stay exact
//!   and never go backwards when a worker dies, even by `SIGKILL`.
//! * **No supervisor hook**: each writer holds an `flock` on its file for its whole life;
//!   the kernel releases it when the process dies, which is how readers tell live from
//!   dead. `live*` gauge modes drop dead writers on their own.
//! * **fork-safe**: metrics declared at module level (statics) before `fork()` write into
//!   the child's own file in the child, without a `getpid()` per write.
//! * **Robust**: files are versioned (`FORMAT.md`); the reader bounds-checks everything
//!   and skips (and counts) a corrupt file instead of failing the scrape, leaves files of a
//!   newer version alone, retries a file it cannot read for a moment and never replaces
//!   one it could not read; space is reserved with `fallocate`, so a full `/dev/shm` is a
//!   counted error (values wait in memory), never a SIGBUS. A mapped file that another
//!   process cuts short would raise SIGBUS at the next access: the store installs a SIGBUS
//!   handler that answers such faults in its own mappings (a reader reads the file again, a
//!   writer keeps running) and passes every other SIGBUS on, so they end the process as
//!   before. A program that installs its own SIGBUS handler later replaces it.
//! * **Bounded**: every family has a series limit; past it, new label sets share one
//!   overflow series.
//! * **Native histograms** ([`Opts::native`]): Prometheus' sparse exponential buckets,
//!   allocated in each process's file as observations need them and merged exactly across
//!   processes (sent in the protobuf format).
//!
//! ## Example
//!
//! ```
//! use shmetrics_core::{GaugeMode, Store, CONTENT_TYPE};
//! # let dir = tempfile::tempdir().unwrap();
//! # unsafe { std::env::set_var("PROMETHEUS_MULTIPROC_DIR", dir.path()) };
//!
//! // Usually: Store::from_env() (PROMETHEUS_MULTIPROC_DIR=/dev/shm/prometheus/<api>).
//! let store = Store::from_env()?;
//!
//! let requests = store.counter_family("http_requests", "HTTP requests", &["method", "path", "status"])?;
//! let latency = store.histogram_family(
//!     "http_request_duration_seconds",
//!     "Request latency",
//!     &["method", "path"],
//!     &shmetrics_core::DEFAULT_BUCKETS,
//! )?;
//! let in_flight = store.gauge("http_requests_in_flight", "Requests being served", GaugeMode::LiveSum)?;
//!
//! in_flight.inc();
//! requests.labels(&["GET", "/users/{id}", "200"]).inc();
//! latency.labels(&["GET", "/users/{id}"]).observe(0.012);
//! in_flight.dec();
//!
//! // In the /metrics handler, in whichever worker answers:
//! let body = store.scrape()?; // serve with Content-Type: CONTENT_TYPE
//! assert!(body.contains(r#"http_requests_total{method="GET",path="/users/{id}",status="200"} 1"#));
//! # let _ = CONTENT_TYPE;
//! # Ok::<(), shmetrics_core::Error>(())
//! ```
//!
//! ## Declaring metrics at module level
//!
//! Declaring metrics once, at module level, works with `LazyLock`
//! statics; workers forked after the declaration each write their own file:
//!
//! ```
//! use std::sync::LazyLock;
//! use shmetrics_core::{Counter, Family, Store};
//! # fn setup() { let d = tempfile::tempdir().unwrap().keep(); unsafe { std::env::set_var("PROMETHEUS_MULTIPROC_DIR", d) }; }
//! # setup();
//!
//! static STORE: LazyLock<Store> =
//!     LazyLock::new(|| Store::from_env().expect("metrics directory"));
//! static JOBS: LazyLock<Family<Counter>> = LazyLock::new(|| {
//!     STORE.counter_family("jobs", "Jobs done", &["queue"]).expect("valid metric")
//! });
//!
//! JOBS.labels(&["mail"]).inc();
//! assert_eq!(STORE.snapshot()?.counter("jobs", &[("queue", "mail")]), Some(1));
//! # Ok::<(), shmetrics_core::Error>(())
//! ```
//!
//! `fork()` while another thread of the same process is *declaring* a metric or creating
//! a new label set is safe: the fork waits until it is done. Increments on other threads
//! at the moment of the fork are simply not seen by the child, as with any memory.
//!
//! ## Gauges
//!
//! `set`, `inc` and `dec` work in every [`GaugeMode`]; the mode says how the processes'
//! values combine (Python's ten modes: `all`, `liveall`, `min`, `livemin`, `max`,
//! `livemax`, `sum`, `livesum`, `mostrecent`, `livemostrecent`). `all` and `liveall` show
//! one series per process with a `pid` label; the others never add a label.
//!
//! ## Python workers in the same directory
//!
//! The reader also merges the `*.db` files that Python's `prometheus_client` writes in
//! multiprocess mode (`counter_<pid>.db`, `gauge_<mode>_<pid>.db`, `histogram_<pid>.db`,
//! `summary_<pid>.db`; clients 0.18 and later, and older ones), with the rules of its
//! `MultiProcessCollector`: a Rust service or sidecar started with the same
//! `PROMETHEUS_MULTIPROC_DIR` as Python workers serves one `/metrics` for both, written as
//! prometheus_client 0.26 serves it (its name escaping, its `le` strings). A family both
//! sides declare of one type (and gauge mode) adds up, each series keeping its own labels
//! and bucket bounds where the declarations differ (as between two releases of a rolling
//! deploy); one declared with another type keeps the Rust declaration and is counted in
//! `shmetrics_family_conflicts`. Python files are only read, never compacted or deleted,
//! and their `live*` gauges follow Python's rule: a file counts while it exists (the
//! supervisor's `mark_process_dead` removes it). Python summaries (count and sum) keep
//! their `summary` type in [`Store::scrape`], the endpoints and [`Snapshot::encode`].
//! [`Reader`] alone reads such a directory without writing to it; the `scrape` example
//! prints it.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![deny(unreachable_pub)]
#![deny(missing_debug_implementations)]
#![deny(unsafe_op_in_unsafe_fn)]

mod compact;
mod error;
mod family;
mod format;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
#[cfg(feature = "process")]
#[cfg_attr(docsrs, doc(cfg(feature = "process")))]
pub mod process;
mod read;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod recorder;
mod store;
mod sys;
mod write;

pub use compact::CompactionStats;
#[cfg(feature = "python")]
pub use compact::python::PythonCompactionStats;
pub use error::{Error, Result};
pub use family::Family;
pub use family::counter::{Counter, CounterF64};
pub use family::gauge::Gauge;
pub use family::histogram::Histogram;
pub use family::metric::Metric;
pub use format::desc::{DEFAULT_ZERO_THRESHOLD, NativeOpts, OVERFLOW_LABEL_VALUE, Opts};
pub use format::exemplar::MAX_EXEMPLAR_CHARS;
pub use format::names::{DEFAULT_BUCKETS, exponential_buckets, linear_buckets};
pub use format::native::{MAX_SCHEMA, MIN_SCHEMA};
pub use format::{GaugeMode, MAX_HELP_BYTES, MAX_LABEL_VALUE_BYTES, MetricType};
pub use read::Reader;
pub use read::encode::Format;
pub use read::inspect::{FileReport, Inspection};
#[cfg(feature = "python")]
pub use read::python::PythonLiveness;
pub use read::snapshot::{
    HistogramValue, MergedFamily, MergedSeries, NativeBuckets, ScrapeStats, Snapshot, Value,
};
pub use store::{
    CONTENT_TYPE, DEFAULT_COMPACT_THRESHOLD, DEFAULT_MAX_FILE_SIZE, DEFAULT_SERIES_LIMIT, ENV_APPLICATION,
    ENV_DIR, ENV_FILE_MODE, Store, StoreBuilder, encode,
};
