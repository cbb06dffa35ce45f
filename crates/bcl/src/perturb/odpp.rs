//! ODPP (METHOD.md section 5): Δ optimised by projected Adam on J(Δ) over the old and new
//! feature banks (in full, or restricted to candidate classes), and its settings
//! `[compat.odpp]`.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::banks::ClassBanks;
use super::prototypes::{blocked_topk, pseudo_old};
use super::{Perturbation, RefreshInputs, DEFAULT_SCALE};

/// Classes per chunk of the restricted ODPP objective (a chunk gathers
/// `CLASS_CHUNK × (K + 1) × d` prototype values: 134 MB at K = 63, d = 512).
const CLASS_CHUNK: i64 = 1024;

/// Hyper-parameters of ODPP (METHOD.md section 5).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OdppConfig {
    /// Adam steps `T` per refresh.
    pub steps: usize,
    /// Adam learning rate `η`.
    pub lr: f64,
    /// Weight `μ` of the compatibility term `CE_s(F°, P̃)`.
    pub mu: f64,
    /// Weight `γ` of `Σ‖δ_k‖²`.
    pub gamma: f64,
    /// Bound `ε` on each `‖δ_k‖` (projection).
    pub eps: f64,
    /// Scale `s` of the cosine logits in `CE_s`; unset, the influence loss's (`[compat] scale`),
    /// so that Δ is optimised for the logits the new model is trained with.
    pub scale: Option<f64>,
    /// Old features per class in the bank `F°` (computed once).
    pub old_bank_per_class: usize,
    /// Classes in each bank sample's softmax: 0 for every class (the objective as written);
    /// K > 0 for the sample's own class and the K prototypes nearest to it (found once per
    /// refresh by a blocked search over the pseudo-old prototypes), which makes a step linear
    /// in C instead of quadratic (GLDv2's 81,313 landmarks).
    #[serde(skip_serializing_if = "is_zero_usize")]
    pub candidates: usize,
}

fn is_zero_usize(n: &usize) -> bool {
    *n == 0
}

impl Default for OdppConfig {
    fn default() -> Self {
        Self {
            steps: 50,
            // Adam moves every coordinate by about η per step, so a prototype by about η·√d:
            // 0.011 at d = 128. With η = 0.01 (0.11 per step against ε = 0.3) J rose on 8 of
            // 20 steps in `bcl bench-odpp` and rose overall at C = 10,000.
            lr: 0.001,
            mu: 1.0,
            gamma: 0.1,
            eps: 0.3,
            scale: None,
            old_bank_per_class: 128,
            candidates: 0,
        }
    }
}

/// ODPP: Δ as a free variable, optimised by projected Adam on J(Δ), warm-started.
pub struct Odpp {
    /// Its configuration.
    pub cfg: OdppConfig,
    old_bank: Tensor,
    old_bank_labels: Tensor,
    delta: Tensor,
    adam_m: Tensor,
    adam_v: Tensor,
    adam_t: i64,
}

impl std::fmt::Debug for Odpp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Odpp").field("cfg", &self.cfg).finish()
    }
}

/// Mean cross-entropy of `s·⟨f_i, p_k⟩` against `y_i`.
pub fn prototype_ce(features: &Tensor, labels: &Tensor, prototypes: &Tensor, scale: f64) -> Tensor {
    (features.matmul(&prototypes.tr()) * scale).cross_entropy_loss::<Tensor>(
        labels,
        None,
        tch::Reduction::Mean,
        -100,
        0.0,
    )
}

impl Odpp {
    /// An ODPP state for `classes` prototypes of dimension `dim`, with the old-feature bank `F°`.
    pub fn new(
        cfg: OdppConfig,
        old_bank: Tensor,
        old_bank_labels: Tensor,
        classes: i64,
        dim: i64,
    ) -> Self {
        let dev = old_bank.device();
        let z = || Tensor::zeros([classes, dim], (Kind::Float, dev));
        Self {
            cfg,
            old_bank,
            old_bank_labels,
            delta: z(),
            adam_m: z(),
            adam_v: z(),
            adam_t: 0,
        }
    }

