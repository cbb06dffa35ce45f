//! Exact top-k search at scale: query tiles against gallery blocks with a running top-k, so
//! that memory stays at `threads × tile × block` similarities whatever the sizes (a 1,000,000 ×
//! 100,000 search never holds the full similarity matrix). Inner product on the rows as given
//! (cosine when both sides are L2-normalised). This is the reference every approximate index is
//! measured against.
//!
//! On the CPU the selection is fused into the blocked product, as faiss does, and both run on
//! the same thread while the block is hot in its core's cache: each unit of parallel work is a
//! tile of queries (and, when there are fewer tiles than threads, a share of the gallery); it
//! computes one gallery block's similarities with a single-threaded product (the `gemm` crate,
//! whose AVX-512 kernels ran 1.7x-1.9x libtorch's MKL `mm` on this AMD CPU, docs/performance.md)
//! and at once offers them to its queries' bounded heaps, which reject a score below their
//! current k-th best with one comparison; no block is sorted. Galleries may be stored in
//! float32, float16 or bfloat16 (each block is widened to float32 before its product, so a
//! half-precision gallery is searched exactly as its float32 values would be), in memory or
//! memory-mapped from a `.npy` file ([`MappedMatrix`](super::mapped::MappedMatrix)), streamed
//! through a bounded window.
//! Elsewhere (CUDA, float64) blocks go through libtorch's `topk`. The fused path puts the lower
//! gallery index first among equal scores; libtorch's `topk` leaves their order unspecified.

use std::ops::Range;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use super::EvalError;

/// Block sizes of [`topk_search`].
#[derive(Debug, Clone, Copy)]
pub struct SearchBlocks {
    /// Queries per tile: the queries one thread scores against a gallery block at a time.
    pub query: i64,
    /// Gallery rows per block.
    pub gallery: i64,
}

impl Default for SearchBlocks {
    /// 512 × 1,024 float similarities: 2 MiB per thread, scanned while in this CPU's per-core
    /// L2 and its L3 (measured: 0.62 s at 10,000 × 100,000 d 128 k 10 against 0.66 s for
    /// 256-query tiles and 0.60 s for 1,024, whose fewer tiles balance many threads worse).
    fn default() -> Self {
        Self {
            query: 512,
            gallery: 1024,
        }
    }
}

/// The k best gallery rows of each query: scores `[nq, k]` (descending) and indices `[nq, k]`.
#[derive(Debug)]
pub struct TopK {
    /// Similarities, best first.
    pub scores: Tensor,
    /// Gallery row indices (int64), aligned with `scores`.
    pub indices: Tensor,
}

/// Gallery rows as stored, row-major, `dim` values per row: the precisions the fused search
/// reads without converting the whole gallery.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Rows<'a> {
    /// float32 values.
    F32(&'a [f32]),
    /// IEEE half-precision values.
    F16(&'a [f16]),
    /// bfloat16 values.
    Bf16(&'a [bf16]),
}

impl Rows<'_> {
    /// Number of stored values.
    pub(crate) fn len(&self) -> usize {
        match self {
            Rows::F32(v) => v.len(),
            Rows::F16(v) => v.len(),
            Rows::Bf16(v) => v.len(),
        }
    }

    /// The values of rows `rows` as float32: borrowed when stored so, else widened into `buf`.
    pub(crate) fn f32_rows<'b>(
        &'b self,
        rows: Range<usize>,
        dim: usize,
        buf: &'b mut Vec<f32>,
    ) -> &'b [f32] {
        let r = rows.start * dim..rows.end * dim;
        match self {
            Rows::F32(v) => &v[r],
            Rows::F16(v) => {
                buf.resize(r.len(), 0.0);
                v[r].convert_to_f32_slice(buf);
                buf
            }
            Rows::Bf16(v) => {
                buf.resize(r.len(), 0.0);
                v[r].convert_to_f32_slice(buf);
                buf
            }
        }
    }

    /// The first row in `rows` that holds a NaN or an infinity.
    pub(crate) fn first_non_finite(&self, rows: Range<usize>, dim: usize) -> Option<usize> {
        let r = rows.start * dim..rows.end * dim;
        // exponent bits all set: a NaN or an infinity; counted branch-free per chunk (the
        // compiler vectorises it), located one value at a time only in a chunk that has one
        fn first<T: Copy + Sync>(v: &[T], bits: impl Fn(T) -> bool + Sync) -> Option<usize> {
            const CHUNK: usize = 1 << 14;
            v.par_chunks(CHUNK)
                .position_first(|c| c.iter().map(|&x| bits(x) as u32).sum::<u32>() > 0)
                .and_then(|c| {
                    let at = c * CHUNK;
                    v[at..].iter().position(|&x| bits(x)).map(|i| at + i)
                })
        }
        let bad = match self {
            Rows::F32(v) => first(&v[r], |x| x.to_bits() & 0x7f80_0000 == 0x7f80_0000),
            Rows::F16(v) => first(&v[r], |x| x.to_bits() & 0x7c00 == 0x7c00),
            Rows::Bf16(v) => first(&v[r], |x| x.to_bits() & 0x7f80 == 0x7f80),
        };
        bad.map(|i| rows.start + i / dim)
    }
}

