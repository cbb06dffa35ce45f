//! The embedded gallery store: a usearch HNSW index (with its exact search) plus a sidecar of
//! item ids and the model of each vector, made crash-safe by a write-ahead log.
//!
//! On disk (`dir/`):
//! - `gallery.json`: manifest, snapshot generation and the last log sequence the snapshot holds
//!   (replaced by atomic rename: the commit point of a checkpoint);
//! - `index-G.usearch`, `items-G.bin`: snapshot G (index, and ids → model with a CRC);
//! - `wal.log`: records `[len u32][crc32 u32][seq u64, model, n, ids, vectors]` written after the
//!   snapshot, sequence numbers consecutive; an `add` returns after its records are appended and
//!   synced, so what was reported committed survives a kill. On open the records are replayed
//!   (those the snapshot already holds are skipped by sequence number). A damaged last record is
//!   a torn write (never reported committed) and is cut off. Damage anywhere before the tail is
//!   corruption: when intact records follow it and sequence numbers are missing, the store
//!   refuses to open ([`UsearchStore::open`]) and says what is damaged; [`UsearchStore::recover`]
//!   replays every intact record and sets the damaged log aside, never deleting it;
//! - `LOCK`: held exclusively while a process has the store open.
//!
//! The store touches only the files it names itself: `create` refuses a directory holding
//! anything else, and stray-file clean-up removes only its own snapshot and temporary files.

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

/// The store file: the gallery's own file, here with the snapshot state beside the manifest.
const STORE_FILE: &str = super::GALLERY_FILE;
const WAL_FILE: &str = "wal.log";
const LOCK_FILE: &str = "LOCK";
/// The log is folded into a snapshot once it grows past this many bytes, by default.
const CHECKPOINT_BYTES: u64 = 256 << 20;
/// An add is written as records of at most this many payload bytes (the length field is u32;
/// a crash in the middle of a larger add may keep a prefix of its records).
const MAX_RECORD_BYTES: usize = 64 << 20;
/// Bytes of a record before its ids: seq u64, model length u16 (the model, then n u32 follow).
const RECORD_HEAD: usize = 8 + 2;

