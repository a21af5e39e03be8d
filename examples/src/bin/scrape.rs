//! Prints the merged exposition of a metrics directory: shmetrics files, Python
//! `prometheus_client` multiprocess files (`*.db`), or both. Reads only; for debugging and
//! for scripts.
//!
//! ```sh
//! cargo run --release -p shmetrics-examples --bin scrape -- /dev/shm/prometheus/my-api
//! cargo run --release -p shmetrics-examples --bin scrape -- --without-self-metrics "$PROMETHEUS_MULTIPROC_DIR"
//! cargo run --release -p shmetrics-examples --bin scrape -- --format text /dev/shm/prometheus/my-api | promtool check metrics
//! ```
//!
//! `--format`: `openmetrics` (the default), `text` (Prometheus 0.0.4) or `protobuf`
//! (length-delimited `io.prometheus.client.MetricFamily` messages, binary).
//!
//! Exit codes: 0 with the exposition on stdout; 2 for a usage error or a directory that
//! cannot be read; 1 if the exposition cannot be written. Skipped files (corrupt, foreign)
//! are logged on stderr and counted in the `shmetrics_*` self-metrics.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use prometheus_client::registry::Registry;
use shmetrics_core::{Format, Reader};

const USAGE: &str = "usage: scrape [--without-self-metrics] [--format openmetrics|text|protobuf] [DIR]\n\
    Prints the merged exposition of DIR (default: $PROMETHEUS_MULTIPROC_DIR), in OpenMetrics\n\
    text unless --format says otherwise (text: Prometheus 0.0.4; protobuf: binary).";

fn main() -> ExitCode {
    shmetrics_examples::init_logging();
    let mut self_metrics = true;
    let mut dir: Option<PathBuf> = None;
    let mut format = Format::OpenMetrics;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("-h" | "--help") => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            Some("--without-self-metrics") => self_metrics = false,
            Some("--format") => {
                let value = args.next().and_then(|v| v.into_string().ok()).unwrap_or_default();
                match value.parse::<Format>() {
                    Ok(f) => format = f,
                    Err(e) => {
                        eprintln!("scrape: --format: {e}\n{USAGE}");
                        return ExitCode::from(2);
                    }
                }
            }
            Some(a) if a.starts_with('-') => {
                eprintln!("scrape: unknown option {a}\n{USAGE}");
                return ExitCode::from(2);
            }
            _ if dir.is_some() => {
                eprintln!("scrape: one directory only\n{USAGE}");
                return ExitCode::from(2);
            }
            _ => dir = Some(arg.into()),
        }
    }
    let Some(dir) = dir.or_else(|| std::env::var_os(shmetrics_core::ENV_DIR).map(PathBuf::from)) else {
        eprintln!(
            "scrape: no directory given and {} is not set\n{USAGE}",
            shmetrics_core::ENV_DIR
        );
        return ExitCode::from(2);
    };
    let snapshot = match Reader::new(&dir).and_then(|mut r| r.snapshot()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("scrape: {e}");
            return ExitCode::from(2);
        }
    };
    let snapshot = if self_metrics {
        snapshot
    } else {
        snapshot.without_self_metrics()
    };
    let body = match snapshot.encode_as(format, Registry::default()) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("scrape: {e}");
            return ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(&body).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scrape: cannot write the exposition: {e}");
            ExitCode::from(1)
        }
    }
}
