//! Pipeline: the run configuration and the steps the CLI exposes (train the old model, train a
//! new model against it, evaluate a set of models, the whole demo), wired from the concept
//! modules. No method-specific logic lives here: methods come from [`Method::build`].

pub mod benchmark;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::data::source::TrainData;
use crate::data::{
    per_class_sample, rng_for, DataConfig, DataError, Dataset, Scenario, Split, SplitConfig,
};
use crate::eval::{is_compatible, update_gain, CompatMatrix, EvalError};
use crate::files::write_atomic;
use crate::loss::{BuildContext, CompatConfig, Method, OldPrototypes};
use crate::model::{Embedder, ModelConfig, ModelError, ModelOverride, Role};
use crate::perturb::{class_prototypes, PrototypeError};
use crate::report::{
    matrix_csv, plot_curves, plot_matrix, rows_csv, rows_markdown, ReportError, ResultRow,
};
use crate::train::{
    finished_run, job_config_string, train, EpochStats, TrainConfig, TrainError, TrainJob,
    TrainOutcome,
};

/// Errors of a pipeline step; each variant carries the file or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Data reading or splitting.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Model files.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Training.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// Evaluation.
    #[error(transparent)]
    Eval(#[from] EvalError),
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
            methods: vec![Method::Independent, Method::L2, Method::Bct],
            eval_batch: 512,
        }
    }
}

impl RunConfig {
    /// The `--quick` preset: a small balanced subset, a narrow model, one or two epochs.
    pub fn quick() -> Self {
        let mut c = Self::default();
        c.data.train_per_class = Some(400);
        c.data.test_per_class = Some(100);
        c.model.width = 8;
        c.model.dim = 64;
        c.old.epochs = 3;
        c.new.epochs = 2;
        c.old.batch_size = 64;
        c.new.batch_size = 64;
        c
    }

