//! Prototype tables and perturbations: class prototypes `p_k = normalize(mean{f_i : y_i = k})`,
//! and the strategies that refresh the perturbation Δ of the old prototypes between training
//! steps (METHOD.md sections 4 and 5): NDPP (closed form from old and new geometry) and ODPP
//! (projected Adam on J(Δ)). The pseudo-old prototypes are `p̃_k = normalize(p°_k + δ_k)`;
//! `bct` is the case Δ = 0.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::model::l2_normalize;

/// Errors of prototype computation.
#[derive(Debug, thiserror::Error)]
pub enum PrototypeError {
    /// A class has no sample to average.
    #[error("class {0} has no training sample: cannot compute its prototype")]
    EmptyClass(i64),
}

/// Normalised class means `[classes, d]` of `features` `[N, d]` with labels `[N]` in `0..classes`.
pub fn class_prototypes(
    features: &Tensor,
    labels: &Tensor,
    classes: i64,
) -> Result<Tensor, PrototypeError> {
    let (_, d) = features.size2().expect("features must be [N, d]");
    let sums = Tensor::zeros([classes, d], (Kind::Float, features.device())).index_add(
        0,
        labels,
        &features.to_kind(Kind::Float),
    );
    let counts = Tensor::zeros([classes], (Kind::Float, features.device())).index_add(
        0,
        labels,
        &Tensor::ones([labels.size()[0]], (Kind::Float, features.device())),
    );
    let counts_v: Vec<f32> = Vec::try_from(&counts.to_device(Device::Cpu)).expect("counts to vec");
    if let Some(k) = counts_v.iter().position(|&c| c == 0.0) {
        return Err(PrototypeError::EmptyClass(k as i64));
    }
    Ok(l2_normalize(&sums))
}

/// Pseudo-old prototypes `normalize(P° + Δ)` (differentiable in Δ: ODPP optimises through it).
pub fn pseudo_old(old: &Tensor, delta: &Tensor) -> Tensor {
    l2_normalize(&(old + delta))
}

/// The pseudo-old prototype table a loss trains against: [`pseudo_old`], except that a row whose
/// δ is zero keeps its old prototype bit for bit (renormalising an already unit row moves it by
/// rounding, and training amplifies that: 1e-7 grew to 5e-3 in BatchNorm statistics within 20
/// steps), so that Δ = 0 trains exactly as BCT. Constant: no gradient flows through it.
pub fn pseudo_old_table(old: &Tensor, delta: &Tensor) -> Tensor {
    tch::no_grad(|| {
        let moved = delta.abs().amax([1i64].as_slice(), true).gt(0.0);
        pseudo_old(old, delta).where_self(&moved, old)
    })
}

/// Rows of prototypes per block in the C × C similarity computations: memory stays at
/// `BLOCK × C` (1.3 GB of f32 at GLDv2's 81,313 landmarks instead of 26 GB for the full matrix).
const BLOCK: i64 = 4096;

/// The top-`k` of each row `i` of the mixed similarity `α·⟨a_i, a_j⟩ + (1−α)·⟨b_i, b_j⟩` over
/// `j ≠ i`, computed in row blocks. `b = None` means α = 1. Returns values and indices `[C, k]`.
fn blocked_topk(a: &Tensor, b: Option<(&Tensor, f64)>, alpha: f64, k: i64) -> (Tensor, Tensor) {
    let c = a.size()[0];
    let (mut vals, mut idxs) = (Vec::new(), Vec::new());
    let mut start = 0;
    while start < c {
        let n = BLOCK.min(c - start);
        let mut s = a.narrow(0, start, n).matmul(&a.tr()) * alpha;
        if let Some((b, w)) = b {
            s += b.narrow(0, start, n).matmul(&b.tr()) * w;
        }
        // −∞ on the diagonal (after mixing: −∞·0 would be NaN)
        let rows = Tensor::arange(n, (Kind::Int64, a.device()));
        let cols = &rows + start;
        let s = s.index_put(
            &[Some(rows), Some(cols)],
            &Tensor::from(f64::NEG_INFINITY)
                .to_kind(s.kind())
                .to_device(a.device()),
            false,
        );
        let (v, i) = s.topk(k, 1, true, true);
        vals.push(v);
        idxs.push(i);
        start += n;
    }
    (Tensor::cat(&vals, 0), Tensor::cat(&idxs, 0))
}

/// Each prototype row's highest cosine similarity to another row, computed in blocks.
fn nearest_similarity(p: &Tensor) -> Tensor {
    blocked_topk(p, None, 1.0, 1).0.squeeze_dim(1)
}

/// Angle (radians) from each old prototype to its nearest other old prototype.
pub fn nearest_angles(old: &Tensor) -> Tensor {
    nearest_similarity(old).clamp(-1.0, 1.0).acos()
}

