//! `l2`: regression of the new embedding to the old model's embedding of the same image.

use crate::loss::method::{BuildContext, MethodSpec};
use crate::loss::{CompatConfig, CompatLoss};

/// The registry entry.
pub struct L2;

impl MethodSpec for L2 {
    fn name(&self) -> &'static str {
        "l2"
    }
    fn description(&self) -> &'static str {
        "feature regression to the old embedding of the same image"
    }
    fn config_view(&self, cfg: &CompatConfig) -> Result<serde_json::Value, String> {
        Ok(serde_json::json!({ "lambda": cfg.lambda }))
    }
    fn build(&self, cfg: &CompatConfig, _: BuildContext) -> Result<Box<dyn CompatLoss>, String> {
        Ok(Box::new(crate::loss::L2 { lambda: cfg.lambda }))
    }
}