/// The embedded usearch store (see the module documentation for the layout).
pub struct UsearchStore {
    dir: PathBuf,
    file: StoreFile,
    index: Index,
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
    /// Test hook: the next apply fails after its removals (see [`UsearchStore::fail_next_apply`]).
    fail_next_apply: bool,
    /// One permit per thread context reserved in the index (see [`Permits`]).
    permits: Permits,
    _lock: File,
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
    crate::files::write_atomic(&path, text.as_bytes()).map_err(|e| GalleryError::Corrupt {
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

/// Encodes one log record; a field that does not fit its width is an error, never truncated.
fn encode_record(seq: u64, model: &str, ids: &[u64], vectors: &[f32]) -> Result<Vec<u8>> {
    let too_long = |what: &str| {
        GalleryError::Invalid(format!(
            "a log record's {what} does not fit its length field"
        ))
    };
    let ml = u16::try_from(model.len()).map_err(|_| too_long("model id"))?;
    let n = u32::try_from(ids.len()).map_err(|_| too_long("item count"))?;
    let mut p = Vec::with_capacity(8 + 2 + model.len() + 4 + ids.len() * 8 + vectors.len() * 4);
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend_from_slice(&ml.to_le_bytes());
    p.extend_from_slice(model.as_bytes());
    p.extend_from_slice(&n.to_le_bytes());
    ids.iter()
        .for_each(|i| p.extend_from_slice(&i.to_le_bytes()));
    vectors
        .iter()
        .for_each(|v| p.extend_from_slice(&v.to_le_bytes()));
    let len = u32::try_from(p.len()).map_err(|_| too_long("payload"))?;
    let mut out = Vec::with_capacity(p.len() + 8);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&p).to_le_bytes());
    out.extend_from_slice(&p);
    Ok(out)
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
    // The count must match the bytes left before anything is allocated for it.
    if n == 0 || Some(c.0.len()) != n.checked_mul(8 + 4 * dim) {
        return None;
    }
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

/// The intact record starting at byte `at`, with the offset after it.
fn record_at(bytes: &[u8], at: usize, dim: usize) -> Option<(WalRecord, usize)> {
    let head = bytes.get(at..at.checked_add(8)?)?;
    let len = u32::from_le_bytes(head[..4].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(head[4..].try_into().unwrap());
    let end = at.checked_add(8)?.checked_add(len)?;
    let payload = bytes.get(at + 8..end)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    decode_payload(payload, dim).map(|r| (r, end))
}

/// Whether a record plausibly starts at `at` (its fields agree with its length), checked before
/// the checksum so that scanning a damaged region byte by byte stays linear.
fn plausible_at(bytes: &[u8], at: usize, dim: usize) -> bool {
    let field = |o: usize, n: usize| bytes.get(at + o..at + o + n);
    let (Some(len), Some(ml)) = (field(0, 4), field(16, 2)) else {
        return false;
    };
    let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
    let ml = u16::from_le_bytes(ml.try_into().unwrap()) as usize;
    let Some(n) = field(18 + ml, 4) else {
        return false;
    };
    let n = u32::from_le_bytes(n.try_into().unwrap()) as usize;
    let want = n
        .checked_mul(8 + 4 * dim)
        .and_then(|b| b.checked_add(RECORD_HEAD + ml + 4));
    n > 0 && want == Some(len) && at + 8 + len <= bytes.len()
}

/// A damaged region of the log followed by intact records.
#[derive(Debug, Clone)]
struct Damage {
    /// Byte offset where the damage starts, and where the next intact record starts.
    from: usize,
    to: usize,
    /// Sequence numbers of the records that must have been in the damaged bytes.
    missing: std::ops::RangeInclusive<u64>,
}

/// The log as read: intact records, the damaged regions between them, and the byte length up to
/// the end of the last intact record (anything after it is a torn tail).
struct WalScan {
    records: Vec<WalRecord>,
    damage: Vec<Damage>,
    good: usize,
}

/// The error of a log whose damage hides acknowledged records (opening would drop them).
fn lost_records(wal_path: &Path, scan: &WalScan, len: usize, lost: usize) -> GalleryError {
    let d = scan
        .damage
        .iter()
        .find(|d| !d.missing.is_empty())
        .expect("called with a lost record");
    GalleryError::Corrupt {
        path: wal_path.to_path_buf(),
        reason: format!(
            "damaged at bytes {}..{} of {len}: the records with sequence numbers {}..={} \
             ({lost} acknowledged write(s) in all) cannot be read, and {} intact record(s) \
             follow; the store will not open and silently drop them. Restore the log \
             from a backup, or run `bcl gallery recover` to keep every intact record \
             (the damaged log is kept beside it)",
            d.from,
            d.to,
            d.missing.start(),
            d.missing.end(),
            scan.records
                .iter()
                .filter(|r| r.seq > *d.missing.end())
                .count()
        ),
    }
}

/// Keeps a copy of a damaged log beside it (`wal.log.damaged-<unix seconds>`) before recovery.
fn save_damaged_log(dir: &Path, bytes: &[u8]) -> Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let saved = dir.join(format!("{WAL_FILE}.damaged-{secs}"));
    crate::files::write_atomic(&saved, bytes).map_err(|e| GalleryError::Corrupt {
        path: saved.clone(),
        reason: e.to_string(),
    })?;
    Ok(saved)
}

/// Logs each damaged range skipped and an unfinished last record about to be cut.
fn warn_damage(wal_path: &Path, scan: &WalScan, len: usize) {
    for d in &scan.damage {
        tracing::warn!(
            "{}: skipped {} damaged bytes at {}..{} ({})",
            wal_path.display(),
            d.to - d.from,
            d.from,
            d.to,
            if d.missing.is_empty() {
                "no record is missing around them".to_string()
            } else {
                format!("records {}..={} lost", d.missing.start(), d.missing.end())
            }
        );
    }
    if scan.good < len {
        tracing::warn!(
            "{}: cut {} bytes of an unfinished last record (never reported committed)",
            wal_path.display(),
            len - scan.good
        );
    }
}

/// Decodes the log. Where a record is damaged, it looks for the next intact record; if there is
/// none the damage is the torn tail of a crash, otherwise the damaged region is recorded with the
/// sequence numbers it must have held (none when the records around it are consecutive, as after
/// a gap of zeros that older versions of this store left behind a checkpoint). `applied` is the
/// last sequence the snapshot holds: records up to it are not needed from the log.
fn read_wal(bytes: &[u8], dim: usize, applied: u64) -> WalScan {
    let mut scan = WalScan {
        records: Vec::new(),
        damage: Vec::new(),
        good: 0,
    };
    let mut at = 0usize;
    while at < bytes.len() {
        if let Some((r, next)) = record_at(bytes, at, dim) {
            let prev = scan.records.last().map(|p| p.seq);
            if prev.is_none_or(|p| r.seq > p) {
                scan.records.push(r);
                at = next;
                scan.good = at;
                continue;
            }
        }
        // Damaged (or out of order) at `at`: find the next intact record in sequence.
        let prev = scan.records.last().map_or(applied, |p| p.seq.max(applied));
        let floor = scan.records.last().map_or(0, |p| p.seq);
        let next = (at + 1..bytes.len())
            .filter(|&p| plausible_at(bytes, p, dim))
            .find_map(|p| {
                record_at(bytes, p, dim)
                    .filter(|(r, _)| r.seq > floor)
                    .map(|(r, _)| (p, r.seq))
            });
        let Some((p, seq)) = next else {
            break; // the torn tail
        };
        scan.damage.push(Damage {
            from: at,
            to: p,
            missing: prev + 1..=seq.saturating_sub(1),
        });
        at = p;
    }
    scan
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

/// What [`UsearchStore::recover`] did to a damaged log.
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

/// Opens (or creates) the log for reading and appending. Append mode matters: after a
/// checkpoint truncates the log, the next record must land at its start, not at the old offset.
fn open_wal(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))
}

/// Whether `name` is a file this store names itself (and may therefore create or remove).
fn own_file(name: &str) -> bool {
    let numbered = |s: &str, pre: &str, post: &str| {
        s.strip_prefix(pre)
            .and_then(|r| r.strip_suffix(post))
            .is_some_and(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()))
    };
    let snapshot = |n: &str| numbered(n, "index-", ".usearch") || numbered(n, "items-", ".bin");
    name == LOCK_FILE
        || name == WAL_FILE
        || name == STORE_FILE
        || snapshot(name)
        || numbered(name, "index-", ".usearch.tmp")
        || crate::files::atomic_temp_target(name).is_some_and(|t| t == STORE_FILE || snapshot(t))
        || damaged_log(name)
}

