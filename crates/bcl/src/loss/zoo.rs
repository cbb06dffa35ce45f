//! The published baselines beyond `l2` and `bct` (METHOD.md section 3), each a [`CompatLoss`]:
//! LCE (classifier alignment + boundary), UniBCT (old prototypes refined by propagation over
//! the new model's class graph), Hot-Refresh's RACT (contrastive against old features with
//! new→new negatives) and AdvBCT (gradient-reversal discriminator + elastic boundary).
//! Formulations are this project's reading of each method's description; docs/method.md
//! lists them with their defaults and where they depart from the publications.

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Reduction, Tensor};

use super::{CompatInputs, CompatLoss};
use crate::model::l2_normalize;
use crate::perturb::{Perturbation, RefreshInputs};

/// Cosine distance `1 − ⟨a, b⟩` of normalised rows.
fn cos_distance(a: &Tensor, b: &Tensor) -> Tensor {
    -(a * b).sum_dim_intlist([1i64].as_slice(), false, Kind::Float) + 1.0
}

/// Per-class radius of old features around their old prototypes: the largest cosine distance
/// `1 − ⟨g_j, p°_k⟩` over the bank's samples of class k (0 for a class without samples).
pub fn old_class_radii(prototypes: &Tensor, bank: &Tensor, labels: &Tensor) -> Tensor {
    old_class_radii_quantile(prototypes, bank, labels, 1.0)
}

/// Per-class `q`-quantile (nearest rank, `q` in (0, 1]) of the cosine distances of old features
/// to their old prototype: `q = 1` is the worst sample, `q = 0.5` the median (0 for a class
/// without samples).
pub fn old_class_radii_quantile(
    prototypes: &Tensor,
    bank: &Tensor,
    labels: &Tensor,
    q: f64,
) -> Tensor {
    // A per-class quantile over a host copy: torch's index_reduce("amax") would give the maximum
    // but warns on every call that its API is in beta, and has no quantile.
    let c = prototypes.size()[0] as usize;
    let d = tch::no_grad(|| cos_distance(bank, &prototypes.index_select(0, labels)));
    let d: Vec<f32> =
        Vec::try_from(&d.to_device(Device::Cpu).to_kind(Kind::Float)).expect("distances to host");
    let y: Vec<i64> =
        Vec::try_from(&labels.to_device(Device::Cpu).to_kind(Kind::Int64)).expect("labels to host");
    let mut per_class = vec![Vec::new(); c];
    for (&di, &yi) in d.iter().zip(&y) {
        per_class[yi as usize].push(di);
    }
    let r: Vec<f32> = per_class
        .into_iter()
        .map(|mut v| {
            if v.is_empty() {
                return 0.0;
            }
            v.sort_by(f32::total_cmp);
            // nearest rank: the smallest value with at least a share q of the samples at or below
            let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
            v[rank - 1]
        })
        .collect();
    Tensor::from_slice(&r).to_device(bank.device())
}

/// Hyper-parameters of `lce`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LceConfig {
    /// Weight of the alignment of the new classifier rows with the old class centres.
    pub align_weight: f64,
    /// Weight of the boundary term.
    pub boundary_weight: f64,
}

impl Default for LceConfig {
    fn default() -> Self {
        Self {
            align_weight: 1.0,
            boundary_weight: 1.0,
        }
    }
}

/// `lce`: `align_weight · mean_k (1 − ⟨w_k/‖w_k‖, p°_k⟩)` (new classifier rows aligned with the
/// old class centres) `+ boundary_weight · mean_i max(0, (1 − ⟨f_i, p°_y⟩) − r_y)`, where `r_k`
/// is the cosine distance of the worst old sample of class k to its centre: each new feature
/// must sit at least as close to its old centre as the old model's own worst sample.
#[derive(Debug)]
pub struct Lce {
    /// λ.
    pub lambda: f64,
    /// Its configuration.
    pub cfg: LceConfig,
    /// Old class centres `P°` `[C, d]`.
    pub centres: Tensor,
    /// Radii `r_k` `[C]`.
    pub radii: Tensor,
}

impl Lce {
    /// An LCE loss with radii measured on the old feature bank `(bank, labels)`.
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
}

impl CompatLoss for Lce {
    fn name(&self) -> &'static str {
        "lce"
    }
    fn weight(&self) -> f64 {
        self.lambda
    }
    fn loss(&self, inputs: &CompatInputs) -> Option<Tensor> {
        let w = inputs.classifier.expect("lce needs the classifier weights");
        let align = cos_distance(&l2_normalize(w), &self.centres).mean(Kind::Float);
        let d = cos_distance(inputs.new, &self.centres.index_select(0, inputs.labels));
        let bound = (d - self.radii.index_select(0, inputs.labels))
            .relu()
            .mean(Kind::Float);
        Some(align * self.cfg.align_weight + bound * self.cfg.boundary_weight)
    }
}

