//! Evaluation of a set of models on one test set: every model embeds the test set once, the
//! compatibility matrix is computed over the cells asked for, and each new model gets its row
//! (self-test, cross-test against its old model, the criterion and the update gain).

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::{is_compatible, update_gain, CompatMatrix, EvalError};
use crate::data::Dataset;
use crate::loss::Method;
use crate::model::{Embedder, Role};

/// One row of the results table: a new model evaluated against the old gallery.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResultRow {
    /// The method the new model was trained with.
    pub method: Method,
    /// mAP of the old model against itself (the baseline).
    pub old_old_map: f64,
    /// Self-test mAP `M(new→new)`.
    pub self_map: f64,
    /// Cross-test mAP `M(new→old)`.
    pub cross_map: f64,
    /// Self-test Recall@1.
    pub self_r1: f64,
    /// Cross-test Recall@1.
    pub cross_r1: f64,
    /// Whether `M(new→old) > M(old→old)` (mAP).
    pub compatible: bool,
    /// Update gain on mAP, when an independent model is there to define it.
    pub gain: Option<f64>,
}

impl ResultRow {
    /// The headers of [`ResultRow::figures`] in Markdown tables.
    pub const FIGURE_HEADERS: [&'static str; 5] = [
        "old→old mAP",
        "self mAP",
        "cross mAP",
        "self R@1",
        "cross R@1",
    ];
    /// The names of [`ResultRow::figures`] in CSV files and JSON.
    pub const FIGURE_KEYS: [&'static str; 5] = [
        "old_old_map",
        "self_map",
        "cross_map",
        "self_r1",
        "cross_r1",
    ];

    /// The row's figures in table order: old→old mAP, self mAP, cross mAP, self R@1, cross R@1.
    pub fn figures(&self) -> [f64; 5] {
        [
            self.old_old_map,
            self.self_map,
            self.cross_map,
            self.self_r1,
            self.cross_r1,
        ]
    }
}

/// Results of evaluating a set of models on one test set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    /// Number of test items.
    pub test_items: usize,
    /// The compatibility matrix over all models.
    pub matrix: CompatMatrix,
    /// One row per new model: self-test, cross-test against its old model, criterion and gain.
    pub rows: Vec<ResultRow>,
}

/// Embeds `test` with every model and computes the full matrix and the per-method rows.
pub fn evaluate_models(
    models: &[Embedder],
    test: &Dataset,
    batch: usize,
) -> Result<EvalReport, EvalError> {
    evaluate_models_with(models, test, batch, MatrixCells::All)
}

/// The model model `i` is compatible with: the one its card names, else (for a new model) the
/// only old model of the set.
fn parent(models: &[Embedder], i: usize) -> Option<usize> {
    match &models[i].card.compatible_with {
        Some(id) => models.iter().position(|o| &o.card.id == id),
        None if models[i].card.role == Role::New => {
            let olds: Vec<usize> = (0..models.len())
                .filter(|&j| models[j].card.role == Role::Old)
                .collect();
            (olds.len() == 1).then(|| olds[0])
        }
        None => None,
    }
}

/// Model `q`'s features `feats[q]` in model `g`'s space: where `g` is on `q`'s lineage, mapped
/// along it (each model through its projection head into the model it is compatible with,
/// where their dimensions differ); otherwise as they are when both embed in one dimension
/// (the matrix's cell between unrelated models), and `None` when they do not.
pub fn in_space_of(models: &[Embedder], feats: &[Tensor], q: usize, g: usize) -> Option<Tensor> {
    let mut at = q;
    let mut f = feats[q].shallow_clone();
    for _ in 0..models.len() {
        if at == g {
            return Some(f);
        }
        let Some(p) = parent(models, at) else { break };
        if models[at].dim() != models[p].dim() {
            if models[at].compat_dim() != Some(models[p].dim()) {
                break;
            }
            f = models[at].to_compat_space(&f);
        }
        at = p;
    }
    (models[q].dim() == models[g].dim()).then(|| feats[q].shallow_clone())
}

/// Which cells of the compatibility matrix an evaluation computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatrixCells {
    /// Every (query model, gallery model) pair.
    All,
    /// What the results table needs: each model against itself and against the old models
    /// (new-against-new pairs skipped: with ten models, 19 cells instead of 100).
    Table,
}

/// As [`evaluate_models`], computing the cells `cells` asks for.
pub fn evaluate_models_with(
    models: &[Embedder],
    test: &Dataset,
    batch: usize,
    cells: MatrixCells,
) -> Result<EvalReport, EvalError> {
    evaluate_models_on(models, test, batch, cells, &bcl_dist::Single)
}

/// As [`evaluate_models_with`], the ranks of `dist` sharing each model's embedding pass (every
/// rank then scores the same features: the same report everywhere).
pub fn evaluate_models_on(
    models: &[Embedder],
    test: &Dataset,
    batch: usize,
    cells: MatrixCells,
    dist: &dyn bcl_dist::Collective,
) -> Result<EvalReport, EvalError> {
    if models.is_empty() {
        return Err(EvalError::Mismatch("no model to evaluate".into()));
    }
    let names: Vec<String> = models.iter().map(|m| m.card.name.clone()).collect();
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return Err(EvalError::Mismatch(format!("two models are named '{n}'")));
        }
    }
    for m in models {
        let shape = [test.channels, test.rows, test.cols];
        if m.card.input_shape != shape {
            return Err(EvalError::Mismatch(format!(
                "{}: the model expects images of shape {:?}, the test set has {:?}",
                m.dir.display(),
                m.card.input_shape,
                shape
            )));
        }
    }
    let feats: Vec<Tensor> = models
        .iter()
        .map(|m| m.embed_dataset_on(test, batch, dist))
        .collect::<Result<_, _>>()?;
    let matrix = CompatMatrix::compute_with(&names, &feats, &test.labels, |q, g| {
        let wanted = cells == MatrixCells::All || q == g || models[g].card.role == Role::Old;
        wanted.then(|| in_space_of(models, &feats, q, g)).flatten()
    })?;
    let indep = models
        .iter()
        .position(|m| m.card.role == Role::New && m.card.method == Method::INDEPENDENT.as_str());
    let mut rows = Vec::new();
    for (i, m) in models.iter().enumerate() {
        if m.card.role != Role::New {
            continue;
        }
        let Some(o) = parent(models, i) else { continue };
        let oo = matrix.at(o, o);
        let Some(cross) = matrix.cells[i][o].as_ref() else {
            return Err(EvalError::Mismatch(format!(
                "{}: the model embeds in dimension {} and has no projection head into its old \
                 model's dimension {}",
                m.dir.display(),
                m.dim(),
                models[o].dim()
            )));
        };
        let selft = matrix.at(i, i);
        let gain = indep.and_then(|k| update_gain(cross.map, oo.map, matrix.at(k, k).map));
        rows.push(ResultRow {
            method: Method::named(&m.card.method).map_err(|e| {
                EvalError::Mismatch(format!(
                    "{}: {e}",
                    crate::layout::ModelDir::new(&m.dir).card().display()
                ))
            })?,
            old_old_map: oo.map,
            self_map: selft.map,
            cross_map: cross.map,
            self_r1: selft.recall_at[&1],
            cross_r1: cross.recall_at[&1],
            compatible: is_compatible(cross.map, oo.map),
            gain,
        });
    }
    Ok(EvalReport {
        test_items: test.len(),
        matrix,
        rows,
    })
}
