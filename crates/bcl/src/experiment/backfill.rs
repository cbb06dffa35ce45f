//! The deployment part of an experiment: for chosen methods, the partial-backfill curve
//! (cross-test as 0, 25, 50, 75, 100% of the old gallery is re-embedded by the new model) and
//! the negative flips against the old system, per run and as mean ± std over seeds.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::mean_std;
use crate::data::Scenario;
use crate::eval::deploy::{backfill_curve, flips, top1_labels, Flips};
use crate::files::write_atomic;
use crate::loss::Method;
use crate::model::Embedder;
use crate::pipeline::{PipelineError, RunConfig, StepOptions};
use crate::report::{plot_xy, FrontierSeries, Reference};

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

impl Default for BackfillConfig {
    fn default() -> Self {
        Self {
            fractions: vec![0.0, 0.25, 0.5, 0.75, 1.0],
            methods: vec![Method::Bct, Method::Ndpp, Method::Odpp],
            seed: 0,
        }
    }
}

/// One method's deployment figures in one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployRun {
    /// Scenario.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Method.
    pub method: String,
    /// (fraction, mAP) of new queries against the partly re-embedded gallery.
    pub curve: Vec<(f64, f64)>,
    /// old→old mAP of the run.
    pub old_old_map: f64,
    /// Flips of new queries against the old gallery (no backfill) versus the old system.
    pub flips_cross: Flips,
    /// Flips after a full backfill (new→new) versus the old system.
    pub flips_self: Flips,
}

/// Computes (or reads from `dir/backfill.json`) the deployment figures of one run;
/// `old_old_map` comes from the run's evaluation (not recomputed).
#[allow(clippy::too_many_arguments)]
pub fn deploy_run(
    rc: &RunConfig,
    old_old_map: f64,
    bf: &BackfillConfig,
    scenario: Scenario,
    seed: u64,
    dir: &Path,
    opts: &StepOptions,
) -> Result<Vec<DeployRun>, PipelineError> {
    let dirs: Vec<_> = std::iter::once(dir.join("old"))
        .chain(bf.methods.iter().map(|m| dir.join(m.model_name())))
        .collect();
    let key = (super::model_ids(&dirs)?, bf.clone());
    super::cached(&dir.join("backfill.json"), &key, || {
        let test = crate::data::open_test(&rc.data)?;
        let old = Embedder::load(&dirs[0], opts.device)?.embed_dataset(&test, rc.eval_batch);
        let old_top1 = top1_labels(&old, &old, &test.labels)?;
        let oo = old_old_map;
        let mut out = Vec::new();
        for (m, d) in bf.methods.iter().zip(&dirs[1..]) {
            let new = Embedder::load(d, opts.device)?.embed_dataset(&test, rc.eval_batch);
            let curve = backfill_curve(&old, &new, &test.labels, &bf.fractions, bf.seed)?;
            out.push(DeployRun {
                scenario: scenario.to_string(),
                seed,
                method: m.to_string(),
                curve: curve.iter().map(|p| (p.fraction, p.metrics.map)).collect(),
                old_old_map: oo,
                flips_cross: flips(
                    &old_top1,
                    &top1_labels(&new, &old, &test.labels)?,
                    &test.labels,
                )?,
                flips_self: flips(
                    &old_top1,
                    &top1_labels(&new, &new, &test.labels)?,
                    &test.labels,
                )?,
            });
        }
        Ok(out)
    })
}

/// Mean ± std over seeds, as Markdown (one table per scenario) and CSV, plus one plot per
/// scenario (`backfill-<scenario>.svg`) under `out`.
pub fn write_backfill_reports(runs: &[DeployRun], out: &Path) -> Result<(), PipelineError> {
    let mut groups: BTreeMap<(String, String), Vec<&DeployRun>> = BTreeMap::new();
    for r in runs {
        groups
            .entry((r.scenario.clone(), r.method.clone()))
            .or_default()
            .push(r);
    }
    let mut md = String::from(
        "Partial backfill: mAP of new queries against the gallery with a share re-embedded by the new model (seeded random order), mean ± std over seeds; flips are top-1 changes against the old system (old→old), with no backfill (new→old) and after a full one (new→new).\n",
    );
    let mut csv = String::from(
        "scenario,method,seeds,fraction,map_mean,map_std,neg_flips_cross,neg_flips_self,pos_flips_cross\n",
    );
    let mut last_scenario = String::new();
    let mut plot: BTreeMap<String, (Vec<FrontierSeries>, f64)> = BTreeMap::new();
    for ((sc, m), rs) in &groups {
        let fr: Vec<f64> = rs[0].curve.iter().map(|p| p.0).collect();
        if *sc != last_scenario {
            md.push_str(&format!("\n**{sc}**\n\n| method | seeds | old→old |"));
            for f in &fr {
                md.push_str(&format!(" {:.0}% |", f * 100.0));
            }
            md.push_str(" negative flips new→old | negative flips new→new |\n|---|---:|---:|");
            md.push_str(&"---:|".repeat(fr.len() + 2));
            md.push('\n');
            last_scenario = sc.clone();
        }
        let oo = mean_std(&rs.iter().map(|r| r.old_old_map).collect::<Vec<_>>());
        let nc = mean_std(
            &rs.iter()
                .map(|r| r.flips_cross.negative)
                .collect::<Vec<_>>(),
        );
        let ns = mean_std(&rs.iter().map(|r| r.flips_self.negative).collect::<Vec<_>>());
        let pc = mean_std(
            &rs.iter()
                .map(|r| r.flips_cross.positive)
                .collect::<Vec<_>>(),
        );
        md.push_str(&format!("| {m} | {} | {:.4} |", rs.len(), oo.0));
        let mut pts = Vec::new();
        for (i, f) in fr.iter().enumerate() {
            let v = mean_std(&rs.iter().map(|r| r.curve[i].1).collect::<Vec<_>>());
            md.push_str(&format!(" {:.4} ± {:.4} |", v.0, v.1));
            csv.push_str(&format!(
                "{sc},{m},{},{f},{:.6},{:.6},{:.6},{:.6},{:.6}\n",
                rs.len(),
                v.0,
                v.1,
                nc.0,
                ns.0,
                pc.0
            ));
            pts.push((*f * 100.0, v.0, String::new()));
        }
        md.push_str(&format!(
            " {:.2}% ± {:.2} | {:.2}% ± {:.2} |\n",
            100.0 * nc.0,
            100.0 * nc.1,
            100.0 * ns.0,
            100.0 * ns.1
        ));
        let e = plot.entry(sc.clone()).or_insert((Vec::new(), oo.0));
        e.0.push(FrontierSeries {
            name: m.clone(),
            points: pts,
            bars: Vec::new(),
        });
    }
    write_atomic(&out.join("backfill.md"), md.as_bytes())?;
    write_atomic(&out.join("backfill.csv"), csv.as_bytes())?;
    for (sc, (series, oo)) in plot {
        plot_xy(
            &series,
            (
                "gallery re-embedded by the new model (%)",
                "mAP (new queries)",
            ),
            Reference::Horizontal(oo, format!("old→old = {oo:.3}")),
            &format!("{sc}: partial backfill"),
            &out.join(format!("backfill-{sc}.svg")),
        )?;
    }
    Ok(())
}
