//! A native histogram series' buckets in this process: chunks of 16 32-bit counts in the
//! file (record kind 7 of `FORMAT.md`), allocated as observations need them.
//!
//! The hot path finds the chunk of a bucket through a *frame*: for each side, the count
//! words of the chunks numbered `base..base + len`, filled in as chunks are bound and never
//! emptied (a slot changes only from one file chunk to a newer one of the same buckets).
//! A frame is valid in one bind epoch (after `fork()` or a move to another file, the next
//! observation builds a new one) and at one storage schema. A frame that must cover more
//! chunks is replaced by a larger copy; every frame stays allocated until the series is
//! dropped (like the family table's generations), so a frame a writer holds stays valid.
//!
//! An observation is one relaxed `fetch_add` on its chunk's word. When a count reaches
//! [`CHUNK_COUNT_LIMIT`], the next observations of that chunk go to a new chunk of the same
//! buckets (readers add them up): a 32-bit count never wraps. A series whose chunks at one
//! schema would pass [`MAX_CHUNKS`], or span more than [`MAX_SPAN`] chunk numbers, goes on
//! at the next coarser schema (its older chunks still count; a merge brings every chunk to
//! the coarsest schema it holds): a file grows by a bounded amount per series whatever the
//! observations.
//!
//! When the file cannot grow (a full filesystem), a chunk lives in process memory and is
//! moved into the file at the next chance, as a series' slots are ([`super::cell`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

use super::Waiting;
use super::cell::{Cell, RETRY_INTERVAL};
use crate::format::native::{
    CHUNK_BUCKETS, CHUNK_COUNT_LIMIT, CHUNK_WORDS, MIN_SCHEMA, NativeSpec, bounds_of, bucket_index_in,
    reduce_index,
};
use crate::sys;

/// Most chunks one series binds at one schema in one file before it goes on at the next
/// coarser schema (1,024 buckets, 5 KiB of file).
pub(crate) const MAX_CHUNKS: usize = 64;
/// Widest range of chunk numbers of one side at one schema (8,192 buckets); a wider one
/// goes on at the next coarser schema.
pub(crate) const MAX_SPAN: i32 = 512;
const _: () = assert!(CHUNK_BUCKETS == 16);

/// Frames one series may publish; past them, every observation takes the locked path
/// (a series would need hundreds of forks or file moves to get there).
const GENERATIONS: usize = 64;

/// The chunks one side of a series has bound, by chunk number.
struct Side {
    base: i32,
    slots: Box<[AtomicPtr<AtomicU64>]>,
}

impl Side {
    fn empty() -> Self {
        Side {
            base: 0,
            slots: Box::new([]),
        }
    }

    #[inline]
    fn get(&self, chunk: i32) -> Option<&AtomicPtr<AtomicU64>> {
        // Below `base` wraps to a huge index, which `get` refuses.
        self.slots.get(chunk.wrapping_sub(self.base) as u32 as usize)
    }

    /// A copy that also covers `chunk`, with room to grow towards it (the range doubles),
    /// or `None` if covering both would take more than [`MAX_SPAN`] chunk numbers.
    fn grown(&self, chunk: i32) -> Option<Side> {
        let len = self.slots.len() as i32;
        let (lo, hi) = if len == 0 {
            (chunk - 1, chunk + 3)
        } else {
            let (old_lo, old_hi) = (self.base, self.base + len);
            let (need_lo, need_hi) = (old_lo.min(chunk), old_hi.max(chunk + 1));
            if need_hi - need_lo > MAX_SPAN {
                return None;
            }
            let extra = len.max(2);
            let lo = if chunk < old_lo {
                (need_lo - extra).max(need_hi - MAX_SPAN)
            } else {
                need_lo
            };
            let hi = if chunk >= old_hi {
                (need_hi + extra).min(lo + MAX_SPAN)
            } else {
                need_hi
            };
            (lo, hi)
        };
        let slots: Box<[AtomicPtr<AtomicU64>]> = (lo..hi)
            .map(|c| {
                let p = self
                    .get(c)
                    .map_or(std::ptr::null_mut(), |s| s.load(Ordering::Acquire));
                AtomicPtr::new(p)
            })
            .collect();
        Some(Side { base: lo, slots })
    }
}

/// What the hot path reads: the bound chunks of both sides, at one schema, in one epoch.
struct Frame {
    epoch: u64,
    schema: i8,
    sides: [Side; 2],
}

/// One native histogram series of this process.
pub(crate) struct NativeCell {
    /// The series' slots (classic buckets, sum, zero bucket), its labels and writer.
    cell: Arc<Cell>,
    spec: NativeSpec,
    /// The declared schema's bucket bounds (see `format::native::bounds_of`).
    bounds: &'static [f64],
    /// Boxed: a series holds 64 of these, and most stay empty (a frame inline would make
    /// every native series 4.6 KiB of process memory; a box, 1 KiB).
    frames: [OnceLock<Box<Frame>>; GENERATIONS],
    /// The frame in use (published once set).
    current: AtomicUsize,
    state: Mutex<State>,
    /// Whether the writer's list of series waiting for file room holds this one.
    queued: AtomicBool,
}

