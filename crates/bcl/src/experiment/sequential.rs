//! Sequential upgrades (METHOD.md section 6): a chain of models on growing shares of each
//! class's images (e.g. 30% → 60% → 100%), each trained against the previous model or the
//! first; every chain is evaluated as a full compatibility matrix, with the share of ordered
//! pairs (later model as query, earlier model as gallery) that meet the criterion. An adapter
//! chain (`adapters`) is the independent chain made compatible after training: each model gets
//! an adapter into the space of the model it follows, and a later model reaches an earlier
//! one's space by composing them along the chain (m2 → m1 → m0).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{mean_std, ExperimentConfig};
use tch::Tensor;

use crate::adapt::{Adapter, Companion, FitConfig, ModelRef, Models};
use crate::data::Scenario;
use crate::eval::models::in_space_of;
use crate::eval::{is_compatible, CompatMatrix};
use crate::files::write_atomic;
use crate::layout::{ExperimentDir, ExperimentFile, ModelDir, SequentialDir};
use crate::loss::Method;
use crate::model::{Embedder, ModelCard};
use crate::report::plot_matrix;
use crate::run::{train_old, train_successor, RunError, StepOptions};
use crate::table::{Cell, Column, Table};

/// Which earlier model each successor of a chain is trained against.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ChainReference {
    /// The model just before it (each step compatible with the last).
    Previous,
    /// The first model (every step aligned with the first gallery directly).
    First,
}

/// The sequential-upgrade part of an experiment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SequentialConfig {
    /// Share of each class's training images for each model, strictly increasing, in (0, 1];
    /// the first model is an old model (classification only) on the first share.
    pub fractions: Vec<f64>,
    /// Methods to chain; every successor of a chain uses the same method.
    pub methods: Vec<Method>,
    /// Which model a successor is trained against.
    pub reference: ChainReference,
    /// Seeds (default: the experiment's seeds).
    pub seeds: Option<Vec<u64>>,
    /// Adapter kinds (new → old) that make the independent chain compatible after training,
    /// one chain each (default: none; needs `independent` among `methods`).
    pub adapters: Vec<String>,
    /// Each adapter's support set: the first N images of each class of
    /// `adapter_support_part` (embedded by both models of its link).
    pub adapter_support_per_class: usize,
    /// The part the adapters' support sets come from: `train` (default) or `validation`
    /// (held out of every link's training data; needs `[data] validation_per_class`).
    pub adapter_support_part: crate::data::Part,
}

impl Default for SequentialConfig {
    fn default() -> Self {
        Self {
            fractions: vec![0.3, 0.6, 1.0],
            methods: vec![Method::BCT, Method::NDPP, Method::ODPP],
            reference: ChainReference::Previous,
            seeds: None,
            adapters: Vec::new(),
            adapter_support_per_class: 100,
            adapter_support_part: crate::data::Part::Train,
        }
    }
}

impl SequentialConfig {
    /// Checks the fractions, methods and the adapters' support part (which must exist in
    /// `data`); the reason is the user's to fix.
    pub fn validate(&self, data: &crate::data::DataConfig) -> Result<(), String> {
        if self.fractions.len() < 2 {
            return Err(
                "sequential.fractions needs at least two shares (a chain of two models)".into(),
            );
        }
        if self.fractions.iter().any(|&r| !(r > 0.0 && r <= 1.0)) {
            return Err(format!(
                "sequential.fractions must lie in (0, 1], got {:?}",
                self.fractions
            ));
        }
        if self.fractions[0] >= 1.0 {
            return Err("sequential.fractions: the first model cannot see all the data".into());
        }
        if self.fractions.windows(2).any(|w| w[1] <= w[0]) {
            return Err(format!(
                "sequential.fractions must increase strictly, got {:?}",
                self.fractions
            ));
        }
        if self.methods.is_empty() {
            return Err("sequential.methods must name at least one method".into());
        }
        for k in &self.adapters {
            let kind = crate::adapt::kind(k).map_err(|e| format!("sequential.adapters: {e}"))?;
            if kind.direction() != crate::adapt::Direction::NewToOld {
                return Err(format!(
                    "sequential.adapters: {k} maps an old gallery's vectors, not a new model's \
                     queries; a chain composes query maps (procrustes, slerp, affine)"
                ));
            }
        }
        if !self.adapters.is_empty() && !self.methods.contains(&Method::INDEPENDENT) {
            return Err(
                "sequential.adapters make the independent chain compatible: add independent \
                 to sequential.methods"
                    .into(),
            );
        }
        if self.adapter_support_per_class == 0 {
            return Err("sequential.adapter_support_per_class must be at least 1".into());
        }
        super::adapters::support_part_ok(self.adapter_support_part, data)
            .map_err(|e| format!("sequential.adapter_support_part: {e}"))?;
        Ok(())
    }
}

