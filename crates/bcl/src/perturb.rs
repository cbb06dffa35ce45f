//! Prototype perturbations: the strategies that refresh the perturbation Δ of the old
//! prototypes between training steps (METHOD.md sections 4 and 5) and what they share. One file
//! per concept: prototype tables and their blocked searches (`prototypes`), NDPP (`ndpp`: closed
//! form from old and new geometry), ODPP (`odpp`: projected Adam on J(Δ)) and its class-arranged
//! banks (`banks`). The pseudo-old prototypes are `p̃_k = normalize(p°_k + δ_k)`; `bct` is the
//! case Δ = 0.

mod banks;
mod ndpp;
mod odpp;
mod prototypes;

pub use banks::ClassBanks;
pub use ndpp::{Ndpp, NdppConfig, NdppWeights};
pub use odpp::{prototype_ce, Odpp, OdppConfig};
pub use prototypes::{class_prototypes, nearest_angles, pseudo_old, pseudo_old_table};

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use prototypes::{blocked_argmax, nearest_similarity};

/// Errors of prototype computation.
#[derive(Debug, thiserror::Error)]
pub enum PrototypeError {
    /// A class has no sample to average.
    #[error("class {0} has no training sample: cannot compute its prototype")]
    EmptyClass(i64),
}

/// The logit scale of the influence loss (`[compat] scale`) by default, and of ODPP's `CE_s` when
/// neither is set.
pub const DEFAULT_SCALE: f64 = 16.0;

/// Diagnostics of one refresh of Δ (written to the run's history).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RefreshStats {
    /// Epoch (0-based) at whose start, or within which, the refresh ran.
    pub epoch: usize,
    /// Global step at the refresh.
    pub step: usize,
    /// Mean ‖δ_k‖.
    pub mean_delta: f64,
    /// Max ‖δ_k‖.
    pub max_delta: f64,
    /// Mean cosine similarity of each old prototype to its nearest other old prototype.
    pub nn_sim_before: f64,
    /// The same for the pseudo-old prototypes.
    pub nn_sim_after: f64,
    /// Share of classes whose pseudo-old prototype is still nearest to its own old prototype.
    pub own_nearest_share: f64,
    /// J(Δ) before the refresh's optimisation (ODPP only).
    pub j_before: Option<f64>,
    /// J(Δ) after it (ODPP only).
    pub j_after: Option<f64>,
    /// Wall time of the refresh, in seconds (feature pass excluded).
    pub seconds: f64,
}

/// The geometry of a perturbation Δ of old prototypes: how far it moves them and how it changes
/// their neighbourhoods (the geometry fields of [`RefreshStats`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeometryStats {
    /// Mean ‖δ_k‖.
    pub mean_delta: f64,
    /// Max ‖δ_k‖.
    pub max_delta: f64,
    /// Mean cosine similarity of each old prototype to its nearest other old prototype.
    pub nn_sim_before: f64,
    /// The same for the pseudo-old prototypes.
    pub nn_sim_after: f64,
    /// Share of classes whose pseudo-old prototype is still nearest to its own old prototype.
    pub own_nearest_share: f64,
}

impl GeometryStats {
    /// The geometry of `delta` on the old prototypes `old` (both `[C, d]`).
    pub fn of(old: &Tensor, delta: &Tensor) -> Self {
        tch::no_grad(|| {
            let norms = delta.norm_scalaropt_dim(2, [1i64].as_slice(), false);
            let pseudo = pseudo_old(old, delta);
            let before = nearest_similarity(old).mean(Kind::Float);
            let after = nearest_similarity(&pseudo).mean(Kind::Float);
            let c = old.size()[0];
            let own = blocked_argmax(&pseudo, old);
            let share = own
                .eq_tensor(&Tensor::arange(c, (Kind::Int64, old.device())))
                .to_kind(Kind::Float)
                .mean(Kind::Float);
            Self {
                mean_delta: norms.mean(Kind::Float).double_value(&[]),
                max_delta: norms.max().double_value(&[]),
                nn_sim_before: before.double_value(&[]),
                nn_sim_after: after.double_value(&[]),
                own_nearest_share: share.double_value(&[]),
            }
        })
    }
}

impl RefreshStats {
    /// The record of a refresh at `epoch`/`step` with Δ's geometry, J before and after (where
    /// the strategy optimises one) and its wall time.
    pub fn from_geometry(
        epoch: usize,
        step: usize,
        g: GeometryStats,
        j: Option<(f64, f64)>,
        seconds: f64,
    ) -> Self {
        Self {
            epoch,
            step,
            mean_delta: g.mean_delta,
            max_delta: g.max_delta,
            nn_sim_before: g.nn_sim_before,
            nn_sim_after: g.nn_sim_after,
            own_nearest_share: g.own_nearest_share,
            j_before: j.map(|j| j.0),
            j_after: j.map(|j| j.1),
            seconds,
        }
    }
}

/// What a perturbation refresh may use.
pub struct RefreshInputs<'a> {
    /// Old prototypes `P°` `[C, d]`.
    pub old: &'a Tensor,
    /// Current new prototypes `Pⁿ` `[C, d]`.
    pub new: &'a Tensor,
    /// A bank of current new features `Fⁿ` `[M, d]` (normalised, detached).
    pub new_bank: &'a Tensor,
    /// Labels of `new_bank`.
    pub new_bank_labels: &'a Tensor,
}

/// A strategy that computes Δ from the old prototypes and the new model's current state.
pub trait Perturbation {
    /// Computes the new Δ `[C, d]`; may return J(Δ) before and after (for optimised methods).
    fn refresh(&mut self, inputs: &RefreshInputs) -> (Tensor, Option<(f64, f64)>);
    /// Internal state to checkpoint (beyond Δ itself).
    fn state(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    /// Restores [`Perturbation::state`] (and Δ, passed under the name "delta").
    fn load_state(&mut self, _state: &[(String, Tensor)]) {}
}
