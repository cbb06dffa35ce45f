//! `lce`: LCE, the new classifier aligned with the old class centres plus the old-class
//! boundary (loss in `loss::zoo`).

use crate::loss::method::{check, defaults_table, section, BuildContext, MethodSpec, Needs};
use crate::loss::zoo::LceConfig;
use crate::loss::{CompatConfig, CompatLoss};

/// The registry entry.
pub struct Lce;

const NAME: &str = "lce";

impl MethodSpec for Lce {
    fn name(&self) -> &'static str {
        NAME
    }
    fn description(&self) -> &'static str {
        "LCE: new classifier aligned with the old centres, plus the old-class boundary"
    }
    fn needs(&self) -> Needs {
        Needs {
            prototypes: true,
            old_bank: true,
        }
    }
    fn default_settings(&self) -> Option<toml::Table> {
        defaults_table::<LceConfig>()
    }
    fn validate(&self, cfg: &CompatConfig) -> Result<(), String> {
        let l: LceConfig = section(cfg, NAME)?;
        let a = l.align_weight;
        check("compat.lce.align_weight", a, a >= 0.0, ">= 0")?;
        let b = l.boundary_weight;
        check("compat.lce.boundary_weight", b, b >= 0.0, ">= 0")
    }
    fn config_view(&self, cfg: &CompatConfig) -> Result<serde_json::Value, String> {
        let l: LceConfig = section(cfg, NAME)?;
        Ok(serde_json::json!({ "lambda": cfg.lambda,
            "old_bank_per_class": cfg.old_bank_per_class()?, "lce": l }))
    }
    fn build(&self, cfg: &CompatConfig, ctx: BuildContext) -> Result<Box<dyn CompatLoss>, String> {
        let (bank, labels) = ctx.old_bank(NAME)?;
        Ok(Box::new(crate::loss::zoo::Lce::new(
            cfg.lambda,
            section(cfg, NAME)?,
            ctx.prototypes(NAME)?,
            &bank,
            &labels,
        )))
    }
}
