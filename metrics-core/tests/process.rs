//! Process metrics of real worker processes: the service's CPU counter against the
//! workers' own `getrusage`, monotonic through SIGKILL and a restart in the same slot with
//! at most one sampling interval of the dead worker lost; resident memory of a worker that
//! touches 200 MB, in the service and in its own series; per-worker series that stay the
//! same series through 50 restarts of a slot.
//!
//! The binary is its own child: with `SHMETRICS_TEST_ROLE` set it runs one role instead of
//! the tests.

use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use shmetrics_core::process::ProcessMetrics;
use shmetrics_core::{Reader, Store};
use shmetrics_testing::{RoleProc, read_stdin_line, say, wait_for_stdin_eof};

type Test = fn() -> Result<(), Failed>;

#[rustfmt::skip]
const TESTS: &[(&str, Test)] = &[
    ("service_cpu_is_the_workers_cpu_and_survives_sigkill_and_restart", cpu),
    ("a_worker_touching_200_mb_raises_the_service_and_its_own_rss", rss),
    ("per_worker_series_stay_the_same_through_50_restarts_of_a_slot", restarts),
    #[cfg(feature = "tokio")]
    ("a_tokio_runtime_s_workers_tasks_and_busy_time", tokio_runtime),
];

/// The tests of this file run one at a time: CPU time burnt by one would delay the
/// sampling threads of another.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How often the workers of these tests sample themselves.
const INTERVAL: Duration = Duration::from_millis(100);

fn main() {
    shmetrics_testing::run_tests_or_role(TESTS, run_role);
}

fn run_role(role: &str, args: &[String]) {
    let dir = &args[0];
    let worker: u64 = args[1].parse().expect("worker id");
    match role {
        "worker" => role_worker(dir, worker),
        "brief" => role_brief(dir, worker),
        other => panic!("unknown role {other}"),
    }
}

fn open(dir: &str, worker: u64) -> Store {
    Store::builder(dir)
        .application("process-test")
        .worker_id(worker)
        .open()
        .expect("open store")
}

/// This process's user and system CPU time, in seconds.
fn own_cpu() -> f64 {
    // SAFETY: getrusage writes one `rusage` into the zeroed local, which lives for the call.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Burns `seconds` of CPU in this thread (measured by getrusage).
fn burn(seconds: f64) {
    let until = own_cpu() + seconds;
    let mut x = 0u64;
    while own_cpu() < until {
        for i in 0..100_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        std::hint::black_box(x);
    }
}

/// A worker sampling itself every `INTERVAL`, per-worker series on. Commands on stdin:
/// `burn S` (CPU seconds), `touch MB` (allocate and write), `cpu` (report getrusage).
fn role_worker(dir: &str, worker: u64) {
    let store = open(dir, worker);
    let _process = ProcessMetrics::builder(&store)
        .interval(INTERVAL)
        .per_worker(true)
        .start()
        .expect("process metrics");
    let mut kept: Vec<Vec<u8>> = Vec::new();
    say("ready");
    loop {
        let line = read_stdin_line();
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some("burn"), Some(s)) => {
                burn(s.parse().expect("seconds"));
                say(format!("burnt {}", own_cpu()));
            }
            (Some("touch"), Some(mb)) => {
                let mb: usize = mb.parse().expect("MB");
                let mut v = vec![0u8; mb << 20];
                // One write per page: every page resident.
                for i in (0..v.len()).step_by(4096) {
                    v[i] = 1;
                }
                kept.push(std::hint::black_box(v));
                say("touched");
            }
            (Some("cpu"), _) => say(format!("cpu {}", own_cpu())),
            _ => return,
        }
    }
}

fn snapshot(d: &str) -> Result<shmetrics_core::Snapshot, Failed> {
    Ok(Reader::new(d)?.snapshot()?)
}

fn service_cpu(d: &str) -> Result<f64, Failed> {
    Ok(snapshot(d)?
        .counter_f64("process_cpu_seconds", &[])
        .unwrap_or(0.0))
}

/// Waits until the workers have sampled at least twice more.
fn settle() {
    std::thread::sleep(INTERVAL * 3);
}

