//! Export of a trained model: its weights (the model's variables, without a method's own), its
//! card, the history and the refreshes (file names: [`crate::layout::ModelDir`]).

use std::path::Path;

use tch::{nn, Tensor};

use super::checkpoint::{named_vars, save_safetensors_atomic, COMPAT_VARS};
use super::{EpochStats, TrainError};
use crate::data::Normalization;
use crate::layout::ModelDir;
use crate::loss::CompatLoss;
use crate::model::{file_id, Embedder, ModelCard, ModelConfig, Role};
use crate::perturb::RefreshStats;

/// What the card says beyond the weights' own content.
pub(crate) struct CardFacts<'a> {
    pub(crate) name: &'a str,
    pub(crate) role: Role,
    pub(crate) method: crate::loss::Method,
    pub(crate) model: &'a ModelConfig,
    pub(crate) classes: &'a [i64],
    pub(crate) normalization: Normalization,
    pub(crate) input_shape: [usize; 3],
    pub(crate) split_fingerprint: &'a str,
    pub(crate) train_images: usize,
    pub(crate) seed: u64,
    pub(crate) epochs: usize,
    pub(crate) old: Option<&'a Embedder>,
    pub(crate) note: &'a str,
}

/// Writes the model file, its card, the history and the refreshes into `out`; returns the card.
pub(crate) fn export(
    out: &Path,
    vs: &nn::VarStore,
    compat: &dyn CompatLoss,
    facts: CardFacts,
    history: &[EpochStats],
    refreshes: &[RefreshStats],
) -> Result<ModelCard, TrainError> {
    let md = ModelDir::new(out);
    let wpath = md.weights();
    // The model file holds the model: a method's own variables (a discriminator) stay in the
    // checkpoint only.
    let model_vars: Vec<(String, Tensor)> = named_vars(vs)
        .into_iter()
        .filter(|(n, _)| !n.starts_with(&format!("{COMPAT_VARS}.")))
        .collect();
    save_safetensors_atomic(&wpath, &model_vars)?;
    let card = ModelCard {
        format: 1,
        id: file_id(&wpath)?,
        name: facts.name.to_string(),
        role: facts.role,
        // An old model is trained for classification only.
        method: if facts.role == Role::Old {
            "none".into()
        } else {
            facts.method.as_str().to_string()
        },
        arch: facts.model.clone(),
        classes: facts.classes.to_vec(),
        normalization: facts.normalization,
        input_shape: facts.input_shape,
        split_fingerprint: facts.split_fingerprint.to_string(),
        train_images: facts.train_images,
        seed: facts.seed,
        epochs: facts.epochs,
        // An unconstrained model claims no compatibility, even when trained beside an old one.
        compatible_with: facts
            .old
            .filter(|_| compat.weight() > 0.0)
            .map(|o| o.card.id.clone()),
        note: facts.note.to_string(),
    };
    crate::files::write_json(&md.history(), &history)?;
    if !refreshes.is_empty() {
        crate::files::write_json(&md.refreshes(), &refreshes)?;
    }
    crate::files::write_json(&md.card(), &card)?;
    Ok(card)
}
