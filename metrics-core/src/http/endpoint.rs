//! [`MetricsEndpoint`]: the `/metrics` answer, independent of the web framework.

use std::io::Write;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use subtle::ConstantTimeEq;

use super::negotiate::negotiate;
use crate::error::{Error, Result};
use crate::read::Reader;
use crate::store::Store;

/// The `/metrics` endpoint, independent of the web framework: bearer-token check, on/off
/// switch, a fresh registry per scrape, the format the scraper asks for (see
/// [`negotiate`]: OpenMetrics by default, the Prometheus text format 0.0.4, protobuf),
/// optional gzip.
///
/// `METRICS_AUTH_TOKEN` (if set and not empty, scrapers must send `Authorization: Bearer
/// <token>`, compared in constant time; 401 otherwise) and `ENABLE_METRICS` (a false
/// spelling such as `false`, `0`, `no`, `off`: 404), read by [`MetricsEndpoint::from_env`].
#[derive(Clone)]
pub struct MetricsEndpoint {
    source: Source,
    token: Option<Arc<[u8]>>,
    enabled: bool,
    gzip: bool,
    extra: Option<RegistryFn>,
}

/// Where the endpoint's scrapes come from.
#[derive(Clone)]
enum Source {
    /// A store of this process (its own writers are live without probing).
    Store(Store),
    /// A reader of a directory this process does not write (an exporter beside other
    /// processes): one scrape at a time.
    Reader(Arc<std::sync::Mutex<Reader>>),
}

/// Registers the caller's own metrics in a scrape's registry.
type RegistryFn = Arc<dyn Fn(&mut Registry) + Send + Sync>;

/// The request headers the endpoint reads (raw values, as the framework gives them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScrapeRequest<'a> {
    /// `Authorization`.
    pub authorization: Option<&'a [u8]>,
    /// `Accept`: which format (see [`negotiate`]).
    pub accept: Option<&'a [u8]>,
    /// `Accept-Encoding`: whether to gzip.
    pub accept_encoding: Option<&'a [u8]>,
}

