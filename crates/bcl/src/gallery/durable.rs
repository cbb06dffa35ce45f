//! The gallery's durability, apart from its index: `DurableStore<I>` keeps any
//! [`VectorIndex`] crash-safe with a write-ahead log ([`super::wal`]), snapshots and the store
//! file, keeps the sidecar of item ids and the model of each vector, and answers exact search
//! with the project's exact search over the vectors the index holds.
//!
//! On disk (`dir/`):
//! - `gallery.json`: manifest, snapshot generation and the last log sequence the snapshot holds
//!   (replaced by atomic rename: the commit point of a checkpoint);
//! - `index-G.<ext>`, `items-G.bin`: snapshot G (index, and ids → model with a CRC);
//! - `wal.log`: records `[len u32][crc32 u32][seq u64, model, n, ids, vectors]` written after the
//!   snapshot, sequence numbers consecutive; an `add` returns after its records are appended and
//!   synced, so what was reported committed survives a kill. On open the records are replayed
//!   (those the snapshot already holds are skipped by sequence number). A damaged last record is
//!   a torn write (never reported committed) and is cut off. Damage anywhere before the tail is
//!   corruption: when intact records follow it and sequence numbers are missing, the store
//!   refuses to open ([`DurableStore::open`]) and says what is damaged; [`DurableStore::recover`]
//!   replays every intact record and sets the damaged log aside, never deleting it;
//! - `LOCK`: held exclusively while a process has the store open.
//!
//! The store touches only the files it names itself: `create` refuses a directory holding
//! anything else, and stray-file clean-up removes only its own snapshot and temporary files.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::eval::search::{fused_cpu, Rows, SearchBlocks};

use super::index::VectorIndex;
use super::wal::{
    damaged_log, encode_record, lost_records, open_wal, read_wal, save_damaged_log, warn_damage,
    Cursor, WalRecord, MAX_RECORD_BYTES, RECORD_HEAD, WAL_FILE,
};
use super::{
    io_err, prepare_add, prepare_queries, GalleryError, GalleryManifest, GalleryStore, Hit, Result,
};

/// The store's own file: manifest plus snapshot state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(bound(deserialize = "C: serde::de::DeserializeOwned"))]
struct StoreFile<C> {
    backend: String,
    manifest: GalleryManifest,
    /// The index's settings.
    index: C,
    /// Snapshot generation (0: no snapshot yet).
    generation: u64,
    /// Highest log sequence folded into the snapshot.
    applied_seq: u64,
}

/// The store file: the gallery's own file, here with the snapshot state beside the manifest.
const STORE_FILE: &str = super::GALLERY_FILE;

const LOCK_FILE: &str = "LOCK";

/// The log is folded into a snapshot once it grows past this many bytes, by default.
const CHECKPOINT_BYTES: u64 = 256 << 20;

/// A gallery store over the index `I`, made durable (see the module documentation for the
/// layout).
pub struct DurableStore<I: VectorIndex> {
    dir: PathBuf,
    file: StoreFile<I::Config>,
    index: I,
    /// The gallery's vectors as one matrix (rows in id order), built by the first exact search
    /// after a change (one builder at a time: concurrent searches wait for it rather than each
    /// gathering the gallery) and dropped by the next change.
    exact: Mutex<Option<Arc<Exact>>>,
    /// Item id → index into `file.manifest.models`.
    items: HashMap<u64, u32>,
    /// Items per index into `file.manifest.models`, kept with `items` so that `counts` (asked
    /// by every /stats) does not walk the gallery.
    per_model: Vec<usize>,
    wal: File,
    wal_len: u64,
    next_seq: u64,
    /// Set when an add failed half-way through the in-memory index: the index and the item
    /// list may disagree, so every later call is refused (the log, replayed on reopen, holds
    /// every committed write).
    poisoned: Option<String>,
    /// Test hook: the next apply fails after its removals (see [`DurableStore::fail_next_apply`]).
    fail_next_apply: bool,
    _lock: File,
}

/// What exact search reads: item ids ascending and their vectors, one row each.
struct Exact {
    ids: Vec<u64>,
    vectors: Vec<f32>,
}

