//! Losses: the classification head (cosine with ArcFace/CosFace margins, or plain softmax) and
//! the `CompatLoss` trait every compatibility method implements. The training loop only sees
//! the trait; methods are registered in one place, [`Method::build`].

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::{Kind, Reduction, Tensor};

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
    /// The unweighted scalar loss on a batch; `None` for a method without one.
    fn loss(&self, inputs: &CompatInputs) -> Option<Tensor>;
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
}

impl Method {
    /// Every registered method.
    pub const ALL: [Method; 3] = [Method::Independent, Method::L2, Method::Bct];

    /// The CLI name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Method::Independent => "independent",
            Method::L2 => "l2",
            Method::Bct => "bct",
        }
    }

    /// Whether the method needs the old model's class prototypes.
    pub fn needs_prototypes(&self) -> bool {
        matches!(self, Method::Bct)
    }

    /// Builds the loss; `prototypes` must be given when [`Method::needs_prototypes`].
    pub fn build(&self, cfg: &CompatConfig, prototypes: Option<Tensor>) -> Box<dyn CompatLoss> {
        match self {
            Method::Independent => Box::new(Independent),
            Method::L2 => Box::new(L2 { lambda: cfg.lambda }),
            Method::Bct => Box::new(Bct {
                lambda: cfg.lambda,
                scale: cfg.scale,
                prototypes: prototypes.expect("bct needs prototypes"),
            }),
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

/// Configuration of the compatibility term.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CompatConfig {
    /// Loss weight λ.
    pub lambda: f64,
    /// Scale `s` of the influence loss's cosine logits.
    pub scale: f64,
}

impl Default for CompatConfig {
    fn default() -> Self {
        Self {
            lambda: 1.0,
            scale: 16.0,
        }
    }
}
