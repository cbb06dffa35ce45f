//! Losses: the classification head (cosine with ArcFace/CosFace margins, or plain softmax) and
//! the `CompatLoss` trait every compatibility method implements. The training loop only sees
//! the trait; methods are registered in one place, [`method::REGISTRY`], one file each under
//! `methods/`.

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::{Kind, Reduction, Tensor};

pub mod method;
pub mod methods;
pub mod zoo;

use std::collections::BTreeMap;

pub use method::{check, BuildContext, Knob, Method, MethodSpec, Needs, REGISTRY};

use crate::model::l2_normalize;
use crate::perturb::{
    class_prototypes, geometry_stats, pseudo_old_table, OdppConfig, Perturbation, RefreshInputs,
    RefreshStats,
};

/// Which classification head the model trains with.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum HeadKind {
    /// Plain softmax: a linear layer with bias on the embedding.
    Softmax,
    /// Cosine classifier `s·cos θ` without margin.
    Cosine,
    /// Additive angular margin `s·cos(θ + m)` on the target class.
    Arcface,
    /// Additive cosine margin `s·(cos θ − m)` on the target class.
    Cosface,
}

/// Configuration of the classification head.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HeadConfig {
    /// The head's kind.
    pub kind: HeadKind,
    /// Scale `s` of the cosine logits.
    pub scale: f64,
    /// Margin `m` (radians for ArcFace, cosine units for CosFace).
    pub margin: f64,
}

impl Default for HeadConfig {
    /// CosFace, s = 16, m = 0.2. ArcFace is available but not the default: trained from
    /// scratch on a small set (the end-to-end test's 900 images) it collapsed every class onto
    /// one direction (loss stuck near log(1 + (C−1)·e^{s(1−cos m)})), where CosFace and the plain
    /// cosine head trained normally.
    fn default() -> Self {
        Self {
            kind: HeadKind::Cosface,
            scale: 16.0,
            margin: 0.2,
        }
    }
}

/// The classification head `W_new`, living in the model's variable store.
#[derive(Debug)]
pub struct ClassifierHead {
    cfg: HeadConfig,
    weight: Tensor,
    bias: Option<Tensor>,
}

impl ClassifierHead {
    /// Creates the head's variables under `p` for `classes` classes of dimension `dim`.
    pub fn new(p: &nn::Path, cfg: &HeadConfig, dim: i64, classes: i64) -> Self {
        // Rows of norm about 1: the cosine head's gradient scales with 1/‖w_k‖, so tiny rows
        // would make the first steps explode.
        let stdev = 1.0 / (dim as f64).sqrt();
        let weight = p.var(
            "weight",
            &[classes, dim],
            nn::Init::Randn { mean: 0.0, stdev },
        );
        let bias = (cfg.kind == HeadKind::Softmax)
            .then(|| p.var("bias", &[classes], nn::Init::Const(0.0)));
        Self {
            cfg: cfg.clone(),
            weight,
            bias,
        }
    }

    /// Logits of normalised embeddings `f` with the margin applied to the targets `y`.
    pub fn logits(&self, f: &Tensor, y: &Tensor) -> Tensor {
        margin_logits(f, &self.weight, self.bias.as_ref(), y, &self.cfg)
    }

    /// The weight rows `[C, d]` (with gradient).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Logits without margin (for evaluation of classification accuracy).
    pub fn plain_logits(&self, f: &Tensor) -> Tensor {
        match self.cfg.kind {
            HeadKind::Softmax => {
                f.matmul(&self.weight.tr()) + self.bias.as_ref().expect("softmax head has a bias")
            }
            _ => f.matmul(&l2_normalize(&self.weight).tr()) * self.cfg.scale,
        }
    }

    /// Cross-entropy of the head on a batch.
    pub fn loss(&self, f: &Tensor, y: &Tensor) -> Tensor {
        self.logits(f, y)
            .cross_entropy_loss::<Tensor>(y, None, Reduction::Mean, -100, 0.0)
    }
}

