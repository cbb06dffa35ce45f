//! `independent`: no compatibility term (the upper bound every gain is measured against; never
//! compatible).

use tch::Tensor;

use crate::loss::method::{BuildContext, MethodSpec};
use crate::loss::{CompatConfig, CompatInputs, CompatLoss, LossError};

/// The registry entry.
pub struct Spec;

impl MethodSpec for Spec {
    fn name(&self) -> &'static str {
        "independent"
    }
    fn description(&self) -> &'static str {
        "no compatibility term: the upper bound, not compatible"
    }
    fn has_loss(&self) -> bool {
        false
    }
    fn config_view(&self, _: &CompatConfig) -> Result<serde_json::Value, String> {
        Ok(serde_json::json!({}))
    }
    fn build(&self, _: &CompatConfig, _: BuildContext) -> Result<Box<dyn CompatLoss>, String> {
        Ok(Box::new(Independent))
    }
}

/// `independent`'s loss: none (the upper bound, not compatible).
#[derive(Debug, Default)]
pub struct Independent;

impl CompatLoss for Independent {
    fn weight(&self) -> f64 {
        0.0
    }
    fn loss(&self, _: &CompatInputs) -> Result<Option<Tensor>, LossError> {
        Ok(None)
    }
}
