//! Model: the small ResNet-style backbone with an L2-normalised embedding head, the model
//! card that travels with every checkpoint, and the frozen `Embedder` used for inference.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use crate::data::{hex, Dataset, Normalization};

/// Errors of building, saving and loading models.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The model card is not valid JSON for this version.
    #[error("{path}: not a valid model card: {reason}")]
    Card {
        /// The card file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The weights file does not fit the card's architecture, or libtorch failed.
    #[error("{path}: cannot load weights: {reason}")]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// What libtorch said.
        reason: String,
    },
    /// An invalid architecture configuration.
    #[error("invalid model configuration: {0}")]
    Config(String),
    /// libtorch refused the execution settings (autocast, channels-last).
    #[error("execution settings: {0}")]
    Exec(String),
}

/// Which backbone the embedding network uses.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Backbone {
    /// The small three-stage ResNet-style net (`width`, `blocks`), for 28×28 and 32×32 images.
    #[default]
    Small,
    /// ResNet-18 in torchvision's layout (variable names as its `state_dict`, without `fc`).
    Resnet18,
    /// ResNet-50 (v1.5: stride on the 3×3 convolution) in torchvision's layout.
    Resnet50,
}

impl std::str::FromStr for Backbone {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "small" => Ok(Backbone::Small),
            "resnet18" => Ok(Backbone::Resnet18),
            "resnet50" => Ok(Backbone::Resnet50),
            _ => Err(format!(
                "unknown backbone {s:?}: expected small, resnet18 or resnet50"
            )),
        }
    }
}

/// What a model is in an upgrade: the old model (trained for classification only) or a new
/// model trained against it. Written as "old"/"new" on the card.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The model whose embeddings fill the gallery.
    Old,
    /// A model trained (with some method, perhaps none) beside an old one.
    New,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Old => "old",
            Role::New => "new",
        })
    }
}

/// Global pooling of the last feature map.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    /// Average pooling.
    #[default]
    Avg,
    /// Generalised mean `(mean x^p)^{1/p}` with a learned p (the usual choice for landmarks).
    Gem,
}

/// Whether `v` is its type's default (serde's `skip_serializing_if` for settings written only
/// when set).
pub(crate) fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn is_gem_default(p: &f64) -> bool {
    *p == 3.0
}

fn gem_default() -> f64 {
    3.0
}

/// Architecture of the backbone and embedding head. Settings at their defaults are left out
/// when serialised, so configurations written before a setting existed keep their identity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// The backbone.
    #[serde(skip_serializing_if = "is_default")]
    pub backbone: Backbone,
    /// Global pooling.
    #[serde(skip_serializing_if = "is_default")]
    pub pooling: Pooling,
    /// Initial GeM exponent p (learned from there).
    #[serde(skip_serializing_if = "is_gem_default", default = "gem_default")]
    pub gem_p: f64,
    /// Weights to start the backbone from: a `.safetensors` or `.npz` file with torchvision's
    /// names (ImageNet weights converted once, see docs/benchmarks.md); never downloaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<PathBuf>,
    /// Channels of the first stage of the small backbone; stages 2 and 3 use 2x and 4x.
    pub width: i64,
    /// Basic blocks per stage of the small backbone (depth = 2 + 6 * blocks convolutions).
    pub blocks: i64,
    /// Embedding dimension `d` (a linear projection from the backbone's width).
    pub dim: i64,
    /// Input channels (1 for grey-scale, 3 for colour).
    pub in_channels: i64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            backbone: Backbone::Small,
            pooling: Pooling::Avg,
            gem_p: 3.0,
            pretrained: None,
            width: 16,
            blocks: 1,
            dim: 128,
            in_channels: 1,
        }
    }
}

/// The new model's architecture where it differs from the old model's: the `[new_model]`
/// section of a run configuration. Each field left unset is the old model's (`[model]`), so an
/// upgrade to a wider or deeper net is `[new_model] width = 32, blocks = 2`. The embedding
/// dimension must stay the old model's: a new query is searched against old vectors.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelOverride {
    /// The backbone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backbone: Option<Backbone>,
    /// Global pooling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pooling: Option<Pooling>,
    /// Initial GeM exponent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gem_p: Option<f64>,
    /// Weights to start the backbone from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<PathBuf>,
    /// Channels of the first stage of the small backbone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<i64>,
    /// Basic blocks per stage of the small backbone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocks: Option<i64>,
    /// Embedding dimension (must equal the old model's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dim: Option<i64>,
    /// Input channels (must equal the old model's: both embed the same images).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_channels: Option<i64>,
}