/// Ordered pairs `(i, j)`, `i > j`, of a chain's matrix with `M(i→j) > M(j→j)`: (met, total).
pub fn pairs_meeting_criterion(m: &CompatMatrix) -> (usize, usize) {
    let n = m.models.len();
    let mut met = 0;
    let mut total = 0;
    for i in 0..n {
        for j in 0..i {
            total += 1;
            let met_ij = match &m.cells[i][j] {
                Some(c) => is_compatible(c.map, m.at(j, j).map),
                None => false,
            };
            if met_ij {
                met += 1;
            }
        }
    }
    (met, total)
}

/// One evaluated chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChainRun {
    /// Method.
    pub method: Method,
    /// The adapter kind composed along the chain (`None`: the models as trained).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// Seed.
    pub seed: u64,
    /// The chain's compatibility matrix (model i trained on `fractions[i]`).
    pub matrix: CompatMatrix,
    /// Ordered pairs meeting the criterion.
    pub pairs_met: usize,
    /// Ordered pairs in all.
    pub pairs_total: usize,
}

/// A chain's figures over seeds: mean ± std per matrix cell and the pooled pair share.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChainSummary {
    /// Method.
    pub method: Method,
    /// The adapter kind composed along the chain, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// Seeds aggregated.
    pub seeds: usize,
    /// The shares of the chain's models.
    pub fractions: Vec<f64>,
    /// (mean, std) of mAP per cell `[query][gallery]`; `None` where no map reaches the
    /// gallery model's space (an older model's queries against a model of another dimension).
    pub cells: Vec<Vec<Option<(f64, f64)>>>,
    /// Pairs meeting the criterion, over all seeds.
    pub pairs_met: usize,
    /// Pairs in all, over all seeds.
    pub pairs_total: usize,
}

fn model_names(fractions: &[f64]) -> Vec<String> {
    fractions
        .iter()
        .enumerate()
        .map(|(i, r)| format!("m{i} ({:.0}%)", r * 100.0))
        .collect()
}

/// Trains (or reuses) every chain of `seq` under `out/sequential` and evaluates it.
pub fn run_sequential(
    cfg: &ExperimentConfig,
    seq: &SequentialConfig,
    out: &Path,
    opts: &StepOptions,
) -> Result<Vec<ChainRun>, RunError> {
    seq.validate(&cfg.base.data).map_err(RunError::Invalid)?;
    let seeds = seq.seeds.clone().unwrap_or_else(|| cfg.seeds.clone());
    let mut runs = Vec::new();
    for &seed in &seeds {
        let mut rc = cfg.run_config(Scenario::ExtendedData, seed);
        rc.split.fraction = seq.fractions[0];
        // The first model is the main table's extended-data old model when that is the same run.
        let main_old = super::run_dir(out, Scenario::ExtendedData, seed).old();
        let same_as_main = cfg.scenarios.contains(&Scenario::ExtendedData)
            && rc == cfg.run_config(Scenario::ExtendedData, seed);
        let seq_dir = ExperimentDir::new(out).sequential(seed);
        let first: PathBuf = if same_as_main {
            main_old.path().to_path_buf()
        } else {
            seq_dir.first().path().to_path_buf()
        };
        tracing::info!(seed, "sequential chain: first model");
        train_old(&rc, &first, opts)?;
        for &method in &seq.methods {
            let mut dirs = vec![first.clone()];
            for (i, &r) in seq.fractions.iter().enumerate().skip(1) {
                // an independent model ignores its reference (no compatibility loss), and an
                // independent model is no reference to train against: its links all start
                // from the first model
                let reference = match seq.reference {
                    _ if method == Method::INDEPENDENT => first.clone(),
                    ChainReference::Previous => dirs[i - 1].clone(),
                    ChainReference::First => first.clone(),
                };
                let mut step = rc.clone();
                // a seed of its own per link: no two models of a chain share an initialisation
                step.new.seed = rc.new.seed + 100 * i as u64;
                let d = seq_dir.step(method.as_str(), i).path().to_path_buf();
                tracing::info!(seed, %method, link = i, fraction = r, "sequential chain");
                train_successor(&step, &reference, method, Some(r), &d, opts)?;
                dirs.push(d);
            }
            runs.push(evaluate_chain(
                &rc, seq, method, None, seed, &dirs, &seq_dir, opts,
            )?);
            if method == Method::INDEPENDENT {
                for kind in &seq.adapters {
                    fit_chain_adapters(&rc, seq, kind, seed, &dirs, &seq_dir, opts)?;
                    runs.push(evaluate_chain(
                        &rc,
                        seq,
                        method,
                        Some(kind),
                        seed,
                        &dirs,
                        &seq_dir,
                        opts,
                    )?);
                }
            }
        }
    }
    Ok(runs)
}