/// Hyper-parameters of `unibct`'s prototype refinement.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UnibctConfig {
    /// Neighbours per class in the kNN graph of the new prototypes.
    pub k: usize,
    /// Propagation strength λ_p in `(1 − λ_p)(I − λ_p A)^{-1}`; 0 leaves `P°` as it is (= bct).
    pub alpha: f64,
}

impl Default for UnibctConfig {
    fn default() -> Self {
        Self { k: 5, alpha: 0.5 }
    }
}

/// UniBCT's structural refinement: `P̂ = normalize((1 − α)(I − αA)^{-1} P°)` with `A` the
/// symmetrically normalised kNN graph of the current new prototypes; returned as a Δ so that
/// the influence loss is `bct` against `P̂` (the same machinery as NDPP/ODPP).
#[derive(Debug, Clone)]
pub struct UnibctRefine {
    /// Its configuration.
    pub cfg: UnibctConfig,
}

impl UnibctRefine {
    /// The refined prototypes for old prototypes `old` and new prototypes `new` (`[C, d]`).
    pub fn refine(&self, old: &Tensor, new: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let c = old.size()[0];
            let k = (self.cfg.k as i64).min(c - 1);
            if k <= 0 || self.cfg.alpha == 0.0 {
                return old.shallow_clone();
            }
            let eye = Tensor::eye(c, (Kind::Float, old.device()));
            let s = new
                .matmul(&new.tr())
                .masked_fill(&eye.to_kind(Kind::Bool), f64::NEG_INFINITY);
            let (vals, idx) = s.topk(k, 1, true, false);
            let w = Tensor::zeros([c, c], (Kind::Float, old.device())).scatter(
                1,
                &idx,
                &vals.clamp_min(0.0),
            );
            let w = (&w + &w.tr()) * 0.5;
            let deg = w.sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
            let inv = deg.clamp_min(1e-12).rsqrt() * deg.gt(0.0).to_kind(Kind::Float);
            let a = &inv.unsqueeze(1) * &w * inv.unsqueeze(0);
            let m = &eye - a * self.cfg.alpha;
            l2_normalize(&(Tensor::linalg_solve(&m, old, true) * (1.0 - self.cfg.alpha)))
        })
    }
}

impl Perturbation for UnibctRefine {
    fn name(&self) -> &'static str {
        "unibct"
    }
    fn refresh(&mut self, inputs: &RefreshInputs) -> (Tensor, Option<(f64, f64)>) {
        // normalize(P° + (P̂ − P°)) = P̂, since P̂ is normalised.
        (self.refine(inputs.old, inputs.new) - inputs.old, None)
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
    fn name(&self) -> &'static str {
        "ract"
    }
    fn needs_old_embeddings(&self) -> bool {
        true
    }
    fn weight(&self) -> f64 {
        self.lambda
    }
    fn loss(&self, inputs: &CompatInputs) -> Option<Tensor> {
        let f = inputs.new;
        let g = inputs.old.expect("ract needs old embeddings").detach();
        let t = self.cfg.temperature;
        let y = inputs.labels;
        let same = y.unsqueeze(1).eq_tensor(&y.unsqueeze(0));
        let pos = (f * &g).sum_dim_intlist([1i64].as_slice(), true, Kind::Float) / t;
        let fg = (f.matmul(&g.tr()) / t).masked_fill(&same, f64::NEG_INFINITY);
        let ff = (f.matmul(&f.tr()) / t).masked_fill(&same, f64::NEG_INFINITY);
        let logits = Tensor::cat(&[pos, fg, ff], 1);
        let target = Tensor::zeros([f.size()[0]], (Kind::Int64, f.device()));
        Some(logits.cross_entropy_loss::<Tensor>(&target, None, Reduction::Mean, -100, 0.0))
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
    fn name(&self) -> &'static str {
        "advbct"
    }
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
    fn loss(&self, inputs: &CompatInputs) -> Option<Tensor> {
        let (l1, l2) = self
            .disc
            .as_ref()
            .expect("advbct: init_params must run before the loss");
        let radii = self.radii.as_ref().expect("advbct: radii initialised");
        let g = inputs.old.expect("advbct needs old embeddings").detach();
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
        Some(
            adv * self.cfg.adv_weight
                + (hinge + elastic * self.cfg.elastic) * self.cfg.boundary_weight,
        )
    }
}
