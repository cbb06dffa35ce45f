//! The `bcl` command-line tool: parses arguments, loads configurations, calls the library and
//! prints. No logic of its own.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bcl::data::Scenario;
use bcl::eval::{read_features_npy, read_labels_npy, retrieval_metrics};
use bcl::layout::{ExperimentFile, ModelDir};
use bcl::loss::Method;
use bcl::model::Embedder;
use bcl::report::rows_markdown;
use bcl::run::{self, parse_device, RunConfig, StepOptions};
use clap::{Args, CommandFactory, Parser, Subcommand};

mod dist;
mod docs_cmd;
mod gallery_cmd;

/// Backward-compatible learning for retrieval: train new embedding models whose queries can be
/// searched against a gallery embedded by the old model.
#[derive(Parser)]
#[command(name = "bcl", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train the old model (classification only) on the old part of the split.
    TrainOld(TrainOldArgs),
    /// Train a new model against a frozen old model with a compatibility method.
    TrainNew(TrainNewArgs),
    /// Evaluate models on the test set: every (query model, gallery model) pair, leave-one-out.
    Eval(EvalArgs),
    /// Retrieval metrics from feature files (.npy), printed as JSON.
    Metrics(MetricsArgs),
    /// The whole extended-data protocol on Fashion-MNIST: old model, independent, l2 and bct.
    Demo(DemoArgs),
    /// Training throughput (images/s) of the configured model on random data, as JSON.
    Bench(BenchArgs),
    /// Run (or resume) an experiment: scenarios x methods x seeds, plus knob sweeps, from one
    /// TOML file; writes results.md/.csv (mean ± std), frontier.csv and plots.
    Experiment(ExperimentArgs),
    /// Time ODPP refreshes on synthetic prototypes and banks (JSON lines, one per class count).
    BenchOdpp(BenchOdppArgs),
    /// Bytes a data-parallel training step moves (gradients, buffers, features) for a model,
    /// class count and batch, per rank count (JSON lines); see docs/distributed.md.
    BenchDist(BenchDistArgs),
    /// Decoding throughput of the image loader (JPEG files of a class-folder tree, or
    /// generated ones), to compare with the training step's (`bcl bench --size`).
    BenchLoader(BenchLoaderArgs),
    /// Exact top-k search of query features in gallery features (.npy), blocked so that memory
    /// stays bounded; prints timing JSON, writes the indices and scores as .npy.
    Search(SearchArgs),
    /// A gallery that outlives its model: build, add, search (lineage-checked), backfill,
    /// status.
    #[command(subcommand)]
    Gallery(gallery_cmd::GalleryCommand),
    /// HTTP service over a gallery: POST /search (vectors or an image), GET /health, GET /stats.
    Serve(gallery_cmd::ServeArgs),
    /// Score models on standard benchmarks (Revisited Oxford/Paris, GLDv2 retrieval, In-shop,
    /// SOP) from their published files: every (query model, gallery model) pair.
    Benchmark(BenchmarkArgs),
    /// The registered compatibility methods: what each does, needs, sweeps and its settings.
    Methods,
    /// Shell completions (bash, zsh, fish, elvish, powershell), generated from these flags.
    Completions(docs_cmd::CompletionsArgs),
    /// The man page (or with --out, one page per command), generated from these flags.
    Man(docs_cmd::ManArgs),
}

#[derive(Args)]
struct BenchmarkArgs {
    /// TOML file of `[[benchmark]]` entries (name, kind = revisited|gldv2|inshop|sop, paths,
    /// [benchmark.image] resize/crop); see docs/benchmarks.md.
    #[arg(long)]
    config: PathBuf,
    /// Model directories (the first is usually the old model).
    #[arg(long = "model", required = true)]
    models: Vec<PathBuf>,
    /// Writes benchmarks.md and benchmarks.json here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
}

/// The `[[benchmark]]` entries of a file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BenchmarkFile {
    benchmark: Vec<bcl::eval::protocol::BenchmarkConfig>,
}

#[derive(Args)]
struct BenchLoaderArgs {
    /// A class-per-folder tree of images; without it, JPEGs are generated in a temporary
    /// directory.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Number of generated images.
    #[arg(long, default_value_t = 512)]
    images: usize,
    /// Width of the generated images.
    #[arg(long, default_value_t = 500)]
    width: u32,
    /// Height of the generated images.
    #[arg(long, default_value_t = 375)]
    height: u32,
    /// Shorter side after resize.
    #[arg(long, default_value_t = 256)]
    resize: u32,
    /// Side of the square crop.
    #[arg(long, default_value_t = 224)]
    crop: u32,
    /// Images per batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Batches decoded ahead (the bound on memory).
    #[arg(long, default_value_t = 4)]
    prefetch: usize,
}

