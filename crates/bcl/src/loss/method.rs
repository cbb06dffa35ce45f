//! The method registry: each compatibility method is one [`MethodSpec`] (its name, a one-line
//! description, what the run must prepare for it, whether it has a loss, whether it refreshes,
//! how it behaves under data parallelism, its own settings with their defaults and checks, the
//! knobs a sweep may turn, and how its loss is built), listed once in `BUILTIN` or added at run
//! time by [`register`]. The CLI's help, model cards, experiments' method lists and stages,
//! configuration checks, sweeps, the Python binding and the docs all read the registry, so a
//! new method is one new file under `loss/methods/` plus one line in `BUILTIN`
//! (docs/architecture.md walks through it).

use std::sync::RwLock;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tch::Tensor;

use super::methods;
use super::{CompatConfig, CompatLoss, OldPrototypes};

/// The methods this build ships, in the order help and tables list them. A new method: one
/// line here (or [`register`] from outside the crate).
static BUILTIN: &[&dyn MethodSpec] = &[
    &methods::independent::Spec,
    &methods::l2::Spec,
    &methods::bct::Spec,
    &methods::ndpp::Spec,
    &methods::odpp::Spec,
    &methods::lce::Spec,
    &methods::lce_ndpp::Spec,
    &methods::lce_odpp::Spec,
    &methods::unibct::Spec,
    &methods::ract::Spec,
    &methods::advbct::Spec,
];

/// Methods registered at run time by [`register`] (a method defined outside this crate: a
/// plug-in, or a test), after the built-in ones.
static REGISTERED: RwLock<Vec<&'static dyn MethodSpec>> = RwLock::new(Vec::new());

/// Every registered method's specification: the built-in ones, then those [`register`]ed.
pub fn registry() -> Vec<&'static dyn MethodSpec> {
    let extra = REGISTERED.read().unwrap_or_else(|e| e.into_inner());
    BUILTIN
        .iter()
        .copied()
        .chain(extra.iter().copied())
        .collect()
}

/// Adds a method defined outside this crate to the registry: from then on it is listed,
/// parsed from configuration files and experiment method lists, and trained like a built-in
/// one. Registering the same specification twice is a no-op; another specification under a
/// registered name (or a name that is not a lower-case identifier) is refused.
pub fn register(spec: &'static dyn MethodSpec) -> Result<Method, RegistryError> {
    let name = spec.name();
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    if !valid || name == "none" {
        return Err(RegistryError::BadName(name.to_string()));
    }
    let mut extra = REGISTERED.write().unwrap_or_else(|e| e.into_inner());
    let same = |s: &&dyn MethodSpec| std::ptr::addr_eq(*s as *const dyn MethodSpec, spec);
    if BUILTIN.iter().chain(extra.iter()).any(same) {
        return Ok(Method(spec));
    }
    if BUILTIN.iter().chain(extra.iter()).any(|s| s.name() == name) {
        return Err(RegistryError::Taken(name.to_string()));
    }
    extra.push(spec);
    Ok(Method(spec))
}

/// Why [`register`] refused a method.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    /// Another method is registered under the name.
    #[error("a method named '{0}' is already registered")]
    Taken(String),
    /// The name cannot be written in configuration files and directory names.
    #[error(
        "method name '{0}': expected a lower-case identifier (a-z, 0-9, '-', '_'), not 'none'"
    )]
    BadName(String),
}

/// What a run prepares for a method before building its loss (see [`BuildContext`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// The old class prototypes `P°`.
    pub prototypes: bool,
    /// A per-class sample of old features `F°` (size: [`CompatConfig::old_bank_per_class`]).
    pub old_bank: bool,
    /// Per-class radii over every old training feature: the largest cosine distance of an old
    /// sample of class k to its prototype (LCE's boundary, as its official code measures it).
    pub old_radii: bool,
}

/// What [`Method::build`] may need beyond the configuration.
#[derive(Default)]
pub struct BuildContext {
    /// Old prototypes `P°` `[C, d]`.
    pub prototypes: Option<Tensor>,
    /// Old features of training images and their labels (`F°`).
    pub old_bank: Option<(Tensor, Tensor)>,
    /// Per-class radii `[C]` over every old training feature ([`Needs::old_radii`]).
    pub old_radii: Option<Tensor>,
}

