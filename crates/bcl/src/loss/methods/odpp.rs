//! `odpp`: the influence loss against ODPP's pseudo-old prototypes (the optimised perturbation
//! of `perturb::Odpp`: projected Adam on its objective over the old feature bank).

use crate::loss::method::{check, defaults_table, section, BuildContext, Knob, MethodSpec, Needs};
use crate::loss::{CompatConfig, CompatLoss, Perturbed};
use crate::perturb::OdppConfig;

/// The registry entry.
pub struct Spec;

const NAME: &str = "odpp";

/// ODPP's settings with its logit scale resolved (unset: the influence loss's `scale`).
pub fn resolved(cfg: &CompatConfig) -> Result<OdppConfig, String> {
    let mut o: OdppConfig = section(cfg, NAME)?;
    o.scale.get_or_insert(cfg.scale);
    Ok(o)
}

impl MethodSpec for Spec {
    fn name(&self) -> &'static str {
        NAME
    }
    fn description(&self) -> &'static str {
        "influence loss against ODPP's pseudo-old prototypes (optimised over old features)"
    }
    fn needs(&self) -> Needs {
        Needs {
            prototypes: true,
            old_bank: true,
            ..Needs::default()
        }
    }
    fn refreshes(&self) -> bool {
        true
    }
    fn default_settings(&self) -> Option<toml::Table> {
        defaults_table::<OdppConfig>()
    }
    fn validate(&self, cfg: &CompatConfig) -> Result<(), String> {
        let o: OdppConfig = section(cfg, NAME)?;
        check("compat.odpp.lr", o.lr, o.lr > 0.0, "> 0")?;
        check("compat.odpp.mu", o.mu, o.mu >= 0.0, ">= 0")?;
        check("compat.odpp.gamma", o.gamma, o.gamma >= 0.0, ">= 0")?;
        check(
            "compat.odpp.eps",
            o.eps,
            (0.0..1.0).contains(&o.eps),
            "in [0, 1)",
        )?;
        if let Some(s) = o.scale {
            check("compat.odpp.scale", s, s > 0.0, "> 0")?;
        }
        if o.old_bank_per_class == 0 {
            return Err("compat.odpp.old_bank_per_class = 0: expected >= 1".into());
        }
        Ok(())
    }
    fn config_view(&self, cfg: &CompatConfig) -> Result<serde_json::Value, String> {
        Ok(
            serde_json::json!({ "lambda": cfg.lambda, "scale": cfg.scale,
            "refresh": cfg.refresh, "odpp": resolved(cfg)? }),
        )
    }
    fn knobs(&self) -> &'static [Knob] {
        &[
            Knob {
                name: "odpp-eps",
                method: Some(NAME),
                key: "eps",
            },
            Knob {
                name: "odpp-mu",
                method: Some(NAME),
                key: "mu",
            },
        ]
    }
    fn build(&self, cfg: &CompatConfig, ctx: BuildContext) -> Result<Box<dyn CompatLoss>, String> {
        let p = ctx.prototypes(NAME)?;
        let (c, d) = p.size2().map_err(|e| format!("old prototypes: {e}"))?;
        let (bank, labels) = ctx.old_bank(NAME)?;
        Ok(Box::new(Perturbed::bct(
            cfg.lambda,
            cfg.scale,
            p,
            cfg.refresh.clone(),
            Box::new(crate::perturb::Odpp::new(
                resolved(cfg)?,
                bank,
                labels,
                c,
                d,
            )),
        )))
    }
}
