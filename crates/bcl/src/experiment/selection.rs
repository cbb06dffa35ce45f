//! The selection-then-report protocol (METHOD.md section 7, "Comparing methods"): each method's
//! setting is chosen on validation figures over selection seeds, from a grid extended while its
//! choice sits on an edge (the reference's grid, BCT's λ, downwards until it fails the
//! criterion); the chosen setting is retrained on report seeds the choice never saw, and their
//! test figures are compared with the reference's chosen setting, paired by seed, with Holm's
//! adjustment over the methods compared. Two criteria: "best compatible" (the highest
//! validation self-test among settings compatible on every selection seed) and "matched
//! cross-test" (the highest validation self-test among settings whose cross-test is at least
//! the reference's default minus a margin), so that a method cannot win by spending
//! compatibility. No figure here is chosen on test data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::paired::{holm, holm_intervals, interval, t_test_p, Interval};
use super::sweeps::Sweep;
use super::{cached, mean_std, model_ids, run_dir, ExperimentConfig};
use crate::data::{Part, Scenario};
use crate::eval::leave_one_out;
use crate::layout::{ExperimentDir, ExperimentFile};
use crate::loss::Method;
use crate::model::Embedder;
use crate::report::{plot_frontier, plot_xy, Bar, FrontierSeries, Reference};
use crate::run::{train_new, train_old, RunConfig, RunError, StepOptions};
use crate::table::{Cell, Column, Table};

/// `[selection]` of an experiment file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SelectionConfig {
    /// Seeds the settings are chosen on (validation figures only); never reported.
    pub seeds: Vec<u64>,
    /// Seeds the chosen settings are retrained and reported on (default: the experiment's
    /// `seeds`); disjoint from `seeds`.
    pub report_seeds: Option<Vec<u64>>,
    /// The method every other is compared with, at its own chosen setting.
    pub reference: Method,
    /// One grid per method: a knob and its values, the same number for every method (the base
    /// configuration's value is added to each).
    pub grids: Vec<Sweep>,
    /// How many times a grid whose chosen setting lies on its edge is extended past it.
    pub max_extensions: usize,
    /// Extend the reference's grid below its lowest value while that value still passes the
    /// criterion (BCT's λ swept down until it fails), within `max_extensions`.
    pub reference_until_incompatible: bool,
    /// The matched criterion's margin: validation cross-test at least the reference's default
    /// setting's minus this.
    pub margin: f64,
}

impl Default for SelectionConfig {
    fn default() -> Self {
        Self {
            seeds: vec![101, 102, 103],
            report_seeds: None,
            reference: Method::BCT,
            grids: Vec::new(),
            max_extensions: 2,
            reference_until_incompatible: true,
            margin: 0.01,
        }
    }
}

impl SelectionConfig {
    /// The report seeds: `report_seeds`, else the experiment's seeds.
    pub fn report_seeds<'a>(&'a self, experiment_seeds: &'a [u64]) -> &'a [u64] {
        self.report_seeds.as_deref().unwrap_or(experiment_seeds)
    }

    /// Checks the protocol can run: a validation part, seeds that are disjoint, one grid per
    /// method including the reference's, grids of equal size, every value valid.
    pub fn validate(&self, base: &RunConfig, experiment_seeds: &[u64]) -> Result<(), String> {
        if base.data.validation_per_class.is_none() {
            return Err("[selection] chooses on validation data: set [base.data] \
                        validation_per_class"
                .into());
        }
        let report = self.report_seeds(experiment_seeds);
        if self.seeds.is_empty() || report.len() < 2 {
            return Err(
                "[selection] needs at least one selection seed and two report seeds (the \
                 protocol asks for five or more)"
                    .into(),
            );
        }
        if let Some(s) = self.seeds.iter().find(|s| report.contains(s)) {
            return Err(format!(
                "[selection] seed {s} is both a selection and a report seed: settings are \
                 reported on seeds their choice never saw"
            ));
        }
        let mut seen = Vec::new();
        for g in &self.grids {
            if seen.contains(&g.method) {
                return Err(format!("[selection] has two grids for {}", g.method));
            }
            seen.push(g.method);
            g.validate(base)?;
        }
        if !seen.contains(&self.reference) {
            return Err(format!(
                "[selection] needs a grid for its reference {}",
                self.reference
            ));
        }
        if let Some(g) = self
            .grids
            .iter()
            .find(|g| g.values.len() != self.grids[0].values.len())
        {
            return Err(format!(
                "[selection] grids must have the same number of settings ({} has {}, {} has \
                 {}): a larger grid is a larger chance of a lucky setting",
                self.grids[0].method,
                self.grids[0].values.len(),
                g.method,
                g.values.len()
            ));
        }
        if !(self.margin >= 0.0 && self.margin.is_finite()) {
            return Err(format!(
                "[selection] margin must be >= 0, got {}",
                self.margin
            ));
        }
        Ok(())
    }
}

/// The figures of one model on one part of one seed's data (mAP, leave-one-out).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Figures {
    /// Self-test: the model's queries in its own gallery.
    pub self_map: f64,
    /// Cross-test: its queries in the old model's gallery.
    pub cross_map: f64,
    /// The old model in its own gallery.
    pub old_old_map: f64,
}

impl Figures {
    /// The compatibility criterion M(new→old) > M(old→old).
    pub fn compatible(&self) -> bool {
        self.cross_map > self.old_old_map
    }
}