impl BuildContext {
    /// The prototypes, or an error naming the method that needs them.
    pub fn prototypes(&self, method: &str) -> Result<Tensor, String> {
        self.prototypes
            .as_ref()
            .map(|p| p.shallow_clone())
            .ok_or_else(|| format!("{method} needs the old prototypes; none were prepared"))
    }

    /// The old feature bank and its labels, or an error naming the method that needs them.
    pub fn old_bank(&self, method: &str) -> Result<(Tensor, Tensor), String> {
        self.old_bank
            .as_ref()
            .map(|(b, y)| (b.shallow_clone(), y.shallow_clone()))
            .ok_or_else(|| format!("{method} needs the old feature bank; none was prepared"))
    }
}

/// A setting a sweep may turn: `lambda` (every method with a compatibility term) or a number in
/// a method's own section. Written in experiment files by its name (`ndpp-eps`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Knob {
    /// The name in experiment files, directory names and tables.
    pub name: &'static str,
    /// The method whose section holds it (`None`: `compat.lambda`).
    pub method: Option<&'static str>,
    /// The key in that section.
    pub key: &'static str,
}

impl Knob {
    /// λ, the compatibility term's weight.
    pub const LAMBDA: Knob = Knob {
        name: "lambda",
        method: None,
        key: "lambda",
    };

    /// The knob named `name` in the registry.
    pub fn named(name: &str) -> Result<Knob, String> {
        Self::all().find(|k| k.name == name).ok_or_else(|| {
            let names: Vec<&str> = Self::all().map(|k| k.name).collect();
            format!(
                "unknown knob '{name}': expected one of {}",
                names.join(", ")
            )
        })
    }

    /// λ and every method's own knobs.
    pub fn all() -> impl Iterator<Item = Knob> {
        std::iter::once(Knob::LAMBDA).chain(
            registry()
                .into_iter()
                .flat_map(|m| m.knobs().iter().copied()),
        )
    }

    /// The name (as [`Knob::name`]).
    pub fn as_str(&self) -> &'static str {
        self.name
    }

    /// `cfg` with this knob set to `v`.
    pub fn apply(&self, cfg: &CompatConfig, v: f64) -> CompatConfig {
        let mut c = cfg.clone();
        match self.method {
            None => c.lambda = v,
            Some(m) => {
                c.methods
                    .entry(m.to_string())
                    .or_insert_with(|| toml::Value::Table(Default::default()));
                if let Some(t) = c.methods.get_mut(m).and_then(|t| t.as_table_mut()) {
                    t.insert(self.key.to_string(), toml::Value::Float(v));
                }
            }
        }
        c
    }

    /// The knob's value in `cfg` (its method's default where the section leaves it out;
    /// `None` for an optional setting left unset).
    pub fn value(&self, cfg: &CompatConfig) -> Option<f64> {
        let Some(m) = self.method else {
            return Some(cfg.lambda);
        };
        let read = |t: &toml::Table| match t.get(self.key)? {
            toml::Value::Float(f) => Some(*f),
            toml::Value::Integer(i) => Some(*i as f64),
            _ => None,
        };
        let given = cfg.methods.get(m).and_then(|t| t.as_table());
        given.and_then(read).or_else(|| {
            Method::named(m)
                .ok()
                .and_then(|s| s.0.default_settings())
                .and_then(|t| read(&t))
        })
    }
}

impl std::fmt::Display for Knob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl Serialize for Knob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name)
    }
}

impl<'de> Deserialize<'de> for Knob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Knob::named(&s).map_err(serde::de::Error::custom)
    }
}

