//! The store's directory: created with the configured mode, checked before use.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Result};
use crate::sys;

/// The application name when none is configured: the executable's name.
pub(crate) fn default_application() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// Creates `dir` if missing and checks that it is a writable directory of this user.
/// Creates `dir` and any missing parent with exactly `mode` (whatever the umask: the
/// group the mode lets in must be able to reach the files).
fn create_dirs(dir: &Path, mode: u32) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while std::fs::symlink_metadata(at).is_err() {
        missing.push(at);
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => break,
        }
    }
    for d in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(mode).create(d) {
            Ok(()) => std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode))?,
            // Created by another process meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(crate) fn prepare_dir(dir: &Path, file_mode: u32, shared_ok: bool, group_ok: bool) -> Result<()> {
    let dir_mode = file_mode | ((file_mode & 0o444) >> 2);
    let err = |reason: String, source: Option<std::io::Error>| Error::Directory {
        path: dir.to_path_buf(),
        reason,
        source,
    };
    match std::fs::metadata(dir) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => {
            return Err(err(
                "exists but is not a directory: point the store at a directory".into(),
                None,
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_dirs(dir, dir_mode).map_err(|e| {
                err(
                    "does not exist and cannot be created: create it (e.g. with tmpfiles.d) or fix the parent's permissions".into(),
                    Some(e),
                )
            })?;
        }
        Err(e) => {
            let reason = if e.raw_os_error() == Some(libc::ENOTDIR) {
                "part of the path is a file, not a directory: fix the path".into()
            } else {
                "cannot be inspected".into()
            };
            return Err(err(reason, Some(e)));
        }
    }
    let md = std::fs::metadata(dir).map_err(|e| err("cannot be inspected".into(), Some(e)))?;
    if !shared_ok {
        let mode = md.mode() & 0o7777;
        if mode & 0o002 != 0 {
            return Err(err(
                format!(
                    "is writable by every user (mode {mode:o}): another user could plant or replace files in it. \
                     Use a directory of its own (e.g. /dev/shm/prometheus/<api>, created by tmpfiles.d with mode 0750), \
                     or StoreBuilder::allow_shared_directory(true)"
                ),
                None,
            ));
        }
        if mode & 0o020 != 0 && !group_ok {
            return Err(err(
                format!(
                    "is writable by its group (mode {mode:o}): a member of the group could plant or replace files in it. \
                     Let the group read only (mode 0750, e.g. with tmpfiles.d), \
                     or StoreBuilder::allow_group_writable_directory(true) if every member is trusted"
                ),
                None,
            ));
        }
        let euid = sys::effective_uid();
        if md.uid() != euid && md.uid() != 0 {
            return Err(err(
                format!(
                    "belongs to user {} and this process runs as user {euid}: a directory of another user is refused \
                     (its owner could replace the files); use one owned by this user or root, \
                     or StoreBuilder::allow_shared_directory(true)",
                    md.uid()
                ),
                None,
            ));
        }
    }
    if let Err(e) = sys::may_write_dir(dir) {
        let reason = if e.kind() == std::io::ErrorKind::InvalidInput {
            "path contains a NUL byte".to_string()
        } else if e.raw_os_error() == Some(libc::EROFS) {
            "is on a read-only filesystem: use a directory on /dev/shm".to_string()
        } else {
            "is not writable by this process: fix its owner or permissions".to_string()
        };
        return Err(err(reason, Some(e)));
    }
    Ok(())
}
