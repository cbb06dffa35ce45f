//! The data source: [`open`] reads any [`DataConfig`] (every format) into its training items as
//! the training loop consumes them, an in-memory [`Dataset`] or image files decoded batch by
//! batch by the prefetching [`ImageLoader`] (so that a training set far larger than memory,
//! GLDv2's 1.5 million images, trains with at most `prefetch` batches of pixels held at once),
//! and its test set; [`open_part`] gives one part in memory. Every command reads data here.

use std::path::PathBuf;

use rand_chacha::ChaCha8Rng;
use tch::{Device, Tensor};

use super::config::{DataConfig, DataFormat, Part};
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
        self.shard_batches(order, batch, augment, norm, device, 0, 1)
    }

    /// As [`TrainData::batches`], the share of rank `rank` of `world` of each batch (`batch` is
    /// the global batch; shares by [`bcl_dist::shard`]); a batch of which this rank has no
    /// share yields nothing. Every item gets the augmentation it gets in a one-process run.
    #[allow(clippy::too_many_arguments)]
    pub fn shard_batches(
        self,
        order: &[usize],
        batch: usize,
        augment: Option<(&'a AugmentConfig, u64, usize)>,
        norm: Normalization,
        device: Device,
        rank: usize,
        world: usize,
    ) -> Box<dyn Iterator<Item = Result<TensorBatch, DataError>> + 'a> {
        let mut rng: Option<ChaCha8Rng> =
            augment.map(|(_, seed, epoch)| rng_for(seed, 2_000 + epoch as u64));
        let cfg = augment.map(|(c, _, _)| c);
        let plan = share_plan(order, batch, rank, world);
        // the epoch's augmentation stream advanced past the items of other ranks
        let skip = move |rng: &mut Option<ChaCha8Rng>, n: usize| {
            if let (Some(c), Some(r)) = (cfg, rng.as_mut()) {
                c.skip(r, n);
            }
        };
        match self {
            TrainData::Memory(d) => Box::new(plan.into_iter().map(move |share| {
                skip(&mut rng, share.before);
                let aug = cfg.zip(rng.as_mut());
                Ok(d.batch(&share.items, norm, aug, device))
            })),
            TrainData::Files(f) => {
                let loader = ImageLoader::start_batches(
                    f.root.clone(),
                    f.list.clone(),
                    plan.iter().map(|s| s.items.clone()).collect(),
                    f.prep,
                    augment.map(|(_, seed, epoch)| (seed, epoch)),
                    f.prefetch,
                );
                let [c, h, w] = self.shape();
                Box::new(loader.zip(plan).map(move |(b, share)| {
                    let b = b?;
                    skip(&mut rng, share.before);
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

/// One rank's share of one batch: the items other ranks take before it (since its previous
/// share) and its own items.
struct Share {
    before: usize,
    items: Vec<usize>,
}

/// The non-empty shares of `rank` in the batches of `order`.
fn share_plan(order: &[usize], batch: usize, rank: usize, world: usize) -> Vec<Share> {
    let mut plan = Vec::new();
    let mut pending = 0;
    for chunk in order.chunks(batch.max(1)) {
        let mine = bcl_dist::shard(chunk.len(), rank, world);
        if mine.is_empty() {
            pending += chunk.len();
            continue;
        }
        plan.push(Share {
            before: pending + mine.start,
            items: chunk[mine.clone()].to_vec(),
        });
        pending = chunk.len() - mine.end;
    }
    plan
}

/// A run's training set: decoded in memory, or image files streamed while training.
#[derive(Debug, Clone)]
pub enum TrainSource {
    /// In memory.
    Memory(Dataset),
    /// Files decoded batch by batch (`[data] stream = true`, and the listed benchmark formats).
    Files(ImageFiles),
}

impl TrainSource {
    /// Every item's label.
    pub fn labels(&self) -> Vec<i64> {
        self.as_data().labels()
    }

    /// Borrowed for the training loop.
    pub fn as_data(&self) -> TrainData<'_> {
        match self {
            TrainSource::Memory(d) => TrainData::Memory(d),
            TrainSource::Files(f) => TrainData::Files(f),
        }
    }

    /// The items at `indices` with labels in `classes` order.
    pub fn relabel(&self, indices: &[usize], classes: &[i64]) -> Self {
        match self {
            TrainSource::Memory(d) => TrainSource::Memory(d.relabel(indices, classes)),
            TrainSource::Files(f) => TrainSource::Files(f.relabel(indices, classes)),
        }
    }
}

/// A data configuration, opened: the training set (in memory or streamed) and the test set (in
/// memory), whatever the format.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The training items.
    pub train: TrainSource,
    /// The test items.
    pub test: Dataset,
    /// The fingerprint of the validation part, when `[data] validation_per_class` sets one
    /// (its images: [`open_part`] with [`Part::Validation`]).
    pub validation: Option<String>,
}

/// The training items a configuration trains on and the validation part it holds out (see
/// [`super::holdout`]): `take` subsets the source by positions, `labels` are its labels.
fn train_and_validation<T>(
    cfg: &DataConfig,
    all: T,
    labels: &[usize],
    classes: usize,
    take: impl Fn(&T, &[usize]) -> T,
    first_per_class: impl Fn(&T, usize) -> T,
) -> Result<(T, Option<T>), DataError> {
    match (cfg.validation_per_class, cfg.train_per_class) {
        (Some(v), t) => {
            let (tr, va) = super::holdout::hold_out(labels, classes, t, v)?;
            Ok((take(&all, &tr), Some(take(&all, &va))))
        }
        (None, Some(n)) => Ok((first_per_class(&all, n), None)),
        (None, None) => Ok((all, None)),
    }
}

/// A data set's training part and its validation part.
fn dataset_parts(
    cfg: &DataConfig,
    train: Dataset,
) -> Result<(Dataset, Option<Dataset>), DataError> {
    let labels: Vec<usize> = train.labels.iter().map(|&l| l as usize).collect();
    let classes = train.classes;
    train_and_validation(
        cfg,
        train,
        &labels,
        classes,
        Dataset::subset,
        Dataset::take_per_class,
    )
}

/// An image list's training part and its validation part.
fn list_parts(
    cfg: &DataConfig,
    train: ImageList,
) -> Result<(ImageList, Option<ImageList>), DataError> {
    let labels: Vec<usize> = train.items.iter().map(|it| it.label as usize).collect();
    let classes = train.classes.len();
    let take = |l: &ImageList, pos: &[usize]| ImageList {
        items: pos.iter().map(|&i| l.items[i].clone()).collect(),
        classes: l.classes.clone(),
    };
    train_and_validation(
        cfg,
        train,
        &labels,
        classes,
        take,
        ImageList::take_per_class,
    )
}

/// The validation part's fingerprint from its items' ids and labels.
fn dataset_print(d: &Dataset) -> String {
    let ids: Vec<String> = d.ids.iter().map(usize::to_string).collect();
    super::holdout::part_fingerprint(ids.iter().map(String::as_str).zip(d.labels.iter().copied()))
}

/// The validation part's fingerprint from its files' paths and labels.
fn list_print(l: &ImageList) -> String {
    let paths: Vec<String> = l
        .items
        .iter()
        .map(|it| it.path.display().to_string())
        .collect();
    super::holdout::part_fingerprint(
        paths
            .iter()
            .map(String::as_str)
            .zip(l.items.iter().map(|it| it.label)),
    )
}

/// The image lists of a listed or streamed configuration, with the per-class limits and the
/// validation part applied.
struct Lists {
    train_root: PathBuf,
    train: ImageList,
    validation: Option<ImageList>,
    test_root: PathBuf,
    test: ImageList,
}

/// Reads the image lists of a listed or streamed configuration.
fn image_lists(cfg: &DataConfig) -> Result<Lists, DataError> {
    use super::lists;
    cfg.image.validate().map_err(DataError::Config)?;
    let (train_root, train, test_root, mut test) = match cfg.format {
        DataFormat::ImageFolder => {
            let (tr, te) = super::images::read_image_folder_lists(&cfg.dir)?;
            (cfg.dir.join("train"), tr, cfg.dir.join("test"), te)
        }
        DataFormat::Gldv2 => {
            let all = lists::read_gldv2_clean(&cfg.dir.join("train_clean.csv"))?;
            let Some(n) = cfg.test_per_class else {
                return Err(DataError::Config(
                    "data.format = \"gldv2\" needs data.test_per_class: the last N images of \
                     each landmark are held out as the class-level test set"
                        .into(),
                ));
            };
            let (tr, te) = all.hold_out_last_per_class(n);
            (cfg.dir.clone(), tr, cfg.dir.clone(), te)
        }
        DataFormat::Inshop => {
            let p = lists::read_inshop(&cfg.dir.join("list_eval_partition.txt"))?;
            let mut te = p.query.clone();
            te.items.extend(p.gallery.items.iter().cloned());
            (cfg.dir.clone(), p.train, cfg.dir.clone(), te)
        }
        DataFormat::Sop => (
            cfg.dir.clone(),
            lists::read_sop(&cfg.dir.join("Ebay_train.txt"))?,
            cfg.dir.clone(),
            lists::read_sop(&cfg.dir.join("Ebay_test.txt"))?,
        ),
        f @ (DataFormat::Idx | DataFormat::Cifar100) => {
            return Err(DataError::Config(format!(
                "data.stream = true needs an image format (image-folder, gldv2, inshop, sop), \
                 not {f:?}"
            )))
        }
    };
    if train.classes.len() != cfg.classes {
        return Err(DataError::Config(format!(
            "{}: {} training classes, but data.classes is {}",
            cfg.dir.display(),
            train.classes.len(),
            cfg.classes
        )));
    }
    let (train, validation) = list_parts(cfg, train)?;
    if let (Some(n), false) = (cfg.test_per_class, cfg.format == DataFormat::Gldv2) {
        test = test.take_per_class(n);
    }
    Ok(Lists {
        train_root,
        train,
        validation,
        test_root,
        test,
    })
}

/// Reads an in-memory format (IDX, CIFAR-100, image folders not streamed), with the per-class
/// limits applied: (training part, validation part, test set).
fn in_memory(cfg: &DataConfig) -> Result<(Dataset, Option<Dataset>, Dataset), DataError> {
    let (train, mut test) = match cfg.format {
        DataFormat::Idx => super::load_idx_dir(&cfg.dir, cfg.classes)?,
        DataFormat::Cifar100 => {
            if cfg.classes != 100 {
                return Err(DataError::Config(format!(
                    "data.classes is {} but CIFAR-100 has 100 (fine) classes",
                    cfg.classes
                )));
            }
            super::cifar::load_cifar100_dir(&cfg.dir)?
        }
        DataFormat::ImageFolder => {
            let (train, test) = super::images::load_image_folder_dir(&cfg.dir, &cfg.image)?;
            if train.classes != cfg.classes {
                return Err(DataError::Config(format!(
                    "{}: {} class folders, but data.classes is {}",
                    cfg.dir.join("train").display(),
                    train.classes,
                    cfg.classes
                )));
            }
            (train, test)
        }
        f => {
            return Err(DataError::Config(format!(
                "data.format {f:?} lists image files: it is opened streamed"
            )))
        }
    };
    let (train, validation) = dataset_parts(cfg, train)?;
    if let Some(n) = cfg.test_per_class {
        test = test.take_per_class(n);
    }
    Ok((train, validation, test))
}

/// Whether a configuration's training images are streamed from files.
fn streamed(cfg: &DataConfig) -> bool {
    cfg.stream || cfg.format.is_listed()
}

/// Opens the data a configuration names, in every format: the training images streamed from
/// files for the listed formats and `stream = true`, else in memory; the test set in memory.
pub fn open(cfg: &DataConfig) -> Result<Opened, DataError> {
    if !streamed(cfg) {
        let (train, validation, test) = in_memory(cfg)?;
        return Ok(Opened {
            train: TrainSource::Memory(train),
            test,
            validation: validation.as_ref().map(dataset_print),
        });
    }
    let l = image_lists(cfg)?;
    let test = super::images::materialise(&l.test_root, &l.test, &cfg.image)?;
    Ok(Opened {
        train: TrainSource::Files(ImageFiles {
            root: l.train_root,
            list: l.train,
            prep: cfg.image,
            prefetch: 4,
        }),
        test,
        validation: l.validation.as_ref().map(list_print),
    })
}

/// The test set a configuration names (a streamed training set is not decoded).
pub fn open_test(cfg: &DataConfig) -> Result<Dataset, DataError> {
    open_part(cfg, Part::Test)
}

/// One part of the data in memory: the test set, the validation part, or the training set
/// (decoded from its files where it would be streamed; bound it with `train_per_class` on large
/// sets).
pub fn open_part(cfg: &DataConfig, part: Part) -> Result<Dataset, DataError> {
    let unset = || {
        DataError::Config(
            "there is no validation part: set data.validation_per_class (images per class \
             that no model trains on)"
                .into(),
        )
    };
    if !streamed(cfg) {
        let (train, validation, test) = in_memory(cfg)?;
        return match part {
            Part::Train => Ok(train),
            Part::Validation => validation.ok_or_else(unset),
            Part::Test => Ok(test),
        };
    }
    let l = image_lists(cfg)?;
    match part {
        Part::Train => super::images::materialise(&l.train_root, &l.train, &cfg.image),
        Part::Validation => {
            let v = l.validation.ok_or_else(unset)?;
            super::images::materialise(&l.train_root, &v, &cfg.image)
        }
        Part::Test => super::images::materialise(&l.test_root, &l.test, &cfg.image),
    }
}
