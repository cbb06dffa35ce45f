//! A run: its configuration (`config.toml` in every run directory) and the steps the CLI
//! exposes (train the old model, train a new model or a successor against it, the whole demo),
//! wired from the concept modules; `bench` times the training step. No method-specific logic
//! lives here: methods come from [`Method::build`].

pub mod bench;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::data::source::TrainData;
use crate::data::{per_class_sample, rng_for, DataConfig, DataError, Scenario, Split, SplitConfig};
use crate::eval::models::{evaluate_models, EvalReport};
use crate::eval::EvalError;
use crate::files::write_atomic;
use crate::layout::{ModelDir, RunDir};
use crate::loss::{BuildContext, ClassifierHead, CompatConfig, Method, OldPrototypes};
use crate::model::{Embedder, ModelCard, ModelConfig, ModelError, ModelOverride, Role};
use crate::perturb::{class_prototypes, PrototypeError};
use crate::report::{write_eval_report, ReportError};
use crate::train::{
    finished_run, job_config_string, train, TrainConfig, TrainError, TrainJob, TrainOutcome,
};

/// Errors of a run step; each variant carries the file or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Data reading or splitting.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Model files.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Training.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// libtorch refused the execution settings.
    #[error(transparent)]
    Exec(#[from] crate::exec::ExecError),
    /// Evaluation.
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// Fitting or applying an adapter (an experiment's `[adapters]`).
    #[error(transparent)]
    Adapt(#[from] crate::adapt::AdaptError),
    /// Reports.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// Reading or writing a file.
    #[error(transparent)]
    File(#[from] crate::files::FileError),
    /// Prototypes.
    #[error(transparent)]
    Prototype(#[from] PrototypeError),
    /// A configuration file.
    #[error("{path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A device name that is not cpu, cuda, cuda:N or auto, or a device not present here.
    #[error("device {0}")]
    Device(String),
    /// Anything else the user must fix, with the reason.
    #[error("{0}")]
    Invalid(String),
}

/// The whole configuration of a run; saved as `config.toml` in every run directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Data.
    pub data: DataConfig,
    /// Old/new split.
    pub split: SplitConfig,
    /// Architecture of the old model, and of new models where `new_model` does not override it.
    pub model: ModelConfig,
    /// The new models' architecture where it differs from the old model's (a heterogeneous
    /// upgrade: a wider or deeper backbone); empty by default.
    #[serde(skip_serializing_if = "ModelOverride::is_empty")]
    pub new_model: ModelOverride,
    /// Training of the old model.
    pub old: TrainConfig,
    /// Training of new models (its seed differs from the old model's: METHOD.md section 6).
    pub new: TrainConfig,
    /// The compatibility term.
    pub compat: CompatConfig,
    /// Methods the demo trains.
    pub methods: Vec<Method>,
    /// Images per batch when embedding for evaluation.
    pub eval_batch: usize,
}

impl Default for RunConfig {
    fn default() -> Self {
        let old = TrainConfig {
            epochs: 8,
            seed: 1,
            ..TrainConfig::default()
        };
        let new = TrainConfig {
            epochs: 3,
            seed: 2,
            ..TrainConfig::default()
        };
        Self {
            data: DataConfig::default(),
            split: SplitConfig::default(),
            model: ModelConfig::default(),
            new_model: ModelOverride::default(),
            old,
            new,
            compat: CompatConfig::default(),
            methods: vec![Method::INDEPENDENT, Method::L2, Method::BCT],
            eval_batch: 512,
        }
    }
}

impl RunConfig {
    /// The `--quick` preset: a small balanced subset, a narrow model, a few epochs. The
    /// budget (600 training images per class, old model 5 epochs, new models 4) was chosen on
    /// validation data over five selection seeds (`scripts/quick-preset-search.sh`,
    /// docs/results.md "The quick demo"): the cheapest at which BCT was compatible on every
    /// seed with a mean margin of at least 0.02 and the independent model on none.
    pub fn quick() -> Self {
        let mut c = Self::default();
        c.data.train_per_class = Some(600);
        c.data.test_per_class = Some(100);
        c.model.width = 8;
        c.model.dim = 64;
        c.old.epochs = 5;
        c.new.epochs = 4;
        c.old.batch_size = 64;
        c.new.batch_size = 64;
        c
    }

    /// Reads a TOML file over the defaults (unknown keys are errors).
    pub fn from_toml_file(path: &Path) -> Result<Self, RunError> {
        let mut cfg: Self = crate::files::read_toml(path)?;
        cfg.validate().map_err(|reason| RunError::Config {
            path: path.to_path_buf(),
            reason,
        })?;
        cfg.compat.complete();
        Ok(cfg)
    }

    /// Checks the settings whose meaning bounds them (the compatibility term's); the error
    /// names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(c) = self.model.compat_dim {
            return Err(format!(
                "model.compat_dim = {c}: the projection head's dimension is set by training \
                 from the old model's card; to embed new models in another dimension, set \
                 new_model.dim"
            ));
        }
        self.new_model.check_against(&self.model)?;
        if self.data.validation_per_class == Some(0) {
            return Err(
                "data.validation_per_class = 0: expected >= 1 images per class (or leave it \
                 out for no validation part)"
                    .into(),
            );
        }
        self.compat.validate()
    }

    /// The new models' architecture: `[model]` with `[new_model]`'s overrides.
    pub fn new_arch(&self) -> ModelConfig {
        self.new_model.apply(&self.model)
    }

    /// The configuration as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises to TOML")
    }
}

