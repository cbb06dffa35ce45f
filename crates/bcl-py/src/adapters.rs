//! Adapters from Python: fit one on paired embeddings (torch tensors), apply it, save and load
//! it in the CLI's format (`adapter.safetensors` + `adapter.json`), so that `bcl adapt`,
//! `bcl gallery search --adapter` and Python share one adapter.

use std::path::PathBuf;

use pyo3::exceptions::{PyFileNotFoundError, PyValueError};
use pyo3::prelude::*;
use pyo3_tch::PyTensor;

use bcl::adapt::{self, AdaptError, Adapter, FitConfig, ModelRef, Models, SupportSet};

/// An adapter error as a Python exception: unusable input or settings are a `ValueError`, the
/// rest (damaged files, an adapter for other models) a `bcl.BclError`.
pub(crate) fn adapt_err(e: AdaptError) -> PyErr {
    match e {
        AdaptError::Input { .. } | AdaptError::Settings(_) | AdaptError::UnknownKind(_) => {
            PyValueError::new_err(e.to_string())
        }
        other => crate::BclError::new_err(other.to_string()),
    }
}

/// One side of an adapter: a model card (JSON), or the name of an outside model.
fn side(card: Option<&str>, name: Option<&str>, dim: usize) -> PyResult<ModelRef> {
    match (card, name) {
        (Some(c), _) => {
            let card: bcl::model::ModelCard = serde_json::from_str(c)
                .map_err(|e| PyValueError::new_err(format!("model card: {e}")))?;
            Ok(ModelRef {
                id: Some(card.id),
                name: Some(card.name),
                dim: card.arch.dim as usize,
            })
        }
        (None, Some(n)) if !n.is_empty() => Ok(ModelRef {
            id: Some(n.to_string()),
            name: Some(n.to_string()),
            dim,
        }),
        (None, Some(_)) => Err(PyValueError::new_err("model: an empty name")),
        (None, None) => Ok(ModelRef {
            dim,
            ..ModelRef::default()
        }),
    }
}

/// A fitted adapter.
#[pyclass(unsendable, module = "bcl._bcl")]
pub struct AdapterCore {
    pub(crate) adapter: Adapter,
}

#[pymethods]
impl AdapterCore {
    /// Fits an adapter of `kind` on paired embeddings `old` `[N, d_old]` and `new`
    /// `[N, d_new]` of the same items (optional class labels, side information, settings as
    /// JSON with the sections of `bcl adapt fit --settings`); each side named by a model card
    /// or a name (the gallery's lineage check reads them).
    #[staticmethod]
    #[pyo3(signature = (kind, old, new, labels=None, side_info=None, settings=None, seed=None, alpha=None, old_card=None, old_name=None, new_card=None, new_name=None))]
    #[allow(clippy::too_many_arguments)]
    fn fit(
        kind: &str,
        old: PyTensor,
        new: PyTensor,
        labels: Option<Vec<i64>>,
        side_info: Option<PyTensor>,
        settings: Option<&str>,
        seed: Option<u64>,
        alpha: Option<f64>,
        old_card: Option<&str>,
        old_name: Option<&str>,
        new_card: Option<&str>,
        new_name: Option<&str>,
    ) -> PyResult<Self> {
        let mut cfg: FitConfig = match settings {
            Some(t) => serde_json::from_str(t)
                .map_err(|e| PyValueError::new_err(format!("settings: {e}")))?,
            None => FitConfig::default(),
        };
        if let Some(s) = seed {
            cfg.seed = s;
        }
        if let Some(a) = alpha {
            cfg.slerp.alpha = Some(a);
        }
        let mut support = SupportSet::new(&old.0, &new.0)
            .map_err(adapt_err)?
            .with_source("tensors from Python");
        if let Some(l) = labels {
            support = support.with_labels(l).map_err(adapt_err)?;
        }
        if let Some(s) = side_info {
            support = support.with_side(&s.0).map_err(adapt_err)?;
        }
        let models = Models {
            old: side(old_card, old_name, support.old_dim())?,
            new: side(new_card, new_name, support.new_dim())?,
        };
        let adapter =
            Adapter::fit(kind, &support, &cfg, &models, tch::Device::Cpu).map_err(adapt_err)?;
        Ok(Self { adapter })
    }

    /// Loads the adapter in `path` (its directory or its `adapter.json`).
    #[staticmethod]
    fn load(path: PathBuf) -> PyResult<Self> {
        if !path.exists() {
            return Err(PyFileNotFoundError::new_err(format!(
                "{}: no such adapter",
                path.display()
            )));
        }
        Ok(Self {
            adapter: Adapter::load(&path).map_err(adapt_err)?,
        })
    }

    /// Writes `adapter.safetensors` and `adapter.json` into the directory `path`.
    fn save(&mut self, path: PathBuf) -> PyResult<()> {
        self.adapter.save(&path).map_err(adapt_err)
    }

    /// The adapter card as JSON.
    fn card(&self) -> String {
        serde_json::to_string(&self.adapter.card).expect("cards serialise")
    }

    /// Maps `x` `[N, d_from]` into the target space (L2-normalised); `companion` is the old
    /// model's embedding of the same queries (slerp) or side information (forward).
    #[pyo3(signature = (x, companion=None))]
    fn apply(&self, x: PyTensor, companion: Option<PyTensor>) -> PyResult<PyTensor> {
        let c = companion.map(|c| c.0);
        self.adapter
            .apply(&x.0, c.as_ref())
            .map(PyTensor)
            .map_err(adapt_err)
    }
}

/// The adapter kinds: (name, direction, description) each.
#[pyfunction]
pub fn adapter_kinds() -> Vec<(String, String, String)> {
    adapt::KINDS
        .iter()
        .map(|k| {
            (
                k.name().to_string(),
                k.direction().to_string(),
                k.description().to_string(),
            )
        })
        .collect()
}
