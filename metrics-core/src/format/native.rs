//! Native (sparse exponential) histogram buckets, as Prometheus defines them: at schema
//! `s` (−4 to 8), bucket `i` of the positive side holds the observations `v` with
//! `2^((i−1)·2^−s) < v ≤ 2^(i·2^−s)`; the negative side holds `−v` the same way; the
//! zero bucket holds `|v| ≤` the zero threshold. Each schema's buckets split each bucket of
//! the schema below in two, so a count moves down to a coarser schema exactly.
//!
//! In the files, a series' buckets are kept in chunks of [`CHUNK_BUCKETS`] 32-bit counts
//! (two per word), allocated as observations need them (see `FORMAT.md`, record kind 7).

/// Lowest schema (buckets growing by a factor of 65,536).
pub const MIN_SCHEMA: i8 = -4;
/// Highest schema (buckets growing by a factor of 2^(1/256), about 1.0027).
pub const MAX_SCHEMA: i8 = 8;
/// Buckets per chunk: a chunk holds buckets `16·c` to `16·c + 15`.
pub(crate) const CHUNK_BUCKETS: i32 = 16;
/// Words of counts per chunk (two 32-bit counts per word).
pub(crate) const CHUNK_WORDS: usize = 8;
/// A count that reaches this starts a new chunk for the same buckets (readers add the
/// chunks up), so a 32-bit count never wraps.
pub(crate) const CHUNK_COUNT_LIMIT: u64 = 1 << 31;

/// Native histogram settings of a family: identical in every process that declares it
/// the same way (a merge of other settings reduces every series to the coarsest schema and
/// the widest zero bucket).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct NativeSpec {
    pub schema: i8,
    pub zero_threshold: f64,
    /// Most buckets a merged series shows (both sides); more and its resolution is
    /// halved until it fits (0: no limit).
    pub max_buckets: u32,
}

impl NativeSpec {
    /// Checks settings read from a file or given by a caller.
    pub(crate) fn check(&self) -> Result<(), String> {
        if !(MIN_SCHEMA..=MAX_SCHEMA).contains(&self.schema) {
            return Err(format!(
                "schema {} is outside {MIN_SCHEMA}..={MAX_SCHEMA}",
                self.schema
            ));
        }
        if !(self.zero_threshold.is_finite() && self.zero_threshold >= 0.0) {
            return Err(format!(
                "zero threshold {} is not a finite number at least 0",
                self.zero_threshold
            ));
        }
        Ok(())
    }
}

/// `v` (finite, positive) as `frac · 2^exp` with `frac` in `[0.5, 1)`, as C's `frexp`.
#[inline(always)]
fn frexp(v: f64) -> (f64, i32) {
    let (mut bits, mut bias) = (v.to_bits(), 1022);
    if (bits >> 52) & 0x7ff == 0 {
        // Subnormal: scale into the normal range first.
        bits = (v * f64::from_bits(0x43f0_0000_0000_0000)).to_bits(); // 2^64
        bias += 64;
    }
    let frac = f64::from_bits((bits & !(0x7ffu64 << 52)) | (1022u64 << 52));
    (frac, ((bits >> 52) & 0x7ff) as i32 - bias)
}

