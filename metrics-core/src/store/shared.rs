//! What a store and its families share: the directory lock, the reader and the writer.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::error::{Error, Result};
use crate::format::records::{self, Removal};
use crate::read::Reader;
use crate::sys;
use crate::sys::dirlock::DirLock;
use crate::write::Writer;
use crate::write::config::Config;

/// What families share with their store: the directory lock, the reader and the writer.
pub(crate) struct Shared {
    pub(crate) config: Arc<Config>,
    pub(crate) writer: Arc<Writer>,
    pub(crate) lock: DirLock,
    pub(crate) reader: Mutex<Reader>,
    /// Scrapes do not try to compact again before this time (after a failure).
    pub(crate) compact_retry_at: Mutex<Option<std::time::Instant>>,
    /// Faults in this process's writer mappings already logged.
    pub(crate) writer_faults_seen: std::sync::atomic::AtomicU64,
}

impl Shared {
    pub(crate) fn reader(&self) -> MutexGuard<'_, Reader> {
        self.reader.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes one series (or all series of a family) from every worker's scrape: records
    /// each file's current values as baselines that merges subtract.
    pub(crate) fn remove(&self, family: &str, labels: Option<&[Box<str>]>) -> Result<bool> {
        let _gate = sys::enter_gate();
        let own = self.writer.own_ids();
        let mut reader = self.reader();
        let _lock = self.lock.exclusive()?;
        let baselines = reader.baselines(&own, family, labels)?;
        let found = !baselines.is_empty();
        let record = Removal {
            time: sys::unix_nanos(),
            family: family.to_string(),
            labels: labels.map(|l| l.to_vec().into_boxed_slice()),
            baselines,
        };
        // Baselines of native histograms (more values than the series' slots) need version 2.
        let native = reader.family_is_native(family);
        let version = if native {
            crate::format::VERSION
        } else {
            crate::format::BASE_VERSION
        };
        let words = records::encode_removal(&record);
        if words.len() * 8 > crate::format::MAX_RECORD_BYTES {
            return Err(Error::InvalidOption {
                name: family.to_string(),
                reason: "too many series to remove in one record: remove them one by one".into(),
            });
        }
        self.writer.append_record(&words, version)?;
        Ok(found)
    }
}