impl ModelOverride {
    /// Whether nothing is overridden (the new model has the old model's architecture).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// `base` with the overridden fields replaced.
    pub fn apply(&self, base: &ModelConfig) -> ModelConfig {
        let mut m = base.clone();
        if let Some(v) = self.backbone {
            m.backbone = v;
        }
        if let Some(v) = self.pooling {
            m.pooling = v;
        }
        if let Some(v) = self.gem_p {
            m.gem_p = v;
        }
        if let Some(v) = &self.pretrained {
            m.pretrained = Some(v.clone());
        }
        if let Some(v) = self.width {
            m.width = v;
        }
        if let Some(v) = self.blocks {
            m.blocks = v;
        }
        if let Some(v) = self.dim {
            m.dim = v;
        }
        if let Some(v) = self.in_channels {
            m.in_channels = v;
        }
        m
    }

    /// Checks that the new model can search the old model's vectors: the same embedding
    /// dimension and input channels.
    pub fn check_against(&self, old: &ModelConfig) -> Result<(), String> {
        if let Some(d) = self.dim.filter(|&d| d != old.dim) {
            return Err(format!(
                "new_model.dim = {d}: the new model must embed in the old model's dimension \
                 (model.dim = {}), or its queries cannot be searched against the old gallery",
                old.dim
            ));
        }
        if let Some(c) = self.in_channels.filter(|&c| c != old.in_channels) {
            return Err(format!(
                "new_model.in_channels = {c}: both models embed the same images (model.in_channels = {})",
                old.in_channels
            ));
        }
        Ok(())
    }
}

impl ModelConfig {
    /// Checks the configuration is usable.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.width < 1 || self.blocks < 1 || self.dim < 2 || self.in_channels < 1 {
            return Err(ModelError::Config(format!(
                "width, blocks and in_channels must be >= 1 and dim >= 2, got {self:?}"
            )));
        }
        if !(self.gem_p >= 1.0 && self.gem_p.is_finite()) {
            return Err(ModelError::Config(format!(
                "gem_p must be a number >= 1, got {}",
                self.gem_p
            )));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct BasicBlock {
    c1: nn::Conv2D,
    b1: nn::BatchNorm,
    c2: nn::Conv2D,
    b2: nn::BatchNorm,
    short: Option<(nn::Conv2D, nn::BatchNorm)>,
}

fn conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding: k / 2,
        bias: false,
        ..Default::default()
    };
    nn::conv2d(p, cin, cout, k, cfg)
}

impl BasicBlock {
    fn new(p: &nn::Path, cin: i64, cout: i64, stride: i64) -> Self {
        let short = (stride != 1 || cin != cout).then(|| {
            (
                conv(p / "short_conv", cin, cout, 1, stride),
                nn::batch_norm2d(p / "short_bn", cout, Default::default()),
            )
        });
        Self {
            c1: conv(p / "c1", cin, cout, 3, stride),
            b1: nn::batch_norm2d(p / "b1", cout, Default::default()),
            c2: conv(p / "c2", cout, cout, 3, 1),
            b2: nn::batch_norm2d(p / "b2", cout, Default::default()),
            short,
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let y = x.apply(&self.c1).apply_t(&self.b1, train).relu();
        let y = y.apply(&self.c2).apply_t(&self.b2, train);
        let s = match &self.short {
            None => x.shallow_clone(),
            Some((c, b)) => x.apply(c).apply_t(b, train),
        };
        (y + s).relu()
    }
}

/// A residual block of torchvision's ResNets: basic (two 3×3) or bottleneck (1×1, 3×3, 1×1).
#[derive(Debug)]
struct TvBlock {
    convs: Vec<(nn::Conv2D, nn::BatchNorm)>,
    downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
}

fn tv_conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    nn::conv2d(
        p,
        cin,
        cout,
        k,
        nn::ConvConfig {
            stride,
            padding,
            bias: false,
            ..Default::default()
        },
    )
}