/// The bounds of the 256 buckets of schema 8 inside one power of two, as fractions of it
/// (`2^(j/256 − 1)`, `j` in `0..256`): the values Prometheus' Go client defines
/// (client_golang's `nativeHistogramBounds`, which prometheus-client copies), so that an
/// observation on a bucket boundary lands in the bucket Prometheus' own clients put it in.
/// Schema `s` uses every `2^(8−s)`-th of them.
#[rustfmt::skip]
const BOUNDS: [f64; 256] = [
    0.5, 0.5013556375251013, 0.5027149505564014, 0.5040779490592088,
    0.5054446430258502, 0.5068150424757447, 0.5081891574554764, 0.509566998038869,
    0.5109485743270583, 0.5123338964485679, 0.5137229745593818, 0.5151158188430205,
    0.5165124395106142, 0.5179128468009786, 0.5193170509806894, 0.520725062344158,
    0.5221368912137069, 0.5235525479396449, 0.5249720429003435, 0.526395386502313,
    0.5278225891802786, 0.5292536613972564, 0.5306886136446309, 0.5321274564422321,
    0.5335702003384117, 0.5350168559101208, 0.5364674337629877, 0.5379219445313954,
    0.5393803988785598, 0.5408428074966075, 0.5423091811066545, 0.5437795304588847,
    0.5452538663326288, 0.5467321995364429, 0.5482145409081883, 0.549700901315111,
    0.5511912916539204, 0.5526857228508706, 0.5541842058618393, 0.5556867516724088,
    0.5571933712979462, 0.5587040757836845, 0.5602188762048033, 0.5617377836665098,
    0.5632608093041209, 0.564787964283144, 0.5663192597993595, 0.5678547070789026,
    0.5693943173783458, 0.5709381019847808, 0.572486072215902, 0.5740382394200894,
    0.5755946149764913, 0.5771552102951081, 0.5787200368168754, 0.5802891060137493,
    0.5818624293887887, 0.5834400184762408, 0.585021884841625, 0.5866080400818185,
    0.5881984958251406, 0.5897932637314379, 0.5913923554921704, 0.5929957828304968,
    0.5946035575013605, 0.5962156912915756, 0.5978321960199137, 0.5994530835371903,
    0.6010783657263515, 0.6027080545025619, 0.6043421618132907, 0.6059806996384005,
    0.6076236799902344, 0.6092711149137041, 0.6109230164863786, 0.6125793968185725,
    0.6142402680534349, 0.6159056423670379, 0.6175755319684665, 0.6192499490999082,
    0.620928906036742, 0.622612415087629, 0.6243004885946023, 0.6259931389331581,
    0.6276903785123455, 0.6293922197748583, 0.6310986751971253, 0.6328097572894031,
    0.6345254785958666, 0.6362458516947014, 0.637970889198196, 0.6397006037528346,
    0.6414350080393891, 0.6431741147730128, 0.6449179367033329, 0.6466664866145447,
    0.6484197773255048, 0.6501778216898253, 0.6519406325959679, 0.6537082229673385,
    0.6554806057623822, 0.6572577939746774, 0.659039800633032, 0.6608266388015788,
    0.6626183215798706, 0.6644148621029772, 0.6662162735415805, 0.6680225691020727,
    0.6698337620266515, 0.6716498655934177, 0.6734708931164728, 0.6752968579460171,
    0.6771277734684463, 0.6789636531064505, 0.6808045103191123, 0.6826503586020058,
    0.6845012114872953, 0.6863570825438342, 0.688217985377265, 0.690083933630119,
    0.6919549409819159, 0.6938310211492645, 0.6957121878859629, 0.6975984549830999,
    0.6994898362691555, 0.7013863456101023, 0.7032879969095076, 0.7051948041086352,
    0.7071067811865475, 0.7090239421602076, 0.7109463010845827, 0.7128738720527471,
    0.7148066691959849, 0.7167447066838943, 0.718687998724491, 0.7206365595643126,
    0.7225904034885232, 0.7245495448210174, 0.7265139979245261, 0.7284837772007218,
    0.7304588970903234, 0.7324393720732029, 0.7344252166684908, 0.7364164454346837,
    0.7384130729697496, 0.7404151139112358, 0.7424225829363761, 0.7444354947621984,
    0.7464538641456323, 0.7484777058836176, 0.7505070348132126, 0.7525418658117031,
    0.7545822137967112, 0.7566280937263048, 0.7586795205991071, 0.7607365094544071,
    0.762799075372269, 0.7648672334736434, 0.7669409989204777, 0.7690203869158282,
    0.7711054127039704, 0.7731960915705107, 0.7752924388424999, 0.7773944698885442,
    0.7795022001189185, 0.7816156449856788, 0.7837348199827764, 0.7858597406461707,
    0.7879904225539431, 0.7901268813264122, 0.7922691326262467, 0.7944171921585818,
    0.7965710756711334, 0.7987307989543135, 0.8008963778413465, 0.8030678282083853,
    0.805245165974627, 0.8074284071024302, 0.8096175675974316, 0.8118126635086642,
    0.8140137109286738, 0.8162207259936375, 0.8184337248834821, 0.820652723822003,
    0.8228777390769823, 0.8251087869603088, 0.8273458838280969, 0.8295890460808079,
    0.8318382901633681, 0.8340936325652911, 0.8363550898207981, 0.8386226785089391,
    0.8408964152537144, 0.8431763167241966, 0.8454623996346523, 0.8477546807446661,
    0.8500531768592616, 0.8523579048290255, 0.8546688815502312, 0.8569861239649629,
    0.8593096490612387, 0.8616394738731368, 0.8639756154809185, 0.8663180910111553,
    0.8686669176368529, 0.871022112577578, 0.8733836930995842, 0.8757516765159389,
    0.8781260801866495, 0.8805069215187917, 0.8828942179666361, 0.8852879870317771,
    0.8876882462632604, 0.890095013257712, 0.8925083056594671, 0.8949281411607002,
    0.8973545375015533, 0.8997875124702672, 0.9022270839033115, 0.9046732696855155,
    0.9071260877501991, 0.909585556079304, 0.9120516927035263, 0.9145245157024483,
    0.9170040432046711, 0.9194902933879467, 0.9219832844793128, 0.9244830347552253,
    0.9269895625416926, 0.92950288621441, 0.9320230241988943, 0.9345499949706191,
    0.9370838170551498, 0.93962450902828, 0.9421720895161669, 0.9447265771954693,
    0.9472879907934827, 0.9498563490882775, 0.9524316709088368, 0.9550139751351947,
    0.9576032806985735, 0.9601996065815236, 0.9628029718180622, 0.9654133954938133,
    0.9680308967461471, 0.9706554947643201, 0.9732872087896164, 0.9759260581154889,
    0.9785720620876999, 0.9812252401044634, 0.9838856116165875, 0.9865531961276168,
    0.9892280131939752, 0.9919100824251095, 0.9945994234836328, 0.9972960560854698,
];

