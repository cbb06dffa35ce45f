//! Readers of the standard benchmarks on small files written here in their exact published
//! layouts (SOP, In-shop, GLDv2, CIFAR-100 binary, class folders, CSV/TSV lists), malformed
//! variants rejected with the file, the line and the reason, and GLDv2's mAP@100 by hand.

use std::path::Path;

use bcl::data::cifar::{load_cifar100_dir, read_cifar100_file, write_cifar100_file, RECORD};
use bcl::data::lists::{
    gldv2_path, read_class_folders, read_csv_list, read_gldv2_clean, read_gldv2_index,
    read_gldv2_solution, read_gldv2_train, read_inshop, read_sop,
};
use bcl::data::Dataset;
use bcl::eval::search::map_at_k_lists;

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn fails(r: Result<impl std::fmt::Debug, bcl::data::DataError>, needles: &[&str]) {
    let e = r.unwrap_err().to_string();
    for n in needles {
        assert!(e.contains(n), "'{n}' not in: {e}");
    }
}

const SOP: &str = "image_id class_id super_class_id path
1 1 1 bicycle_final/111085122871_0.JPG
2 1 1 bicycle_final/111085122871_72.JPG
3 2 1 bicycle_final/111265328556_0.JPG
4 11 3 chair_final/111296315436_0.JPG
";

#[test]
fn sop_reads_and_rejects() {
    let d = tempfile::tempdir().unwrap();
    let l = read_sop(&write(d.path(), "Ebay_train.txt", SOP)).unwrap();
    assert_eq!(l.len(), 4);
    // numeric class ids sort numerically: 1, 2, 11
    assert_eq!(l.classes, ["1", "2", "11"]);
    assert_eq!(l.labels(), [0, 0, 1, 2]);
    assert_eq!(l.items[3].path, Path::new("chair_final/111296315436_0.JPG"));
    let p = |t: &str| write(d.path(), "Ebay_test.txt", t);
    fails(
        read_sop(&p("id class path\n1 1 a.jpg\n")),
        &["Ebay_test.txt", "line 1", "header"],
    );
    fails(
        read_sop(&p("image_id class_id super_class_id path\n1 1 a.jpg\n")),
        &["line 2", "4 fields"],
    );
    fails(
        read_sop(&p("image_id class_id super_class_id path\n1 x 1 a.jpg\n")),
        &["line 2", "class_id 'x'"],
    );
    fails(
        read_sop(&p(
            "image_id class_id super_class_id path\n1 1 1 ../etc/passwd\n",
        )),
        &["line 2", "relative"],
    );
    fails(read_sop(&p("")), &["empty"]);
    fails(
        read_sop(&p("image_id class_id super_class_id path\n")),
        &["no image"],
    );
}

const INSHOP: &str = "6
image_name item_id evaluation_status
img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train
img/WOMEN/Dresses/id_00000002/02_2_side.jpg id_00000002 train
img/WOMEN/Skirts/id_00000007/01_1_front.jpg id_00000007 query
img/WOMEN/Skirts/id_00000007/01_2_side.jpg id_00000007 gallery
img/MEN/Denim/id_00000080/01_1_front.jpg id_00000080 gallery
img/MEN/Denim/id_00000080/01_7_additional.jpg id_00000080 query
";

