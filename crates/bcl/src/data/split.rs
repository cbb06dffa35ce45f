//! The update scenarios of METHOD.md section 6 and the deterministic, fingerprinted split of a
//! training set between the old and the new model.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{hex, DataError};

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
    /// The fingerprint of the validation part held out of the training file (its ids and
    /// labels), when the data configuration holds one out: a successor must validate on the
    /// same images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<String>,
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
            validation: None,
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
