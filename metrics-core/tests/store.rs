//! The store's API in one process: declarations and their errors, cardinality limits,
//! refused values, directories and file permissions.

use std::os::unix::fs::PermissionsExt;

use shmetrics_core::{Error, GaugeMode, Histogram, OVERFLOW_LABEL_VALUE, Opts, Store};

/// Tests that spawn processes, and tests that rely on a dropped store's file being dead at
/// once, do not run together: until it execs, a spawned child holds duplicates of every
/// descriptor, and so, for a moment, the lock of a file this process just let go of.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::builder(dir.path())
        .application("store-test")
        .open()
        .unwrap();
    (dir, store)
}

fn store_errors(store: &Store, kind: &str) -> u64 {
    let snap = store.snapshot().unwrap();
    snap.stats()
        .store_errors
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, n)| *n)
        .unwrap()
}

#[test]
fn invalid_names_are_clear_errors() {
    let (_d, s) = store();
    let e = s.counter("http-requests", "h").unwrap_err();
    assert!(matches!(e, Error::InvalidMetricName { .. }));
    assert!(
        e.to_string().contains("invalid metric name \"http-requests\""),
        "{e}"
    );
    assert!(e.to_string().contains("[a-zA-Z_:][a-zA-Z0-9_:]*"), "{e}");

    let e = s.counter_family("ok", "h", &["bad-label"]).unwrap_err();
    assert!(matches!(e, Error::InvalidLabelName { .. }), "{e}");
    assert!(e.to_string().contains("\"bad-label\" for metric \"ok\""), "{e}");

    let e = s.counter_family("ok", "h", &["__name__"]).unwrap_err();
    assert!(e.to_string().contains("reserves"), "{e}");

    let e = s.histogram("h", "h", &[1.0, 0.5]).unwrap_err();
    assert!(matches!(e, Error::InvalidBuckets { .. }));
    assert!(e.to_string().contains("increase strictly"), "{e}");

    let e = s.histogram_family("h", "h", &["le"], &[1.0]).unwrap_err();
    assert!(e.to_string().contains("reserved for histogram buckets"), "{e}");

    let e = s.gauge_family("g", "h", &["pid"], GaugeMode::All).unwrap_err();
    assert!(e.to_string().contains("added by the store"), "{e}");

    // Nothing half-declared: the failed names are free for a valid declaration.
    s.counter("h", "h").unwrap().inc();
}

#[test]
fn redeclaring_identically_returns_the_same_family() {
    let (_d, s) = store();
    let a = s.counter_family("jobs", "Jobs", &["q"]).unwrap();
    // As a second middleware instance would, e.g. in tests.
    let b = s.counter_family("jobs", "Jobs (other help)", &["q"]).unwrap();
    a.labels(&["x"]).inc();
    b.labels(&["x"]).inc();
    assert_eq!(a.labels(&["x"]).get(), 2);
    assert_eq!(s.snapshot().unwrap().counter("jobs", &[("q", "x")]), Some(2));
    // The `_total` suffix names the same counter.
    let c = s.counter_family("jobs_total", "Jobs", &["q"]).unwrap();
    assert_eq!(c.labels(&["x"]).get(), 2);
}