#[derive(Args)]
struct SearchArgs {
    /// Query features, an [N, d] .npy matrix (float32, float64, float16 or bfloat16).
    #[arg(long)]
    query: PathBuf,
    /// Gallery features, an [M, d] .npy matrix (float32, float16 or bfloat16; on the CPU
    /// memory-mapped and searched where it lies, so it may be larger than memory).
    #[arg(long)]
    gallery: PathBuf,
    /// Neighbours per query.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Where to write the [N, k] int64 indices (.npy).
    #[arg(long)]
    out_indices: Option<PathBuf>,
    /// Where to write the [N, k] scores (.npy).
    #[arg(long)]
    out_scores: Option<PathBuf>,
    /// Queries per tile (the queries one thread scores against a gallery block at a time).
    #[arg(long, default_value_t = bcl::eval::search::SearchBlocks::default().query)]
    query_block: i64,
    /// Gallery rows per block.
    #[arg(long, default_value_t = bcl::eval::search::SearchBlocks::default().gallery)]
    gallery_block: i64,
    /// At most this many MiB of a memory-mapped gallery in memory at once (CPU).
    #[arg(long, default_value_t = 1024)]
    resident_mib: usize,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args)]
struct BenchOdppArgs {
    /// Class counts C to time (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "10,1000,10000")]
    classes: Vec<i64>,
    /// Embedding dimension d.
    #[arg(long, default_value_t = 256)]
    dim: i64,
    /// Features per class in each bank.
    #[arg(long, default_value_t = 8)]
    bank_per_class: i64,
    /// Adam steps to time per class count.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Adam learning rate η (default: ODPP's default).
    #[arg(long)]
    lr: Option<f64>,
    /// Classes in each bank sample's softmax beside its own ([compat.odpp] candidates; 0: all).
    #[arg(long, default_value_t = 0)]
    candidates: usize,
    /// With --candidates: also run the full objective from the same start and score both
    /// perturbations on it (quadratic in C: for C up to about 10,000).
    #[arg(long)]
    compare: bool,
    /// Also time a ResNet-18 training step (224 x 224, d = --dim, a C-way head) and report the
    /// refresh as a share of an epoch of this many images (GLDv2-clean: 1580470).
    #[arg(long)]
    epoch_images: Option<u64>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args)]
struct BenchDistArgs {
    /// The backbone (small, resnet18 or resnet50).
    #[arg(long, default_value = "resnet18")]
    backbone: bcl::model::Backbone,
    /// Embedding dimension d.
    #[arg(long, default_value_t = 512)]
    dim: i64,
    /// Classes of the classifier head (GLDv2: 81313).
    #[arg(long, default_value_t = 81313)]
    classes: i64,
    /// Global batch.
    #[arg(long, default_value_t = 256)]
    batch: i64,
    /// Rank counts (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    ranks: Vec<usize>,
}

#[derive(Args)]
struct ExperimentArgs {
    /// The experiment's TOML file (see experiments/ for examples).
    #[arg(long)]
    config: PathBuf,
    /// Output directory (rerun with the same one to resume).
    #[arg(long)]
    out: PathBuf,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
}

#[derive(Args, Clone)]
struct Common {
    /// TOML configuration (see `bcl demo` run directories for a complete one); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Directory of MNIST-layout IDX files (plain or .gz).
    #[arg(long)]
    data: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto (CUDA when present).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Continue an interrupted run from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Training epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Training seed (initialisation, order, augmentation).
    #[arg(long)]
    seed: Option<u64>,
    /// Use the quick preset (small subset, narrow model) as the base configuration.
    #[arg(long)]
    quick: bool,
    /// Stop after N epochs of this call, leaving a checkpoint to continue with --resume
    /// (fits a long run into time slots).
    #[arg(long)]
    stop_after: Option<usize>,
}

#[derive(Args)]
struct TrainOldArgs {
    #[command(flatten)]
    common: Common,
    /// extended-data, extended-class, open-data or open-class.
    #[arg(long)]
    scenario: Option<Scenario>,
    /// Share of each class's images (data scenarios) or of the classes (class scenarios) for the old model.
    #[arg(long)]
    fraction: Option<f64>,
    /// Seed of the split.
    #[arg(long)]
    split_seed: Option<u64>,
    /// Output directory of the run.
    #[arg(long, default_value = "runs/old")]
    out: PathBuf,
}

