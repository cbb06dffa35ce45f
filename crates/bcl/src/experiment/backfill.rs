//! The deployment part of an experiment: for chosen methods, the partial-backfill curve
//! (cross-test as 0, 25, 50, 75, 100% of the old gallery is re-embedded by the new model) and
//! the negative flips against the old system, per run and as mean ± std over seeds. With
//! forward adapters in the experiment (`[adapters]`), also the curve of a gallery first
//! upgraded through each one (the old vectors mapped into the new space, no image
//! re-embedded), then re-embedded share by share: its row is `method+forward@pairs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::mean_std;
use crate::adapt::Adapter;
use crate::data::Scenario;
use crate::eval::deploy::{backfill_curve, flips, top1_labels, Flips};
use crate::eval::models::{row_label, AdapterTag};
use crate::files::write_atomic;
use crate::layout::{ExperimentDir, ExperimentFile, RunDir};
use crate::loss::Method;
use crate::model::Embedder;
use crate::report::{plot_xy, FrontierSeries, Reference};
use crate::run::{RunConfig, RunError, StepOptions};
use crate::table::{Cell, Column, Table};
use tch::Tensor;

/// Which methods get a deployment evaluation, and how.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BackfillConfig {
    /// Shares of the gallery re-embedded.
    pub fractions: Vec<f64>,
    /// Methods evaluated (each must be among the experiment's methods).
    pub methods: Vec<Method>,
    /// Seed of the (random) backfill order.
    pub seed: u64,
}

impl BackfillConfig {
    /// Checks the section against the experiment's `methods`; the error names the setting.
    pub fn validate(&self, methods: &[Method]) -> Result<(), String> {
        if let Some(m) = self.methods.iter().find(|m| !methods.contains(m)) {
            return Err(format!(
                "backfill.methods names {m}, which is not among methods"
            ));
        }
        if let Some(f) = self.fractions.iter().find(|f| !(0.0..=1.0).contains(*f)) {
            return Err(format!("backfill.fractions lie in [0, 1], got {f}"));
        }
        Ok(())
    }
}

impl Default for BackfillConfig {
    fn default() -> Self {
        Self {
            fractions: vec![0.0, 0.25, 0.5, 0.75, 1.0],
            methods: vec![Method::BCT, Method::NDPP, Method::ODPP],
            seed: 0,
        }
    }
}

/// One method's deployment figures in one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployRun {
    /// Scenario.
    pub scenario: Scenario,
    /// Seed.
    pub seed: u64,
    /// Method.
    pub method: Method,
    /// The forward adapter the gallery was upgraded through before the backfill (`None`: the
    /// old vectors as they are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<AdapterTag>,
    /// (fraction, mAP) of new queries against the partly re-embedded gallery.
    pub curve: Vec<(f64, f64)>,
    /// old→old mAP of the run.
    pub old_old_map: f64,
    /// Flips of new queries against the old gallery (no backfill) versus the old system.
    pub flips_cross: Flips,
    /// Flips after a full backfill (new→new) versus the old system.
    pub flips_self: Flips,
}

/// A forward adapter a run fitted: the method of the new model it maps into, its row's tag,
/// and its directory.
pub type ForwardAdapter = (Method, AdapterTag, PathBuf);

