//! Experiments: one configuration file describes scenarios, methods, seeds, knob sweeps and
//! the optional stages; `run_experiment` trains what is missing (finished models are reused,
//! interrupted ones resumed), evaluates each (scenario, seed) once, and hands the results to
//! the stages, each in its own file: the main table ([`main_table`], with [`paired`]), the
//! [`sweeps`] and their [`frontier`], [`backfill`], [`benchmarks`], [`sequential`] upgrades,
//! the refresh [`diagnostics`], and the verdict's protocol, [`selection`] (settings chosen on
//! validation over selection seeds, reported on fresh seeds with Holm-adjusted paired
//! intervals). Run directories are named through [`run_dir`] (their files: [`crate::layout`]).

pub mod adapters;
pub mod backfill;
pub mod benchmarks;
pub mod diagnostics;
pub mod frontier;
pub mod main_table;
pub mod paired;
pub mod selection;
pub mod sequential;
pub mod sweeps;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::Scenario;
use crate::eval::leave_one_out;
use crate::eval::models::{evaluate_models_with, EvalReport, MatrixCells};
use crate::files::write_atomic;
use crate::layout::{ExperimentDir, ExperimentFile, ModelDir, RunDir};
pub use crate::loss::Knob;
use crate::loss::Method;
use crate::model::Embedder;
use crate::run::{RunConfig, RunError, StepOptions};
pub use frontier::FrontierPoint;
pub use main_table::{aggregate, aggregate_csv, aggregate_markdown, AggregateRow};
pub use sweeps::Sweep;

/// The whole experiment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Settings shared by every run (data, model, training, compatibility defaults).
    pub base: RunConfig,
    /// Scenarios to run.
    pub scenarios: Vec<Scenario>,
    /// Methods of the main table.
    pub methods: Vec<Method>,
    /// Seeds: seed s sets the split seed to s, the old model's to 1000 + s, new models' to 2000 + s.
    pub seeds: Vec<u64>,
    /// Frontier sweeps.
    pub sweeps: Vec<sweeps::Sweep>,
    /// Scenarios the sweeps run in (default: all).
    pub sweep_scenarios: Option<Vec<Scenario>>,
    /// Seeds the sweeps run with (default: the first seed).
    pub sweep_seeds: Option<Vec<u64>>,
    /// Sequential upgrades (none by default).
    pub sequential: Option<sequential::SequentialConfig>,
    /// Partial-backfill curves and flips (none by default).
    pub backfill: Option<backfill::BackfillConfig>,
    /// Standard benchmarks every run's models are scored on (`[[benchmark]]`; none by default).
    pub benchmark: Vec<crate::eval::protocol::BenchmarkConfig>,
    /// The selection-then-report protocol (none by default): settings chosen on validation
    /// data over selection seeds, retrained and reported on report seeds.
    pub selection: Option<selection::SelectionConfig>,
    /// Adapters fitted after training and scored as rows beside the methods (none by default).
    pub adapters: Option<adapters::AdaptersConfig>,
}

/// The models an experiment plans, by stage (a model found finished counts as planned).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ModelPlan {
    /// (scenario, seed) runs of the main table.
    pub runs: usize,
    /// Their models: an old model and one per method each.
    pub main: usize,
    /// The frontier sweeps' models.
    pub sweeps: usize,
    /// The selection seeds' old models and grid settings (before any extension).
    pub selection: usize,
    /// The report seeds' models of each grid's chosen setting (one criterion's; old models of
    /// report seeds the main runs do not share).
    pub report: usize,
    /// The sequential chains' models.
    pub sequential: usize,
}

impl ModelPlan {
    /// All planned models.
    pub fn total(&self) -> usize {
        self.main + self.sweeps + self.selection + self.report + self.sequential
    }
}

