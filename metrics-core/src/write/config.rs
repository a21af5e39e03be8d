//! The settings a writer works with.

use std::path::PathBuf;

/// Settings shared by the writer and the store.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub dir: PathBuf,
    pub application: String,
    pub worker_id: Option<u64>,
    pub file_mode: u32,
    pub series_limit: usize,
    pub max_file_size: usize,
    pub compact_threshold: usize,
}