/// Parses `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when available, else CPU).
pub fn parse_device(s: &str) -> Result<Device, RunError> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available()),
        "cuda" => {
            if tch::Cuda::is_available() {
                Ok(Device::Cuda(0))
            } else {
                Err(RunError::Device(
                    "cuda: no CUDA device is available here; use cpu or auto".into(),
                ))
            }
        }
        s if s.starts_with("cuda:") => {
            let i: usize = s[5..]
                .parse()
                .map_err(|_| RunError::Device(format!("{s}: expected cuda:N with N a number")))?;
            if i < tch::Cuda::device_count() as usize {
                Ok(Device::Cuda(i))
            } else {
                Err(RunError::Device(format!(
                    "{s}: only {} CUDA devices here",
                    tch::Cuda::device_count()
                )))
            }
        }
        _ => Err(RunError::Device(format!(
            "{s}: expected cpu, cuda, cuda:N or auto"
        ))),
    }
}

/// Options common to training steps.
#[derive(Debug, Clone)]
pub struct StepOptions {
    /// Continue from checkpoints.
    pub resume: bool,
    /// Where to run.
    pub device: Device,
    /// Show progress bars.
    pub progress: bool,
    /// Also embed the test set with the in-memory model (returned in the outcome), so a caller
    /// can check that the saved model reproduces it.
    pub probe_test: bool,
    /// Stop after this many epochs of this call, leaving a resumable checkpoint.
    pub stop_after: Option<usize>,
    /// The ranks working together (data parallelism; a world of one by default): training
    /// shares each batch among them, embedding passes share the items, rank 0 writes.
    pub dist: bcl_dist::World,
}

/// Normalised embeddings `[N, d]` (CPU) of every training item by `model`, streamed; each
/// rank of `dist` embeds its share and every rank gets the whole.
pub fn embed_train(
    model: &Embedder,
    data: TrainData,
    batch: usize,
    dist: &dyn bcl_dist::Collective,
) -> Result<Tensor, RunError> {
    let all: Vec<usize> = (0..data.len()).collect();
    let [f] = bcl_dist::share_rows(dist, &all, |mine| -> Result<_, TrainError> {
        let mut out = vec![Tensor::zeros(
            [0, model.card.arch.dim],
            (Kind::Float, Device::Cpu),
        )];
        let norm = model.card.normalization;
        for b in data.batches(mine, batch.max(1), None, norm, model.device()) {
            let (x, _) = b.map_err(TrainError::from)?;
            out.push(model.embed_batch(&x).to_device(Device::Cpu));
        }
        Ok([Tensor::cat(&out, 0)])
    })?;
    Ok(f)
}

