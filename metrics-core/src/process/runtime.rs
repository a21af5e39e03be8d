//! The tokio runtime's stable metrics ([`tokio::runtime::RuntimeMetrics`]), sampled with
//! the process's.

use super::view::{Increase, declare_views};
use crate::error::Result;
use crate::family::Family;
use crate::family::counter::CounterF64;
use crate::family::gauge::Gauge;
use crate::format::GaugeMode;
use crate::store::Store;

/// The families of one view of the runtime.
#[derive(Debug)]
struct View {
    labels: Vec<String>,
    workers: Family<Gauge>,
    alive_tasks: Family<Gauge>,
    global_queue: Family<Gauge>,
    busy: Family<CounterF64>,
}

impl View {
    fn declare(store: &Store, prefix: &str, label_names: &[&str], labels: Vec<String>) -> Result<View> {
        let name = |n: &str| format!("tokio_runtime_{prefix}{n}");
        let gauge = |n: &str, help: &str| store.gauge_family(&name(n), help, label_names, GaugeMode::LiveSum);
        Ok(View {
            labels,
            workers: gauge("workers", "Worker threads of the tokio runtime.")?,
            alive_tasks: gauge("alive_tasks", "Tasks alive in the tokio runtime.")?,
            global_queue: gauge(
                "global_queue_depth",
                "Tasks waiting in the tokio runtime's global queue.",
            )?,
            busy: store.counter_f64_family(
                &name("busy_seconds"),
                "Time the tokio runtime's worker threads spent busy, in seconds.",
                label_names,
            )?,
        })
    }
}

/// A runtime and what the counters hold of it.
#[derive(Debug)]
pub(crate) struct RuntimeSampler {
    handle: tokio::runtime::Handle,
    service: View,
    worker: Option<View>,
    /// The busy time of the runtime's workers, as written into the counters.
    busy: Increase,
}

impl RuntimeSampler {
    /// Declares the runtime's families (the workers' too with `per_worker` and a worker id).
    pub(super) fn new(store: &Store, handle: tokio::runtime::Handle, per_worker: bool) -> Result<Self> {
        let (service, worker) = declare_views(store, per_worker, |prefix, names, labels| {
            View::declare(store, prefix, names, labels)
        })?;
        Ok(RuntimeSampler {
            handle,
            service,
            worker,
            busy: Increase::default(),
        })
    }

    pub(super) fn sample(&self) {
        let m = self.handle.metrics();
        let workers = m.num_workers();
        #[cfg(target_has_atomic = "64")]
        let busy: f64 = (0..workers)
            .map(|w| m.worker_total_busy_duration(w).as_secs_f64())
            .sum();
        #[cfg(not(target_has_atomic = "64"))]
        let busy = 0.0;
        let delta = self.busy.since_last(busy);
        for view in std::iter::once(&self.service).chain(&self.worker) {
            let labels: Vec<&str> = view.labels.iter().map(String::as_str).collect();
            view.workers.labels(&labels).set(workers as f64);
            view.alive_tasks.labels(&labels).set(m.num_alive_tasks() as f64);
            view.global_queue
                .labels(&labels)
                .set(m.global_queue_depth() as f64);
            let c = view.busy.labels(&labels);
            if delta > 0.0 {
                c.inc_by(delta);
            }
        }
    }
}
