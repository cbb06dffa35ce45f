//! The seam between the gallery's durability (write-ahead log, snapshots, the store file: see
//! [`super::durable`]) and the approximate-search index behind it: an index holds vectors under
//! item ids, searches them approximately, and saves and loads itself as one snapshot file. It
//! keeps no record of models, ids' history or what was acknowledged: the durable store does.
//! Exact search is not an index's job either: the store answers it with the project's exact
//! search (`eval::search`), the one reference every approximate figure is measured against.

use std::fmt::Debug;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Hit, Result};

/// An approximate nearest-neighbour index over inner products of unit vectors (one
/// implementation per engine; [`super::usearch_store::HnswIndex`] is usearch's HNSW graph).
pub trait VectorIndex: Sized + Send + Sync {
    /// The index's settings, stored in the gallery file under `index` (serde defaults: a file
    /// written before a setting existed keeps its meaning).
    type Config: Copy + Debug + Default + PartialEq + Serialize + DeserializeOwned + Send + Sync;

    /// The backend's name, written as `backend` in the gallery file.
    const BACKEND: &'static str;

    /// The extension of the index's snapshot files (`index-<generation>.<EXTENSION>`).
    const EXTENSION: &'static str;

    /// An empty index for vectors of dimension `dim`.
    fn create(dim: usize, config: &Self::Config) -> Result<Self>;

    /// The index a snapshot file holds; a file that cannot be read is
    /// [`super::GalleryError::Corrupt`] naming it.
    fn load(path: &Path, dim: usize, config: &Self::Config) -> Result<Self>;

    /// Writes the index to `path` (the durable store syncs and renames it into place).
    fn save(&self, path: &Path) -> Result<()>;

    /// The number of vectors it holds.
    fn len(&self) -> usize;

    /// Whether it holds no vector.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes room for `extra` more vectors before any is added, so that an add fails before
    /// it changes anything rather than half-way.
    fn reserve(&mut self, extra: usize) -> Result<()>;

    /// Removes the vector of `id` (which it holds).
    fn remove(&mut self, id: u64) -> Result<()>;

    /// Adds one vector per id (`vectors` row-major, `dim` values each; no id is held yet).
    fn add(&mut self, ids: &[u64], vectors: &[f32]) -> Result<()>;

    /// Copies the vector of `id` into `out`; false when the index does not hold it.
    fn get(&self, id: u64, out: &mut [f32]) -> Result<bool>;

    /// The (approximately) `k` best items for one query, best first, scored by inner product.
    fn search(&self, query: &[f32], k: usize) -> Result<Vec<Hit>>;

    /// Sets the candidate list size of searches (HNSW's ef), at least 1.
    fn set_search_expansion(&mut self, n: usize);

    /// The log size past which the store folds the log into a snapshot, as the index's
    /// settings give it (0: the store's default). A durability setting kept in the index's
    /// section for the sake of gallery files written before the two were apart.
    fn checkpoint_bytes(config: &Self::Config) -> u64;
}