/// CPU seconds of a live process, as the kernel counts them (`/proc/<pid>/stat`).
fn cpu_of(pid: i32) -> Result<f64, Failed> {
    let stat = procfs::process::Process::new(pid)?.stat()?;
    Ok((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

fn cpu() -> Result<(), Failed> {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut workers: Vec<RoleProc> = (0..4)
        .map(|w| RoleProc::spawn("worker", &[d, &w.to_string()]))
        .collect();
    for w in &mut workers {
        w.expect("ready", Duration::from_secs(30));
    }
    // Known amounts: 0.2, 0.4, 0.6 and 0.8 CPU seconds, all at once.
    for (i, w) in workers.iter_mut().enumerate() {
        w.send(&format!("burn {}", 0.2 * (i + 1) as f64));
    }
    let mut own = 0.0;
    for w in &mut workers {
        own += w.expect("burnt", Duration::from_secs(60)).trim().parse::<f64>()?;
    }
    settle();
    let merged = service_cpu(d)?;
    println!("4 workers: getrusage {own:.3} s, process_cpu_seconds_total {merged:.3} s");
    if (merged - own).abs() > 0.1 * own {
        return Err(
            format!("process_cpu_seconds_total {merged:.3} s, the workers' getrusage {own:.3} s").into(),
        );
    }

    // Worker 3 killed while it burns: what it used up to its last sample stays counted.
    // Watch the counter all along: it never goes back.
    let watch = |d: &str, last: &mut f64, when: &str| -> Result<(), Failed> {
        let now = service_cpu(d)?;
        if now + 1e-9 < *last {
            return Err(format!("{when}: process_cpu_seconds_total went back from {last} to {now}").into());
        }
        *last = now;
        Ok(())
    };
    let mut last = merged;
    workers[3].send("burn 5");
    let until = Instant::now() + Duration::from_millis(700);
    while Instant::now() < until {
        watch(d, &mut last, "while worker 3 burns")?;
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = workers[3].pid();
    let at_kill = cpu_of(pid)?;
    workers[3].signal(libc::SIGKILL);
    workers[3].wait(Duration::from_secs(10));
    let others: f64 = (0..3)
        .map(|w| cpu_of(workers[w].pid()))
        .sum::<Result<f64, Failed>>()?;
    settle();
    let after_kill = service_cpu(d)?;
    watch(d, &mut last, "after the SIGKILL")?;
    // At most one interval of the dead worker's CPU (one busy thread) is missing, plus
    // the kernel's tick (10 ms) and what the worker burnt between `cpu_of` and the kill.
    let lost = at_kill + others - after_kill;
    println!("worker 3 killed with {at_kill:.3} s of CPU; the counter misses {lost:.3} s of it");
    if lost > INTERVAL.as_secs_f64() + 0.03 {
        return Err(format!(
            "after SIGKILL the counter ({after_kill:.3}) misses {lost:.3} s: more than one interval of the dead worker"
        )
        .into());
    }

    // The same slot restarted: it adds its own CPU to its predecessor's.
    let mut again = RoleProc::spawn("worker", &[d, "3"]);
    again.expect("ready", Duration::from_secs(30));
    watch(d, &mut last, "after the restart")?;
    again.send("burn 0.3");
    let burnt: f64 = again.expect("burnt", Duration::from_secs(60)).trim().parse()?;
    settle();
    watch(d, &mut last, "after the restarted worker burnt")?;
    let total = service_cpu(d)?;
    if total < after_kill + burnt * 0.9 {
        return Err(format!(
            "the restarted worker's {burnt:.3} s are not added: {after_kill:.3} -> {total:.3}"
        )
        .into());
    }
    for mut w in workers.into_iter().take(3).chain([again]) {
        w.close_stdin();
        w.wait(Duration::from_secs(10));
    }
    Ok(())
}

fn rss() -> Result<(), Failed> {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut workers: Vec<RoleProc> = (0..2)
        .map(|w| RoleProc::spawn("worker", &[d, &w.to_string()]))
        .collect();
    for w in &mut workers {
        w.expect("ready", Duration::from_secs(30));
    }
    settle();
    let read = |d: &str| -> Result<(f64, f64), Failed> {
        let snap = snapshot(d)?;
        let service = snap
            .gauge("process_resident_memory_bytes", &[])
            .ok_or("no service RSS")?;
        let own = snap
            .gauge("process_worker_resident_memory_bytes", &[("worker", "1")])
            .ok_or("no RSS of worker 1")?;
        Ok((service, own))
    };
    let (before, own_before) = read(d)?;
    workers[1].send("touch 200");
    workers[1].expect("touched", Duration::from_secs(60));
    settle();
    let (after, own_after) = read(d)?;
    let mb = |b: f64| b / (1 << 20) as f64;
    println!(
        "service RSS {:.1} -> {:.1} MB (+{:.1}), worker 1 {:.1} -> {:.1} MB",
        mb(before),
        mb(after),
        mb(after - before),
        mb(own_before),
        mb(own_after)
    );
    for (what, rise) in [
        ("the service's", after - before),
        ("worker 1's own", own_after - own_before),
    ] {
        if (mb(rise) - 200.0).abs() > 20.0 {
            return Err(format!("{what} RSS rose by {:.1} MB, not 200 MB ± 10 %", mb(rise)).into());
        }
    }
    for w in &mut workers {
        w.close_stdin();
        w.wait(Duration::from_secs(10));
    }
    Ok(())
}

/// A worker of slot `worker` that burns 20 ms of CPU, samples and waits.
fn role_brief(dir: &str, worker: u64) {
    let store = open(dir, worker);
    burn(0.02);
    let p = ProcessMetrics::builder(&store)
        .per_worker(true)
        .start()
        .expect("process metrics");
    p.stop();
    say("sampled");
    wait_for_stdin_eof();
}

fn restarts() -> Result<(), Failed> {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    for i in 0..50 {
        let mut w = RoleProc::spawn("brief", &[d, "0"]);
        w.expect("sampled", Duration::from_secs(30));
        // Half die by SIGKILL, half exit.
        if i % 2 == 0 {
            w.signal(libc::SIGKILL);
        } else {
            w.close_stdin();
        }
        w.wait(Duration::from_secs(10));
    }
    // The slot's current worker, alive (its gauges are summed over live workers).
    let mut current = RoleProc::spawn("brief", &[d, "0"]);
    current.expect("sampled", Duration::from_secs(30));
    let snap = snapshot(d)?;
    current.close_stdin();
    current.wait(Duration::from_secs(10));
    for name in [
        "process_worker_cpu_seconds",
        "process_worker_resident_memory_bytes",
        "process_worker_open_fds",
        "process_worker_start_time_seconds",
    ] {
        let f = snap.family(name).ok_or_else(|| format!("no {name}"))?;
        let labels: Vec<_> = f.series.iter().map(|s| s.labels.to_vec()).collect();
        if labels != vec![vec![Box::<str>::from("0")]] {
            return Err(format!("{name} after 50 restarts and a 51st start: {labels:?}").into());
        }
    }
    // The slot's CPU counter went on from one worker to the next.
    let cpu = snap
        .counter_f64("process_worker_cpu_seconds", &[("worker", "0")])
        .unwrap_or(0.0);
    let service = snap.counter_f64("process_cpu_seconds", &[]).unwrap_or(0.0);
    // 51 workers that burnt 20 ms each: the kernel, counting in ticks of 10 ms, gives each
    // at least one tick.
    if cpu < 51.0 * 0.01 || (cpu - service).abs() > 1e-9 {
        return Err(format!("worker 0's CPU {cpu}, the service's {service}").into());
    }
    Ok(())
}

/// A runtime of 2 worker threads with 10 tasks parked and 2 that keep a thread busy for
/// 200 ms each: its workers, alive tasks and busy time, in the service's and the worker's
/// series.
#[cfg(feature = "tokio")]
fn tokio_runtime() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path().to_str().unwrap(), 7);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    for _ in 0..10 {
        let mut rx = rx.clone();
        rt.spawn(async move {
            let _ = rx.changed().await;
        });
    }
    rt.block_on(async {
        let busy = (0..2).map(|_| {
            tokio::spawn(async {
                let until = Instant::now() + Duration::from_millis(200);
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
            })
        });
        for t in busy.collect::<Vec<_>>() {
            t.await.unwrap();
        }
    });
    let p = ProcessMetrics::builder(&store)
        .per_worker(true)
        .tokio_runtime(rt.handle().clone())
        .start()?;
    let snap = store.snapshot()?;
    p.stop();
    let _ = tx.send(true);
    for labels in [&[][..], &[("worker", "7")][..]] {
        let prefix = if labels.is_empty() {
            "tokio_runtime_"
        } else {
            "tokio_runtime_worker_"
        };
        let workers = snap.gauge(&format!("{prefix}workers"), labels);
        let alive = snap.gauge(&format!("{prefix}alive_tasks"), labels);
        let busy = snap.counter_f64(&format!("{prefix}busy_seconds"), labels);
        println!("{prefix}: workers {workers:?}, alive tasks {alive:?}, busy {busy:?} s");
        if workers != Some(2.0) || alive != Some(10.0) || !busy.is_some_and(|b| b >= 0.35) {
            return Err(
                format!("{prefix}*: workers {workers:?}, alive tasks {alive:?}, busy {busy:?}").into(),
            );
        }
    }
    Ok(())
}
