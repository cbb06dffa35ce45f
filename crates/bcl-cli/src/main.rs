//! The `bcl` command-line tool: parses arguments, loads configurations, calls the library and
//! prints. No logic of its own.

use anyhow::Result;
use bcl::layout::ModelDir;
use clap::{CommandFactory, Parser, Subcommand};

mod adapt_cmd;
mod bench_cmd;
mod dist;
mod docs_cmd;
mod eval_cmd;
mod gallery_cmd;
mod train_cmd;

use bench_cmd::{BenchArgs, BenchDistArgs, BenchLoaderArgs, BenchOdppArgs};
pub(crate) use eval_cmd::ExecArgs;
use eval_cmd::{BenchmarkArgs, EvalArgs, ExactSearchArgs, MetricsArgs};
use train_cmd::{DemoArgs, ExperimentArgs, TrainNewArgs, TrainOldArgs};

/// Backward-compatible learning for retrieval: train new embedding models whose queries can be
/// searched against a gallery embedded by the old model.
#[derive(Parser)]
#[command(name = "bcl", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The commands, in the order a user needs them (`bcl --help` lists them so): the demo,
/// training, evaluation and experiments, then deployment (gallery, serve, adapters), then the
/// feature-file tools, benchmarks and the generated docs.
#[derive(Subcommand)]
enum Command {
    /// The whole extended-data protocol on Fashion-MNIST: old model, independent, l2 and bct.
    Demo(DemoArgs),
    /// Train the old model (classification only) on the old part of the split.
    TrainOld(TrainOldArgs),
    /// Train a new model against a frozen old model with a compatibility method.
    TrainNew(TrainNewArgs),
    /// Evaluate models on the test set: every (query model, gallery model) pair, leave-one-out.
    Eval(EvalArgs),
    /// Run (or resume) an experiment: scenarios x methods x seeds, plus knob sweeps, from one
    /// TOML file; writes results.md/.csv (mean ± std), frontier.csv and plots.
    Experiment(ExperimentArgs),
    /// Write report.html, the self-contained page of a run or experiment directory (tables,
    /// compatibility matrix, plots, configuration, command), from the files it holds.
    Report(eval_cmd::ReportArgs),
    /// The registered compatibility methods: what each does, needs, sweeps and its settings.
    Methods,
    /// A gallery that outlives its model: build, add, search (lineage-checked), backfill,
    /// status.
    #[command(subcommand)]
    Gallery(gallery_cmd::GalleryCommand),
    /// HTTP service over a gallery: POST /search (vectors or an image), GET /health, GET /stats.
    Serve(gallery_cmd::ServeArgs),
    /// Adapters fitted after training between two models' spaces: fit, apply, show, kinds.
    #[command(subcommand)]
    Adapt(adapt_cmd::AdaptCommand),
    /// Exact top-k search of query features in gallery features (.npy), blocked so that memory
    /// stays bounded; prints timing JSON, writes the indices and scores as .npy.
    Search(ExactSearchArgs),
    /// Retrieval metrics from feature files (.npy), printed as JSON.
    Metrics(MetricsArgs),
    /// Score models on standard benchmarks (Revisited Oxford/Paris, GLDv2 retrieval, In-shop,
    /// SOP) from their published files: every (query model, gallery model) pair.
    Benchmark(BenchmarkArgs),
    /// Training throughput (images/s) of the configured model on random data, as JSON.
    Bench(BenchArgs),
    /// Time ODPP refreshes on synthetic prototypes and banks (JSON lines, one per class count).
    BenchOdpp(BenchOdppArgs),
    /// Bytes a data-parallel training step moves (gradients, buffers, features) for a model,
    /// class count and batch, per rank count (JSON lines); see docs/distributed.md.
    BenchDist(BenchDistArgs),
    /// Decoding throughput of the image loader (JPEG files of a class-folder tree, or
    /// generated ones), to compare with the training step's (`bcl bench --size`).
    BenchLoader(BenchLoaderArgs),
    /// Shell completions (bash, zsh, fish, elvish, powershell), generated from these flags.
    Completions(docs_cmd::CompletionsArgs),
    /// The man page (or with --out, one page per command), generated from these flags.
    Man(docs_cmd::ManArgs),
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
        Command::Adapt(c) => adapt_cmd::run_adapt(c)?,
        Command::Serve(a) => gallery_cmd::run_serve(a)?,
        Command::Benchmark(a) => eval_cmd::cmd_benchmark(a)?,
        Command::TrainOld(a) => train_cmd::cmd_train_old(a)?,
        Command::TrainNew(a) => train_cmd::cmd_train_new(a)?,
        Command::Eval(a) => eval_cmd::cmd_eval(a)?,
        Command::Metrics(a) => eval_cmd::cmd_metrics(a)?,
        Command::Demo(a) => train_cmd::cmd_demo(a)?,
        Command::Experiment(a) => train_cmd::cmd_experiment(a)?,
        Command::Report(a) => eval_cmd::cmd_report(a)?,
        Command::BenchLoader(a) => bench_cmd::cmd_bench_loader(a)?,
        Command::Search(a) => eval_cmd::cmd_search(a)?,
        Command::BenchOdpp(a) => bench_cmd::cmd_bench_odpp(a)?,
        Command::BenchDist(a) => bench_cmd::cmd_bench_dist(a)?,
        Command::Bench(a) => bench_cmd::cmd_bench(a)?,
        Command::Methods => train_cmd::cmd_methods(),
        Command::Completions(a) => docs_cmd::completions(Cli::command(), &a),
        Command::Man(a) => docs_cmd::man(Cli::command(), &a)?,
    }
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
        match c.downcast_ref::<GalleryError>() {
            Some(GalleryError::Lineage(_)) => return Some("pass --force to search anyway"),
            Some(GalleryError::Missing { .. }) => return Some(
                "create one with `bcl gallery build` (or `bcl gallery add --create` for vectors)",
            ),
            Some(GalleryError::Locked { .. }) => {
                return Some("stop the running `bcl serve` or gallery command first")
            }
            Some(GalleryError::Corrupt { path, .. })
                if path
                    .file_name()
                    .is_some_and(|n| n == bcl::gallery::wal::WAL_FILE) =>
            {
                return Some("`bcl gallery recover` keeps every intact record of the log")
            }
            Some(GalleryError::Exists { .. }) => {
                return Some("add to it with `bcl gallery add`, or choose another --store")
            }
            _ => {}
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
