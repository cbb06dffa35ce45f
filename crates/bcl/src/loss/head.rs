//! The classification head `W_new`: cosine logits with ArcFace or CosFace margins, or a plain
//! softmax layer, and its configuration `[old.head]`/`[new.head]`.

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::{Reduction, Tensor};

use crate::model::l2_normalize;

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
    /// The head's path in a model's variable store (its variables are `classifier.*`).
    pub const PATH: &'static str = "classifier";
    /// The name of its weight rows `W` `[C, d]` in a model file.
    pub const WEIGHT_VAR: &'static str = "classifier.weight";

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
