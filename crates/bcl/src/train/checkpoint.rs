//! The run directory's checkpoint: `checkpoint/` holds the weights, the optimiser's momentum,
//! the compatibility method's state and `state.json` (epochs done, the configuration string,
//! the history), written in that order and each atomically, so that an interrupted run resumes
//! from its last whole epoch and a run of another configuration is refused.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use super::{EpochStats, Sgd, TrainConfig, TrainError, TrainOutcome};
use crate::layout::ModelDir;
use crate::loss::CompatLoss;
use crate::model::{ModelCard, ModelConfig};
use crate::perturb::RefreshStats;

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CheckpointState {
    pub(crate) epochs_done: usize,
    pub(crate) config: String,
    pub(crate) history: Vec<EpochStats>,
    #[serde(default)]
    pub(crate) refreshes: Vec<RefreshStats>,
    /// The number of ranks that trained it (1 when the file predates data parallelism).
    #[serde(default = "one")]
    pub(crate) world_size: usize,
}

fn one() -> usize {
    1
}

pub(crate) fn ckpt_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Saves named tensors as safetensors atomically (`files::write_atomic_with`: a temporary file
/// in the same directory, synced, renamed over `path`, the directory synced).
pub fn save_safetensors_atomic(
    path: &Path,
    tensors: &[(String, Tensor)],
) -> Result<(), TrainError> {
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.to_device(Device::Cpu).contiguous()))
        .collect();
    // a FileError names the file itself
    crate::files::write_atomic_with(path, |tmp| {
        Tensor::write_safetensors(&cpu, tmp).map_err(|e| e.to_string())
    })?;
    Ok(())
}

/// Name of the variable-store path under which a compatibility loss keeps its variables.
pub const COMPAT_VARS: &str = "compat";

/// Every variable of `vs`, sorted by name.
pub(crate) fn named_vars(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The string a checkpoint records to tell whether a resumed run is the same run.
pub fn job_config_string(
    model: &ModelConfig,
    train: &TrainConfig,
    method: &str,
    note: &str,
    split_fingerprint: &str,
) -> String {
    serde_json::to_string(&(model, train, method, note, split_fingerprint))
        .expect("config serialises")
}

/// Reads a checkpoint's state file; a checkpoint of another configuration is an error.
pub(crate) fn read_checkpoint_state(
    path: &Path,
    config_str: &str,
) -> Result<CheckpointState, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| ckpt_err(path, e))?;
    let st: CheckpointState = serde_json::from_str(&text).map_err(|e| ckpt_err(path, e))?;
    if st.config != config_str {
        return Err(TrainError::ConfigChanged {
            path: path.to_path_buf(),
        });
    }
    Ok(st)
}

/// As [`read_checkpoint_state`], for a run on `world` ranks: a checkpoint of another number of
/// ranks is refused (batch-norm statistics and the shards of each batch depend on it).
pub(crate) fn read_resumable_state(
    path: &Path,
    config_str: &str,
    world: usize,
) -> Result<CheckpointState, TrainError> {
    let st = read_checkpoint_state(path, config_str)?;
    if st.world_size != world {
        return Err(TrainError::WorldChanged {
            path: path.to_path_buf(),
            was: st.world_size,
            now: world,
        });
    }
    Ok(st)
}

/// The outcome of a run in `out` that already finished with the same configuration string
/// (so that callers can skip preparing a job that would do nothing); `None` when there is no
/// finished run there. A checkpoint of another configuration is an error.
pub fn finished_run(
    out: &Path,
    config_str: &str,
    epochs: usize,
) -> Result<Option<TrainOutcome>, TrainError> {
    let md = ModelDir::new(out);
    let state_path = md.checkpoint_state();
    let card_path = md.card();
    if !(state_path.exists() && card_path.exists()) {
        return Ok(None);
    }
    let st = read_checkpoint_state(&state_path, config_str)?;
    if st.epochs_done != epochs {
        return Ok(None);
    }
    Ok(Some(TrainOutcome {
        card: ModelCard::read(&card_path)?,
        history: st.history,
        dir: out.to_path_buf(),
        probe_features: None,
        refreshes: st.refreshes,
    }))
}

/// The checkpoint files of a run directory.
pub(crate) struct Checkpoint {
    dir: ModelDir,
    /// `checkpoint/state.json`.
    pub(crate) state: PathBuf,
}

impl Checkpoint {
    /// The checkpoint of the run in `out`.
    pub(crate) fn of(out: &Path) -> Self {
        let dir = ModelDir::new(out);
        Self {
            state: dir.checkpoint_state(),
            dir,
        }
    }

    /// Restores weights, momentum and the method's state saved by [`Checkpoint::save`].
    pub(crate) fn restore(
        &self,
        vs: &mut nn::VarStore,
        opt: &mut Sgd,
        compat: &mut dyn CompatLoss,
        device: Device,
    ) -> Result<(), TrainError> {
        let w = self.dir.checkpoint_weights();
        vs.load(&w).map_err(|e| ckpt_err(&w, e))?;
        let o = self.dir.checkpoint_optimizer();
        let state = Tensor::read_safetensors(&o).map_err(|e| ckpt_err(&o, e))?;
        opt.load_state(state, device);
        let c = self.dir.checkpoint_compat();
        if c.exists() {
            let state = Tensor::read_safetensors(&c).map_err(|e| ckpt_err(&c, e))?;
            compat.load_state(&state);
        }
        Ok(())
    }

    /// Saves the checkpoint after an epoch: weights and optimiser first, then the state file
    /// that names them.
    pub(crate) fn save(
        &self,
        vs: &nn::VarStore,
        opt: &Sgd,
        compat: &dyn CompatLoss,
        state: &CheckpointState,
    ) -> Result<(), TrainError> {
        let dir = self.dir.checkpoint();
        std::fs::create_dir_all(&dir).map_err(|e| ckpt_err(&dir, e))?;
        save_safetensors_atomic(&self.dir.checkpoint_weights(), &named_vars(vs))?;
        save_safetensors_atomic(&self.dir.checkpoint_optimizer(), &opt.state())?;
        let cstate = compat.state();
        if !cstate.is_empty() {
            save_safetensors_atomic(&self.dir.checkpoint_compat(), &cstate)?;
        }
        crate::files::write_json(&self.state, state)?;
        Ok(())
    }
}
