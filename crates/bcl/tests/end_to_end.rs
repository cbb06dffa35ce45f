//! A short end-to-end run on a generated data set (IDX files written by the test): the old
//! model, then independent and bct new models. The bct model must be compatible with the old
//! gallery while the independent one is not; the saved old model must reproduce the figure of
//! the in-memory one; interrupted training must resume to the same weights.

use std::path::Path;

use bcl::data::{synthetic, write_idx_dir};
use bcl::eval::leave_one_out;
use bcl::loss::Method;
use bcl::model::Embedder;
use bcl::perturb::OdppConfig;
use bcl::run::{self, RunConfig, StepOptions};
use bcl::train::{train, TrainConfig, TrainError, TrainJob};
use tch::Device;

fn config(data: &Path) -> RunConfig {
    let mut cfg = RunConfig::default();
    cfg.data.dir = data.to_path_buf();
    cfg.model.width = 8;
    cfg.model.dim = 32;
    for t in [&mut cfg.old, &mut cfg.new] {
        t.batch_size = 32;
        t.lr = 0.05;
    }
    cfg.old.epochs = 6;
    cfg.new.epochs = 3;
    cfg.methods = vec![Method::INDEPENDENT, Method::BCT];
    cfg
}

fn opts() -> StepOptions {
    StepOptions {
        resume: false,
        device: Device::Cpu,
        progress: false,
        probe_test: true,
        stop_after: None,
        dist: Default::default(),
    }
}

#[test]
fn bct_is_compatible_and_independent_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (train_set, test_set) = synthetic(10, 300, 40, 11);
    write_idx_dir(&data, &train_set, &test_set).unwrap();
    let cfg = config(&data);
    let out = dir.path().join("run");

    // old model; its in-memory test embeddings come back for the reproduction check
    let old = run::train_old(&cfg, &out.join("old"), &opts()).unwrap();
    let mem = old.probe_features.expect("probe features");
    let mem_map = leave_one_out(&mem, &mem, &test_set.labels).unwrap().map;

    let ind = run::train_new(
        &cfg,
        &out.join("old"),
        Method::INDEPENDENT,
        &out.join("new-independent"),
        &opts(),
    )
    .unwrap();
    let bct = run::train_new(
        &cfg,
        &out.join("old"),
        Method::BCT,
        &out.join("new-bct"),
        &opts(),
    )
    .unwrap();
    assert_eq!(
        bct.card.compatible_with.as_deref(),
        Some(old.card.id.as_str())
    );
    assert_eq!(ind.card.compatible_with, None);
    // several hundred steps in all: 6*29 + 2*3*94 = 738
    let steps: usize = [&old.history, &ind.history, &bct.history]
        .iter()
        .map(|h| h.len())
        .sum();
    assert_eq!(steps, 12);

    let models: Vec<Embedder> = ["old", "new-independent", "new-bct"]
        .iter()
        .map(|d| Embedder::load(&out.join(d), Device::Cpu).unwrap())
        .collect();
    let report = bcl::eval::models::evaluate_models(&models, &test_set, 256).unwrap();
    let m = &report.matrix;
    let old_old = m.get("old", "old").unwrap().map;
    let ind_cross = m.get("new-independent", "old").unwrap().map;
    let bct_cross = m.get("new-bct", "old").unwrap().map;
    let bct_self = m.get("new-bct", "new-bct").unwrap().map;
    eprintln!("old->old {old_old:.3}, independent cross {ind_cross:.3}, bct cross {bct_cross:.3}, bct self {bct_self:.3}");

    // the saved old model reproduces the in-memory model's figure
    assert!(
        (old_old - mem_map).abs() < 1e-6,
        "saved {old_old} vs in-memory {mem_map}"
    );
    assert!(old_old > 0.5, "the old model learned nothing: {old_old}");
    // bct's cross-test is far above the independent model's, which has no reason to be compatible
    assert!(
        bct_cross > ind_cross + 0.3,
        "bct cross {bct_cross} vs independent cross {ind_cross}"
    );
    assert!(
        ind_cross < 0.4,
        "an independent model should not be compatible: {ind_cross}"
    );
    let row = report
        .rows
        .iter()
        .find(|r| r.method == Method::BCT)
        .unwrap();
    assert!((row.cross_map - bct_cross).abs() < 1e-12);
    assert!(row.gain.is_some());

    // the report files exist and parse
    bcl::report::write_eval_report(
        &bcl::layout::RunDir::new(&out),
        &report,
        &[("old".into(), old.history.clone())],
    )
    .unwrap();
    for f in [
        "results.md",
        "results.csv",
        "matrix.csv",
        "metrics.json",
        "compat_matrix.svg",
        "training_curves.svg",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let back: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(back["rows"].as_array().unwrap().len(), 2);

    // a tampered weights file is refused
    let w = out.join("new-bct/model.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x55;
    std::fs::write(&w, bytes).unwrap();
    let e = Embedder::load(&out.join("new-bct"), Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not match the card"), "{e}");
}

fn small_job<'a>(
    data: &'a bcl::data::Dataset,
    out: &Path,
    resume: bool,
    stop_after: Option<usize>,
) -> TrainJob<'a> {
    TrainJob {
        name: "old".into(),
        role: bcl::model::Role::Old,
        data: bcl::data::source::TrainData::Memory(data),
        classes: (0..data.classes as i64).collect(),
        model: bcl::model::ModelConfig {
            width: 4,
            dim: 16,
            ..Default::default()
        },
        train: TrainConfig {
            epochs: 3,
            batch_size: 32,
            lr: 0.05,
            seed: 5,
            ..Default::default()
        },
        method: Method::INDEPENDENT,
        compat: Method::INDEPENDENT
            .build(&Default::default(), Default::default())
            .unwrap(),
        old: None,
        split_fingerprint: "test".into(),
        out_dir: out.to_path_buf(),
        resume,
        device: Device::Cpu,
        note: String::new(),
        progress: false,
        stop_after,
        probe: None,
        dist: &bcl::dist::Single,
    }
}