/// Checks the shapes and `k` of a search of `query` in `[ng, dg]` gallery rows.
pub(crate) fn check_request(
    query: &Tensor,
    (ng, dg): (i64, i64),
    k: usize,
    blocks: SearchBlocks,
) -> Result<(), EvalError> {
    let (_, dq) = query
        .size2()
        .map_err(|_| EvalError::Mismatch("query features must be a [N, d] matrix".into()))?;
    if dq != dg {
        return Err(EvalError::Mismatch(format!(
            "query features have dimension {dq} but gallery features {dg}"
        )));
    }
    if k < 1 || k as i64 > ng {
        return Err(EvalError::Mismatch(format!(
            "k must lie in 1..={ng} (the gallery size), got {k}"
        )));
    }
    if blocks.query < 1 || blocks.gallery < 1 {
        return Err(EvalError::Mismatch("block sizes must be positive".into()));
    }
    if dq < 1 {
        return Err(EvalError::Mismatch(
            "features must have at least one dimension".into(),
        ));
    }
    Ok(())
}

/// Exact top-`k` inner-product search of `query` `[nq, d]` in `gallery` `[ng, d]`, blocked.
/// Equal scores: the lower gallery index first on the CPU (float32, float16 or bfloat16
/// galleries), unspecified otherwise. `k` larger than the gallery is an error.
pub fn topk_search(
    query: &Tensor,
    gallery: &Tensor,
    k: usize,
    blocks: SearchBlocks,
) -> Result<TopK, EvalError> {
    let gs = gallery
        .size2()
        .map_err(|_| EvalError::Mismatch("gallery features must be a [N, d] matrix".into()))?;
    check_request(query, gs, k, blocks)?;
    let cpu = gallery.device() == Device::Cpu && query.device() == Device::Cpu;
    let fused_kind = matches!(gallery.kind(), Kind::Float | Kind::Half | Kind::BFloat16);
    if cpu && fused_kind && query.kind() != Kind::Double {
        let g = gallery.contiguous();
        let n = (gs.0 * gs.1) as usize;
        // SAFETY: `g` is a contiguous CPU tensor of `n` values of the matched kind (libtorch's
        // Half and BFloat16 have the bit layouts of `half`'s f16 and bf16); it lives, unwritten,
        // until the search returns.
        let rows = unsafe {
            match g.kind() {
                Kind::Float => Rows::F32(std::slice::from_raw_parts(g.data_ptr() as _, n)),
                Kind::Half => Rows::F16(std::slice::from_raw_parts(g.data_ptr() as _, n)),
                _ => Rows::Bf16(std::slice::from_raw_parts(g.data_ptr() as _, n)),
            }
        };
        return fused_cpu(query, rows, gs.1 as usize, k, blocks, None);
    }
    Ok(libtorch_topk(query, gallery, k as i64, blocks))
}

