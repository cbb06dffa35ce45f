//! `bcl._bcl`: the Python extension over the Rust library (metrics, splits, the method registry
//! here; the compatibility losses in `losses`). The Python package (`python/bcl`)
//! converts its inputs (NumPy arrays or torch tensors) to contiguous float64 / int64 arrays and
//! checks their shapes before calling here; this layer checks again (a caller may use it
//! directly), copies the arrays into tensors, releases the GIL for the computation and turns the
//! library's typed errors into `bcl.BclError` (or `ValueError` for inputs that do not fit).

mod adapters;
mod gallery;
mod losses;
mod model;

use std::collections::BTreeMap;
use std::path::PathBuf;

use numpy::{PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tch::Tensor;

use bcl::data::{Scenario, Split, SplitConfig};
use bcl::eval::revisited::{revisited_metrics, RevisitedGnd, SetupMetrics};
use bcl::eval::{retrieval_metrics, CompatMatrix, EvalError};

create_exception!(
    _bcl,
    BclError,
    PyException,
    "An error of the bcl library: a file that cannot be read, inputs that do not hold together."
);

/// A library error as a Python exception: mismatched inputs are a `ValueError`, the rest a
/// `BclError`, each with the library's reason.
fn eval_err(e: EvalError) -> PyErr {
    match e {
        EvalError::Mismatch(m) => PyValueError::new_err(m),
        other => BclError::new_err(other.to_string()),
    }
}

/// A `[n, d]` float64 array as a tensor (copied), with a check that every value is finite.
fn matrix(name: &str, a: &PyReadonlyArray2<f64>) -> PyResult<Tensor> {
    let shape = a.shape();
    let data = a
        .as_slice()
        .map_err(|_| PyValueError::new_err(format!("{name}: expected a contiguous array")))?;
    if shape[0] == 0 || shape[1] == 0 {
        return Err(PyValueError::new_err(format!(
            "{name}: expected a non-empty [n, d] array, got shape {shape:?}"
        )));
    }
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(PyValueError::new_err(format!(
            "{name}: value {} (row {}) is not finite",
            data[i],
            i / shape[1]
        )));
    }
    Ok(Tensor::from_slice(data).view([shape[0] as i64, shape[1] as i64]))
}

/// A label vector as a Rust vector, checked against the rows it labels.
fn labels(name: &str, a: &PyReadonlyArray1<i64>, rows: usize) -> PyResult<Vec<i64>> {
    let v = a
        .to_vec()
        .map_err(|_| PyValueError::new_err(format!("{name}: expected a contiguous array")))?;
    if v.len() != rows {
        return Err(PyValueError::new_err(format!(
            "{name}: {} labels for {rows} rows",
            v.len()
        )));
    }
    Ok(v)
}

/// Class-level retrieval metrics: leave-one-out over `query` without a gallery, else `query`
/// against `gallery`. Returns `map`, `map_at_100`, `recall_at` ({k: value}) and `queries`.
#[pyfunction]
#[pyo3(signature = (query, query_labels, gallery=None, gallery_labels=None, ks=vec![1, 5, 10]))]
fn retrieval<'py>(
    py: Python<'py>,
    query: PyReadonlyArray2<'py, f64>,
    query_labels: PyReadonlyArray1<'py, i64>,
    gallery: Option<PyReadonlyArray2<'py, f64>>,
    gallery_labels: Option<PyReadonlyArray1<'py, i64>>,
    ks: Vec<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    if ks.contains(&0) {
        return Err(PyValueError::new_err("ks: every k must be >= 1"));
    }
    let q = matrix("query", &query)?;
    let ql = labels("query_labels", &query_labels, query.shape()[0])?;
    let (g, gl, loo) = match (&gallery, &gallery_labels) {
        (Some(g), Some(gl)) => {
            if g.shape()[1] != query.shape()[1] {
                return Err(PyValueError::new_err(format!(
                    "gallery: dimension {} differs from the queries' {}",
                    g.shape()[1],
                    query.shape()[1]
                )));
            }
            (
                matrix("gallery", g)?,
                labels("gallery_labels", gl, g.shape()[0])?,
                false,
            )
        }
        (None, None) => (q.shallow_clone(), ql.clone(), true),
        _ => {
            return Err(PyValueError::new_err(
                "gallery and gallery_labels go together",
            ))
        }
    };
    let m = py
        .allow_threads(move || retrieval_metrics(&q, &ql, &g, &gl, loo, &ks))
        .map_err(eval_err)?;
    let d = PyDict::new(py);
    d.set_item("map", m.map)?;
    d.set_item("map_at_100", m.map_at_100)?;
    d.set_item("recall_at", m.recall_at)?;
    d.set_item("queries", m.queries)?;
    Ok(d)
}

