//! Benchmark commands: `bcl bench` (the training or embedding step), `bench-odpp`,
//! `bench-dist` and `bench-loader`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use bcl::run::{self, parse_device, RunConfig};
use clap::Args;

use crate::ExecArgs;

#[derive(Args)]
pub(crate) struct BenchLoaderArgs {
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
pub(crate) struct BenchOdppArgs {
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
pub(crate) struct BenchDistArgs {
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
pub(crate) struct BenchArgs {
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

/// `bcl bench-loader`: decoding throughput of the image loader.
pub(crate) fn cmd_bench_loader(a: BenchLoaderArgs) -> Result<()> {
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

/// `bcl bench-odpp`.
pub(crate) fn cmd_bench_odpp(a: BenchOdppArgs) -> Result<()> {
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
pub(crate) fn epoch_seconds(
    classes: i64,
    dim: i64,
    images: u64,
    device: tch::Device,
) -> Result<f64> {
    let mut cfg = RunConfig::default();
    cfg.model.backbone = bcl::model::Backbone::Resnet18;
    cfg.model.dim = dim;
    cfg.model.in_channels = 3;
    cfg.data.classes = classes as usize;
    let r = run::bench::bench_step(&cfg, 32, 224, 3, 1, device, false)?;
    Ok(images as f64 / r.images_per_s)
}

/// `bcl bench-dist`: the bytes a data-parallel step moves.
pub(crate) fn cmd_bench_dist(a: BenchDistArgs) -> Result<()> {
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
pub(crate) fn cmd_bench(a: BenchArgs) -> Result<()> {
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
