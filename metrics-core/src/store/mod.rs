//! [`Store`]: one directory, this process's writer in it, and scrapes of the whole.
//!
//! [`shared`] holds what the store and its families share; [`dir`] checks and creates the
//! directory. The methods that declare families are in `family::declare`.

pub(crate) mod dir;
pub(crate) mod shared;

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prometheus_client::registry::Registry;

use crate::compact::{self, CompactionStats};
use crate::error::{Error, Result};
use crate::format::MAX_NAME_BYTES;
use crate::format::desc::FamilyDesc;
use crate::read::Reader;
use crate::read::snapshot::Snapshot;
use crate::sys;
use crate::sys::dirlock::DirLock;
use crate::write::Writer;
use crate::write::config::Config;
use dir::{default_application, prepare_dir};
use shared::Shared;

/// The environment variable Python's `prometheus_client` reads for its multiprocess
/// directory; [`Store::from_env`] reads the same one.
pub const ENV_DIR: &str = "PROMETHEUS_MULTIPROC_DIR";

/// The environment variable naming the application that owns the directory, for a
/// deployment that runs one binary as several applications (a systemd template unit sets
/// it to its instance name). When set, it wins over [`StoreBuilder::application`].
pub const ENV_APPLICATION: &str = "SHMETRICS_APPLICATION";

/// The environment variable holding the permission bits of the files a store creates
/// (octal, e.g. `0640` for a scraper in the group). When set, it wins over
/// [`StoreBuilder::file_mode`].
pub const ENV_FILE_MODE: &str = "SHMETRICS_FILE_MODE";

/// Content type of the exposition: OpenMetrics text. Prometheus chooses its parser from
/// this header; serve the body with it (the same body as `text/plain` fails to scrape).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Default series limit per family and process.
pub const DEFAULT_SERIES_LIMIT: usize = 10_000;

/// Default largest size of one process's file (address space reserved once per store).
pub const DEFAULT_MAX_FILE_SIZE: usize = 256 << 20;

/// Default number of dead writer files a scrape tolerates before compacting them.
pub const DEFAULT_COMPACT_THRESHOLD: usize = 8;

/// A metrics store: a directory shared by the worker processes of one application.
///
/// Each process writes its own file in the directory; any process can scrape the merged
/// view of all of them. Cloning is cheap (an `Arc`).
///
/// ```
/// use shmetrics_core::{GaugeMode, Store};
/// # let dir = tempfile::tempdir().unwrap();
/// let store = Store::builder(dir.path()).application("ckms").open()?;
/// let jobs = store.counter("jobs", "Jobs processed")?;
/// let in_flight = store.gauge("jobs_in_flight", "Jobs running", GaugeMode::LiveSum)?;
/// in_flight.inc();
/// jobs.inc();
/// in_flight.dec();
/// let text = store.scrape()?;
/// assert!(text.contains("jobs_total 1\n"));
/// # Ok::<(), shmetrics_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    shared: Arc<Shared>,
    families: Mutex<HashMap<String, Registered>>,
}

/// How long scrapes wait before compacting again after a compaction failed.
const COMPACT_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

/// A family this process declared, of any kind.
pub(crate) struct Registered {
    pub(crate) desc: Arc<FamilyDesc>,
    pub(crate) core: Arc<dyn Any + Send + Sync>,
}

/// Options for opening a [`Store`].
#[derive(Clone, Debug)]
pub struct StoreBuilder {
    dir: PathBuf,
    application: Option<String>,
    worker_id: Option<u64>,
    file_mode: u32,
    series_limit: usize,
    max_file_size: usize,
    compact_threshold: usize,
    compact_on_open: bool,
    shared_directory: bool,
    group_writable: bool,
}

