//! The exact LRU pass without sampling decisions: slots, trees, and hit
//! counts per grid point (see the [module docs](super) for what it is
//! exact for). Shared by [`LruModel`](super::LruModel) and the stack
//! model, which samples once for all its tiers.

use super::{fenwick::Fenwick, hist_max::HistMax};
use crate::sizing::{
    KeyMap,
    estimate::{Counts, SampledTotals},
};

#[derive(Debug, Clone)]
enum Index {
    Fen(Fenwick),
    Hist(HistMax),
}

/// One stack-distance structure: shared by every grid point no object has
/// exceeded yet (`filter: None`), or private to one grid point.
#[derive(Debug, Clone)]
struct Tree {
    /// `Some((capacity, grid index))`: objects above `capacity` weigh 0.
    filter: Option<(u64, usize)>,
    index: Index,
}

impl Tree {
    /// What an object of `size` bytes, of stored weight `stored` (its size,
    /// or for a key modelled exactly among sampled ones, its size × rate),
    /// weighs in this tree.
    #[inline]
    fn weight(&self, size: u64, stored: u64) -> u64 {
        match self.filter {
            Some((cap, _)) if size > cap => 0,
            _ => stored,
        }
    }

    /// Bytes above `slot` (its historical maximum since its last request,
    /// once sizes have shrunk).
    #[inline]
    fn above(&mut self, slot: usize) -> u64 {
        match &mut self.index {
            Index::Fen(f) => f.above(slot),
            Index::Hist(h) => h.get(slot).1.max(0) as u64,
        }
    }

