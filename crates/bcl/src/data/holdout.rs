//! The validation part (`[data] validation_per_class`): per class, images of the training file
//! that no model trains on, chosen deterministically in file order: the N after the first
//! `train_per_class` (the images a limited run leaves unused), or without that limit the last N
//! of each class, taken out of training. Disjoint from the test set, which comes from its own
//! file or list; fingerprinted by the ids and labels it holds.

use sha2::{Digest, Sha256};

use super::{hex, DataError};

/// Which positions of a training file (labels in file order, `classes` classes) train and which
/// validate: `train` (the first `train_per_class` of each class, or all but the last
/// `validation` of each class) and `validation` (the next `validation` of each class). A class
/// with too few items for a validation part and at least one training item is an error naming
/// it.
pub fn hold_out(
    labels: &[usize],
    classes: usize,
    train_per_class: Option<usize>,
    validation: usize,
) -> Result<(Vec<usize>, Vec<usize>), DataError> {
    let mut total = vec![0usize; classes];
    for &l in labels {
        total[l] += 1;
    }
    for (c, &n) in total.iter().enumerate() {
        let train = train_per_class
            .unwrap_or(n.saturating_sub(validation))
            .min(n);
        if n < train + validation || train == 0 {
            return Err(DataError::Config(format!(
                "class {c} has {n} training images: too few for {} training and \
                 {validation} validation images (data.validation_per_class)",
                train_per_class.map_or("at least one".to_string(), |t| t.to_string())
            )));
        }
    }
    let mut seen = vec![0usize; classes];
    let (mut tr, mut va) = (Vec::new(), Vec::new());
    for (i, &l) in labels.iter().enumerate() {
        let k = seen[l];
        seen[l] += 1;
        let train = train_per_class.unwrap_or(total[l] - validation);
        if k < train {
            tr.push(i);
        } else if k < train + validation {
            va.push(i);
        }
    }
    Ok((tr, va))
}

/// SHA-256 (16 hex characters) of a part's `(id, label)` pairs in order: what the validation
/// part is, recorded with the split so that a successor that would validate on other images
/// is refused.
pub fn part_fingerprint<'a>(items: impl Iterator<Item = (&'a str, i64)>) -> String {
    let mut h = Sha256::new();
    for (id, label) in items {
        h.update(id.as_bytes());
        h.update([0u8]);
        h.update(label.to_le_bytes());
    }
    hex(&h.finalize()[..8])
}