/// Schema `s`'s bounds inside one power of two (every `2^(8−s)`-th of [`BOUNDS`]).
const fn table<const N: usize>() -> [f64; N] {
    let step = BOUNDS.len() / N;
    let mut t = [0.0; N];
    let mut j = 0;
    while j < N {
        t[j] = BOUNDS[j * step];
        j += 1;
    }
    t
}

static T1: [f64; 2] = table();
static T2: [f64; 4] = table();
static T3: [f64; 8] = table();
static T4: [f64; 16] = table();
static T5: [f64; 32] = table();
static T6: [f64; 64] = table();
static T7: [f64; 128] = table();

/// The bounds inside one power of two of `schema` (none for schemas up to 0, whose
/// buckets span whole powers of two).
pub(crate) fn bounds_of(schema: i8) -> &'static [f64] {
    match schema {
        1 => &T1,
        2 => &T2,
        3 => &T3,
        4 => &T4,
        5 => &T5,
        6 => &T6,
        7 => &T7,
        8 => &BOUNDS,
        _ => &[],
    }
}

/// The bucket of magnitude `v` (finite, > 0) at `schema`: what Prometheus' clients compute.
#[cfg(test)]
pub(crate) fn bucket_index(schema: i8, v: f64) -> i32 {
    bucket_index_in(schema, bounds_of(schema), v)
}

/// [`bucket_index`] with the schema's bounds ([`bounds_of`]) looked up by the caller.
#[inline(always)]
pub(crate) fn bucket_index_in(schema: i8, bounds: &[f64], v: f64) -> i32 {
    let (frac, exp) = frexp(v);
    if schema > 0 {
        // The first bound not below `frac`: for a few bounds, counting them (a fixed count:
        // branch-free and vectorised); for many, a binary search without data-dependent
        // branches.
        let j = match schema {
            1 => below(&T1, frac),
            2 => below(&T2, frac),
            3 => below(&T3, frac),
            4 => below(&T4, frac),
            _ => {
                let (mut base, mut len) = (0usize, bounds.len());
                while len > 1 {
                    let half = len / 2;
                    base = if bounds[base + half - 1] < frac {
                        base + half
                    } else {
                        base
                    };
                    len -= half;
                }
                (base + usize::from(bounds.get(base).is_some_and(|b| *b < frac))) as i32
            }
        };
        j + (exp - 1) * (1 << schema)
    } else {
        let key = if frac == 0.5 { exp - 1 } else { exp };
        let shift = -i32::from(schema);
        (key + (1 << shift) - 1) >> shift
    }
}

/// How many of `bounds` are below `x`.
#[inline(always)]
fn below<const N: usize>(bounds: &[f64; N], x: f64) -> i32 {
    let mut n = 0u32;
    for b in bounds {
        n += u32::from(*b < x);
    }
    n as i32
}