/// Everything about one compatibility method, in one place.
pub trait MethodSpec: Sync {
    /// The name in the CLI, configuration files, model names (`new-<name>`) and tables.
    fn name(&self) -> &'static str;
    /// One line for the CLI's help and the docs.
    fn description(&self) -> &'static str;
    /// What the run prepares before [`MethodSpec::build`].
    fn needs(&self) -> Needs {
        Needs::default()
    }
    /// The method's own section `[compat.<name>]` with every default (`None`: no section).
    fn default_settings(&self) -> Option<toml::Table> {
        None
    }
    /// Checks the method's section (parsed, with each bounded setting in range); the error
    /// names the setting as written in a configuration file.
    fn validate(&self, _cfg: &CompatConfig) -> Result<(), String> {
        Ok(())
    }
    /// The settings the method's loss reads, as JSON: two runs with the same view train the
    /// same loss (a resumed run under another view is refused).
    fn config_view(&self, cfg: &CompatConfig) -> Result<serde_json::Value, String>;
    /// The knobs of its own section a sweep may turn (λ is added for every method that
    /// has a loss, see [`MethodSpec::has_loss`]).
    fn knobs(&self) -> &'static [Knob] {
        &[]
    }
    /// Whether the method adds a compatibility loss, weighted by `compat.lambda`, to the head's
    /// (all but `independent`, which trains the head alone): only then does λ turn in sweeps,
    /// does its model claim compatibility on its card, and does the Python package offer its
    /// loss.
    fn has_loss(&self) -> bool {
        true
    }
    /// Whether the loss refreshes state from the new model while it trains
    /// ([`CompatLoss::refresh`]): its runs save `refreshes.json`, and experiments report their
    /// refresh diagnostics.
    fn refreshes(&self) -> bool {
        false
    }
    /// How the loss behaves under data-parallel training (docs/distributed.md lists it from
    /// here, and a test keeps the page and the registry equal).
    fn data_parallel(&self) -> DataParallel {
        DataParallel::Exact
    }
    /// Builds the loss from the configuration and what the run prepared ([`MethodSpec::needs`]).
    fn build(&self, cfg: &CompatConfig, ctx: BuildContext) -> Result<Box<dyn CompatLoss>, String>;
}

/// How a method's loss behaves when a batch is shared among ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataParallel {
    /// A mean over the batch's items or a term of the weights alone: gradients averaged by share
    /// give the one-process update on the whole batch.
    Exact,
    /// The loss couples the items of a batch and each rank computes it on its own share (the
    /// reason says how); it trains, but not to the one-process model.
    PerShard(&'static str),
}

/// Parses a method's section `[compat.<method>]` into its settings type (serde defaults for
/// what it leaves out); the error names the section.
pub fn section<T: DeserializeOwned + Default>(
    cfg: &CompatConfig,
    method: &str,
) -> Result<T, String> {
    match cfg.methods.get(method) {
        None => Ok(T::default()),
        Some(v) => v
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| format!("compat.{method}: {}", e.message())),
    }
}

/// A settings type's defaults as a TOML table (for [`MethodSpec::default_settings`]).
pub fn defaults_table<T: Serialize + Default>() -> Option<toml::Table> {
    toml::Table::try_from(T::default()).ok()
}

/// Checks that `v` lies where `ok` says, naming the setting and the range otherwise.
pub fn check(name: &str, v: f64, ok: bool, range: &str) -> Result<(), String> {
    if ok && v.is_finite() {
        Ok(())
    } else {
        Err(format!("{name} = {v}: expected {range}"))
    }
}

