//! Operating-system primitives: file locks, space reservation, randomness, and the
//! fork machinery (generation counter, fork gate, inherited-descriptor cleanup).
//!
//! Everything here is Linux/Unix specific and every `unsafe` block carries its argument.

pub(crate) mod dirlock;
pub(crate) mod region;

use std::cell::Cell as StdCell;
use std::io;
use std::os::fd::RawFd;
use std::sync::Once;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// The effective user id of this process.
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether this process may create files in directory `dir` (`access(W_OK | X_OK)`).
pub(crate) fn may_write_dir(dir: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Takes (`exclusive`) or shares a `flock` on `fd` without blocking.
///
/// Returns `Ok(false)` when another open file description holds a conflicting lock.
pub(crate) fn try_flock(fd: RawFd, exclusive: bool) -> io::Result<bool> {
    let op = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH } | libc::LOCK_NB;
    loop {
        // SAFETY: flock only reads its integer arguments; an invalid fd yields EBADF, not UB.
        let rc = unsafe { libc::flock(fd, op) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(err),
        }
    }
}

/// Takes an exclusive `flock` on `fd`, waiting for it.
pub(crate) fn flock_exclusive_blocking(fd: RawFd) -> io::Result<()> {
    loop {
        // SAFETY: as in `try_flock`.
        let rc = unsafe { libc::flock(fd, libc::LOCK_EX) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Takes a shared `flock` on `fd`, waiting for it.
pub(crate) fn flock_shared_blocking(fd: RawFd) -> io::Result<()> {
    loop {
        // SAFETY: as in `try_flock`.
        let rc = unsafe { libc::flock(fd, libc::LOCK_SH) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Releases a `flock` held through `fd`.
pub(crate) fn flock_unlock(fd: RawFd) -> io::Result<()> {
    // SAFETY: as in `try_flock`.
    let rc = unsafe { libc::flock(fd, libc::LOCK_UN) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reserves real storage for `[offset, offset + len)` of `fd`, extending the file.
///
/// On tmpfs this allocates the pages now, so a full filesystem is an `ENOSPC` error here
/// instead of a SIGBUS on first touch of a sparse page. Falls back to `posix_fallocate`
/// (which writes zeros where the filesystem has no native support).
pub(crate) fn reserve(fd: RawFd, offset: u64, len: u64) -> io::Result<()> {
    let off = libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let ln = libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    loop {
        // SAFETY: fallocate reads only its integer arguments.
        let rc = unsafe { libc::fallocate(fd, 0, off, ln) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP) => break,
            _ => return Err(err),
        }
    }
    loop {
        // SAFETY: posix_fallocate reads only its integer arguments; it returns the error
        // number instead of setting errno.
        let rc = unsafe { libc::posix_fallocate(fd, off, ln) };
        match rc {
            0 => return Ok(()),
            libc::EINTR => continue,
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// 64 random bits from the kernel, or (if `getrandom` is unavailable) a mix of time,
/// pid and an address: only used to make file names unique, never for security.
pub(crate) fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: `buf` is a valid, writable 8-byte buffer for the duration of the call.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), libc::GRND_NONBLOCK) };
    if n == 8 {
        return u64::from_le_bytes(buf);
    }
    let t = unix_nanos();
    let local = 0u8;
    let addr = std::ptr::addr_of!(local) as u64;
    let mut x = t ^ (u64::from(std::process::id()) << 32) ^ addr.rotate_left(17);
    // splitmix64 finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Whether `/proc` shows that no process has pid `pid` now (`false` when it cannot be
/// told: no `/proc`, a pid out of range).
#[cfg(feature = "python")]
pub(crate) fn process_gone(pid: i32) -> bool {
    pid > 0
        && matches!(
            procfs::process::Process::new(pid),
            Err(procfs::ProcError::NotFound(_))
        )
}

/// Whether a process `pid` runs and started no later than `when` (seconds since the Unix
/// epoch; `/proc` gives start times to the second once the boot time is added, hence one
/// second of slack). `false` if `/proc` shows no such process; `true` when it cannot be
/// told (no `/proc`, an unreadable entry).
#[cfg(feature = "python")]
pub(crate) fn process_started_by(pid: i32, when: f64) -> bool {
    let stat = match procfs::process::Process::new(pid).and_then(|p| p.stat()) {
        Ok(stat) => stat,
        Err(procfs::ProcError::NotFound(_)) => return false,
        Err(_) => return true,
    };
    let Ok(boot) = procfs::boot_time_secs() else {
        return true;
    };
    let started = boot as f64 + stat.starttime as f64 / procfs::ticks_per_second() as f64;
    started <= when + 1.0
}

/// Wall-clock time in nanoseconds since the Unix epoch (0 before 1970).
pub(crate) fn unix_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` writes one `timespec` through the pointer, which points at
    // the local above for the whole call. (`SystemTime::now` does the same call and then
    // spends as long again on checked arithmetic: this is on the exemplar hot path.)
    let r = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    if r != 0 || ts.tv_sec < 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

// ---------------------------------------------------------------------------------------
// fork()
//
// A child process created by fork() inherits the parent's mappings (MAP_SHARED: the very
// same pages) and every handle's raw pointer into them. Writing through those pointers
// would count the child's work in the parent's file (client_python #127). Instead:
//
// * `FORK_GENERATION` is bumped by a `pthread_atfork` child handler. Every handle caches
//   the generation its pointer belongs to and compares it with one relaxed load before
//   each write: no getpid() on the hot path. A mismatch sends the write to the slow path,
//   which opens the child's own file.
// * The child handler also closes the inherited descriptors of writer files, so the
//   parent's `flock` is not kept alive by the child (the reader would otherwise believe a
//   dead parent alive while the child runs).
// * The fork gate keeps fork() out of every internal critical section: slow paths (which
//   take internal mutexes) run as gate readers; the prepare handler waits until there are
//   none and holds new ones back, so no mutex is ever copied into a child in a locked state.
//   Rule: enter the gate *before* taking any internal lock. A thread holding a lock while
//   waiting at the gate could block a reader inside it, which blocks the fork, which
//   blocks the gate: a deadlock.
// ---------------------------------------------------------------------------------------

static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);
static BIND_EPOCH: AtomicU64 = AtomicU64::new(0);

/// The current fork generation of this process (changes in a child after `fork()`).
#[inline(always)]
pub(crate) fn fork_generation() -> u64 {
    FORK_GENERATION.load(Ordering::Relaxed)
}

/// The epoch handles compare against before each write. It changes after `fork()` and
/// whenever a writer of this process switches to another file; every handle then takes
/// the slow path once and rebinds (to the same slots if its file did not change).
#[inline(always)]
pub(crate) fn bind_epoch() -> u64 {
    BIND_EPOCH.load(Ordering::Relaxed)
}

/// Makes every handle of this process rebind on its next write.
pub(crate) fn bump_bind_epoch() {
    BIND_EPOCH.fetch_add(1, Ordering::AcqRel);
}

const GATE_WRITER: u64 = 1 << 63;
static GATE: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static GATE_DEPTH: StdCell<u32> = const { StdCell::new(0) };
}

/// Proof that the current thread is inside the fork gate (see the module comment).
/// Re-entrant: nested guards on one thread touch only a thread-local depth.
#[must_use]
pub(crate) struct GateGuard {
    _not_send: std::marker::PhantomData<*const ()>,
}

/// Enters the fork gate for the duration of a slow path.
pub(crate) fn enter_gate() -> GateGuard {
    install_fork_handlers();
    let depth = GATE_DEPTH.with(|d| {
        let v = d.get();
        d.set(v + 1);
        v
    });
    if depth == 0 {
        let mut spins = 0u32;
        loop {
            let s = GATE.load(Ordering::Acquire);
            if s & GATE_WRITER == 0
                && GATE
                    .compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                break;
            }
            backoff(&mut spins);
        }
    }
    GateGuard {
        _not_send: std::marker::PhantomData,
    }
}

impl Drop for GateGuard {
    fn drop(&mut self) {
        let depth = GATE_DEPTH.with(|d| {
            let v = d.get() - 1;
            d.set(v);
            v
        });
        if depth == 0 {
            GATE.fetch_sub(1, Ordering::Release);
        }
    }
}

fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// Writer files to detach in a child after fork: descriptor and mapping. A `flock`
/// belongs to the open file description, and both the descriptor and a `MAP_SHARED`
/// mapping hold a reference to it: the child must drop both, or the parent's lock would
/// outlive the parent for as long as the child runs. The SIGBUS guard also reads the
/// mappings here (a writer's file cut short by someone else).
pub(crate) struct WriterSlot {
    /// -1 = free entry.
    fd: AtomicI32,
    addr: AtomicUsize,
    len: AtomicUsize,
}

/// Entries per chunk of the writer table.
const CHUNK_SLOTS: usize = 256;

/// A chunk of the writer table. The table grows by chunks that are never freed, linked
/// through `next`, so that fork and signal handlers can walk it with atomic loads alone.
struct WriterChunk {
    slots: [WriterSlot; CHUNK_SLOTS],
    next: AtomicPtr<WriterChunk>,
}

impl WriterChunk {
    const fn new() -> Self {
        WriterChunk {
            slots: [const {
                WriterSlot {
                    fd: AtomicI32::new(-1),
                    addr: AtomicUsize::new(0),
                    len: AtomicUsize::new(0),
                }
            }; CHUNK_SLOTS],
            next: AtomicPtr::new(std::ptr::null_mut()),
        }
    }
}

static WRITERS: WriterChunk = WriterChunk::new();

/// Every chunk of the writer table (atomic loads only: usable in signal handlers).
fn writer_chunks() -> impl Iterator<Item = &'static WriterChunk> {
    let mut next: Option<&'static WriterChunk> = Some(&WRITERS);
    std::iter::from_fn(move || {
        let chunk = next?;
        let p = chunk.next.load(Ordering::Acquire);
        // SAFETY: `next` is null or points to a chunk leaked by `register_writer`, which
        // lives (immutable but for atomics) until the process ends.
        next = (!p.is_null()).then(|| unsafe { &*p });
        Some(chunk)
    })
}

/// Records a writer's descriptor and mapping, to be detached in fork children. Call from
/// inside the fork gate (so no fork sees a half-written entry). The table grows as
/// needed: every writer of the process is recorded, however many.
pub(crate) fn register_writer(fd: RawFd, addr: *mut u8, len: usize) -> &'static WriterSlot {
    install_fork_handlers();
    install_bus_handler();
    loop {
        let mut last = &WRITERS;
        for chunk in writer_chunks() {
            for slot in &chunk.slots {
                if slot
                    .fd
                    .compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    slot.addr.store(addr as usize, Ordering::Release);
                    slot.len.store(len, Ordering::Release);
                    return slot;
                }
            }
            last = chunk;
        }
        // Every entry is taken: add a chunk (unless another thread just did) and retry.
        let chunk: &'static WriterChunk = Box::leak(Box::new(WriterChunk::new()));
        let p = chunk as *const WriterChunk as *mut WriterChunk;
        if last
            .next
            .compare_exchange(std::ptr::null_mut(), p, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // SAFETY: `chunk` was leaked just above and never published: this is its only
            // reference, and it is not used after being freed here.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

/// Forgets a writer entry (its owner is about to close and unmap it).
pub(crate) fn unregister_writer(slot: &WriterSlot) {
    slot.addr.store(0, Ordering::Release);
    slot.len.store(0, Ordering::Release);
    slot.fd.store(-1, Ordering::Release);
}

/// Whether `addr` lies in a writer mapping of this process.
fn in_writer_mapping(addr: usize) -> bool {
    writer_chunks().any(|c| {
        c.slots.iter().any(|s| {
            let (a, l) = (s.addr.load(Ordering::Acquire), s.len.load(Ordering::Acquire));
            a != 0 && addr >= a && addr - a < l
        })
    })
}

extern "C" fn atfork_prepare() {
    let mut spins = 0u32;
    // Become the gate's writer (one fork at a time), then wait for readers to leave.
    loop {
        let s = GATE.load(Ordering::Acquire);
        if s & GATE_WRITER == 0
            && GATE
                .compare_exchange_weak(s, s | GATE_WRITER, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            break;
        }
        backoff(&mut spins);
    }
    // A thread forking from inside one of our slow paths would wait for itself; the
    // library never forks, so a reader here belongs to another thread and will leave.
    let own = GATE_DEPTH.with(|d| d.get()) > 0;
    let expected = if own { 1 } else { 0 };
    while GATE.load(Ordering::Acquire) & !GATE_WRITER > expected {
        backoff(&mut spins);
    }
}

extern "C" fn atfork_parent() {
    GATE.fetch_and(!GATE_WRITER, Ordering::Release);
}

extern "C" fn atfork_child() {
    FORK_GENERATION.fetch_add(1, Ordering::Release);
    BIND_EPOCH.fetch_add(1, Ordering::Release);
    for slot in writer_chunks().flat_map(|c| c.slots.iter()) {
        let fd = slot.fd.swap(-1, Ordering::AcqRel);
        if fd < 0 {
            continue;
        }
        let addr = slot.addr.swap(0, Ordering::AcqRel);
        let len = slot.len.swap(0, Ordering::AcqRel);
        if addr != 0 && len != 0 {
            // SAFETY: `[addr, addr + len)` is exactly a writer mapping of the parent, which
            // this child inherited. Mapping anonymous inaccessible memory over it with
            // MAP_FIXED drops the mapping's reference to the parent's file (and lock) while
            // keeping the range reserved, so the owner's later munmap unmaps only this
            // placeholder. Nothing in the child reads it: every handle's generation check
            // fails from now on.
            // `mmap` is not on POSIX's list of async-signal-safe functions, which are all a
            // child of a multi-threaded process may call before exec. This relies on what
            // Linux and glibc (and musl) do instead: their `mmap` is a thin wrapper of the
            // system call that takes no lock and allocates nothing, so it cannot wait on
            // state another thread of the parent held at the fork. The store is Linux-only
            // (`fallocate`, `/dev/shm`); on a libc whose `mmap` locks, this could deadlock.
            unsafe {
                libc::mmap(
                    addr as *mut libc::c_void,
                    len,
                    libc::PROT_NONE,
                    libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                );
            }
        }
        // SAFETY: `fd` was registered by a writer of the parent and, in this child,
        // belongs to nobody else: the owning `WriterFile` notices the generation change
        // and forgets the descriptor instead of closing it again. close() is
        // async-signal-safe, as required in an atfork child handler.
        unsafe {
            libc::close(fd);
        }
    }
    let own = GATE_DEPTH.with(|d| d.get()) > 0;
    GATE.store(u64::from(own), Ordering::Release);
}

static INSTALL: Once = Once::new();

/// Registers the fork handlers once per process.
pub(crate) fn install_fork_handlers() {
    INSTALL.call_once(|| {
        // SAFETY: the three handlers are `extern "C" fn()` items that live for the whole
        // program; they only use atomics, const-initialised thread-locals, close() and (in
        // the child) mmap, whose use is argued in `atfork_child`.
        let rc = unsafe {
            libc::pthread_atfork(Some(atfork_prepare), Some(atfork_parent), Some(atfork_child))
        };
        if rc != 0 {
            tracing::error!(
                code = rc,
                "pthread_atfork failed: metrics touched in a child after fork() would be written to the parent's file"
            );
        }
    });
}

/// The pid of this process as the kernel reports it now (not cached).
pub(crate) fn current_pid() -> u32 {
    std::process::id()
}

// ---------------------------------------------------------------------------------------
// SIGBUS
//
// A mapped file that another process cuts short (`truncate`, `: > file`, a copy over it)
// turns every access past its new end into a SIGBUS, which would end the process. The
// store checks sizes before it touches a mapping, but a file can shrink between the
// check and the access. So the store handles SIGBUS itself, for its own mappings only:
//
// * a reader marks the stretch of code that reads mappings with a `BusGuard` (a
//   thread-local depth); a fault of this thread inside it is answered by mapping a page
//   of zeros over the faulting page and noting the address, so the read goes on with
//   zeros and the reader, seeing the note, drops that file's mapping and reads again;
// * a fault in a writer mapping of the process (the writer table above) gets a private
//   page of zeros that takes its writes: a worker whose file was cut keeps running
//   (what it writes to that page is lost; it is logged);
// * any other SIGBUS goes to the handler installed before this one (Rust's own, which
//   tells stack overflows), or gets the default action: the process ends as it would
//   have without this handler.
//
// The handler uses only atomics, thread-locals without destructors and mmap/sigaction
// system calls. A program that installs its own SIGBUS handler after opening a store
// replaces this protection.
// ---------------------------------------------------------------------------------------

thread_local! {
    static BUS_DEPTH: StdCell<u32> = const { StdCell::new(0) };
    static BUS_FAULT: StdCell<usize> = const { StdCell::new(0) };
}

static BUS_INSTALL: Once = Once::new();
static BUS_PREVIOUS: AtomicPtr<libc::sigaction> = AtomicPtr::new(std::ptr::null_mut());
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);
static WRITER_FAULTS: AtomicU64 = AtomicU64::new(0);

/// Proof that the current thread reads mappings under the SIGBUS guard.
#[must_use]
pub(crate) struct BusGuard {
    _not_send: std::marker::PhantomData<*const ()>,
}

/// Enters a stretch of code whose faults on shrunken file mappings are survived (see the
/// comment above). Nests.
pub(crate) fn bus_guard() -> BusGuard {
    install_bus_handler();
    BUS_DEPTH.with(|d| d.set(d.get() + 1));
    BusGuard {
        _not_send: std::marker::PhantomData,
    }
}

impl BusGuard {
    /// The address of the first fault survived since the last call, if any.
    pub(crate) fn take_fault(&self) -> Option<usize> {
        let a = BUS_FAULT.with(|f| f.replace(0));
        (a != 0).then_some(a)
    }
}

impl Drop for BusGuard {
    fn drop(&mut self) {
        BUS_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Faults survived in writer mappings of this process since it started.
pub(crate) fn writer_faults() -> u64 {
    WRITER_FAULTS.load(Ordering::Relaxed)
}

/// Installs the SIGBUS handler once per process.
pub(crate) fn install_bus_handler() {
    BUS_INSTALL.call_once(|| {
        // SAFETY: sysconf has no memory arguments.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page > 0 {
            PAGE_SIZE.store(page as usize, Ordering::Relaxed);
        }
        // SAFETY: `action` is a zeroed (valid) sigaction filled in before use; `previous`
        // is written by the kernel; the handler is an `extern "C"` function that lives for
        // the whole program. The previous action is leaked on purpose: the handler may
        // read it at any time until the process ends.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            let previous: *mut libc::sigaction = Box::into_raw(Box::new(std::mem::zeroed()));
            if libc::sigaction(libc::SIGBUS, &action, previous) == 0 {
                BUS_PREVIOUS.store(previous, Ordering::Release);
            } else {
                tracing::warn!(
                    "cannot install the SIGBUS handler: a metrics file cut short by another process \
                     could end this process"
                );
            }
        }
    });
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for a SA_SIGINFO handler.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    // BUS_ADRERR: an access past the end of the file a page maps.
    if code == libc::BUS_ADRERR && addr != 0 {
        let writer = in_writer_mapping(addr);
        let reader = !writer && BUS_DEPTH.with(|d| d.get()) > 0;
        if writer || reader {
            let page = PAGE_SIZE.load(Ordering::Relaxed);
            let start = addr & !(page - 1);
            let prot = if writer {
                libc::PROT_READ | libc::PROT_WRITE
            } else {
                libc::PROT_READ
            };
            // SAFETY: `start` is the page of a store mapping (a writer's, from the writer
            // table, or one this thread is reading under its guard) that faulted because
            // its file shrank. Mapping anonymous zeros over exactly that page with
            // MAP_FIXED replaces only it: the rest of the mapping is untouched, its owner
            // unmaps the whole range as before. mmap is a plain system call.
            let p = unsafe {
                libc::mmap(
                    start as *mut libc::c_void,
                    page,
                    prot,
                    libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                if writer {
                    WRITER_FAULTS.fetch_add(1, Ordering::Relaxed);
                } else {
                    BUS_FAULT.with(|f| {
                        if f.get() == 0 {
                            f.set(addr);
                        }
                    });
                }
                return;
            }
        }
    }
    // Not ours: the previous handler, or the default action.
    let previous = BUS_PREVIOUS.load(Ordering::Acquire);
    // SAFETY: `previous` is null or the leaked action stored at installation.
    let previous = unsafe { previous.as_ref() };
    if let Some(p) = previous {
        let h = p.sa_sigaction;
        if h != libc::SIG_DFL && h != libc::SIG_IGN {
            if p.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: with SA_SIGINFO, the handler has this signature; it is called with
                // the arguments this handler received, as the kernel would have.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(h) };
                f(sig, info, ctx);
            } else {
                // SAFETY: without SA_SIGINFO, the handler takes the signal number only.
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(h) };
                f(sig);
            }
            return;
        }
    }
    // Restore the default action and return: the access faults again and the process
    // ends with SIGBUS, as it would have without this handler.
    // SAFETY: a zeroed sigaction with SIG_DFL is valid; sigaction is async-signal-safe.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
    }
}

#[cfg(all(test, feature = "python"))]
mod tests {
    #[test]
    fn a_process_started_by_a_time() {
        let me = std::process::id() as i32;
        let now = super::unix_nanos() as f64 / 1e9;
        assert!(
            super::process_started_by(me, now),
            "this process started before now"
        );
        // A file last changed long before this process started: its pid is another's.
        assert!(!super::process_started_by(me, now - 3600.0 * 24.0 * 365.0 * 30.0));
        // No such process (pids stop below 2^22).
        assert!(!super::process_started_by(i32::MAX - 1, now));
        assert!(super::process_gone(i32::MAX - 1));
        assert!(!super::process_gone(me));
        assert!(!super::process_gone(0), "not a pid: cannot be told");
    }
}
