//! The baseline zoo (lce, unibct, ract, advbct): each loss against numbers computed by hand,
//! and each trained on a tiny generated data set, where its compatibility loss must fall (for
//! AdvBCT, a minimax game whose value need not fall, the model must be more compatible than an
//! unconstrained one instead).

use bcl::data::{synthetic, write_idx_dir};
use bcl::loss::{
    dann_coefficient, gradient_reversal, old_class_radii, old_class_radii_quantile, Advbct,
    AdvbctConfig, Lce, LceAlignment, LceConfig, Ract, RactConfig, UnibctConfig, UnibctRefine,
};
use bcl::loss::{CompatInputs, CompatLoss, Method};
use bcl::model::Embedder;
use bcl::perturb::{OdppConfig, Perturbation, RefreshInputs};
use bcl::run::{self, RunConfig, StepOptions};
use tch::{nn, Device, Kind, Tensor};

fn t(v: &[f64], shape: &[i64]) -> Tensor {
    Tensor::from_slice(v).to_kind(Kind::Float).view(shape)
}

fn close(a: f64, b: f64, tol: f64) {
    assert!((a - b).abs() < tol, "{a} vs {b}");
}

/// Old centres e1, e2; an old bank whose worst sample of each class sits at cosine distance 0.2.
fn centres_and_bank() -> (Tensor, Tensor, Tensor) {
    let p = t(&[1.0, 0.0, 0.0, 1.0], &[2, 2]);
    let bank = t(&[1.0, 0.0, 0.8, 0.6, 0.0, 1.0, 0.6, 0.8], &[4, 2]);
    let labels = Tensor::from_slice(&[0i64, 0, 1, 1]);
    (p, bank, labels)
}

#[test]
fn old_radii_are_the_worst_sample_distance() {
    let (p, bank, labels) = centres_and_bank();
    let r = old_class_radii(&p, &bank, &labels);
    close(r.double_value(&[0]), 0.2, 1e-6);
    close(r.double_value(&[1]), 0.2, 1e-6);
}

#[test]
fn old_radii_at_a_quantile_take_the_nearest_rank() {
    // class 0: distances 0, 0.2, 0.4 and 0.6 (cosines 1, 0.8, 0.6, 0.4); class 1 has none
    let p = t(&[1.0, 0.0, 0.0, 1.0], &[2, 2]);
    let s = |c: f64| (1.0 - c * c).sqrt();
    let bank = t(&[1.0, 0.0, 0.8, s(0.8), 0.6, s(0.6), 0.4, s(0.4)], &[4, 2]);
    let labels = Tensor::from_slice(&[0i64, 0, 0, 0]);
    for (q, want) in [
        (1.0, 0.6),
        (0.75, 0.4),
        (0.5, 0.2),
        (0.3, 0.2),
        (0.25, 0.0),
        (0.01, 0.0),
    ] {
        let r = old_class_radii_quantile(&p, &bank, &labels, q);
        close(r.double_value(&[0]), want, 1e-6);
        close(r.double_value(&[1]), 0.0, 1e-12);
    }
}

