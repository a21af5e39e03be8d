//! One sample of this process: `/proc/self` read through `procfs`, written into the
//! store's families (the service's, and with `per_worker` the worker's own).

use procfs::process::{LimitValue, Process};

use super::view::{Increase, declare_views};
use crate::error::Result;
use crate::family::Family;
use crate::family::counter::CounterF64;
use crate::family::gauge::Gauge;
use crate::format::{ErrorKind, GaugeMode};
use crate::store::Store;

/// What one read of `/proc/self` gave; `None` where it failed.
#[derive(Debug, Default)]
pub(super) struct Reading {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<f64>,
    virtual_bytes: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
    start_time: Option<f64>,
    threads: Option<f64>,
}

/// The families of one view: the service's (no label) or the workers' (`worker`).
#[derive(Debug)]
pub(super) struct View {
    /// Label values of this process's series: none, or its worker id.
    labels: Vec<String>,
    cpu: Family<CounterF64>,
    resident: Family<Gauge>,
    virt: Family<Gauge>,
    fds: Family<Gauge>,
    max_fds: Family<Gauge>,
    start: Family<Gauge>,
    threads: Family<Gauge>,
}

impl View {
    /// Declares the families of a view named `process_<prefix>...`, labelled by
    /// `label_names` (none, or `worker`), this process's series under `labels`.
    pub(super) fn declare(
        store: &Store,
        prefix: &str,
        label_names: &[&str],
        labels: Vec<String>,
    ) -> Result<View> {
        let name = |n: &str| format!("process_{prefix}{n}");
        let gauge = |n: &str, help: &str, mode| store.gauge_family(&name(n), help, label_names, mode);
        Ok(View {
            labels,
            cpu: store.counter_f64_family(
                &name("cpu_seconds"),
                "Total user and system CPU time spent in seconds.",
                label_names,
            )?,
            resident: gauge(
                "resident_memory_bytes",
                "Resident memory size in bytes.",
                GaugeMode::LiveSum,
            )?,
            virt: gauge(
                "virtual_memory_bytes",
                "Virtual memory size in bytes.",
                GaugeMode::LiveSum,
            )?,
            fds: gauge("open_fds", "Number of open file descriptors.", GaugeMode::LiveSum)?,
            max_fds: gauge(
                "max_fds",
                "Maximum number of open file descriptors (the lowest of the live processes).",
                GaugeMode::LiveMin,
            )?,
            start: gauge(
                "start_time_seconds",
                "Start time of the process since unix epoch in seconds (the oldest live process).",
                GaugeMode::LiveMin,
            )?,
            threads: gauge(
                "threads",
                "Number of OS threads in the process.",
                GaugeMode::LiveSum,
            )?,
        })
    }

    /// Writes `r`: CPU time as the increase since the last sample (`cpu_delta`), the
    /// gauges as they are. A value that could not be read leaves its series alone (absent
    /// if it never could be).
    fn write(&self, r: &Reading, cpu_delta: Option<f64>) {
        let labels: Vec<&str> = self.labels.iter().map(String::as_str).collect();
        if let Some(d) = cpu_delta {
            let c = self.cpu.labels(&labels);
            if d > 0.0 {
                c.inc_by(d);
            }
        }
        for (family, value) in [
            (&self.resident, r.resident_bytes),
            (&self.virt, r.virtual_bytes),
            (&self.fds, r.open_fds),
            (&self.max_fds, r.max_fds),
            (&self.start, r.start_time),
            (&self.threads, r.threads),
        ] {
            if let Some(v) = value {
                family.labels(&labels).set(v);
            }
        }
    }
}

/// This process's sampler.
#[derive(Debug)]
pub(super) struct Sampler {
    store: Store,
    service: View,
    worker: Option<View>,
    /// This process's CPU seconds, as written into the counters.
    cpu: Increase,
    #[cfg(feature = "tokio")]
    runtime: Option<super::runtime::RuntimeSampler>,
}

impl Sampler {
    pub(super) fn new(store: &Store, per_worker: bool) -> Result<Sampler> {
        let (service, worker) = declare_views(store, per_worker, |prefix, names, labels| {
            View::declare(store, prefix, names, labels)
        })?;
        Ok(Sampler {
            store: store.clone(),
            service,
            worker,
            cpu: Increase::default(),
            #[cfg(feature = "tokio")]
            runtime: None,
        })
    }

    /// Samples the tokio runtime of `handle` too.
    #[cfg(feature = "tokio")]
    pub(super) fn with_runtime(
        mut self,
        store: &Store,
        handle: tokio::runtime::Handle,
        per_worker: bool,
    ) -> Result<Self> {
        self.runtime = Some(super::runtime::RuntimeSampler::new(store, handle, per_worker)?);
        Ok(self)
    }

    /// Reads `/proc/self` and writes what it read.
    pub(super) fn sample(&self) {
        let r = self.read();
        let delta = r.cpu_seconds.map(|cpu| self.cpu.since_last(cpu));
        self.service.write(&r, delta);
        if let Some(w) = &self.worker {
            w.write(&r, delta);
        }
        #[cfg(feature = "tokio")]
        if let Some(rt) = &self.runtime {
            rt.sample();
        }
    }

    /// Counts a failed read and logs the first one.
    pub(super) fn failed(&self, what: &str, e: &dyn std::fmt::Display) {
        self.store
            .shared()
            .writer
            .count_error(ErrorKind::ProcessRead, &|| {
                format!("process metrics: {what} could not be read: {e}")
            });
    }

    fn read(&self) -> Reading {
        let mut r = Reading::default();
        let me = match Process::myself() {
            Ok(p) => p,
            Err(e) => {
                self.failed("/proc/self", &e);
                return r;
            }
        };
        match me.stat() {
            Ok(stat) => {
                let tps = procfs::ticks_per_second() as f64;
                r.cpu_seconds = Some((stat.utime + stat.stime) as f64 / tps);
                r.resident_bytes = Some(stat.rss as f64 * procfs::page_size() as f64);
                r.virtual_bytes = Some(stat.vsize as f64);
                r.threads = Some(stat.num_threads as f64);
                match procfs::boot_time_secs() {
                    Ok(boot) => r.start_time = Some(boot as f64 + stat.starttime as f64 / tps),
                    Err(e) => self.failed("the boot time", &e),
                }
            }
            Err(e) => self.failed("/proc/self/stat", &e),
        }
        match me.fd_count() {
            Ok(n) => r.open_fds = Some(n as f64),
            Err(e) => self.failed("/proc/self/fd", &e),
        }
        match me.limits() {
            Ok(l) => {
                r.max_fds = Some(match l.max_open_files.soft_limit {
                    LimitValue::Value(v) => v as f64,
                    LimitValue::Unlimited => f64::INFINITY,
                })
            }
            Err(e) => self.failed("/proc/self/limits", &e),
        }
        r
    }
}