impl std::fmt::Display for ModelPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} models: {} in {} main runs",
            self.total(),
            self.main,
            self.runs
        )?;
        for (n, what) in [
            (self.sweeps, "sweeps"),
            (
                self.selection,
                "selection grids (more if a grid is extended)",
            ),
            (
                self.report,
                "report seeds (more if the matched criterion picks another setting)",
            ),
            (self.sequential, "sequential chains"),
        ] {
            if n > 0 {
                write!(f, ", {n} {what}")?;
            }
        }
        Ok(())
    }
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        Self {
            base: RunConfig::default(),
            scenarios: vec![Scenario::ExtendedData, Scenario::ExtendedClass],
            methods: Method::all().collect(),
            seeds: vec![1, 2, 3],
            sweeps: Vec::new(),
            sweep_scenarios: None,
            sweep_seeds: None,
            sequential: None,
            backfill: None,
            benchmark: Vec::new(),
            selection: None,
            adapters: None,
        }
    }
}

impl ExperimentConfig {
    /// Reads a TOML file over the defaults (unknown keys are errors).
    pub fn from_toml_file(path: &Path) -> Result<Self, RunError> {
        let mut cfg: Self = crate::files::read_toml(path)?;
        cfg.base.compat.complete();
        let invalid = |reason: String| RunError::Config {
            path: path.to_path_buf(),
            reason,
        };
        cfg.base.validate().map_err(&invalid)?;
        for s in &cfg.sweeps {
            s.validate(&cfg.base).map_err(&invalid)?;
        }
        if cfg.seeds.is_empty() || cfg.scenarios.is_empty() || cfg.methods.is_empty() {
            return Err(RunError::Config {
                path: path.to_path_buf(),
                reason: "seeds, scenarios and methods must each name at least one".into(),
            });
        }
        if let Some(bf) = &cfg.backfill {
            bf.validate(&cfg.methods).map_err(&invalid)?;
        }
        if let Some(sel) = &cfg.selection {
            sel.validate(&cfg.base, &cfg.seeds).map_err(&invalid)?;
        }
        if let Some(ad) = &cfg.adapters {
            ad.validate(&cfg.methods, &cfg.base.data)
                .map_err(&invalid)?;
        }
        if let Some(seq) = &cfg.sequential {
            seq.validate(&cfg.base.data)
                .map_err(|reason| RunError::Config {
                    path: path.to_path_buf(),
                    reason,
                })?;
        }
        Ok(cfg)
    }

    /// The models this experiment plans to train (or find finished), by stage, as far as the
    /// configuration tells: grid extensions and the report's choices are added as they are
    /// decided.
    pub fn plan(&self) -> ModelPlan {
        let runs = self.scenarios.len() * self.seeds.len();
        let mut plan = ModelPlan {
            runs,
            main: runs * (1 + self.methods.len()),
            ..ModelPlan::default()
        };
        for &sc in &self.scenarios {
            for &seed in &self.seeds {
                if self.sweeps_run_in(sc, seed) {
                    plan.sweeps += self.sweeps.iter().map(|s| s.values.len()).sum::<usize>();
                }
            }
        }
        if let Some(sel) = &self.selection {
            let settings: usize = sel
                .grids
                .iter()
                .map(|g| {
                    let default = g.knob.value(&self.base.compat);
                    g.values.len() + default.is_some_and(|v| !g.values.contains(&v)) as usize
                })
                .sum();
            plan.selection = self.scenarios.len() * sel.seeds.len() * (1 + settings);
            let report_seeds = sel.report_seeds(&self.seeds);
            let new_olds = report_seeds
                .iter()
                .filter(|s| !self.seeds.contains(s))
                .count();
            plan.report = self.scenarios.len() * (report_seeds.len() * sel.grids.len() + new_olds);
        }
        if let Some(seq) = &self.sequential {
            let seeds = seq.seeds.as_ref().map_or(self.seeds.len(), Vec::len);
            plan.sequential =
                seeds * (1 + seq.methods.len() * seq.fractions.len().saturating_sub(1));
        }
        plan
    }

