//! Adapters (METHOD.md section 8): maps fitted after training between two models' embedding
//! spaces, so that a new model's queries search an old gallery (new → old: `procrustes`,
//! `slerp`, `affine`) or an old gallery's stored vectors are upgraded without re-embedding
//! images (old → new: `forward`). Each kind is one type behind [`AdapterSpec`], listed once in
//! [`KINDS`]; a fitted [`Adapter`] is its tensors (`adapter.safetensors`) and its card
//! (`adapter.json`, [`AdapterCard`]) naming both models, both dimensions and the fingerprint of
//! the support set it was fitted on.

mod affine;
mod card;
mod forward;
mod procrustes;
pub mod rows;
mod slerp;
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

pub use affine::AffineConfig;
pub use card::{AdapterCard, ModelRef, SupportInfo};
pub use forward::ForwardConfig;
pub use slerp::{slerp, SlerpConfig, SlerpCriterion};
pub use support::SupportSet;

use crate::layout::AdapterDir;

/// Why an adapter could not be fitted, stored, loaded or applied.
#[derive(Debug, thiserror::Error)]
pub enum AdaptError {
    /// The vectors handed in are unusable (counts, dimensions, NaN, zero rows).
    #[error("{what}: {reason}")]
    Input {
        /// Which input (e.g. "support set", "queries").
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// An adapter file cannot be read, parsed or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The adapter was fitted for other models than the ones it is used with.
    #[error("adapter {adapter} maps {expected}; it was asked to map {got}")]
    OtherModels {
        /// The adapter's directory.
        adapter: PathBuf,
        /// The models it was fitted for.
        expected: String,
        /// The models it was used with.
        got: String,
    },
    /// No adapter kind of that name.
    #[error("no adapter kind '{0}' (kinds: {kinds})", kinds = kind_names().join(", "))]
    UnknownKind(String),
    /// A setting out of range.
    #[error("adapter settings: {0}")]
    Settings(String),
}

fn input(what: &str, reason: impl std::fmt::Display) -> AdaptError {
    AdaptError::Input {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

fn file_err(path: &Path, reason: impl std::fmt::Display) -> AdaptError {
    AdaptError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Which way an adapter maps.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// New model's vectors (queries) into the old model's space (the gallery's).
    NewToOld,
    /// Old model's vectors (the gallery's) into the new model's space.
    OldToNew,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::NewToOld => "new → old",
            Direction::OldToNew => "old → new",
        })
    }
}

/// What an adapter reads beside the vectors it maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Companion {
    /// Nothing.
    None,
    /// The old model's embedding of the same query (SLERP interpolates between the two).
    OldQuery,
    /// Side information (FCT): required when the adapter was fitted with it, refused otherwise.
    Side,
}

/// The settings of every kind, one section each (`[slerp]`, `[affine]`, `[forward]`), and the
/// seed of the kinds that train.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FitConfig {
    /// Seed of initialisation and batch order (affine, forward).
    pub seed: u64,
    /// SLERP's settings.
    pub slerp: SlerpConfig,
    /// The affine map's settings.
    pub affine: AffineConfig,
    /// The forward map's settings.
    pub forward: ForwardConfig,
}

impl FitConfig {
    /// Checks every section's bounds.
    pub fn validate(&self) -> Result<(), AdaptError> {
        self.slerp.validate()?;
        self.affine.validate()?;
        self.forward.validate()
    }
}

/// The named tensors of a fitted adapter.
#[derive(Debug, Default)]
pub struct Params(BTreeMap<String, Tensor>);

impl Params {
    /// Adds a tensor (stored as float32).
    pub fn insert(&mut self, name: &str, t: Tensor) {
        self.0
            .insert(name.to_string(), t.detach().to_kind(Kind::Float));
    }

    /// The tensor called `name`, or an error naming it.
    pub fn get(&self, name: &str) -> Result<&Tensor, AdaptError> {
        self.0
            .get(name)
            .ok_or_else(|| input("adapter", format!("has no tensor '{name}'")))
    }

    /// The tensors, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.0.iter()
    }

    /// The tensors moved to `device`.
    fn to_device(&self, device: Device) -> Self {
        Self(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v.to_device(device)))
                .collect(),
        )
    }
}

/// What fitting produced: the tensors, the settings used, and figures about the fit.
pub struct Fitted {
    /// The map's tensors.
    pub params: Params,
    /// The settings as used (recorded on the card).
    pub settings: serde_json::Value,
    /// Kind-specific figures of the fit (recorded on the card), e.g. SLERP's score per α.
    pub report: serde_json::Value,
}

