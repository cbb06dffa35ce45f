//! `ract`: Hot-Refresh's RACT, contrastive against old features with new→new negatives (its
//! settings and loss below).

use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

use crate::loss::method::{check, defaults_table, section, BuildContext, DataParallel, MethodSpec};
use crate::loss::{CompatConfig, CompatInputs, CompatLoss, LossError};

/// The registry entry.
pub struct Spec;

const NAME: &str = "ract";

impl MethodSpec for Spec {
    fn name(&self) -> &'static str {
        NAME
    }
    fn description(&self) -> &'static str {
        "Hot-Refresh's RACT: contrastive against old features with new-to-new negatives"
    }
    fn data_parallel(&self) -> DataParallel {
        DataParallel::PerShard(
            "its InfoNCE takes its negatives from the rank's own share of the batch, as under \
             PyTorch DDP without gathering",
        )
    }
    fn default_settings(&self) -> Option<toml::Table> {
        defaults_table::<RactConfig>()
    }
    fn validate(&self, cfg: &CompatConfig) -> Result<(), String> {
        let t = section::<RactConfig>(cfg, NAME)?.temperature;
        check("compat.ract.temperature", t, t > 0.0, "> 0")
    }
    fn config_view(&self, cfg: &CompatConfig) -> Result<serde_json::Value, String> {
        let r: RactConfig = section(cfg, NAME)?;
        Ok(serde_json::json!({ "lambda": cfg.lambda, "ract": r }))
    }
    fn build(&self, cfg: &CompatConfig, _: BuildContext) -> Result<Box<dyn CompatLoss>, String> {
        Ok(Box::new(Ract {
            lambda: cfg.lambda,
            cfg: section(cfg, NAME)?,
        }))
    }
}

/// Hyper-parameters of `ract`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RactConfig {
    /// Temperature τ of the contrastive logits.
    pub temperature: f64,
}

impl Default for RactConfig {
    fn default() -> Self {
        Self { temperature: 0.01 }
    }
}

/// `ract` (Hot-Refresh): for each sample, InfoNCE with positive `⟨f_i, g_i⟩/τ` (its own old
/// feature) against negatives `⟨f_i, g_j⟩/τ` and `⟨f_i, f_j⟩/τ` for every batch sample j of
/// another class; the new→new negatives keep the new model from collapsing onto old mistakes.
#[derive(Debug)]
pub struct Ract {
    /// λ.
    pub lambda: f64,
    /// Its configuration.
    pub cfg: RactConfig,
}

impl CompatLoss for Ract {
    fn needs_old_embeddings(&self) -> bool {
        true
    }
    fn weight(&self) -> f64 {
        self.lambda
    }
    fn loss(&self, inputs: &CompatInputs) -> Result<Option<Tensor>, LossError> {
        let f = inputs.new;
        let g = inputs.old_embeddings(NAME)?.detach();
        let t = self.cfg.temperature;
        let y = inputs.labels;
        let same = y.unsqueeze(1).eq_tensor(&y.unsqueeze(0));
        let pos = (f * &g).sum_dim_intlist([1i64].as_slice(), true, Kind::Float) / t;
        let fg = (f.matmul(&g.tr()) / t).masked_fill(&same, f64::NEG_INFINITY);
        let ff = (f.matmul(&f.tr()) / t).masked_fill(&same, f64::NEG_INFINITY);
        let logits = Tensor::cat(&[pos, fg, ff], 1);
        let target = Tensor::zeros([f.size()[0]], (Kind::Int64, f.device()));
        Ok(Some(logits.cross_entropy_loss::<Tensor>(
            &target,
            None,
            Reduction::Mean,
            -100,
            0.0,
        )))
    }
}