/// Writes a run's `config.toml` and `split.json` (rank 0 only: every rank holds the same).
fn write_run_files(
    out: &Path,
    cfg: &RunConfig,
    split: &Split,
    dist: &dyn bcl_dist::Collective,
) -> Result<(), RunError> {
    if !dist.is_primary() {
        return Ok(());
    }
    std::fs::create_dir_all(out)
        .map_err(|e| RunError::Invalid(format!("{}: cannot create: {e}", out.display())))?;
    let md = ModelDir::new(out);
    write_atomic(&md.config(), cfg.to_toml().as_bytes())?;
    crate::files::write_json(&md.split(), split)?;
    Ok(())
}

/// Trains the old model (classification only) on the split's old part; writes `config.toml`,
/// `split.json` and the model into `out`.
pub fn train_old(
    cfg: &RunConfig,
    out: &Path,
    opts: &StepOptions,
) -> Result<TrainOutcome, RunError> {
    cfg.validate().map_err(RunError::Invalid)?;
    let crate::data::Opened {
        train: train_set,
        test: test_set,
        validation,
    } = crate::data::open(&cfg.data)?;
    let split = Split {
        validation,
        ..Split::new(&cfg.split, &train_set.labels(), cfg.data.classes)?
    };
    write_run_files(out, cfg, &split, &*opts.dist)?;
    let data = train_set.relabel(&split.old_indices, &split.old_classes);
    Ok(train(TrainJob {
        name: "old".into(),
        role: Role::Old,
        data: data.as_data(),
        classes: split.old_classes.clone(),
        model: cfg.model.clone(),
        train: cfg.old.clone(),
        method: Method::INDEPENDENT,
        compat: Method::INDEPENDENT
            .build(&cfg.compat, BuildContext::default())
            .map_err(RunError::Invalid)?,
        old: None,
        split_fingerprint: split.fingerprint.clone(),
        out_dir: out.to_path_buf(),
        resume: opts.resume,
        device: opts.device,
        note: String::new(),
        progress: opts.progress,
        stop_after: opts.stop_after,
        probe: opts.probe_test.then_some(&test_set),
        dist: &*opts.dist,
    })?)
}

/// Reads the old run's configuration and split and checks the split still reproduces.
pub fn old_run(old_dir: &Path) -> Result<(RunConfig, Split), RunError> {
    let md = ModelDir::new(old_dir);
    let cfg = RunConfig::from_toml_file(&md.config())?;
    let split_path = md.split();
    let text = std::fs::read_to_string(&split_path).map_err(|e| RunError::Config {
        path: split_path.clone(),
        reason: format!(
            "cannot read ({e}); an old model's run directory holds the split its training wrote"
        ),
    })?;
    let split: Split = serde_json::from_str(&text).map_err(|e| RunError::Config {
        path: split_path.clone(),
        reason: e.to_string(),
    })?;
    Ok((cfg, split))
}

/// Trains a new model with `method` against the frozen old model in `old_dir`; the data and
/// split are the old run's, `cfg` gives the new model's settings.
pub fn train_new(
    cfg: &RunConfig,
    old_dir: &Path,
    method: Method,
    out: &Path,
    opts: &StepOptions,
) -> Result<TrainOutcome, RunError> {
    train_successor(cfg, old_dir, method, None, out, opts)
}

