//! Declaring families: the [`Store`] methods that create a [`Family`] or a handle.

use std::any::Any;
use std::sync::Arc;

use super::counter::{Counter, CounterF64};
use super::gauge::Gauge;
use super::histogram::Histogram;
use super::metric::Metric;
use super::{Family, FamilyCore};
use crate::error::{Error, Result};
use crate::format::GaugeMode;
use crate::format::desc::{self, FamilyDesc, Opts};
use crate::store::{Registered, Store};
use crate::sys;

impl Store {
    /// Declares a family of `M` (or returns the existing one if this process already
    /// declared it identically).
    ///
    /// Fails with a clear error if a name is invalid, if this process declared the name
    /// otherwise, if another live process of the directory declared it with another type
    /// or gauge mode, or if its exposed names would clash with another family's. Another
    /// live process may declare it with other labels or buckets (two releases of a rolling
    /// deploy): each keeps its series.
    pub fn register<M: Metric>(&self, opts: Opts) -> Result<Family<M>> {
        let shared = self.shared();
        let desc = FamilyDesc::new(M::TYPE, opts, shared.config.series_limit)?;
        let _gate = sys::enter_gate();
        let mut families = self.families();
        if let Some(r) = families.get(&desc.name) {
            if r.desc.same_schema(&desc) {
                if let Ok(core) = Arc::clone(&r.core).downcast::<FamilyCore<M>>() {
                    return Ok(Family { core });
                }
            }
            return Err(Error::Conflict {
                name: desc.name.clone(),
                by: "this process".into(),
                existing: r.desc.describe(),
                requested: desc.describe(),
            });
        }
        for r in families.values() {
            if let Some(sample) = desc::clash((desc.ty, &desc.name), (r.desc.ty, &r.desc.name)) {
                return Err(Error::NameClash {
                    name: desc.name.clone(),
                    other: r.desc.name.clone(),
                    by: "this process".into(),
                    sample,
                });
            }
        }
        let own = shared.writer.own_ids();
        let id = {
            // Lock order, everywhere: reader mutex, then the directory lock.
            let mut reader = shared.reader();
            let _lock = shared.lock.exclusive()?;
            for (pid, path, other) in reader.live_declarations(&own)? {
                if let Some(sample) = desc::clash((desc.ty, &desc.name), (other.ty, &other.name)) {
                    return Err(Error::NameClash {
                        name: desc.name.clone(),
                        other: other.name.clone(),
                        by: format!("live process {pid} (file {})", path.display()),
                        sample,
                    });
                }
                // Other labels or buckets may coexist (both releases of a rolling deploy
                // running: each keeps its series); another type or gauge mode cannot.
                if other.name == desc.name && (other.ty != desc.ty || other.mode != desc.mode) {
                    return Err(Error::Conflict {
                        name: desc.name.clone(),
                        by: format!("live process {pid} (file {})", path.display()),
                        existing: other.describe(),
                        requested: desc.describe(),
                    });
                }
            }
            let folded = reader.folded_ids(&own)?;
            shared
                .writer
                .declare(Arc::new(desc.clone()), &|id| folded.contains(&id))?
        };
        if shared.writer.has_waiting() {
            shared.writer.flush_waiting();
        }
        let desc = Arc::new(desc);
        let core = Arc::new(FamilyCore::<M>::new(
            Arc::clone(&desc),
            id,
            Arc::clone(self.shared()),
        ));
        families.insert(
            desc.name.clone(),
            Registered {
                desc,
                core: Arc::clone(&core) as Arc<dyn Any + Send + Sync>,
            },
        );
        Ok(Family { core })
    }

    /// An integer counter without labels.
    pub fn counter(&self, name: &str, help: &str) -> Result<Counter> {
        Ok(self
            .register::<Counter>(Opts::new(name, help))?
            .labels(&[])
            .clone())
    }

    /// A family of integer counters.
    pub fn counter_family(&self, name: &str, help: &str, label_names: &[&str]) -> Result<Family<Counter>> {
        self.register(Opts::new(name, help).label_names(label_names.iter().copied()))
    }

    /// A float counter without labels.
    pub fn counter_f64(&self, name: &str, help: &str) -> Result<CounterF64> {
        Ok(self
            .register::<CounterF64>(Opts::new(name, help))?
            .labels(&[])
            .clone())
    }

    /// A family of float counters.
    pub fn counter_f64_family(
        &self,
        name: &str,
        help: &str,
        label_names: &[&str],
    ) -> Result<Family<CounterF64>> {
        self.register(Opts::new(name, help).label_names(label_names.iter().copied()))
    }

    /// A gauge without labels, combined over processes by `mode`.
    pub fn gauge(&self, name: &str, help: &str, mode: GaugeMode) -> Result<Gauge> {
        Ok(self
            .register::<Gauge>(Opts::new(name, help).mode(mode))?
            .labels(&[])
            .clone())
    }

    /// A family of gauges, combined over processes by `mode`.
    pub fn gauge_family(
        &self,
        name: &str,
        help: &str,
        label_names: &[&str],
        mode: GaugeMode,
    ) -> Result<Family<Gauge>> {
        self.register(
            Opts::new(name, help)
                .label_names(label_names.iter().copied())
                .mode(mode),
        )
    }

    /// A histogram without labels (`buckets`: finite upper bounds, increasing).
    pub fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Result<Histogram> {
        Ok(self
            .register::<Histogram>(Opts::new(name, help).buckets(buckets))?
            .labels(&[])
            .clone())
    }

    /// A family of histograms.
    pub fn histogram_family(
        &self,
        name: &str,
        help: &str,
        label_names: &[&str],
        buckets: &[f64],
    ) -> Result<Family<Histogram>> {
        self.register(
            Opts::new(name, help)
                .label_names(label_names.iter().copied())
                .buckets(buckets),
        )
    }
}
