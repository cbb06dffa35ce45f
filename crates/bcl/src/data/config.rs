//! What a run's data are: the layout of the data directory ([`DataFormat`]), its settings
//! ([`DataConfig`], the `[data]` section of a run configuration) and which part of it a command
//! reads ([`Part`]). [`super::source`] opens a configuration for every format.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::DEFAULT_DATA_DIR;

/// The on-disk layout of a data directory.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DataFormat {
    /// MNIST-layout IDX files (Fashion-MNIST, MNIST), plain or gzipped.
    #[default]
    Idx,
    /// CIFAR-100's binary version (`train.bin`, `test.bin`; 3 × 32 × 32, 100 fine classes).
    Cifar100,
    /// Class-per-folder image trees `dir/train/<class>/` and `dir/test/<class>/` (JPEG/PNG),
    /// decoded into memory at `[data.image]` size (or streamed with `stream = true`).
    ImageFolder,
    /// Google Landmarks v2: `dir/train_clean.csv` and `dir/train/a/b/c/<id>.jpg`; training
    /// images streamed, the last `test_per_class` images of each landmark held out as the
    /// class-level test set (the benchmarks are `[[benchmark]]` entries).
    Gldv2,
    /// In-shop: `dir/list_eval_partition.txt`; the train partition streamed, query ∪ gallery
    /// (item ids as classes) the class-level test set.
    Inshop,
    /// Stanford Online Products: `dir/Ebay_train.txt` streamed, `dir/Ebay_test.txt` the
    /// class-level test set.
    Sop,
}

impl DataFormat {
    /// Whether the format is a list of image files (streamed while training).
    pub fn is_listed(self) -> bool {
        matches!(
            self,
            DataFormat::Gldv2 | DataFormat::Inshop | DataFormat::Sop
        )
    }
}

/// Where the data come from and how much of it to use.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Layout of `dir`.
    pub format: DataFormat,
    /// Resize and crop of image files (`image-folder` only).
    pub image: super::images::ImagePrep,
    /// Directory of the data files (IDX files, or CIFAR-100's binary files).
    pub dir: PathBuf,
    /// Number of classes the labels range over.
    pub classes: usize,
    /// Use only the first N training images of each class (quick runs).
    pub train_per_class: Option<usize>,
    /// Use only the first N test images of each class (quick runs).
    pub test_per_class: Option<usize>,
    /// Hold out N training images of each class that no model trains on, the validation part
    /// every model-selection decision reads (the N after the first `train_per_class`, or
    /// without that limit the last N of each class; see `data::holdout`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation_per_class: Option<usize>,
    /// `image-folder` only: decode training images batch by batch while training (bounded
    /// memory, for sets larger than RAM) instead of decoding them all into memory first.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            format: DataFormat::Idx,
            image: Default::default(),
            dir: PathBuf::from(DEFAULT_DATA_DIR),
            classes: 10,
            train_per_class: None,
            test_per_class: None,
            validation_per_class: None,
            stream: false,
        }
    }
}

/// A part of a data set: its training items, the validation part held out of them, or its
/// test items.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Part {
    /// The training items.
    Train,
    /// The validation part: training images no model trains on (`validation_per_class`).
    Validation,
    /// The test items (the default for evaluation and galleries).
    #[default]
    Test,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Part::Train => "train",
            Part::Validation => "validation",
            Part::Test => "test",
        })
    }
}

impl std::str::FromStr for Part {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "train" => Ok(Part::Train),
            "validation" => Ok(Part::Validation),
            "test" => Ok(Part::Test),
            _ => Err(format!("expected train, validation or test, not {s:?}")),
        }
    }
}
