//! Image files: decoding, resize and crop by hand, query boxes, training jitter, the parallel
//! loader (order, labels, errors), and a short end-to-end run on a generated image-folder set.

use bcl::data::images::{load_image, materialise, ImageLoader, ImagePrep, Jitter};
use bcl::data::lists::read_class_folders;
use image::{Rgb, RgbImage};

mod common;
use common::{cpu_opts, make_folder, tch_rng_lock, tiny_rgb_config};

/// A w × h image whose pixel (x, y) is (x, y, 7).
fn ramp(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| Rgb([x as u8, y as u8, 7]))
}

fn chw(v: &[u8], c: usize, ch: usize, y: usize, x: usize) -> u8 {
    v[ch * c * c + y * c + x]
}

#[test]
fn decode_crop_flip_and_boxes_by_hand() {
    let d = tempfile::tempdir().unwrap();
    let png = d.path().join("r.png");
    ramp(6, 4).save(&png).unwrap();
    // shorter side already 4: no resize; the centre 4x4 square starts at x = 1
    let prep = ImagePrep { resize: 4, crop: 4 };
    let v = load_image(&png, &prep, None, None).unwrap();
    assert_eq!(v.len(), 3 * 16);
    assert_eq!(chw(&v, 4, 0, 0, 0), 1, "x of the first column");
    assert_eq!(chw(&v, 4, 1, 3, 0), 3, "y of the last row");
    assert_eq!(chw(&v, 4, 2, 2, 2), 7);
    // jitter: leftmost crop, mirrored
    let j = Jitter {
        x: 0.0,
        y: 0.0,
        flip: true,
    };
    let v = load_image(&png, &prep, None, Some(j)).unwrap();
    assert_eq!(
        chw(&v, 4, 0, 0, 0),
        3,
        "mirrored: the first column shows x = 3"
    );
    assert_eq!(chw(&v, 4, 0, 0, 3), 0);
    // a box [2, 1, 5, 4] (3x3) first, then nothing to resize for resize = crop = 3
    let v = load_image(
        &png,
        &ImagePrep { resize: 3, crop: 3 },
        Some(&[2.0, 1.0, 5.0, 4.0]),
        None,
    )
    .unwrap();
    assert_eq!((chw(&v, 3, 0, 0, 0), chw(&v, 3, 1, 0, 0)), (2, 1));
    // an inverted box is an error naming the file
    let e = load_image(&png, &prep, Some(&[5.0, 1.0, 2.0, 4.0]), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("r.png") && e.contains("inverted"), "{e}");
    // a larger resize: 6x4 -> 12x8, centre 8x8
    let v = load_image(&png, &ImagePrep { resize: 8, crop: 8 }, None, None).unwrap();
    assert_eq!(v.len(), 3 * 64);
    // JPEG decodes too
    let jpg = d.path().join("r.jpg");
    ramp(20, 10).save(&jpg).unwrap();
    assert_eq!(
        load_image(
            &jpg,
            &ImagePrep {
                resize: 10,
                crop: 8
            },
            None,
            None
        )
        .unwrap()
        .len(),
        3 * 64
    );
    // not an image, and a missing file
    let bad = d.path().join("bad.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let e = load_image(&bad, &prep, None, None).unwrap_err().to_string();
    assert!(e.contains("bad.png") && e.contains("cannot decode"), "{e}");
    let e = load_image(&d.path().join("no.png"), &prep, None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no.png"), "{e}");
    assert!(ImagePrep { resize: 4, crop: 5 }.validate().is_err());
}

#[test]
fn the_loader_decodes_in_order_with_labels_and_stops_at_a_bad_file() {
    let d = tempfile::tempdir().unwrap();
    make_folder(d.path(), 3, 5, 1);
    let list = read_class_folders(d.path()).unwrap();
    let prep = ImagePrep {
        resize: 20,
        crop: 16,
    };
    let order: Vec<usize> = (0..list.len()).rev().collect();
    let batches: Vec<_> = ImageLoader::start(
        d.path().to_path_buf(),
        list.clone(),
        order.clone(),
        4,
        prep,
        None,
        2,
    )
    .collect::<Result<_, _>>()
    .unwrap();
    assert_eq!(
        batches.iter().map(|b| b.indices.len()).collect::<Vec<_>>(),
        [4, 4, 4, 3]
    );
    let seen: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!(seen, order);
    let all = materialise(d.path(), &list, &prep).unwrap();
    for b in &batches {
        for (k, &i) in b.indices.iter().enumerate() {
            assert_eq!(b.labels[k], list.items[i].label);
            // without jitter the loader's pixels are the materialised ones
            let sz = prep.item_size();
            assert_eq!(
                &b.pixels[k * sz..(k + 1) * sz],
                &all.pixels[i * sz..(i + 1) * sz]
            );
        }
    }
    // training jitter is seeded: the same (seed, epoch) gives the same pixels
    let a: Vec<u8> = ImageLoader::start(
        d.path().to_path_buf(),
        list.clone(),
        vec![0, 1],
        2,
        prep,
        Some((9, 1)),
        1,
    )
    .next()
    .unwrap()
    .unwrap()
    .pixels;
    let b: Vec<u8> = ImageLoader::start(
        d.path().to_path_buf(),
        list.clone(),
        vec![0, 1],
        2,
        prep,
        Some((9, 1)),
        1,
    )
    .next()
    .unwrap()
    .unwrap()
    .pixels;
    assert_eq!(a, b);
    // a corrupt file: the loader yields its error and ends
    std::fs::write(d.path().join(&list.items[6].path), b"junk").unwrap();
    let out: Vec<_> = ImageLoader::start(
        d.path().to_path_buf(),
        list.clone(),
        (0..list.len()).collect(),
        4,
        prep,
        None,
        2,
    )
    .collect();
    assert_eq!(out.len(), 2);
    assert!(out[0].is_ok());
    let e = out[1].as_ref().unwrap_err().to_string();
    assert!(e.contains(list.items[6].path.to_str().unwrap()), "{e}");
    let e = materialise(d.path(), &list, &prep).unwrap_err().to_string();
    assert!(e.contains("cannot decode"), "{e}");
}

#[test]
fn image_folder_end_to_end() {
    let _rng = tch_rng_lock();
    use bcl::loss::Method;
    use bcl::model::Embedder;
    use bcl::run;
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("shapes");
    make_folder(&data.join("train"), 4, 24, 1);
    make_folder(&data.join("test"), 4, 6, 2);
    let cfg = tiny_rgb_config(
        &data,
        4,
        ImagePrep {
            resize: 32,
            crop: 28,
        },
    );
    let opts = cpu_opts(false, None);
    run::train_old(&cfg, &d.path().join("old"), &opts).unwrap();
    run::train_new(
        &cfg,
        &d.path().join("old"),
        Method::BCT,
        &d.path().join("bct"),
        &opts,
    )
    .unwrap();
    let models = [
        Embedder::load(&d.path().join("old"), tch::Device::Cpu).unwrap(),
        Embedder::load(&d.path().join("bct"), tch::Device::Cpu).unwrap(),
    ];
    let test = bcl::data::open_test(&cfg.data).unwrap();
    assert_eq!((test.len(), test.channels, test.rows), (24, 3, 28));
    let r = bcl::eval::models::evaluate_models(&models, &test, 16).unwrap();
    let row = &r.rows[0];
    assert!(row.self_map > 0.25 && row.cross_map > 0.25, "{row:?}");
    // a test class without training images is refused
    make_folder(&data.join("test").join("..").join("test2"), 1, 1, 3);
    std::fs::rename(data.join("test2/class0"), data.join("test/zebra")).unwrap();
    let e = bcl::data::open(&cfg.data).unwrap_err().to_string();
    assert!(
        e.contains("zebra") && e.contains("no training images"),
        "{e}"
    );
}

#[test]
fn streamed_batches_equal_decoded_ones_and_repeat() {
    use bcl::data::images::{materialise, read_image_folder_lists};
    use bcl::data::source::{ImageFiles, TrainData};
    use bcl::data::{AugmentConfig, Normalization};
    let d = tempfile::tempdir().unwrap();
    make_folder(&d.path().join("train"), 3, 7, 4);
    make_folder(&d.path().join("test"), 3, 1, 5);
    let (train, _) = read_image_folder_lists(d.path()).unwrap();
    let prep = ImagePrep {
        resize: 32,
        crop: 24,
    };
    let files = ImageFiles {
        root: d.path().join("train"),
        list: train.clone(),
        prep,
        prefetch: 2,
    };
    let mem = materialise(&d.path().join("train"), &train, &prep).unwrap();
    let norm = Normalization {
        mean: 0.3,
        std: 0.2,
    };
    let order = vec![20, 3, 0, 11, 7, 15, 1, 19, 2];
    let (fs, ms) = (TrainData::Files(&files), TrainData::Memory(&mem));
    assert_eq!(
        (fs.len(), fs.shape(), fs.labels()),
        (ms.len(), ms.shape(), ms.labels())
    );
    let a: Vec<_> = fs
        .batches(&order, 4, None, norm, tch::Device::Cpu)
        .map(|b| b.unwrap())
        .collect();
    let b: Vec<_> = ms
        .batches(&order, 4, None, norm, tch::Device::Cpu)
        .map(|b| b.unwrap())
        .collect();
    assert_eq!(a.len(), 3, "batches of 4, 4 and 1");
    for ((xa, ya), (xb, yb)) in a.iter().zip(&b) {
        assert!(
            xa.equal(xb) && ya.equal(yb),
            "streamed and decoded batches differ"
        );
    }
    // training batches: augmented per (seed, epoch, item), the same on every pass
    let aug = AugmentConfig::default();
    let once: Vec<_> = fs
        .batches(&order, 4, Some((&aug, 9, 1)), norm, tch::Device::Cpu)
        .map(|b| b.unwrap().0)
        .collect();
    let again: Vec<_> = fs
        .batches(&order, 4, Some((&aug, 9, 1)), norm, tch::Device::Cpu)
        .map(|b| b.unwrap().0)
        .collect();
    let other: Vec<_> = fs
        .batches(&order, 4, Some((&aug, 9, 2)), norm, tch::Device::Cpu)
        .map(|b| b.unwrap().0)
        .collect();
    assert!(once.iter().zip(&again).all(|(x, y)| x.equal(y)));
    assert!(
        !once.iter().zip(&other).all(|(x, y)| x.equal(y)),
        "another epoch, other crops"
    );
    // a relabelled subset keeps the chosen items with labels in the new class order
    let sub = files.relabel(&[0, 20], &[2, 0]);
    assert_eq!(
        sub.list.items.iter().map(|i| i.label).collect::<Vec<_>>(),
        [1, 0]
    );
    // an unreadable file ends the stream with its path
    std::fs::write(d.path().join("train/class0/000.png"), b"broken").unwrap();
    let e = fs
        .batches(&[0, 1], 2, None, norm, tch::Device::Cpu)
        .find_map(|b| b.err())
        .unwrap();
    assert!(e.to_string().contains("000.png"), "{e}");
}

#[test]
fn a_streamed_image_folder_trains_resumes_and_is_compatible() {
    let _rng = tch_rng_lock();
    use bcl::data::DataFormat;
    use bcl::loss::Method;
    use bcl::model::Embedder;
    use bcl::run;
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("shapes");
    make_folder(&data.join("train"), 4, 24, 1);
    make_folder(&data.join("test"), 4, 6, 2);
    let mut cfg = tiny_rgb_config(
        &data,
        4,
        ImagePrep {
            resize: 32,
            crop: 28,
        },
    );
    cfg.data.stream = true;
    let opts = cpu_opts;
    let old = d.path().join("old");
    run::train_old(&cfg, &old, &opts(false, None)).unwrap();
    // interrupted after one epoch and resumed: the same weights as the run in one go
    let cut = d.path().join("old-cut");
    assert!(run::train_old(&cfg, &cut, &opts(false, Some(1))).is_err());
    run::train_old(&cfg, &cut, &opts(true, None)).unwrap();
    let (a, b) = (
        Embedder::load(&old, tch::Device::Cpu).unwrap(),
        Embedder::load(&cut, tch::Device::Cpu).unwrap(),
    );
    assert_eq!(
        a.card.id, b.card.id,
        "a resumed streamed run ends with the same weights"
    );
    assert_eq!(a.card.input_shape, [3, 28, 28]);
    run::train_new(
        &cfg,
        &old,
        Method::BCT,
        &d.path().join("bct"),
        &opts(false, None),
    )
    .unwrap();
    let models = [
        a,
        Embedder::load(&d.path().join("bct"), tch::Device::Cpu).unwrap(),
    ];
    let test = bcl::data::open(&cfg.data).unwrap().test;
    let r = bcl::eval::models::evaluate_models(&models, &test, 16).unwrap();
    let row = &r.rows[0];
    assert!(row.self_map > 0.25 && row.cross_map > 0.25, "{row:?}");
    // streaming is for image folders only
    cfg.data.format = DataFormat::Idx;
    let e = bcl::data::open(&cfg.data).unwrap_err().to_string();
    assert!(e.contains("stream"), "{e}");
}

/// Hostile images (issue 11, item 7): a 1 × 20,000,000 PNG (41 kB at best compression) is refused by the
/// decoder's side limit, and a 1 × 10,000 image by the resize bound (its shorter side scaled to
/// 256 would make 2.56 billion pixels), as files and as query bytes, with errors, not aborts.
#[test]
fn extreme_image_sizes_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let prep = ImagePrep {
        resize: 256,
        crop: 224,
    };
    let long = dir.path().join("long.png");
    image::GrayImage::new(1, 20_000_000).save(&long).unwrap();
    let e = load_image(&long, &prep, None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("long.png") && e.contains("cannot decode"), "{e}");
    let bytes = std::fs::read(&long).unwrap();
    assert!(bcl::data::images::image_for_model(&bytes, [1, 28, 28]).is_err());

    let thin = dir.path().join("thin.png");
    image::GrayImage::new(1, 10_000).save(&thin).unwrap();
    let e = load_image(&thin, &prep, None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("aspect ratio"), "{e}");
    // a query model of 28 × 28 input resizes it to 28 × 280,000: within the bound, answered
    let bytes = std::fs::read(&thin).unwrap();
    assert_eq!(
        bcl::data::images::image_for_model(&bytes, [1, 28, 28])
            .unwrap()
            .len(),
        28 * 28
    );
}
