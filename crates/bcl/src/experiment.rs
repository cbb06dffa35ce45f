//! Experiments: one configuration file describes scenarios, methods, seeds and knob sweeps;
//! `run_experiment` trains what is missing (finished models are reused, interrupted ones
//! resumed), evaluates each (scenario, seed) once, and writes the aggregated table
//! (mean ± std over seeds), the frontier of self-test against cross-test, and plots; the
//! sequential-upgrade chains live in [`sequential`].

pub mod backfill;
pub mod benchmarks;
pub mod frontier;
pub mod paired;
pub mod sequential;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::data::Scenario;
use crate::eval::leave_one_out;
use crate::files::write_atomic;
use crate::loss::Method;
use crate::model::{l2_normalize, Embedder};
use crate::pipeline::{
    evaluate_models_with, train_new, train_old, EvalReport, MatrixCells, PipelineError, RunConfig,
    StepOptions,
};
use crate::report::{plot_matrix, plot_prototypes_pca, ResultRow};
pub use frontier::FrontierPoint;

/// A knob a sweep turns.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Knob {
    /// λ of the compatibility loss.
    Lambda,
    /// NDPP's ε.
    NdppEps,
    /// NDPP's β cap.
    NdppBeta,
    /// ODPP's ε.
    OdppEps,
    /// ODPP's μ.
    OdppMu,
}

impl Knob {
    /// Name used in directory names and tables.
    pub fn as_str(&self) -> &'static str {
        match self {
            Knob::Lambda => "lambda",
            Knob::NdppEps => "ndpp-eps",
            Knob::NdppBeta => "ndpp-beta",
            Knob::OdppEps => "odpp-eps",
            Knob::OdppMu => "odpp-mu",
        }
    }

    /// The configuration with this knob set to `v`.
    pub fn apply(&self, cfg: &RunConfig, v: f64) -> RunConfig {
        let mut c = cfg.clone();
        match self {
            Knob::Lambda => c.compat.lambda = v,
            Knob::NdppEps => c.compat.ndpp.eps = v,
            Knob::NdppBeta => c.compat.ndpp.beta = Some(v),
            Knob::OdppEps => c.compat.odpp.eps = v,
            Knob::OdppMu => c.compat.odpp.mu = v,
        }
        c
    }

    /// The knob's value in the base configuration (the sweep's default point).
    pub fn base_value(&self, cfg: &RunConfig) -> Option<f64> {
        match self {
            Knob::Lambda => Some(cfg.compat.lambda),
            Knob::NdppEps => Some(cfg.compat.ndpp.eps),
            Knob::NdppBeta => cfg.compat.ndpp.beta,
            Knob::OdppEps => Some(cfg.compat.odpp.eps),
            Knob::OdppMu => Some(cfg.compat.odpp.mu),
        }
    }
}

/// One sweep: a method trained at several values of one knob.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    /// The method.
    pub method: Method,
    /// The knob.
    pub knob: Knob,
    /// Its values (the base configuration's value is added as a point from the main runs).
    pub values: Vec<f64>,
}

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
    pub sweeps: Vec<Sweep>,
    /// Scenarios the sweeps run in (default: all).
    pub sweep_scenarios: Option<Vec<Scenario>>,
    /// Seeds the sweeps run with (default: the first seed).
    pub sweep_seeds: Option<Vec<u64>>,
    /// Sequential upgrades (none by default).
    pub sequential: Option<sequential::SequentialConfig>,
    /// Partial-backfill curves and flips (none by default).
    pub backfill: Option<backfill::BackfillConfig>,
    /// Standard benchmarks every run's models are scored on (`[[benchmark]]`; none by default).
    pub benchmark: Vec<crate::pipeline::benchmark::BenchmarkConfig>,
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        Self {
            base: RunConfig::default(),
            scenarios: vec![Scenario::ExtendedData, Scenario::ExtendedClass],
            methods: Method::ALL.to_vec(),
            seeds: vec![1, 2, 3],
            sweeps: Vec::new(),
            sweep_scenarios: None,
            sweep_seeds: None,
            sequential: None,
            backfill: None,
            benchmark: Vec::new(),
        }
    }
}

