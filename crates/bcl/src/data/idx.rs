//! The IDX format (MNIST's layout, plain or gzipped): the bounded reader, the writer the tests'
//! fixtures use, and the four-file data directory.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{read_nonempty, DataError, Dataset};

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

/// The largest IDX file (header and body) `bcl` reads: a bound on what a header may declare, so
/// that a crafted header cannot make a gzip stream decompress without end.
const MAX_IDX_BYTES: usize = 1 << 33;

/// Parses an IDX header from the first bytes of a file; returns the dimensions, the header's
/// length and the total length (header and body) the header declares.
fn parse_idx_header(
    path: &Path,
    bytes: &[u8],
    magic: u32,
    what: &'static str,
) -> Result<(Vec<usize>, usize, usize), DataError> {
    if bytes.len() < 4 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: 4,
            found: bytes.len(),
        });
    }
    let found = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if found != magic {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            found,
            expected: magic,
            what,
        });
    }
    let ndim = (magic & 0xff) as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: header,
            found: bytes.len(),
        });
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let total = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|n| n.checked_add(header))
        .filter(|&t| t <= MAX_IDX_BYTES)
        .ok_or_else(|| DataError::Format {
            path: path.to_path_buf(),
            line: None,
            reason: format!(
                "the header declares dimensions {dims:?}: more than the {MAX_IDX_BYTES} bytes bcl \
                 reads from one IDX file"
            ),
        })?;
    Ok((dims, header, total))
}

/// Reads an IDX file, plain or gzipped, checking its header before its body: a gzip stream is
/// decompressed only up to the size its header declares (a small "gzip bomb" fails after at
/// most that many bytes, not after exhausting memory). Returns the dimensions and the body.
fn read_idx_file(
    path: &Path,
    magic: u32,
    what: &'static str,
) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let raw = read_nonempty(path)?;
    if !(raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b) {
        let (dims, header, total) = parse_idx_header(path, &raw, magic, what)?;
        if raw.len() != total {
            return Err(DataError::Truncated {
                path: path.to_path_buf(),
                expected: total,
                found: raw.len(),
            });
        }
        return Ok((dims, raw[header..].to_vec()));
    }
    let gz_err = |e: std::io::Error| DataError::Gzip {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut dec = flate2::read::MultiGzDecoder::new(&raw[..]);
    let ndim = (magic & 0xff) as u64;
    let mut bytes = Vec::new();
    (&mut dec)
        .take(4 + 4 * ndim)
        .read_to_end(&mut bytes)
        .map_err(gz_err)?;
    if bytes.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    let (dims, header, total) = parse_idx_header(path, &bytes, magic, what)?;
    // One byte past the declared end tells a longer stream from an exact one.
    (&mut dec)
        .take((total - header) as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(gz_err)?;
    if bytes.len() > total {
        return Err(DataError::Gzip {
            path: path.to_path_buf(),
            reason: format!("decompresses to more than the {total} bytes its header declares"),
        });
    }
    if bytes.len() < total {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: total,
            found: bytes.len(),
        });
    }
    Ok((dims, bytes.split_off(header)))
}

/// Reads an IDX images file (magic 0x803): returns (pixels, n, rows, cols).
pub fn read_idx_images(path: &Path) -> Result<(Vec<u8>, usize, usize, usize), DataError> {
    let (dims, body) = read_idx_file(path, IMAGES_MAGIC, "IDX unsigned-byte images, 3 dims")?;
    if dims[1] == 0 || dims[2] == 0 {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            line: None,
            reason: format!(
                "images of {} × {} pixels: each image needs at least one pixel",
                dims[1], dims[2]
            ),
        });
    }
    Ok((body, dims[0], dims[1], dims[2]))
}

/// Reads an IDX labels file (magic 0x801) and checks every label is below `classes`.
pub fn read_idx_labels(path: &Path, classes: usize) -> Result<Vec<i64>, DataError> {
    let (_, body) = read_idx_file(path, LABELS_MAGIC, "IDX unsigned-byte labels, 1 dim")?;
    body.iter()
        .enumerate()
        .map(|(index, &label)| {
            if (label as usize) < classes {
                Ok(label as i64)
            } else {
                Err(DataError::LabelOutOfRange {
                    path: path.to_path_buf(),
                    label,
                    index,
                    classes,
                })
            }
        })
        .collect()
}

/// The standard MNIST-layout file names.
const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";

/// Where the Debian package `dataset-fashion-mnist` puts its files.
pub const DEFAULT_DATA_DIR: &str = "/usr/share/datasets/fashion-mnist";

fn find(dir: &Path, name: &'static str) -> Result<PathBuf, DataError> {
    for cand in [dir.join(name), dir.join(format!("{name}.gz"))] {
        if cand.is_file() {
            return Ok(cand);
        }
    }
    Err(DataError::Missing {
        dir: dir.to_path_buf(),
        name,
    })
}

/// Reads the train and test sets of an MNIST-layout directory (plain or gzipped IDX files).
pub fn load_idx_dir(dir: &Path, classes: usize) -> Result<(Dataset, Dataset), DataError> {
    let train = Dataset::from_idx(
        &find(dir, TRAIN_IMAGES)?,
        &find(dir, TRAIN_LABELS)?,
        classes,
    )?;
    let test = Dataset::from_idx(&find(dir, TEST_IMAGES)?, &find(dir, TEST_LABELS)?, classes)?;
    Ok((train, test))
}

/// Writes an IDX images file (uncompressed): used by tests and tools that make fixtures.
pub fn write_idx_images(
    path: &Path,
    pixels: &[u8],
    n: usize,
    rows: usize,
    cols: usize,
) -> std::io::Result<()> {
    let mut b = Vec::with_capacity(16 + pixels.len());
    b.extend_from_slice(&IMAGES_MAGIC.to_be_bytes());
    for d in [n, rows, cols] {
        b.extend_from_slice(&(d as u32).to_be_bytes());
    }
    b.extend_from_slice(pixels);
    std::fs::write(path, b)
}

/// Writes an IDX labels file (uncompressed): used by tests and tools that make fixtures.
pub fn write_idx_labels(path: &Path, labels: &[u8]) -> std::io::Result<()> {
    let mut b = Vec::with_capacity(8 + labels.len());
    b.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    b.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    b.extend_from_slice(labels);
    std::fs::write(path, b)
}

/// Writes a dataset as the four MNIST-layout files of a directory (train and test).
pub fn write_idx_dir(dir: &Path, train: &Dataset, test: &Dataset) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (set, im, lb) in [
        (train, TRAIN_IMAGES, TRAIN_LABELS),
        (test, TEST_IMAGES, TEST_LABELS),
    ] {
        write_idx_images(&dir.join(im), &set.pixels, set.len(), set.rows, set.cols)?;
        let labels: Vec<u8> = set.labels.iter().map(|&l| l as u8).collect();
        write_idx_labels(&dir.join(lb), &labels)?;
    }
    Ok(())
}