/// LCE in the official code's normalisation (IrvingMeng/LCE, `main.py`):
/// `100 · F.mse_loss(F.normalize(W), centres) + 1 · mean(clamp(old_cos[y] − ⟨f, c_y⟩, 0))`,
/// where `mse_loss` averages over all `C·d` elements; and the earlier cosine form as a setting.
#[test]
fn lce_by_hand_in_the_official_normalisation_and_its_gradient_reaches_the_classifier() {
    let (p, bank, labels) = centres_and_bank();
    let lce = Lce::new(1.0, LceConfig::default(), p.shallow_clone(), &bank, &labels);
    assert_eq!(
        (lce.cfg.align_weight, lce.cfg.boundary_weight),
        (100.0, 1.0)
    );
    // classifier rows (2, 0) and (1, 1): normalised e1 and (1, 1)/√2
    let w = t(&[2.0, 0.0, 1.0, 1.0], &[2, 2]).set_requires_grad(true);
    // f0 = (0.6, 0.8) of class 0: cosine 0.6 to e1, below its old cosine 0.8; f1 = e2: inside
    let f = t(&[0.6, 0.8, 0.0, 1.0], &[2, 2]).set_requires_grad(true);
    let y = Tensor::from_slice(&[0i64, 1]);
    let inputs = CompatInputs {
        classifier: Some(&w),
        ..CompatInputs::new(&f, &y)
    };
    let l = lce.loss(&inputs).expect("the loss has its inputs").unwrap();
    // F.mse_loss over the 4 elements: row 0 matches e1; row 1 is (r, r) - (0, 1), r = 1/√2
    let r = 0.5f64.sqrt();
    let mse = (0.0 + 0.0 + r * r + (r - 1.0) * (r - 1.0)) / 4.0;
    // old_cos: the worst old sample of each class has cosine 0.8 to its centre
    let bound = ((0.8f64 - 0.6).max(0.0) + (0.8f64 - 1.0).max(0.0)) / 2.0;
    close(l.double_value(&[]), 100.0 * mse + bound, 1e-5);
    // which is (2/d)·mean_k(1 − cos_k) for unit rows: the weight is 100·2/d on the cosine form
    close(mse, (2.0 / 2.0) * ((1.0 - 1.0) + (1.0 - r)) / 2.0, 1e-12);
    l.backward();
    assert!(w.grad().defined(), "the classifier must be aligned");
    // d/d f0 of 0.5·(0.8 − ⟨f0, e1⟩) = (−0.5, 0); f1 is inside its boundary: no gradient
    close(f.grad().double_value(&[0, 0]), -0.5, 1e-6);
    close(f.grad().double_value(&[1, 1]), 0.0, 1e-9);
    assert!(
        !p.grad().defined(),
        "the old centres must receive no gradient"
    );
    // the earlier form, kept as a setting: mean_k (1 − cos_k) with its own weight
    let cosine = Lce::new(
        1.0,
        LceConfig {
            alignment: LceAlignment::Cosine,
            align_weight: 1.0,
            ..LceConfig::default()
        },
        p.shallow_clone(),
        &bank,
        &labels,
    );
    let l = cosine.loss(&inputs).unwrap().unwrap();
    close(l.double_value(&[]), (1.0 - r) / 2.0 + bound, 1e-6);
}

#[test]
fn unibct_refinement_by_hand() {
    let old = Tensor::eye(3, (Kind::Float, Device::Cpu));
    // new prototypes: classes 0 and 1 close (cos 0.8), class 2 alone
    let new = t(&[1.0, 0.0, 0.0, 0.8, 0.6, 0.0, 0.0, 0.0, 1.0], &[3, 3]);
    let r = UnibctRefine {
        cfg: UnibctConfig { k: 1, alpha: 0.5 },
    };
    // A = [[0,1,0],[1,0,0],[0,0,0]]; 0.5·(I − 0.5A)^{-1} = [[2/3,1/3,0],[1/3,2/3,0],[0,0,0.5]]
    let p = r.refine(&old, &new);
    let s5 = 5f64.sqrt();
    let expected = t(
        &[
            2.0 / s5,
            1.0 / s5,
            0.0,
            1.0 / s5,
            2.0 / s5,
            0.0,
            0.0,
            0.0,
            1.0,
        ],
        &[3, 3],
    );
    assert!(
        p.allclose(&expected, 1e-5, 1e-6, false),
        "{p:?} vs {expected:?}"
    );
    // α = 0 is bct: the old prototypes unchanged
    let r0 = UnibctRefine {
        cfg: UnibctConfig { k: 1, alpha: 0.0 },
    };
    assert!(r0.refine(&old, &new).equal(&old));
    // as a perturbation: normalize(P° + Δ) gives the refined table
    let mut r = r;
    let bank = new.shallow_clone();
    let labels = Tensor::from_slice(&[0i64, 1, 2]);
    let (delta, _) = r.refresh(&RefreshInputs {
        old: &old,
        new: &new,
        new_bank: &bank,
        new_bank_labels: &labels,
    });
    let pseudo = bcl::perturb::pseudo_old(&old, &delta);
    assert!(pseudo.allclose(&expected, 1e-5, 1e-6, false));
}

