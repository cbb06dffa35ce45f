//! The usearch engine behind the gallery: `HnswIndex`, usearch's HNSW graph over inner
//! products (float32, bfloat16 or float16 vectors), as a [`VectorIndex`]; `UsearchStore` is the
//! durable store ([`super::durable`]) over it, the embedded gallery's backend.

use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use super::durable::DurableStore;
use super::index::VectorIndex;
use super::kernel::Kernel;
use super::{GalleryError, Hit, Result};

/// The embedded gallery store: usearch's HNSW index made durable by the write-ahead log and
/// snapshots of [`DurableStore`] (its documentation describes the files).
pub type UsearchStore = DurableStore<HnswIndex>;

/// HNSW settings of the usearch index (0 = usearch's default).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct UsearchConfig {
    /// Graph degree (usearch default 16).
    pub connectivity: usize,
    /// Candidate list size while inserting (default 128).
    pub expansion_add: usize,
    /// Candidate list size while searching (default 64); larger is slower and more exact.
    pub expansion_search: usize,
    /// The log is folded into a snapshot once it grows past this many bytes (0: 256 MiB).
    pub checkpoint_bytes: u64,
    /// The precision the index keeps its vectors in (the log keeps float32 either way).
    #[serde(skip_serializing_if = "Quantization::is_f32")]
    pub quantization: Quantization,
}

/// The precision of the vectors inside the HNSW index: float32 as given, or half the memory
/// (bfloat16, or IEEE half precision), which halves what each distance reads from memory;
/// scores and returned vectors are then those of the rounded vectors.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// float32 (the default).
    #[default]
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half precision.
    F16,
}

impl Quantization {
    /// Whether this is float32 (the default, left out of the store file).
    pub fn is_f32(&self) -> bool {
        *self == Quantization::F32
    }

    /// Parses "f32", "bf16" or "f16".
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            "f16" => Ok(Self::F16),
            other => Err(GalleryError::Invalid(format!(
                "quantization: expected f32, bf16 or f16, got {other:?}"
            ))),
        }
    }
}

/// A counting semaphore over the index's thread contexts: usearch fails a search outright
/// ("Reserve capacity ahead of searches") when more threads call in than it has contexts, and
/// callers here are unbounded (rayon runs a one-query search on the calling thread, the HTTP
/// server on any blocking thread). std has no semaphore and tokio's is async-only, hence these
/// few lines.
struct Permits {
    free: std::sync::Mutex<usize>,
    cv: std::sync::Condvar,
}

impl Permits {
    fn new(n: usize) -> Self {
        Self {
            free: std::sync::Mutex::new(n),
            cv: std::sync::Condvar::new(),
        }
    }

    /// Runs `f` while holding one permit.
    fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.cv.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        drop(free);
        let out = f();
        *self.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.cv.notify_one();
        out
    }
}

/// Thread contexts reserved in the index: as many as rayon's workers plus one.
fn context_count() -> usize {
    rayon::current_num_threads() + 1
}

fn index_err(e: impl std::fmt::Display) -> GalleryError {
    GalleryError::Index(e.to_string())
}

fn new_index(dim: usize, cfg: &UsearchConfig) -> Result<Index> {
    let opts = IndexOptions {
        dimensions: dim,
        metric: MetricKind::IP,
        quantization: match cfg.quantization {
            Quantization::F32 => ScalarKind::F32,
            Quantization::Bf16 => ScalarKind::BF16,
            Quantization::F16 => ScalarKind::F16,
        },
        connectivity: cfg.connectivity,
        expansion_add: cfg.expansion_add,
        expansion_search: cfg.expansion_search,
        multi: false,
    };
    Index::new(&opts).map_err(index_err)
}