    /// Reads a TOML file over the defaults (unknown keys are errors).
    pub fn from_toml_file(path: &Path) -> Result<Self, PipelineError> {
        let cfg: Self = crate::files::read_toml(path)?;
        cfg.validate().map_err(|reason| PipelineError::Config {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(cfg)
    }

    /// Checks the settings whose meaning bounds them (the compatibility term's); the error
    /// names the setting.
    pub fn validate(&self) -> Result<(), String> {
        self.new_model.check_against(&self.model)?;
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
pub fn parse_device(s: &str) -> Result<Device, PipelineError> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available()),
        "cuda" => {
            if tch::Cuda::is_available() {
                Ok(Device::Cuda(0))
            } else {
                Err(PipelineError::Invalid(
                    "--device cuda: no CUDA device is available here; use --device cpu or auto"
                        .into(),
                ))
            }
        }
        s if s.starts_with("cuda:") => {
            let i: usize = s[5..].parse().map_err(|_| {
                PipelineError::Invalid(format!("--device {s}: expected cuda:N with N a number"))
            })?;
            if i < tch::Cuda::device_count() as usize {
                Ok(Device::Cuda(i))
            } else {
                Err(PipelineError::Invalid(format!(
                    "--device {s}: only {} CUDA devices here",
                    tch::Cuda::device_count()
                )))
            }
        }
        _ => Err(PipelineError::Invalid(format!(
            "--device {s}: expected cpu, cuda, cuda:N or auto"
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
}

/// Normalised embeddings `[N, d]` (CPU) of every training item by `model`, streamed.
pub fn embed_train(
    model: &Embedder,
    data: TrainData,
    batch: usize,
) -> Result<Tensor, PipelineError> {
    let all: Vec<usize> = (0..data.len()).collect();
    let mut out = Vec::new();
    for b in data.batches(
        &all,
        batch.max(1),
        None,
        model.card.normalization,
        model.device(),
    ) {
        let (x, _) = b?;
        out.push(model.embed_batch(&x).to_device(Device::Cpu));
    }
    Ok(Tensor::cat(&out, 0))
}

/// Trains the old model (classification only) on the split's old part; writes `config.toml`,
/// `split.json` and the model into `out`.
pub fn train_old(
    cfg: &RunConfig,
    out: &Path,
    opts: &StepOptions,
) -> Result<TrainOutcome, PipelineError> {
    cfg.validate().map_err(PipelineError::Invalid)?;
    let crate::data::Opened {
        train: train_set,
        test: test_set,
    } = crate::data::open(&cfg.data)?;
    let split = Split::new(&cfg.split, &train_set.labels(), cfg.data.classes)?;
    std::fs::create_dir_all(out)
        .map_err(|e| PipelineError::Invalid(format!("{}: cannot create: {e}", out.display())))?;
    write_atomic(&out.join("config.toml"), cfg.to_toml().as_bytes())?;
    crate::files::write_json(&out.join("split.json"), &split)?;
    let data = train_set.relabel(&split.old_indices, &split.old_classes);
    Ok(train(TrainJob {
        name: "old".into(),
        role: Role::Old,
        data: data.as_data(),
        classes: split.old_classes.clone(),
        model: cfg.model.clone(),
        train: cfg.old.clone(),
        compat: Method::Independent.build(&cfg.compat, BuildContext::default()),
        old: None,
        split_fingerprint: split.fingerprint.clone(),
        out_dir: out.to_path_buf(),
        resume: opts.resume,
        device: opts.device,
        note: String::new(),
        progress: opts.progress,
        stop_after: opts.stop_after,
        probe: opts.probe_test.then_some(&test_set),
    })?)
}

/// Reads the old run's configuration and split and checks the split still reproduces.
pub fn old_run(old_dir: &Path) -> Result<(RunConfig, Split), PipelineError> {
    let cfg = RunConfig::from_toml_file(&old_dir.join("config.toml"))?;
    let split_path = old_dir.join("split.json");
    let text = std::fs::read_to_string(&split_path).map_err(|e| PipelineError::Config {
        path: split_path.clone(),
        reason: format!("cannot read ({e}); --old must be a directory written by `bcl train-old`"),
    })?;
    let split: Split = serde_json::from_str(&text).map_err(|e| PipelineError::Config {
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
) -> Result<TrainOutcome, PipelineError> {
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
) -> Result<TrainOutcome, PipelineError> {
    cfg.validate().map_err(PipelineError::Invalid)?;
    let (_, saved_split) = old_run(old_dir)?;
    let mut note = format!("lambda={} scale={}", cfg.compat.lambda, cfg.compat.scale);
    if let Some(r) = fraction {
        if !(r > 0.0 && r <= 1.0) {
            return Err(PipelineError::Invalid(format!(
                "train fraction must lie in (0, 1], got {r}"
            )));
        }
        note.push_str(&format!(" train_fraction={r}"));
    }
    // Resuming under other settings of the method would mix two runs in one directory (the
    // checkpoint's key covers the model, training and λ, not every knob of every method).
    let saved_cfg = out.join("config.toml");
    if opts.resume && saved_cfg.exists() {
        let saved = RunConfig::from_toml_file(&saved_cfg)?;
        let (was, now) = (
            method.config_view(&saved.compat),
            method.config_view(&cfg.compat),
        );
        if was != now {
            return Err(PipelineError::Invalid(format!(
                "{}: this run was made with other {method} settings ({was} there, {now} now); \
                 delete the directory to retrain it or choose another output directory",
                out.display()
            )));
        }
    }
    // A finished run of the same configuration is returned before anything is embedded.
    if opts.resume {
        let key = job_config_string(
            &cfg.new_arch(),
            &cfg.new,
            method.as_str(),
            &note,
            &saved_split.fingerprint,
        );
        if let Some(done) = finished_run(out, &key, cfg.new.epochs)? {
            return Ok(done);
        }
    }
    let crate::data::Opened {
        train: train_set,
        test: test_set,
    } = crate::data::open(&cfg.data)?;
    let train_labels = train_set.labels();
    let split = Split::new(&saved_split.config, &train_labels, cfg.data.classes)?;
    if split.fingerprint != saved_split.fingerprint {
        return Err(PipelineError::Invalid(format!(
            "{}: the split no longer reproduces (fingerprint {} vs saved {}): the data differ from the old model's run",
            old_dir.join("split.json").display(),
            split.fingerprint,
            saved_split.fingerprint
        )));
    }
    let old = Embedder::load(old_dir, opts.device)?;
    if old.card.role != Role::Old && old.card.compatible_with.is_none() {
        return Err(PipelineError::Invalid(format!(
            "{}: not an old model",
            old_dir.display()
        )));
    }
    let arch = cfg.new_arch();
    if old.card.arch.dim != arch.dim || old.card.arch.in_channels != arch.in_channels {
        return Err(PipelineError::Invalid(format!(
            "{}: the old model embeds {}-channel images in dimension {}, the new model's \
             architecture {} in {}: a new model must embed the same images in the old model's \
             dimension (set new_model.dim, or model.dim, to {})",
            old_dir.display(),
            old.card.arch.in_channels,
            old.card.arch.dim,
            arch.in_channels,
            arch.dim,
            old.card.arch.dim
        )));
    }
    let classes: Vec<i64> = (0..cfg.data.classes as i64).collect();
    let indices = match fraction {
        Some(r) if r < 1.0 => {
            if !matches!(
                split.config.scenario,
                Scenario::ExtendedData | Scenario::OpenData
            ) {
                return Err(PipelineError::Invalid(format!(
                    "a train fraction needs a data scenario, not {}",
                    split.config.scenario
                )));
            }
            let sub = SplitConfig {
                fraction: r,
                ..split.config.clone()
            };
            Split::new(&sub, &train_labels, cfg.data.classes)?.old_indices
        }
        _ => split.new_indices.clone(),
    };
    let data = train_set.relabel(&indices, &classes);
    let data_labels = data.labels();
    // Old prototypes over the whole new training set, computed once with the frozen old model
    // (this covers classes the old model never saw); F° is a seeded per-class sample of the
    // same old features.
    let mut ctx = BuildContext::default();
    if method.needs_prototypes() {
        let g = embed_train(&old, data.as_data(), cfg.eval_batch)?.to_device(opts.device);
        let y = Tensor::from_slice(&data_labels)
            .to_kind(Kind::Int64)
            .to_device(opts.device);
        let means = class_prototypes(&g, &y, classes.len() as i64)?.detach();
        ctx.prototypes = Some(match cfg.compat.prototypes {
            OldPrototypes::ClassMeans => means,
            OldPrototypes::OldClassifier => old_classifier_prototypes(&old, &means)?,
        });
        if method.needs_old_bank() {
            let mut rng = rng_for(cfg.new.seed, 4_000_000);
            let idx = per_class_sample(&data_labels, cfg.compat.odpp.old_bank_per_class, &mut rng);
            let idx_t = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>())
                .to_device(opts.device);
            ctx.old_bank = Some((g.index_select(0, &idx_t), y.index_select(0, &idx_t)));
        }
    }
    std::fs::create_dir_all(out)
        .map_err(|e| PipelineError::Invalid(format!("{}: cannot create: {e}", out.display())))?;
    let mut saved = cfg.clone();
    saved.split = split.config.clone();
    write_atomic(&out.join("config.toml"), saved.to_toml().as_bytes())?;
    crate::files::write_json(&out.join("split.json"), &split)?;
    Ok(train(TrainJob {
        name: method.model_name(),
        role: Role::New,
        data: data.as_data(),
        classes,
        model: arch,
        train: cfg.new.clone(),
        compat: method.build(&cfg.compat, ctx),
        old: Some(&old),
        split_fingerprint: split.fingerprint.clone(),
        out_dir: out.to_path_buf(),
        resume: opts.resume,
        device: opts.device,
        note,
        progress: opts.progress,
        stop_after: opts.stop_after,
        probe: opts.probe_test.then_some(&test_set),
    })?)
}

/// The old model's classifier rows as prototypes of the classes it covers (its card lists them
/// in classifier order), normalised; the other classes keep their row of `means`.
pub fn old_classifier_prototypes(old: &Embedder, means: &Tensor) -> Result<Tensor, PipelineError> {
    let path = old.dir.join("model.safetensors");
    let w = Tensor::read_safetensors(&path)
        .map_err(|e| PipelineError::Config {
            path: path.clone(),
            reason: e.to_string(),
        })?
        .into_iter()
        .find(|(n, _)| n == "classifier.weight")
        .map(|(_, t)| t)
        .ok_or_else(|| PipelineError::Config {
            path: path.clone(),
            reason: "no classifier.weight: compat.prototypes = \"old-classifier\" needs the old \
                     model's classifier"
                .into(),
        })?;
    let rows = crate::model::l2_normalize(&w.to_kind(Kind::Float)).to_device(means.device());
    let (c, d) = means
        .size2()
        .map_err(|e| PipelineError::Invalid(e.to_string()))?;
    if rows.size() != [old.card.classes.len() as i64, d] {
        return Err(PipelineError::Config {
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

/// Results of evaluating a set of models on one test set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    /// Number of test items.
    pub test_items: usize,
    /// The compatibility matrix over all models.
    pub matrix: CompatMatrix,
    /// One row per new model: self-test, cross-test against its old model, criterion and gain.
    pub rows: Vec<ResultRow>,
}

/// Embeds `test` with every model and computes the full matrix and the per-method rows.
pub fn evaluate_models(
    models: &[Embedder],
    test: &Dataset,
    batch: usize,
) -> Result<EvalReport, PipelineError> {
    evaluate_models_with(models, test, batch, MatrixCells::All)
}

/// Which cells of the compatibility matrix an evaluation computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatrixCells {
    /// Every (query model, gallery model) pair.
    All,
    /// What the results table needs: each model against itself and against the old models
    /// (new-against-new pairs skipped: with ten models, 19 cells instead of 100).
    Table,
}

/// As [`evaluate_models`], computing the cells `cells` asks for.
pub fn evaluate_models_with(
    models: &[Embedder],
    test: &Dataset,
    batch: usize,
    cells: MatrixCells,
) -> Result<EvalReport, PipelineError> {
    if models.is_empty() {
        return Err(PipelineError::Invalid("no model to evaluate".into()));
    }
    let names: Vec<String> = models.iter().map(|m| m.card.name.clone()).collect();
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return Err(PipelineError::Invalid(format!(
                "two models are named '{n}'"
            )));
        }
    }
    for m in models {
        let shape = [test.channels, test.rows, test.cols];
        if m.card.input_shape != shape {
            return Err(PipelineError::Invalid(format!(
                "{}: the model expects images of shape {:?}, the test set has {:?}",
                m.dir.display(),
                m.card.input_shape,
                shape
            )));
        }
    }
    let feats: Vec<Tensor> = models
        .iter()
        .map(|m| m.embed_dataset(test, batch))
        .collect();
    let matrix = CompatMatrix::compute_pairs(&names, &feats, &test.labels, |q, g| {
        cells == MatrixCells::All || q == g || models[g].card.role == Role::Old
    })?;
    let indep = models
        .iter()
        .position(|m| m.card.role == Role::New && m.card.method == "independent");
    let mut rows = Vec::new();
    for (i, m) in models.iter().enumerate() {
        if m.card.role != Role::New {
            continue;
        }
        // The old model: the one this model claims compatibility with, else the only old one.
        let old = match &m.card.compatible_with {
            Some(id) => models.iter().position(|o| &o.card.id == id),
            None => {
                let olds: Vec<usize> = (0..models.len())
                    .filter(|&j| models[j].card.role == Role::Old)
                    .collect();
                (olds.len() == 1).then(|| olds[0])
            }
        };
        let Some(o) = old else { continue };
        let oo = matrix.at(o, o);
        let cross = matrix.at(i, o);
        let selft = matrix.at(i, i);
        let gain = indep.and_then(|k| update_gain(cross.map, oo.map, matrix.at(k, k).map));
        rows.push(ResultRow {
            method: m.card.method.clone(),
            old_old_map: oo.map,
            self_map: selft.map,
            cross_map: cross.map,
            self_r1: selft.recall_at[&1],
            cross_r1: cross.recall_at[&1],
            compatible: is_compatible(cross.map, oo.map),
            gain,
        });
    }
    Ok(EvalReport {
        test_items: test.len(),
        matrix,
        rows,
    })
}

/// Writes an evaluation's tables and plots into `dir`: results.md/.csv, metrics.json,
/// matrix.csv, compat_matrix.svg and (when given) training_curves.svg.
pub fn write_report(
    dir: &Path,
    report: &EvalReport,
    curves: &[(String, Vec<EpochStats>)],
) -> Result<(), PipelineError> {
    write_atomic(
        &dir.join("results.md"),
        rows_markdown(&report.rows).as_bytes(),
    )?;
    write_atomic(&dir.join("results.csv"), rows_csv(&report.rows).as_bytes())?;
    write_atomic(
        &dir.join("matrix.csv"),
        matrix_csv(&report.matrix).as_bytes(),
    )?;
    crate::files::write_json(&dir.join("metrics.json"), report)?;
    plot_matrix(&report.matrix, &dir.join("compat_matrix.svg"))?;
    if !curves.is_empty() {
        plot_curves(curves, &dir.join("training_curves.svg"))?;
    }
    Ok(())
}

/// The whole extended-data (or configured) protocol: old model, each configured new method,
/// evaluation on the test set, report. Resumable: finished models are reused with `resume`.
pub fn demo(cfg: &RunConfig, out: &Path, opts: &StepOptions) -> Result<EvalReport, PipelineError> {
    std::fs::create_dir_all(out)
        .map_err(|e| PipelineError::Invalid(format!("{}: cannot create: {e}", out.display())))?;
    write_atomic(&out.join("config.toml"), cfg.to_toml().as_bytes())?;
    let old_dir = out.join("old");
    let mut curves = vec![("old".to_string(), train_old(cfg, &old_dir, opts)?.history)];
    let mut dirs = vec![old_dir.clone()];
    for &m in &cfg.methods {
        let d = out.join(m.model_name());
        let o = train_new(cfg, &old_dir, m, &d, opts)?;
        curves.push((m.model_name(), o.history));
        dirs.push(d);
    }
    let models = dirs
        .iter()
        .map(|d| Embedder::load(d, opts.device))
        .collect::<Result<Vec<_>, _>>()?;
    let test = crate::data::open_test(&cfg.data)?;
    let report = evaluate_models(&models, &test, cfg.eval_batch)?;
    write_report(out, &report, &curves)?;
    Ok(report)
}

/// Result of [`bench_train_step`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResult {
    /// Implementation measured.
    pub r#impl: String,
    /// libtorch intra-op threads.
    pub threads: i32,
    /// Model width.
    pub width: i64,
    /// Blocks per stage.
    pub blocks: i64,
    /// Embedding dimension.
    pub dim: i64,
    /// Images per step.
    pub batch: i64,
    /// Timed steps.
    pub steps: usize,
    /// Wall time of the timed steps.
    pub seconds: f64,
    /// Training throughput.
    pub images_per_s: f64,
}

/// Times the training step of the configured model (forward, head loss, backward, SGD update)
/// on a fixed random batch: the same step as `bench/torch_reference.py`.
pub fn bench_train_step(
    cfg: &RunConfig,
    batch: i64,
    size: i64,
    steps: usize,
    warmup: usize,
    device: Device,
) -> Result<BenchResult, PipelineError> {
    use crate::loss::ClassifierHead;
    use crate::model::EmbeddingNet;
    use crate::train::Sgd;
    if batch < 1 || steps < 1 || size < 8 {
        return Err(PipelineError::Invalid(
            "--batch and --steps must be >= 1 and --size >= 8".into(),
        ));
    }
    cfg.model.validate()?;
    tch::manual_seed(0);
    let vs = tch::nn::VarStore::new(device);
    let net = EmbeddingNet::new(&(vs.root() / "net"), &cfg.model);
    let classes = cfg.data.classes as i64;
    let head = ClassifierHead::new(
        &(vs.root() / "classifier"),
        &cfg.old.head,
        cfg.model.dim,
        classes,
    );
    let mut opt = Sgd::new(&vs, cfg.old.momentum, cfg.old.weight_decay);
    let x = Tensor::randn(
        [batch, cfg.model.in_channels, size, size],
        (Kind::Float, device),
    );
    let y = Tensor::randint(classes, [batch], (Kind::Int64, device));
    let mut step = || {
        opt.zero_grad();
        let f = net.forward_t(&x, true);
        let loss = head.loss(&f, &y);
        loss.backward();
        opt.step(0.05);
    };
    for _ in 0..warmup {
        step();
    }
    if let Device::Cuda(_) = device {
        tch::Cuda::synchronize(0);
    }
    let t0 = std::time::Instant::now();
    for _ in 0..steps {
        step();
    }
    if let Device::Cuda(_) = device {
        tch::Cuda::synchronize(0);
    }
    let seconds = t0.elapsed().as_secs_f64();
    Ok(BenchResult {
        r#impl: "bcl (tch)".into(),
        threads: tch::get_num_threads(),
        width: cfg.model.width,
        blocks: cfg.model.blocks,
        dim: cfg.model.dim,
        batch,
        steps,
        seconds,
        images_per_s: (steps as i64 * batch) as f64 / seconds,
    })
}