/// The registered methods as clap's possible values: `--help` lists each with its description.
fn method_values() -> impl clap::builder::TypedValueParser<Value = Method> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(
        Method::all().map(|m| PossibleValue::new(m.as_str()).help(m.description())),
    )
    .map(|s| Method::named(&s).expect("a possible value is a registered method"))
}

#[derive(Args)]
struct TrainNewArgs {
    #[command(flatten)]
    common: Common,
    /// Directory written by `bcl train-old` (or its model.json).
    #[arg(long)]
    old: PathBuf,
    /// Compatibility method (from the method registry; `bcl methods` describes each).
    #[arg(long, value_parser = method_values())]
    method: Method,
    /// Weight λ of the compatibility loss.
    #[arg(long)]
    lambda: Option<f64>,
    /// The new model's backbone (small, resnet18 or resnet50; default: the old model's).
    #[arg(long)]
    backbone: Option<bcl::model::Backbone>,
    /// The new model's first-stage width (small backbone; default: the old model's).
    #[arg(long)]
    width: Option<i64>,
    /// The new model's blocks per stage (small backbone; default: the old model's).
    #[arg(long)]
    blocks: Option<i64>,
    /// Output directory (default runs/new-METHOD).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct EvalArgs {
    /// Model directories (repeat); new models are paired with the model they claim compatibility with.
    #[arg(long = "model", required = true)]
    models: Vec<PathBuf>,
    /// TOML run configuration whose [data] section names the test data (default: the first
    /// model's own run configuration).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (overrides the configuration's).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Use only the first N test images per class.
    #[arg(long)]
    test_per_class: Option<usize>,
    /// Write results.md/.csv, metrics.json and plots here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    #[command(flatten)]
    exec: ExecArgs,
}

/// How a network runs (flags of the commands that run one; for GPUs: docs/performance.md).
#[derive(Args, Clone, Debug, Default)]
pub struct ExecArgs {
    /// Mixed precision of the network's forward pass: off, or bf16 (libtorch's autocast; the
    /// weights and the losses stay float32).
    #[arg(long, value_parser = ["off", "bf16"])]
    autocast: Option<String>,
    /// Lay activations and convolution weights out channels-last (NHWC).
    #[arg(long)]
    channels_last: bool,
}

impl ExecArgs {
    /// `base` with the flags given applied.
    pub fn apply(&self, base: bcl::exec::ExecConfig) -> bcl::exec::ExecConfig {
        use bcl::exec::Autocast;
        bcl::exec::ExecConfig {
            autocast: match self.autocast.as_deref() {
                Some("bf16") => Autocast::Bf16,
                Some(_) => Autocast::Off,
                None => base.autocast,
            },
            channels_last: self.channels_last || base.channels_last,
        }
    }

    /// The model in `path` on `device`, run with these settings.
    pub fn load(&self, path: &Path, device: tch::Device) -> Result<Embedder> {
        let e = Embedder::load(path, device)?;
        let exec = self.apply(Default::default());
        Ok(if exec.is_default() {
            e
        } else {
            e.with_exec(exec)?
        })
    }
}

#[derive(Args)]
struct MetricsArgs {
    /// Protocol: `class` (labels; leave-one-out without a gallery) or `revisited`
    /// (Revisited Oxford/Paris Easy/Medium/Hard with `--gnd`).
    #[arg(long, default_value = "class")]
    protocol: Protocol,
    /// Query features, an [N, d] float32/float64 .npy matrix.
    #[arg(long)]
    query: PathBuf,
    /// Query labels, a 1-D integer .npy array (class protocol).
    #[arg(long)]
    query_labels: Option<PathBuf>,
    /// Gallery (database) features; for the class protocol leave-one-out over the queries
    /// when absent.
    #[arg(long)]
    gallery: Option<PathBuf>,
    /// Gallery labels (class protocol).
    #[arg(long)]
    gallery_labels: Option<PathBuf>,
    /// Ground-truth pickle of the revisited protocol (gnd_roxford5k.pkl, gnd_rparis6k.pkl).
    #[arg(long)]
    gnd: Option<PathBuf>,
    /// k of mP@k for the revisited protocol.
    #[arg(long, value_delimiter = ',', default_value = "1,5,10")]
    kappas: Vec<usize>,
    /// K of Recall@K for the class protocol (In-shop: 1,10,20,30,40,50; SOP: 1,10,100,1000).
    #[arg(long, value_delimiter = ',', default_value = "1,5,10")]
    ks: Vec<usize>,
}

/// Retrieval protocols of `bcl metrics`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Protocol {
    /// Same label = relevant.
    Class,
    /// Revisited Oxford/Paris.
    Revisited,
}

