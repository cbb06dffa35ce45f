//! Evaluation of a set of models on one test set: every model embeds the test set once, the
//! compatibility matrix is computed over the cells asked for, and each new model gets its row
//! (self-test, cross-test against its old model, the criterion and the update gain).

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::{is_compatible, update_gain, CompatMatrix, EvalError, RetrievalMetrics};
use crate::data::Dataset;
use crate::loss::Method;
use crate::model::{Embedder, Role};

/// What an adapted row adds to its new model: the adapter's kind and the number of support
/// pairs it was fitted on (written `kind@pairs`, e.g. `procrustes@1000`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AdapterTag {
    /// The adapter's kind (`bcl adapt kinds`).
    pub kind: String,
    /// Support pairs it was fitted on.
    pub support: usize,
}

impl std::fmt::Display for AdapterTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.kind, self.support)
    }
}

/// A row's name in tables: `method`, then `+kind@pairs` where an adapter is given.
pub fn row_label(method: Method, adapter: Option<&AdapterTag>) -> String {
    match adapter {
        None => method.to_string(),
        Some(t) => format!("{method}+{t}"),
    }
}

/// One row of the results table: a new model evaluated against the old gallery, as trained or
/// through an adapter fitted after training.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResultRow {
    /// The method the new model was trained with.
    pub method: Method,
    /// The adapter its cross-test goes through (`None`: the model as trained). A new → old
    /// adapter maps the queries; an old → new one (`forward`) maps the old gallery's vectors,
    /// searched by the new model's queries. The self-test is the model's own either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<AdapterTag>,
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

    /// The row of a model trained with `method` (through `adapter` where given) from its cells:
    /// the old model against itself `old_old`, the model against itself `own`, and its queries
    /// against the old gallery `cross`; the gain needs the independent model's self-test mAP.
    pub fn from_cells(
        method: Method,
        adapter: Option<AdapterTag>,
        old_old: &RetrievalMetrics,
        own: &RetrievalMetrics,
        cross: &RetrievalMetrics,
        indep_self: Option<f64>,
    ) -> Self {
        let r1 = |m: &RetrievalMetrics| m.recall_at.get(&1).copied().unwrap_or(f64::NAN);
        Self {
            method,
            adapter,
            old_old_map: old_old.map,
            self_map: own.map,
            cross_map: cross.map,
            self_r1: r1(own),
            cross_r1: r1(cross),
            compatible: is_compatible(cross.map, old_old.map),
            gain: indep_self.and_then(|i| update_gain(cross.map, old_old.map, i)),
        }
    }

    /// The row's name in tables: the method, then `+kind@pairs` for an adapted row.
    pub fn label(&self) -> String {
        row_label(self.method, self.adapter.as_ref())
    }

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
    /// One row per adapter evaluated beside the models (`adapt::rows`), after `rows` in
    /// tables; their cross-test cells are the matrix's rows after the models'.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adapted: Vec<ResultRow>,
}

impl EvalReport {
    /// The models' rows, then the adapted rows.
    pub fn all_rows(&self) -> Vec<ResultRow> {
        self.rows.iter().chain(&self.adapted).cloned().collect()
    }

    /// The independent model's self-test mAP (the update gain's reference), where it ran.
    pub fn independent_self(&self) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.method == Method::INDEPENDENT && r.adapter.is_none())
            .map(|r| r.self_map)
    }

    /// Adds an adapted row and its query row `name` in the matrix: its cross-test `cross`
    /// against the old model in column `old`, the model's own self-test `own` on the diagonal.
    pub fn push_adapted(
        &mut self,
        name: &str,
        row: ResultRow,
        old: usize,
        cross: RetrievalMetrics,
        own: Option<RetrievalMetrics>,
    ) {
        let mut cells = vec![None; old + 1];
        cells[old] = Some(cross);
        self.matrix.push_row(name, cells, own);
        self.adapted.push(row);
    }
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
pub fn parent(models: &[Embedder], i: usize) -> Option<usize> {
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
    let feats = embed_models(models, test, batch, dist)?;
    score_models(models, &feats, &test.labels, cells)
}

/// Every model's embedding of `test` (the ranks of `dist` sharing each pass), after checking
/// that the models can be evaluated together: at least one, distinct names, each taking the
/// test set's image shape.
pub fn embed_models(
    models: &[Embedder],
    test: &Dataset,
    batch: usize,
    dist: &dyn bcl_dist::Collective,
) -> Result<Vec<Tensor>, EvalError> {
    if models.is_empty() {
        return Err(EvalError::Mismatch("no model to evaluate".into()));
    }
    let names: Vec<&String> = models.iter().map(|m| &m.card.name).collect();
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
    Ok(models
        .iter()
        .map(|m| m.embed_dataset_on(test, batch, dist))
        .collect::<Result<_, _>>()?)
}

/// The matrix (the cells `cells` asks for) and the rows of `models` from their embeddings
/// `feats` of one labelled set (leave-one-out).
pub fn score_models(
    models: &[Embedder],
    feats: &[Tensor],
    labels: &[i64],
    cells: MatrixCells,
) -> Result<EvalReport, EvalError> {
    if feats.len() != models.len() || models.is_empty() {
        return Err(EvalError::Mismatch(format!(
            "{} models but {} embeddings",
            models.len(),
            feats.len()
        )));
    }
    let names: Vec<String> = models.iter().map(|m| m.card.name.clone()).collect();
    let matrix = CompatMatrix::compute_with(&names, feats, labels, |q, g| {
        let wanted = cells == MatrixCells::All || q == g || models[g].card.role == Role::Old;
        wanted.then(|| in_space_of(models, feats, q, g)).flatten()
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
        let method = Method::named(&m.card.method).map_err(|e| {
            EvalError::Mismatch(format!(
                "{}: {e}",
                crate::layout::ModelDir::new(&m.dir).card().display()
            ))
        })?;
        let indep_self = indep.map(|k| matrix.at(k, k).map);
        rows.push(ResultRow::from_cells(
            method,
            None,
            oo,
            matrix.at(i, i),
            cross,
            indep_self,
        ));
    }
    Ok(EvalReport {
        test_items: labels.len(),
        matrix,
        rows,
        adapted: Vec::new(),
    })
}
