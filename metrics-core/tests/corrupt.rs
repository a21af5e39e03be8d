//! Untrusted files: truncated, bit-flipped, random and adversarial files next to good ones
//! never panic the reader, never hide the good files, and are never modified or deleted.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use proptest::prelude::*;
use shmetrics_core::{GaugeMode, Opts, Reader, Snapshot, Store, Value};

/// Bytes of a well-formed, dead file holding the "good" families with known values.
fn good_file() -> &'static [u8] {
    static GOOD: OnceLock<Vec<u8>> = OnceLock::new();
    GOOD.get_or_init(|| {
        template(|store| {
            let c = store.counter_family("good_requests", "Good", &["route"]).unwrap();
            c.labels(&["/a"]).inc_by(7);
            c.labels(&["/b"]).inc_by(11);
            let h = store.histogram("good_seconds", "Good", &[0.5, 1.0]).unwrap();
            h.observe(0.25);
            h.observe(2.0);
        })
    })
}

/// Bytes of a well-formed file with every record kind, to be damaged.
fn victim_file() -> &'static [u8] {
    static VICTIM: OnceLock<Vec<u8>> = OnceLock::new();
    VICTIM.get_or_init(|| {
        template(|store| {
            let c = store
                .counter_family("victim_requests", "Victim \"help\"", &["route", "code"])
                .unwrap();
            for i in 0..20 {
                c.labels(&[&format!("/route/{i}"), "200"]).inc_by(i);
            }
            let g = store
                .gauge_family("victim_level", "Victim", &["k"], GaugeMode::LiveMostRecent)
                .unwrap();
            g.labels(&["x"]).set(3.5);
            let a = store
                .gauge_family("victim_all", "Victim", &["k"], GaugeMode::All)
                .unwrap();
            a.labels(&["y"]).set(-1.0);
            let h = store
                .register::<shmetrics_core::Histogram>(
                    Opts::new("victim_seconds", "Victim")
                        .label_names(["route"])
                        .buckets(vec![0.1, 1.0, 10.0]),
                )
                .unwrap();
            h.labels(&["/x"]).observe(0.5);
            store.counter_f64("victim_bytes", "Victim").unwrap().inc_by(1.5);
        })
    })
}

fn template(fill: impl FnOnce(&Store)) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path;
    {
        let store = Store::builder(dir.path())
            .application("corrupt-test")
            .open()
            .unwrap();
        fill(&store);
        path = store.file_path().unwrap();
    }
    // Every handle is gone: the file is complete and dead.
    let bytes = std::fs::read(&path).unwrap();
    // Only the used part matters; the rest is zero reservation.
    let used = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    bytes[..used].to_vec()
}

fn check_good(snap: &Snapshot) -> Result<(), TestCaseError> {
    prop_assert_eq!(snap.counter("good_requests", &[("route", "/a")]), Some(7));
    prop_assert_eq!(snap.counter("good_requests", &[("route", "/b")]), Some(11));
    let h = snap.histogram("good_seconds", &[]);
    prop_assert!(h.is_some());
    let h = h.unwrap();
    prop_assert_eq!(&h.buckets, &vec![1, 0, 1]);
    prop_assert_eq!(h.sum, 2.25);
    Ok(())
}

