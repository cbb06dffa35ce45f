//! `advbct`: AdvBCT, a gradient-reversal discriminator between old and new features plus an
//! elastic boundary around the old classes (loss in `loss::zoo`).

use crate::loss::method::{check, defaults_table, section, BuildContext, MethodSpec, Needs};
use crate::loss::zoo::AdvbctConfig;
use crate::loss::{CompatConfig, CompatLoss};

/// The registry entry.
pub struct Advbct;

const NAME: &str = "advbct";

impl MethodSpec for Advbct {
    fn name(&self) -> &'static str {
        NAME
    }
    fn description(&self) -> &'static str {
        "AdvBCT: adversarial discriminator plus elastic old-class boundary"
    }
    fn needs(&self) -> Needs {
        Needs {
            prototypes: true,
            old_bank: true,
        }
    }
    fn default_settings(&self) -> Option<toml::Table> {
        defaults_table::<AdvbctConfig>()
    }
    fn validate(&self, cfg: &CompatConfig) -> Result<(), String> {
        let a: AdvbctConfig = section(cfg, NAME)?;
        let w = a.adv_weight;
        check("compat.advbct.adv_weight", w, w >= 0.0, ">= 0")?;
        let b = a.boundary_weight;
        check("compat.advbct.boundary_weight", b, b >= 0.0, ">= 0")?;
        check("compat.advbct.elastic", a.elastic, a.elastic >= 0.0, ">= 0")?;
        let q = a.radius_quantile;
        check(
            "compat.advbct.radius_quantile",
            q,
            q > 0.0 && q <= 1.0,
            "in (0, 1]",
        )?;
        if a.hidden < 1 {
            return Err(format!(
                "compat.advbct.hidden = {}: expected >= 1",
                a.hidden
            ));
        }
        let g = a.schedule_gamma;
        check("compat.advbct.schedule_gamma", g, g >= 0.0, ">= 0")
    }
    fn config_view(&self, cfg: &CompatConfig) -> Result<serde_json::Value, String> {
        let a: AdvbctConfig = section(cfg, NAME)?;
        Ok(serde_json::json!({ "lambda": cfg.lambda,
            "old_bank_per_class": cfg.old_bank_per_class()?, "advbct": a }))
    }
    fn build(&self, cfg: &CompatConfig, ctx: BuildContext) -> Result<Box<dyn CompatLoss>, String> {
        let (bank, labels) = ctx.old_bank(NAME)?;
        Ok(Box::new(crate::loss::zoo::Advbct::new(
            cfg.lambda,
            section(cfg, NAME)?,
            ctx.prototypes(NAME)?,
            &bank,
            &labels,
        )))
    }
}
