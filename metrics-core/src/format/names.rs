//! Validation of metric names, label names and buckets, and escaping of help text.
//!
//! The prometheus-client encoder writes names as given and does not escape help text, so
//! both are checked here: at declaration (a clear error for the caller) and again when a
//! file is read (a file that breaks these rules is corrupt).

/// Prometheus' default histogram buckets, in seconds (`DefBuckets` of the Go client).
pub const DEFAULT_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Checks a metric name against `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub(crate) fn check_metric_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > crate::format::MAX_NAME_BYTES {
        return Err(format!("is longer than {} bytes", crate::format::MAX_NAME_BYTES));
    }
    for (i, c) in name.chars().enumerate() {
        let ok = c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit());
        if !ok {
            return Err(format!(
                "has {c:?} at position {i}; metric names match [a-zA-Z_:][a-zA-Z0-9_:]*"
            ));
        }
    }
    Ok(())
}

/// Checks a label name against `[a-zA-Z_][a-zA-Z0-9_]*`, without the reserved `__` prefix.
pub(crate) fn check_label_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > crate::format::MAX_NAME_BYTES {
        return Err(format!("is longer than {} bytes", crate::format::MAX_NAME_BYTES));
    }
    if name.starts_with("__") {
        return Err("starts with `__`, which Prometheus reserves for internal labels".into());
    }
    for (i, c) in name.chars().enumerate() {
        let ok = c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit());
        if !ok {
            return Err(format!(
                "has {c:?} at position {i}; label names match [a-zA-Z_][a-zA-Z0-9_]*"
            ));
        }
    }
    Ok(())
}

/// Checks user-supplied bucket bounds and returns them with +Inf appended.
pub(crate) fn normalize_buckets(bounds: &[f64]) -> Result<Vec<f64>, String> {
    let mut out: Vec<f64> = bounds.to_vec();
    if out.last() == Some(&f64::INFINITY) {
        out.pop();
    }
    if out.is_empty() {
        return Err("needs at least one finite upper bound (+Inf is added for you)".into());
    }
    for (i, b) in out.iter().enumerate() {
        if !b.is_finite() {
            return Err(format!("bound {i} is {b}; bounds must be finite numbers"));
        }
        if i > 0 && *b <= out[i - 1] {
            return Err(format!(
                "bound {i} ({b}) is not greater than bound {} ({}); bounds must increase strictly",
                i - 1,
                out[i - 1]
            ));
        }
    }
    if out.len() + 1 > crate::format::MAX_BUCKETS {
        return Err(format!("has more than {} bounds", crate::format::MAX_BUCKETS - 1));
    }
    out.push(f64::INFINITY);
    Ok(out)
}

/// Checks bounds read from a file: finite, strictly increasing, +Inf last.
pub(crate) fn check_stored_buckets(b: &[f64]) -> Result<(), String> {
    match b.split_last() {
        Some((last, rest)) if *last == f64::INFINITY => {
            if rest.iter().any(|x| !x.is_finite()) || rest.windows(2).any(|w| w[0] >= w[1]) {
                Err("bounds not finite and strictly increasing".into())
            } else {
                Ok(())
            }
        }
        _ => Err("last bound is not +Inf".into()),
    }
}

/// Escapes help text for the OpenMetrics `# HELP` line (`\\`, `\n`, `\"`).
pub(crate) fn escape_help(help: &str) -> String {
    let mut out = String::with_capacity(help.len());
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

/// Writes `{name="value",...}` (nothing for no label), values escaped as both text formats
/// escape them (`\\`, `\"`, `\n`).
pub(crate) fn write_labels<'a>(out: &mut String, pairs: impl Iterator<Item = (&'a str, &'a str)>) {
    let mut first = true;
    for (n, v) in pairs {
        out.push(if first { '{' } else { ',' });
        first = false;
        out.push_str(n);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    if !first {
        out.push('}');
    }
}

/// `repr(v)` of Python: the shortest digits that read back as `v`, in fixed notation
/// (`0.001`, `1000000.0`, always with a fraction) for decimal exponents from -4 to 16,
/// else in exponent notation with a sign and at least two exponent digits (`1e-05`,
/// `1.5e+20`).
pub(crate) fn py_repr(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.into();
    }
    if v == 0.0 {
        return if v.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // Rust's `{:e}` gives the same shortest round-trip digits: `d.ddde±x`.
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let exp: i32 = exp.parse().unwrap_or(0);
    let n = digits.len() as i32;
    // The decimal point sits `decpt` digits after the first one's start.
    let decpt = exp + 1;
    let body = if decpt <= -4 || decpt > 16 {
        let mut m = digits[..1].to_string();
        if n > 1 {
            m.push('.');
            m.push_str(&digits[1..]);
        }
        let e = decpt - 1;
        format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
    } else if decpt <= 0 {
        format!("0.{}{digits}", "0".repeat((-decpt) as usize))
    } else if decpt >= n {
        format!("{digits}{}.0", "0".repeat((decpt - n) as usize))
    } else {
        let (a, b) = digits.split_at(decpt as usize);
        format!("{a}.{b}")
    };
    format!("{sign}{body}")
}

/// A float as Python's `prometheus_client` writes an `le` bound (and every value) in its
/// exposition (`floatToGoString`): `+Inf`, `-Inf`, `NaN`; Python's `repr`, except that a
/// positive number with more than six digits before its point is written in exponent form
/// (`1e+06`, `1.234567e+06`; the rule of prometheus_client 0.26). This crate writes histogram bounds the same way, for its own
/// families too, so a series keeps its `le` values when it moves between Python's collector
/// and shmetrics.
pub(crate) fn format_bound(v: f64) -> String {
    if v == f64::INFINITY {
        return "+Inf".into();
    }
    if v == f64::NEG_INFINITY {
        return "-Inf".into();
    }
    if v.is_nan() {
        return "NaN".into();
    }
    let s = py_repr(v);
    match s.find('.') {
        Some(dot) if v > 0.0 && dot > 6 => {
            let joined = format!("{}.{}{}", &s[..1], &s[1..dot], &s[dot + 1..]);
            let mantissa = joined.trim_end_matches(['0', '.']);
            format!("{mantissa}e+{:02}", dot - 1)
        }
        _ => s,
    }
}

/// `n` buckets starting at `start`, each `factor` times the previous one.
///
/// ```
/// assert_eq!(shmetrics_core::exponential_buckets(0.01, 10.0, 3), vec![0.01, 0.1, 1.0]);
/// ```
pub fn exponential_buckets(start: f64, factor: f64, n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n);
    let mut v = start;
    for _ in 0..n {
        out.push(v);
        v *= factor;
    }
    out
}

