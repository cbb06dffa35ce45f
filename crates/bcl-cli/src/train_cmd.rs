//! Training commands: `bcl train-old`, `train-new`, `demo`, `experiment` and `methods`, with
//! the flags they share (`Common`: configuration, data, device, resume).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bcl::data::Scenario;
use bcl::loss::Method;
use bcl::report::rows_markdown;
use bcl::run::{self, parse_device, RunConfig, StepOptions};
use clap::Args;

use crate::dist;

#[derive(Args)]
pub(crate) struct ExperimentArgs {
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
pub(crate) struct Common {
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
pub(crate) struct TrainOldArgs {
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
pub(crate) fn method_values() -> impl clap::builder::TypedValueParser<Value = Method> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(
        Method::all().map(|m| PossibleValue::new(m.as_str()).help(m.description())),
    )
    .map(|s| Method::named(&s).expect("a possible value is a registered method"))
}

#[derive(Args)]
pub(crate) struct TrainNewArgs {
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
    /// The new model's embedding dimension (default: the old model's; another one adds a
    /// projection head into the old space, trained by the compatibility loss).
    #[arg(long)]
    dim: Option<i64>,
    /// Output directory (default runs/new-METHOD).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct DemoArgs {
    #[command(flatten)]
    common: Common,
    /// Output directory of the run.
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
}

pub(crate) fn base_config(c: &Common) -> Result<RunConfig> {
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

pub(crate) fn options(c: &Common) -> Result<StepOptions> {
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

pub(crate) fn print_history(name: &str, h: &[bcl::train::EpochStats]) {
    if let Some(last) = h.last() {
        println!(
            "{name}: {} epochs, final loss {:.4}, train accuracy {:.3}, {:.0} images/s",
            last.epoch, last.loss_total, last.train_acc, last.images_per_s
        );
    }
}

pub(crate) fn old_dir_of(p: &Path) -> PathBuf {
    if p.is_file() {
        p.parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    } else {
        p.to_path_buf()
    }
}

/// `bcl train-old`.
pub(crate) fn cmd_train_old(a: TrainOldArgs) -> Result<()> {
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
pub(crate) fn cmd_train_new(a: TrainNewArgs) -> Result<()> {
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
    if let Some(d) = a.dim {
        cfg.new_model.dim = Some(d);
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

/// `bcl demo`.
pub(crate) fn cmd_demo(a: DemoArgs) -> Result<()> {
    let mut cfg = base_config(&a.common)?;
    if let Some(e) = a.common.epochs {
        cfg.old.epochs = e;
        cfg.new.epochs = e;
    }
    let t0 = std::time::Instant::now();
    bcl::report::record_command(&a.out, &crate::eval_cmd::command_line())?;
    let report = run::demo(&cfg, &a.out, &options(&a.common)?)?;
    println!(
        "extended-data {:.0}% on {} test items, {:.0} s",
        cfg.split.fraction * 100.0,
        report.test_items,
        t0.elapsed().as_secs_f64()
    );
    println!("{}", rows_markdown(&report.rows));
    println!("{}", bcl::eval::CRITERION);
    for r in &report.rows {
        println!(
            "  {:<12} cross {:.4}  old→old {:.4}  margin {:+.4}  {}",
            r.method.as_str(),
            r.cross_map,
            r.old_old_map,
            r.cross_map - r.old_old_map,
            if r.compatible {
                "compatible"
            } else {
                "not compatible"
            }
        );
    }
    println!(
        "run directory: {} (open {} in a browser)",
        a.out.display(),
        bcl::layout::RunDir::new(&a.out).html_report().display()
    );
    Ok(())
}

/// `bcl experiment`.
pub(crate) fn cmd_experiment(a: ExperimentArgs) -> Result<()> {
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
    bcl::report::record_command(&a.out, &crate::eval_cmd::command_line())?;
    let report = bcl::experiment::run_experiment(&cfg, &a.out, &opts)?;
    println!("{}", bcl::experiment::aggregate_markdown(&report.table));
    println!(
        "{} runs, {:.0} s; report in {} (page: {})",
        report.runs.len(),
        t0.elapsed().as_secs_f64(),
        a.out.display(),
        bcl::layout::RunDir::new(&a.out).html_report().display()
    );
    Ok(())
}

/// `bcl methods`: the method registry (name, what it does, what it needs, its sweep knobs and
/// the defaults of its own settings).
pub(crate) fn cmd_methods() {
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
