//! `[[benchmark]]` entries of an experiment: every run's old and new models scored on the
//! standard benchmarks (cached per run by model ids), and `benchmarks.md` with each method's
//! self-test and cross-test headline figures, mean ± std over seeds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Device;

use super::mean_std;
use crate::model::Embedder;
use crate::pipeline::benchmark::{evaluate_benchmark, BenchmarkConfig, BenchmarkReport};
use crate::pipeline::PipelineError;

/// One run's report on one benchmark.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchmarkRun {
    /// Scenario.
    pub scenario: String,
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
    scenario: &str,
    seed: u64,
    device: Device,
) -> Result<Vec<BenchmarkRun>, PipelineError> {
    let ids = super::model_ids(dirs)?;
    let mut models: Option<Vec<Embedder>> = None;
    let mut out = Vec::new();
    for b in benchmarks {
        let key = (ids.clone(), b.clone());
        let report = super::cached(
            &dir.join(format!("benchmark-{}.json", b.name)),
            &key,
            || {
                if models.is_none() {
                    models = Some(
                        dirs.iter()
                            .map(|d| Embedder::load(d, device))
                            .collect::<Result<Vec<_>, _>>()?,
                    );
                }
                evaluate_benchmark(b, models.as_deref().unwrap_or_default())
            },
        )?;
        out.push(BenchmarkRun {
            scenario: scenario.to_string(),
            seed,
            report,
        });
    }
    Ok(out)
}

/// The figures a benchmark's table shows.
fn headline(figures: &BTreeMap<String, f64>) -> Vec<String> {
    for set in [
        &["medium_map", "hard_map"][..],
        &["map_at_100"][..],
        &["recall_at_1"][..],
    ] {
        if set.iter().all(|k| figures.contains_key(*k)) {
            return set.iter().map(|s| s.to_string()).collect();
        }
    }
    figures.keys().take(2).cloned().collect()
}

/// `benchmarks.md`: per benchmark and scenario, each model's self-test (model → model) and
/// cross-test (model → old) headline figures, mean ± std over seeds.
pub fn benchmarks_markdown(runs: &[BenchmarkRun]) -> String {
    // (benchmark, scenario) → model → figure → (self values, cross values)
    type Cell = (Vec<f64>, Vec<f64>);
    let mut t: BTreeMap<(String, String), BTreeMap<String, BTreeMap<String, Cell>>> =
        BTreeMap::new();
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in runs {
        let Some(first) = r.report.pairs.first() else {
            continue;
        };
        let hk = headline(&first.figures);
        keys.insert(r.report.name.clone(), hk.clone());
        let entry = t
            .entry((r.report.name.clone(), r.scenario.clone()))
            .or_default();
        for p in &r.report.pairs {
            let slot = if p.query == p.gallery {
                0
            } else if p.gallery == "old" {
                1
            } else {
                continue;
            };
            for k in &hk {
                if let Some(v) = p.figures.get(k) {
                    let c = entry
                        .entry(p.query.clone())
                        .or_default()
                        .entry(k.clone())
                        .or_default();
                    if slot == 0 {
                        c.0.push(*v)
                    } else {
                        c.1.push(*v)
                    }
                }
            }
        }
    }
    let ms = |v: &[f64]| {
        if v.is_empty() {
            "".to_string()
        } else {
            let (m, s) = mean_std(v);
            format!("{m:.4} ± {s:.4} ({})", v.len())
        }
    };
    let mut s = String::from(
        "# Benchmarks\n\nSelf: the model searches its own gallery; cross: its queries search the \
         old model's gallery (for the old model both are old → old). Mean ± std over seeds \
         (count).\n",
    );
    for ((name, scenario), models) in &t {
        let hk = &keys[name];
        s.push_str(&format!("\n## {name}, {scenario}\n\n| model |"));
        for k in hk {
            s.push_str(&format!(" self {k} | cross {k} |"));
        }
        s.push_str("\n|---|");
        s.push_str(&"---:|---:|".repeat(hk.len()));
        s.push('\n');
        for (model, figs) in models {
            s.push_str(&format!("| {model} |"));
            for k in hk {
                let (a, b) = figs.get(k).cloned().unwrap_or_default();
                s.push_str(&format!(" {} | {} |", ms(&a), ms(&b)));
            }
            s.push('\n');
        }
    }
    s
}
