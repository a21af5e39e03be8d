//! What a directory holds, file by file, for an operator: [`Reader::inspect`](super::Reader::inspect).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One file of a metrics directory as the reader sees it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct FileReport {
    /// File name.
    pub name: String,
    /// What it is: `native`, `native slot` (a worker's resumable file), `accumulator`,
    /// `python counter`, `python gauge livesum` (its mode), `python histogram`,
    /// `python summary`, `foreign` (not a metrics file), `symlink`.
    pub kind: String,
    /// Its writer's pid (from the header, or from a Python file's name).
    pub pid: Option<String>,
    /// Its writer's stable worker id.
    pub worker: Option<u64>,
    /// Whether its writer runs: `Some(true)` / `Some(false)` for native files (probed)
    /// and, with `/proc` liveness, for Python files; `None` where it is not known (Python
    /// files under Python's rule, foreign files).
    pub live: Option<bool>,
    /// Folded into the accumulator already (waits for deletion).
    pub folded: bool,
    /// Series (native) or entries (Python) read from it.
    pub series: usize,
    /// Size in bytes.
    pub bytes: u64,
    /// Why it is not read (corrupt with the reason, unreadable, newer format), if so.
    pub problem: Option<String>,
}

/// What [`Reader::inspect`](super::Reader::inspect) found.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Inspection {
    /// The directory.
    pub dir: PathBuf,
    /// The application the directory belongs to (recorded by the first store that opened
    /// it), if any.
    pub application: Option<String>,
    /// Every entry of the directory but the store's lock file, by name.
    pub files: Vec<FileReport>,
    /// What is wrong with the directory itself (permissions, owner).
    pub problems: Vec<String>,
}

impl Inspection {
    /// Totals: (files, series, bytes).
    pub fn totals(&self) -> (usize, usize, u64) {
        (
            self.files.len(),
            self.files.iter().map(|f| f.series).sum(),
            self.files.iter().map(|f| f.bytes).sum(),
        )
    }
}

/// What is wrong with the directory's own permissions and owner.
pub(crate) fn directory_problems(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    match std::fs::symlink_metadata(dir) {
        Ok(md) => {
            if md.file_type().is_symlink() {
                out.push("the directory path is a symlink".into());
            }
            let mode = md.permissions().mode() & 0o7777;
            if mode & 0o002 != 0 {
                out.push(format!(
                    "world-writable ({mode:o}): any user can plant or replace files"
                ));
            } else if mode & 0o020 != 0 {
                out.push(format!("group-writable ({mode:o})"));
            }
            let me = crate::sys::effective_uid();
            if md.uid() != me && md.uid() != 0 {
                out.push(format!(
                    "owned by user {}, not by this user ({me}) or root: its owner could replace the files",
                    md.uid()
                ));
            }
        }
        Err(e) => out.push(format!("cannot be read: {e}")),
    }
    out
}

/// The report of a directory entry no reader takes: a symlink or a foreign file.
pub(crate) fn other_entry(path: &Path) -> Option<FileReport> {
    let md = std::fs::symlink_metadata(path).ok()?;
    let name = path.file_name()?.to_string_lossy().into_owned();
    let kind = if md.file_type().is_symlink() {
        "symlink"
    } else if md.is_dir() {
        "directory"
    } else {
        "foreign"
    };
    Some(FileReport {
        name,
        kind: kind.into(),
        pid: None,
        worker: None,
        live: None,
        folded: false,
        series: 0,
        bytes: if md.is_file() { md.len() } else { 0 },
        problem: (kind != "foreign").then(|| format!("a {kind}: not followed")),
    })
}
