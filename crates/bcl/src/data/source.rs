//! Training items as the training loop consumes them: an in-memory [`Dataset`], or image files
//! decoded batch by batch by the prefetching [`ImageLoader`] so that a training set far larger
//! than memory (GLDv2's 1.5 million images) trains with at most `prefetch` batches of pixels
//! held at once.

use std::path::PathBuf;

use rand_chacha::ChaCha8Rng;
use tch::{Device, Tensor};

use super::images::{load_image, ImageLoader, ImagePrep};
use super::lists::ImageList;
use super::{rng_for, AugmentConfig, DataError, Dataset, Normalization};

/// Image files to decode on demand: a list under a root, resized and cropped by `prep`.
#[derive(Debug, Clone)]
pub struct ImageFiles {
    /// Directory the list's paths are relative to.
    pub root: PathBuf,
    /// The items (labels in classifier order once relabelled).
    pub list: ImageList,
    /// Resize and crop.
    pub prep: ImagePrep,
    /// Batches decoded ahead of the training step.
    pub prefetch: usize,
}

impl ImageFiles {
    /// The items at `indices` with labels mapped to `classes` order (label `classes[i]` → `i`).
    pub fn relabel(&self, indices: &[usize], classes: &[i64]) -> Self {
        let mut map = vec![-1i64; self.list.classes.len()];
        for (i, &c) in classes.iter().enumerate() {
            if let Some(m) = map.get_mut(c as usize) {
                *m = i as i64;
            }
        }
        let items = indices
            .iter()
            .map(|&i| {
                let mut it = self.list.items[i].clone();
                it.label = map[it.label as usize];
                it
            })
            .collect();
        Self {
            root: self.root.clone(),
            list: ImageList {
                items,
                classes: classes
                    .iter()
                    .map(|&c| {
                        self.list
                            .classes
                            .get(c as usize)
                            .cloned()
                            .unwrap_or_default()
                    })
                    .collect(),
            },
            prep: self.prep,
            prefetch: self.prefetch,
        }
    }

    /// Mean and standard deviation of the pixels scaled to [0, 1], over up to `sample` images
    /// at evenly spaced positions (decoding them all would cost an epoch).
    pub fn pixel_stats(&self, sample: usize) -> Result<(f64, f64), DataError> {
        let n = self.list.items.len();
        let k = sample.min(n).max(1);
        let (mut s, mut s2, mut c) = (0f64, 0f64, 0f64);
        for j in 0..k {
            let it = &self.list.items[j * n / k];
            let px = load_image(&self.root.join(&it.path), &self.prep, None, None)?;
            for &p in &px {
                let v = p as f64 / 255.0;
                s += v;
                s2 += v * v;
            }
            c += px.len() as f64;
        }
        let mean = s / c;
        Ok((mean, (s2 / c - mean * mean).max(1e-12).sqrt()))
    }
}

/// The training set of a run, borrowed by the training loop.
#[derive(Debug, Clone, Copy)]
pub enum TrainData<'a> {
    /// Decoded images in memory.
    Memory(&'a Dataset),
    /// Image files decoded batch by batch.
    Files(&'a ImageFiles),
}

/// A batch as tensors: normalised images `[B, C, H, W]` and labels `[B]`.
pub type TensorBatch = (Tensor, Tensor);

impl<'a> TrainData<'a> {
    /// Number of items.
    pub fn len(&self) -> usize {
        match self {
            TrainData::Memory(d) => d.len(),
            TrainData::Files(f) => f.list.items.len(),
        }
    }

    /// Whether there is no item.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every item's label.
    pub fn labels(&self) -> Vec<i64> {
        match self {
            TrainData::Memory(d) => d.labels.clone(),
            TrainData::Files(f) => f.list.items.iter().map(|i| i.label).collect(),
        }
    }

    /// Image shape (channels, rows, cols).
    pub fn shape(&self) -> [usize; 3] {
        match self {
            TrainData::Memory(d) => [d.channels, d.rows, d.cols],
            TrainData::Files(f) => [3, f.prep.crop as usize, f.prep.crop as usize],
        }
    }

    /// Pixel mean and standard deviation (files: estimated on 512 images).
    pub fn pixel_stats(&self) -> Result<(f64, f64), DataError> {
        match self {
            TrainData::Memory(d) => Ok(d.pixel_stats()),
            TrainData::Files(f) => f.pixel_stats(512),
        }
    }

    /// The items of `order` in batches of `batch` as tensors on `device`. With
    /// `augment = Some((cfg, seed, epoch))` they get the training augmentation of that epoch
    /// (for files also a seeded random crop position and flip per item); without, the plain
    /// centred images. Files are decoded ahead on a background thread.
    pub fn batches(
        self,
        order: &[usize],
        batch: usize,
        augment: Option<(&'a AugmentConfig, u64, usize)>,
        norm: Normalization,
        device: Device,
    ) -> Box<dyn Iterator<Item = Result<TensorBatch, DataError>> + 'a> {
        let mut rng: Option<ChaCha8Rng> =
            augment.map(|(_, seed, epoch)| rng_for(seed, 2_000 + epoch as u64));
        let cfg = augment.map(|(c, _, _)| c);
        match self {
            TrainData::Memory(d) => {
                let chunks: Vec<Vec<usize>> =
                    order.chunks(batch.max(1)).map(<[usize]>::to_vec).collect();
                Box::new(chunks.into_iter().map(move |c| {
                    let aug = cfg.zip(rng.as_mut());
                    Ok(d.batch(&c, norm, aug, device))
                }))
            }
            TrainData::Files(f) => {
                let loader = ImageLoader::start(
                    f.root.clone(),
                    f.list.clone(),
                    order.to_vec(),
                    batch,
                    f.prep,
                    augment.map(|(_, seed, epoch)| (seed, epoch)),
                    f.prefetch,
                );
                let [c, h, w] = self.shape();
                Box::new(loader.map(move |b| {
                    let b = b?;
                    let n = b.labels.len();
                    let tmp = Dataset {
                        pixels: b.pixels,
                        labels: b.labels,
                        ids: b.indices,
                        channels: c,
                        rows: h,
                        cols: w,
                        classes: 0,
                    };
                    let idx: Vec<usize> = (0..n).collect();
                    let aug = cfg.zip(rng.as_mut());
                    Ok(tmp.batch(&idx, norm, aug, device))
                }))
            }
        }
    }
}
