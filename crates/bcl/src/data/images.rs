//! Image files: JPEG/PNG decoding with the `image` crate, resize of the shorter side and a
//! square crop (centre for evaluation, seeded random position and flip for training), query
//! boxes (Revisited Oxford/Paris) cropped before the resize, and a parallel loader that
//! decodes batches ahead of the training step with bounded memory (a fixed number of batches
//! in flight). Small sets can be decoded once into an in-memory [`Dataset`].

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use image::imageops::FilterType;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::lists::ImageList;
use super::{DataError, Dataset};

/// How an image file becomes a square RGB input.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ImagePrep {
    /// The shorter side is resized to this many pixels first.
    pub resize: u32,
    /// Then a `crop × crop` square is cut (centre, or a random position when training).
    pub crop: u32,
}

impl Default for ImagePrep {
    /// 256 then 224: the usual ImageNet-style evaluation transform.
    fn default() -> Self {
        Self {
            resize: 256,
            crop: 224,
        }
    }
}

impl ImagePrep {
    /// Checks the sizes.
    pub fn validate(&self) -> Result<(), String> {
        if self.crop == 0 || self.resize < self.crop {
            return Err(format!(
                "image sizes need 0 < crop <= resize, got resize {} and crop {}",
                self.resize, self.crop
            ));
        }
        Ok(())
    }

    /// Bytes of one prepared image (3 × crop × crop).
    pub fn item_size(&self) -> usize {
        3 * (self.crop as usize).pow(2)
    }
}

/// Where a training crop goes: position offsets in [0, 1] and a horizontal flip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Jitter {
    /// Horizontal position of the crop in the free margin, 0 (left) to 1 (right).
    pub x: f64,
    /// Vertical position, 0 (top) to 1 (bottom).
    pub y: f64,
    /// Mirror left-right.
    pub flip: bool,
}

/// The longest image side decoded (a crafted 1 × 20,000,000 PNG compresses to 41 KB).
pub const MAX_IMAGE_SIDE: u32 = 16_384;

/// The most pixels a resize may produce: the shorter side scaled to the target makes the longer
/// side as long as the aspect ratio says, and an extreme ratio would ask for gigabytes.
pub const MAX_RESIZED_PIXELS: u64 = 1 << 24;

/// Decoding limits: the side bound and at most 512 MiB of decoder allocations.
fn decode_limits() -> image::Limits {
    let mut l = image::Limits::default();
    l.max_image_width = Some(MAX_IMAGE_SIDE);
    l.max_image_height = Some(MAX_IMAGE_SIDE);
    l.max_alloc = Some(512 << 20);
    l
}

/// Checks the size a resize of a `w × h` image would produce.
fn check_resize(w: u32, h: u32, nw: u32, nh: u32) -> Result<(), String> {
    if nw as u64 * nh as u64 > MAX_RESIZED_PIXELS {
        return Err(format!(
            "an image of {w} × {h} pixels would be resized to {nw} × {nh}: its aspect ratio is \
             too extreme (at most {MAX_RESIZED_PIXELS} pixels after the resize)"
        ));
    }
    Ok(())
}

fn decode_err(path: &Path, reason: impl std::fmt::Display) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        line: None,
        reason: format!("cannot decode the image: {reason}"),
    }
}

/// Decodes `path`, optionally crops it to `bbx` (`[x1, y1, x2, y2]`, before anything else),
/// resizes the shorter side to `prep.resize`, cuts the `prep.crop` square (centred, or where
/// `jitter` says) and returns its pixels as CHW RGB bytes.
pub fn load_image(
    path: &Path,
    prep: &ImagePrep,
    bbx: Option<&[f64]>,
    jitter: Option<Jitter>,
) -> Result<Vec<u8>, DataError> {
    let mut reader = image::ImageReader::open(path)
        .map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .with_guessed_format()
        .map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    reader.limits(decode_limits());
    let mut img = reader.decode().map_err(|e| decode_err(path, e))?;
    if let Some(b) = bbx {
        let (l, t, w, h) =
            crop_rect(b, img.width(), img.height()).map_err(|r| DataError::Format {
                path: path.to_path_buf(),
                line: None,
                reason: r,
            })?;
        img = img.crop_imm(l, t, w, h);
    }
    let (w, h) = (img.width().max(1), img.height().max(1));
    let s = prep.resize as f64 / w.min(h) as f64;
    let (nw, nh) = (
        ((w as f64 * s).round() as u32).max(prep.crop),
        ((h as f64 * s).round() as u32).max(prep.crop),
    );
    check_resize(w, h, nw, nh).map_err(|r| decode_err(path, r))?;
    let img = if (nw, nh) == (w, h) {
        img.to_rgb8()
    } else {
        img.resize_exact(nw, nh, FilterType::Triangle).to_rgb8()
    };
    let (fx, fy, flip) = match jitter {
        Some(j) => (j.x, j.y, j.flip),
        None => (0.5, 0.5, false),
    };
    let x0 = ((nw - prep.crop) as f64 * fx.clamp(0.0, 1.0)).round() as u32;
    let y0 = ((nh - prep.crop) as f64 * fy.clamp(0.0, 1.0)).round() as u32;
    let c = prep.crop as usize;
    let mut out = vec![0u8; 3 * c * c];
    for y in 0..c {
        for x in 0..c {
            let sx = if flip { c - 1 - x } else { x };
            let p = img.get_pixel(x0 + sx as u32, y0 + y as u32);
            for ch in 0..3 {
                out[ch * c * c + y * c + x] = p[ch];
            }
        }
    }
    Ok(out)
}