impl ExperimentConfig {
    /// Reads a TOML file over the defaults (unknown keys are errors).
    pub fn from_toml_file(path: &Path) -> Result<Self, PipelineError> {
        let cfg: Self = crate::files::read_toml(path)?;
        let invalid = |reason: String| PipelineError::Config {
            path: path.to_path_buf(),
            reason,
        };
        cfg.base.validate().map_err(&invalid)?;
        for s in &cfg.sweeps {
            for &v in &s.values {
                s.knob
                    .apply(&cfg.base, v)
                    .validate()
                    .map_err(|e| invalid(format!("sweep {} = {v}: {e}", s.knob.as_str())))?;
            }
        }
        if cfg.seeds.is_empty() || cfg.scenarios.is_empty() || cfg.methods.is_empty() {
            return Err(PipelineError::Config {
                path: path.to_path_buf(),
                reason: "seeds, scenarios and methods must each name at least one".into(),
            });
        }
        if let Some(bf) = &cfg.backfill {
            if let Some(m) = bf.methods.iter().find(|m| !cfg.methods.contains(m)) {
                return Err(PipelineError::Config {
                    path: path.to_path_buf(),
                    reason: format!("backfill.methods names {m}, which is not among methods"),
                });
            }
            if let Some(f) = bf.fractions.iter().find(|f| !(0.0..=1.0).contains(*f)) {
                return Err(PipelineError::Config {
                    path: path.to_path_buf(),
                    reason: format!("backfill.fractions lie in [0, 1], got {f}"),
                });
            }
        }
        if let Some(seq) = &cfg.sequential {
            seq.validate().map_err(|reason| PipelineError::Config {
                path: path.to_path_buf(),
                reason,
            })?;
        }
        Ok(cfg)
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

/// One row of the aggregated table: a method in a scenario, over seeds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AggregateRow {
    /// Scenario.
    pub scenario: String,
    /// Method.
    pub method: String,
    /// Seeds aggregated.
    pub seeds: usize,
    /// (mean, std) of old→old mAP.
    pub old_old_map: (f64, f64),
    /// (mean, std) of self-test mAP.
    pub self_map: (f64, f64),
    /// (mean, std) of cross-test mAP.
    pub cross_map: (f64, f64),
    /// (mean, std) of self-test R@1.
    pub self_r1: (f64, f64),
    /// (mean, std) of cross-test R@1.
    pub cross_r1: (f64, f64),
    /// Seeds meeting the criterion.
    pub compatible: usize,
    /// (mean, std) of the update gain over the seeds where it is defined.
    pub gain: Option<(f64, f64)>,
}

/// Everything an experiment produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExperimentReport {
    /// Per-run evaluations, by "scenario/seed-N".
    pub runs: BTreeMap<String, EvalReport>,
    /// The aggregated table.
    pub table: Vec<AggregateRow>,
    /// Frontier points.
    pub frontier: Vec<FrontierPoint>,
    /// Frontier settings over the sweep seeds.
    pub frontier_summary: Vec<frontier::SettingSummary>,
    /// Each method's best compatible setting against bct's, paired by seed.
    pub best_compatible: Vec<frontier::BestCompatibleRow>,
    /// Refresh diagnostics of the perturbation runs.
    pub diagnostics: Vec<DiagnosticsRow>,
    /// Sequential-upgrade chains (empty without a `[sequential]` section).
    pub sequential: Vec<sequential::ChainRun>,
    /// Deployment figures (empty without a `[backfill]` section).
    pub backfill: Vec<backfill::DeployRun>,
    /// Benchmark reports per run (empty without `[[benchmark]]` entries).
    pub benchmarks: Vec<benchmarks::BenchmarkRun>,
}

