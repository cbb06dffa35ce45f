//! The benchmark recipes (experiments/gldv2-resnet18.toml, experiments/inshop-resnet18.toml)
//! parse, and the GLDv2 recipe runs end to end with `bcl experiment` on generated files in the
//! publishers' layouts (GLDv2 training list and images streamed, a class-level test set held
//! out, Revisited and GLDv2-retrieval benchmarks scored), shrunk to a CPU-sized run; a rerun
//! reuses every cached result.

use std::path::{Path, PathBuf};

use bcl::data::images::ImagePrep;
use bcl::data::lists::gldv2_path;
use bcl::data::DataFormat;
use bcl::eval::protocol::BenchmarkKind;
use bcl::eval::revisited::{QueryGnd, RevisitedGnd};
use bcl::experiment::{run_experiment, ExperimentConfig};
use bcl::loss::Method;
use image::RgbImage;

mod common;
use common::{cpu_opts, square};

fn recipe(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../experiments")
        .join(name)
}

fn jpg(path: &Path, img: &RgbImage) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save_with_format(path, image::ImageFormat::Jpeg)
        .unwrap();
}

fn hex(i: usize) -> String {
    format!("{:016x}", 0x5eed_0000_0000_0000u64 + i as u64)
}

#[test]
fn every_committed_experiment_parses_and_the_frontier_shares_the_tax_regime() {
    let dir = recipe("");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            ExperimentConfig::from_toml_file(&p).unwrap();
            n += 1;
        }
    }
    assert!(n >= 7, "{n} experiment files in {}", dir.display());
    // the frontier reuses the regime's main runs (same --out), so its base must be the same
    let tax = ExperimentConfig::from_toml_file(&recipe("tax-d8.toml")).unwrap();
    let frontier = ExperimentConfig::from_toml_file(&recipe("tax-d8-frontier.toml")).unwrap();
    assert_eq!(frontier.base, tax.base);
    assert_eq!(
        (&frontier.scenarios, &frontier.methods, &frontier.seeds),
        (&tax.scenarios, &tax.methods, &tax.seeds)
    );
    assert!(frontier.sweeps.len() >= 6 && frontier.sweep_seeds.as_ref().unwrap().len() >= 3);
    // the protocol's run of the regime trains as tax-d8 on its first 1,000 images per class
    // (its validation images, the next 500, are ones tax-d8 never trained on), chooses on
    // selection seeds apart from its five report seeds, and gives every method a grid of the
    // same size
    let protocol = ExperimentConfig::from_toml_file(&recipe("tax-d8-protocol.toml")).unwrap();
    let mut base = protocol.base.clone();
    assert_eq!(base.data.validation_per_class, Some(500));
    assert_eq!(base.data.train_per_class, Some(1000));
    base.data.validation_per_class = None;
    base.data.train_per_class = tax.base.data.train_per_class;
    assert_eq!(base, tax.base);
    // the dose-response over the dimension and the extended-data control change one thing each
    for (file, dim, scenario) in [
        ("tax-d16-protocol.toml", 16, "extended-class"),
        ("tax-d32-protocol.toml", 32, "extended-class"),
        ("tax-d8-data-protocol.toml", 8, "extended-data"),
    ] {
        let mut e = ExperimentConfig::from_toml_file(&recipe(file)).unwrap();
        assert_eq!(e.base.model.dim, dim, "{file}");
        assert_eq!(e.scenarios, [scenario.parse().unwrap()], "{file}");
        e.base.model.dim = protocol.base.model.dim;
        e.scenarios = protocol.scenarios.clone();
        assert_eq!(
            e, protocol,
            "{file} differs from tax-d8-protocol.toml in one thing"
        );
    }
    // the no-tax candidate: a wider new model (through its head), and the adapters' rows on
    // held-out support
    let mut wide = ExperimentConfig::from_toml_file(&recipe("tax-d8-wide-protocol.toml")).unwrap();
    assert_eq!(wide.base.new_model.dim, Some(32));
    let ad = wide.adapters.take().expect("the adapters' rows");
    assert_eq!(ad.part, bcl::data::Part::Validation);
    wide.base.new_model.dim = None;
    assert_eq!(
        wide, protocol,
        "tax-d8-wide-protocol.toml differs from tax-d8-protocol.toml in the new model's dimension"
    );
    let sel = protocol.selection.as_ref().unwrap();
    assert_eq!(sel.report_seeds(&protocol.seeds), &[1, 2, 3, 4, 5]);
    assert!(sel.seeds.iter().all(|s| !protocol.seeds.contains(s)));
    let methods: Vec<&str> = sel.grids.iter().map(|g| g.method.as_str()).collect();
    for m in ["bct", "l2", "lce", "ndpp", "odpp", "lce-ndpp", "lce-odpp"] {
        assert!(methods.contains(&m), "{m} has a grid");
    }
}

