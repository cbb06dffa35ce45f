//! Losses: the classification head (cosine with ArcFace/CosFace margins, or plain softmax) and
//! the `CompatLoss` trait every compatibility method implements. The training loop only sees
//! the trait; methods are registered in one place, [`Method::build`].

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::{Kind, Reduction, Tensor};

pub mod zoo;

use crate::model::l2_normalize;
use crate::perturb::{
    class_prototypes, geometry_stats, pseudo_old_table, Ndpp, NdppConfig, Odpp, OdppConfig,
    Perturbation, RefreshInputs, RefreshStats,
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
    /// Whether the method refreshes state from the new model (then the loop calls
    /// [`CompatLoss::refresh`] as [`RefreshConfig`] schedules it).
    fn refresh_config(&self) -> Option<&RefreshConfig> {
        None
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

/// The registered compatibility methods.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// No compatibility term.
    Independent,
    /// Feature regression to the old embedding.
    L2,
    /// Influence loss against the old prototypes (BCT).
    Bct,
    /// Influence loss against NDPP's pseudo-old prototypes.
    Ndpp,
    /// Influence loss against ODPP's pseudo-old prototypes.
    Odpp,
    /// LCE: new classifier aligned with old centres, plus the old-class boundary.
    Lce,
    /// UniBCT: influence loss against old prototypes refined over the new class graph.
    Unibct,
    /// Hot-Refresh's RACT: contrastive against old features with new→new negatives.
    Ract,
    /// AdvBCT: adversarial discriminator plus elastic boundary.
    Advbct,
}

impl Method {
    /// Every registered method.
    pub const ALL: [Method; 9] = [
        Method::Independent,
        Method::L2,
        Method::Bct,
        Method::Ndpp,
        Method::Odpp,
        Method::Lce,
        Method::Unibct,
        Method::Ract,
        Method::Advbct,
    ];

    /// The CLI name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Method::Independent => "independent",
            Method::L2 => "l2",
            Method::Bct => "bct",
            Method::Ndpp => "ndpp",
            Method::Odpp => "odpp",
            Method::Lce => "lce",
            Method::Unibct => "unibct",
            Method::Ract => "ract",
            Method::Advbct => "advbct",
        }
    }

    /// The name of a new model trained with this method, and of its directory in a run
    /// (`new-bct`): the one place that names them.
    pub fn model_name(&self) -> String {
        format!("new-{self}")
    }

    /// Whether the method needs the old model's class prototypes.
    pub fn needs_prototypes(&self) -> bool {
        matches!(
            self,
            Method::Bct
                | Method::Ndpp
                | Method::Odpp
                | Method::Lce
                | Method::Unibct
                | Method::Advbct
        )
    }

    /// Whether the method needs a bank of old features of training images (`F°`).
    pub fn needs_old_bank(&self) -> bool {
        matches!(self, Method::Odpp | Method::Lce | Method::Advbct)
    }

    /// The part of `cfg` this method reads, as JSON: two runs of the method with the same
    /// view train the same loss (used to refuse resuming a run under other settings).
    pub fn config_view(&self, cfg: &CompatConfig) -> serde_json::Value {
        let mut v = self.own_config_view(cfg);
        // Only when set: runs made before the setting existed keep their view.
        if self.needs_prototypes() && cfg.prototypes != OldPrototypes::default() {
            v["prototypes"] = serde_json::json!(cfg.prototypes);
        }
        v
    }

    fn own_config_view(&self, cfg: &CompatConfig) -> serde_json::Value {
        use serde_json::json;
        let bank = cfg.odpp.old_bank_per_class;
        match self {
            Method::Independent => json!({}),
            Method::L2 => json!({ "lambda": cfg.lambda }),
            Method::Bct => json!({ "lambda": cfg.lambda, "scale": cfg.scale }),
            Method::Ndpp => json!({ "lambda": cfg.lambda, "scale": cfg.scale,
                "refresh": cfg.refresh, "ndpp": cfg.ndpp }),
            Method::Odpp => json!({ "lambda": cfg.lambda, "scale": cfg.scale,
                "refresh": cfg.refresh, "odpp": cfg.odpp_resolved() }),
            Method::Lce => {
                json!({ "lambda": cfg.lambda, "old_bank_per_class": bank, "lce": cfg.lce })
            }
            Method::Unibct => json!({ "lambda": cfg.lambda, "scale": cfg.scale,
                "refresh": cfg.refresh, "unibct": cfg.unibct }),
            Method::Ract => json!({ "lambda": cfg.lambda, "ract": cfg.ract }),
            Method::Advbct => json!({ "lambda": cfg.lambda, "old_bank_per_class": bank,
                "advbct": cfg.advbct }),
        }
    }

    /// Builds the loss from what the pipeline prepared: `ctx.prototypes` when
    /// [`Method::needs_prototypes`], `ctx.old_bank` when [`Method::needs_old_bank`].
    /// Panics if they are missing: a programming error, not bad input.
    pub fn build(&self, cfg: &CompatConfig, ctx: BuildContext) -> Box<dyn CompatLoss> {
        let protos = || {
            ctx.prototypes
                .as_ref()
                .expect("this method needs old prototypes")
                .shallow_clone()
        };
        match self {
            Method::Independent => Box::new(Independent),
            Method::L2 => Box::new(L2 { lambda: cfg.lambda }),
            Method::Bct => Box::new(Bct {
                lambda: cfg.lambda,
                scale: cfg.scale,
                prototypes: protos(),
            }),
            Method::Ndpp => Box::new(PerturbedBct::new(
                cfg.lambda,
                cfg.scale,
                protos(),
                cfg.refresh.clone(),
                Box::new(Ndpp {
                    cfg: cfg.ndpp.clone(),
                }),
            )),
            Method::Odpp => {
                let p = protos();
                let (c, d) = p.size2().expect("prototypes are [C, d]");
                let (bank, labels) = ctx.old_bank.expect("odpp needs the old feature bank");
                Box::new(PerturbedBct::new(
                    cfg.lambda,
                    cfg.scale,
                    p,
                    cfg.refresh.clone(),
                    Box::new(Odpp::new(cfg.odpp_resolved(), bank, labels, c, d)),
                ))
            }
            Method::Lce => {
                let (bank, labels) = ctx.old_bank.expect("lce needs the old feature bank");
                Box::new(zoo::Lce::new(
                    cfg.lambda,
                    cfg.lce.clone(),
                    protos(),
                    &bank,
                    &labels,
                ))
            }
            Method::Unibct => Box::new(PerturbedBct::new(
                cfg.lambda,
                cfg.scale,
                protos(),
                cfg.refresh.clone(),
                Box::new(zoo::UnibctRefine {
                    cfg: cfg.unibct.clone(),
                }),
            )),
            Method::Ract => Box::new(zoo::Ract {
                lambda: cfg.lambda,
                cfg: cfg.ract.clone(),
            }),
            Method::Advbct => {
                let (bank, labels) = ctx.old_bank.expect("advbct needs the old feature bank");
                Box::new(zoo::Advbct::new(
                    cfg.lambda,
                    cfg.advbct.clone(),
                    protos(),
                    &bank,
                    &labels,
                ))
            }
        }
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Method::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Method::ALL.iter().map(|m| m.as_str()).collect();
                format!("unknown method '{s}': expected one of {}", names.join(", "))
            })
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`Method::build`] may need beyond the configuration.
#[derive(Default)]
pub struct BuildContext {
    /// Old prototypes `P°` `[C, d]`.
    pub prototypes: Option<Tensor>,
    /// Old features of training images and their labels (`F°`).
    pub old_bank: Option<(Tensor, Tensor)>,
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

/// Configuration of the compatibility term.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
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
    /// NDPP's hyper-parameters.
    pub ndpp: NdppConfig,
    /// ODPP's hyper-parameters (its `old_bank_per_class` also sizes the old feature bank of
    /// `lce` and `advbct`).
    pub odpp: OdppConfig,
    /// LCE's hyper-parameters.
    pub lce: zoo::LceConfig,
    /// UniBCT's hyper-parameters.
    pub unibct: zoo::UnibctConfig,
    /// RACT's hyper-parameters.
    pub ract: zoo::RactConfig,
    /// AdvBCT's hyper-parameters.
    pub advbct: zoo::AdvbctConfig,
}

