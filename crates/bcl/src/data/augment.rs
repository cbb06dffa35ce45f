//! Training-time augmentation: a random crop with zero padding and an optional horizontal
//! flip, drawn per item from the epoch's seeded stream.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

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
