//! Evaluation: exact blocked search, retrieval metrics (mAP, mAP@100, Recall@K), leave-one-out
//! and query/gallery protocols, the compatibility matrix, the criterion and the update gain;
//! `models` evaluates a set of models on a test set, `protocol` on the standard benchmarks.

pub mod deploy;
pub mod mapped;
pub mod models;
pub mod pickle_bounds;
pub mod protocol;
pub mod revisited;
pub mod search;

use std::collections::BTreeMap;
use std::path::PathBuf;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Errors of reading feature files and of mismatched inputs.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A .npy file could not be read or has the wrong type or shape.
    #[error(transparent)]
    Npy(#[from] crate::npy::NpyError),
    /// Inputs that do not fit together.
    #[error("{0}")]
    Mismatch(String),
    /// Reading the data an evaluation embeds (a benchmark's lists, its images).
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// A ground-truth file that cannot be read or does not hold together.
    #[error("{path}: {reason}")]
    Ground {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Sharing an embedding pass among ranks failed (a lost rank, a timeout).
    #[error(transparent)]
    Dist(#[from] bcl_dist::DistError),
}

/// Retrieval metrics averaged over the queries that have at least one relevant item.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RetrievalMetrics {
    /// Mean average precision over the full ranking.
    pub map: f64,
    /// mAP@100, GLDv2 definition (denominator `min(#relevant, 100)`).
    pub map_at_100: f64,
    /// Share of queries with a relevant item in the top K, by K.
    pub recall_at: BTreeMap<usize, f64>,
    /// Queries counted (those with at least one relevant item).
    pub queries: usize,
}

/// The K of Recall@K reported by default.
pub const DEFAULT_KS: [usize; 3] = [1, 5, 10];

struct QueryResult {
    ap: f64,
    ap100: f64,
    first_hit: usize, // 1-based rank of the first relevant item
}

fn score_query(
    scores: &[f64],
    qlabel: i64,
    glabels: &[i64],
    exclude: Option<usize>,
) -> Option<QueryResult> {
    let mut order: Vec<(f64, usize)> = scores
        .iter()
        .copied()
        .enumerate()
        .filter(|&(j, _)| Some(j) != exclude)
        .map(|(j, s)| (s, j))
        .collect();
    let n_rel = order.iter().filter(|&&(_, j)| glabels[j] == qlabel).count();
    if n_rel == 0 {
        return None;
    }
    // Descending score; ties broken by gallery index so the ranking is deterministic.
    order.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let (mut hits, mut ap, mut ap100, mut first_hit) = (0usize, 0f64, 0f64, 0usize);
    for (rank0, &(_, j)) in order.iter().enumerate() {
        if glabels[j] == qlabel {
            hits += 1;
            let p = hits as f64 / (rank0 + 1) as f64;
            ap += p;
            if rank0 < 100 {
                ap100 += p;
            }
            if first_hit == 0 {
                first_hit = rank0 + 1;
            }
            if hits == n_rel {
                break;
            }
        }
    }
    Some(QueryResult {
        ap: ap / n_rel as f64,
        ap100: ap100 / n_rel.min(100) as f64,
        first_hit,
    })
}

/// Exact retrieval metrics of `query` features against `gallery` features (rows, cosine or
/// inner product). With `leave_one_out`, query `i` and gallery `i` are the same item and the
/// pair is skipped. Similarities are computed in blocks of queries, so memory stays at
/// `block × gallery`.
pub fn retrieval_metrics(
    query: &Tensor,
    query_labels: &[i64],
    gallery: &Tensor,
    gallery_labels: &[i64],
    leave_one_out: bool,
    ks: &[usize],
) -> Result<RetrievalMetrics, EvalError> {
    let (nq, dq) = query
        .size2()
        .map_err(|e| EvalError::Mismatch(e.to_string()))?;
    let (ng, dg) = gallery
        .size2()
        .map_err(|e| EvalError::Mismatch(e.to_string()))?;
    if dq != dg {
        return Err(EvalError::Mismatch(format!(
            "query features have dimension {dq} but gallery features {dg}"
        )));
    }
    if nq as usize != query_labels.len() || ng as usize != gallery_labels.len() {
        return Err(EvalError::Mismatch(format!(
            "{nq} query rows with {} labels, {ng} gallery rows with {} labels",
            query_labels.len(),
            gallery_labels.len()
        )));
    }
    if leave_one_out && nq != ng {
        return Err(EvalError::Mismatch(
            "leave-one-out needs as many query as gallery rows".into(),
        ));
    }
    let kind = if query.kind() == Kind::Double || gallery.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    let g = gallery.to_kind(kind);
    let gt = g.tr();
    let block: i64 = (4_000_000 / ng.max(1)).clamp(16, 2048);
    let mut results: Vec<Option<QueryResult>> = Vec::with_capacity(nq as usize);
    let mut start = 0i64;
    while start < nq {
        let len = block.min(nq - start);
        let sims = query
            .narrow(0, start, len)
            .to_kind(kind)
            .to_device(g.device())
            .matmul(&gt)
            .to_kind(Kind::Double)
            .to_device(Device::Cpu)
            .contiguous();
        let flat: Vec<f64> = Vec::try_from(sims.view([-1]))
            .map_err(|e: tch::TchError| EvalError::Mismatch(e.to_string()))?;
        let part: Vec<Option<QueryResult>> = flat
            .par_chunks(ng as usize)
            .enumerate()
            .map(|(r, row)| {
                let qi = (start as usize) + r;
                score_query(
                    row,
                    query_labels[qi],
                    gallery_labels,
                    leave_one_out.then_some(qi),
                )
            })
            .collect();
        results.extend(part);
        start += len;
    }
    let valid: Vec<&QueryResult> = results.iter().flatten().collect();
    let n = valid.len().max(1) as f64;
    let recall_at = ks
        .iter()
        .map(|&k| {
            (
                k,
                valid.iter().filter(|r| r.first_hit <= k).count() as f64 / n,
            )
        })
        .collect();
    Ok(RetrievalMetrics {
        map: valid.iter().map(|r| r.ap).sum::<f64>() / n,
        map_at_100: valid.iter().map(|r| r.ap100).sum::<f64>() / n,
        recall_at,
        queries: valid.len(),
    })
}

/// Leave-one-out metrics on one set of items embedded twice: queries by one model, gallery by
/// another (the same tensor for self-test).
pub fn leave_one_out(
    query: &Tensor,
    gallery: &Tensor,
    labels: &[i64],
) -> Result<RetrievalMetrics, EvalError> {
    retrieval_metrics(query, labels, gallery, labels, true, &DEFAULT_KS)
}

/// The compatibility matrix: rows are query models, columns gallery models.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CompatMatrix {
    /// Model names, in row (and column) order.
    pub models: Vec<String>,
    /// `cells[q][g]`: metrics with queries from model q against a gallery from model g;
    /// `None` for a pair that was not computed.
    pub cells: Vec<Vec<Option<RetrievalMetrics>>>,
}

