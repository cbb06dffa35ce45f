//! A gallery that outlives its model (METHOD.md section 7, ARCHITECTURE's `gallery` seam):
//! the [`GalleryStore`] trait (durable add, exact and approximate search kept apart, per-model
//! counts, reopen); the embedded store's durability (write-ahead log [`wal`], snapshots and the
//! store file: [`durable`]) apart from the approximate index behind the [`index::VectorIndex`]
//! seam (usearch's HNSW graph: [`usearch_store`]); the Milvus store; the lineage check
//! that refuses to search a gallery with an unrelated model ([`check_lineage`]), the gallery
//! operations over an `Embedder` ([`ops`]) and the HTTP service over a store ([`serve`]).

pub mod durable;
pub mod flat_hnsw;
pub mod index;
pub mod kernel;
pub mod lineage;
#[cfg(feature = "milvus")]
pub mod milvus_store;
pub mod ops;
pub mod serve;
pub mod usearch_store;
pub mod wal;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::ModelCard;

/// What can go wrong with a gallery.
#[derive(Debug, thiserror::Error)]
pub enum GalleryError {
    /// A file of the store could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file of the store is not what the store wrote.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The request does not fit the gallery (dimension, k, empty input, non-finite values).
    #[error("{0}")]
    Invalid(String),
    /// The query model is neither the gallery's model nor a declared compatible successor.
    #[error("{0}")]
    Lineage(String),
    /// The index library failed.
    #[error("index: {0}")]
    Index(String),
    /// No gallery at this path.
    #[error("{path}: no gallery here ({reason})")]
    Missing {
        /// The directory.
        path: PathBuf,
        /// Why it is not a gallery.
        reason: String,
    },
    /// Another process holds the gallery open (its lock is taken).
    #[error("{path}: the gallery is open in another process (a server or a command holds its lock); stop it first")]
    Locked {
        /// The gallery directory.
        path: PathBuf,
    },
    /// A gallery exists where a new one was to be created.
    #[error("{path}: a gallery already exists here; add to it instead, or create the new one in another directory")]
    Exists {
        /// The directory.
        path: PathBuf,
    },
    /// Sharing a build among ranks failed (a lost rank, a timeout).
    #[error(transparent)]
    Dist(#[from] bcl_dist::DistError),
}

/// The file every gallery directory holds, whatever its backend: `backend` names the backend,
/// the rest is the backend's (the usearch store's manifest and snapshot state, or a pointer to
/// a Milvus collection).
pub const GALLERY_FILE: &str = "gallery.json";

/// An I/O error about `path`.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> GalleryError + '_ {
    move |source| GalleryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Result alias of the gallery module.
pub type Result<T> = std::result::Result<T, GalleryError>;

/// The identity of a model that produced (or queries) gallery vectors, taken from its card.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ModelInfo {
    /// The card's content id (or a user-given name for vectors made outside `bcl`).
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// Training method ("none" for an old model, "external" for outside vectors).
    pub method: String,
    /// The id of the model whose space it declares itself compatible with.
    pub compatible_with: Option<String>,
    /// Embedding dimension.
    pub dim: usize,
    /// The dimension its projection head maps into (the model it is compatible with), for a
    /// model embedding in another dimension than that model: in a gallery of that dimension
    /// its queries and vectors go through the head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compat_dim: Option<usize>,
    /// For vectors made by a forward adapter from another model's stored vectors (no model
    /// embedded them): the id of the model into whose space the adapter mapped them. The
    /// lineage treats them as that model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space_of: Option<String>,
}

impl ModelInfo {
    /// The identity recorded on a model card.
    pub fn from_card(card: &ModelCard) -> Self {
        Self {
            id: card.id.clone(),
            name: card.name.clone(),
            method: card.method.clone(),
            compatible_with: card.compatible_with.clone(),
            dim: card.arch.dim as usize,
            compat_dim: card.arch.compat_dim.map(|c| c as usize),
            space_of: None,
        }
    }

