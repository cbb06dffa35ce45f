//! Seeded randomness shared by splits, epochs and samples: one ChaCha stream per purpose, so
//! that every draw is reproducible and a resumed run draws what it would have drawn.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

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
