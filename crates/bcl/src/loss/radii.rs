//! Old-class radii: how far the old model's own samples of a class lie from its old prototype
//! (the boundary terms of LCE and AdvBCT keep new features inside them).

use tch::{Device, Kind, Tensor};

/// Cosine distance `1 − ⟨a, b⟩` of normalised rows.
pub fn cos_distance(a: &Tensor, b: &Tensor) -> Tensor {
    -(a * b).sum_dim_intlist([1i64].as_slice(), false, Kind::Float) + 1.0
}

/// Per-class radius of old features around their old prototypes: the largest cosine distance
/// `1 − ⟨g_j, p°_k⟩` over the bank's samples of class k (0 for a class without samples).
pub fn old_class_radii(prototypes: &Tensor, bank: &Tensor, labels: &Tensor) -> Tensor {
    old_class_radii_quantile(prototypes, bank, labels, 1.0)
}

/// Per-class `q`-quantile (nearest rank, `q` in (0, 1]) of the cosine distances of old features
/// to their old prototype: `q = 1` is the worst sample, `q = 0.5` the median (0 for a class
/// without samples).
pub fn old_class_radii_quantile(
    prototypes: &Tensor,
    bank: &Tensor,
    labels: &Tensor,
    q: f64,
) -> Tensor {
    // A per-class quantile over a host copy: torch's index_reduce("amax") would give the maximum
    // but warns on every call that its API is in beta, and has no quantile.
    let c = prototypes.size()[0] as usize;
    let d = tch::no_grad(|| cos_distance(bank, &prototypes.index_select(0, labels)));
    let d: Vec<f32> =
        Vec::try_from(&d.to_device(Device::Cpu).to_kind(Kind::Float)).expect("distances to host");
    let y: Vec<i64> =
        Vec::try_from(&labels.to_device(Device::Cpu).to_kind(Kind::Int64)).expect("labels to host");
    let mut per_class = vec![Vec::new(); c];
    for (&di, &yi) in d.iter().zip(&y) {
        per_class[yi as usize].push(di);
    }
    let r: Vec<f32> = per_class
        .into_iter()
        .map(|mut v| {
            if v.is_empty() {
                return 0.0;
            }
            v.sort_by(f32::total_cmp);
            // nearest rank: the smallest value with at least a share q of the samples at or below
            let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
            v[rank - 1]
        })
        .collect();
    Tensor::from_slice(&r).to_device(bank.device())
}