    /// Whether the model's vectors can live in a gallery of dimension `dim`: its own, or the
    /// one its projection head maps into.
    pub fn reaches(&self, dim: usize) -> bool {
        self.dim == dim || self.compat_dim == Some(dim)
    }

    /// Vectors computed outside `bcl`, named by the user; they have no declared lineage.
    pub fn external(name: &str, dim: usize) -> Self {
        Self {
            id: name.to_string(),
            name: name.to_string(),
            method: "external".into(),
            compatible_with: None,
            dim,
            compat_dim: None,
            space_of: None,
        }
    }

    /// The pseudo-model a forward adapter's vectors are tagged with: id `adapter:<id>`, named
    /// after the adapter and both models, in the space of the adapter's new model.
    pub fn forwarded(link: &AdapterLink, from_name: &str, to_name: &str) -> Self {
        Self {
            id: format!("adapter:{}", link.id),
            name: format!("{} {from_name} → {to_name}", link.kind),
            method: "adapter".into(),
            compatible_with: None,
            dim: link.dim,
            compat_dim: None,
            space_of: link.to.clone(),
        }
    }

    /// The model whose space this model's vectors are in: the one a forward adapter mapped
    /// them into, else itself.
    pub fn space(&self) -> &str {
        self.space_of.as_deref().unwrap_or(&self.id)
    }
}

/// An adapter recorded on a gallery's lineage (`bcl gallery link`, or used by a forward
/// upgrade of its vectors): an edge between two models' spaces.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AdapterEdge {
    /// The adapter's content id.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// Whether it maps queries (new → old) rather than stored vectors (old → new).
    pub maps_queries: bool,
    /// The id of the model whose vectors it maps.
    pub from: String,
    /// The id of the model into whose space it maps them.
    pub to: String,
    /// The names of both models, as the adapter's card gives them.
    pub names: (String, String),
}

/// A cross-test measured on a gallery's own items (`bcl gallery link --model`): the items of
/// its data source embedded by a query model (through an adapter, if any) searched against the
/// vectors the gallery held, leave-one-out, relevant items those of the query's class.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CrossTest {
    /// The query model's id.
    pub query: String,
    /// The adapter its queries went through, if any.
    pub adapter: Option<String>,
    /// mAP.
    pub map: f64,
    /// Recall@1.
    pub recall_at_1: f64,
    /// Items searched.
    pub items: usize,
    /// The gallery's items per model id when it was measured.
    pub gallery: BTreeMap<String, usize>,
    /// When (seconds since the Unix epoch).
    pub unix_s: u64,
}

/// Where a gallery's items come from, so a backfill can re-embed the same images.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataSource {
    /// The data configuration the items were read with.
    pub data: crate::data::DataConfig,
    /// Which part of the data set.
    pub split: crate::data::Part,
    /// Only the first N items of each class of the split were used.
    #[serde(default)]
    pub per_class: Option<usize>,
    /// Number of items.
    pub count: usize,
    /// Content fingerprint of the items (pixels, labels, ids).
    pub fingerprint: String,
}

/// What a store records beside its vectors: dimension, the models seen, the data source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GalleryManifest {
    /// Manifest format version.
    pub format: u32,
    /// Vector dimension.
    pub dim: usize,
    /// Every model that has written vectors, in order of arrival.
    pub models: Vec<ModelInfo>,
    /// The data set the items were embedded from, when built from one.
    pub source: Option<DataSource>,
    /// Adapters recorded on the lineage, in order of arrival.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adapters: Vec<AdapterEdge>,
    /// Cross-tests measured on the gallery's items, in order of measurement.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measured: Vec<CrossTest>,
}

impl GalleryManifest {
    /// An empty gallery of dimension `dim`.
    pub fn new(dim: usize) -> Self {
        Self {
            format: 1,
            dim,
            models: Vec::new(),
            source: None,
            adapters: Vec::new(),
            measured: Vec::new(),
        }
    }

    /// The model whose space the vectors of model `id` are in (see [`ModelInfo::space`]).
    pub fn space_of<'a>(&'a self, id: &'a str) -> &'a str {
        self.model(id).map_or(id, ModelInfo::space)
    }

