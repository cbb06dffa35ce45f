//! Losses: the `CompatLoss` trait every compatibility method implements, and what it is given.
//! The training loop only sees the trait. Around it, one file per concept: the classification
//! head (`head`), the `[compat]` configuration (`config`), the method registry (`method`: the
//! only place that knows a method's name and properties), the perturbation layer shared by the
//! prototype-perturbing methods (`perturbed`), the old-class radii of the boundary methods
//! (`radii`), and one file per method under `methods/` (its registry entry, its settings and
//! its loss).

use tch::nn;
use tch::Tensor;

pub mod config;
pub mod head;
pub mod method;
pub mod methods;
pub mod perturbed;
pub mod radii;

pub use config::{CompatConfig, NewPrototypes, OldPrototypes, RefreshConfig};
pub use head::{margin_logits, ClassifierHead, HeadConfig, HeadKind};
pub use method::{
    check, defaults_table, register, registry, section, BuildContext, DataParallel, Knob, Method,
    MethodSpec, Needs, RegistryError,
};
pub use methods::advbct::{dann_coefficient, gradient_reversal, Advbct, AdvbctConfig};
pub use methods::bct::Bct;
pub use methods::independent::Independent;
pub use methods::l2::L2;
pub use methods::lce::{Lce, LceAlignment, LceConfig};
pub use methods::ract::{Ract, RactConfig};
pub use methods::unibct::{UnibctConfig, UnibctRefine};
pub use perturbed::{AlignedLoss, Influence, Perturbed};
pub use radii::{old_class_radii, old_class_radii_quantile};

use crate::perturb::RefreshStats;

/// A loss called without an input its method needs: a broken contract between the caller (the
/// training loop, the Python binding) and the method, reported instead of a panic.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LossError {
    /// An input of [`CompatInputs`] the method reads was not given.
    #[error("{method} needs {what}; the caller did not provide it")]
    Missing {
        /// The method.
        method: &'static str,
        /// What was missing.
        what: &'static str,
    },
    /// A perturbation refresh gave prototype rows with NaN or infinite values.
    #[error(
        "the perturbation refresh gave {rows} of {classes} prototype rows with NaN or infinite \
         values (a diverging optimiser: lower its learning rate or step bound); the run stops \
         rather than train against them"
    )]
    NonFinite {
        /// Rows that are not finite.
        rows: usize,
        /// Rows in all.
        classes: usize,
    },
    /// The method's own variables were not created ([`CompatLoss::init_params`] not called).
    #[error(
        "{0}: its trainable variables were not created (init_params must run before the loss)"
    )]
    Uninitialised(&'static str),
}

/// What a compatibility loss may use from the current batch.
pub struct CompatInputs<'a> {
    /// New embeddings `f` (L2-normalised, with gradient), `[B, d]`.
    pub new: &'a Tensor,
    /// Labels `[B]` (the new training set's class indices).
    pub labels: &'a Tensor,
    /// Old embeddings `g` of the same images from the frozen old model, when the method asks.
    pub old: Option<&'a Tensor>,
    /// The new classifier's weight rows `W_new` `[C, d]` (with gradient), when available.
    pub classifier: Option<&'a Tensor>,
    /// Training progress in [0, 1] (step / total steps), for scheduled terms.
    pub progress: f64,
}

impl<'a> CompatInputs<'a> {
    /// The old embeddings, or the error naming the method that reads them.
    pub fn old_embeddings(&self, method: &'static str) -> Result<&'a Tensor, LossError> {
        self.old.ok_or(LossError::Missing {
            method,
            what: "the old model's embeddings of the batch",
        })
    }

    /// The new classifier's weight rows, or the error naming the method that reads them.
    pub fn classifier_weights(&self, method: &'static str) -> Result<&'a Tensor, LossError> {
        self.classifier.ok_or(LossError::Missing {
            method,
            what: "the new classifier's weight rows",
        })
    }

    /// Inputs with only the new embeddings and labels (no old embeddings, no classifier).
    pub fn new(new: &'a Tensor, labels: &'a Tensor) -> Self {
        Self {
            new,
            labels,
            old: None,
            classifier: None,
            progress: 0.0,
        }
    }
}

/// A backward-compatibility loss `L_comp`; the training loop adds `λ · L_comp` to `L_cls`.
pub trait CompatLoss {
    /// Whether [`CompatInputs::old`] must be filled (costs a forward pass of the old model).
    fn needs_old_embeddings(&self) -> bool {
        false
    }
    /// The loss weight λ.
    fn weight(&self) -> f64;
    /// Creates the method's own trainable variables (a discriminator, learned radii) under
    /// `p`, in the model's variable store: the optimiser updates them and checkpoints keep
    /// them; they are left out of the final model file. Called once before training.
    fn init_params(&mut self, _p: &nn::Path) {}
    /// The unweighted scalar loss on a batch; `None` for a method without one; an error where
    /// an input the method reads is missing.
    fn loss(&self, inputs: &CompatInputs) -> Result<Option<Tensor>, LossError>;
    /// Whether the method refreshes state from the new model, and on what schedule.
    fn refresh_config(&self) -> Option<&RefreshConfig> {
        None
    }
    /// Whether a refresh is due before batch `batch` (0-based within epoch `epoch`, global
    /// step `step`): the number of new features per class the refresh wants in its bank, or
    /// `None`. The training loop asks this before every batch and knows no schedule itself.
    fn refresh_due(&self, epoch: usize, batch: usize, step: usize) -> Option<usize> {
        let rc = self.refresh_config()?;
        rc.due(epoch, batch, step).then_some(rc.bank_per_class)
    }
    /// Refreshes state from a bank of current new features (normalised, detached).
    fn refresh(
        &mut self,
        _bank: &Tensor,
        _labels: &Tensor,
        _epoch: usize,
        _step: usize,
    ) -> Result<Option<RefreshStats>, LossError> {
        Ok(None)
    }
    /// Sees each batch's detached new features (for moving-average prototypes).
    fn observe(&mut self, _new: &Tensor, _labels: &Tensor) {}
    /// Whether [`CompatLoss::observe`] uses what it sees (data-parallel training gathers the
    /// whole batch's features for it only then).
    fn observes(&self) -> bool {
        false
    }
    /// State to checkpoint so that a resumed run continues exactly.
    fn state(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    /// Restores [`CompatLoss::state`].
    fn load_state(&mut self, _state: &[(String, Tensor)]) {}
}
