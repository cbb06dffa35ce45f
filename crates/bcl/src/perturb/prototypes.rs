//! Prototype tables: class means `p_k = normalize(mean{f_i : y_i = k})`, the pseudo-old table
//! `normalize(P° + Δ)`, and the blocked similarity searches over prototype rows that NDPP, ODPP
//! and the refresh diagnostics share (memory bounded at large class counts).

use tch::{Device, Kind, Tensor};

use super::PrototypeError;
use crate::model::l2_normalize;

/// Normalised class means `[classes, d]` of `features` `[N, d]` with labels `[N]` in `0..classes`.
pub fn class_prototypes(
    features: &Tensor,
    labels: &Tensor,
    classes: i64,
) -> Result<Tensor, PrototypeError> {
    let (_, d) = features.size2().expect("features must be [N, d]");
    let sums = Tensor::zeros([classes, d], (Kind::Float, features.device())).index_add(
        0,
        labels,
        &features.to_kind(Kind::Float),
    );
    let counts = Tensor::zeros([classes], (Kind::Float, features.device())).index_add(
        0,
        labels,
        &Tensor::ones([labels.size()[0]], (Kind::Float, features.device())),
    );
    let counts_v: Vec<f32> = Vec::try_from(&counts.to_device(Device::Cpu)).expect("counts to vec");
    if let Some(k) = counts_v.iter().position(|&c| c == 0.0) {
        return Err(PrototypeError::EmptyClass(k as i64));
    }
    Ok(l2_normalize(&sums))
}

/// Pseudo-old prototypes `normalize(P° + Δ)` (differentiable in Δ: ODPP optimises through it).
pub fn pseudo_old(old: &Tensor, delta: &Tensor) -> Tensor {
    l2_normalize(&(old + delta))
}

/// The pseudo-old prototype table a loss trains against: [`pseudo_old`], except that a row whose
/// δ is zero keeps its old prototype bit for bit (renormalising an already unit row moves it by
/// rounding, and training amplifies that: 1e-7 grew to 5e-3 in BatchNorm statistics within 20
/// steps), so that Δ = 0 trains exactly as BCT. Constant: no gradient flows through it.
pub fn pseudo_old_table(old: &Tensor, delta: &Tensor) -> Tensor {
    tch::no_grad(|| {
        let moved = delta.abs().amax([1i64].as_slice(), true).gt(0.0);
        pseudo_old(old, delta).where_self(&moved, old)
    })
}

/// Rows of prototypes per block in the C × C similarity computations: memory stays at
/// `BLOCK × C` (1.3 GB of f32 at GLDv2's 81,313 landmarks instead of 26 GB for the full matrix).
const BLOCK: i64 = 4096;

/// The top-`k` of each row `i` of the mixed similarity `α·⟨a_i, a_j⟩ + (1−α)·⟨b_i, b_j⟩` over
/// `j ≠ i`, computed in row blocks. `b = None` means α = 1. Returns values and indices `[C, k]`.
pub(super) fn blocked_topk(
    a: &Tensor,
    b: Option<(&Tensor, f64)>,
    alpha: f64,
    k: i64,
) -> (Tensor, Tensor) {
    let c = a.size()[0];
    let (mut vals, mut idxs) = (Vec::new(), Vec::new());
    let mut start = 0;
    while start < c {
        let n = BLOCK.min(c - start);
        let mut s = a.narrow(0, start, n).matmul(&a.tr()) * alpha;
        if let Some((b, w)) = b {
            s += b.narrow(0, start, n).matmul(&b.tr()) * w;
        }
        // −∞ on the diagonal (after mixing: −∞·0 would be NaN)
        let rows = Tensor::arange(n, (Kind::Int64, a.device()));
        let cols = &rows + start;
        let s = s.index_put(
            &[Some(rows), Some(cols)],
            &Tensor::from(f64::NEG_INFINITY)
                .to_kind(s.kind())
                .to_device(a.device()),
            false,
        );
        let (v, i) = s.topk(k, 1, true, true);
        vals.push(v);
        idxs.push(i);
        start += n;
    }
    (Tensor::cat(&vals, 0), Tensor::cat(&idxs, 0))
}

/// Each prototype row's highest cosine similarity to another row, computed in blocks.
pub(super) fn nearest_similarity(p: &Tensor) -> Tensor {
    blocked_topk(p, None, 1.0, 1).0.squeeze_dim(1)
}

/// Angle (radians) from each old prototype to its nearest other old prototype.
pub fn nearest_angles(old: &Tensor) -> Tensor {
    nearest_similarity(old).clamp(-1.0, 1.0).acos()
}

/// For each row of `q`, the index of its most similar row of `p`, computed in blocks.
pub(super) fn blocked_argmax(q: &Tensor, p: &Tensor) -> Tensor {
    let c = q.size()[0];
    let mut out = Vec::new();
    let mut start = 0;
    while start < c {
        let n = BLOCK.min(c - start);
        out.push(q.narrow(0, start, n).matmul(&p.tr()).argmax(1, false));
        start += n;
    }
    Tensor::cat(&out, 0)
}