#[test]
fn the_recipes_parse() {
    let g = ExperimentConfig::from_toml_file(&recipe("gldv2-resnet18.toml")).unwrap();
    assert_eq!(g.base.data.format, DataFormat::Gldv2);
    // ODPP is in the landmark recipe, with its softmax restricted to 63 candidates
    assert!(g.methods.contains(&Method::ODPP));
    let odpp: bcl::perturb::OdppConfig = g.base.compat.settings("odpp").unwrap();
    assert_eq!((odpp.candidates, odpp.old_bank_per_class), (63, 2));
    assert_eq!(g.benchmark.len(), 3);
    assert!(matches!(
        g.benchmark[0].kind,
        BenchmarkKind::Revisited { .. }
    ));
    let i = ExperimentConfig::from_toml_file(&recipe("inshop-resnet18.toml")).unwrap();
    assert_eq!(i.base.data.format, DataFormat::Inshop);
    assert!(matches!(i.benchmark[0].kind, BenchmarkKind::Inshop { .. }));
    // a misspelt key in a benchmark entry is an error naming it
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("x.toml");
    std::fs::write(
        &p,
        "[[benchmark]]\nname = \"s\"\nkind = \"sop\"\ndir = \"d\"\nkz = [1]\n",
    )
    .unwrap();
    let e = ExperimentConfig::from_toml_file(&p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("kz"), "{e}");
}