struct State {
    /// Next free frame generation.
    next: usize,
    /// The schema new chunks are bound at (the declared one, or coarser).
    schema: i8,
    /// Chunks bound at `schema` in the current epoch.
    chunks: usize,
    /// Counts waiting in process memory for file room, by (side, schema, chunk): 16 counts
    /// each. Written only under this lock.
    local: HashMap<(bool, i8, i32), [u64; CHUNK_BUCKETS as usize]>,
    /// Fork generation the local counts were recorded in.
    local_gen: u64,
    retry_at: Option<Instant>,
}

impl NativeCell {
    pub(crate) fn new(cell: Arc<Cell>, spec: NativeSpec) -> Arc<NativeCell> {
        Arc::new(NativeCell {
            cell,
            spec,
            bounds: bounds_of(spec.schema),
            frames: std::array::from_fn(|_| OnceLock::new()),
            current: AtomicUsize::new(usize::MAX),
            state: Mutex::new(State {
                next: 0,
                schema: spec.schema,
                chunks: 0,
                local: HashMap::new(),
                local_gen: sys::fork_generation(),
                retry_at: None,
            }),
            queued: AtomicBool::new(false),
        })
    }

    /// The frame in use, if it belongs to the current bind epoch.
    #[inline(always)]
    fn frame(&self) -> Option<&Frame> {
        let g = self.current.load(Ordering::Acquire);
        let f = self.frames.get(g)?.get()?;
        (f.epoch == sys::bind_epoch()).then_some(f)
    }

    /// Counts `v` (finite, `|v|` above the zero threshold) in its bucket.
    #[inline]
    pub(crate) fn observe(self: &Arc<Self>, v: f64) {
        let negative = v < 0.0;
        let declared = bucket_index_in(self.spec.schema, self.bounds, v.abs());
        if let Some(f) = self.frame() {
            let index = if f.schema < self.spec.schema {
                reduce_index(declared, self.spec.schema, f.schema)
            } else {
                declared
            };
            // CHUNK_BUCKETS is 16: the chunk is index >> 4 (rounding down), the bucket
            // inside it index & 15.
            let chunk = index >> 4;
            if let Some(slot) = f.sides[usize::from(negative)].get(chunk) {
                let p = slot.load(Ordering::Acquire);
                if !p.is_null() {
                    let j = (index & 15) as usize;
                    // SAFETY: `p` was stored in a frame of the current bind epoch by
                    // `bind`, from `Writer::bind_chunk`: it points at the CHUNK_WORDS count
                    // words of a chunk in this process's mapping of its file, checked to be
                    // inside it, aligned and backed by the file. The writer keeps every
                    // mapping of this process for as long as it lives, and `self.cell`
                    // keeps the writer alive. Every process accesses these words only as
                    // atomic 64-bit words. `j / 2 < CHUNK_WORDS`.
                    let word = unsafe { &*p.add(j / 2) };
                    let shift = 32 * (j & 1);
                    let before = (word.fetch_add(1 << shift, Ordering::Relaxed) >> shift) & 0xffff_ffff;
                    if before + 1 >= CHUNK_COUNT_LIMIT {
                        self.replace_full(negative, f.schema, chunk, p);
                    }
                    return;
                }
            }
        }
        self.observe_slow(negative, declared);
    }