#[test]
fn inshop_reads_and_rejects() {
    let d = tempfile::tempdir().unwrap();
    let s = read_inshop(&write(d.path(), "list_eval_partition.txt", INSHOP)).unwrap();
    assert_eq!((s.train.len(), s.query.len(), s.gallery.len()), (2, 2, 2));
    // query and gallery share the item-id class map
    assert_eq!(s.query.classes, s.gallery.classes);
    assert_eq!(s.query.classes, ["id_00000007", "id_00000080"]);
    assert_eq!(s.query.labels(), [0, 1]);
    assert_eq!(s.gallery.labels(), [0, 1]);
    assert_eq!(s.train.labels(), [0, 0]);
    let p = |t: &str| write(d.path(), "list_eval_partition.txt", t);
    fails(
        read_inshop(&p(&INSHOP.replacen("6\n", "7\n", 1))),
        &["announces 7 images", "lists 6"],
    );
    fails(
        read_inshop(&p(&INSHOP.replacen(" query\n", " valid\n", 1))),
        &["line 5", "'valid'"],
    );
    fails(
        read_inshop(&p(&INSHOP.replacen("6\n", "six\n", 1))),
        &["line 1", "number of images"],
    );
    fails(
        read_inshop(&p("1\nimage_name item_id\na.jpg x train\n")),
        &["line 2", "header"],
    );
}

fn hex(i: u32) -> String {
    format!("{:016x}", 0xabc0_0000_0000_0000u64 + i as u64)
}

#[test]
fn gldv2_reads_and_rejects() {
    let d = tempfile::tempdir().unwrap();
    let train = format!(
        "id,url,landmark_id\n{},http://a.org/x.jpg,7\n{},\"http://b.org/y,z.jpg\",3\n{},None,7\n",
        hex(1),
        hex(2),
        hex(3)
    );
    let l = read_gldv2_train(&write(d.path(), "train.csv", &train)).unwrap();
    assert_eq!(l.classes, ["3", "7"]);
    assert_eq!(l.labels(), [1, 0, 1]);
    assert_eq!(l.items[0].path, gldv2_path("train", &hex(1)));
    assert_eq!(
        gldv2_path("train", "6e158a47eb2ca3f6"),
        Path::new("train/6/e/1/6e158a47eb2ca3f6.jpg")
    );
    let clean = format!(
        "landmark_id,images\n7,{} {}\n3,{}\n",
        hex(1),
        hex(3),
        hex(2)
    );
    let c = read_gldv2_clean(&write(d.path(), "train_clean.csv", &clean)).unwrap();
    assert_eq!(c.len(), 3);
    assert_eq!(c.labels(), [1, 1, 0]);

    let index = format!("id\n{}\n{}\n{}\n", hex(10), hex(11), hex(12));
    let ids = read_gldv2_index(&write(d.path(), "index.csv", &index)).unwrap();
    let sol = format!(
        "id,images,Usage\n{},{} {},Public\n{},None,Ignored\n{},{},Private\n",
        hex(20),
        hex(12),
        hex(10),
        hex(21),
        hex(22),
        hex(11)
    );
    let q = read_gldv2_solution(&write(d.path(), "sol.csv", &sol), &ids).unwrap();
    assert_eq!(q.len(), 2, "the Ignored query is skipped");
    assert_eq!(q[0].relevant, [2, 0]);
    assert_eq!(q[1].usage, "Private");

    let p = |n: &str, t: &str| write(d.path(), n, t);
    fails(
        read_gldv2_train(&p("t.csv", "id,url,landmark_id\nxyz,u,1\n")),
        &["t.csv", "line 2", "16 hexadecimal"],
    );
    fails(
        read_gldv2_train(&p("t.csv", &format!("id,url,landmark_id\n{},u\n", hex(1)))),
        &["t.csv", "line 2"],
    );
    fails(
        read_gldv2_train(&p("t.csv", "id,landmark_id\n")),
        &["header 'id,url,landmark_id'"],
    );
    fails(
        read_gldv2_solution(
            &p(
                "s.csv",
                &format!("id,images,Usage\n{},{},Public\n", hex(20), hex(99)),
            ),
            &ids,
        ),
        &["s.csv", "line 2", "not in the index"],
    );
    fails(
        read_gldv2_solution(
            &p(
                "s.csv",
                &format!("id,images,Usage\n{},{},Test\n", hex(20), hex(10)),
            ),
            &ids,
        ),
        &["Usage 'Test'"],
    );
}