/// Index `i` at schema `from` as an index at the coarser schema `to` (`to <= from`).
#[inline]
pub(crate) fn reduce_index(i: i32, from: i8, to: i8) -> i32 {
    let d = i32::from(from) - i32::from(to);
    debug_assert!(d >= 0);
    (((i64::from(i) - 1) >> d) + 1) as i32
}

/// Upper bound of bucket `i` at `schema` (its magnitude; the lower bound is that of
/// bucket `i − 1`).
pub(crate) fn upper_bound(schema: i8, i: i32) -> f64 {
    (f64::from(i) * (-f64::from(schema)).exp2()).exp2()
}

/// A bucket key as the files and the merge use it: index, schema, side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct BucketKey {
    pub negative: bool,
    pub schema: i8,
    pub index: i32,
}

impl BucketKey {
    /// Packed in one word: index in bits 0–31, schema in bits 32–39, side in bit 40 (how
    /// removal baselines store bucket counts).
    pub(crate) fn word(self) -> u64 {
        u64::from(self.index as u32) | (u64::from(self.schema as u8) << 32) | (u64::from(self.negative) << 40)
    }

    pub(crate) fn from_word(w: u64) -> Option<Self> {
        if w >> 41 != 0 {
            return None;
        }
        let key = BucketKey {
            index: w as u32 as i32,
            schema: (w >> 32) as u8 as i8,
            negative: (w >> 40) & 1 == 1,
        };
        (MIN_SCHEMA..=MAX_SCHEMA).contains(&key.schema).then_some(key)
    }
}

/// Identity of a chunk: the series it belongs to (byte offset of its first value slot),
/// side, schema and chunk number (buckets `16·chunk` to `16·chunk + 15`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ChunkId {
    pub series_offset: u32,
    pub negative: bool,
    pub schema: i8,
    pub chunk: i16,
}

impl ChunkId {
    /// Word 1 of a chunk record.
    pub(crate) fn word(self) -> u64 {
        let high = u64::from(self.chunk as u16)
            | (u64::from(self.schema as u8) << 16)
            | (u64::from(self.negative) << 24);
        u64::from(self.series_offset) | (high << 32)
    }

    pub(crate) fn from_word(w: u64) -> Result<Self, String> {
        let high = (w >> 32) as u32;
        if high >> 25 != 0 {
            return Err("reserved chunk bits set".into());
        }
        let id = ChunkId {
            series_offset: w as u32,
            chunk: high as u16 as i16,
            schema: (high >> 16) as u8 as i8,
            negative: (high >> 24) & 1 == 1,
        };
        if !(MIN_SCHEMA..=MAX_SCHEMA).contains(&id.schema) {
            return Err(format!("chunk schema {} out of range", id.schema));
        }
        Ok(id)
    }

    /// The chunk holding bucket `index`.
    pub(crate) fn chunk_of(index: i32) -> i16 {
        index.div_euclid(CHUNK_BUCKETS) as i16
    }

    /// The bucket of count `j` (0..16) of this chunk.
    pub(crate) fn bucket(self, j: usize) -> BucketKey {
        BucketKey {
            negative: self.negative,
            schema: self.schema,
            index: i32::from(self.chunk) * CHUNK_BUCKETS + j as i32,
        }
    }
}

/// The 16 counts of a chunk's 8 words.
pub(crate) fn chunk_counts(words: &[u64]) -> impl Iterator<Item = (usize, u64)> + '_ {
    words
        .iter()
        .take(CHUNK_WORDS)
        .flat_map(|w| [*w & 0xffff_ffff, *w >> 32])
        .enumerate()
        .filter(|(_, c)| *c != 0)
}

/// Merged native buckets of one series, on the way to their exposition: every bucket
/// brought to one schema, the zero bucket widened to one threshold.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Sparse {
    pub schema: i8,
    pub zero_threshold: f64,
    pub zero_count: u64,
    /// (index, count), sorted by index, no zero count.
    pub positive: Vec<(i32, u64)>,
    pub negative: Vec<(i32, u64)>,
}