#[test]
fn conflicting_declarations_in_one_process_fail() {
    let (_d, s) = store();
    s.histogram("latency", "h", &[0.1, 1.0]).unwrap();
    let e = s.histogram("latency", "h", &[0.1, 2.0]).unwrap_err();
    assert!(matches!(e, Error::Conflict { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("already declared differently by this process"),
        "{msg}"
    );
    assert!(
        msg.contains("[0.1, 1, +Inf]") && msg.contains("[0.1, 2, +Inf]"),
        "{msg}"
    );
    assert!(s.gauge("latency", "h", GaugeMode::Max).is_err());
    s.gauge("level", "h", GaugeMode::Max).unwrap();
    assert!(
        s.gauge("level", "h", GaugeMode::Min)
            .unwrap_err()
            .to_string()
            .contains("mode max")
    );
    s.counter_family("c", "h", &["a"]).unwrap();
    assert!(s.counter_family("c", "h", &["b"]).is_err());
    assert!(s.counter_f64_family("c", "h", &["a"]).is_err());
}

/// `jobs` as a counter is `jobs_total` in the exposition: a gauge `jobs_total` beside it
/// (or `lat_count` beside a histogram `lat`) would make parsers reject the whole body.
#[test]
fn colliding_sample_names_are_refused_at_declaration() {
    let (_d, s) = store();
    s.counter("jobs", "h").unwrap();
    let e = s.gauge("jobs_total", "h", GaugeMode::Max).unwrap_err();
    assert!(matches!(e, Error::NameClash { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("\"jobs\"") && msg.contains("\"jobs_total\"") && msg.contains("this process"),
        "{msg}"
    );
    assert!(s.gauge("jobs_created", "h", GaugeMode::Max).is_err());
    s.histogram("lat", "h", &[1.0]).unwrap();
    for g in ["lat_count", "lat_bucket", "lat_sum", "lat_created"] {
        let e = s.gauge(g, "h", GaugeMode::Max).unwrap_err();
        assert!(matches!(e, Error::NameClash { .. }), "{g}: {e}");
    }
    // The other way round: the gauge first, then the family that would expose it.
    s.gauge("queue_total", "h", GaugeMode::Max).unwrap();
    assert!(matches!(s.counter("queue", "h"), Err(Error::NameClash { .. })));
    s.gauge("size_count", "h", GaugeMode::Max).unwrap();
    assert!(matches!(
        s.histogram("size", "h", &[1.0]),
        Err(Error::NameClash { .. })
    ));
    // Names that merely look alike are fine.
    s.gauge("jobs_totals", "h", GaugeMode::Max).unwrap();
    s.gauge("latency", "h", GaugeMode::Max).unwrap();
}

/// A counter never wraps around to a small number (a reset to Prometheus): it stops at
/// `u64::MAX`, in the process and in the merge of several processes.
#[test]
fn integer_counters_saturate_instead_of_wrapping() {
    let (d, s) = store();
    let c = s.counter("big", "h").unwrap();
    c.inc_by(u64::MAX - 1);
    c.inc();
    c.inc();
    c.inc_by(u64::MAX);
    assert_eq!(c.get(), u64::MAX);
    // A second writer's file: the sum saturates too.
    let other = Store::builder(d.path()).application("store-test").open().unwrap();
    other.counter("big", "h").unwrap().inc_by(10);
    assert_eq!(s.snapshot().unwrap().counter("big", &[]), Some(u64::MAX));
    assert!(s.scrape().unwrap().contains("big_total 18446744073709551615\n"));
}

#[test]
fn series_limit_sends_new_label_sets_to_one_overflow_series() {
    let (_d, s) = store();
    let fam = s
        .register::<shmetrics_core::Counter>(Opts::new("hits", "Hits").label_names(["path"]).series_limit(5))
        .unwrap();
    for i in 0..1000 {
        fam.labels(&[&format!("/scan/{i}")]).inc();
    }
    assert_eq!(fam.series_count(), 5);
    // Known label sets keep their own series.
    fam.labels(&["/scan/0"]).inc();
    let snap = s.snapshot().unwrap();
    let f = snap.family("hits").unwrap();
    assert_eq!(f.series.len(), 6, "5 series and the overflow series");
    assert_eq!(snap.counter("hits", &[("path", "/scan/0")]), Some(2));
    assert_eq!(snap.counter("hits", &[("path", OVERFLOW_LABEL_VALUE)]), Some(995));
    assert_eq!(snap.stats().overflow, vec![("hits".to_string(), 995)]);
    let text = s.scrape().unwrap();
    assert!(
        text.contains("shmetrics_cardinality_overflow_total{family=\"hits\"} 995\n"),
        "{text}"
    );
    // The file stays small: 1000 distinct values did not become 1000 series.
    let size = std::fs::metadata(s.file_path().unwrap()).unwrap().len();
    assert!(size <= 64 << 10, "file grew to {size} bytes");
}

#[test]
fn default_series_limit_comes_from_the_builder() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::builder(dir.path()).series_limit(3).open().unwrap();
    let f = s.counter_family("x", "x", &["v"]).unwrap();
    assert_eq!(f.series_limit(), 3);
    for v in ["a", "b", "c", "d"] {
        f.labels(&[v]).inc();
    }
    assert_eq!(f.series_count(), 3);
}

#[test]
fn wrong_label_count_is_counted_not_a_panic() {
    let (_d, s) = store();
    let fam = s.counter_family("calls", "Calls", &["a", "b"]).unwrap();
    fam.labels(&["only-one"]).inc();
    fam.labels(&["one", "two", "three"]).inc();
    fam.labels(&["x", "y"]).inc();
    let snap = s.snapshot().unwrap();
    assert_eq!(
        snap.counter(
            "calls",
            &[("a", OVERFLOW_LABEL_VALUE), ("b", OVERFLOW_LABEL_VALUE)]
        ),
        Some(2)
    );
    assert_eq!(snap.counter("calls", &[("a", "x"), ("b", "y")]), Some(1));
    assert_eq!(store_errors(&s, "label_count"), 2);
}

#[test]
fn invalid_values_are_refused_and_counted() {
    let (_d, s) = store();
    let c = s.counter_f64("bytes", "Bytes").unwrap();
    c.inc_by(1.5);
    c.inc_by(-1.0);
    c.inc_by(f64::NAN);
    c.inc_by(f64::INFINITY);
    let h = s.histogram("sizes", "Sizes", &[1.0]).unwrap();
    h.observe(f64::NAN);
    h.observe(0.5);
    assert_eq!(c.get(), 1.5);
    let snap = s.snapshot().unwrap();
    assert_eq!(snap.histogram("sizes", &[]).unwrap().count(), 1);
    assert_eq!(store_errors(&s, "invalid_value"), 4);
}

#[test]
fn gauges_set_inc_dec_in_every_mode() {
    let (_d, s) = store();
    for mode in GaugeMode::ALL {
        let g = s.gauge(&format!("g_{mode}"), "g", mode).unwrap();
        g.set(10.0);
        g.inc();
        g.dec();
        g.dec();
        g.add(0.5);
        g.sub(0.25);
        assert_eq!(g.get(), 9.25, "{mode}");
        let snap = s.snapshot().unwrap();
        let fam = snap.family(&format!("g_{mode}")).unwrap();
        assert_eq!(fam.series.len(), 1);
        assert_eq!(fam.series[0].value, shmetrics_core::Value::Gauge(9.25), "{mode}");
    }
}

#[test]
fn histogram_buckets_are_le_and_per_bucket() {
    let (_d, s) = store();
    let h: shmetrics_core::Family<Histogram> = s.histogram_family("d", "d", &["r"], &[1.0, 2.0]).unwrap();
    let x = h.labels(&["x"]);
    for v in [0.0, 1.0, 1.0000001, 2.0, 3.0, 1e300, -5.0] {
        x.observe(v);
    }
    // Infinities and NaN would make the sum useless for good: refused, counted.
    for v in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN] {
        x.observe(v);
    }
    assert_eq!(store_errors(&s, "invalid_value"), 3);
    let snap = s.snapshot().unwrap();
    let v = snap.histogram("d", &[("r", "x")]).unwrap();
    assert_eq!(v.buckets, vec![3, 2, 2], "le semantics: v <= bound");
    let text = s.scrape().unwrap();
    assert!(text.contains("d_bucket{r=\"x\",le=\"1.0\"} 3\n"), "{text}");
    assert!(text.contains("d_bucket{r=\"x\",le=\"2.0\"} 5\n"), "{text}");
    assert!(text.contains("d_bucket{r=\"x\",le=\"+Inf\"} 7\n"), "{text}");
    assert!(text.contains("d_count{r=\"x\"} 7\n"), "{text}");
}

#[test]
fn missing_directory_is_created_with_owner_only_permissions() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("prometheus").join("ckms");
    let s = Store::open(&dir).unwrap();
    s.counter("c", "c").unwrap().inc();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let file = s.file_path().unwrap();
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn file_mode_is_configurable() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::builder(dir.path().join("grp"))
        .file_mode(0o640)
        .open()
        .unwrap();
    s.counter("c", "c").unwrap().inc();
    let file = s.file_path().unwrap();
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o640
    );
    assert_eq!(
        std::fs::metadata(dir.path().join("grp"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o750
    );
    let e = Store::builder(dir.path()).file_mode(0o400).open().unwrap_err();
    assert!(e.to_string().contains("owner read and write"), "{e}");
    assert!(Store::builder(dir.path()).file_mode(0o755).open().is_err());
}

#[test]
fn unusable_directories_fail_at_open_with_a_clear_error() {
    let base = tempfile::tempdir().unwrap();
    let file = base.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let e = Store::open(&file).unwrap_err();
    assert!(e.to_string().contains("exists but is not a directory"), "{e}");
    let e = Store::open(file.join("sub")).unwrap_err();
    assert!(e.to_string().contains("part of the path is a file"), "{e}");
}

#[test]
fn read_only_directory_fails_at_open() {
    let _serial = serial();
    let base = tempfile::tempdir().unwrap();
    let ro = base.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        // Permission bits do not stop root: use a read-only mount instead.
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=64k,mode=0755", "tmpfs"])
            .arg(&ro)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!(
                "read_only_directory_fails_at_open: skipped (root, and cannot mount a read-only tmpfs)"
            );
            return;
        }
    } else {
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
    }
    let result = Store::open(&ro);
    if root {
        let _ = std::process::Command::new("umount").arg(&ro).status();
    }
    let e = result.unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("read-only") || msg.contains("not writable"), "{msg}");
}