impl Default for CompatConfig {
    fn default() -> Self {
        Self {
            lambda: 1.0,
            scale: crate::perturb::DEFAULT_SCALE,
            prototypes: OldPrototypes::ClassMeans,
            refresh: RefreshConfig::default(),
            ndpp: NdppConfig::default(),
            odpp: OdppConfig::default(),
            lce: Default::default(),
            unibct: Default::default(),
            ract: Default::default(),
            advbct: Default::default(),
        }
    }
}

/// Checks that `v` lies where `ok` says, naming the setting and the range otherwise.
fn check(name: &str, v: f64, ok: bool, range: &str) -> Result<(), String> {
    if ok && v.is_finite() {
        Ok(())
    } else {
        Err(format!("{name} = {v}: expected {range}"))
    }
}

impl CompatConfig {
    /// ODPP's settings with its logit scale resolved (unset: the influence loss's `scale`).
    pub fn odpp_resolved(&self) -> OdppConfig {
        let mut o = self.odpp.clone();
        o.scale.get_or_insert(self.scale);
        o
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
        let n = &c.ndpp;
        if n.k == 0 {
            return Err("compat.ndpp.k = 0: expected >= 1 neighbours".into());
        }
        check("compat.ndpp.tau", n.tau, n.tau > 0.0, "> 0")?;
        check(
            "compat.ndpp.alpha",
            n.alpha,
            (0.0..=1.0).contains(&n.alpha),
            "in [0, 1]",
        )?;
        check(
            "compat.ndpp.eps",
            n.eps,
            (0.0..1.0).contains(&n.eps),
            "in [0, 1)",
        )?;
        if let Some(b) = n.beta {
            check("compat.ndpp.beta", b, b > 0.0 && b < 0.5, "in (0, 1/2)")?;
        }
        let o = &c.odpp;
        check("compat.odpp.lr", o.lr, o.lr > 0.0, "> 0")?;
        check("compat.odpp.mu", o.mu, o.mu >= 0.0, ">= 0")?;
        check("compat.odpp.gamma", o.gamma, o.gamma >= 0.0, ">= 0")?;
        check(
            "compat.odpp.eps",
            o.eps,
            (0.0..1.0).contains(&o.eps),
            "in [0, 1)",
        )?;
        if let Some(s) = o.scale {
            check("compat.odpp.scale", s, s > 0.0, "> 0")?;
        }
        if o.old_bank_per_class == 0 {
            return Err("compat.odpp.old_bank_per_class = 0: expected >= 1".into());
        }
        let l = &c.lce;
        check(
            "compat.lce.align_weight",
            l.align_weight,
            l.align_weight >= 0.0,
            ">= 0",
        )?;
        let b = l.boundary_weight;
        check("compat.lce.boundary_weight", b, b >= 0.0, ">= 0")?;
        let u = &c.unibct;
        if u.k == 0 {
            return Err("compat.unibct.k = 0: expected >= 1 neighbours".into());
        }
        check(
            "compat.unibct.alpha",
            u.alpha,
            (0.0..1.0).contains(&u.alpha),
            "in [0, 1)",
        )?;
        let t = c.ract.temperature;
        check("compat.ract.temperature", t, t > 0.0, "> 0")?;
        let a = &c.advbct;
        check(
            "compat.advbct.adv_weight",
            a.adv_weight,
            a.adv_weight >= 0.0,
            ">= 0",
        )?;
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
        check("compat.advbct.schedule_gamma", g, g >= 0.0, ">= 0")?;
        Ok(())
    }
}