fn setup<'py>(py: Python<'py>, s: &SetupMetrics) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("map", s.map)?;
    d.set_item("mp_at", s.mp_at.clone())?;
    d.set_item("ap_per_query", s.ap_per_query.clone())?;
    Ok(d)
}

/// The Revisited Oxford/Paris protocol: `query` `[Q, d]` against the database `gallery`
/// `[N, d]` with the ground truth of `gnd_path` (`gnd_roxford5k.pkl` layout). Returns `easy`,
/// `medium` and `hard`, each with `map`, `mp_at` ({k: value}) and `ap_per_query`.
#[pyfunction]
#[pyo3(signature = (query, gallery, gnd_path, kappas=vec![1, 5, 10]))]
fn revisited<'py>(
    py: Python<'py>,
    query: PyReadonlyArray2<'py, f64>,
    gallery: PyReadonlyArray2<'py, f64>,
    gnd_path: PathBuf,
    kappas: Vec<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    if !gnd_path.is_file() {
        return Err(PyFileNotFoundError::new_err(format!(
            "{}: no such ground-truth file",
            gnd_path.display()
        )));
    }
    if kappas.contains(&0) {
        return Err(PyValueError::new_err("kappas: every k must be >= 1"));
    }
    let q = matrix("query", &query)?;
    let x = matrix("gallery", &gallery)?;
    let m = py
        .allow_threads(move || {
            let gnd = RevisitedGnd::read(&gnd_path)?;
            revisited_metrics(&q, &x, &gnd, &kappas)
        })
        .map_err(eval_err)?;
    let d = PyDict::new(py);
    d.set_item("easy", setup(py, &m.easy)?)?;
    d.set_item("medium", setup(py, &m.medium)?)?;
    d.set_item("hard", setup(py, &m.hard)?)?;
    Ok(d)
}

/// The seeded old/new split of a labelled training set, identical to the CLI's (`split.json`):
/// `old_classes`, `old_indices`, `new_indices` and `fingerprint`.
#[pyfunction]
#[pyo3(signature = (labels, scenario="extended-data", fraction=0.3, seed=0, classes=None))]
fn split<'py>(
    py: Python<'py>,
    labels: PyReadonlyArray1<'py, i64>,
    scenario: &str,
    fraction: f64,
    seed: u64,
    classes: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let scenario: Scenario = scenario.parse().map_err(PyValueError::new_err)?;
    let y = labels
        .to_vec()
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    if let Some(bad) = y.iter().find(|&&l| l < 0) {
        return Err(PyValueError::new_err(format!(
            "labels: {bad} is negative; labels are class indices 0..classes"
        )));
    }
    let n_classes = match classes {
        Some(c) => c,
        None => y.iter().max().map_or(0, |&m| m as usize + 1),
    };
    if let Some(bad) = y.iter().find(|&&l| l as usize >= n_classes) {
        return Err(PyValueError::new_err(format!(
            "labels: {bad} is not below classes = {n_classes}"
        )));
    }
    let cfg = SplitConfig {
        scenario,
        fraction,
        seed,
    };
    let s = Split::new(&cfg, &y, n_classes).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let d = PyDict::new(py);
    d.set_item("scenario", scenario.to_string())?;
    d.set_item("fraction", fraction)?;
    d.set_item("seed", seed)?;
    d.set_item("old_classes", s.old_classes)?;
    d.set_item("old_indices", s.old_indices)?;
    d.set_item("new_indices", s.new_indices)?;
    d.set_item("fingerprint", s.fingerprint)?;
    Ok(d)
}

