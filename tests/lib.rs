//! End-to-end tests of the workspace (`cargo test -p shmetrics-tests`): the conformance
//! suite that runs both adapters, worker processes of each serving one directory, and the
//! one-line setups; the README's code blocks compile and run as this crate's doc tests.

/// The README's code: its Rust blocks are compiled (and, unless marked `no_run`, run).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