/// One setting of a grid: its value and its figures per selection seed, on validation data
/// (what the choice reads) and on test data (shown as the oracle's choice, never chosen on).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Setting {
    /// The knob's value.
    pub value: f64,
    /// Validation figures by selection seed.
    pub validation: BTreeMap<u64, Figures>,
    /// Test figures by selection seed (for the oracle column only).
    pub test: BTreeMap<u64, Figures>,
}

impl Setting {
    /// Mean validation self-test over the selection seeds.
    pub fn mean_self(&self) -> f64 {
        self.validation_mean(|f| f.self_map)
    }

    /// Mean validation cross-test over the selection seeds.
    pub fn mean_cross(&self) -> f64 {
        self.validation_mean(|f| f.cross_map)
    }

    fn validation_mean(&self, figure: fn(&Figures) -> f64) -> f64 {
        mean_std(&self.validation.values().map(figure).collect::<Vec<_>>()).0
    }

    /// Whether it meets the criterion on every selection seed.
    pub fn compatible(&self) -> bool {
        !self.validation.is_empty() && self.validation.values().all(Figures::compatible)
    }
}

/// The best-compatible choice: the highest mean validation self-test among the settings
/// compatible on every selection seed (ties: the first). Reads validation figures only.
pub fn choose_best_compatible(settings: &[Setting]) -> Option<usize> {
    best_by_self(settings, |s| s.compatible())
}

/// The oracle's choice, for contrast only: the best-compatible rule applied to the selection
/// seeds' test figures (what choosing on test data would have picked).
pub fn oracle_best_compatible(settings: &[Setting]) -> Option<usize> {
    let on_test: Vec<Setting> = settings
        .iter()
        .map(|s| Setting {
            value: s.value,
            validation: s.test.clone(),
            test: BTreeMap::new(),
        })
        .collect();
    choose_best_compatible(&on_test)
}

/// The matched choice: the highest mean validation self-test among the settings whose mean
/// validation cross-test is at least `floor`.
pub fn choose_matched(settings: &[Setting], floor: f64) -> Option<usize> {
    best_by_self(settings, |s| s.mean_cross() >= floor)
}

fn best_by_self(settings: &[Setting], admit: impl Fn(&Setting) -> bool) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, s) in settings.iter().enumerate() {
        if admit(s) && best.is_none_or(|b| s.mean_self() > settings[b].mean_self()) {
            best = Some(i);
        }
    }
    best
}

/// The value one step past an edge of the sorted grid `values`: geometric when every value is
/// positive (the ratio of the two values at that edge, or 3 with one value), arithmetic
/// otherwise.
pub fn step_past(values: &[f64], upward: bool) -> f64 {
    let n = values.len();
    let (edge, inner) = match (upward, n) {
        (true, 1) | (false, 1) => (values[0], None),
        (true, _) => (values[n - 1], Some(values[n - 2])),
        (false, _) => (values[0], Some(values[1])),
    };
    let positive = values.iter().all(|&v| v > 0.0);
    match (inner, positive) {
        (Some(i), true) => edge * (edge / i),
        (None, true) => {
            if upward {
                edge * 3.0
            } else {
                edge / 3.0
            }
        }
        (Some(i), false) => edge + (edge - i),
        (None, false) => {
            if upward {
                edge + 1.0
            } else {
                edge - 1.0
            }
        }
    }
}

/// A method's grid on the selection seeds, what was chosen and how the grid grew.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GridOutcome {
    /// Scenario.
    pub scenario: Scenario,
    /// The method.
    pub method: Method,
    /// The knob.
    pub knob: String,
    /// The settings, ascending by value (the configured ones, the base value, extensions).
    pub settings: Vec<Setting>,
    /// The best-compatible choice (None: no setting compatible on every selection seed).
    pub chosen: Option<f64>,
    /// The matched-cross-test choice.
    pub matched: Option<f64>,
    /// What choosing on the selection seeds' test figures would have picked (an oracle figure,
    /// shown for contrast, never used).
    pub oracle: Option<f64>,
    /// How the grid was extended, or why an edge was left as it is.
    pub notes: Vec<String>,
}

/// One chosen setting of one method retrained on the report seeds, compared with the
/// reference's chosen setting.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReportRow {
    /// Scenario.
    pub scenario: Scenario,
    /// The criterion that chose it: "best compatible" or "matched cross-test".
    pub criterion: String,
    /// The method.
    pub method: Method,
    /// Its knob and the chosen value ("no setting qualified": None).
    pub setting: Option<(String, f64)>,
    /// Test figures by report seed.
    pub test: BTreeMap<u64, Figures>,
    /// Mean and 95% interval of test self-test over the report seeds.
    pub self_map: Interval,
    /// Mean and 95% interval of test cross-test.
    pub cross_map: Interval,
    /// Report seeds meeting the criterion on test.
    pub compatible: usize,
    /// Self-test minus the reference's, per report seed (empty for the reference).
    pub self_diffs: Vec<f64>,
    /// Cross-test minus the reference's, per report seed.
    pub cross_diffs: Vec<f64>,
    /// Paired t-test p-values (self, cross) and their Holm adjustment over the methods.
    pub p: (f64, f64),
    /// Holm-adjusted p-values (self, cross).
    pub p_holm: (f64, f64),
    /// The self-test difference with its Holm-adjusted interval.
    pub self_diff: Interval,
    /// The cross-test difference with its Holm-adjusted interval.
    pub cross_diff: Interval,
}