/// Decodes every image of `list` (paths under `root`) into an in-memory dataset, in parallel;
/// the first unreadable file stops it with its path and reason.
pub fn materialise(root: &Path, list: &ImageList, prep: &ImagePrep) -> Result<Dataset, DataError> {
    prep.validate().map_err(|r| DataError::Format {
        path: root.to_path_buf(),
        line: None,
        reason: r,
    })?;
    let parts: Vec<Vec<u8>> = list
        .items
        .par_iter()
        .map(|it| load_image(&root.join(&it.path), prep, None, None))
        .collect::<Result<_, _>>()?;
    Ok(Dataset {
        pixels: parts.concat(),
        labels: list.labels(),
        ids: (0..list.len()).collect(),
        channels: 3,
        rows: prep.crop as usize,
        cols: prep.crop as usize,
        classes: list.classes.len(),
    })
}

/// One decoded batch: CHW RGB bytes of `indices.len()` images and their labels.
#[derive(Debug)]
pub struct ImageBatch {
    /// Positions in the list.
    pub indices: Vec<usize>,
    /// Pixels, item-major.
    pub pixels: Vec<u8>,
    /// Labels.
    pub labels: Vec<i64>,
}

/// A loader that decodes batches on a background thread (images of a batch in parallel with
/// rayon) while the caller trains on the previous ones; at most `prefetch` batches wait in
/// memory. Training batches get a seeded random crop and flip per (seed, epoch, item).
pub struct ImageLoader {
    rx: mpsc::Receiver<Result<ImageBatch, DataError>>,
    _worker: std::thread::JoinHandle<()>,
}

impl ImageLoader {
    /// Starts decoding `order` (positions in `list`) in batches of `batch`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        root: PathBuf,
        list: ImageList,
        order: Vec<usize>,
        batch: usize,
        prep: ImagePrep,
        train: Option<(u64, usize)>,
        prefetch: usize,
    ) -> Self {
        let batches = order.chunks(batch.max(1)).map(<[usize]>::to_vec).collect();
        Self::start_batches(root, list, batches, prep, train, prefetch)
    }

    /// Starts decoding the given batches (positions in `list`), in order.
    pub fn start_batches(
        root: PathBuf,
        list: ImageList,
        batches: Vec<Vec<usize>>,
        prep: ImagePrep,
        train: Option<(u64, usize)>,
        prefetch: usize,
    ) -> Self {
        let (tx, rx) = mpsc::sync_channel(prefetch.max(1));
        let worker = std::thread::spawn(move || {
            for chunk in &batches {
                let decoded: Result<Vec<Vec<u8>>, DataError> = chunk
                    .par_iter()
                    .map(|&i| {
                        let jitter = train.map(|(seed, epoch)| {
                            let mut r = ChaCha8Rng::seed_from_u64(
                                seed ^ ((epoch as u64) << 40)
                                    ^ (i as u64).wrapping_mul(0x9E37_79B9),
                            );
                            Jitter {
                                x: r.random(),
                                y: r.random(),
                                flip: r.random_bool(0.5),
                            }
                        });
                        load_image(&root.join(&list.items[i].path), &prep, None, jitter)
                    })
                    .collect();
                let msg = decoded.map(|parts| ImageBatch {
                    indices: chunk.to_vec(),
                    pixels: parts.concat(),
                    labels: chunk.iter().map(|&i| list.items[i].label).collect(),
                });
                let failed = msg.is_err();
                // the receiver went away (the consumer stopped): nothing more to do
                if tx.send(msg).is_err() || failed {
                    return;
                }
            }
        });
        Self {
            rx,
            _worker: worker,
        }
    }
}

impl Iterator for ImageLoader {
    type Item = Result<ImageBatch, DataError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.rx.recv().ok()
    }
}

/// Reads an image-folder data set: `dir/train/<class>/…` and `dir/test/<class>/…`, decoded
/// into memory with `prep` (for sets that fit; the test set uses the training set's classes).
pub fn load_image_folder_dir(
    dir: &Path,
    prep: &ImagePrep,
) -> Result<(Dataset, Dataset), DataError> {
    let (train_list, test_list) = read_image_folder_lists(dir)?;
    Ok((
        materialise(&dir.join("train"), &train_list, prep)?,
        materialise(&dir.join("test"), &test_list, prep)?,
    ))
}

