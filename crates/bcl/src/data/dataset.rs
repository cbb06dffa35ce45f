//! An in-memory image data set (`Dataset`: pixels, labels, stable ids) and its pixel
//! normalisation; batches are assembled from it with augmentation applied per item.

use std::path::Path;

use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::{read_idx_images, read_idx_labels, AugmentConfig, DataError};

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