#[test]
fn ract_by_hand_excludes_same_class_negatives() {
    let f = t(&[1.0, 0.0, 0.0, 1.0, 1.0, 0.0], &[3, 2]);
    let g = t(&[0.6, 0.8, 0.8, 0.6, 0.6, 0.8], &[3, 2]);
    let y = Tensor::from_slice(&[0i64, 1, 0]);
    let ract = Ract {
        lambda: 1.0,
        cfg: RactConfig { temperature: 1.0 },
    };
    assert!(ract.needs_old_embeddings());
    let l = ract
        .loss(&CompatInputs {
            old: Some(&g),
            ..CompatInputs::new(&f, &y)
        })
        .expect("the loss has its inputs")
        .unwrap();
    // samples 0 and 2: positive 0.6; negatives of class 1 only: g1 (0.8), f1 (0)
    let l0 = -0.6 + (0.6f64.exp() + 0.8f64.exp() + 1.0).ln();
    // sample 1: positive 0.6; negatives g0, g2 (0.8 each), f0, f2 (0 each)
    let l1 = -0.6 + (0.6f64.exp() + 2.0 * 0.8f64.exp() + 2.0).ln();
    close(l.double_value(&[]), (2.0 * l0 + l1) / 3.0, 1e-5);
    assert_eq!(RactConfig::default().temperature, 0.01);
}

#[test]
fn gradient_reversal_and_dann_schedule() {
    let x = t(&[0.5, -1.0], &[2]).set_requires_grad(true);
    let y = gradient_reversal(&x, 0.3);
    assert!(
        y.allclose(&x, 1e-7, 1e-7, false),
        "the value must pass unchanged"
    );
    y.sum(Kind::Float).backward();
    close(x.grad().double_value(&[0]), -0.3, 1e-6);
    close(x.grad().double_value(&[1]), -0.3, 1e-6);
    close(dann_coefficient(0.0, 10.0), 0.0, 1e-12);
    close(
        dann_coefficient(0.5, 10.0),
        2.0 / (1.0 + (-5f64).exp()) - 1.0,
        1e-12,
    );
    assert!(dann_coefficient(1.0, 10.0) > 0.9999);
}

#[test]
fn advbct_by_hand_with_a_silent_discriminator() {
    let (p, bank, labels) = centres_and_bank();
    let mut adv = Advbct::new(1.0, AdvbctConfig::default(), p, &bank, &labels);
    let vs = nn::VarStore::new(Device::Cpu);
    adv.init_params(&(vs.root() / "compat"));
    // a discriminator with zero weights says 0 (p = ½) to everything: BCE = ln 2 on both sides
    tch::no_grad(|| {
        for (name, mut v) in vs.variables() {
            if name.contains("disc") {
                let _ = v.zero_();
            }
        }
    });
    assert_eq!(
        vs.variables().len(),
        5,
        "two linear layers and the radii live in the store"
    );
    let f = t(&[0.6, 0.8, 0.0, 1.0], &[2, 2]).set_requires_grad(true);
    let g = t(&[1.0, 0.0, 0.0, 1.0], &[2, 2]);
    let y = Tensor::from_slice(&[0i64, 1]);
    let l = adv
        .loss(&CompatInputs {
            old: Some(&g),
            progress: 0.5,
            ..CompatInputs::new(&f, &y)
        })
        .expect("the loss has its inputs")
        .unwrap();
    // adversarial ln 2, hinge (0.4 − 0.2)/2, elastic 0 at the initial radii
    close(l.double_value(&[]), 2f64.ln() + 0.1, 1e-6);
    l.backward();
    // the radius of class 0 is pushed out by the violating sample: ∂/∂r0 = −1/2
    let r = adv.radii().unwrap();
    close(r.grad().double_value(&[0]), -0.5, 1e-6);
}

fn tiny_config(data: &std::path::Path) -> RunConfig {
    let mut cfg = RunConfig::default();
    cfg.data.dir = data.to_path_buf();
    cfg.data.classes = 6;
    cfg.model.width = 8;
    cfg.model.dim = 32;
    for t in [&mut cfg.old, &mut cfg.new] {
        t.batch_size = 32;
        t.lr = 0.05;
    }
    cfg.old.epochs = 6;
    cfg.new.epochs = 3;
    cfg.compat.refresh.bank_per_class = 20;
    cfg.compat
        .update::<OdppConfig>("odpp", |o| o.old_bank_per_class = 30)
        .unwrap();
    cfg
}

