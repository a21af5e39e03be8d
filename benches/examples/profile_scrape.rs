//! Scrapes a metrics directory N times with one warm reader (as a store's `/metrics`
//! does), for profilers: `valgrind --tool=callgrind target/release/examples/profile_scrape DIR [N]`.
//! A Python directory like the `python` bench's: `python3 metrics-core/tests/python_multiprocess.py
//! generate DIR 1000 100`.
use prometheus_client::registry::Registry;
use shmetrics_core::Reader;

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: profile_scrape DIR [N]");
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let mut reader = Reader::new(&dir).expect("a readable metrics directory");
    let mut bytes = 0;
    for _ in 0..n {
        bytes = reader
            .snapshot()
            .unwrap()
            .encode(Registry::default())
            .unwrap()
            .len();
    }
    eprintln!("{n} scrapes of {bytes} bytes");
}