impl ReportRow {
    /// A row of test figures with their intervals and compatible count; the comparison with
    /// the reference is left empty for [`compare_with_reference`].
    pub fn new(
        scenario: Scenario,
        criterion: &str,
        method: Method,
        setting: Option<(String, f64)>,
        test: BTreeMap<u64, Figures>,
    ) -> Self {
        let col = |f: fn(&Figures) -> f64| test.values().map(f).collect::<Vec<f64>>();
        Self {
            scenario,
            criterion: criterion.to_string(),
            method,
            setting,
            self_map: interval(&col(|f| f.self_map)),
            cross_map: interval(&col(|f| f.cross_map)),
            compatible: test.values().filter(|f| f.compatible()).count(),
            test,
            self_diffs: Vec::new(),
            cross_diffs: Vec::new(),
            p: (f64::NAN, f64::NAN),
            p_holm: (f64::NAN, f64::NAN),
            self_diff: interval(&[]),
            cross_diff: interval(&[]),
        }
    }
}

/// Everything the protocol produced.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SelectionReport {
    /// Each method's grid and choice, per scenario.
    pub grids: Vec<GridOutcome>,
    /// The chosen settings on the report seeds, per scenario and criterion.
    pub report: Vec<ReportRow>,
}

/// The directory of a model the protocol trains (`select-…` on selection seeds, `report-…` on
/// report seeds, beside the main runs' models).
fn model_name(stage: &str, method: Method, knob: &str, value: f64) -> String {
    format!("{stage}-{method}-{knob}-{value}")
}

/// Trains (or reuses) the model of `grid`'s method at `value` for `(scenario, seed)`, and its
/// old model; returns the model's and the old model's directories.
fn trained(
    cfg: &ExperimentConfig,
    grid: &Sweep,
    value: f64,
    stage: &str,
    (scenario, seed): (Scenario, u64),
    out: &Path,
    opts: &StepOptions,
) -> Result<(PathBuf, PathBuf), RunError> {
    let rc = cfg.run_config(scenario, seed);
    let run = run_dir(out, scenario, seed);
    let old = run.old().path().to_path_buf();
    train_old(&rc, &old, opts)?;
    let dir = run
        .model(&model_name(stage, grid.method, grid.knob.as_str(), value))
        .path()
        .to_path_buf();
    train_new(&grid.config(&rc, value), &old, grid.method, &dir, opts)?;
    Ok((dir, old))
}

/// A model's figures on `part` of its run's data, cached beside it (recomputed only when it or
/// the old model changed).
fn figures(
    rc: &RunConfig,
    model: &Path,
    old: &Path,
    part: Part,
    opts: &StepOptions,
) -> Result<Figures, RunError> {
    let key = (
        model_ids(&[old.to_path_buf(), model.to_path_buf()])?,
        part.to_string(),
    );
    let cache = crate::layout::ModelDir::new(model).figures_cache(&part.to_string());
    cached(&cache, &key, || {
        let data = crate::data::open_part(&rc.data, part)?;
        let old = Embedder::load(old, opts.device)?;
        let o = old.embed_dataset(&data, rc.eval_batch);
        let m = Embedder::load(model, opts.device)?;
        let f = m.embed_dataset(&data, rc.eval_batch);
        let q = m.queries_for(&f, old.dim())?;
        Ok(Figures {
            self_map: leave_one_out(&f, &f, &data.labels)?.map,
            cross_map: leave_one_out(&q, &o, &data.labels)?.map,
            old_old_map: leave_one_out(&o, &o, &data.labels)?.map,
        })
    })
}

/// A grid's settings on the selection seeds, evaluated on validation data.
fn evaluate_grid(
    cfg: &ExperimentConfig,
    sel: &SelectionConfig,
    grid: &Sweep,
    values: &[f64],
    scenario: Scenario,
    out: &Path,
    opts: &StepOptions,
) -> Result<Vec<Setting>, RunError> {
    let mut settings = Vec::new();
    for &value in values {
        let (mut validation, mut test) = (BTreeMap::new(), BTreeMap::new());
        for &seed in &sel.seeds {
            let (dir, old) = trained(cfg, grid, value, "select", (scenario, seed), out, opts)?;
            let rc = cfg.run_config(scenario, seed);
            validation.insert(seed, figures(&rc, &dir, &old, Part::Validation, opts)?);
            test.insert(seed, figures(&rc, &dir, &old, Part::Test, opts)?);
        }
        settings.push(Setting {
            value,
            validation,
            test,
        });
    }
    Ok(settings)
}

/// The next value to try for a grid, or why there is none: past the edge its choice sits on,
/// or (for the reference) below its lowest value while that value is still compatible.
fn extension(
    grid: &Sweep,
    settings: &[Setting],
    chosen: Option<usize>,
    is_reference: bool,
    until_incompatible: bool,
    base: &RunConfig,
) -> Option<Result<f64, String>> {
    let values: Vec<f64> = settings.iter().map(|s| s.value).collect();
    let last = values.len() - 1;
    let next = match chosen {
        Some(0) if values.len() > 1 || is_reference => Some(step_past(&values, false)),
        Some(i) if i == last => Some(step_past(&values, true)),
        _ => None,
    };
    let next = next.or_else(|| {
        (is_reference && until_incompatible && settings[0].compatible())
            .then(|| step_past(&values, false))
    })?;
    let probe = Sweep {
        values: vec![next],
        ..grid.clone()
    };
    Some(probe.validate(base).map(|()| next))
}