    /// The recorded model with this id.
    pub fn model(&self, id: &str) -> Option<&ModelInfo> {
        self.models.iter().find(|m| m.id == id)
    }
}

/// One search result: the item's id and its similarity to the query.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Hit {
    /// Item id.
    pub id: u64,
    /// Inner product with the (normalised) query.
    pub score: f32,
}

/// A gallery of vectors keyed by item id, each tagged with the model that produced it.
///
/// `add` is an upsert (a backfill replaces an item's vector) and is durable when it returns.
/// Exact search is the reference; approximate search is whatever index the backend keeps.
pub trait GalleryStore: Send + Sync {
    /// Backend name ("usearch", "milvus").
    fn backend(&self) -> &'static str;
    /// The manifest: dimension, models, data source.
    fn manifest(&self) -> &GalleryManifest;
    /// Replaces the manifest durably (models are only ever appended by callers).
    fn set_manifest(&mut self, manifest: GalleryManifest) -> Result<()>;
    /// Number of items.
    fn len(&self) -> usize;
    /// Whether the gallery holds no item.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Inserts or replaces the vectors (`ids.len() × dim`, row-major) of `model`, which must be
    /// in the manifest; committed and durable when it returns `Ok`.
    fn add(&mut self, model: &str, ids: &[u64], vectors: &[f32]) -> Result<()>;
    /// Exact top-`k` by inner product for each query (`n × dim`, row-major).
    fn search_exact(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Hit>>>;
    /// Approximate top-`k` (the backend's index) for each query.
    fn search_approx(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Hit>>>;
    /// The stored (normalised) vectors of `ids`, row-major; an unknown id is an error.
    fn vectors(&self, ids: &[u64]) -> Result<Vec<f32>>;
    /// The model id of each item's current vector.
    fn item_models(&self) -> Result<BTreeMap<u64, String>>;
    /// Item counts per model id.
    fn counts(&self) -> Result<BTreeMap<String, usize>> {
        let mut c = BTreeMap::new();
        for m in self.item_models()?.into_values() {
            *c.entry(m).or_insert(0) += 1;
        }
        Ok(c)
    }
    /// Sets the candidate list size of approximate search (HNSW's ef) for this session:
    /// larger is slower and closer to exact.
    fn set_search_expansion(&mut self, n: usize) -> Result<()>;
    /// Folds pending writes into the backend's snapshot (a no-op where there is none).
    fn checkpoint(&mut self) -> Result<()>;
}

/// Checks rows of `n × dim` values: the right length, finite, and not all zero per row.
pub fn validate_vectors(values: &[f32], n: usize, dim: usize, what: &str) -> Result<()> {
    if n == 0 {
        return Err(GalleryError::Invalid(format!("{what}: no vector given")));
    }
    if values.len() != n * dim {
        return Err(GalleryError::Invalid(format!(
            "{what}: {} values for {n} vectors of dimension {dim} (expected {})",
            values.len(),
            n * dim
        )));
    }
    for (i, row) in values.chunks(dim).enumerate() {
        if let Some(j) = row.iter().position(|v| !v.is_finite()) {
            return Err(GalleryError::Invalid(format!(
                "{what}: vector {i} has a non-finite value at position {j}"
            )));
        }
        if row.iter().all(|&v| v == 0.0) {
            return Err(GalleryError::Invalid(format!(
                "{what}: vector {i} is all zeros (no direction to search with)"
            )));
        }
    }
    Ok(())
}

/// Row-wise L2 normalisation in place (rows are validated non-zero first). A row whose sum of
/// squares overflows f32 (components above about 1.8e19) or underflows it is first scaled by its
/// largest component, so it keeps its direction instead of becoming all zeros.
pub fn normalise_rows(values: &mut [f32], dim: usize) {
    for row in values.chunks_mut(dim) {
        let ss = row.iter().map(|v| v * v).sum::<f32>();
        if !ss.is_finite() || ss < f32::MIN_POSITIVE {
            let m = row.iter().fold(0f32, |a, v| a.max(v.abs()));
            if m > 0.0 && m.is_finite() {
                row.iter_mut().for_each(|v| *v /= m);
            }
        }
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= n);
    }
}

/// The largest vector dimension a gallery accepts (a bound that keeps one vector's record
/// small; embedding models stay far below it).
pub const MAX_DIM: usize = 1 << 16;

/// The longest model id (in bytes) a gallery records (the Milvus backend stores it in a
/// 256-byte field).
pub const MAX_MODEL_ID_BYTES: usize = 256;

/// Checks a gallery's dimension: at least 1 and at most [`MAX_DIM`].
pub fn validate_dim(dim: usize) -> Result<()> {
    if dim == 0 || dim > MAX_DIM {
        return Err(GalleryError::Invalid(format!(
            "a gallery's dimension must be between 1 and {MAX_DIM}, not {dim}"
        )));
    }
    Ok(())
}

/// Checks the models of a manifest: ids non-empty, at most [`MAX_MODEL_ID_BYTES`], unique.
pub fn validate_models(models: &[ModelInfo]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for m in models {
        if m.id.is_empty() || m.id.len() > MAX_MODEL_ID_BYTES {
            return Err(GalleryError::Invalid(format!(
                "a model id must have 1 to {MAX_MODEL_ID_BYTES} bytes; this one has {}",
                m.id.len()
            )));
        }
        if !seen.insert(m.id.as_str()) {
            return Err(GalleryError::Invalid(format!(
                "model {} is registered twice in the manifest",
                m.id
            )));
        }
    }
    Ok(())
}

/// Refuses to create a gallery where one exists, or in a directory that holds anything but files
/// the store itself names (`own`: leftovers of a create that crashed): the store must never mix with, or later
/// clean up, other people's files.
pub fn check_fresh_dir(dir: &std::path::Path, own: impl Fn(&str) -> bool) -> Result<()> {
    if dir.join(GALLERY_FILE).exists() {
        return Err(GalleryError::Exists {
            path: dir.to_path_buf(),
        });
    }
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(GalleryError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let foreign: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !own(n))
        .collect();
    if foreign.is_empty() {
        return Ok(());
    }
    let mut shown = foreign.clone();
    shown.sort();
    shown.truncate(5);
    Err(GalleryError::Invalid(format!(
        "{}: the directory is not empty ({}{}); a gallery needs a new or empty directory of its \
         own",
        dir.display(),
        shown.join(", "),
        if foreign.len() > 5 { ", ..." } else { "" }
    )))
}

/// The verdict of a lineage check that passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lineage {
    /// Every vector in the gallery is the query model's own, or the gallery is empty.
    Same,
    /// The query model declares itself compatible with every other model in the gallery.
    Successor,
    /// The query model's vectors reach the gallery's model through an adapter fitted for the
    /// pair (its card names both models).
    Adapted {
        /// The adapter's content id.
        id: String,
        /// Its kind.
        kind: String,
    },
    /// The check failed and `force` overrode it; the text says what was overridden.
    Forced(String),
}

