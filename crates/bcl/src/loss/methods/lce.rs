//! `lce`: LCE (Meng et al., "Learning Compatible Embeddings", ICCV 2021) as its official code
//! (IrvingMeng/LCE, `main.py`) computes it: the new classifier's normalised rows aligned with
//! the old class centres by an element-wise mean-squared error with weight 100, plus the
//! old-class boundary, whose radius is the worst cosine of any old sample of the class to its
//! centre (over every training image, embedded by the old model). Its settings and loss below;
//! the earlier form of this project (a cosine alignment of weight 1) stays as a setting.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::loss::method::{check, defaults_table, section, BuildContext, MethodSpec, Needs};
use crate::loss::radii::{cos_distance, old_class_radii};
use crate::loss::{AlignedLoss, CompatConfig, CompatInputs, CompatLoss, LossError};
use crate::model::l2_normalize;

/// The registry entry.
pub struct Spec;

const NAME: &str = "lce";

impl MethodSpec for Spec {
    fn name(&self) -> &'static str {
        NAME
    }
    fn description(&self) -> &'static str {
        "LCE as published: new classifier aligned with the old centres, plus the old-class boundary"
    }
    fn needs(&self) -> Needs {
        Needs {
            prototypes: true,
            old_bank: true,
            old_radii: true,
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
        Ok(Box::new(Lce::from_context(cfg, &ctx, NAME)?))
    }
}

/// How LCE aligns the new classifier with the old centres.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LceAlignment {
    /// The official code's `F.mse_loss(F.normalize(W), centres)`: the mean over all `C·d`
    /// elements of the squared difference, `(2/d)·mean_k (1 − cos_k)` for unit rows.
    #[default]
    Mse,
    /// This project's earlier form, `mean_k (1 − cos_k)` (about `d/2` times stronger per unit
    /// of weight: with weight 1 at d = 8 it is 25 times weaker than the published weight 100).
    Cosine,
}

/// Hyper-parameters of `lce`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LceConfig {
    /// Weight of the alignment of the new classifier rows with the old class centres
    /// (`lambda_a`, 100 in the official code).
    pub align_weight: f64,
    /// Weight of the boundary term (`lambda_b`, 1 in the official code).
    pub boundary_weight: f64,
    /// The alignment's form.
    pub alignment: LceAlignment,
}

impl Default for LceConfig {
    fn default() -> Self {
        Self {
            align_weight: 100.0,
            boundary_weight: 1.0,
            alignment: LceAlignment::Mse,
        }
    }
}

/// `lce`: `align_weight · A(Ŵ, C) + boundary_weight · mean_i max(0, (1 − ⟨f_i, c_y⟩) − r_y)`,
/// where `Ŵ` are the new classifier's normalised rows, `C` the old class centres, `A` the
/// alignment ([`LceAlignment`]) and `r_k` the cosine distance of the worst old sample of class
/// k to its centre: each new feature must sit at least as close to its old centre as the old
/// model's own worst sample (the official `clamp(old_cos[y] − cos, 0)`).
#[derive(Debug)]
pub struct Lce {
    /// λ.
    pub lambda: f64,
    /// Its configuration.
    pub cfg: LceConfig,
    /// Old class centres `C` `[C, d]` (the boundary's centres; the alignment's unless a
    /// perturbation layer moves them).
    pub centres: Tensor,
    /// Radii `r_k` `[C]`.
    pub radii: Tensor,
}

impl Lce {
    /// An LCE loss with radii measured on old features `(bank, labels)`.
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

    /// The loss `method` builds from its configuration's `[compat.lce]` and the context: the
    /// radii over every old training feature where the run measured them, else over the old
    /// feature bank (the Python binding's callers pass every old feature there).
    pub fn from_context(
        cfg: &CompatConfig,
        ctx: &BuildContext,
        method: &str,
    ) -> Result<Self, String> {
        let centres = ctx.prototypes(method)?;
        let lce: LceConfig = section(cfg, NAME)?;
        Ok(match &ctx.old_radii {
            Some(r) => Self {
                lambda: cfg.lambda,
                cfg: lce,
                centres,
                radii: r.shallow_clone(),
            },
            None => {
                let (bank, labels) = ctx.old_bank(method)?;
                Self::new(cfg.lambda, lce, centres, &bank, &labels)
            }
        })
    }

    /// The alignment of the new classifier's rows `w` with `table`.
    pub fn alignment(&self, w: &Tensor, table: &Tensor) -> Tensor {
        let wn = l2_normalize(w);
        match self.cfg.alignment {
            LceAlignment::Mse => (wn - table).square().mean(Kind::Float),
            LceAlignment::Cosine => cos_distance(&wn, table).mean(Kind::Float),
        }
    }

    /// The boundary term: new features outside their class's old radius.
    pub fn boundary(&self, inputs: &CompatInputs) -> Tensor {
        let d = cos_distance(inputs.new, &self.centres.index_select(0, inputs.labels));
        (d - self.radii.index_select(0, inputs.labels))
            .relu()
            .mean(Kind::Float)
    }
}

impl AlignedLoss for Lce {
    /// The alignment against `table` (pseudo-old centres), the boundary around the true old
    /// centres: the perturbation relaxes where the classifier is pulled, not the old region
    /// each class's features must stay in.
    fn aligned_loss(&self, inputs: &CompatInputs, table: &Tensor) -> Result<Tensor, LossError> {
        let w = inputs.classifier_weights(NAME)?;
        Ok(self.alignment(w, table) * self.cfg.align_weight
            + self.boundary(inputs) * self.cfg.boundary_weight)
    }
}

impl CompatLoss for Lce {
    fn weight(&self) -> f64 {
        self.lambda
    }
    fn loss(&self, inputs: &CompatInputs) -> Result<Option<Tensor>, LossError> {
        self.aligned_loss(inputs, &self.centres).map(Some)
    }
}
