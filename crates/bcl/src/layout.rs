//! The layout of what `bcl` writes to disk: every file and directory name of a model directory
//! ([`ModelDir`]), of a protocol run (old model, new models, evaluation: [`RunDir`], as `bcl
//! demo` and each (scenario, seed) of an experiment write it), of an experiment
//! ([`ExperimentDir`]) and of a fitted adapter ([`AdapterDir`]). Nothing else in the crate or
//! the CLI spells one of these names; a reader and its writer go through the same method.
//! Depends on nothing in the crate.

use std::path::{Path, PathBuf};

/// The directory holding `path` when it is a file (or names one of `files`), else `path`.
fn dir_of(path: &Path, files: [&str; 2]) -> PathBuf {
    let is_file = path.is_file()
        || files
            .iter()
            .any(|f| path.file_name().is_some_and(|n| n == *f));
    match (is_file, path.parent()) {
        (true, Some(p)) => p.to_path_buf(),
        _ => path.to_path_buf(),
    }
}

/// One trained model's directory: its run configuration, split (old models), weights, card,
/// training history, refresh diagnostics and checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelDir(PathBuf);

impl ModelDir {
    /// The model weights' file name (`model.safetensors`).
    pub const WEIGHTS: &'static str = "model.safetensors";
    /// The model card's file name (`model.json`).
    pub const CARD: &'static str = "model.json";
    /// The run configuration's file name (`config.toml`).
    pub const CONFIG: &'static str = "config.toml";

    /// The model directory at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self(path.into())
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The directory of the model whose weights or card is `path`, or `path` itself when it is
    /// a directory (commands accept either).
    pub fn of(path: &Path) -> Self {
        Self::new(dir_of(path, [Self::WEIGHTS, Self::CARD]))
    }

    /// `config.toml`: the resolved run configuration the model was trained with.
    pub fn config(&self) -> PathBuf {
        self.0.join(Self::CONFIG)
    }

    /// `split.json`: the split of the training set (written with every model; the old model's
    /// is the one new models reproduce).
    pub fn split(&self) -> PathBuf {
        self.0.join("split.json")
    }

    /// Whether `path` is a model directory's split file (`split.json`).
    pub fn is_split(path: &Path) -> bool {
        path.parent()
            .is_some_and(|p| Self::new(p).split().as_path() == path)
    }

    /// `model.safetensors`: the model's variables (without a method's own).
    pub fn weights(&self) -> PathBuf {
        self.0.join(Self::WEIGHTS)
    }

    /// `model.json`: the model card.
    pub fn card(&self) -> PathBuf {
        self.0.join(Self::CARD)
    }

    /// `history.json`: the per-epoch figures.
    pub fn history(&self) -> PathBuf {
        self.0.join("history.json")
    }

    /// `refreshes.json`: the diagnostics of each refresh (methods that refresh).
    pub fn refreshes(&self) -> PathBuf {
        self.0.join("refreshes.json")
    }

    /// `checkpoint/`: the resumable state of the last finished epoch.
    pub fn checkpoint(&self) -> PathBuf {
        self.0.join("checkpoint")
    }

    /// `checkpoint/state.json`: the checkpoint's epoch, configuration key and history.
    pub fn checkpoint_state(&self) -> PathBuf {
        self.checkpoint().join("state.json")
    }

    /// `checkpoint/weights.safetensors`: every variable, a method's own included.
    pub fn checkpoint_weights(&self) -> PathBuf {
        self.checkpoint().join("weights.safetensors")
    }

    /// `checkpoint/optimizer.safetensors`: the optimiser's momentum buffers.
    pub fn checkpoint_optimizer(&self) -> PathBuf {
        self.checkpoint().join("optimizer.safetensors")
    }

    /// `checkpoint/compat.safetensors`: the method's state (Δ, old prototypes, moving averages).
    pub fn checkpoint_compat(&self) -> PathBuf {
        self.checkpoint().join("compat.safetensors")
    }

    /// `figures-<part>.json`: the model's self-test, cross-test and old→old figures on a part
    /// of its run's data, cached by the selection protocol.
    pub fn figures_cache(&self, part: &str) -> PathBuf {
        self.0.join(format!("figures-{part}.json"))
    }
}

impl AsRef<Path> for ModelDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

/// One fitted adapter's directory: its tensors and its card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterDir(PathBuf);

impl AdapterDir {
    /// The adapter tensors' file name (`adapter.safetensors`).
    pub const WEIGHTS: &'static str = "adapter.safetensors";
    /// The adapter card's file name (`adapter.json`).
    pub const CARD: &'static str = "adapter.json";

    /// The adapter directory at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self(path.into())
    }

    /// The directory of the adapter whose tensors or card is `path`, or `path` itself when it
    /// is a directory (commands accept either).
    pub fn of(path: &Path) -> Self {
        Self::new(dir_of(path, [Self::WEIGHTS, Self::CARD]))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `adapter.safetensors`: the map's tensors.
    pub fn weights(&self) -> PathBuf {
        self.0.join(Self::WEIGHTS)
    }

    /// `adapter.json`: the adapter card.
    pub fn card(&self) -> PathBuf {
        self.0.join(Self::CARD)
    }
}