/// An adapter as a gallery's lineage sees it (read from its card): which model's queries it
/// maps, into which model's space, and in which dimension they arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterLink {
    /// The adapter's content id.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// Whether it maps queries (new → old) rather than a gallery's vectors (old → new).
    pub maps_queries: bool,
    /// The id of the model whose vectors it maps, when it was fitted on a model's embeddings.
    pub from: Option<String>,
    /// The id of the model into whose space it maps them.
    pub to: Option<String>,
    /// The dimension of the vectors it gives.
    pub dim: usize,
}

impl AdapterLink {
    /// The link an adapter card describes.
    pub fn from_card(card: &crate::adapt::AdapterCard) -> Self {
        Self {
            id: card.id.clone(),
            kind: card.kind.clone(),
            maps_queries: card.direction == crate::adapt::Direction::NewToOld,
            from: card.from.id.clone(),
            to: card.to.id.clone(),
            dim: card.to.dim,
        }
    }
}

/// Whether `query`'s vectors mapped by `adapter` may search a gallery whose items come from the
/// models in `counts`: the adapter must map queries (not a gallery's vectors), give vectors of
/// the gallery's dimension (never overridable), have been fitted for `query`'s embeddings, and
/// every model with vectors in the gallery must be the one it maps into. `force` turns the
/// last two refusals into [`Lineage::Forced`].
pub fn check_adapted(
    manifest: &GalleryManifest,
    counts: &BTreeMap<String, usize>,
    query: &ModelInfo,
    adapter: &AdapterLink,
    force: bool,
) -> Result<Lineage> {
    if !adapter.maps_queries {
        return Err(GalleryError::Invalid(format!(
            "adapter {} ({}) maps the old model's vectors into the new space, not queries into \
             the gallery's: it upgrades stored vectors, it does not search them",
            adapter.id, adapter.kind
        )));
    }
    if adapter.dim != manifest.dim {
        return Err(GalleryError::Invalid(format!(
            "adapter {} ({}) gives {}-dimensional vectors, the gallery holds dimension {}",
            adapter.id, adapter.kind, adapter.dim, manifest.dim
        )));
    }
    let mut refused = Vec::new();
    if adapter.from.as_deref() != Some(query.id.as_str()) {
        refused.push(format!(
            "it was fitted for the queries of {}, not of model {} ({})",
            adapter.from.as_deref().unwrap_or("unnamed vectors"),
            query.name,
            query.id
        ));
    }
    for (id, &n) in counts {
        if n == 0 || adapter.to.as_deref() == Some(manifest.space_of(id)) {
            continue;
        }
        let name = manifest.model(id).map(|m| m.name.as_str()).unwrap_or("?");
        refused.push(format!(
            "the gallery holds {n} vectors of model {name} ({id}), and it maps into the space of {}",
            adapter.to.as_deref().unwrap_or("unnamed vectors")
        ));
    }
    if refused.is_empty() {
        return Ok(Lineage::Adapted {
            id: adapter.id.clone(),
            kind: adapter.kind.clone(),
        });
    }
    let text = format!(
        "adapter {} ({}) does not join model {} to this gallery: {}",
        adapter.id,
        adapter.kind,
        query.name,
        refused.join("; ")
    );
    refuse(
        text,
        force,
        "Fit an adapter between the query model and the gallery's model (bcl adapt fit)",
    )
}

