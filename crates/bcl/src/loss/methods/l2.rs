//! `l2`: regression of the new embedding to the old model's embedding of the same image.

use tch::{Kind, Tensor};

use crate::loss::method::{BuildContext, MethodSpec};
use crate::loss::{CompatConfig, CompatInputs, CompatLoss, LossError};

/// The registry entry.
pub struct Spec;

const NAME: &str = "l2";

impl MethodSpec for Spec {
    fn name(&self) -> &'static str {
        NAME
    }
    fn description(&self) -> &'static str {
        "feature regression to the old embedding of the same image"
    }
    fn config_view(&self, cfg: &CompatConfig) -> Result<serde_json::Value, String> {
        Ok(serde_json::json!({ "lambda": cfg.lambda }))
    }
    fn build(&self, cfg: &CompatConfig, _: BuildContext) -> Result<Box<dyn CompatLoss>, String> {
        Ok(Box::new(L2 { lambda: cfg.lambda }))
    }
}

/// `l2`'s loss: mean over the batch of `‖f − g‖²`, with g the old model's embedding of the
/// same image.
#[derive(Debug)]
pub struct L2 {
    /// λ.
    pub lambda: f64,
}

impl CompatLoss for L2 {
    fn needs_old_embeddings(&self) -> bool {
        true
    }
    fn weight(&self) -> f64 {
        self.lambda
    }
    fn loss(&self, inputs: &CompatInputs) -> Result<Option<Tensor>, LossError> {
        let g = inputs.old_embeddings(NAME)?;
        Ok(Some(
            (inputs.new - g)
                .square()
                .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
                .mean(Kind::Float),
        ))
    }
}