/// Computes (or reads from `dir/backfill.json`) the deployment figures of one run;
/// `old_old_map` comes from the run's evaluation (not recomputed); `forward` are the run's
/// forward adapters, each giving one more curve.
#[allow(clippy::too_many_arguments)]
pub fn deploy_run(
    rc: &RunConfig,
    old_old_map: f64,
    bf: &BackfillConfig,
    forward: &[ForwardAdapter],
    scenario: Scenario,
    seed: u64,
    dir: &Path,
    opts: &StepOptions,
) -> Result<Vec<DeployRun>, RunError> {
    let run = RunDir::new(dir);
    let dirs: Vec<_> = std::iter::once(run.old())
        .chain(bf.methods.iter().map(|m| run.model(&m.model_name())))
        .map(|d| d.path().to_path_buf())
        .collect();
    let adapters = forward
        .iter()
        .map(|(m, t, d)| {
            let a = Adapter::load(d)?;
            Ok((*m, t.clone(), a))
        })
        .collect::<Result<Vec<_>, RunError>>()?;
    let adapter_ids: Vec<String> = adapters.iter().map(|(_, _, a)| a.card.id.clone()).collect();
    let key = (super::model_ids(&dirs)?, bf.clone(), adapter_ids);
    super::cached(&run.backfill_cache(), &key, || {
        let test = crate::data::open_test(&rc.data)?;
        let old_model = Embedder::load(&dirs[0], opts.device)?;
        let old = old_model.embed_dataset(&test, rc.eval_batch);
        let old_top1 = top1_labels(&old, &old, &test.labels)?;
        // one curve: `start` the gallery before any re-embedding, `new` the new model's queries
        // and re-embedded items in that gallery's space, `own` its own embeddings (self-test)
        let deploy = |method: Method,
                      adapter: Option<AdapterTag>,
                      start: &Tensor,
                      new: &Tensor,
                      own: &Tensor|
         -> Result<DeployRun, RunError> {
            let curve = backfill_curve(start, new, &test.labels, &bf.fractions, bf.seed)?;
            Ok(DeployRun {
                scenario,
                seed,
                method,
                adapter,
                curve: curve.iter().map(|p| (p.fraction, p.metrics.map)).collect(),
                old_old_map,
                flips_cross: flips(
                    &old_top1,
                    &top1_labels(new, start, &test.labels)?,
                    &test.labels,
                )?,
                flips_self: flips(
                    &old_top1,
                    &top1_labels(own, own, &test.labels)?,
                    &test.labels,
                )?,
            })
        };
        let mut out = Vec::new();
        for (m, d) in bf.methods.iter().zip(&dirs[1..]) {
            let model = Embedder::load(d, opts.device)?;
            let own = model.embed_dataset(&test, rc.eval_batch);
            // a gallery part-way through its backfill holds both models' vectors in one space,
            // the old model's: a new model of another dimension fills it through its
            // projection head (its own space is the self-test's, once every item is re-embedded)
            let new = model.queries_for(&own, old_model.dim())?;
            out.push(deploy(*m, None, &old, &new, &own)?);
        }
        for (m, tag, a) in &adapters {
            let model = Embedder::load(run.model(&m.model_name()).path(), opts.device)?;
            let own = model.embed_dataset(&test, rc.eval_batch);
            // the upgraded gallery is in the new model's own space: its queries are its own
            // embeddings, the items not yet re-embedded the old vectors mapped forward
            let upgraded = a.apply(&old, None)?;
            out.push(deploy(*m, Some(tag.clone()), &upgraded, &own, &own)?);
        }
        Ok(out)
    })
}

/// One method's deployment figures in one scenario, over seeds: (mean, std) of each.
struct Summary {
    seeds: usize,
    old_old: (f64, f64),
    /// (fraction, (mean, std) of mAP)
    curve: Vec<(f64, (f64, f64))>,
    neg_cross: (f64, f64),
    neg_self: (f64, f64),
    pos_cross: (f64, f64),
}

fn summarise(rs: &[&DeployRun]) -> Summary {
    let col =
        |f: &dyn Fn(&DeployRun) -> f64| mean_std(&rs.iter().map(|r| f(r)).collect::<Vec<_>>());
    Summary {
        seeds: rs.len(),
        old_old: col(&|r| r.old_old_map),
        curve: (0..rs[0].curve.len())
            .map(|i| (rs[0].curve[i].0, col(&|r| r.curve[i].1)))
            .collect(),
        neg_cross: col(&|r| r.flips_cross.negative),
        neg_self: col(&|r| r.flips_self.negative),
        pos_cross: col(&|r| r.flips_cross.positive),
    }
}

