//! The `.npy` format, the one place bcl reads and writes it: a bounded, checked header (a
//! crafted file never makes the reader allocate what the file does not hold), feature matrices
//! and label arrays read with their type and shape checked, and tensors written atomically
//! (synced, renamed into place) through [`crate::files::write_atomic_with`].

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use tch::Tensor;

use crate::files::FileError;

/// A `.npy` file that cannot be read, or holds the wrong type or shape.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct NpyError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub reason: String,
}

/// An error about `path`.
pub(crate) fn err(path: &Path, reason: impl std::fmt::Display) -> NpyError {
    NpyError {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The most characters of a parser's message quoted in an error: the parser quotes the header
/// it failed on, which a crafted file makes a megabyte long.
const MAX_EXCERPT: usize = 160;

/// `message` escaped (control characters and quotes as escapes) and cut to [`MAX_EXCERPT`]
/// characters, saying how long it was when cut.
pub(crate) fn excerpt(message: &str) -> String {
    let escaped: String = message.escape_debug().collect();
    let n = escaped.chars().count();
    if n <= MAX_EXCERPT {
        return escaped;
    }
    let head: String = escaped.chars().take(MAX_EXCERPT).collect();
    format!("{head}… ({n} characters in all)")
}

/// The largest `.npy` header read (numpy writes a few hundred bytes; a crafted file may declare
/// gigabytes, which the reader would allocate before reading a byte of it).
const MAX_HEADER: u64 = 1 << 20;

/// Checks an `.npy` file's preamble before any parser allocates from it: the header length it
/// declares must fit the file and [`MAX_HEADER`]. Returns the offset of the data.
fn data_offset(path: &Path, file_len: u64) -> Result<u64, NpyError> {
    use std::io::Read;
    let mut pre = [0u8; 12];
    let mut f = File::open(path).map_err(|e| err(path, format!("cannot open: {e}")))?;
    let n = f
        .read(&mut pre)
        .map_err(|e| err(path, format!("cannot read: {e}")))?;
    if n < 10 || &pre[..6] != b"\x93NUMPY" {
        return Err(err(path, "not a valid .npy file: no NUMPY preamble"));
    }
    let (len, preamble) = match pre[6] {
        1 => (u16::from_le_bytes([pre[8], pre[9]]) as u64, 10),
        2 | 3 if n >= 12 => (
            u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]) as u64,
            12,
        ),
        v => return Err(err(path, format!("not a valid .npy file: version {v}"))),
    };
    if len > MAX_HEADER || preamble + len > file_len {
        return Err(err(
            path,
            format!(
                "the header declares {len} bytes; the file has {file_len} in all (and bcl reads \
                 headers of at most {MAX_HEADER})"
            ),
        ));
    }
    Ok(preamble + len)
}

/// Opens `path` as `.npy`: the preamble bounded, the header parsed, and the shape times the
/// item size exactly the bytes after the header.
pub(crate) fn open(path: &Path) -> Result<npyz::NpyFile<BufReader<File>>, NpyError> {
    let file_len = std::fs::metadata(path)
        .map_err(|e| err(path, format!("cannot open: {e}")))?
        .len();
    let offset = data_offset(path, file_len)?;
    let f = File::open(path).map_err(|e| err(path, format!("cannot open: {e}")))?;
    let npy = npyz::NpyFile::new(BufReader::new(f)).map_err(|e| {
        err(
            path,
            format!("not a valid .npy file: {}", excerpt(&e.to_string())),
        )
    })?;
    // The shape times the item size, with overflow checked, must be exactly the bytes after the
    // header: a crafted shape whose product wraps would otherwise pass and fail much later.
    let item = npy.dtype().num_bytes().map(|b| b as u64);
    let need = npy
        .shape()
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .and_then(|n| item.and_then(|b| n.checked_mul(b)));
    if need != Some(file_len - offset) {
        return Err(err(
            path,
            format!(
                "the shape {:?} does not match the {} bytes of data the file holds",
                npy.shape(),
                file_len - offset
            ),
        ));
    }
    Ok(npy)
}

/// A `.npy` type string without its quotes and its little-endian or no-order mark (`'<f4'` →
/// `f4`); a big-endian type keeps its `>` and so matches none of the types bcl reads.
pub(crate) fn type_code(descr: &str) -> &str {
    descr.trim_matches('\'').trim_start_matches(['<', '|', '='])
}

