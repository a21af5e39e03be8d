//! The directory lock file, `.shmetrics.lock`.
//!
//! * Exclusive `flock`: the directory is being changed (a metric declared, a worker slot
//!   taken, files compacted, a series removed).
//! * Shared `flock`: a scrape reads a consistent set of files (a compaction never runs in
//!   the middle of it).
//! * Contents: the application that owns the directory (`application=<name>`), written by
//!   the first process that opens it. One directory belongs to one API.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::sys;
use crate::writer::LOCK_FILE;

/// An open lock file.
pub(crate) struct DirLock {
    file: File,
    path: PathBuf,
}

/// A held lock; released on drop.
pub(crate) struct LockGuard<'a> {
    lock: &'a DirLock,
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        let _ = sys::flock_unlock(self.lock.file.as_raw_fd());
    }
}

impl DirLock {
    /// Opens (creating if needed) the lock file of `dir` for a writer.
    pub(crate) fn open_rw(dir: &Path, mode: u32) -> Result<DirLock, Error> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| lock_error(dir, &path, e))?;
        check_regular(dir, &file)?;
        Ok(DirLock { file, path })
    }

    /// Opens the lock file of `dir` read-only, if there is one (a reader never creates it).
    pub(crate) fn open_ro(dir: &Path) -> Result<Option<DirLock>, Error> {
        let path = dir.join(LOCK_FILE);
        match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(file) => {
                check_regular(dir, &file)?;
                Ok(Some(DirLock { file, path }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(lock_error(dir, &path, e)),
        }
    }

    /// Waits for the exclusive lock.
    pub(crate) fn exclusive(&self) -> Result<LockGuard<'_>, Error> {
        sys::flock_exclusive_blocking(self.file.as_raw_fd())
            .map_err(|e| Error::io("locking", &self.path, e))?;
        Ok(LockGuard { lock: self })
    }

    /// Takes the exclusive lock if nobody holds the lock.
    pub(crate) fn try_exclusive(&self) -> Result<Option<LockGuard<'_>>, Error> {
        match sys::try_flock(self.file.as_raw_fd(), true) {
            Ok(true) => Ok(Some(LockGuard { lock: self })),
            Ok(false) => Ok(None),
            Err(e) => Err(Error::io("locking", &self.path, e)),
        }
    }

    /// Waits for the shared lock.
    pub(crate) fn shared(&self) -> Result<LockGuard<'_>, Error> {
        sys::flock_shared_blocking(self.file.as_raw_fd()).map_err(|e| Error::io("locking", &self.path, e))?;
        Ok(LockGuard { lock: self })
    }

    /// Records `application` as the owner, or checks that it is the owner.
    /// Call with the exclusive lock held.
    pub(crate) fn claim(&self, dir: &Path, application: &str) -> Result<(), Error> {
        let mut f = &self.file;
        let mut text = String::new();
        f.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io("reading", &self.path, e))?;
        f.take(64 << 10)
            .read_to_string(&mut text)
            .map_err(|e| Error::io("reading", &self.path, e))?;
        if let Some(owner) = text.lines().find_map(|l| l.strip_prefix("application=")) {
            if owner == application {
                return Ok(());
            }
            return Err(Error::WrongApplication {
                dir: dir.to_path_buf(),
                owner: owner.to_string(),
                requested: application.to_string(),
            });
        }
        let content = format!("shmetrics metrics directory\napplication={application}\n");
        let mut f = &self.file;
        f.set_len(0).map_err(|e| Error::io("writing", &self.path, e))?;
        f.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io("writing", &self.path, e))?;
        f.write_all(content.as_bytes())
            .map_err(|e| Error::io("writing", &self.path, e))?;
        Ok(())
    }
}

fn check_regular(dir: &Path, file: &File) -> Result<(), Error> {
    match file.metadata() {
        Ok(md) if md.is_file() => Ok(()),
        Ok(_) => Err(Error::Directory {
            path: dir.to_path_buf(),
            reason: format!("{LOCK_FILE} is not a regular file: remove it"),
            source: None,
        }),
        Err(e) => Err(Error::io("inspecting", dir.join(LOCK_FILE), e)),
    }
}

fn lock_error(dir: &Path, path: &Path, e: std::io::Error) -> Error {
    let reason = match e.raw_os_error() {
        Some(libc::ELOOP) => format!(
            "{LOCK_FILE} is a symbolic link: refusing to follow it (someone may have planted it); remove it"
        ),
        Some(libc::EACCES) | Some(libc::EPERM) => format!("cannot open {LOCK_FILE}: permission denied"),
        _ => format!("cannot open {}", path.display()),
    };
    Error::Directory {
        path: dir.to_path_buf(),
        reason,
        source: Some(e),
    }
}