/// For each row of `q`, the index of its most similar row of `p`, computed in blocks.
fn blocked_argmax(q: &Tensor, p: &Tensor) -> Tensor {
    let c = q.size()[0];
    let mut out = Vec::new();
    let mut start = 0;
    while start < c {
        let n = BLOCK.min(c - start);
        out.push(q.narrow(0, start, n).matmul(&p.tr()).argmax(1, false));
        start += n;
    }
    Tensor::cat(&out, 0)
}

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

/// Fills the geometry fields of [`RefreshStats`] for old prototypes and a perturbation.
pub fn geometry_stats(old: &Tensor, delta: &Tensor) -> (f64, f64, f64, f64, f64) {
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
        (
            norms.mean(Kind::Float).double_value(&[]),
            norms.max().double_value(&[]),
            before.double_value(&[]),
            after.double_value(&[]),
            share.double_value(&[]),
        )
    })
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
    /// The method's name.
    fn name(&self) -> &'static str;
    /// Computes the new Δ `[C, d]`; may return J(Δ) before and after (for optimised methods).
    fn refresh(&mut self, inputs: &RefreshInputs) -> (Tensor, Option<(f64, f64)>);
    /// Internal state to checkpoint (beyond Δ itself).
    fn state(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    /// Restores [`Perturbation::state`] (and Δ, passed under the name "delta").
    fn load_state(&mut self, _state: &[(String, Tensor)]) {}
}

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
    fn name(&self) -> &'static str {
        "ndpp"
    }
    fn refresh(&mut self, inputs: &RefreshInputs) -> (Tensor, Option<(f64, f64)>) {
        (self.delta(inputs.old, inputs.new), None)
    }
}

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

/// The logit scale of the influence loss (`[compat] scale`) by default, and of ODPP's `CE_s` when
/// neither is set.
pub const DEFAULT_SCALE: f64 = 16.0;

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

/// Classes per chunk of the restricted ODPP objective (a chunk gathers
/// `CLASS_CHUNK × (K + 1) × d` prototype values: 134 MB at K = 63, d = 512).
const CLASS_CHUNK: i64 = 1024;

/// Feature banks arranged by class for [`Odpp::restricted_objective`]: `feats [C, b, d]` holds
/// class k's samples of every bank in row k (zero rows pad a class with fewer than the most,
/// `b`), `weights [C, b]` each sample's weight in J (a bank's weight over its size; 0 for
/// padding).
pub struct ClassBanks {
    feats: Tensor,
    weights: Tensor,
}

impl ClassBanks {
    /// Arranges `banks` (features, labels in `0..classes`, the bank's weight in J).
    pub fn new(banks: [(&Tensor, &Tensor, f64); 2], classes: i64) -> Self {
        tch::no_grad(|| {
            let device = banks[0].0.device();
            let (mut feats, mut labels, mut weights) = (Vec::new(), Vec::new(), Vec::new());
            for (f, y, w) in banks {
                let n = f.size()[0];
                if n == 0 || w == 0.0 {
                    continue;
                }
                feats.push(f.to_kind(Kind::Float));
                labels.push(y.to_kind(Kind::Int64));
                weights.push(Tensor::full([n], w / n as f64, (Kind::Float, device)));
            }
            let d = banks[0].0.size()[1];
            if feats.is_empty() {
                return Self {
                    feats: Tensor::zeros([classes, 1, d], (Kind::Float, device)),
                    weights: Tensor::zeros([classes, 1], (Kind::Float, device)),
                };
            }
            let (f, y, w) = (
                Tensor::cat(&feats, 0),
                Tensor::cat(&labels, 0),
                Tensor::cat(&weights, 0),
            );
            // each sample's position among its class's: rank in the label-sorted order minus
            // the class's first rank
            let (sorted, order) = y.sort(0, false);
            let counts = y.bincount::<Tensor>(None, classes);
            let first = counts.cumsum(0, Kind::Int64) - &counts;
            let pos =
                Tensor::arange(y.size()[0], (Kind::Int64, device)) - first.index_select(0, &sorted);
            let b = counts.max().int64_value(&[]).max(1);
            let mut out_f = Tensor::zeros([classes, b, d], (Kind::Float, device));
            let mut out_w = Tensor::zeros([classes, b], (Kind::Float, device));
            let at = [Some(sorted), Some(pos)];
            let _ = out_f.index_put_(&at, &f.index_select(0, &order), false);
            let _ = out_w.index_put_(&at, &w.index_select(0, &order), false);
            Self {
                feats: out_f,
                weights: out_w,
            }
        })
    }
}

impl Perturbation for Odpp {
    fn name(&self) -> &'static str {
        "odpp"
    }
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