/// Scrapes a directory holding the good file and `candidate`; checks the invariants.
fn scrape_with(candidate: &[u8]) -> Result<(Snapshot, String), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("w-1-00000000000000aa.shm"), good_file()).unwrap();
    let bad: PathBuf = dir.path().join("w-2-00000000000000bb.shm");
    std::fs::write(&bad, candidate).unwrap();
    let mut reader = Reader::new(dir.path()).unwrap();
    let snap = reader.snapshot().unwrap();
    check_good(&snap)?;
    // A second scrape (cached metadata, incremental path) agrees.
    let again = reader.snapshot().unwrap();
    check_good(&again)?;
    prop_assert_eq!(snap.stats().corrupt_files, again.stats().corrupt_files);
    // Whatever was accepted encodes.
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(snap.clone()));
    let text = shmetrics_core::encode(&registry).unwrap();
    // Never modified, never deleted.
    prop_assert_eq!(std::fs::read(&bad).unwrap(), candidate.to_vec());
    Ok((snap, text))
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(1500))]

    #[test]
    fn truncated_files(cut in 0usize..4096) {
        let v = victim_file();
        let cut = cut % (v.len() + 1);
        let (snap, _) = scrape_with(&v[..cut])?;
        if cut < v.len() {
            // A cut inside the used part always breaks a record or the header.
            prop_assert_eq!(snap.stats().corrupt_files, 1);
        }
    }

    #[test]
    fn bit_flipped_files(flips in proptest::collection::vec((0usize..1 << 20, 0u8..8), 1..6)) {
        let mut v = victim_file().to_vec();
        for (pos, bit) in flips {
            let p = pos % v.len();
            v[p] ^= 1 << bit;
        }
        scrape_with(&v)?;
    }

    #[test]
    fn random_files(bytes in proptest::collection::vec(any::<u8>(), 0..2048), with_header in any::<bool>()) {
        let mut v = bytes;
        if with_header && v.len() >= 24 {
            // A plausible header makes the reader go on to the records.
            v[..8].copy_from_slice(b"SHMETRIC");
            v[8..16].copy_from_slice(&(1u64 | (128u64 << 32)).to_le_bytes());
            let used = (v.len() as u64) & !7;
            v[16..24].copy_from_slice(&used.to_le_bytes());
        }
        let (snap, _) = scrape_with(&v)?;
        prop_assert!(snap.stats().corrupt_files <= 1);
    }

    /// Valid header, then records with valid kinds and lengths but random bodies.
    #[test]
    fn adversarial_records(records in proptest::collection::vec(
        (1u32..6, proptest::collection::vec(any::<u64>(), 0..12)), 1..12)) {
        let mut words: Vec<u64> = vec![0; 16];
        words[0] = u64::from_le_bytes(*b"SHMETRIC");
        words[1] = 1 | (128 << 32);
        for (kind, body) in records {
            let len = (body.len() as u64 + 1) * 8;
            words.push(u64::from(kind) | (len << 32));
            words.extend(body);
        }
        words[2] = (words.len() * 8) as u64;
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        scrape_with(&bytes)?;
    }
}

/// Damage at known places is detected as corruption, with a reason.
#[test]
fn known_damage_is_reported_with_a_reason() {
    let v = victim_file();
    let used = v.len();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "shorter than"),
        ("short header", v[..100].to_vec(), "shorter than"),
        ("magic", patch(v, 0, b"NOTMETRC"), "wrong magic"),
        ("version", patch(v, 8, &(128u64 << 32).to_le_bytes()), "version 0"),
        (
            "used past end",
            patch(v, 16, &((used as u64) + 8).to_le_bytes()),
            "used length",
        ),
        (
            "used unaligned",
            patch(v, 16, &((used as u64) - 3).to_le_bytes()),
            "used length",
        ),
        (
            "record length",
            patch(v, 128 + 4, &0u32.to_le_bytes()),
            "bad length",
        ),
        (
            "unknown kind",
            patch(v, 128, &77u32.to_le_bytes()),
            "unknown record kind 77",
        ),
    ];
    for (what, bytes, reason) in cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w-2-00000000000000bb.shm"), &bytes).unwrap();
        let snap = Reader::new(dir.path()).unwrap().snapshot().unwrap();
        assert_eq!(snap.stats().corrupt_files, 1, "{what}");
        let (_, why) = &snap.stats().corrupt[0];
        assert!(
            why.contains(reason),
            "{what}: reason {why:?} should mention {reason:?}"
        );
    }
}

fn patch(v: &[u8], at: usize, with: &[u8]) -> Vec<u8> {
    let mut out = v.to_vec();
    out[at..at + with.len()].copy_from_slice(with);
    out
}