/// Whether `name` is a damaged log set aside by [`UsearchStore::recover`] (kept for ever).
fn damaged_log(name: &str) -> bool {
    name.starts_with(&format!("{WAL_FILE}.damaged-"))
}

impl UsearchStore {
    /// Creates an empty store in `dir`: created if missing, refused if it holds anything but
    /// files of a store whose create crashed (a gallery needs a directory of its own).
    pub fn create(dir: &Path, manifest: GalleryManifest, index: UsearchConfig) -> Result<Self> {
        super::validate_dim(manifest.dim)?;
        super::validate_models(&manifest.models)?;
        super::check_fresh_dir(dir, |n| own_file(n) && !damaged_log(n))?;
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
            per_model: Vec::new(),
            wal,
            wal_len: 0,
            next_seq: 1,
            poisoned: None,
            fail_next_apply: false,
            permits: Permits::new(context_count()),
            _lock: lock,
        })
    }

    /// Opens the store in `dir`, replaying its log. A torn last record (a crash mid-write, never
    /// reported committed) is cut off; damage before the tail that lost committed records is
    /// refused with [`GalleryError::Corrupt`] naming the byte range and the lost sequences (see
    /// [`UsearchStore::recover`]).
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, false).map(|(s, _)| s)
    }

    /// Opens a store whose log is damaged: copies the log aside (`wal.log.damaged-<time>`),
    /// replays every intact record, folds them into a new snapshot and reports what was lost.
    /// On an intact store it is the same as [`UsearchStore::open`].
    pub fn recover(dir: &Path) -> Result<(Self, Recovery)> {
        Self::open_with(dir, true)
    }

    /// Reads and checks `gallery.json` (whose presence [`UsearchStore::open_with`] checked).
    fn read_store_file(dir: &Path) -> Result<StoreFile> {
        let path = dir.join(STORE_FILE);
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let corrupt = |reason: String| GalleryError::Corrupt {
            path: path.clone(),
            reason,
        };
        let file: StoreFile = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if file.backend != "usearch" {
            return Err(corrupt(format!(
                "written by the {} backend, not usearch",
                file.backend
            )));
        }
        super::validate_dim(file.manifest.dim).map_err(|e| corrupt(e.to_string()))?;
        super::validate_models(&file.manifest.models).map_err(|e| corrupt(e.to_string()))?;
        Ok(file)
    }

    /// Loads snapshot `file.generation` (an empty index when there is none).
    fn load_snapshot(dir: &Path, file: &StoreFile) -> Result<(Index, HashMap<u64, u32>)> {
        let index = new_index(file.manifest.dim, &file.index)?;
        if file.generation == 0 {
            return Ok((index, HashMap::new()));
        }
        let ip = index_path(dir, file.generation);
        index
            .load(ip.to_str().unwrap_or_default())
            .map_err(|e| GalleryError::Corrupt {
                path: ip.clone(),
                reason: e.to_string(),
            })?;
        let items = read_items(
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
        remove_strays(dir, file.generation);
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
            items,
            per_model,
            wal,
            wal_len: scan.good as u64,
            poisoned: None,
            fail_next_apply: false,
            permits: Permits::new(context_count()),
            _lock: lock,
        };
        // Thread contexts for searches: a loaded index has none reserved ("Reserve capacity
        // ahead of searches"). Searches run on rayon's pool, so its size bounds the callers.
        store.reserve(0)?;
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

    /// Puts vectors into the in-memory index (upsert). Room is reserved before anything
    /// changes; a failure after the first change poisons the store (see `poisoned`).
    fn apply(&mut self, model: u32, ids: &[u64], vectors: &[f32]) -> Result<()> {
        self.check_poison()?;
        let dim = self.file.manifest.dim;
        self.reserve(ids.len())?;
        let changed = (|| {
            for id in ids {
                if let Some(m) = self.items.remove(id) {
                    count_item(&mut self.per_model, m, false);
                    self.index.remove(*id).map_err(index_err)?;
                }
            }
            if std::mem::take(&mut self.fail_next_apply) {
                return Err(GalleryError::Index("injected failure (test hook)".into()));
            }
            let index = &self.index;
            ids.par_iter()
                .zip(vectors.par_chunks(dim))
                .try_for_each(|(&id, v)| {
                    self.permits.with(|| index.add(id, v)).map_err(index_err)
                })?;
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

    fn search(&self, queries: &[f32], k: usize, exact: bool) -> Result<Vec<Vec<Hit>>> {
        self.check_poison()?;
        let dim = self.file.manifest.dim;
        let q = prepare_queries(dim, queries, k)?;
        // More than the gallery holds is everything it holds (usearch aborts on a k it cannot
        // allocate for, such as usize::MAX).
        let k = k.min(self.items.len()).max(1);
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

/// Removes the store's own temporary files and snapshots of other generations (left by a crash
/// mid-checkpoint); any file the store did not name is left alone.
fn remove_strays(dir: &Path, generation: u64) {
    let keep = [index_path(dir, generation), items_path(dir, generation)];
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
        if own_file(&name) && !permanent && !keep.contains(&p) && e.path().is_file() {
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
        let limit = match self.file.index.checkpoint_bytes {
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
        self.index.change_expansion_search(n);
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<()> {
        self.check_poison()?;
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