/// Runs one scenario's grids on the selection seeds, extending them as the protocol says.
fn select(
    cfg: &ExperimentConfig,
    sel: &SelectionConfig,
    scenario: Scenario,
    out: &Path,
    opts: &StepOptions,
) -> Result<Vec<GridOutcome>, RunError> {
    let mut outcomes = Vec::new();
    for grid in &sel.grids {
        let mut values = grid.values.clone();
        if let Some(v) = grid.knob.value(&cfg.base.compat) {
            if !values.contains(&v) {
                values.push(v);
            }
        }
        values.sort_by(f64::total_cmp);
        let mut settings = evaluate_grid(cfg, sel, grid, &values, scenario, out, opts)?;
        let mut notes = Vec::new();
        let is_reference = grid.method == sel.reference;
        for round in 0..=sel.max_extensions {
            let chosen = choose_best_compatible(&settings);
            let ext = extension(
                grid,
                &settings,
                chosen,
                is_reference,
                sel.reference_until_incompatible,
                &cfg.base,
            );
            match ext {
                None => break,
                Some(Err(why)) => {
                    notes.push(format!("edge not extended: {why}"));
                    break;
                }
                Some(Ok(v)) if round == sel.max_extensions => {
                    notes.push(format!(
                        "still on its edge after {} extension(s); the next value would be {v}",
                        sel.max_extensions
                    ));
                    break;
                }
                Some(Ok(v)) => {
                    notes.push(format!("extended to {v}"));
                    crate::train::overall::plan_more(sel.seeds.len() as i64);
                    settings.extend(evaluate_grid(cfg, sel, grid, &[v], scenario, out, opts)?);
                    settings.sort_by(|a, b| a.value.total_cmp(&b.value));
                }
            }
        }
        outcomes.push(GridOutcome {
            scenario,
            method: grid.method,
            knob: grid.knob.as_str().to_string(),
            chosen: choose_best_compatible(&settings).map(|i| settings[i].value),
            matched: None,
            oracle: oracle_best_compatible(&settings).map(|i| settings[i].value),
            settings,
            notes,
        });
    }
    // the matched criterion's floor: the reference's default setting on validation
    let floor = outcomes
        .iter()
        .find(|o| o.method == sel.reference)
        .and_then(|o| {
            let grid = sel.grids.iter().find(|g| g.method == sel.reference)?;
            let v = grid.knob.value(&cfg.base.compat)?;
            let s = o.settings.iter().find(|s| s.value == v)?;
            Some(s.mean_cross() - sel.margin)
        });
    for o in &mut outcomes {
        o.matched = floor
            .and_then(|f| choose_matched(&o.settings, f))
            .map(|i| o.settings[i].value);
    }
    Ok(outcomes)
}

/// A report criterion: its name, the setting it picks from a grid's outcome, and whether the
/// experiment's plan counted its choices ([`ExperimentConfig::plan`] counts the first's).
#[derive(Clone, Copy)]
struct Criterion {
    name: &'static str,
    pick: fn(&GridOutcome) -> Option<f64>,
    preplanned: bool,
}

/// The criteria reported, in order.
const CRITERIA: [Criterion; 2] = [
    Criterion {
        name: "best compatible",
        pick: |o| o.chosen,
        preplanned: true,
    },
    Criterion {
        name: "matched cross-test",
        pick: |o| o.matched,
        preplanned: false,
    },
];

/// Trains each chosen setting on the report seeds and compares it with the reference's.
fn report(
    cfg: &ExperimentConfig,
    sel: &SelectionConfig,
    grids: &[GridOutcome],
    criterion: &Criterion,
    out: &Path,
    opts: &StepOptions,
) -> Result<Vec<ReportRow>, RunError> {
    let Criterion {
        name: criterion,
        pick,
        preplanned,
    } = *criterion;
    let seeds = sel.report_seeds(&cfg.seeds);
    let mut rows = Vec::new();
    for o in grids {
        let grid = sel
            .grids
            .iter()
            .find(|g| g.method == o.method)
            .expect("every outcome comes from a grid");
        let mut test = BTreeMap::new();
        // the plan counted one criterion's choice per grid: the first criterion drops what it
        // does not pick, the second adds what it does (a setting already trained is reused)
        match (preplanned, pick(o)) {
            (true, None) => crate::train::overall::plan_more(-(seeds.len() as i64)),
            (false, Some(_)) => crate::train::overall::plan_more(seeds.len() as i64),
            _ => {}
        }
        if let Some(v) = pick(o) {
            for &seed in seeds {
                let (dir, old) = trained(cfg, grid, v, "report", (o.scenario, seed), out, opts)?;
                let rc = cfg.run_config(o.scenario, seed);
                test.insert(seed, figures(&rc, &dir, &old, Part::Test, opts)?);
            }
        }
        rows.push(ReportRow::new(
            o.scenario,
            criterion,
            o.method,
            pick(o).map(|v| (o.knob.clone(), v)),
            test,
        ));
    }
    compare_with_reference(&mut rows, sel.reference);
    Ok(rows)
}