/// Files the reader accepts after damage still produce an exposition that a strict
/// OpenMetrics parser accepts (names and strings are validated on read).
#[test]
fn accepted_damaged_files_still_encode_valid_openmetrics() {
    use proptest::test_runner::{RngAlgorithm, TestRng};
    use rand::Rng as _;
    let mut rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
    let mut texts = Vec::new();
    for _ in 0..300 {
        let mut v = victim_file().to_vec();
        for _ in 0..rng.random_range(1..4) {
            let p = rng.random_range(0..v.len());
            v[p] ^= 1 << rng.random_range(0..8);
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w-2-00000000000000bb.shm"), &v).unwrap();
        let snap = Reader::new(dir.path()).unwrap().snapshot().unwrap();
        if snap.stats().corrupt_files == 0 {
            let mut registry = prometheus_client::registry::Registry::default();
            registry.register_collector(Box::new(snap));
            texts.push(shmetrics_core::encode(&registry).unwrap());
        }
    }
    assert!(
        texts.len() > 50,
        "only {} damaged files were accepted",
        texts.len()
    );
    strict_parse_all(&texts);
}

fn strict_parse_all(texts: &[String]) {
    use std::io::Write;
    shmetrics_testing::ensure_python_prometheus_client();
    const SCRIPT: &str = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
docs = sys.stdin.read().split("\0")
for i, d in enumerate(docs):
    if d:
        try:
            list(text_string_to_metric_families(d))
        except Exception as e:
            print(f"document {i}: {e}\n{d}")
            sys.exit(1)
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with prometheus-client is required");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(texts.join("\0").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

/// Families that clash in the exposition, declared by processes that are gone (an earlier
/// deployment) or by Python workers: one of each clash is left out, counted, and the
/// exposition parses.
#[test]
fn clashing_families_of_dead_writers_are_left_out_and_the_exposition_parses() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        Store::builder(dir.path())
            .application("clash-test")
            .open()
            .unwrap()
    };
    {
        let old = open();
        old.counter("jobs", "Jobs").unwrap().inc_by(3);
        old.histogram("lat", "Latency", &[1.0]).unwrap().observe(0.5);
    }
    let new = open();
    new.gauge("jobs_total", "Jobs", GaugeMode::Max).unwrap().set(7.0);
    new.gauge("lat_count", "Count", GaugeMode::Max).unwrap().set(1.0);
    let snap = new.snapshot().unwrap();
    assert_eq!(snap.counter("jobs", &[]), Some(3));
    assert!(snap.family("jobs_total").is_none() && snap.family("lat_count").is_none());
    assert_eq!(snap.stats().conflicts, 2);
    let text = snap.encode(Default::default()).unwrap();
    strict_parse_all(&[text]);
}

/// Requirement: a stranger's file is reported, not merged, not deleted.
#[test]
fn strangers_files_are_reported_not_merged_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::builder(dir.path())
        .application("corrupt-test")
        .open()
        .unwrap();
    store.counter("served", "Served").unwrap().inc_by(3);
    let stranger_shm = dir.path().join("w-99-ffffffffffffffff.shm");
    let stranger_txt = dir.path().join("notes.txt");
    let stranger_dir = dir.path().join("subdir");
    std::fs::write(&stranger_shm, b"# my own notes, not metrics\nhello=1\n").unwrap();
    std::fs::write(&stranger_txt, b"hello").unwrap();
    std::fs::create_dir(&stranger_dir).unwrap();
    for _ in 0..2 {
        let snap = store.snapshot().unwrap();
        assert_eq!(snap.counter("served", &[]), Some(3));
        assert_eq!(snap.stats().corrupt_files, 1);
        assert_eq!(snap.stats().foreign_files, 2);
        assert!(snap.stats().corrupt[0].1.contains("wrong magic"));
        let text = store.scrape().unwrap();
        assert!(text.contains("shmetrics_corrupt_files 1.0\n"), "{text}");
        assert!(text.contains("shmetrics_foreign_files 2.0\n"), "{text}");
        assert!(!text.contains("hello"));
    }
    assert!(exists(&stranger_shm) && exists(&stranger_txt) && exists(&stranger_dir));
    assert_eq!(
        std::fs::read(&stranger_shm).unwrap(),
        b"# my own notes, not metrics\nhello=1\n"
    );
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

#[test]
fn a_symlink_in_the_directory_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    // A valid store file outside, linked in under a store-like name.
    let target = elsewhere.path().join("w-5-00000000000000cc.shm");
    std::fs::write(&target, good_file()).unwrap();
    std::os::unix::fs::symlink(&target, dir.path().join("w-5-00000000000000cc.shm")).unwrap();
    let snap = Reader::new(dir.path()).unwrap().snapshot().unwrap();
    assert_eq!(snap.stats().corrupt_files, 1);
    assert!(snap.family("good_requests").is_none(), "followed a symlink");
    assert!(matches!(
        snap.get("good_requests", &[("route", "/a")]),
        None | Some(Value::Counter(0))
    ));
}