    /// Takes the lock (inside the fork gate, like every internal lock).
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cold]
    #[inline(never)]
    fn observe_slow(self: &Arc<Self>, negative: bool, declared: i32) {
        let _gate = sys::enter_gate();
        let mut st = self.lock();
        self.sync_epoch(&mut st);
        loop {
            let schema = st.schema;
            let index = reduce_index(declared, self.spec.schema, schema);
            let chunk = index.div_euclid(CHUNK_BUCKETS);
            let j = index.rem_euclid(CHUNK_BUCKETS) as usize;
            match self.bind(&mut st, negative, schema, chunk) {
                Bound::File(p) => {
                    // SAFETY: as in `observe`: `p` comes from `Writer::bind_chunk` in the
                    // current epoch.
                    let word = unsafe { &*p.add(j / 2) };
                    let shift = 32 * (j & 1);
                    let before = (word.fetch_add(1 << shift, Ordering::Relaxed) >> shift) & 0xffff_ffff;
                    if before + 1 >= CHUNK_COUNT_LIMIT {
                        self.replace_locked(&mut st, negative, schema, chunk, p);
                    }
                    return;
                }
                Bound::Local => {
                    let counts = st.local.entry((negative, schema, chunk)).or_insert([0; 16]);
                    counts[j] += 1;
                    drop(st);
                    if !self.queued.swap(true, Ordering::AcqRel) {
                        let weak: std::sync::Weak<dyn Waiting> = Arc::downgrade(self) as _;
                        self.cell.writer.wait_for_file(weak);
                    }
                    return;
                }
                Bound::Coarser => {}
            }
        }
    }

    /// After `fork()` or a move to another file: a new, empty frame for this epoch (chunks
    /// are bound again, in the file of this epoch), and counts the parent left in process
    /// memory dropped (the parent still holds them).
    fn sync_epoch(&self, st: &mut State) {
        let fork_gen = sys::fork_generation();
        if st.local_gen != fork_gen {
            st.local.clear();
            st.local_gen = fork_gen;
            st.retry_at = None;
            st.schema = self.spec.schema;
        }
        if self.frame().is_none() {
            self.start_frame(st);
        }
    }

    /// Publishes an empty frame of this epoch at the storage schema: chunks are bound into
    /// it afresh.
    fn start_frame(&self, st: &mut State) {
        st.chunks = 0;
        let schema = st.schema;
        self.publish(
            st,
            Frame {
                epoch: sys::bind_epoch(),
                schema,
                sides: [Side::empty(), Side::empty()],
            },
        );
    }

    /// Publishes `frame` as the next generation (when generations are left).
    fn publish(&self, st: &mut State, frame: Frame) {
        let g = st.next;
        if g < GENERATIONS && self.frames[g].set(Box::new(frame)).is_ok() {
            st.next += 1;
            self.current.store(g, Ordering::Release);
        }
    }

    /// The chunk of buckets `chunk` of one side at `schema`: bound in the file (and in the
    /// frame), in process memory for now, or `Coarser` when the series went on at a coarser
    /// schema instead (try again there).
    fn bind(&self, st: &mut State, negative: bool, schema: i8, chunk: i32) -> Bound {
        let frame = self.frame().filter(|f| f.schema == schema);
        if let Some(p) = frame
            .and_then(|f| f.sides[usize::from(negative)].get(chunk))
            .map(|s| s.load(Ordering::Acquire))
        {
            if !p.is_null() {
                return Bound::File(p);
            }
        }
        if st.local.contains_key(&(negative, schema, chunk)) {
            return Bound::Local;
        }
        let Ok(chunk16) = i16::try_from(chunk) else {
            return Bound::Local;
        };
        // Bounded: too many chunks, or too wide a range, at this schema.
        let too_wide = frame.is_some_and(|f| {
            let side = &f.sides[usize::from(negative)];
            side.get(chunk).is_none() && side.grown(chunk).is_none()
        });
        if (st.chunks + st.local.len() >= MAX_CHUNKS || too_wide) && st.schema > MIN_SCHEMA {
            st.schema -= 1;
            self.start_frame(st);
            return Bound::Coarser;
        }
        if st.retry_at.is_some_and(|t| Instant::now() < t) {
            return Bound::Local;
        }
        // The series' own slots first: its chunks name it by their offset in the file.
        self.cell.with(|_| ());
        let key = self.cell.bind_key();
        let writer = &self.cell.writer;
        // The file's chunk for these buckets, unless a count of it reached the limit (a
        // predecessor's, or one replaced while the file was full): then a new one.
        let bound = writer
            .bind_chunk(&key, negative, schema, chunk16, None)
            .and_then(|p| match full(p) {
                true => writer.bind_chunk(&key, negative, schema, chunk16, Some(p)),
                false => Some(p),
            });
        let Some(p) = bound else {
            st.retry_at = Some(Instant::now() + RETRY_INTERVAL);
            return Bound::Local;
        };
        st.retry_at = None;
        st.chunks += 1;
        if frame.is_some() {
            self.install(st, negative, chunk, p);
        }
        Bound::File(p)
    }

    /// Puts chunk `p` in the frame (a larger copy of it if needed).
    fn install(&self, st: &mut State, negative: bool, chunk: i32, p: *const AtomicU64) {
        let Some(f) = self.frame() else { return };
        let side = &f.sides[usize::from(negative)];
        if let Some(slot) = side.get(chunk) {
            slot.store(p.cast_mut(), Ordering::Release);
            return;
        }
        let Some(grown) = side.grown(chunk) else { return };
        if let Some(slot) = grown.get(chunk) {
            slot.store(p.cast_mut(), Ordering::Relaxed);
        }
        let other = &f.sides[usize::from(!negative)];
        let copy = Side {
            base: other.base,
            slots: other
                .slots
                .iter()
                .map(|s| AtomicPtr::new(s.load(Ordering::Acquire)))
                .collect(),
        };
        let sides = if negative { [copy, grown] } else { [grown, copy] };
        let frame = Frame {
            epoch: f.epoch,
            schema: f.schema,
            sides,
        };
        self.publish(st, frame);
    }

    /// A count of chunk `p` reached the limit: the chunk's next observations go to a new
    /// chunk of the same buckets.
    #[cold]
    #[inline(never)]
    fn replace_full(&self, negative: bool, schema: i8, chunk: i32, p: *const AtomicU64) {
        let _gate = sys::enter_gate();
        let mut st = self.lock();
        self.replace_locked(&mut st, negative, schema, chunk, p);
    }

    fn replace_locked(&self, st: &mut State, negative: bool, schema: i8, chunk: i32, p: *const AtomicU64) {
        let Some(f) = self.frame() else { return };
        let Some(slot) = f.sides[usize::from(negative)].get(chunk) else {
            return;
        };
        if slot.load(Ordering::Acquire).cast_const() != p {
            return; // replaced already
        }
        let key = self.cell.bind_key();
        let fresh = i16::try_from(chunk)
            .ok()
            .and_then(|c| self.cell.writer.bind_chunk(&key, negative, schema, c, Some(p)));
        // No room for a new chunk: the next observations wait in process memory.
        slot.store(
            fresh.map_or(std::ptr::null_mut(), |n| n.cast_mut()),
            Ordering::Release,
        );
        if fresh.is_some() {
            st.chunks += 1;
        }
    }

    /// Moves the counts waiting in process memory into file chunks, as far as the file has
    /// room. Returns whether none is left.
    fn flush_locked(&self, st: &mut State) -> bool {
        self.sync_epoch(st);
        let keys: Vec<(bool, i8, i32)> = st.local.keys().copied().collect();
        for (negative, schema, chunk) in keys {
            let Ok(chunk16) = i16::try_from(chunk) else {
                continue;
            };
            let key = self.cell.bind_key();
            self.cell.with(|_| ());
            let Some(mut p) = self.cell.writer.bind_chunk(&key, negative, schema, chunk16, None) else {
                st.retry_at = Some(Instant::now() + RETRY_INTERVAL);
                return false;
            };
            let Some(mut counts) = st.local.remove(&(negative, schema, chunk)) else {
                continue;
            };
            let mut stuck = false;
            for (j, count) in counts.iter_mut().enumerate() {
                while *count > 0 {
                    // SAFETY: as in `observe`: `p` comes from `Writer::bind_chunk` in the
                    // current epoch.
                    let word = unsafe { &*p.add(j / 2) };
                    let shift = 32 * (j & 1);
                    let now = (word.load(Ordering::Relaxed) >> shift) & 0xffff_ffff;
                    let room = (CHUNK_COUNT_LIMIT - 1).saturating_sub(now);
                    let add = (*count).min(room);
                    word.fetch_add(add << shift, Ordering::Relaxed);
                    *count -= add;
                    if *count > 0 {
                        match self
                            .cell
                            .writer
                            .bind_chunk(&key, negative, schema, chunk16, Some(p))
                        {
                            Some(n) => p = n,
                            None => {
                                stuck = true;
                                break;
                            }
                        }
                    }
                }
            }
            if stuck {
                st.local.insert((negative, schema, chunk), counts);
                return false;
            }
            if self.frame().is_some_and(|f| f.schema == schema) {
                self.install(st, negative, chunk, p);
            }
        }
        st.local.is_empty()
    }
}

