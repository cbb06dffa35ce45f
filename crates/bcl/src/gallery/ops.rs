//! Gallery operations over a store and a model: build (embed a data set), add, search with a
//! lineage check, backfill (re-embed a share with the successor while the gallery keeps
//! serving mixed vectors), status, and the recall of approximate search against exact.

use bcl_dist::Collective;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use super::{
    check_adapted, check_lineage, AdapterLink, DataSource, GalleryError, GalleryStore, Hit,
    Lineage, ModelInfo, Result,
};
use crate::data::{hex, Dataset};
use crate::model::Embedder;

/// Options shared by the operations that embed images.
#[derive(Debug, Clone)]
pub struct EmbedOptions {
    /// Images per forward pass.
    pub batch: usize,
    /// Items per durable commit (one log record each).
    pub commit: usize,
    /// Show a progress bar.
    pub progress: bool,
    /// Override a failed lineage check (the result says so).
    pub force: bool,
}

impl Default for EmbedOptions {
    fn default() -> Self {
        Self {
            batch: 256,
            commit: 4096,
            progress: false,
            force: false,
        }
    }
}

/// Content fingerprint of a data set (pixels, labels, ids, shape): 16 hex characters.
pub fn dataset_fingerprint(d: &Dataset) -> String {
    let mut h = Sha256::new();
    for v in [d.channels, d.rows, d.cols, d.len()] {
        h.update((v as u64).to_le_bytes());
    }
    h.update(&d.pixels);
    d.labels.iter().for_each(|l| h.update(l.to_le_bytes()));
    d.ids
        .iter()
        .for_each(|i| h.update((*i as u64).to_le_bytes()));
    hex(&h.finalize()[..8])
}

fn bar(n: usize, show: bool, what: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(n as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} items, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(what.to_string());
    pb
}

/// Normalised embeddings (row-major f32) of the items at `positions` in a gallery of
/// dimension `dim`: the model's own, or (for a model embedding in another dimension than the
/// model it is compatible with) through its projection head into that model's space.
pub fn embed_items(
    embedder: &Embedder,
    data: &Dataset,
    positions: &[usize],
    batch: usize,
    dim: usize,
) -> Result<Vec<f32>> {
    in_gallery_space(
        embedder,
        &embedder.embed_positions(data, positions, batch),
        dim,
    )
}

/// A model's embeddings as row-major vectors of a gallery of dimension `dim` (see
/// [`embed_items`]).
fn in_gallery_space(embedder: &Embedder, own: &Tensor, dim: usize) -> Result<Vec<f32>> {
    let v = embedder
        .queries_for(own, dim as i64)
        .map_err(|e| GalleryError::Invalid(e.to_string()))?;
    host_vectors(&v)
}

/// Embeddings `[n, d]` as row-major float32 values in host memory.
fn host_vectors(e: &Tensor) -> Result<Vec<f32>> {
    let e = e.to_kind(Kind::Float).contiguous();
    Vec::<f32>::try_from(e.view([-1]))
        .map_err(|e| GalleryError::Index(format!("embeddings to host memory: {e}")))
}

fn check_input_shape(embedder: &Embedder, data: &Dataset) -> Result<()> {
    let shape = [data.channels, data.rows, data.cols];
    if embedder.card.input_shape != shape {
        return Err(GalleryError::Invalid(format!(
            "model {} expects images of shape {:?}, the data set has {:?}",
            embedder.card.name, embedder.card.input_shape, shape
        )));
    }
    Ok(())
}

/// Registers `model` in the manifest if it is new (durably, before any vector names it).
pub fn register_model(store: &mut dyn GalleryStore, model: &ModelInfo) -> Result<()> {
    if let Some(m) = store.manifest().model(&model.id) {
        if m != model {
            return Err(GalleryError::Invalid(format!(
                "the gallery records model {} with other settings ({m:?})",
                model.id
            )));
        }
        return Ok(());
    }
    let mut next = store.manifest().clone();
    next.models.push(model.clone());
    store.set_manifest(next)
}