#[test]
fn the_gldv2_recipe_runs_on_generated_files() {
    let d = tempfile::tempdir().unwrap();
    let gl = d.path().join("gldv2");
    // training: 4 landmarks, 12 images each (the last 2 of each held out as the test set)
    let mut clean = String::from("landmark_id,images\n");
    for c in 0..4 {
        let ids: Vec<String> = (0..12).map(|i| hex(c * 100 + i)).collect();
        for (i, id) in ids.iter().enumerate() {
            jpg(&gl.join(gldv2_path("train", id)), &square(c, i));
        }
        clean.push_str(&format!("{},{}\n", 7000 + c, ids.join(" ")));
    }
    std::fs::write(gl.join("train_clean.csv"), clean).unwrap();
    // retrieval: 8 index images, 4 test queries
    let mut index = String::from("id\n");
    for j in 0..8 {
        index.push_str(&format!("{}\n", hex(1000 + j)));
        jpg(
            &gl.join(gldv2_path("index", &hex(1000 + j))),
            &square(j % 4, j + 40),
        );
    }
    let mut sol = String::from("id,images,Usage\n");
    for q in 0..4 {
        jpg(
            &gl.join(gldv2_path("test", &hex(2000 + q))),
            &square(q, q + 60),
        );
        let rel: Vec<String> = (0..8)
            .filter(|j| j % 4 == q)
            .map(|j| hex(1000 + j))
            .collect();
        sol.push_str(&format!("{},{},Private\n", hex(2000 + q), rel.join(" ")));
    }
    std::fs::write(gl.join("index.csv"), index).unwrap();
    std::fs::write(gl.join("retrieval_solution_v2.1.csv"), sol).unwrap();
    // Revisited-style: 8 database images, 2 queries with boxes
    let rox = d.path().join("roxford5k");
    for j in 0..8 {
        jpg(&rox.join(format!("jpg/db{j}.jpg")), &square(j % 4, j + 80));
    }
    for q in 0..2 {
        jpg(&rox.join(format!("jpg/q{q}.jpg")), &square(q, q + 90));
    }
    let gnd = RevisitedGnd {
        imlist: (0..8).map(|j| format!("db{j}")).collect(),
        qimlist: vec!["q0".into(), "q1".into()],
        gnd: (0..2)
            .map(|q| QueryGnd {
                bbx: Some(vec![0.0, 0.0, 40.0, 36.0]),
                easy: vec![q],
                hard: vec![q + 4],
                junk: vec![],
            })
            .collect(),
    };
    std::fs::write(
        rox.join("gnd.pkl"),
        serde_pickle::to_vec(&gnd, Default::default()).unwrap(),
    )
    .unwrap();

    // the recipe, pointed at the files and shrunk to a CPU-sized run
    let mut cfg = ExperimentConfig::from_toml_file(&recipe("gldv2-resnet18.toml")).unwrap();
    let prep = ImagePrep {
        resize: 32,
        crop: 32,
    };
    cfg.scenarios = vec![bcl::data::Scenario::ExtendedData];
    // ODPP with the recipe's restricted softmax (63 candidates, here capped at the 3 other
    // classes) and its 2-per-class old bank
    cfg.methods = vec![Method::BCT, Method::ODPP];
    cfg.base.data.dir = gl.clone();
    cfg.base.data.classes = 4;
    cfg.base.data.image = prep;
    cfg.base.model.pretrained = None;
    cfg.base.model.dim = 32;
    for t in [&mut cfg.base.old, &mut cfg.base.new] {
        t.epochs = 2;
        t.batch_size = 16;
        t.lr = 0.05;
    }
    cfg.benchmark.remove(1); // rparis6k: the same protocol as roxford5k
    for b in cfg.benchmark.iter_mut() {
        b.image = prep;
        match &mut b.kind {
            BenchmarkKind::Revisited { gnd, images, .. } => {
                *gnd = rox.join("gnd.pkl");
                *images = rox.join("jpg");
            }
            BenchmarkKind::Gldv2 { dir, .. } => *dir = gl.clone(),
            _ => unreachable!(),
        }
    }
    let out = d.path().join("run");
    let opts = cpu_opts(false, None);
    let r = run_experiment(&cfg, &out, &opts).unwrap();
    // the class-level table used the 8 held-out images; both benchmarks scored every pair of
    // the three models (old, bct, odpp)
    assert_eq!(r.benchmarks.len(), 2);
    for b in &r.benchmarks {
        assert_eq!(b.report.pairs.len(), 9, "{}", b.report.name);
    }
    assert_eq!(
        (
            r.benchmarks[0].report.queries,
            r.benchmarks[0].report.gallery
        ),
        (2, 8)
    );
    assert_eq!(
        (
            r.benchmarks[1].report.queries,
            r.benchmarks[1].report.gallery
        ),
        (4, 8)
    );
    let md = std::fs::read_to_string(out.join("benchmarks.md")).unwrap();
    for want in [
        "roxford5k, extended-data",
        "gldv2-retrieval",
        "self medium_map",
        "cross map_at_100",
        "new-bct",
        "new-odpp",
    ] {
        assert!(md.contains(want), "{want} missing from:\n{md}");
    }
    // a rerun reuses the cached benchmark results (no model is loaded: delete their weights)
    let cache = out.join("extended-data/seed-1/benchmark-roxford5k.json");
    let before = std::fs::metadata(&cache).unwrap().modified().unwrap();
    let again = run_experiment(&cfg, &out, &opts).unwrap();
    assert_eq!(
        std::fs::metadata(&cache).unwrap().modified().unwrap(),
        before
    );
    assert_eq!(
        again.benchmarks[1].report.pairs[0].figures,
        r.benchmarks[1].report.pairs[0].figures
    );
}
