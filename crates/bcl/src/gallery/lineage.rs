//! The gallery's lineage beyond declared succession: adapters recorded on it ([`link`]), the
//! forward upgrade of its stored vectors through an old → new adapter, without re-embedding an
//! image ([`forward_upgrade`], each commit durable, resumable, the items tagged with the
//! adapter), cross-tests measured on the gallery's own items ([`measure`]), and the graph of
//! models and edges `bcl gallery status` shows ([`graph`]).

use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::ops::{check_source, embed_queries, register_model};
use super::{
    check_adapted, check_lineage, AdapterEdge, AdapterLink, CrossTest, GalleryError,
    GalleryManifest, GalleryStore, Lineage, ModelInfo, Result,
};
use crate::adapt::{Adapter, Companion, Direction};
use crate::data::Dataset;
use crate::model::{Embedder, ModelCard};

/// Adapters a gallery's lineage records at most (each is a deliberate `link`; the bound keeps
/// the manifest within a Milvus metadata row).
pub const MAX_ADAPTERS: usize = 64;

/// Measurements kept per (query model, adapter) pair: the latest, older ones dropped.
pub const MEASUREMENTS_PER_PAIR: usize = 8;

fn invalid(text: String) -> GalleryError {
    GalleryError::Invalid(text)
}

/// The edge an adapter's card describes (both models must be named by id).
fn edge_of(adapter: &Adapter) -> Result<AdapterEdge> {
    let c = &adapter.card;
    let (Some(from), Some(to)) = (c.from.id.clone(), c.to.id.clone()) else {
        return Err(invalid(format!(
            "adapter {} ({}) was fitted on bare vectors and names no model: a gallery's lineage \
             cannot vouch for it",
            c.id, c.kind
        )));
    };
    let name = |m: &crate::adapt::ModelRef, id: &str| m.name.clone().unwrap_or_else(|| id.into());
    Ok(AdapterEdge {
        id: c.id.clone(),
        kind: c.kind.clone(),
        maps_queries: c.direction == Direction::NewToOld,
        names: (name(&c.from, &from), name(&c.to, &to)),
        from,
        to,
    })
}

/// The query model an adapter's card names, as the lineage check sees it.
fn query_of(edge: &AdapterEdge, dim: usize) -> ModelInfo {
    ModelInfo {
        id: edge.from.clone(),
        name: edge.names.0.clone(),
        ..ModelInfo::external(&edge.from, dim)
    }
}

/// Checks that a forward (old → new) adapter can upgrade this gallery's vectors: no side
/// information (a gallery does not store it), output of the gallery's dimension (a gallery's
/// dimension is fixed), input of the dimension the old model's vectors are stored in, and the
/// old model recorded in the gallery.
fn check_forward(manifest: &GalleryManifest, adapter: &Adapter, edge: &AdapterEdge) -> Result<()> {
    let c = &adapter.card;
    if c.support.side_dim.is_some() {
        return Err(invalid(format!(
            "adapter {} (forward) was fitted with side information, which a gallery does not \
             store: fit it without",
            c.id
        )));
    }
    if c.to.dim != manifest.dim {
        return Err(invalid(format!(
            "adapter {} maps into dimension {}, the gallery holds dimension {} (a gallery's \
             dimension is fixed): build a gallery of the new model instead",
            c.id, c.to.dim, manifest.dim
        )));
    }
    if c.from.dim != manifest.dim {
        return Err(invalid(format!(
            "adapter {} reads vectors of dimension {}, the gallery stores dimension {}",
            c.id, c.from.dim, manifest.dim
        )));
    }
    if manifest.model(&edge.from).is_none() {
        return Err(invalid(format!(
            "adapter {} maps the vectors of model {} ({}), which this gallery has never held",
            c.id, edge.names.0, edge.from
        )));
    }
    Ok(())
}

