//! `bcl adapt`: fit an adapter between two models' spaces (on images embedded by both models,
//! or on paired `.npy` vectors), map vectors through one, show its card, list the kinds.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bcl::adapt::{self, Adapter, FitConfig, ModelRef, Models, SupportSet};
use bcl::model::Embedder;
use bcl::npy;
use bcl::run::parse_device;
use clap::{Args, Subcommand};

use crate::gallery_cmd::{data_config, load_split, DataArgs};

/// The adapter subcommands.
#[derive(Subcommand)]
pub(crate) enum AdaptCommand {
    /// Fit an adapter on a support set (images embedded by --old and --new, or paired .npy
    /// vectors) and write it to a directory (adapter.safetensors + adapter.json).
    Fit(Box<FitArgs>),
    /// Map vectors (.npy) through an adapter; writes the mapped vectors as .npy.
    Apply(ApplyArgs),
    /// Print an adapter's card (JSON).
    Show(ShowArgs),
    /// The adapter kinds: what each maps and what it reads.
    Kinds,
}

/// `bcl adapt fit`.
#[derive(Args)]
pub(crate) struct FitArgs {
    /// The kind of map.
    #[arg(long, value_parser = adapt::kind_names())]
    kind: String,
    /// The old model's directory (the gallery's space): embeds the support images, or names
    /// the model the vectors of --old-vectors came from.
    #[arg(long)]
    old: Option<PathBuf>,
    /// The new model's directory.
    #[arg(long)]
    new: Option<PathBuf>,
    /// The old model's vectors of the support items, an [N, d_old] .npy (instead of images).
    #[arg(long, requires = "new_vectors")]
    old_vectors: Option<PathBuf>,
    /// The new model's vectors of the same items, row for row, an [N, d_new] .npy.
    #[arg(long, requires = "old_vectors")]
    new_vectors: Option<PathBuf>,
    /// Class labels of the support items, a 1-D integer .npy (with --old-vectors; slerp
    /// chooses α with them).
    #[arg(long, requires = "old_vectors")]
    labels: Option<PathBuf>,
    /// Side information for the forward kind, an [N, s] .npy (FCT's; another model's
    /// vectors of the same items).
    #[arg(long)]
    side: Option<PathBuf>,
    /// Where the support images come from when the models embed them (default: the old
    /// model's data, --split validation: images no model trained on).
    #[command(flatten)]
    data: SupportDataArgs,
    /// TOML with the kinds' settings ([slerp], [affine], [forward]; `seed`).
    #[arg(long)]
    settings: Option<PathBuf>,
    /// SLERP's α (0: the old query, 1: the rotated new one); chosen on labelled support when
    /// absent.
    #[arg(long)]
    alpha: Option<f64>,
    /// The affine map's orthogonality threshold λ.
    #[arg(long)]
    lambda: Option<f64>,
    /// Seed of the kinds that train (affine, forward).
    #[arg(long)]
    seed: Option<u64>,
    /// cpu, cuda, cuda:N or auto (fitting and embedding).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Images per forward pass when embedding the support images.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// The adapter's directory (created; its files are replaced atomically).
    #[arg(long)]
    out: PathBuf,
}

/// The support images' data when models embed them.
#[derive(Args)]
pub(crate) struct SupportDataArgs {
    /// TOML run configuration whose [data] section names the data (default: the old model's).
    #[arg(long = "support-config")]
    config: Option<PathBuf>,
    /// Data directory (overrides the configuration's).
    #[arg(long = "support-data")]
    data: Option<PathBuf>,
    /// Which part of the data: validation (default; no model trained on it), train or test.
    #[arg(long = "split", default_value = "validation")]
    split: bcl::data::Part,
    /// Use only the first N images of each class.
    #[arg(long = "support-per-class")]
    per_class: Option<usize>,
}

/// `bcl adapt apply`.
#[derive(Args)]
pub(crate) struct ApplyArgs {
    /// The adapter's directory (or its adapter.json).
    #[arg(long)]
    adapter: PathBuf,
    /// The vectors to map, an [N, d_from] .npy.
    #[arg(long)]
    input: PathBuf,
    /// The old model's embeddings of the same queries (slerp), an [N, d_old] .npy.
    #[arg(long)]
    old_query: Option<PathBuf>,
    /// Side information of the same items (a forward adapter fitted with it), an [N, s] .npy.
    #[arg(long)]
    side: Option<PathBuf>,
    /// Where to write the mapped [N, d_to] float32 vectors (.npy, atomically).
    #[arg(long)]
    out: PathBuf,
}

/// `bcl adapt show`.
#[derive(Args)]
pub(crate) struct ShowArgs {
    /// The adapter's directory (or its adapter.json).
    adapter: PathBuf,
}

/// Runs an adapt subcommand.
pub(crate) fn run_adapt(c: AdaptCommand) -> Result<()> {
    match c {
        AdaptCommand::Fit(a) => cmd_fit(*a),
        AdaptCommand::Apply(a) => cmd_apply(a),
        AdaptCommand::Show(a) => {
            let adapter = Adapter::load(&a.adapter)?;
            println!("{}", serde_json::to_string_pretty(&adapter.card)?);
            Ok(())
        }
        AdaptCommand::Kinds => {
            for k in adapt::KINDS {
                println!("{:<11} {}  {}", k.name(), k.direction(), k.description());
            }
            Ok(())
        }
    }
}