    /// Whether the sweeps run in this (scenario, seed).
    pub fn sweeps_run_in(&self, scenario: Scenario, seed: u64) -> bool {
        let scenario_ok = match &self.sweep_scenarios {
            Some(s) => s.contains(&scenario),
            None => self.scenarios.contains(&scenario),
        };
        let seed_ok = match &self.sweep_seeds {
            Some(s) => s.contains(&seed),
            None => self.seeds.first() == Some(&seed),
        };
        scenario_ok && seed_ok
    }

    /// The run configuration of one (scenario, seed).
    pub fn run_config(&self, scenario: Scenario, seed: u64) -> RunConfig {
        let mut c = self.base.clone();
        c.split.scenario = scenario;
        c.split.seed = seed;
        c.old.seed = 1000 + seed;
        c.new.seed = 2000 + seed;
        c
    }
}

/// Everything an experiment produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExperimentReport {
    /// Per-run evaluations, by "scenario/seed-N".
    pub runs: BTreeMap<String, EvalReport>,
    /// Every method against bct and against independent, paired by seed.
    pub paired: Vec<paired::PairedRow>,
    /// The aggregated table.
    pub table: Vec<main_table::AggregateRow>,
    /// Frontier points.
    pub frontier: Vec<FrontierPoint>,
    /// Frontier settings over the sweep seeds.
    pub frontier_summary: Vec<frontier::SettingSummary>,
    /// Each method's best compatible setting against bct's, paired by seed.
    pub best_compatible: Vec<frontier::BestCompatibleRow>,
    /// Refresh diagnostics of the perturbation runs.
    pub diagnostics: Vec<diagnostics::DiagnosticsRow>,
    /// Sequential-upgrade chains (empty without a `[sequential]` section).
    pub sequential: Vec<sequential::ChainRun>,
    /// Deployment figures (empty without a `[backfill]` section).
    pub backfill: Vec<backfill::DeployRun>,
    /// Benchmark reports per run (empty without `[[benchmark]]` entries).
    pub benchmarks: Vec<benchmarks::BenchmarkRun>,
    /// The selection-then-report protocol's choices and report (without `[selection]`: none).
    pub selection: Option<selection::SelectionReport>,
}

/// The content ids of the models in `dirs`, read from their cards (the key of per-run caches:
/// a result is reused only while every model it was computed from is unchanged).
pub(crate) fn model_ids(dirs: &[PathBuf]) -> Result<Vec<String>, RunError> {
    Ok(dirs
        .iter()
        .map(|d| crate::model::ModelCard::read(&ModelDir::new(d).card()).map(|c| c.id))
        .collect::<Result<_, _>>()?)
}

/// A per-run result cached as JSON in `path` under `key`: read back when the file holds the same
/// key, else computed and written atomically (an unreadable or stale file is recomputed).
pub(crate) fn cached<K, V>(
    path: &Path,
    key: &K,
    compute: impl FnOnce() -> Result<V, RunError>,
) -> Result<V, RunError>
where
    K: Serialize + serde::de::DeserializeOwned + PartialEq,
    V: Serialize + serde::de::DeserializeOwned,
{
    let hit = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<(K, V)>(&t).ok())
        .filter(|(k, _)| k == key);
    if let Some((_, v)) = hit {
        return Ok(v);
    }
    let v = compute()?;
    write_atomic(
        path,
        serde_json::to_string(&(key, &v))
            .expect("serialises")
            .as_bytes(),
    )?;
    Ok(v)
}

pub(crate) fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64
    } else {
        0.0
    };
    (m, var.sqrt())
}

fn run_key(scenario: Scenario, seed: u64) -> String {
    ExperimentDir::run_key(&scenario.to_string(), seed)
}

/// The directory of one (scenario, seed) run of an experiment under `out` (its layout:
/// [`crate::layout::RunDir`]). Every stage names run directories through here.
pub fn run_dir(out: &Path, scenario: Scenario, seed: u64) -> RunDir {
    ExperimentDir::new(out).run(&scenario.to_string(), seed)
}

