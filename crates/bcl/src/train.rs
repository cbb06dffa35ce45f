//! Training: one loop for every model (old or new, any compatibility method): learning-rate
//! schedule with warm-up, SGD with momentum, per-epoch checkpoints written atomically, resume,
//! progress and the per-epoch history.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::nn;
use tch::{Device, Kind, Tensor};

use crate::data::source::TrainData;
use crate::data::{epoch_order, per_class_sample, rng_for, AugmentConfig, Dataset, Normalization};
use crate::files::FileError;
use crate::loss::{ClassifierHead, CompatInputs, CompatLoss, HeadConfig};
use crate::model::{
    file_id, load_pretrained, Backbone, Embedder, EmbeddingNet, ModelCard, ModelConfig,
    BACKBONE_PATH, CARD_FILE, WEIGHTS_FILE,
};
use crate::perturb::RefreshStats;

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Writing or reading the run's files failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// A model file could not be handled.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// A training image could not be read (streamed data).
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// libtorch failed on a checkpoint file.
    #[error("{path}: {reason}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The output directory already holds a run and resuming was not asked for.
    #[error("{0}: already holds a training run; resume it or choose another output directory")]
    Exists(PathBuf),
    /// The checkpoint belongs to a run with another configuration.
    #[error("{path}: the checkpoint was made with another configuration; resume needs the same settings (or choose another output directory)")]
    ConfigChanged {
        /// The state file.
        path: PathBuf,
    },
    /// The loss became NaN or infinite.
    #[error(
        "training diverged at epoch {epoch}, step {step} (loss {loss}); lower the learning rate"
    )]
    Diverged {
        /// Epoch.
        epoch: usize,
        /// Step within the epoch.
        step: usize,
        /// The loss value.
        loss: f64,
    },
    /// The run stopped early on request; its checkpoint can be resumed.
    #[error("{dir}: stopped after {epochs_done} epochs as requested; resume it to continue")]
    Interrupted {
        /// Epochs completed so far.
        epochs_done: usize,
        /// The run directory.
        dir: PathBuf,
    },
    /// A configuration that cannot run.
    #[error("invalid training configuration: {0}")]
    Config(String),
}

/// Learning-rate schedule after warm-up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Schedule {
    /// Cosine decay from the base rate to zero over the steps after warm-up.
    Cosine,
    /// Multiply by `gamma` at each listed epoch.
    Step {
        /// Epochs at which the rate drops.
        milestones: Vec<usize>,
        /// Factor per drop.
        gamma: f64,
    },
}

/// Optimisation settings shared by every model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training items.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Base learning rate.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// Linear warm-up length in epochs (fractional allowed).
    pub warmup_epochs: f64,
    /// Schedule after warm-up.
    pub schedule: Schedule,
    /// Seed of initialisation, data order and augmentation.
    pub seed: u64,
    /// Augmentation.
    pub augment: AugmentConfig,
    /// Classification head.
    pub head: HeadConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 4,
            batch_size: 128,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            warmup_epochs: 0.3,
            schedule: Schedule::Cosine,
            seed: 1,
            augment: AugmentConfig::default(),
            head: HeadConfig::default(),
        }
    }
}

impl TrainConfig {
    /// Checks the configuration is usable.
    pub fn validate(&self) -> Result<(), TrainError> {
        if self.epochs == 0 || self.batch_size == 0 {
            return Err(TrainError::Config(
                "epochs and batch_size must be >= 1".into(),
            ));
        }
        if !(self.lr > 0.0 && self.lr.is_finite() && (0.0..1.0).contains(&self.momentum))
            || self.weight_decay < 0.0
        {
            return Err(TrainError::Config(format!(
                "need lr > 0, 0 <= momentum < 1, weight_decay >= 0; got lr {}, momentum {}, weight_decay {}",
                self.lr, self.momentum, self.weight_decay
            )));
        }
        if self.warmup_epochs < 0.0 || self.warmup_epochs > self.epochs as f64 {
            return Err(TrainError::Config(
                "warmup_epochs must lie in [0, epochs]".into(),
            ));
        }
        Ok(())
    }
}