/// The file lists of an image-folder data set (`dir/train/<class>/`, `dir/test/<class>/`), the
/// test labels following the training set's class names.
pub fn read_image_folder_lists(dir: &Path) -> Result<(ImageList, ImageList), DataError> {
    let train_list = super::lists::read_class_folders(&dir.join("train"))?;
    let mut test_list = super::lists::read_class_folders(&dir.join("test"))?;
    let map: std::collections::BTreeMap<&str, i64> = train_list
        .classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as i64))
        .collect();
    for it in test_list.items.iter_mut() {
        let name = &test_list.classes[it.label as usize];
        it.label = *map.get(name.as_str()).ok_or_else(|| DataError::Format {
            path: dir.join("test").join(name),
            line: None,
            reason: format!("class '{name}' has no training images"),
        })?;
    }
    test_list.classes = train_list.classes.clone();
    Ok((train_list, test_list))
}

/// Writes `n` JPEGs of `width × height` random pixels into `dir/noise/` (a one-class tree),
/// for loader benchmarks without a data set at hand.
pub fn write_noise_jpegs(dir: &Path, n: usize, width: u32, height: u32) -> Result<(), DataError> {
    let sub = dir.join("noise");
    std::fs::create_dir_all(&sub).map_err(|source| DataError::Io {
        path: sub.clone(),
        source,
    })?;
    (0..n).into_par_iter().try_for_each(|i| {
        let mut r = ChaCha8Rng::seed_from_u64(i as u64);
        // smooth noise compresses like a photo more than white noise does
        let (a, b, c) = (
            r.random::<f32>() * 0.2,
            r.random::<f32>() * 0.2,
            r.random::<f32>() * 6.0,
        );
        let img = image::RgbImage::from_fn(width, height, |x, y| {
            let v = ((x as f32 * a + c).sin() + (y as f32 * b).cos()) * 60.0 + 128.0;
            image::Rgb([v as u8, (v * 0.8) as u8, (255.0 - v) as u8])
        });
        let p = sub.join(format!("{i:05}.jpg"));
        img.save(&p).map_err(|e| decode_err(&p, e))
    })
}

/// Decodes an encoded image (JPEG/PNG bytes) into the CHW bytes a model with input shape
/// `[channels, rows, cols]` expects: the shorter side resized to fit, a centred crop, grey
/// (1 channel) or RGB (3 channels). Used for query images sent to a server.
pub fn image_for_model(bytes: &[u8], shape: [usize; 3]) -> Result<Vec<u8>, String> {
    let [c, h, w] = shape;
    if !(c == 1 || c == 3) || h == 0 || w == 0 {
        return Err(format!("unsupported model input shape {shape:?}"));
    }
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot decode the image: {e}"))?;
    reader.limits(decode_limits());
    let img = reader
        .decode()
        .map_err(|e| format!("cannot decode the image: {e}"))?;
    let (iw, ih) = (img.width().max(1), img.height().max(1));
    let s = (w as f64 / iw as f64).max(h as f64 / ih as f64);
    let (nw, nh) = (
        ((iw as f64 * s).round() as u32).max(w as u32),
        ((ih as f64 * s).round() as u32).max(h as u32),
    );
    check_resize(iw, ih, nw, nh)?;
    let img = if (nw, nh) == (iw, ih) {
        img
    } else {
        img.resize_exact(nw, nh, FilterType::Triangle)
    };
    let (x0, y0) = ((nw - w as u32) / 2, (nh - h as u32) / 2);
    let img = img.crop_imm(x0, y0, w as u32, h as u32);
    let mut out = vec![0u8; c * h * w];
    if c == 1 {
        let g = img.to_luma8();
        out.copy_from_slice(g.as_raw());
    } else {
        let rgb = img.to_rgb8();
        for (i, p) in rgb.pixels().enumerate() {
            for ch in 0..3 {
                out[ch * h * w + i] = p[ch];
            }
        }
    }
    Ok(out)
}

/// A query box as a crop rectangle `(left, top, width, height)` in whole pixels, clipped to the
/// image; an error for a box that is empty or inverted after clipping.
pub fn crop_rect(bbx: &[f64], width: u32, height: u32) -> Result<(u32, u32, u32, u32), String> {
    if bbx.len() != 4 {
        return Err(format!("a box has four numbers, got {bbx:?}"));
    }
    let (x1, y1, x2, y2) = (bbx[0], bbx[1], bbx[2], bbx[3]);
    if !(x2 > x1 && y2 > y1) {
        return Err(format!(
            "box {bbx:?} is inverted or empty (x2 must exceed x1 and y2 exceed y1)"
        ));
    }
    let l = x1.max(0.0).floor().min(width as f64) as u32;
    let t = y1.max(0.0).floor().min(height as f64) as u32;
    let r = x2.ceil().clamp(0.0, width as f64) as u32;
    let b = y2.ceil().clamp(0.0, height as f64) as u32;
    if r <= l || b <= t {
        return Err(format!(
            "box {bbx:?} lies outside the {width}x{height} image"
        ));
    }
    Ok((l, t, r - l, b - t))
}