/// Records `adapter` on the gallery's lineage (durably; once per adapter) after checking that
/// it joins this gallery: a new → old adapter must map into the space of every model with
/// vectors in the gallery (`force` overrides that, as for a search), a forward one must read
/// the vectors of a model the gallery holds and give vectors of its dimension.
pub fn link(
    store: &mut dyn GalleryStore,
    adapter: &Adapter,
    force: bool,
) -> Result<(Lineage, AdapterEdge)> {
    let edge = edge_of(adapter)?;
    let manifest = store.manifest();
    let lineage = if edge.maps_queries {
        check_adapted(
            manifest,
            &store.counts()?,
            &query_of(&edge, adapter.card.from.dim),
            &AdapterLink::from_card(&adapter.card),
            force,
        )?
    } else {
        check_forward(manifest, adapter, &edge)?;
        Lineage::Adapted {
            id: edge.id.clone(),
            kind: edge.kind.clone(),
        }
    };
    if !manifest.adapters.iter().any(|e| e.id == edge.id) {
        if manifest.adapters.len() >= MAX_ADAPTERS {
            return Err(invalid(format!(
                "the gallery's lineage records {MAX_ADAPTERS} adapters already, its limit"
            )));
        }
        let mut next = manifest.clone();
        next.adapters.push(edge.clone());
        store.set_manifest(next)?;
    }
    Ok((lineage, edge))
}

/// What a forward upgrade did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UpgradeReport {
    /// The id the upgraded items are tagged with (`adapter:<adapter id>`).
    pub tag: String,
    /// Items mapped by this call.
    pub mapped: usize,
    /// Items that were already mapped (an earlier, interrupted call).
    pub already: usize,
    /// Items of other models, left as they are.
    pub others: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Upgrades the stored vectors of the adapter's old model into the new model's space through a