#[derive(Args)]
struct DemoArgs {
    #[command(flatten)]
    common: Common,
    /// Output directory of the run.
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
}

#[derive(Args)]
struct BenchArgs {
    /// TOML configuration whose model and head are measured.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Images per step.
    #[arg(long, default_value_t = 128)]
    batch: i64,
    /// Side of the square input images.
    #[arg(long, default_value_t = 28)]
    size: i64,
    /// Timed steps.
    #[arg(long, default_value_t = 30)]
    steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Time the embedding pass of evaluation (eval mode, no gradient) instead of a training
    /// step.
    #[arg(long)]
    embed: bool,
    /// Execution settings (override the configuration's [old.exec]).
    #[command(flatten)]
    exec: ExecArgs,
}

fn base_config(c: &Common) -> Result<RunConfig> {
    let mut cfg = match (&c.config, c.quick) {
        (Some(p), _) => RunConfig::from_toml_file(p)?,
        (None, true) => RunConfig::quick(),
        (None, false) => RunConfig::default(),
    };
    if let Some(d) = &c.data {
        cfg.data.dir = d.clone();
    }
    Ok(cfg)
}

fn options(c: &Common) -> Result<StepOptions> {
    let (dist, device) = dist::world(&c.device, parse_device(&c.device)?)?;
    Ok(StepOptions {
        resume: c.resume,
        device,
        progress: std::io::stderr().is_terminal(),
        probe_test: false,
        stop_after: c.stop_after,
        dist,
    })
}

fn print_history(name: &str, h: &[bcl::train::EpochStats]) {
    if let Some(last) = h.last() {
        println!(
            "{name}: {} epochs, final loss {:.4}, train accuracy {:.3}, {:.0} images/s",
            last.epoch, last.loss_total, last.train_acc, last.images_per_s
        );
    }
}

fn old_dir_of(p: &Path) -> PathBuf {
    if p.is_file() {
        p.parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    } else {
        p.to_path_buf()
    }
}

fn run(cli: Cli) -> Result<()> {
    let shared = matches!(
        cli.command,
        Command::TrainOld(_)
            | Command::TrainNew(_)
            | Command::Eval(_)
            | Command::Gallery(gallery_cmd::GalleryCommand::Build(_))
    );
    if !shared {
        dist::refuse_launch()?;
    }
    match cli.command {
        Command::Gallery(c) => gallery_cmd::run_gallery(c)?,
        Command::Serve(a) => gallery_cmd::run_serve(a)?,
        Command::Benchmark(a) => cmd_benchmark(a)?,
        Command::TrainOld(a) => cmd_train_old(a)?,
        Command::TrainNew(a) => cmd_train_new(a)?,
        Command::Eval(a) => cmd_eval(a)?,
        Command::Metrics(a) => cmd_metrics(a)?,
        Command::Demo(a) => cmd_demo(a)?,
        Command::Experiment(a) => cmd_experiment(a)?,
        Command::BenchLoader(a) => cmd_bench_loader(a)?,
        Command::Search(a) => cmd_search(a)?,
        Command::BenchOdpp(a) => cmd_bench_odpp(a)?,
        Command::BenchDist(a) => cmd_bench_dist(a)?,
        Command::Bench(a) => cmd_bench(a)?,
        Command::Methods => cmd_methods(),
        Command::Completions(a) => docs_cmd::completions(Cli::command(), &a),
        Command::Man(a) => docs_cmd::man(Cli::command(), &a)?,
    }
    Ok(())
}

/// `bcl benchmark`: every model on each benchmark of the file.
fn cmd_benchmark(a: BenchmarkArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.config)
        .with_context(|| format!("{}: cannot read", a.config.display()))?;
    let file: BenchmarkFile = toml::from_str(&text)
        .with_context(|| format!("{}: not a benchmark file", a.config.display()))?;
    let models = load_models(&a.models, &a.device)?;
    let mut md = String::new();
    let mut reports = Vec::new();
    for b in &file.benchmark {
        let r = bcl::eval::protocol::evaluate_benchmark(b, &models)?;
        md.push_str(&bcl::eval::protocol::report_markdown(&r));
        md.push('\n');
        reports.push(r);
    }
    print!("{md}");
    if let Some(out) = a.out {
        let dir = bcl::layout::ExperimentDir::new(&out);
        bcl::files::write_atomic(&dir.file(ExperimentFile::BenchmarksMd), md.as_bytes())?;
        bcl::files::write_atomic(
            &dir.file(ExperimentFile::BenchmarksJson),
            serde_json::to_string_pretty(&reports)?.as_bytes(),
        )?;
        println!("written to {}", out.display());
    }
    Ok(())
}

