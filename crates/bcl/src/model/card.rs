//! The model card that travels with every checkpoint: what the model is, what it was trained
//! on, and which model's space it is compatible with; and the content id of a weights file.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ModelConfig, ModelError};
use crate::data::{hex, Normalization};

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