/// Mean ± std over seeds, as Markdown (one table per scenario) and CSV, plus one plot per
/// scenario (`backfill-<scenario>.svg`) under `out`.
pub fn write_backfill_reports(runs: &[DeployRun], out: &Path) -> Result<(), RunError> {
    let mut groups: BTreeMap<(Scenario, Method, Option<AdapterTag>), Vec<&DeployRun>> =
        BTreeMap::new();
    for r in runs {
        groups
            .entry((r.scenario, r.method, r.adapter.clone()))
            .or_default()
            .push(r);
    }
    let mut by_scenario: BTreeMap<Scenario, Vec<(String, Summary)>> = BTreeMap::new();
    for ((sc, m, a), rs) in &groups {
        by_scenario
            .entry(*sc)
            .or_default()
            .push((row_label(*m, a.as_ref()), summarise(rs)));
    }
    let mut md = String::from(
        "Partial backfill: mAP of new queries against the gallery with a share re-embedded by the new model (seeded random order), mean ± std over seeds; flips are top-1 changes against the old system (old→old), with no backfill (new→old) and after a full one (new→new).\n",
    );
    let mut csv = Table::new(
        [
            "scenario",
            "method",
            "seeds",
            "fraction",
            "map_mean",
            "map_std",
            "neg_flips_cross",
            "neg_flips_self",
            "pos_flips_cross",
        ]
        .map(Column::text),
    );
    for (sc, rows) in &by_scenario {
        md.push_str(&format!(
            "\n**{sc}**\n\n{}",
            scenario_table(rows).markdown()
        ));
        for (m, r) in rows {
            for (f, (mean, std)) in &r.curve {
                let flips = [r.neg_cross.0, r.neg_self.0, r.pos_cross.0].map(|v| format!("{v:.6}"));
                let mut row = vec![sc.to_string(), m.to_string(), r.seeds.to_string()];
                row.extend([f.to_string(), format!("{mean:.6}"), format!("{std:.6}")]);
                row.extend(flips);
                csv.push(row);
            }
        }
        plot_scenario(*sc, rows, out)?;
    }
    let exp = ExperimentDir::new(out);
    write_atomic(&exp.file(ExperimentFile::BackfillMd), md.as_bytes())?;
    write_atomic(&exp.file(ExperimentFile::BackfillCsv), csv.csv().as_bytes())?;
    Ok(())
}

/// One scenario's Markdown table: each method's old→old, curve and negative flips.
fn scenario_table(rows: &[(String, Summary)]) -> Table {
    let fractions: Vec<f64> = rows[0].1.curve.iter().map(|c| c.0).collect();
    let mut t = Table::new(
        [
            Column::text("method"),
            Column::number("seeds"),
            Column::number("old→old"),
        ]
        .into_iter()
        .chain(
            fractions
                .iter()
                .map(|f| Column::number(format!("{:.0}%", f * 100.0))),
        )
        .chain([
            Column::number("negative flips new→old"),
            Column::number("negative flips new→new"),
        ]),
    );
    for (m, r) in rows {
        let mut row: Vec<Cell> = vec![
            m.to_string().into(),
            r.seeds.to_string().into(),
            format!("{:.4}", r.old_old.0).into(),
        ];
        row.extend(r.curve.iter().map(|(_, v)| Cell::mean_std(v.0, v.1, 4)));
        for f in [r.neg_cross, r.neg_self] {
            row.push(Cell::percent_mean_std(f.0, f.1));
        }
        t.push(row);
    }
    t
}

/// `backfill-<scenario>.svg`: each method's curve against the old system's mAP.
fn plot_scenario(sc: Scenario, rows: &[(String, Summary)], out: &Path) -> Result<(), RunError> {
    let oo = rows[0].1.old_old.0;
    let series: Vec<FrontierSeries> = rows
        .iter()
        .map(|(m, r)| FrontierSeries {
            name: m.to_string(),
            points: r
                .curve
                .iter()
                .map(|(f, v)| (f * 100.0, v.0, String::new()))
                .collect(),
            bars: Vec::new(),
        })
        .collect();
    plot_xy(
        &series,
        (
            "gallery re-embedded by the new model (%)",
            "mAP (new queries)",
        ),
        Reference::Horizontal(oo, format!("old→old = {oo:.3}")),
        &format!("{sc}: partial backfill"),
        &ExperimentDir::new(out).backfill_plot(&sc.to_string()),
    )?;
    Ok(())
}
