//! Model: one file per concept: `config` (the architecture settings), `backbone` (the
//! embedding network: small ResNet, ResNet-18/50 in torchvision's layout, GeM, pretrained
//! weights), `card` (the model card that travels with every checkpoint) and `embedder` (a model
//! frozen for inference).

pub mod backbone;
pub mod card;
pub mod config;
pub mod embedder;

pub use backbone::{
    gem, l2_normalize, load_pretrained, EmbeddingNet, BACKBONE_PATH, COMPAT_HEAD_PATH,
};
pub use card::{file_id, ModelCard, Role};
pub(crate) use config::is_default;
pub use config::{Backbone, ModelConfig, ModelOverride, Pooling};
pub use embedder::Embedder;

use std::path::PathBuf;

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