/// As [`train_new`], on a share of each class's training images when `fraction` is given
/// (a step of a sequential upgrade). The shares are nested: with the split's seed, the images
/// of fraction 0.3 are among those of 0.6 (the same per-class shuffle, a longer prefix).
pub fn train_successor(
    cfg: &RunConfig,
    old_dir: &Path,
    method: Method,
    fraction: Option<f64>,
    out: &Path,
    opts: &StepOptions,
) -> Result<TrainOutcome, RunError> {
    cfg.validate().map_err(RunError::Invalid)?;
    let (_, saved_split) = old_run(old_dir)?;
    let note = successor_note(cfg, fraction)?;
    let old_card = ModelCard::read(&ModelDir::new(old_dir).card())?;
    // a new model of another dimension than its old model's learns a projection head into it
    let arch = cfg.new_arch().successor_of(old_card.arch.dim);
    if opts.resume {
        refuse_other_settings(cfg, method, out)?;
        // A finished run of the same configuration is returned before anything is embedded.
        let key = job_config_string(
            &arch,
            &cfg.new,
            method.as_str(),
            &note,
            &saved_split.fingerprint,
        );
        if let Some(done) = finished_run(out, &key, cfg.new.epochs)? {
            if opts.dist.is_primary() {
                crate::train::overall::model_finished(&out.display().to_string(), None);
            }
            return Ok(done);
        }
    }
    let crate::data::Opened {
        train: train_set,
        test: test_set,
        validation,
    } = crate::data::open(&cfg.data)?;
    let train_labels = train_set.labels();
    let split = Split {
        validation,
        ..Split::new(&saved_split.config, &train_labels, cfg.data.classes)?
    };
    if split.validation != saved_split.validation {
        return Err(RunError::Invalid(format!(
            "{}: the validation part differs from the old model's run ({} vs saved {}): set \
             data.validation_per_class (and train_per_class) as the old run did",
            ModelDir::new(old_dir).split().display(),
            split.validation.as_deref().unwrap_or("none"),
            saved_split.validation.as_deref().unwrap_or("none")
        )));
    }
    if split.fingerprint != saved_split.fingerprint {
        return Err(RunError::Invalid(format!(
            "{}: the split no longer reproduces (fingerprint {} vs saved {}): the data differ from the old model's run",
            ModelDir::new(old_dir).split().display(),
            split.fingerprint,
            saved_split.fingerprint
        )));
    }
    let old = load_old(old_dir, &arch, opts.device)?;
    // the frozen old model runs inside the new model's step: under the same settings
    let old = match cfg.new.exec.is_default() {
        true => old,
        false => old.with_exec(cfg.new.exec)?,
    };
    let classes: Vec<i64> = (0..cfg.data.classes as i64).collect();
    let indices = successor_indices(cfg, &split, &train_labels, fraction)?;
    let data = train_set.relabel(&indices, &classes);
    let ctx = build_context(cfg, method, &old, data.as_data(), &data.labels(), opts)?;
    let mut saved = cfg.clone();
    saved.split = split.config.clone();
    write_run_files(out, &saved, &split, &*opts.dist)?;
    Ok(train(TrainJob {
        name: method.model_name(),
        role: Role::New,
        data: data.as_data(),
        classes,
        model: arch,
        train: cfg.new.clone(),
        method,
        compat: method.build(&cfg.compat, ctx).map_err(RunError::Invalid)?,
        old: Some(&old),
        split_fingerprint: split.fingerprint.clone(),
        out_dir: out.to_path_buf(),
        resume: opts.resume,
        device: opts.device,
        note,
        progress: opts.progress,
        stop_after: opts.stop_after,
        probe: opts.probe_test.then_some(&test_set),
        dist: &*opts.dist,
    })?)
}

/// The card's note of a new model: λ, the scale and the train fraction (checked) when given.
fn successor_note(cfg: &RunConfig, fraction: Option<f64>) -> Result<String, RunError> {
    let mut note = format!("lambda={} scale={}", cfg.compat.lambda, cfg.compat.scale);
    if let Some(r) = fraction {
        if !(r > 0.0 && r <= 1.0) {
            return Err(RunError::Invalid(format!(
                "train fraction must lie in (0, 1], got {r}"
            )));
        }
        note.push_str(&format!(" train_fraction={r}"));
    }
    Ok(note)
}

/// Refuses to resume a run in `out` made with other settings of `method`: that would mix two
/// runs in one directory (the checkpoint's key covers the model, training and λ, not every
/// knob of every method).
fn refuse_other_settings(cfg: &RunConfig, method: Method, out: &Path) -> Result<(), RunError> {
    let saved_cfg = ModelDir::new(out).config();
    if !saved_cfg.exists() {
        return Ok(());
    }
    let saved = RunConfig::from_toml_file(&saved_cfg)?;
    let was = method
        .config_view(&saved.compat)
        .map_err(|reason| RunError::Config {
            path: saved_cfg.clone(),
            reason,
        })?;
    let now = method.config_view(&cfg.compat).map_err(RunError::Invalid)?;
    if was != now {
        return Err(RunError::Invalid(format!(
            "{}: this run was made with other {method} settings ({was} there, {now} now); \
             delete the directory to retrain it or choose another output directory",
            out.display()
        )));
    }
    Ok(())
}