impl Sparse {
    /// Brings `buckets` (of any schemas) and `zero_count` to `schema` (at most the lowest
    /// schema among them), then, when `widened` (the buckets were recorded under a narrower
    /// zero bucket than `zero_threshold`), moves every bucket that reaches below the
    /// threshold into the zero bucket, the threshold growing to the upper bound of the last
    /// one moved; then halves the resolution until at most `max_buckets` are left (0: no
    /// limit), down to the lowest schema. Counts are only ever moved, never dropped.
    pub(crate) fn build(
        buckets: &[(BucketKey, u64)],
        zero_count: u64,
        schema: i8,
        zero_threshold: f64,
        widened: bool,
        max_buckets: u32,
    ) -> Sparse {
        let schema = buckets.iter().map(|(k, _)| k.schema).fold(schema, i8::min);
        let mut out = Sparse {
            schema,
            zero_threshold,
            zero_count,
            positive: Vec::new(),
            negative: Vec::new(),
        };
        for (k, n) in buckets {
            let i = reduce_index(k.index, k.schema, schema);
            if k.negative {
                out.negative.push((i, *n));
            } else {
                out.positive.push((i, *n));
            }
        }
        out.coalesce();
        if widened {
            out.widen_zero();
        }
        while max_buckets > 0 && out.len() > max_buckets as usize && out.schema > MIN_SCHEMA {
            out.reduce(out.schema - 1);
        }
        out
    }

    /// Number of buckets (both sides).
    pub(crate) fn len(&self) -> usize {
        self.positive.len() + self.negative.len()
    }

    fn coalesce(&mut self) {
        for side in [&mut self.positive, &mut self.negative] {
            side.sort_unstable_by_key(|(i, _)| *i);
            let mut out: Vec<(i32, u64)> = Vec::with_capacity(side.len());
            for (i, n) in side.drain(..) {
                match out.last_mut() {
                    Some((j, m)) if *j == i => *m = m.saturating_add(n),
                    _ if n == 0 => {}
                    _ => out.push((i, n)),
                }
            }
            *side = out;
        }
    }

    /// Moves the buckets that reach below the zero threshold into the zero bucket (their
    /// lower bound is below it), and grows the threshold to cover them.
    fn widen_zero(&mut self) {
        let schema = self.schema;
        let mut threshold = self.zero_threshold;
        let mut moved = 0u64;
        for side in [&mut self.positive, &mut self.negative] {
            let inside = side.partition_point(|(i, _)| upper_bound(schema, *i - 1) < self.zero_threshold);
            for (i, n) in side.drain(..inside) {
                moved = moved.saturating_add(n);
                threshold = threshold.max(upper_bound(schema, i));
            }
        }
        self.zero_count = self.zero_count.saturating_add(moved);
        self.zero_threshold = threshold;
    }

    /// Brings every bucket to the coarser `schema`.
    fn reduce(&mut self, schema: i8) {
        let from = self.schema;
        for side in [&mut self.positive, &mut self.negative] {
            for (i, _) in side.iter_mut() {
                *i = reduce_index(*i, from, schema);
            }
        }
        self.schema = schema;
        self.coalesce();
    }