impl TvBlock {
    fn new(p: &nn::Path, cin: i64, planes: i64, stride: i64, bottleneck: bool) -> (Self, i64) {
        let bn = |n: &str, c: i64| nn::batch_norm2d(p / n, c, Default::default());
        let (convs, cout) = if bottleneck {
            let out = planes * 4;
            (
                vec![
                    (
                        tv_conv(p / "conv1", cin, planes, 1, 1, 0),
                        bn("bn1", planes),
                    ),
                    (
                        tv_conv(p / "conv2", planes, planes, 3, stride, 1),
                        bn("bn2", planes),
                    ),
                    (tv_conv(p / "conv3", planes, out, 1, 1, 0), bn("bn3", out)),
                ],
                out,
            )
        } else {
            (
                vec![
                    (
                        tv_conv(p / "conv1", cin, planes, 3, stride, 1),
                        bn("bn1", planes),
                    ),
                    (
                        tv_conv(p / "conv2", planes, planes, 3, 1, 1),
                        bn("bn2", planes),
                    ),
                ],
                planes,
            )
        };
        let downsample = (stride != 1 || cin != cout).then(|| {
            let d = p / "downsample";
            (
                tv_conv(&d / "0", cin, cout, 1, stride, 0),
                nn::batch_norm2d(&d / "1", cout, Default::default()),
            )
        });
        (Self { convs, downsample }, cout)
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let last = self.convs.len() - 1;
        let mut y = x.shallow_clone();
        for (i, (c, b)) in self.convs.iter().enumerate() {
            y = y.apply(c).apply_t(b, train);
            if i < last {
                y = y.relu();
            }
        }
        let s = match &self.downsample {
            None => x.shallow_clone(),
            Some((c, b)) => x.apply(c).apply_t(b, train),
        };
        (y + s).relu()
    }
}

#[derive(Debug)]
enum Body {
    Small {
        stem: nn::Conv2D,
        stem_bn: nn::BatchNorm,
        blocks: Vec<BasicBlock>,
    },
    Torchvision {
        conv1: nn::Conv2D,
        bn1: nn::BatchNorm,
        blocks: Vec<TvBlock>,
    },
}

/// The embedding network: backbone, global pooling (average or GeM), a linear projection to
/// `d`, L2 normalisation.
#[derive(Debug)]
pub struct EmbeddingNet {
    body: Body,
    gem_p: Option<Tensor>,
    head: nn::Linear,
}

/// Variable-store path of the torchvision backbones (their `state_dict` names follow it).
pub const BACKBONE_PATH: &str = "backbone";

impl EmbeddingNet {
    /// The embedding dimension `d`.
    pub fn dim(&self) -> i64 {
        self.head.ws.size()[0]
    }

    /// Builds the network's variables under `p`.
    pub fn new(p: &nn::Path, cfg: &ModelConfig) -> Self {
        let (body, width) = match cfg.backbone {
            Backbone::Small => {
                let stem = conv(p / "stem", cfg.in_channels, cfg.width, 3, 1);
                let stem_bn = nn::batch_norm2d(p / "stem_bn", cfg.width, Default::default());
                let mut blocks = Vec::new();
                let mut cin = cfg.width;
                for s in 0..3 {
                    let cout = cfg.width << s;
                    for b in 0..cfg.blocks {
                        let stride = if s > 0 && b == 0 { 2 } else { 1 };
                        blocks.push(BasicBlock::new(
                            &(p / format!("s{s}b{b}")),
                            cin,
                            cout,
                            stride,
                        ));
                        cin = cout;
                    }
                }
                (
                    Body::Small {
                        stem,
                        stem_bn,
                        blocks,
                    },
                    cin,
                )
            }
            Backbone::Resnet18 | Backbone::Resnet50 => {
                let (depths, bottleneck) = match cfg.backbone {
                    Backbone::Resnet18 => ([2, 2, 2, 2], false),
                    _ => ([3, 4, 6, 3], true),
                };
                let bp = p / BACKBONE_PATH;
                let conv1 = tv_conv(&bp / "conv1", cfg.in_channels, 64, 7, 2, 3);
                let bn1 = nn::batch_norm2d(&bp / "bn1", 64, Default::default());
                let mut blocks = Vec::new();
                let mut cin = 64;
                for (l, (&n, planes)) in depths.iter().zip([64, 128, 256, 512]).enumerate() {
                    for b in 0..n {
                        let stride = if l > 0 && b == 0 { 2 } else { 1 };
                        let (blk, cout) = TvBlock::new(
                            &(&bp / format!("layer{}", l + 1) / b.to_string()),
                            cin,
                            planes,
                            stride,
                            bottleneck,
                        );
                        blocks.push(blk);
                        cin = cout;
                    }
                }
                (Body::Torchvision { conv1, bn1, blocks }, cin)
            }
        };
        let gem_p =
            (cfg.pooling == Pooling::Gem).then(|| p.var("gem_p", &[1], nn::Init::Const(cfg.gem_p)));
        let head = nn::linear(p / "head", width, cfg.dim, Default::default());
        Self { body, gem_p, head }
    }

