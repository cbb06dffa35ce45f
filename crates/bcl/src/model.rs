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
}

/// Architecture of the ResNet-style backbone and embedding head.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Channels of the first stage; stages 2 and 3 use 2x and 4x.
    pub width: i64,
    /// Basic blocks per stage (depth = 2 + 6 * blocks convolutions).
    pub blocks: i64,
    /// Embedding dimension `d`.
    pub dim: i64,
    /// Input channels (1 for grey-scale).
    pub in_channels: i64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            width: 16,
            blocks: 1,
            dim: 128,
            in_channels: 1,
        }
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

/// The embedding network: backbone, global average pooling, linear head, L2 normalisation.
#[derive(Debug)]
pub struct EmbeddingNet {
    stem: nn::Conv2D,
    stem_bn: nn::BatchNorm,
    blocks: Vec<BasicBlock>,
    head: nn::Linear,
}

impl EmbeddingNet {
    /// Builds the network's variables under `p`.
    pub fn new(p: &nn::Path, cfg: &ModelConfig) -> Self {
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
        let head = nn::linear(p / "head", cin, cfg.dim, Default::default());
        Self {
            stem,
            stem_bn,
            blocks,
            head,
        }
    }

    /// Unnormalised embedding `φ(x)`.
    pub fn raw_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.apply(&self.stem).apply_t(&self.stem_bn, train).relu();
        for b in &self.blocks {
            h = b.forward_t(&h, train);
        }
        h.mean_dim([2i64, 3].as_slice(), false, Kind::Float)
            .apply(&self.head)
    }

    /// L2-normalised embedding `φ(x)/‖φ(x)‖`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        l2_normalize(&self.raw_t(x, train))
    }
}

impl ModuleT for EmbeddingNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        EmbeddingNet::forward_t(self, xs, train)
    }
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
    /// "old" (classification only) or "new" (trained against an old model).
    pub role: String,
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

/// The file names of a model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The model card's file name.
pub const CARD_FILE: &str = "model.json";

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
        let card = ModelCard::read(&dir.join(CARD_FILE))?;
        card.arch.validate()?;
        let wpath = dir.join(WEIGHTS_FILE);
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
        Ok(Self { card, dir, vs, net })
    }

    /// The device the model runs on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Normalised embeddings of a prepared batch (no gradient).
    pub fn embed_batch(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| self.net.forward_t(x, false))
    }

    /// Normalised embeddings `[N, d]` (CPU, f32) of every item of `data`, in order.
    pub fn embed_dataset(&self, data: &Dataset, batch: usize) -> Tensor {
        let idx: Vec<usize> = (0..data.len()).collect();
        let chunks: Vec<Tensor> = idx
            .chunks(batch.max(1))
            .map(|c| {
                let (x, _) = data.batch(c, self.card.normalization, None, self.device());
                self.embed_batch(&x).to_device(Device::Cpu)
            })
            .collect();
        Tensor::cat(&chunks, 0)
    }
}