/// `bcl train-old`.
fn cmd_train_old(a: TrainOldArgs) -> Result<()> {
    let mut cfg = base_config(&a.common)?;
    if let Some(s) = a.scenario {
        cfg.split.scenario = s;
    }
    if let Some(f) = a.fraction {
        cfg.split.fraction = f;
    }
    if let Some(s) = a.split_seed {
        cfg.split.seed = s;
    }
    if let Some(e) = a.common.epochs {
        cfg.old.epochs = e;
    }
    if let Some(s) = a.common.seed {
        cfg.old.seed = s;
    }
    let o = run::train_old(&cfg, &a.out, &options(&a.common)?)?;
    if dist::is_primary() {
        print_history("old", &o.history);
        println!("model {} written to {}", o.card.id, o.dir.display());
    }
    Ok(())
}

/// `bcl train-new`: the old run's configuration (or `--config`) with the flags over it.
fn cmd_train_new(a: TrainNewArgs) -> Result<()> {
    let old = old_dir_of(&a.old);
    let mut cfg = match (&a.common.config, a.common.quick) {
        (None, false) => run::old_run(&old)
            .map(|(c, _)| c)
            .with_context(|| format!("reading the old run in {}", old.display()))?,
        _ => base_config(&a.common)?,
    };
    if let Some(d) = &a.common.data {
        cfg.data.dir = d.clone();
    }
    if let Some(e) = a.common.epochs {
        cfg.new.epochs = e;
    }
    if let Some(s) = a.common.seed {
        cfg.new.seed = s;
    }
    if let Some(b) = a.backbone {
        cfg.new_model.backbone = Some(b);
    }
    if let Some(w) = a.width {
        cfg.new_model.width = Some(w);
    }
    if let Some(b) = a.blocks {
        cfg.new_model.blocks = Some(b);
    }
    if let Some(l) = a.lambda {
        if !(l >= 0.0 && l.is_finite()) {
            bail!("--lambda must be a finite number >= 0, got {l}");
        }
        cfg.compat.lambda = l;
    }
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(a.method.model_name()));
    let o = run::train_new(&cfg, &old, a.method, &out, &options(&a.common)?)?;
    if dist::is_primary() {
        print_history(&a.method.model_name(), &o.history);
        println!("model {} written to {}", o.card.id, o.dir.display());
    }
    Ok(())
}

/// The models in `paths` on the device named `device`.
fn load_models(paths: &[PathBuf], device: &str) -> Result<Vec<Embedder>> {
    load_models_on(paths, parse_device(device)?, &ExecArgs::default())
}

/// The models in `paths` on `device`, run with `exec`'s settings.
fn load_models_on(
    paths: &[PathBuf],
    device: tch::Device,
    exec: &ExecArgs,
) -> Result<Vec<Embedder>> {
    paths.iter().map(|p| exec.load(p, device)).collect()
}

/// `bcl eval`: the compatibility matrix of the models on the test set of their data.
fn cmd_eval(a: EvalArgs) -> Result<()> {
    // under a launcher the ranks share each model's embedding pass (each on its own device);
    // rank 0 reports
    let (world, device) = dist::world(&a.device, parse_device(&a.device)?)?;
    let models = load_models_on(&a.models, device, &a.exec)?;
    let mut data_cfg = match &a.config {
        Some(p) => RunConfig::from_toml_file(p)?.data,
        None => gallery_cmd::run_data_config(&models[0].dir)?,
    };
    if let Some(d) = a.data {
        data_cfg.dir = d;
    }
    if a.test_per_class.is_some() {
        data_cfg.test_per_class = a.test_per_class;
    }
    let test = bcl::data::open_test(&data_cfg)?;
    let report = bcl::eval::models::evaluate_models_on(
        &models,
        &test,
        512,
        bcl::eval::models::MatrixCells::All,
        &*world,
    )?;
    if !world.is_primary() {
        return Ok(());
    }
    println!("{}", rows_markdown(&report.rows));
    println!("compatibility matrix (mAP), rows query model, columns gallery model:");
    print!("{}", bcl::report::matrix_csv(&report.matrix));
    if let Some(out) = a.out {
        bcl::report::write_eval_report(&bcl::layout::RunDir::new(&out), &report, &[])?;
        println!("report written to {}", out.display());
    }
    Ok(())
}