    /// The last feature map of the backbone.
    fn features_t(&self, x: &Tensor, train: bool) -> Tensor {
        match &self.body {
            Body::Small {
                stem,
                stem_bn,
                blocks,
            } => {
                let mut h = x.apply(stem).apply_t(stem_bn, train).relu();
                for b in blocks {
                    h = b.forward_t(&h, train);
                }
                h
            }
            Body::Torchvision { conv1, bn1, blocks } => {
                let mut h = x.apply(conv1).apply_t(bn1, train).relu().max_pool2d(
                    [3, 3],
                    [2, 2],
                    [1, 1],
                    [1, 1],
                    false,
                );
                for b in blocks {
                    h = b.forward_t(&h, train);
                }
                h
            }
        }
    }

    /// Unnormalised embedding `φ(x)`.
    pub fn raw_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.head_t(&self.features_t(x, train))
    }

    /// L2-normalised embedding under the execution settings `exec`: the backbone runs under
    /// its autocast and layout, the pooling (accumulated in float32) and the embedding head
    /// in float32, so the rounding of bfloat16 stays in the feature maps and never reaches
    /// the embedding's own coordinates (measured: a head under autocast lost 40 points of mAP
    /// on embeddings that differ by little, docs/performance.md).
    pub fn forward_exec(
        &self,
        x: &Tensor,
        train: bool,
        exec: &crate::exec::ExecConfig,
    ) -> Result<Tensor, crate::exec::ExecError> {
        if exec.is_default() {
            return Ok(self.forward_t(x, train));
        }
        let xin = exec.input(x)?;
        let h = exec.run(x.device(), || self.features_t(&xin, train))?;
        Ok(l2_normalize(&self.head_t(&h.to_kind(Kind::Float))))
    }

    /// The pooling and the embedding head over the backbone's last feature map `h`.
    fn head_t(&self, h: &Tensor) -> Tensor {
        let pooled = match &self.gem_p {
            None => h.mean_dim([2i64, 3].as_slice(), false, Kind::Float),
            Some(p) => gem(h, p),
        };
        pooled.apply(&self.head)
    }

    /// L2-normalised embedding `φ(x)/‖φ(x)‖`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        l2_normalize(&self.raw_t(x, train))
    }
}

/// Generalised-mean pooling of a `[B, C, H, W]` map: `(mean_{h,w} max(x, 1e-6)^p)^{1/p}`;
/// p = 1 is average pooling, large p approaches max pooling.
pub fn gem(x: &Tensor, p: &Tensor) -> Tensor {
    x.clamp_min(1e-6)
        .pow(p)
        .mean_dim([2i64, 3].as_slice(), false, Kind::Float)
        .pow(&p.reciprocal())
}

impl ModuleT for EmbeddingNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        EmbeddingNet::forward_t(self, xs, train)
    }
}

