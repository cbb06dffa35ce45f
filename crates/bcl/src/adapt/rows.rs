//! Adapters beside the methods in an evaluation: the row of a new model whose cross-test goes
//! through an adapter (new → old: its queries mapped, SLERP reading the old model's embedding
//! of the same query; old → new: the old gallery's vectors mapped and searched by the new
//! model's own queries) and that row's cells in the compatibility matrix. Its self-test is the
//! model's own: an adapter changes only what meets the old gallery.

use tch::Tensor;

use super::{input, AdaptError, Adapter, Companion, Direction};
use crate::eval::models::{parent, AdapterTag, EvalReport, ResultRow};
use crate::eval::{leave_one_out, RetrievalMetrics};
use crate::loss::Method;
use crate::model::Embedder;

/// The cross-test through `adapter` (leave-one-out over one labelled set): `new` and `old` are
/// the new and the old model's embeddings of the same items, in the same order.
pub fn adapted_cross(
    adapter: &Adapter,
    new: &Tensor,
    old: &Tensor,
    labels: &[i64],
) -> Result<RetrievalMetrics, AdaptError> {
    let (q, g) = match adapter.card.direction {
        Direction::NewToOld => {
            let companion = (adapter.spec().companion() == Companion::OldQuery).then_some(old);
            (adapter.apply(new, companion)?, old.shallow_clone())
        }
        Direction::OldToNew => (new.shallow_clone(), adapter.apply(old, None)?),
    };
    leave_one_out(&q, &g, labels).map_err(|e| input("adapted cross-test", e))
}

/// The tag of an adapter's row: its kind and the size of its support set.
pub fn tag(adapter: &Adapter) -> AdapterTag {
    AdapterTag {
        kind: adapter.card.kind.clone(),
        support: adapter.card.support.pairs,
    }
}

/// The model of `models` that `adapter` serves: the new model it maps from (new → old) or to
/// (old → new), found by the content id on the adapter's card; the adapter's other side must
/// be the model that new model is compatible with.
pub fn adapted_model(models: &[Embedder], adapter: &Adapter) -> Result<usize, AdaptError> {
    let c = &adapter.card;
    let (new_side, old_side) = match c.direction {
        Direction::NewToOld => (&c.from, &c.to),
        Direction::OldToNew => (&c.to, &c.from),
    };
    let who = |m: &super::ModelRef| {
        m.name
            .clone()
            .or_else(|| m.id.clone())
            .unwrap_or_else(|| "an unnamed model".into())
    };
    let here = || {
        models
            .iter()
            .map(|m| format!("{} ({})", m.card.name, m.card.id))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(i) = models
        .iter()
        .position(|m| new_side.id.as_deref() == Some(m.card.id.as_str()))
    else {
        return Err(input(
            "adapter",
            format!(
                "{} ({}) was fitted for the new model {}, which is not among the models \
                 evaluated: {}",
                adapter.dir().unwrap_or(std::path::Path::new("?")).display(),
                c.kind,
                who(new_side),
                here()
            ),
        ));
    };
    let Some(o) = parent(models, i) else {
        return Err(input(
            "adapter",
            format!(
                "its new model {} has no old model among the models evaluated (expected {})",
                models[i].card.name,
                who(old_side)
            ),
        ));
    };
    let (from, to) = match c.direction {
        Direction::NewToOld => (i, o),
        Direction::OldToNew => (o, i),
    };
    adapter.check_models(&models[from].card.id, &models[to].card.id)?;
    Ok(i)
}

/// Adds one row per adapter to `report`, an evaluation of `models` from their embeddings
/// `feats` of one labelled set: the row (after the models' rows, in `report.adapted`) and its
/// query row in the matrix, named `<model>+<kind>@<pairs>`, holding its cross-test against
/// the old model and, on its diagonal, the model's own self-test.
pub fn add_adapted_rows(
    report: &mut EvalReport,
    models: &[Embedder],
    feats: &[Tensor],
    labels: &[i64],
    adapters: &[Adapter],
) -> Result<(), AdaptError> {
    let indep_self = report.independent_self();
    for a in adapters {
        let i = adapted_model(models, a)?;
        let o = parent(models, i).expect("adapted_model checked the old model");
        let method = Method::named(&models[i].card.method)
            .map_err(|e| input("adapter", format!("{}: {e}", models[i].card.name)))?;
        let cross = adapted_cross(a, &feats[i], &feats[o], labels)?;
        let (oo, own) = match (&report.matrix.cells[o][o], &report.matrix.cells[i][i]) {
            (Some(oo), Some(own)) => (oo.clone(), own.clone()),
            _ => {
                return Err(input(
                    "adapter",
                    "the evaluation has no self-test cells for its models",
                ))
            }
        };
        let t = tag(a);
        let name = format!("{}+{t}", models[i].card.name);
        if report.matrix.models.contains(&name) {
            return Err(input(
                "adapter",
                format!("two adapters give the row '{name}': one of each kind and size per model"),
            ));
        }
        let row = ResultRow::from_cells(method, Some(t), &oo, &own, &cross, indep_self);
        report.push_adapted(&name, row, o, cross, Some(own));
    }
    Ok(())
}