/// The compatibility matrix of models on one labelled test set: leave-one-out mAP and R@1 of
/// every (query model, gallery model) pair, the features `[N, d]` of each model in `features`.
#[pyfunction]
fn compatibility_matrix<'py>(
    py: Python<'py>,
    names: Vec<String>,
    features: Vec<PyReadonlyArray2<'py, f64>>,
    labels: PyReadonlyArray1<'py, i64>,
) -> PyResult<Bound<'py, PyDict>> {
    if names.len() != features.len() || names.is_empty() {
        return Err(PyValueError::new_err(
            "features: one [N, d] array per model name, at least one",
        ));
    }
    let feats = names
        .iter()
        .zip(&features)
        .map(|(n, f)| matrix(n, f))
        .collect::<PyResult<Vec<Tensor>>>()?;
    let rows = features[0].shape()[0];
    let y = self::labels("labels", &labels, rows)?;
    if let Some((n, f)) = names
        .iter()
        .zip(&features)
        .find(|(_, f)| f.shape()[0] != rows)
    {
        return Err(PyValueError::new_err(format!(
            "{n}: {} rows, the first model has {rows}",
            f.shape()[0]
        )));
    }
    let m = py
        .allow_threads(move || CompatMatrix::compute(&names, &feats, &y))
        .map_err(eval_err)?;
    let map: Vec<Vec<f64>> = (0..m.models.len())
        .map(|q| (0..m.models.len()).map(|g| m.at(q, g).map).collect())
        .collect();
    let r1: Vec<Vec<f64>> = (0..m.models.len())
        .map(|q| {
            (0..m.models.len())
                .map(|g| m.at(q, g).recall_at[&1])
                .collect()
        })
        .collect();
    let d = PyDict::new(py);
    d.set_item("models", m.models.clone())?;
    d.set_item("map", map)?;
    d.set_item("recall_at_1", r1)?;
    Ok(d)
}

/// The partial-backfill curve: leave-one-out mAP of new queries against a gallery whose share
/// `f` (seeded order) is re-embedded by the new model, for each `f` of `fractions`.
#[pyfunction]
#[pyo3(signature = (old, new, labels, fractions=vec![0.0, 0.25, 0.5, 0.75, 1.0], seed=0))]
fn backfill_curve<'py>(
    py: Python<'py>,
    old: PyReadonlyArray2<'py, f64>,
    new: PyReadonlyArray2<'py, f64>,
    labels: PyReadonlyArray1<'py, i64>,
    fractions: Vec<f64>,
    seed: u64,
) -> PyResult<Vec<(f64, f64)>> {
    let (o, n) = (matrix("old", &old)?, matrix("new", &new)?);
    let y = self::labels("labels", &labels, old.shape()[0])?;
    let curve = py
        .allow_threads(move || bcl::eval::deploy::backfill_curve(&o, &n, &y, &fractions, seed))
        .map_err(eval_err)?;
    Ok(curve.iter().map(|p| (p.fraction, p.metrics.map)).collect())
}

/// Flips of a new system against the old one (top-1 correctness per query, leave-one-out):
/// `negative` (right before, wrong after), `positive`, and both systems' top-1 accuracy.
/// Each system is (query features, gallery features) of the same items.
#[pyfunction]
fn flips<'py>(
    py: Python<'py>,
    old_query: PyReadonlyArray2<'py, f64>,
    old_gallery: PyReadonlyArray2<'py, f64>,
    new_query: PyReadonlyArray2<'py, f64>,
    new_gallery: PyReadonlyArray2<'py, f64>,
    labels: PyReadonlyArray1<'py, i64>,
) -> PyResult<Bound<'py, PyDict>> {
    let t = [
        matrix("old_query", &old_query)?,
        matrix("old_gallery", &old_gallery)?,
        matrix("new_query", &new_query)?,
        matrix("new_gallery", &new_gallery)?,
    ];
    let y = self::labels("labels", &labels, old_query.shape()[0])?;
    let f = py
        .allow_threads(move || {
            use bcl::eval::deploy::{flips, top1_labels};
            let before = top1_labels(&t[0], &t[1], &y)?;
            let after = top1_labels(&t[2], &t[3], &y)?;
            flips(&before, &after, &y)
        })
        .map_err(eval_err)?;
    let d = PyDict::new(py);
    d.set_item("negative", f.negative)?;
    d.set_item("positive", f.positive)?;
    d.set_item("before", f.before)?;
    d.set_item("after", f.after)?;
    Ok(d)
}

