//! `[[benchmark]]` entries of an experiment: every run's old and new models scored on the
//! standard benchmarks (cached per run by model ids), and `benchmarks.md` with each method's
//! self-test and cross-test headline figures, mean ± std over seeds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Device;

use super::mean_std;
use crate::data::Scenario;
use crate::eval::protocol::{evaluate_benchmark, BenchmarkConfig, BenchmarkReport};
use crate::model::Embedder;
use crate::run::RunError;
use crate::table::{Cell, Column, Table};

/// One run's report on one benchmark.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchmarkRun {
    /// Scenario.
    pub scenario: Scenario,
    /// Seed.
    pub seed: u64,
    /// The report (its pairs name models by card name: "old", "new-bct", ...).
    pub report: BenchmarkReport,
}

/// Scores the models in `dirs` (the old model first) on every benchmark, reusing
/// `dir/benchmark-<name>.json` when it was made by the same models.
pub fn run_benchmarks(
    benchmarks: &[BenchmarkConfig],
    dirs: &[PathBuf],
    dir: &Path,
    scenario: Scenario,
    seed: u64,
    device: Device,
) -> Result<Vec<BenchmarkRun>, RunError> {
    let ids = super::model_ids(dirs)?;
    let mut models: Option<Vec<Embedder>> = None;
    let mut out = Vec::new();
    for b in benchmarks {
        let key = (ids.clone(), b.clone());
        let report = super::cached(
            &crate::layout::RunDir::new(dir).benchmark_cache(&b.name),
            &key,
            || {
                if models.is_none() {
                    models = Some(
                        dirs.iter()
                            .map(|d| Embedder::load(d, device))
                            .collect::<Result<Vec<_>, _>>()?,
                    );
                }
                Ok(evaluate_benchmark(
                    b,
                    models.as_deref().unwrap_or_default(),
                )?)
            },
        )?;
        out.push(BenchmarkRun {
            scenario,
            seed,
            report,
        });
    }
    Ok(out)
}

/// `benchmarks.md`: per benchmark and scenario, each model's self-test (model → model) and
/// cross-test (model → old) headline figures ([`crate::eval::protocol::Figures::headline`]), mean ± std over seeds.
pub fn benchmarks_markdown(runs: &[BenchmarkRun]) -> String {
    // (benchmark, scenario) → model → figure → (self values, cross values)
    type Figures = (Vec<f64>, Vec<f64>);
    let mut t: BTreeMap<(String, Scenario), BTreeMap<String, BTreeMap<String, Figures>>> =
        BTreeMap::new();
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in runs {
        let Some(first) = r.report.pairs.first() else {
            continue;
        };
        let names = first.figures.headline().into_iter().map(|(n, _)| n);
        keys.insert(r.report.name.clone(), names.collect());
        let entry = t.entry((r.report.name.clone(), r.scenario)).or_default();
        for p in &r.report.pairs {
            let cross = match (p.query == p.gallery, p.gallery == "old") {
                (true, _) => false,
                (false, true) => true,
                (false, false) => continue,
            };
            for (k, v) in p.figures.headline() {
                let c = entry
                    .entry(p.query.clone())
                    .or_default()
                    .entry(k)
                    .or_default();
                if cross { &mut c.1 } else { &mut c.0 }.push(v);
            }
        }
    }
    let ms = |v: &[f64]| -> Cell {
        if v.is_empty() {
            Cell::Text(String::new())
        } else {
            let (mean, std) = mean_std(v);
            Cell::MeanStd {
                mean,
                std,
                digits: 4,
                percent: false,
                count: Some(v.len()),
            }
        }
    };
    let mut s = String::from(
        "# Benchmarks\n\nSelf: the model searches its own gallery; cross: its queries search the \
         old model's gallery (for the old model both are old → old). Mean ± std over seeds \
         (count).\n",
    );
    for ((name, scenario), models) in &t {
        let hk = &keys[name];
        let mut table = Table::new(std::iter::once(Column::text("model")).chain(
            hk.iter().flat_map(|k| {
                [
                    Column::number(format!("self {k}")),
                    Column::number(format!("cross {k}")),
                ]
            }),
        ));
        for (model, figs) in models {
            let mut row = vec![Cell::Text(model.clone())];
            for k in hk {
                let (a, b) = figs.get(k).cloned().unwrap_or_default();
                row.extend([ms(&a), ms(&b)]);
            }
            table.push(row);
        }
        s.push_str(&format!("\n## {name}, {scenario}\n\n{}", table.markdown()));
    }
    s
}
