//! Writes a metrics directory for the profilers: `gen_dir DIR W S` leaves W dead writer
//! files of S labelled counter series each (the same series in every file, as the workers
//! of one service write them), not compacted. `profile_scrape DIR` then scrapes it.
fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: gen_dir DIR W S");
    let writers: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(64);
    let series: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    for w in 0..writers {
        let store = shmetrics_benches::builder(std::path::Path::new(&dir))
            .compact_on_open(false)
            .open()
            .unwrap();
        let fam = store
            .counter_family("http_requests", "Requests", &["method", "path", "status"])
            .unwrap();
        for i in 0..series {
            fam.labels(&["GET", &format!("/route/{i}"), "200"])
                .inc_by(w as u64 + 1);
        }
    }
    eprintln!("{writers} files of {series} series in {dir}");
}