/// The frozen model a new one must be compatible with: an old model (or a new one that
/// declares compatibility itself) embedding the same images, in the new model's dimension or
/// in the one its projection head maps into.
fn load_old(old_dir: &Path, arch: &ModelConfig, device: Device) -> Result<Embedder, RunError> {
    let old = Embedder::load(old_dir, device)?;
    if old.card.role != Role::Old && old.card.compatible_with.is_none() {
        return Err(RunError::Invalid(format!(
            "{}: not an old model",
            old_dir.display()
        )));
    }
    if old.card.arch.in_channels != arch.in_channels {
        return Err(RunError::Invalid(format!(
            "{}: the old model embeds {}-channel images, the new model's architecture {}: \
             both must embed the same images (set new_model.in_channels, or model.in_channels, \
             to {})",
            old_dir.display(),
            old.card.arch.in_channels,
            arch.in_channels,
            old.card.arch.in_channels
        )));
    }
    if arch.compat_dim.unwrap_or(arch.dim) != old.card.arch.dim {
        return Err(RunError::Invalid(format!(
            "{}: the old model embeds in dimension {}, the new model's architecture reaches {}",
            old_dir.display(),
            old.card.arch.dim,
            arch.compat_dim.unwrap_or(arch.dim)
        )));
    }
    Ok(old)
}

/// The training items of a new model: the split's new part, or with `fraction` < 1 that share
/// of each class (data scenarios only).
fn successor_indices(
    cfg: &RunConfig,
    split: &Split,
    labels: &[i64],
    fraction: Option<f64>,
) -> Result<Vec<usize>, RunError> {
    match fraction {
        Some(r) if r < 1.0 => {
            if !matches!(
                split.config.scenario,
                Scenario::ExtendedData | Scenario::OpenData
            ) {
                return Err(RunError::Invalid(format!(
                    "a train fraction needs a data scenario, not {}",
                    split.config.scenario
                )));
            }
            let sub = SplitConfig {
                fraction: r,
                ..split.config.clone()
            };
            Ok(Split::new(&sub, labels, cfg.data.classes)?.old_indices)
        }
        _ => Ok(split.new_indices.clone()),
    }
}

/// What the method needs before its loss is built: the old prototypes over the whole new
/// training set, computed once with the frozen old model (this covers classes the old model
/// never saw), and F°, a seeded per-class sample of the same old features.
fn build_context(
    cfg: &RunConfig,
    method: Method,
    old: &Embedder,
    data: TrainData,
    labels: &[i64],
    opts: &StepOptions,
) -> Result<BuildContext, RunError> {
    let device = opts.device;
    let mut ctx = BuildContext::default();
    if !method.needs_prototypes() {
        return Ok(ctx);
    }
    let classes = cfg.data.classes as i64;
    let g = embed_train(old, data, cfg.eval_batch, &*opts.dist)?.to_device(device);
    let y = Tensor::from_slice(labels)
        .to_kind(Kind::Int64)
        .to_device(device);
    let means = class_prototypes(&g, &y, classes)?.detach();
    ctx.prototypes = Some(match cfg.compat.prototypes {
        OldPrototypes::ClassMeans => means,
        OldPrototypes::OldClassifier => old_classifier_prototypes(old, &means)?,
    });
    if method.needs_old_radii() {
        let table = ctx.prototypes(method.as_str()).map_err(RunError::Invalid)?;
        ctx.old_radii = Some(crate::loss::radii::old_class_radii(&table, &g, &y));
    }
    if method.needs_old_bank() {
        let bank_size = cfg.compat.old_bank_per_class().map_err(RunError::Invalid)?;
        let mut rng = rng_for(cfg.new.seed, 4_000_000);
        let idx = per_class_sample(labels, bank_size, &mut rng);
        let idx_t = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>())
            .to_device(device);
        ctx.old_bank = Some((g.index_select(0, &idx_t), y.index_select(0, &idx_t)));
    }
    Ok(ctx)
}