/// Embeds the items at `positions` with `embedder` and adds them in commits of
/// `opts.commit`, after the lineage check (`opts.force` overrides it; the verdict is
/// returned); `on_commit(done, total)` is called after each durable commit.
pub fn embed_into(
    store: &mut dyn GalleryStore,
    embedder: &Embedder,
    data: &Dataset,
    positions: &[usize],
    opts: &EmbedOptions,
    on_commit: &mut dyn FnMut(usize, usize),
) -> Result<Lineage> {
    check_input_shape(embedder, data)?;
    let model = ModelInfo::from_card(&embedder.card);
    let lineage = check_lineage(store.manifest(), &store.counts()?, &model, opts.force)?;
    embed_checked(
        store,
        embedder,
        data,
        positions,
        opts,
        on_commit,
        &bcl_dist::Single,
    )?;
    Ok(lineage)
}

/// [`embed_into`] after its checks (the caller made them), the ranks of `dist` sharing each
/// commit's items (rank 0 holds the store; [`follow_build`] is the other ranks' side).
fn embed_checked(
    store: &mut dyn GalleryStore,
    embedder: &Embedder,
    data: &Dataset,
    positions: &[usize],
    opts: &EmbedOptions,
    on_commit: &mut dyn FnMut(usize, usize),
    dist: &dyn Collective,
) -> Result<()> {
    let model = ModelInfo::from_card(&embedder.card);
    register_model(store, &model)?;
    let pb = bar(positions.len(), opts.progress, &embedder.card.name);
    let mut done = 0;
    let dim = store.manifest().dim;
    embed_shared(
        embedder,
        data,
        positions,
        dim,
        opts,
        dist,
        &mut |chunk, v| {
            let ids: Vec<u64> = chunk.iter().map(|&i| data.ids[i] as u64).collect();
            store.add(&model.id, &ids, v)?;
            done += chunk.len();
            pb.inc(chunk.len() as u64);
            on_commit(done, positions.len());
            Ok(())
        },
    )?;
    pb.finish_and_clear();
    Ok(())
}

/// Where rank 0 puts each commit's positions and vectors (row-major).
type CommitSink<'a> = dyn FnMut(&[usize], &[f32]) -> Result<()> + 'a;

/// Embeds `positions` of `data` commit by commit (`opts.commit` items each) as vectors of a
/// gallery of dimension `dim`, the ranks of `dist` sharing each commit's items; rank 0's
/// `sink` receives each commit's positions and vectors (row-major), in order.
fn embed_shared(
    embedder: &Embedder,
    data: &Dataset,
    positions: &[usize],
    dim: usize,
    opts: &EmbedOptions,
    dist: &dyn Collective,
    sink: &mut CommitSink,
) -> Result<()> {
    for chunk in positions.chunks(opts.commit.max(1)) {
        let own = embedder.embed_positions_on(data, chunk, opts.batch, dist)?;
        let v = in_gallery_space(embedder, &own, dim)?;
        if dist.is_primary() {
            sink(chunk, &v)?;
        }
    }
    Ok(())
}

/// Adds precomputed vectors (`n × dim`, row-major) of `model` with consecutive ids from
/// `first_id` (default: one past the largest id in the gallery), in commits of `opts.commit`,
/// after the lineage check; returns the verdict and the ids used.
pub fn add_vectors(
    store: &mut dyn GalleryStore,
    model: &ModelInfo,
    first_id: Option<u64>,
    vectors: &[f32],
    opts: &EmbedOptions,
    on_commit: &mut dyn FnMut(usize, usize),
) -> Result<(Lineage, std::ops::Range<u64>)> {
    let dim = store.manifest().dim;
    let lineage = check_lineage(store.manifest(), &store.counts()?, model, opts.force)?;
    if vectors.is_empty() || !vectors.len().is_multiple_of(dim) {
        return Err(GalleryError::Invalid(format!(
            "{} values are not a whole number of vectors of dimension {dim}",
            vectors.len()
        )));
    }
    register_model(store, model)?;
    let first = match first_id {
        Some(f) => f,
        None => store.item_models()?.keys().next_back().map_or(0, |m| m + 1),
    };
    let n = vectors.len() / dim;
    let mut done = 0;
    for (c, rows) in vectors.chunks(opts.commit.max(1) * dim).enumerate() {
        let start = first + (c * opts.commit.max(1)) as u64;
        let ids: Vec<u64> = (start..start + (rows.len() / dim) as u64).collect();
        store.add(&model.id, &ids, rows)?;
        done += ids.len();
        on_commit(done, n);
    }
    store.checkpoint()?;
    Ok((lineage, first..first + n as u64))
}