/// `bcl metrics`: retrieval metrics of feature files.
fn cmd_metrics(a: MetricsArgs) -> Result<()> {
    match a.protocol {
        Protocol::Class => {
            if a.ks.contains(&0) {
                bail!("--ks: every K must be >= 1");
            }
            let (Some(qlp), None) = (&a.query_labels, &a.gnd) else {
                bail!("the class protocol needs --query-labels (and takes no --gnd; use --protocol revisited)");
            };
            let q = read_features_npy(&a.query)?;
            let ql = read_labels_npy(qlp)?;
            let m = match (&a.gallery, &a.gallery_labels) {
                (Some(g), Some(gl)) => {
                    let gf = read_features_npy(g)?;
                    let gll = read_labels_npy(gl)?;
                    retrieval_metrics(&q, &ql, &gf, &gll, false, &a.ks)?
                }
                (None, None) => retrieval_metrics(&q, &ql, &q, &ql, true, &a.ks)?,
                _ => bail!("--gallery and --gallery-labels go together"),
            };
            println!("{}", serde_json::to_string_pretty(&m)?);
        }
        Protocol::Revisited => {
            let (Some(gnd), Some(g)) = (&a.gnd, &a.gallery) else {
                bail!("the revisited protocol needs --gnd FILE and --gallery X.npy (the database features)");
            };
            if a.query_labels.is_some() || a.gallery_labels.is_some() {
                bail!("the revisited protocol takes its ground truth from --gnd, not from label files");
            }
            let gt = bcl::eval::revisited::RevisitedGnd::read(gnd)?;
            let q = read_features_npy(&a.query)?;
            let x = read_features_npy(g)?;
            let m = bcl::eval::revisited::revisited_metrics(&q, &x, &gt, &a.kappas)?;
            println!("{}", serde_json::to_string_pretty(&m)?);
        }
    }
    Ok(())
}

/// `bcl demo`.
fn cmd_demo(a: DemoArgs) -> Result<()> {
    let mut cfg = base_config(&a.common)?;
    if let Some(e) = a.common.epochs {
        cfg.old.epochs = e;
        cfg.new.epochs = e;
    }
    let t0 = std::time::Instant::now();
    let report = run::demo(&cfg, &a.out, &options(&a.common)?)?;
    println!(
        "extended-data {:.0}% on {} test items, {:.0} s",
        cfg.split.fraction * 100.0,
        report.test_items,
        t0.elapsed().as_secs_f64()
    );
    println!("{}", rows_markdown(&report.rows));
    println!("run directory: {}", a.out.display());
    Ok(())
}

/// `bcl experiment`.
fn cmd_experiment(a: ExperimentArgs) -> Result<()> {
    let cfg = bcl::experiment::ExperimentConfig::from_toml_file(&a.config)?;
    let opts = StepOptions {
        resume: true,
        device: parse_device(&a.device)?,
        progress: std::io::stderr().is_terminal(),
        probe_test: false,
        stop_after: None,
        dist: Default::default(),
    };
    let t0 = std::time::Instant::now();
    let report = bcl::experiment::run_experiment(&cfg, &a.out, &opts)?;
    println!("{}", bcl::experiment::aggregate_markdown(&report.table));
    println!(
        "{} runs, {:.0} s; report in {}",
        report.runs.len(),
        t0.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}

/// `bcl bench-loader`: decoding throughput of the image loader.
fn cmd_bench_loader(a: BenchLoaderArgs) -> Result<()> {
    use bcl::data::images::{ImageLoader, ImagePrep};
    let prep = ImagePrep {
        resize: a.resize,
        crop: a.crop,
    };
    prep.validate().map_err(anyhow::Error::msg)?;
    let tmp = tempfile::tempdir()?;
    let root = match &a.data {
        Some(d) => d.clone(),
        None => {
            bcl::data::images::write_noise_jpegs(tmp.path(), a.images, a.width, a.height)?;
            tmp.path().to_path_buf()
        }
    };
    let list = bcl::data::lists::read_class_folders(&root)?;
    let n = list.len();
    let t0 = std::time::Instant::now();
    let mut seen = 0;
    for b in ImageLoader::start(
        root,
        list,
        (0..n).collect(),
        a.batch,
        prep,
        Some((0, 0)),
        a.prefetch,
    ) {
        seen += b?.indices.len();
    }
    let s = t0.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "impl": "bcl-loader",
            "images": seen,
            "resize": a.resize,
            "crop": a.crop,
            "threads": rayon::current_num_threads(),
            "seconds": s,
            "images_per_s": seen as f64 / s,
        })
    );
    Ok(())
}