/// The old model's classifier rows as prototypes of the classes it covers (its card lists them
/// in classifier order), normalised; the other classes keep their row of `means`.
pub fn old_classifier_prototypes(old: &Embedder, means: &Tensor) -> Result<Tensor, RunError> {
    let path = ModelDir::new(&old.dir).weights();
    let w = Tensor::read_safetensors(&path)
        .map_err(|e| RunError::Config {
            path: path.clone(),
            reason: e.to_string(),
        })?
        .into_iter()
        .find(|(n, _)| n == ClassifierHead::WEIGHT_VAR)
        .map(|(_, t)| t)
        .ok_or_else(|| RunError::Config {
            path: path.clone(),
            reason: "no classifier.weight: compat.prototypes = \"old-classifier\" needs the old \
                     model's classifier"
                .into(),
        })?;
    let rows = crate::model::l2_normalize(&w.to_kind(Kind::Float)).to_device(means.device());
    let (c, d) = means
        .size2()
        .map_err(|e| RunError::Invalid(e.to_string()))?;
    if rows.size() != [old.card.classes.len() as i64, d] {
        return Err(RunError::Config {
            path,
            reason: format!(
                "classifier.weight is {:?}, the card lists {} classes of dimension {d}",
                rows.size(),
                old.card.classes.len()
            ),
        });
    }
    let out = means.copy();
    for (i, &k) in old.card.classes.iter().enumerate() {
        if (0..c).contains(&k) {
            out.get(k).copy_(&rows.get(i as i64));
        }
    }
    Ok(out)
}

/// The models of one protocol run (see [`train_protocol`]).
#[derive(Debug)]
pub struct TrainedRun {
    /// The model directories: the old model's, then one per method, in order.
    pub dirs: Vec<PathBuf>,
    /// Each model's name and per-epoch figures, in the same order.
    pub curves: Vec<(String, Vec<crate::train::EpochStats>)>,
}

/// One protocol run's training, the one orchestration `bcl demo` and each (scenario, seed) of an
/// experiment share: the old model in `run`'s `old/`, then a new model per method in its
/// directory (finished models are reused with `opts.resume`).
pub fn train_protocol(
    cfg: &RunConfig,
    run: &RunDir,
    methods: &[Method],
    opts: &StepOptions,
) -> Result<TrainedRun, RunError> {
    let old = run.old();
    let old_dir = old.path();
    let mut curves = vec![("old".to_string(), train_old(cfg, old_dir, opts)?.history)];
    let mut dirs = vec![old_dir.to_path_buf()];
    for &m in methods {
        let d = run.model(&m.model_name());
        let o = train_new(cfg, old_dir, m, d.path(), opts)?;
        curves.push((m.model_name(), o.history));
        dirs.push(d.path().to_path_buf());
    }
    Ok(TrainedRun { dirs, curves })
}

/// The whole extended-data (or configured) protocol: old model, each configured new method,
/// evaluation on the test set, report. Resumable: finished models are reused with `resume`.
pub fn demo(cfg: &RunConfig, out: &Path, opts: &StepOptions) -> Result<EvalReport, RunError> {
    std::fs::create_dir_all(out)
        .map_err(|e| RunError::Invalid(format!("{}: cannot create: {e}", out.display())))?;
    let run = RunDir::new(out);
    write_atomic(&run.config(), cfg.to_toml().as_bytes())?;
    let trained = train_protocol(cfg, &run, &cfg.methods, opts)?;
    let models = trained
        .dirs
        .iter()
        .map(|d| Embedder::load(d, opts.device))
        .collect::<Result<Vec<_>, _>>()?;
    let test = crate::data::open_test(&cfg.data)?;
    let report = evaluate_models(&models, &test, cfg.eval_batch)?;
    write_eval_report(&run, &report, &trained.curves)?;
    Ok(report)
}