/// Copies a torchvision ResNet `state_dict` (a `.safetensors` or `.npz` file) into the
/// backbone variables under `prefix` (e.g. `net.backbone`); `fc.*` and `num_batches_tracked`
/// are skipped. Every backbone variable must be found with its shape, and every name in the
/// file must be known: a file of another architecture is an error, not a partial load.
/// Returns the number of tensors copied.
pub fn load_pretrained(vs: &nn::VarStore, path: &Path, prefix: &str) -> Result<usize, ModelError> {
    let werr = |reason: String| ModelError::Weights {
        path: path.to_path_buf(),
        reason,
    };
    let is_npz = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npz"));
    let tensors = if is_npz {
        Tensor::read_npz(path)
    } else {
        Tensor::read_safetensors(path)
    }
    .map_err(|e| {
        werr(format!(
            "cannot read ({e}); expected a .safetensors or .npz state_dict"
        ))
    })?;
    let vars = vs.variables();
    let mut loaded = std::collections::HashSet::new();
    tch::no_grad(|| -> Result<(), ModelError> {
        for (name, t) in &tensors {
            if name.starts_with("fc.") || name.ends_with("num_batches_tracked") {
                continue;
            }
            let target = format!("{prefix}.{name}");
            let Some(v) = vars.get(&target) else {
                return Err(werr(format!(
                    "'{name}' is not a variable of this backbone: the file holds another architecture"
                )));
            };
            if v.size() != t.size() {
                return Err(werr(format!(
                    "'{name}' has shape {:?} in the file but {:?} here (in_channels = 3 for ImageNet weights)",
                    t.size(),
                    v.size()
                )));
            }
            let mut v = v.shallow_clone();
            v.copy_(&t.to_kind(v.kind()).to_device(v.device()));
            loaded.insert(target);
        }
        Ok(())
    })?;
    let wanted = format!("{prefix}.");
    if let Some(missing) = vars
        .keys()
        .filter(|k| k.starts_with(&wanted))
        .find(|k| !loaded.contains(*k))
    {
        return Err(werr(format!(
            "'{}' is missing from the file",
            &missing[wanted.len()..]
        )));
    }
    Ok(loaded.len())
}

/// Row-wise L2 normalisation with a small floor on the norm.
pub fn l2_normalize(x: &Tensor) -> Tensor {
    let n = x
        .norm_scalaropt_dim(2, [-1i64].as_slice(), true)
        .clamp_min(1e-12);
    x / n
}

/// What a checkpoint is: architecture, data, training and the model it claims compatibility with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    /// Card format version.
    pub format: u32,
    /// Content id: SHA-256 (16 hex chars) of the weights file.
    pub id: String,
    /// Human-readable name (e.g. "old", "new-bct").
    pub name: String,
    /// Old (classification only) or new (trained against an old model).
    pub role: Role,
    /// Compatibility method used to train it ("none" for an old model).
    pub method: String,
    /// Architecture.
    pub arch: ModelConfig,
    /// Original class labels its classifier covers, in classifier order.
    pub classes: Vec<i64>,
    /// Pixel normalisation applied to inputs.
    pub normalization: Normalization,
    /// Image shape (channels, rows, cols) it expects.
    pub input_shape: [usize; 3],
    /// Fingerprint of the data split it was trained with.
    pub split_fingerprint: String,
    /// Number of training images it saw.
    pub train_images: usize,
    /// Seed of its initialisation and data order.
    pub seed: u64,
    /// Epochs trained.
    pub epochs: usize,
    /// Id of the model whose embedding space it is compatible with, if any.
    pub compatible_with: Option<String>,
    /// Free-form note, e.g. the loss weight.
    pub note: String,
}

impl ModelCard {
    /// Reads and parses a card.
    pub fn read(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| ModelError::Card {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }
}

/// SHA-256 (16 hex chars) of a file's content.
pub fn file_id(path: &Path) -> Result<String, ModelError> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(hex(&Sha256::digest(&bytes)[..8]))
}

/// A model frozen for inference, with its card.
pub struct Embedder {
    /// The card.
    pub card: ModelCard,
    /// Where it was loaded from.
    pub dir: PathBuf,
    vs: nn::VarStore,
    net: EmbeddingNet,
    exec: crate::exec::ExecConfig,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("card", &self.card)
            .finish()
    }
}

impl Embedder {
    /// Loads a model directory (or its `model.json`) onto `device`, verifying the weights' id.
    pub fn load(path: &Path, device: Device) -> Result<Self, ModelError> {
        let dir = if path.is_file() {
            path.parent().unwrap_or(Path::new(".")).to_path_buf()
        } else {
            path.to_path_buf()
        };
        let md = crate::layout::ModelDir::new(&dir);
        let card = ModelCard::read(&md.card())?;
        card.arch.validate()?;
        let wpath = md.weights();
        let id = file_id(&wpath)?;
        if id != card.id {
            return Err(ModelError::Weights {
                path: wpath,
                reason: format!(
                    "content id {id} does not match the card's id {}: the weights were changed or belong to another model",
                    card.id
                ),
            });
        }
        let mut vs = nn::VarStore::new(device);
        let net = EmbeddingNet::new(&(vs.root() / "net"), &card.arch);
        vs.load_partial(&wpath).map_err(|e| ModelError::Weights {
            path: wpath.clone(),
            reason: e.to_string(),
        })?;
        // load_partial tolerates missing names: check the net is complete.
        let stored: std::collections::HashSet<String> = tch::Tensor::read_safetensors(&wpath)
            .map_err(|e| ModelError::Weights {
                path: wpath.clone(),
                reason: e.to_string(),
            })?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        if let Some(missing) = vs.variables().keys().find(|k| !stored.contains(*k)) {
            return Err(ModelError::Weights {
                path: wpath,
                reason: format!("variable '{missing}' is missing: the file does not match the card's architecture"),
            });
        }
        vs.freeze();
        Ok(Self {
            card,
            dir,
            vs,
            net,
            exec: Default::default(),
        })
    }

