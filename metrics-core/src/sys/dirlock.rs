//! The directory lock file, `.shmetrics.lock`.
//!
//! * Exclusive `flock`: the directory is being changed (a metric declared, a worker slot
//!   taken, files compacted, a series removed).
//! * Shared `flock`: a scrape reads a consistent set of files (a compaction never runs in
//!   the middle of it).
//! * Contents: the application that owns the directory (`application=<name>`), written by
//!   the first process that opens it. One directory belongs to one API.
//!
//! `flock` does not queue: while scrapes overlap without a gap (two scrapers, or one
//! scraping back to back), a process waiting for the exclusive lock could wait for ever.
//! So a second file, the turnstile `.shmetrics.turn`, gives changes priority: a writer
//! takes the turnstile exclusively, then the lock, then lets the turnstile go; a scrape
//! passes through the turnstile (shared, released at once) before it takes the lock
//! shared. A waiting writer thus waits only for the scrapes already running.
//!
//! A `flock` belongs to the open file description, which `fork()` shares between parent
//! and child: a child using an inherited descriptor would "hold" the parent's lock (and
//! the parent the child's). So the lock files are opened again, in the child, before their
//! first use after a fork.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::Error;
use crate::sys;

/// The directory lock file.
pub(crate) const LOCK_FILE: &str = ".shmetrics.lock";
/// The directory lock's turnstile.
pub(crate) const TURN_FILE: &str = ".shmetrics.turn";

/// The application recorded in `dir`'s lock file, if any (read without locking).
pub(crate) fn recorded_application(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(LOCK_FILE)).ok()?;
    owner_of(&text).map(str::to_string)
}

/// The owner line of a lock file's contents.
fn owner_of(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("application="))
}

/// An open lock file, and its turnstile.
pub(crate) struct DirLock {
    dir: PathBuf,
    path: PathBuf,
    /// `Some(mode)`: opened read-write (a writer), created with this mode if missing.
    write: Option<u32>,
    open: Mutex<OpenLock>,
    /// The turnstile; `None` in a directory made by a version without one (a reader does
    /// not create it; a writer does).
    turn: Mutex<Option<OpenLock>>,
}

/// The descriptor of the lock file, and the fork generation it was opened in.
struct OpenLock {
    file: Arc<File>,
    fork_gen: u64,
}

/// A held lock; released on drop.
pub(crate) struct LockGuard {
    file: Arc<File>,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = sys::flock_unlock(self.file.as_raw_fd());
    }
}

impl DirLock {
    /// Opens (creating if needed, with permission bits `mode` whatever the umask) the lock
    /// file of `dir` for a writer.
    pub(crate) fn open_rw(dir: &Path, mode: u32) -> Result<DirLock, Error> {
        let path = dir.join(LOCK_FILE);
        let file = open_file(dir, &path, Some(mode))?;
        let lock = DirLock::with(dir, path, Some(mode), file);
        lock.turn()?;
        Ok(lock)
    }