/// Summary of one perturbation run's refreshes (from its `refreshes.json` and `history.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DiagnosticsRow {
    /// Scenario.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Method.
    pub method: String,
    /// Number of refreshes.
    pub refreshes: usize,
    /// Mean over refreshes of mean ‖δ_k‖.
    pub mean_delta: f64,
    /// Max over refreshes of max ‖δ_k‖.
    pub max_delta: f64,
    /// Mean nearest-neighbour similarity of the old prototypes.
    pub nn_sim_old: f64,
    /// The same for the pseudo-old prototypes at the last refresh.
    pub nn_sim_pseudo: f64,
    /// Lowest share, over refreshes, of classes still nearest their own old prototype.
    pub own_nearest_min: f64,
    /// J before and after the last refresh (ODPP).
    pub j_last: Option<(f64, f64)>,
    /// Total refresh time in seconds (feature pass excluded).
    pub refresh_seconds: f64,
    /// Total training time in seconds (all epochs).
    pub train_seconds: f64,
}

/// Reads the refresh diagnostics of every main ndpp/odpp run under `out`.
pub fn diagnostics(cfg: &ExperimentConfig, out: &Path) -> Vec<DiagnosticsRow> {
    let mut rows = Vec::new();
    for &scenario in &cfg.scenarios {
        for &seed in &cfg.seeds {
            for m in [Method::Ndpp, Method::Odpp, Method::Unibct] {
                let dir = model_dir(out, scenario, seed, m);
                let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
                let (Some(r), Some(h)) = (read("refreshes.json"), read("history.json")) else {
                    continue;
                };
                let (Ok(r), Ok(h)) = (
                    serde_json::from_str::<Vec<crate::perturb::RefreshStats>>(&r),
                    serde_json::from_str::<Vec<crate::train::EpochStats>>(&h),
                ) else {
                    continue;
                };
                let Some(last) = r.last() else { continue };
                rows.push(DiagnosticsRow {
                    scenario: scenario.to_string(),
                    seed,
                    method: m.to_string(),
                    refreshes: r.len(),
                    mean_delta: r.iter().map(|s| s.mean_delta).sum::<f64>() / r.len() as f64,
                    max_delta: r.iter().map(|s| s.max_delta).fold(0.0, f64::max),
                    nn_sim_old: last.nn_sim_before,
                    nn_sim_pseudo: last.nn_sim_after,
                    own_nearest_min: r.iter().map(|s| s.own_nearest_share).fold(1.0, f64::min),
                    j_last: last.j_before.zip(last.j_after),
                    refresh_seconds: r.iter().map(|s| s.seconds).sum(),
                    train_seconds: h.iter().map(|e| e.seconds).sum(),
                });
            }
        }
    }
    rows
}

/// The diagnostics as a Markdown table.
pub fn diagnostics_markdown(rows: &[DiagnosticsRow]) -> String {
    let mut s = String::from(
        "| scenario | seed | method | refreshes | mean ‖δ‖ | max ‖δ‖ | NN sim old | NN sim pseudo-old | own-nearest (min) | J before→after (last) | refresh s / train s |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {} | {:.2} / {:.0} ({:.2}%) |\n",
            r.scenario,
            r.seed,
            r.method,
            r.refreshes,
            r.mean_delta,
            r.max_delta,
            r.nn_sim_old,
            r.nn_sim_pseudo,
            r.own_nearest_min,
            r.j_last
                .map(|j| format!("{:.3} → {:.3}", j.0, j.1))
                .unwrap_or_else(|| "–".into()),
            r.refresh_seconds,
            r.train_seconds,
            100.0 * r.refresh_seconds / r.train_seconds.max(1e-9),
        ));
    }
    s
}

/// The content ids of the models in `dirs`, read from their cards (the key of per-run caches:
/// a result is reused only while every model it was computed from is unchanged).
pub(crate) fn model_ids(dirs: &[PathBuf]) -> Result<Vec<String>, PipelineError> {
    Ok(dirs
        .iter()
        .map(|d| crate::model::ModelCard::read(&d.join(crate::model::CARD_FILE)).map(|c| c.id))
        .collect::<Result<_, _>>()?)
}

/// A per-run result cached as JSON in `path` under `key`: read back when the file holds the same
/// key, else computed and written atomically (an unreadable or stale file is recomputed).
pub(crate) fn cached<K, V>(
    path: &Path,
    key: &K,
    compute: impl FnOnce() -> Result<V, PipelineError>,
) -> Result<V, PipelineError>
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

