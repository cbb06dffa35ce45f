//! `lce`: LCE, the new classifier aligned with the old class centres plus the old-class
//! boundary (its settings and loss below).

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::loss::method::{check, defaults_table, section, BuildContext, MethodSpec, Needs};
use crate::loss::radii::{cos_distance, old_class_radii};
use crate::loss::{CompatConfig, CompatInputs, CompatLoss, LossError};
use crate::model::l2_normalize;

/// The registry entry.
pub struct Spec;

const NAME: &str = "lce";

impl MethodSpec for Spec {
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
        Ok(Box::new(Lce::new(
            cfg.lambda,
            section(cfg, NAME)?,
            ctx.prototypes(NAME)?,
            &bank,
            &labels,
        )))
    }
}

/// Hyper-parameters of `lce`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LceConfig {
    /// Weight of the alignment of the new classifier rows with the old class centres.
    pub align_weight: f64,
    /// Weight of the boundary term.
    pub boundary_weight: f64,
}

impl Default for LceConfig {
    fn default() -> Self {
        Self {
            align_weight: 1.0,
            boundary_weight: 1.0,
        }
    }
}

/// `lce`: `align_weight · mean_k (1 − ⟨w_k/‖w_k‖, p°_k⟩)` (new classifier rows aligned with the
/// old class centres) `+ boundary_weight · mean_i max(0, (1 − ⟨f_i, p°_y⟩) − r_y)`, where `r_k`
/// is the cosine distance of the worst old sample of class k to its centre: each new feature
/// must sit at least as close to its old centre as the old model's own worst sample.
#[derive(Debug)]
pub struct Lce {
    /// λ.
    pub lambda: f64,
    /// Its configuration.
    pub cfg: LceConfig,
    /// Old class centres `P°` `[C, d]`.
    pub centres: Tensor,
    /// Radii `r_k` `[C]`.
    pub radii: Tensor,
}

impl Lce {
    /// An LCE loss with radii measured on the old feature bank `(bank, labels)`.
    pub fn new(
        lambda: f64,
        cfg: LceConfig,
        centres: Tensor,
        bank: &Tensor,
        labels: &Tensor,
    ) -> Self {
        let radii = old_class_radii(&centres, bank, labels);
        Self {
            lambda,
            cfg,
            centres,
            radii,
        }
    }
}

impl CompatLoss for Lce {
    fn weight(&self) -> f64 {
        self.lambda
    }
    fn loss(&self, inputs: &CompatInputs) -> Result<Option<Tensor>, LossError> {
        let w = inputs.classifier_weights(NAME)?;
        let align = cos_distance(&l2_normalize(w), &self.centres).mean(Kind::Float);
        let d = cos_distance(inputs.new, &self.centres.index_select(0, inputs.labels));
        let bound = (d - self.radii.index_select(0, inputs.labels))
            .relu()
            .mean(Kind::Float);
        Ok(Some(
            align * self.cfg.align_weight + bound * self.cfg.boundary_weight,
        ))
    }
}