#[test]
fn reader_of_a_missing_directory_is_a_clear_error() {
    let e = shmetrics_core::Reader::new("/nonexistent/shmetrics/dir").unwrap_err();
    assert!(
        e.to_string()
            .ends_with("/nonexistent/shmetrics/dir: does not exist"),
        "{e}"
    );
}

#[test]
fn handles_are_fast_path_after_binding_and_shared_across_threads() {
    let (_d, s) = store();
    let fam = s.counter_family("t", "t", &["k"]).unwrap();
    std::thread::scope(|sc| {
        for t in 0..4 {
            let fam = &fam;
            sc.spawn(move || {
                for i in 0..10_000 {
                    fam.labels(&[&format!("k{}", (i + t) % 50)]).inc();
                }
            });
        }
    });
    let snap = s.snapshot().unwrap();
    let total: u64 = snap
        .family("t")
        .unwrap()
        .series
        .iter()
        .map(|s| match s.value {
            shmetrics_core::Value::Counter(v) => v,
            _ => 0,
        })
        .sum();
    assert_eq!(total, 40_000);
    assert_eq!(fam.series_count(), 50);
}

#[test]
fn two_stores_in_two_directories_are_independent() {
    let (_a, sa) = store();
    let (_b, sb) = store();
    sa.counter("only_a", "a").unwrap().inc();
    sb.counter("only_b", "b").unwrap().inc_by(2);
    let snap_a = sa.snapshot().unwrap();
    let snap_b = sb.snapshot().unwrap();
    assert_eq!(snap_a.counter("only_a", &[]), Some(1));
    assert!(snap_a.family("only_b").is_none());
    assert_eq!(snap_b.counter("only_b", &[]), Some(2));
    assert!(snap_b.family("only_a").is_none());
}