/// AdvBCT's known defect (issue 13): on this tiny run its model searches the old gallery no
/// better than an unconstrained one (cross-test 0.18 against 0.26 on 2026-11-30; BCT 0.39).
/// Neither the elastic price's scaling, nor a tighter boundary (`radius_quantile` 0.5 or 0.1),
/// nor a boundary weight of 4 or 16, nor dropping the adversarial term lifted it above 0.265
/// (docs/results.md). Run with `cargo test --release -p bcl --test zoo -- --ignored` to check a
/// fix.
#[test]
#[ignore = "AdvBCT does not yet make the new model compatible on the tiny run (issue 13)"]
fn advbct_is_more_compatible_than_an_unconstrained_model() {
    train_the_zoo(true);
}

#[test]
fn every_zoo_loss_falls_on_a_tiny_run() {
    train_the_zoo(false);
}

/// Trains every zoo method on a tiny generated set and checks what each must do.
fn train_the_zoo(check_advbct_compatibility: bool) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (train_set, test_set) = synthetic(6, 200, 10, 5);
    write_idx_dir(&data, &train_set, &test_set).unwrap();
    let cfg = tiny_config(&data);
    let opts = StepOptions {
        resume: false,
        device: Device::Cpu,
        progress: false,
        probe_test: false,
        stop_after: None,
        dist: Default::default(),
    };
    let old_dir = dir.path().join("old");
    run::train_old(&cfg, &old_dir, &opts).unwrap();
    let indep = dir.path().join("new-independent");
    run::train_new(&cfg, &old_dir, Method::INDEPENDENT, &indep, &opts).unwrap();
    for m in [Method::LCE, Method::UNIBCT, Method::RACT, Method::ADVBCT] {
        let out = dir.path().join(format!("new-{m}"));
        let o = run::train_new(&cfg, &old_dir, m, &out, &opts).unwrap();
        eprintln!(
            "{m}: {:?}",
            o.history.iter().map(|h| h.loss_comp).collect::<Vec<_>>()
        );
        let first = o.history.first().unwrap().loss_comp;
        let last = o.history.last().unwrap().loss_comp;
        assert!(first.is_finite() && last.is_finite(), "{m}: {first} {last}");
        if m == Method::ADVBCT {
            // The adversarial term is a game (the DANN coefficient ramps up the reversed
            // gradient over training), so its value need not fall; what it must achieve is
            // checked by `advbct_is_more_compatible_than_an_unconstrained_model`.
            let models: Vec<Embedder> = [&old_dir, &indep, &out]
                .iter()
                .map(|d| Embedder::load(d, Device::Cpu).unwrap())
                .collect();
            let r = bcl::eval::models::evaluate_models(&models, &test_set, 256).unwrap();
            let cross = |name: &str| {
                r.rows
                    .iter()
                    .find(|row| row.method.as_str() == name)
                    .unwrap()
                    .cross_map
            };
            eprintln!(
                "advbct cross-test {:.4}, independent {:.4}",
                cross("advbct"),
                cross("independent")
            );
            if check_advbct_compatibility {
                assert!(
                    cross("advbct") > cross("independent") + 0.1,
                    "advbct cross-test {} vs independent {}",
                    cross("advbct"),
                    cross("independent")
                );
            }
        } else {
            assert!(last < first, "{m}: compatibility loss {first} -> {last}");
        }
        assert_eq!(o.card.method, m.as_str());
        // the model file holds the model only (AdvBCT's discriminator stays in the checkpoint)
        let names: Vec<String> = Tensor::read_safetensors(out.join("model.safetensors"))
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert!(
            names.iter().all(|n| !n.starts_with("compat.")),
            "{m}: {names:?}"
        );
        if m == Method::ADVBCT {
            let ck = Tensor::read_safetensors(out.join("checkpoint/weights.safetensors")).unwrap();
            assert!(ck.iter().any(|(n, _)| n == "compat.radii"));
        }
    }
}