/// One kind of adapter: the only place its name, direction and maths live.
pub trait AdapterSpec: Sync {
    /// Its name (`bcl adapt fit --kind`, the card's `kind`).
    fn name(&self) -> &'static str;
    /// One line for `bcl adapt kinds` and `--help`.
    fn description(&self) -> &'static str;
    /// Which way it maps.
    fn direction(&self) -> Direction;
    /// What `apply` reads beside the vectors.
    fn companion(&self) -> Companion;
    /// Fits the map on a (validated, L2-normalised) support set.
    fn fit(
        &self,
        support: &SupportSet,
        cfg: &FitConfig,
        device: Device,
    ) -> Result<Fitted, AdaptError>;
    /// Maps normalised `x` `[N, d_from]` (with its companion, normalised) to `[N, d_to]`.
    fn apply(
        &self,
        p: &Params,
        x: &Tensor,
        companion: Option<&Tensor>,
        to_dim: usize,
    ) -> Result<Tensor, AdaptError>;
    /// Checks loaded tensors against the card's dimensions.
    fn check(&self, p: &Params, card: &AdapterCard) -> Result<(), String>;
}

/// Every adapter kind, listed once.
pub const KINDS: &[&dyn AdapterSpec] = &[
    &procrustes::Spec,
    &slerp::Spec,
    &affine::Spec,
    &forward::Spec,
];

/// The kinds' names, in [`KINDS`] order.
pub fn kind_names() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.name()).collect()
}

/// The kind called `name`.
pub fn kind(name: &str) -> Result<&'static dyn AdapterSpec, AdaptError> {
    KINDS
        .iter()
        .copied()
        .find(|k| k.name() == name)
        .ok_or_else(|| AdaptError::UnknownKind(name.to_string()))
}

/// The input and output models of a fit, as far as they are known (vectors handed in as
/// `.npy` files name no model).
#[derive(Debug, Clone, Default)]
pub struct Models {
    /// The old model (id and name from its card).
    pub old: ModelRef,
    /// The new model.
    pub new: ModelRef,
}

/// A fitted adapter: its kind, card and tensors.
pub struct Adapter {
    /// What it is and what it was fitted on.
    pub card: AdapterCard,
    spec: &'static dyn AdapterSpec,
    params: Params,
    dir: Option<PathBuf>,
}

impl std::fmt::Debug for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adapter")
            .field("card", &self.card)
            .field("dir", &self.dir)
            .finish()
    }
}

/// L2-normalised rows (float32), as the models' embeddings are normalised.
pub(crate) fn normalize(x: &Tensor) -> Tensor {
    let x = x.to_kind(Kind::Float);
    // rows already of unit length (within float rounding) are kept bit for bit, so that a
    // vector passed through unchanged (SLERP at α = 0) scores exactly as it did; the norms
    // are computed once, for the check and the division (as `model::l2_normalize` divides)
    let norms = x.norm_scalaropt_dim(2, [-1i64].as_slice(), true);
    if x.numel() > 0 && (&norms - 1.0).abs().max().double_value(&[]) <= 1e-6 {
        return x;
    }
    x / norms.clamp_min(1e-12)
}

/// `x` `[N, d]` zero-padded to `[N, to]` columns (unchanged when `to <= d`).
pub(crate) fn pad_to(x: &Tensor, to: usize) -> Tensor {
    let d = x.size()[1];
    if to as i64 <= d {
        return x.shallow_clone();
    }
    x.constant_pad_nd([0, to as i64 - d])
}

/// Mean cosine between the rows of `a` and `b` (both `[N, d]`).
pub(crate) fn mean_cosine(a: &Tensor, b: &Tensor) -> f64 {
    (normalize(a) * normalize(b))
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
        .mean(Kind::Float)
        .double_value(&[])
}

/// Checks that `t` is a finite `[n?, dim]` matrix; `what` names it in the error.
pub(crate) fn check_matrix(
    t: &Tensor,
    what: &str,
    dim: usize,
    rows: Option<i64>,
) -> Result<(), AdaptError> {
    let size = t.size();
    if size.len() != 2 {
        return Err(input(
            what,
            format!("expected a matrix, got shape {size:?}"),
        ));
    }
    if size[1] != dim as i64 {
        return Err(input(
            what,
            format!("has dimension {}, the adapter expects {dim}", size[1]),
        ));
    }
    if let Some(n) = rows {
        if size[0] != n {
            return Err(input(
                what,
                format!("has {} rows, its companion has {n}", size[0]),
            ));
        }
    }
    if size[0] > 0 && t.isfinite().all().int64_value(&[]) != 1 {
        return Err(input(what, "contains NaN or infinite values"));
    }
    Ok(())
}