/// Gives a float32 index the project's inner-product kernel for this CPU ([`Kernel`]) in place
/// of usearch's float64-summing one; usearch's distance for inner products is `1 - <a, b>`.
/// Half-precision indexes keep usearch's kernels: what decides is the precision the index
/// holds (a loaded file's header), not the configuration, so that a snapshot in another
/// precision is never read as float32. A loaded index must be given it again (loading restores
/// usearch's built-in metric), unless `BCL_KERNEL=usearch` ([`Kernel::for_index`]).
fn use_kernel(index: &mut Index) {
    let Some(kernel) = Kernel::for_index().filter(|_| index.scalar_kind() == ScalarKind::F32)
    else {
        return;
    };
    let dim = index.dimensions();
    // one closure per kernel, so that each calls its kernel directly
    let metric: Box<dyn Fn(*const f32, *const f32) -> f32 + Send + Sync> = match kernel {
        // SAFETY (each): usearch passes two vectors of the index's `dim` floats; the kernel was
        // detected on this CPU.
        Kernel::Avx512 => Box::new(move |a, b| 1.0 - unsafe { Kernel::Avx512.dot_ptr(a, b, dim) }),
        Kernel::Avx2Fma => {
            Box::new(move |a, b| 1.0 - unsafe { Kernel::Avx2Fma.dot_ptr(a, b, dim) })
        }
        Kernel::Portable => {
            Box::new(move |a, b| 1.0 - unsafe { Kernel::Portable.dot_ptr(a, b, dim) })
        }
    };
    index.change_metric::<f32>(metric);
}

/// usearch's HNSW graph with the thread contexts its callers need (see [`Permits`]).
pub struct HnswIndex {
    index: Index,
    /// One permit per thread context reserved in the index.
    permits: Permits,
}

impl HnswIndex {
    /// Wraps `index`, reserving a thread context per rayon worker (plus one): a loaded index
    /// has none reserved ("Reserve capacity ahead of searches").
    fn with_contexts(index: Index) -> Result<Self> {
        let s = Self {
            index,
            permits: Permits::new(context_count()),
        };
        let cap = s.index.capacity().max(1024);
        s.index
            .reserve_capacity_and_threads(cap, context_count())
            .map_err(index_err)?;
        Ok(s)
    }
}

/// The first, cheap pass of [`HnswIndex::reattach`]: candidate list size, and how many of its
/// best hits a vector's own id must be among (two, so that one exact duplicate ranked first
/// does not send every vector to the second pass).
const PROBE: (usize, usize) = (4, 2);

/// The second pass's hits (its candidate list is the index's own): more than one, so that
/// exact duplicates ranked first do not count as lost.
const CONFIRM_K: usize = 8;

