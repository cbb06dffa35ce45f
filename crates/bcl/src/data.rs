//! Data: the IDX reader (MNIST layout, plain or gzipped), in-memory image datasets, the
//! deterministic scenario splits of METHOD.md section 6, and training-time augmentation;
//! `config` says what a run's data are, `source` opens them for every format (the one way every
//! command reads data), `cifar` reads CIFAR-100's binary files, `lists` the image lists of the
//! retrieval benchmarks, `images` decodes image files (and loads them in parallel).

pub mod cifar;
pub mod config;
pub mod images;
pub mod lists;
pub mod source;

pub use config::{DataConfig, DataFormat, Part};
pub use source::{open, open_part, open_test, Opened, TrainSource};

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

/// Errors of reading and splitting data; each names the file and the reason.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file has no bytes at all.
    #[error("{path}: the file is empty")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The gzip stream is corrupt.
    #[error("{path}: not a valid gzip stream: {reason}")]
    Gzip {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// The magic number does not match the expected IDX kind.
    #[error("{path}: wrong magic number {found:#010x}, expected {expected:#010x} ({what})")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The magic number found.
        found: u32,
        /// The magic number expected.
        expected: u32,
        /// What kind of file was expected.
        what: &'static str,
    },
    /// The file is shorter (or longer) than its header declares.
    #[error("{path}: truncated or malformed: the header declares {expected} bytes, the file has {found}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes the header implies.
        expected: usize,
        /// Bytes present.
        found: usize,
    },
    /// The images and labels files disagree on the number of items.
    #[error("{images}: {n_images} images, but {labels} holds {n_labels} labels")]
    CountMismatch {
        /// The images file.
        images: PathBuf,
        /// Number of images.
        n_images: usize,
        /// The labels file.
        labels: PathBuf,
        /// Number of labels.
        n_labels: usize,
    },
    /// A label is not below the number of classes.
    #[error("{path}: label {label} at item {index} is out of range (this data set has {classes} classes, labels 0..{classes})")]
    LabelOutOfRange {
        /// The labels file.
        path: PathBuf,
        /// The offending label.
        label: u8,
        /// Its position.
        index: usize,
        /// The number of classes.
        classes: usize,
    },
    /// A data directory lacks one of the four IDX files.
    #[error("{dir}: missing {name} (or {name}.gz); the data directory must hold the four MNIST-layout IDX files")]
    Missing {
        /// The directory.
        dir: PathBuf,
        /// The missing file's name.
        name: &'static str,
    },
    /// A split configuration that cannot be applied.
    #[error("invalid split: {0}")]
    InvalidSplit(String),
    /// A data configuration that does not match the data (classes, format settings).
    #[error("{0}")]
    Config(String),
    /// A list or binary file that does not follow its published layout.
    #[error("{path}{}: {reason}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Format {
        /// The file (or directory).
        path: PathBuf,
        /// The 1-based line, where one is at fault.
        line: Option<usize>,
        /// What is wrong.
        reason: String,
    },
}

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

/// A file's bytes; an unreadable or empty file is an error naming it.
pub(crate) fn read_nonempty(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if raw.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(raw)
}

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

/// An in-memory set of single- or multi-channel 8-bit images with labels and stable ids.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Pixels, item-major, `channels * rows * cols` bytes per item.
    pub pixels: Vec<u8>,
    /// Class label of each item.
    pub labels: Vec<i64>,
    /// Stable id of each item (its index in the source file).
    pub ids: Vec<usize>,
    /// Channels per image.
    pub channels: usize,
    /// Image height.
    pub rows: usize,
    /// Image width.
    pub cols: usize,
    /// Number of classes the labels range over.
    pub classes: usize,
}