/// The directory of one run's model, for callers that want to read it.
pub fn model_dir(out: &Path, scenario: Scenario, seed: u64, method: Method) -> PathBuf {
    run_dir(out, scenario, seed)
        .model(&method.model_name())
        .path()
        .to_path_buf()
}

/// What one (scenario, seed) run gave the stages.
struct RunOutcome {
    report: EvalReport,
    /// Frontier points (main runs' defaults and sweeps), on the sweep scenarios and seeds.
    points: Vec<FrontierPoint>,
    deploy: Vec<backfill::DeployRun>,
    benchmarks: Vec<benchmarks::BenchmarkRun>,
}

/// Runs (or resumes) the experiment into `out` and writes its report files there.
pub fn run_experiment(
    cfg: &ExperimentConfig,
    out: &Path,
    opts: &StepOptions,
) -> Result<ExperimentReport, RunError> {
    std::fs::create_dir_all(out)
        .map_err(|e| RunError::Invalid(format!("{}: cannot create: {e}", out.display())))?;
    let exp = ExperimentDir::new(out);
    crate::files::write_toml(&exp.config(), cfg)?;
    let opts = StepOptions {
        resume: true,
        ..opts.clone()
    };
    let plan = cfg.plan();
    tracing::info!(
        "plan: {plan} (models already finished are reused); the time left is estimated from \
         the first model trained"
    );
    let _overall = crate::train::overall::begin(plan.total() as u64, opts.progress);
    let mut runs = BTreeMap::new();
    let mut table_in = Vec::new();
    let (mut frontier, mut deploy, mut bench_runs) = (Vec::new(), Vec::new(), Vec::new());
    for &scenario in &cfg.scenarios {
        for &seed in &cfg.seeds {
            let r = run_one(cfg, scenario, seed, out, &opts)?;
            frontier.extend(r.points);
            deploy.extend(r.deploy);
            bench_runs.extend(r.benchmarks);
            table_in.push((scenario, seed, r.report.all_rows()));
            runs.insert(run_key(scenario, seed), r.report);
        }
    }
    let (table, paired) = main_table::write_main_tables(&table_in, out)?;
    frontier::sort_points(&mut frontier);
    let (frontier_summary, best_compatible) = frontier::write_frontier(&frontier, &cfg.base, out)?;
    if !deploy.is_empty() {
        backfill::write_backfill_reports(&deploy, out)?;
    }
    if !bench_runs.is_empty() {
        let md = benchmarks::benchmarks_markdown(&bench_runs);
        write_atomic(&exp.file(ExperimentFile::BenchmarksMd), md.as_bytes())?;
    }
    let chains = match &cfg.sequential {
        Some(seq) => sequential::run_and_write(cfg, seq, out, &opts)?,
        None => Vec::new(),
    };
    let selection = match &cfg.selection {
        Some(sel) => Some(selection::run_and_write(cfg, sel, out, &opts)?),
        None => None,
    };
    let diag = diagnostics::diagnostics(cfg, out);
    let md = diagnostics::diagnostics_markdown(&diag);
    write_atomic(&exp.file(ExperimentFile::DiagnosticsMd), md.as_bytes())?;
    let report = ExperimentReport {
        runs,
        paired,
        table,
        frontier,
        frontier_summary,
        best_compatible,
        diagnostics: diag,
        sequential: chains,
        backfill: deploy,
        benchmarks: bench_runs,
        selection,
    };
    crate::files::write_json(&exp.file(ExperimentFile::Report), &report)?;
    crate::report::write_html_report(out)?;
    Ok(report)
}

