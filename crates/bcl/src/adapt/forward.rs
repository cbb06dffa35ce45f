//! FCT's forward transformation, old → new (Ramanujan et al., CVPR 2022; public code
//! `apple/ml-fct`, `models/transformations.py` and `train_transformation.py`): an MLP that
//! turns a stored old vector (and optional side information) into the new model's space, so a
//! gallery is upgraded by transforming vectors instead of re-embedding images. As published:
//! the old vector through `d_old → 2·d_old → 2·d_new`, the side information (the old vector
//! itself when there is none, as the code does without a side-information model) through
//! `s → 2·s → 2·d_new`, both concatenated through `4·d_new → inner → inner → d_new`; every layer
//! but the last linear without bias, batch-normalised and ReLU'd; mean squared error to the new
//! model's vector; Adam (learning rate 5e-4, weight decay 2⁻¹⁵), cosine schedule after 5 warm-up
//! epochs, 80 epochs of batches of 1,024, batch statistics frozen for the second half. The
//! embeddings here are L2-normalised, so the error is between unit vectors. The fitted network
//! is stored with each batch norm folded into its linear layer.

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::nn::{self, Module, ModuleT, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use super::{
    expect_shape, input, AdaptError, AdapterCard, AdapterSpec, Companion, Direction, FitConfig,
    Fitted, Params, SupportSet,
};

/// The forward map's settings (`[forward]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardConfig {
    /// Width of the mixer's hidden layers (published: 2,048).
    pub inner_dim: usize,
    /// Passes over the support set.
    pub epochs: usize,
    /// Warm-up epochs of the cosine schedule.
    pub warmup_epochs: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Adam's (coupled) weight decay.
    pub weight_decay: f64,
    /// Pairs per step.
    pub batch: usize,
    /// Freeze the batch statistics for the second half of training (published: yes).
    pub freeze_bn_second_half: bool,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            inner_dim: 2048,
            epochs: 80,
            warmup_epochs: 5,
            lr: 5e-4,
            weight_decay: 3.0517578125e-5,
            batch: 1024,
            freeze_bn_second_half: true,
        }
    }
}

impl ForwardConfig {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), AdaptError> {
        let bad = |m: String| Err(AdaptError::Settings(m));
        if self.inner_dim == 0 || self.batch < 2 || self.epochs == 0 {
            return bad(format!(
                "forward inner_dim ({}) and epochs ({}) must be ≥ 1, batch ({}) ≥ 2 (batch norm)",
                self.inner_dim, self.epochs, self.batch
            ));
        }
        if self.warmup_epochs >= self.epochs {
            return bad(format!(
                "forward warmup_epochs ({}) must be below epochs ({})",
                self.warmup_epochs, self.epochs
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("forward lr {} must be > 0", self.lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "forward weight_decay {} must be ≥ 0",
                self.weight_decay
            ));
        }
        Ok(())
    }

    /// The learning rate of `epoch` (FCT's `cosine_lr`).
    pub fn lr_at(&self, epoch: usize) -> f64 {
        if epoch < self.warmup_epochs {
            return self.lr * (epoch + 1) as f64 / self.warmup_epochs as f64;
        }
        let e = (epoch - self.warmup_epochs) as f64;
        let es = (self.epochs - self.warmup_epochs) as f64;
        0.5 * (1.0 + (std::f64::consts::PI * e / es).cos()) * self.lr
    }
}

/// The registry entry of `forward`.
pub struct Spec;

/// Batch norm's ε (PyTorch's default, as FCT uses it).
const BN_EPS: f64 = 1e-5;

/// One layer while training: linear, then batch norm and ReLU (all but the last).
struct Layer {
    name: String,
    linear: nn::Linear,
    norm: Option<nn::BatchNorm>,
}