/// A registered compatibility method: a handle to its [`MethodSpec`]. Written in configuration
/// files and on the command line by its name.
#[derive(Clone, Copy)]
pub struct Method(&'static dyn MethodSpec);

impl Method {
    /// No compatibility term: the upper bound every gain is measured against.
    pub const INDEPENDENT: Method = Method(&methods::independent::Spec);
    /// Feature regression to the old embedding.
    pub const L2: Method = Method(&methods::l2::Spec);
    /// BCT, the reference the perturbation methods are compared with.
    pub const BCT: Method = Method(&methods::bct::Spec);
    /// NDPP.
    pub const NDPP: Method = Method(&methods::ndpp::Spec);
    /// ODPP.
    pub const ODPP: Method = Method(&methods::odpp::Spec);
    /// LCE.
    pub const LCE: Method = Method(&methods::lce::Spec);
    /// UniBCT.
    pub const UNIBCT: Method = Method(&methods::unibct::Spec);
    /// RACT.
    pub const RACT: Method = Method(&methods::ract::Spec);
    /// AdvBCT.
    pub const ADVBCT: Method = Method(&methods::advbct::Spec);

    /// Every registered method, in registry order.
    pub fn all() -> impl Iterator<Item = Method> {
        registry().into_iter().map(Method)
    }

    /// The method named `name`, or an error listing the registered names.
    pub fn named(name: &str) -> Result<Method, String> {
        Self::all().find(|m| m.as_str() == name).ok_or_else(|| {
            format!(
                "unknown method '{name}': expected one of {}",
                Self::names().join(", ")
            )
        })
    }

    /// The registered names, in registry order.
    pub fn names() -> Vec<&'static str> {
        Self::all().map(|m| m.as_str()).collect()
    }

    /// The name.
    pub fn as_str(&self) -> &'static str {
        self.0.name()
    }

    /// One line on what the method does.
    pub fn description(&self) -> &'static str {
        self.0.description()
    }

    /// Its specification.
    pub fn spec(&self) -> &'static dyn MethodSpec {
        self.0
    }

    /// The name of a new model trained with this method, and of its directory in a run
    /// (`new-bct`): the one place that names them.
    pub fn model_name(&self) -> String {
        format!("new-{self}")
    }

    /// Whether the method needs the old model's class prototypes.
    pub fn needs_prototypes(&self) -> bool {
        self.0.needs().prototypes
    }

    /// Whether the method needs a bank of old features of training images (`F°`).
    pub fn needs_old_bank(&self) -> bool {
        self.0.needs().old_bank
    }

    /// Whether the method needs per-class radii over every old training feature.
    pub fn needs_old_radii(&self) -> bool {
        self.0.needs().old_radii
    }

    /// Whether the method adds a compatibility loss (see [`MethodSpec::has_loss`]).
    pub fn has_loss(&self) -> bool {
        self.0.has_loss()
    }

    /// Whether the method refreshes state while training (see [`MethodSpec::refreshes`]).
    pub fn refreshes(&self) -> bool {
        self.0.refreshes()
    }

    /// How its loss behaves under data parallelism (see [`MethodSpec::data_parallel`]).
    pub fn data_parallel(&self) -> DataParallel {
        self.0.data_parallel()
    }

    /// The knobs a sweep of this method may turn: λ (where the method reads it), then its own.
    pub fn knobs(&self) -> Vec<Knob> {
        let lambda = self.0.has_loss().then_some(Knob::LAMBDA);
        lambda
            .into_iter()
            .chain(self.0.knobs().iter().copied())
            .collect()
    }

    /// The part of `cfg` this method reads, as JSON (see [`MethodSpec::config_view`]), with
    /// the source of the old prototypes where the method uses them and it is not the default.
    pub fn config_view(&self, cfg: &CompatConfig) -> Result<serde_json::Value, String> {
        let mut v = self.0.config_view(cfg)?;
        // Only when set: runs made before the setting existed keep their view.
        if self.needs_prototypes() && cfg.prototypes != OldPrototypes::default() {
            v["prototypes"] = serde_json::json!(cfg.prototypes);
        }
        Ok(v)
    }

    /// Builds the loss from the configuration and what the run prepared
    /// ([`Method::needs_prototypes`], [`Method::needs_old_bank`]).
    pub fn build(
        &self,
        cfg: &CompatConfig,
        ctx: BuildContext,
    ) -> Result<Box<dyn CompatLoss>, String> {
        self.0.build(cfg, ctx)
    }
}

impl PartialEq for Method {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Method {}

impl PartialOrd for Method {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Method {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::hash::Hash for Method {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_str().hash(h)
    }
}

impl std::fmt::Debug for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Method({})", self.as_str())
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Method::named(s)
    }
}

impl Serialize for Method {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Method {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Method::named(&s).map_err(serde::de::Error::custom)
    }
}
