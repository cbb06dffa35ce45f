//! The validation part (`[data] validation_per_class`): per class, images of the training file
//! that no model trains on, chosen deterministically in file order: the N after the first
//! `train_per_class` (the images a limited run leaves unused), or without that limit the last N
//! of each class, taken out of training (a class with N images or fewer keeps them for
//! training). Disjoint from the test set, which comes from its own file or list; fingerprinted
//! by the ids and labels it holds.

use sha2::{Digest, Sha256};

use super::{hex, DataError};

/// Which positions of a training file (labels in file order, `classes` classes) train and which
/// validate: with `train_per_class` T, the first T of each class train and the next (up to)
/// `validation` validate; without it, the last `validation` of each class validate and the rest
/// train, except that a class with `validation` images or fewer keeps them all for training (as
/// GLDv2's test hold-out does: long-tailed lists have such classes). A class left with fewer
/// validation images than asked is logged; no validation image at all is an error.
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
    // per class: (training items, validation items)
    let parts: Vec<(usize, usize)> = total
        .iter()
        .map(|&n| match train_per_class {
            Some(t) => (t.min(n), validation.min(n - t.min(n))),
            None if n > validation => (n - validation, validation),
            None => (n, 0),
        })
        .collect();
    let short = parts.iter().filter(|p| p.1 < validation).count();
    if short > 0 {
        tracing::warn!(
            "{short} of {classes} classes have fewer than {validation} images left for the \
             validation part (data.validation_per_class); they give what they have"
        );
    }
    if parts.iter().all(|p| p.1 == 0) {
        return Err(DataError::Config(format!(
            "no class has images left for a validation part of {validation} per class after \
             {} training images (data.validation_per_class, data.train_per_class)",
            train_per_class.map_or("all but the validation".to_string(), |t| t.to_string())
        )));
    }
    let mut seen = vec![0usize; classes];
    let (mut tr, mut va) = (Vec::new(), Vec::new());
    for (i, &l) in labels.iter().enumerate() {
        let k = seen[l];
        seen[l] += 1;
        let (train, val) = parts[l];
        if k < train {
            tr.push(i);
        } else if k < train + val {
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