    /// J(Δ) for the given banks (the softmax over every class).
    pub fn objective(
        &self,
        old: &Tensor,
        delta: &Tensor,
        new_bank: &Tensor,
        new_labels: &Tensor,
    ) -> Tensor {
        let p = pseudo_old(old, delta);
        let s = self.cfg.scale.unwrap_or(DEFAULT_SCALE);
        prototype_ce(new_bank, new_labels, &p, s)
            + prototype_ce(&self.old_bank, &self.old_bank_labels, &p, s) * self.cfg.mu
            + delta.square().sum(Kind::Float) * self.cfg.gamma
    }

    /// J restricted to candidate classes (`candidates[k]`: class k's own index first, then its
    /// K nearest prototypes): each bank sample's softmax runs over its class's row. With `grad`,
    /// Δ's gradient is accumulated into `delta.grad()` (Δ must require it). The banks' terms
    /// and their gradient with respect to the prototypes are computed by hand over chunks of
    /// classes (`banks` holds each class's samples, so a chunk gathers each candidate row once
    /// per class, not once per sample): softmax minus the one-hot target, outer products
    /// scattered back by `index_add`; memory is bounded by a chunk. Autograd then carries that
    /// gradient through the normalisation to Δ.
    pub fn restricted_objective(
        &self,
        old: &Tensor,
        delta: &Tensor,
        banks: &ClassBanks,
        candidates: &Tensor,
        grad: bool,
    ) -> f64 {
        let s = self.cfg.scale.unwrap_or(DEFAULT_SCALE);
        let p = pseudo_old(old, delta);
        let (j, grad_p) = tch::no_grad(|| {
            let pd = p.detach();
            let mut grad_p = pd.zeros_like();
            let mut j = 0.0;
            let c = candidates.size()[0];
            let mut start = 0;
            while start < c {
                let m = CLASS_CHUNK.min(c - start);
                let cand = candidates.narrow(0, start, m); // [m, K+1], own class first
                let k1 = cand.size()[1];
                let idx = cand.flatten(0, -1);
                let g = pd.index_select(0, &idx).view([m, k1, -1]); // [m, K+1, d]
                let f = banks.feats.narrow(0, start, m); // [m, b, d]
                let w = banks.weights.narrow(0, start, m); // [m, b]
                let logits = f.bmm(&g.transpose(1, 2)) * s; // [m, b, K+1]
                let lse = logits.logsumexp([2i64].as_slice(), false); // [m, b]
                let ce = &lse - logits.select(2, 0);
                j += (&ce * &w).sum(Kind::Double).double_value(&[]);
                if grad {
                    let dl = (logits - lse.unsqueeze(2)).exp(); // softmax
                    let _ = dl.select(2, 0).g_sub_scalar_(1.0);
                    let dl = dl * (w.unsqueeze(2) * s);
                    let gg = dl.transpose(1, 2).bmm(&f); // [m, K+1, d]
                    let _ = grad_p.index_add_(0, &idx, &gg.view([m * k1, -1]));
                }
                start += m;
            }
            (j, grad_p)
        });
        let reg = delta.square().sum(Kind::Float) * self.cfg.gamma;
        let j = j + reg.double_value(&[]);
        if grad {
            ((&p * grad_p).sum(Kind::Float) + reg).backward();
        }
        j
    }

    /// Each class's candidate row for [`Odpp::restricted_objective`]: its own index, then its
    /// `k` nearest other prototypes of `p` (blocked exact search; `[C, k + 1]`).
    pub fn candidate_table(p: &Tensor, k: usize) -> Tensor {
        tch::no_grad(|| {
            let c = p.size()[0];
            let own = Tensor::arange(c, (Kind::Int64, p.device())).unsqueeze(1);
            let k = (k as i64).min(c - 1);
            if k < 1 {
                return own;
            }
            Tensor::cat(&[own, blocked_topk(p, None, 1.0, k).1], 1)
        })
    }

    /// Projects each row of Δ onto the ball of radius ε.
    fn project(&self, delta: &Tensor) -> Tensor {
        let norm = delta
            .norm_scalaropt_dim(2, [1i64].as_slice(), true)
            .clamp_min(1e-12);
        delta * (Tensor::from(self.cfg.eps).to_device(delta.device()) / norm).clamp_max(1.0)
    }