/// A failed lineage check: [`Lineage::Forced`] where `force` overrides it, otherwise the error
/// with what to do instead.
fn refuse(text: String, force: bool, instead: &str) -> Result<Lineage> {
    if force {
        Ok(Lineage::Forced(text))
    } else {
        Err(GalleryError::Lineage(format!(
            "{text}. {instead}, or force the search past the lineage check"
        )))
    }
}

/// Whether `query` may search (or write into) a gallery whose items come from the models in
/// `counts`: each model present must be the query model itself or the model the query model
/// declares compatibility with (its card's `compatible_with`). Declarations are not chained:
/// a successor of a successor is not assumed compatible with the first model (docs/results.md
/// measures chains where it is not). `force` turns a refusal into [`Lineage::Forced`].
pub fn check_lineage(
    manifest: &GalleryManifest,
    counts: &BTreeMap<String, usize>,
    query: &ModelInfo,
    force: bool,
) -> Result<Lineage> {
    if !query.reaches(manifest.dim) {
        return Err(GalleryError::Invalid(format!(
            "model {} ({}) embeds in dimension {}{}, the gallery holds dimension {}",
            query.name,
            query.id,
            query.dim,
            match query.compat_dim {
                Some(c) => format!(" and projects into {c}"),
                None => String::new(),
            },
            manifest.dim
        )));
    }
    let mut verdict = Lineage::Same;
    let mut refused = Vec::new();
    for (id, &n) in counts {
        if n == 0 || manifest.space_of(id) == query.id {
            continue;
        }
        if query.compatible_with.as_deref() == Some(manifest.space_of(id)) {
            verdict = Lineage::Successor;
        } else {
            let name = manifest.model(id).map(|m| m.name.as_str()).unwrap_or("?");
            refused.push(format!("{n} vectors of model {name} ({id})"));
        }
    }
    if refused.is_empty() {
        return Ok(verdict);
    }
    let declared = match &query.compatible_with {
        Some(c) => format!("its card declares compatibility with {c} only"),
        None => "its card declares no compatible model".into(),
    };
    let text = format!(
        "model {} ({}) is neither the model of the gallery's {} nor a declared compatible \
         successor of it ({declared}): its queries would be compared with vectors of an \
         unrelated embedding space",
        query.name,
        query.id,
        refused.join(", ")
    );
    refuse(
        text,
        force,
        "Use a model trained against the gallery's model",
    )
}

