//! Sustained accidents, run long enough to find races (bounded: about 15 s each): slot
//! writers killed with SIGKILL at random and restarted with the same worker id while
//! others scrape, and one process whose threads create series past the limit, fork, remove
//! and clear while it scrapes itself. Totals stay exact, no garbage reaches a series, no
//! live file is skipped, and no scrape goes backwards.
//!
//! Like `multiprocess.rs`, the binary is its own child: with `SHMETRICS_TEST_ROLE` set it
//! runs one role instead of the tests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use rand::Rng;
use shmetrics_core::{GaugeMode, Reader, Snapshot, Store, Value};
use shmetrics_testing::{ROLE_VAR, RoleProc, say, wait_for_stdin_eof};

type Test = fn() -> Result<(), Failed>;

#[rustfmt::skip]
const TESTS: &[(&str, Test)] = &[
    ("slot_writers_killed_at_random_keep_exact_totals_and_no_garbage", random_kills),
    ("threads_forks_and_removals_never_take_a_family_out_of_the_own_scrape", own_scrape_never_backwards),
];

const RUN: Duration = Duration::from_secs(15);

fn main() {
    if let Ok(role) = std::env::var(ROLE_VAR) {
        let args: Vec<String> = std::env::args().skip(1).collect();
        match role.as_str() {
            "slot" => role_slot(&args[0], args[1].parse().expect("slot"), &args[2]),
            "busy" => role_busy(&args[0]),
            other => panic!("unknown role {other}"),
        }
        return;
    }
    let args = Arguments::from_args();
    let tests = TESTS.iter().map(|(name, f)| Trial::test(*name, *f)).collect();
    libtest_mimic::run(&args, tests).exit();
}

const APP: &str = "stress-test";

// ---------------------------------------------------------------------------------------
// Slot writers killed at random.

/// New series per life of a slot writer.
const BURST: u64 = 400;

/// A slot writer: each iteration counts `hot` and observes `lat`; the first [`BURST`]
/// create the series `<life>-<i>` of `iter` with one increment. Until its stdin closes.
fn role_slot(dir: &str, slot: u64, life: &str) {
    let store = Store::builder(dir)
        .application(APP)
        .worker_id(slot)
        .series_limit(1 << 20)
        .open()
        .expect("open");
    let hot = store.counter("hot", "Hot counter").expect("counter");
    let lat = store.histogram("lat", "Latency", &[0.1, 1.0]).expect("histogram");
    let iter = store
        .counter_family("iter", "One series per iteration", &["n"])
        .expect("counter");
    let busy = store
        .gauge("busy", "Live writers", GaugeMode::LiveSum)
        .expect("gauge");
    busy.set(1.0);
    say("ready");
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            wait_for_stdin_eof();
            stop.store(true, Ordering::Relaxed);
        });
        // A burst of new series at each start (kills land in the middle of appends),
        // then the hot counter alone, paced.
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            hot.inc();
            lat.observe(0.5);
            if i < BURST {
                iter.labels(&[&format!("{life}-{i}")]).inc();
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
            i += 1;
        }
        say(format!("stopped {i}"));
    });
}

/// Watches a directory from a long-lived reader: nothing live skipped, nothing backwards.
fn watch(dir: &std::path::Path, stop: &AtomicBool, scrapes: &AtomicU64) -> Result<(), String> {
    let mut reader = Reader::new(dir).map_err(|e| e.to_string())?;
    let (mut hot, mut count) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        let snap = reader.snapshot().map_err(|e| e.to_string())?;
        let st = snap.stats();
        if st.corrupt_files + st.unreadable_files + st.newer_files != 0 {
            return Err(format!("a file was skipped: {:?}", st.corrupt));
        }
        let h = snap.counter("hot", &[]).unwrap_or(0);
        let c = snap.histogram("lat", &[]).map_or(0, |v| v.count());
        if h < hot || c < count {
            return Err(format!(
                "went backwards: hot {hot} -> {h}, lat count {count} -> {c}"
            ));
        }
        (hot, count) = (h, c);
        scrapes.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn random_kills() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let slots = 3u64;
    let mut lives = 0u64;
    let mut spawn = |slot: u64| {
        lives += 1;
        let mut p = RoleProc::spawn("slot", &[d, &slot.to_string(), &format!("L{lives}")]);
        p.expect("ready", Duration::from_secs(30));
        p
    };
    let mut writers: Vec<RoleProc> = (0..slots).map(&mut spawn).collect();
    let stop = AtomicBool::new(false);
    let scrapes = AtomicU64::new(0);
    let mut kills = 0u64;
    let mut rng = rand::rng();
    let watched = std::thread::scope(|s| {
        let watchers: Vec<_> = (0..2)
            .map(|_| s.spawn(|| watch(dir.path(), &stop, &scrapes)))
            .collect();
        let end = Instant::now() + RUN;
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(rng.random_range(0..40)));
            let slot = rng.random_range(0..slots) as usize;
            writers[slot].signal(libc::SIGKILL);
            writers[slot].wait(Duration::from_secs(10));
            kills += 1;
            writers[slot] = spawn(slot as u64);
        }
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        watchers
            .into_iter()
            .map(|w| w.join().expect("watcher"))
            .collect::<Result<Vec<()>, String>>()
    });
    for w in &mut writers {
        w.close_stdin();
        w.expect("stopped", Duration::from_secs(30));
        assert!(w.wait(Duration::from_secs(10)).success());
    }
    watched?;
    let snap = Reader::new(dir.path())?.snapshot()?;
    check_iterations(&snap, kills)?;
    eprintln!("{kills} kills, {scrapes:?} scrapes");
    if kills < 15 || scrapes.load(Ordering::Relaxed) < 100 {
        return Err(format!("too little happened: {kills} kills, {scrapes:?} scrapes").into());
    }
    Ok(())
}