    /// The current Δ.
    pub fn current(&self) -> &Tensor {
        &self.delta
    }

    /// Runs the `T` projected Adam steps; returns the J trace (before each step, then after
    /// the last): the full objective, or with `candidates > 0` the restricted one.
    pub fn optimise(&mut self, old: &Tensor, new_bank: &Tensor, new_labels: &Tensor) -> Vec<f64> {
        let candidates = (self.cfg.candidates > 0).then(|| {
            Self::candidate_table(&pseudo_old(&old.detach(), &self.delta), self.cfg.candidates)
        });
        self.optimise_over(old, new_bank, new_labels, candidates.as_ref())
    }

    /// [`Odpp::optimise`] over a given candidate table ([`Odpp::candidate_table`]; `None`: the
    /// full objective).
    pub fn optimise_over(
        &mut self,
        old: &Tensor,
        new_bank: &Tensor,
        new_labels: &Tensor,
        candidates: Option<&Tensor>,
    ) -> Vec<f64> {
        let old = old.detach();
        let new_bank = new_bank.detach();
        let banks = candidates.map(|c| {
            ClassBanks::new(
                [
                    (&new_bank, new_labels, 1.0),
                    (&self.old_bank, &self.old_bank_labels, self.cfg.mu),
                ],
                c.size()[0],
            )
        });
        // J at `d` (with `grad`, its gradient accumulated into `d`)
        let j_at = |this: &Self, d: &Tensor, grad: bool| match (candidates, &banks) {
            (Some(c), Some(b)) => this.restricted_objective(&old, d, b, c, grad),
            _ => {
                let j = this.objective(&old, d, &new_bank, new_labels);
                if grad {
                    j.backward();
                }
                j.double_value(&[])
            }
        };
        let mut trace = Vec::with_capacity(self.cfg.steps + 1);
        for _ in 0..self.cfg.steps {
            let d = self.delta.detach().set_requires_grad(true);
            trace.push(j_at(self, &d, true));
            self.adam_step(&d);
        }
        trace.push(tch::no_grad(|| j_at(self, &self.delta, false)));
        trace
    }

    /// One projected Adam step on Δ from `d`'s gradient.
    fn adam_step(&mut self, d: &Tensor) {
        // Written by hand (a few lines) rather than with tch's Adam so that the state stays
        // with Δ across refreshes (warm start) without a variable store.
        let (b1, b2, eps_adam) = (0.9f64, 0.999f64, 1e-8f64);
        let g = d.grad();
        tch::no_grad(|| {
            self.adam_t += 1;
            self.adam_m = &self.adam_m * b1 + &g * (1.0 - b1);
            self.adam_v = &self.adam_v * b2 + g.square() * (1.0 - b2);
            let mhat = &self.adam_m / (1.0 - b1.powi(self.adam_t as i32));
            let vhat = &self.adam_v / (1.0 - b2.powi(self.adam_t as i32));
            let step = mhat / (vhat.sqrt() + eps_adam) * self.cfg.lr;
            self.delta = self.project(&(d.detach() - step));
        });
    }
}

impl Perturbation for Odpp {
    fn refresh(&mut self, inputs: &RefreshInputs) -> (Tensor, Option<(f64, f64)>) {
        let trace = self.optimise(inputs.old, inputs.new_bank, inputs.new_bank_labels);
        let before = trace.first().copied().unwrap_or(f64::NAN);
        let after = trace.last().copied().unwrap_or(f64::NAN);
        (self.delta.shallow_clone(), Some((before, after)))
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        vec![
            ("odpp_adam_m".into(), self.adam_m.shallow_clone()),
            ("odpp_adam_v".into(), self.adam_v.shallow_clone()),
            ("odpp_adam_t".into(), Tensor::from_slice(&[self.adam_t])),
        ]
    }
    fn load_state(&mut self, state: &[(String, Tensor)]) {
        let dev = self.delta.device();
        for (n, t) in state {
            match n.as_str() {
                "delta" => self.delta = t.to_device(dev),
                "odpp_adam_m" => self.adam_m = t.to_device(dev),
                "odpp_adam_v" => self.adam_v = t.to_device(dev),
                "odpp_adam_t" => self.adam_t = t.int64_value(&[0]),
                _ => {}
            }
        }
    }
}