impl Dataset {
    /// Reads an images/labels pair of IDX files into a dataset with `classes` classes.
    pub fn from_idx(images: &Path, labels: &Path, classes: usize) -> Result<Self, DataError> {
        let (pixels, n, rows, cols) = read_idx_images(images)?;
        let labs = read_idx_labels(labels, classes)?;
        if labs.len() != n {
            return Err(DataError::CountMismatch {
                images: images.to_path_buf(),
                n_images: n,
                labels: labels.to_path_buf(),
                n_labels: labs.len(),
            });
        }
        if n == 0 {
            return Err(DataError::Empty {
                path: images.to_path_buf(),
            });
        }
        Ok(Self {
            pixels,
            labels: labs,
            ids: (0..n).collect(),
            channels: 1,
            rows,
            cols,
            classes,
        })
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the dataset holds no item.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image.
    pub fn item_size(&self) -> usize {
        self.channels * self.rows * self.cols
    }

    /// The items at `indices` with labels mapped to `classes` order (label `classes[i]` → `i`).
    pub fn relabel(&self, indices: &[usize], classes: &[i64]) -> Self {
        let mut sub = self.subset(indices);
        let mut map = vec![-1i64; self.classes];
        for (i, &c) in classes.iter().enumerate() {
            map[c as usize] = i as i64;
        }
        for l in sub.labels.iter_mut() {
            *l = map[*l as usize];
        }
        sub.classes = classes.len();
        sub
    }

    /// The items at `indices`, keeping their ids and labels.
    pub fn subset(&self, indices: &[usize]) -> Self {
        let sz = self.item_size();
        let mut pixels = Vec::with_capacity(indices.len() * sz);
        for &i in indices {
            pixels.extend_from_slice(&self.pixels[i * sz..(i + 1) * sz]);
        }
        Self {
            pixels,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            ids: indices.iter().map(|&i| self.ids[i]).collect(),
            channels: self.channels,
            rows: self.rows,
            cols: self.cols,
            classes: self.classes,
        }
    }

    /// The first `n` items of each class (used by quick presets and tests to take a balanced subset).
    pub fn take_per_class(&self, n: usize) -> Self {
        let mut seen = vec![0usize; self.classes];
        let idx: Vec<usize> = (0..self.len())
            .filter(|&i| {
                let c = self.labels[i] as usize;
                seen[c] += 1;
                seen[c] <= n
            })
            .collect();
        self.subset(&idx)
    }

    /// Mean and standard deviation of the pixel values scaled to [0, 1].
    pub fn pixel_stats(&self) -> (f64, f64) {
        let n = self.pixels.len().max(1) as f64;
        let (s, s2) = self.pixels.iter().fold((0f64, 0f64), |(s, s2), &p| {
            let v = p as f64 / 255.0;
            (s + v, s2 + v * v)
        });
        let mean = s / n;
        (mean, (s2 / n - mean * mean).max(1e-12).sqrt())
    }

    /// Builds a float batch `[B, C, H, W]` (normalised) and its labels `[B]` on `device`,
    /// applying `augment` with `rng` when given.
    pub fn batch(
        &self,
        indices: &[usize],
        norm: Normalization,
        augment: Option<(&AugmentConfig, &mut ChaCha8Rng)>,
        device: Device,
    ) -> (Tensor, Tensor) {
        let (c, h, w) = (self.channels, self.rows, self.cols);
        let sz = self.item_size();
        let mut out = vec![0f32; indices.len() * sz];
        let scale = 1.0 / (255.0 * norm.std as f32);
        let shift = (norm.mean / norm.std) as f32;
        let background = -shift; // a zero pixel after normalisation: padding value
        match augment {
            None => {
                for (b, &i) in indices.iter().enumerate() {
                    let src = &self.pixels[i * sz..(i + 1) * sz];
                    for (o, &p) in out[b * sz..(b + 1) * sz].iter_mut().zip(src) {
                        *o = p as f32 * scale - shift;
                    }
                }
            }
            Some((cfg, rng)) => {
                for (b, &i) in indices.iter().enumerate() {
                    let src = &self.pixels[i * sz..(i + 1) * sz];
                    let (dy, dx, flip) = cfg.draw(rng);
                    let dst = &mut out[b * sz..(b + 1) * sz];
                    for ch in 0..c {
                        for y in 0..h {
                            let sy = y as i64 + dy;
                            for x in 0..w {
                                let xx = if flip { w - 1 - x } else { x };
                                let sx = xx as i64 + dx;
                                let v = if sy < 0 || sx < 0 || sy >= h as i64 || sx >= w as i64 {
                                    background
                                } else {
                                    src[ch * h * w + sy as usize * w + sx as usize] as f32 * scale
                                        - shift
                                };
                                dst[ch * h * w + y * w + x] = v;
                            }
                        }
                    }
                }
            }
        }
        let x = Tensor::from_slice(&out)
            .view([indices.len() as i64, c as i64, h as i64, w as i64])
            .to_device(device);
        let y: Vec<i64> = indices.iter().map(|&i| self.labels[i]).collect();
        (
            x,
            Tensor::from_slice(&y)
                .to_kind(Kind::Int64)
                .to_device(device),
        )
    }
}

/// Pixel normalisation `(x/255 - mean) / std`, stored with each model.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Normalization {
    /// Mean of the scaled pixels.
    pub mean: f64,
    /// Standard deviation of the scaled pixels.
    pub std: f64,
}

/// Training-time augmentation: random crop with zero padding, optional horizontal flip.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Padding in pixels before a random crop back to the original size (0: no crop).
    pub pad: usize,
    /// Random horizontal flips: right for clothing (Fashion-MNIST), wrong for digits or text.
    pub hflip: bool,
}