/// What the endpoint answers; adapters turn it into their response type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointResponse {
    /// HTTP status.
    pub status: u16,
    /// Headers to send.
    pub headers: Vec<(&'static str, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// The variable holding the scrape token.
pub const ENV_AUTH_TOKEN: &str = "METRICS_AUTH_TOKEN";
/// The variable switching the endpoint off.
pub const ENV_ENABLE: &str = "ENABLE_METRICS";

impl MetricsEndpoint {
    /// An open, enabled endpoint for `store`, with gzip when the scraper accepts it.
    pub fn new(store: &Store) -> Self {
        Self::with_source(Source::Store(store.clone()))
    }

    /// An open, enabled endpoint serving what `reader` merges: for a process that writes
    /// no metrics of its own into the directory (an exporter beside Python workers).
    ///
    /// ```
    /// use shmetrics_core::http::{MetricsEndpoint, ScrapeRequest};
    /// # let dir = tempfile::tempdir().unwrap();
    /// let endpoint = MetricsEndpoint::for_reader(shmetrics_core::Reader::new(dir.path())?);
    /// assert_eq!(endpoint.respond(ScrapeRequest::default()).status, 200);
    /// # Ok::<(), shmetrics_core::Error>(())
    /// ```
    pub fn for_reader(reader: Reader) -> Self {
        Self::with_source(Source::Reader(Arc::new(std::sync::Mutex::new(reader))))
    }

    fn with_source(source: Source) -> Self {
        MetricsEndpoint {
            source,
            token: None,
            enabled: true,
            gzip: true,
            extra: None,
        }
    }

    /// An endpoint configured from `METRICS_AUTH_TOKEN` and `ENABLE_METRICS`.
    ///
    /// Fails (refuse to start on it) when `ENABLE_METRICS` is neither a usual true nor a
    /// usual false spelling (see [`parse_enabled`]), or when the token, once the
    /// whitespace around it is trimmed (a newline left by `echo` into an env file), holds
    /// characters a scraper cannot send in a header.
    pub fn from_env(store: &Store) -> Result<Self> {
        MetricsEndpoint::new(store).env()
    }

    /// Applies `METRICS_AUTH_TOKEN` and `ENABLE_METRICS` to this endpoint (see
    /// [`MetricsEndpoint::from_env`]).
    pub fn env(self) -> Result<Self> {
        let enabled = match std::env::var(ENV_ENABLE) {
            Ok(v) => parse_enabled(&v).ok_or_else(|| Error::InvalidOption {
                name: ENV_ENABLE.into(),
                reason: format!(
                    "{v:?} is neither true (true, 1, yes, on, y, t, enable, enabled) nor false \
                     (false, 0, no, off, n, f, disable, disabled, none): set one of them"
                ),
            })?,
            Err(_) => true,
        };
        let token = match std::env::var(ENV_AUTH_TOKEN) {
            Ok(t) => {
                let t = t.trim();
                if t.bytes().any(|b| !b.is_ascii_graphic()) {
                    return Err(Error::InvalidOption {
                        name: ENV_AUTH_TOKEN.into(),
                        reason: "the token holds spaces or characters that are not printable ASCII: \
                                 a scraper cannot send it in an Authorization header; use e.g. \
                                 `openssl rand -hex 32`"
                            .into(),
                    });
                }
                Some(t.to_string())
            }
            Err(_) => None,
        };
        Ok(self.bearer_token(token).enabled(enabled))
    }

    /// Requires `Authorization: Bearer <token>` (`None` or empty: no token). Whitespace
    /// around the token is trimmed.
    pub fn bearer_token(mut self, token: Option<impl Into<String>>) -> Self {
        self.token = token
            .map(Into::into)
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .map(|t| Arc::from(t.into_bytes().into_boxed_slice()));
        self
    }

    /// Switches the endpoint on or off (off: 404).
    pub fn enabled(mut self, on: bool) -> Self {
        self.enabled = on;
        self
    }

    /// Whether to gzip the body when the scraper sends `Accept-Encoding: gzip`.
    pub fn gzip(mut self, on: bool) -> Self {
        self.gzip = on;
        self
    }

    /// Registers the caller's own metrics in each scrape's fresh registry (a build-info
    /// gauge, process metrics...).
    pub fn registry(mut self, f: impl Fn(&mut Registry) + Send + Sync + 'static) -> Self {
        self.extra = Some(Arc::new(f));
        self
    }

    /// Whether the endpoint is switched on.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Whether a token is required.
    pub fn requires_token(&self) -> bool {
        self.token.is_some()
    }

    /// The answer to a request with these headers. A successful answer carries
    /// `Vary: accept, accept-encoding`: caches must not give one scraper's format or
    /// encoding to another.
    ///
    /// ```
    /// use shmetrics_core::http::{MetricsEndpoint, ScrapeRequest};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = shmetrics_core::Store::open(dir.path())?;
    /// let endpoint = MetricsEndpoint::new(&store);
    /// let r = endpoint.respond(ScrapeRequest {
    ///     accept: Some(b"text/plain;version=0.0.4"),
    ///     ..Default::default()
    /// });
    /// assert_eq!(r.status, 200);
    /// assert!(r.headers.contains(&("content-type", "text/plain; version=0.0.4; charset=utf-8".into())));
    /// # Ok::<(), shmetrics_core::Error>(())
    /// ```
    pub fn respond(&self, request: ScrapeRequest<'_>) -> EndpointResponse {
        let text = |status: u16, body: &str| EndpointResponse {
            status,
            headers: vec![("content-type", "text/plain; charset=utf-8".into())],
            body: body.as_bytes().to_vec(),
        };
        if !self.enabled {
            return text(404, "metrics are disabled (ENABLE_METRICS)\n");
        }
        if let Some(token) = &self.token {
            if !bearer_matches(request.authorization, token) {
                let mut r = text(401, "a valid bearer token is required\n");
                r.headers
                    .push(("www-authenticate", "Bearer realm=\"metrics\"".into()));
                return r;
            }
        }
        let format = negotiate(request.accept);
        let mut registry = Registry::default();
        if let Some(f) = &self.extra {
            f(&mut registry);
        }
        let snapshot = match &self.source {
            Source::Store(store) => store.snapshot(),
            Source::Reader(reader) => reader
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .snapshot(),
        };
        let body = match snapshot.and_then(|s| s.encode_as(format, registry)) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("scrape failed: {e}");
                return text(500, &format!("scrape failed: {e}\n"));
            }
        };
        let mut headers = vec![
            ("content-type", format.content_type().to_string()),
            ("vary", "accept, accept-encoding".into()),
        ];
        if self.gzip && accepts_gzip(request.accept_encoding) {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::fast(),
            );
            if enc.write_all(&body).is_ok() {
                if let Ok(gz) = enc.finish() {
                    headers.push(("content-encoding", "gzip".into()));
                    return EndpointResponse {
                        status: 200,
                        headers,
                        body: gz,
                    };
                }
            }
        }
        EndpointResponse {
            status: 200,
            headers,
            body,
        }
    }
}