/// `bcl search`: exact blocked top-k of feature files (the gallery memory-mapped on the CPU).
fn cmd_search(a: SearchArgs) -> Result<()> {
    use bcl::eval::mapped::MappedMatrix;
    use bcl::eval::search::{topk_search, SearchBlocks};
    let device = parse_device(&a.device)?;
    if a.resident_mib == 0 {
        bail!("--resident-mib must be at least 1");
    }
    let blocks = SearchBlocks {
        query: a.query_block,
        gallery: a.gallery_block,
    };
    let q = read_features_npy(&a.query)?.to_device(device);
    let t0;
    let (r, ng, stored) = if device == tch::Device::Cpu {
        let g = MappedMatrix::open(&a.gallery)?;
        t0 = std::time::Instant::now();
        let r = g.search(&q, a.k, blocks, a.resident_mib << 20)?;
        (r, g.rows() as i64, g.kind().name())
    } else {
        let g = read_features_npy(&a.gallery)?.to_device(device);
        t0 = std::time::Instant::now();
        let r = topk_search(&q, &g, a.k, blocks)?;
        let _ = r.scores.size(); // the result is materialised (CUDA runs asynchronously)
        tch::Cuda::synchronize(0);
        (r, g.size()[0], "float32")
    };
    let seconds = t0.elapsed().as_secs_f64();
    for (path, t) in [(&a.out_indices, &r.indices), (&a.out_scores, &r.scores)] {
        if let Some(p) = path {
            write_npy_atomic(p, &t.to_device(tch::Device::Cpu))?;
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "impl": "bcl",
            "queries": q.size()[0],
            "gallery": ng,
            "dim": q.size()[1],
            "k": a.k,
            "gallery_dtype": stored,
            "seconds": seconds,
        })
    );
    Ok(())
}

/// `bcl bench-odpp`.
fn cmd_bench_odpp(a: BenchOdppArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    if a.dim < 2 || a.bank_per_class < 1 || a.steps < 1 || a.classes.iter().any(|&c| c < 2) {
        bail!("need --dim >= 2, --bank-per-class >= 1, --steps >= 1 and every class count >= 2");
    }
    let mut cfg = bcl::perturb::OdppConfig {
        steps: a.steps,
        ..Default::default()
    };
    if let Some(lr) = a.lr {
        if !(lr > 0.0 && lr.is_finite()) {
            bail!("--lr must be a positive number, got {lr}");
        }
        cfg.lr = lr;
    }
    cfg.candidates = a.candidates;
    for &c in &a.classes {
        let t =
            bcl::run::bench::odpp::bench_odpp(c, a.dim, a.bank_per_class, &cfg, device, a.compare);
        let mut line = serde_json::to_value(&t)?;
        if let Some(n) = a.epoch_images {
            let epoch = epoch_seconds(c, a.dim, n, device)?;
            line["epoch_images"] = n.into();
            line["epoch_seconds_estimate"] = epoch.into();
            line["refresh_share_of_epoch"] = (t.seconds / epoch).into();
        }
        println!("{line}");
    }
    Ok(())
}

/// Seconds of a training epoch of `images` images of a ResNet-18 (224 x 224, embedding `dim`,
/// a `classes`-way head) on `device`, from the timed training step (batch 32, 3 steps).
fn epoch_seconds(classes: i64, dim: i64, images: u64, device: tch::Device) -> Result<f64> {
    let mut cfg = RunConfig::default();
    cfg.model.backbone = bcl::model::Backbone::Resnet18;
    cfg.model.dim = dim;
    cfg.model.in_channels = 3;
    cfg.data.classes = classes as usize;
    let r = run::bench::bench_step(&cfg, 32, 224, 3, 1, device, false)?;
    Ok(images as f64 / r.images_per_s)
}

/// `bcl bench-dist`: the bytes a data-parallel step moves.
fn cmd_bench_dist(a: BenchDistArgs) -> Result<()> {
    let model = bcl::model::ModelConfig {
        backbone: a.backbone,
        dim: a.dim,
        in_channels: 3,
        ..Default::default()
    };
    for &r in &a.ranks {
        let t = run::bench::dist_traffic(&model, &Default::default(), a.classes, a.batch, r)?;
        println!("{}", serde_json::to_string(&t)?);
    }
    Ok(())
}

