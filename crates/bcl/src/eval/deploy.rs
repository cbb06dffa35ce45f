//! Evaluation of a deployment (METHOD.md section 7): the partial-backfill curve (queries by
//! the new model against a gallery of which a share has been re-embedded by it, the rest still
//! old vectors) and negative flips (queries the old system answered right and the new one
//! answers wrong: Hot-Refresh's model-regression measure), both leave-one-out on one set.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::search::{topk_search, SearchBlocks};
use super::{leave_one_out, EvalError, RetrievalMetrics};

/// The order in which a backfill re-embeds gallery items: a seeded random permutation (the
/// documented default strategy; every item has the same chance to be refreshed early).
pub fn backfill_order(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    order
}

/// The gallery after re-embedding the first `round(fraction · n)` items of `order`: rows of
/// `new` there, rows of `old` elsewhere.
pub fn mixed_gallery(old: &Tensor, new: &Tensor, order: &[usize], fraction: f64) -> Tensor {
    let n = order.len();
    let k = ((fraction.clamp(0.0, 1.0) * n as f64).round() as usize).min(n);
    let mut mask = vec![false; n];
    for &i in &order[..k] {
        mask[i] = true;
    }
    let m = Tensor::from_slice(&mask)
        .to_device(old.device())
        .unsqueeze(1);
    new.to_kind(old.kind()).where_self(&m, old)
}

/// One point of the partial-backfill curve.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackfillPoint {
    /// Share of the gallery re-embedded by the new model.
    pub fraction: f64,
    /// Metrics of new queries against that gallery (leave-one-out).
    pub metrics: RetrievalMetrics,
}

/// The partial-backfill curve of new queries `new` against galleries mixing `old` and `new`
/// rows (both `[N, d]`, the same items), at each fraction, in `backfill_order(N, seed)`.
pub fn backfill_curve(
    old: &Tensor,
    new: &Tensor,
    labels: &[i64],
    fractions: &[f64],
    seed: u64,
) -> Result<Vec<BackfillPoint>, EvalError> {
    if old.size() != new.size() {
        return Err(EvalError::Mismatch(format!(
            "old features {:?} and new features {:?} must cover the same items",
            old.size(),
            new.size()
        )));
    }
    if let Some(f) = fractions.iter().find(|f| !(0.0..=1.0).contains(*f)) {
        return Err(EvalError::Mismatch(format!(
            "backfill fractions lie in [0, 1], got {f}"
        )));
    }
    let order = backfill_order(labels.len(), seed);
    fractions
        .iter()
        .map(|&f| {
            let g = mixed_gallery(old, new, &order, f);
            Ok(BackfillPoint {
                fraction: f,
                metrics: leave_one_out(new, &g, labels)?,
            })
        })
        .collect()
}

/// Top-1 label of each query against a gallery of the same items, skipping the item itself.
pub fn top1_labels(
    query: &Tensor,
    gallery: &Tensor,
    labels: &[i64],
) -> Result<Vec<i64>, EvalError> {
    if labels.len() < 2 {
        return Err(EvalError::Mismatch("flips need at least two items".into()));
    }
    let r = topk_search(query, gallery, 2, SearchBlocks::default())?;
    let idx: Vec<i64> = Vec::try_from(
        &r.indices
            .to_device(Device::Cpu)
            .to_kind(Kind::Int64)
            .contiguous()
            .view([-1]),
    )
    .map_err(|e: tch::TchError| EvalError::Mismatch(e.to_string()))?;
    Ok(idx
        .chunks(2)
        .enumerate()
        .map(|(i, c)| {
            let j = if c[0] as usize == i { c[1] } else { c[0] };
            labels[j as usize]
        })
        .collect())
}

/// Flips between a reference system and a new one, by top-1 correctness per query.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Flips {
    /// Share of queries right before and wrong after (negative flips: regressions).
    pub negative: f64,
    /// Share of queries wrong before and right after.
    pub positive: f64,
    /// Top-1 accuracy of the reference system.
    pub before: f64,
    /// Top-1 accuracy of the new system.
    pub after: f64,
}

/// Negative and positive flip rates from per-query top-1 labels of two systems.
pub fn flips(before: &[i64], after: &[i64], labels: &[i64]) -> Result<Flips, EvalError> {
    if before.len() != labels.len() || after.len() != labels.len() || labels.is_empty() {
        return Err(EvalError::Mismatch(
            "flips need one top-1 label per query for both systems".into(),
        ));
    }
    let n = labels.len() as f64;
    let (mut neg, mut pos, mut b, mut a) = (0usize, 0usize, 0usize, 0usize);
    for ((&x, &y), &l) in before.iter().zip(after).zip(labels) {
        let (rb, ra) = (x == l, y == l);
        b += usize::from(rb);
        a += usize::from(ra);
        neg += usize::from(rb && !ra);
        pos += usize::from(!rb && ra);
    }
    Ok(Flips {
        negative: neg as f64 / n,
        positive: pos as f64 / n,
        before: b as f64 / n,
        after: a as f64 / n,
    })
}