/// The compatibility criterion, `cross > old_old`, and the update gain
/// `(cross - old_old) / (indep - old_old)` (`None` where undefined).
#[pyfunction]
#[pyo3(signature = (cross, old_old, indep=None))]
fn criterion(cross: f64, old_old: f64, indep: Option<f64>) -> (bool, Option<f64>) {
    (
        bcl::eval::is_compatible(cross, old_old),
        indep.and_then(|i| bcl::eval::update_gain(cross, old_old, i)),
    )
}

/// The registered compatibility methods: name → one-line description (the CLI's `bcl methods`).
#[pyfunction]
fn methods() -> BTreeMap<&'static str, &'static str> {
    bcl::loss::Method::all()
        .map(|m| (m.as_str(), m.description()))
        .collect()
}

/// What the registry says of each method: name → `{description, has_loss, refreshes,
/// needs_prototypes, needs_old_bank, data_parallel}` (`data_parallel`: "exact", or why the
/// loss is computed per rank's share).
#[pyfunction]
fn method_facts(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let out = PyDict::new(py);
    for m in bcl::loss::Method::all() {
        let d = PyDict::new(py);
        d.set_item("description", m.description())?;
        d.set_item("has_loss", m.has_loss())?;
        d.set_item("refreshes", m.refreshes())?;
        d.set_item("needs_prototypes", m.needs_prototypes())?;
        d.set_item("needs_old_bank", m.needs_old_bank())?;
        let dp = match m.data_parallel() {
            bcl::loss::DataParallel::Exact => "exact".to_string(),
            bcl::loss::DataParallel::PerShard(why) => why.to_string(),
        };
        d.set_item("data_parallel", dp)?;
        out.set_item(m.as_str(), d)?;
    }
    Ok(out)
}

/// What scores the gallery's float32 HNSW index on this CPU: "avx512f", "avx2+fma",
/// "portable", or "usearch" (usearch's own kernel, under `BCL_KERNEL=usearch`).
#[pyfunction]
fn hnsw_kernel() -> String {
    bcl::gallery::kernel::Kernel::index_kernel_name()
}

/// The extension module.
#[pymodule]
fn _bcl(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("BclError", m.py().get_type::<BclError>())?;
    m.add_function(wrap_pyfunction!(retrieval, m)?)?;
    m.add_function(wrap_pyfunction!(revisited, m)?)?;
    m.add_function(wrap_pyfunction!(split, m)?)?;
    m.add_function(wrap_pyfunction!(methods, m)?)?;
    m.add_function(wrap_pyfunction!(method_facts, m)?)?;
    m.add_function(wrap_pyfunction!(compatibility_matrix, m)?)?;
    m.add_function(wrap_pyfunction!(backfill_curve, m)?)?;
    m.add_function(wrap_pyfunction!(flips, m)?)?;
    m.add_function(wrap_pyfunction!(criterion, m)?)?;
    m.add_function(wrap_pyfunction!(hnsw_kernel, m)?)?;
    m.add_class::<losses::CompatLossCore>()?;
    m.add_class::<model::ModelCore>()?;
    m.add_class::<gallery::GalleryCore>()?;
    m.add_class::<adapters::AdapterCore>()?;
    m.add_function(wrap_pyfunction!(adapters::adapter_kinds, m)?)?;
    Ok(())
}