#[test]
fn a_directory_belongs_to_one_application() {
    let dir = tempfile::tempdir().unwrap();
    let ckms = Store::builder(dir.path()).application("ckms").open().unwrap();
    ckms.counter("c", "c").unwrap().inc();
    let e = Store::builder(dir.path())
        .application("delphix")
        .open()
        .unwrap_err();
    assert!(matches!(e, Error::WrongApplication { .. }));
    let msg = e.to_string();
    assert!(msg.contains("\"ckms\"") && msg.contains("\"delphix\""), "{msg}");
    assert!(msg.contains("/dev/shm/prometheus/delphix"), "{msg}");
    // The owner can open it again, from another store in the same process too.
    Store::builder(dir.path()).application("ckms").open().unwrap();
}

#[test]
fn world_writable_or_foreign_directories_are_refused_by_default() {
    let _serial = serial();
    let base = tempfile::tempdir().unwrap();
    let open = base.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let e = Store::open(&open).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("writable by every user (mode 1777)"), "{msg}");
    assert!(msg.contains("allow_shared_directory"), "{msg}");
    Store::builder(&open).allow_shared_directory(true).open().unwrap();

    // Group-writable: a member of the group could plant files too.
    let group = base.path().join("group");
    std::fs::create_dir(&group).unwrap();
    std::fs::set_permissions(&group, std::fs::Permissions::from_mode(0o770)).unwrap();
    let msg = Store::open(&group).unwrap_err().to_string();
    assert!(msg.contains("writable by its group (mode 770)"), "{msg}");
    assert!(msg.contains("allow_group_writable_directory"), "{msg}");
    Store::builder(&group)
        .allow_group_writable_directory(true)
        .open()
        .unwrap();

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let other = base.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::os::unix::fs::chown(&other, Some(65534), None).unwrap();
        let e = Store::open(&other).unwrap_err();
        assert!(e.to_string().contains("belongs to user 65534"), "{e}");
    } else {
        eprintln!("foreign-owner case skipped: needs root to chown");
    }
}