    /// One side as Prometheus' protobuf carries it: spans (offset from the end of the
    /// previous span, length) and count deltas. Gaps of up to two empty buckets are
    /// written as zero counts rather than as a new span (as Go's client does).
    pub(crate) fn spans_and_deltas(side: &[(i32, u64)]) -> (Vec<(i32, u32)>, Vec<i64>) {
        let mut spans: Vec<(i32, u32)> = Vec::new();
        let mut deltas = Vec::with_capacity(side.len());
        let mut prev_count = 0i64;
        let mut next = 0i32;
        for (n, &(i, count)) in side.iter().enumerate() {
            let gap = i - next;
            if n == 0 || gap > 2 {
                spans.push((gap, 0));
            } else {
                for _ in 0..gap {
                    deltas.push(-prev_count);
                    prev_count = 0;
                    if let Some(s) = spans.last_mut() {
                        s.1 += 1;
                    }
                }
            }
            let c = i64::try_from(count).unwrap_or(i64::MAX);
            deltas.push(c - prev_count);
            prev_count = c;
            if let Some(s) = spans.last_mut() {
                s.1 += 1;
            }
            next = i + 1;
        }
        (spans, deltas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index by definition (slow, exact up to the rounding of `log2`), away from
    /// bucket boundaries.
    fn by_definition(schema: i8, v: f64) -> i32 {
        (v.log2() * f64::from(schema).exp2()).ceil() as i32
    }

    #[test]
    fn indexes_follow_the_definition() {
        for schema in MIN_SCHEMA..=MAX_SCHEMA {
            for v in [1e-300, 3e-9, 0.001, 0.3, 0.7, 1.3, 3.0, 7.5, 1234.5, 6e9, 1e300] {
                assert_eq!(bucket_index(schema, v), by_definition(schema, v), "{schema} {v}");
            }
            // Powers of two are upper bounds, inclusive.
            for e in [-1074, -1022, -10, -1, 0, 1, 10, 1023] {
                let v = f64::from(e).exp2();
                let i = bucket_index(schema, v);
                assert!(upper_bound(schema, i) >= v, "{schema} 2^{e}");
                // (Below 2^-1073 the lower bound itself rounds to the smallest subnormal.)
                if e > -1074 {
                    assert!(upper_bound(schema, i - 1) < v, "{schema} 2^{e}");
                }
            }
        }
        assert_eq!(bucket_index(0, 1.0), 0);
        assert_eq!(bucket_index(0, 1.5), 1);
        assert_eq!(bucket_index(0, 2.0), 1);
        assert_eq!(bucket_index(3, 1.0), 0);
        assert_eq!(bucket_index(-1, 4.0), 1);
        assert_eq!(bucket_index(-1, 4.5), 2);
    }

    #[test]
    fn reduction_nests_buckets() {
        for schema in (MIN_SCHEMA + 1)..=MAX_SCHEMA {
            for v in [1e-200, 1e-5, 0.1, 0.9, 1.0, 1.1, 2.0, 3.3, 1e5, 1e200] {
                for to in MIN_SCHEMA..=schema {
                    assert_eq!(
                        reduce_index(bucket_index(schema, v), schema, to),
                        bucket_index(to, v),
                        "{v} from {schema} to {to}"
                    );
                }
            }
        }
    }

    #[test]
    fn sparse_moves_counts_never_drops_them() {
        let k = |schema, index, negative| BucketKey {
            negative,
            schema,
            index,
        };
        let buckets = [
            (k(3, 10, false), 2),
            (k(3, 11, false), 3),
            (k(2, 5, false), 1),
            (k(3, -200, false), 4),
            (k(3, 7, true), 5),
        ];
        let s = Sparse::build(&buckets, 6, 3, 1e-3, true, 0);
        assert_eq!(s.schema, 2);
        let count =
            |s: &Sparse| s.positive.iter().chain(&s.negative).map(|b| b.1).sum::<u64>() + s.zero_count;
        assert_eq!(count(&s), 2 + 3 + 1 + 4 + 5 + 6);
        // 2^(-200/8) = 2^-25 < 1e-3: into the zero bucket.
        assert_eq!(s.zero_count, 10);
        assert_eq!(s.positive, vec![(5, 2 + 1), (6, 3)]);
        assert_eq!(s.negative, vec![(4, 5)]);
        let limited = Sparse::build(&buckets, 6, 3, 1e-3, true, 2);
        let kept = Sparse::build(&buckets, 6, 3, 1e-3, false, 0);
        assert_eq!(kept.zero_count, 6, "the declared zero bucket moves nothing");
        assert!(limited.len() <= 2 && count(&limited) == count(&s), "{limited:?}");
        assert_eq!(limited.schema, 1);
    }

    #[test]
    fn spans_and_deltas_as_go_writes_them() {
        let (spans, deltas) = Sparse::spans_and_deltas(&[(-2, 1), (-1, 2), (1, 3), (10, 1)]);
        assert_eq!(spans, vec![(-2, 4), (8, 1)]);
        assert_eq!(deltas, vec![1, 1, -2, 3, -2]);
    }

    #[test]
    fn words_round_trip() {
        let id = ChunkId {
            series_offset: 4096,
            negative: true,
            schema: -4,
            chunk: -17184,
        };
        assert_eq!(ChunkId::from_word(id.word()).unwrap(), id);
        let k = BucketKey {
            negative: true,
            schema: 8,
            index: -274944,
        };
        assert_eq!(BucketKey::from_word(k.word()), Some(k));
        assert_eq!(ChunkId::chunk_of(-1), -1);
        assert_eq!(ChunkId::chunk_of(15), 0);
        assert_eq!(ChunkId::chunk_of(16), 1);
    }
}
