//! The gallery's own HNSW engine, `FlatHnsw`, behind the same [`VectorIndex`] seam as usearch:
//! faiss's memory layout (every vector in one array, every node's level-0 neighbours in
//! another, both indexed by slot), the project's float32 inner-product kernels, neighbours'
//! vectors prefetched before they are scored, and inserts that cannot race: a batch of new
//! nodes first searches the graph as it stood (in parallel, reading only), then each old node
//! that gains links is rewritten by exactly one task, and the results are copied in on one
//! thread. Nothing is shared mutably, so the stranded-node race of usearch's concurrent inserts
//! (usearch#735) cannot happen here by construction. Removal marks a slot deleted: it still
//! routes searches and is never returned (as in hnswlib).

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::durable::DurableStore;
use super::index::VectorIndex;
use super::kernel::Kernel;
use super::{GalleryError, Hit, Result};

/// The embedded gallery store over the project's own HNSW engine.
pub type FlatHnswStore = DurableStore<FlatHnsw>;

/// HNSW settings of the project's engine (0 = the default; the same meaning as usearch's).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct FlatHnswConfig {
    /// Graph degree M above level 0 (level 0 holds 2M; default 16).
    pub connectivity: usize,
    /// Candidate list size while inserting (default 128).
    pub expansion_add: usize,
    /// Candidate list size while searching (default 64).
    pub expansion_search: usize,
    /// The log is folded into a snapshot once it grows past this many bytes (0: 256 MiB).
    pub checkpoint_bytes: u64,
}

impl FlatHnswConfig {
    fn m(&self) -> usize {
        if self.connectivity == 0 {
            16
        } else {
            self.connectivity
        }
    }
    fn ef_add(&self) -> usize {
        if self.expansion_add == 0 {
            128
        } else {
            self.expansion_add
        }
    }
    fn ef_search(&self) -> usize {
        if self.expansion_search == 0 {
            64
        } else {
            self.expansion_search
        }
    }
}

/// No slot: the empty graph's entry point.
const NONE: u32 = u32::MAX;
/// The highest level a node can have (a level is drawn with probability M^-level).
const MAX_LEVEL: usize = 24;
/// A batch of inserts is at most this share of the graph it searches (1/32): its nodes do not
/// see one another while they choose neighbours, so a small share keeps the graph close to
/// one-at-a-time insertion; below 32 nodes every insert is its own batch.
const BATCH_SHARE: usize = 32;
/// The snapshot file's first bytes, then its format version.
const MAGIC: &[u8; 8] = b"BCLHNSW\0";
const VERSION: u32 = 1;

/// A candidate: a slot and its inner product with the query, ordered by score.
#[derive(Clone, Copy, Debug)]
struct Cand {
    score: f32,
    slot: u32,
}

impl PartialEq for Cand {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cand {
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.slot.cmp(&self.slot))
    }
}

/// Which slots a search has visited: a stamp per slot, one table per thread, cleared by
/// moving to the next stamp.
struct Visited {
    stamps: Vec<u16>,
    now: u16,
}

impl Visited {
    fn begin(&mut self, n: usize) {
        if self.stamps.len() < n {
            self.stamps.resize(n, 0);
        }
        self.now = self.now.wrapping_add(1);
        if self.now == 0 {
            self.stamps.iter_mut().for_each(|s| *s = 0);
            self.now = 1;
        }
    }
    /// Marks `slot`; true when it was not marked yet.
    #[inline(always)]
    fn first_visit(&mut self, slot: u32) -> bool {
        let s = &mut self.stamps[slot as usize];
        let fresh = *s != self.now;
        *s = self.now;
        fresh
    }
}

/// What one thread's searches reuse from one search to the next: the visited table, both
/// heaps and the list of a node's unvisited neighbours (no allocation per search).
struct Scratch {
    visited: Visited,
    /// Candidates to expand, best on top.
    todo: BinaryHeap<Cand>,
    /// The best found so far, worst on top.
    best: BinaryHeap<Reverse<Cand>>,
    fresh: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch {
            visited: Visited { stamps: Vec::new(), now: 0 },
            todo: BinaryHeap::new(),
            best: BinaryHeap::new(),
            fresh: Vec::new(),
        })
    };
}