#[test]
fn gldv2_map_at_100_by_hand() {
    // query 0: relevant {3, 5}; returned 3 (hit, P=1), 9, 5 (hit, P=2/3): AP = (1 + 2/3)/2
    // query 1: relevant {1}; returned 4, 1 (hit, P=1/2): AP = 1/2
    let ranked = vec![vec![3, 9, 5], vec![4, 1, 1]];
    let relevant = vec![vec![3, 5], vec![1]];
    let m = map_at_k_lists(&ranked, &relevant, 100).unwrap();
    assert!(
        (m - ((1.0 + 2.0 / 3.0) / 2.0 + 0.5) / 2.0).abs() < 1e-12,
        "{m}"
    );
    // k = 2 cuts query 0 after two results: AP@2 = 1/min(2, 2) = 0.5
    let m = map_at_k_lists(&ranked, &relevant, 2).unwrap();
    assert!((m - (0.5 + 0.5) / 2.0).abs() < 1e-12, "{m}");
    // with more relevant items than k the denominator is k
    let m = map_at_k_lists(&[vec![0]], &[vec![0, 1, 2]], 1).unwrap();
    assert!((m - 1.0).abs() < 1e-12);
    assert!(map_at_k_lists(&[vec![0]], &[vec![]], 10).is_err());
    assert!(map_at_k_lists(&[vec![0]], &[], 10).is_err());
}

#[test]
fn class_folders_and_csv_lists() {
    let d = tempfile::tempdir().unwrap();
    for (c, f) in [
        ("cat", "b.jpg"),
        ("cat", "a.PNG"),
        ("dog", "x.jpeg"),
        ("dog", "notes.txt"),
    ] {
        std::fs::create_dir_all(d.path().join("tree").join(c)).unwrap();
        std::fs::write(d.path().join("tree").join(c).join(f), b"").unwrap();
    }
    std::fs::create_dir_all(d.path().join("tree/.hidden")).unwrap();
    let l = read_class_folders(&d.path().join("tree")).unwrap();
    assert_eq!(l.classes, ["cat", "dog"]);
    let paths: Vec<_> = l
        .items
        .iter()
        .map(|i| i.path.to_str().unwrap().to_string())
        .collect();
    assert_eq!(paths, ["cat/a.PNG", "cat/b.jpg", "dog/x.jpeg"]);
    std::fs::create_dir_all(d.path().join("empty/a")).unwrap();
    fails(
        read_class_folders(&d.path().join("empty")),
        &["no image found"],
    );
    fails(
        read_class_folders(&d.path().join("absent")),
        &["absent", "cannot read"],
    );

    let l = read_csv_list(&write(
        d.path(),
        "l.csv",
        "path,label\na/1.jpg,zebra\nb/2.jpg,ant\n",
    ))
    .unwrap();
    assert_eq!(l.classes, ["ant", "zebra"]);
    assert_eq!(l.labels(), [1, 0]);
    let l = read_csv_list(&write(d.path(), "l.tsv", "path\tlabel\na/1.jpg\t5\n")).unwrap();
    assert_eq!(l.labels(), [0]);
    fails(
        read_csv_list(&write(d.path(), "l.csv", "file,class\na.jpg,1\n")),
        &["l.csv", "header 'path,label'"],
    );
    fails(
        read_csv_list(&write(d.path(), "l.csv", "path,label\na.jpg,\n")),
        &["line 2", "empty label"],
    );
    fails(
        read_csv_list(&write(d.path(), "l.csv", "path,label\n/abs/a.jpg,1\n")),
        &["line 2", "relative"],
    );
}

fn cifar_fixture(n: usize) -> Dataset {
    let pixels: Vec<u8> = (0..n * (RECORD - 2)).map(|i| (i * 7 % 251) as u8).collect();
    Dataset {
        pixels,
        labels: (0..n as i64).map(|i| (i * 37) % 100).collect(),
        ids: (0..n).collect(),
        channels: 3,
        rows: 32,
        cols: 32,
        classes: 100,
    }
}