impl AugmentConfig {
    /// One item's draws from the epoch's stream: the crop's shift (rows, columns) and the flip.
    pub fn draw(&self, rng: &mut ChaCha8Rng) -> (i64, i64, bool) {
        let pad = self.pad as i64;
        let dy = if pad > 0 {
            rng.random_range(-pad..=pad)
        } else {
            0
        };
        let dx = if pad > 0 {
            rng.random_range(-pad..=pad)
        } else {
            0
        };
        (dy, dx, self.hflip && rng.random_bool(0.5))
    }

    /// Advances the epoch's stream past `items` items another rank augments, so that every
    /// item gets the draws it would get in a one-process run.
    pub fn skip(&self, rng: &mut ChaCha8Rng, items: usize) {
        for _ in 0..items {
            self.draw(rng);
        }
    }
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            pad: 2,
            hflip: true,
        }
    }
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

/// The update scenarios of METHOD.md section 6.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Old model on a fraction of each class's images; new model on all images.
    ExtendedData,
    /// Old model on a fraction of the classes; new model on all classes.
    ExtendedClass,
    /// As extended-data, but the new model trains on the complement only.
    OpenData,
    /// As extended-class, but the new model trains on the complement only.
    OpenClass,
}

impl std::str::FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "extended-data" => Ok(Self::ExtendedData),
            "extended-class" => Ok(Self::ExtendedClass),
            "open-data" => Ok(Self::OpenData),
            "open-class" => Ok(Self::OpenClass),
            _ => Err(format!(
                "unknown scenario '{s}': expected extended-data, extended-class, open-data or open-class"
            )),
        }
    }
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ExtendedData => "extended-data",
            Self::ExtendedClass => "extended-class",
            Self::OpenData => "open-data",
            Self::OpenClass => "open-class",
        })
    }
}

/// How the training set is divided between the old and the new model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SplitConfig {
    /// The update scenario.
    pub scenario: Scenario,
    /// Share of each class's images (data scenarios) or of the classes (class scenarios) the old model sees.
    pub fraction: f64,
    /// Seed of the split (independent of the training seeds).
    pub seed: u64,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            scenario: Scenario::ExtendedData,
            fraction: 0.3,
            seed: 0,
        }
    }
}

/// A concrete split of a training set: indices of the old and new training items.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Split {
    /// The configuration that produced it.
    pub config: SplitConfig,
    /// Size of the training set it indexes.
    pub train_size: usize,
    /// Classes the old model is trained on (original labels, ascending).
    pub old_classes: Vec<i64>,
    /// Indices of the old model's training items (ascending).
    pub old_indices: Vec<usize>,
    /// Indices of the new model's training items (ascending).
    pub new_indices: Vec<usize>,
    /// SHA-256 (hex, 16 chars) of the configuration and both index lists.
    pub fingerprint: String,
}