/// `n` buckets starting at `start`, each `width` above the previous one.
///
/// ```
/// assert_eq!(shmetrics_core::linear_buckets(1.0, 2.0, 3), vec![1.0, 3.0, 5.0]);
/// ```
pub fn linear_buckets(start: f64, width: f64, n: usize) -> Vec<f64> {
    (0..n).map(|i| start + width * i as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names() {
        for ok in ["a", "_a", "a:b", "http_requests", "A9_:"] {
            assert!(check_metric_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "9a", "a-b", "a b", "é", "a.b"] {
            assert!(check_metric_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_names() {
        for ok in ["a", "_a", "method", "a9"] {
            assert!(check_label_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "9a", "a:b", "__name__", "a-b", "ü"] {
            assert!(check_label_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn buckets() {
        assert_eq!(
            normalize_buckets(&[1.0, 2.0]).unwrap(),
            vec![1.0, 2.0, f64::INFINITY]
        );
        assert_eq!(
            normalize_buckets(&[1.0, f64::INFINITY]).unwrap(),
            vec![1.0, f64::INFINITY]
        );
        assert!(normalize_buckets(&[]).is_err());
        assert!(normalize_buckets(&[2.0, 1.0]).is_err());
        assert!(normalize_buckets(&[1.0, 1.0]).is_err());
        assert!(normalize_buckets(&[f64::NAN]).is_err());
        assert!(check_stored_buckets(&[1.0, f64::INFINITY]).is_ok());
        assert!(check_stored_buckets(&[1.0]).is_err());
        assert!(check_stored_buckets(&[f64::NAN, f64::INFINITY]).is_err());
    }

    #[test]
    fn bounds_are_written_as_python_writes_them() {
        // Python 3.11: [floatToGoString(b) for b in ...]
        let cases: [(f64, &str); 22] = [
            (1e-9, "1e-09"),
            (1e-5, "1e-05"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e6, "1e+06"),
            (1e20, "1e+20"),
            (0.005, "0.005"),
            (0.0001, "0.0001"),
            (1.0, "1.0"),
            (2.5, "2.5"),
            (10.0, "10.0"),
            (100000.0, "100000.0"),
            (999999.0, "999999.0"),
            (1234567.0, "1.234567e+06"),
            (12345678901.0, "1.2345678901e+10"),
            (1e15, "1e+15"),
            (1e16, "1e+16"),
            (1.5e300, "1.5e+300"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (-1e6, "-1000000.0"),
            (-0.25, "-0.25"),
            (f64::INFINITY, "+Inf"),
        ];
        for (v, want) in cases {
            assert_eq!(format_bound(v), want, "{v:e}");
        }
        assert_eq!(format_bound(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_bound(f64::NAN), "NaN");
        assert_eq!(py_repr(0.0), "0.0");
        assert_eq!(py_repr(123.456), "123.456");
    }

    #[test]
    fn help_escaping() {
        assert_eq!(escape_help("a\\b\n\"c\""), "a\\\\b\\n\\\"c\\\"");
    }
}
