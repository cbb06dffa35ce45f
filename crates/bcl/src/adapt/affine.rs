//! An affine map new → old with a relaxed orthogonality constraint, after the λ-orthogonality
//! regularisation of Ricci et al. (NeurIPS 2025): `f(x) = x W + b`, trained on the support
//! pairs to minimise `mean(1 − cos(f(vᵢ), uᵢ)) + β · max(0, ‖G − I‖²_F − λ)`, where `G` is
//! `WᵀW` (or `WWᵀ` when the new space is narrower): free to leave orthogonality by up to λ,
//! penalised beyond it. Started from the Procrustes solution (orthogonal, so inside the
//! threshold), trained with Adam on shuffled mini-batches. The paper's code was not reachable
//! when this was written; the penalty's form (a hinge on the squared Frobenius residual) and
//! the defaults below are this crate's.

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use super::procrustes::fit_rotation;
use super::{
    expect_shape, AdaptError, AdapterCard, AdapterSpec, Companion, Direction, FitConfig, Fitted,
    Params, SupportSet,
};

/// The affine map's settings (`[affine]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AffineConfig {
    /// λ: how far `‖G − I‖²_F` may grow before it is penalised.
    pub lambda: f64,
    /// β: the weight of the penalty beyond λ.
    pub beta: f64,
    /// Passes over the support set.
    pub epochs: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// Pairs per step.
    pub batch: usize,
}

impl Default for AffineConfig {
    fn default() -> Self {
        Self {
            lambda: 0.1,
            beta: 10.0,
            epochs: 100,
            lr: 1e-3,
            batch: 256,
        }
    }
}

impl AffineConfig {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), AdaptError> {
        let bad = |m: String| Err(AdaptError::Settings(m));
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return bad(format!("affine lambda {} must be ≥ 0", self.lambda));
        }
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return bad(format!("affine beta {} must be ≥ 0", self.beta));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("affine lr {} must be > 0", self.lr));
        }
        if self.batch == 0 || self.epochs == 0 {
            return bad("affine batch and epochs must be ≥ 1".into());
        }
        Ok(())
    }
}

/// The registry entry of `affine`.
pub struct Spec;

/// `‖G − I‖²_F` for `w` `[d_in, d_out]`, `G` the smaller Gram matrix.
pub(crate) fn orthogonality_residual(w: &Tensor) -> Tensor {
    let (d_in, d_out) = (w.size()[0], w.size()[1]);
    let g = if d_in >= d_out {
        w.tr().matmul(w)
    } else {
        w.matmul(&w.tr())
    };
    let eye = Tensor::eye(g.size()[0], (g.kind(), g.device()));
    (g - eye).square().sum(Kind::Float)
}

impl AdapterSpec for Spec {
    fn name(&self) -> &'static str {
        "affine"
    }

    fn description(&self) -> &'static str {
        "affine map new → old trained on the support pairs, orthogonality relaxed up to a \
         threshold λ (λ-orthogonality)"
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
        cfg: &FitConfig,
        device: Device,
    ) -> Result<Fitted, AdaptError> {
        let c = &cfg.affine;
        let d_old = support.old_dim() as i64;
        let start =
            fit_rotation(support.new_vectors(), support.old_vectors(), device).narrow(1, 0, d_old);
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let w = root.var_copy("weight", &start.to_device(device));
        let b = root.zeros("bias", &[d_old]);
        let mut opt = nn::Adam::default()
            .build(&vs, c.lr)
            .map_err(|e| AdaptError::Settings(format!("affine optimiser: {e}")))?;
        let (x, y) = (
            support.new_vectors().to_device(device),
            support.old_vectors().to_device(device),
        );
        let n = support.len();
        let mut order: Vec<i64> = (0..n as i64).collect();
        let mut rng = crate::data::rng_for(cfg.seed, 0xada9);
        let mut last = f64::NAN;
        for _ in 0..c.epochs {
            order.shuffle(&mut rng);
            let mut total = 0.0;
            for chunk in order.chunks(c.batch) {
                let idx = Tensor::from_slice(chunk).to_device(device);
                let (xb, yb) = (x.index_select(0, &idx), y.index_select(0, &idx));
                let out = xb.matmul(&w) + &b;
                let cos = Tensor::cosine_similarity(&out, &yb, 1, 1e-8);
                let align = (cos.neg() + 1.0).mean(Kind::Float);
                let penalty = (orthogonality_residual(&w) - c.lambda).relu() * c.beta;
                let loss = align + penalty;
                opt.backward_step(&loss);
                total += loss.double_value(&[]) * chunk.len() as f64;
            }
            last = total / n as f64;
        }
        let residual = tch::no_grad(|| orthogonality_residual(&w).double_value(&[]));
        let mut params = Params::default();
        params.insert("weight", w.detach().to_device(Device::Cpu));
        params.insert("bias", b.detach().to_device(Device::Cpu));
        Ok(Fitted {
            params,
            settings: serde_json::to_value(c).unwrap_or_default(),
            report: json!({
                "final_loss": last,
                "orthogonality_residual": residual,
                "start": "procrustes",
            }),
        })
    }

    fn apply(
        &self,
        p: &Params,
        x: &Tensor,
        _companion: Option<&Tensor>,
        _to_dim: usize,
    ) -> Result<Tensor, AdaptError> {
        Ok(x.matmul(p.get("weight")?) + p.get("bias")?)
    }

    fn check(&self, p: &Params, card: &AdapterCard) -> Result<(), String> {
        expect_shape(p, "weight", &[card.from.dim as i64, card.to.dim as i64])?;
        expect_shape(p, "bias", &[card.to.dim as i64])
    }
}