impl Split {
    /// Computes the split of `labels` (with `classes` classes) for `config`; deterministic in the seed.
    pub fn new(config: &SplitConfig, labels: &[i64], classes: usize) -> Result<Self, DataError> {
        if !(config.fraction > 0.0 && config.fraction < 1.0) {
            return Err(DataError::InvalidSplit(format!(
                "fraction must lie strictly between 0 and 1, got {}",
                config.fraction
            )));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut by_class: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (i, &l) in labels.iter().enumerate() {
            by_class.entry(l).or_default().push(i);
        }
        let mut old_mask = vec![false; labels.len()];
        let old_classes: Vec<i64> = match config.scenario {
            Scenario::ExtendedData | Scenario::OpenData => {
                for idx in by_class.values_mut() {
                    idx.shuffle(&mut rng);
                    let k =
                        ((idx.len() as f64 * config.fraction).round() as usize).clamp(1, idx.len());
                    for &i in &idx[..k] {
                        old_mask[i] = true;
                    }
                }
                by_class.keys().copied().collect()
            }
            Scenario::ExtendedClass | Scenario::OpenClass => {
                let present: Vec<i64> = by_class.keys().copied().collect();
                if present.len() < 2 {
                    return Err(DataError::InvalidSplit(
                        "a class scenario needs at least two classes".into(),
                    ));
                }
                let mut cls = present.clone();
                cls.shuffle(&mut rng);
                let k = ((classes as f64 * config.fraction).round() as usize)
                    .clamp(1, present.len() - 1);
                let mut chosen = cls[..k].to_vec();
                chosen.sort_unstable();
                for c in &chosen {
                    for &i in &by_class[c] {
                        old_mask[i] = true;
                    }
                }
                chosen
            }
        };
        let old_indices: Vec<usize> = (0..labels.len()).filter(|&i| old_mask[i]).collect();
        let new_indices: Vec<usize> = match config.scenario {
            Scenario::ExtendedData | Scenario::ExtendedClass => (0..labels.len()).collect(),
            Scenario::OpenData | Scenario::OpenClass => {
                (0..labels.len()).filter(|&i| !old_mask[i]).collect()
            }
        };
        let mut h = Sha256::new();
        h.update(format!(
            "{}|{}|{}|{}",
            config.scenario,
            config.fraction,
            config.seed,
            labels.len()
        ));
        for i in old_indices
            .iter()
            .chain(std::iter::once(&usize::MAX))
            .chain(&new_indices)
        {
            h.update((*i as u64).to_le_bytes());
        }
        let fingerprint = hex(&h.finalize()[..8]);
        Ok(Self {
            config: config.clone(),
            train_size: labels.len(),
            old_classes,
            old_indices,
            new_indices,
            fingerprint,
        })
    }

    /// Training items that only the new model sees (the complement of the old set).
    pub fn new_only_indices(&self) -> Vec<usize> {
        let mut mask = vec![false; self.train_size];
        for &i in &self.old_indices {
            mask[i] = true;
        }
        (0..self.train_size).filter(|&i| !mask[i]).collect()
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A seeded random generator for a purpose (`stream`) within a run; resumable by construction.
pub fn rng_for(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream);
    r
}

/// A shuffled permutation of `0..n` for epoch `epoch` of a run seeded with `seed`.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng_for(seed, 1_000 + epoch as u64));
    order
}

/// Up to `per_class` indices of each class, drawn at random by `rng` (ascending within the result).
pub fn per_class_sample(labels: &[i64], per_class: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut by_class: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (i, &l) in labels.iter().enumerate() {
        by_class.entry(l).or_default().push(i);
    }
    let mut out = Vec::new();
    for idx in by_class.values_mut() {
        idx.shuffle(rng);
        out.extend_from_slice(&idx[..per_class.min(idx.len())]);
    }
    out.sort_unstable();
    out
}

/// A made-up image data set for tests and smoke runs: each class is a random pattern of
/// bright blobs over a pattern all classes share; each item is its class pattern shifted by
/// up to 2 pixels, at a random contrast, with strong noise (so that classes overlap and more
/// training data gives a better model).
/// Deterministic in `seed`; `(train, test)` with `train_per_class` and `test_per_class` items.
pub fn synthetic(
    classes: usize,
    train_per_class: usize,
    test_per_class: usize,
    seed: u64,
) -> (Dataset, Dataset) {
    let (h, w) = (28usize, 28usize);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let blobs = |t: &mut Vec<f32>, count: usize, rng: &mut ChaCha8Rng| {
        for _ in 0..count {
            let (cy, cx) = (
                rng.random_range(5.0..23.0f32),
                rng.random_range(5.0..23.0f32),
            );
            let r = rng.random_range(2.0..4.0f32);
            for y in 0..h {
                for x in 0..w {
                    let d2 = (y as f32 - cy).powi(2) + (x as f32 - cx).powi(2);
                    t[y * w + x] += (-d2 / (2.0 * r * r)).exp();
                }
            }
        }
    };
    let mut shared = vec![0f32; h * w];
    blobs(&mut shared, 4, &mut rng);
    let templates: Vec<Vec<f32>> = (0..classes)
        .map(|_| {
            let mut t = shared.clone();
            blobs(&mut t, 3, &mut rng);
            t
        })
        .collect();
    let mut make = |per_class: usize| {
        let mut pixels = Vec::with_capacity(classes * per_class * h * w);
        let mut labels = Vec::with_capacity(classes * per_class);
        for i in 0..classes * per_class {
            let c = i % classes;
            let (dy, dx) = (rng.random_range(-2..=2i64), rng.random_range(-2..=2i64));
            let contrast = rng.random_range(0.5..1.0f32);
            for y in 0..h as i64 {
                for x in 0..w as i64 {
                    let (sy, sx) = (y + dy, x + dx);
                    let base = if sy < 0 || sx < 0 || sy >= h as i64 || sx >= w as i64 {
                        0.0
                    } else {
                        templates[c][sy as usize * w + sx as usize]
                    };
                    let v = 160.0 * contrast * base + rng.random_range(0.0..90.0f32);
                    pixels.push(v.clamp(0.0, 255.0) as u8);
                }
            }
            labels.push(c as i64);
        }
        let n = labels.len();
        Dataset {
            pixels,
            labels,
            ids: (0..n).collect(),
            channels: 1,
            rows: h,
            cols: w,
            classes,
        }
    };
    let train = make(train_per_class);
    let test = make(test_per_class);
    (train, test)
}