/// One (scenario, seed): the old model, every method, the sweeps where they run, the cached
/// evaluation, the plots (first seed), and the per-run stages (backfill, benchmarks).
fn run_one(
    cfg: &ExperimentConfig,
    scenario: Scenario,
    seed: u64,
    out: &Path,
    opts: &StepOptions,
) -> Result<RunOutcome, RunError> {
    let rc = cfg.run_config(scenario, seed);
    let run = run_dir(out, scenario, seed);
    let dir = run.path().to_path_buf();
    let old_dir = run.old().path().to_path_buf();
    tracing::info!(%scenario, seed, "experiment run");
    let dirs = crate::run::train_protocol(&rc, &run, &cfg.methods, opts)?.dirs;
    let in_sweeps = cfg.sweeps_run_in(scenario, seed);
    let swept = if in_sweeps {
        sweeps::train_sweeps(&cfg.sweeps, &rc, &dir, &old_dir, opts)?
    } else {
        Vec::new()
    };
    let (mut report, sweep_points) = evaluate_run(&rc, &dirs, &swept, scenario, seed, &dir, opts)?;
    let mut forward = Vec::new();
    if let Some(ad) = &cfg.adapters {
        let rows = adapters::adapted_rows(ad, &rc, &cfg.methods, &dirs, &report, seed, &dir, opts)?;
        forward = adapters::forward_adapters(&run, &rows);
        adapters::add_to_report(&mut report, &cfg.methods, &rows);
    }
    if seed == cfg.seeds[0] {
        diagnostics::plot_run(&report, &dir, scenario, seed)?;
    }
    let mut points = Vec::new();
    if in_sweeps {
        // the main runs give each method its default point
        points.extend(report.all_rows().iter().map(|r| FrontierPoint {
            scenario,
            seed,
            method: r.method,
            adapter: r.adapter.clone(),
            knob: None,
            value: None,
            self_map: r.self_map,
            cross_map: r.cross_map,
            old_old_map: r.old_old_map,
        }));
        points.extend(sweep_points);
    }
    let oo = report.matrix.at(0, 0).map;
    let deploy = match &cfg.backfill {
        Some(bf) => backfill::deploy_run(&rc, oo, bf, &forward, scenario, seed, &dir, opts)?,
        None => Vec::new(),
    };
    let benchmarks = if cfg.benchmark.is_empty() {
        Vec::new()
    } else {
        benchmarks::run_benchmarks(&cfg.benchmark, &dirs, &dir, scenario, seed, opts.device)?
    };
    Ok(RunOutcome {
        report,
        points,
        deploy,
        benchmarks,
    })
}

/// The evaluation of one run, cached in `dir/eval.json` (recomputed only when a model
/// changed): the results table's cells for the main models, and each sweep model's self-test
/// and cross-test against the old model.
fn evaluate_run(
    rc: &RunConfig,
    dirs: &[PathBuf],
    swept: &[sweeps::SweepModel],
    scenario: Scenario,
    seed: u64,
    dir: &Path,
    opts: &StepOptions,
) -> Result<(EvalReport, Vec<FrontierPoint>), RunError> {
    let all_dirs: Vec<PathBuf> = dirs
        .iter()
        .cloned()
        .chain(swept.iter().map(|s| s.dir.clone()))
        .collect();
    cached(
        &RunDir::new(dir).eval_cache(),
        &model_ids(&all_dirs)?,
        || {
            let test = crate::data::open_test(&rc.data)?;
            let models = dirs
                .iter()
                .map(|d| Embedder::load(d, opts.device))
                .collect::<Result<Vec<_>, _>>()?;
            let report = evaluate_models_with(&models, &test, rc.eval_batch, MatrixCells::Table)?;
            let old_feats = models[0].embed_dataset(&test, rc.eval_batch);
            let oo = report.matrix.at(0, 0).map;
            let mut points = Vec::new();
            for s in swept {
                let m = Embedder::load(&s.dir, opts.device)?;
                let f = m.embed_dataset(&test, rc.eval_batch);
                let q = m.queries_for(&f, models[0].dim())?;
                points.push(FrontierPoint {
                    scenario,
                    seed,
                    method: s.sweep.method,
                    adapter: None,
                    knob: Some(s.sweep.knob),
                    value: Some(s.value),
                    self_map: leave_one_out(&f, &f, &test.labels)?.map,
                    cross_map: leave_one_out(&q, &old_feats, &test.labels)?.map,
                    old_old_map: oo,
                });
            }
            Ok((report, points))
        },
    )
}
