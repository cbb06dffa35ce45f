//! `run_experiment` on a generated data set: every method and a sweep train, the aggregated
//! table and the frontier come out, and a second call resumes without training anything.

use bcl::data::{synthetic, write_idx_dir, Scenario};
use bcl::eval::models::ResultRow;
use bcl::eval::{CompatMatrix, RetrievalMetrics};
use bcl::experiment::backfill::BackfillConfig;
use bcl::experiment::sequential::{pairs_meeting_criterion, ChainReference, SequentialConfig};
use bcl::experiment::{aggregate, run_experiment, ExperimentConfig, Knob, Sweep};
use bcl::loss::Method;
use bcl::model::ModelCard;
use bcl::perturb::OdppConfig;
use bcl::run::StepOptions;
use tch::{Device, Tensor};

mod common;

/// An experiment over generated IDX files in `dir/data` (`classes` classes of 60 training and
/// `test_per_class` test images, drawn with `seed`): a 4-wide, 16-d model, two epochs of
/// batches of 32 at learning rate 0.05 for old and new models.
fn tiny_experiment(
    dir: &std::path::Path,
    classes: usize,
    test_per_class: usize,
    seed: u64,
) -> ExperimentConfig {
    let data = dir.join("data");
    let (tr, te) = synthetic(classes, 60, test_per_class, seed);
    write_idx_dir(&data, &tr, &te).unwrap();
    let mut cfg = ExperimentConfig::default();
    cfg.base.data.dir = data;
    cfg.base.data.classes = classes;
    cfg.base.model.width = 4;
    cfg.base.model.dim = 16;
    for t in [&mut cfg.base.old, &mut cfg.base.new] {
        t.epochs = 2;
        t.batch_size = 32;
        t.lr = 0.05;
    }
    cfg
}

#[test]
fn a_small_experiment_runs_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_experiment(dir.path(), 6, 15, 8);
    cfg.base.compat.refresh.bank_per_class = 10;
    cfg.base
        .compat
        .update::<OdppConfig>("odpp", |o| {
            o.steps = 5;
            o.old_bank_per_class = 10;
        })
        .unwrap();
    cfg.scenarios = vec![Scenario::ExtendedClass];
    cfg.seeds = vec![1, 2];
    cfg.methods = vec![Method::INDEPENDENT, Method::BCT, Method::NDPP, Method::ODPP];
    cfg.sweeps = vec![Sweep {
        method: Method::BCT,
        knob: Knob::LAMBDA,
        values: vec![4.0],
    }];
    cfg.sequential = Some(SequentialConfig {
        fractions: vec![0.3, 0.6, 1.0],
        methods: vec![Method::BCT],
        reference: ChainReference::Previous,
        seeds: Some(vec![1]),
        ..SequentialConfig::default()
    });
    cfg.backfill = Some(BackfillConfig {
        fractions: vec![0.0, 0.5, 1.0],
        methods: vec![Method::BCT, Method::NDPP],
        seed: 0,
    });
    let out = dir.path().join("exp");
    let opts = opts();
    let report = run_experiment(&cfg, &out, &opts).unwrap();
    assert_eq!(report.runs.len(), 2);
    assert_eq!(report.table.len(), 4);
    for r in &report.table {
        assert_eq!(r.seeds, 2);
        assert!(r.self_map.0 > 0.0 && r.self_map.0 <= 1.0);
    }
    // first seed only: every main method's default point and the sweep's point (bct, λ = 4)
    let settings: Vec<(String, String)> = report
        .frontier
        .iter()
        .map(|p| (p.method.to_string(), p.setting()))
        .collect();
    let expect = [
        ("bct", "default"),
        ("bct", "lambda = 4"),
        ("independent", "default"),
        ("ndpp", "default"),
        ("odpp", "default"),
    ];
    assert_eq!(
        settings,
        expect.map(|(m, s)| (m.to_string(), s.to_string())).to_vec()
    );
    assert!(report.frontier.iter().all(|p| p.seed == 1));
    // each method's best compatible setting against bct's, on the one sweep seed
    assert_eq!(report.best_compatible.len(), 3);
    assert!(report.best_compatible.iter().all(|r| r.seeds == vec![1]));
    // refresh diagnostics of ndpp and odpp, both seeds
    assert_eq!(report.diagnostics.len(), 4);
    for d in &report.diagnostics {
        assert!(
            d.refreshes >= 1 && d.mean_delta > 0.0 && d.train_seconds > 0.0,
            "{d:?}"
        );
        assert_eq!(d.j_last.is_some(), d.method == Method::ODPP);
    }
    for f in [
        "diagnostics.md",
        "results.md",
        "results.csv",
        "frontier.csv",
        "frontier.md",
        "report.json",
        "frontier-extended-class.svg",
        "extended-class/seed-1/compat_matrix.svg",
        "extended-class/seed-1/prototypes-ndpp.svg",
        "extended-class/seed-1/prototypes-odpp.svg",
        "sequential.md",
        "sequential.csv",
        "sequential/seed-1/matrix-bct.svg",
        "backfill.md",
        "backfill.csv",
        "backfill-extended-class.svg",
        "paired.md",
        "paired.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // deployment: both seeds, both methods; the curve's ends are the table's cross and self
    assert_eq!(report.backfill.len(), 4);
    for d in &report.backfill {
        let run = &report.runs[&format!("{}/seed-{}", d.scenario, d.seed)];
        let row = run.rows.iter().find(|r| r.method == d.method).unwrap();
        assert!((d.curve[0].1 - row.cross_map).abs() < 1e-9, "{d:?}");
        assert!((d.curve[2].1 - row.self_map).abs() < 1e-9, "{d:?}");
        assert!((0.0..=1.0).contains(&d.flips_cross.negative));
    }
    // the experiment computes the cells its table uses: no new-against-new pair
    let m = &report.runs["extended-class/seed-1"].matrix;
    let old = m.models.iter().position(|n| n == "old").unwrap();
    for (q, row) in m.cells.iter().enumerate() {
        for (g, c) in row.iter().enumerate() {
            assert_eq!(c.is_some(), q == g || g == old, "cell {q},{g}");
        }
    }
    // the chain: nested shares of each class's 60 images, each model against the previous
    assert_eq!(report.sequential.len(), 1);
    let chain = &report.sequential[0];
    assert_eq!(chain.matrix.models.len(), 3);
    assert_eq!(chain.pairs_total, 3);
    let images = |d: &str| {
        ModelCard::read(&out.join("sequential/seed-1").join(d).join("model.json"))
            .unwrap()
            .train_images
    };
    assert_eq!(
        [images("m0"), images("bct/m1"), images("bct/m2")],
        [6 * 18, 6 * 36, 6 * 60]
    );
    let m2 = ModelCard::read(&out.join("sequential/seed-1/bct/m2/model.json")).unwrap();
    let m1 = ModelCard::read(&out.join("sequential/seed-1/bct/m1/model.json")).unwrap();
    assert_eq!(m2.compatible_with.as_deref(), Some(m1.id.as_str()));
    // resume: nothing is retrained, evaluation comes from the cache, figures are identical;
    // a finished run is recognised before anything is embedded, so the old models' weights
    // are not even read
    for d in [
        "extended-class/seed-1/old",
        "extended-class/seed-2/old",
        "sequential/seed-1/m0",
    ] {
        std::fs::remove_file(out.join(d).join("model.safetensors")).unwrap();
    }
    let card = out.join("extended-class/seed-2/new-odpp/model.json");
    let before = std::fs::metadata(&card).unwrap().modified().unwrap();
    let again = run_experiment(&cfg, &out, &opts).unwrap();
    assert_eq!(
        std::fs::metadata(&card).unwrap().modified().unwrap(),
        before
    );
    assert_eq!(
        serde_json::to_string(&again.table).unwrap(),
        serde_json::to_string(&report.table).unwrap()
    );
    // other settings of a method are refused, not silently mixed with the finished run
    let mut changed = cfg.clone();
    changed
        .base
        .compat
        .update::<OdppConfig>("odpp", |o| o.mu = 2.0)
        .unwrap();
    let e = run_experiment(&changed, &out, &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("other odpp settings") && e.contains("new-odpp"),
        "{e}"
    );
}