impl CompatMatrix {
    /// Computes every (query model, gallery model) pair on one set of items (leave-one-out).
    pub fn compute(
        names: &[String],
        features: &[Tensor],
        labels: &[i64],
    ) -> Result<Self, EvalError> {
        Self::compute_pairs(names, features, labels, |_, _| true)
    }

    /// Computes the pairs `(q, g)` for which `want(q, g)` holds (each leave-one-out mAP over
    /// the full ranking costs a sort per query, so an experiment skips the pairs no table uses).
    pub fn compute_pairs(
        names: &[String],
        features: &[Tensor],
        labels: &[i64],
        want: impl Fn(usize, usize) -> bool,
    ) -> Result<Self, EvalError> {
        Self::compute_with(names, features, labels, |q, g| {
            want(q, g).then(|| features[q].shallow_clone())
        })
    }

    /// As [`CompatMatrix::compute_pairs`], the query side of each cell given by `queries(q,
    /// g)`: model q's features in model g's space (through projection heads, for models of
    /// different dimensions), or `None` for a cell not computed.
    pub fn compute_with(
        names: &[String],
        features: &[Tensor],
        labels: &[i64],
        queries: impl Fn(usize, usize) -> Option<Tensor>,
    ) -> Result<Self, EvalError> {
        let cells = (0..features.len())
            .map(|qi| {
                features
                    .iter()
                    .enumerate()
                    .map(|(gi, g)| {
                        queries(qi, gi)
                            .map(|q| leave_one_out(&q, g, labels))
                            .transpose()
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            models: names.to_vec(),
            cells,
        })
    }

    /// Appends a query row named `name` (and its column): `cells` are its metrics against the
    /// existing columns (`None` where not computed; missing entries count as `None`), `own`
    /// its diagonal; the existing rows get nothing in the new column. An adapted model's row:
    /// it queries the old models' galleries, and nothing queries it but itself.
    pub fn push_row(
        &mut self,
        name: &str,
        mut cells: Vec<Option<RetrievalMetrics>>,
        own: Option<RetrievalMetrics>,
    ) {
        for row in &mut self.cells {
            row.push(None);
        }
        cells.resize(self.models.len(), None);
        cells.push(own);
        self.models.push(name.to_string());
        self.cells.push(cells);
    }

    /// The cell of two named models (`None` when unknown or not computed).
    pub fn get(&self, query: &str, gallery: &str) -> Option<&RetrievalMetrics> {
        let q = self.models.iter().position(|m| m == query)?;
        let g = self.models.iter().position(|m| m == gallery)?;
        self.cells[q][g].as_ref()
    }

    /// The cell at row `q`, column `g`, which the caller asked to compute.
    pub fn at(&self, q: usize, g: usize) -> &RetrievalMetrics {
        self.cells[q][g]
            .as_ref()
            .expect("a cell the evaluation computed")
    }
}

/// The compatibility criterion in one line, as `bcl demo` and the HTML report state it.
pub const CRITERION: &str =
    "compatible: the new model's queries on the old gallery (cross-test mAP) \
     beat the old model on its own gallery (old→old mAP); margin = cross − old→old";

/// The compatibility criterion: cross-test beats the old model's own figure.
pub fn is_compatible(cross: f64, old_old: f64) -> bool {
    cross > old_old
}

/// Update gain `(M(new→old) − M(old→old)) / (M(indep→indep) − M(old→old))`; `None` when the
/// denominator is not positive (the independent model is no better than the old one).
pub fn update_gain(cross: f64, old_old: f64, indep: f64) -> Option<f64> {
    let den = indep - old_old;
    (den > 1e-12).then(|| (cross - old_old) / den)
}
