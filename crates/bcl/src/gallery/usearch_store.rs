//! The embedded gallery store: a usearch HNSW index (with its exact search) plus a sidecar of
//! item ids and the model of each vector, made crash-safe by a write-ahead log.
//!
//! On disk (`dir/`):
//! - `gallery.json`: manifest, snapshot generation and the last log sequence the snapshot holds
//!   (replaced by atomic rename: the commit point of a checkpoint);
//! - `index-G.usearch`, `items-G.bin`: snapshot G (index, and ids → model with a CRC);
//! - `wal.log`: records `[len u32][crc32 u32][seq u64, model, n, ids, vectors]` written after the
//!   snapshot; an `add` returns after its record is appended and synced, so what was reported
//!   committed survives a kill. On open a torn or corrupt tail record is cut off and the rest
//!   replayed (records the snapshot already holds are skipped by sequence number);
//! - `LOCK`: held exclusively while a process has the store open.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use super::{
    prepare_add, prepare_queries, GalleryError, GalleryManifest, GalleryStore, Hit, Result,
};

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
}

/// The store's own file: manifest plus snapshot state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    backend: String,
    manifest: GalleryManifest,
    index: UsearchConfig,
    /// Snapshot generation (0: no snapshot yet).
    generation: u64,
    /// Highest log sequence folded into the snapshot.
    applied_seq: u64,
}

/// The store file's name.
pub const STORE_FILE: &str = "gallery.json";
const WAL_FILE: &str = "wal.log";
const LOCK_FILE: &str = "LOCK";
/// The log is folded into a snapshot once it grows past this many bytes.
const CHECKPOINT_BYTES: u64 = 256 << 20;

/// The embedded usearch store (see the module documentation for the layout).
pub struct UsearchStore {
    dir: PathBuf,
    file: StoreFile,
    index: Index,
    /// Item id → index into `file.manifest.models`.
    items: HashMap<u64, u32>,
    wal: File,
    wal_len: u64,
    next_seq: u64,
    /// One permit per thread context reserved in the index (see [`Permits`]).
    permits: Permits,
    _lock: File,
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

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> GalleryError + '_ {
    move |source| GalleryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn index_err(e: impl std::fmt::Display) -> GalleryError {
    GalleryError::Index(e.to_string())
}

fn new_index(dim: usize, cfg: &UsearchConfig) -> Result<Index> {
    let opts = IndexOptions {
        dimensions: dim,
        metric: MetricKind::IP,
        quantization: ScalarKind::F32,
        connectivity: cfg.connectivity,
        expansion_add: cfg.expansion_add,
        expansion_search: cfg.expansion_search,
        multi: false,
    };
    Index::new(&opts).map_err(index_err)
}

fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(GalleryError::Invalid(format!(
            "{}: the gallery is open in another process (a running `bcl serve` or gallery \
             command); stop it first",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
    }
}

fn write_store_file(dir: &Path, f: &StoreFile) -> Result<()> {
    let path = dir.join(STORE_FILE);
    let text = serde_json::to_string_pretty(f).map_err(|e| GalleryError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    crate::report::write_atomic(&path, text.as_bytes()).map_err(|e| GalleryError::Corrupt {
        path,
        reason: e.to_string(),
    })
}

/// One decoded log record.
struct WalRecord {
    seq: u64,
    model: String,
    ids: Vec<u64>,
    vectors: Vec<f32>,
}

fn encode_record(seq: u64, model: &str, ids: &[u64], vectors: &[f32]) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + 2 + model.len() + 4 + ids.len() * 8 + vectors.len() * 4);
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend_from_slice(&(model.len() as u16).to_le_bytes());
    p.extend_from_slice(model.as_bytes());
    p.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    ids.iter()
        .for_each(|i| p.extend_from_slice(&i.to_le_bytes()));
    vectors
        .iter()
        .for_each(|v| p.extend_from_slice(&v.to_le_bytes()));
    let mut out = Vec::with_capacity(p.len() + 8);
    out.extend_from_slice(&(p.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&p).to_le_bytes());
    out.extend_from_slice(&p);
    out
}

/// Little-endian reader over a byte slice (hand-written: four fixed-width fields do not justify
/// a serialisation crate, and the layout must stay exactly what the CRC covers).
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2)
            .map(|b| u16::from_le_bytes(b.try_into().unwrap()))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    }
}

