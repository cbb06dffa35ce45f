//! A `bcl` gallery from Python: create or open a store (usearch, or Milvus), add vectors under a
//! model's identity and search them, with the same lineage rules and errors as the CLI; the
//! GIL is released while the store works.

use std::path::PathBuf;

use numpy::{PyArray2, PyArrayMethods, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_tch::PyTensor;

use bcl::gallery::ops::{self, EmbedOptions};
use bcl::gallery::usearch_store::{Quantization, UsearchConfig};
use bcl::gallery::{
    self as gal, BackendConfig, GalleryError, GalleryManifest, GalleryStore, MilvusConfig,
    ModelInfo,
};

/// A gallery error as a Python exception: bad input (a gallery already there, or open in
/// another process) is a `ValueError`, a missing gallery a
/// `FileNotFoundError`, the rest (lineage refusals, damaged files) a `bcl.BclError`.
fn gallery_err(e: GalleryError) -> PyErr {
    match e {
        GalleryError::Invalid(m) => PyValueError::new_err(m),
        GalleryError::Exists { .. } | GalleryError::Locked { .. } => {
            PyValueError::new_err(e.to_string())
        }
        GalleryError::Missing { .. } => {
            pyo3::exceptions::PyFileNotFoundError::new_err(e.to_string())
        }
        other => crate::BclError::new_err(other.to_string()),
    }
}

/// The identity vectors are written or searched under: a `bcl` model's card (JSON), or the
/// name of an outside model of dimension `dim`.
fn identity(model: Option<&str>, card: Option<&str>, dim: usize) -> PyResult<Option<ModelInfo>> {
    match (model, card) {
        (_, Some(c)) => {
            let card: bcl::model::ModelCard = serde_json::from_str(c)
                .map_err(|e| PyValueError::new_err(format!("model card: {e}")))?;
            Ok(Some(ModelInfo::from_card(&card)))
        }
        (Some(name), None) if !name.is_empty() => Ok(Some(ModelInfo::external(name, dim))),
        (Some(_), None) => Err(PyValueError::new_err("model: an empty name")),
        (None, None) => Ok(None),
    }
}

/// Row-major float32 values of a `[n, d]` array.
fn rows(name: &str, a: &PyReadonlyArray2<f32>) -> PyResult<(Vec<f32>, usize)> {
    let shape = a.shape();
    let v = a
        .to_vec()
        .map_err(|_| PyValueError::new_err(format!("{name}: expected a contiguous array")))?;
    Ok((v, shape[1]))
}

/// Search results as arrays `[Q, k]` of ids and scores, rows shorter than `k` padded with id
/// 2^64-1 and score -inf.
#[allow(clippy::type_complexity)]
fn hit_arrays<'py>(
    py: Python<'py>,
    hits: &[Vec<bcl::gallery::Hit>],
    k: usize,
) -> PyResult<(Bound<'py, PyArray2<u64>>, Bound<'py, PyArray2<f32>>)> {
    let n = hits.len();
    let mut ids = vec![u64::MAX; n * k];
    let mut scores = vec![f32::NEG_INFINITY; n * k];
    for (i, row) in hits.iter().enumerate() {
        for (j, h) in row.iter().take(k).enumerate() {
            ids[i * k + j] = h.id;
            scores[i * k + j] = h.score;
        }
    }
    let ids = numpy::PyArray1::from_vec(py, ids).reshape([n, k])?;
    let scores = numpy::PyArray1::from_vec(py, scores).reshape([n, k])?;
    Ok((ids, scores))
}

/// An open gallery.
#[pyclass(module = "bcl._bcl")]
pub struct GalleryCore {
    store: Box<dyn GalleryStore>,
}

#[pymethods]
impl GalleryCore {
    /// Opens the gallery in `path` (the backend its `gallery.json` names).
    #[staticmethod]
    fn open(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let store = py.allow_threads(|| gal::open(&path)).map_err(gallery_err)?;
        Ok(Self { store })
    }

    /// Creates an empty gallery of dimension `dim` in `path`: `backend` "hnsw" (embedded, the
    /// project's engine, float32; the default), "usearch" (embedded; `quantization` "f32",
    /// "bf16" or "f16": the index's precision; the default when `quantization` is not "f32")
    /// or "milvus" (`milvus_uri`, `milvus_collection`).
    #[staticmethod]
    #[pyo3(signature = (path, dim, backend=None, milvus_uri=None, milvus_collection=None, quantization="f32"))]
    fn create(
        py: Python<'_>,
        path: PathBuf,
        dim: usize,
        backend: Option<&str>,
        milvus_uri: Option<String>,
        milvus_collection: Option<String>,
        quantization: &str,
    ) -> PyResult<Self> {
        let cfg = if backend == Some("milvus") {
            let mut m = MilvusConfig::default();
            if let Some(u) = milvus_uri {
                m.uri = u;
            }
            if let Some(c) = milvus_collection {
                m.collection = c;
            }
            BackendConfig::Milvus(m)
        } else {
            let settings = UsearchConfig {
                quantization: Quantization::parse(quantization).map_err(gallery_err)?,
                ..Default::default()
            };
            gal::embedded_backend(backend, settings).map_err(gallery_err)?
        };
        let store = py
            .allow_threads(|| gal::create(&path, GalleryManifest::new(dim), &cfg))
            .map_err(gallery_err)?;
        Ok(Self { store })
    }

    /// The vectors' dimension.
    #[getter]
    fn dim(&self) -> usize {
        self.store.manifest().dim
    }

