//! Adapters as rows of an experiment (`[adapters]`): in every (scenario, seed) run, each kind
//! is fitted after training between each listed method's new model and the old model, on the
//! first N images of each class of the training or the validation part (N a knob: one row per
//! support size; never the test part), and scored on the test set like the models; the rows
//! join the main table and its paired comparisons, and the run's compatibility matrix. Fitted adapters are kept under the run directory
//! (`adapters/<name>/`), the rows cached in `adapters.json` while models and settings are
//! unchanged.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{cached, model_ids};
use crate::adapt::rows::{adapted_cross, tag};
use crate::adapt::{Adapter, FitConfig, ModelRef, Models, SupportSet};
use crate::data::{DataConfig, Part};
use crate::eval::models::{EvalReport, ResultRow};
use crate::eval::RetrievalMetrics;
use crate::layout::RunDir;
use crate::loss::Method;
use crate::model::Embedder;
use crate::run::{RunConfig, RunError, StepOptions};

/// `[adapters]`: which adapters an experiment fits and scores beside its methods.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptersConfig {
    /// Kinds fitted (`bcl adapt kinds`).
    pub kinds: Vec<String>,
    /// Methods of the main table whose new models get them (default: independent, the
    /// post-hoc baseline: a model trained on its own, made compatible afterwards).
    pub methods: Vec<Method>,
    /// Support sizes: the first N images of each class of `part`, embedded by both models
    /// (one row per size).
    pub support_per_class: Vec<usize>,
    /// The part the support set comes from: `train` (the images the models trained on, the
    /// default) or `validation` (held-out images of the training classes that no model saw;
    /// needs `[data] validation_per_class`). Never `test`: the rows are scored there.
    pub part: Part,
    /// The kinds' settings; the seed of the kinds that train is the run's, 3000 + seed (as the
    /// old model's is 1000 + seed), whatever `fit.seed` says.
    pub fit: FitConfig,
}

impl Default for AdaptersConfig {
    fn default() -> Self {
        Self {
            kinds: crate::adapt::kind_names()
                .into_iter()
                .map(String::from)
                .collect(),
            methods: vec![Method::INDEPENDENT],
            support_per_class: vec![100],
            part: Part::Train,
            fit: FitConfig::default(),
        }
    }
}

impl AdaptersConfig {
    /// Checks the kinds exist, the methods are the experiment's, the sizes are positive, the
    /// support part exists in `data` and is not the test part, and the settings are in range.
    pub fn validate(&self, methods: &[Method], data: &DataConfig) -> Result<(), String> {
        if self.kinds.is_empty() || self.methods.is_empty() || self.support_per_class.is_empty() {
            return Err(
                "[adapters]: kinds, methods and support_per_class each need one entry".into(),
            );
        }
        for k in &self.kinds {
            crate::adapt::kind(k).map_err(|e| format!("[adapters] kinds: {e}"))?;
        }
        for m in &self.methods {
            if !methods.contains(m) {
                return Err(format!(
                    "[adapters] methods: '{m}' is not among the experiment's methods (its new \
                     model is what the adapter maps)"
                ));
            }
        }
        if self.support_per_class.contains(&0) {
            return Err("[adapters] support_per_class: every size must be at least 1".into());
        }
        support_part_ok(self.part, data).map_err(|e| format!("[adapters] part: {e}"))?;
        self.fit
            .validate()
            .map_err(|e| format!("[adapters] fit: {e}"))
    }
}

/// An adapted row and its cross-test cell (the matrix's new row).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdaptedRun {
    /// The row.
    pub row: ResultRow,
    /// Its cross-test against the old model.
    pub cross: RetrievalMetrics,
}

/// The name of a fitted adapter's directory: `new-<method>-<kind>-<pairs>`.
fn adapter_name(method: Method, kind: &str, pairs: usize) -> String {
    format!("{}-{kind}-{pairs}", method.model_name())
}

