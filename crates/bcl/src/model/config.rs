//! The model's architecture settings (`[old.model]`/`[new.model]`): backbone, pooling, widths
//! and the embedding dimension, with the overrides a command line applies.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ModelError;

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
    /// The dimension of the model this one must be searchable against, when it differs from
    /// `dim`: a projection head (`dim` → `compat_dim`, no bias) maps the normalised embedding
    /// into that space for the compatibility losses and for cross-model queries, while the
    /// model's own gallery uses its full embedding. Set by training from the old model's card,
    /// never by hand; absent (and not written) when both dimensions are equal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compat_dim: Option<i64>,
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
            compat_dim: None,
        }
    }
}

/// The new model's architecture where it differs from the old model's: the `[new_model]`
/// section of a run configuration. Each field left unset is the old model's (`[model]`), so an
/// upgrade to a wider or deeper net is `[new_model] width = 32, blocks = 2`. The embedding
/// dimension may differ from the old model's (`[new_model] dim = 64` over `[model] dim = 32`):
/// the new model then learns a projection head into the old space (`ModelConfig::compat_dim`).
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
    /// Embedding dimension (the old model's when unset; another one adds a projection head).
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

    /// Checks that the new model can search the old model's vectors: the same input channels
    /// (an embedding dimension of its own is bridged by a projection head).
    pub fn check_against(&self, old: &ModelConfig) -> Result<(), String> {
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
    /// This architecture as the successor of a model embedding in `old_dim`: with a projection
    /// head into `old_dim` where its own dimension differs, without one where it is equal.
    pub fn successor_of(&self, old_dim: i64) -> ModelConfig {
        ModelConfig {
            compat_dim: (self.dim != old_dim).then_some(old_dim),
            ..self.clone()
        }
    }

    /// Checks the configuration is usable.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.width < 1 || self.blocks < 1 || self.dim < 2 || self.in_channels < 1 {
            return Err(ModelError::Config(format!(
                "width, blocks and in_channels must be >= 1 and dim >= 2, got {self:?}"
            )));
        }
        if let Some(c) = self.compat_dim {
            if c < 2 || c == self.dim {
                return Err(ModelError::Config(format!(
                    "compat_dim = {c}: a projection head maps dim = {} into another dimension \
                     >= 2 (training sets it from the old model; leave it out of a configuration)",
                    self.dim
                )));
            }
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