/// A protocol run: the old model, one new model per method (`new-<method>`, a name the method
/// registry gives), the resolved configuration and the evaluation's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir(PathBuf);

impl RunDir {
    /// The run directory at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self(path.into())
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `config.toml`: the run's resolved configuration (`bcl demo --config` reruns it).
    pub fn config(&self) -> PathBuf {
        self.0.join(ModelDir::CONFIG)
    }

    /// `old/`: the old model.
    pub fn old(&self) -> ModelDir {
        ModelDir::new(self.0.join("old"))
    }

    /// The directory of the model named `name` (`new-bct`, a sweep's `new-bct-lambda-0.3`).
    pub fn model(&self, name: &str) -> ModelDir {
        ModelDir::new(self.0.join(name))
    }

    /// `eval.json`: an experiment run's cached evaluation.
    pub fn eval_cache(&self) -> PathBuf {
        self.0.join("eval.json")
    }

    /// `adapters/<name>/`: an adapter an experiment run fitted (`new-independent-procrustes-100`).
    pub fn adapter(&self, name: &str) -> PathBuf {
        self.0.join("adapters").join(name)
    }

    /// `adapters.json`: an experiment run's cached adapted rows.
    pub fn adapters_cache(&self) -> PathBuf {
        self.0.join("adapters.json")
    }

    /// `backfill.json`: an experiment run's cached backfill curves.
    pub fn backfill_cache(&self) -> PathBuf {
        self.0.join("backfill.json")
    }

    /// `benchmark-<name>.json`: an experiment run's cached benchmark figures.
    pub fn benchmark_cache(&self, name: &str) -> PathBuf {
        self.0.join(format!("benchmark-{name}.json"))
    }

    /// `results.md`: the results table.
    pub fn results_md(&self) -> PathBuf {
        self.0.join("results.md")
    }

    /// `results.csv`: the results table as CSV.
    pub fn results_csv(&self) -> PathBuf {
        self.0.join("results.csv")
    }

    /// `matrix.csv`: the compatibility matrix.
    pub fn matrix_csv(&self) -> PathBuf {
        self.0.join("matrix.csv")
    }

    /// `metrics.json`: the whole evaluation report.
    pub fn metrics(&self) -> PathBuf {
        self.0.join("metrics.json")
    }

    /// `report.html`: the run's self-contained page (the name an experiment's page has too).
    pub fn html_report(&self) -> PathBuf {
        self.0.join(ExperimentFile::Html.name())
    }

    /// `command.txt`: the command line that wrote the run.
    pub fn command(&self) -> PathBuf {
        self.0.join(ExperimentFile::Command.name())
    }

    /// `compat_matrix.svg`: the compatibility matrix's heat map.
    pub fn matrix_plot(&self) -> PathBuf {
        self.0.join("compat_matrix.svg")
    }

    /// `training_curves.svg`: every model's training curves.
    pub fn curves_plot(&self) -> PathBuf {
        self.0.join("training_curves.svg")
    }

    /// `prototypes-<method>.svg`: old against pseudo-old prototypes (PCA).
    pub fn prototypes_plot(&self, method: &str) -> PathBuf {
        self.0.join(format!("prototypes-{method}.svg"))
    }
}

/// An experiment's directory: its resolved configuration, one [`RunDir`] per (scenario, seed),
/// the sequential chains and the aggregated tables, plots and report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExperimentDir(PathBuf);

impl ExperimentDir {
    /// The experiment directory at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self(path.into())
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `seed-<N>`: a seed's directory name.
    pub fn seed_name(seed: u64) -> String {
        format!("seed-{seed}")
    }

    /// The seed a directory named by [`ExperimentDir::seed_name`] holds (`None` for other names).
    pub fn seed_of(name: &str) -> Option<u64> {
        name.strip_prefix("seed-")?.parse().ok()
    }

    /// `<scenario>/seed-<N>`: a run's key in reports and its path under the experiment.
    pub fn run_key(scenario: &str, seed: u64) -> String {
        format!("{scenario}/{}", Self::seed_name(seed))
    }

    /// The run of `scenario` (its name as written in configuration files) and `seed`.
    pub fn run(&self, scenario: &str, seed: u64) -> RunDir {
        RunDir::new(self.0.join(scenario).join(Self::seed_name(seed)))
    }

    /// `sequential/seed-<N>/`: the sequential chains of one seed.
    pub fn sequential(&self, seed: u64) -> SequentialDir {
        SequentialDir(self.0.join("sequential").join(Self::seed_name(seed)))
    }

    /// `experiment.toml`: the resolved experiment configuration.
    pub fn config(&self) -> PathBuf {
        self.0.join("experiment.toml")
    }