/// Every series of `iter` holds 1, but for at most the last one of a killed life (killed
/// before its increment); in each life the series are `0..n` without a gap; and `hot`,
/// `lat` and `iter` agree up to one iteration per kill (`iter` only counts the burst).
fn check_iterations(snap: &Snapshot, kills: u64) -> Result<(), Failed> {
    let fam = snap.family("iter").ok_or("no iter family")?;
    let mut lives: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    let mut ones = 0u64;
    for s in &fam.series {
        let Value::Counter(v) = s.value else {
            return Err(format!("{:?}: {:?}", s.labels, s.value).into());
        };
        if &*s.labels[0] == shmetrics_core::OVERFLOW_LABEL_VALUE {
            // Past the slot file's series limit (kept across lives): one each too.
            ones += v;
            continue;
        }
        let (life, i) = s.labels[0].split_once('-').ok_or("label")?;
        lives.entry(life.to_string()).or_default().push((i.parse()?, v));
    }
    for (life, mut series) in lives {
        series.sort();
        for (k, (i, v)) in series.iter().enumerate() {
            if *i != k as u64 {
                return Err(format!("life {life}: series {k} missing (next is {i})").into());
            }
            let last = k + 1 == series.len();
            if *v > 1 || (*v == 0 && !last) {
                return Err(format!("life {life}: series {i} holds {v}").into());
            }
            ones += v;
        }
    }
    let hot = snap.counter("hot", &[]).ok_or("no hot")?;
    let lat = snap.histogram("lat", &[]).ok_or("no lat")?.count();
    if hot < ones || lat + kills < hot || lat > hot {
        return Err(format!("hot {hot}, lat {lat}, iterations {ones}, kills {kills}").into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// One process, many threads: series past the limit, fork, remove and clear, own scrapes.

fn role_busy(dir: &str) {
    let store = Store::builder(dir)
        .application(APP)
        .series_limit(1000)
        .open()
        .expect("open");
    let flood = store
        .counter_family("flood", "Past the limit", &["n"])
        .expect("counter");
    let hits = store.counter("hits", "Hits").expect("counter");
    let victims = store
        .counter_family("victims", "Removed", &["n"])
        .expect("counter");
    let stop = AtomicBool::new(false);
    let made = AtomicU64::new(0);
    let failure = std::sync::Mutex::new(None::<String>);
    let fail = |why: String| {
        failure.lock().unwrap().get_or_insert(why);
        stop.store(true, Ordering::Relaxed);
    };
    std::thread::scope(|s| {
        for t in 0..4 {
            let (flood, hits, stop, made) = (&flood, &hits, &stop, &made);
            s.spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    flood.labels(&[&format!("{t}-{i}")]).inc();
                    hits.inc();
                    made.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            });
        }
        s.spawn(|| {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = (i % 50).to_string();
                victims.labels(&[&key]).inc();
                if i % 7 == 0 {
                    let _ = victims.remove(&[&key]);
                }
                if i % 101 == 0 {
                    let _ = victims.clear();
                }
                i += 1;
            }
        });
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: the child only records into the store (fork-safe), then _exit.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    hits.inc_by(1000);
                    flood.labels(&["child"]).inc();
                    // SAFETY: leave without the parent's exit handlers.
                    unsafe { libc::_exit(0) };
                }
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        s.spawn(|| {
            let mut last_hits = 0;
            let mut last_flood = 0;
            let end = Instant::now() + RUN;
            while Instant::now() < end && !stop.load(Ordering::Relaxed) {
                let snap = match store.snapshot() {
                    Ok(s) => s,
                    Err(e) => return fail(format!("scrape failed: {e}")),
                };
                let h = snap.counter("hits", &[]).unwrap_or(0);
                let f = snap.family("flood").map_or(0, |f| f.series.len());
                if h < last_hits || f < last_flood {
                    return fail(format!(
                        "own scrape went backwards: hits {last_hits} -> {h}, flood series {last_flood} -> {f}"
                    ));
                }
                (last_hits, last_flood) = (h, f);
            }
            stop.store(true, Ordering::Relaxed);
        });
    });
    match failure.into_inner().unwrap() {
        Some(why) => say(format!("result {why}")),
        None => say(format!("result ok {}", made.load(Ordering::Relaxed))),
    }
}

fn own_scrape_never_backwards() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let mut p = RoleProc::spawn("busy", &[d]);
    let result = p.expect("result", RUN + Duration::from_secs(60));
    if !p.wait(Duration::from_secs(30)).success() {
        return Err(format!("the process failed: {result}").into());
    }
    let made: u64 = result
        .strip_prefix("ok ")
        .ok_or_else(|| format!("in the process: {result}"))?
        .parse()?;
    // A fresh reader sees every increment: the threads' and the children's.
    let snap = Reader::new(dir.path())?.snapshot()?;
    let hits = snap.counter("hits", &[]).ok_or("no hits")?;
    let flood: u64 = snap
        .family("flood")
        .ok_or("no flood")?
        .series
        .iter()
        .map(|s| match s.value {
            Value::Counter(v) => v,
            _ => 0,
        })
        .sum();
    let children = (hits - made) / 1000;
    if (hits - made) % 1000 != 0 || flood != made + children {
        return Err(format!("hits {hits}, flood {flood}, made {made}").into());
    }
    Ok(())
}