/// Counts one item of model `m` in (`add`) or out of `per_model`.
fn count_item(per_model: &mut Vec<usize>, m: u32, add: bool) {
    let m = m as usize;
    if per_model.len() <= m {
        per_model.resize(m + 1, 0);
    }
    if add {
        per_model[m] += 1;
    } else {
        per_model[m] = per_model[m].saturating_sub(1);
    }
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
        Err(std::fs::TryLockError::WouldBlock) => Err(GalleryError::Locked {
            path: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
    }
}

fn write_store_file<C: Serialize>(dir: &Path, f: &StoreFile<C>) -> Result<()> {
    let path = dir.join(STORE_FILE);
    let text = serde_json::to_string_pretty(f).map_err(|e| GalleryError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    crate::files::write_atomic(&path, text.as_bytes()).map_err(|e| GalleryError::Corrupt {
        path,
        reason: e.to_string(),
    })
}

fn items_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("items-{generation}.bin"))
}

fn index_path<I: VectorIndex>(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("index-{generation}.{}", I::EXTENSION))
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
    crate::files::write_atomic(path, &b).map_err(|e| GalleryError::Corrupt {
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
    let n = c.u64().unwrap_or(0);
    let want = usize::try_from(n)
        .ok()
        .and_then(|n| n.checked_mul(12))
        .and_then(|b| b.checked_add(8));
    if want != Some(body.len()) {
        return Err(corrupt("length does not match its item count"));
    }
    let n = n as usize;
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

/// What [`DurableStore::recover`] did to a damaged log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Intact records replayed from the log.
    pub records: usize,
    /// Damaged byte ranges skipped (start, end) in the original log.
    pub damaged: Vec<(u64, u64)>,
    /// Sequence numbers of the records lost in the damage (acknowledged writes that are gone).
    pub lost_sequences: Vec<u64>,
    /// Where the damaged log was copied before the store was repaired (None if it was intact).
    pub saved_log: Option<PathBuf>,
}

/// Whether `name` is a file this store names itself (and may therefore create or remove).
fn own_file<I: VectorIndex>(name: &str) -> bool {
    let numbered = |s: &str, pre: &str, post: &str| {
        s.strip_prefix(pre)
            .and_then(|r| r.strip_suffix(post))
            .is_some_and(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()))
    };
    let ext = format!(".{}", I::EXTENSION);
    let snapshot = |n: &str| numbered(n, "index-", &ext) || numbered(n, "items-", ".bin");
    name == LOCK_FILE
        || name == WAL_FILE
        || name == STORE_FILE
        || snapshot(name)
        || numbered(name, "index-", &format!("{ext}.tmp"))
        || crate::files::atomic_temp_target(name).is_some_and(|t| t == STORE_FILE || snapshot(t))
        || damaged_log(name)
}