/// Aggregates per-run rows into mean ± std (sample standard deviation) per scenario and method.
pub fn aggregate(runs: &[(Scenario, u64, Vec<ResultRow>)]) -> Vec<AggregateRow> {
    let mut groups: BTreeMap<(String, String), Vec<&ResultRow>> = BTreeMap::new();
    let mut order: Vec<(String, String)> = Vec::new();
    for (sc, _, rows) in runs {
        for r in rows {
            let key = (sc.to_string(), r.method.clone());
            if !groups.contains_key(&key) {
                order.push(key.clone());
            }
            groups.entry(key).or_default().push(r);
        }
    }
    order
        .into_iter()
        .map(|key| {
            let rs = &groups[&key];
            let col = |f: &dyn Fn(&ResultRow) -> f64| {
                mean_std(&rs.iter().map(|r| f(r)).collect::<Vec<_>>())
            };
            let gains: Vec<f64> = rs.iter().filter_map(|r| r.gain).collect();
            AggregateRow {
                scenario: key.0.clone(),
                method: key.1.clone(),
                seeds: rs.len(),
                old_old_map: col(&|r| r.old_old_map),
                self_map: col(&|r| r.self_map),
                cross_map: col(&|r| r.cross_map),
                self_r1: col(&|r| r.self_r1),
                cross_r1: col(&|r| r.cross_r1),
                compatible: rs.iter().filter(|r| r.compatible).count(),
                gain: (!gains.is_empty()).then(|| mean_std(&gains)),
            }
        })
        .collect()
}

fn pm(v: (f64, f64)) -> String {
    format!("{:.4} ± {:.4}", v.0, v.1)
}

/// The aggregated table as Markdown.
pub fn aggregate_markdown(rows: &[AggregateRow]) -> String {
    let mut s = String::from(
        "| scenario | method | seeds | old→old mAP | self mAP | cross mAP | self R@1 | cross R@1 | compatible | gain |\n|---|---|---:|---:|---:|---:|---:|---:|:---:|---:|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {} |\n",
            r.scenario,
            r.method,
            r.seeds,
            pm(r.old_old_map),
            pm(r.self_map),
            pm(r.cross_map),
            pm(r.self_r1),
            pm(r.cross_r1),
            r.compatible,
            r.seeds,
            r.gain
                .map(|g| format!("{:.3} ± {:.3}", g.0, g.1))
                .unwrap_or_else(|| "–".into()),
        ));
    }
    s
}

/// The aggregated table as CSV (means and standard deviations in separate columns).
pub fn aggregate_csv(rows: &[AggregateRow]) -> String {
    let mut s = String::from(
        "scenario,method,seeds,old_old_map,old_old_map_std,self_map,self_map_std,cross_map,cross_map_std,self_r1,self_r1_std,cross_r1,cross_r1_std,compatible,gain,gain_std\n",
    );
    for r in rows {
        let (g, gs) = r
            .gain
            .map(|g| (format!("{:.6}", g.0), format!("{:.6}", g.1)))
            .unwrap_or_default();
        s.push_str(&format!(
            "{},{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{},{},{}\n",
            r.scenario,
            r.method,
            r.seeds,
            r.old_old_map.0,
            r.old_old_map.1,
            r.self_map.0,
            r.self_map.1,
            r.cross_map.0,
            r.cross_map.1,
            r.self_r1.0,
            r.self_r1.1,
            r.cross_r1.0,
            r.cross_r1.1,
            r.compatible,
            g,
            gs
        ));
    }
    s
}

fn run_key(scenario: Scenario, seed: u64) -> String {
    format!("{scenario}/{}", seed_dir_name(seed))
}

/// The directory name of one seed's runs (`seed-3`).
pub fn seed_dir_name(seed: u64) -> String {
    format!("seed-{seed}")
}

/// The directory of one (scenario, seed) run of an experiment: its old model is `old/` and each
/// new model `Method::model_name()` inside it. Every stage names run directories through here.
pub fn run_dir(out: &Path, scenario: Scenario, seed: u64) -> PathBuf {
    out.join(scenario.to_string()).join(seed_dir_name(seed))
}

fn sweep_dir_name(s: &Sweep, v: f64) -> String {
    format!("sweep-{}-{}-{v}", s.method, s.knob.as_str())
}

