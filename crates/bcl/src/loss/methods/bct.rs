//! `bct`: the influence loss against the old class prototypes (BCT).

use crate::loss::method::{BuildContext, MethodSpec, Needs};
use crate::loss::{CompatConfig, CompatLoss};

/// The registry entry.
pub struct Bct;

impl MethodSpec for Bct {
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
        }
    }
    fn config_view(&self, cfg: &CompatConfig) -> Result<serde_json::Value, String> {
        Ok(serde_json::json!({ "lambda": cfg.lambda, "scale": cfg.scale }))
    }
    fn build(&self, cfg: &CompatConfig, ctx: BuildContext) -> Result<Box<dyn CompatLoss>, String> {
        Ok(Box::new(crate::loss::Bct {
            lambda: cfg.lambda,
            scale: cfg.scale,
            prototypes: ctx.prototypes(self.name())?,
        }))
    }
}
