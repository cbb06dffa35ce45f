//! Evaluation: exact blocked search, retrieval metrics (mAP, mAP@100, Recall@K), leave-one-out
//! and query/gallery protocols, the compatibility matrix, the criterion and the update gain;
//! `models` evaluates a set of models on a test set, `protocol` on the standard benchmarks.

pub mod deploy;
pub mod mapped;
pub mod models;
pub mod pickle_bounds;
pub mod protocol;
pub mod revisited;
pub mod search;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Errors of reading feature files and of mismatched inputs.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A .npy file could not be read or has the wrong type or shape.
    #[error("{path}: {reason}")]
    Npy {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Inputs that do not fit together.
    #[error("{0}")]
    Mismatch(String),
    /// Reading the data an evaluation embeds (a benchmark's lists, its images).
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// A ground-truth file that cannot be read or does not hold together.
    #[error("{path}: {reason}")]
    Ground {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Sharing an embedding pass among ranks failed (a lost rank, a timeout).
    #[error(transparent)]
    Dist(#[from] bcl_dist::DistError),
}

/// Retrieval metrics averaged over the queries that have at least one relevant item.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RetrievalMetrics {
    /// Mean average precision over the full ranking.
    pub map: f64,
    /// mAP@100, GLDv2 definition (denominator `min(#relevant, 100)`).
    pub map_at_100: f64,
    /// Share of queries with a relevant item in the top K, by K.
    pub recall_at: BTreeMap<usize, f64>,
    /// Queries counted (those with at least one relevant item).
    pub queries: usize,
}

/// The K of Recall@K reported by default.
pub const DEFAULT_KS: [usize; 3] = [1, 5, 10];

struct QueryResult {
    ap: f64,
    ap100: f64,
    first_hit: usize, // 1-based rank of the first relevant item
}

fn score_query(
    scores: &[f64],
    qlabel: i64,
    glabels: &[i64],
    exclude: Option<usize>,
) -> Option<QueryResult> {
    let mut order: Vec<(f64, usize)> = scores
        .iter()
        .copied()
        .enumerate()
        .filter(|&(j, _)| Some(j) != exclude)
        .map(|(j, s)| (s, j))
        .collect();
    let n_rel = order.iter().filter(|&&(_, j)| glabels[j] == qlabel).count();
    if n_rel == 0 {
        return None;
    }
    // Descending score; ties broken by gallery index so the ranking is deterministic.
    order.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let (mut hits, mut ap, mut ap100, mut first_hit) = (0usize, 0f64, 0f64, 0usize);
    for (rank0, &(_, j)) in order.iter().enumerate() {
        if glabels[j] == qlabel {
            hits += 1;
            let p = hits as f64 / (rank0 + 1) as f64;
            ap += p;
            if rank0 < 100 {
                ap100 += p;
            }
            if first_hit == 0 {
                first_hit = rank0 + 1;
            }
            if hits == n_rel {
                break;
            }
        }
    }
    Some(QueryResult {
        ap: ap / n_rel as f64,
        ap100: ap100 / n_rel.min(100) as f64,
        first_hit,
    })
}

/// Exact retrieval metrics of `query` features against `gallery` features (rows, cosine or
/// inner product). With `leave_one_out`, query `i` and gallery `i` are the same item and the
/// pair is skipped. Similarities are computed in blocks of queries, so memory stays at
/// `block × gallery`.
pub fn retrieval_metrics(
    query: &Tensor,
    query_labels: &[i64],
    gallery: &Tensor,
    gallery_labels: &[i64],
    leave_one_out: bool,
    ks: &[usize],
) -> Result<RetrievalMetrics, EvalError> {
    let (nq, dq) = query
        .size2()
        .map_err(|e| EvalError::Mismatch(e.to_string()))?;
    let (ng, dg) = gallery
        .size2()
        .map_err(|e| EvalError::Mismatch(e.to_string()))?;
    if dq != dg {
        return Err(EvalError::Mismatch(format!(
            "query features have dimension {dq} but gallery features {dg}"
        )));
    }
    if nq as usize != query_labels.len() || ng as usize != gallery_labels.len() {
        return Err(EvalError::Mismatch(format!(
            "{nq} query rows with {} labels, {ng} gallery rows with {} labels",
            query_labels.len(),
            gallery_labels.len()
        )));
    }
    if leave_one_out && nq != ng {
        return Err(EvalError::Mismatch(
            "leave-one-out needs as many query as gallery rows".into(),
        ));
    }
    let kind = if query.kind() == Kind::Double || gallery.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    let g = gallery.to_kind(kind);
    let gt = g.tr();
    let block: i64 = (4_000_000 / ng.max(1)).clamp(16, 2048);
    let mut results: Vec<Option<QueryResult>> = Vec::with_capacity(nq as usize);
    let mut start = 0i64;
    while start < nq {
        let len = block.min(nq - start);
        let sims = query
            .narrow(0, start, len)
            .to_kind(kind)
            .to_device(g.device())
            .matmul(&gt)
            .to_kind(Kind::Double)
            .to_device(Device::Cpu)
            .contiguous();
        let flat: Vec<f64> = Vec::try_from(sims.view([-1]))
            .map_err(|e: tch::TchError| EvalError::Mismatch(e.to_string()))?;
        let part: Vec<Option<QueryResult>> = flat
            .par_chunks(ng as usize)
            .enumerate()
            .map(|(r, row)| {
                let qi = (start as usize) + r;
                score_query(
                    row,
                    query_labels[qi],
                    gallery_labels,
                    leave_one_out.then_some(qi),
                )
            })
            .collect();
        results.extend(part);
        start += len;
    }
    let valid: Vec<&QueryResult> = results.iter().flatten().collect();
    let n = valid.len().max(1) as f64;
    let recall_at = ks
        .iter()
        .map(|&k| {
            (
                k,
                valid.iter().filter(|r| r.first_hit <= k).count() as f64 / n,
            )
        })
        .collect();
    Ok(RetrievalMetrics {
        map: valid.iter().map(|r| r.ap).sum::<f64>() / n,
        map_at_100: valid.iter().map(|r| r.ap100).sum::<f64>() / n,
        recall_at,
        queries: valid.len(),
    })
}

/// Leave-one-out metrics on one set of items embedded twice: queries by one model, gallery by
/// another (the same tensor for self-test).
pub fn leave_one_out(
    query: &Tensor,
    gallery: &Tensor,
    labels: &[i64],
) -> Result<RetrievalMetrics, EvalError> {
    retrieval_metrics(query, labels, gallery, labels, true, &DEFAULT_KS)
}

/// The compatibility matrix: rows are query models, columns gallery models.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CompatMatrix {
    /// Model names, in row (and column) order.
    pub models: Vec<String>,
    /// `cells[q][g]`: metrics with queries from model q against a gallery from model g;
    /// `None` for a pair that was not computed.
    pub cells: Vec<Vec<Option<RetrievalMetrics>>>,
}