#[test]
fn cifar100_reads_and_rejects() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("cifar-100-binary");
    std::fs::create_dir_all(&dir).unwrap();
    let train = cifar_fixture(12);
    write_cifar100_file(&dir.join("train.bin"), &train).unwrap();
    fails(load_cifar100_dir(&dir), &["missing test.bin"]);
    write_cifar100_file(&dir.join("test.bin"), &cifar_fixture(3)).unwrap();
    let (tr, te) = load_cifar100_dir(&dir).unwrap();
    assert_eq!((tr.len(), te.len()), (12, 3));
    assert_eq!(tr.labels, train.labels);
    assert_eq!(tr.pixels, train.pixels);
    assert_eq!(
        (tr.channels, tr.rows, tr.cols, tr.classes),
        (3, 32, 32, 100)
    );

    let bytes = std::fs::read(dir.join("train.bin")).unwrap();
    let bad = d.path().join("bad.bin");
    std::fs::write(&bad, &bytes[..bytes.len() - 5]).unwrap();
    fails(read_cifar100_file(&bad), &["bad.bin", "whole number"]);
    let mut wrong = bytes.clone();
    wrong[RECORD + 1] = 140; // the second record's fine label
    std::fs::write(&bad, &wrong).unwrap();
    fails(read_cifar100_file(&bad), &["record 1", "fine 140"]);
    std::fs::write(&bad, b"").unwrap();
    fails(read_cifar100_file(&bad), &["empty"]);
}

#[test]
fn cifar100_runs_through_the_pipeline() {
    use bcl::data::DataFormat;
    use bcl::loss::Method;
    use bcl::model::Embedder;
    use bcl::run::{self, RunConfig, StepOptions};
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("cifar-100-binary");
    std::fs::create_dir_all(&dir).unwrap();
    // three training and one test image per class
    let fixture = |per: usize| {
        let mut f = cifar_fixture(100 * per);
        f.labels = (0..100 * per as i64).map(|i| i % 100).collect();
        f
    };
    write_cifar100_file(&dir.join("train.bin"), &fixture(3)).unwrap();
    write_cifar100_file(&dir.join("test.bin"), &fixture(1)).unwrap();
    let mut cfg = RunConfig::default();
    cfg.data.format = DataFormat::Cifar100;
    cfg.data.dir = dir;
    cfg.data.classes = 100;
    cfg.model.width = 4;
    cfg.model.dim = 16;
    cfg.old.epochs = 1;
    cfg.new.epochs = 1;
    let opts = StepOptions {
        resume: false,
        device: tch::Device::Cpu,
        progress: false,
        probe_test: false,
        stop_after: None,
        dist: Default::default(),
    };
    // a grey-scale model on colour images: refused with the setting to change
    let e = run::train_old(&cfg, &d.path().join("old1"), &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("in_channels = 3"), "{e}");
    cfg.model.in_channels = 3;
    run::train_old(&cfg, &d.path().join("old"), &opts).unwrap();
    let new = run::train_new(
        &cfg,
        &d.path().join("old"),
        Method::BCT,
        &d.path().join("new"),
        &opts,
    )
    .unwrap();
    assert_eq!(new.card.input_shape, [3, 32, 32]);
    let models = [
        Embedder::load(&d.path().join("old"), tch::Device::Cpu).unwrap(),
        Embedder::load(&d.path().join("new"), tch::Device::Cpu).unwrap(),
    ];
    let test = bcl::data::open_test(&cfg.data).unwrap();
    let r = bcl::eval::models::evaluate_models(&models, &test, 64).unwrap();
    assert_eq!(r.test_items, 100);
    assert_eq!(r.rows.len(), 1);
    // a wrong class count is refused
    cfg.data.classes = 10;
    let e = bcl::data::open(&cfg.data).unwrap_err().to_string();
    assert!(e.contains("100 (fine) classes"), "{e}");
}
