//! [`Format`]: the exposition formats a scrape can be answered in.

use std::fmt;
use std::str::FromStr;

/// An exposition format. Prometheus picks its parser from the response's content type,
/// so a body is only ever sent under its own [`content_type`](Format::content_type).
///
/// The Prometheus text format and the protobuf format need the `protobuf` feature (on by
/// default): see [`Format::is_available`].
///
/// ```
/// use shmetrics_core::Format;
/// let f: Format = "text".parse()?;
/// assert_eq!(f, Format::PrometheusText);
/// assert_eq!(f.content_type(), "text/plain; version=0.0.4; charset=utf-8");
/// # Ok::<(), String>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// OpenMetrics 1.0.0 text: what Prometheus 2.x asks for first, and the default.
    OpenMetrics,
    /// The Prometheus text format 0.0.4: what VictoriaMetrics' vmagent, Telegraf and many
    /// agents ask for first. No exemplars, no `_created` samples.
    PrometheusText,
    /// The Prometheus protobuf format (length-delimited `io.prometheus.client.MetricFamily`
    /// messages): the format that carries native histograms.
    Protobuf,
}

impl Format {
    /// Every format, in the order a tie in negotiation is resolved.
    pub const ALL: [Format; 3] = [Format::OpenMetrics, Format::PrometheusText, Format::Protobuf];

    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::PrometheusText => "text/plain; version=0.0.4; charset=utf-8",
            Format::Protobuf => {
                "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
            }
        }
    }

    /// The format's short name, as [`FromStr`] reads it: `openmetrics`, `text`,
    /// `protobuf`.
    pub fn name(self) -> &'static str {
        match self {
            Format::OpenMetrics => "openmetrics",
            Format::PrometheusText => "text",
            Format::Protobuf => "protobuf",
        }
    }

    /// Whether this binary can encode the format (the text format 0.0.4 and protobuf are
    /// built from prometheus-client's Prometheus data model, behind the `protobuf`
    /// feature).
    pub fn is_available(self) -> bool {
        match self {
            Format::OpenMetrics => true,
            Format::PrometheusText | Format::Protobuf => cfg!(feature = "protobuf"),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = String;

    /// `openmetrics` (or `om`), `text` (or `prometheus`, `0.0.4`), `protobuf` (or `proto`),
    /// in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "openmetrics" | "om" => Ok(Format::OpenMetrics),
            "text" | "prometheus" | "0.0.4" => Ok(Format::PrometheusText),
            "protobuf" | "proto" => Ok(Format::Protobuf),
            _ => Err(format!(
                "unknown format {s:?}: expected openmetrics, text (Prometheus 0.0.4) or protobuf"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>().unwrap(), f);
        }
        assert!("json".parse::<Format>().unwrap_err().contains("openmetrics"));
    }
}
