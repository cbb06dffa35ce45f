//! The gallery's write-ahead log: records `[len u32][crc32 u32][seq u64, model, n, ids,
//! vectors]`, sequence numbers consecutive, appended and synced before a write is acknowledged;
//! the reader that tells a torn tail (a crash mid-write, never acknowledged) from damage that
//! hides acknowledged records, and what recovery keeps of a damaged log. It knows nothing of
//! the index the records are replayed into.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use super::{GalleryError, Result};

/// The log's file name in a gallery directory.
pub const WAL_FILE: &str = "wal.log";

/// An add is written as records of at most this many payload bytes (the length field is u32;
/// a crash in the middle of a larger add may keep a prefix of its records).
pub(super) const MAX_RECORD_BYTES: usize = 64 << 20;

/// Bytes of a record before its ids: seq u64, model length u16 (the model, then n u32 follow).
pub(super) const RECORD_HEAD: usize = 8 + 2;

/// One decoded log record.
pub(super) struct WalRecord {
    pub(super) seq: u64,
    pub(super) model: String,
    pub(super) ids: Vec<u64>,
    pub(super) vectors: Vec<f32>,
}

/// Encodes one log record; a field that does not fit its width is an error, never truncated.
pub(super) fn encode_record(
    seq: u64,
    model: &str,
    ids: &[u64],
    vectors: &[f32],
) -> Result<Vec<u8>> {
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
pub(super) struct Cursor<'a>(pub(super) &'a [u8]);

impl Cursor<'_> {
    pub(super) fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    pub(super) fn u16(&mut self) -> Option<u16> {
        self.take(2)
            .map(|b| u16::from_le_bytes(b.try_into().unwrap()))
    }
    pub(super) fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    }
    pub(super) fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    }
}

pub(super) fn decode_payload(p: &[u8], dim: usize) -> Option<WalRecord> {
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
pub(super) fn record_at(bytes: &[u8], at: usize, dim: usize) -> Option<(WalRecord, usize)> {
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
pub(super) fn plausible_at(bytes: &[u8], at: usize, dim: usize) -> bool {
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
pub(super) struct Damage {
    /// Byte offset where the damage starts, and where the next intact record starts.
    pub(super) from: usize,
    pub(super) to: usize,
    /// Sequence numbers of the records that must have been in the damaged bytes.
    pub(super) missing: std::ops::RangeInclusive<u64>,
}

/// The log as read: intact records, the damaged regions between them, and the byte length up to
/// the end of the last intact record (anything after it is a torn tail).
pub(super) struct WalScan {
    pub(super) records: Vec<WalRecord>,
    pub(super) damage: Vec<Damage>,
    pub(super) good: usize,
}

/// The error of a log whose damage hides acknowledged records (opening would drop them).
pub(super) fn lost_records(
    wal_path: &Path,
    scan: &WalScan,
    len: usize,
    lost: usize,
) -> GalleryError {
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
             from a backup, or recover the gallery to keep every intact record (the \
             damaged log is kept beside it)",
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
pub(super) fn save_damaged_log(dir: &Path, bytes: &[u8]) -> Result<PathBuf> {
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
pub(super) fn warn_damage(wal_path: &Path, scan: &WalScan, len: usize) {
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
pub(super) fn read_wal(bytes: &[u8], dim: usize, applied: u64) -> WalScan {
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

/// Opens (or creates) the log for reading and appending. Append mode matters: after a
/// checkpoint truncates the log, the next record must land at its start, not at the old offset.
pub(super) fn open_wal(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .append(true)
        .open(path)
        .map_err(super::io_err(path))
}

/// Whether `name` is a damaged log set aside by [`UsearchStore::recover`] (kept for ever).
pub(super) fn damaged_log(name: &str) -> bool {
    name.starts_with(&format!("{WAL_FILE}.damaged-"))
}
