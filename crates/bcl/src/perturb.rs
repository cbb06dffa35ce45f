//! Prototype tables: class prototypes `p_k = normalize(mean{f_i : y_i = k})` computed from
//! embeddings. The perturbation strategies of METHOD.md sections 4 and 5 (NDPP, ODPP) will
//! refresh a perturbation Δ on top of these tables; `bct` is the perturbation-free case.

use tch::{Kind, Tensor};

use crate::model::l2_normalize;

/// Errors of prototype computation.
#[derive(Debug, thiserror::Error)]
pub enum PrototypeError {
    /// A class has no sample to average.
    #[error("class {0} has no training sample: cannot compute its prototype")]
    EmptyClass(i64),
}

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
    let counts_v: Vec<f32> =
        Vec::try_from(&counts.to_device(tch::Device::Cpu)).expect("counts to vec");
    if let Some(k) = counts_v.iter().position(|&c| c == 0.0) {
        return Err(PrototypeError::EmptyClass(k as i64));
    }
    Ok(l2_normalize(&sums))
}