/// The learning rate at global step `step` (0-based) of `total` steps with `per_epoch` per epoch.
pub fn lr_at(cfg: &TrainConfig, step: usize, total: usize, per_epoch: usize) -> f64 {
    let warm = (cfg.warmup_epochs * per_epoch as f64).round() as usize;
    if step < warm {
        return cfg.lr * (step + 1) as f64 / warm as f64;
    }
    match &cfg.schedule {
        Schedule::Cosine => {
            let span = total.saturating_sub(warm).max(1) as f64;
            let t = (step - warm) as f64 / span;
            0.5 * cfg.lr * (1.0 + (std::f64::consts::PI * t).cos())
        }
        Schedule::Step { milestones, gamma } => {
            let epoch = step / per_epoch.max(1);
            let drops = milestones.iter().filter(|&&m| epoch >= m).count();
            cfg.lr * gamma.powi(drops as i32)
        }
    }
}

/// SGD with momentum and decoupled-from-nothing (PyTorch-style) weight decay.
///
/// Written here rather than using `tch::nn::Sgd` because a resumable checkpoint needs the
/// momentum buffers, which tch's optimiser wrapper does not expose.
pub struct Sgd {
    params: Vec<(String, Tensor)>,
    bufs: Vec<Option<Tensor>>,
    momentum: f64,
    weight_decay: f64,
}

impl Sgd {
    /// An optimiser over the trainable variables of `vs`.
    pub fn new(vs: &nn::VarStore, momentum: f64, weight_decay: f64) -> Self {
        let mut params: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let bufs = params.iter().map(|_| None).collect();
        Self {
            params,
            bufs,
            momentum,
            weight_decay,
        }
    }

    /// Clears the gradients.
    pub fn zero_grad(&mut self) {
        for (_, p) in self.params.iter_mut() {
            p.zero_grad();
        }
    }

    /// One update with learning rate `lr`: `buf = μ·buf + (g + wd·w)`, `w -= lr·buf`.
    pub fn step(&mut self, lr: f64) {
        tch::no_grad(|| {
            for ((_, p), buf) in self.params.iter_mut().zip(self.bufs.iter_mut()) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let d = if self.weight_decay > 0.0 {
                    &g + &*p * self.weight_decay
                } else {
                    g
                };
                let b = match buf.take() {
                    None => d,
                    Some(mut b) => {
                        let _ = b.g_mul_scalar_(self.momentum).g_add_(&d);
                        b
                    }
                };
                let _ = p.g_sub_(&(&b * lr));
                *buf = Some(b);
            }
        });
    }

    /// The momentum buffers by variable name, for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.bufs)
            .filter_map(|((n, _), b)| b.as_ref().map(|b| (n.clone(), b.shallow_clone())))
            .collect()
    }

    /// Restores momentum buffers saved by [`Sgd::state`].
    pub fn load_state(&mut self, state: Vec<(String, Tensor)>, device: Device) {
        let map: std::collections::HashMap<String, Tensor> = state.into_iter().collect();
        for ((n, _), b) in self.params.iter().zip(self.bufs.iter_mut()) {
            *b = map.get(n).map(|t| t.to_device(device));
        }
    }
}

/// Figures of one epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochStats {
    /// Epoch number (1-based).
    pub epoch: usize,
    /// Learning rate at the epoch's last step.
    pub lr: f64,
    /// Mean classification loss.
    pub loss_cls: f64,
    /// Mean (unweighted) compatibility loss; 0 for none.
    pub loss_comp: f64,
    /// Mean total loss.
    pub loss_total: f64,
    /// Training accuracy of the head (no margin) on augmented batches.
    pub train_acc: f64,
    /// Wall time of the epoch in seconds.
    pub seconds: f64,
    /// Training throughput.
    pub images_per_s: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointState {
    epochs_done: usize,
    config: String,
    history: Vec<EpochStats>,
    #[serde(default)]
    refreshes: Vec<RefreshStats>,
}

