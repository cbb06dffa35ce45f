//! `unibct`: UniBCT, the influence loss against old prototypes refined by propagation over the
//! new model's class graph (refinement in `loss::zoo`).

use crate::loss::method::{check, defaults_table, section, BuildContext, MethodSpec, Needs};
use crate::loss::zoo::UnibctConfig;
use crate::loss::{CompatConfig, CompatLoss, PerturbedBct};

/// The registry entry.
pub struct Unibct;

const NAME: &str = "unibct";

impl MethodSpec for Unibct {
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
        }
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
        Ok(Box::new(PerturbedBct::new(
            cfg.lambda,
            cfg.scale,
            ctx.prototypes(NAME)?,
            cfg.refresh.clone(),
            Box::new(crate::loss::zoo::UnibctRefine {
                cfg: section(cfg, NAME)?,
            }),
        )))
    }
}