/// Timing of one ODPP refresh on synthetic prototypes and banks (see [`bench_odpp`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OdppTiming {
    /// Classes C.
    pub classes: i64,
    /// Dimension d.
    pub dim: i64,
    /// Features per class in each bank (new and old).
    pub bank_per_class: i64,
    /// Classes in each sample's softmax beside its own (0: every class).
    pub candidates: usize,
    /// Adam steps timed.
    pub steps: usize,
    /// Seconds of the candidate search (once per refresh; 0 without candidates).
    pub search_seconds: f64,
    /// Wall time of the refresh: the search and the timed steps.
    pub seconds: f64,
    /// Seconds per Adam step (the search excluded).
    pub seconds_per_step: f64,
    /// The optimised objective (restricted with candidates) before and after the steps.
    pub j: (f64, f64),
    /// Steps after which J was higher than before them.
    pub j_rises: usize,
    /// Adam learning rate used.
    pub lr: f64,
    /// With the comparison asked for and candidates: the full objective at Δ = 0, at this
    /// refresh's Δ, and at the Δ of the same steps on the full objective.
    pub full_j: Option<FullObjective>,
}

/// The approximation's effect on J (see [`OdppTiming::full_j`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FullObjective {
    /// Full J at Δ = 0.
    pub at_zero: f64,
    /// Full J at the restricted refresh's Δ.
    pub restricted: f64,
    /// Full J at the full refresh's Δ.
    pub full: f64,
    /// The share of the full refresh's decrease of J that the restricted refresh achieves.
    pub share_of_decrease: f64,
}

/// Times `cfg.steps` projected-Adam steps of ODPP (with `cfg`) for `classes` random prototypes
/// of dimension `dim` with banks of `bank_per_class` noisy features per class (new and old);
/// with `compare` and `cfg.candidates > 0`, also runs the full objective from the same start
/// and scores both Δ on it.
pub fn bench_odpp(
    classes: i64,
    dim: i64,
    bank_per_class: i64,
    cfg: &OdppConfig,
    device: Device,
    compare: bool,
) -> OdppTiming {
    let steps = cfg.steps;
    tch::manual_seed(0);
    let opts = (Kind::Float, device);
    let old = l2_normalize(&Tensor::randn([classes, dim], opts));
    let labels = Tensor::arange(classes, (Kind::Int64, device)).repeat([bank_per_class]);
    let noisy = |p: &Tensor| {
        l2_normalize(
            &(p.index_select(0, &labels)
                + Tensor::randn([classes * bank_per_class, dim], opts) * 0.5),
        )
    };
    let new_bank = noisy(&l2_normalize(
        &(&old + Tensor::randn([classes, dim], opts) * 0.3),
    ));
    let old_bank = noisy(&old);
    let fresh = || {
        Odpp::new(
            cfg.clone(),
            old_bank.shallow_clone(),
            labels.shallow_clone(),
            classes,
            dim,
        )
    };
    let sync = || {
        if let Device::Cuda(_) = device {
            tch::Cuda::synchronize(0);
        }
    };
    let mut odpp = fresh();
    // the candidate search timed apart from the steps (the refresh runs it once)
    let t0 = std::time::Instant::now();
    let candidates = (cfg.candidates > 0)
        .then(|| Odpp::candidate_table(&pseudo_old(&old, odpp.current()), cfg.candidates));
    sync();
    let search_seconds = t0.elapsed().as_secs_f64();
    let trace = odpp.optimise_over(&old, &new_bank, &labels, candidates.as_ref());
    sync();
    let seconds = t0.elapsed().as_secs_f64();
    let full_j = (compare && cfg.candidates > 0).then(|| {
        let mut full = Odpp::new(
            OdppConfig {
                candidates: 0,
                ..cfg.clone()
            },
            old_bank.shallow_clone(),
            labels.shallow_clone(),
            classes,
            dim,
        );
        full.optimise(&old, &new_bank, &labels);
        let j = |d: &Tensor| {
            tch::no_grad(|| {
                full.objective(&old, d, &new_bank, &labels)
                    .double_value(&[])
            })
        };
        let (at_zero, restricted, full_d) =
            (j(&old.zeros_like()), j(odpp.current()), j(full.current()));
        FullObjective {
            at_zero,
            restricted,
            full: full_d,
            share_of_decrease: (at_zero - restricted) / (at_zero - full_d),
        }
    });
    OdppTiming {
        classes,
        dim,
        bank_per_class,
        candidates: cfg.candidates,
        steps,
        search_seconds,
        seconds,
        seconds_per_step: (seconds - search_seconds) / steps.max(1) as f64,
        j: (trace[0], *trace.last().unwrap_or(&f64::NAN)),
        j_rises: trace.windows(2).filter(|w| w[1] > w[0]).count(),
        lr: cfg.lr,
        full_j,
    }
}