    /// The same model run with `exec`'s settings (bfloat16 autocast, channels-last): its
    /// weights are laid out for them now, and a one-image pass checks libtorch accepts them.
    pub fn with_exec(mut self, exec: crate::exec::ExecConfig) -> Result<Self, ModelError> {
        let fail = |e: crate::exec::ExecError| ModelError::Exec(e.to_string());
        exec.prepare(&self.vs).map_err(fail)?;
        self.exec = exec;
        let a = &self.card.arch;
        let probe = Tensor::zeros([1, a.in_channels, 32, 32], (Kind::Float, self.device()));
        let _ = tch::no_grad(|| self.net.forward_exec(&probe, false, &exec)).map_err(fail)?;
        Ok(self)
    }

    /// The execution settings the model runs with.
    pub fn exec(&self) -> crate::exec::ExecConfig {
        self.exec
    }

    /// The device the model runs on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Normalised embeddings of a prepared batch (no gradient).
    pub fn embed_batch(&self, x: &Tensor) -> Tensor {
        let plain = || tch::no_grad(|| self.net.forward_t(x, false));
        if self.exec.is_default() {
            return plain();
        }
        match tch::no_grad(|| self.net.forward_exec(x, false, &self.exec)) {
            Ok(f) => f,
            // with_exec ran the same calls on a probe; should libtorch refuse them later, the
            // batch is embedded in float32 rather than lost
            Err(e) => {
                tracing::error!("{e}; embedding this batch in float32");
                plain()
            }
        }
    }

    /// Normalised embeddings `[N, d]` (CPU, f32) of every item of `data`, in order.
    pub fn embed_dataset(&self, data: &Dataset, batch: usize) -> Tensor {
        let idx: Vec<usize> = (0..data.len()).collect();
        self.embed_positions(data, &idx, batch)
    }

    /// As [`Embedder::embed_dataset`], shared among the ranks of `dist` (see
    /// [`Embedder::embed_positions_on`]).
    pub fn embed_dataset_on(
        &self,
        data: &Dataset,
        batch: usize,
        dist: &dyn bcl_dist::Collective,
    ) -> Result<Tensor, bcl_dist::DistError> {
        let idx: Vec<usize> = (0..data.len()).collect();
        self.embed_positions_on(data, &idx, batch, dist)
    }

    /// As [`Embedder::embed_positions`], shared among the ranks of `dist`: each embeds its
    /// contiguous share of `positions` and every rank gets the whole, in order.
    pub fn embed_positions_on(
        &self,
        data: &Dataset,
        positions: &[usize],
        batch: usize,
        dist: &dyn bcl_dist::Collective,
    ) -> Result<Tensor, bcl_dist::DistError> {
        if dist.world_size() == 1 {
            return Ok(self.embed_positions(data, positions, batch));
        }
        let mine = &positions[bcl_dist::shard(positions.len(), dist.rank(), dist.world_size())];
        let local = match mine.is_empty() {
            true => Tensor::zeros([0, self.card.arch.dim], (Kind::Float, Device::Cpu)),
            false => self.embed_positions(data, mine, batch),
        };
        bcl_dist::all_gather_rows(dist, &local)
    }

    /// Normalised embeddings `[positions.len(), d]` (CPU, f32) of the items of `data` at
    /// `positions`, in that order.
    pub fn embed_positions(&self, data: &Dataset, positions: &[usize], batch: usize) -> Tensor {
        let chunks: Vec<Tensor> = positions
            .chunks(batch.max(1))
            .map(|c| {
                let (x, _) = data.batch(c, self.card.normalization, None, self.device());
                self.embed_batch(&x).to_device(Device::Cpu)
            })
            .collect();
        Tensor::cat(&chunks, 0)
    }
}