/// Validates an add (model registered, ids unique, vectors well-formed) and returns the
/// vectors L2-normalised, as every backend stores them.
pub fn prepare_add(
    manifest: &GalleryManifest,
    model: &str,
    ids: &[u64],
    vectors: &[f32],
) -> Result<Vec<f32>> {
    if manifest.model(model).is_none() {
        return Err(GalleryError::Invalid(format!(
            "model {model} is not registered in this gallery's manifest"
        )));
    }
    validate_vectors(vectors, ids.len(), manifest.dim, "gallery vectors")?;
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    if let Some(d) = ids.iter().find(|i| !seen.insert(**i)) {
        return Err(GalleryError::Invalid(format!(
            "item id {d} appears twice in one add"
        )));
    }
    let mut v = vectors.to_vec();
    normalise_rows(&mut v, manifest.dim);
    Ok(v)
}

/// Validates query vectors and k, and returns the queries L2-normalised.
pub fn prepare_queries(dim: usize, queries: &[f32], k: usize) -> Result<Vec<f32>> {
    validate_dim(dim)?;
    if k == 0 {
        return Err(GalleryError::Invalid("k must be at least 1".into()));
    }
    if !queries.len().is_multiple_of(dim) {
        return Err(GalleryError::Invalid(format!(
            "query: {} values is not a whole number of vectors of the gallery's dimension {dim}",
            queries.len()
        )));
    }
    validate_vectors(queries, queries.len() / dim, dim, "query")?;
    let mut q = queries.to_vec();
    normalise_rows(&mut q, dim);
    Ok(q)
}

/// Checks a manifest update: same dimension, models only appended.
pub fn check_manifest_change(old: &GalleryManifest, new: &GalleryManifest) -> Result<()> {
    validate_models(&new.models)?;
    if new.dim != old.dim {
        return Err(GalleryError::Invalid(format!(
            "the gallery's dimension is {}; it cannot change to {}",
            old.dim, new.dim
        )));
    }
    if new.models.len() < old.models.len() || new.models[..old.models.len()] != old.models[..] {
        return Err(GalleryError::Invalid(
            "models can only be appended to a gallery's manifest".into(),
        ));
    }
    if !new.adapters.starts_with(&old.adapters) {
        return Err(GalleryError::Invalid(
            "adapters can only be appended to a gallery's lineage".into(),
        ));
    }
    Ok(())
}

/// Where a Milvus gallery lives.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MilvusConfig {
    /// Server address, e.g. `http://127.0.0.1:19530`.
    pub uri: String,
    /// Collection of the items (the manifest goes to `<collection>_manifest`).
    pub collection: String,
    /// Token (`user:password` or an API key), if the server wants one.
    pub token: Option<String>,
    /// HNSW graph degree.
    pub hnsw_m: usize,
    /// HNSW candidate list while building.
    pub ef_construction: usize,
    /// Seconds to wait for the server.
    pub connect_timeout_s: u64,
}

impl Default for MilvusConfig {
    fn default() -> Self {
        Self {
            uri: "http://127.0.0.1:19530".into(),
            collection: "bcl_gallery".into(),
            token: None,
            hnsw_m: 16,
            ef_construction: 128,
            connect_timeout_s: 10,
        }
    }
}