/// Whether a count of chunk `p` reached [`CHUNK_COUNT_LIMIT`].
fn full(p: *const AtomicU64) -> bool {
    (0..CHUNK_WORDS).any(|i| {
        // SAFETY: as in `NativeCell::observe`: `p` comes from `Writer::bind_chunk` in the
        // current epoch and points at CHUNK_WORDS words.
        let w = unsafe { &*p.add(i) }.load(Ordering::Relaxed);
        (w & 0xffff_ffff) >= CHUNK_COUNT_LIMIT - 1 || (w >> 32) >= CHUNK_COUNT_LIMIT - 1
    })
}

/// Where an observation's chunk is.
enum Bound {
    File(*const AtomicU64),
    Local,
    Coarser,
}

impl Waiting for NativeCell {
    fn flush(&self) -> bool {
        let Ok(mut st) = self.state.try_lock() else {
            return false;
        };
        let done = self.flush_locked(&mut st);
        if done {
            self.queued.store(false, Ordering::Release);
        }
        done
    }

    fn bound(&self) -> bool {
        self.state
            .try_lock()
            .map(|st| st.local.is_empty())
            .unwrap_or(false)
    }
}

impl std::fmt::Debug for NativeCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeCell")
            .field("cell", &self.cell)
            .field("schema", &self.spec.schema)
            .finish()
    }
}
