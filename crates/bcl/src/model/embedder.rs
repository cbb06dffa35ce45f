//! The `Embedder`: a model frozen for inference with its card, loaded with its weights' id
//! checked, run under its execution settings, embedding data sets in batches (alone or shared
//! among the ranks of a data-parallel run).

use std::path::{Path, PathBuf};

use tch::nn;
use tch::{Device, Kind, Tensor};

use super::{file_id, EmbeddingNet, ModelCard, ModelError};
use crate::data::Dataset;

/// A model frozen for inference, with its card.
pub struct Embedder {
    /// The card.
    pub card: ModelCard,
    /// Where it was loaded from.
    pub dir: PathBuf,
    vs: nn::VarStore,
    net: EmbeddingNet,
    exec: crate::exec::ExecConfig,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("card", &self.card)
            .finish()
    }
}

impl Embedder {
    /// Loads a model directory (or its `model.json`) onto `device`, verifying the weights' id.
    pub fn load(path: &Path, device: Device) -> Result<Self, ModelError> {
        let dir = if path.is_file() {
            path.parent().unwrap_or(Path::new(".")).to_path_buf()
        } else {
            path.to_path_buf()
        };
        let md = crate::layout::ModelDir::new(&dir);
        let card = ModelCard::read(&md.card())?;
        card.arch.validate()?;
        let wpath = md.weights();
        let id = file_id(&wpath)?;
        if id != card.id {
            return Err(ModelError::Weights {
                path: wpath,
                reason: format!(
                    "content id {id} does not match the card's id {}: the weights were changed or belong to another model",
                    card.id
                ),
            });
        }
        let mut vs = nn::VarStore::new(device);
        let net = EmbeddingNet::new(&(vs.root() / "net"), &card.arch);
        vs.load_partial(&wpath).map_err(|e| ModelError::Weights {
            path: wpath.clone(),
            reason: e.to_string(),
        })?;
        // load_partial tolerates missing names: check the net is complete.
        let stored: std::collections::HashSet<String> = tch::Tensor::read_safetensors(&wpath)
            .map_err(|e| ModelError::Weights {
                path: wpath.clone(),
                reason: e.to_string(),
            })?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        if let Some(missing) = vs.variables().keys().find(|k| !stored.contains(*k)) {
            return Err(ModelError::Weights {
                path: wpath,
                reason: format!("variable '{missing}' is missing: the file does not match the card's architecture"),
            });
        }
        vs.freeze();
        Ok(Self {
            card,
            dir,
            vs,
            net,
            exec: Default::default(),
        })
    }

    /// The same model run with `exec`'s settings (bfloat16 autocast, channels-last): its
    /// weights are laid out for them now, and a one-image pass checks libtorch accepts them.
    pub fn with_exec(mut self, exec: crate::exec::ExecConfig) -> Result<Self, ModelError> {
        let fail = |e: crate::exec::ExecError| ModelError::Exec(e.to_string());
        exec.prepare(&self.vs).map_err(fail)?;
        self.exec = exec;
        let a = &self.card.arch;
        let probe = Tensor::zeros([1, a.in_channels, 32, 32], (Kind::Float, self.device()));
        let _ = tch::no_grad(|| self.net.forward_exec(&probe, false, &exec)).map_err(fail)?;
        Ok(self)
    }

    /// The execution settings the model runs with.
    pub fn exec(&self) -> crate::exec::ExecConfig {
        self.exec
    }

    /// The device the model runs on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The dimension of its own embeddings (its own gallery's).
    pub fn dim(&self) -> i64 {
        self.card.arch.dim
    }

    /// The dimension its projection head maps into (the model it is compatible with), when it
    /// embeds in another dimension than that model.
    pub fn compat_dim(&self) -> Option<i64> {
        self.net.compat_dim()
    }

