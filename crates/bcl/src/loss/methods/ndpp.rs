//! `ndpp`: the influence loss against NDPP's pseudo-old prototypes (the closed-form
//! neighbour-driven perturbation of `perturb::Ndpp`), refreshed as `[compat.refresh]` says.

use crate::loss::method::{check, defaults_table, section, BuildContext, Knob, MethodSpec, Needs};
use crate::loss::{CompatConfig, CompatLoss, Perturbed};
use crate::perturb::NdppConfig;

/// The registry entry.
pub struct Spec;

const NAME: &str = "ndpp";

impl MethodSpec for Spec {
    fn name(&self) -> &'static str {
        NAME
    }
    fn description(&self) -> &'static str {
        "influence loss against NDPP's pseudo-old prototypes (closed form, neighbour-driven)"
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
        defaults_table::<NdppConfig>()
    }
    fn validate(&self, cfg: &CompatConfig) -> Result<(), String> {
        let n: NdppConfig = section(cfg, NAME)?;
        if n.k == 0 {
            return Err("compat.ndpp.k = 0: expected >= 1 neighbours".into());
        }
        check("compat.ndpp.tau", n.tau, n.tau > 0.0, "> 0")?;
        let a = n.alpha;
        check(
            "compat.ndpp.alpha",
            a,
            (0.0..=1.0).contains(&a),
            "in [0, 1]",
        )?;
        check(
            "compat.ndpp.eps",
            n.eps,
            (0.0..1.0).contains(&n.eps),
            "in [0, 1)",
        )?;
        if let Some(b) = n.beta {
            check("compat.ndpp.beta", b, b > 0.0 && b < 0.5, "in (0, 1/2)")?;
        }
        Ok(())
    }
    fn config_view(&self, cfg: &CompatConfig) -> Result<serde_json::Value, String> {
        let n: NdppConfig = section(cfg, NAME)?;
        Ok(
            serde_json::json!({ "lambda": cfg.lambda, "scale": cfg.scale,
            "refresh": cfg.refresh, "ndpp": n }),
        )
    }
    fn knobs(&self) -> &'static [Knob] {
        &[
            Knob {
                name: "ndpp-eps",
                method: Some(NAME),
                key: "eps",
            },
            Knob {
                name: "ndpp-beta",
                method: Some(NAME),
                key: "beta",
            },
        ]
    }
    fn build(&self, cfg: &CompatConfig, ctx: BuildContext) -> Result<Box<dyn CompatLoss>, String> {
        Ok(Box::new(Perturbed::bct(
            cfg.lambda,
            cfg.scale,
            ctx.prototypes(NAME)?,
            cfg.refresh.clone(),
            Box::new(crate::perturb::Ndpp {
                cfg: section(cfg, NAME)?,
            }),
        )))
    }
}
