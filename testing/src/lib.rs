//! Helpers for the workspace's multi-process tests and benches (not published): child
//! processes in "roles" of the running test binary, a line protocol on their stdout,
//! bounded waits, real signals, a small HTTP client, the pip install of Python's
//! `prometheus_client`, every exposition format read back by its own parser
//! ([`expositions`]), a raw counter on a mapped page and a counting allocator.

pub mod expositions;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// Environment variable that turns the test binary into a child role.
pub const ROLE_VAR: &str = "SHMETRICS_TEST_ROLE";

/// A child process running a role of the current test binary.
#[derive(Debug)]
pub struct RoleProc {
    /// The child process.
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl RoleProc {
    /// Starts `n` processes of `role` with arguments `dir` and their number (0..n), waits
    /// until each says `ready`, then sends each `go`: they start their work together.
    pub fn start_together(role: &str, dir: &str, n: usize) -> Vec<RoleProc> {
        let mut procs: Vec<RoleProc> = (0..n)
            .map(|i| RoleProc::spawn(role, &[dir, &i.to_string()]))
            .collect();
        for p in &mut procs {
            p.expect("ready", Duration::from_secs(30));
        }
        for p in &mut procs {
            p.send("go");
        }
        procs
    }

    /// Starts `role` with `args` (the test binary re-executed).
    pub fn spawn(role: &str, args: &[&str]) -> RoleProc {
        RoleProc::spawn_with(&[], role, args)
    }

    /// Starts `role` under a wrapper command (e.g. `unshare --pid --fork`).
    pub fn spawn_with(wrapper: &[&str], role: &str, args: &[&str]) -> RoleProc {
        let exe = std::env::current_exe().expect("test binary path");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let mut child = cmd
            .env(ROLE_VAR, role)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child role");
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        RoleProc {
            child,
            stdin,
            lines: rx,
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Next line starting with `prefix` (others skipped), within `timeout`.
    pub fn expect(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l[prefix.len()..].trim().to_string(),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!("child {} gave no {prefix:?} line within {timeout:?}", self.pid());
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait();
                    panic!("child {} ended ({status:?}) before a {prefix:?} line", self.pid());
                }
            }
        }
    }

    /// Every line received so far.
    pub fn drain(&mut self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// Sends one line on the child's stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to child");
        stdin.flush().expect("flush");
    }

    /// Closes the child's stdin (children waiting on it then exit normally).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for exit within `timeout` (killed and failed otherwise).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("child {} did not exit within {timeout:?}", self.pid());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends a real signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with a pid we spawned; no memory is involved.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }
}

impl Drop for RoleProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads lines from stdin until EOF (children use it to wait for the test's signal).
pub fn wait_for_stdin_eof() {
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        if line.is_err() {
            break;
        }
    }
}

/// Reads one line from stdin.
pub fn read_stdin_line() -> String {
    let mut s = String::new();
    std::io::stdin().read_line(&mut s).expect("read stdin");
    s.trim().to_string()
}

/// Prints a protocol line and flushes.
pub fn say(line: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", line.as_ref()).expect("stdout");
    out.flush().expect("flush");
}

/// A loopback port free now (released before the caller binds it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request on a fresh loopback connection (`connection: close`), with extra
/// header lines: returns (status, head, body). Bodies must not be chunked-encoded unless
/// the caller only needs the head. Panics if the request fails (see [`try_http_request`]).
pub fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, Vec<u8>) {
    try_http_request(addr, method, path, headers).expect("HTTP request")
}

/// [`http_request`], with a failure (refused, reset, malformed answer) as an error.
pub fn try_http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String, Vec<u8>)> {
    use std::io::Read;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of head"))?
        + 4;
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    Ok((status, head, out[split..].to_vec()))
}

/// Limits the size of files this process writes (`RLIMIT_FSIZE`; `None`: no limit), with
/// `SIGXFSZ` ignored: growing a file past it fails with `EFBIG`, as on a full filesystem.
pub fn limit_file_size(bytes: Option<u64>) {
    // SAFETY: plain syscalls on this process's own limits and signal disposition.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let lim = libc::rlimit {
            rlim_cur: bytes.unwrap_or(libc::RLIM_INFINITY),
            rlim_max: libc::RLIM_INFINITY,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
    }
}

/// Makes sure Python's `prometheus_client` is importable by `python3`, installing it with
/// pip (for the current user) if it is not. Panics with instructions if that fails.
/// The path of a Python helper shipped with this crate (`testing/python/<name>`).
pub fn python_script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

