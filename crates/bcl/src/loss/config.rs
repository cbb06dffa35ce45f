//! `[compat]`: the settings every compatibility method shares (λ, the influence scale, where
//! the old prototypes come from, when refreshes run) and each method's own section, checked
//! and completed through the registry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::method::{self, check, registry};
use crate::perturb::OdppConfig;

/// When and how a method that perturbs prototypes refreshes them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RefreshConfig {
    /// Refresh every R steps (at steps R, 2R, ...); `None`: at the start of each epoch.
    pub every_steps: Option<usize>,
    /// First epoch with a refresh. Before it Δ = 0 (plain BCT): at step 0 the new model's
    /// features are random and say nothing about which classes it separates.
    pub start_epoch: usize,
    /// New features per class in the bank `Fⁿ` drawn by each refresh's feature pass.
    pub bank_per_class: usize,
    /// Where the new prototypes come from: the refresh's feature pass, or a moving average
    /// of the batch features.
    pub new_prototypes: NewPrototypes,
    /// Momentum of the moving average (weight of the previous value).
    pub ema_momentum: f64,
}

impl RefreshConfig {
    /// Whether a refresh falls before batch `batch` of epoch `epoch` (global step `step`): from
    /// `start_epoch` on, at each epoch's first batch, or every `every_steps` steps.
    pub fn due(&self, epoch: usize, batch: usize, step: usize) -> bool {
        epoch >= self.start_epoch
            && match self.every_steps {
                None => batch == 0,
                Some(r) => step > 0 && step.is_multiple_of(r.max(1)),
            }
    }
}

impl Default for RefreshConfig {
    fn default() -> Self {
        Self {
            every_steps: None,
            start_epoch: 1,
            bank_per_class: 100,
            new_prototypes: NewPrototypes::Bank,
            ema_momentum: 0.9,
        }
    }
}

/// Source of the new prototypes `Pⁿ`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum NewPrototypes {
    /// Class means of the refresh's feature bank.
    Bank,
    /// Exponential moving average of the batch features, per class.
    Ema,
}

/// Where the old class prototypes `P°` come from, for the methods that start from them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OldPrototypes {
    /// `normalize(mean{g_i : y_i = k})` over the new training set, with the frozen old model
    /// (METHOD.md section 2; covers classes the old model never saw).
    #[default]
    ClassMeans,
    /// The old model's classifier rows (normalised), as BCT was published: the old classifier
    /// is the influence loss's; classes it lacks take their old-feature class mean.
    OldClassifier,
}

/// Configuration of the compatibility term: the settings every method shares, and each
/// method's own section `[compat.<method>]` (checked and read by the method, see
/// [`super::MethodSpec`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct CompatConfig {
    /// Loss weight λ.
    pub lambda: f64,
    /// Scale `s` of the influence loss's cosine logits.
    pub scale: f64,
    /// Where the old prototypes come from (bct, ndpp, odpp, lce, unibct, advbct).
    #[serde(skip_serializing_if = "crate::model::is_default")]
    pub prototypes: OldPrototypes,
    /// When the perturbation methods refresh Δ.
    pub refresh: RefreshConfig,
    /// Each method's own settings by method name (`ndpp`, `odpp`, ...): a method's defaults
    /// fill what its section leaves out. Any other key is refused by
    /// [`CompatConfig::validate`] (serde cannot deny unknown keys next to a flattened map).
    #[serde(flatten)]
    pub methods: BTreeMap<String, toml::Value>,
}

impl Default for CompatConfig {
    fn default() -> Self {
        let methods = registry()
            .into_iter()
            .filter_map(|m| {
                Some((
                    m.name().to_string(),
                    toml::Value::Table(m.default_settings()?),
                ))
            })
            .collect();
        Self {
            lambda: 1.0,
            scale: crate::perturb::DEFAULT_SCALE,
            prototypes: OldPrototypes::ClassMeans,
            refresh: RefreshConfig::default(),
            methods,
        }
    }
}

impl CompatConfig {
    /// Size per class of the old feature bank `F°` (odpp, lce, advbct): written
    /// `compat.odpp.old_bank_per_class`, where ODPP, the first method to use it, put it.
    pub fn old_bank_per_class(&self) -> Result<usize, String> {
        Ok(method::section::<OdppConfig>(self, "odpp")?.old_bank_per_class)
    }

    /// A method's settings, parsed into their type (defaults for what the section leaves out).
    pub fn settings<T: serde::de::DeserializeOwned + Default>(
        &self,
        method: &str,
    ) -> Result<T, String> {
        method::section(self, method)
    }

    /// Changes a method's settings through their type (for code that builds configurations).
    pub fn update<T: Serialize + serde::de::DeserializeOwned + Default>(
        &mut self,
        method: &str,
        f: impl FnOnce(&mut T),
    ) -> Result<(), String> {
        let mut t: T = self.settings(method)?;
        f(&mut t);
        let table = toml::Table::try_from(t).map_err(|e| format!("compat.{method}: {e}"))?;
        self.methods
            .insert(method.to_string(), toml::Value::Table(table));
        Ok(())
    }

    /// Fills each method's section with its defaults where the section leaves a setting out,
    /// so that a saved configuration lists every setting a run used.
    pub fn complete(&mut self) {
        for m in registry() {
            let Some(defaults) = m.default_settings() else {
                continue;
            };
            let entry = self
                .methods
                .entry(m.name().to_string())
                .or_insert_with(|| toml::Value::Table(Default::default()));
            if let Some(t) = entry.as_table_mut() {
                for (k, v) in defaults {
                    t.entry(k).or_insert(v);
                }
            }
        }
    }

    /// Checks every setting against its meaning; the error names the setting (as written in a
    /// configuration file) and its allowed range.
    pub fn validate(&self) -> Result<(), String> {
        let c = self;
        check("compat.lambda", c.lambda, c.lambda >= 0.0, ">= 0")?;
        check("compat.scale", c.scale, c.scale > 0.0, "> 0")?;
        let r = &c.refresh;
        if r.every_steps == Some(0) {
            return Err(
                "compat.refresh.every_steps = 0: expected >= 1 (or unset: each epoch)".into(),
            );
        }
        if r.bank_per_class == 0 {
            return Err("compat.refresh.bank_per_class = 0: expected >= 1".into());
        }
        let m = r.ema_momentum;
        check(
            "compat.refresh.ema_momentum",
            m,
            (0.0..1.0).contains(&m),
            "in [0, 1)",
        )?;
        for (key, v) in &c.methods {
            let has_section = registry()
                .iter()
                .any(|m| m.name() == key && m.default_settings().is_some());
            if !has_section {
                let sections: Vec<&str> = registry()
                    .into_iter()
                    .filter(|m| m.default_settings().is_some())
                    .map(|m| m.name())
                    .collect();
                return Err(format!(
                    "compat.{key}: unknown setting; [compat] takes lambda, scale, prototypes, \
                     refresh and a section per method with settings ({})",
                    sections.join(", ")
                ));
            }
            if !v.is_table() {
                return Err(format!("compat.{key}: expected a table ([compat.{key}])"));
            }
        }
        registry().iter().try_for_each(|m| m.validate(self))
    }
}
