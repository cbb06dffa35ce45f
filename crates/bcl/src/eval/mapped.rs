//! A gallery file searched where it lies: a 2-D `.npy` matrix of float32, float16 or bfloat16
//! rows memory-mapped, never read into memory as a whole, streamed through exact search in
//! windows of a bounded size whose pages are dropped once searched, so a gallery larger than
//! memory is searched in bounded memory. bfloat16 is the 2-byte void type (`<V2`) that `np.save`
//! writes for `ml_dtypes.bfloat16`, NumPy having no bfloat16 of its own. The file must not
//! change while it is mapped (as with `numpy.memmap`).

use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::{Mmap, UncheckedAdvice};
use tch::Tensor;

use super::search::{fused_cpu, Rows, SearchBlocks, TopK, Window};
use super::EvalError;
use crate::npy::{err as npy_err, matrix_shape, open as open_npy};

/// The precision of a stored feature matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredKind {
    /// float32 (`<f4`).
    F32,
    /// IEEE half precision (`<f2`).
    F16,
    /// bfloat16 (`<V2`, as `ml_dtypes` saves it).
    Bf16,
}

impl StoredKind {
    /// The kind a `.npy` type string names, if a gallery may be stored in it.
    pub fn from_descr(descr: &str) -> Option<Self> {
        match crate::npy::type_code(descr) {
            "f4" => Some(Self::F32),
            "f2" => Some(Self::F16),
            "V2" => Some(Self::Bf16),
            _ => None,
        }
    }

    /// Bytes per value.
    pub fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
        }
    }

    /// The name used in messages and JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::Bf16 => "bfloat16",
        }
    }
}

/// A memory-mapped `[rows, dim]` feature matrix in a `.npy` file.
pub struct MappedMatrix {
    map: Mmap,
    offset: usize,
    rows: usize,
    dim: usize,
    kind: StoredKind,
    path: PathBuf,
}

impl std::fmt::Debug for MappedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedMatrix")
            .field("path", &self.path)
            .field("rows", &self.rows)
            .field("dim", &self.dim)
            .field("kind", &self.kind)
            .finish()
    }
}

impl MappedMatrix {
    /// Maps `path`, checking its header: a non-empty C-ordered 2-D matrix of float32, float16
    /// or bfloat16 whose shape matches the file's size. Values are checked window by window
    /// when searched.
    pub fn open(path: &Path) -> Result<Self, EvalError> {
        let npy = open_npy(path)?;
        let (rows, dim) = matrix_shape(path, &npy)?;
        let descr = npy.dtype().descr();
        let kind = StoredKind::from_descr(&descr).ok_or_else(|| {
            npy_err(
                path,
                format!(
                    "a memory-mapped gallery must be float32, float16 or bfloat16 \
                     (little-endian), got dtype {descr}"
                ),
            )
        })?;
        drop(npy);
        let file = File::open(path).map_err(|e| npy_err(path, format!("cannot open: {e}")))?;
        // SAFETY: the map is read-only; the module's contract (and its documentation) is that
        // the file does not change while mapped.
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| npy_err(path, format!("cannot memory-map: {e}")))?;
        let offset = map.len() - rows * dim * kind.bytes();
        let m = Self {
            map,
            offset,
            rows,
            dim,
            kind,
            path: path.to_path_buf(),
        };
        m.data()?;
        Ok(m)
    }

    /// Rows in the matrix.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The stored precision.
    pub fn kind(&self) -> StoredKind {
        self.kind
    }

    /// The stored values, typed.
    fn data(&self) -> Result<Rows<'_>, EvalError> {
        let bytes = &self.map[self.offset..];
        let misaligned = |_| {
            npy_err(
                &self.path,
                format!(
                    "the data start at byte {}, not a multiple of {}; re-save the file with NumPy",
                    self.offset,
                    self.kind.bytes()
                ),
            )
        };
        Ok(match self.kind {
            StoredKind::F32 => Rows::F32(bytemuck::try_cast_slice(bytes).map_err(misaligned)?),
            StoredKind::F16 => {
                Rows::F16(bytemuck::try_cast_slice::<u8, f16>(bytes).map_err(misaligned)?)
            }
            StoredKind::Bf16 => {
                Rows::Bf16(bytemuck::try_cast_slice::<u8, bf16>(bytes).map_err(misaligned)?)
            }
        })
    }

    /// An error naming the first row in `rows` that holds a NaN or an infinity, if any.
    fn check_finite(&self, data: Rows<'_>, rows: std::ops::Range<usize>) -> Result<(), EvalError> {
        match data.first_non_finite(rows, self.dim) {
            Some(r) => Err(npy_err(
                &self.path,
                format!("row {r} contains NaN or infinite values"),
            )
            .into()),
            None => Ok(()),
        }
    }

    /// The whole matrix as a float32 tensor (widened from half precision), values checked.
    pub fn to_f32_tensor(&self) -> Result<Tensor, EvalError> {
        let data = self.data()?;
        self.check_finite(data, 0..self.rows)?;
        let mut buf = Vec::new();
        let v = data.f32_rows(0..self.rows, self.dim, &mut buf);
        Ok(Tensor::from_slice(v).view([self.rows as i64, self.dim as i64]))
    }

    /// Exact top-`k` inner-product search of `query` `[nq, dim]` in the mapped rows, at most
    /// `resident_bytes` of the file in memory at once (at least one row): each window's
    /// values are checked (a NaN or an infinity is an error naming its row), searched, then
    /// its pages are dropped.
    pub fn search(
        &self,
        query: &Tensor,
        k: usize,
        blocks: SearchBlocks,
        resident_bytes: usize,
    ) -> Result<TopK, EvalError> {
        super::search::check_request(query, (self.rows as i64, self.dim as i64), k, blocks)?;
        let data = self.data()?;
        let row_bytes = self.dim * self.kind.bytes();
        let check = |rows: std::ops::Range<usize>| {
            // read ahead (the pages are mapped as the check reads them); advice only
            let _ = self.map.advise_range(
                memmap2::Advice::WillNeed,
                self.offset + rows.start * row_bytes,
                rows.len() * row_bytes,
            );
            self.check_finite(data, rows)
        };
        let release = |rows: std::ops::Range<usize>| {
            // SAFETY: the map is a read-only, shared file mapping: MADV_DONTNEED drops its
            // pages from this process, and the next access reads them again from the file
            // (unchanged, by the module's contract), so no reference sees different values.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    UncheckedAdvice::DontNeed,
                    self.offset + rows.start * row_bytes,
                    rows.len() * row_bytes,
                )
            };
        };
        let window = Window {
            rows: (resident_bytes / row_bytes).max(1),
            check: &check,
            release: &release,
        };
        fused_cpu(query, data, self.dim, k, blocks, Some(window))
    }
}