/// Runs `testing/python/churn.py` on `dir`: `writers` short-lived prometheus_client
/// processes, at most `concurrency` at once, each living `ms` milliseconds and marked dead
/// as it exits. Returns the expected totals it prints (JSON).
pub fn python_churn(dir: &std::path::Path, writers: usize, concurrency: usize, ms: u64) -> serde_json::Value {
    ensure_python_prometheus_client();
    let out = Command::new("python3")
        .arg(python_script("churn.py"))
        .arg(dir)
        .arg(writers.to_string())
        .arg(concurrency.to_string())
        .arg(ms.to_string())
        .env("PROMETHEUS_MULTIPROC_DIR", dir)
        .output()
        .expect("python3 churn.py");
    assert!(
        out.status.success(),
        "churn.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("churn.py prints JSON")
}

pub fn ensure_python_prometheus_client() {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let importable = || {
            Command::new("python3")
                .args(["-c", "import prometheus_client"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if importable() {
            return;
        }
        let _ = Command::new("python3")
            .args(["-m", "pip", "install", "-q", "--user", "prometheus-client"])
            .status();
        assert!(
            importable(),
            "these tests need python3 with prometheus-client: python3 -m pip install prometheus-client"
        );
    });
}

/// A counter that is a bare `AtomicU64` in a shared file mapping: the floor a store
/// handle is measured against in the benches.
#[derive(Debug)]
pub struct RawMmapCounter {
    _file: std::fs::File,
    map: memmap2::MmapRaw,
}

impl RawMmapCounter {
    /// One page of a new file in `dir`, mapped shared.
    pub fn new(dir: &std::path::Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("raw-counter"))?;
        file.set_len(4096)?;
        let map = memmap2::MmapOptions::new().len(4096).map_raw(&file)?;
        Ok(RawMmapCounter { _file: file, map })
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        // SAFETY: the mapping is 4096 bytes of a file of that size, page-aligned, alive as
        // long as `self`; the first word is only ever accessed through this atomic.
        let a = unsafe { std::sync::atomic::AtomicU64::from_ptr(self.map.as_mut_ptr().cast::<u64>()) };
        a.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The value.
    pub fn get(&self) -> u64 {
        // SAFETY: as in `inc`.
        let a = unsafe { std::sync::atomic::AtomicU64::from_ptr(self.map.as_mut_ptr().cast::<u64>()) };
        a.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A global allocator that counts allocations (and, while tracing is on, prints a
/// backtrace of each): for profiling examples that look for allocations per request.
///
/// ```ignore
/// #[global_allocator]
/// static ALLOC: shmetrics_testing::CountingAllocator = shmetrics_testing::CountingAllocator::new();
/// ```
#[derive(Debug)]
pub struct CountingAllocator {
    count: std::sync::atomic::AtomicUsize,
    trace: std::sync::atomic::AtomicBool,
}

impl CountingAllocator {
    /// A counter at zero, not tracing.
    pub const fn new() -> Self {
        CountingAllocator {
            count: std::sync::atomic::AtomicUsize::new(0),
            trace: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Allocations since the last reset.
    pub fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Resets the count to zero and turns backtraces on or off.
    pub fn reset(&self, trace: bool) {
        self.count.store(0, std::sync::atomic::Ordering::Relaxed);
        self.trace.store(trace, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Default for CountingAllocator {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds the
// `GlobalAlloc` contract; the bookkeeping only touches atomics. While a backtrace is
// printed (which allocates), tracing is switched off so the allocator does not recurse
// into itself.
unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        use std::sync::atomic::Ordering;
        self.count.fetch_add(1, Ordering::Relaxed);
        if self.trace.swap(false, Ordering::Relaxed) {
            eprintln!(
                "alloc {} bytes:\n{}",
                layout.size(),
                std::backtrace::Backtrace::force_capture()
            );
            self.trace.store(true, Ordering::Relaxed);
        }
        // SAFETY: the caller's guarantees for `layout` are those `System.alloc` needs.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from `alloc` above, i.e. from `System`, with this `layout`.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

/// A test of a [`run_tests_or_role`] binary.
pub type Test = fn() -> Result<(), libtest_mimic::Failed>;

/// The `main` of a test binary that is its own child process: with [`ROLE_VAR`] set, runs
/// `role(name, arguments)` (the command line after the program name) instead of the
/// tests; otherwise runs `tests` as `cargo test` would (filters, `--nocapture`, ...).
pub fn run_tests_or_role(tests: &[(&'static str, Test)], role: fn(&str, &[String])) {
    if let Ok(name) = std::env::var(ROLE_VAR) {
        let args: Vec<String> = std::env::args().skip(1).collect();
        role(&name, &args);
        return;
    }
    let args = libtest_mimic::Arguments::from_args();
    let trials = tests
        .iter()
        .map(|(name, f)| libtest_mimic::Trial::test(*name, *f))
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