/// What `build` made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildReport {
    /// Items embedded.
    pub items: usize,
    /// The model that embedded them.
    pub model: ModelInfo,
}

/// Which data configuration and split a gallery's items were read from.
#[derive(Debug, Clone)]
pub struct DataOrigin {
    /// The data configuration.
    pub data: crate::data::DataConfig,
    /// Which part of the data set.
    pub split: crate::data::Part,
    /// Only the first N items of each class of the split.
    pub per_class: Option<usize>,
}

/// Fills a new, empty gallery (made by [`super::create`] with the model's dimension) with every
/// item of `data` embedded by `embedder`, recording the data source so a backfill can re-embed
/// the same images.
pub fn build(
    store: &mut dyn GalleryStore,
    embedder: &Embedder,
    data: &Dataset,
    origin: &DataOrigin,
    opts: &EmbedOptions,
    on_commit: &mut dyn FnMut(usize, usize),
) -> Result<BuildReport> {
    build_on(
        Ok(store),
        embedder,
        data,
        origin,
        opts,
        on_commit,
        &bcl_dist::Single,
    )
}

/// The checks of a build and the data source written into the empty gallery's manifest.
fn prepare_build(
    store: &mut dyn GalleryStore,
    embedder: &Embedder,
    data: &Dataset,
    origin: &DataOrigin,
    opts: &EmbedOptions,
) -> Result<()> {
    check_input_shape(embedder, data)?;
    let model = ModelInfo::from_card(&embedder.card);
    if !store.is_empty() || store.manifest().dim != model.dim {
        return Err(GalleryError::Invalid(format!(
            "build needs an empty gallery of dimension {} (this one: {} items, dimension {})",
            model.dim,
            store.len(),
            store.manifest().dim
        )));
    }
    let mut manifest = store.manifest().clone();
    manifest.source = Some(DataSource {
        data: origin.data.clone(),
        split: origin.split,
        per_class: origin.per_class,
        count: data.len(),
        fingerprint: dataset_fingerprint(data),
    });
    store.set_manifest(manifest)?;
    check_lineage(store.manifest(), &store.counts()?, &model, opts.force)?;
    Ok(())
}

/// [`build`] on rank 0 of `dist`, the other ranks (running [`follow_build`] with the same model,
/// data and options) embedding their share of every commit. `store` is `Err` with rank 0's
/// reason when it could not be created: every rank then stops.
#[allow(clippy::too_many_arguments)]
pub fn build_on(
    store: Result<&mut dyn GalleryStore>,
    embedder: &Embedder,
    data: &Dataset,
    origin: &DataOrigin,
    opts: &EmbedOptions,
    on_commit: &mut dyn FnMut(usize, usize),
    dist: &dyn Collective,
) -> Result<BuildReport> {
    let ready = store.and_then(|s| {
        prepare_build(s, embedder, data, origin, opts)?;
        Ok(s)
    });
    let store = bcl_dist::agree(dist, ready, peer_failed)?;
    let all: Vec<usize> = (0..data.len()).collect();
    embed_checked(store, embedder, data, &all, opts, on_commit, dist)?;
    store.checkpoint()?;
    Ok(BuildReport {
        items: data.len(),
        model: ModelInfo::from_card(&embedder.card),
    })
}

/// Another rank's failure in a shared build.
fn peer_failed(rank: usize) -> GalleryError {
    GalleryError::Invalid(format!("rank {rank} failed (its log says why)"))
}

