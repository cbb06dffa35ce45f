//! `advbct`: AdvBCT, a gradient-reversal discriminator between old and new features plus an
//! elastic boundary around the old classes (its settings and loss below).

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Reduction, Tensor};

use crate::loss::method::{check, defaults_table, section, BuildContext, MethodSpec, Needs};
use crate::loss::radii::{cos_distance, old_class_radii_quantile};
use crate::loss::{CompatConfig, CompatInputs, CompatLoss, LossError};

/// The registry entry.
pub struct Spec;

const NAME: &str = "advbct";

impl MethodSpec for Spec {
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
            ..Needs::default()
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
        Ok(Box::new(Advbct::new(
            cfg.lambda,
            section(cfg, NAME)?,
            ctx.prototypes(NAME)?,
            &bank,
            &labels,
        )))
    }
}

/// Hyper-parameters of `advbct`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdvbctConfig {
    /// Weight of the adversarial (domain discriminator) term.
    pub adv_weight: f64,
    /// Weight of the elastic boundary term.
    pub boundary_weight: f64,
    /// Weight of `mean_k (r_k − r°_k)²`, the price of a radius leaving its initial value.
    pub elastic: f64,
    /// Which old sample sets a class's initial radius r°_k: the quantile `q` in (0, 1] of the old
    /// features' distances to their prototype (1: the worst sample).
    pub radius_quantile: f64,
    /// Hidden width of the discriminator MLP.
    pub hidden: i64,
    /// γ of the DANN schedule `2/(1 + exp(−γ·p)) − 1`, p the training progress in [0, 1].
    pub schedule_gamma: f64,
}

impl Default for AdvbctConfig {
    fn default() -> Self {
        Self {
            adv_weight: 1.0,
            boundary_weight: 1.0,
            elastic: 1.0,
            radius_quantile: 1.0,
            hidden: 256,
            schedule_gamma: 10.0,
        }
    }
}

/// Gradient reversal: the value of `x`, the gradient `−a` times the incoming one.
///
/// Written as `(1 + a)·x.detach() − a·x` because tch has no custom autograd functions.
pub fn gradient_reversal(x: &Tensor, a: f64) -> Tensor {
    x.detach() * (1.0 + a) - x * a
}

/// The DANN coefficient `2/(1 + exp(−γ·p)) − 1` at progress `p`.
pub fn dann_coefficient(progress: f64, gamma: f64) -> f64 {
    2.0 / (1.0 + (-gamma * progress.clamp(0.0, 1.0)).exp()) - 1.0
}

/// `advbct`: `adv_weight · ½[BCE(D(GRL(f)), 1) + BCE(D(g), 0)] + boundary_weight ·
/// [mean_i max(0, (1 − ⟨f_i, p°_y⟩) − r_y) + elastic · mean_k (r_k − r°_k)²]`. The discriminator
/// D learns to tell new embeddings from old ones while the reversed gradient teaches the new
/// model to make them indistinguishable; the radii `r_k` start at the old model's worst
/// sample distance `r°_k` and are learned (elastic), so a class may widen at a price.
pub struct Advbct {
    /// λ.
    pub lambda: f64,
    /// Its configuration.
    pub cfg: AdvbctConfig,
    /// Old class centres `P°` `[C, d]`.
    pub centres: Tensor,
    /// Initial radii `r°_k` `[C]`.
    pub radii0: Tensor,
    disc: Option<(nn::Linear, nn::Linear)>,
    radii: Option<Tensor>,
}

impl std::fmt::Debug for Advbct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Advbct").field("cfg", &self.cfg).finish()
    }
}

impl Advbct {
    /// An AdvBCT loss with initial radii measured on the old feature bank.
    pub fn new(
        lambda: f64,
        cfg: AdvbctConfig,
        centres: Tensor,
        bank: &Tensor,
        labels: &Tensor,
    ) -> Self {
        let radii0 = old_class_radii_quantile(&centres, bank, labels, cfg.radius_quantile);
        Self {
            lambda,
            cfg,
            centres,
            radii0,
            disc: None,
            radii: None,
        }
    }

    /// The learned radii (after [`CompatLoss::init_params`]).
    pub fn radii(&self) -> Option<&Tensor> {
        self.radii.as_ref()
    }
}

impl CompatLoss for Advbct {
    fn needs_old_embeddings(&self) -> bool {
        true
    }
    fn weight(&self) -> f64 {
        self.lambda
    }
    fn init_params(&mut self, p: &nn::Path) {
        let d = self.centres.size()[1];
        let l1 = nn::linear(p / "disc1", d, self.cfg.hidden, Default::default());
        let l2 = nn::linear(p / "disc2", self.cfg.hidden, 1, Default::default());
        let mut r = p.zeros("radii", &[self.radii0.size()[0]]);
        tch::no_grad(|| r.copy_(&self.radii0));
        self.disc = Some((l1, l2));
        self.radii = Some(r);
    }
    fn loss(&self, inputs: &CompatInputs) -> Result<Option<Tensor>, LossError> {
        let (Some((l1, l2)), Some(radii)) = (&self.disc, &self.radii) else {
            return Err(LossError::Uninitialised(NAME));
        };
        let g = inputs.old_embeddings(NAME)?.detach();
        let a = dann_coefficient(inputs.progress, self.cfg.schedule_gamma);
        let disc = |x: &Tensor| l2.forward(&l1.forward(x).relu()).squeeze_dim(1);
        let zn = disc(&gradient_reversal(inputs.new, a));
        let zo = disc(&g);
        let adv = (zn.binary_cross_entropy_with_logits::<Tensor>(
            &zn.ones_like().detach(),
            None,
            None,
            Reduction::Mean,
        ) + zo.binary_cross_entropy_with_logits::<Tensor>(
            &zo.zeros_like().detach(),
            None,
            None,
            Reduction::Mean,
        )) * 0.5;
        let d = cos_distance(inputs.new, &self.centres.index_select(0, inputs.labels));
        let hinge = (d - radii.index_select(0, inputs.labels))
            .relu()
            .mean(Kind::Float);
        let elastic = (radii - &self.radii0).square().mean(Kind::Float);
        Ok(Some(
            adv * self.cfg.adv_weight
                + (hinge + elastic * self.cfg.elastic) * self.cfg.boundary_weight,
        ))
    }
}
