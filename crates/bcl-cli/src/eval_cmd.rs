//! Evaluation commands: `bcl eval` (models on a test set), `metrics` (feature files), `search`
//! (exact top-k over .npy files) and `benchmark` (the standard benchmarks), with the execution
//! flags (`ExecArgs`) that embedding commands share.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bcl::eval::retrieval_metrics;
use bcl::exec::Autocast;
use bcl::layout::ExperimentFile;
use bcl::model::Embedder;
use bcl::npy;
use bcl::report::rows_markdown;
use bcl::run::{parse_device, RunConfig};
use clap::Args;

use crate::{dist, gallery_cmd};

#[derive(Args)]
pub(crate) struct BenchmarkArgs {
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
pub(crate) struct BenchmarkFile {
    benchmark: Vec<bcl::eval::protocol::BenchmarkConfig>,
}

#[derive(Args)]
pub(crate) struct ExactSearchArgs {
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
    /// Map the queries through this adapter first (`bcl adapt fit`): new-model queries
    /// searched against a gallery of another model's vectors.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The old model's embeddings of the same queries (a slerp adapter reads both).
    #[arg(long, requires = "adapter")]
    old_query: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct EvalArgs {
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
    /// The part scored: test, or validation (the training images the configuration's
    /// data.validation_per_class holds out of training; what model selection reads).
    #[arg(long, default_value_t = bcl::data::Part::Test)]
    part: bcl::data::Part,
    /// Write results.md/.csv, metrics.json and plots here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// An adapter fitted after training (`bcl adapt fit`; repeat): one more row, a new model
    /// of --model through it against its old model (named model+kind@pairs).
    #[arg(long = "adapter")]
    adapters: Vec<PathBuf>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    #[command(flatten)]
    exec: ExecArgs,
}

/// The library's autocast settings, with their descriptions, as the flag's values.
fn autocast_values() -> impl clap::builder::TypedValueParser<Value = Autocast> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(
        Autocast::ALL.map(|a| PossibleValue::new(a.as_str()).help(a.description())),
    )
    .map(|s| s.parse().expect("a possible value names a setting"))
}

/// How a network runs (flags of the commands that run one; for GPUs: docs/performance.md).
#[derive(Args, Clone, Debug, Default)]
pub(crate) struct ExecArgs {
    /// Mixed precision of the network's forward pass: off, or bf16 (libtorch's autocast; the
    /// weights and the losses stay float32).
    #[arg(long, value_parser = autocast_values())]
    autocast: Option<Autocast>,
    /// Lay activations and convolution weights out channels-last (NHWC).
    #[arg(long)]
    channels_last: bool,
}

impl ExecArgs {
    /// `base` with the flags given applied.
    pub fn apply(&self, base: bcl::exec::ExecConfig) -> bcl::exec::ExecConfig {
        bcl::exec::ExecConfig {
            autocast: self.autocast.unwrap_or(base.autocast),
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
pub(crate) struct MetricsArgs {
    /// Protocol: `class` (labels; leave-one-out without a gallery) or `revisited`
    /// (Revisited Oxford/Paris Easy/Medium/Hard with `--gnd`).
    #[arg(long, default_value = "class")]
    protocol: MetricsProtocol,
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
pub(crate) enum MetricsProtocol {
    /// Same label = relevant.
    Class,
    /// Revisited Oxford/Paris.
    Revisited,
}

/// `bcl benchmark`: every model on each benchmark of the file.
pub(crate) fn cmd_benchmark(a: BenchmarkArgs) -> Result<()> {
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

/// The models in `paths` on the device named `device`.
pub(crate) fn load_models(paths: &[PathBuf], device: &str) -> Result<Vec<Embedder>> {
    load_models_on(paths, parse_device(device)?, &ExecArgs::default())
}

/// The models in `paths` on `device`, run with `exec`'s settings.
pub(crate) fn load_models_on(
    paths: &[PathBuf],
    device: tch::Device,
    exec: &ExecArgs,
) -> Result<Vec<Embedder>> {
    paths.iter().map(|p| exec.load(p, device)).collect()
}

/// `bcl eval`: the compatibility matrix of the models on the test set of their data.
pub(crate) fn cmd_eval(a: EvalArgs) -> Result<()> {
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
    let adapters = a
        .adapters
        .iter()
        .map(|p| bcl::adapt::Adapter::load(p))
        .collect::<Result<Vec<_>, _>>()?;
    for (p, ad) in a.adapters.iter().zip(&adapters) {
        bcl::adapt::rows::adapted_model(&models, ad)
            .with_context(|| format!("--adapter {}", p.display()))?;
    }
    let test = bcl::data::open_part(&data_cfg, a.part)?;
    let feats = bcl::eval::models::embed_models(&models, &test, 512, &*world)?;
    let mut report = bcl::eval::models::score_models(
        &models,
        &feats,
        &test.labels,
        bcl::eval::models::MatrixCells::All,
    )?;
    bcl::adapt::rows::add_adapted_rows(&mut report, &models, &feats, &test.labels, &adapters)?;
    if !world.is_primary() {
        return Ok(());
    }
    println!("{}", rows_markdown(&report.all_rows()));
    println!("compatibility matrix (mAP), rows query model, columns gallery model:");
    print!("{}", bcl::report::matrix_csv(&report.matrix));
    if let Some(out) = a.out {
        bcl::report::record_command(&out, &command_line())?;
        bcl::report::write_eval_report(&bcl::layout::RunDir::new(&out), &report, &[])?;
        println!(
            "report written to {} (page: {})",
            out.display(),
            bcl::layout::RunDir::new(&out).html_report().display()
        );
    }
    Ok(())
}

/// `bcl report`: the arguments.
#[derive(clap::Args)]
pub(crate) struct ReportArgs {
    /// A run directory (`bcl demo --out`, `bcl eval --out`) or an experiment directory.
    dir: PathBuf,
}

/// `bcl report`: (re)writes a run or experiment directory's report.html from its files.
pub(crate) fn cmd_report(a: ReportArgs) -> Result<()> {
    let path = bcl::report::write_html_report(&a.dir)?;
    println!("{}", path.display());
    Ok(())
}

/// This process's command line, quoted for a POSIX shell, with the program named `bcl`: what
/// a run directory records as the command that reproduces it.
pub(crate) fn command_line() -> String {
    let args = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    let quoted = args
        .iter()
        .map(|a| shlex::try_quote(a).map_or_else(|_| a.clone(), |q| q.into_owned()))
        .collect::<Vec<String>>();
    std::iter::once("bcl".to_string())
        .chain(quoted)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `bcl metrics`: retrieval metrics of feature files.
pub(crate) fn cmd_metrics(a: MetricsArgs) -> Result<()> {
    match a.protocol {
        MetricsProtocol::Class => {
            if a.ks.contains(&0) {
                bail!("--ks: every K must be >= 1");
            }
            let (Some(qlp), None) = (&a.query_labels, &a.gnd) else {
                bail!("the class protocol needs --query-labels (and takes no --gnd; use --protocol revisited)");
            };
            let q = npy::read_features(&a.query)?;
            let ql = npy::read_labels(qlp)?;
            let m = match (&a.gallery, &a.gallery_labels) {
                (Some(g), Some(gl)) => {
                    let gf = npy::read_features(g)?;
                    let gll = npy::read_labels(gl)?;
                    retrieval_metrics(&q, &ql, &gf, &gll, false, &a.ks)?
                }
                (None, None) => retrieval_metrics(&q, &ql, &q, &ql, true, &a.ks)?,
                _ => bail!("--gallery and --gallery-labels go together"),
            };
            println!("{}", serde_json::to_string_pretty(&m)?);
        }
        MetricsProtocol::Revisited => {
            let (Some(gnd), Some(g)) = (&a.gnd, &a.gallery) else {
                bail!("the revisited protocol needs --gnd FILE and --gallery X.npy (the database features)");
            };
            if a.query_labels.is_some() || a.gallery_labels.is_some() {
                bail!("the revisited protocol takes its ground truth from --gnd, not from label files");
            }
            let gt = bcl::eval::revisited::RevisitedGnd::read(gnd)?;
            let q = npy::read_features(&a.query)?;
            let x = npy::read_features(g)?;
            let m = bcl::eval::revisited::revisited_metrics(&q, &x, &gt, &a.kappas)?;
            println!("{}", serde_json::to_string_pretty(&m)?);
        }
    }
    Ok(())
}

/// `bcl search`: exact blocked top-k of feature files (the gallery memory-mapped on the CPU).
pub(crate) fn cmd_search(a: ExactSearchArgs) -> Result<()> {
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
    let q = npy::read_features(&a.query)?;
    let q = match &a.adapter {
        Some(p) => {
            let adapter = bcl::adapt::Adapter::load(p)?;
            let old_query = a.old_query.as_deref().map(npy::read_features).transpose()?;
            adapter
                .apply(&q, old_query.as_ref())
                .with_context(|| format!("{} through {}", a.query.display(), p.display()))?
        }
        None => q,
    }
    .to_device(device);
    let t0;
    let (r, ng, stored) = if device == tch::Device::Cpu {
        let g = MappedMatrix::open(&a.gallery)?;
        t0 = std::time::Instant::now();
        let r = g.search(&q, a.k, blocks, a.resident_mib << 20)?;
        (r, g.rows() as i64, g.kind().name())
    } else {
        let g = npy::read_features(&a.gallery)?.to_device(device);
        t0 = std::time::Instant::now();
        let r = topk_search(&q, &g, a.k, blocks)?;
        let _ = r.scores.size(); // the result is materialised (CUDA runs asynchronously)
        tch::Cuda::synchronize(0);
        (r, g.size()[0], "float32")
    };
    let seconds = t0.elapsed().as_secs_f64();
    for (path, t) in [(&a.out_indices, &r.indices), (&a.out_scores, &r.scores)] {
        if let Some(p) = path {
            npy::write_atomic(p, t)?;
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
