//! Every data format through every command that reads data: `bcl train-old`, `bcl eval` and
//! `bcl gallery build` on generated files in the GLDv2, In-shop and SOP layouts (before the data
//! source was one type, `eval` and `gallery` refused these formats), and a model without a run
//! configuration is an error naming what to give instead of silently evaluating on the
//! Fashion-MNIST defaults.

use std::path::Path;
use std::process::Command;

use image::RgbImage;

fn bcl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bcl"))
}

fn ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A 20 × 20 image of class `c` (its own colour), varied by `v`.
fn jpg(path: &Path, c: usize, v: usize) {
    let img = RgbImage::from_fn(20, 20, |x, y| {
        let base = [
            (c * 80 % 256) as u8,
            (c * 140 % 256) as u8,
            (c * 200 % 256) as u8,
        ];
        let n = ((x as usize * 7 + y as usize * 13 + v * 31) % 40) as u8;
        image::Rgb(base.map(|b| b.saturating_add(n)))
    });
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save_with_format(path, image::ImageFormat::Jpeg)
        .unwrap();
}

/// GLDv2: `train_clean.csv` and `train/a/b/c/<id>.jpg`; 3 landmarks of 8 images (the last 2 of
/// each held out as the test set).
fn gldv2(dir: &Path) -> (&'static str, usize, usize) {
    let mut clean = String::from("landmark_id,images\n");
    for c in 0..3 {
        let ids: Vec<String> = (0..8)
            .map(|i| format!("{:016x}", 0xabc0_0000_0000_0000u64 + (c * 100 + i) as u64))
            .collect();
        for (i, id) in ids.iter().enumerate() {
            jpg(&dir.join(bcl::data::lists::gldv2_path("train", id)), c, i);
        }
        clean.push_str(&format!("{},{}\n", 500 + c, ids.join(" ")));
    }
    std::fs::write(dir.join("train_clean.csv"), clean).unwrap();
    ("gldv2", 3, 6)
}

/// In-shop: `list_eval_partition.txt`; 3 training items of 6 images, 2 evaluation items with
/// 2 query and 2 gallery images each.
fn inshop(dir: &Path) -> (&'static str, usize, usize) {
    let mut rows = Vec::new();
    for c in 0..3 {
        for i in 0..6 {
            let p = format!("img/train/{c}_{i}.jpg");
            jpg(&dir.join(&p), c, i);
            rows.push(format!("{p} id_{c:05} train"));
        }
    }
    for c in 3..5 {
        for (i, part) in ["query", "query", "gallery", "gallery"].iter().enumerate() {
            let p = format!("img/eval/{c}_{i}.jpg");
            jpg(&dir.join(&p), c, i);
            rows.push(format!("{p} id_{c:05} {part}"));
        }
    }
    let text = format!(
        "{}\nimage_name item_id evaluation_status\n{}\n",
        rows.len(),
        rows.join("\n")
    );
    std::fs::write(dir.join("list_eval_partition.txt"), text).unwrap();
    ("inshop", 3, 4) // test_per_class = 2 of each evaluation item
}

/// SOP: `Ebay_train.txt` (3 products of 6 images), `Ebay_test.txt` (2 products of 4).
fn sop(dir: &Path) -> (&'static str, usize, usize) {
    let mut n = 0;
    for (file, products, per) in [("Ebay_train.txt", 0..3, 6), ("Ebay_test.txt", 3..5, 4)] {
        let mut text = String::from("image_id class_id super_class_id path\n");
        for c in products {
            for i in 0..per {
                n += 1;
                let p = format!("chair_final/{c}_{i}.JPG");
                jpg(&dir.join(&p), c, i);
                text.push_str(&format!("{n} {} 1 {p}\n", c + 1));
            }
        }
        std::fs::write(dir.join(file), text).unwrap();
    }
    ("sop", 3, 4) // test_per_class = 2 of each test product
}

#[test]
fn eval_and_gallery_build_read_every_listed_format() {
    type Layout = fn(&Path) -> (&'static str, usize, usize);
    for make in [gldv2 as Layout, inshop, sop] {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let (format, classes, test_items) = make(&data);
        let cfg = d.path().join("c.toml");
        std::fs::write(
            &cfg,
            format!(
                "[data]\nformat = \"{format}\"\ndir = {data:?}\nclasses = {classes}\n\
                 test_per_class = 2\n[data.image]\nresize = 16\ncrop = 16\n\
                 [model]\nwidth = 4\ndim = 8\nin_channels = 3\n\
                 [old]\nepochs = 1\nbatch_size = 8\n[split]\nfraction = 0.5\n"
            ),
        )
        .unwrap();
        let old = d.path().join("old");
        ok(bcl()
            .args(["train-old", "--device", "cpu", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(&old));
        let out = ok(bcl().args(["eval", "--device", "cpu", "--model"]).arg(&old));
        assert!(out.contains("compatibility matrix"), "{format}: {out}");
        let store = d.path().join("g");
        let out = ok(bcl()
            .args(["gallery", "build", "--device", "cpu", "--store"])
            .arg(&store)
            .arg("--model")
            .arg(&old));
        assert!(
            out.contains(&format!("{test_items} items embedded")),
            "{format}: {out}"
        );
        // and the training part, decoded from its files
        let out = ok(bcl()
            .args([
                "gallery", "build", "--device", "cpu", "--split", "train", "--store",
            ])
            .arg(d.path().join("g-train"))
            .arg("--model")
            .arg(&old));
        assert!(out.contains("items embedded"), "{format}: {out}");
    }
}

#[test]
fn a_model_without_its_run_configuration_needs_config() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    sop(&data);
    let cfg = d.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[data]\nformat = \"sop\"\ndir = {data:?}\nclasses = 3\n[data.image]\nresize = 16\n\
             crop = 16\n[model]\nwidth = 4\ndim = 8\nin_channels = 3\n[old]\nepochs = 1\nbatch_size = 8\n"
        ),
    )
    .unwrap();
    let old = d.path().join("old");
    ok(bcl()
        .args(["train-old", "--device", "cpu", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&old));
    std::fs::remove_file(old.join("config.toml")).unwrap();
    for args in [
        vec!["eval", "--device", "cpu", "--model"],
        vec![
            "gallery", "build", "--device", "cpu", "--store", "unused", "--model",
        ],
    ] {
        let out = bcl().args(&args).arg(&old).output().unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && e.contains("config.toml") && e.contains("--config"),
            "{args:?}: {e}"
        );
    }
    // with --config the same model evaluates
    let out = ok(bcl()
        .args(["eval", "--device", "cpu", "--config"])
        .arg(&cfg)
        .arg("--model")
        .arg(&old));
    assert!(out.contains("compatibility matrix"), "{out}");
}