impl Layer {
    fn new(root: &nn::Path, name: &str, i: usize, o: usize, last: bool) -> Self {
        // the variable store's paths take no dots; the stored names keep them
        let p = root / name.replace('.', "_");
        let cfg = nn::LinearConfig {
            bias: last,
            ..Default::default()
        };
        Self {
            name: name.to_string(),
            linear: nn::linear(&p / "linear", i as i64, o as i64, cfg),
            norm: (!last).then(|| {
                let cfg = nn::BatchNormConfig {
                    eps: BN_EPS,
                    ..Default::default()
                };
                nn::batch_norm1d(&p / "norm", o as i64, cfg)
            }),
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let y = self.linear.forward(x);
        match &self.norm {
            Some(bn) => bn.forward_t(&y, train).relu(),
            None => y,
        }
    }

    /// The linear layer with its batch norm folded in: `(weight [o, i], bias [o])`.
    fn folded(&self) -> (Tensor, Tensor) {
        let w = self.linear.ws.detach();
        match &self.norm {
            None => {
                let b = self
                    .linear
                    .bs
                    .as_ref()
                    .map(|b| b.detach())
                    .unwrap_or_else(|| Tensor::zeros([w.size()[0]], (Kind::Float, w.device())));
                (w, b)
            }
            Some(bn) => {
                let gamma = bn.ws.as_ref().map(|t| t.detach());
                let beta = bn.bs.as_ref().map(|t| t.detach());
                let o = w.size()[0];
                let ones = Tensor::ones([o], (Kind::Float, w.device()));
                let zeros = Tensor::zeros([o], (Kind::Float, w.device()));
                let s = gamma.unwrap_or(ones) / (&bn.running_var + BN_EPS).sqrt();
                let b = beta.unwrap_or(zeros) - &bn.running_mean * &s;
                (w * s.unsqueeze(1), b)
            }
        }
    }
}

/// The layers' names, in order: the old vector's branch, the side information's, the mixer.
const LAYERS: [&str; 7] = [
    "p1.0", "p1.1", "p2.0", "p2.1", "mixer.0", "mixer.1", "mixer.2",
];

/// The three branches' layer names and widths, in order.
fn layout(
    d_old: usize,
    d_new: usize,
    side: usize,
    inner: usize,
) -> Vec<(&'static str, usize, usize)> {
    let widths = [
        (d_old, 2 * d_old),
        (2 * d_old, 2 * d_new),
        (side, 2 * side),
        (2 * side, 2 * d_new),
        (4 * d_new, inner),
        (inner, inner),
        (inner, d_new),
    ];
    LAYERS
        .into_iter()
        .zip(widths)
        .map(|(name, (i, o))| (name, i, o))
        .collect()
}

/// The network's output for `x` and side information `s`, given a layer function.
fn network(x: &Tensor, s: &Tensor, layer: &dyn Fn(&str, &Tensor) -> Tensor) -> Tensor {
    let h1 = layer("p1.1", &layer("p1.0", x));
    let h2 = layer("p2.1", &layer("p2.0", s));
    let h = Tensor::cat(&[h1, h2], 1);
    layer("mixer.2", &layer("mixer.1", &layer("mixer.0", &h)))
}

impl AdapterSpec for Spec {
    fn name(&self) -> &'static str {
        "forward"
    }