impl StoreBuilder {
    /// A store in `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StoreBuilder {
            dir: dir.into(),
            application: None,
            worker_id: None,
            file_mode: 0o600,
            series_limit: DEFAULT_SERIES_LIMIT,
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            compact_threshold: DEFAULT_COMPACT_THRESHOLD,
            compact_on_open: true,
            shared_directory: false,
            group_writable: false,
        }
    }

    /// A store in the directory named by `PROMETHEUS_MULTIPROC_DIR`.
    pub fn from_env() -> Result<Self> {
        match std::env::var_os(ENV_DIR) {
            Some(d) if !d.is_empty() => Ok(StoreBuilder::new(d)),
            _ => Err(Error::EnvNotSet { var: ENV_DIR }),
        }
    }

    /// Name of the application that owns the directory (default: the executable's name;
    /// `SHMETRICS_APPLICATION`, when set, wins over both). A process of another
    /// application opening the directory gets [`Error::WrongApplication`].
    pub fn application(mut self, name: impl Into<String>) -> Self {
        self.application = Some(name.into());
        self
    }

    /// A stable worker id (e.g. the supervisor's worker index). The process writes the
    /// slot file `slot-<id>.shm`; a restarted worker with the same id resumes it, so the
    /// number of files stays bounded by the number of workers. Counters and histograms go
    /// on from the predecessor's values; `live*` gauges start from zero; the other gauge
    /// modes keep the predecessor's value until set.
    ///
    /// Two live processes cannot share a slot: the second gets [`Error::SlotBusy`] at its
    /// first declaration. A child forked by the slot owner writes a file of its own.
    pub fn worker_id(mut self, id: u64) -> Self {
        self.worker_id = Some(id);
        self
    }

    /// Permission bits of the files this process creates (default `0o600`; `0o640` lets a
    /// scraper in the group read them; `SHMETRICS_FILE_MODE`, when set, wins). Must include
    /// owner read and write. Applied exactly, whatever the umask, to everything the store
    /// creates: files, the lock file, and the directory (with `x` where `r` is).
    pub fn file_mode(mut self, mode: u32) -> Self {
        self.file_mode = mode;
        self
    }

    /// Default series limit of each family in this process (default 10,000).
    pub fn series_limit(mut self, limit: usize) -> Self {
        self.series_limit = limit;
        self
    }

    /// Largest size of this process's file, in bytes (default 256 MiB, at most 1 GiB:
    /// readers refuse larger files). Growth past it is refused like a full filesystem.
    pub fn max_file_size(mut self, bytes: usize) -> Self {
        self.max_file_size = bytes;
        self
    }

    /// Dead writer files a scrape tolerates before it compacts them (default 8). Dead
    /// files are also compacted when a store opens and by [`Store::compact`].
    pub fn compact_threshold(mut self, files: usize) -> Self {
        self.compact_threshold = files;
        self
    }

    /// Whether opening the store folds the files dead writers left (default `true`: the
    /// usual "clean the directory at startup", done without losing counts).
    pub fn compact_on_open(mut self, compact: bool) -> Self {
        self.compact_on_open = compact;
        self
    }

    /// Accepts a directory that other users may write to (world-writable, group-writable,
    /// or owned by another user). Refused by default: on a shared `/dev/shm`, another user
    /// could plant or replace files there.
    pub fn allow_shared_directory(mut self, allow: bool) -> Self {
        self.shared_directory = allow;
        self
    }

    /// Accepts a directory its group may write to (mode `0770`), when every member of the
    /// group is trusted. Refused by default: a member could plant or replace files there.
    pub fn allow_group_writable_directory(mut self, allow: bool) -> Self {
        self.group_writable = allow;
        self
    }

    /// Applies `SHMETRICS_FILE_MODE` and `SHMETRICS_APPLICATION`, checks every option, and
    /// returns the application name.
    fn checked_settings(&mut self) -> Result<String> {
        if let Some(mode) = std::env::var_os(ENV_FILE_MODE).filter(|m| !m.is_empty()) {
            let text = mode.to_string_lossy();
            self.file_mode = u32::from_str_radix(text.trim().trim_start_matches("0o"), 8).map_err(|_| {
                Error::InvalidOption {
                    name: ENV_FILE_MODE.into(),
                    reason: format!("{text:?} is not an octal file mode (e.g. 0640)"),
                }
            })?;
        }
        if self.file_mode & !0o666 != 0 || self.file_mode & 0o600 != 0o600 {
            return Err(Error::InvalidOption {
                name: "file_mode".into(),
                reason: format!(
                    "{:#o} is not a valid file mode: it must include owner read and write (0o600) and no execute or special bits",
                    self.file_mode
                ),
            });
        }
        if self.series_limit == 0 {
            return Err(Error::InvalidOption {
                name: "series_limit".into(),
                reason: "must be at least 1".into(),
            });
        }
        if self.max_file_size > crate::format::MAX_FILE_BYTES {
            return Err(Error::InvalidOption {
                name: "max_file_size".into(),
                reason: format!(
                    "{} bytes: at most {} (readers refuse larger files)",
                    self.max_file_size,
                    crate::format::MAX_FILE_BYTES
                ),
            });
        }
        // The deployment's setting wins: one binary may run as several applications.
        let application = match std::env::var(ENV_APPLICATION) {
            Ok(a) if !a.trim().is_empty() => a.trim().to_string(),
            _ => match self.application.take() {
                Some(a) => a,
                None => default_application(),
            },
        };
        if application.is_empty()
            || application.len() > MAX_NAME_BYTES
            || application.chars().any(char::is_control)
        {
            return Err(Error::InvalidOption {
                name: "application".into(),
                reason: format!(
                    "{application:?} is not a usable application name (1 to {MAX_NAME_BYTES} printable characters)"
                ),
            });
        }
        Ok(application)
    }

    /// Opens the store: creates the directory if missing, checks that it is usable and
    /// belongs to this application, and compacts what dead writers left.
    /// This process's file is created at the first declaration.
    pub fn open(mut self) -> Result<Store> {
        let application = self.checked_settings()?;
        let dir = self.dir;
        prepare_dir(&dir, self.file_mode, self.shared_directory, self.group_writable)?;
        let lock = DirLock::open_rw(&dir, self.file_mode)?;
        let config = Arc::new(Config {
            dir: dir.clone(),
            application,
            worker_id: self.worker_id,
            file_mode: self.file_mode,
            series_limit: self.series_limit,
            max_file_size: self.max_file_size,
            compact_threshold: self.compact_threshold,
        });
        let mut reader = Reader::new(&dir)?;
        {
            let _guard = lock.exclusive()?;
            lock.claim(&dir, &config.application)?;
            // The usual "clean the directory at startup", done safely while other
            // workers run: fold what dead writers left (their counts stay).
            if self.compact_on_open {
                if let Err(e) = compact::compact(&config, &mut reader, &[], &|_| {}) {
                    tracing::warn!(dir = %dir.display(), "compaction at startup failed: {e}");
                }
            }
        }
        sys::install_fork_handlers();
        Ok(Store {
            inner: Arc::new(StoreInner {
                shared: Arc::new(Shared {
                    writer: Arc::new(Writer::new(Arc::clone(&config))),
                    config,
                    lock,
                    reader: Mutex::new(reader),
                    compact_retry_at: Mutex::new(None),
                    writer_faults_seen: std::sync::atomic::AtomicU64::new(0),
                }),
                families: Mutex::new(HashMap::new()),
            }),
        })
    }
}