impl Adapter {
    /// Fits an adapter of kind `kind` on `support` (pairs of old and new vectors of the same
    /// items) for `models`, on `device`.
    pub fn fit(
        kind_name: &str,
        support: &SupportSet,
        cfg: &FitConfig,
        models: &Models,
        device: Device,
    ) -> Result<Self, AdaptError> {
        let spec = kind(kind_name)?;
        cfg.validate()?;
        for (m, dim, which) in [
            (&models.old, support.old_dim(), "old"),
            (&models.new, support.new_dim(), "new"),
        ] {
            if m.dim != 0 && m.dim != dim {
                return Err(input(
                    "support set",
                    format!(
                        "its {which} vectors have dimension {dim}, the {which} model embeds in {}",
                        m.dim
                    ),
                ));
            }
        }
        if spec.companion() != Companion::Side && support.side().is_some() {
            return Err(input(
                "support set",
                format!("side information is read by the forward kind only, not by {kind_name}"),
            ));
        }
        let start = Instant::now();
        let fitted = spec.fit(support, cfg, device)?;
        let seconds = start.elapsed().as_secs_f64();
        let with_dim = |m: &ModelRef, dim: usize| ModelRef { dim, ..m.clone() };
        let (from, to) = match spec.direction() {
            Direction::NewToOld => (
                with_dim(&models.new, support.new_dim()),
                with_dim(&models.old, support.old_dim()),
            ),
            Direction::OldToNew => (
                with_dim(&models.old, support.old_dim()),
                with_dim(&models.new, support.new_dim()),
            ),
        };
        let params = fitted.params.to_device(Device::Cpu);
        let mut adapter = Self {
            card: AdapterCard {
                format: AdapterCard::FORMAT,
                id: String::new(),
                kind: spec.name().to_string(),
                direction: spec.direction(),
                from,
                to,
                support: support.info(),
                settings: fitted.settings,
                fit: fitted.report,
                support_cosine: 0.0,
                seconds,
                note: String::new(),
            },
            spec,
            params,
            dir: None,
        };
        // the fit's quality on its own support set: mean cosine of the mapped vectors with the
        // vectors they should become
        let (x, target) = match spec.direction() {
            Direction::NewToOld => (support.new_vectors(), support.old_vectors()),
            Direction::OldToNew => (support.old_vectors(), support.new_vectors()),
        };
        let companion = match spec.companion() {
            Companion::None => None,
            Companion::OldQuery => Some(support.old_vectors()),
            Companion::Side => support.side(),
        };
        let mapped = adapter.apply(x, companion)?;
        adapter.card.support_cosine = mean_cosine(&mapped, target);
        Ok(adapter)
    }

