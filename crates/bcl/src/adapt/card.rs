//! The adapter card (`adapter.json`), in the model card's conventions: what the map is, which
//! models' spaces it joins, what it was fitted on and how well it fits there.

use serde::{Deserialize, Serialize};

use super::Direction;

/// One side of an adapter: a model's id and name when known (vectors handed in as files name
/// no model), and its embedding dimension.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    /// The model card's content id.
    pub id: Option<String>,
    /// The model card's name.
    pub name: Option<String>,
    /// Its embedding dimension (0 while unknown, before a fit fills it in).
    pub dim: usize,
}

impl ModelRef {
    /// A loaded model as one side of an adapter: its card's id, name and dimension.
    pub fn of(e: &crate::model::Embedder) -> Self {
        Self {
            id: Some(e.card.id.clone()),
            name: Some(e.card.name.clone()),
            dim: e.card.arch.dim as usize,
        }
    }
}

/// The support set an adapter was fitted on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SupportInfo {
    /// SHA-256 (16 hex characters) of the pairs, labels and side information.
    pub fingerprint: String,
    /// Number of pairs.
    pub pairs: usize,
    /// Whether it had class labels (SLERP chooses α with them).
    pub labelled: bool,
    /// Dimension of the side information (forward), if fitted with it.
    pub side_dim: Option<usize>,
    /// Where the pairs came from (files or models and data), for people.
    pub source: String,
}

/// What a fitted adapter is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdapterCard {
    /// Card format version.
    pub format: u32,
    /// Content id: SHA-256 (16 hex chars) of `adapter.safetensors`.
    pub id: String,
    /// The kind (`procrustes`, `slerp`, `affine`, `forward`).
    pub kind: String,
    /// Which way it maps.
    pub direction: Direction,
    /// The space its input vectors come from.
    pub from: ModelRef,
    /// The space it maps them into.
    pub to: ModelRef,
    /// The support set it was fitted on.
    pub support: SupportInfo,
    /// The settings used.
    pub settings: serde_json::Value,
    /// Kind-specific figures of the fit (e.g. SLERP's support score per α).
    pub fit: serde_json::Value,
    /// Mean cosine of the mapped support vectors with their targets.
    pub support_cosine: f64,
    /// Seconds the fit took.
    pub seconds: f64,
    /// Free-form note.
    pub note: String,
}

impl AdapterCard {
    /// The card format this version writes and reads.
    pub const FORMAT: u32 = 1;
}