/// Fills each row's paired differences from the reference's row of its scenario, their
/// p-values, Holm's adjustment over the methods compared and the adjusted intervals.
pub fn compare_with_reference(rows: &mut [ReportRow], reference: Method) {
    let scenarios: Vec<Scenario> = rows.iter().map(|r| r.scenario).collect();
    for sc in scenarios {
        let Some(r) = rows
            .iter()
            .find(|r| r.scenario == sc && r.method == reference)
            .cloned()
        else {
            continue;
        };
        let idx: Vec<usize> = (0..rows.len())
            .filter(|&i| rows[i].scenario == sc && rows[i].method != reference)
            .collect();
        for &i in &idx {
            let row = &mut rows[i];
            let seeds: Vec<u64> = row
                .test
                .keys()
                .filter(|s| r.test.contains_key(s))
                .copied()
                .collect();
            row.self_diffs = seeds
                .iter()
                .map(|s| row.test[s].self_map - r.test[s].self_map)
                .collect();
            row.cross_diffs = seeds
                .iter()
                .map(|s| row.test[s].cross_map - r.test[s].cross_map)
                .collect();
            row.p = (t_test_p(&row.self_diffs), t_test_p(&row.cross_diffs));
        }
        let ps: Vec<f64> = idx.iter().map(|&i| rows[i].p.0).collect();
        let pc: Vec<f64> = idx.iter().map(|&i| rows[i].p.1).collect();
        let (hs, hc) = (holm(&ps), holm(&pc));
        let selfs: Vec<&[f64]> = idx.iter().map(|&i| &rows[i].self_diffs[..]).collect();
        let crosses: Vec<&[f64]> = idx.iter().map(|&i| &rows[i].cross_diffs[..]).collect();
        let (is, ic) = (holm_intervals(&selfs, &ps), holm_intervals(&crosses, &pc));
        for (k, &i) in idx.iter().enumerate() {
            let row = &mut rows[i];
            row.p_holm = (hs[k], hc[k]);
            row.self_diff = is[k];
            row.cross_diff = ic[k];
        }
    }
}

/// Runs the protocol on every scenario of the experiment and writes `selection.md` and
/// `selection.json`.
pub fn run_and_write(
    cfg: &ExperimentConfig,
    sel: &SelectionConfig,
    out: &Path,
    opts: &StepOptions,
) -> Result<SelectionReport, RunError> {
    let mut rep = SelectionReport::default();
    for &scenario in &cfg.scenarios {
        let grids = select(cfg, sel, scenario, out, opts)?;
        for c in &CRITERIA {
            rep.report.extend(report(cfg, sel, &grids, c, out, opts)?);
        }
        rep.grids.extend(grids);
    }
    let exp = ExperimentDir::new(out);
    crate::files::write_atomic(
        &exp.file(ExperimentFile::SelectionMd),
        selection_markdown(&rep, sel, cfg).as_bytes(),
    )?;
    crate::files::write_json(&exp.file(ExperimentFile::SelectionJson), &rep)?;
    for &sc in &cfg.scenarios {
        let name = sc.to_string();
        let (series, old_old) = report_series(&rep, sc);
        plot_frontier(
            &series,
            old_old,
            &format!("{sc}: chosen settings on the report seeds (test mean, 95% interval)"),
            &exp.selection_plot(&name),
        )?;
        let (series, old_old) = grid_series(&rep, sc);
        plot_xy(
            &series,
            ("validation cross-test mAP", "validation self-test mAP"),
            Reference::Vertical(old_old, format!("old→old = {old_old:.3}")),
            &format!("{sc}: the grids on validation (mean over the selection seeds)"),
            &exp.selection_grids_plot(&name),
        )?;
    }
    Ok(rep)
}

/// The short name of a criterion in a plot's labels.
fn criterion_label(criterion: &str) -> &'static str {
    if criterion == "best compatible" {
        "bc"
    } else {
        "mc"
    }
}

/// The report seeds' chosen settings of a scenario, one series per method in the grids' order
/// (so that a method has the same colour as in the grids' plot) with a point per distinct
/// chosen setting (labelled by the criteria that chose it, "bc" best compatible, "mc" matched
/// cross-test, and its value) and each axis's 95% interval, a method no setting of which
/// qualified an empty series saying so; and the mean old→old test mAP over the report seeds.
pub fn report_series(rep: &SelectionReport, sc: Scenario) -> (Vec<FrontierSeries>, f64) {
    let rows: Vec<&ReportRow> = rep.report.iter().filter(|r| r.scenario == sc).collect();
    let mut methods: Vec<Method> = Vec::new();
    for r in &rows {
        if !methods.contains(&r.method) {
            methods.push(r.method);
        }
    }
    let series = methods
        .into_iter()
        .map(|m| {
            let mut s = FrontierSeries {
                name: m.to_string(),
                points: Vec::new(),
                bars: Vec::new(),
            };
            let mut seen: Vec<(f64, usize)> = Vec::new();
            for r in rows.iter().filter(|r| r.method == m) {
                let Some((_, v)) = r.setting.clone() else {
                    continue;
                };
                let short = criterion_label(&r.criterion);
                if let Some(&(_, i)) = seen.iter().find(|(w, _)| *w == v) {
                    s.points[i].2 = format!("bc+mc {v}");
                    continue;
                }
                seen.push((v, s.points.len()));
                s.points
                    .push((r.cross_map.mean, r.self_map.mean, format!("{short} {v}")));
                s.bars.push(Bar {
                    x: (r.cross_map.low, r.cross_map.high),
                    y: (r.self_map.low, r.self_map.high),
                });
            }
            if s.points.is_empty() {
                s.name = format!("{m} (none qualified)");
            }
            s
        })
        .collect();
    let old_old: Vec<f64> = rows
        .iter()
        .flat_map(|r| r.test.values().map(|f| f.old_old_map))
        .collect();
    (series, mean_std(&old_old).0)
}

