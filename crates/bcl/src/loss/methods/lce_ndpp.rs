//! `lce-ndpp`: the perturbation layer over LCE: LCE's classifier alignment against NDPP's
//! pseudo-old centres, its boundary around the true old centres. Settings: `[compat.lce]` and
//! `[compat.ndpp]` (it has none of its own); with NDPP's ε = 0 it is exactly `lce`.

use crate::loss::method::{BuildContext, Knob, MethodSpec, Needs};
use crate::loss::methods::{lce, ndpp};
use crate::loss::{CompatConfig, CompatLoss, Perturbed};

/// The registry entry.
pub struct Spec;

const NAME: &str = "lce-ndpp";

impl MethodSpec for Spec {
    fn name(&self) -> &'static str {
        NAME
    }
    fn description(&self) -> &'static str {
        "LCE with its classifier aligned with NDPP's pseudo-old centres (boundary unmoved)"
    }
    fn needs(&self) -> Needs {
        lce::Spec.needs()
    }
    fn refreshes(&self) -> bool {
        true
    }
    fn validate(&self, cfg: &CompatConfig) -> Result<(), String> {
        lce::Spec.validate(cfg)?;
        ndpp::Spec.validate(cfg)
    }
    fn config_view(&self, cfg: &CompatConfig) -> Result<serde_json::Value, String> {
        let mut v = lce::Spec.config_view(cfg)?;
        v["ndpp"] = ndpp::Spec.config_view(cfg)?["ndpp"].take();
        v["refresh"] = serde_json::to_value(&cfg.refresh).map_err(|e| e.to_string())?;
        Ok(v)
    }
    fn knobs(&self) -> &'static [Knob] {
        ndpp::Spec.knobs()
    }
    fn build(&self, cfg: &CompatConfig, ctx: BuildContext) -> Result<Box<dyn CompatLoss>, String> {
        let base = lce::Lce::from_context(cfg, &ctx, NAME)?;
        Ok(Box::new(Perturbed::over(
            Box::new(base),
            cfg.lambda,
            ctx.prototypes(NAME)?,
            cfg.refresh.clone(),
            Box::new(crate::perturb::Ndpp {
                cfg: crate::loss::method::section(cfg, "ndpp")?,
            }),
        )))
    }
}
