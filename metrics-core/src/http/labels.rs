//! The label values of request metrics: methods, statuses, and the shared values of
//! unmatched routes, other methods and dropped requests.

use std::sync::LazyLock;

/// `path` label value of requests that no route matched.
pub const UNMATCHED: &str = "unmatched";
/// Where the scrape endpoint is served by default; request metrics leave it out.
pub const METRICS_PATH: &str = "/metrics";
/// `method` label value of methods outside the standard set.
pub const OTHER_METHOD: &str = "OTHER";
/// Status recorded for a request whose response never completed its head (the client went
/// away and the server dropped the request): 499, as nginx logs it.
pub const DROPPED_STATUS: u16 = 499;
/// Most constant labels per layer.
pub const MAX_CONST_LABELS: usize = 16;

/// `method` label values: the standard methods (RFC 9110 and PATCH), then `OTHER`.
pub(super) const METHODS: [&str; 10] = [
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "PATCH",
    OTHER_METHOD,
];

pub(super) fn method_index(method: &str) -> u8 {
    METHODS[..9].iter().position(|m| *m == method).unwrap_or(9) as u8
}

/// The `method` label of a request method: itself if standard (RFC 9110 and PATCH),
/// [`OTHER_METHOD`] otherwise.
pub fn method_label(method: &str) -> &'static str {
    METHODS[usize::from(method_index(method))]
}

static CODES: LazyLock<Box<[Box<str>]>> = LazyLock::new(|| (0..1000).map(|c| c.to_string().into()).collect());
const CLASSES: [&str; 10] = [
    "0xx", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "7xx", "8xx", "9xx",
];

/// The `status` label of a status code: `"404"`, or its class `"4xx"`.
pub fn status_label(code: u16, class: bool) -> &'static str {
    let code = usize::from(code.min(999));
    if class { CLASSES[code / 100] } else { &CODES[code] }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("get"), OTHER_METHOD);
        assert_eq!(method_label("PROPFIND"), OTHER_METHOD);
        assert_eq!(status_label(404, false), "404");
        assert_eq!(status_label(404, true), "4xx");
        assert_eq!(status_label(0, false), "0");
        assert_eq!(status_label(65535, false), "999");
    }
}