impl<I: VectorIndex> DurableStore<I> {
    /// Creates an empty store in `dir`: created if missing, refused if it holds anything but
    /// files of a store whose create crashed (a gallery needs a directory of its own).
    pub fn create(dir: &Path, manifest: GalleryManifest, index: I::Config) -> Result<Self> {
        super::validate_dim(manifest.dim)?;
        super::validate_models(&manifest.models)?;
        super::check_fresh_dir(dir, |n| own_file::<I>(n) && !damaged_log(n))?;
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock = lock(dir)?;
        if dir.join(STORE_FILE).exists() {
            return Err(GalleryError::Invalid(format!(
                "{}: a gallery was created here meanwhile by another process",
                dir.display()
            )));
        }
        let wal_path = dir.join(WAL_FILE);
        // A log left by a crashed create would belong to no manifest: start it empty. The log is
        // opened in append mode, so writes after a checkpoint truncates it land at its start.
        let wal = open_wal(&wal_path)?;
        wal.set_len(0).map_err(io_err(&wal_path))?;
        let file = StoreFile {
            backend: I::BACKEND.into(),
            manifest,
            index,
            generation: 0,
            applied_seq: 0,
        };
        write_store_file(dir, &file)?;
        let index = I::create(file.manifest.dim, &file.index)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
            index,
            exact: Mutex::new(None),
            items: HashMap::new(),
            per_model: Vec::new(),
            wal,
            wal_len: 0,
            next_seq: 1,
            poisoned: None,
            fail_next_apply: false,
            _lock: lock,
        })
    }

    /// Opens the store in `dir`, replaying its log. A torn last record (a crash mid-write, never
    /// reported committed) is cut off; damage before the tail that lost committed records is
    /// refused with [`GalleryError::Corrupt`] naming the byte range and the lost sequences (see
    /// [`DurableStore::recover`]).
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, false).map(|(s, _)| s)
    }

    /// Opens a store whose log is damaged: copies the log aside (`wal.log.damaged-<time>`),
    /// replays every intact record, folds them into a new snapshot and reports what was lost.
    /// On an intact store it is the same as [`DurableStore::open`].
    pub fn recover(dir: &Path) -> Result<(Self, Recovery)> {
        Self::open_with(dir, true)
    }

    /// Reads and checks `gallery.json` (whose presence [`DurableStore::open_with`] checked).
    fn read_store_file(dir: &Path) -> Result<StoreFile<I::Config>> {
        let path = dir.join(STORE_FILE);
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let corrupt = |reason: String| GalleryError::Corrupt {
            path: path.clone(),
            reason,
        };
        let file: StoreFile<I::Config> =
            serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if file.backend != I::BACKEND {
            return Err(corrupt(format!(
                "written by the {} backend, not {}",
                file.backend,
                I::BACKEND
            )));
        }
        super::validate_dim(file.manifest.dim).map_err(|e| corrupt(e.to_string()))?;
        super::validate_models(&file.manifest.models).map_err(|e| corrupt(e.to_string()))?;
        Ok(file)
    }

    /// Loads snapshot `file.generation` (an empty index when there is none).
    fn load_snapshot(dir: &Path, file: &StoreFile<I::Config>) -> Result<(I, HashMap<u64, u32>)> {
        if file.generation == 0 {
            return Ok((I::create(file.manifest.dim, &file.index)?, HashMap::new()));
        }
        let ip = index_path::<I>(dir, file.generation);
        let index = I::load(&ip, file.manifest.dim, &file.index)?;
        let items = read_items(
            &items_path(dir, file.generation),
            file.manifest.models.len(),
        )?;
        if index.len() != items.len() {
            return Err(GalleryError::Corrupt {
                path: ip,
                reason: format!(
                    "{} vectors but the sidecar lists {} items",
                    index.len(),
                    items.len()
                ),
            });
        }
        Ok((index, items))
    }

    fn open_with(dir: &Path, recover: bool) -> Result<(Self, Recovery)> {
        // Before the lock, which would create a LOCK file in a directory that is no gallery.
        if !dir.join(STORE_FILE).is_file() {
            return Err(GalleryError::Missing {
                path: dir.to_path_buf(),
                reason: format!("{STORE_FILE} not found"),
            });
        }
        let lock = lock(dir)?;
        let file = Self::read_store_file(dir)?;
        let (index, items) = Self::load_snapshot(dir, &file)?;
        remove_strays::<I>(dir, file.generation);
        let wal_path = dir.join(WAL_FILE);
        let mut wal = open_wal(&wal_path)?;
        let mut bytes = Vec::new();
        wal.read_to_end(&mut bytes).map_err(io_err(&wal_path))?;
        let scan = read_wal(&bytes, file.manifest.dim, file.applied_seq);
        let lost: Vec<u64> = scan.damage.iter().flat_map(|d| d.missing.clone()).collect();
        if !lost.is_empty() && !recover {
            return Err(lost_records(&wal_path, &scan, bytes.len(), lost.len()));
        }
        let mut recovery = Recovery {
            records: scan.records.len(),
            damaged: scan
                .damage
                .iter()
                .map(|d| (d.from as u64, d.to as u64))
                .collect(),
            lost_sequences: lost,
            saved_log: None,
        };
        if recover && !scan.damage.is_empty() {
            recovery.saved_log = Some(save_damaged_log(dir, &bytes)?);
        }
        warn_damage(&wal_path, &scan, bytes.len());
        if scan.good < bytes.len() {
            wal.set_len(scan.good as u64).map_err(io_err(&wal_path))?;
            wal.sync_all().map_err(io_err(&wal_path))?;
        }
        let mut per_model = Vec::new();
        for &m in items.values() {
            count_item(&mut per_model, m, true);
        }
        let mut store = Self {
            dir: dir.to_path_buf(),
            next_seq: file.applied_seq + 1,
            file,
            index,
            exact: Mutex::new(None),
            items,
            per_model,
            wal,
            wal_len: scan.good as u64,
            poisoned: None,
            fail_next_apply: false,
            _lock: lock,
        };
        store.replay(scan.records, &wal_path)?;
        if !scan.damage.is_empty() {
            // Fold what was replayed into a snapshot, so the damaged bytes leave the live log.
            store.checkpoint()?;
        }
        Ok((store, recovery))
    }

    /// Applies the log's records newer than the snapshot, in order.
    fn replay(&mut self, records: Vec<WalRecord>, wal_path: &Path) -> Result<()> {
        for r in records {
            self.next_seq = self.next_seq.max(r.seq + 1);
            if r.seq <= self.file.applied_seq {
                continue;
            }
            let m = self
                .model_index(&r.model)
                .map_err(|_| GalleryError::Corrupt {
                    path: wal_path.to_path_buf(),
                    reason: format!(
                        "record {} names model {} not in the manifest",
                        r.seq, r.model
                    ),
                })?;
            self.apply(m, &r.ids, &r.vectors)?;
        }
        Ok(())
    }

    /// Makes the next write fail inside the in-memory index after its removals, as an index
    /// error would (for tests of the store's behaviour after such a failure).
    #[doc(hidden)]
    pub fn fail_next_apply(&mut self) {
        self.fail_next_apply = true;
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The index's settings.
    pub fn index_config(&self) -> I::Config {
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

    /// Puts vectors into the in-memory index (upsert). Room is reserved before anything
    /// changes; a failure after the first change poisons the store (see `poisoned`).
    fn apply(&mut self, model: u32, ids: &[u64], vectors: &[f32]) -> Result<()> {
        self.check_poison()?;
        self.index.reserve(ids.len())?;
        *self.exact.get_mut().unwrap_or_else(|p| p.into_inner()) = None;
        let changed = (|| {
            for id in ids {
                if let Some(m) = self.items.remove(id) {
                    count_item(&mut self.per_model, m, false);
                    self.index.remove(*id)?;
                }
            }
            if std::mem::take(&mut self.fail_next_apply) {
                return Err(GalleryError::Index("injected failure (test hook)".into()));
            }
            self.index.add(ids, vectors)?;
            for &id in ids {
                if let Some(m) = self.items.insert(id, model) {
                    count_item(&mut self.per_model, m, false);
                }
                count_item(&mut self.per_model, model, true);
            }
            Ok(())
        })();
        if let Err(e) = &changed {
            self.poisoned = Some(e.to_string());
        }
        changed
    }

    /// Refuses to go on after a write failed half-way through the in-memory index.
    fn check_poison(&self) -> Result<()> {
        match &self.poisoned {
            None => Ok(()),
            Some(why) => Err(GalleryError::Invalid(format!(
                "{}: an earlier write failed part-way through the in-memory index ({why}); \
                 reopen the gallery: its log replays every committed write",
                self.dir.display()
            ))),
        }
    }

    /// The vectors of `ids`, row-major; an id the store does not hold is an error.
    fn rows_of(&self, ids: &[u64]) -> Result<Vec<f32>> {
        let dim = self.file.manifest.dim;
        let mut out = vec![0f32; ids.len() * dim];
        for (&id, row) in ids.iter().zip(out.chunks_mut(dim)) {
            if !(self.items.contains_key(&id) && self.index.get(id, row)?) {
                return Err(GalleryError::Invalid(format!("no item with id {id}")));
            }
        }
        Ok(out)
    }

    /// The matrix exact search reads, built once after each change.
    fn exact_rows(&self) -> Result<Arc<Exact>> {
        let mut cached = self.exact.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = cached.as_ref() {
            return Ok(Arc::clone(e));
        }
        let mut ids: Vec<u64> = self.items.keys().copied().collect();
        ids.sort_unstable();
        let vectors = self.rows_of(&ids)?;
        let e = Arc::new(Exact { ids, vectors });
        *cached = Some(Arc::clone(&e));
        Ok(e)
    }

    fn search(&self, queries: &[f32], k: usize, exact: bool) -> Result<Vec<Vec<Hit>>> {
        self.check_poison()?;
        let dim = self.file.manifest.dim;
        let q = prepare_queries(dim, queries, k)?;
        let nq = q.len() / dim;
        if self.items.is_empty() {
            return Ok(vec![Vec::new(); nq]);
        }
        // More than the gallery holds is everything it holds.
        let k = k.min(self.items.len());
        if !exact {
            return q
                .par_chunks(dim)
                .map(|row| self.index.search(row, k))
                .collect();
        }
        // The project's exact search (ties: the lower row, i.e. the lower id, first).
        let e = self.exact_rows()?;
        let qt = Tensor::from_slice(&q).view([nq as i64, dim as i64]);
        let top = fused_cpu(
            &qt,
            Rows::F32(&e.vectors),
            dim,
            k,
            SearchBlocks::default(),
            None,
        )
        .map_err(|err| GalleryError::Index(err.to_string()))?;
        let scores = Vec::<f32>::try_from(top.scores.contiguous().view([-1]))
            .map_err(|err| GalleryError::Index(err.to_string()))?;
        let rows = Vec::<i64>::try_from(top.indices.contiguous().view([-1]))
            .map_err(|err| GalleryError::Index(err.to_string()))?;
        Ok(scores
            .chunks(k)
            .zip(rows.chunks(k))
            .map(|(s, r)| {
                s.iter()
                    .zip(r)
                    .map(|(&score, &row)| Hit {
                        id: e.ids[row as usize],
                        score,
                    })
                    .collect()
            })
            .collect())
    }
}

/// Removes the store's own temporary files and snapshots of other generations (left by a crash
/// mid-checkpoint); any file the store did not name is left alone.
fn remove_strays<I: VectorIndex>(dir: &Path, generation: u64) {
    let keep = [
        index_path::<I>(dir, generation),
        items_path(dir, generation),
    ];
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let permanent =
            [LOCK_FILE, WAL_FILE, STORE_FILE].contains(&name.as_str()) || damaged_log(&name);
        if own_file::<I>(&name) && !permanent && !keep.contains(&p) && e.path().is_file() {
            let _ = std::fs::remove_file(&p);
        }
    }
}

