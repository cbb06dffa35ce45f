//! Generated image data for tests and smoke runs.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Dataset;

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
