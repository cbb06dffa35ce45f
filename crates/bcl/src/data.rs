//! Data: what a run's data are and how they are read. One file per concept: `idx` (the IDX
//! reader and writer, MNIST's layout), `dataset` (an in-memory image set and its
//! normalisation), `augment` (training-time augmentation), `split` (the scenarios of METHOD.md
//! section 6 and the seeded, fingerprinted split), `rng` (the seeded streams), `synthetic`
//! (generated data for tests); `config` says what a run's data are, `source` opens them for
//! every format (the one way every command reads data), `cifar` reads CIFAR-100's binary
//! files, `lists` the image lists of the retrieval benchmarks, `images` decodes image files.

pub mod augment;
pub mod cifar;
pub mod config;
pub mod dataset;
pub mod holdout;
pub mod idx;
pub mod images;
pub mod lists;
pub mod rng;
pub mod source;
pub mod split;
pub mod synthetic;

pub use augment::AugmentConfig;
pub use config::{DataConfig, DataFormat, Part};
pub use dataset::{Dataset, Normalization};
pub use idx::{
    load_idx_dir, read_idx_images, read_idx_labels, write_idx_dir, write_idx_images,
    write_idx_labels, DEFAULT_DATA_DIR,
};
pub use rng::{epoch_order, hex, per_class_sample, rng_for};
pub use source::{open, open_part, open_test, Opened, TrainSource};
pub use split::{Scenario, Split, SplitConfig};
pub use synthetic::synthetic;

use std::path::{Path, PathBuf};

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