/// Everything one training run needs.
pub struct TrainJob<'a> {
    /// Model name for the card (e.g. "old", "new-bct").
    pub name: String,
    /// Old or new.
    pub role: crate::model::Role,
    /// The training items (in memory or streamed from files), labels already in classifier
    /// order `0..classes.len()`.
    pub data: TrainData<'a>,
    /// Original labels of the classifier's classes.
    pub classes: Vec<i64>,
    /// Architecture.
    pub model: ModelConfig,
    /// Optimisation.
    pub train: TrainConfig,
    /// The compatibility term.
    pub compat: Box<dyn CompatLoss + 'a>,
    /// The frozen old model, for methods that need its embeddings.
    pub old: Option<&'a Embedder>,
    /// Fingerprint of the split the data come from.
    pub split_fingerprint: String,
    /// Where the model, its card, history and checkpoints go.
    pub out_dir: PathBuf,
    /// Continue from the last checkpoint in `out_dir`.
    pub resume: bool,
    /// Where to train.
    pub device: Device,
    /// Extra text for the card (e.g. λ).
    pub note: String,
    /// Show a progress bar.
    pub progress: bool,
    /// Stop after this many epochs in this call, leaving a checkpoint (a deliberate
    /// interruption: budgeted runs and resume tests); `None` trains to the end.
    pub stop_after: Option<usize>,
    /// Items to embed with the trained in-memory model before it is saved (lets a caller check
    /// that the saved model reproduces it); `None` for none.
    pub probe: Option<&'a Dataset>,
}

/// The result of a training run.
#[derive(Debug)]
pub struct TrainOutcome {
    /// The written model's card.
    pub card: ModelCard,
    /// Per-epoch figures.
    pub history: Vec<EpochStats>,
    /// The model directory.
    pub dir: PathBuf,
    /// Embeddings of [`TrainJob::probe`] by the in-memory model, when asked.
    pub probe_features: Option<Tensor>,
    /// Diagnostics of every refresh of the compatibility method's state (NDPP, ODPP).
    pub refreshes: Vec<RefreshStats>,
}

fn ckpt_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Saves named tensors as safetensors atomically (temp file in the same directory, then rename).
pub fn save_safetensors_atomic(
    path: &Path,
    tensors: &[(String, Tensor)],
) -> Result<(), TrainError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp.safetensors",
        path.file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("weights"),
        std::process::id()
    ));
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.to_device(Device::Cpu).contiguous()))
        .collect();
    Tensor::write_safetensors(&cpu, &tmp).map_err(|e| ckpt_err(&tmp, e))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| ckpt_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ckpt_err(path, e))?;
    Ok(())
}

/// Name of the variable-store path under which a compatibility loss keeps its variables.
pub const COMPAT_VARS: &str = "compat";