fn decode_payload(p: &[u8], dim: usize) -> Option<WalRecord> {
    let mut c = Cursor(p);
    let seq = c.u64()?;
    let ml = c.u16()? as usize;
    let model = String::from_utf8(c.take(ml)?.to_vec()).ok()?;
    let n = c.u32()? as usize;
    let ids = (0..n).map(|_| c.u64()).collect::<Option<Vec<_>>>()?;
    let vectors = (0..n * dim)
        .map(|_| c.take(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())))
        .collect::<Option<Vec<_>>>()?;
    c.0.is_empty().then_some(WalRecord {
        seq,
        model,
        ids,
        vectors,
    })
}

/// Decodes the log: the valid records and the byte length they span (anything after is torn).
fn read_wal(bytes: &[u8], dim: usize) -> (Vec<WalRecord>, usize) {
    let mut records = Vec::new();
    let mut at = 0usize;
    while bytes.len() - at >= 8 {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Some(r) = decode_payload(payload, dim) else {
            break;
        };
        records.push(r);
        at += 8 + len;
    }
    (records, at)
}

fn items_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("items-{generation}.bin"))
}

fn index_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("index-{generation}.usearch"))
}

fn write_items(path: &Path, items: &HashMap<u64, u32>) -> Result<()> {
    let mut b = Vec::with_capacity(8 + items.len() * 12 + 4);
    b.extend_from_slice(&(items.len() as u64).to_le_bytes());
    let mut sorted: Vec<_> = items.iter().collect();
    sorted.sort_unstable();
    for (id, m) in sorted {
        b.extend_from_slice(&id.to_le_bytes());
        b.extend_from_slice(&m.to_le_bytes());
    }
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    crate::report::write_atomic(path, &b).map_err(|e| GalleryError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn read_items(path: &Path, models: usize) -> Result<HashMap<u64, u32>> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let corrupt = |reason: &str| GalleryError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if bytes.len() < 12 {
        return Err(corrupt("shorter than its header"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().unwrap()) {
        return Err(corrupt("checksum mismatch"));
    }
    let mut c = Cursor(body);
    let n = c.u64().unwrap_or(0) as usize;
    if body.len() != 8 + n * 12 {
        return Err(corrupt("length does not match its item count"));
    }
    let mut items = HashMap::with_capacity(n);
    for _ in 0..n {
        let (id, m) = (c.u64().unwrap(), c.u32().unwrap());
        if m as usize >= models {
            return Err(corrupt("an item names a model the manifest does not list"));
        }
        items.insert(id, m);
    }
    Ok(items)
}

impl UsearchStore {
    /// Creates an empty store in `dir` (created if missing; refused if a store is already there).
    pub fn create(dir: &Path, manifest: GalleryManifest, index: UsearchConfig) -> Result<Self> {
        if manifest.dim == 0 {
            return Err(GalleryError::Invalid(
                "a gallery needs dimension > 0".into(),
            ));
        }
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock = lock(dir)?;
        if dir.join(STORE_FILE).exists() {
            return Err(GalleryError::Invalid(format!(
                "{}: a gallery already exists here; add to it with `bcl gallery add` or choose \
                 another directory",
                dir.display()
            )));
        }
        let wal_path = dir.join(WAL_FILE);
        // A log left by a crashed create would belong to no manifest: start it empty.
        let wal = File::create(&wal_path).map_err(io_err(&wal_path))?;
        let file = StoreFile {
            backend: "usearch".into(),
            manifest,
            index,
            generation: 0,
            applied_seq: 0,
        };
        write_store_file(dir, &file)?;
        let index = new_index(file.manifest.dim, &file.index)?;
        index
            .reserve_capacity_and_threads(1024, context_count())
            .map_err(index_err)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
            index,
            items: HashMap::new(),
            wal,
            wal_len: 0,
            next_seq: 1,
            permits: Permits::new(context_count()),
            _lock: lock,
        })
    }

    /// Opens the store in `dir`, replaying its log; a torn last record (a crash mid-write) is
    /// cut off, since it was never reported committed.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(STORE_FILE);
        if !path.is_file() {
            return Err(GalleryError::Missing {
                path: dir.to_path_buf(),
                reason: format!("{STORE_FILE} not found"),
            });
        }
        let lock = lock(dir)?;
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let file: StoreFile = serde_json::from_str(&text).map_err(|e| GalleryError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if file.backend != "usearch" {
            return Err(GalleryError::Corrupt {
                path,
                reason: format!("written by the {} backend, not usearch", file.backend),
            });
        }
        let dim = file.manifest.dim;
        let index = new_index(dim, &file.index)?;
        let mut items = HashMap::new();
        if file.generation > 0 {
            let ip = index_path(dir, file.generation);
            index
                .load(ip.to_str().unwrap_or_default())
                .map_err(|e| GalleryError::Corrupt {
                    path: ip.clone(),
                    reason: e.to_string(),
                })?;
            items = read_items(
                &items_path(dir, file.generation),
                file.manifest.models.len(),
            )?;
            if index.size() != items.len() {
                return Err(GalleryError::Corrupt {
                    path: ip,
                    reason: format!(
                        "{} vectors but the sidecar lists {} items",
                        index.size(),
                        items.len()
                    ),
                });
            }
        }
        remove_strays(dir, file.generation);
        let wal_path = dir.join(WAL_FILE);
        let mut wal = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .append(true)
            .open(&wal_path)
            .map_err(io_err(&wal_path))?;
        let mut bytes = Vec::new();
        wal.read_to_end(&mut bytes).map_err(io_err(&wal_path))?;
        let (records, good) = read_wal(&bytes, dim);
        if good < bytes.len() {
            tracing::warn!(
                "{}: cut {} bytes of an unfinished record (never reported committed)",
                wal_path.display(),
                bytes.len() - good
            );
            wal.set_len(good as u64).map_err(io_err(&wal_path))?;
            wal.sync_all().map_err(io_err(&wal_path))?;
        }
        let mut store = Self {
            dir: dir.to_path_buf(),
            next_seq: file.applied_seq + 1,
            file,
            index,
            items,
            wal,
            wal_len: good as u64,
            permits: Permits::new(context_count()),
            _lock: lock,
        };
        // Thread contexts for searches: a loaded index has none reserved ("Reserve capacity
        // ahead of searches"). Searches run on rayon's pool, so its size bounds the callers.
        store.reserve(0)?;
        for r in records {
            store.next_seq = store.next_seq.max(r.seq + 1);
            if r.seq <= store.file.applied_seq {
                continue;
            }
            let m = store
                .model_index(&r.model)
                .map_err(|_| GalleryError::Corrupt {
                    path: wal_path.clone(),
                    reason: format!(
                        "record {} names model {} not in the manifest",
                        r.seq, r.model
                    ),
                })?;
            store.apply(m, &r.ids, &r.vectors)?;
        }
        Ok(store)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The HNSW settings.
    pub fn index_config(&self) -> UsearchConfig {
        self.file.index
    }

    fn model_index(&self, id: &str) -> Result<u32> {
        self.file
            .manifest
            .models
            .iter()
            .position(|m| m.id == id)
            .map(|i| i as u32)
            .ok_or_else(|| {
                GalleryError::Invalid(format!(
                    "model {id} is not registered in this gallery's manifest"
                ))
            })
    }

    /// Makes room for `extra` more vectors (doubling) and reserves one thread context per
    /// rayon worker (plus one), which is how many threads ever call into the index at once.
    fn reserve(&self, extra: usize) -> Result<()> {
        let need = self.index.size() + extra;
        let threads = context_count();
        if need > self.index.capacity() || extra == 0 {
            let cap = if need > self.index.capacity() {
                need.max(self.index.capacity() * 2).max(1024)
            } else {
                self.index.capacity().max(1024)
            };
            self.index
                .reserve_capacity_and_threads(cap, threads)
                .map_err(index_err)?;
        }
        Ok(())
    }

    /// Puts vectors into the in-memory index (upsert).
    fn apply(&mut self, model: u32, ids: &[u64], vectors: &[f32]) -> Result<()> {
        let dim = self.file.manifest.dim;
        for id in ids {
            if self.items.contains_key(id) {
                self.index.remove(*id).map_err(index_err)?;
            }
        }
        self.reserve(ids.len())?;
        let index = &self.index;
        ids.par_iter()
            .zip(vectors.par_chunks(dim))
            .try_for_each(|(&id, v)| self.permits.with(|| index.add(id, v)).map_err(index_err))?;
        for &id in ids {
            self.items.insert(id, model);
        }
        Ok(())
    }

    fn search(&self, queries: &[f32], k: usize, exact: bool) -> Result<Vec<Vec<Hit>>> {
        let dim = self.file.manifest.dim;
        let q = prepare_queries(dim, queries, k)?;
        q.par_chunks(dim)
            .map(|row| {
                let m = self
                    .permits
                    .with(|| {
                        if exact {
                            self.index.exact_search(row, k)
                        } else {
                            self.index.search(row, k)
                        }
                    })
                    .map_err(index_err)?;
                Ok(m.keys
                    .iter()
                    .zip(&m.distances)
                    .map(|(&id, &d)| Hit { id, score: 1.0 - d })
                    .collect())
            })
            .collect()
    }
}

/// Removes temporary files and snapshots of other generations (left by a crash mid-checkpoint).
fn remove_strays(dir: &Path, generation: u64) {
    let keep = [index_path(dir, generation), items_path(dir, generation)];
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        let snapshot = name.starts_with("index-") || name.starts_with("items-");
        if (name.ends_with(".tmp") || snapshot) && !keep.contains(&p) {
            let _ = std::fs::remove_file(&p);
        }
    }
}

impl GalleryStore for UsearchStore {
    fn backend(&self) -> &'static str {
        "usearch"
    }

    fn manifest(&self) -> &GalleryManifest {
        &self.file.manifest
    }

    fn set_manifest(&mut self, manifest: GalleryManifest) -> Result<()> {
        super::check_manifest_change(&self.file.manifest, &manifest)?;
        let mut next = self.file.clone();
        next.manifest = manifest;
        write_store_file(&self.dir, &next)?;
        self.file = next;
        Ok(())
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn add(&mut self, model: &str, ids: &[u64], vectors: &[f32]) -> Result<()> {
        let m = self.model_index(model)?;
        let v = prepare_add(&self.file.manifest, model, ids, vectors)?;
        let rec = encode_record(self.next_seq, model, ids, &v);
        let wal_path = self.dir.join(WAL_FILE);
        self.wal.write_all(&rec).map_err(io_err(&wal_path))?;
        self.wal.sync_data().map_err(io_err(&wal_path))?;
        self.wal_len += rec.len() as u64;
        self.next_seq += 1;
        self.apply(m, ids, &v)?;
        if self.wal_len > CHECKPOINT_BYTES {
            self.checkpoint()?;
        }
        Ok(())
    }

    fn search_exact(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Hit>>> {
        self.search(queries, k, true)
    }

    fn search_approx(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Hit>>> {
        self.search(queries, k, false)
    }

    fn vectors(&self, ids: &[u64]) -> Result<Vec<f32>> {
        let dim = self.file.manifest.dim;
        let mut out = vec![0f32; ids.len() * dim];
        for (&id, row) in ids.iter().zip(out.chunks_mut(dim)) {
            let got = if self.items.contains_key(&id) {
                self.index.get(id, row).map_err(index_err)?
            } else {
                0
            };
            if got == 0 {
                return Err(GalleryError::Invalid(format!("no item with id {id}")));
            }
        }
        Ok(out)
    }

    fn item_models(&self) -> Result<BTreeMap<u64, String>> {
        let models = &self.file.manifest.models;
        Ok(self
            .items
            .iter()
            .map(|(&id, &m)| (id, models[m as usize].id.clone()))
            .collect())
    }

    fn counts(&self) -> Result<BTreeMap<String, usize>> {
        let mut per = vec![0usize; self.file.manifest.models.len()];
        self.items.values().for_each(|&m| per[m as usize] += 1);
        Ok(self
            .file
            .manifest
            .models
            .iter()
            .zip(per)
            .filter(|(_, n)| *n > 0)
            .map(|(m, n)| (m.id.clone(), n))
            .collect())
    }

    fn set_search_expansion(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            return Err(GalleryError::Invalid(
                "the search expansion must be at least 1".into(),
            ));
        }
        self.index.change_expansion_search(n);
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<()> {
        if self.wal_len == 0 {
            return Ok(());
        }
        let g = self.file.generation + 1;
        let ip = index_path(&self.dir, g);
        let tmp = self.dir.join(format!("index-{g}.usearch.tmp"));
        self.index
            .save(tmp.to_str().unwrap_or_default())
            .map_err(index_err)?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &ip).map_err(io_err(&ip))?;
        write_items(&items_path(&self.dir, g), &self.items)?;
        let mut next = self.file.clone();
        next.generation = g;
        next.applied_seq = self.next_seq - 1;
        // The commit point: after this rename the snapshot holds everything in the log.
        write_store_file(&self.dir, &next)?;
        let old = self.file.generation;
        self.file = next;
        let wal_path = self.dir.join(WAL_FILE);
        self.wal.set_len(0).map_err(io_err(&wal_path))?;
        self.wal.sync_all().map_err(io_err(&wal_path))?;
        self.wal_len = 0;
        if old > 0 {
            let _ = std::fs::remove_file(index_path(&self.dir, old));
            let _ = std::fs::remove_file(items_path(&self.dir, old));
        }
        Ok(())
    }
}