#[test]
fn interrupted_training_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synthetic(5, 40, 1, 3);
    let full = train(small_job(&data, &dir.path().join("full"), false, None)).unwrap();

    let part = dir.path().join("part");
    let e = train(small_job(&data, &part, false, Some(1)))
        .err()
        .unwrap();
    assert!(
        matches!(e, TrainError::Interrupted { epochs_done: 1, .. }),
        "{e}"
    );
    assert!(
        !part.join("model.json").exists(),
        "no model before the run finished"
    );
    // without --resume an existing run is refused, not overwritten
    let e = train(small_job(&data, &part, false, None)).err().unwrap();
    assert!(matches!(e, TrainError::Exists(_)), "{e}");
    // resume one more epoch, then to the end
    assert!(train(small_job(&data, &part, true, Some(1))).is_err());
    let resumed = train(small_job(&data, &part, true, None)).unwrap();
    assert_eq!(resumed.history.len(), 3);
    // same seed, same data, same steps: identical weights (CPU is deterministic here)
    assert_eq!(
        full.card.id, resumed.card.id,
        "resumed run differs from the uninterrupted one"
    );
    for (a, b) in full.history.iter().zip(&resumed.history) {
        assert_eq!(a.loss_total, b.loss_total);
    }
    // a finished run resumed again returns the same model without training
    let again = train(small_job(&data, &part, true, None)).unwrap();
    assert_eq!(again.card.id, full.card.id);
    // a changed configuration is refused on resume
    let mut job = small_job(&data, &dir.path().join("part2"), false, Some(1));
    let _ = train(job);
    job = small_job(&data, &dir.path().join("part2"), true, None);
    job.train.lr = 0.01;
    assert!(matches!(
        train(job).err().unwrap(),
        TrainError::ConfigChanged { .. }
    ));
}

#[test]
fn perturbation_methods_train_refresh_and_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (train_set, test_set) = synthetic(6, 60, 10, 21);
    write_idx_dir(&data, &train_set, &test_set).unwrap();
    let mut cfg = config(&data);
    cfg.data.classes = 6;
    cfg.old.epochs = 2;
    cfg.new.epochs = 3;
    cfg.compat.refresh.bank_per_class = 20;
    cfg.compat
        .update::<OdppConfig>("odpp", |o| {
            o.steps = 10;
            o.old_bank_per_class = 20;
        })
        .unwrap();
    let out = dir.path().join("run");
    let mut o = opts();
    o.probe_test = false;
    let old = run::train_old(&cfg, &out.join("old"), &o).unwrap();
    let old_id = old.card.id.clone();

    for m in [Method::NDPP, Method::ODPP] {
        let full = run::train_new(
            &cfg,
            &out.join("old"),
            m,
            &out.join(format!("{m}-full")),
            &o,
        )
        .unwrap();
        // refreshes at the start of epochs 1 and 2 (epoch 0 is plain BCT)
        assert_eq!(full.refreshes.len(), 2, "{m}");
        assert_eq!(full.refreshes[0].epoch, 1);
        for r in &full.refreshes {
            assert!(
                r.mean_delta > 0.0 && r.max_delta <= 0.3 + 1e-5,
                "{m}: {r:?}"
            );
            assert!((0.0..=1.0).contains(&r.own_nearest_share));
            if m == Method::ODPP {
                assert!(
                    r.j_after.unwrap() < r.j_before.unwrap(),
                    "J did not fall: {r:?}"
                );
            } else {
                assert!(r.j_before.is_none());
            }
        }
        assert!(out.join(format!("{m}-full/refreshes.json")).is_file());
        // the loss falls
        assert!(
            full.history[2].loss_cls < full.history[0].loss_cls,
            "{m}: {:?}",
            full.history
        );

        // interrupt after 2 epochs (one refresh done), resume: identical model, identical refreshes
        let part = out.join(format!("{m}-part"));
        let mut o2 = o.clone();
        o2.stop_after = Some(2);
        let e = run::train_new(&cfg, &out.join("old"), m, &part, &o2).unwrap_err();
        assert!(e.to_string().contains("stopped after 2 epochs"), "{e}");
        o2.stop_after = None;
        o2.resume = true;
        let again = run::train_new(&cfg, &out.join("old"), m, &part, &o2).unwrap();
        assert_eq!(
            again.card.id, full.card.id,
            "{m}: same seed, different model"
        );
        let strip = |r: &[bcl::perturb::RefreshStats]| {
            r.iter()
                .map(|s| bcl::perturb::RefreshStats {
                    seconds: 0.0,
                    ..s.clone()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&again.refreshes), strip(&full.refreshes));
    }
    // the frozen old model was not touched by any new model's training
    let reloaded = Embedder::load(&out.join("old"), Device::Cpu).unwrap();
    assert_eq!(reloaded.card.id, old_id);
    let (x, _) = test_set.batch(&[0, 1, 2], reloaded.card.normalization, None, Device::Cpu);
    assert!(
        !reloaded.embed_batch(&x).requires_grad(),
        "old embeddings must carry no gradient"
    );
}
