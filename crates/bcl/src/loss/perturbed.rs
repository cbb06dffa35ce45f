//! The perturbation layer: any loss that aligns the new model with a table of old prototypes
//! (an [`AlignedLoss`]: BCT's influence loss, LCE's classifier alignment, ...) trained against
//! pseudo-old prototypes `normalize(P° + Δ)`, with Δ refreshed between steps by a
//! [`Perturbation`] strategy (NDPP, ODPP, UniBCT's refinement). With Δ = 0 it is exactly the
//! base loss; a refresh that gives a non-finite Δ is refused.

use tch::{Kind, Tensor};

use super::config::{NewPrototypes, RefreshConfig};
use super::methods::bct::Bct;
use super::{CompatInputs, CompatLoss, LossError};
use crate::model::l2_normalize;
use crate::perturb::{
    class_prototypes, pseudo_old_table, GeometryStats, Perturbation, RefreshInputs, RefreshStats,
};

/// A loss that aligns the new model with a table of old prototypes `[C, d]`: the part of a
/// method the perturbation layer moves (BCT's influence loss; LCE's alignment of the new
/// classifier, whose boundary stays around the true old centres).
pub trait AlignedLoss: Send {
    /// The loss with `table` in place of the old prototypes it aligns with.
    fn aligned_loss(&self, inputs: &CompatInputs, table: &Tensor) -> Result<Tensor, LossError>;
}

/// BCT's influence loss `CE(s·⟨f, p_k⟩_k, y)` against the table.
pub struct Influence {
    /// Scale `s`.
    pub scale: f64,
}

impl AlignedLoss for Influence {
    fn aligned_loss(&self, inputs: &CompatInputs, table: &Tensor) -> Result<Tensor, LossError> {
        Ok(Bct::influence(inputs.new, table, inputs.labels, self.scale))
    }
}

/// `ndpp`, `odpp`, `unibct`, `lce-ndpp`, `lce-odpp`: a base [`AlignedLoss`] against pseudo-old
/// prototypes `normalize(P° + Δ)`, with Δ refreshed by a [`Perturbation`]. With Δ = 0 it is
/// exactly the base loss (BCT's for the first three, LCE's for the last two).
pub struct Perturbed {
    /// λ.
    pub lambda: f64,
    /// The loss whose prototype table is perturbed.
    base: Box<dyn AlignedLoss>,
    /// Old prototypes `P°` (constant).
    pub old: Tensor,
    /// The current perturbation Δ.
    pub delta: Tensor,
    pseudo: Tensor,
    ema: Option<Tensor>,
    refresh: RefreshConfig,
    strategy: Box<dyn Perturbation>,
}

impl std::fmt::Debug for Perturbed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Perturbed")
            .field("refresh", &self.refresh)
            .finish_non_exhaustive()
    }
}

impl Perturbed {
    /// BCT's influence loss with scale `s` against perturbed prototypes, from Δ = 0.
    pub fn bct(
        lambda: f64,
        scale: f64,
        old: Tensor,
        refresh: RefreshConfig,
        strategy: Box<dyn Perturbation>,
    ) -> Self {
        Self::over(
            Box::new(Influence { scale }),
            lambda,
            old,
            refresh,
            strategy,
        )
    }

    /// `base` against perturbed prototypes, from Δ = 0.
    pub fn over(
        base: Box<dyn AlignedLoss>,
        lambda: f64,
        old: Tensor,
        refresh: RefreshConfig,
        strategy: Box<dyn Perturbation>,
    ) -> Self {
        let delta = old.zeros_like();
        Self {
            lambda,
            base,
            pseudo: old.shallow_clone(),
            old,
            delta,
            ema: None,
            refresh,
            strategy,
        }
    }

    /// Sets Δ (and the pseudo-old prototypes it defines). A Δ with a NaN or infinite value
    /// is refused (and the current one kept): a row that is not finite would otherwise read as
    /// unmoved and train silently against the unperturbed prototype.
    pub fn set_delta(&mut self, delta: Tensor) -> Result<(), LossError> {
        let finite = tch::no_grad(|| delta.isfinite().all_dim(1, false));
        let bad = finite.logical_not().sum(Kind::Int64).int64_value(&[]);
        if bad > 0 {
            return Err(LossError::NonFinite {
                rows: bad as usize,
                classes: self.old.size()[0] as usize,
            });
        }
        self.pseudo = pseudo_old_table(&self.old, &delta);
        self.delta = delta.detach();
        Ok(())
    }