/// The `(rows, columns)` of a feature matrix file: a non-empty, C-ordered 2-D array.
pub(crate) fn matrix_shape<R: std::io::Read>(
    path: &Path,
    npy: &npyz::NpyFile<R>,
) -> Result<(usize, usize), NpyError> {
    let shape = npy.shape();
    if shape.len() != 2 || shape[0] == 0 || shape[1] == 0 {
        return Err(err(
            path,
            format!("expected a non-empty 2-D matrix (rows = items), got shape {shape:?}"),
        ));
    }
    if npy.order() == npyz::Order::Fortran {
        return Err(err(
            path,
            "Fortran-ordered arrays are not supported; save with np.ascontiguousarray",
        ));
    }
    Ok((shape[0] as usize, shape[1] as usize))
}

/// Reads a 2-D `.npy` matrix as a `[N, d]` tensor: float32, float64 (kept as float64), float16
/// or bfloat16 (`<V2`, as `ml_dtypes` saves it; both widened to float32). NaN or infinite
/// values are refused.
pub fn read_features(path: &Path) -> Result<Tensor, NpyError> {
    let npy = open(path)?;
    let shape = matrix_shape(path, &npy)?;
    let dtype = npy.dtype();
    let descr = dtype.descr();
    let values = |e: std::io::Error| err(path, excerpt(&e.to_string()));
    let t = match type_code(&descr) {
        "f4" => Tensor::from_slice(&npy.into_vec::<f32>().map_err(values)?),
        "f8" => Tensor::from_slice(&npy.into_vec::<f64>().map_err(values)?),
        code @ ("f2" | "V2") => {
            // half precision has no npyz element type here: widen the raw little-endian pairs
            drop(npy);
            let bytes = std::fs::read(path).map_err(|e| err(path, format!("cannot read: {e}")))?;
            let data = &bytes[bytes.len() - shape.0 * shape.1 * 2..];
            let bits = data
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]));
            let v: Vec<f32> = if code == "f2" {
                bits.map(|b| half::f16::from_bits(b).to_f32()).collect()
            } else {
                bits.map(|b| half::bf16::from_bits(b).to_f32()).collect()
            };
            Tensor::from_slice(&v)
        }
        other => {
            return Err(err(
                path,
                format!(
                    "features must be float32, float64, float16 or bfloat16 (little-endian), \
                     got dtype '{}'",
                    excerpt(other)
                ),
            ))
        }
    };
    let t = t.view([shape.0 as i64, shape.1 as i64]);
    let finite = t.isfinite().all().int64_value(&[]) == 1;
    if !finite {
        return Err(err(path, "contains NaN or infinite values"));
    }
    Ok(t)
}

/// Reads the elements of `npy` as `T` and widens them to `i64`, naming any that does not fit.
fn widen<T>(path: &Path, npy: npyz::NpyFile<BufReader<File>>) -> Result<Vec<i64>, NpyError>
where
    T: npyz::Deserialize + Copy + std::fmt::Display,
    i64: TryFrom<T>,
{
    npy.into_vec::<T>()
        .map_err(|e| err(path, excerpt(&e.to_string())))?
        .into_iter()
        .map(|x| i64::try_from(x).map_err(|_| err(path, format!("label {x} does not fit in i64"))))
        .collect()
}

/// Reads a 1-D integer `.npy` array of labels (any signed or unsigned width; `[N, 1]` is taken
/// as `[N]`).
pub fn read_labels(path: &Path) -> Result<Vec<i64>, NpyError> {
    let npy = open(path)?;
    let shape = npy.shape().to_vec();
    let n = match shape.as_slice() {
        [n] | [n, 1] => *n,
        _ => {
            return Err(err(
                path,
                format!("expected a 1-D array of labels, got shape {shape:?}"),
            ))
        }
    };
    let descr = npy.dtype().descr();
    let v = match type_code(&descr) {
        "i8" => widen::<i64>(path, npy)?,
        "i4" => widen::<i32>(path, npy)?,
        "i2" => widen::<i16>(path, npy)?,
        "i1" => widen::<i8>(path, npy)?,
        "u8" => widen::<u64>(path, npy)?,
        "u4" => widen::<u32>(path, npy)?,
        "u2" => widen::<u16>(path, npy)?,
        "u1" => widen::<u8>(path, npy)?,
        other => {
            return Err(err(
                path,
                format!("labels must be integers, got dtype '{}'", excerpt(other)),
            ))
        }
    };
    if v.len() as u64 != n {
        return Err(err(path, "element count does not match the shape"));
    }
    Ok(v)
}

/// Writes `t` to `path` as `.npy` atomically: a temporary file beside it, synced, renamed into
/// place, the directory synced; `path` is untouched on failure. A tensor off the CPU is copied
/// to it first.
pub fn write_atomic(path: &Path, t: &Tensor) -> Result<(), FileError> {
    let t = t.to_device(tch::Device::Cpu);
    crate::files::write_atomic_with(path, |tmp| t.write_npy(tmp).map_err(|e| e.to_string()))
}
