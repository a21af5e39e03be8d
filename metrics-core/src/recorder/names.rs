//! Names of the `metrics` facade made valid for Prometheus, as metrics-exporter-prometheus
//! makes them: every character a name may not hold becomes `_`, and a described unit is
//! appended (before a counter's `_total`) as its recommended naming does.

use metrics::Unit;

/// `name` with every character Prometheus refuses in a metric name replaced by `_` (the
/// first: `[a-zA-Z_:]`, the others: `[a-zA-Z0-9_:]`).
pub(crate) fn sanitize_metric_name(name: &str) -> String {
    sanitize(name, |c| c == ':')
}

/// `key` with every character Prometheus refuses in a label name replaced by `_` (the
/// first: `[a-zA-Z_]`, the others: `[a-zA-Z0-9_]`).
pub(crate) fn sanitize_label_name(key: &str) -> String {
    sanitize(key, |_| false)
}

fn sanitize(s: &str, extra: impl Fn(char) -> bool) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            let ok = c.is_ascii_alphabetic() || c == '_' || extra(c) || (i > 0 && c.is_ascii_digit());
            if ok { c } else { '_' }
        })
        .collect()
}

/// `name` with the suffix of `unit` (`_bytes`, `_seconds`, `_ratio` for percent, nothing
/// for a count) unless it already has it; for a counter named `..._total`, inserted before
/// `_total`.
pub(crate) fn with_unit(name: &str, unit: Option<Unit>) -> String {
    let suffix = match unit {
        None | Some(Unit::Count) => return name.to_string(),
        Some(Unit::Percent) => "ratio",
        Some(u) => u.as_str(),
    };
    let (base, total) = match name.strip_suffix("_total") {
        Some(base) => (base, "_total"),
        None => (name, ""),
    };
    if base.ends_with(suffix) {
        return name.to_string();
    }
    format!("{base}_{suffix}{total}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_metrics_exporter_prometheus_makes_them() {
        assert_eq!(
            sanitize_metric_name("http.server.requests"),
            "http_server_requests"
        );
        assert_eq!(sanitize_metric_name("2xx:total"), "_xx:total");
        assert_eq!(sanitize_label_name("user-agent"), "user_agent");
        assert_eq!(sanitize_label_name("a:b"), "a_b");
        assert_eq!(with_unit("payload", Some(Unit::Bytes)), "payload_bytes");
        assert_eq!(with_unit("payload_bytes", Some(Unit::Bytes)), "payload_bytes");
        assert_eq!(with_unit("sent_total", Some(Unit::Bytes)), "sent_bytes_total");
        assert_eq!(
            with_unit("sent_bytes_total", Some(Unit::Bytes)),
            "sent_bytes_total"
        );
        assert_eq!(with_unit("jobs", Some(Unit::Count)), "jobs");
        assert_eq!(with_unit("load", Some(Unit::Percent)), "load_ratio");
        assert_eq!(with_unit("latency", Some(Unit::Seconds)), "latency_seconds");
    }
}