/// forward (old → new) adapter, `commit` items per durable write, `on_commit(done, total)`
/// after each: no image is re-embedded. The items are tagged with the adapter (a pseudo-model
/// `adapter:<id>` in the manifest, in the new model's space), so the new model's queries may
/// search them, and a later re-embedding backfill with the new model replaces them. Resumable:
/// a second call maps only what is still the old model's.
pub fn forward_upgrade(
    store: &mut dyn GalleryStore,
    adapter: &Adapter,
    commit: usize,
    on_commit: &mut dyn FnMut(usize, usize),
) -> Result<UpgradeReport> {
    let start = Instant::now();
    let edge = edge_of(adapter)?;
    if edge.maps_queries {
        return Err(invalid(format!(
            "adapter {} ({}) maps queries into an old space; a forward upgrade needs an old → \
             new adapter (kind forward)",
            edge.id, edge.kind
        )));
    }
    link(store, adapter, false)?;
    let pseudo = ModelInfo::forwarded(
        &AdapterLink::from_card(&adapter.card),
        &edge.names.0,
        &edge.names.1,
    );
    register_model(store, &pseudo)?;
    let items = store.item_models()?;
    let todo: Vec<u64> = items
        .iter()
        .filter(|(_, m)| **m == edge.from)
        .map(|(id, _)| *id)
        .collect();
    let already = items.values().filter(|m| **m == pseudo.id).count();
    let others = items.len() - todo.len() - already;
    let dim = store.manifest().dim;
    let mut done = 0;
    for chunk in todo.chunks(commit.max(1)) {
        let stored = store.vectors(chunk)?;
        let x = Tensor::from_slice(&stored).view([chunk.len() as i64, dim as i64]);
        let y = adapter
            .apply(&x, None)
            .map_err(|e| invalid(e.to_string()))?
            .to_kind(Kind::Float)
            .contiguous();
        let mapped = Vec::<f32>::try_from(y.view([-1]))
            .map_err(|e| GalleryError::Index(format!("mapped vectors to host memory: {e}")))?;
        store.add(&pseudo.id, chunk, &mapped)?;
        done += chunk.len();
        on_commit(done, todo.len());
    }
    Ok(UpgradeReport {
        tag: pseudo.id,
        mapped: done,
        already,
        others,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Checks the second model a new → old adapter reads beside the query model: SLERP needs
/// `old`, the model it maps into (the gallery's), to embed each query too; the other kinds
/// read none. `missing` tells the caller's user how to give the old model.
pub fn check_companion(adapter: &Adapter, old: Option<&ModelCard>, missing: &str) -> Result<()> {
    let kind = &adapter.card.kind;
    match (adapter.spec().companion() == Companion::OldQuery, old) {
        (true, None) => Err(invalid(format!(
            "a {kind} adapter interpolates between the old and the new model's embedding of \
             each query: {missing}"
        ))),
        (true, Some(o)) if adapter.card.to.id.as_deref() != Some(o.id.as_str()) => {
            Err(invalid(format!(
                "model {} ({}) is not the one the adapter maps into ({})",
                o.name,
                o.id,
                adapter.card.to.id.as_deref().unwrap_or("unnamed vectors")
            )))
        }
        (false, Some(o)) => Err(invalid(format!(
            "a {kind} adapter reads only the query model's embeddings: no second model ({} \
             was given)",
            o.name
        ))),
        _ => Ok(()),
    }
}

/// The embeddings of `data` by `model` through `adapter` (new → old), as rows of the
/// adapter's output space: SLERP also reads `old`'s embedding of each item (it must be the
/// model the adapter maps into); the other kinds read none ([`check_companion`], `missing`
/// its hint).
pub fn adapted_queries(
    adapter: &Adapter,
    model: &Embedder,
    old: Option<&Embedder>,
    data: &Dataset,
    batch: usize,
    missing: &str,
) -> Result<Tensor> {
    let embed = |e: &Embedder| -> Result<Tensor> {
        let v = embed_queries(e, data, batch, e.dim() as usize)?;
        Ok(Tensor::from_slice(&v).view([data.len() as i64, e.dim()]))
    };
    check_companion(adapter, old.map(|o| &o.card), missing)?;
    let companion = match old {
        Some(o) => Some(embed(o)?),
        None => None,
    };
    adapter
        .apply(&embed(model)?, companion.as_ref())
        .map_err(|e| invalid(e.to_string()))
}

/// Measures the cross-test of `model`'s queries (through a new → old `adapter`, with `old` for
/// SLERP) on the gallery's own items: the images of its data source `data` embedded as queries
/// against the vectors the gallery holds for them, leave-one-out (an item does not find
/// itself), relevant the items of its class. The lineage check comes first (`force` overrides
/// it; its verdict is returned); the result is recorded in the manifest and returned.
pub fn measure(
    store: &mut dyn GalleryStore,
    model: &Embedder,
    adapter: Option<(&Adapter, Option<&Embedder>)>,
    data: &Dataset,
    batch: usize,
    force: bool,
) -> Result<(Lineage, CrossTest)> {
    check_source(&*store, data)?;
    let info = ModelInfo::from_card(&model.card);
    let counts = store.counts()?;
    let dim = store.manifest().dim;
    let (lineage, queries) = match adapter {
        Some((a, old)) => {
            let lineage = check_adapted(
                store.manifest(),
                &counts,
                &info,
                &AdapterLink::from_card(&a.card),
                force,
            )?;
            let hint = "the old model must embed them too";
            (lineage, adapted_queries(a, model, old, data, batch, hint)?)
        }
        None => {
            let lineage = check_lineage(store.manifest(), &counts, &info, force)?;
            let v = embed_queries(model, data, batch, dim)?;
            let q = Tensor::from_slice(&v).view([data.len() as i64, dim as i64]);
            (lineage, q)
        }
    };
    let ids: Vec<u64> = data.ids.iter().map(|&i| i as u64).collect();
    let stored = store.vectors(&ids)?;
    let gallery = Tensor::from_slice(&stored).view([ids.len() as i64, dim as i64]);
    let m = crate::eval::leave_one_out(&queries, &gallery, &data.labels)
        .map_err(|e| invalid(e.to_string()))?;
    let t = CrossTest {
        query: info.id,
        adapter: adapter.map(|(a, _)| a.card.id.clone()),
        map: m.map,
        recall_at_1: m.recall_at.get(&1).copied().unwrap_or(f64::NAN),
        items: ids.len(),
        gallery: counts,
        unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let mut next = store.manifest().clone();
    record(&mut next.measured, t.clone());
    store.set_manifest(next)?;
    Ok((lineage, t))
}

/// Appends `t` to `measured`, dropping the oldest measurements of the same (query model,
/// adapter) pair beyond [`MEASUREMENTS_PER_PAIR`].
fn record(measured: &mut Vec<CrossTest>, t: CrossTest) {
    let same = |m: &CrossTest| m.query == t.query && m.adapter == t.adapter;
    let mut left = measured.iter().filter(|m| same(m)).count();
    measured.retain(|m| {
        if !same(m) {
            return true;
        }
        left -= 1;
        left + 1 < MEASUREMENTS_PER_PAIR
    });
    measured.push(t);
}

/// One edge of a gallery's lineage graph.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Edge {
    /// The model whose queries (or, for `forward`, stored vectors) the edge starts from.
    pub from: String,
    /// Its name.
    pub from_name: String,
    /// The model into whose space the edge leads.
    pub to: String,
    /// Its name.
    pub to_name: String,
    /// `declared` (the model's card declares compatibility), `adapter` (a new → old adapter
    /// maps its queries) or `forward` (an old → new adapter mapped stored vectors).
    pub kind: String,
    /// The adapter's kind and id, for adapter edges.
    pub adapter: Option<(String, String)>,
    /// The latest cross-test measured along the edge, if one was recorded.
    pub measured: Option<CrossTest>,
}

/// The gallery's lineage as a graph: every declared succession between models it records,
/// every adapter recorded on it, each with the latest cross-test measured along it (for a
/// forward edge: the new model's own queries against a gallery holding the upgraded vectors).
pub fn graph(manifest: &GalleryManifest) -> Vec<Edge> {
    let name = |id: &str| {
        manifest
            .model(id)
            .map_or_else(|| id.to_string(), |m| m.name.clone())
    };
    let latest = |pick: &dyn Fn(&CrossTest) -> bool| {
        manifest.measured.iter().rev().find(|t| pick(t)).cloned()
    };
    let mut edges = Vec::new();
    for m in &manifest.models {
        let Some(c) = &m.compatible_with else {
            continue;
        };
        if manifest.model(c).is_none() {
            continue;
        }
        edges.push(Edge {
            from: m.id.clone(),
            from_name: m.name.clone(),
            to: c.clone(),
            to_name: name(c),
            kind: "declared".into(),
            adapter: None,
            measured: latest(&|t| t.query == m.id && t.adapter.is_none()),
        });
    }
    for e in &manifest.adapters {
        let tag = format!("adapter:{}", e.id);
        let measured = if e.maps_queries {
            latest(&|t| t.query == e.from && t.adapter.as_deref() == Some(e.id.as_str()))
        } else {
            latest(&|t| t.query == e.to && t.adapter.is_none() && t.gallery.contains_key(&tag))
        };
        edges.push(Edge {
            from: e.from.clone(),
            from_name: e.names.0.clone(),
            to: e.to.clone(),
            to_name: e.names.1.clone(),
            kind: if e.maps_queries { "adapter" } else { "forward" }.into(),
            adapter: Some((e.kind.clone(), e.id.clone())),
            measured,
        });
    }
    edges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(query: &str, map: f64) -> CrossTest {
        CrossTest {
            query: query.into(),
            adapter: None,
            map,
            recall_at_1: map,
            items: 1,
            gallery: Default::default(),
            unix_s: 0,
        }
    }

    #[test]
    fn measurements_keep_the_latest_per_pair() {
        let mut m = Vec::new();
        record(&mut m, t("other", 0.5));
        for i in 0..12 {
            record(&mut m, t("q", i as f64));
        }
        let kept: Vec<f64> = m.iter().filter(|x| x.query == "q").map(|x| x.map).collect();
        assert_eq!(kept, (4..12).map(f64::from).collect::<Vec<_>>());
        assert_eq!(m[0].query, "other", "other pairs untouched");
    }
}