/// Logits of a (cosine or softmax) classifier with the target-class margin of `cfg`.
pub fn margin_logits(
    f: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
    cfg: &HeadConfig,
) -> Tensor {
    if cfg.kind == HeadKind::Softmax {
        let l = f.matmul(&w.tr());
        return match bias {
            Some(b) => l + b,
            None => l,
        };
    }
    let cos = f.matmul(&l2_normalize(w).tr()).clamp(-1.0, 1.0);
    let onehot = cos.zeros_like().scatter_value(1, &y.unsqueeze(1), 1.0);
    let m = cfg.margin;
    let adjusted = match cfg.kind {
        HeadKind::Cosine => cos.shallow_clone(),
        HeadKind::Cosface => &cos - &onehot * m,
        HeadKind::Arcface => {
            // cos(θ+m) = cos·cos m − sin·sin m, with the usual fallback where θ + m > π
            // (there cos(θ+m) stops decreasing in θ): cos − m·sin m.
            let sin = (-(&cos * &cos) + 1.0).clamp_min(1e-9).sqrt();
            let phi = &cos * m.cos() - sin * m.sin();
            let th = (std::f64::consts::PI - m).cos();
            let fallback = &cos - m * m.sin();
            let phi = phi.where_self(&cos.gt(th), &fallback);
            &cos + &onehot * (phi - &cos)
        }
        HeadKind::Softmax => unreachable!(),
    };
    adjusted * cfg.scale
}

/// What a compatibility loss may use from the current batch.
pub struct CompatInputs<'a> {
    /// New embeddings `f` (L2-normalised, with gradient), `[B, d]`.
    pub new: &'a Tensor,
    /// Labels `[B]` (the new training set's class indices).
    pub labels: &'a Tensor,
    /// Old embeddings `g` of the same images from the frozen old model, when the method asks.
    pub old: Option<&'a Tensor>,
    /// The new classifier's weight rows `W_new` `[C, d]` (with gradient), when available.
    pub classifier: Option<&'a Tensor>,
    /// Training progress in [0, 1] (step / total steps), for scheduled terms.
    pub progress: f64,
}

impl<'a> CompatInputs<'a> {
    /// Inputs with only the new embeddings and labels (no old embeddings, no classifier).
    pub fn new(new: &'a Tensor, labels: &'a Tensor) -> Self {
        Self {
            new,
            labels,
            old: None,
            classifier: None,
            progress: 0.0,
        }
    }
}

/// A backward-compatibility loss `L_comp`; the training loop adds `λ · L_comp` to `L_cls`.
pub trait CompatLoss {
    /// The method's name as the CLI spells it.
    fn name(&self) -> &'static str;
    /// Whether [`CompatInputs::old`] must be filled (costs a forward pass of the old model).
    fn needs_old_embeddings(&self) -> bool {
        false
    }
    /// The loss weight λ.
    fn weight(&self) -> f64;
    /// Creates the method's own trainable variables (a discriminator, learned radii) under
    /// `p`, in the model's variable store: the optimiser updates them and checkpoints keep
    /// them; they are left out of the final model file. Called once before training.
    fn init_params(&mut self, _p: &nn::Path) {}
    /// The unweighted scalar loss on a batch; `None` for a method without one.
    fn loss(&self, inputs: &CompatInputs) -> Option<Tensor>;
    /// Whether the method refreshes state from the new model, and on what schedule.
    fn refresh_config(&self) -> Option<&RefreshConfig> {
        None
    }
    /// Whether a refresh is due before batch `batch` (0-based within epoch `epoch`, global
    /// step `step`): the number of new features per class the refresh wants in its bank, or
    /// `None`. The training loop asks this before every batch and knows no schedule itself.
    fn refresh_due(&self, epoch: usize, batch: usize, step: usize) -> Option<usize> {
        let rc = self.refresh_config()?;
        rc.due(epoch, batch, step).then_some(rc.bank_per_class)
    }
    /// Refreshes state from a bank of current new features (normalised, detached).
    fn refresh(
        &mut self,
        _bank: &Tensor,
        _labels: &Tensor,
        _epoch: usize,
        _step: usize,
    ) -> Option<RefreshStats> {
        None
    }
    /// Sees each batch's detached new features (for moving-average prototypes).
    fn observe(&mut self, _new: &Tensor, _labels: &Tensor) {}
    /// Whether [`CompatLoss::observe`] uses what it sees (data-parallel training gathers the
    /// whole batch's features for it only then).
    fn observes(&self) -> bool {
        false
    }
    /// State to checkpoint so that a resumed run continues exactly.
    fn state(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    /// Restores [`CompatLoss::state`].
    fn load_state(&mut self, _state: &[(String, Tensor)]) {}
}

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

/// `ndpp` / `odpp`: the influence loss against pseudo-old prototypes `normalize(P° + Δ)`,
/// with Δ refreshed by a [`Perturbation`]. With Δ = 0 it is exactly [`Bct`].
pub struct PerturbedBct {
    /// λ.
    pub lambda: f64,
    /// Scale `s`.
    pub scale: f64,
    /// Old prototypes `P°` (constant).
    pub old: Tensor,
    /// The current perturbation Δ.
    pub delta: Tensor,
    pseudo: Tensor,
    ema: Option<Tensor>,
    refresh: RefreshConfig,
    strategy: Box<dyn Perturbation>,
}

impl std::fmt::Debug for PerturbedBct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerturbedBct")
            .field("method", &self.strategy.name())
            .finish()
    }
}

