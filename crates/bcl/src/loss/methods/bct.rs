//! `bct`: the influence loss against the old class prototypes (BCT).

use tch::{Reduction, Tensor};

use crate::loss::method::{BuildContext, MethodSpec, Needs};
use crate::loss::{CompatConfig, CompatInputs, CompatLoss, LossError};

/// The registry entry.
pub struct Spec;

impl MethodSpec for Spec {
    fn name(&self) -> &'static str {
        "bct"
    }
    fn description(&self) -> &'static str {
        "influence loss against the old class prototypes (BCT)"
    }
    fn needs(&self) -> Needs {
        Needs {
            prototypes: true,
            old_bank: false,
            ..Needs::default()
        }
    }
    fn config_view(&self, cfg: &CompatConfig) -> Result<serde_json::Value, String> {
        Ok(serde_json::json!({ "lambda": cfg.lambda, "scale": cfg.scale }))
    }
    fn build(&self, cfg: &CompatConfig, ctx: BuildContext) -> Result<Box<dyn CompatLoss>, String> {
        Ok(Box::new(Bct {
            lambda: cfg.lambda,
            scale: cfg.scale,
            prototypes: ctx.prototypes(self.name())?,
        }))
    }
}

/// `bct`'s loss: the influence loss `CE(s·⟨f, p_k⟩_k, y)` against a table of (pseudo-)old
/// prototypes.
#[derive(Debug)]
pub struct Bct {
    /// λ.
    pub lambda: f64,
    /// Scale `s`.
    pub scale: f64,
    /// Prototypes `[C, d]`, L2-normalised, constant (no gradient).
    pub prototypes: Tensor,
}

impl Bct {
    /// Influence loss of embeddings `f` against `prototypes` (both normalised).
    pub fn influence(f: &Tensor, prototypes: &Tensor, labels: &Tensor, scale: f64) -> Tensor {
        (f.matmul(&prototypes.tr()) * scale).cross_entropy_loss::<Tensor>(
            labels,
            None,
            Reduction::Mean,
            -100,
            0.0,
        )
    }
}

impl CompatLoss for Bct {
    fn weight(&self) -> f64 {
        self.lambda
    }
    fn loss(&self, inputs: &CompatInputs) -> Result<Option<Tensor>, LossError> {
        Ok(Some(Self::influence(
            inputs.new,
            &self.prototypes,
            inputs.labels,
            self.scale,
        )))
    }
}