    /// The backend's name.
    #[getter]
    fn backend(&self) -> &'static str {
        self.store.backend()
    }

    fn __len__(&self) -> usize {
        self.store.len()
    }

    /// The approximate index's candidate list size while searching (larger: slower and more
    /// exact); for this handle only, not saved.
    fn set_search_expansion(&mut self, ef: usize) -> PyResult<()> {
        self.store.set_search_expansion(ef).map_err(gallery_err)
    }

    /// Items per model id.
    fn counts(&self) -> PyResult<std::collections::BTreeMap<String, usize>> {
        self.store.counts().map_err(gallery_err)
    }

    /// The registered models, as the manifest's JSON.
    fn manifest(&self) -> String {
        serde_json::to_string(self.store.manifest()).expect("manifests serialise")
    }

    /// Adds `vectors` `[n, dim]` under a model (`card`: a `bcl` model's card JSON; else the
    /// outside model `model`) with consecutive ids from `first_id` (default: after the largest),
    /// after the lineage check (`force` overrides it); returns (first id, end id, verdict).
    #[pyo3(signature = (vectors, model=None, card=None, first_id=None, force=false))]
    fn add(
        &mut self,
        py: Python<'_>,
        vectors: PyReadonlyArray2<'_, f32>,
        model: Option<&str>,
        card: Option<&str>,
        first_id: Option<u64>,
        force: bool,
    ) -> PyResult<(u64, u64, String)> {
        let (v, dim) = rows("vectors", &vectors)?;
        let info = identity(model, card, dim)?
            .ok_or_else(|| PyValueError::new_err("add needs a model (a bcl.Model or a name)"))?;
        let opts = EmbedOptions {
            force,
            ..Default::default()
        };
        let store = &mut self.store;
        let (lineage, range) = py
            .allow_threads(|| {
                ops::add_vectors(store.as_mut(), &info, first_id, &v, &opts, &mut |_, _| {})
            })
            .map_err(gallery_err)?;
        Ok((range.start, range.end, ops::lineage_text(&lineage)))
    }

    /// The `k` nearest items of each query row (`exact`: brute force, else the approximate
    /// index), checked against the lineage of the query model when one is named; returns
    /// (ids `[Q, k]`, scores `[Q, k]`, verdict or None). Rows shorter than `k` (a gallery with
    /// fewer items) are padded with id 2^64-1 and score -inf.
    #[pyo3(signature = (queries, k=10, model=None, card=None, exact=true, force=false))]
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn search<'py>(
        &self,
        py: Python<'py>,
        queries: PyReadonlyArray2<'py, f32>,
        k: usize,
        model: Option<&str>,
        card: Option<&str>,
        exact: bool,
        force: bool,
    ) -> PyResult<(
        Bound<'py, PyArray2<u64>>,
        Bound<'py, PyArray2<f32>>,
        Option<String>,
    )> {
        let (q, dim) = rows("queries", &queries)?;
        let info = identity(model, card, dim)?;
        let store = &self.store;
        let (lineage, hits) = py
            .allow_threads(|| ops::search(store.as_ref(), info.as_ref(), &q, k, exact, force))
            .map_err(gallery_err)?;
        let (ids, scores) = hit_arrays(py, &hits, k)?;
        Ok((ids, scores, lineage.as_ref().map(ops::lineage_text)))
    }

    /// As `search`, the query rows being the query model's own embeddings, mapped into the
    /// gallery's space by `adapter` first (`companion`: the gallery's model's embeddings of
    /// the same queries, for slerp); the lineage check asks that the adapter was fitted for
    /// this query model and the gallery's model.
    #[pyo3(signature = (queries, adapter, k=10, model=None, card=None, companion=None, exact=true, force=false))]
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn search_adapted<'py>(
        &self,
        py: Python<'py>,
        queries: PyTensor,
        adapter: PyRef<'py, crate::adapters::AdapterCore>,
        k: usize,
        model: Option<&str>,
        card: Option<&str>,
        companion: Option<PyTensor>,
        exact: bool,
        force: bool,
    ) -> PyResult<(Bound<'py, PyArray2<u64>>, Bound<'py, PyArray2<f32>>, String)> {
        let dim = queries.0.size().last().copied().unwrap_or(0).max(0) as usize;
        let Some(info) = identity(model, card, dim)? else {
            return Err(PyValueError::new_err(
                "model: searching through an adapter needs the query model (a bcl.Model or a name)",
            ));
        };
        let c = companion.map(|c| c.0);
        let mapped = adapter
            .adapter
            .apply(&queries.0, c.as_ref())
            .map_err(crate::adapters::adapt_err)?;
        let q = Vec::<f32>::try_from(mapped.contiguous().view([-1]))
            .map_err(|e| PyValueError::new_err(format!("queries: {e}")))?;
        let link = gal::AdapterLink::from_card(&adapter.adapter.card);
        let store = &self.store;
        let (lineage, hits) = py
            .allow_threads(|| {
                ops::search_adapted(store.as_ref(), &info, &link, &q, k, exact, force)
            })
            .map_err(gallery_err)?;
        let (ids, scores) = hit_arrays(py, &hits, k)?;
        Ok((ids, scores, ops::lineage_text(&lineage)))
    }

    /// A summary: backend, dimension, items, items per model name.
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("backend", self.store.backend())?;
        d.set_item("dim", self.store.manifest().dim)?;
        d.set_item("items", self.store.len())?;
        let manifest = self.store.manifest();
        let per_name = PyDict::new(py);
        for (id, n) in self.store.counts().map_err(gallery_err)? {
            let name = manifest.model(&id).map_or(id.clone(), |m| m.name.clone());
            per_name.set_item(name, n)?;
        }
        d.set_item("models", per_name)?;
        Ok(d)
    }
}
