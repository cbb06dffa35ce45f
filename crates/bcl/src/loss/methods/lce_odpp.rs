//! `lce-odpp`: the perturbation layer over LCE: LCE's classifier alignment against ODPP's
//! pseudo-old centres, its boundary around the true old centres. Settings: `[compat.lce]` and
//! `[compat.odpp]` (it has none of its own); with ODPP's ε = 0 it is exactly `lce`.

use crate::loss::method::{BuildContext, Knob, MethodSpec, Needs};
use crate::loss::methods::{lce, odpp};
use crate::loss::{CompatConfig, CompatLoss, Perturbed};

/// The registry entry.
pub struct Spec;

const NAME: &str = "lce-odpp";

impl MethodSpec for Spec {
    fn name(&self) -> &'static str {
        NAME
    }
    fn description(&self) -> &'static str {
        "LCE with its classifier aligned with ODPP's pseudo-old centres (boundary unmoved)"
    }
    fn needs(&self) -> Needs {
        Needs {
            old_bank: true,
            ..lce::Spec.needs()
        }
    }
    fn refreshes(&self) -> bool {
        true
    }
    fn validate(&self, cfg: &CompatConfig) -> Result<(), String> {
        lce::Spec.validate(cfg)?;
        odpp::Spec.validate(cfg)
    }
    fn config_view(&self, cfg: &CompatConfig) -> Result<serde_json::Value, String> {
        let mut v = lce::Spec.config_view(cfg)?;
        v["odpp"] = serde_json::to_value(odpp::resolved(cfg)?).map_err(|e| e.to_string())?;
        v["refresh"] = serde_json::to_value(&cfg.refresh).map_err(|e| e.to_string())?;
        Ok(v)
    }
    fn knobs(&self) -> &'static [Knob] {
        odpp::Spec.knobs()
    }
    fn build(&self, cfg: &CompatConfig, ctx: BuildContext) -> Result<Box<dyn CompatLoss>, String> {
        let base = lce::Lce::from_context(cfg, &ctx, NAME)?;
        let p = ctx.prototypes(NAME)?;
        let (c, d) = p.size2().map_err(|e| format!("old prototypes: {e}"))?;
        let (bank, labels) = ctx.old_bank(NAME)?;
        let strategy = crate::perturb::Odpp::new(odpp::resolved(cfg)?, bank, labels, c, d);
        Ok(Box::new(Perturbed::over(
            Box::new(base),
            cfg.lambda,
            p,
            cfg.refresh.clone(),
            Box::new(strategy),
        )))
    }
}
