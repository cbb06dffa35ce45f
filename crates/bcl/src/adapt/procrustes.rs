//! Orthogonal Procrustes, new → old, as the SLERP paper's code fits it
//! (`miccunifi/SLERP_backward_compatibility`, `slerp_bc/method.py`): the old vectors are
//! zero-padded to `d = max(d_new, d_old)`, and `R = P Qᵀ` from the SVD of `Vᵀ U` (`V` the new
//! vectors, `U` the padded old ones, both L2-normalised) minimises `‖V R − U‖_F` over maps
//! with orthonormal rows or columns. A query maps to `v R`, of which the first `d_old`
//! coordinates are the old space's (the padding's are zero in every gallery vector).

use serde_json::json;
use tch::{Device, Kind, Tensor};

use super::{
    expect_shape, pad_to, AdaptError, AdapterCard, AdapterSpec, Companion, Direction, FitConfig,
    Fitted, Params, SupportSet,
};

/// The registry entry of `procrustes`.
pub struct Spec;

/// `R` `[d_new, max(d_new, d_old)]` fitted in float64 on `new` `[N, d_new]` and `old`
/// `[N, d_old]` (both normalised).
pub(crate) fn fit_rotation(new: &Tensor, old: &Tensor, device: Device) -> Tensor {
    let d = new.size()[1].max(old.size()[1]) as usize;
    let v = new.to_device(device).to_kind(Kind::Double);
    let u = pad_to(&old.to_device(device).to_kind(Kind::Double), d);
    let m = v.tr().matmul(&u);
    // torch.svd's V is not transposed: M = P diag(S) Vᵀ, so R = P Vᵀ
    let (p, _, q) = m.svd(true, true);
    p.matmul(&q.tr())
        .to_kind(Kind::Float)
        .to_device(Device::Cpu)
}

/// `x R`, cut to the first `to_dim` coordinates.
pub(crate) fn rotate(r: &Tensor, x: &Tensor, to_dim: usize) -> Tensor {
    x.matmul(r).narrow(1, 0, to_dim as i64)
}

impl AdapterSpec for Spec {
    fn name(&self) -> &'static str {
        "procrustes"
    }

    fn description(&self) -> &'static str {
        "orthogonal Procrustes, new → old: one SVD on the support pairs (zero-padding the \
         old space when the new one is wider)"
    }

    fn direction(&self) -> Direction {
        Direction::NewToOld
    }

    fn companion(&self) -> Companion {
        Companion::None
    }

    fn fit(
        &self,
        support: &SupportSet,
        _cfg: &FitConfig,
        device: Device,
    ) -> Result<Fitted, AdaptError> {
        let mut params = Params::default();
        params.insert(
            "rotation",
            fit_rotation(support.new_vectors(), support.old_vectors(), device),
        );
        Ok(Fitted {
            params,
            settings: json!({}),
            report: json!({}),
        })
    }

    fn apply(
        &self,
        p: &Params,
        x: &Tensor,
        _companion: Option<&Tensor>,
        to_dim: usize,
    ) -> Result<Tensor, AdaptError> {
        Ok(rotate(p.get("rotation")?, x, to_dim))
    }

    fn check(&self, p: &Params, card: &AdapterCard) -> Result<(), String> {
        let d = card.from.dim.max(card.to.dim) as i64;
        expect_shape(p, "rotation", &[card.from.dim as i64, d])
    }
}
