//! Training: one loop for every model (old or new, any compatibility method): learning-rate
//! schedule with warm-up, the epoch and its steps, refreshes when the loss asks for them.
//! Around it, one file per concern: the optimiser (`sgd`), the checkpoint and resume protocol
//! (`checkpoint`), the epoch meter and progress bar (`meter`), export of the model and its
//! card (`export`).

mod checkpoint;
mod dist;
mod export;
mod meter;
pub mod overall;
mod sgd;

pub use checkpoint::{finished_run, job_config_string, save_safetensors_atomic, COMPAT_VARS};
pub use sgd::Sgd;

use bcl_dist::{all_gather_rows, shard, Collective};
use checkpoint::{ckpt_err, read_resumable_state, Checkpoint, CheckpointState};
use meter::EpochMeter;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::{Device, Kind, Tensor};

use crate::data::source::TrainData;
use crate::data::{epoch_order, per_class_sample, rng_for, AugmentConfig, Dataset, Normalization};
use crate::exec::ExecConfig;
use crate::files::FileError;
use crate::loss::{ClassifierHead, CompatInputs, CompatLoss, HeadConfig, LossError, Method};
use crate::model::{
    load_pretrained, Backbone, Embedder, EmbeddingNet, ModelCard, ModelConfig, BACKBONE_PATH,
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
    /// libtorch's autocast or layout calls failed.
    #[error(transparent)]
    Exec(#[from] crate::exec::ExecError),
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
    /// The checkpoint was written by a run on another number of ranks.
    #[error("{path}: the checkpoint was written by a run on {was} rank(s); resume it on {was} (this run has {now}), or choose another output directory")]
    WorldChanged {
        /// The state file.
        path: PathBuf,
        /// Ranks of the checkpointed run.
        was: usize,
        /// Ranks of this run.
        now: usize,
    },
    /// A collective between ranks failed (a lost rank, a timeout).
    #[error(transparent)]
    Dist(#[from] bcl_dist::DistError),
    /// The method's loss was called without an input it reads.
    #[error(transparent)]
    Loss(#[from] LossError),
    /// Another rank failed at a step every rank must pass; its own log says why.
    #[error("rank {rank} failed (its log says why); stopping with it")]
    Peer {
        /// The failed rank.
        rank: usize,
    },
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
    /// Batch normalisation with its running statistics while training (the affine parameters
    /// still learn): the usual choice for fine-tuning a pretrained backbone with small batches
    /// per device, and it makes a data-parallel step equal the one-device step up to float
    /// rounding.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub freeze_batch_norm: bool,
    /// How the network runs (`[new.exec]`: bfloat16 autocast, channels-last); left out of the
    /// saved configuration when default, so earlier runs resume unchanged.
    #[serde(skip_serializing_if = "ExecConfig::is_default")]
    pub exec: ExecConfig,
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
            freeze_batch_norm: false,
            exec: ExecConfig::default(),
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
    /// Seconds rank 0 spent in collectives (gradients, buffers, gathered features) during the
    /// epoch's steps; absent for a run on one process.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub comm_seconds: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
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
    /// The method that trains the model: the registry names it on the card (an old model's
    /// card says "none"); `compat` is its loss, built by [`crate::loss::Method::build`].
    pub method: Method,
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
    /// The ranks training together (data parallelism; `&bcl_dist::Single` for one process):
    /// `train.batch_size` is the global batch, shared among them; rank 0 writes the files.
    pub dist: &'a dyn Collective,
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

/// Maps a batch normalised for one model to another model's normalisation.
pub fn renormalize(x: &Tensor, from: Normalization, to: Normalization) -> Tensor {
    if from == to {
        return x.shallow_clone();
    }
    (x * from.std + from.mean - to.mean) / to.std
}

/// Normalised embeddings `[len, dim]` (eval mode, no gradient) of the items `idx` of `data`,
/// with their labels, by the embedding forward under `exec` (the forward a training step
/// runs, so that a refresh bank holds the features the loss sees; the default settings are
/// the plain float32 forward), in the space the compatibility loss sees (through the
/// projection head, where the network has one): each rank embeds its share, every rank gets
/// the whole in `idx` order.
fn embed_bank(
    net: &EmbeddingNet,
    data: TrainData,
    idx: &[usize],
    norm: Normalization,
    device: Device,
    dist: &dyn Collective,
    exec: &ExecConfig,
) -> Result<(Tensor, Tensor), TrainError> {
    let [f, y] = bcl_dist::share_rows(dist, idx, |mine| -> Result<_, TrainError> {
        let dim = net.compat_dim().unwrap_or(net.dim());
        let mut feats = vec![Tensor::zeros([0, dim], (Kind::Float, device))];
        let mut labels = vec![Tensor::zeros([0], (Kind::Int64, device))];
        for b in data.batches(mine, 256, None, norm, device) {
            let (x, y) = b?;
            let f = tch::no_grad(|| net.forward_exec(&x, false, exec))?;
            feats.push(tch::no_grad(|| net.to_compat_space(&f)));
            labels.push(y);
        }
        Ok([Tensor::cat(&feats, 0), Tensor::cat(&labels, 0)])
    })?;
    Ok((f, y))
}

/// Serialises model initialisation across threads (see its use in [`train`]).
static INIT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Checks what a job can be checked for before anything is written.
fn check_job(job: &TrainJob) -> Result<(), TrainError> {
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
    let world = job.dist.world_size();
    if job.train.batch_size < world {
        return Err(TrainError::Config(format!(
            "batch_size {} is the global batch, shared among {world} ranks: it must be at least the number of ranks",
            job.train.batch_size
        )));
    }
    if job.compat.needs_old_embeddings() && job.old.is_none() {
        return Err(TrainError::Config(format!(
            "method {} needs the old model",
            job.method
        )));
    }
    Ok(())
}

/// The model being trained: its variables, network, head, compatibility loss and optimiser.
struct Model<'a> {
    vs: nn::VarStore,
    net: EmbeddingNet,
    head: ClassifierHead,
    compat: Box<dyn CompatLoss + 'a>,
    opt: Sgd,
}

impl<'a> Model<'a> {
    /// Seeded initialisation (pretrained backbone weights when configured and not resuming).
    fn init(
        job: &TrainJob,
        mut compat: Box<dyn CompatLoss + 'a>,
        fresh: bool,
    ) -> Result<Self, TrainError> {
        // libtorch's generator is process-global: hold a lock from seeding to the last draw of
        // the initialisation, so trainings in parallel threads (tests, a library user's pool)
        // cannot reseed it between another's seed and its draws.
        let init_guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(job.train.seed as i64);
        let vs = nn::VarStore::new(job.device);
        let net = EmbeddingNet::new(&(vs.root() / "net"), &job.model);
        let classes = job.classes.len() as i64;
        let head = ClassifierHead::new(
            &(vs.root() / ClassifierHead::PATH),
            &job.train.head,
            job.model.dim,
            classes,
        );
        if let (Some(w), true) = (&job.model.pretrained, fresh) {
            if job.model.backbone == Backbone::Small {
                return Err(TrainError::Config(
                    "model.pretrained needs backbone = \"resnet18\" or \"resnet50\"".into(),
                ));
            }
            let n = load_pretrained(&vs, w, &format!("net.{BACKBONE_PATH}"))?;
            tracing::info!(tensors = n, file = %w.display(), "backbone initialised from pretrained weights");
        }
        compat.init_params(&(vs.root() / COMPAT_VARS));
        drop(init_guard);
        job.train.exec.prepare(&vs)?;
        let opt = Sgd::new(&vs, job.train.momentum, job.train.weight_decay);
        Ok(Self {
            vs,
            net,
            head,
            compat,
            opt,
        })
    }
}

/// Where a run stands: epochs done, their figures and the refreshes so far.
#[derive(Default)]
struct Progress {
    epochs_done: usize,
    history: Vec<EpochStats>,
    refreshes: Vec<RefreshStats>,
}

/// Trains a model as `job` says and writes `model.safetensors`, `model.json` and `history.json`.
pub fn train(mut job: TrainJob) -> Result<TrainOutcome, TrainError> {
    let t0 = std::time::Instant::now();
    let dist = job.dist;
    check_job(&job)?;
    let out = job.out_dir.clone();
    let ckpt = Checkpoint::of(&out);
    let config_str = job_config_string(
        &job.model,
        &job.train,
        job.method.as_str(),
        &job.note,
        &job.split_fingerprint,
    );
    let found = dist::agree(dist, look_for_run(&job, &ckpt, &config_str))?;
    dist::same_everywhere(
        dist,
        found.done.is_some() as i64,
        "whether the run has finished",
    )?;
    if let Some(done) = found.done {
        if dist.is_primary() {
            overall::model_finished(&out.display().to_string(), None);
        }
        return Ok(done);
    }
    let loaded = found.loaded;
    dist::same_everywhere(
        dist,
        loaded.as_ref().map_or(-1, |st| st.epochs_done as i64),
        "the checkpoint's epochs",
    )?;
    let (mean, std) = job.data.pixel_stats()?;
    let norm = Normalization { mean, std };
    // The loss moves into the model; the job keeps an inert placeholder.
    let compat = std::mem::replace(&mut job.compat, Box::new(crate::loss::Independent));
    let mut m = Model::init(&job, compat, loaded.is_none())?;
    let mut p = Progress::default();
    if let Some(st) = loaded {
        ckpt.restore(&mut m.vs, &mut m.opt, m.compat.as_mut(), job.device)?;
        p = Progress {
            epochs_done: st.epochs_done,
            history: st.history,
            refreshes: st.refreshes,
        };
        tracing::info!(epoch = p.epochs_done, "resumed from checkpoint");
    }
    // every rank starts from rank 0's variables (as DDP does)
    dist::broadcast_tensors(dist, &dist::sorted_variables(&m.vs, |_| true))?;
    let start = p.epochs_done;
    for epoch in start..job.train.epochs {
        if job.stop_after.is_some_and(|k| epoch >= start + k) {
            return Err(TrainError::Interrupted {
                epochs_done: epoch,
                dir: out,
            });
        }
        let stats = run_epoch(&job, &mut m, epoch, norm, &mut p.refreshes)?;
        if dist.is_primary() {
            tracing::info!(
                model = %job.name, epoch = stats.epoch, loss = stats.loss_total, acc = stats.train_acc,
                img_s = stats.images_per_s, "epoch done"
            );
        }
        p.history.push(stats);
        p.epochs_done = epoch + 1;
        let state = CheckpointState {
            epochs_done: p.epochs_done,
            config: config_str.clone(),
            history: p.history.clone(),
            refreshes: p.refreshes.clone(),
            world_size: dist.world_size(),
        };
        let saved = match dist.is_primary() {
            true => ckpt.save(&m.vs, &m.opt, m.compat.as_ref(), &state),
            false => Ok(()),
        };
        dist::agree(dist, saved)?;
    }
    let done = finish(&job, &m, norm, p)?;
    if dist.is_primary() {
        overall::model_finished(&out.display().to_string(), Some(t0.elapsed().as_secs_f64()));
    }
    Ok(done)
}

/// What the output directory holds for this job: a finished run of the same configuration, or
/// a checkpoint to resume (checked against the configuration and the number of ranks).
struct Found {
    done: Option<TrainOutcome>,
    loaded: Option<CheckpointState>,
}

/// Reads the output directory: an existing run without `resume` is an error.
fn look_for_run(job: &TrainJob, ckpt: &Checkpoint, config_str: &str) -> Result<Found, TrainError> {
    let out = &job.out_dir;
    std::fs::create_dir_all(out).map_err(|e| ckpt_err(out, e))?;
    if (crate::layout::ModelDir::new(out).card().exists() || ckpt.state.exists()) && !job.resume {
        return Err(TrainError::Exists(out.clone()));
    }
    if job.resume {
        if let Some(done) = finished_run(out, config_str, job.train.epochs)? {
            return Ok(Found {
                done: Some(done),
                loaded: None,
            });
        }
    }
    let loaded = match job.resume && ckpt.state.exists() {
        true => Some(read_resumable_state(
            &ckpt.state,
            config_str,
            job.dist.world_size(),
        )?),
        false => None,
    };
    Ok(Found { done: None, loaded })
}

/// Embeds the probe (if any) with the in-memory model, exports the model and its card (rank 0;
/// the other ranks receive the card from it).
fn finish(
    job: &TrainJob,
    m: &Model,
    norm: Normalization,
    p: Progress,
) -> Result<TrainOutcome, TrainError> {
    let probe_features = match job.probe {
        Some(d) => {
            let idx: Vec<usize> = (0..d.len()).collect();
            let (f, _) = embed_bank(
                &m.net,
                TrainData::Memory(d),
                &idx,
                norm,
                job.device,
                &bcl_dist::Single,
                // the saved model embeds in float32 unless told otherwise: so does the probe
                &ExecConfig::default(),
            )?;
            Some(f.to_device(Device::Cpu))
        }
        None => None,
    };
    let facts = export::CardFacts {
        name: &job.name,
        role: job.role,
        method: job.method,
        model: &job.model,
        classes: &job.classes,
        normalization: norm,
        input_shape: job.data.shape(),
        split_fingerprint: &job.split_fingerprint,
        train_images: job.data.len(),
        seed: job.train.seed,
        epochs: job.train.epochs,
        old: job.old,
        note: &job.note,
    };
    let dist = job.dist;
    let card = match dist.is_primary() {
        true => export::export(
            &job.out_dir,
            &m.vs,
            m.compat.as_ref(),
            facts,
            &p.history,
            &p.refreshes,
        )
        .map(Some),
        false => Ok(None),
    };
    let card = dist::agree(dist, card)?;
    let json = card
        .as_ref()
        .map(|c| serde_json::to_vec(c).expect("a card serialises"))
        .unwrap_or_default();
    let json = bcl_dist::broadcast_bytes(dist, &json)?;
    let card = serde_json::from_slice(&json)
        .map_err(|e| TrainError::Config(format!("the card rank 0 sent: {e}")))?;
    Ok(TrainOutcome {
        card,
        history: p.history,
        dir: job.out_dir.clone(),
        probe_features,
        refreshes: p.refreshes,
    })
}

/// One epoch: the seeded order, this rank's share of each augmented batch, refreshes where
/// the loss asks for them, the head loss plus λ·the method's loss, SGD steps on the gradients
/// averaged over ranks; returns the epoch's figures (summed over ranks).
fn run_epoch(
    job: &TrainJob,
    m: &mut Model,
    epoch: usize,
    norm: Normalization,
    refreshes: &mut Vec<RefreshStats>,
) -> Result<EpochStats, TrainError> {
    let dist = job.dist;
    let (rank, world) = (dist.rank(), dist.world_size());
    let n = job.data.len();
    let per_epoch = n.div_ceil(job.train.batch_size);
    let total = per_epoch * job.train.epochs;
    let order = epoch_order(n, job.train.seed, epoch);
    // this rank's share of the batches of this epoch, augmented (files: decoded ahead on a
    // background thread)
    let mut batches = job.data.shard_batches(
        &order,
        job.train.batch_size,
        Some((&job.train.augment, job.train.seed, epoch)),
        norm,
        job.device,
        rank,
        world,
    );
    {
        // Under the initialisation lock: a reseed from this thread must not land between
        // another training's seed and its initial draws (no op of the epoch itself draws
        // from libtorch's generator today; the seed keeps any future one reproducible).
        let _g = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed((job.train.seed as i64) * 1_000 + epoch as i64);
    }
    let label = format!("{} epoch {}/{}", job.name, epoch + 1, job.train.epochs);
    let mut meter = EpochMeter::start(per_epoch, label, job.progress && dist.is_primary());
    let mut lr = job.train.lr;
    for (bi, chunk) in order.chunks(job.train.batch_size).enumerate() {
        let step = epoch * per_epoch + bi;
        lr = lr_at(&job.train, step, total, per_epoch);
        if let Some(per_class) = m.compat.refresh_due(epoch, bi, step) {
            refreshes.extend(refresh(job, m, norm, per_class, epoch, step)?);
        }
        let batch = match shard(chunk.len(), rank, world).is_empty() {
            true => None,
            false => Some(batches.next().ok_or_else(|| {
                TrainError::Config(format!("batch {bi} of epoch {} is missing", epoch + 1))
            })??),
        };
        let figures = step_on(job, m, batch.as_ref(), chunk.len(), norm, lr, step, total).map_err(
            |e| match e {
                StepError::Diverged(loss) => TrainError::Diverged {
                    epoch: epoch + 1,
                    step: bi,
                    loss,
                },
                StepError::Train(e) => e,
            },
        )?;
        meter.add(&figures);
    }
    meter.finish(epoch + 1, lr, dist)
}

/// A refresh of the method's state from a seeded per-class bank of current new features
/// (each rank embeds its share of the bank; every rank refreshes from the whole).
fn refresh(
    job: &TrainJob,
    m: &mut Model,
    norm: Normalization,
    per_class: usize,
    epoch: usize,
    step: usize,
) -> Result<Option<RefreshStats>, TrainError> {
    let mut brng = rng_for(job.train.seed, 3_000_000 + step as u64);
    let idx = per_class_sample(&job.data.labels(), per_class, &mut brng);
    let (bank, labels) = embed_bank(
        &m.net,
        job.data,
        &idx,
        norm,
        job.device,
        job.dist,
        &job.train.exec,
    )?;
    let s = m.compat.refresh(&bank, &labels, epoch, step)?;
    if let (Some(s), true) = (&s, job.dist.is_primary()) {
        tracing::info!(
            model = %job.name, epoch, step, mean_delta = s.mean_delta, max_delta = s.max_delta,
            nn_before = s.nn_sim_before, nn_after = s.nn_sim_after, own = s.own_nearest_share,
            j_before = ?s.j_before, j_after = ?s.j_after, "refreshed prototypes"
        );
    }
    Ok(s)
}

/// Why a step stopped.
enum StepError {
    /// The loss was not finite on some rank (this rank's loss, or NaN when another's was).
    Diverged(f64),
    /// A collective failed.
    Train(TrainError),
}

impl From<TrainError> for StepError {
    fn from(e: TrainError) -> Self {
        StepError::Train(e)
    }
}

/// This rank's figures of a step: its items, their mean losses and the head's correct count.
struct StepFigures {
    items: usize,
    cls: f64,
    comp: f64,
    total: f64,
    correct: i64,
    /// Seconds in collectives.
    comm: f64,
}

/// One SGD step: this rank's share `batch` (none when it has no share) of a batch of `global`
/// items, its gradients averaged over ranks; every rank stops when any rank's loss is not
/// finite.
#[allow(clippy::too_many_arguments)]
fn step_on(
    job: &TrainJob,
    m: &mut Model,
    batch: Option<&(Tensor, Tensor)>,
    global: usize,
    norm: Normalization,
    lr: f64,
    step: usize,
    total: usize,
) -> Result<StepFigures, StepError> {
    let dist = job.dist;
    let mut comm = std::time::Duration::ZERO;
    // batch-norm buffers follow rank 0's, as DDP's broadcast_buffers does
    if dist.world_size() > 1 {
        let t0 = std::time::Instant::now();
        let buffers = dist::sorted_variables(&m.vs, |t| !t.requires_grad());
        dist::broadcast_tensors(dist, &buffers)?;
        comm += t0.elapsed();
    }
    m.opt.zero_grad();
    let mut fig = StepFigures {
        items: 0,
        cls: 0.0,
        comp: 0.0,
        total: 0.0,
        correct: 0,
        comm: 0.0,
    };
    let mut observed = None;
    if let Some((x, y)) = batch {
        let (f, fc, losses) = forward_losses(job, m, x, y, norm, step, total)?;
        fig.items = y.size()[0] as usize;
        fig.total = losses.total.double_value(&[]);
        if fig.total.is_finite() {
            losses.total.backward();
            fig.cls = losses.cls.double_value(&[]);
            fig.comp = losses
                .comp
                .as_ref()
                .map(|c| c.double_value(&[]))
                .unwrap_or(0.0);
        }
        observed = Some((f.detach(), fc.detach(), y.shallow_clone()));
    }
    let finite = fig.total.is_finite();
    let t0 = std::time::Instant::now();
    let grads = dist::average_gradients(dist, &m.opt, fig.items, global, finite)?;
    comm += t0.elapsed();
    let Some(grads) = grads else {
        return Err(StepError::Diverged(if finite {
            f64::NAN
        } else {
            fig.total
        }));
    };
    m.opt.step_with(lr, grads);
    if let Some((f, _, y)) = &observed {
        // the head after the step, on the step's features
        fig.correct = tch::no_grad(|| {
            let pred = m.head.plain_logits(f).argmax(1, false);
            pred.eq_tensor(y).sum(Kind::Int64).int64_value(&[])
        });
    }
    let t0 = std::time::Instant::now();
    observe(job, m, observed.map(|(_, fc, y)| (fc, y)))?;
    if dist.world_size() > 1 {
        comm += t0.elapsed();
        fig.comm = comm.as_secs_f64();
    }
    Ok(fig)
}

/// The losses of one forward pass.
struct Losses {
    cls: Tensor,
    comp: Option<Tensor>,
    total: Tensor,
}

/// The new model's features of `x` (its own and in the old model's space) and the head's and
/// the method's losses on them.
fn forward_losses(
    job: &TrainJob,
    m: &Model,
    x: &Tensor,
    y: &Tensor,
    norm: Normalization,
    step: usize,
    total: usize,
) -> Result<(Tensor, Tensor, Losses), TrainError> {
    let old_emb = match (m.compat.needs_old_embeddings(), job.old) {
        (true, Some(o)) => Some(o.embed_batch(&renormalize(x, norm, o.card.normalization))),
        _ => None,
    };
    // the backbone under the run's execution settings; the embedding head, the classifier
    // and the losses in float32 (the one forward of training, embedding and the bench)
    let f = m
        .net
        .forward_exec(x, !job.train.freeze_batch_norm, &job.train.exec)?;
    let cls = m.head.loss(&f, y);
    // the compatibility loss sees the model in the old model's space: through the projection
    // head (features and classifier rows alike) where the new model embeds in another dimension
    let fc = m.net.to_compat_space(&f);
    let wc = m.net.to_compat_space(m.head.weight());
    let comp = m.compat.loss(&CompatInputs {
        new: &fc,
        labels: y,
        old: old_emb.as_ref(),
        classifier: Some(&wc),
        progress: step as f64 / total as f64,
    })?;
    let total_loss = match &comp {
        Some(c) => &cls + c * m.compat.weight(),
        None => cls.shallow_clone(),
    };
    Ok((
        f,
        fc,
        Losses {
            cls,
            comp,
            total: total_loss,
        },
    ))
}

/// Shows the method the step's features in the space it sees (the whole batch, gathered from
/// every rank, so that its running state is the same everywhere and equals the one-process
/// run's).
fn observe(
    job: &TrainJob,
    m: &mut Model,
    mine: Option<(Tensor, Tensor)>,
) -> Result<(), TrainError> {
    let dist = job.dist;
    if !m.compat.observes() {
        return Ok(());
    }
    if dist.world_size() == 1 {
        if let Some((f, y)) = mine {
            m.compat.observe(&f, &y);
        }
        return Ok(());
    }
    let d = m.net.compat_dim().unwrap_or(m.net.dim());
    let (f, y) = mine.unwrap_or_else(|| {
        (
            Tensor::zeros([0, d], (Kind::Float, job.device)),
            Tensor::zeros([0], (Kind::Int64, job.device)),
        )
    });
    let f = all_gather_rows(dist, &f.contiguous())?;
    let y = all_gather_rows(dist, &y.contiguous())?;
    m.compat.observe(&f, &y);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::Autocast;

    /// The training step's features come from the embedding forward (`forward_exec`: the
    /// backbone under the run's settings, the embedding head in float32), not from the whole
    /// network under autocast, which rounds the head's output to bfloat16 (commit 53d28e0 said
    /// the loop did the former while it did the latter).
    #[test]
    fn the_training_forward_is_the_embedding_forward_under_autocast() {
        let (n, side) = (6usize, 28usize);
        let data = Dataset {
            pixels: (0..n * side * side).map(|i| (i * 37 % 251) as u8).collect(),
            labels: vec![0, 1, 2, 0, 1, 2],
            ids: (0..n).collect(),
            channels: 1,
            rows: side,
            cols: side,
            classes: 3,
        };
        let exec = ExecConfig {
            autocast: Autocast::Bf16,
            channels_last: false,
        };
        let job = TrainJob {
            name: "old".into(),
            role: crate::model::Role::Old,
            data: TrainData::Memory(&data),
            classes: vec![0, 1, 2],
            model: ModelConfig {
                width: 4,
                dim: 16,
                ..Default::default()
            },
            train: TrainConfig {
                freeze_batch_norm: true,
                exec,
                ..Default::default()
            },
            method: Method::INDEPENDENT,
            compat: Box::new(crate::loss::Independent),
            old: None,
            split_fingerprint: "test".into(),
            out_dir: PathBuf::from("unused"),
            resume: false,
            device: Device::Cpu,
            note: String::new(),
            progress: false,
            stop_after: None,
            probe: None,
            dist: &bcl_dist::Single,
        };
        let compat: Box<dyn CompatLoss> = Box::new(crate::loss::Independent);
        let m = Model::init(&job, compat, true).unwrap();
        tch::manual_seed(3);
        let x = Tensor::randn(
            [n as i64, 1, side as i64, side as i64],
            (Kind::Float, Device::Cpu),
        );
        let y = Tensor::from_slice(&[0i64, 1, 2, 0, 1, 2]);
        let norm = Normalization {
            mean: 0.5,
            std: 0.25,
        };
        let (f, _, losses) = forward_losses(&job, &m, &x, &y, norm, 0, 1).unwrap();
        assert_eq!(f.kind(), Kind::Float);
        assert!(losses.total.double_value(&[]).is_finite());
        let embedded = m.net.forward_exec(&x, false, &exec).unwrap();
        let same = (&f - &embedded).abs().max().double_value(&[]);
        assert!(
            same < 1e-6,
            "training and embedding forwards differ by {same}"
        );
        // the test tells the two apart: the whole network under autocast lands elsewhere
        let whole = exec
            .run(Device::Cpu, || m.net.forward_t(&x, false))
            .unwrap()
            .to_kind(Kind::Float);
        let apart = (&whole - &embedded).abs().max().double_value(&[]);
        assert!(
            apart > 1e-4,
            "a bfloat16 head moved the features by only {apart}"
        );
        // a refresh's bank is embedded by the same forward as the step's features
        let idx: Vec<usize> = (0..n).collect();
        let (bank, _) = embed_bank(
            &m.net,
            job.data,
            &idx,
            norm,
            Device::Cpu,
            &bcl_dist::Single,
            &job.train.exec,
        )
        .unwrap();
        let (xs, _) = data.batch(&idx, norm, None, Device::Cpu);
        let step = m.net.forward_exec(&xs, false, &exec).unwrap();
        let gap = (&bank - &step).abs().max().double_value(&[]);
        assert!(gap < 1e-6, "refresh bank and step forward differ by {gap}");
        let plain = m.net.forward_t(&xs, false);
        let off = (&bank - &plain).abs().max().double_value(&[]);
        assert!(off > 1e-4, "the bank came from the float32 forward ({off})");
    }
}