impl Store {
    /// Options for a store in `dir`.
    pub fn builder(dir: impl Into<PathBuf>) -> StoreBuilder {
        StoreBuilder::new(dir)
    }

    /// Opens a store in `dir` with default options.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Store> {
        StoreBuilder::new(dir).open()
    }

    /// Opens a store in the directory named by `PROMETHEUS_MULTIPROC_DIR`.
    pub fn from_env() -> Result<Store> {
        StoreBuilder::from_env()?.open()
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.shared().config.dir
    }

    /// The application name recorded in this process's file.
    pub fn application(&self) -> &str {
        &self.shared().config.application
    }

    /// The stable worker id this process writes as ([`StoreBuilder::worker_id`]), if any.
    pub fn worker_id(&self) -> Option<u64> {
        self.shared().config.worker_id
    }

    /// This process's file, once a metric has been declared.
    pub fn file_path(&self) -> Option<PathBuf> {
        self.shared().writer.path()
    }

    pub(crate) fn families(&self) -> MutexGuard<'_, HashMap<String, Registered>> {
        self.inner.families.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Merges every file of the directory now. When the scrape finds more dead writer
    /// files than the compaction threshold, it compacts them afterwards (if no other
    /// process is compacting).
    pub fn snapshot(&self) -> Result<Snapshot> {
        // Inside the fork gate before any internal lock (see `sys`).
        let _gate = sys::enter_gate();
        let shared = self.shared();
        // Series that waited in process memory (a full filesystem) go to the file first.
        if shared.writer.has_waiting() {
            shared.writer.flush_waiting();
        }
        let own = shared.writer.own_ids();
        let mut reader = shared.reader();
        let mut snapshot = reader.snapshot_as(&own)?;
        // Errors this process counted while it had no file (a full filesystem at start).
        let pending = shared.writer.pending_errors();
        for (kind, n) in snapshot.stats_mut().store_errors.iter_mut() {
            if let Some(k) = crate::format::ErrorKind::ALL
                .iter()
                .position(|e| e.label() == *kind)
            {
                *n = n.saturating_add(pending[k]);
            }
        }
        let faults = sys::writer_faults();
        if shared
            .writer_faults_seen
            .swap(faults, std::sync::atomic::Ordering::Relaxed)
            != faults
        {
            tracing::error!(
                file = ?shared.writer.path(),
                "this process's metrics file was cut short by another process: what this process \
                 wrote to the lost part since is lost (find who truncates files in {})",
                shared.config.dir.display()
            );
        }
        let st = snapshot.stats();
        let dead = (st.dead_files - st.folded_files) as usize;
        let mut retry_at = shared
            .compact_retry_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let due = retry_at.is_none_or(|t| std::time::Instant::now() >= t);
        if due && (dead > shared.config.compact_threshold || st.folded_files > 0) {
            if let Ok(Some(_lock)) = shared.lock.try_exclusive() {
                match compact::compact(&shared.config, &mut reader, &own, &|_| {}) {
                    Ok(c) => {
                        *retry_at = None;
                        tracing::debug!(folded = c.folded, deleted = c.deleted, "compacted dead writers")
                    }
                    Err(e) => {
                        if retry_at.is_none() {
                            tracing::warn!(dir = %shared.config.dir.display(), "compaction failed: {e}");
                        }
                        *retry_at = Some(std::time::Instant::now() + COMPACT_RETRY);
                    }
                }
            }
        }
        Ok(snapshot)
    }

    /// Folds the files of dead writers into the directory's accumulator now, waiting for
    /// other compactions and scrapes to finish. Idempotent and crash-safe.
    pub fn compact(&self) -> Result<CompactionStats> {
        self.compact_with_hook(&|_| {})
    }

    /// [`Store::compact`] calling `hook` at each step ("locked", "written", "renamed",
    /// "unlinked", "done"): for crash tests.
    #[doc(hidden)]
    pub fn compact_with_hook(&self, hook: &dyn Fn(&str)) -> Result<CompactionStats> {
        let _gate = sys::enter_gate();
        let shared = self.shared();
        let own = shared.writer.own_ids();
        let mut reader = shared.reader();
        let _lock = shared.lock.exclusive()?;
        compact::compact(&shared.config, &mut reader, &own, hook)
    }

    /// Folds the counter and histogram files of dead Python `prometheus_client`
    /// processes in the directory into its Python accumulator now, and deletes them, so that
    /// a directory whose Python workers come and go stays bounded. A file is folded once no
    /// process has its pid (the processes must be in this process' pid namespace).
    /// Crash-safe: a kill at any step loses nothing and counts nothing twice.
    ///
    /// Only for a directory that nothing reads with Python's own `MultiProcessCollector`:
    /// it does not read the accumulator, so it would lose the folded counts.
    #[cfg(feature = "python")]
    pub fn compact_python(&self) -> Result<crate::PythonCompactionStats> {
        self.compact_python_with_hook(&|_| {})
    }

    /// [`Store::compact_python`] calling `hook` at each step ("locked", "claimed",
    /// "written", "renamed", "unlinked", "tidied", "done"): for crash tests.
    #[cfg(feature = "python")]
    #[doc(hidden)]
    pub fn compact_python_with_hook(&self, hook: &dyn Fn(&str)) -> Result<crate::PythonCompactionStats> {
        let _gate = sys::enter_gate();
        let shared = self.shared();
        let own = shared.writer.own_ids();
        let mut reader = shared.reader();
        let _lock = shared.lock.exclusive()?;
        compact::python::compact_python(&shared.config, &mut reader, &own, hook)
    }

    /// Merges the directory and registers the result in `registry`, next to whatever
    /// the caller registered there (a build-info gauge, process metrics...).
    ///
    /// ```
    /// use prometheus_client::{metrics::gauge::Gauge, registry::Registry};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = shmetrics_core::Store::open(dir.path()).unwrap();
    /// let mut registry = Registry::default();
    /// let build_info: Gauge = Gauge::default();
    /// build_info.set(1);
    /// registry.register("build_info", "Build information", build_info);
    /// store.scrape_into(&mut registry)?;
    /// let mut body = String::new();
    /// prometheus_client::encoding::text::encode(&mut body, &registry).unwrap();
    /// assert!(body.contains("build_info 1\n") && body.ends_with("# EOF\n"));
    /// # Ok::<(), shmetrics_core::Error>(())
    /// ```
    pub fn scrape_into(&self, registry: &mut Registry) -> Result<()> {
        let snapshot = self.snapshot()?;
        registry.register_collector(Box::new(snapshot));
        Ok(())
    }

    /// The OpenMetrics exposition of the merged directory (serve it with
    /// [`CONTENT_TYPE`]), built in a fresh registry.
    pub fn scrape(&self) -> Result<String> {
        self.snapshot()?.encode(Registry::default())
    }

    /// The exposition of the merged directory in `format` (serve it with
    /// [`Format::content_type`](crate::Format::content_type)), built in a fresh registry.
    pub fn scrape_as(&self, format: crate::read::encode::Format) -> Result<Vec<u8>> {
        self.snapshot()?.encode_as(format, Registry::default())
    }
}

/// Encodes `registry` as OpenMetrics text (with the final `# EOF`).
pub fn encode(registry: &Registry) -> Result<String> {
    let mut body = String::with_capacity(4096);
    prometheus_client::encoding::text::encode(&mut body, registry).map_err(|_| Error::Encode)?;
    Ok(body)
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.shared().config;
        f.debug_struct("Store")
            .field("dir", &c.dir)
            .field("application", &c.application)
            .field("worker_id", &c.worker_id)
            .finish()
    }
}