/// Which backend a new gallery uses, with its settings.
#[derive(Debug, Clone)]
pub enum BackendConfig {
    /// The embedded usearch store (the default).
    Usearch(usearch_store::UsearchConfig),
    /// The embedded store over the project's own HNSW engine ([`flat_hnsw`]).
    Hnsw(flat_hnsw::FlatHnswConfig),
    /// A Milvus collection (needs the `milvus` cargo feature).
    Milvus(MilvusConfig),
}

/// The embedded backend of a new gallery: `name` ("hnsw" or "usearch") with `settings`, or
/// without a name the project's HNSW engine, unless `settings.quantization` asks for bf16 or
/// f16, which only usearch keeps (and `hnsw` named with them is refused).
pub fn embedded_backend(
    name: Option<&str>,
    settings: usearch_store::UsearchConfig,
) -> Result<BackendConfig> {
    let f32 = settings.quantization.is_f32();
    match name.unwrap_or(if f32 { "hnsw" } else { "usearch" }) {
        "hnsw" if !f32 => Err(GalleryError::Invalid(
            "quantization: the hnsw backend keeps float32 vectors only; use the usearch \
             backend for bf16 or f16"
                .into(),
        )),
        "hnsw" => Ok(BackendConfig::Hnsw(flat_hnsw::FlatHnswConfig {
            connectivity: settings.connectivity,
            expansion_add: settings.expansion_add,
            expansion_search: settings.expansion_search,
            checkpoint_bytes: settings.checkpoint_bytes,
        })),
        "usearch" => Ok(BackendConfig::Usearch(settings)),
        other => Err(GalleryError::Invalid(format!(
            "backend: expected hnsw, usearch or milvus, got {other:?}"
        ))),
    }
}

#[cfg(not(feature = "milvus"))]
fn no_milvus() -> GalleryError {
    GalleryError::Invalid(
        "this build has no Milvus backend: it needs the cargo feature `milvus` of the bcl crate"
            .into(),
    )
}

/// Creates an empty gallery in `dir` with `manifest` on `backend`.
pub fn create(
    dir: &std::path::Path,
    manifest: GalleryManifest,
    backend: &BackendConfig,
) -> Result<Box<dyn GalleryStore>> {
    match backend {
        BackendConfig::Usearch(c) => Ok(Box::new(usearch_store::UsearchStore::create(
            dir, manifest, *c,
        )?)),
        BackendConfig::Hnsw(c) => Ok(Box::new(flat_hnsw::FlatHnswStore::create(
            dir, manifest, *c,
        )?)),
        #[cfg(feature = "milvus")]
        BackendConfig::Milvus(c) => Ok(Box::new(milvus_store::MilvusStore::create(
            dir,
            manifest,
            c.clone(),
        )?)),
        #[cfg(not(feature = "milvus"))]
        BackendConfig::Milvus(_) => Err(no_milvus()),
    }
}

/// Opens the gallery in `dir`, with the backend its `gallery.json` names.
pub fn open(dir: &std::path::Path) -> Result<Box<dyn GalleryStore>> {
    let path = dir.join(GALLERY_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(GalleryError::Missing {
                path: dir.to_path_buf(),
                reason: format!("{} not found", GALLERY_FILE),
            })
        }
        Err(source) => return Err(GalleryError::Io { path, source }),
    };
    let backend = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("backend").and_then(|b| b.as_str()).map(String::from));
    match backend.as_deref() {
        Some("milvus") => {
            #[cfg(feature = "milvus")]
            return Ok(Box::new(milvus_store::MilvusStore::open(dir)?));
            #[cfg(not(feature = "milvus"))]
            return Err(no_milvus());
        }
        Some("hnsw") => Ok(Box::new(flat_hnsw::FlatHnswStore::open(dir)?)),
        _ => Ok(Box::new(usearch_store::UsearchStore::open(dir)?)),
    }
}
