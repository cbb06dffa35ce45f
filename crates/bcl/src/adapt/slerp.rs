//! SLERP query interpolation (Ricci, Biondi, Pernici, NeurIPS 2026; public code
//! `miccunifi/SLERP_backward_compatibility`): a query is embedded by both models, the new
//! embedding rotated into the old space by Procrustes, and the old gallery searched with the
//! spherical interpolation `q(α) = (sin((1−α)θ) u + sin(αθ) v) / sin θ` between the old
//! embedding `u` (α = 0) and the rotated new one `v` (α = 1). As published, α is the grid value
//! (0, 0.1, …, 1) with the best Recall@1 on the support set, the smallest on ties; here the
//! support set's items are the queries and its old vectors the gallery, each query leaving
//! itself out, and a hit is an item of the query's class (so α is chosen on labelled support
//! pairs, or given). `criterion = "map"` chooses by the support set's mAP instead (not the
//! published method: the figure the compatibility criterion reads).

use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{Device, Kind, Tensor};

use super::procrustes::fit_rotation;
use super::{
    expect_shape, input, normalize, pad_to, AdaptError, AdapterCard, AdapterSpec, Companion,
    Direction, FitConfig, Fitted, Params, SupportSet,
};

/// SLERP's settings (`[slerp]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SlerpConfig {
    /// A fixed α in [0, 1]; when absent, α is chosen on the (labelled) support set.
    pub alpha: Option<f64>,
    /// The grid α is chosen from (the published 0, 0.1, …, 1).
    pub grid: Vec<f64>,
    /// What α is chosen by on the support set: `recall@1` (as published, the default) or
    /// `map` (the figure the compatibility criterion reads; not the published method).
    pub criterion: SlerpCriterion,
}

/// The support-set figure SLERP's α maximises.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum SlerpCriterion {
    /// Leave-one-out Recall@1 (the published choice).
    #[default]
    #[serde(rename = "recall@1")]
    RecallAt1,
    /// Leave-one-out mean average precision.
    #[serde(rename = "map")]
    Map,
}

impl Default for SlerpConfig {
    fn default() -> Self {
        Self {
            alpha: None,
            grid: (0..=10).map(|i| f64::from(i) / 10.0).collect(),
            criterion: SlerpCriterion::RecallAt1,
        }
    }
}

impl SlerpConfig {
    /// Checks that α and the grid lie in [0, 1].
    pub fn validate(&self) -> Result<(), AdaptError> {
        let ok = |a: f64| (0.0..=1.0).contains(&a);
        if let Some(a) = self.alpha {
            if !ok(a) {
                return Err(AdaptError::Settings(format!(
                    "slerp alpha {a} is outside [0, 1]"
                )));
            }
        }
        if self.grid.is_empty() || !self.grid.iter().all(|&a| ok(a)) {
            return Err(AdaptError::Settings(format!(
                "slerp grid {:?} must be non-empty with values in [0, 1]",
                self.grid
            )));
        }
        Ok(())
    }
}

/// The registry entry of `slerp`.
pub struct Spec;

/// Spherical interpolation between the rows of `u` (α = 0) and `v` (α = 1), both `[N, d]`,
/// as the published code computes it: both normalised, cos θ clamped to (−1 + 1e-7, 1 − 1e-7),
/// the result normalised. At α = 0 the result is `u` normalised, bit for bit (`u` itself when
/// its rows are unit vectors): a query the new model never touches must score exactly as
/// old→old, or the strict compatibility criterion would pass or fail on rounding.
pub fn slerp(u: &Tensor, v: &Tensor, alpha: f64) -> Tensor {
    const EPS: f64 = 1e-7;
    if alpha == 0.0 {
        return normalize(u);
    }
    let (u, v) = (normalize(u), normalize(v));
    let cos = (&u * &v)
        .sum_dim_intlist([1i64].as_slice(), true, Kind::Float)
        .clamp(-1.0 + EPS, 1.0 - EPS);
    let theta = cos.acos();
    let q = ((&theta * (1.0 - alpha)).sin() * &u + (&theta * alpha).sin() * &v) / theta.sin();
    normalize(&q)
}