impl HnswIndex {
    /// The positions `among` those of `ids` whose own vector does not find them among its
    /// best `k` hits at the current search expansion.
    fn unreachable(
        &self,
        ids: &[u64],
        vectors: &[f32],
        among: &[usize],
        k: usize,
    ) -> Result<Vec<usize>> {
        let dim = self.index.dimensions();
        let k = k.min(self.index.size());
        let lost = among
            .par_iter()
            .map(|&i| {
                let v = &vectors[i * dim..(i + 1) * dim];
                let m = self
                    .permits
                    .with(|| self.index.search(v, k))
                    .map_err(index_err)?;
                Ok((!m.keys.contains(&ids[i])).then_some(i))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(lost.into_iter().flatten().collect())
    }

    /// usearch 2.26's concurrent inserts can leave a node that no search reaches: it is
    /// stored, `get` returns it, but no graph walk visits it (upstream issue
    /// unum-cloud/USearch#735, a fix proposed in PR #772; measured here on two threads: one
    /// build in ten of 100 vectors lost an item, and 2 to 7 of every 4,096 vectors were lost
    /// while 200,000 were added). Each vector just added in parallel is searched for with
    /// itself, first with a short candidate list (about 7% missed), then the misses again at
    /// the configured one; what is still not found is removed and inserted again on this
    /// thread alone, where no concurrent insert can strand it (about a tenth of the build's
    /// time at 200,000 vectors). Returns how many were.
    fn reattach(&mut self, ids: &[u64], vectors: &[f32]) -> Result<usize> {
        let dim = self.index.dimensions();
        let ef = self.index.expansion_search();
        let all: Vec<usize> = (0..ids.len()).collect();
        self.index.change_expansion_search(PROBE.0.min(ef.max(1)));
        let missed = self.unreachable(ids, vectors, &all, PROBE.1);
        self.index.change_expansion_search(ef);
        let missed = missed?;
        let lost = self.unreachable(ids, vectors, &missed, CONFIRM_K)?;
        for &i in &lost {
            self.index.remove(ids[i]).map_err(index_err)?;
            self.index
                .add(ids[i], &vectors[i * dim..(i + 1) * dim])
                .map_err(index_err)?;
        }
        Ok(lost.len())
    }
}

impl VectorIndex for HnswIndex {
    type Config = UsearchConfig;
    const BACKEND: &'static str = "usearch";
    const EXTENSION: &'static str = "usearch";

    fn create(dim: usize, config: &UsearchConfig) -> Result<Self> {
        let mut index = new_index(dim, config)?;
        use_kernel(&mut index);
        Self::with_contexts(index)
    }

    fn load(path: &Path, dim: usize, config: &UsearchConfig) -> Result<Self> {
        let mut index = new_index(dim, config)?;
        index
            .load(path.to_str().unwrap_or_default())
            .map_err(|e| GalleryError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        use_kernel(&mut index);
        Self::with_contexts(index)
    }

    fn save(&self, path: &Path) -> Result<()> {
        self.index
            .save(path.to_str().unwrap_or_default())
            .map_err(index_err)
    }

    fn len(&self) -> usize {
        self.index.size()
    }

    /// Makes room for `extra` more vectors (doubling) and reserves one thread context per
    /// rayon worker (plus one), which is how many threads ever call into the index at once.
    fn reserve(&mut self, extra: usize) -> Result<()> {
        let need = self.index.size() + extra;
        if need > self.index.capacity() {
            let cap = need.max(self.index.capacity() * 2).max(1024);
            self.index
                .reserve_capacity_and_threads(cap, context_count())
                .map_err(index_err)?;
        }
        Ok(())
    }

    fn remove(&mut self, id: u64) -> Result<()> {
        self.index.remove(id).map(|_| ()).map_err(index_err)
    }

    /// Inserts in parallel, then [reattaches](HnswIndex::reattach) what the concurrent
    /// inserts left out of the graph.
    fn add(&mut self, ids: &[u64], vectors: &[f32]) -> Result<()> {
        let dim = self.index.dimensions();
        let (index, permits) = (&self.index, &self.permits);
        ids.par_iter()
            .zip(vectors.par_chunks(dim))
            .try_for_each(|(&id, v)| permits.with(|| index.add(id, v)).map_err(index_err))?;
        if ids.len() > 1 && rayon::current_num_threads() > 1 {
            let n = self.reattach(ids, vectors)?;
            if n > 0 {
                tracing::debug!(reattached = n, of = ids.len(), "HNSW insert");
            }
        }
        Ok(())
    }

    fn get(&self, id: u64, out: &mut [f32]) -> Result<bool> {
        Ok(self.index.get(id, out).map_err(index_err)? > 0)
    }

    fn search(&self, query: &[f32], k: usize) -> Result<Vec<Hit>> {
        let m = self
            .permits
            .with(|| self.index.search(query, k))
            .map_err(index_err)?;
        Ok(m.keys
            .iter()
            .zip(&m.distances)
            .map(|(&id, &d)| Hit { id, score: 1.0 - d })
            .collect())
    }

    fn set_search_expansion(&mut self, n: usize) {
        self.index.change_expansion_search(n);
    }

    fn checkpoint_bytes(config: &UsearchConfig) -> u64 {
        config.checkpoint_bytes
    }
}
