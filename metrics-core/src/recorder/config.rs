//! The recorder's settings: which names get which buckets and gauge modes.

use std::time::Duration;

use crate::format::GaugeMode;
use crate::format::desc::NativeOpts;

/// Which metric names a setting applies to (the name as the code gives it, after
/// sanitizing, before any unit suffix). The first matcher given that matches wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Matcher {
    /// The whole name.
    Full(String),
    /// Names that start with this.
    Prefix(String),
    /// Names that end with this.
    Suffix(String),
}

impl Matcher {
    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Matcher::Full(s) => name == s,
            Matcher::Prefix(s) => name.starts_with(s.as_str()),
            Matcher::Suffix(s) => name.ends_with(s.as_str()),
        }
    }
}

/// The recorder's settings.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(super) buckets: Vec<f64>,
    pub(super) buckets_for: Vec<(Matcher, Vec<f64>)>,
    pub(super) native_for: Vec<(Matcher, NativeOpts)>,
    pub(super) modes: Vec<(Matcher, GaugeMode)>,
    pub(crate) global_labels: Vec<(String, String)>,
    pub(super) idle_timeout: Option<Duration>,
}

impl Config {
    fn first<'a, T>(list: &'a [(Matcher, T)], name: &str) -> Option<&'a T> {
        list.iter().find(|(m, _)| m.matches(name)).map(|(_, t)| t)
    }

    pub(crate) fn gauge_mode(&self, name: &str) -> GaugeMode {
        Self::first(&self.modes, name)
            .copied()
            .unwrap_or(GaugeMode::LiveSum)
    }

    pub(crate) fn native(&self, name: &str) -> Option<NativeOpts> {
        Self::first(&self.native_for, name).cloned()
    }

    pub(crate) fn explicit_buckets(&self, name: &str) -> Option<&[f64]> {
        Self::first(&self.buckets_for, name).map(Vec::as_slice)
    }

    pub(crate) fn buckets(&self, name: &str) -> &[f64] {
        self.explicit_buckets(name).unwrap_or(&self.buckets)
    }
}
