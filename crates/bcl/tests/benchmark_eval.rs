//! Benchmark evaluation end to end on generated files in each published layout (SOP, In-shop,
//! GLDv2 retrieval, Revisited with query boxes), with two tiny models trained on coloured
//! squares: every pair is scored, the figures equal the metric functions on the same
//! embeddings, a query box crops the query (equal to embedding a pre-cropped file), the colour
//! classes are retrieved, and a missing image is an error naming it.

use std::collections::BTreeMap;
use std::path::Path;

use bcl::data::images::ImagePrep;
use bcl::eval::protocol::{
    embed_files, evaluate_benchmark, BenchmarkConfig, BenchmarkKind, Figures, FileSet,
};
use bcl::eval::retrieval_metrics;
use bcl::eval::revisited::{QueryGnd, RevisitedGnd};
use bcl::loss::Method;
use bcl::model::Embedder;
use bcl::run;
use image::RgbImage;

mod common;
use common::{cpu_opts, square, tiny_rgb_config};

const PREP: ImagePrep = ImagePrep {
    resize: 32,
    crop: 28,
};

fn save(root: &Path, rel: &str, img: &RgbImage) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    img.save_with_format(&p, image::ImageFormat::Png).unwrap();
}

fn models(root: &Path) -> Vec<Embedder> {
    let data = root.join("shapes");
    for (part, n) in [("train", 24u32), ("test", 4)] {
        for c in 0..4 {
            for i in 0..n {
                save(
                    &data,
                    &format!("{part}/class{c}/{i:03}.png"),
                    &square(c, (i + 100 * (part == "test") as u32) as usize),
                );
            }
        }
    }
    let cfg = tiny_rgb_config(&data, 4, PREP);
    let opts = cpu_opts(false, None);
    run::train_old(&cfg, &root.join("old"), &opts).unwrap();
    run::train_new(
        &cfg,
        &root.join("old"),
        Method::BCT,
        &root.join("bct"),
        &opts,
    )
    .unwrap();
    ["old", "bct"]
        .iter()
        .map(|n| Embedder::load(&root.join(n), tch::Device::Cpu).unwrap())
        .collect()
}

fn hex(i: usize) -> String {
    format!("{:016x}", 0xabc0_0000_0000_0000u64 + i as u64)
}

fn bench(name: &str, kind: BenchmarkKind) -> BenchmarkConfig {
    BenchmarkConfig {
        name: name.into(),
        kind,
        image: PREP,
        batch: 7,
    }
}