/// The index of the model link `i` of a chain follows.
fn reference_of(seq: &SequentialConfig, i: usize) -> usize {
    match seq.reference {
        ChainReference::Previous => i - 1,
        ChainReference::First => 0,
    }
}

/// Fits (or keeps, when fitted for the same two models on the same support set) one adapter
/// per link of the independent chain `dirs`: from model i into the space of the model it
/// follows, on the first `adapter_support_per_class` images of each class of
/// `adapter_support_part`, seed 3000 + seed + i.
fn fit_chain_adapters(
    rc: &crate::run::RunConfig,
    seq: &SequentialConfig,
    kind: &str,
    seed: u64,
    dirs: &[PathBuf],
    seq_dir: &SequentialDir,
    opts: &StepOptions,
) -> Result<(), RunError> {
    let method = Method::INDEPENDENT.as_str();
    let mut support: Option<crate::data::Dataset> = None;
    for i in 1..dirs.len() {
        let r = reference_of(seq, i);
        let path = seq_dir.adapter(method, kind, i);
        let (new, old) = (
            Embedder::load(&dirs[i], opts.device)?,
            Embedder::load(&dirs[r], opts.device)?,
        );
        let data = match &support {
            Some(t) => t,
            None => support.insert(crate::data::open_part(&rc.data, seq.adapter_support_part)?),
        };
        let pairs = super::adapters::support_set(
            &old,
            &new,
            data,
            seq.adapter_support_part,
            seq.adapter_support_per_class,
            rc,
        )?;
        // an adapter already fitted for these two models on this very support set is kept
        if let Ok(a) = Adapter::load(&path) {
            let same_support = a.card.support.fingerprint == pairs.info().fingerprint;
            if same_support && a.check_models(&new.card.id, &old.card.id).is_ok() {
                continue;
            }
        }
        let fit = FitConfig {
            seed: 3000 + seed + i as u64,
            ..FitConfig::default()
        };
        let models = Models {
            old: ModelRef::of(&old),
            new: ModelRef::of(&new),
        };
        tracing::info!(seed, kind, link = i, "sequential chain: fitting an adapter");
        Adapter::fit(kind, &pairs, &fit, &models, opts.device)?.save(&path)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn evaluate_chain(
    rc: &crate::run::RunConfig,
    seq: &SequentialConfig,
    method: Method,
    adapter: Option<&str>,
    seed: u64,
    dirs: &[PathBuf],
    seq_dir: &SequentialDir,
    opts: &StepOptions,
) -> Result<ChainRun, RunError> {
    let mut ids: Vec<String> = dirs
        .iter()
        .map(|d| ModelCard::read(&ModelDir::new(d).card()).map(|c| c.id))
        .collect::<Result<_, _>>()?;
    // the chain's adapters, link by link (index 0: none), and their ids in the cache's key
    let mut adapters: Vec<Option<Adapter>> = vec![None];
    if let Some(kind) = adapter {
        for i in 1..dirs.len() {
            let a = Adapter::load(&seq_dir.adapter(method.as_str(), kind, i))?;
            ids.push(a.card.id.clone());
            adapters.push(Some(a));
        }
    }
    let name = chain_name(method, adapter);
    let cache = seq_dir.eval_cache(&name);
    let cached: Option<(Vec<String>, ChainRun)> = std::fs::read_to_string(&cache)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .filter(|c: &(Vec<String>, ChainRun)| c.0 == ids);
    let run = match cached {
        Some((_, r)) => r,
        None => {
            let test = crate::data::open_test(&rc.data)?;
            let models = dirs
                .iter()
                .map(|d| Embedder::load(d, opts.device))
                .collect::<Result<Vec<_>, _>>()?;
            let feats: Vec<_> = models
                .iter()
                .map(|m| m.embed_dataset(&test, rc.eval_batch))
                .collect();
            // a later model reaches an earlier one's space along the chain (through the
            // projection heads where dimensions change, or composing the adapters of an
            // adapter chain); cells no map reaches stay empty
            let matrix = match adapter {
                None => CompatMatrix::compute_with(
                    &model_names(&seq.fractions),
                    &feats,
                    &test.labels,
                    |q, g| in_space_of(&models, &feats, q, g),
                )?,
                Some(_) => {
                    let mut mapped = BTreeMap::new();
                    for q in 0..feats.len() {
                        for g in 0..=q {
                            if let Some(x) = along_adapters(seq, &adapters, &feats, q, g)? {
                                mapped.insert((q, g), x);
                            }
                        }
                    }
                    CompatMatrix::compute_with(
                        &model_names(&seq.fractions),
                        &feats,
                        &test.labels,
                        |q, g| mapped.get(&(q, g)).map(Tensor::shallow_clone),
                    )?
                }
            };
            let (met, total) = pairs_meeting_criterion(&matrix);
            let run = ChainRun {
                method,
                adapter: adapter.map(String::from),
                seed,
                matrix,
                pairs_met: met,
                pairs_total: total,
            };
            write_atomic(
                &cache,
                serde_json::to_string(&(&ids, &run))
                    .expect("serialises")
                    .as_bytes(),
            )?;
            run
        }
    };
    plot_matrix(&run.matrix, &seq_dir.matrix_plot(&name))?;
    Ok(run)
}

/// A chain's name in tables and file names: the method, then `+kind` for an adapter chain.
fn chain_name(method: Method, adapter: Option<&str>) -> String {
    match adapter {
        None => method.to_string(),
        Some(k) => format!("{method}+{k}"),
    }
}

/// Model `q`'s features in model `g`'s space through the adapters of the links between them
/// (each adapter into the model its link follows; SLERP reads that model's embedding of the
/// same items); `None` where the links do not lead from q to g (a chain against its first
/// model reaches only the first) or g is q's own space (its own features).
fn along_adapters(
    seq: &SequentialConfig,
    adapters: &[Option<Adapter>],
    feats: &[Tensor],
    q: usize,
    g: usize,
) -> Result<Option<Tensor>, RunError> {
    let mut at = q;
    let mut x = feats[q].shallow_clone();
    while at > g {
        let Some(a) = &adapters[at] else {
            return Ok(None);
        };
        let to = reference_of(seq, at);
        if to < g {
            return Ok(None);
        }
        let companion = (a.spec().companion() == Companion::OldQuery).then(|| &feats[to]);
        x = a.apply(&x, companion)?;
        at = to;
    }
    Ok((at == g).then_some(x))
}

/// Mean ± std of each cell and the pooled pair share, per method.
pub fn summarise(runs: &[ChainRun], fractions: &[f64]) -> Vec<ChainSummary> {
    let mut by: BTreeMap<(Method, Option<String>), Vec<&ChainRun>> = BTreeMap::new();
    let mut order = Vec::new();
    for r in runs {
        let key = (r.method, r.adapter.clone());
        if !by.contains_key(&key) {
            order.push(key.clone());
        }
        by.entry(key).or_default().push(r);
    }
    order
        .into_iter()
        .map(|key| {
            let rs = &by[&key];
            let n = fractions.len();
            let cells = (0..n)
                .map(|q| {
                    (0..n)
                        .map(|g| {
                            let v: Option<Vec<f64>> = rs
                                .iter()
                                .map(|r| r.matrix.cells[q][g].as_ref().map(|c| c.map))
                                .collect();
                            v.map(|v| mean_std(&v))
                        })
                        .collect()
                })
                .collect();
            ChainSummary {
                method: key.0,
                adapter: key.1,
                seeds: rs.len(),
                fractions: fractions.to_vec(),
                cells,
                pairs_met: rs.iter().map(|r| r.pairs_met).sum(),
                pairs_total: rs.iter().map(|r| r.pairs_total).sum(),
            }
        })
        .collect()
}

/// Runs the chains and writes `sequential.md` (per method: the pair share and the mean
/// matrix) and `sequential.csv` (every cell).
pub fn run_and_write(
    cfg: &ExperimentConfig,
    seq: &SequentialConfig,
    out: &Path,
    opts: &StepOptions,
) -> Result<Vec<ChainRun>, RunError> {
    let chains = run_sequential(cfg, seq, out, opts)?;
    let summary = summarise(&chains, &seq.fractions);
    let md = sequential_markdown(&summary, seq.reference);
    let exp = ExperimentDir::new(out);
    write_atomic(&exp.file(ExperimentFile::SequentialMd), md.as_bytes())?;
    write_atomic(
        &exp.file(ExperimentFile::SequentialCsv),
        sequential_csv(&chains).as_bytes(),
    )?;
    Ok(chains)
}

/// The summaries as Markdown: one table per method (the mean matrix) and a pair-share line.
pub fn sequential_markdown(rows: &[ChainSummary], reference: ChainReference) -> String {
    let mut s = format!(
        "Sequential upgrades, each model trained against the {} one; mAP mean ± std over seeds; rows query model, columns gallery model. A pair (i > j) meets the criterion when M(i→j) > M(j→j).\n\n",
        match reference {
            ChainReference::Previous => "previous",
            ChainReference::First => "first",
        }
    );
    let mut t = Table::new([
        Column::text("method"),
        Column::number("seeds"),
        Column::number("pairs meeting the criterion"),
        Column::number("share"),
    ]);
    for r in rows {
        t.push(vec![
            chain_name(r.method, r.adapter.as_deref()),
            r.seeds.to_string(),
            format!("{}/{}", r.pairs_met, r.pairs_total),
            format!("{:.2}", r.pairs_met as f64 / r.pairs_total.max(1) as f64),
        ]);
    }
    s.push_str(&t.markdown());
    for r in rows {
        let names = model_names(&r.fractions);
        let mut t = Table::new(
            std::iter::once(Column::text("query \\ gallery"))
                .chain(names.iter().map(Column::number)),
        );
        for (q, row) in r.cells.iter().enumerate() {
            let mut cells = vec![Cell::Text(names[q].clone())];
            // only pairs with the query model no older than the gallery model matter
            cells.extend(row.iter().enumerate().map(|(g, c)| match c {
                Some((m, sd)) if g <= q => Cell::mean_std(*m, *sd, 4),
                _ => Cell::from("–"),
            }));
            t.push(cells);
        }
        s.push_str(&format!(
            "\n**{}**\n\n{}",
            chain_name(r.method, r.adapter.as_deref()),
            t.markdown()
        ));
    }
    s
}

/// CSV of every cell of every chain.
pub fn sequential_csv(runs: &[ChainRun]) -> String {
    let mut t = Table::new(["method", "seed", "query", "gallery", "map", "r1"].map(Column::text));
    for r in runs {
        for (q, row) in r.matrix.cells.iter().enumerate() {
            for (g, c) in row.iter().enumerate() {
                let Some(c) = c else { continue };
                t.push(vec![
                    chain_name(r.method, r.adapter.as_deref()),
                    r.seed.to_string(),
                    r.matrix.models[q].clone(),
                    r.matrix.models[g].clone(),
                    format!("{:.6}", c.map),
                    format!("{:.6}", c.recall_at.get(&1).copied().unwrap_or(f64::NAN)),
                ]);
            }
        }
    }
    t.csv()
}