/// Fits and scores one run's adapters (cached in the run's `adapters.json`): `dirs` are the
/// run's model directories (the old model first, then `methods`' in order) and `report` its
/// evaluation.
#[allow(clippy::too_many_arguments)]
pub fn adapted_rows(
    cfg: &AdaptersConfig,
    rc: &RunConfig,
    methods: &[Method],
    dirs: &[PathBuf],
    report: &EvalReport,
    seed: u64,
    dir: &Path,
    opts: &StepOptions,
) -> Result<Vec<AdaptedRun>, RunError> {
    let run = RunDir::new(dir);
    cached(
        &run.adapters_cache(),
        &(model_ids(dirs)?, cfg.clone()),
        || {
            let old = Embedder::load(&dirs[0], opts.device)?;
            let support = crate::data::open_part(&rc.data, cfg.part)?;
            let test = crate::data::open_test(&rc.data)?;
            let old_test = old.embed_dataset(&test, rc.eval_batch);
            let indep_self = report.independent_self();
            let fit = FitConfig {
                seed: 3000 + seed,
                ..cfg.fit.clone()
            };
            let mut out = Vec::new();
            for &m in &cfg.methods {
                let k = methods
                    .iter()
                    .position(|x| *x == m)
                    .expect("validated: the experiment's method");
                let new = Embedder::load(&dirs[k + 1], opts.device)?;
                let new_test = new.embed_dataset(&test, rc.eval_batch);
                let own = report.matrix.at(k + 1, k + 1);
                let oo = report.matrix.at(0, 0);
                let mut sizes: Vec<(usize, usize)> = Vec::new();
                for &n in &cfg.support_per_class {
                    let pairs = support_set(&old, &new, &support, cfg.part, n, rc)?;
                    if let Some((m0, _)) = sizes.iter().find(|(_, p)| *p == pairs.len()) {
                        return Err(RunError::Invalid(format!(
                            "[adapters] support_per_class: {n} and {m0} images per class give \
                             the same {} pairs (no class has more than {} {} images): keep one \
                             of them",
                            pairs.len(),
                            n.min(*m0),
                            cfg.part
                        )));
                    }
                    sizes.push((n, pairs.len()));
                    let models = Models {
                        old: ModelRef::of(&old),
                        new: ModelRef::of(&new),
                    };
                    for kind in &cfg.kinds {
                        tracing::info!(method = %m, kind, per_class = n, "fitting an adapter");
                        let mut a = Adapter::fit(kind, &pairs, &fit, &models, opts.device)?;
                        a.save(&run.adapter(&adapter_name(m, kind, pairs.len())))?;
                        let cross = adapted_cross(&a, &new_test, &old_test, &test.labels)?;
                        let row =
                            ResultRow::from_cells(m, Some(tag(&a)), oo, own, &cross, indep_self);
                        out.push(AdaptedRun { row, cross });
                    }
                }
            }
            Ok(out)
        },
    )
}

/// The run's old → new adapters (`forward`), for the backfill curve of a gallery upgraded
/// through each.
pub fn forward_adapters(
    run: &RunDir,
    adapted: &[AdaptedRun],
) -> Vec<super::backfill::ForwardAdapter> {
    adapted
        .iter()
        .filter_map(|a| {
            let t = a.row.adapter.as_ref()?;
            let old_to_new = crate::adapt::kind(&t.kind)
                .is_ok_and(|k| k.direction() == crate::adapt::Direction::OldToNew);
            old_to_new.then(|| {
                let dir = run.adapter(&adapter_name(a.row.method, &t.kind, t.support));
                (a.row.method, t.clone(), dir)
            })
        })
        .collect()
}

/// Whether an adapter's support set may come from `part` of `data`: the training part, or the
/// validation part where `data` holds one out; never the test part (the rows are scored
/// there, and a map fitted on it would be chosen on the figures it reports).
pub(crate) fn support_part_ok(part: Part, data: &DataConfig) -> Result<(), String> {
    match part {
        Part::Train => Ok(()),
        Part::Validation if data.validation_per_class.is_some() => Ok(()),
        Part::Validation => Err(concat!(
            "the validation part needs [data] validation_per_class ",
            "(images per class that no model trains on)"
        )
        .into()),
        Part::Test => Err(concat!(
            "an adapter is never fitted on the test part, where its row is scored: ",
            "use train or validation"
        )
        .into()),
    }
}

/// The support set of an adapter an experiment fits: the first `per_class` images of each
/// class of `data` (the run's `part`), embedded by both models.
pub(crate) fn support_set(
    old: &Embedder,
    new: &Embedder,
    data: &crate::data::Dataset,
    part: Part,
    per_class: usize,
    rc: &RunConfig,
) -> Result<SupportSet, RunError> {
    Ok(SupportSet::embedded(
        old,
        new,
        &data.take_per_class(per_class),
        rc.eval_batch,
        format!(
            "the first {per_class} {part} images of each class of {}",
            rc.data.dir.display()
        ),
    )?)
}

/// Puts `adapted` into `report`: the rows after the models', and each one's query row in the
/// matrix (its cross-test against the old model, its model's self-test on the diagonal).
pub fn add_to_report(report: &mut EvalReport, methods: &[Method], adapted: &[AdaptedRun]) {
    for a in adapted {
        let Some(t) = &a.row.adapter else { continue };
        let k = methods.iter().position(|x| *x == a.row.method);
        let own = k.and_then(|k| report.matrix.cells[k + 1][k + 1].clone());
        let name = format!("{}+{t}", a.row.method.model_name());
        report.push_adapted(&name, a.row.clone(), 0, a.cross.clone(), own);
    }
}
