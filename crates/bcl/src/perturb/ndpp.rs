//! NDPP (METHOD.md section 4): the closed-form, neighbour-driven perturbation, and its
//! settings `[compat.ndpp]`.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::prototypes::{blocked_topk, nearest_angles};
use super::{Perturbation, RefreshInputs};
use crate::model::l2_normalize;

/// Hyper-parameters of NDPP (METHOD.md section 4).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NdppConfig {
    /// Neighbours `K` per class.
    pub k: usize,
    /// Softmax temperature `τ` of the neighbour weights.
    pub tau: f64,
    /// Mixing `α` of old (α) and new (1−α) geometry in the joint similarity.
    pub alpha: f64,
    /// Step `ε`: `‖δ_k‖ = ε·‖d_k‖`.
    pub eps: f64,
    /// Optional cap `‖δ_k‖ ≤ β·θ_k` (θ_k: angle to the nearest old neighbour), β < 1/2.
    pub beta: Option<f64>,
    /// How the neighbour weights are normalised.
    pub weights: NdppWeights,
}

/// Normalisation of NDPP's neighbour weights `a_kj`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum NdppWeights {
    /// `softmax_{j∈N_k}(S_kj/τ)` (METHOD.md): the weights sum to one whatever the distances,
    /// so an isolated prototype moves as far as a crowded one.
    Neighbours,
    /// The softmax also runs over the class itself at similarity 1:
    /// `a_kj = e^{S_kj/τ} / (e^{1/τ} + Σ_{i∈N_k} e^{S_ki/τ})`, the probability that class k is
    /// taken for j. Pushes shrink with distance: an isolated prototype barely moves.
    Confusion,
}

impl Default for NdppConfig {
    fn default() -> Self {
        Self {
            k: 3,
            tau: 0.1,
            alpha: 0.5,
            eps: 0.3,
            beta: None,
            weights: NdppWeights::Neighbours,
        }
    }
}

/// NDPP: push each old prototype along the tangent away from its most confusable neighbours.
#[derive(Debug, Clone)]
pub struct Ndpp {
    /// Its configuration.
    pub cfg: NdppConfig,
}

impl Ndpp {
    /// The closed-form Δ for old prototypes `old` and new prototypes `new` (both `[C, d]`, normalised).
    pub fn delta(&self, old: &Tensor, new: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let c = old.size()[0];
            let k = (self.cfg.k as i64).min(c - 1).max(1);
            // 1.–2. the K most similar classes under the joint similarity, self excluded
            //       (in row blocks: the C × C matrix is never held)
            let (top, idx) =
                blocked_topk(old, Some((new, 1.0 - self.cfg.alpha)), self.cfg.alpha, k);
            // 3. softmax weights over the neighbours (and, for `Confusion`, over the class itself)
            let a = match self.cfg.weights {
                NdppWeights::Neighbours => (top / self.cfg.tau).softmax(1, Kind::Float), // [C, K]
                NdppWeights::Confusion => {
                    let own = Tensor::ones([c, 1], (Kind::Float, old.device()));
                    let all = Tensor::cat(&[own, top], 1) / self.cfg.tau;
                    all.softmax(1, Kind::Float).narrow(1, 1, k)
                }
            };
            // 4. unit tangent at p°_k pointing away from p°_j
            let pk = old.unsqueeze(1); // [C, 1, d]
            let pj = old.index_select(0, &idx.view([-1])).view([c, k, -1]); // [C, K, d]
            let diff = &pk - &pj;
            let along = (&diff * &pk).sum_dim_intlist([2i64].as_slice(), true, Kind::Float);
            let tangent = l2_normalize(&(diff - along * &pk));
            let d =
                (a.unsqueeze(2) * tangent).sum_dim_intlist([1i64].as_slice(), false, Kind::Float); // [C, d]
                                                                                                   // 5. magnitude ε‖d_k‖ along d_k, optionally capped at β θ_k
            let mut delta = d * self.cfg.eps;
            if let Some(beta) = self.cfg.beta {
                let cap = nearest_angles(old) * beta;
                let norm = delta
                    .norm_scalaropt_dim(2, [1i64].as_slice(), true)
                    .clamp_min(1e-12);
                let factor = (cap.unsqueeze(1) / &norm).clamp_max(1.0);
                delta *= factor;
            }
            delta
        })
    }
}

impl Perturbation for Ndpp {
    fn refresh(&mut self, inputs: &RefreshInputs) -> (Tensor, Option<(f64, f64)>) {
        (self.delta(inputs.old, inputs.new), None)
    }
}