/// The side of [`build_on`] that ranks other than 0 run: they embed their share of every
/// commit and send it to rank 0.
pub fn follow_build(
    embedder: &Embedder,
    data: &Dataset,
    opts: &EmbedOptions,
    dist: &dyn Collective,
) -> Result<()> {
    bcl_dist::agree(dist, check_input_shape(embedder, data), peer_failed)?;
    let all: Vec<usize> = (0..data.len()).collect();
    let dim = embedder.dim() as usize;
    embed_shared(embedder, data, &all, dim, opts, dist, &mut |_, _| Ok(()))
}

/// Loads the data set a gallery was built from (its recorded configuration, split and
/// per-class limit); [`check_source`] then confirms it is the same.
pub fn load_source(src: &DataSource) -> std::result::Result<Dataset, crate::data::DataError> {
    let d = crate::data::open_part(&src.data, src.split)?;
    Ok(match src.per_class {
        Some(n) => d.take_per_class(n),
        None => d,
    })
}

/// Checks that `data` is the data set the gallery was built from.
pub fn check_source(store: &dyn GalleryStore, data: &Dataset) -> Result<()> {
    let Some(src) = &store.manifest().source else {
        return Err(GalleryError::Invalid(
            "this gallery was filled with vectors, not from a data set: there are no images to \
             re-embed"
                .into(),
        ));
    };
    let fp = dataset_fingerprint(data);
    if src.count != data.len() || src.fingerprint != fp {
        return Err(GalleryError::Invalid(format!(
            "the data set ({} items, fingerprint {fp}) is not the one the gallery was built from \
             ({} items, fingerprint {}, {} split of {})",
            data.len(),
            src.count,
            src.fingerprint,
            src.split,
            src.data.dir.display()
        )));
    }
    Ok(())
}

/// How a backfill picks the next items to re-embed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BackfillStrategy {
    /// A seeded random order (the default: every item equally likely to be refreshed early,
    /// so the mixed gallery stays an unbiased sample; the curve in docs/results.md uses it).
    #[default]
    Random,
    /// Ascending item id (e.g. oldest first when ids are ingestion order).
    IdOrder,
}

/// What a backfill did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackfillReport {
    /// Items re-embedded by this call.
    pub reembedded: usize,
    /// Items now embedded by the new model.
    pub by_new_model: usize,
    /// Items in the gallery.
    pub total: usize,
    /// The lineage verdict for the new model.
    pub lineage: String,
}

/// The order in which `strategy` visits the gallery's data-set positions.
pub fn backfill_positions(n: usize, strategy: BackfillStrategy, seed: u64) -> Vec<usize> {
    match strategy {
        BackfillStrategy::Random => crate::eval::deploy::backfill_order(n, seed),
        BackfillStrategy::IdOrder => (0..n).collect(),
    }
}

/// How far and in which order a backfill goes.
#[derive(Debug, Clone, Copy)]
pub struct BackfillPlan {
    /// Share of the gallery the new model should have embedded at the end (0 to 1).
    pub fraction: f64,
    /// The order of re-embedding.
    pub strategy: BackfillStrategy,
    /// Seed of the random order.
    pub seed: u64,
}

/// The items a backfill still has to re-embed: data-set positions in the plan's order, until
/// `plan.fraction` of the gallery would be `model`'s.
#[derive(Debug, Clone)]
pub struct BackfillTodo {
    /// Positions in the data set to re-embed, in order.
    pub positions: Vec<usize>,
    /// Items the new model will have embedded when they are done.
    pub by_new_model: usize,
    /// Items in the gallery.
    pub total: usize,
    /// The lineage verdict for the new model.
    pub lineage: Lineage,
}