/// `bcl bench`: the training step's throughput.
fn cmd_bench(a: BenchArgs) -> Result<()> {
    let mut cfg = match &a.config {
        Some(p) => RunConfig::from_toml_file(p)?,
        None => RunConfig::default(),
    };
    cfg.old.exec = a.exec.apply(cfg.old.exec);
    let device = parse_device(&a.device)?;
    let r = run::bench::bench_step(&cfg, a.batch, a.size, a.steps, a.warmup, device, a.embed)?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

/// `bcl methods`: the method registry (name, what it does, what it needs, its sweep knobs and
/// the defaults of its own settings).
fn cmd_methods() {
    use bcl::table::{Column, Table};
    let mut t = Table::new([
        Column::text("method"),
        Column::text("what it does"),
        Column::text("needs"),
        Column::text("refreshes"),
        Column::text("data parallel"),
        Column::text("sweep knobs"),
        Column::text("settings ([compat.<method>], defaults)"),
    ]);
    for m in Method::all() {
        let needs: Vec<&str> = [
            (m.needs_prototypes(), "old prototypes"),
            (m.needs_old_bank(), "old feature bank"),
        ]
        .into_iter()
        .filter_map(|(n, s)| n.then_some(s))
        .collect();
        let knobs: Vec<&str> = m.knobs().iter().map(|k| k.name).collect();
        let settings = m
            .spec()
            .default_settings()
            .map(|t| {
                t.iter()
                    .map(|(k, v)| format!("{k} = {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        t.push(vec![
            m.as_str().to_string(),
            m.description().to_string(),
            needs.join(", "),
            if m.refreshes() { "yes" } else { "no" }.to_string(),
            match m.data_parallel() {
                bcl::loss::DataParallel::Exact => "exact".to_string(),
                bcl::loss::DataParallel::PerShard(why) => format!("per rank's share: {why}"),
            },
            knobs.join(", "),
            settings,
        ]);
    }
    print!("{}", t.markdown());
}

/// Writes a tensor as .npy next to its destination, then renames it into place.
fn write_npy_atomic(path: &Path, t: &tch::Tensor) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp.npy", std::process::id()));
    t.write_npy(&tmp)
        .with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}

/// glibc's malloc hands blocks above its (adaptive) mmap threshold back to the kernel when
/// freed and trims the heap's top, and libtorch frees and allocates every activation of every
/// step: the page faults of fresh pages took a third of the default training step here. With
/// the threshold fixed at glibc's largest (32 MiB) and trimming only past 1 GiB, freed blocks
/// are reused (measured: the default training step 1.5x faster, docs/performance.md; PyTorch
/// gains as much from the same settings, `MALLOC_MMAP_THRESHOLD_` and
/// `MALLOC_TRIM_THRESHOLD_`). The cost: up to 1 GiB of freed memory kept by the process.
/// Either variable set in the environment leaves glibc's own handling alone.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none()
        && std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_none()
    {
        // SAFETY: mallopt only changes malloc's parameters; called before any thread starts.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}

fn main() {
    keep_freed_memory();
    // Ranks other than 0 of a launched job log warnings only (rank 0 reports the run).
    let default_filter = if dist::is_primary() {
        "bcl=info"
    } else {
        "bcl=warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BCL_LOG")
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        // Colour only where a person reads it: a log sent to a file or a pipe stays plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = run(Cli::parse()) {
        match flag_hint(&e) {
            Some(hint) => eprintln!("error: {e:#}\nhint: {hint}"),
            None => eprintln!("error: {e:#}"),
        }
        std::process::exit(1);
    }
}

/// The command-line flag that resolves a library error, where one does (the library says what
/// is wrong in its own terms; only the binary knows its flags).
fn flag_hint(e: &anyhow::Error) -> Option<&'static str> {
    use bcl::data::DataError;
    use bcl::gallery::GalleryError;
    use bcl::run::RunError;
    use bcl::train::TrainError;
    let train = |t: &TrainError| match t {
        TrainError::Exists(_) => Some("pass --resume to continue it, or choose another --out"),
        TrainError::ConfigChanged { .. } => Some("choose another --out"),
        TrainError::Interrupted { .. } => Some("continue it with --resume"),
        _ => None,
    };
    e.chain().find_map(|c| {
        if let Some(GalleryError::Lineage(_)) = c.downcast_ref::<GalleryError>() {
            return Some("pass --force to search anyway");
        }
        match c.downcast_ref::<RunError>() {
            Some(RunError::Train(t)) => return train(t),
            Some(RunError::Device(_)) => return Some("set --device to cpu, cuda, cuda:N or auto"),
            Some(RunError::Data(DataError::Missing { .. })) => {
                return Some("point --data at a directory of MNIST-layout IDX files")
            }
            Some(RunError::Config { path, .. }) if ModelDir::is_split(path) => {
                return Some("--old must be a run directory written by `bcl train-old`")
            }
            _ => {}
        }
        if let Some(DataError::Missing { .. }) = c.downcast_ref::<DataError>() {
            return Some("point --data at a directory of MNIST-layout IDX files");
        }
        c.downcast_ref::<TrainError>().and_then(train)
    })
}
