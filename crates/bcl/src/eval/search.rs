//! Exact top-k search at scale: query blocks against gallery blocks with a running top-k, so
//! that memory stays at `query_block × gallery_block` whatever the sizes (a 1,000,000 ×
//! 100,000 search never holds the full similarity matrix). Inner product on the rows as given
//! (cosine when both sides are L2-normalised). This is the reference every approximate index is
//! measured against.

use tch::{Kind, Tensor};

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
    /// 1,024 × 32,768 float similarities: 128 MiB at a time.
    fn default() -> Self {
        Self {
            query: 1024,
            gallery: 32_768,
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
/// Ties between equal scores are broken arbitrarily. `k` larger than the gallery is an error.
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