/// Checks a backfill (fraction, data source, lineage) and lists what remains to re-embed.
pub fn backfill_todo(
    store: &dyn GalleryStore,
    model: &ModelInfo,
    data: &Dataset,
    plan: BackfillPlan,
    force: bool,
) -> Result<BackfillTodo> {
    let BackfillPlan {
        fraction,
        strategy,
        seed,
    } = plan;
    if !(0.0..=1.0).contains(&fraction) || fraction.is_nan() {
        return Err(GalleryError::Invalid(format!(
            "backfill fraction {fraction}: expected a share between 0 and 1"
        )));
    }
    check_source(store, data)?;
    let lineage = check_lineage(store.manifest(), &store.counts()?, model, force)?;
    let items = store.item_models()?;
    let total = items.len();
    let target = ((fraction * total as f64).round() as usize).min(total);
    let mut done = items.values().filter(|m| **m == model.id).count();
    let mut positions = Vec::new();
    for p in backfill_positions(data.len(), strategy, seed) {
        if done >= target {
            break;
        }
        let id = data.ids[p] as u64;
        match items.get(&id) {
            Some(m) if *m != model.id => {
                positions.push(p);
                done += 1;
            }
            _ => {}
        }
    }
    Ok(BackfillTodo {
        positions,
        by_new_model: done,
        total,
        lineage,
    })
}

/// Re-embeds items with `embedder` until `plan.fraction` of the gallery is the new model's,
/// in the strategy's order; items already re-embedded count, so the call is resumable and a
/// second call with a larger fraction continues where the first stopped.
pub fn backfill(
    store: &mut dyn GalleryStore,
    embedder: &Embedder,
    data: &Dataset,
    plan: BackfillPlan,
    opts: &EmbedOptions,
    on_commit: &mut dyn FnMut(usize, usize),
) -> Result<BackfillReport> {
    let model = ModelInfo::from_card(&embedder.card);
    let todo = backfill_todo(store, &model, data, plan, opts.force)?;
    // backfill_todo made the lineage check; the input shape is the embedder's to check
    check_input_shape(embedder, data)?;
    embed_checked(
        store,
        embedder,
        data,
        &todo.positions,
        opts,
        on_commit,
        &bcl_dist::Single,
    )?;
    store.checkpoint()?;
    Ok(BackfillReport {
        reembedded: todo.positions.len(),
        by_new_model: todo.by_new_model,
        total: todo.total,
        lineage: lineage_text(&todo.lineage),
    })
}

/// A one-line account of a lineage verdict.
pub fn lineage_text(l: &Lineage) -> String {
    match l {
        Lineage::Same => "same model".into(),
        Lineage::Successor => "declared compatible successor".into(),
        Lineage::Adapted { id, kind } => format!("through {kind} adapter {id}"),
        Lineage::Forced(t) => format!("FORCED past a failed lineage check: {t}"),
    }
}

/// Searches the gallery with query vectors of `model` mapped by `adapter` into the gallery's
/// space (the adapter checked against the pair and the gallery's lineage: [`check_adapted`]).
pub fn search_adapted(
    store: &dyn GalleryStore,
    model: &ModelInfo,
    adapter: &AdapterLink,
    queries: &[f32],
    k: usize,
    exact: bool,
    force: bool,
) -> Result<(Lineage, Vec<Vec<Hit>>)> {
    let lineage = check_adapted(store.manifest(), &store.counts()?, model, adapter, force)?;
    let hits = if exact {
        store.search_exact(queries, k)?
    } else {
        store.search_approx(queries, k)?
    };
    Ok((lineage, hits))
}

/// Searches the gallery with query vectors said to come from `model` (checked against the
/// gallery's lineage unless `model` is `None`, i.e. raw vectors of no declared model).
pub fn search(
    store: &dyn GalleryStore,
    model: Option<&ModelInfo>,
    queries: &[f32],
    k: usize,
    exact: bool,
    force: bool,
) -> Result<(Option<Lineage>, Vec<Vec<Hit>>)> {
    let lineage = match model {
        Some(m) => Some(check_lineage(store.manifest(), &store.counts()?, m, force)?),
        None => None,
    };
    let hits = if exact {
        store.search_exact(queries, k)?
    } else {
        store.search_approx(queries, k)?
    };
    Ok((lineage, hits))
}

