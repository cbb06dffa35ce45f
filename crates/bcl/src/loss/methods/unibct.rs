//! `unibct`: UniBCT, the influence loss against old prototypes refined by propagation over the
//! new model's class graph (its settings and the refinement below).

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::loss::method::{check, defaults_table, section, BuildContext, MethodSpec, Needs};
use crate::loss::{CompatConfig, CompatLoss, Perturbed};
use crate::model::l2_normalize;
use crate::perturb::{Perturbation, RefreshInputs};

/// The registry entry.
pub struct Spec;

const NAME: &str = "unibct";

impl MethodSpec for Spec {
    fn name(&self) -> &'static str {
        NAME
    }
    fn description(&self) -> &'static str {
        "UniBCT: influence loss against old prototypes refined over the new class graph"
    }
    fn needs(&self) -> Needs {
        Needs {
            prototypes: true,
            old_bank: false,
            ..Needs::default()
        }
    }
    fn refreshes(&self) -> bool {
        true
    }
    fn default_settings(&self) -> Option<toml::Table> {
        defaults_table::<UnibctConfig>()
    }
    fn validate(&self, cfg: &CompatConfig) -> Result<(), String> {
        let u: UnibctConfig = section(cfg, NAME)?;
        if u.k == 0 {
            return Err("compat.unibct.k = 0: expected >= 1 neighbours".into());
        }
        let a = u.alpha;
        check(
            "compat.unibct.alpha",
            a,
            (0.0..1.0).contains(&a),
            "in [0, 1)",
        )
    }
    fn config_view(&self, cfg: &CompatConfig) -> Result<serde_json::Value, String> {
        let u: UnibctConfig = section(cfg, NAME)?;
        Ok(
            serde_json::json!({ "lambda": cfg.lambda, "scale": cfg.scale,
            "refresh": cfg.refresh, "unibct": u }),
        )
    }
    fn build(&self, cfg: &CompatConfig, ctx: BuildContext) -> Result<Box<dyn CompatLoss>, String> {
        Ok(Box::new(Perturbed::bct(
            cfg.lambda,
            cfg.scale,
            ctx.prototypes(NAME)?,
            cfg.refresh.clone(),
            Box::new(UnibctRefine {
                cfg: section(cfg, NAME)?,
            }),
        )))
    }
}

/// Hyper-parameters of `unibct`'s prototype refinement.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UnibctConfig {
    /// Neighbours per class in the kNN graph of the new prototypes.
    pub k: usize,
    /// Propagation strength λ_p in `(1 − λ_p)(I − λ_p A)^{-1}`; 0 leaves `P°` as it is (= bct).
    pub alpha: f64,
}

impl Default for UnibctConfig {
    fn default() -> Self {
        Self { k: 5, alpha: 0.5 }
    }
}

/// UniBCT's structural refinement: `P̂ = normalize((1 − α)(I − αA)^{-1} P°)` with `A` the
/// symmetrically normalised kNN graph of the current new prototypes; returned as a Δ so that
/// the influence loss is `bct` against `P̂` (the same machinery as NDPP/ODPP).
#[derive(Debug, Clone)]
pub struct UnibctRefine {
    /// Its configuration.
    pub cfg: UnibctConfig,
}

impl UnibctRefine {
    /// The refined prototypes for old prototypes `old` and new prototypes `new` (`[C, d]`).
    pub fn refine(&self, old: &Tensor, new: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let c = old.size()[0];
            let k = (self.cfg.k as i64).min(c - 1);
            if k <= 0 || self.cfg.alpha == 0.0 {
                return old.shallow_clone();
            }
            let eye = Tensor::eye(c, (Kind::Float, old.device()));
            let s = new
                .matmul(&new.tr())
                .masked_fill(&eye.to_kind(Kind::Bool), f64::NEG_INFINITY);
            let (vals, idx) = s.topk(k, 1, true, false);
            let w = Tensor::zeros([c, c], (Kind::Float, old.device())).scatter(
                1,
                &idx,
                &vals.clamp_min(0.0),
            );
            let w = (&w + &w.tr()) * 0.5;
            let deg = w.sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
            let inv = deg.clamp_min(1e-12).rsqrt() * deg.gt(0.0).to_kind(Kind::Float);
            let a = &inv.unsqueeze(1) * &w * inv.unsqueeze(0);
            let m = &eye - a * self.cfg.alpha;
            l2_normalize(&(Tensor::linalg_solve(&m, old, true) * (1.0 - self.cfg.alpha)))
        })
    }
}

impl Perturbation for UnibctRefine {
    fn refresh(&mut self, inputs: &RefreshInputs) -> (Tensor, Option<(f64, f64)>) {
        // normalize(P° + (P̂ − P°)) = P̂, since P̂ is normalised.
        (self.refine(inputs.old, inputs.new) - inputs.old, None)
    }
}