    /// The current pseudo-old prototypes.
    pub fn pseudo_old(&self) -> &Tensor {
        &self.pseudo
    }
}

impl CompatLoss for Perturbed {
    fn weight(&self) -> f64 {
        self.lambda
    }
    fn loss(&self, inputs: &CompatInputs) -> Result<Option<Tensor>, LossError> {
        self.base.aligned_loss(inputs, &self.pseudo).map(Some)
    }
    fn refresh_config(&self) -> Option<&RefreshConfig> {
        Some(&self.refresh)
    }
    fn observes(&self) -> bool {
        self.refresh.new_prototypes == NewPrototypes::Ema
    }

    fn observe(&mut self, new: &Tensor, labels: &Tensor) {
        if self.refresh.new_prototypes != NewPrototypes::Ema {
            return;
        }
        tch::no_grad(|| {
            let c = self.old.size()[0];
            let d = new.size()[1];
            let sums = Tensor::zeros([c, d], (Kind::Float, new.device())).index_add(0, labels, new);
            let counts = Tensor::zeros([c], (Kind::Float, new.device())).index_add(
                0,
                labels,
                &Tensor::ones([labels.size()[0]], (Kind::Float, new.device())),
            );
            let present = counts.gt(0.0).unsqueeze(1);
            let batch_mean = l2_normalize(&sums);
            let m = self.refresh.ema_momentum;
            let next = match &self.ema {
                None => batch_mean.where_self(&present, &self.old),
                Some(prev) => (prev * m + &batch_mean * (1.0 - m)).where_self(&present, prev),
            };
            self.ema = Some(l2_normalize(&next));
        });
    }
    fn refresh(
        &mut self,
        bank: &Tensor,
        labels: &Tensor,
        epoch: usize,
        step: usize,
    ) -> Result<Option<RefreshStats>, LossError> {
        let t0 = std::time::Instant::now();
        let c = self.old.size()[0];
        let new_protos = match (&self.refresh.new_prototypes, &self.ema) {
            (NewPrototypes::Ema, Some(e)) => e.shallow_clone(),
            _ => match class_prototypes(bank, labels, c) {
                Ok(p) => p,
                // a class missing from the bank keeps its old prototype as the new one
                Err(_) => {
                    let d = bank.size()[1];
                    let sums = Tensor::zeros([c, d], (Kind::Float, bank.device()))
                        .index_add(0, labels, bank);
                    let empty = sums
                        .abs()
                        .sum_dim_intlist([1i64].as_slice(), true, Kind::Float)
                        .eq(0.0);
                    l2_normalize(&sums.where_self(&empty.logical_not(), &self.old))
                }
            },
        };
        let (delta, j) = self.strategy.refresh(&RefreshInputs {
            old: &self.old,
            new: &new_protos,
            new_bank: bank,
            new_bank_labels: labels,
        });
        self.set_delta(delta)?;
        let geometry = GeometryStats::of(&self.old, &self.delta);
        Ok(Some(RefreshStats::from_geometry(
            epoch,
            step,
            geometry,
            j,
            t0.elapsed().as_secs_f64(),
        )))
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        // The old prototypes are constant; they are saved so that reports can plot Δ.
        let mut v = vec![
            ("delta".to_string(), self.delta.shallow_clone()),
            ("old_prototypes".to_string(), self.old.shallow_clone()),
        ];
        if let Some(e) = &self.ema {
            v.push(("ema".to_string(), e.shallow_clone()));
        }
        v.extend(self.strategy.state());
        v
    }
    fn load_state(&mut self, state: &[(String, Tensor)]) {
        let dev = self.old.device();
        for (n, t) in state {
            match n.as_str() {
                "delta" => {
                    // a checkpoint is written by the run itself; a non-finite Δ there would
                    // have been refused before it was saved
                    if let Err(e) = self.set_delta(t.to_device(dev)) {
                        tracing::error!("checkpointed perturbation not restored: {e}");
                    }
                }
                "ema" => self.ema = Some(t.to_device(dev)),
                _ => {}
            }
        }
        self.strategy.load_state(state);
    }
}
