//! Exact top-k search at scale: query blocks against gallery blocks with a running top-k, so
//! that memory stays at `query_block × gallery_block` whatever the sizes (a 1,000,000 ×
//! 100,000 search never holds the full similarity matrix). Inner product on the rows as given
//! (cosine when both sides are L2-normalised). This is the reference every approximate index is
//! measured against.
//!
//! On the CPU in float32 the selection is fused into the blocked product, as faiss does: each
//! block's similarities (BLAS, libtorch's `mm` into one reused buffer small enough to stay in
//! cache) are scanned at once by every query's bounded heap, which rejects a score below its
//! current k-th best with one comparison; no block is sorted. Elsewhere (CUDA, float64) blocks
//! go through libtorch's `topk`. The fused path puts the lower gallery index first among equal
//! scores; libtorch's `topk` leaves their order unspecified.

use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use super::EvalError;

/// Block sizes of [`topk_search`].
#[derive(Debug, Clone, Copy)]
pub struct SearchBlocks {
    /// Queries per block.
    pub query: i64,
    /// Gallery rows per block.
    pub gallery: i64,
}

impl Default for SearchBlocks {
    /// 4,096 × 1,024 float similarities: 16 MiB at a time (faiss's block shape; the fused CPU
    /// path's block sits in a 32 MiB L3 cache while the heaps scan it; measured fastest of
    /// 1,024-8,192 × 512-32,768 here, docs/benchmarks.md).
    fn default() -> Self {
        Self {
            query: 4096,
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

/// Exact top-`k` inner-product search of `query` `[nq, d]` in `gallery` `[ng, d]`, blocked.
/// Equal scores: the lower gallery index first on the CPU in float32, unspecified otherwise.
/// `k` larger than the gallery is an error.
pub fn topk_search(
    query: &Tensor,
    gallery: &Tensor,
    k: usize,
    blocks: SearchBlocks,
) -> Result<TopK, EvalError> {
    let (nq, dq) = query
        .size2()
        .map_err(|_| EvalError::Mismatch("query features must be a [N, d] matrix".into()))?;
    let (ng, dg) = gallery
        .size2()
        .map_err(|_| EvalError::Mismatch("gallery features must be a [N, d] matrix".into()))?;
    if dq != dg {
        return Err(EvalError::Mismatch(format!(
            "query features have dimension {dq} but gallery features {dg}"
        )));
    }
    let k = k as i64;
    if k < 1 || k > ng {
        return Err(EvalError::Mismatch(format!(
            "k must lie in 1..={ng} (the gallery size), got {k}"
        )));
    }
    if blocks.query < 1 || blocks.gallery < 1 {
        return Err(EvalError::Mismatch("block sizes must be positive".into()));
    }
    let kind = if query.kind() == Kind::Double || gallery.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    let dev = gallery.device();
    if kind == Kind::Float && dev == Device::Cpu && query.device() == Device::Cpu {
        return Ok(fused_cpu(query, gallery, k as usize, blocks));
    }
    let mut all_s = Vec::new();
    let mut all_i = Vec::new();
    tch::no_grad(|| {
        let mut qs = 0;
        while qs < nq {
            let ql = blocks.query.min(nq - qs);
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
    Ok(TopK {
        scores: Tensor::cat(&all_s, 0),
        indices: Tensor::cat(&all_i, 0),
    })
}

/// The `k` best (score, index) of one query, as a min-heap on (score, -index): the root is the
/// entry a better candidate replaces. Hand-written rather than `BinaryHeap`: f32 scores need
/// a total order, and the hot test is one comparison against the root.
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

/// The CPU float32 path of [`topk_search`]: per query block, one reused similarity buffer per
/// gallery block, scanned in parallel by the queries' heaps.
fn fused_cpu(query: &Tensor, gallery: &Tensor, k: usize, blocks: SearchBlocks) -> TopK {
    let (nq, ng) = (query.size()[0], gallery.size()[0]);
    let gallery = gallery.to_kind(Kind::Float).contiguous();
    let mut scores = Vec::with_capacity(nq as usize * k);
    let mut indices = Vec::with_capacity(nq as usize * k);
    tch::no_grad(|| {
        let mut qs = 0;
        while qs < nq {
            let ql = blocks.query.min(nq - qs);
            let qb = query.narrow(0, qs, ql).to_kind(Kind::Float).contiguous();
            let mut best: Vec<Best> = (0..ql).map(|_| Best::new(k)).collect();
            let buf = Tensor::empty([ql, blocks.gallery.min(ng)], (Kind::Float, Device::Cpu));
            let mut gs = 0;
            while gs < ng {
                let gl = blocks.gallery.min(ng - gs);
                // a full block reuses the buffer; the last, shorter one gets its own
                let sims = if gl == buf.size()[1] {
                    qb.mm_out(&buf, &gallery.narrow(0, gs, gl).tr())
                } else {
                    qb.matmul(&gallery.narrow(0, gs, gl).tr())
                };
                debug_assert!(sims.is_contiguous() && sims.size() == [ql, gl]);
                let n = (ql * gl) as usize;
                // SAFETY: `sims` is a contiguous float32 CPU tensor of `ql × gl` values that
                // lives (and is not written) until the scan below ends.
                let data = unsafe { std::slice::from_raw_parts(sims.data_ptr() as *const f32, n) };
                best.par_iter_mut()
                    .zip(data.par_chunks(gl as usize))
                    .for_each(|(b, row)| scan_row(b, row, gs));
                gs += gl;
            }
            for b in best {
                for (s, i) in b.sorted() {
                    scores.push(s);
                    indices.push(i);
                }
            }
            qs += ql;
        }
    });
    let shape = [nq, k as i64];
    TopK {
        scores: Tensor::from_slice(&scores).view(shape),
        indices: Tensor::from_slice(&indices).view(shape),
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