/// Each grid of a scenario on validation: a series per method through its settings' mean
/// validation (cross-test, self-test), labelled by value, without bars (the selection seeds
/// are too few for an interval); and the mean validation old→old mAP.
pub fn grid_series(rep: &SelectionReport, sc: Scenario) -> (Vec<FrontierSeries>, f64) {
    let grids: Vec<&GridOutcome> = rep.grids.iter().filter(|g| g.scenario == sc).collect();
    let series = grids
        .iter()
        .map(|g| FrontierSeries {
            name: g.method.to_string(),
            points: g
                .settings
                .iter()
                .map(|st| (st.mean_cross(), st.mean_self(), format!("{}", st.value)))
                .collect(),
            bars: Vec::new(),
        })
        .collect();
    let old_old: Vec<f64> = grids
        .iter()
        .flat_map(|g| &g.settings)
        .flat_map(|st| st.validation.values().map(|f| f.old_old_map))
        .collect();
    (series, mean_std(&old_old).0)
}

fn verdict(i: &Interval, p_holm: f64) -> &'static str {
    if i.low.is_nan() {
        "too few seeds"
    } else if p_holm < 0.05 {
        "result"
    } else {
        "within the seed spread"
    }
}

fn diff_cell(i: &Interval, p_holm: f64) -> Cell {
    super::paired::difference_cell(i, verdict(i, p_holm))
}

/// The protocol's report as Markdown: the choices on validation, then each criterion's test
/// figures on the report seeds with the Holm-adjusted paired differences.
pub fn selection_markdown(
    rep: &SelectionReport,
    sel: &SelectionConfig,
    cfg: &ExperimentConfig,
) -> String {
    let mut s = format!(
        "# Settings chosen on validation, reported on fresh seeds\n\nSelection seeds {:?} \
         (validation figures only; `[data] validation_per_class = {}`), report seeds {:?} \
         (test figures of the chosen settings, retrained). Best compatible: the highest mean \
         validation self-test mAP among settings compatible on every selection seed. Matched \
         cross-test: the highest mean validation self-test mAP among settings whose mean \
         validation cross-test is at least {}'s default setting's minus {}. Differences are \
         against {}'s chosen setting, paired by report seed; intervals are Holm-adjusted over \
         the methods compared (the interval of the i-th smallest p-value of m at level \
         0.05/(m − i + 1)); a difference is a result where its Holm-adjusted p-value is below \
         0.05, else within the seed spread. The oracle column applies the best-compatible \
         rule to the selection seeds' test figures: an oracle figure, shown for contrast and \
         never chosen on.\n",
        sel.seeds,
        cfg.base.data.validation_per_class.unwrap_or(0),
        sel.report_seeds(&cfg.seeds),
        sel.reference,
        sel.margin,
        sel.reference,
    );
    for &sc in &cfg.scenarios {
        s.push_str(&format!("\n## {sc}: choices on validation\n\n"));
        s.push_str(&choices_table(rep, sc).markdown());
        for criterion in CRITERIA.map(|c| c.name) {
            s.push_str(&format!(
                "\n## {sc}: {criterion}, test figures on the report seeds\n\n"
            ));
            s.push_str(&report_table(rep, sel.reference, sc, criterion).markdown());
        }
    }
    s
}

/// Each grid of a scenario: its settings' validation figures, the choices and the notes.
fn choices_table(rep: &SelectionReport, sc: Scenario) -> Table {
    let mut t = Table::new([
        Column::text("method"),
        Column::text("knob"),
        Column::text("grid (mean validation self / cross, compatible seeds)"),
        Column::text("best compatible"),
        Column::text("matched cross-test"),
        Column::text("oracle (best compatible on test)"),
        Column::text("grid notes"),
    ]);
    for g in rep.grids.iter().filter(|g| g.scenario == sc) {
        let grid: Vec<String> = g
            .settings
            .iter()
            .map(|st| {
                let ok = st.validation.values().filter(|f| f.compatible()).count();
                format!(
                    "{}: {:.4} / {:.4} ({ok}/{})",
                    st.value,
                    st.mean_self(),
                    st.mean_cross(),
                    st.validation.len()
                )
            })
            .collect();
        let show = |v: Option<f64>| v.map_or("none qualified".to_string(), |v| v.to_string());
        t.push(vec![
            g.method.to_string(),
            g.knob.clone(),
            grid.join("; "),
            show(g.chosen),
            show(g.matched),
            show(g.oracle),
            if g.notes.is_empty() {
                "inside the grid".to_string()
            } else {
                g.notes.join("; ")
            },
        ]);
    }
    t
}