    #[inline]
    fn add(&mut self, slot: usize, delta: i64) {
        match &mut self.index {
            Index::Fen(f) => f.add(slot, delta as u64),
            Index::Hist(h) => h.add_below(slot, delta),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct KeyState {
    slot: u32,
    /// Modelled exactly (every request) while others are sampled.
    exact: bool,
    size: u64,
}

/// The weight in the trees of a key of `size` (see [`Tree::weight`]):
/// sampled keys stand for 1 / rate keys each, so a key modelled exactly
/// weighs its size × rate (as of the last rebuild, `exact_rate`).
#[inline]
fn stored(size: u64, exact: bool, exact_rate: f64) -> u64 {
    if exact && exact_rate < 1.0 {
        ((size as f64 * exact_rate).round() as u64).max(1)
    } else {
        size
    }
}

/// The model without sampling decisions: shared by [`LruModel`] and the
/// stack model, which samples once for all its tiers.
#[derive(Debug, Clone)]
pub(crate) struct LruCore {
    grid: Vec<u64>,
    keys: KeyMap<KeyState>,
    trees: Vec<Tree>,
    /// Grid points from here on are served by `trees[0]`.
    shared_from: usize,
    next_slot: usize,
    slots: usize,
    /// Hits counted at the first grid index a distance fits (shared tree):
    /// a hit there is a hit at every larger shared grid point.
    from: Vec<Counts>,
    /// Hits at filtered grid points.
    direct: Vec<Counts>,
    /// Compile cost of every sampled request (a miss costs it).
    compile_all: f64,
    /// Compile cost of the first requests of each key (cold misses).
    pub(crate) cold_compile: f64,
    pub(crate) sampled: SampledTotals,
    live_bytes: u64,
    /// 1 / sampling rate, applied to distances.
    scale: f64,
    /// Per grid point, the largest unscaled distance that still hits there
    /// (`grid[i] / scale`): integer compares on the hot path.
    thresholds: Vec<u64>,
    /// One bit per slot: is it some key's latest slot (compaction ranks
    /// them instead of sorting the keys).
    live_slots: Vec<u64>,
    /// [`SizeOnHit::Keep`](super::SizeOnHit::Keep): a hit keeps the stored size (one grid point).
    pub(super) keep: bool,
    /// The rate exact keys' tree weights were computed at (see [`stored`]).
    exact_rate: f64,
    /// Keys modelled exactly, and their bytes.
    exact_keys: usize,
    exact_bytes: u64,
}

impl LruCore {
    pub(crate) fn new(grid: &[u64]) -> Self {
        let grid = crate::sizing::normalize_grid(grid);
        let grid_copy = grid.clone();
        let slots = 1024;
        LruCore {
            from: vec![Counts::default(); grid.len()],
            direct: vec![Counts::default(); grid.len()],
            grid,
            keys: KeyMap::default(),
            trees: vec![Tree {
                filter: None,
                index: Index::Fen(Fenwick::new(slots)),
            }],
            shared_from: 0,
            next_slot: 0,
            slots,
            compile_all: 0.0,
            cold_compile: 0.0,
            sampled: SampledTotals::default(),
            live_bytes: 0,
            scale: 1.0,
            thresholds: grid_copy,
            live_slots: vec![0; slots.div_ceil(64)],
            keep: false,
            exact_rate: 1.0,
            exact_keys: 0,
            exact_bytes: 0,
        }
    }

    /// Set 1 / sampling rate, the factor applied to distances.
    pub(crate) fn set_scale(&mut self, scale: f64) {
        self.scale = scale;
        if self.exact_keys == 0 {
            self.exact_rate = 1.0 / scale;
        }
        self.thresholds = self
            .grid
            .iter()
            .map(|&c| {
                if scale == 1.0 {
                    c
                } else {
                    // Saturating float-to-int: a distance d hits at c iff
                    // d * scale <= c.
                    (c as f64 / scale).floor() as u64
                }
            })
            .collect();
    }

    pub(crate) fn grid(&self) -> &[u64] {
        &self.grid
    }

    /// Distinct keys seen (estimated when sampled): sampled keys stand for
    /// 1 / rate keys each, keys modelled exactly for themselves.
    pub(crate) fn distinct(&self) -> u64 {
        let sampled = (self.keys.len() - self.exact_keys) as f64 * self.scale;
        (sampled + self.exact_keys as f64).round() as u64
    }

    /// Bytes of the distinct keys at their last size (estimated likewise).
    pub(crate) fn live_bytes(&self) -> u64 {
        (self.live_bytes as f64 * self.scale + self.exact_bytes as f64).round() as u64
    }

    /// One request of a sampled key; `compile` its cost if it misses.
    /// Returns whether the key was new to the model.
    /// `exact`: the key is modelled at every request while others are
    /// sampled (its requests count 1, not 1 / rate).
    pub(crate) fn access(
        &mut self,
        key: u64,
        bytes: u64,
        compile: Option<f64>,
        exact: bool,
    ) -> bool {
        let mut size = crate::sizing::weight(bytes);
        if self.keep
            && let Some(&o) = self.keys.get(&key)
            && o.size != size
            && self.resident(o)
        {
            // A hit keeps the size the object is stored with.
            size = o.size;
        }
        // Grid points this object exceeds get their own trees first.
        while self.shared_from < self.grid.len() && self.grid[self.shared_from] < size {
            let g = self.shared_from;
            let mut t = self.trees[0].clone();
            t.filter = Some((self.grid[g], g));
            self.trees.push(t);
            self.shared_from += 1;
        }
        if self.next_slot >= self.slots {
            self.compact();
        }
        let slot = self.next_slot;
        self.next_slot += 1;
        self.live_slots[slot / 64] |= 1 << (slot % 64);
        let new = KeyState {
            slot: slot as u32,
            exact,
            size,
        };
        // One hash lookup: read the old state and write the new.
        let old = match self.keys.entry(key) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                Some(std::mem::replace(e.get_mut(), new))
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(new);
                None
            }
        };
        if let Some(o) = old {
            let s = o.slot as usize;
            self.live_slots[s / 64] &= !(1 << (s % 64));
        }
        // A shrinking weight: from now on "bytes above" is not monotone,
        // so that tree keeps historical maxima (built from the state
        // before this request).
        let xr = self.exact_rate;
        let now_stored = stored(size, exact, xr);
        if let Some(o) = old
            && o.size != size
        {
            for ti in 0..self.trees.len() {
                let t = &self.trees[ti];
                if t.weight(size, now_stored) < t.weight(o.size, stored(o.size, o.exact, xr))
                    && matches!(t.index, Index::Fen(_))
                {
                    self.upgrade(ti, (key, o));
                }
            }
        }
        // Counts are "at the current rate": a sampled request counts 1, a
        // request of a key modelled exactly counts the rate (it stands for
        // itself alone), so that count / rate estimates the whole.
        let unit = if exact { 1.0 / self.scale } else { 1.0 };
        self.sampled.requests += unit;
        self.sampled.bytes += size as f64 * unit;
        let cost = compile.unwrap_or(0.0) * unit;
        self.compile_all += cost;
        if old.is_none() {
            self.cold_compile += cost;
        }
        if exact {
            self.exact_keys += usize::from(old.is_none());
            self.exact_bytes = self
                .exact_bytes
                .wrapping_sub(old.map_or(0, |o| o.size))
                .wrapping_add(size);
        } else {
            self.live_bytes = self
                .live_bytes
                .wrapping_sub(old.map_or(0, |o| o.size))
                .wrapping_add(size);
        }
        let hit_counts = Counts {
            hits: unit,
            hit_bytes: size as f64 * unit,
            miss_compile: cost,
        };
        let all_shared = self.shared_from < self.grid.len();
        for ti in 0..self.trees.len() {
            let tree = &mut self.trees[ti];
            if tree.filter.is_none() && !all_shared {
                continue; // no grid point left for the shared tree
            }
            if let Some(o) = old {
                let was = tree.weight(o.size, stored(o.size, o.exact, xr));
                let cap = tree.filter.map_or(u64::MAX, |f| f.0);
                if was > 0 && o.size <= cap {
                    // The bytes above are sampled: they stand for 1 / rate
                    // times as many; the object's own size is known exactly.
                    // So compare `own × rate + above` with `capacity × rate`
                    // (scaling the whole distance, as SHARDS does for unit
                    // sizes, would count a large object 1 / rate times).
                    let own = if self.scale == 1.0 {
                        o.size
                    } else {
                        (o.size as f64 / self.scale) as u64
                    };
                    let d = own.saturating_add(tree.above(o.slot as usize));
                    match tree.filter {
                        Some((_, g)) => {
                            if d <= self.thresholds[g] {
                                add_counts(&mut self.direct[g], &hit_counts);
                            }
                        }
                        None => {
                            // A branch-free count (a binary search over a
                            // few points mispredicts or serializes).
                            let g = self.shared_from
                                + self.thresholds[self.shared_from..]
                                    .iter()
                                    .map(|&t| usize::from(t < d))
                                    .sum::<usize>();
                            if g < self.grid.len() {
                                add_counts(&mut self.from[g], &hit_counts);
                            }
                        }
                    }
                }
                if was > 0 {
                    tree.add(o.slot as usize, -(was as i64));
                }
            }
            let tree = &mut self.trees[ti];
            if let Index::Hist(h) = &mut tree.index {
                h.reset(slot);
            }
            let now = tree.weight(size, now_stored);
            if now > 0 {
                tree.add(slot, now as i64);
            }
        }
        old.is_none()
    }

    /// Under [`SizeOnHit::Keep`](super::SizeOnHit::Keep) (one grid point): whether a key in state
    /// `o` is resident now, so that this request hits.
    fn resident(&mut self, o: KeyState) -> bool {
        let cap = self.grid.first().copied().unwrap_or(0);
        if o.size > cap {
            return false; // never admitted
        }
        // The shared tree, or once an object exceeded the one grid point,
        // that point's own tree.
        let ti = if self.shared_from == 0 {
            0
        } else {
            self.trees.len() - 1
        };
        let own = if self.scale == 1.0 {
            o.size
        } else {
            (o.size as f64 / self.scale) as u64
        };
        let above = self.trees[ti].above(o.slot as usize);
        own.saturating_add(above) <= self.thresholds[0]
    }

    /// Stop modelling `key` (it left the sample).
    pub(crate) fn forget(&mut self, key: u64) {
        if let Some(o) = self.keys.remove(&key) {
            let s = o.slot as usize;
            self.live_slots[s / 64] &= !(1 << (s % 64));
            if o.exact {
                self.exact_keys -= 1;
                self.exact_bytes = self.exact_bytes.wrapping_sub(o.size);
            } else {
                self.live_bytes = self.live_bytes.wrapping_sub(o.size);
            }
            let xr = self.exact_rate;
            for tree in &mut self.trees {
                let w = tree.weight(o.size, stored(o.size, o.exact, xr));
                if w > 0 {
                    tree.add(o.slot as usize, -(w as i64));
                }
            }
        }
    }

    /// Multiply every sampled count by `factor` (the rate was lowered).
    pub(crate) fn rescale(&mut self, factor: f64) {
        for c in self.from.iter_mut().chain(self.direct.iter_mut()) {
            c.scale(factor);
        }
        self.compile_all *= factor;
        self.cold_compile *= factor;
        self.sampled.scale(factor);
        self.set_scale(self.scale / factor);
        // Keys modelled exactly weigh size × rate in the trees: rebuilt
        // when the rate has fallen by 2 % since (between rebuilds they
        // weigh at most 2 % too much).
        let rate = 1.0 / self.scale;
        if self.exact_keys > 0 && rate < self.exact_rate * 0.98 {
            self.exact_rate = rate;
            self.compact();
        }
    }

    /// The hit counts per grid point.
    pub(crate) fn counts(&self) -> Vec<Counts> {
        let mut acc = Counts::default();
        let mut out = Vec::with_capacity(self.grid.len());
        for g in 0..self.grid.len() {
            add_counts(&mut acc, &self.from[g]);
            let mut c = acc;
            add_counts(&mut c, &self.direct[g]);
            // Misses cost what every request costs minus what hits cost.
            c.miss_compile = (self.compile_all - c.miss_compile).max(0.0);
            out.push(c);
        }
        out
    }

    /// Switch tree `ti` to the historical-maximum index: sizes shrank.
    /// `before` is the state the key map already overwrote.
    fn upgrade(&mut self, ti: usize, before: (u64, KeyState)) {
        let mut weights = self.slot_weights(ti, self.slots);
        if let Some(now) = self.keys.get(&before.0)
            && let Some(w) = weights.get_mut(now.slot as usize)
        {
            *w = 0;
        }
        if let Some(w) = weights.get_mut(before.1.slot as usize) {
            let b = before.1;
            *w = self.trees[ti].weight(b.size, stored(b.size, b.exact, self.exact_rate));
        }
        let mut values = vec![0i64; self.slots];
        let mut above = 0i64;
        for s in (0..self.slots).rev() {
            values[s] = above;
            above = above.saturating_add(weights[s] as i64);
        }
        self.trees[ti].index = Index::Hist(HistMax::from_values(&values, &values));
    }

    fn slot_weights(&self, ti: usize, len: usize) -> Vec<u64> {
        let tree = &self.trees[ti];
        let mut w = vec![0u64; len];
        for k in self.keys.values() {
            if let Some(x) = w.get_mut(k.slot as usize) {
                *x = tree.weight(k.size, stored(k.size, k.exact, self.exact_rate));
            }
        }
        w
    }

    /// Renumber live slots 0..n in order, growing the slot space when more
    /// than a quarter of it is live.
    fn compact(&mut self) {
        let live = self.keys.len();
        let mut slots = self.slots;
        // At least four slots per live key: a compaction every three
        // requests per key at worst (with two, compactions took a fifth of
        // a pass over 10 k keys).
        while live * 4 > slots {
            slots *= 2;
        }
        // A live slot's new number is its rank among live slots: count the
        // bits below it (no sort of the keys).
        let mut rank = Vec::with_capacity(self.live_slots.len());
        let mut acc = 0u32;
        for &w in &self.live_slots {
            rank.push(acc);
            acc += w.count_ones();
        }
        let bits = &self.live_slots;
        let renumber = |s: u32| -> u32 {
            let w = (s / 64) as usize;
            let below = bits[w] & ((1u64 << (s % 64)) - 1);
            rank[w] + below.count_ones()
        };
        // Historical maxima survive: read them before renumbering, in slot
        // order (the new order).
        let hists: Vec<Option<Vec<i64>>> = (0..self.trees.len())
            .map(|ti| match &mut self.trees[ti].index {
                Index::Hist(h) => Some(live_slots(bits).map(|s| h.get(s as usize).1).collect()),
                Index::Fen(_) => None,
            })
            .collect();
        for k in self.keys.values_mut() {
            k.slot = renumber(k.slot);
        }
        self.live_slots = vec![0; slots.div_ceil(64)];
        for s in 0..live {
            self.live_slots[s / 64] |= 1 << (s % 64);
        }
        self.slots = slots;
        self.next_slot = live;
        for (ti, hist) in hists.into_iter().enumerate() {
            let weights = self.slot_weights(ti, slots);
            self.trees[ti].index = match hist {
                None => Index::Fen(Fenwick::from_weights(&weights)),
                Some(h) => {
                    let mut values = vec![0i64; slots];
                    let mut above = 0i64;
                    for s in (0..slots).rev() {
                        values[s] = above;
                        above = above.saturating_add(weights[s] as i64);
                    }
                    let mut hv = values.clone();
                    hv[..live].copy_from_slice(&h);
                    Index::Hist(HistMax::from_values(&values, &hv))
                }
            };
        }
    }

    /// Bytes of model state per modelled key, roughly.
    pub(crate) fn bytes_per_key(&self) -> usize {
        let map = std::mem::size_of::<(u64, KeyState)>() + 1;
        let per_tree: usize = self
            .trees
            .iter()
            .map(|t| match t.index {
                Index::Fen(_) => 8,
                Index::Hist(_) => 32,
            })
            .sum();
        // Slot space is four to eight times the live keys (one live bit
        // each too); the map's load factor about 7/8.
        map * 8 / 7 + 8 * per_tree + 1
    }
}

/// The set bits of a bitmap, in order.
fn live_slots(bits: &[u64]) -> impl Iterator<Item = u32> + '_ {
    bits.iter().enumerate().flat_map(|(w, &word)| {
        let mut word = word;
        std::iter::from_fn(move || {
            (word != 0).then(|| {
                let b = word.trailing_zeros();
                word &= word - 1;
                w as u32 * 64 + b
            })
        })
    })
}

#[inline]
fn add_counts(acc: &mut Counts, c: &Counts) {
    acc.hits += c.hits;
    acc.hit_bytes += c.hit_bytes;
    acc.miss_compile += c.miss_compile;
}
