//! The compatibility losses for PyTorch training loops: a handle on one registered method's
//! `CompatLoss`, built from the method's settings (JSON of a `[compat]` table) and the old
//! prototypes / old feature bank, called on torch tensors shared with Python (pyo3-tch: the
//! same `at::Tensor`, so autograd flows from the loss back into the caller's model). The Python
//! class `bcl.losses.CompatLoss` wraps it as a `torch.nn.Module`.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3_tch::PyTensor;
use tch::{nn, Kind, Tensor};

use bcl::loss::{BuildContext, CompatConfig, CompatInputs, CompatLoss, Method};

fn value_err(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// Checks a `[rows, cols]` floating-point tensor of finite values; returns its shape.
fn check_matrix(name: &str, t: &Tensor) -> PyResult<(i64, i64)> {
    let size = t.size();
    let [r, c] = size[..] else {
        return Err(value_err(format!(
            "{name}: expected a 2-d tensor, got shape {size:?}"
        )));
    };
    if !t.is_floating_point() {
        return Err(value_err(format!(
            "{name}: expected floating-point values, got {:?}",
            t.kind()
        )));
    }
    if r == 0 || c == 0 {
        return Err(value_err(format!("{name}: empty tensor of shape {size:?}")));
    }
    let finite = tch::no_grad(|| t.isfinite().all().int64_value(&[]) == 1);
    if !finite {
        return Err(value_err(format!("{name}: holds NaN or infinite values")));
    }
    Ok((r, c))
}

/// Checks a vector of `rows` integer labels in `0..classes`.
fn check_labels(name: &str, y: &Tensor, rows: i64, classes: Option<i64>) -> PyResult<()> {
    let size = y.size();
    if size != [rows] {
        return Err(value_err(format!(
            "{name}: expected {rows} labels, got shape {size:?}"
        )));
    }
    if y.is_floating_point() || y.kind() == Kind::Bool {
        return Err(value_err(format!(
            "{name}: expected integer labels, got {:?}",
            y.kind()
        )));
    }
    if let (Some(c), true) = (classes, rows > 0) {
        let (lo, hi) = tch::no_grad(|| (y.min().int64_value(&[]), y.max().int64_value(&[])));
        if lo < 0 || hi >= c {
            return Err(value_err(format!(
                "{name}: labels lie in {lo}..={hi}, the prototypes cover 0..{c}"
            )));
        }
    }
    Ok(())
}

/// One registered method's compatibility loss.
#[pyclass(unsendable, module = "bcl._bcl")]
pub struct CompatLossCore {
    method: Method,
    loss: Box<dyn CompatLoss>,
    /// The method's own trainable variables (AdvBCT's discriminator and radii), shared with
    /// Python as tensors for its optimiser; empty for the other methods.
    vars: nn::VarStore,
    /// `(classes, dim)` of the prototypes, when the method has them.
    table: Option<(i64, i64)>,
}

#[pymethods]
impl CompatLossCore {
    /// Builds `method`'s loss: `settings` is the JSON of a `[compat]` table (lambda, scale,
    /// refresh, the method's own section); `prototypes` the old class prototypes `[C, d]`
    /// (normalised here), `old_bank` / `old_bank_labels` a per-class sample of old features.
    #[new]
    #[pyo3(signature = (method, settings, prototypes=None, old_bank=None, old_bank_labels=None))]
    fn new(
        method: &str,
        settings: &str,
        prototypes: Option<PyTensor>,
        old_bank: Option<PyTensor>,
        old_bank_labels: Option<PyTensor>,
    ) -> PyResult<Self> {
        let method = Method::named(method).map_err(value_err)?;
        if !method.has_loss() {
            return Err(value_err(format!(
                "{method} has no compatibility loss: train with the classification loss only"
            )));
        }
        let mut cfg: CompatConfig =
            serde_json::from_str(settings).map_err(|e| value_err(format!("settings: {e}")))?;
        cfg.complete();
        cfg.validate().map_err(value_err)?;
        let mut ctx = BuildContext::default();
        let mut table = None;
        if method.needs_prototypes() {
            let p = prototypes.ok_or_else(|| {
                value_err(format!(
                    "{method} needs the old prototypes (old_prototypes)"
                ))
            })?;
            table = Some(check_matrix("old_prototypes", &p)?);
            ctx.prototypes = Some(bcl::model::l2_normalize(&p.detach().to_kind(Kind::Float)));
        }
        if method.needs_old_bank() {
            let (Some(b), Some(y)) = (old_bank, old_bank_labels) else {
                return Err(value_err(format!(
                    "{method} needs a bank of old features and their labels (old_bank, old_bank_labels)"
                )));
            };
            let (rows, dim) = check_matrix("old_bank", &b)?;
            if let Some((_, d)) = table {
                if dim != d {
                    return Err(value_err(format!(
                        "old_bank: dimension {dim}, the prototypes' is {d}"
                    )));
                }
            }
            check_labels("old_bank_labels", &y, rows, table.map(|t| t.0))?;
            ctx.old_bank = Some((
                bcl::model::l2_normalize(&b.detach().to_kind(Kind::Float)),
                y.detach().to_kind(Kind::Int64),
            ));
        }
        let device = ctx
            .prototypes
            .as_ref()
            .map_or(tch::Device::Cpu, |p| p.device());
        let mut loss = method.build(&cfg, ctx).map_err(value_err)?;
        let vars = nn::VarStore::new(device);
        loss.init_params(&vars.root());
        Ok(Self {
            method,
            loss,
            vars,
            table,
        })
    }

    /// The method's name.
    #[getter]
    fn method(&self) -> &'static str {
        self.method.as_str()
    }

    /// λ, the weight of the loss in the total.
    #[getter]
    fn weight(&self) -> f64 {
        self.loss.weight()
    }

    /// Whether `forward` needs the old model's embeddings of the batch.
    #[getter]
    fn needs_old_embeddings(&self) -> bool {
        self.loss.needs_old_embeddings()
    }

    /// The unweighted loss on a batch (`None` for a method without one on this batch).
    #[pyo3(signature = (new, labels, old=None, classifier=None, progress=0.0))]
    fn forward(
        &self,
        new: PyTensor,
        labels: PyTensor,
        old: Option<PyTensor>,
        classifier: Option<PyTensor>,
        progress: f64,
    ) -> PyResult<Option<PyTensor>> {
        let (b, d) = check_matrix("new_features", &new)?;
        if let Some((_, pd)) = self.table {
            if d != pd {
                return Err(value_err(format!(
                    "new_features: dimension {d}, the old prototypes' is {pd}"
                )));
            }
        }
        check_labels("labels", &labels, b, self.table.map(|t| t.0))?;
        let y = labels.to_kind(Kind::Int64);
        if let Some(o) = &old {
            let shape = check_matrix("old_features", o)?;
            if shape != (b, d) {
                return Err(value_err(format!(
                    "old_features: shape {shape:?}, the new features' is {:?}",
                    (b, d)
                )));
            }
        } else if self.loss.needs_old_embeddings() {
            return Err(value_err(format!(
                "{} needs the old model's embeddings of the batch (old_features)",
                self.method
            )));
        }
        if let Some(w) = &classifier {
            check_matrix("classifier", w)?;
        }
        let mut inputs = CompatInputs::new(&new, &y);
        inputs.old = old.as_deref();
        inputs.classifier = classifier.as_deref();
        inputs.progress = progress;
        let loss = self.loss.loss(&inputs).map_err(value_err)?;
        Ok(loss.map(PyTensor))
    }

    /// The size of the feature bank a refresh wants before batch `batch` of `epoch` (global
    /// step `step`), or `None` when none is due.
    fn refresh_due(&self, epoch: usize, batch: usize, step: usize) -> Option<usize> {
        self.loss.refresh_due(epoch, batch, step)
    }

    /// Refreshes the method's state (NDPP/ODPP/UniBCT: the perturbation Δ) from a bank of
    /// current new features; returns the refresh's diagnostics as JSON, or `None`.
    #[pyo3(signature = (bank, labels, epoch=0, step=0))]
    fn refresh(
        &mut self,
        bank: PyTensor,
        labels: PyTensor,
        epoch: usize,
        step: usize,
    ) -> PyResult<Option<String>> {
        let (rows, _) = check_matrix("bank", &bank)?;
        check_labels("bank_labels", &labels, rows, self.table.map(|t| t.0))?;
        let f = bcl::model::l2_normalize(&bank.detach().to_kind(Kind::Float));
        let y = labels.to_kind(Kind::Int64);
        Ok(self
            .loss
            .refresh(&f, &y, epoch, step)
            .map_err(|e| crate::BclError::new_err(e.to_string()))?
            .map(|s| serde_json::to_string(&s).expect("stats serialise")))
    }

    /// Sees a batch's detached new features (moving-average prototypes).
    fn observe(&mut self, new: PyTensor, labels: PyTensor) -> PyResult<()> {
        let (b, _) = check_matrix("new_features", &new)?;
        check_labels("labels", &labels, b, self.table.map(|t| t.0))?;
        self.loss
            .observe(&new.detach(), &labels.to_kind(Kind::Int64));
        Ok(())
    }

    /// The method's state (Δ, the old prototypes, moving averages) by name.
    fn state(&self) -> Vec<(String, PyTensor)> {
        self.loss
            .state()
            .into_iter()
            .map(|(n, t)| (n, PyTensor(t)))
            .collect()
    }

    /// The method's own trainable variables by name (the same tensors the loss uses: an
    /// optimiser in Python that steps them trains them).
    fn parameters(&self) -> Vec<(String, PyTensor)> {
        let mut v: Vec<(String, Tensor)> = self.vars.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.into_iter().map(|(n, t)| (n, PyTensor(t))).collect()
    }

    /// Restores a `state()`.
    fn load_state(&mut self, state: Vec<(String, PyTensor)>) {
        let s: Vec<(String, Tensor)> = state.into_iter().map(|(n, t)| (n, t.0)).collect();
        self.loss.load_state(&s);
    }
}
