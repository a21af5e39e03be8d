//! Content negotiation: the [`Format`] a scrape's `Accept` header asks for.
//!
//! Each offered format takes the quality (`q`) of the most specific media range of the
//! header that matches it (a range with a parameter the format does not have, such as
//! `text/plain;version=1.0.0`, does not match); the format with the highest quality above
//! zero wins, ties going to OpenMetrics, then the text format, then protobuf. No header,
//! an empty one, one this parser cannot read, or one that accepts none of the formats gets
//! OpenMetrics: like Prometheus' own client libraries, the endpoint never answers 406.
//!
//! | `Accept` | answer |
//! |---|---|
//! | none, `*/*` | OpenMetrics |
//! | Prometheus 2.x (`application/openmetrics-text;version=1.0.0,...,*/*;q=0.1`) | OpenMetrics |
//! | Prometheus with native histograms (`application/vnd.google.protobuf;...,...`) | protobuf |
//! | `text/plain;version=0.0.4` (alone, or vmagent's `;q=1,*/*;q=0.1`) | text 0.0.4 |
//! | `application/json` | OpenMetrics (the default) |

use crate::read::encode::Format;

/// The format to answer a request with this `Accept` header value in.
///
/// ```
/// use shmetrics_core::{Format, http::negotiate};
/// assert_eq!(negotiate(None), Format::OpenMetrics);
/// assert_eq!(negotiate(Some(b"text/plain;version=0.0.4;q=1,*/*;q=0.1")), Format::PrometheusText);
/// ```
pub fn negotiate(accept: Option<&[u8]>) -> Format {
    let Some(header) = accept.and_then(|a| std::str::from_utf8(a).ok()) else {
        return Format::OpenMetrics;
    };
    let ranges: Vec<Range<'_>> = split_outside_quotes(header, ',')
        .filter_map(Range::parse)
        .collect();
    let mut best: Option<(Format, f32)> = None;
    for offer in Format::ALL.into_iter().filter(|f| f.is_available()) {
        let q = ranges
            .iter()
            .filter_map(|r| r.specificity(offer).map(|s| (s, r.q)))
            .fold(None, |acc: Option<(u8, f32)>, (s, q)| match acc {
                Some((bs, bq)) if bs > s || (bs == s && bq >= q) => Some((bs, bq)),
                _ => Some((s, q)),
            })
            .map_or(0.0, |(_, q)| q);
        if q > 0.0 && best.is_none_or(|(_, bq)| q > bq) {
            best = Some((offer, q));
        }
    }
    best.map_or(Format::OpenMetrics, |(f, _)| f)
}

/// One media range of an `Accept` header.
struct Range<'a> {
    kind: &'a str,
    subtype: &'a str,
    params: Vec<(&'a str, &'a str)>,
    q: f32,
}

impl<'a> Range<'a> {
    fn parse(element: &'a str) -> Option<Self> {
        let mut parts = split_outside_quotes(element, ';');
        let (kind, subtype) = parts.next()?.trim().split_once('/')?;
        let (kind, subtype) = (kind.trim(), subtype.trim());
        if kind.is_empty() || subtype.is_empty() {
            return None;
        }
        let mut params = Vec::new();
        let mut q = 1.0;
        for p in parts {
            let Some((name, value)) = p.split_once('=') else {
                continue;
            };
            let (name, value) = (name.trim(), value.trim().trim_matches('"'));
            if name.eq_ignore_ascii_case("q") {
                q = value.parse::<f32>().ok().filter(|q| (0.0..=1.0).contains(q))?;
            } else {
                params.push((name, value));
            }
        }
        Some(Range {
            kind,
            subtype,
            params,
            q,
        })
    }

    /// How specifically this range names `offer` (higher is more specific), or `None` if
    /// it does not match it.
    fn specificity(&self, offer: Format) -> Option<u8> {
        let (kind, subtype, known): (&str, &str, &[(&str, &[&str])]) = match offer {
            Format::OpenMetrics => (
                "application",
                "openmetrics-text",
                &[("version", &["1.0.0", "0.0.1"]), ("charset", &["utf-8"])],
            ),
            Format::PrometheusText => (
                "text",
                "plain",
                &[("version", &["0.0.4"]), ("charset", &["utf-8"])],
            ),
            Format::Protobuf => (
                "application",
                "vnd.google.protobuf",
                &[
                    ("proto", &["io.prometheus.client.MetricFamily"]),
                    ("encoding", &["delimited"]),
                ],
            ),
        };
        if self.kind == "*" && self.subtype == "*" {
            return Some(0);
        }
        if !self.kind.eq_ignore_ascii_case(kind) {
            return None;
        }
        if self.subtype == "*" {
            return Some(1);
        }
        if !self.subtype.eq_ignore_ascii_case(subtype) {
            return None;
        }
        // Every parameter the range names must be one the format has, with its value.
        for (name, value) in &self.params {
            let (_, allowed) = known.iter().find(|(n, _)| n.eq_ignore_ascii_case(name))?;
            if !allowed.iter().any(|a| a.eq_ignore_ascii_case(value)) {
                return None;
            }
        }
        Some(2 + u8::from(!self.params.is_empty()))
    }
}

/// Splits `s` at `sep`, except inside double-quoted strings.
fn split_outside_quotes(s: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    let mut cuts = Vec::new();
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                cuts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    cuts.push(&s[start..]);
    cuts.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Prometheus 2.42 sends (scrape/scrape.go), without and with
    /// `--enable-feature=native-histograms`.
    pub(crate) const PROMETHEUS: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    pub(crate) const PROMETHEUS_NATIVE: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

    #[test]
    fn the_scrapers_get_their_formats() {
        let om = Format::OpenMetrics;
        let text = if cfg!(feature = "protobuf") {
            Format::PrometheusText
        } else {
            om
        };
        let proto = if cfg!(feature = "protobuf") {
            Format::Protobuf
        } else {
            om
        };
        let table: &[(Option<&str>, Format)] = &[
            (None, om),
            (Some(""), om),
            (Some("*/*"), om),
            (Some(PROMETHEUS), om),
            (Some(PROMETHEUS_NATIVE), proto),
            (Some("text/plain;version=0.0.4"), text),
            (Some("text/plain; version=0.0.4; charset=utf-8"), text),
            (Some("text/plain;version=0.0.4;q=1,*/*;q=0.1"), text),
            (Some("text/plain"), text),
            (Some("text/*"), text),
            (
                Some(
                    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited",
                ),
                proto,
            ),
            (Some("application/json"), om),
            (Some("application/json, */*;q=0"), om),
            (Some("text/plain;version=1.0.0"), om),
            (Some("application/openmetrics-text;q=0, text/plain;q=0.2"), text),
            (Some("*/*;q=0.5, text/plain;q=0"), om),
            (Some("TEXT/PLAIN;Version=0.0.4"), text),
            (Some("garbage;;;,,"), om),
            (Some("text/plain;q=2"), om),
            (Some("application/openmetrics-text;version=\"1.0.0\""), om),
        ];
        for (accept, want) in table {
            assert_eq!(negotiate(accept.map(str::as_bytes)), *want, "Accept: {accept:?}");
        }
        assert_eq!(negotiate(Some(&[0xff, 0xfe])), om);
    }
}