impl PerturbedBct {
    /// A perturbed influence loss starting from Δ = 0.
    pub fn new(
        lambda: f64,
        scale: f64,
        old: Tensor,
        refresh: RefreshConfig,
        strategy: Box<dyn Perturbation>,
    ) -> Self {
        let delta = old.zeros_like();
        Self {
            lambda,
            scale,
            pseudo: old.shallow_clone(),
            old,
            delta,
            ema: None,
            refresh,
            strategy,
        }
    }

    /// Sets Δ (and the pseudo-old prototypes it defines).
    pub fn set_delta(&mut self, delta: Tensor) {
        self.pseudo = pseudo_old_table(&self.old, &delta);
        self.delta = delta.detach();
    }

    /// The current pseudo-old prototypes.
    pub fn pseudo_old(&self) -> &Tensor {
        &self.pseudo
    }
}

impl CompatLoss for PerturbedBct {
    fn name(&self) -> &'static str {
        self.strategy.name()
    }
    fn weight(&self) -> f64 {
        self.lambda
    }
    fn loss(&self, inputs: &CompatInputs) -> Option<Tensor> {
        Some(Bct::influence(
            inputs.new,
            &self.pseudo,
            inputs.labels,
            self.scale,
        ))
    }
    fn refresh_config(&self) -> Option<&RefreshConfig> {
        Some(&self.refresh)
    }
    fn observes(&self) -> bool {
        self.refresh.new_prototypes == NewPrototypes::Ema
    }

    fn observe(&mut self, new: &Tensor, labels: &Tensor) {
        if self.refresh.new_prototypes != NewPrototypes::Ema {
            return;
        }
        tch::no_grad(|| {
            let c = self.old.size()[0];
            let d = new.size()[1];
            let sums = Tensor::zeros([c, d], (Kind::Float, new.device())).index_add(0, labels, new);
            let counts = Tensor::zeros([c], (Kind::Float, new.device())).index_add(
                0,
                labels,
                &Tensor::ones([labels.size()[0]], (Kind::Float, new.device())),
            );
            let present = counts.gt(0.0).unsqueeze(1);
            let batch_mean = l2_normalize(&sums);
            let m = self.refresh.ema_momentum;
            let next = match &self.ema {
                None => batch_mean.where_self(&present, &self.old),
                Some(prev) => (prev * m + &batch_mean * (1.0 - m)).where_self(&present, prev),
            };
            self.ema = Some(l2_normalize(&next));
        });
    }
    fn refresh(
        &mut self,
        bank: &Tensor,
        labels: &Tensor,
        epoch: usize,
        step: usize,
    ) -> Option<RefreshStats> {
        let t0 = std::time::Instant::now();
        let c = self.old.size()[0];
        let new_protos = match (&self.refresh.new_prototypes, &self.ema) {
            (NewPrototypes::Ema, Some(e)) => e.shallow_clone(),
            _ => match class_prototypes(bank, labels, c) {
                Ok(p) => p,
                // a class missing from the bank keeps its old prototype as the new one
                Err(_) => {
                    let d = bank.size()[1];
                    let sums = Tensor::zeros([c, d], (Kind::Float, bank.device()))
                        .index_add(0, labels, bank);
                    let empty = sums
                        .abs()
                        .sum_dim_intlist([1i64].as_slice(), true, Kind::Float)
                        .eq(0.0);
                    l2_normalize(&sums.where_self(&empty.logical_not(), &self.old))
                }
            },
        };
        let (delta, j) = self.strategy.refresh(&RefreshInputs {
            old: &self.old,
            new: &new_protos,
            new_bank: bank,
            new_bank_labels: labels,
        });
        self.set_delta(delta);
        let (mean_delta, max_delta, nn_sim_before, nn_sim_after, own_nearest_share) =
            geometry_stats(&self.old, &self.delta);
        Some(RefreshStats {
            epoch,
            step,
            mean_delta,
            max_delta,
            nn_sim_before,
            nn_sim_after,
            own_nearest_share,
            j_before: j.map(|j| j.0),
            j_after: j.map(|j| j.1),
            seconds: t0.elapsed().as_secs_f64(),
        })
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        // The old prototypes are constant; they are saved so that reports can plot Δ.
        let mut v = vec![
            ("delta".to_string(), self.delta.shallow_clone()),
            ("old_prototypes".to_string(), self.old.shallow_clone()),
        ];
        if let Some(e) = &self.ema {
            v.push(("ema".to_string(), e.shallow_clone()));
        }
        v.extend(self.strategy.state());
        v
    }
    fn load_state(&mut self, state: &[(String, Tensor)]) {
        let dev = self.old.device();
        for (n, t) in state {
            match n.as_str() {
                "delta" => self.set_delta(t.to_device(dev)),
                "ema" => self.ema = Some(t.to_device(dev)),
                _ => {}
            }
        }
        self.strategy.load_state(state);
    }
}