impl std::fmt::Debug for MetricsEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsEndpoint")
            .field(
                "source",
                &match &self.source {
                    Source::Store(s) => format!("store {}", s.dir().display()),
                    Source::Reader(r) => format!(
                        "reader {}",
                        r.lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .dir()
                            .display()
                    ),
                },
            )
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("enabled", &self.enabled)
            .field("gzip", &self.gzip)
            .finish()
    }
}

/// An `ENABLE_METRICS` value: `Some(true)` for `true`, `1`, `yes`, `on`, `y`, `t`,
/// `enable`, `enabled` (and an empty value, as if unset), `Some(false)` for `false`, `0`,
/// `no`, `off`, `n`, `f`, `disable`, `disabled`, `none`, `0.0`, in any case and with
/// spaces around; `None` for anything else (refuse to start rather than guess).
pub fn parse_enabled(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "" | "true" | "1" | "yes" | "on" | "y" | "t" | "enable" | "enabled" | "1.0" => Some(true),
        "false" | "0" | "no" | "off" | "n" | "f" | "disable" | "disabled" | "none" | "0.0" => Some(false),
        _ => None,
    }
}

/// Whether `Authorization` carries `Bearer <token>`; the token is compared in constant
/// time (only its length may show in timing).
fn bearer_matches(authorization: Option<&[u8]>, token: &[u8]) -> bool {
    let Some(h) = authorization else { return false };
    let h = h.trim_ascii();
    if h.len() < 7 || !h[..7].eq_ignore_ascii_case(b"bearer ") {
        return false;
    }
    let given = h[7..].trim_ascii();
    bool::from(given.ct_eq(token))
}

fn accepts_gzip(accept: Option<&[u8]>) -> bool {
    let Some(a) = accept else { return false };
    let Ok(a) = std::str::from_utf8(a) else {
        return false;
    };
    a.split(',').any(|part| {
        let mut it = part.split(';');
        let coding = it.next().unwrap_or("").trim();
        // Parameter names are case-insensitive (`Q=0` is `q=0`).
        let q_zero = it.any(|p| {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            name.trim().eq_ignore_ascii_case("q") && value.trim().parse::<f32>().is_ok_and(|q| q == 0.0)
        });
        coding.eq_ignore_ascii_case("gzip") && !q_zero
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer() {
        assert!(bearer_matches(Some(b"Bearer s3cret"), b"s3cret"));
        assert!(bearer_matches(Some(b"bearer   s3cret "), b"s3cret"));
        assert!(!bearer_matches(Some(b"Bearer s3cre"), b"s3cret"));
        assert!(!bearer_matches(Some(b"Basic s3cret"), b"s3cret"));
        assert!(!bearer_matches(Some(b"s3cret"), b"s3cret"));
        assert!(!bearer_matches(None, b"s3cret"));
    }

    #[test]
    fn gzip_negotiation() {
        assert!(accepts_gzip(Some(b"gzip")));
        assert!(accepts_gzip(Some(b"deflate, GZIP;q=0.5")));
        assert!(!accepts_gzip(Some(b"gzip;q=0")));
        assert!(!accepts_gzip(Some(b"gzip;Q=0")));
        assert!(!accepts_gzip(Some(b"gzip; Q = 0.0")));
        assert!(accepts_gzip(Some(b"gzip;Q=1")));
        assert!(!accepts_gzip(Some(b"identity")));
        assert!(!accepts_gzip(None));
    }

    #[test]
    fn enable_values() {
        for off in [
            "false", "0", "no", "OFF", " False ", "disabled", "disable", "n", "none", "f", "0.0",
        ] {
            assert_eq!(parse_enabled(off), Some(false), "{off}");
        }
        for on in ["true", "1", "yes", "", "on", "Enabled", "y", "T"] {
            assert_eq!(parse_enabled(on), Some(true), "{on}");
        }
        for unknown in ["maybe", "2", "falsy", "nope"] {
            assert_eq!(parse_enabled(unknown), None, "{unknown}");
        }
    }
}