/// Reads the old and pseudo-old prototypes a perturbation run saved in its checkpoint.
pub fn saved_prototypes(model_dir: &Path) -> Option<(Tensor, Tensor)> {
    let state = Tensor::read_safetensors(model_dir.join("checkpoint/compat.safetensors")).ok()?;
    let get = |n: &str| {
        state
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, t)| t.shallow_clone())
    };
    let old = get("old_prototypes")?;
    let delta = get("delta")?;
    let pseudo = l2_normalize(&(&old + &delta));
    Some((old, pseudo))
}

/// Runs (or resumes) the experiment into `out` and writes its report files there.
pub fn run_experiment(
    cfg: &ExperimentConfig,
    out: &Path,
    opts: &StepOptions,
) -> Result<ExperimentReport, PipelineError> {
    std::fs::create_dir_all(out)
        .map_err(|e| PipelineError::Invalid(format!("{}: cannot create: {e}", out.display())))?;
    crate::files::write_toml(&out.join("experiment.toml"), cfg)?;
    let opts = StepOptions {
        resume: true,
        ..opts.clone()
    };
    let mut runs = BTreeMap::new();
    let mut table_in = Vec::new();
    let mut frontier = Vec::new();
    let mut deploy = Vec::new();
    let mut bench_runs = Vec::new();
    let sweep_scenarios = cfg
        .sweep_scenarios
        .clone()
        .unwrap_or_else(|| cfg.scenarios.clone());
    let sweep_seeds = cfg
        .sweep_seeds
        .clone()
        .unwrap_or_else(|| vec![cfg.seeds[0]]);
    for &scenario in &cfg.scenarios {
        for &seed in &cfg.seeds {
            let rc = cfg.run_config(scenario, seed);
            let dir = run_dir(out, scenario, seed);
            let old_dir = dir.join("old");
            tracing::info!(%scenario, seed, "experiment run");
            train_old(&rc, &old_dir, &opts)?;
            let mut dirs = vec![old_dir.clone()];
            for &m in &cfg.methods {
                let d = dir.join(m.model_name());
                train_new(&rc, &old_dir, m, &d, &opts)?;
                dirs.push(d);
            }
            let do_sweeps = sweep_scenarios.contains(&scenario) && sweep_seeds.contains(&seed);
            let mut sweep_dirs = Vec::new();
            if do_sweeps {
                for s in &cfg.sweeps {
                    for &v in &s.values {
                        let d = dir.join(sweep_dir_name(s, v));
                        train_new(&s.knob.apply(&rc, v), &old_dir, s.method, &d, &opts)?;
                        sweep_dirs.push((s.clone(), v, d));
                    }
                }
            }
            // Evaluation, cached per run (recomputed only when a model changed).
            let all_dirs: Vec<PathBuf> = dirs
                .iter()
                .cloned()
                .chain(sweep_dirs.iter().map(|(_, _, d)| d.clone()))
                .collect();
            let (report, points): (EvalReport, Vec<FrontierPoint>) =
                cached(&dir.join("eval.json"), &model_ids(&all_dirs)?, || {
                    let test = crate::data::open_test(&rc.data)?;
                    let models = dirs
                        .iter()
                        .map(|d| Embedder::load(d, opts.device))
                        .collect::<Result<Vec<_>, _>>()?;
                    let report =
                        evaluate_models_with(&models, &test, rc.eval_batch, MatrixCells::Table)?;
                    let old_feats = models[0].embed_dataset(&test, rc.eval_batch);
                    let oo = report.matrix.at(0, 0).map;
                    let mut points = Vec::new();
                    for (s, v, d) in &sweep_dirs {
                        let m = Embedder::load(d, opts.device)?;
                        let f = m.embed_dataset(&test, rc.eval_batch);
                        points.push(FrontierPoint {
                            scenario: scenario.to_string(),
                            seed,
                            method: s.method.to_string(),
                            knob: Some(s.knob),
                            value: Some(*v),
                            self_map: leave_one_out(&f, &f, &test.labels)?.map,
                            cross_map: leave_one_out(&f, &old_feats, &test.labels)?.map,
                            old_old_map: oo,
                        });
                    }
                    Ok((report, points))
                })?;
            if seed == cfg.seeds[0] {
                plot_matrix(&report.matrix, &dir.join("compat_matrix.svg"))?;
                for m in [Method::Ndpp, Method::Odpp] {
                    if let Some((o, p)) = saved_prototypes(&dir.join(m.model_name())) {
                        plot_prototypes_pca(
                            &o,
                            &p,
                            &format!("{m}, {scenario}, seed {seed}"),
                            &dir.join(format!("prototypes-{m}.svg")),
                        )?;
                    }
                }
            }
            // the main runs give each method its default point
            if do_sweeps {
                frontier.extend(report.rows.iter().map(|r| FrontierPoint {
                    scenario: scenario.to_string(),
                    seed,
                    method: r.method.clone(),
                    knob: None,
                    value: None,
                    self_map: r.self_map,
                    cross_map: r.cross_map,
                    old_old_map: r.old_old_map,
                }));
                frontier.extend(points);
            }
            if let Some(bf) = &cfg.backfill {
                deploy.extend(backfill::deploy_run(
                    &rc,
                    report.matrix.at(0, 0).map,
                    bf,
                    scenario,
                    seed,
                    &dir,
                    &opts,
                )?);
            }
            if !cfg.benchmark.is_empty() {
                bench_runs.extend(benchmarks::run_benchmarks(
                    &cfg.benchmark,
                    &dirs,
                    &dir,
                    &scenario.to_string(),
                    seed,
                    opts.device,
                )?);
            }
            table_in.push((scenario, seed, report.rows.clone()));
            runs.insert(run_key(scenario, seed), report);
        }
    }
    let table = aggregate(&table_in);
    write_atomic(
        &out.join("results.md"),
        aggregate_markdown(&table).as_bytes(),
    )?;
    write_atomic(&out.join("results.csv"), aggregate_csv(&table).as_bytes())?;
    // Paired by seed: every method against bct and against independent, where they ran.
    let mut pairs = Vec::new();
    let mut pmd = String::from(
        "Paired by seed (each scenario and seed shares split, data and old model); mean \
         difference and 95% Student-t interval over seeds.\n\n",
    );
    for reference in ["bct", "independent"] {
        let rows = paired::paired(&table_in, reference);
        if !rows.is_empty() {
            pmd.push_str(&paired::paired_markdown(&rows));
            pmd.push('\n');
            pairs.extend(rows);
        }
    }
    write_atomic(&out.join("paired.md"), pmd.as_bytes())?;
    crate::files::write_json(&out.join("paired.json"), &pairs)?;
    frontier::sort_points(&mut frontier);
    let (frontier_summary, best_compatible) = frontier::write_frontier(&frontier, &cfg.base, out)?;
    if !deploy.is_empty() {
        backfill::write_backfill_reports(&deploy, out)?;
    }
    if !bench_runs.is_empty() {
        write_atomic(
            &out.join("benchmarks.md"),
            benchmarks::benchmarks_markdown(&bench_runs).as_bytes(),
        )?;
    }
    let mut chains = Vec::new();
    if let Some(seq) = &cfg.sequential {
        chains = sequential::run_sequential(cfg, seq, out, &opts)?;
        let summary = sequential::summarise(&chains, &seq.fractions);
        write_atomic(
            &out.join("sequential.md"),
            sequential::sequential_markdown(&summary, seq.reference).as_bytes(),
        )?;
        write_atomic(
            &out.join("sequential.csv"),
            sequential::sequential_csv(&chains).as_bytes(),
        )?;
    }
    let diag = diagnostics(cfg, out);
    write_atomic(
        &out.join("diagnostics.md"),
        diagnostics_markdown(&diag).as_bytes(),
    )?;
    let report = ExperimentReport {
        runs,
        table,
        frontier,
        frontier_summary,
        best_compatible,
        diagnostics: diag,
        sequential: chains,
        backfill: deploy,
        benchmarks: bench_runs,
    };
    crate::files::write_json(&out.join("report.json"), &report)?;
    Ok(report)
}

/// The directory of one run's model, for callers that want to read it.
pub fn model_dir(out: &Path, scenario: Scenario, seed: u64, method: Method) -> PathBuf {
    run_dir(out, scenario, seed).join(method.model_name())
}