/// One criterion's chosen settings of a scenario on the report seeds, against the reference's.
fn report_table(rep: &SelectionReport, reference: Method, sc: Scenario, criterion: &str) -> Table {
    let mut t = Table::new([
        Column::text("method"),
        Column::text("setting"),
        Column::text("self mAP [95% CI]"),
        Column::text("cross mAP [95% CI]"),
        Column::number("compatible"),
        Column::text(format!("self − {reference} [Holm CI]")),
        Column::text(format!("cross − {reference} [Holm CI]")),
        Column::text("p (Holm): self, cross"),
    ]);
    let rows = rep
        .report
        .iter()
        .filter(|r| r.scenario == sc && r.criterion == criterion);
    for r in rows {
        let none = || Cell::from("–");
        let compared = r.method != reference && !r.test.is_empty();
        let figure = |i: &Interval| match r.test.is_empty() {
            true => none(),
            false => Cell::interval(i.mean, i.low, i.high, 4),
        };
        let setting = r
            .setting
            .as_ref()
            .map_or("none qualified".into(), |(k, v)| format!("{k} = {v}"));
        let mut row = vec![
            Cell::from(r.method.to_string()),
            Cell::from(setting),
            figure(&r.self_map),
            figure(&r.cross_map),
            Cell::from(format!("{}/{}", r.compatible, r.test.len())),
        ];
        if compared {
            row.push(diff_cell(&r.self_diff, r.p_holm.0));
            row.push(diff_cell(&r.cross_diff, r.p_holm.1));
            row.push(Cell::from(format!(
                "{:.3} ({:.3}), {:.3} ({:.3})",
                r.p.0, r.p_holm.0, r.p.1, r.p_holm.1
            )));
        } else {
            row.extend([none(), none(), none()]);
        }
        t.push(row);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::paired::{holm_levels, interval_at};

    fn by_seed(v: &[(f64, f64, f64)]) -> BTreeMap<u64, Figures> {
        v.iter()
            .enumerate()
            .map(|(i, &(s, c, o))| {
                (
                    i as u64,
                    Figures {
                        self_map: s,
                        cross_map: c,
                        old_old_map: o,
                    },
                )
            })
            .collect()
    }

    fn setting(value: f64, val: &[(f64, f64, f64)]) -> Setting {
        Setting {
            value,
            validation: by_seed(val),
            test: BTreeMap::new(),
        }
    }

    /// A setting that is best on test but not on validation is not chosen: the choice reads
    /// validation figures; the test figures only give the (labelled) oracle column.
    #[test]
    fn a_setting_best_on_test_but_not_on_validation_is_not_chosen() {
        let s = [
            Setting {
                value: 0.3,
                validation: by_seed(&[(0.76, 0.60, 0.5), (0.75, 0.61, 0.5)]),
                test: by_seed(&[(0.70, 0.60, 0.5), (0.71, 0.60, 0.5)]),
            },
            Setting {
                value: 1.0,
                validation: by_seed(&[(0.72, 0.60, 0.5), (0.73, 0.61, 0.5)]),
                test: by_seed(&[(0.80, 0.60, 0.5), (0.81, 0.60, 0.5)]),
            },
        ];
        assert_eq!(choose_best_compatible(&s), Some(0), "validation's best");
        assert_eq!(oracle_best_compatible(&s), Some(1), "test's best");
    }

    #[test]
    fn steps_past_an_edge() {
        assert_eq!(step_past(&[0.3, 1.0, 3.0], false), 0.09);
        assert!((step_past(&[0.3, 1.0, 3.0], true) - 9.0).abs() < 1e-12);
        assert_eq!(step_past(&[0.0, 0.2], true), 0.4);
        assert_eq!(step_past(&[0.0, 0.2], false), -0.2);
        assert!((step_past(&[1.0], false) - 1.0 / 3.0).abs() < 1e-12);
    }

    /// A grid grows past the edge its choice sits on, the reference's downwards while its
    /// lowest setting is still compatible, and not past a value its configuration refuses.
    #[test]
    fn grids_extend_past_the_edge_of_their_choice() {
        let base = RunConfig::default();
        let ok = (0.8, 0.7, 0.5);
        let bad = (0.9, 0.4, 0.5);
        let bct = Sweep {
            method: Method::BCT,
            knob: crate::loss::Knob::LAMBDA,
            values: vec![],
        };
        let grid = [
            setting(0.3, &[ok]),
            setting(1.0, &[ok]),
            setting(3.0, &[ok]),
        ];
        let next = |s: &[Setting], chosen, reference| {
            extension(&bct, s, chosen, reference, true, &base).map(|r| r.unwrap())
        };
        assert_eq!(
            next(&grid, Some(2), false),
            Some(9.0),
            "past the upper edge"
        );
        assert_eq!(
            next(&grid, Some(0), false),
            Some(0.09),
            "past the lower edge"
        );
        assert_eq!(next(&grid, Some(1), false), None, "inside: as it is");
        // the reference: down while its lowest value is still compatible
        assert_eq!(next(&grid, Some(1), true), Some(0.09));
        let failing = [
            setting(0.3, &[bad]),
            setting(1.0, &[ok]),
            setting(3.0, &[ok]),
        ];
        assert_eq!(
            next(&failing, Some(1), true),
            None,
            "it failed the criterion"
        );
        // a next value the configuration refuses is reported, not trained
        let eps = Sweep {
            method: Method::NDPP,
            knob: crate::loss::Knob::named("ndpp-eps").unwrap(),
            values: vec![],
        };
        let g = [setting(0.3, &[ok]), setting(0.6, &[ok])];
        let e = extension(&eps, &g, Some(1), false, true, &base)
            .unwrap()
            .unwrap_err();
        assert!(e.contains("ndpp-eps = 1.2"), "{e}");
    }

    /// Holm's adjustment, its levels, the paired t-test and the adjusted intervals on hand
    /// numbers (Student's t with 2 degrees of freedom has the closed forms
    /// `F(t) = 1/2 + t / (2·√(2 + t²))` and `F⁻¹(u) = (2u − 1)·√(2 / (1 − (2u − 1)²))`).
    #[test]
    fn holm_and_the_t_test_by_hand() {
        let adj = holm(&[0.01, 0.04, 0.03]);
        for (a, w) in adj.iter().zip([0.03, 0.06, 0.06]) {
            assert!((a - w).abs() < 1e-12, "{adj:?}");
        }
        // an untestable hypothesis stays NaN and does not count
        let adj = holm(&[0.02, f64::NAN, 0.5]);
        assert!((adj[0] - 0.04).abs() < 1e-12 && adj[1].is_nan() && (adj[2] - 0.5).abs() < 1e-12);
        let lv = holm_levels(&[0.01, 0.04, 0.03]);
        for (a, w) in lv.iter().zip([0.05 / 3.0, 0.05, 0.05 / 2.0]) {
            assert!((a - w).abs() < 1e-12, "{lv:?}");
        }
        // [1, 2, 3]: mean 2, sd 1, t = 2·√3
        let t = 2.0 * 3f64.sqrt();
        let p = 2.0 * (1.0 - (0.5 + t / (2.0 * (2.0 + t * t).sqrt())));
        assert!((t_test_p(&[1.0, 2.0, 3.0]) - p).abs() < 1e-9);
        let q = |u: f64| (2.0 * u - 1.0) * (2.0 / (1.0 - (2.0 * u - 1.0).powi(2))).sqrt();
        for alpha in [0.05, 0.025] {
            let i = interval_at(&[1.0, 2.0, 3.0], alpha);
            let half = q(1.0 - alpha / 2.0) / 3f64.sqrt();
            assert!((i.low - (2.0 - half)).abs() < 1e-6, "{i:?}");
            assert!((i.high - (2.0 + half)).abs() < 1e-6, "{i:?}");
        }
    }

    fn row(criterion: &str, method: Method, v: f64, test: &[(f64, f64, f64)]) -> ReportRow {
        let setting = Some(("lambda".to_string(), v));
        ReportRow::new(
            Scenario::ExtendedClass,
            criterion,
            method,
            setting,
            by_seed(test),
        )
    }

    /// The report plot: one series per method, one point per distinct chosen setting (a
    /// setting both criteria chose is one point, labelled so), at the test means with their
    /// intervals; old→old is the mean over the report seeds' figures.
    #[test]
    fn the_report_plot_has_a_point_per_chosen_setting() {
        let rep = SelectionReport {
            grids: Vec::new(),
            report: vec![
                row(
                    "best compatible",
                    Method::BCT,
                    0.3,
                    &[(0.70, 0.60, 0.50), (0.72, 0.62, 0.52)],
                ),
                row(
                    "best compatible",
                    Method::L2,
                    1.0,
                    &[(0.60, 0.58, 0.50), (0.64, 0.60, 0.52)],
                ),
                row(
                    "matched cross-test",
                    Method::BCT,
                    0.3,
                    &[(0.70, 0.60, 0.50), (0.72, 0.62, 0.52)],
                ),
                row(
                    "matched cross-test",
                    Method::L2,
                    0.1,
                    &[(0.66, 0.50, 0.50), (0.68, 0.52, 0.52)],
                ),
            ],
        };
        let mut rep = rep;
        let none = ReportRow::new(
            Scenario::ExtendedClass,
            "best compatible",
            Method::LCE,
            None,
            BTreeMap::new(),
        );
        rep.report.insert(1, none);
        let (series, old_old) = report_series(&rep, Scenario::ExtendedClass);
        assert!((old_old - 0.51).abs() < 1e-12);
        assert_eq!(series.len(), 3);
        assert_eq!(series[1].name, "lce (none qualified)");
        assert!(series[1].points.is_empty() && series[1].bars.is_empty());
        let series = [series[0].clone(), series[2].clone()];
        assert_eq!(series[0].name, "bct");
        assert_eq!(series[0].points.len(), 1, "one setting, both criteria");
        let (x, y, label) = &series[0].points[0];
        assert!((x - 0.61).abs() < 1e-12 && (y - 0.71).abs() < 1e-12);
        assert_eq!(label, "bc+mc 0.3");
        let labels: Vec<&str> = series[1].points.iter().map(|p| p.2.as_str()).collect();
        assert_eq!(labels, ["bc 1", "mc 0.1"]);
        assert_eq!(series[1].bars.len(), 2);
        // the bar is the per-method 95% interval: mean ± t(0.975, 1)·sd/√2
        let b = series[1].bars[0];
        let half = 12.706 * (0.02f64 * 2f64.sqrt()) / 2f64.sqrt();
        assert!((b.y.1 - (0.62 + half)).abs() < 1e-3, "{b:?}");
        assert!(report_series(&rep, Scenario::ExtendedData).0.is_empty());
    }

    #[test]
    fn the_choices_read_validation_and_the_criterion() {
        let s = [
            // compatible on both seeds, lower self-test
            setting(0.3, &[(0.70, 0.60, 0.50), (0.72, 0.61, 0.50)]),
            // higher self-test but incompatible on seed 1
            setting(1.0, &[(0.80, 0.55, 0.50), (0.82, 0.45, 0.50)]),
            // compatible, highest self-test among the compatible
            setting(3.0, &[(0.75, 0.58, 0.50), (0.74, 0.56, 0.50)]),
        ];
        assert_eq!(choose_best_compatible(&s), Some(2));
        // matched: cross at least 0.5 on average admits 1.0 (mean 0.50), which then wins
        assert_eq!(choose_matched(&s, 0.5), Some(1));
        assert_eq!(choose_matched(&s, 0.6), Some(0));
        assert_eq!(choose_matched(&s, 0.7), None);
        let none = [setting(1.0, &[(0.8, 0.4, 0.5)])];
        assert_eq!(choose_best_compatible(&none), None);
    }
}