    /// An aggregated output named `file` (`results.md`, `paired.json`, `frontier.csv`,
    /// `backfill.md`, `sequential.csv`, `benchmarks.md`, `diagnostics.md`, `report.json`):
    /// the names are listed once, in [`ExperimentFile`].
    pub fn file(&self, file: ExperimentFile) -> PathBuf {
        self.0.join(file.name())
    }

    /// `frontier-<scenario>.svg`: a scenario's knob frontier.
    pub fn frontier_plot(&self, scenario: &str) -> PathBuf {
        self.0.join(format!("frontier-{scenario}.svg"))
    }

    /// `selection-<scenario>.svg`: the protocol's chosen settings on the report seeds.
    pub fn selection_plot(&self, scenario: &str) -> PathBuf {
        self.0.join(format!("selection-{scenario}.svg"))
    }

    /// `selection-grids-<scenario>.svg`: the grids' validation figures on the selection seeds.
    pub fn selection_grids_plot(&self, scenario: &str) -> PathBuf {
        self.0.join(format!("selection-grids-{scenario}.svg"))
    }

    /// `backfill-<scenario>.svg`: a scenario's backfill curves.
    pub fn backfill_plot(&self, scenario: &str) -> PathBuf {
        self.0.join(format!("backfill-{scenario}.svg"))
    }
}

/// The aggregated files of an experiment directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExperimentFile {
    /// `results.md`: mean ± std over seeds.
    ResultsMd,
    /// `results.csv`.
    ResultsCsv,
    /// `paired.md`: each method against bct and independent, paired by seed.
    PairedMd,
    /// `paired.json`.
    PairedJson,
    /// `frontier.md`: each setting's mean and interval; the best compatible settings.
    FrontierMd,
    /// `frontier.csv`.
    FrontierCsv,
    /// `backfill.md`: partial-backfill curves and flips.
    BackfillMd,
    /// `backfill.csv`.
    BackfillCsv,
    /// `sequential.md`: the sequential chains.
    SequentialMd,
    /// `sequential.csv`.
    SequentialCsv,
    /// `benchmarks.md`: the benchmark protocols' figures.
    BenchmarksMd,
    /// `benchmarks.json` (`bcl benchmark --out`).
    BenchmarksJson,
    /// `diagnostics.md`: the refresh diagnostics.
    DiagnosticsMd,
    /// `selection.md`: settings chosen on validation, reported on fresh seeds.
    SelectionMd,
    /// `selection.json`.
    SelectionJson,
    /// `report.json`: everything above as one document.
    Report,
    /// `report.html`: the self-contained page of a run or experiment directory.
    Html,
    /// `command.txt`: the command line that wrote a run or experiment directory.
    Command,
}

impl ExperimentFile {
    /// The file's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::ResultsMd => "results.md",
            Self::ResultsCsv => "results.csv",
            Self::PairedMd => "paired.md",
            Self::PairedJson => "paired.json",
            Self::FrontierMd => "frontier.md",
            Self::FrontierCsv => "frontier.csv",
            Self::BackfillMd => "backfill.md",
            Self::BackfillCsv => "backfill.csv",
            Self::SequentialMd => "sequential.md",
            Self::SequentialCsv => "sequential.csv",
            Self::BenchmarksMd => "benchmarks.md",
            Self::BenchmarksJson => "benchmarks.json",
            Self::DiagnosticsMd => "diagnostics.md",
            Self::SelectionMd => "selection.md",
            Self::SelectionJson => "selection.json",
            Self::Report => "report.json",
            Self::Html => "report.html",
            Self::Command => "command.txt",
        }
    }
}

/// One seed's sequential chains: `m0/` (the chain's first model, shared by every method),
/// `<method>/m<i>/` (its i-th successor), a cached evaluation and a matrix plot per method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequentialDir(PathBuf);

impl SequentialDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `m0/`: the chain's first model.
    pub fn first(&self) -> ModelDir {
        ModelDir::new(self.0.join("m0"))
    }

    /// `<method>/m<i>/`: the i-th model of `method`'s chain.
    pub fn step(&self, method: &str, i: usize) -> ModelDir {
        ModelDir::new(self.0.join(method).join(format!("m{i}")))
    }

    /// `<method>/adapter-<kind>-m<i>/`: the adapter from the i-th model of `method`'s chain into
    /// the space of the model it follows.
    pub fn adapter(&self, method: &str, kind: &str, i: usize) -> PathBuf {
        self.0.join(method).join(format!("adapter-{kind}-m{i}"))
    }

    /// `eval-<method>.json`: the cached evaluation of `method`'s chain.
    pub fn eval_cache(&self, method: &str) -> PathBuf {
        self.0.join(format!("eval-{method}.json"))
    }

    /// `matrix-<method>.svg`: the chain's compatibility matrix.
    pub fn matrix_plot(&self, method: &str) -> PathBuf {
        self.0.join(format!("matrix-{method}.svg"))
    }
}
