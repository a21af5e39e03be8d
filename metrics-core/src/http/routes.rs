//! The route cache of the request metrics: the label handles of each known (route,
//! method), resolved once and reused by every request of the route, so that a request
//! costs one short hash and one compare of its template instead of two family lookups.
//!
//! Slots are filled once and never replaced (entries live as long as the metrics), so
//! lookups take no lock: a filled slot is one acquire load. A route whose slot holds
//! another route uses the families directly.

use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

use crate::family::counter::Counter;
use crate::family::histogram::Histogram;
use crate::sys;

/// Slots of the route cache (direct-mapped).
const ROUTE_CACHE_SLOTS: usize = 512;
/// Statuses one route entry keeps counters for (others use the family directly).
const ENTRY_STATUSES: usize = 16;

/// Handles of one (route, method).
#[derive(Debug)]
pub(super) struct RouteEntry {
    pub(super) route: Box<str>,
    method: u8,
    pub(super) duration: Histogram,
    /// Whether the route is one the metrics leave out (decided once).
    pub(super) excluded: bool,
    /// (status, its request counter), filled in the order statuses are first seen.
    statuses: [OnceLock<(u16, Counter)>; ENTRY_STATUSES],
}

impl RouteEntry {
    /// The request counter for `status`, made with `make` (and kept) on first use; `None`
    /// when the entry keeps counters for as many other statuses as it can.
    #[inline]
    pub(super) fn counter(&self, status: u16, make: impl FnOnce() -> Counter) -> Option<&Counter> {
        let mut make = Some(make);
        for slot in &self.statuses {
            let (s, c) = match slot.get() {
                Some(filled) => filled,
                None => {
                    // Inside the fork gate, like every lock of the store: a fork while
                    // another thread fills the slot would leave it locked in the child.
                    let _gate = sys::enter_gate();
                    slot.get_or_init(|| (status, (make.take().expect("made once"))()))
                }
            };
            if *s == status {
                return Some(c);
            }
        }
        None
    }
}

/// The cache: `ROUTE_CACHE_SLOTS` slots, each filled at most once.
pub(super) struct RouteCache {
    slots: Box<[OnceLock<RouteEntry>]>,
    hasher: foldhash::fast::RandomState,
}

impl RouteCache {
    pub(super) fn new() -> Self {
        RouteCache {
            slots: (0..ROUTE_CACHE_SLOTS).map(|_| OnceLock::new()).collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// The slot of (route, method), its entry created on first use with the latency
    /// histogram `duration` makes and whether the route is `excluded`; `None` if the slot
    /// holds another route.
    #[inline]
    pub(super) fn slot(
        &self,
        route: &str,
        method: u8,
        duration: impl FnOnce() -> Histogram,
        excluded: impl FnOnce() -> bool,
    ) -> Option<u16> {
        let mut h = self.hasher.build_hasher();
        h.write(route.as_bytes());
        h.write_u8(method);
        let i = h.finish() as usize & (ROUTE_CACHE_SLOTS - 1);
        let slot = &self.slots[i];
        let e = match slot.get() {
            Some(e) => e,
            None => {
                let _gate = sys::enter_gate();
                slot.get_or_init(|| RouteEntry {
                    route: route.into(),
                    method,
                    duration: duration(),
                    excluded: excluded(),
                    statuses: std::array::from_fn(|_| OnceLock::new()),
                })
            }
        };
        (e.method == method && *e.route == *route).then_some(i as u16)
    }

    /// The entry in slot `i` (a slot [`RouteCache::slot`] returned: always filled).
    #[inline]
    pub(super) fn entry(&self, i: u16) -> Option<&RouteEntry> {
        self.slots.get(usize::from(i)).and_then(OnceLock::get)
    }
}

impl std::fmt::Debug for RouteCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let used = self.slots.iter().filter(|s| s.get().is_some()).count();
        f.debug_struct("RouteCache").field("used", &used).finish()
    }
}