fn load_model(p: &Path, device: tch::Device) -> Result<Embedder> {
    Embedder::load(p, device).with_context(|| format!("{}: cannot load the model", p.display()))
}

fn cmd_fit(a: FitArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    let mut cfg: FitConfig = match &a.settings {
        Some(p) => {
            let cfg: FitConfig = bcl::files::read_toml(p)?;
            cfg.validate().with_context(|| p.display().to_string())?;
            cfg
        }
        None => FitConfig::default(),
    };
    if let Some(alpha) = a.alpha {
        cfg.slerp.alpha = Some(alpha);
    }
    if let Some(lambda) = a.lambda {
        cfg.affine.lambda = lambda;
    }
    if let Some(seed) = a.seed {
        cfg.seed = seed;
    }
    let old = a
        .old
        .as_deref()
        .map(|p| load_model(p, device))
        .transpose()?;
    let new = a
        .new
        .as_deref()
        .map(|p| load_model(p, device))
        .transpose()?;
    let models = Models {
        old: old.as_ref().map(ModelRef::of).unwrap_or_default(),
        new: new.as_ref().map(ModelRef::of).unwrap_or_default(),
    };
    let support = match (&a.old_vectors, &a.new_vectors) {
        (Some(o), Some(n)) => {
            let support = SupportSet::new(&npy::read_features(o)?, &npy::read_features(n)?)
                .with_context(|| format!("{} and {}", o.display(), n.display()))?
                .with_source(format!("vectors {} and {}", o.display(), n.display()));
            match &a.labels {
                Some(l) => support
                    .with_labels(npy::read_labels(l)?)
                    .with_context(|| l.display().to_string())?,
                None => support,
            }
        }
        _ => {
            let (Some(old), Some(new)) = (&old, &new) else {
                bail!(
                    "give the support set: --old and --new model directories (they embed the \
                     support images), or --old-vectors and --new-vectors (.npy pairs)"
                );
            };
            let old_dir = a.old.as_deref().unwrap_or(Path::new("."));
            let data_args = DataArgs {
                config: a.data.config.clone(),
                data: a.data.data.clone(),
                split: a.data.split,
                per_class: a.data.per_class,
            };
            let cfg = data_config(&data_args, Some(old_dir))?;
            let data = load_split(&data_args, &cfg)?;
            if data.len() < 2 {
                bail!(
                    "the {} part of {} has {} images; the support set needs at least 2 (set \
                     validation_per_class in the run's [data], or choose --split)",
                    a.data.split,
                    cfg.dir.display(),
                    data.len()
                );
            }
            eprintln!(
                "embedding {} support images ({} part) with both models",
                data.len(),
                a.data.split
            );
            SupportSet::embedded(
                old,
                new,
                &data,
                a.batch,
                format!(
                    "{} images of the {} part of {}",
                    data.len(),
                    a.data.split,
                    cfg.dir.display()
                ),
            )?
        }
    };
    let support = match &a.side {
        Some(s) => support
            .with_side(&npy::read_features(s)?)
            .with_context(|| s.display().to_string())?,
        None => support,
    };
    let mut adapter = Adapter::fit(&a.kind, &support, &cfg, &models, device)?;
    adapter
        .save(&a.out)
        .with_context(|| format!("{}: cannot write the adapter", a.out.display()))?;
    let c = &adapter.card;
    println!(
        "{}",
        serde_json::json!({
            "adapter": a.out,
            "kind": c.kind,
            "direction": c.direction,
            "from_dim": c.from.dim,
            "to_dim": c.to.dim,
            "pairs": c.support.pairs,
            "support_cosine": c.support_cosine,
            "settings": c.settings,
            "seconds": c.seconds,
        })
    );
    Ok(())
}

fn cmd_apply(a: ApplyArgs) -> Result<()> {
    let adapter = Adapter::load(&a.adapter)?;
    let x = npy::read_features(&a.input)?;
    let companion = match (&a.old_query, &a.side) {
        (Some(_), Some(_)) => bail!("--old-query is slerp's, --side forward's: give one"),
        (Some(p), None) | (None, Some(p)) => Some(npy::read_features(p)?),
        (None, None) => None,
    };
    let t0 = std::time::Instant::now();
    let out = adapter
        .apply(&x, companion.as_ref())
        .with_context(|| format!("{} through {}", a.input.display(), a.adapter.display()))?;
    let seconds = t0.elapsed().as_secs_f64();
    npy::write_atomic(&a.out, &out)?;
    println!(
        "{}",
        serde_json::json!({
            "vectors": x.size()[0],
            "from_dim": adapter.card.from.dim,
            "to_dim": adapter.card.to.dim,
            "kind": adapter.card.kind,
            "seconds": seconds,
            "out": a.out,
        })
    );
    Ok(())
}