/// Embeds the items of `data` with `embedder` as query vectors of a gallery of dimension
/// `dim` (through the model's projection head where `dim` is the one it maps into).
pub fn embed_queries(
    embedder: &Embedder,
    data: &Dataset,
    batch: usize,
    dim: usize,
) -> Result<Vec<f32>> {
    check_input_shape(embedder, data)?;
    let all: Vec<usize> = (0..data.len()).collect();
    embed_items(embedder, data, &all, batch, dim)
}

/// One model's line of a gallery's status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelCount {
    /// The model.
    pub model: ModelInfo,
    /// Items whose current vector it produced.
    pub items: usize,
}

/// A gallery's status: backend, size, vectors per model, data source.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Backend name.
    pub backend: String,
    /// Vector dimension.
    pub dim: usize,
    /// Items.
    pub items: usize,
    /// Every model the manifest records, with its current item count.
    pub models: Vec<ModelCount>,
    /// The data source, when built from a data set.
    pub source: Option<DataSource>,
    /// The lineage graph: declared successions and recorded adapters, each with its latest
    /// measured cross-test.
    pub lineage: Vec<super::lineage::Edge>,
}

/// The status of a store.
pub fn status(store: &dyn GalleryStore) -> Result<Status> {
    let counts = store.counts()?;
    let m = store.manifest();
    Ok(Status {
        backend: store.backend().to_string(),
        dim: m.dim,
        items: store.len(),
        models: m
            .models
            .iter()
            .map(|mi| ModelCount {
                model: mi.clone(),
                items: counts.get(&mi.id).copied().unwrap_or(0),
            })
            .collect(),
        source: m.source.clone(),
        lineage: super::lineage::graph(m),
    })
}

/// Mean recall@k of approximate search against exact search for `queries`.
pub fn ann_recall(store: &dyn GalleryStore, queries: &[f32], k: usize) -> Result<f64> {
    let exact = store.search_exact(queries, k)?;
    let approx = store.search_approx(queries, k)?;
    let mut sum = 0.0;
    for (e, a) in exact.iter().zip(&approx) {
        let truth: std::collections::HashSet<u64> = e.iter().map(|h| h.id).collect();
        let found = a.iter().filter(|h| truth.contains(&h.id)).count();
        sum += found as f64 / truth.len().max(1) as f64;
    }
    Ok(sum / exact.len().max(1) as f64)
}

/// Probe queries a recall check may ask for beyond the gallery's size.
pub const MAX_PROBE_QUERIES: usize = 100_000;

/// `n` query vectors for a recall probe: stored vectors at evenly spaced ids, each moved by
/// seeded Gaussian noise of norm about `noise` and renormalised (so a query is near, not on,
/// its source item); `n` is at most the larger of the gallery's size and
/// [`MAX_PROBE_QUERIES`].
pub fn probe_queries(
    store: &dyn GalleryStore,
    n: usize,
    noise: f32,
    seed: u64,
) -> Result<Vec<f32>> {
    use rand::SeedableRng;
    let ids: Vec<u64> = store.item_models()?.into_keys().collect();
    if ids.is_empty() || n == 0 {
        return Err(GalleryError::Invalid(
            "a recall probe needs a non-empty gallery and at least one query".into(),
        ));
    }
    if n > ids.len().max(MAX_PROBE_QUERIES) {
        return Err(GalleryError::Invalid(format!(
            "{n} probe queries: at most {} (the larger of the gallery's {} items and \
             {MAX_PROBE_QUERIES})",
            ids.len().max(MAX_PROBE_QUERIES),
            ids.len()
        )));
    }
    let picks: Vec<u64> = (0..n)
        .map(|i| ids[i * ids.len() / n.max(1) % ids.len()])
        .collect();
    let dim = store.manifest().dim;
    let mut v = store.vectors(&picks)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let scale = noise / (dim as f32).sqrt();
    v.iter_mut().for_each(|x| *x += scale * gaussian(&mut rng));
    super::normalise_rows(&mut v, dim);
    Ok(v)
}

/// A standard normal draw by Box-Muller (rand_distr is not a dependency for one function).
fn gaussian(rng: &mut impl rand::Rng) -> f32 {
    let u1: f32 = rng.random::<f32>().max(1e-12);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}