/// CUDA and float64: each block's `topk` merged with the running best by libtorch.
fn libtorch_topk(query: &Tensor, gallery: &Tensor, k: i64, blocks: SearchBlocks) -> TopK {
    let (nq, ng) = (query.size()[0], gallery.size()[0]);
    let kind = if query.kind() == Kind::Double || gallery.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    let dev = gallery.device();
    // a tile of the fused path is one thread's; here a block is the whole device's
    let qblock = blocks.query.max(4096);
    let mut all_s = Vec::new();
    let mut all_i = Vec::new();
    tch::no_grad(|| {
        let mut qs = 0;
        while qs < nq {
            let ql = qblock.min(nq - qs);
            let qb = query.narrow(0, qs, ql).to_kind(kind).to_device(dev);
            let mut best: Option<(Tensor, Tensor)> = None;
            let mut gs = 0;
            while gs < ng {
                let gl = blocks.gallery.min(ng - gs);
                let sims = qb.matmul(&gallery.narrow(0, gs, gl).to_kind(kind).tr());
                let (v, i) = sims.topk(k.min(gl), 1, true, true);
                let i = i + gs;
                best = Some(match best {
                    None => (v, i),
                    Some((bv, bi)) => {
                        let cv = Tensor::cat(&[bv, v], 1);
                        let ci = Tensor::cat(&[bi, i], 1);
                        let (v, pos) = cv.topk(k.min(cv.size()[1]), 1, true, true);
                        (v, ci.gather(1, &pos, false))
                    }
                });
                gs += gl;
            }
            let (v, i) = best.expect("the gallery is not empty");
            all_s.push(v);
            all_i.push(i);
            qs += ql;
        }
    });
    if all_s.is_empty() {
        let e = || Tensor::empty([0, k], (Kind::Float, dev));
        return TopK {
            scores: e(),
            indices: e().to_kind(Kind::Int64),
        };
    }
    TopK {
        scores: Tensor::cat(&all_s, 0),
        indices: Tensor::cat(&all_i, 0),
    }
}

/// The `k` best (score, index) of one query, as a min-heap on (score, -index): the root is the
/// entry a better candidate replaces. Hand-written rather than `BinaryHeap`: f32 scores need
/// a total order, and the hot test is one comparison against the root.
#[derive(Clone)]
struct Best {
    k: usize,
    heap: Vec<(f32, i64)>,
}
impl Best {
    fn new(k: usize) -> Self {
        Self {
            k,
            heap: Vec::with_capacity(k),
        }
    }

    /// Whether `(s, i)` ranks below `(t, j)`: a lower score, or an equal score at a higher
    /// index (ties go to the lower index).
    #[inline]
    fn worse(s: f32, i: i64, t: f32, j: i64) -> bool {
        s < t || (s == t && i > j)
    }

    #[inline]
    fn offer(&mut self, s: f32, i: i64) {
        if self.heap.len() < self.k {
            self.heap.push((s, i));
            let mut c = self.heap.len() - 1;
            while c > 0 {
                let p = (c - 1) / 2;
                let (cs, ci) = self.heap[c];
                let (ps, pi) = self.heap[p];
                if !Self::worse(cs, ci, ps, pi) {
                    break;
                }
                self.heap.swap(c, p);
                c = p;
            }
        } else {
            let (rs, ri) = self.heap[0];
            if !Self::worse(rs, ri, s, i) {
                return;
            }
            self.heap[0] = (s, i);
            let n = self.heap.len();
            let mut p = 0;
            loop {
                let (l, r) = (2 * p + 1, 2 * p + 2);
                let mut m = p;
                for c in [l, r] {
                    if c < n {
                        let (cs, ci) = self.heap[c];
                        let (ms, mi) = self.heap[m];
                        if Self::worse(cs, ci, ms, mi) {
                            m = c;
                        }
                    }
                }
                if m == p {
                    break;
                }
                self.heap.swap(p, m);
                p = m;
            }
        }
    }

    /// The score a candidate must reach to be offered: the k-th best so far, or -inf while
    /// fewer than k are held.
    #[inline]
    fn threshold(&self) -> f32 {
        if self.heap.len() < self.k {
            f32::NEG_INFINITY
        } else {
            self.heap[0].0
        }
    }

    /// The entries best first (the heap's order: -0.0 and 0.0 are one score, a tie).
    fn sorted(mut self) -> Vec<(f32, i64)> {
        self.heap.sort_by(|a, b| {
            b.0.partial_cmp(&a.0)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.1.cmp(&b.1))
        });
        self.heap
    }
}