/// `independent`: no compatibility term (the upper bound, not compatible).
#[derive(Debug, Default)]
pub struct Independent;

impl CompatLoss for Independent {
    fn name(&self) -> &'static str {
        "independent"
    }
    fn weight(&self) -> f64 {
        0.0
    }
    fn loss(&self, _: &CompatInputs) -> Option<Tensor> {
        None
    }
}

/// `l2`: mean over the batch of `‖f − g‖²`, with g the old model's embedding of the same image.
#[derive(Debug)]
pub struct L2 {
    /// λ.
    pub lambda: f64,
}

impl CompatLoss for L2 {
    fn name(&self) -> &'static str {
        "l2"
    }
    fn needs_old_embeddings(&self) -> bool {
        true
    }
    fn weight(&self) -> f64 {
        self.lambda
    }
    fn loss(&self, inputs: &CompatInputs) -> Option<Tensor> {
        let g = inputs.old.expect("l2 needs old embeddings");
        Some(
            (inputs.new - g)
                .square()
                .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
                .mean(Kind::Float),
        )
    }
}

/// `bct`: the influence loss `CE(s·⟨f, p_k⟩_k, y)` against a table of (pseudo-)old prototypes.
#[derive(Debug)]
pub struct Bct {
    /// λ.
    pub lambda: f64,
    /// Scale `s`.
    pub scale: f64,
    /// Prototypes `[C, d]`, L2-normalised, constant (no gradient).
    pub prototypes: Tensor,
}

impl Bct {
    /// Influence loss of embeddings `f` against `prototypes` (both normalised).
    pub fn influence(f: &Tensor, prototypes: &Tensor, labels: &Tensor, scale: f64) -> Tensor {
        (f.matmul(&prototypes.tr()) * scale).cross_entropy_loss::<Tensor>(
            labels,
            None,
            Reduction::Mean,
            -100,
            0.0,
        )
    }
}

impl CompatLoss for Bct {
    fn name(&self) -> &'static str {
        "bct"
    }
    fn weight(&self) -> f64 {
        self.lambda
    }
    fn loss(&self, inputs: &CompatInputs) -> Option<Tensor> {
        Some(Self::influence(
            inputs.new,
            &self.prototypes,
            inputs.labels,
            self.scale,
        ))
    }
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
/// [`MethodSpec`]).
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
        let methods = REGISTRY
            .iter()
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
        for m in REGISTRY {
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
            let has_section = REGISTRY
                .iter()
                .any(|m| m.name() == key && m.default_settings().is_some());
            if !has_section {
                let sections: Vec<&str> = REGISTRY
                    .iter()
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
        REGISTRY.iter().try_for_each(|m| m.validate(self))
    }
}