impl<I: VectorIndex> GalleryStore for DurableStore<I> {
    fn backend(&self) -> &'static str {
        I::BACKEND
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
        self.check_poison()?;
        let m = self.model_index(model)?;
        let v = prepare_add(&self.file.manifest, model, ids, vectors)?;
        let dim = self.file.manifest.dim;
        // Large adds become several records, so no length field can overflow.
        let per_record =
            ((MAX_RECORD_BYTES - RECORD_HEAD - model.len() - 4) / (8 + 4 * dim)).max(1);
        let wal_path = self.dir.join(WAL_FILE);
        for (ids, v) in ids.chunks(per_record).zip(v.chunks(per_record * dim)) {
            let rec = encode_record(self.next_seq, model, ids, v)?;
            let written = self.wal.write_all(&rec).and_then(|()| self.wal.sync_data());
            if let Err(e) = written {
                // Cut what part of the record reached the log, so the next write does not
                // follow a damaged record (the add was not acknowledged).
                if self.wal.set_len(self.wal_len).is_err() {
                    self.poisoned = Some(format!("the log could not be written: {e}"));
                }
                return Err(io_err(&wal_path)(e));
            }
            self.wal_len += rec.len() as u64;
            self.next_seq += 1;
            self.apply(m, ids, v)?;
        }
        let limit = match I::checkpoint_bytes(&self.file.index) {
            0 => CHECKPOINT_BYTES,
            n => n,
        };
        if self.wal_len > limit {
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
        self.check_poison()?;
        self.rows_of(ids)
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
        Ok(self
            .file
            .manifest
            .models
            .iter()
            .zip(&self.per_model)
            .filter(|(_, n)| **n > 0)
            .map(|(m, n)| (m.id.clone(), *n))
            .collect())
    }

    fn set_search_expansion(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            return Err(GalleryError::Invalid(
                "the search expansion must be at least 1".into(),
            ));
        }
        self.index.set_search_expansion(n);
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<()> {
        self.check_poison()?;
        if self.wal_len == 0 {
            return Ok(());
        }
        let g = self.file.generation + 1;
        let ip = index_path::<I>(&self.dir, g);
        let tmp = self.dir.join(format!("index-{g}.{}.tmp", I::EXTENSION));
        self.index.save(&tmp)?;
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
            let _ = std::fs::remove_file(index_path::<I>(&self.dir, old));
            let _ = std::fs::remove_file(items_path(&self.dir, old));
        }
        Ok(())
    }
}