/// Offers the scores of one query's row of a block (gallery indices from `base`) to its heap.
/// Chunks of 32 scores are first tested as a whole (a branch-free count the compiler
/// vectorises); the heap sees only the chunks that hold a candidate, one score at a time.
#[inline(always)]
fn scan_row_body(b: &mut Best, row: &[f32], base: i64) {
    let mut thr = b.threshold();
    for (c, chunk) in row.chunks(32).enumerate() {
        let hits: u32 = chunk.iter().map(|&s| (s >= thr) as u32).sum();
        if hits == 0 {
            continue;
        }
        for (j, &s) in chunk.iter().enumerate() {
            if s >= thr {
                b.offer(s, base + (c * 32 + j) as i64);
                thr = b.threshold();
            }
        }
    }
}

/// [`scan_row_body`] compiled for AVX2 (8 scores per instruction instead of SSE2's 4).
///
/// # Safety
/// The CPU must support AVX2 (checked by [`scan_row`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scan_row_avx2(b: &mut Best, row: &[f32], base: i64) {
    scan_row_body(b, row, base)
}

/// [`scan_row_body`] with the widest vector instructions this CPU has.
fn scan_row(b: &mut Best, row: &[f32], base: i64) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present, as just checked.
        return unsafe { scan_row_avx2(b, row, base) };
    }
    scan_row_body(b, row, base)
}

/// How a memory-mapped gallery is streamed: rows per window, each window checked before its
/// search and released after it (so the resident part of the file stays bounded).
pub(crate) struct Window<'a> {
    /// Gallery rows per window.
    pub rows: usize,
    /// Validates a window's rows before they are searched.
    pub check: &'a (dyn Fn(Range<usize>) -> Result<(), EvalError> + Sync),
    /// Drops a searched window's pages from memory.
    pub release: &'a (dyn Fn(Range<usize>) + Sync),
}

/// Part `p` of `parts` near-equal parts of `r`.
fn part_of(r: &Range<usize>, parts: usize, p: usize) -> Range<usize> {
    let n = r.len();
    r.start + n * p / parts..r.start + n * (p + 1) / parts
}

/// The CPU path of [`topk_search`]: every (query tile, gallery part) a unit of parallel work,
/// each with its own similarity buffer; parts' heaps merged at the end.
pub(crate) fn fused_cpu(
    query: &Tensor,
    gallery: Rows<'_>,
    dim: usize,
    k: usize,
    blocks: SearchBlocks,
    window: Option<Window<'_>>,
) -> Result<TopK, EvalError> {
    let q = query
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous();
    let nq = q.size()[0] as usize;
    // SAFETY: `q` is a contiguous float32 CPU tensor of `nq × dim` values that lives, unwritten,
    // until this function returns.
    let qv: &[f32] = unsafe { std::slice::from_raw_parts(q.data_ptr() as *const f32, nq * dim) };
    let ng = gallery.len() / dim;
    let (tile, gb) = (blocks.query as usize, blocks.gallery as usize);
    let win_rows = window.as_ref().map_or(ng, |w| w.rows.max(1)).min(ng);
    let tiles = nq.div_ceil(tile);
    let threads = rayon::current_num_threads();
    // too few tiles to balance the threads (a few queries): the gallery is shared among parts
    let parts = if tiles >= 4 * threads {
        1
    } else {
        (4 * threads)
            .div_ceil(tiles.max(1))
            .min(win_rows.div_ceil(gb))
            .max(1)
    };
    let mut heaps: Vec<Vec<Best>> = vec![vec![Best::new(k); nq]; parts];
    let mut ws = 0;
    while ws < ng {
        let win = ws..(ws + win_rows).min(ng);
        if let Some(w) = &window {
            (w.check)(win.clone())?;
        }
        let mut items: Vec<(usize, usize, &mut [Best])> = heaps
            .iter_mut()
            .enumerate()
            .flat_map(|(p, h)| h.chunks_mut(tile).enumerate().map(move |(t, c)| (p, t, c)))
            .collect();
        items.par_iter_mut().for_each_init(
            || (Vec::new(), Vec::new()),
            |(out, wide), (p, t, heaps)| {
                let q0 = *t * tile;
                let qt = &qv[q0 * dim..(q0 + heaps.len()) * dim];
                let part = part_of(&win, parts, *p);
                score_tile(qt, heaps, gallery, dim, part, gb, (out, wide));
            },
        );
        if let Some(w) = &window {
            (w.release)(win.clone());
        }
        ws = win.end;
    }
    let mut merged = heaps.swap_remove(0);
    for other in heaps {
        for (m, o) in merged.iter_mut().zip(other) {
            for (s, i) in o.heap {
                m.offer(s, i);
            }
        }
    }
    let mut scores = Vec::with_capacity(nq * k);
    let mut indices = Vec::with_capacity(nq * k);
    for b in merged {
        for (s, i) in b.sorted() {
            scores.push(s);
            indices.push(i);
        }
    }
    let shape = [nq as i64, k as i64];
    Ok(TopK {
        scores: Tensor::from_slice(&scores).view(shape),
        indices: Tensor::from_slice(&indices).view(shape),
    })
}