    /// Its normalised embeddings `own` `[N, dim]` (on any device) in the space of the model it
    /// is compatible with: through the projection head where it has one, unchanged where it
    /// embeds in that model's dimension. CPU, f32, like the embedding passes.
    pub fn to_compat_space(&self, own: &Tensor) -> Tensor {
        if self.net.compat_dim().is_none() {
            return own.shallow_clone();
        }
        tch::no_grad(|| {
            self.net
                .to_compat_space(&own.to_device(self.device()).to_kind(Kind::Float))
                .to_device(Device::Cpu)
        })
    }

    /// Its embeddings `own` where they can be searched against a gallery of `dim`-dimensional
    /// vectors embedded by a model it is compatible with: unchanged when `dim` is its own,
    /// through its projection head when `dim` is the head's, otherwise an error saying so.
    pub fn queries_for(&self, own: &Tensor, dim: i64) -> Result<Tensor, ModelError> {
        if dim == self.dim() {
            return Ok(own.shallow_clone());
        }
        match self.compat_dim() {
            Some(c) if c == dim => Ok(self.to_compat_space(own)),
            c => Err(ModelError::Config(format!(
                "{}: the model embeds in dimension {}{}, the gallery holds {dim}-dimensional \
                 vectors: it cannot query them (an adapter fitted between the two models can)",
                self.dir.display(),
                self.dim(),
                match c {
                    Some(c) => format!(" and projects into {c}"),
                    None => String::new(),
                }
            ))),
        }
    }

    /// Normalised embeddings of a prepared batch (no gradient).
    pub fn embed_batch(&self, x: &Tensor) -> Tensor {
        let plain = || tch::no_grad(|| self.net.forward_t(x, false));
        if self.exec.is_default() {
            return plain();
        }
        match tch::no_grad(|| self.net.forward_exec(x, false, &self.exec)) {
            Ok(f) => f,
            // with_exec ran the same calls on a probe; should libtorch refuse them later, the
            // batch is embedded in float32 rather than lost
            Err(e) => {
                tracing::error!("{e}; embedding this batch in float32");
                plain()
            }
        }
    }

    /// Normalised embeddings `[N, d]` (CPU, f32) of every item of `data`, in order.
    pub fn embed_dataset(&self, data: &Dataset, batch: usize) -> Tensor {
        let idx: Vec<usize> = (0..data.len()).collect();
        self.embed_positions(data, &idx, batch)
    }

    /// As [`Embedder::embed_dataset`], shared among the ranks of `dist` (see
    /// [`Embedder::embed_positions_on`]).
    pub fn embed_dataset_on(
        &self,
        data: &Dataset,
        batch: usize,
        dist: &dyn bcl_dist::Collective,
    ) -> Result<Tensor, bcl_dist::DistError> {
        let idx: Vec<usize> = (0..data.len()).collect();
        self.embed_positions_on(data, &idx, batch, dist)
    }

    /// As [`Embedder::embed_positions`], shared among the ranks of `dist`: each embeds its
    /// contiguous share of `positions` and every rank gets the whole, in order.
    pub fn embed_positions_on(
        &self,
        data: &Dataset,
        positions: &[usize],
        batch: usize,
        dist: &dyn bcl_dist::Collective,
    ) -> Result<Tensor, bcl_dist::DistError> {
        let [f] = bcl_dist::share_rows(dist, positions, |mine| {
            Ok::<_, bcl_dist::DistError>([match mine.is_empty() {
                true => Tensor::zeros([0, self.card.arch.dim], (Kind::Float, Device::Cpu)),
                false => self.embed_positions(data, mine, batch),
            }])
        })?;
        Ok(f)
    }

    /// Normalised embeddings `[positions.len(), d]` (CPU, f32) of the items of `data` at
    /// `positions`, in that order.
    pub fn embed_positions(&self, data: &Dataset, positions: &[usize], batch: usize) -> Tensor {
        let chunks: Vec<Tensor> = positions
            .chunks(batch.max(1))
            .map(|c| {
                let (x, _) = data.batch(c, self.card.normalization, None, self.device());
                self.embed_batch(&x).to_device(Device::Cpu)
            })
            .collect();
        Tensor::cat(&chunks, 0)
    }
}
