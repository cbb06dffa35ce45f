//! `independent`: no compatibility term (the upper bound every gain is measured against; never
//! compatible).

use crate::loss::method::{BuildContext, MethodSpec};
use crate::loss::{CompatConfig, CompatLoss};

/// The registry entry.
pub struct Independent;

impl MethodSpec for Independent {
    fn name(&self) -> &'static str {
        "independent"
    }
    fn description(&self) -> &'static str {
        "no compatibility term: the upper bound, not compatible"
    }
    fn reads_lambda(&self) -> bool {
        false
    }
    fn config_view(&self, _: &CompatConfig) -> Result<serde_json::Value, String> {
        Ok(serde_json::json!({}))
    }
    fn build(&self, _: &CompatConfig, _: BuildContext) -> Result<Box<dyn CompatLoss>, String> {
        Ok(Box::new(crate::loss::Independent))
    }
}