/// Scores one tile of queries `qt` (row-major, `dim` wide) against the gallery rows `part`,
/// one block at a time on this thread, offering each block's similarities to the tile's
/// heaps while they are in cache. `bufs`: the similarity buffer and the widened rows.
fn score_tile(
    qt: &[f32],
    heaps: &mut [Best],
    gallery: Rows<'_>,
    dim: usize,
    part: Range<usize>,
    gb: usize,
    (out, wide): (&mut Vec<f32>, &mut Vec<f32>),
) {
    let m = heaps.len();
    let mut bs = part.start;
    while bs < part.end {
        let bl = gb.min(part.end - bs);
        let g = gallery.f32_rows(bs..bs + bl, dim, wide);
        out.resize(m * bl, 0.0);
        // SAFETY: out is m × bl (row stride bl), qt is m × dim (row stride dim), g is bl rows
        // of dim values read as the dim × bl transpose (column stride dim); every pointer
        // covers the extent the strides reach, and out is not aliased.
        unsafe {
            gemm::gemm(
                m,
                bl,
                dim,
                out.as_mut_ptr(),
                1,
                bl as isize,
                false,
                qt.as_ptr(),
                1,
                dim as isize,
                g.as_ptr(),
                dim as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        for (b, row) in heaps.iter_mut().zip(out.chunks(bl)) {
            scan_row(b, row, bs as i64);
        }
        bs += bl;
    }
}

/// mAP@k against explicit relevance lists (the GLDv2 retrieval metric at k = 100):
/// `mean_q 1/min(m_q, k) · Σ_{i ≤ k} P_q(i)·rel_q(i)`, with `ranked[q]` the gallery positions
/// returned for query q (best first; only the first k count) and `relevant[q]` its `m_q`
/// relevant positions. Queries without a relevant item are an error (the solution file skips
/// them).
pub fn map_at_k_lists(
    ranked: &[Vec<usize>],
    relevant: &[Vec<usize>],
    k: usize,
) -> Result<f64, EvalError> {
    if ranked.len() != relevant.len() {
        return Err(EvalError::Mismatch(format!(
            "{} ranked lists for {} queries",
            ranked.len(),
            relevant.len()
        )));
    }
    if ranked.is_empty() || k == 0 {
        return Err(EvalError::Mismatch(
            "mAP@k needs at least one query and k >= 1".into(),
        ));
    }
    let mut total = 0.0;
    for (q, (r, rel)) in ranked.iter().zip(relevant).enumerate() {
        let rel: std::collections::BTreeSet<usize> = rel.iter().copied().collect();
        if rel.is_empty() {
            return Err(EvalError::Mismatch(format!(
                "query {q} has no relevant item"
            )));
        }
        let (mut hits, mut ap) = (0usize, 0.0);
        let mut seen = std::collections::BTreeSet::new();
        for (i, g) in r.iter().take(k).enumerate() {
            // a position returned twice counts once
            if rel.contains(g) && seen.insert(*g) {
                hits += 1;
                ap += hits as f64 / (i + 1) as f64;
            }
        }
        total += ap / rel.len().min(k) as f64;
    }
    Ok(total / ranked.len() as f64)
}