/// The project's HNSW graph over inner products of float32 vectors (see the module comment).
pub struct FlatHnsw {
    dim: usize,
    /// Degree above level 0, and at level 0 (2M).
    m: usize,
    m0: usize,
    ef_add: usize,
    ef_search: usize,
    kernel: Kernel,
    /// `dim` floats per slot.
    vectors: Vec<f32>,
    /// `m0 + 1` per slot: the count, then the neighbours.
    links0: Vec<u32>,
    /// Per slot, levels 1..=level, `m + 1` each (count, then neighbours).
    upper: Vec<Vec<u32>>,
    level: Vec<u8>,
    ids: Vec<u64>,
    deleted: Vec<bool>,
    slot_of: HashMap<u64, u32>,
    entry: u32,
    top: usize,
}

/// A level drawn from the slot's position: deterministic, so that a build is reproducible.
fn draw_level(slot: usize, m: usize) -> usize {
    // splitmix64 of the slot
    let mut z = (slot as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let u = ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let level = (-u.ln() / (m as f64).ln()).floor();
    (level as usize).min(MAX_LEVEL)
}

#[inline(always)]
fn prefetch(p: *const f32, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let mut off = 0;
        while off < bytes.min(512) {
            // SAFETY: prefetching never faults, whatever the address.
            unsafe { _mm_prefetch(p.cast::<i8>().wrapping_add(off), _MM_HINT_T0) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, bytes);
}

impl FlatHnsw {
    fn empty(dim: usize, m: usize, config: &FlatHnswConfig) -> Result<Self> {
        if dim == 0 {
            return Err(GalleryError::Invalid("dimension must be at least 1".into()));
        }
        if !(2..=1024).contains(&m) {
            return Err(GalleryError::Invalid(format!(
                "connectivity must lie in 2..=1024, got {m}"
            )));
        }
        Ok(Self {
            dim,
            m,
            m0: 2 * m,
            ef_add: config.ef_add(),
            ef_search: config.ef_search(),
            kernel: Kernel::detect(),
            vectors: Vec::new(),
            links0: Vec::new(),
            upper: Vec::new(),
            level: Vec::new(),
            ids: Vec::new(),
            deleted: Vec::new(),
            slot_of: HashMap::new(),
            entry: NONE,
            top: 0,
        })
    }

    fn slots(&self) -> usize {
        self.ids.len()
    }

    #[inline(always)]
    fn vector(&self, slot: u32) -> &[f32] {
        let s = slot as usize * self.dim;
        &self.vectors[s..s + self.dim]
    }

    #[inline(always)]
    fn score(&self, q: &[f32], slot: u32) -> f32 {
        let p = self.vectors.as_ptr().wrapping_add(slot as usize * self.dim);
        debug_assert!((slot as usize) < self.slots() && q.len() == self.dim);
        // SAFETY: `slot` is below the slot count (every stored link is; checked on load), so
        // `p` starts `dim` readable floats, as does `q`; the kernel was detected on this CPU.
        unsafe { self.kernel.dot_ptr(q.as_ptr(), p, self.dim) }
    }

    fn cap(&self, level: usize) -> usize {
        if level == 0 {
            self.m0
        } else {
            self.m
        }
    }

    #[inline(always)]
    fn links(&self, slot: u32, level: usize) -> &[u32] {
        if level == 0 {
            let b = slot as usize * (self.m0 + 1);
            let n = self.links0[b] as usize;
            &self.links0[b + 1..b + 1 + n]
        } else {
            let v = &self.upper[slot as usize];
            let b = (level - 1) * (self.m + 1);
            let n = v[b] as usize;
            &v[b + 1..b + 1 + n]
        }
    }

    fn set_links(&mut self, slot: u32, level: usize, to: &[u32]) {
        let cap = self.cap(level);
        debug_assert!(to.len() <= cap);
        let list = if level == 0 {
            let b = slot as usize * (self.m0 + 1);
            &mut self.links0[b..b + cap + 1]
        } else {
            let b = (level - 1) * (self.m + 1);
            &mut self.upper[slot as usize][b..b + cap + 1]
        };
        list[0] = to.len() as u32;
        list[1..1 + to.len()].copy_from_slice(to);
    }

    /// Greedy descent from the entry point through the levels from the top down to `down_to`;
    /// the entry point itself when `down_to` is above the top.
    fn descend(&self, q: &[f32], down_to: usize) -> Cand {
        let mut cur = Cand {
            score: self.score(q, self.entry),
            slot: self.entry,
        };
        for l in (down_to..=self.top).rev() {
            loop {
                let mut moved = false;
                for &n in self.links(cur.slot, l) {
                    let s = self.score(q, n);
                    if s > cur.score {
                        cur = Cand { score: s, slot: n };
                        moved = true;
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        cur
    }

    /// The best `ef` nodes of `level` reached from `entries`, best first; with `live_only`,
    /// deleted nodes route the search but are not returned.
    fn search_level(
        &self,
        q: &[f32],
        entries: &[Cand],
        ef: usize,
        level: usize,
        live_only: bool,
        scratch: &mut Scratch,
    ) -> Vec<Cand> {
        let Scratch {
            visited,
            todo,
            best,
            fresh,
        } = scratch;
        visited.begin(self.slots());
        todo.clear();
        best.clear();
        for &e in entries {
            if visited.first_visit(e.slot) {
                todo.push(e);
                if !live_only || !self.deleted[e.slot as usize] {
                    best.push(Reverse(e));
                }
            }
        }
        while best.len() > ef {
            best.pop();
        }
        let bytes = self.dim * 4;
        while let Some(c) = todo.pop() {
            let bound = best.peek().map_or(f32::NEG_INFINITY, |w| w.0.score);
            if best.len() >= ef && c.score < bound {
                break;
            }
            fresh.clear();
            for &n in self.links(c.slot, level) {
                if visited.first_visit(n) {
                    prefetch(
                        self.vectors.as_ptr().wrapping_add(n as usize * self.dim),
                        bytes,
                    );
                    fresh.push(n);
                }
            }
            let mut offer = |s: f32, n: u32| {
                let bound = best.peek().map_or(f32::NEG_INFINITY, |w| w.0.score);
                if best.len() < ef || s > bound {
                    let cand = Cand { score: s, slot: n };
                    todo.push(cand);
                    if !live_only || !self.deleted[n as usize] {
                        best.push(Reverse(cand));
                        if best.len() > ef {
                            best.pop();
                        }
                    }
                }
            };
            let mut four = fresh.chunks_exact(4);
            for g in &mut four {
                let ptrs = [g[0], g[1], g[2], g[3]]
                    .map(|n| self.vectors.as_ptr().wrapping_add(n as usize * self.dim));
                // SAFETY: every slot in `fresh` is a stored link, below the slot count, so
                // each pointer starts `dim` readable floats, as does the query; the kernel
                // was detected on this CPU.
                let s = unsafe { self.kernel.dot4_ptr(q.as_ptr(), ptrs, self.dim) };
                for (&n, s) in g.iter().zip(s) {
                    offer(s, n);
                }
            }
            for &n in four.remainder() {
                offer(self.score(q, n), n);
            }
        }
        let mut out: Vec<Cand> = best.drain().map(|w| w.0).collect();
        out.sort_unstable_by(|a, b| b.cmp(a));
        out
    }

    /// HNSW's neighbour heuristic (faiss's `shrink_neighbor_list`, hnswlib's
    /// `getNeighborsByHeuristic2`): from candidates sorted best first by their score with the
    /// base, keep one unless it is closer to a kept one than to the base, up to `cap`.
    fn select(&self, sorted: &[Cand], cap: usize) -> Vec<u32> {
        let mut kept: Vec<Cand> = Vec::with_capacity(cap);
        for &c in sorted {
            if kept.len() >= cap {
                break;
            }
            let v = self.vector(c.slot);
            if kept.iter().all(|k| self.score(v, k.slot) <= c.score) {
                kept.push(c);
            }
        }
        kept.iter().map(|c| c.slot).collect()
    }

    /// The neighbours a new node at `slot` chooses on each of its levels, against the graph
    /// as it stands (read only).
    fn choose_links(&self, slot: u32, scratch: &mut Scratch) -> Vec<Vec<u32>> {
        let q = self.vector(slot);
        let level = self.level[slot as usize] as usize;
        let reach = level.min(self.top);
        let mut entries = vec![self.descend(q, reach + 1)];
        let mut out = vec![Vec::new(); reach + 1];
        for l in (0..=reach).rev() {
            let found = self.search_level(q, &entries, self.ef_add, l, false, scratch);
            out[l] = self.select(&found, self.cap(l));
            entries = found;
        }
        out
    }

    /// The new list of `node` at `level` once `incoming` link to it: appended while there is
    /// room, else the heuristic over the old and the new together.
    fn merge_links(&self, node: u32, level: usize, incoming: &[u32]) -> Vec<u32> {
        let cap = self.cap(level);
        let mut all: Vec<u32> = self.links(node, level).to_vec();
        all.extend(incoming.iter().filter(|&&u| u != node));
        if all.len() <= cap {
            return all;
        }
        let v = self.vector(node);
        let mut scored: Vec<Cand> = all
            .iter()
            .map(|&s| Cand {
                score: self.score(v, s),
                slot: s,
            })
            .collect();
        scored.sort_unstable_by(|a, b| b.cmp(a));
        scored.dedup_by_key(|c| c.slot);
        self.select(&scored, cap)
    }

    /// Links the nodes in `new` (slots already stored, not yet linked): see the module comment.
    fn link_batch(&mut self, new: &[u32]) {
        if self.entry == NONE {
            let first = new[0];
            self.entry = first;
            self.top = self.level[first as usize] as usize;
            return self.link_batch(&new[1..]);
        }
        if new.is_empty() {
            return;
        }
        let chosen: Vec<(u32, Vec<Vec<u32>>)> = {
            let this = &*self;
            new.par_iter()
                .map(|&s| {
                    let links = SCRATCH.with(|v| this.choose_links(s, &mut v.borrow_mut()));
                    (s, links)
                })
                .collect()
        };
        // every reverse link, grouped by the old node that gains it
        let mut reverse: Vec<(u32, u8, u32)> = chosen
            .iter()
            .flat_map(|(u, levels)| {
                levels
                    .iter()
                    .enumerate()
                    .flat_map(move |(l, to)| to.iter().map(move |&v| (v, l as u8, *u)))
            })
            .collect();
        reverse.par_sort_unstable();
        let groups: Vec<&[(u32, u8, u32)]> =
            reverse.chunk_by(|a, b| a.0 == b.0 && a.1 == b.1).collect();
        let rewritten: Vec<(u32, usize, Vec<u32>)> = {
            let this = &*self;
            groups
                .par_iter()
                .map(|g| {
                    let (v, l) = (g[0].0, g[0].1 as usize);
                    let incoming: Vec<u32> = g.iter().map(|x| x.2).collect();
                    (v, l, this.merge_links(v, l, &incoming))
                })
                .collect()
        };
        for (u, levels) in &chosen {
            for (l, to) in levels.iter().enumerate() {
                self.set_links(*u, l, to);
            }
        }
        for (v, l, to) in &rewritten {
            self.set_links(*v, *l, to);
        }
        for &s in new {
            let l = self.level[s as usize] as usize;
            if l > self.top {
                self.top = l;
                self.entry = s;
            }
        }
    }

    fn try_reserve(&mut self, extra: usize) -> std::result::Result<(), String> {
        let e = |what: &str, err: std::collections::TryReserveError| format!("{what}: {err}");
        self.vectors
            .try_reserve(extra * self.dim)
            .map_err(|x| e("vectors", x))?;
        self.links0
            .try_reserve(extra * (self.m0 + 1))
            .map_err(|x| e("links", x))?;
        self.upper.try_reserve(extra).map_err(|x| e("links", x))?;
        self.level.try_reserve(extra).map_err(|x| e("levels", x))?;
        self.ids.try_reserve(extra).map_err(|x| e("ids", x))?;
        self.deleted.try_reserve(extra).map_err(|x| e("ids", x))?;
        self.slot_of.try_reserve(extra).map_err(|x| e("ids", x))?;
        Ok(())
    }
}

/// Little-endian reads from a snapshot's bytes, each failing with what was short.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &str) -> std::result::Result<&[u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| format!("the file ends inside its {what}"))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    fn u32s(&mut self, n: usize, what: &str) -> std::result::Result<Vec<u32>, String> {
        self.array(n, 4, what, |b| u32::from_le_bytes(b.try_into().unwrap()))
    }
    fn array<T>(
        &mut self,
        n: usize,
        size: usize,
        what: &str,
        f: impl Fn(&[u8]) -> T,
    ) -> std::result::Result<Vec<T>, String> {
        let bytes = n
            .checked_mul(size)
            .ok_or_else(|| format!("its {what} overflow"))?;
        Ok(self.take(bytes, what)?.chunks_exact(size).map(f).collect())
    }
}

impl FlatHnsw {
    /// Parses and checks a snapshot: every count, link, level and vector is validated, so
    /// that no file can make a later search read out of bounds.
    fn parse(
        bytes: &[u8],
        dim: usize,
        config: &FlatHnswConfig,
    ) -> std::result::Result<Self, String> {
        if bytes.len() < MAGIC.len() + 4 || &bytes[..MAGIC.len()] != MAGIC {
            return Err("not a bcl HNSW snapshot (its first bytes are not BCLHNSW)".into());
        }
        let (body, tail) = bytes.split_at(bytes.len() - 4);
        let want = u32::from_le_bytes(tail.try_into().unwrap());
        if crc32fast::hash(body) != want {
            return Err("its checksum does not match its contents".into());
        }
        let mut r = Reader {
            bytes: body,
            at: MAGIC.len(),
        };
        let version = r.u32("header")?;
        if version != VERSION {
            return Err(format!(
                "format version {version}; this build reads {VERSION}"
            ));
        }
        let file_dim = r.u32("header")? as usize;
        if file_dim != dim {
            return Err(format!(
                "it holds vectors of dimension {file_dim}, the gallery's are {dim}"
            ));
        }
        let m = r.u32("header")? as usize;
        let mut s = Self::empty(dim, m, config).map_err(|e| e.to_string())?;
        let n = usize::try_from(r.u64("header")?).map_err(|_| "too many slots")?;
        if n >= NONE as usize {
            return Err(format!("{n} slots, more than a graph can index"));
        }
        let entry = r.u32("header")?;
        let top = r.u32("header")? as usize;
        s.ids = r.array(n, 8, "ids", |b| u64::from_le_bytes(b.try_into().unwrap()))?;
        s.deleted = r
            .array(n, 1, "deletion marks", |b| b[0])?
            .into_iter()
            .map(|b| match b {
                0 => Ok(false),
                1 => Ok(true),
                x => Err(format!("a deletion mark of {x}")),
            })
            .collect::<std::result::Result<_, _>>()?;
        s.level = r.array(n, 1, "levels", |b| b[0])?;
        if let Some(l) = s.level.iter().find(|&&l| l as usize > MAX_LEVEL) {
            return Err(format!("a node on level {l}, above {MAX_LEVEL}"));
        }
        let floats = n.checked_mul(dim).ok_or("its vectors overflow")?;
        s.vectors = r.array(floats, 4, "vectors", |b| {
            f32::from_le_bytes(b.try_into().unwrap())
        })?;
        if s.vectors.iter().any(|x| !x.is_finite()) {
            return Err("a vector holds a non-finite value".into());
        }
        let per0 = s.m0 + 1;
        s.links0 = r.u32s(n * per0, "level-0 links")?;
        let per = s.m + 1;
        for slot in 0..n {
            let words = s.level[slot] as usize * per;
            s.upper.push(r.u32s(words, "upper links")?);
        }
        if r.at != body.len() {
            return Err(format!("{} bytes after its last list", body.len() - r.at));
        }
        let check = |list: &[u32], cap: usize| -> std::result::Result<(), String> {
            let k = list[0] as usize;
            if k > cap {
                return Err(format!("a list of {k} links where at most {cap} fit"));
            }
            if let Some(x) = list[1..1 + k].iter().find(|&&x| x as usize >= n) {
                return Err(format!("a link to slot {x} of {n}"));
            }
            Ok(())
        };
        for list in s.links0.chunks_exact(per0) {
            check(list, s.m0)?;
        }
        for v in &s.upper {
            for (l, list) in v.chunks_exact(per).enumerate() {
                check(list, s.m)?;
                // a link on level l + 1 leads to a node that has that level (searches index
                // its lists there)
                if let Some(&x) = list[1..1 + list[0] as usize]
                    .iter()
                    .find(|&&x| (s.level[x as usize] as usize) < l + 1)
                {
                    return Err(format!(
                        "a link on level {} to slot {x}, whose level is {}",
                        l + 1,
                        s.level[x as usize]
                    ));
                }
            }
        }
        if n == 0 {
            if entry != NONE || top != 0 {
                return Err("an entry point in an empty graph".into());
            }
        } else if entry as usize >= n || s.level[entry as usize] as usize != top {
            return Err(format!(
                "entry point {entry} is not a node of the top level {top}"
            ));
        }
        s.entry = entry;
        s.top = top;
        s.slot_of.reserve(n);
        for (slot, (&id, &gone)) in s.ids.iter().zip(&s.deleted).enumerate() {
            if !gone && s.slot_of.insert(id, slot as u32).is_some() {
                return Err(format!("item {id} is held twice"));
            }
        }
        Ok(s)
    }
}

impl VectorIndex for FlatHnsw {
    type Config = FlatHnswConfig;
    const BACKEND: &'static str = "hnsw";
    const EXTENSION: &'static str = "hnsw";

    fn create(dim: usize, config: &FlatHnswConfig) -> Result<Self> {
        Self::empty(dim, config.m(), config)
    }

    fn load(path: &Path, dim: usize, config: &FlatHnswConfig) -> Result<Self> {
        let corrupt = |reason: String| GalleryError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| corrupt(format!("cannot be read: {e}")))?;
        let mut s = Self::parse(&bytes, dim, config).map_err(corrupt)?;
        // the search list is a setting, not part of the graph
        s.ef_search = config.ef_search();
        s.ef_add = config.ef_add();
        Ok(s)
    }

    fn save(&self, path: &Path) -> Result<()> {
        let io = |source| GalleryError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::create(path).map_err(io)?;
        let mut w = Crc32Writer {
            inner: BufWriter::with_capacity(1 << 20, file),
            crc: crc32fast::Hasher::new(),
        };
        (|| -> std::io::Result<()> {
            w.write_all(MAGIC)?;
            for word in [VERSION, self.dim as u32, self.m as u32] {
                w.write_all(&word.to_le_bytes())?;
            }
            w.write_all(&(self.slots() as u64).to_le_bytes())?;
            w.write_all(&self.entry.to_le_bytes())?;
            w.write_all(&(self.top as u32).to_le_bytes())?;
            w.write_all(&le_bytes(&self.ids))?;
            w.write_all(&self.deleted.iter().map(|&d| d as u8).collect::<Vec<u8>>())?;
            w.write_all(&self.level)?;
            w.write_all(&le_bytes(&self.vectors))?;
            w.write_all(&le_bytes(&self.links0))?;
            for v in &self.upper {
                w.write_all(&le_bytes(v))?;
            }
            Ok(())
        })()
        .map_err(io)?;
        let crc = w.crc.clone().finalize();
        w.inner.write_all(&crc.to_le_bytes()).map_err(io)?;
        w.inner.flush().map_err(io)?;
        Ok(())
    }

    fn len(&self) -> usize {
        self.slot_of.len()
    }

    fn reserve(&mut self, extra: usize) -> Result<()> {
        if self.slots() + extra >= NONE as usize {
            return Err(GalleryError::Invalid(format!(
                "the HNSW graph indexes fewer than {NONE} slots"
            )));
        }
        self.try_reserve(extra)
            .map_err(|e| GalleryError::Index(format!("no memory for {extra} more vectors: {e}")))
    }

    fn remove(&mut self, id: u64) -> Result<()> {
        if let Some(slot) = self.slot_of.remove(&id) {
            self.deleted[slot as usize] = true;
        }
        Ok(())
    }

    /// Stores the vectors, then links them, highest levels first, in batches of at most a
    /// 32nd of the graph (see the module comment).
    fn add(&mut self, ids: &[u64], vectors: &[f32]) -> Result<()> {
        if vectors.len() != ids.len() * self.dim {
            return Err(GalleryError::Invalid(format!(
                "{} values for {} vectors of dimension {}",
                vectors.len(),
                ids.len(),
                self.dim
            )));
        }
        if let Some(id) = ids.iter().find(|id| self.slot_of.contains_key(id)) {
            return Err(GalleryError::Invalid(format!("item {id} is held already")));
        }
        self.reserve(ids.len())?;
        let first = self.slots();
        for (&id, v) in ids.iter().zip(vectors.chunks_exact(self.dim)) {
            let slot = self.slots();
            let level = draw_level(slot, self.m);
            self.vectors.extend_from_slice(v);
            self.links0.extend(std::iter::repeat_n(0, self.m0 + 1));
            self.upper.push(vec![0; level * (self.m + 1)]);
            self.level.push(level as u8);
            self.ids.push(id);
            self.deleted.push(false);
            self.slot_of.insert(id, slot as u32);
        }
        // the highest levels first, as faiss does: the upper layers are whole before the
        // nodes of level 0 alone arrive (slot order within a level)
        let mut order: Vec<u32> = (first as u32..self.slots() as u32).collect();
        order.sort_by_key(|&s| std::cmp::Reverse(self.level[s as usize]));
        let mut at = 0;
        while at < order.len() {
            let batch = ((first + at) / BATCH_SHARE).max(1).min(order.len() - at);
            self.link_batch(&order[at..at + batch]);
            at += batch;
        }
        Ok(())
    }

    fn get(&self, id: u64, out: &mut [f32]) -> Result<bool> {
        match self.slot_of.get(&id) {
            Some(&s) => {
                out.copy_from_slice(self.vector(s));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn search(&self, query: &[f32], k: usize) -> Result<Vec<Hit>> {
        if query.len() != self.dim {
            return Err(GalleryError::Invalid(format!(
                "a query of dimension {}, the index's is {}",
                query.len(),
                self.dim
            )));
        }
        if self.entry == NONE || self.slot_of.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let start = self.descend(query, 1);
        let ef = self.ef_search.max(k);
        let found =
            SCRATCH.with(|v| self.search_level(query, &[start], ef, 0, true, &mut v.borrow_mut()));
        Ok(found
            .into_iter()
            .take(k)
            .map(|c| Hit {
                id: self.ids[c.slot as usize],
                score: c.score,
            })
            .collect())
    }

    fn set_search_expansion(&mut self, n: usize) {
        self.ef_search = n.max(1);
    }

    fn checkpoint_bytes(config: &FlatHnswConfig) -> u64 {
        config.checkpoint_bytes
    }
}

/// A writer that checksums what passes through it.
struct Crc32Writer<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for Crc32Writer<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Little-endian bytes of plain numbers (borrowed on little-endian targets).
trait LeBytes: bytemuck::Pod {
    fn le(self) -> Self;
}
impl LeBytes for u32 {
    fn le(self) -> Self {
        self.to_le()
    }
}
impl LeBytes for u64 {
    fn le(self) -> Self {
        self.to_le()
    }
}
impl LeBytes for f32 {
    fn le(self) -> Self {
        f32::from_bits(self.to_bits().to_le())
    }
}

fn le_bytes<T: LeBytes>(v: &[T]) -> std::borrow::Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        std::borrow::Cow::Borrowed(bytemuck::cast_slice(v))
    } else {
        let swapped: Vec<T> = v.iter().map(|&x| x.le()).collect();
        std::borrow::Cow::Owned(bytemuck::cast_slice(&swapped).to_vec())
    }
}
