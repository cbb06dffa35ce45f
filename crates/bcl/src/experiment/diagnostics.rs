//! Diagnostics of the perturbation runs: per run, the refreshes' ‖δ‖, the prototypes'
//! nearest-neighbour similarity before and after, the share of classes still nearest their own
//! old prototype, J (ODPP) and the refresh time against the training time (`diagnostics.md`);
//! the compatibility matrix and a PCA plot of old against pseudo-old prototypes per run.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::{model_dir, ExperimentConfig};
use crate::data::Scenario;
use crate::eval::models::EvalReport;
use crate::layout::{ModelDir, RunDir};
use crate::loss::Method;
use crate::model::l2_normalize;
use crate::report::{plot_matrix, plot_prototypes_pca, ReportError};
use crate::table::{Column, Table};

/// Summary of one perturbation run's refreshes (from its `refreshes.json` and `history.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DiagnosticsRow {
    /// Scenario.
    pub scenario: Scenario,
    /// Seed.
    pub seed: u64,
    /// Method.
    pub method: Method,
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

/// Reads the refresh diagnostics of every main run of a refreshing method (the registry's
/// [`Method::refreshes`]) under `out`.
pub fn diagnostics(cfg: &ExperimentConfig, out: &Path) -> Vec<DiagnosticsRow> {
    let mut rows = Vec::new();
    for &scenario in &cfg.scenarios {
        for &seed in &cfg.seeds {
            for m in cfg.methods.iter().copied().filter(Method::refreshes) {
                let dir = ModelDir::new(model_dir(out, scenario, seed, m));
                let read = |f: PathBuf| std::fs::read_to_string(f).ok();
                let (Some(r), Some(h)) = (read(dir.refreshes()), read(dir.history())) else {
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
                    scenario,
                    seed,
                    method: m,
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
    let mut t = Table::new([
        Column::text("scenario"),
        Column::number("seed"),
        Column::text("method"),
        Column::number("refreshes"),
        Column::number("mean ‖δ‖"),
        Column::number("max ‖δ‖"),
        Column::number("NN sim old"),
        Column::number("NN sim pseudo-old"),
        Column::number("own-nearest (min)"),
        Column::text("J before→after (last)"),
        Column::number("refresh s / train s"),
    ]);
    for r in rows {
        t.push(vec![
            r.scenario.to_string(),
            r.seed.to_string(),
            r.method.to_string(),
            r.refreshes.to_string(),
            format!("{:.3}", r.mean_delta),
            format!("{:.3}", r.max_delta),
            format!("{:.3}", r.nn_sim_old),
            format!("{:.3}", r.nn_sim_pseudo),
            format!("{:.2}", r.own_nearest_min),
            r.j_last
                .map(|j| format!("{:.3} → {:.3}", j.0, j.1))
                .unwrap_or_else(|| "–".into()),
            format!(
                "{:.2} / {:.0} ({:.2}%)",
                r.refresh_seconds,
                r.train_seconds,
                100.0 * r.refresh_seconds / r.train_seconds.max(1e-9)
            ),
        ]);
    }
    t.markdown()
}

/// Reads the old and pseudo-old prototypes a perturbation run saved in its checkpoint.
pub fn saved_prototypes(model_dir: &Path) -> Option<(Tensor, Tensor)> {
    let state = Tensor::read_safetensors(ModelDir::new(model_dir).checkpoint_compat()).ok()?;
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

/// The plots of one run: its compatibility matrix and, for each refreshing method that saved
/// them (NDPP, ODPP, UniBCT), the old against the pseudo-old prototypes (PCA).
pub fn plot_run(
    report: &EvalReport,
    dir: &Path,
    scenario: Scenario,
    seed: u64,
) -> Result<(), ReportError> {
    let run = RunDir::new(dir);
    plot_matrix(&report.matrix, &run.matrix_plot())?;
    for m in Method::all().filter(Method::refreshes) {
        if let Some((o, p)) = saved_prototypes(run.model(&m.model_name()).path()) {
            plot_prototypes_pca(
                &o,
                &p,
                &format!("{m}, {scenario}, seed {seed}"),
                &run.prototypes_plot(m.as_str()),
            )?;
        }
    }
    Ok(())
}