#[test]
fn planted_symlinks_are_not_followed() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, b"precious").unwrap();
    let d = dir.path().join("store");
    std::fs::create_dir(&d).unwrap();
    std::os::unix::fs::symlink(&victim, d.join(".shmetrics.lock")).unwrap();
    let e = Store::open(&d).unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    std::fs::remove_file(d.join(".shmetrics.lock")).unwrap();

    // A symlink planted where the accumulator goes: compaction replaces the link itself.
    std::os::unix::fs::symlink(&victim, d.join("accumulator.shm")).unwrap();
    {
        let s = Store::builder(&d).compact_on_open(false).open().unwrap();
        s.counter("c", "c").unwrap().inc_by(2);
    }
    let s = Store::open(&d).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(
        !std::fs::symlink_metadata(d.join("accumulator.shm"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(s.snapshot().unwrap().counter("c", &[]), Some(2));
}

#[test]
fn scrapes_compact_dead_writers_past_the_threshold() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        Store::builder(dir.path())
            .application("t")
            .compact_on_open(false)
            .compact_threshold(3)
            .open()
            .unwrap()
    };
    for i in 0..5u64 {
        // A store and all its handles dropped: its file is a dead writer's.
        let s = open();
        s.counter_family("jobs", "Jobs", &["q"])
            .unwrap()
            .labels(&["a"])
            .inc_by(i + 1);
    }
    let s = open();
    let first = s.snapshot().unwrap();
    assert_eq!(first.counter("jobs", &[("q", "a")]), Some(15));
    assert_eq!(first.stats().dead_files, 5, "{:?}", first.stats());
    // That scrape found 5 > 3 dead files and folded them.
    let second = s.snapshot().unwrap();
    assert_eq!(second.counter("jobs", &[("q", "a")]), Some(15));
    assert_eq!((second.stats().dead_files, second.stats().accumulators), (0, 1));
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".shm"))
        .collect();
    assert_eq!(names, ["accumulator.shm"]);
    // On demand: nothing left to do.
    let c = s.compact().unwrap();
    assert_eq!((c.folded, c.deleted, c.rewritten), (0, 0, false));
}

#[test]
fn remove_and_clear_in_one_process() {
    let (_d, s) = store();
    let c = s.counter_family("jobs", "Jobs", &["q"]).unwrap();
    c.labels(&["a"]).inc_by(3);
    c.labels(&["b"]).inc_by(4);
    assert!(!c.remove(&["nope"]).unwrap());
    assert!(c.remove(&["x", "y"]).is_err());
    assert!(c.remove(&["a"]).unwrap());
    let snap = s.snapshot().unwrap();
    assert_eq!(snap.counter("jobs", &[("q", "a")]), None);
    assert_eq!(snap.counter("jobs", &[("q", "b")]), Some(4));
    c.clear().unwrap();
    assert!(s.snapshot().unwrap().family("jobs").unwrap().series.is_empty());
    c.labels(&["b"]).inc();
    assert_eq!(s.snapshot().unwrap().counter("jobs", &[("q", "b")]), Some(1));
    // The text exposition agrees.
    let text = s.scrape().unwrap();
    assert!(
        text.contains("jobs_total{q=\"b\"} 1\n") && !text.contains("q=\"a\""),
        "{text}"
    );
}
