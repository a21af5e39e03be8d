//! Process metrics of every worker (feature `process`), and the tokio runtime's (feature
//! `tokio`), merged the way an operator reads a service.
//!
//! Each worker samples itself: a thread of the process (`shmetrics-process`) reads
//! `/proc/self` (through the `procfs` crate) every [interval](ProcessMetricsBuilder::interval),
//! 1 s by default, and writes into the process's own file. Nothing runs on the request
//! path, `/proc/self` is readable in any container or pid namespace, and what a worker
//! wrote stays in its file when it dies, so the service's CPU counter never goes back.
//!
//! The service (no label), as the Prometheus client guidelines name them:
//!
//! | metric | merged over workers |
//! |---|---|
//! | `process_cpu_seconds_total` | sum over every worker that ever wrote, live or dead |
//! | `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`, `process_threads` | sum over live workers |
//! | `process_max_fds` | the lowest of the live workers |
//! | `process_start_time_seconds` | the oldest live worker's start |
//!
//! A worker's CPU time is written as it is sampled: of a worker killed by a signal, the
//! CPU time it used after its last sample is never counted: at most one interval of it
//! (`interval` seconds per thread that was busy, plus however late the sampling thread was
//! scheduled; the kernel counts CPU time in ticks of 10 ms). A worker restarted in the same slot
//! ([`StoreBuilder::worker_id`](crate::StoreBuilder::worker_id)) adds its own CPU time to
//! its predecessors'.
//!
//! Per worker ([`per_worker`](ProcessMetricsBuilder::per_worker), off by default): the
//! same values under their own names, `process_worker_cpu_seconds_total{worker="0"}` and
//! so on, labelled by the stable worker id, never by pid: a restarted worker continues its
//! series (its CPU counter too), and the number of series stays the number of worker ids
//! however often workers restart. The names differ from the service's so that a `sum()`
//! over a standard name never counts a worker twice. A process without a worker id has no
//! per-worker series.
//!
//! A metric that cannot be read (no `/proc`, an unreadable file) is absent until it can
//! be, and each failed read is counted in `shmetrics_store_errors_total{kind="process_read"}`
//! (and logged once); the scrape never fails for it.

#[cfg(feature = "tokio")]
mod runtime;
mod sample;
mod view;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use crate::error::Result;
use crate::store::Store;
use sample::Sampler;

/// Settings of the process metrics of this process.
#[derive(Debug)]
pub struct ProcessMetricsBuilder {
    store: Store,
    interval: Duration,
    per_worker: bool,
    #[cfg(feature = "tokio")]
    runtime: Option<tokio::runtime::Handle>,
}

impl ProcessMetricsBuilder {
    /// How often this process samples itself (default 1 s, at least 10 ms).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Whether each worker also gets its own series, labelled `worker` by its stable
    /// worker id (default `false`).
    pub fn per_worker(mut self, on: bool) -> Self {
        self.per_worker = on;
        self
    }

    /// Samples this tokio runtime too: `tokio_runtime_workers`,
    /// `tokio_runtime_alive_tasks`, `tokio_runtime_global_queue_depth` (sums over live
    /// workers) and `tokio_runtime_busy_seconds_total` (the time its worker threads were
    /// busy, summed over every worker that ever wrote), and per worker as
    /// `tokio_runtime_worker_*{worker}` when [`per_worker`](Self::per_worker) is on.
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub fn tokio_runtime(mut self, handle: tokio::runtime::Handle) -> Self {
        self.runtime = Some(handle);
        self
    }

    /// Takes a first sample now and starts the sampling thread. The families are declared
    /// in the store (a clear error here if another live process declared the names
    /// otherwise).
    pub fn start(self) -> Result<ProcessMetrics> {
        let sampler = Sampler::new(&self.store, self.per_worker)?;
        #[cfg(feature = "tokio")]
        let sampler = match self.runtime {
            Some(h) => sampler.with_runtime(&self.store, h, self.per_worker)?,
            None => sampler,
        };
        sampler.sample();
        let sampler = Arc::new(sampler);
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let running = Arc::new(AtomicBool::new(true));
        let thread = {
            let (sampler, stop, running) = (Arc::clone(&sampler), Arc::clone(&stop), Arc::clone(&running));
            let every = self.interval;
            std::thread::Builder::new()
                .name("shmetrics-process".into())
                .spawn(move || {
                    let (lock, cv) = &*stop;
                    let mut stopped = lock.lock().unwrap_or_else(PoisonError::into_inner);
                    loop {
                        let (guard, _) = cv
                            .wait_timeout(stopped, every)
                            .unwrap_or_else(PoisonError::into_inner);
                        stopped = guard;
                        if *stopped {
                            break;
                        }
                        sampler.sample();
                    }
                    running.store(false, Ordering::Relaxed);
                })
        };
        if let Err(e) = thread {
            tracing::warn!("shmetrics: process metrics sampled only on demand (thread not started: {e})");
            running.store(false, Ordering::Relaxed);
        }
        Ok(ProcessMetrics {
            sampler,
            stop,
            running,
        })
    }
}

/// The process metrics of this process, sampled by a thread until [`stop`](Self::stop)
/// (dropping the handle leaves the thread running).
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// let store = shmetrics_core::Store::open(dir.path())?;
/// let process = shmetrics_core::process::ProcessMetrics::builder(&store).start()?;
/// let text = store.scrape()?;
/// assert!(text.contains("process_resident_memory_bytes "));
/// assert!(text.contains("process_cpu_seconds_total "));
/// process.stop();
/// # Ok::<(), shmetrics_core::Error>(())
/// ```
#[derive(Debug)]
pub struct ProcessMetrics {
    sampler: Arc<Sampler>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    running: Arc<AtomicBool>,
}

impl ProcessMetrics {
    /// Settings, starting from the defaults (1 s, no per-worker series).
    pub fn builder(store: &Store) -> ProcessMetricsBuilder {
        ProcessMetricsBuilder {
            store: store.clone(),
            interval: Duration::from_secs(1),
            per_worker: false,
            #[cfg(feature = "tokio")]
            runtime: None,
        }
    }

    /// Starts with the defaults (see [`ProcessMetricsBuilder::start`]).
    pub fn start(store: &Store) -> Result<ProcessMetrics> {
        Self::builder(store).start()
    }

    /// Samples now, in this thread (the sampling thread goes on).
    pub fn sample_now(&self) {
        self.sampler.sample();
    }

    /// Whether the sampling thread runs.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    /// Stops the sampling thread after one last sample.
    pub fn stop(self) {
        self.sampler.sample();
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(PoisonError::into_inner) = true;
        cv.notify_all();
    }
}