    fn description(&self) -> &'static str {
        "FCT's forward transformation, old → new: an MLP that upgrades stored gallery vectors \
         without re-embedding images (optional side information)"
    }

    fn direction(&self) -> Direction {
        Direction::OldToNew
    }

    fn companion(&self) -> Companion {
        Companion::Side
    }

    fn fit(
        &self,
        support: &SupportSet,
        cfg: &FitConfig,
        device: Device,
    ) -> Result<Fitted, AdaptError> {
        let c = &cfg.forward;
        let (d_old, d_new) = (support.old_dim(), support.new_dim());
        let side_dim = support.side().map_or(d_old, |s| s.size()[1] as usize);
        if support.len() < 2 {
            return Err(input("support set", "batch norm needs at least 2 pairs"));
        }
        tch::manual_seed(cfg.seed as i64);
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let layers: Vec<Layer> = layout(d_old, d_new, side_dim, c.inner_dim)
            .into_iter()
            .map(|(name, i, o)| Layer::new(&root, name, i, o, name == "mixer.2"))
            .collect();
        let by_name = |name: &str| layers.iter().find(|l| l.name == name);
        let mut opt = nn::Adam {
            wd: c.weight_decay,
            ..Default::default()
        }
        .build(&vs, c.lr)
        .map_err(|e| AdaptError::Settings(format!("forward optimiser: {e}")))?;
        let x = support.old_vectors().to_device(device);
        let y = support.new_vectors().to_device(device);
        let side = support
            .side()
            .map_or_else(|| x.shallow_clone(), |s| s.to_device(device));
        let n = support.len();
        let mut order: Vec<i64> = (0..n as i64).collect();
        let mut rng = crate::data::rng_for(cfg.seed, 0xfc7);
        let mut losses = Vec::with_capacity(c.epochs);
        for epoch in 0..c.epochs {
            opt.set_lr(c.lr_at(epoch));
            let train_bn = !(c.freeze_bn_second_half && 2 * epoch >= c.epochs);
            order.shuffle(&mut rng);
            let mut total = 0.0;
            let mut seen = 0usize;
            for chunk in order.chunks(c.batch) {
                if chunk.len() < 2 && train_bn {
                    continue; // batch norm cannot normalise one item
                }
                let idx = Tensor::from_slice(chunk).to_device(device);
                let (xb, sb, yb) = (
                    x.index_select(0, &idx),
                    side.index_select(0, &idx),
                    y.index_select(0, &idx),
                );
                let layer = |name: &str, t: &Tensor| {
                    by_name(name).map_or_else(|| t.shallow_clone(), |l| l.forward(t, train_bn))
                };
                let out = network(&xb, &sb, &layer);
                let loss = out.mse_loss(&yb, tch::Reduction::Mean);
                opt.backward_step(&loss);
                total += loss.double_value(&[]) * chunk.len() as f64;
                seen += chunk.len();
            }
            losses.push(total / seen.max(1) as f64);
        }
        let mut params = Params::default();
        for l in &layers {
            let (w, b) = l.folded();
            params.insert(&format!("{}.weight", l.name), w.to_device(Device::Cpu));
            params.insert(&format!("{}.bias", l.name), b.to_device(Device::Cpu));
        }
        Ok(Fitted {
            params,
            settings: serde_json::to_value(c).unwrap_or_default(),
            report: json!({
                "final_loss": losses.last(),
                "first_loss": losses.first(),
                "side_information": support.side().is_some(),
            }),
        })
    }

    fn apply(
        &self,
        p: &Params,
        x: &Tensor,
        companion: Option<&Tensor>,
        _to_dim: usize,
    ) -> Result<Tensor, AdaptError> {
        // the folded layers: every one but the last followed by ReLU
        let mut folded = std::collections::HashMap::new();
        for name in LAYERS {
            let w = p.get(&format!("{name}.weight"))?;
            let b = p.get(&format!("{name}.bias"))?;
            folded.insert(name, (w, b));
        }
        let layer = |name: &str, t: &Tensor| -> Tensor {
            match folded.get(name) {
                Some((w, b)) if name == "mixer.2" => t.linear(w, Some(*b)),
                Some((w, b)) => t.linear(w, Some(*b)).relu(),
                None => t.shallow_clone(),
            }
        };
        Ok(network(x, companion.unwrap_or(x), &layer))
    }

    fn check(&self, p: &Params, card: &AdapterCard) -> Result<(), String> {
        let side = card.support.side_dim.unwrap_or(card.from.dim);
        let inner = super::shape_of(p, "mixer.0.weight")?
            .first()
            .copied()
            .unwrap_or(0) as usize;
        for (name, i, o) in layout(card.from.dim, card.to.dim, side, inner) {
            expect_shape(p, &format!("{name}.weight"), &[o as i64, i as i64])?;
            expect_shape(p, &format!("{name}.bias"), &[o as i64])?;
        }
        Ok(())
    }
}