    /// Opens the lock file of `dir` read-only, if there is one (a reader never creates it).
    pub(crate) fn open_ro(dir: &Path) -> Result<Option<DirLock>, Error> {
        let path = dir.join(LOCK_FILE);
        match open_file(dir, &path, None) {
            Ok(file) => Ok(Some(DirLock::with(dir, path, None, file))),
            Err(Error::Directory { source: Some(e), .. }) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn with(dir: &Path, path: PathBuf, write: Option<u32>, file: File) -> DirLock {
        DirLock {
            dir: dir.to_path_buf(),
            path,
            write,
            open: Mutex::new(OpenLock {
                file: Arc::new(file),
                fork_gen: sys::fork_generation(),
            }),
            turn: Mutex::new(None),
        }
    }

    /// The turnstile's descriptor (opened, or created by a writer, on first use and
    /// again after a fork), if the directory has one.
    fn turn(&self) -> Result<Option<Arc<File>>, Error> {
        let mut turn = self.turn.lock().unwrap_or_else(PoisonError::into_inner);
        let fork_gen = sys::fork_generation();
        if turn.as_ref().is_none_or(|t| t.fork_gen != fork_gen) {
            let path = self.dir.join(TURN_FILE);
            *turn = match open_file(&self.dir, &path, self.write) {
                Ok(file) => Some(OpenLock {
                    file: Arc::new(file),
                    fork_gen,
                }),
                Err(Error::Directory { source: Some(e), .. })
                    if e.kind() == std::io::ErrorKind::NotFound && self.write.is_none() =>
                {
                    None
                }
                Err(e) => return Err(e),
            };
        }
        Ok(turn.as_ref().map(|t| Arc::clone(&t.file)))
    }

    /// The descriptor to lock through: this process's own (opened again after a fork).
    fn file(&self) -> Result<Arc<File>, Error> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let fork_gen = sys::fork_generation();
        if open.fork_gen != fork_gen {
            // Dropping the inherited `File` closes only this process's copy of the
            // descriptor: the parent's lock, if any, stays the parent's.
            open.file = Arc::new(open_file(&self.dir, &self.path, self.write)?);
            open.fork_gen = fork_gen;
        }
        Ok(Arc::clone(&open.file))
    }

    /// Waits for the exclusive lock: through the turnstile, which holds new scrapes back
    /// meanwhile.
    pub(crate) fn exclusive(&self) -> Result<LockGuard, Error> {
        let turn = self.turn()?;
        let _turn = match &turn {
            Some(t) => {
                sys::flock_exclusive_blocking(t.as_raw_fd())
                    .map_err(|e| Error::io("locking", &self.path, e))?;
                Some(LockGuard { file: Arc::clone(t) })
            }
            None => None,
        };
        let file = self.file()?;
        sys::flock_exclusive_blocking(file.as_raw_fd()).map_err(|e| Error::io("locking", &self.path, e))?;
        Ok(LockGuard { file })
    }

    /// Takes the exclusive lock if nobody holds the lock or waits for it.
    pub(crate) fn try_exclusive(&self) -> Result<Option<LockGuard>, Error> {
        let turn = self.turn()?;
        let _turn = match &turn {
            Some(t) => match sys::try_flock(t.as_raw_fd(), true) {
                Ok(true) => Some(LockGuard { file: Arc::clone(t) }),
                Ok(false) => return Ok(None),
                Err(e) => return Err(Error::io("locking", &self.path, e)),
            },
            None => None,
        };
        let file = self.file()?;
        match sys::try_flock(file.as_raw_fd(), true) {
            Ok(true) => Ok(Some(LockGuard { file })),
            Ok(false) => Ok(None),
            Err(e) => Err(Error::io("locking", &self.path, e)),
        }
    }

    /// Waits for the shared lock, after any writer waiting at the turnstile.
    pub(crate) fn shared(&self) -> Result<LockGuard, Error> {
        if let Some(t) = self.turn()? {
            sys::flock_shared_blocking(t.as_raw_fd()).map_err(|e| Error::io("locking", &self.path, e))?;
            let _ = sys::flock_unlock(t.as_raw_fd());
        }
        let file = self.file()?;
        sys::flock_shared_blocking(file.as_raw_fd()).map_err(|e| Error::io("locking", &self.path, e))?;
        Ok(LockGuard { file })
    }

    /// Records `application` as the owner, or checks that it is the owner.
    /// Call with the exclusive lock held.
    ///
    /// On a full filesystem the owner cannot be written: that is logged and the store
    /// opens anyway (values wait in memory); a later open records it.
    pub(crate) fn claim(&self, dir: &Path, application: &str) -> Result<(), Error> {
        let file = self.file()?;
        let mut f = &*file;
        let mut text = String::new();
        f.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io("reading", &self.path, e))?;
        f.take(64 << 10)
            .read_to_string(&mut text)
            .map_err(|e| Error::io("reading", &self.path, e))?;
        if let Some(owner) = owner_of(&text) {
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
        let written = f
            .set_len(0)
            .and_then(|()| f.seek(SeekFrom::Start(0)))
            .and_then(|_| f.write_all(content.as_bytes()));
        match written {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG)) => {
                tracing::warn!(
                    dir = %dir.display(),
                    "the filesystem is full: the directory's owner ({application}) is recorded when \
                     space is available"
                );
                Ok(())
            }
            Err(e) => Err(Error::io("writing", &self.path, e)),
        }
    }
}

/// Opens the lock file: read-write, created with exactly `mode` if missing, for a writer
/// (`write: Some(mode)`); read-only for a reader. Never follows a symlink.
fn open_file(dir: &Path, path: &Path, write: Option<u32>) -> Result<File, Error> {
    let flags = libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
    let file = match write {
        Some(mode) => {
            let created = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(flags)
                .open(path);
            match created {
                Ok(f) => {
                    // The umask removed bits from `mode`: set them exactly, so that the
                    // group scraper the mode is meant for can open it.
                    f.set_permissions(std::fs::Permissions::from_mode(mode))
                        .map_err(|e| Error::io("setting permissions of", path, e))?;
                    Ok(f)
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(flags)
                    .open(path),
                Err(e) => Err(e),
            }
        }
        None => OpenOptions::new().read(true).custom_flags(flags).open(path),
    }
    .map_err(|e| lock_error(dir, path, e))?;
    match file.metadata() {
        Ok(md) if md.is_file() => Ok(file),
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
        Some(libc::EACCES) | Some(libc::EPERM) => format!(
            "cannot open {LOCK_FILE}: permission denied (give this process's user or group read access, \
             e.g. StoreBuilder::file_mode(0o640) for a group scraper)"
        ),
        _ => format!("cannot open {}", path.display()),
    };
    Error::Directory {
        path: dir.to_path_buf(),
        reason,
        source: Some(e),
    }
}