#[test]
fn aggregation_by_hand() {
    let row = |m: &str, cross: f64, gain: Option<f64>| ResultRow {
        method: Method::named(m).unwrap(),
        adapter: None,
        old_old_map: 0.5,
        self_map: 0.7,
        cross_map: cross,
        self_r1: 0.8,
        cross_r1: 0.6,
        compatible: cross > 0.5,
        gain,
    };
    let t = aggregate(&[
        (Scenario::ExtendedData, 1, vec![row("bct", 0.6, Some(0.5))]),
        (Scenario::ExtendedData, 2, vec![row("bct", 0.4, None)]),
    ]);
    assert_eq!(t.len(), 1);
    assert!((t[0].cross_map.0 - 0.5).abs() < 1e-12);
    // sample standard deviation of {0.6, 0.4}
    assert!((t[0].cross_map.1 - (0.02f64).sqrt()).abs() < 1e-12);
    assert_eq!(t[0].compatible, 1);
    assert_eq!(t[0].gain, Some((0.5, 0.0)));
}

fn cell(map: f64) -> Option<RetrievalMetrics> {
    Some(RetrievalMetrics {
        map,
        map_at_100: map,
        recall_at: Default::default(),
        queries: 1,
    })
}

#[test]
fn chain_pairs_by_hand() {
    // M(1→0) = 0.55 > M(0→0) = 0.5: met; M(2→0) = 0.45: not; M(2→1) = 0.65 > M(1→1) = 0.6: met
    let v = [[0.5, 0.1, 0.1], [0.55, 0.6, 0.1], [0.45, 0.65, 0.7]];
    let m = CompatMatrix {
        models: vec!["a".into(), "b".into(), "c".into()],
        cells: v
            .iter()
            .map(|r| r.iter().map(|&x| cell(x)).collect())
            .collect(),
    };
    assert_eq!(pairs_meeting_criterion(&m), (2, 3));
    // equality is not compatibility (strict)
    let m = CompatMatrix {
        models: vec!["a".into(), "b".into()],
        cells: vec![vec![cell(0.5), cell(0.0)], vec![cell(0.5), cell(0.9)]],
    };
    assert_eq!(pairs_meeting_criterion(&m), (0, 1));
}

#[test]
fn bad_sequential_configs_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    for (body, needle) in [
        ("fractions = [0.3]", "at least two"),
        ("fractions = [0.6, 0.3]", "increase strictly"),
        ("fractions = [0.3, 1.5]", "(0, 1]"),
        ("fractions = [1.0, 1.0]", "cannot see all"),
        ("methods = []", "at least one method"),
        ("refrence = \"first\"", "unknown field"),
    ] {
        let p = dir.path().join("e.toml");
        std::fs::write(&p, format!("[sequential]\n{body}\n")).unwrap();
        let e = ExperimentConfig::from_toml_file(&p)
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle) && e.contains("e.toml"), "{body}: {e}");
    }
}

/// A heterogeneous upgrade: a narrow, shallow old model (width 4, one block per stage) and a
/// new model twice as wide and deep (`[new_model]`), through every entry point: the experiment
/// table, a sequential chain, the backfill curve, a gallery built by the old model, searched
/// and backfilled by the new one, and a server over it.
#[test]
fn a_wider_deeper_new_model_upgrades_a_narrow_old_one() {
    use bcl::gallery::ops::{self, BackfillPlan, BackfillStrategy, EmbedOptions};
    use bcl::gallery::serve::{ServeConfig, ServeState};
    use bcl::gallery::{Lineage, ModelInfo};
    use bcl::model::Embedder;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_experiment(dir.path(), 5, 12, 9);
    cfg.base.new_model.width = Some(8);
    cfg.base.new_model.blocks = Some(2);
    cfg.scenarios = vec![Scenario::ExtendedData];
    cfg.seeds = vec![1];
    cfg.methods = vec![Method::INDEPENDENT, Method::BCT];
    cfg.sequential = Some(SequentialConfig {
        fractions: vec![0.3, 0.6, 1.0],
        methods: vec![Method::BCT],
        reference: ChainReference::First,
        seeds: None,
        ..SequentialConfig::default()
    });
    cfg.backfill = Some(BackfillConfig {
        fractions: vec![0.0, 0.5, 1.0],
        methods: vec![Method::BCT],
        seed: 0,
    });
    let out = dir.path().join("exp");
    let opts = opts();
    let report = run_experiment(&cfg, &out, &opts).unwrap();
    let card = |d: &str| ModelCard::read(&out.join(d).join("model.json")).unwrap();
    let run = "extended-data/seed-1";
    let old = card(&format!("{run}/old"));
    let bct = card(&format!("{run}/new-bct"));
    assert_eq!((old.arch.width, old.arch.blocks), (4, 1));
    assert_eq!((bct.arch.width, bct.arch.blocks, bct.arch.dim), (8, 2, 16));
    assert_eq!(bct.compatible_with.as_deref(), Some(old.id.as_str()));
    assert_eq!(report.table.len(), 2);
    assert_eq!(report.backfill.len(), 1);
    let m2 = card("sequential/seed-1/bct/m2");
    assert_eq!((m2.arch.width, m2.arch.blocks), (8, 2));
    assert_eq!(report.sequential[0].matrix.models.len(), 3);

    // the deployment: a gallery of the old model's vectors, searched and backfilled by the new
    let old_e = Embedder::load(&out.join(run).join("old"), Device::Cpu).unwrap();
    let new_e = Embedder::load(&out.join(run).join("new-bct"), Device::Cpu).unwrap();
    let test = bcl::data::open_test(&cfg.base.data).unwrap();
    let mut store = old_gallery(&dir.path().join("gallery"), &cfg, &old_e, &test);
    let eo = EmbedOptions::default();
    let info = ModelInfo::from_card(&new_e.card);
    let q = ops::embed_queries(&new_e, &test, 64, 16).unwrap();
    let (l, hits) = ops::search(&store, Some(&info), &q, 3, true, false).unwrap();
    assert_eq!((l, hits.len()), (Some(Lineage::Successor), test.len()));
    let plan = BackfillPlan {
        fraction: 0.5,
        strategy: BackfillStrategy::Random,
        seed: 1,
    };
    let r = ops::backfill(&mut store, &new_e, &test, plan, &eo, &mut |_, _| {}).unwrap();
    assert_eq!(r.by_new_model, test.len() / 2);
    let st = ServeState::new(Box::new(store), Some(new_e), ServeConfig::default(), false);
    assert!(
        st.is_ok(),
        "the server takes the wider model over the mixed gallery"
    );

    // a new model that embeds other images is refused, naming the setting; a projection head
    // is training's to set, not a configuration's
    let mut bad = cfg.base.clone();
    bad.new_model.in_channels = Some(3);
    let e = bad.validate().unwrap_err();
    assert!(e.contains("new_model.in_channels = 3"), "{e}");
    let mut bad = cfg.base.clone();
    bad.model.compat_dim = Some(8);
    let e = bad.validate().unwrap_err();
    assert!(
        e.contains("model.compat_dim = 8") && e.contains("new_model.dim"),
        "{e}"
    );
}