#[test]
fn benchmarks_score_every_pair_from_their_files() {
    let d = tempfile::tempdir().unwrap();
    let models = models(d.path());

    // SOP: leave-one-out over Ebay_test.txt
    let sop = d.path().join("sop");
    let mut text = String::from("image_id class_id super_class_id path\n");
    let mut sop_labels = Vec::new();
    for i in 0..20usize {
        let c = i % 4;
        save(&sop, &format!("p{c}/{i}.JPG"), &square(c, i + 7));
        text.push_str(&format!("{} {} 1 p{c}/{i}.JPG\n", i + 1, 100 + c));
        sop_labels.push(c as i64);
    }
    std::fs::write(sop.join("Ebay_test.txt"), text).unwrap();
    let cfg = bench(
        "sop",
        BenchmarkKind::Sop {
            dir: sop.clone(),
            ks: vec![1, 10],
        },
    );
    let r = evaluate_benchmark(&cfg, &models).unwrap();
    assert_eq!((r.pairs.len(), r.queries, r.gallery), (4, 20, 20));
    assert_eq!(
        (r.pairs[1].query.as_str(), r.pairs[1].gallery.as_str()),
        ("old", "new-bct")
    );
    let files = FileSet {
        root: sop.clone(),
        paths: (0..20)
            .map(|i| format!("p{}/{i}.JPG", i % 4).into())
            .collect(),
        boxes: None,
    };
    let f0 = embed_files(&models[0], &files, &PREP, 5).unwrap();
    let f1 = embed_files(&models[1], &files, &PREP, 5).unwrap();
    let want = retrieval_metrics(&f1, &sop_labels, &f0, &sop_labels, true, &[1, 10]).unwrap();
    // bct → old: typed as the labelled protocol, equal to the metric function
    let Figures::Labelled { map, recall_at } = &r.pairs[2].figures else {
        panic!("SOP is scored by the labelled protocol: {:?}", r.pairs[2]);
    };
    assert!((recall_at[&1] - want.recall_at[&1]).abs() < 1e-12);
    assert!((map - want.map).abs() < 1e-12);
    assert!(
        r.pairs[0].figures.get("recall_at_1").unwrap() > 0.8,
        "{:?}",
        r.pairs[0]
    );

    // In-shop: queries against the gallery, classes by item id
    let shop = d.path().join("inshop");
    let mut lines = Vec::new();
    for i in 0..16usize {
        let c = i % 4;
        let status = if i < 4 { "query" } else { "gallery" };
        let rel = format!("img/id_0000000{c}/{i:02}_front.jpg");
        let p = shop.join(&rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        square(c, i + 50)
            .save_with_format(&p, image::ImageFormat::Jpeg)
            .unwrap();
        lines.push(format!("{rel} id_0000000{c} {status}"));
    }
    std::fs::write(
        shop.join("list_eval_partition.txt"),
        format!(
            "{}\nimage_name item_id evaluation_status\n{}\n",
            lines.len(),
            lines.join("\n")
        ),
    )
    .unwrap();
    let r = evaluate_benchmark(
        &bench(
            "inshop",
            BenchmarkKind::Inshop {
                dir: shop,
                ks: vec![1, 10, 20],
            },
        ),
        &models,
    )
    .unwrap();
    assert_eq!((r.queries, r.gallery), (4, 12));
    assert_eq!(
        r.pairs[0]
            .figures
            .columns()
            .iter()
            .filter(|(k, _)| k.starts_with("recall"))
            .count(),
        3
    );
    assert!(
        r.pairs[3].figures.get("recall_at_1").unwrap() > 0.7,
        "{:?}",
        r.pairs[3]
    );

    // GLDv2 retrieval: test queries against the index, relevance from the solution file
    let gl = d.path().join("gldv2");
    let mut index = String::from("id\n");
    for j in 0..12usize {
        index.push_str(&format!("{}\n", hex(j)));
        let p = gl.join(bcl::data::lists::gldv2_path("index", &hex(j)));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        square(j % 4, j + 20)
            .save_with_format(&p, image::ImageFormat::Jpeg)
            .unwrap();
    }
    let mut sol = String::from("id,images,Usage\n");
    for q in 0..4usize {
        let id = hex(100 + q);
        let rel: Vec<String> = (0..12).filter(|j| j % 4 == q).map(hex).collect();
        sol.push_str(&format!("{id},{},Public\n", rel.join(" ")));
        let p = gl.join(bcl::data::lists::gldv2_path("test", &id));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        square(q, q + 90)
            .save_with_format(&p, image::ImageFormat::Jpeg)
            .unwrap();
    }
    sol.push_str(&format!("{},None,Ignored\n", hex(200)));
    std::fs::write(gl.join("index.csv"), index).unwrap();
    std::fs::write(gl.join("retrieval_solution_v2.1.csv"), sol).unwrap();
    let r = evaluate_benchmark(
        &bench(
            "gldv2",
            BenchmarkKind::Gldv2 {
                dir: gl.clone(),
                usage: None,
            },
        ),
        &models,
    )
    .unwrap();
    assert_eq!((r.queries, r.gallery), (4, 12));
    let m = r.pairs[0].figures.get("map_at_100").unwrap();
    assert!(m > 0.7 && m <= 1.0, "{:?}", r.pairs[0]);
    let e = evaluate_benchmark(
        &bench(
            "gldv2",
            BenchmarkKind::Gldv2 {
                dir: gl.clone(),
                usage: Some("Private".into()),
            },
        ),
        &models,
    )
    .unwrap_err();
    assert!(e.to_string().contains("Usage Private"), "{e}");

    // a missing image is an error naming it
    std::fs::remove_file(gl.join(bcl::data::lists::gldv2_path("index", &hex(5)))).unwrap();
    let e = evaluate_benchmark(
        &bench(
            "gldv2",
            BenchmarkKind::Gldv2 {
                dir: gl,
                usage: None,
            },
        ),
        &models,
    )
    .unwrap_err();
    assert!(e.to_string().contains(&hex(5)), "{e}");
}

#[test]
fn revisited_queries_are_cropped_to_their_boxes() {
    let d = tempfile::tempdir().unwrap();
    let models = models(d.path());
    let dir = d.path().join("roxf");
    // database: 8 images of 4 classes; queries: a wide image holding a class-2 square on the
    // left and a class-0 square on the right, the box around the left one
    let mut imlist = Vec::new();
    for j in 0..8usize {
        let n = format!("db_{j}");
        // PNG bytes under the .jpg name the benchmark reads (decoding sniffs the format)
        save(&dir, &format!("{n}.jpg"), &square(j % 4, j + 30));
        imlist.push(n);
    }
    let mut wide = RgbImage::new(80, 36);
    let (l, r) = (square(2, 3), square(0, 3));
    for (x, y, p) in l.enumerate_pixels() {
        wide.put_pixel(x, y, *p);
    }
    for (x, y, p) in r.enumerate_pixels() {
        wide.put_pixel(x + 40, y, *p);
    }
    wide.save_with_format(dir.join("q_0.jpg"), image::ImageFormat::Png)
        .unwrap();
    let left = image::imageops::crop_imm(&wide, 0, 0, 40, 36).to_image();
    left.save_with_format(dir.join("q_0_cropped.jpg"), image::ImageFormat::Png)
        .unwrap();
    let gnd = RevisitedGnd {
        imlist,
        qimlist: vec!["q_0".into()],
        gnd: vec![QueryGnd {
            bbx: Some(vec![0.0, 0.0, 40.0, 36.0]),
            easy: vec![2],
            hard: vec![6],
            junk: vec![0],
        }],
    };
    std::fs::write(
        dir.join("gnd_test.pkl"),
        serde_pickle::to_vec(&gnd, Default::default()).unwrap(),
    )
    .unwrap();
    let cfg = bench(
        "roxf",
        BenchmarkKind::Revisited {
            gnd: dir.join("gnd_test.pkl"),
            images: dir.clone(),
            kappas: vec![1, 5],
        },
    );
    let r = evaluate_benchmark(&cfg, &models).unwrap();
    assert_eq!((r.pairs.len(), r.queries, r.gallery), (4, 1, 8));
    let keys: Vec<String> = r.pairs[0]
        .figures
        .columns()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(keys.iter().any(|k| k == "hard_map") && keys.iter().any(|k| k == "medium_mp_at_5"));
    // the box crops the query: its embedding is the pre-cropped file's, not the whole image's
    let one = |name: &str, boxes: Option<Vec<Option<Vec<f64>>>>| {
        embed_files(
            &models[0],
            &FileSet {
                root: dir.clone(),
                paths: vec![name.into()],
                boxes,
            },
            &PREP,
            1,
        )
        .unwrap()
    };
    let boxed = one("q_0.jpg", Some(vec![Some(vec![0.0, 0.0, 40.0, 36.0])]));
    assert!(boxed.allclose(&one("q_0_cropped.jpg", None), 1e-5, 1e-6, false));
    assert!(!boxed.allclose(&one("q_0.jpg", None), 1e-3, 1e-3, false));
    // the cropped class-2 query finds the class-2 database images first
    let mut figures = BTreeMap::new();
    for p in &r.pairs {
        figures.insert(
            (p.query.clone(), p.gallery.clone()),
            p.figures.get("easy_map").unwrap(),
        );
    }
    assert!(
        figures[&("old".to_string(), "old".to_string())] > 0.9,
        "{figures:?}"
    );
}
