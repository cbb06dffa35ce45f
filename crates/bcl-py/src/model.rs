//! A trained `bcl` model from Python: its card and its embeddings of raw images (the model's
//! own normalisation applied), so a PyTorch script can take an old `bcl` model's prototypes or
//! search a gallery it embedded.

use std::path::PathBuf;

use numpy::{PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyFileNotFoundError, PyValueError};
use pyo3::prelude::*;
use pyo3_tch::PyTensor;

use bcl::data::Dataset;
use bcl::model::Embedder;

/// A trained model directory (`model.json` and `model.safetensors`), loaded on the CPU.
#[pyclass(unsendable, module = "bcl._bcl")]
pub struct ModelCore {
    emb: Embedder,
}

#[pymethods]
impl ModelCore {
    /// Loads the model in `path` (its weights checked against the card's content id).
    #[new]
    fn new(path: PathBuf) -> PyResult<Self> {
        if !path.exists() {
            return Err(PyFileNotFoundError::new_err(format!(
                "{}: no such model directory",
                path.display()
            )));
        }
        let emb = Embedder::load(&path, tch::Device::Cpu)
            .map_err(|e| crate::BclError::new_err(e.to_string()))?;
        Ok(Self { emb })
    }

    /// The model card as JSON.
    fn card(&self) -> String {
        serde_json::to_string(&self.emb.card).expect("cards serialise")
    }

    /// Normalised embeddings `[N, d]` of `pixels`, uint8 images `[N, H, W]` (grey) or
    /// `[N, C, H, W]` in the model's input shape.
    #[pyo3(signature = (pixels, batch=256))]
    fn embed(&self, pixels: PyReadonlyArrayDyn<'_, u8>, batch: usize) -> PyResult<PyTensor> {
        let shape = pixels.shape().to_vec();
        let [c, h, w] = self.emb.card.input_shape;
        let n =
            match shape[..] {
                [n, hh, ww] if c == 1 && (hh, ww) == (h, w) => n,
                [n, cc, hh, ww] if (cc, hh, ww) == (c, h, w) => n,
                _ => {
                    return Err(PyValueError::new_err(format!(
                    "pixels: shape {shape:?}, the model takes [N, {c}, {h}, {w}] uint8 images{}",
                    if c == 1 { format!(" (or [N, {h}, {w}])") } else { String::new() }
                )))
                }
            };
        if n == 0 {
            return Err(PyValueError::new_err("pixels: no image"));
        }
        let data = Dataset {
            pixels: pixels
                .to_vec()
                .map_err(|e| PyValueError::new_err(e.to_string()))?,
            labels: vec![0; n],
            ids: (0..n).collect(),
            channels: c,
            rows: h,
            cols: w,
            classes: 1,
        };
        // The GIL stays held: the model's tensors are not `Sync`, so another thread may not
        // share them while this one embeds.
        Ok(PyTensor(self.emb.embed_dataset(&data, batch.max(1))))
    }

    /// The model's embeddings `[N, dim]` in the space of the model it is compatible with:
    /// through its projection head where it embeds in another dimension, unchanged otherwise.
    fn to_compat_space(&self, embeddings: PyTensor) -> PyResult<PyTensor> {
        let t = &embeddings.0;
        let d = self.emb.dim();
        if t.dim() != 2 || t.size()[1] != d {
            return Err(PyValueError::new_err(format!(
                "embeddings: shape {:?}, expected [N, {d}] (this model's own embeddings)",
                t.size()
            )));
        }
        if !t.is_floating_point() {
            return Err(PyValueError::new_err(format!(
                "embeddings: dtype {:?}, expected a floating-point tensor",
                t.kind()
            )));
        }
        Ok(PyTensor(self.emb.to_compat_space(t)))
    }
}