/// An upgrade that changes the embedding dimension (old 32, new 64): each new model learns a
/// projection head into the old space, the card records both dimensions, and every entry point
/// takes the pair: the experiment table (its cross-test is the head's, computed here by hand
/// from the stored weights), a sequential chain (the third model reaches the old space
/// through the second's head), the backfill curve, a gallery of old vectors searched and
/// backfilled by the new model through its head, and a server over the mixed gallery.
#[test]
fn a_new_model_of_another_dimension_reaches_the_old_space_through_its_head() {
    use bcl::eval::leave_one_out;
    use bcl::gallery::ops::{self, BackfillPlan, BackfillStrategy, EmbedOptions};
    use bcl::gallery::serve::{ServeConfig, ServeState};
    use bcl::gallery::{GalleryStore, Lineage, ModelInfo};
    use bcl::model::{l2_normalize, Embedder};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_experiment(dir.path(), 5, 12, 21);
    cfg.base.model.dim = 32;
    cfg.base.new_model.dim = Some(64);
    cfg.base.new_model.width = Some(8);
    cfg.base.old.epochs = 4;
    cfg.base.new.epochs = 15;
    cfg.base.compat.refresh.bank_per_class = 10;
    cfg.scenarios = vec![Scenario::ExtendedData];
    cfg.seeds = vec![1];
    cfg.methods = vec![
        Method::INDEPENDENT,
        Method::BCT,
        Method::L2,
        Method::NDPP,
        Method::LCE,
    ];
    cfg.sequential = Some(SequentialConfig {
        fractions: vec![0.3, 0.6, 1.0],
        methods: vec![Method::BCT],
        reference: ChainReference::Previous,
        seeds: None,
        ..SequentialConfig::default()
    });
    cfg.backfill = Some(BackfillConfig {
        fractions: vec![0.0, 0.5, 1.0],
        methods: vec![Method::BCT],
        seed: 0,
    });
    let out = dir.path().join("exp");
    let report = run_experiment(&cfg, &out, &opts()).unwrap();
    let run = out.join("extended-data/seed-1");
    let card = |d: &std::path::Path| ModelCard::read(&d.join("model.json")).unwrap();
    let old = card(&run.join("old"));
    assert_eq!((old.arch.dim, old.arch.compat_dim), (32, None));
    for m in &cfg.methods {
        let c = card(&run.join(m.model_name()));
        assert_eq!((c.arch.dim, c.arch.compat_dim), (64, Some(32)), "{m}");
    }
    assert_eq!(report.table.len(), cfg.methods.len());

    // the table's cross-test is the head's: P f / |P f| against the old vectors
    let test = bcl::data::open_test(&cfg.base.data).unwrap();
    let old_e = Embedder::load(&run.join("old"), Device::Cpu).unwrap();
    let bct_e = Embedder::load(&run.join("new-bct"), Device::Cpu).unwrap();
    let ind_e = Embedder::load(&run.join("new-independent"), Device::Cpu).unwrap();
    let g = old_e.embed_dataset(&test, 64);
    let weights = tch::Tensor::read_safetensors(run.join("new-bct/model.safetensors")).unwrap();
    let p = &weights
        .iter()
        .find(|(n, _)| n == "net.compat_head.weight")
        .expect("the head is stored with the model")
        .1;
    assert_eq!(p.size(), [32, 64]);
    let f = bct_e.embed_dataset(&test, 64);
    assert_eq!(f.size()[1], 64);
    let by_hand = l2_normalize(&f.matmul(&p.tr()));
    let cross = leave_one_out(&by_hand, &g, &test.labels).unwrap().map;
    let row = |m: Method| {
        let r = report.table.iter().find(|r| r.method == m).unwrap();
        (r.self_map.0, r.cross_map.0)
    };
    assert!(
        (row(Method::BCT).1 - cross).abs() < 1e-6,
        "{} vs {cross}",
        row(Method::BCT).1
    );
    let own = leave_one_out(&f, &f, &test.labels).unwrap().map;
    assert!(
        (row(Method::BCT).0 - own).abs() < 1e-6,
        "self-test in the 64-d space"
    );
    // the head is trained by the compatibility loss alone: the independent model's (same seed,
    // no compatibility term) is still the initial one; BCT's queries, through its head, find
    // the old gallery's classes better than the independent model's
    let head_of = |m: &str| {
        let w = tch::Tensor::read_safetensors(run.join(m).join("model.safetensors")).unwrap();
        w.into_iter()
            .find(|(n, _)| n == "net.compat_head.weight")
            .unwrap()
            .1
    };
    let p0 = head_of("new-independent");
    assert!(
        f64::try_from((&p0 - p).abs().max()).unwrap() > 1e-3,
        "BCT's head moved"
    );
    assert!(
        row(Method::BCT).1 > row(Method::INDEPENDENT).1 + 0.03,
        "bct {:?} vs independent {:?} (self, cross)",
        row(Method::BCT),
        row(Method::INDEPENDENT)
    );

    // the chain: m2 (64-d, trained against m1, also 64-d) reaches the old space through m1's
    // head; the old model's queries cannot reach a 64-d gallery
    let chain = &report.sequential[0].matrix;
    assert!(chain.cells[2][0].is_some() && chain.cells[1][0].is_some());
    assert!(chain.cells[0][1].is_none() && chain.cells[0][2].is_none());
    let m1 = card(&out.join("sequential/seed-1/bct/m1"));
    let m2 = card(&out.join("sequential/seed-1/bct/m2"));
    assert_eq!((m1.arch.compat_dim, m2.arch.compat_dim), (Some(32), None));
    assert_eq!(m2.compatible_with.as_deref(), Some(m1.id.as_str()));
    // (the chain's first model is the table's old model: the same run)
    let link = |m: &str| Embedder::load(&out.join("sequential/seed-1/bct").join(m), Device::Cpu);
    let (e1, e2) = (link("m1").unwrap(), link("m2").unwrap());
    let through = e1.to_compat_space(&e2.embed_dataset(&test, 64));
    let want = leave_one_out(&through, &g, &test.labels).unwrap();
    let got = chain.cells[2][0].as_ref().unwrap().map;
    assert!(
        (got - want.map).abs() < 1e-6,
        "m2 → m0 {got} vs by hand {}",
        want.map
    );
    assert_eq!(report.backfill.len(), 1);

    // the deployment: a gallery of the old model's 32-d vectors, searched and half backfilled
    // by the 64-d model through its head; the old model is refused a 64-d gallery
    let mut store = old_gallery(&dir.path().join("gallery"), &cfg, &old_e, &test);
    let eo = EmbedOptions::default();
    let info = ModelInfo::from_card(&bct_e.card);
    assert_eq!((info.dim, info.compat_dim), (64, Some(32)));
    let q = ops::embed_queries(&bct_e, &test, 64, 32).unwrap();
    assert_eq!(q.len(), test.len() * 32);
    let (l, hits) = ops::search(&store, Some(&info), &q, 3, true, false).unwrap();
    assert_eq!((l, hits.len()), (Some(Lineage::Successor), test.len()));
    let plan = BackfillPlan {
        fraction: 0.5,
        strategy: BackfillStrategy::Random,
        seed: 1,
    };
    let r = ops::backfill(&mut store, &bct_e, &test, plan, &eo, &mut |_, _| {}).unwrap();
    assert_eq!(r.by_new_model, test.len() / 2);
    assert_eq!(
        store.manifest().dim,
        32,
        "the mixed gallery stays in the old space"
    );
    let e = ops::embed_queries(&old_e, &test, 64, 64)
        .unwrap_err()
        .to_string();
    assert!(e.contains("dimension 32") && e.contains("64"), "{e}");
    let ind_info = ModelInfo::from_card(&ind_e.card);
    assert!(ind_info.reaches(32) && !ModelInfo::from_card(&old_e.card).reaches(64));
    let st = ServeState::new(Box::new(store), Some(bct_e), ServeConfig::default(), false);
    assert!(
        st.is_ok(),
        "the server takes the 64-d model over the 32-d gallery"
    );

    // the independent 64-d model, which no training made compatible, serves a gallery of old
    // vectors through a Procrustes adapter fitted on both models' test embeddings: a JSON
    // query of its own 64-d embedding gets the hits of the mapped query; the lineage refuses
    // the adapter for another query model, and a slerp adapter without the gallery's model
    use bcl::adapt::{Adapter, FitConfig, ModelRef, Models, SupportSet};
    let fi = ind_e.embed_dataset(&test, 64);
    let side = |e: &Embedder| ModelRef {
        id: Some(e.card.id.clone()),
        name: Some(e.card.name.clone()),
        dim: e.dim() as usize,
    };
    let models = Models {
        old: side(&old_e),
        new: side(&ind_e),
    };
    let fit = |kind: &str| {
        let support = SupportSet::new(&g, &fi).unwrap();
        let support = match kind {
            "slerp" => support.with_labels(test.labels.clone()).unwrap(),
            _ => support,
        };
        Adapter::fit(kind, &support, &FitConfig::default(), &models, Device::Cpu).unwrap()
    };
    let refusal = |model: &str, kind: &str, gallery: &str| {
        ServeState::with_adapter(
            Box::new(old_gallery(&dir.path().join(gallery), &cfg, &old_e, &test)),
            Embedder::load(&run.join(model), Device::Cpu).unwrap(),
            fit(kind),
            None,
            ServeConfig::default(),
            false,
        )
        .err()
        .unwrap()
        .to_string()
    };
    let e = refusal("new-bct", "procrustes", "g3");
    assert!(e.contains("fitted for the queries of"), "{e}");
    let e = refusal("new-independent", "slerp", "g4");
    assert!(e.contains("serve the gallery's model beside it"), "{e}");
    let procrustes = fit("procrustes");
    let store = old_gallery(&dir.path().join("g2"), &cfg, &old_e, &test);
    let mapped = procrustes.apply(&fi.narrow(0, 0, 1), None).unwrap();
    let mapped: Vec<f32> = Vec::try_from(mapped.view([-1])).unwrap();
    let want: Vec<u64> = store.search_exact(&mapped, 3).unwrap()[0]
        .iter()
        .map(|h| h.id)
        .collect();
    let cfg_s = ServeConfig::default();
    let limits = cfg_s.conn_limits();
    let st =
        ServeState::with_adapter(Box::new(store), ind_e, procrustes, None, cfg_s, false).unwrap();
    let (addr, stop, server) = common::start_server(st, limits);
    let post = |body: String| {
        common::http_request(
            addr,
            "POST",
            "/search",
            Some("application/json"),
            body.as_bytes(),
        )
    };
    let own: Vec<f32> = Vec::try_from(fi.narrow(0, 0, 1).contiguous().view([-1])).unwrap();
    let (code, text) =
        post(serde_json::json!({ "vector": own, "k": 3, "exact": true }).to_string());
    assert_eq!(code, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let got: Vec<u64> = v["results"][0]
        .as_array()
        .unwrap_or_else(|| panic!("{text}"))
        .iter()
        .map(|h| h["id"].as_u64().unwrap())
        .collect();
    assert_eq!(got, want, "{text}");
    let (code, text) = post(serde_json::json!({ "vector": vec![0.1f32; 32] }).to_string());
    assert!(code == 422 && text.contains("query model"), "{code} {text}");
    let (_, stats) = common::http_request(addr, "GET", "/stats", None, b"");
    assert!(
        stats.contains("\"kind\":\"procrustes\"") && stats.contains("through procrustes adapter"),
        "{stats}"
    );
    stop.send(()).unwrap();
    server.join().unwrap().unwrap();
}

/// A gallery in `path` of the test set embedded by the old model `old_e` (in its dimension).
fn old_gallery(
    path: &std::path::Path,
    cfg: &ExperimentConfig,
    old_e: &bcl::model::Embedder,
    test: &bcl::data::Dataset,
) -> bcl::gallery::usearch_store::UsearchStore {
    use bcl::gallery::ops::{self, DataOrigin, EmbedOptions};
    use bcl::gallery::usearch_store::{UsearchConfig, UsearchStore};
    use bcl::gallery::GalleryManifest;
    let manifest = GalleryManifest::new(old_e.dim() as usize);
    let mut store = UsearchStore::create(path, manifest, UsearchConfig::default()).unwrap();
    let origin = DataOrigin {
        data: cfg.base.data.clone(),
        split: bcl::data::Part::Test,
        per_class: None,
    };
    let eo = EmbedOptions::default();
    ops::build(&mut store, old_e, test, &origin, &eo, &mut |_, _| {}).unwrap();
    store
}

#[test]
fn paired_differences_by_hand() {
    use bcl::experiment::paired::{interval, paired, t_975};
    let row = |method: &str, self_map: f64, cross_map: f64| ResultRow {
        method: Method::named(method).unwrap(),
        adapter: None,
        old_old_map: 0.5,
        self_map,
        cross_map,
        self_r1: 0.0,
        cross_r1: 0.0,
        compatible: true,
        gain: None,
    };
    let runs: Vec<(Scenario, u64, Vec<ResultRow>)> = (1..=3u64)
        .map(|s| {
            let k = s as f64;
            (
                Scenario::ExtendedClass,
                s,
                vec![
                    row("bct", 0.70, 0.55),
                    row("ndpp", 0.70 + 0.01 * k, 0.55 + 0.1 + 0.001 * k),
                    row("odpp", 0.70 + 0.05 + 0.001 * k, 0.55),
                ],
            )
        })
        .collect();
    let p = paired(&runs, Method::BCT);
    assert_eq!(p.len(), 2);
    assert_eq!(p[0].method, Method::named("ndpp").unwrap());
    assert_eq!(p[0].seeds, vec![1, 2, 3]);
    // self differences 0.01, 0.02, 0.03: mean 0.02, sd 0.01, half-width 4.303 · 0.01 / √3
    let half = 4.303 * 0.01 / 3f64.sqrt();
    assert!((p[0].self_diff.mean - 0.02).abs() < 1e-12);
    assert!((p[0].self_diff.low - (0.02 - half)).abs() < 1e-9);
    assert!(!p[0].self_diff.excludes_zero(), "within the seed spread");
    // cross differences 0.101, 0.102, 0.103: far from zero
    assert!(p[0].cross_diff.excludes_zero());
    assert_eq!(t_975(2), 4.303);
    assert_eq!(t_975(1000), 1.96);
    assert!(interval(&[0.3]).low.is_nan(), "one value has no interval");
    // Holm over the two rows' self-test differences: odpp's (0.051, 0.052, 0.053; t = 90) has
    // the smaller p-value, so its interval is drawn at level 0.05 / 2, where Student's t with 2
    // degrees of freedom is √(2 · 0.950625 / 0.049375) = 6.2053 (its CDF is
    // 1/2 + t / (2√(2 + t²))); ndpp's, ranked second, at 0.05: the uncorrected interval
    let t = (2.0 * 0.950625 / 0.049375f64).sqrt();
    let odpp = p[1].self_holm.unwrap();
    assert!((odpp.mean - 0.052).abs() < 1e-12);
    assert!(
        (odpp.high - odpp.mean - t * 0.001 / 3f64.sqrt()).abs() < 1e-9,
        "{odpp:?}"
    );
    let ndpp = p[0].self_holm.unwrap();
    assert!((ndpp.low - p[0].self_diff.low).abs() < 1e-3, "{ndpp:?}");
    assert!(!ndpp.excludes_zero() && odpp.excludes_zero());
    // odpp's cross-test differences are all zero: p = 1, within the seed spread either way
    assert!(!p[1].cross_holm.unwrap().excludes_zero());
    let md = bcl::experiment::paired::paired_markdown(&p);
    assert!(md.contains("Holm-adjusted"), "{md}");
    assert!(
        md.contains("within the seed spread") && md.contains("result"),
        "{md}"
    );
}

/// `[adapters]`: every kind fitted after training on the independent model at two support
/// sizes, each a row beside the methods whose cross-test equals the stored adapter applied by
/// hand, whose self-test is the model's own, in the main table, the paired comparisons and the
/// run's matrix; a second call fits nothing.
#[test]
fn adapters_are_rows_beside_the_methods() {
    use bcl::adapt::Adapter;
    use bcl::experiment::adapters::AdaptersConfig;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_experiment(dir.path(), 6, 15, 9);
    cfg.scenarios = vec![Scenario::ExtendedClass];
    cfg.seeds = vec![1, 2];
    cfg.methods = vec![Method::INDEPENDENT, Method::BCT];
    let mut ad = AdaptersConfig {
        support_per_class: vec![5, 30],
        ..AdaptersConfig::default()
    };
    ad.fit.forward.inner_dim = 32;
    ad.fit.forward.epochs = 20;
    ad.fit.forward.batch = 64;
    ad.fit.affine.epochs = 20;
    cfg.adapters = Some(ad);
    cfg.backfill = Some(BackfillConfig {
        fractions: vec![0.0, 0.5, 1.0],
        methods: vec![Method::BCT],
        seed: 0,
    });
    cfg.sequential = Some(SequentialConfig {
        fractions: vec![0.3, 0.6, 1.0],
        methods: vec![Method::INDEPENDENT],
        reference: ChainReference::Previous,
        seeds: Some(vec![1]),
        adapters: vec!["procrustes".into(), "slerp".into()],
        adapter_support_per_class: 20,
        adapter_support_part: bcl::data::Part::Train,
    });
    let out = dir.path().join("exp");
    let report = run_experiment(&cfg, &out, &opts()).unwrap();
    let kinds = ["procrustes", "slerp", "affine", "forward"];
    // 6 classes: 30 and 180 pairs
    let labels: Vec<String> = [30, 180]
        .iter()
        .flat_map(|n| kinds.map(|k| format!("independent+{k}@{n}")))
        .collect();
    for (key, run) in &report.runs {
        let got: Vec<String> = run.adapted.iter().map(|r| r.label()).collect();
        assert_eq!(got, labels, "{key}");
        assert_eq!(run.matrix.models.len(), 3 + 8);
    }
    // by hand on seed 1: the stored adapter applied to the test embeddings
    let run = bcl::experiment::run_dir(&out, Scenario::ExtendedClass, 1);
    let old = bcl::model::Embedder::load(run.old().path(), Device::Cpu).unwrap();
    let new = bcl::model::Embedder::load(run.model("new-independent").path(), Device::Cpu).unwrap();
    let test = bcl::data::open_test(&cfg.run_config(Scenario::ExtendedClass, 1).data).unwrap();
    let (u, v) = (old.embed_dataset(&test, 64), new.embed_dataset(&test, 64));
    let r1 = &report.runs["extended-class/seed-1"];
    let indep = r1
        .rows
        .iter()
        .find(|r| r.method == Method::INDEPENDENT)
        .unwrap();
    for row in &r1.adapted {
        let t = row.adapter.as_ref().unwrap();
        let a = Adapter::load(
            &run.path()
                .join("adapters")
                .join(format!("new-independent-{}-{}", t.kind, t.support)),
        )
        .unwrap();
        let (q, g) = match t.kind.as_str() {
            "slerp" => (a.apply(&v, Some(&u)).unwrap(), u.shallow_clone()),
            "forward" => (v.shallow_clone(), a.apply(&u, None).unwrap()),
            _ => (a.apply(&v, None).unwrap(), u.shallow_clone()),
        };
        let cross = bcl::eval::leave_one_out(&q, &g, &test.labels).unwrap().map;
        assert!(
            (row.cross_map - cross).abs() < 1e-9,
            "{t}: {} vs {cross}",
            row.cross_map
        );
        assert_eq!(row.self_map, indep.self_map);
        assert_eq!(row.old_old_map, indep.old_old_map);
        assert_eq!(row.compatible, cross > row.old_old_map);
        let name = format!("new-independent+{t}");
        assert_eq!(r1.matrix.get(&name, "old").unwrap().map, row.cross_map);
        assert_eq!(r1.matrix.get(&name, &name).unwrap().map, row.self_map);
    }
    // Procrustes was fitted on the first 30 training images of each class, embedded by both
    // models: on them its rotation agrees with the old vectors at least as well as no rotation
    // (the identity is one of the maps it maximises over)
    let support = bcl::data::open_part(
        &cfg.run_config(Scenario::ExtendedClass, 1).data,
        bcl::data::Part::Train,
    )
    .unwrap()
    .take_per_class(30);
    let (su, sv) = (
        old.embed_dataset(&support, 64),
        new.embed_dataset(&support, 64),
    );
    let raw_cos = (&su * &sv).sum(tch::Kind::Float).double_value(&[]) / su.size()[0] as f64;
    let p = Adapter::load(&run.path().join("adapters/new-independent-procrustes-180")).unwrap();
    assert_eq!(p.card.support.pairs, 180);
    assert!(
        p.card.support_cosine >= raw_cos - 1e-6,
        "{} < {raw_cos}",
        p.card.support_cosine
    );
    // the backfill curve of a gallery upgraded through each forward adapter: before any item
    // is re-embedded it is the forward row's cross-test, after all of them the self-test
    for run in &report.backfill {
        let Some(t) = &run.adapter else { continue };
        assert_eq!(t.kind, "forward");
        let row = report.runs[&format!("extended-class/seed-{}", run.seed)]
            .adapted
            .iter()
            .find(|r| r.adapter.as_ref() == Some(t))
            .unwrap();
        assert!(
            (run.curve[0].1 - row.cross_map).abs() < 1e-6,
            "{t}: {:?} vs {}",
            run.curve,
            row.cross_map
        );
        assert!(
            (run.curve[2].1 - row.self_map).abs() < 1e-6,
            "{t}: {:?} vs {}",
            run.curve,
            row.self_map
        );
    }
    assert_eq!(
        report
            .backfill
            .iter()
            .filter(|r| r.adapter.is_some())
            .count(),
        2 * 2
    );
    let md = std::fs::read_to_string(out.join("backfill.md")).unwrap();
    assert!(
        md.contains("independent+forward@180") && md.contains("| bct |"),
        "{md}"
    );
    // a chain of independent models made compatible after training: m2 reaches m0's space
    // through m2 → m1 → m0, the two stored adapters applied by hand (slerp reading each
    // followed model's embedding of the same queries)
    let chains: Vec<String> = report
        .sequential
        .iter()
        .map(|c| {
            format!(
                "{}{}",
                c.method,
                c.adapter
                    .as_deref()
                    .map(|a| format!("+{a}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        chains,
        ["independent", "independent+procrustes", "independent+slerp"]
    );
    let seq = bcl::layout::ExperimentDir::new(&out).sequential(1);
    let test_seq = bcl::data::open_test(&cfg.run_config(Scenario::ExtendedData, 1).data).unwrap();
    let chain: Vec<Tensor> = (0..3)
        .map(|i| {
            let d = if i == 0 {
                seq.first().path().to_path_buf()
            } else {
                seq.step("independent", i).path().to_path_buf()
            };
            bcl::model::Embedder::load(&d, Device::Cpu)
                .unwrap()
                .embed_dataset(&test_seq, 64)
        })
        .collect();
    for (c, kind) in report.sequential[1..].iter().zip(["procrustes", "slerp"]) {
        let a = |i: usize| Adapter::load(&seq.adapter("independent", kind, i)).unwrap();
        let companion = |i: usize| (kind == "slerp").then(|| &chain[i]);
        let to1 = a(2).apply(&chain[2], companion(1)).unwrap();
        let to0 = a(1).apply(&to1, companion(0)).unwrap();
        let m20 = bcl::eval::leave_one_out(&to0, &chain[0], &test_seq.labels)
            .unwrap()
            .map;
        assert!(
            (c.matrix.at(2, 0).map - m20).abs() < 1e-9,
            "{kind}: {} vs {m20}",
            c.matrix.at(2, 0).map
        );
        assert_eq!(
            c.matrix.at(1, 1),
            report.sequential[0].matrix.at(1, 1),
            "own spaces untouched"
        );
        assert!(
            c.matrix.cells[0][1].is_none(),
            "no map from an older model to a newer one"
        );
    }
    let md = std::fs::read_to_string(out.join("sequential.md")).unwrap();
    assert!(md.contains("**independent+slerp**"), "{md}");
    for (bad, why) in [
        (vec!["forward".to_string()], "not a new model's queries"),
        (vec!["rotation".to_string()], "no adapter kind"),
    ] {
        let e = SequentialConfig {
            adapters: bad,
            methods: vec![Method::INDEPENDENT],
            ..SequentialConfig::default()
        }
        .validate(&bcl::data::DataConfig::default())
        .unwrap_err();
        assert!(e.contains(why), "{e}");
    }
    let e = SequentialConfig {
        adapters: vec!["procrustes".into()],
        methods: vec![Method::BCT],
        ..SequentialConfig::default()
    }
    .validate(&bcl::data::DataConfig::default())
    .unwrap_err();
    assert!(e.contains("add independent"), "{e}");

    // the main table and the paired comparisons carry them
    assert_eq!(report.table.len(), 2 + 8);
    assert!(report.table.iter().all(|r| r.seeds == 2));
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("independent+forward@180"), "{md}");
    let p = report
        .paired
        .iter()
        .find(|p| p.label() == "independent+affine@30" && p.reference == Method::INDEPENDENT)
        .unwrap();
    assert_eq!(
        p.self_diffs,
        vec![0.0, 0.0],
        "an adapter leaves the self-test"
    );
    assert!(report
        .paired
        .iter()
        .any(|p| p.label() == "independent+affine@30" && p.reference == Method::BCT));
    // resumed: nothing refitted
    let card = run
        .path()
        .join("adapters/new-independent-affine-30/adapter.json");
    let before = std::fs::metadata(&card).unwrap().modified().unwrap();
    let again = run_experiment(&cfg, &out, &opts()).unwrap();
    assert_eq!(again.table, report.table);
    assert_eq!(
        std::fs::metadata(&card).unwrap().modified().unwrap(),
        before
    );

    // the frontier (first seed): each kind a family over its support sizes
    assert_eq!(
        report
            .frontier
            .iter()
            .filter(|p| p.adapter.is_some())
            .count(),
        8
    );
    assert!(report
        .best_compatible
        .iter()
        .any(|r| r.method == Method::INDEPENDENT && r.adapter.as_deref() == Some("forward")));
    assert!(std::fs::read_to_string(out.join("frontier.md"))
        .unwrap()
        .contains("independent+slerp"));

    // a chain adapter is refitted when its support set changes (here 20 → 10 images per
    // class: 120 → 60 pairs), not reused because its models are the same
    let card = |i: usize| {
        Adapter::load(&seq.adapter("independent", "procrustes", i))
            .unwrap()
            .card
    };
    assert_eq!(card(2).support.pairs, 120);
    let mut fewer = cfg.clone();
    fewer.sequential.as_mut().unwrap().adapter_support_per_class = 10;
    run_experiment(&fewer, &out, &opts()).unwrap();
    assert_eq!((card(1).support.pairs, card(2).support.pairs), (60, 60));

    // two sizes that give the same support set (each class has 60 training images) are
    // refused: their rows would be one
    let mut dup = cfg.clone();
    dup.adapters.as_mut().unwrap().support_per_class = vec![60, 100];
    let e = run_experiment(&dup, &out, &opts()).unwrap_err().to_string();
    assert!(
        e.contains("same 360 pairs") && e.contains("more than 60"),
        "{e}"
    );

    // bad sections are refused with the reason
    let path = dir.path().join("bad.toml");
    for (section, why) in [
        ("kinds = [\"rotation\"]", "no adapter kind 'rotation'"),
        ("methods = [\"ndpp\"]", "not among the experiment's methods"),
        ("support_per_class = [0]", "at least 1"),
    ] {
        std::fs::write(
            &path,
            format!("methods = [\"independent\", \"bct\"]\n[adapters]\n{section}\n"),
        )
        .unwrap();
        let e = ExperimentConfig::from_toml_file(&path)
            .unwrap_err()
            .to_string();
        assert!(e.contains(why), "{section}: {e}");
    }
}

/// `[adapters] part = "validation"`: the support set is the first N held-out validation images
/// of each class (the card's fingerprint is theirs, not the training images'), sizes past the
/// part's images per class are refused as duplicates; the test part, and a validation part the
/// data does not hold out, are refused in a configuration file and in `[sequential]`.
#[test]
fn adapters_fit_on_the_validation_part_when_asked() {
    use bcl::adapt::{Adapter, SupportSet};
    use bcl::data::Part;
    use bcl::experiment::adapters::AdaptersConfig;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_experiment(dir.path(), 6, 15, 4);
    cfg.base.data.validation_per_class = Some(10);
    cfg.scenarios = vec![Scenario::ExtendedClass];
    cfg.seeds = vec![1];
    cfg.methods = vec![Method::INDEPENDENT];
    cfg.adapters = Some(AdaptersConfig {
        kinds: vec!["procrustes".into()],
        support_per_class: vec![4, 10],
        part: Part::Validation,
        ..AdaptersConfig::default()
    });
    let out = dir.path().join("exp");
    let report = run_experiment(&cfg, &out, &opts()).unwrap();
    let labels: Vec<String> = report.runs["extended-class/seed-1"]
        .adapted
        .iter()
        .map(|r| r.label())
        .collect();
    assert_eq!(
        labels,
        ["independent+procrustes@24", "independent+procrustes@60"]
    );
    let run = bcl::experiment::run_dir(&out, Scenario::ExtendedClass, 1);
    let old = bcl::model::Embedder::load(run.old().path(), Device::Cpu).unwrap();
    let new = bcl::model::Embedder::load(run.model("new-independent").path(), Device::Cpu).unwrap();
    let rc = cfg.run_config(Scenario::ExtendedClass, 1);
    let a = Adapter::load(&run.path().join("adapters/new-independent-procrustes-60")).unwrap();
    let support = |part| {
        let d = bcl::data::open_part(&rc.data, part)
            .unwrap()
            .take_per_class(10);
        SupportSet::embedded(&old, &new, &d, 64, "by hand")
            .unwrap()
            .info()
    };
    assert_eq!(
        a.card.support.fingerprint,
        support(Part::Validation).fingerprint
    );
    assert_ne!(a.card.support.fingerprint, support(Part::Train).fingerprint);
    assert!(
        a.card.support.source.contains("validation images"),
        "{}",
        a.card.support.source
    );

    // 10 and 20 per class: the part holds 10 per class, so both give 60 pairs
    let mut same = cfg.clone();
    same.adapters.as_mut().unwrap().support_per_class = vec![10, 20];
    let e = run_experiment(&same, &dir.path().join("same"), &opts())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("same 60 pairs") && e.contains("10 validation images"),
        "{e}"
    );

    // refused where the configuration is read
    let data = cfg.base.data.dir.display().to_string();
    for (held_out, part, why) in [
        (
            "validation_per_class = 10",
            "test",
            "never fitted on the test part",
        ),
        ("", "validation", "needs [data] validation_per_class"),
    ] {
        let toml = format!(
            "methods = [\"independent\"]\n[base.data]\ndir = {data:?}\nclasses = 6\n{held_out}\n\
             [adapters]\nkinds = [\"procrustes\"]\npart = \"{part}\"\n"
        );
        let path = dir.path().join(format!("{part}.toml"));
        std::fs::write(&path, toml).unwrap();
        let e = ExperimentConfig::from_toml_file(&path)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(why) && e.contains("[adapters] part") && e.contains(&format!("{part}.toml")),
            "{e}"
        );
    }
    for (part, why) in [
        (Part::Test, "never fitted on the test part"),
        (Part::Validation, "needs [data] validation_per_class"),
    ] {
        let e = SequentialConfig {
            adapters: vec!["procrustes".into()],
            methods: vec![Method::INDEPENDENT],
            adapter_support_part: part,
            ..SequentialConfig::default()
        }
        .validate(&bcl::data::DataConfig::default())
        .unwrap_err();
        assert!(e.contains(why) && e.contains("adapter_support_part"), "{e}");
    }
}

/// The selection-then-report protocol end to end on generated data: grids run on the selection
/// seeds and are read on validation data, an edge choice is extended or explained, the chosen
/// settings are retrained on report seeds the choice never saw, and the report compares them
/// with the reference's chosen setting; a second call trains nothing. Overlapping seeds are
/// refused. (On these tiny models few or no settings meet the criterion; the extension itself
/// is tested by `selection`'s unit test of `extension`.)
#[test]
fn settings_are_chosen_on_validation_and_reported_on_fresh_seeds() {
    use bcl::experiment::selection::SelectionConfig;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_experiment(dir.path(), 4, 10, 5);
    cfg.base.data.train_per_class = Some(45);
    cfg.base.data.validation_per_class = Some(15);
    cfg.base.compat.refresh.bank_per_class = 10;
    // a weak old model (one epoch on its 30%) and longer-trained new models, to give the
    // settings a chance to meet the criterion
    cfg.base.old.epochs = 1;
    cfg.base.new.epochs = 15;
    cfg.scenarios = vec![Scenario::ExtendedData];
    cfg.seeds = vec![1, 2];
    cfg.methods = vec![Method::BCT];
    cfg.selection = Some(SelectionConfig {
        seeds: vec![11],
        report_seeds: None,
        reference: Method::BCT,
        grids: vec![
            Sweep {
                method: Method::BCT,
                knob: Knob::LAMBDA,
                values: vec![8.0],
            },
            Sweep {
                method: Method::NDPP,
                knob: Knob::named("ndpp-eps").unwrap(),
                values: vec![0.1],
            },
        ],
        max_extensions: 1,
        reference_until_incompatible: true,
        margin: 0.01,
    });
    let path = dir.path().join("exp.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    let cfg = ExperimentConfig::from_toml_file(&path).unwrap();
    let out = dir.path().join("out");
    let r = run_experiment(&cfg, &out, &opts()).unwrap();
    let sel = r.selection.expect("the protocol ran");
    assert_eq!(sel.grids.len(), 2);
    for g in &sel.grids {
        // the base value joined each grid; every setting was read on the selection seed only
        assert!(g.settings.len() >= 2, "{g:?}");
        for s in &g.settings {
            assert_eq!(s.validation.keys().copied().collect::<Vec<_>>(), vec![11]);
        }
        // the choice is validation's best compatible setting
        let best = bcl::experiment::selection::choose_best_compatible(&g.settings)
            .map(|i| g.settings[i].value);
        assert_eq!(g.chosen, best);
        // a choice on the grid's edge was extended once (or the edge is explained)
        if let Some(v) = g.chosen {
            let on_edge = v == g.settings[0].value || v == g.settings.last().unwrap().value;
            assert!(!on_edge || !g.notes.is_empty(), "{g:?}");
        }
    }
    // the report: each method's chosen setting on the report seeds 1 and 2, not the selection seed
    for row in sel.report.iter().filter(|r| r.setting.is_some()) {
        assert_eq!(row.test.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        if row.method != Method::BCT {
            assert_eq!(row.self_diffs.len(), 2);
            assert!(!row.p.0.is_nan() || row.self_diffs.iter().all(|d| *d == row.self_diffs[0]));
        }
    }
    let md = std::fs::read_to_string(out.join("selection.md")).unwrap();
    assert!(
        md.contains("best compatible") && md.contains("matched cross-test"),
        "{md}"
    );
    assert!(md.contains("oracle"), "{md}");
    let seed_dir = out.join("extended-data").join("seed-11");
    assert!(std::fs::read_dir(&seed_dir).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("select-ndpp")));
    // resumable: the second call finds every model
    let t0 = std::time::Instant::now();
    let again = run_experiment(&cfg, &out, &opts()).unwrap();
    // (compared as JSON: undefined intervals are NaN, which equals nothing)
    assert_eq!(
        serde_json::to_string(&again.selection.unwrap()).unwrap(),
        serde_json::to_string(&sel).unwrap()
    );
    assert!(t0.elapsed().as_secs_f64() < 60.0);
    // a selection seed that is also a report seed is refused
    let mut bad = cfg.clone();
    bad.selection.as_mut().unwrap().seeds = vec![2];
    std::fs::write(&path, toml::to_string(&bad).unwrap()).unwrap();
    let e = ExperimentConfig::from_toml_file(&path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("both a selection and a report seed"), "{e}");
    // and so is a protocol without validation data
    let mut bad = cfg.clone();
    bad.base.data.validation_per_class = None;
    std::fs::write(&path, toml::to_string(&bad).unwrap()).unwrap();
    let e = ExperimentConfig::from_toml_file(&path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("validation_per_class"), "{e}");
}

fn opts() -> StepOptions {
    StepOptions {
        resume: true,
        device: Device::Cpu,
        progress: false,
        probe_test: false,
        stop_after: None,
        dist: Default::default(),
    }
}

/// The plan an experiment announces, counted by hand: main runs (an old model and one per
/// method), the sweeps on their seed, the selection grids (each with the default setting added
/// where the grid lacks it, and an old model per selection seed), one chosen setting per grid
/// on each report seed, and the sequential chains (a first model, then each method's links).
#[test]
fn the_plan_counts_every_stage_by_hand() {
    use bcl::experiment::selection::SelectionConfig;
    let cfg = ExperimentConfig {
        scenarios: vec![Scenario::ExtendedClass],
        seeds: vec![1, 2],
        methods: vec![Method::INDEPENDENT, Method::BCT],
        sweeps: vec![Sweep {
            method: Method::BCT,
            knob: Knob::LAMBDA,
            values: vec![4.0],
        }],
        selection: Some(SelectionConfig {
            seeds: vec![11, 12],
            report_seeds: Some(vec![1, 2, 3]),
            reference: Method::BCT,
            grids: vec![
                Sweep {
                    method: Method::BCT,
                    knob: Knob::LAMBDA,
                    values: vec![0.5, 2.0],
                },
                Sweep {
                    method: Method::NDPP,
                    knob: Knob::named("ndpp-eps").unwrap(),
                    values: vec![0.123],
                },
            ],
            ..SelectionConfig::default()
        }),
        sequential: Some(SequentialConfig {
            fractions: vec![0.3, 0.6, 1.0],
            methods: vec![Method::BCT],
            seeds: Some(vec![1]),
            ..SequentialConfig::default()
        }),
        ..ExperimentConfig::default()
    };
    let p = cfg.plan();
    // main: 2 seeds × (old + 2 methods); sweeps: one value on the first seed only
    assert_eq!((p.runs, p.main, p.sweeps), (2, 6, 1));
    // selection: 2 seeds × (old + bct {0.5, 1 (default), 2} + ndpp {0.123, its default})
    assert_eq!(p.selection, 2 * (1 + 3 + 2));
    // report: 3 seeds × 2 grids, and seed 3's old model (seeds 1 and 2 share the main runs')
    assert_eq!(p.report, 3 * 2 + 1);
    // sequential: seed 1's first model and bct's two links
    assert_eq!(p.sequential, 3);
    assert_eq!(p.total(), 6 + 1 + 12 + 7 + 3);
    let text = p.to_string();
    assert!(
        text.starts_with("29 models: 6 in 2 main runs, 1 sweeps"),
        "{text}"
    );
}