fn named_vars(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Maps a batch normalised for one model to another model's normalisation.
pub fn renormalize(x: &Tensor, from: Normalization, to: Normalization) -> Tensor {
    if from == to {
        return x.shallow_clone();
    }
    (x * from.std + from.mean - to.mean) / to.std
}

/// Normalised embeddings (eval mode, no gradient) of the items `idx` of `data`, with their labels.
fn embed_items(
    net: &EmbeddingNet,
    data: TrainData,
    idx: &[usize],
    norm: Normalization,
    device: Device,
) -> Result<(Tensor, Tensor), TrainError> {
    let mut feats = Vec::new();
    let mut labels = Vec::new();
    for b in data.batches(idx, 256, None, norm, device) {
        let (x, y) = b?;
        feats.push(tch::no_grad(|| net.forward_t(&x, false)));
        labels.push(y);
    }
    Ok((Tensor::cat(&feats, 0), Tensor::cat(&labels, 0)))
}

/// Serialises model initialisation across threads (see its use in [`train`]).
static INIT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

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
fn read_checkpoint_state(path: &Path, config_str: &str) -> Result<CheckpointState, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| ckpt_err(path, e))?;
    let st: CheckpointState = serde_json::from_str(&text).map_err(|e| ckpt_err(path, e))?;
    if st.config != config_str {
        return Err(TrainError::ConfigChanged {
            path: path.to_path_buf(),
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
    let state_path = out.join("checkpoint").join("state.json");
    let card_path = out.join(CARD_FILE);
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

/// Trains a model as `job` says and writes `model.safetensors`, `model.json` and `history.json`.
pub fn train(job: TrainJob) -> Result<TrainOutcome, TrainError> {
    job.train.validate()?;
    job.model.validate()?;
    if job.data.is_empty() {
        return Err(TrainError::Config("no training items".into()));
    }
    let shape = job.data.shape();
    if job.model.in_channels as usize != shape[0] {
        return Err(TrainError::Config(format!(
            "model.in_channels is {} but the images have {} channels (set [model] in_channels = {})",
            job.model.in_channels, shape[0], shape[0]
        )));
    }
    let out = &job.out_dir;
    std::fs::create_dir_all(out).map_err(|e| ckpt_err(out, e))?;
    let ckpt_dir = out.join("checkpoint");
    let state_path = ckpt_dir.join("state.json");
    let card_path = out.join(CARD_FILE);
    let config_str = job_config_string(
        &job.model,
        &job.train,
        job.compat.name(),
        &job.note,
        &job.split_fingerprint,
    );

    if (card_path.exists() || state_path.exists()) && !job.resume {
        return Err(TrainError::Exists(out.clone()));
    }
    let mut start_epoch = 0;
    let mut history = Vec::new();
    if job.resume {
        if let Some(done) = finished_run(out, &config_str, job.train.epochs)? {
            return Ok(done);
        }
    }
    let loaded_state = if job.resume && state_path.exists() {
        Some(read_checkpoint_state(&state_path, &config_str)?)
    } else {
        None
    };

    let (mean, std) = job.data.pixel_stats()?;
    let norm = Normalization { mean, std };
    let n_classes = job.classes.len() as i64;
    // libtorch's generator is process-global: hold a lock from seeding to the last draw of the
    // initialisation, so trainings in parallel threads (tests, a library user's pool) cannot
    // reseed it between another's seed and its draws (seen as a flaky resume-equality test).
    let init_guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(job.train.seed as i64);
    let mut vs = nn::VarStore::new(job.device);
    let net = EmbeddingNet::new(&(vs.root() / "net"), &job.model);
    let head = ClassifierHead::new(
        &(vs.root() / "classifier"),
        &job.train.head,
        job.model.dim,
        n_classes,
    );
    if let (Some(w), None) = (&job.model.pretrained, &loaded_state) {
        if job.model.backbone == Backbone::Small {
            return Err(TrainError::Config(
                "model.pretrained needs backbone = \"resnet18\" or \"resnet50\"".into(),
            ));
        }
        let n = load_pretrained(&vs, w, &format!("net.{BACKBONE_PATH}"))?;
        tracing::info!(tensors = n, file = %w.display(), "backbone initialised from pretrained weights");
    }
    let mut compat = job.compat;
    compat.init_params(&(vs.root() / COMPAT_VARS));
    drop(init_guard);
    let mut opt = Sgd::new(&vs, job.train.momentum, job.train.weight_decay);
    let mut refreshes: Vec<RefreshStats> = Vec::new();

    if let Some(st) = loaded_state {
        let w = ckpt_dir.join("weights.safetensors");
        vs.load(&w).map_err(|e| ckpt_err(&w, e))?;
        let o = ckpt_dir.join("optimizer.safetensors");
        let state = Tensor::read_safetensors(&o).map_err(|e| ckpt_err(&o, e))?;
        opt.load_state(state, job.device);
        let c = ckpt_dir.join("compat.safetensors");
        if c.exists() {
            let state = Tensor::read_safetensors(&c).map_err(|e| ckpt_err(&c, e))?;
            compat.load_state(&state);
        }
        start_epoch = st.epochs_done;
        history = st.history;
        refreshes = st.refreshes;
        tracing::info!(epoch = start_epoch, "resumed from checkpoint");
    }

    let n = job.data.len();
    let all_labels = job.data.labels();
    let per_epoch = n.div_ceil(job.train.batch_size);
    let total = per_epoch * job.train.epochs;
    let old_norm = job.old.map(|o| o.card.normalization);
    let needs_old = compat.needs_old_embeddings();
    if needs_old && job.old.is_none() {
        return Err(TrainError::Config(format!(
            "method {} needs the old model",
            compat.name()
        )));
    }

    for epoch in start_epoch..job.train.epochs {
        if job.stop_after.is_some_and(|k| epoch >= start_epoch + k) {
            return Err(TrainError::Interrupted {
                epochs_done: epoch,
                dir: out.clone(),
            });
        }
        let t0 = Instant::now();
        let order = epoch_order(n, job.train.seed, epoch);
        // the batches of this epoch, augmented (files: decoded ahead on a background thread)
        let mut batches = job.data.batches(
            &order,
            job.train.batch_size,
            Some((&job.train.augment, job.train.seed, epoch)),
            norm,
            job.device,
        );
        {
            // Under the initialisation lock: a reseed from this thread must not land between
            // another training's seed and its initial draws (no op of the epoch itself draws
            // from libtorch's generator today; the seed keeps any future one reproducible).
            let _g = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            tch::manual_seed((job.train.seed as i64) * 1_000 + epoch as i64);
        }
        let bar = if job.progress {
            let b = ProgressBar::new(per_epoch as u64);
            b.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({eta})")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            b.set_prefix(format!(
                "{} epoch {}/{}",
                job.name,
                epoch + 1,
                job.train.epochs
            ));
            b
        } else {
            ProgressBar::hidden()
        };
        let (mut s_cls, mut s_comp, mut s_tot, mut correct, mut seen) =
            (0f64, 0f64, 0f64, 0i64, 0usize);
        let mut lr = job.train.lr;
        for (bi, chunk) in order.chunks(job.train.batch_size).enumerate() {
            let step = epoch * per_epoch + bi;
            lr = lr_at(&job.train, step, total, per_epoch);
            if let Some(rc) = compat.refresh_config().cloned() {
                let due = epoch >= rc.start_epoch
                    && match rc.every_steps {
                        None => bi == 0,
                        Some(r) => step > 0 && step.is_multiple_of(r.max(1)),
                    };
                if due {
                    let mut brng = rng_for(job.train.seed, 3_000_000 + step as u64);
                    let idx = per_class_sample(&all_labels, rc.bank_per_class, &mut brng);
                    let (bank, labels) = embed_items(&net, job.data, &idx, norm, job.device)?;
                    if let Some(s) = compat.refresh(&bank, &labels, epoch, step) {
                        tracing::info!(
                            model = %job.name, epoch, step, mean_delta = s.mean_delta, max_delta = s.max_delta,
                            nn_before = s.nn_sim_before, nn_after = s.nn_sim_after, own = s.own_nearest_share,
                            j_before = ?s.j_before, j_after = ?s.j_after, "refreshed prototypes"
                        );
                        refreshes.push(s);
                    }
                }
            }
            let (x, y) = batches.next().ok_or_else(|| {
                TrainError::Config(format!("batch {bi} of epoch {} is missing", epoch + 1))
            })??;
            let old_emb = match (needs_old, job.old) {
                (true, Some(o)) => {
                    Some(o.embed_batch(&renormalize(&x, norm, old_norm.expect("old present"))))
                }
                _ => None,
            };
            let f = net.forward_t(&x, true);
            let l_cls = head.loss(&f, &y);
            let comp = compat.loss(&CompatInputs {
                new: &f,
                labels: &y,
                old: old_emb.as_ref(),
                classifier: Some(head.weight()),
                progress: step as f64 / total as f64,
            });
            let total_loss = match &comp {
                Some(c) => &l_cls + c * compat.weight(),
                None => l_cls.shallow_clone(),
            };
            let tl = total_loss.double_value(&[]);
            if !tl.is_finite() {
                return Err(TrainError::Diverged {
                    epoch: epoch + 1,
                    step: bi,
                    loss: tl,
                });
            }
            opt.zero_grad();
            total_loss.backward();
            opt.step(lr);
            compat.observe(&f.detach(), &y);
            let b = chunk.len();
            s_cls += l_cls.double_value(&[]) * b as f64;
            s_comp += comp.as_ref().map(|c| c.double_value(&[])).unwrap_or(0.0) * b as f64;
            s_tot += tl * b as f64;
            tch::no_grad(|| {
                let pred = head.plain_logits(&f.detach()).argmax(1, false);
                correct += pred.eq_tensor(&y).sum(Kind::Int64).int64_value(&[]);
            });
            seen += b;
            bar.inc(1);
            if bi % 20 == 0 {
                bar.set_message(format!("loss {:.3}", s_tot / seen as f64));
            }
        }
        bar.finish_and_clear();
        let secs = t0.elapsed().as_secs_f64();
        let stats = EpochStats {
            epoch: epoch + 1,
            lr,
            loss_cls: s_cls / seen as f64,
            loss_comp: s_comp / seen as f64,
            loss_total: s_tot / seen as f64,
            train_acc: correct as f64 / seen as f64,
            seconds: secs,
            images_per_s: seen as f64 / secs,
        };
        tracing::info!(
            model = %job.name, epoch = stats.epoch, loss = stats.loss_total, acc = stats.train_acc,
            img_s = stats.images_per_s, "epoch done"
        );
        history.push(stats);
        // Checkpoint: weights and optimiser first, then the state file that names them.
        std::fs::create_dir_all(&ckpt_dir).map_err(|e| ckpt_err(&ckpt_dir, e))?;
        save_safetensors_atomic(&ckpt_dir.join("weights.safetensors"), &named_vars(&vs))?;
        save_safetensors_atomic(&ckpt_dir.join("optimizer.safetensors"), &opt.state())?;
        let cstate = compat.state();
        if !cstate.is_empty() {
            save_safetensors_atomic(&ckpt_dir.join("compat.safetensors"), &cstate)?;
        }
        let st = CheckpointState {
            epochs_done: epoch + 1,
            config: config_str.clone(),
            history: history.clone(),
            refreshes: refreshes.clone(),
        };
        crate::files::write_json(&state_path, &st)?;
    }

    let probe_features = match job.probe {
        Some(p) => {
            let idx: Vec<usize> = (0..p.len()).collect();
            let (f, _) = embed_items(&net, TrainData::Memory(p), &idx, norm, job.device)?;
            Some(f.to_device(Device::Cpu))
        }
        None => None,
    };
    let wpath = out.join(WEIGHTS_FILE);
    // The model file holds the model: a method's own variables (a discriminator) stay in the
    // checkpoint only.
    let model_vars: Vec<(String, Tensor)> = named_vars(&vs)
        .into_iter()
        .filter(|(n, _)| !n.starts_with(&format!("{COMPAT_VARS}.")))
        .collect();
    save_safetensors_atomic(&wpath, &model_vars)?;
    let card = ModelCard {
        format: 1,
        id: file_id(&wpath)?,
        name: job.name.clone(),
        role: job.role,
        // An old model is trained for classification only.
        method: if job.role == crate::model::Role::Old {
            "none".into()
        } else {
            compat.name().to_string()
        },
        arch: job.model.clone(),
        classes: job.classes.clone(),
        normalization: norm,
        input_shape: shape,
        split_fingerprint: job.split_fingerprint.clone(),
        train_images: n,
        seed: job.train.seed,
        epochs: job.train.epochs,
        // An unconstrained model claims no compatibility, even when trained beside an old one.
        compatible_with: job
            .old
            .filter(|_| compat.weight() > 0.0)
            .map(|o| o.card.id.clone()),
        note: job.note.clone(),
    };
    crate::files::write_json(&out.join("history.json"), &history)?;
    if !refreshes.is_empty() {
        crate::files::write_json(&out.join("refreshes.json"), &refreshes)?;
    }
    crate::files::write_json(&card_path, &card)?;
    Ok(TrainOutcome {
        card,
        history,
        dir: out.clone(),
        probe_features,
        refreshes,
    })
}
