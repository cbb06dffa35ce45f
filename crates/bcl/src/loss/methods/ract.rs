//! `ract`: Hot-Refresh's RACT, contrastive against old features with new→new negatives (loss
//! in `loss::zoo`).

use crate::loss::method::{check, defaults_table, section, BuildContext, MethodSpec};
use crate::loss::zoo::RactConfig;
use crate::loss::{CompatConfig, CompatLoss};

/// The registry entry.
pub struct Ract;

const NAME: &str = "ract";

impl MethodSpec for Ract {
    fn name(&self) -> &'static str {
        NAME
    }
    fn description(&self) -> &'static str {
        "Hot-Refresh's RACT: contrastive against old features with new-to-new negatives"
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
        Ok(Box::new(crate::loss::zoo::Ract {
            lambda: cfg.lambda,
            cfg: section(cfg, NAME)?,
        }))
    }
}