impl CompatMatrix {
    /// Computes every (query model, gallery model) pair on one set of items (leave-one-out).
    pub fn compute(
        names: &[String],
        features: &[Tensor],
        labels: &[i64],
    ) -> Result<Self, EvalError> {
        Self::compute_pairs(names, features, labels, |_, _| true)
    }

    /// Computes the pairs `(q, g)` for which `want(q, g)` holds (each leave-one-out mAP over
    /// the full ranking costs a sort per query, so an experiment skips the pairs no table uses).
    pub fn compute_pairs(
        names: &[String],
        features: &[Tensor],
        labels: &[i64],
        want: impl Fn(usize, usize) -> bool,
    ) -> Result<Self, EvalError> {
        let cells = features
            .iter()
            .enumerate()
            .map(|(qi, q)| {
                features
                    .iter()
                    .enumerate()
                    .map(|(gi, g)| {
                        want(qi, gi)
                            .then(|| leave_one_out(q, g, labels))
                            .transpose()
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            models: names.to_vec(),
            cells,
        })
    }

    /// The cell of two named models (`None` when unknown or not computed).
    pub fn get(&self, query: &str, gallery: &str) -> Option<&RetrievalMetrics> {
        let q = self.models.iter().position(|m| m == query)?;
        let g = self.models.iter().position(|m| m == gallery)?;
        self.cells[q][g].as_ref()
    }

    /// The cell at row `q`, column `g`, which the caller asked to compute.
    pub fn at(&self, q: usize, g: usize) -> &RetrievalMetrics {
        self.cells[q][g]
            .as_ref()
            .expect("a cell the evaluation computed")
    }
}

/// The compatibility criterion: cross-test beats the old model's own figure.
pub fn is_compatible(cross: f64, old_old: f64) -> bool {
    cross > old_old
}

/// Update gain `(M(new→old) − M(old→old)) / (M(indep→indep) − M(old→old))`; `None` when the
/// denominator is not positive (the independent model is no better than the old one).
pub fn update_gain(cross: f64, old_old: f64, indep: f64) -> Option<f64> {
    let den = indep - old_old;
    (den > 1e-12).then(|| (cross - old_old) / den)
}

pub(crate) fn npy_err(path: &Path, reason: impl std::fmt::Display) -> EvalError {
    EvalError::Npy {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The largest `.npy` header read (numpy writes a few hundred bytes; a crafted file may declare
/// gigabytes, which the reader would allocate before reading a byte of it).
const MAX_NPY_HEADER: u64 = 1 << 20;

/// Checks an `.npy` file's preamble before any parser allocates from it: the header length it
/// declares must fit the file and [`MAX_NPY_HEADER`]. Returns the offset of the data.
fn npy_data_offset(path: &Path, file_len: u64) -> Result<u64, EvalError> {
    use std::io::Read;
    let mut pre = [0u8; 12];
    let mut f =
        std::fs::File::open(path).map_err(|e| npy_err(path, format!("cannot open: {e}")))?;
    let n = f
        .read(&mut pre)
        .map_err(|e| npy_err(path, format!("cannot read: {e}")))?;
    if n < 10 || &pre[..6] != b"\x93NUMPY" {
        return Err(npy_err(path, "not a valid .npy file: no NUMPY preamble"));
    }
    let (len, preamble) = match pre[6] {
        1 => (u16::from_le_bytes([pre[8], pre[9]]) as u64, 10),
        2 | 3 if n >= 12 => (
            u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]) as u64,
            12,
        ),
        v => return Err(npy_err(path, format!("not a valid .npy file: version {v}"))),
    };
    if len > MAX_NPY_HEADER || preamble + len > file_len {
        return Err(npy_err(
            path,
            format!(
                "the header declares {len} bytes; the file has {file_len} in all (and bcl reads \
                 headers of at most {MAX_NPY_HEADER})"
            ),
        ));
    }
    Ok(preamble + len)
}

pub(crate) fn open_npy(
    path: &Path,
) -> Result<npyz::NpyFile<std::io::BufReader<std::fs::File>>, EvalError> {
    let file_len = std::fs::metadata(path)
        .map_err(|e| npy_err(path, format!("cannot open: {e}")))?
        .len();
    let offset = npy_data_offset(path, file_len)?;
    let f = std::fs::File::open(path).map_err(|e| npy_err(path, format!("cannot open: {e}")))?;
    let npy = npyz::NpyFile::new(std::io::BufReader::new(f))
        .map_err(|e| npy_err(path, format!("not a valid .npy file: {e}")))?;
    // The shape times the item size, with overflow checked, must be exactly the bytes after the
    // header: a crafted shape whose product wraps would otherwise pass and fail much later.
    let item = npy.dtype().num_bytes().map(|b| b as u64);
    let need = npy
        .shape()
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .and_then(|n| item.and_then(|b| n.checked_mul(b)));
    if need != Some(file_len - offset) {
        return Err(npy_err(
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
pub(crate) fn npy_type_code(descr: &str) -> &str {
    descr.trim_matches('\'').trim_start_matches(['<', '|', '='])
}

/// The `(rows, columns)` of a feature matrix file: a non-empty, C-ordered 2-D array.
pub(crate) fn matrix_shape<R: std::io::Read>(
    path: &Path,
    npy: &npyz::NpyFile<R>,
) -> Result<(usize, usize), EvalError> {
    let shape = npy.shape();
    if shape.len() != 2 || shape[0] == 0 || shape[1] == 0 {
        return Err(npy_err(
            path,
            format!("expected a non-empty 2-D matrix (rows = items), got shape {shape:?}"),
        ));
    }
    if npy.order() == npyz::Order::Fortran {
        return Err(npy_err(
            path,
            "Fortran-ordered arrays are not supported; save with np.ascontiguousarray",
        ));
    }
    Ok((shape[0] as usize, shape[1] as usize))
}

/// Reads a 2-D `.npy` matrix as a `[N, d]` tensor: float32, float64 (kept as float64), float16
/// or bfloat16 (`<V2`, as `ml_dtypes` saves it; both widened to float32).
pub fn read_features_npy(path: &Path) -> Result<Tensor, EvalError> {
    let npy = open_npy(path)?;
    let shape = matrix_shape(path, &npy)?;
    let dtype = npy.dtype();
    let descr = dtype.descr();
    let t = match npy_type_code(&descr) {
        "f4" => {
            let v: Vec<f32> = npy.into_vec().map_err(|e| npy_err(path, e))?;
            Tensor::from_slice(&v)
        }
        "f8" => {
            let v: Vec<f64> = npy.into_vec().map_err(|e| npy_err(path, e))?;
            Tensor::from_slice(&v)
        }
        "f2" | "V2" => {
            drop(npy);
            return mapped::MappedMatrix::open(path)?.to_f32_tensor();
        }
        other => {
            return Err(npy_err(
                path,
                format!(
                    "features must be float32, float64, float16 or bfloat16 (little-endian), \
                     got dtype '{other}'"
                ),
            ))
        }
    };
    let t = t.view([shape.0 as i64, shape.1 as i64]);
    let finite = t.isfinite().all().int64_value(&[]) == 1;
    if !finite {
        return Err(npy_err(path, "contains NaN or infinite values"));
    }
    Ok(t)
}

/// Reads a 1-D integer `.npy` array of labels (any signed or unsigned width).
pub fn read_labels_npy(path: &Path) -> Result<Vec<i64>, EvalError> {
    let npy = open_npy(path)?;
    let shape = npy.shape().to_vec();
    let n = match shape.as_slice() {
        [n] => *n,
        [n, 1] => *n,
        _ => {
            return Err(npy_err(
                path,
                format!("expected a 1-D array of labels, got shape {shape:?}"),
            ))
        }
    };
    let dtype = npy.dtype();
    let descr = dtype.descr();
    let v: Vec<i64> = match npy_type_code(&descr) {
        "i8" => npy.into_vec::<i64>().map_err(|e| npy_err(path, e))?,
        "i4" => npy
            .into_vec::<i32>()
            .map_err(|e| npy_err(path, e))?
            .into_iter()
            .map(i64::from)
            .collect(),
        "i2" => npy
            .into_vec::<i16>()
            .map_err(|e| npy_err(path, e))?
            .into_iter()
            .map(i64::from)
            .collect(),
        "i1" => npy
            .into_vec::<i8>()
            .map_err(|e| npy_err(path, e))?
            .into_iter()
            .map(i64::from)
            .collect(),
        "u1" => npy
            .into_vec::<u8>()
            .map_err(|e| npy_err(path, e))?
            .into_iter()
            .map(i64::from)
            .collect(),
        "u2" => npy
            .into_vec::<u16>()
            .map_err(|e| npy_err(path, e))?
            .into_iter()
            .map(i64::from)
            .collect(),
        "u4" => npy
            .into_vec::<u32>()
            .map_err(|e| npy_err(path, e))?
            .into_iter()
            .map(i64::from)
            .collect(),
        "u8" => npy
            .into_vec::<u64>()
            .map_err(|e| npy_err(path, e))?
            .into_iter()
            .map(|x| {
                i64::try_from(x)
                    .map_err(|_| npy_err(path, format!("label {x} does not fit in i64")))
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(npy_err(
                path,
                format!("labels must be integers, got dtype '{other}'"),
            ))
        }
    };
    if v.len() as u64 != n {
        return Err(npy_err(path, "element count does not match the shape"));
    }
    Ok(v)
}