    /// The adapter's kind.
    pub fn spec(&self) -> &'static dyn AdapterSpec {
        self.spec
    }

    /// The directory it was loaded from or saved to, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The tensors (CPU, float32).
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Maps `x` `[N, from.dim]` to `[N, to.dim]`, L2-normalised; `companion` is the old
    /// model's embedding of the same queries (slerp) or side information (forward fitted with
    /// it). Inputs are normalised first.
    pub fn apply(&self, x: &Tensor, companion: Option<&Tensor>) -> Result<Tensor, AdaptError> {
        let x = x.to_device(Device::Cpu);
        check_matrix(&x, "vectors to map", self.card.from.dim, None)?;
        let n = x.size()[0];
        let companion = match (self.spec.companion(), companion) {
            (Companion::None, None) => None,
            (Companion::None, Some(_)) => {
                return Err(input(
                    "companion vectors",
                    format!("a {} adapter reads none", self.card.kind),
                ))
            }
            (Companion::OldQuery, None) => {
                return Err(input(
                    "old-model queries",
                    "a slerp adapter interpolates between the old and the new model's \
                     embedding of each query: give the old model's embeddings too",
                ))
            }
            (Companion::OldQuery, Some(c)) => {
                let c = c.to_device(Device::Cpu);
                check_matrix(&c, "old-model queries", self.card.to.dim, Some(n))?;
                Some(normalize(&c))
            }
            (Companion::Side, c) => match (self.card.support.side_dim, c) {
                (None, None) => None,
                (None, Some(_)) => {
                    return Err(input(
                        "side information",
                        "this forward adapter was fitted without side information",
                    ))
                }
                (Some(_), None) => {
                    return Err(input(
                        "side information",
                        "this forward adapter was fitted with side information: give it",
                    ))
                }
                (Some(d), Some(c)) => {
                    let c = c.to_device(Device::Cpu);
                    check_matrix(&c, "side information", d, Some(n))?;
                    Some(normalize(&c))
                }
            },
        };
        if n == 0 {
            return Ok(Tensor::zeros(
                [0, self.card.to.dim as i64],
                (Kind::Float, Device::Cpu),
            ));
        }
        let out = tch::no_grad(|| {
            self.spec.apply(
                &self.params,
                &normalize(&x),
                companion.as_ref(),
                self.card.to.dim,
            )
        })?;
        Ok(normalize(&out))
    }

    /// Refuses to map vectors of models other than the ones it was fitted for: `from_id` is
    /// the card id of the model whose vectors go in, `to_id` that of the space they go to.
    /// An adapter fitted on bare vectors (no model ids) is refused too: it cannot vouch for
    /// the pair.
    pub fn check_models(&self, from_id: &str, to_id: &str) -> Result<(), AdaptError> {
        let known = |m: &ModelRef| m.id.clone().unwrap_or_else(|| "an unnamed model".into());
        if self.card.from.id.as_deref() == Some(from_id)
            && self.card.to.id.as_deref() == Some(to_id)
        {
            return Ok(());
        }
        Err(AdaptError::OtherModels {
            adapter: self.dir.clone().unwrap_or_default(),
            expected: format!("{} → {}", known(&self.card.from), known(&self.card.to)),
            got: format!("{from_id} → {to_id}"),
        })
    }

    /// Writes `adapter.safetensors` and `adapter.json` into `dir` (created if missing), each
    /// atomically; the card's id is the tensors file's content id.
    pub fn save(&mut self, dir: &Path) -> Result<(), AdaptError> {
        let layout = AdapterDir::new(dir);
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        let named: Vec<(String, Tensor)> = self
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.contiguous()))
            .collect();
        let path = layout.weights();
        crate::files::write_atomic_with(&path, |tmp| {
            Tensor::write_safetensors(&named, tmp).map_err(|e| e.to_string())
        })
        .map_err(|e| file_err(&path, e))?;
        self.card.id = crate::model::file_id(&path).map_err(|e| file_err(&path, e))?;
        crate::files::write_json(&layout.card(), &self.card)
            .map_err(|e| file_err(&layout.card(), e))?;
        self.dir = Some(dir.to_path_buf());
        Ok(())
    }

    /// Reads an adapter from its directory (or its card or tensors file): the card, its kind,
    /// the tensors checked against the card's id and dimensions.
    pub fn load(path: &Path) -> Result<Self, AdaptError> {
        let layout = AdapterDir::of(path);
        let card_path = layout.card();
        let card: AdapterCard =
            crate::files::read_json(&card_path).map_err(|e| AdaptError::File {
                path: card_path.clone(),
                reason: format!("not an adapter card: {e}"),
            })?;
        if card.format != AdapterCard::FORMAT {
            return Err(file_err(
                &card_path,
                format!(
                    "card format {} (this bcl reads format {})",
                    card.format,
                    AdapterCard::FORMAT
                ),
            ));
        }
        let spec = kind(&card.kind).map_err(|e| file_err(&card_path, e))?;
        if spec.direction() != card.direction {
            return Err(file_err(
                &card_path,
                format!(
                    "a {} adapter maps {}, the card says {}",
                    card.kind,
                    spec.direction(),
                    card.direction
                ),
            ));
        }
        if card.from.dim == 0 || card.to.dim == 0 {
            return Err(file_err(&card_path, "a dimension of 0"));
        }
        let weights = layout.weights();
        let id = crate::model::file_id(&weights).map_err(|e| file_err(&weights, e))?;
        if id != card.id {
            return Err(file_err(
                &weights,
                format!(
                    "content id {id} is not the card's {} (the file was changed or belongs \
                     to another adapter)",
                    card.id
                ),
            ));
        }
        let read = Tensor::read_safetensors(&weights)
            .map_err(|e| file_err(&weights, format!("cannot read tensors: {e}")))?;
        let mut params = Params::default();
        for (name, t) in read {
            if t.isfinite().all().int64_value(&[]) != 1 {
                return Err(file_err(
                    &weights,
                    format!("tensor '{name}' holds NaN or infinite values"),
                ));
            }
            params.insert(&name, t);
        }
        spec.check(&params, &card)
            .map_err(|reason| file_err(&weights, reason))?;
        Ok(Self {
            card,
            spec,
            params,
            dir: Some(layout.path().to_path_buf()),
        })
    }
}

/// The shape of tensor `name` in `p`, or an error naming it.
pub(crate) fn shape_of(p: &Params, name: &str) -> Result<Vec<i64>, String> {
    p.get(name)
        .map(|t| t.size())
        .map_err(|_| format!("has no tensor '{name}'"))
}

/// Checks that tensor `name` has shape `want`.
pub(crate) fn expect_shape(p: &Params, name: &str, want: &[i64]) -> Result<(), String> {
    let got = shape_of(p, name)?;
    if got != want {
        return Err(format!(
            "tensor '{name}' has shape {got:?}, the card's dimensions need {want:?}"
        ));
    }
    Ok(())
}