/// `q(α)` in the old space's first `to_dim` coordinates: the old query `u` zero-padded to the
/// rotation's width, interpolated there with `x R`, then cut (at α = 0 the old query itself,
/// as [`slerp`] returns it).
fn interpolate(r: &Tensor, x: &Tensor, u: &Tensor, alpha: f64, to_dim: usize) -> Tensor {
    let width = r.size()[1] as usize;
    let v = x.matmul(r);
    slerp(&pad_to(u, width), &v, alpha).narrow(1, 0, to_dim as i64)
}

impl AdapterSpec for Spec {
    fn name(&self) -> &'static str {
        "slerp"
    }

    fn description(&self) -> &'static str {
        "Procrustes plus spherical interpolation with the old model's embedding of the query \
         (weight α chosen on the labelled support set, or given); queries need both models"
    }

    fn direction(&self) -> Direction {
        Direction::NewToOld
    }

    fn companion(&self) -> Companion {
        Companion::OldQuery
    }

    fn fit(
        &self,
        support: &SupportSet,
        cfg: &FitConfig,
        device: Device,
    ) -> Result<Fitted, AdaptError> {
        let r = fit_rotation(support.new_vectors(), support.old_vectors(), device);
        let to_dim = support.old_dim();
        let (alpha, report) = match (cfg.slerp.alpha, support.labels()) {
            (Some(a), _) => (a, json!({ "alpha_chosen": false })),
            (None, None) => {
                return Err(input(
                    "support set",
                    "slerp chooses α by Recall@1 on a labelled support set: give labels \
                     for the pairs, or a fixed α",
                ))
            }
            (None, Some(labels)) => {
                let gallery = support.old_vectors();
                // (α, Recall@1, mAP) per grid value
                let scores: Vec<(f64, f64, f64)> = cfg
                    .slerp
                    .grid
                    .iter()
                    .map(|&a| {
                        let q = interpolate(
                            &r,
                            support.new_vectors(),
                            support.old_vectors(),
                            a,
                            to_dim,
                        );
                        // bcl's leave-one-out figures (queries without another item of
                        // their class are not counted, as in every `bcl eval` figure)
                        crate::eval::retrieval_metrics(&q, labels, gallery, labels, true, &[1])
                            .map(|m| (a, m.recall_at.get(&1).copied().unwrap_or(0.0), m.map))
                            .map_err(|e| input("support set", e))
                    })
                    .collect::<Result<_, _>>()?;
                let by_map = cfg.slerp.criterion == SlerpCriterion::Map;
                let criterion = if by_map {
                    "support mAP, leave-one-out, old-model gallery"
                } else {
                    "support Recall@1, leave-one-out, old-model gallery"
                };
                let score = |s: &(f64, f64, f64)| if by_map { s.2 } else { s.1 };
                // the best score, the smallest α on ties (as published)
                let mut sorted = scores.clone();
                sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
                let best = sorted
                    .iter()
                    .fold(sorted[0], |b, s| if score(s) > score(&b) { *s } else { b });
                (
                    best.0,
                    json!({
                        "alpha_chosen": true,
                        "criterion": criterion,
                        "recall_at_1": scores
                            .iter()
                            .map(|(a, r, m)| json!({ "alpha": a, "recall": r, "map": m }))
                            .collect::<Vec<_>>(),
                    }),
                )
            }
        };
        let mut params = Params::default();
        params.insert("rotation", r);
        params.insert("alpha", Tensor::from_slice(&[alpha as f32]));
        Ok(Fitted {
            params,
            settings: json!({ "alpha": alpha, "grid": cfg.slerp.grid }),
            report,
        })
    }

    fn apply(
        &self,
        p: &Params,
        x: &Tensor,
        companion: Option<&Tensor>,
        to_dim: usize,
    ) -> Result<Tensor, AdaptError> {
        let alpha = p.get("alpha")?.double_value(&[0]);
        let u = companion.ok_or_else(|| input("old-model queries", "missing"))?;
        Ok(interpolate(p.get("rotation")?, x, u, alpha, to_dim))
    }

    fn check(&self, p: &Params, card: &AdapterCard) -> Result<(), String> {
        let d = card.from.dim.max(card.to.dim) as i64;
        expect_shape(p, "rotation", &[card.from.dim as i64, d])?;
        expect_shape(p, "alpha", &[1])?;
        let a = p
            .get("alpha")
            .map_err(|e| e.to_string())?
            .double_value(&[0]);
        if !(0.0..=1.0).contains(&a) {
            return Err(format!("alpha {a} is outside [0, 1]"));
        }
        Ok(())
    }
}
