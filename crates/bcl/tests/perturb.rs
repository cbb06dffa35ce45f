//! Prototype perturbation: NDPP's closed form and ODPP's projected optimisation, checked by
//! properties (bounds, geometry, monotone objective) and against BCT (Δ = 0).

use bcl::model::l2_normalize;
use bcl::perturb::{
    nearest_angles, pseudo_old, ClassBanks, Ndpp, NdppConfig, NdppWeights, Odpp, OdppConfig,
};
use proptest::prelude::*;
use tch::{Device, Kind, Tensor};

mod common;

/// libtorch's generator is global and the tests of this file run on parallel threads: every
/// draw from it holds this lock, so that a test's data do not depend on the other tests.
static TCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    TCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

fn protos(c: i64, d: i64, seed: i64) -> Tensor {
    let _g = rng_lock();
    protos_locked(c, d, seed)
}

/// [`protos`] for a caller that holds the lock.
fn protos_locked(c: i64, d: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    l2_normalize(&Tensor::randn([c, d], (Kind::Float, Device::Cpu)))
}

fn row_norms(t: &Tensor) -> Vec<f64> {
    Vec::<f32>::try_from(t.norm_scalaropt_dim(2, [1i64].as_slice(), false))
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// With Δ = 0 the perturbation layer is its base loss: NDPP with ε = 0 and ODPP with ε = 0
/// (its Adam steps and projection running: the projection onto ‖δ‖ ≤ 0), trained through the
/// real refresh path (a refresh every 3 steps from the first epoch: feature passes, new
/// prototypes, Δ written into the loss), end with BCT's weights (ndpp, odpp) and LCE's
/// (lce-ndpp, lce-odpp). The converse: with ε > 0 the same runs move Δ and end elsewhere.
#[test]
fn zero_perturbation_trains_exactly_as_the_base_loss_and_a_nonzero_one_does_not() {
    use bcl::loss::Method;
    use bcl::run;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::tiny_idx_config(&dir.path().join("data"), 5, 2);
    cfg.compat.refresh.every_steps = Some(3);
    cfg.compat.refresh.start_epoch = 0;
    cfg.compat.refresh.bank_per_class = 10;
    let set_eps = |cfg: &mut bcl::run::RunConfig, eps: f64| {
        cfg.compat
            .update::<NdppConfig>("ndpp", |n| n.eps = eps)
            .unwrap();
        cfg.compat
            .update::<OdppConfig>("odpp", |o| {
                o.eps = eps;
                o.steps = 5;
                o.old_bank_per_class = 10;
            })
            .unwrap();
    };
    set_eps(&mut cfg, 0.0);
    let opts = common::cpu_opts(false, None);
    let old = dir.path().join("old");
    run::train_old(&cfg, &old, &opts).unwrap();
    let train = |cfg: &bcl::run::RunConfig, m: Method, tag: &str| {
        let out = dir.path().join(format!("{m}-{tag}"));
        if !out.join("model.safetensors").is_file() {
            run::train_new(cfg, &old, m, &out, &opts).unwrap();
        }
        let w: std::collections::BTreeMap<String, Tensor> =
            Tensor::read_safetensors(out.join("model.safetensors"))
                .unwrap()
                .into_iter()
                .collect();
        let log = std::fs::read_to_string(out.join("refreshes.json")).unwrap_or_default();
        (w, log)
    };
    let largest_difference =
        |a: &std::collections::BTreeMap<String, Tensor>,
         b: &std::collections::BTreeMap<String, Tensor>| {
            assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
            a.iter()
                .map(|(n, t)| (t - &b[n]).abs().max().double_value(&[]))
                .fold(0.0, f64::max)
        };
    let mean_deltas = |log: &str| -> Vec<f64> {
        let v: serde_json::Value = serde_json::from_str(log).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r["mean_delta"].as_f64().unwrap())
            .collect()
    };
    let lce = Method::named("lce").unwrap();
    let pairs = [
        (Method::BCT, Method::NDPP),
        (Method::BCT, Method::ODPP),
        (lce, Method::named("lce-ndpp").unwrap()),
        (lce, Method::named("lce-odpp").unwrap()),
    ];
    for (base, m) in pairs {
        let (b, _) = train(&cfg, base, "zero");
        let (w, log) = train(&cfg, m, "zero");
        let deltas = mean_deltas(&log);
        assert!(deltas.len() >= 3, "{m}: the refresh path ran: {log}");
        assert!(deltas.iter().all(|&d| d == 0.0), "{m}: Δ = 0: {deltas:?}");
        let diff = largest_difference(&w, &b);
        assert!(diff <= 1e-6, "{m}: differs from {base}'s weights by {diff}");
    }
    let mut moved = cfg.clone();
    set_eps(&mut moved, 0.3);
    for (base, m) in pairs {
        let (b, _) = train(&cfg, base, "zero");
        let (w, log) = train(&moved, m, "moved");
        let deltas = mean_deltas(&log);
        assert!(
            deltas.iter().any(|&d| d > 1e-3),
            "{m}: ε = 0.3 moves the prototypes: {deltas:?}"
        );
        let diff = largest_difference(&w, &b);
        assert!(
            diff > 1e-4,
            "{m}: with ε > 0 it must train elsewhere than {base} ({diff})"
        );
    }
}

/// A refresh whose perturbation is not finite is refused with an error, and the loss keeps
/// training against the last finite table rather than silently against the unmoved one.
#[test]
fn a_non_finite_perturbation_is_refused() {
    use bcl::loss::{CompatInputs, CompatLoss, LossError, Perturbed, RefreshConfig};
    use bcl::perturb::{Perturbation, RefreshInputs};
    struct Broken;
    impl Perturbation for Broken {
        fn refresh(&mut self, r: &RefreshInputs) -> (Tensor, Option<(f64, f64)>) {
            let d = r.old.zeros_like();
            let _ = d.get(1).fill_(f64::NAN);
            (d, None)
        }
    }
    let old = protos(4, 3, 9);
    let mut p = Perturbed::bct(
        1.0,
        16.0,
        old.shallow_clone(),
        RefreshConfig::default(),
        Box::new(Broken),
    );
    let f = protos(4, 3, 10);
    let y = Tensor::from_slice(&[0i64, 1, 2, 3]);
    let before = p
        .loss(&CompatInputs::new(&f, &y))
        .unwrap()
        .unwrap()
        .double_value(&[]);
    match p.refresh(&f, &y, 0, 3) {
        Err(
            e @ LossError::NonFinite {
                rows: 1,
                classes: 4,
            },
        ) => {
            assert!(e.to_string().contains("NaN or infinite"), "{e}")
        }
        other => panic!("expected the refresh to be refused, got {other:?}"),
    }
    let after = p
        .loss(&CompatInputs::new(&f, &y))
        .unwrap()
        .unwrap()
        .double_value(&[]);
    assert_eq!(before, after, "the table is unchanged");
    assert!(p.delta.isfinite().all().int64_value(&[]) == 1);
}

#[test]
fn ndpp_moves_a_crowded_cluster_apart() {
    // three prototypes close together (a confusable cluster) and three far apart
    let v = |a: f64, b: f64, c: f64| [a, b, c, 0.0, 0.0, 0.0];
    let raw: Vec<f64> = [v(1.0, 0.1, 0.0), v(1.0, -0.05, 0.1), v(1.0, 0.0, -0.1)]
        .concat()
        .into_iter()
        .chain([
            0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
            1.0,
        ])
        .collect();
    let old = l2_normalize(&Tensor::from_slice(&raw).to_kind(Kind::Float).view([6, 6]));
    let ndpp = Ndpp {
        cfg: NdppConfig {
            k: 2,
            eps: 0.1,
            ..Default::default()
        },
    };
    let delta = ndpp.delta(&old, &old);
    let pseudo = pseudo_old(&old, &delta);
    let before = old.matmul(&old.tr());
    let after = pseudo.matmul(&old.tr());
    // each cluster member is less similar to the other two than before
    for k in 0..3 {
        for j in 0..3 {
            if j != k {
                assert!(
                    after.double_value(&[k, j]) < before.double_value(&[k, j]),
                    "{k} vs {j}"
                );
            }
        }
    }
}

#[test]
fn an_isolated_prototype_barely_moves_with_confusion_weights() {
    // classes 0 and 1 nearly coincide; class 2 is orthogonal to both (no close neighbour)
    let raw = [1.0, 0.05, 0.0, 1.0, -0.05, 0.0, 0.0, 0.0, 1.0];
    let old = l2_normalize(&Tensor::from_slice(&raw).to_kind(Kind::Float).view([3, 3]));
    let eps = 0.3;
    let conf = Ndpp {
        cfg: NdppConfig {
            k: 2,
            eps,
            weights: NdppWeights::Confusion,
            ..Default::default()
        },
    };
    let n = row_norms(&conf.delta(&old, &old));
    assert!(n[2] < 0.01 * eps, "isolated prototype moved {}", n[2]);
    assert!(
        n[0] > 0.3 * eps && n[1] > 0.3 * eps,
        "the confused pair should move: {n:?}"
    );
    // METHOD.md's plain neighbour softmax normalises the weights away: the isolated one moves too
    let plain = Ndpp {
        cfg: NdppConfig {
            k: 2,
            eps,
            ..Default::default()
        },
    };
    let n = row_norms(&plain.delta(&old, &old));
    assert!(n[2] > 0.5 * eps, "{n:?}");
}

#[test]
fn odpp_objective_decreases_and_projection_holds() {
    let (c, d) = (10i64, 16i64);
    let g = rng_lock();
    let old = protos_locked(c, d, 3);
    tch::manual_seed(4);
    let labels = Tensor::arange(c, (Kind::Int64, Device::Cpu)).repeat([20]);
    // new features: noisy copies of a *different* geometry (so Δ has something to do)
    let target = protos_locked(c, d, 5);
    let new_bank = l2_normalize(
        &(target.index_select(0, &labels)
            + Tensor::randn([c * 20, d], (Kind::Float, Device::Cpu)) * 0.3),
    );
    let old_bank = l2_normalize(
        &(old.index_select(0, &labels)
            + Tensor::randn([c * 20, d], (Kind::Float, Device::Cpu)) * 0.3),
    );
    drop(g);
    let cfg = OdppConfig {
        steps: 40,
        lr: 0.02,
        eps: 0.25,
        mu: 0.5,
        gamma: 0.01,
        ..Default::default()
    };
    let mut odpp = Odpp::new(cfg, old_bank, labels.shallow_clone(), c, d);
    let trace = odpp.optimise(&old, &new_bank, &labels);
    assert_eq!(trace.len(), 41);
    assert!(
        trace.last().unwrap() < &(trace[0] - 1e-3),
        "J did not fall: {trace:?}"
    );
    // mostly monotone (Adam with a small step): no step raises J by more than a hair
    for w in trace.windows(2) {
        assert!(w[1] <= w[0] + 1e-3, "J rose: {trace:?}");
    }
    for n in row_norms(odpp.current()) {
        assert!(n <= 0.25 + 1e-5, "projection violated: {n}");
    }
    // warm start: a second refresh starts where the first ended
    let again = odpp.optimise(&old, &new_bank, &labels);
    assert!((again[0] - trace.last().unwrap()).abs() < 1e-6);
}

#[test]
fn odpp_defaults_descend_at_realistic_width() {
    // d = 128 and 256 (the default model's width and the overhead benchmark's): every step of
    // the default projected Adam lowers J; η = 0.01 did not (J rose on 8 of 20 steps at d = 256)
    for d in [128, 256] {
        let t = {
            let _g = rng_lock();
            bcl::run::bench::odpp::bench_odpp(10, d, 8, &OdppConfig::default(), Device::Cpu, false)
        };
        assert!(t.j.1 < t.j.0 - 0.1, "d = {d}: {t:?}");
        assert_eq!(t.j_rises, 0, "d = {d}: {t:?}");
    }
    let fast = OdppConfig {
        lr: 0.01,
        steps: 20,
        ..Default::default()
    };
    let t = {
        let _g = rng_lock();
        bcl::run::bench::odpp::bench_odpp(10, 256, 2, &fast, Device::Cpu, false)
    };
    assert!(
        t.j_rises > 0,
        "the old default was expected to overshoot: {t:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn ndpp_respects_its_bound(c in 3i64..20, d in 2i64..24, seed in 0i64..10_000, eps in 0.01f64..1.0, k in 1usize..6,
                               alpha in 0.0f64..1.0, tau in 0.02f64..1.0, confusion in any::<bool>()) {
        let old = protos(c, d, seed);
        let new = protos(c, d, seed + 1);
        let weights = if confusion { NdppWeights::Confusion } else { NdppWeights::Neighbours };
        let delta = Ndpp { cfg: NdppConfig { k, eps, alpha, tau, beta: None, weights } }.delta(&old, &new);
        for n in row_norms(&delta) {
            prop_assert!(n <= eps + 1e-5, "‖δ‖ = {n} > ε = {eps}");
        }
        // δ_k is tangent at p°_k
        let along = (&delta * &old).sum_dim_intlist([1i64].as_slice(), false, Kind::Float).abs().max().double_value(&[]);
        prop_assert!(along < 1e-5);
    }

    #[test]
    fn ndpp_cap_keeps_each_pseudo_prototype_nearest_its_own(c in 3i64..20, d in 2i64..24, seed in 0i64..10_000,
                                                             beta in 0.05f64..0.49, k in 1usize..6) {
        let old = protos(c, d, seed);
        let new = protos(c, d, seed + 7);
        let delta = Ndpp { cfg: NdppConfig { k, eps: 5.0, beta: Some(beta), ..Default::default() } }.delta(&old, &new);
        let caps = Vec::<f32>::try_from(nearest_angles(&old) * beta).unwrap();
        for (n, cap) in row_norms(&delta).into_iter().zip(caps) {
            prop_assert!(n <= cap as f64 + 1e-5, "‖δ‖ = {n} above the cap {cap}");
        }
        let own = pseudo_old(&old, &delta).matmul(&old.tr()).argmax(1, false);
        prop_assert!(own.equal(&Tensor::arange(c, (Kind::Int64, Device::Cpu))), "a pseudo-old prototype crossed a bisector");
    }

    #[test]
    fn ndpp_with_one_neighbour_lowers_the_similarity_to_it(c in 3i64..20, d in 3i64..24, seed in 0i64..10_000,
                                                            eps in 0.01f64..0.5) {
        let old = protos(c, d, seed);
        // α = 1: the neighbour is the nearest old prototype
        let delta = Ndpp { cfg: NdppConfig { k: 1, eps, alpha: 1.0, ..Default::default() } }.delta(&old, &old);
        let sims = old.matmul(&old.tr()) - Tensor::eye(c, (Kind::Float, Device::Cpu)) * 10.0;
        let nn = sims.argmax(1, false);
        let after = pseudo_old(&old, &delta).matmul(&old.tr());
        for kk in 0..c {
            let j = nn.int64_value(&[kk]);
            let b = sims.double_value(&[kk, j]);
            if b > -0.9 {
                prop_assert!(after.double_value(&[kk, j]) < b, "class {kk}: {} !< {b}", after.double_value(&[kk, j]));
            }
        }
    }
}

#[test]
fn blocked_prototype_geometry_matches_the_full_matrix_across_blocks() {
    // 5,000 classes: more than one block of 4,096 rows, so block boundaries are crossed
    let p = protos(5_000, 8, 77);
    let full = p.matmul(&p.tr()).masked_fill(
        &Tensor::eye(5_000, (Kind::Bool, Device::Cpu)),
        f64::NEG_INFINITY,
    );
    let want = full.max_dim(1, false).0.clamp(-1.0, 1.0).acos();
    let got = nearest_angles(&p);
    assert!(got.allclose(&want, 1e-6, 1e-6, false));
    // NDPP's neighbours come from the same blocked top-k: its Δ stays finite and within ε
    let cfg = NdppConfig::default();
    let eps = cfg.eps;
    let d = Ndpp { cfg }.delta(&p, &p);
    let norms = row_norms(&d);
    assert!(norms.iter().all(|n| n.is_finite() && *n <= eps + 1e-6));
}

/// BCT as published: the old classifier's rows are the old prototypes of the classes it covers
/// (extended-class: 3 of 5), the other classes keep their old-feature class means; a bct run
/// trains with them.
#[test]
fn old_classifier_rows_as_prototypes() {
    use bcl::loss::{Method, OldPrototypes};
    use bcl::run;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::tiny_idx_config(&dir.path().join("data"), 5, 1);
    cfg.split.scenario = bcl::data::Scenario::ExtendedClass;
    cfg.split.fraction = 0.6;
    let opts = common::cpu_opts(false, None);
    let old_dir = dir.path().join("old");
    run::train_old(&cfg, &old_dir, &opts).unwrap();
    let old = bcl::model::Embedder::load(&old_dir, Device::Cpu).unwrap();
    assert_eq!(old.card.classes.len(), 3);
    let means = protos(5, 16, 7);
    let p = run::old_classifier_prototypes(&old, &means).unwrap();
    let w: Tensor = Tensor::read_safetensors(old_dir.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == "classifier.weight")
        .unwrap()
        .1;
    let w = l2_normalize(&w);
    for k in 0..5i64 {
        let want = match old.card.classes.iter().position(|&c| c == k) {
            Some(i) => w.get(i as i64),
            None => means.get(k),
        };
        let diff = (p.get(k) - want).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "class {k}: {diff}");
    }
    cfg.compat.prototypes = OldPrototypes::OldClassifier;
    let o = run::train_new(&cfg, &old_dir, Method::BCT, &dir.path().join("bct"), &opts).unwrap();
    assert!(o.history[0].loss_comp.is_finite());
    let saved = std::fs::read_to_string(dir.path().join("bct/config.toml")).unwrap();
    assert!(saved.contains("prototypes = \"old-classifier\""), "{saved}");
}

/// Banks of `per` noisy features per class around `p` (and its noisier twin for the old bank).
fn odpp_banks(p: &Tensor, per: i64, seed: i64) -> (Tensor, Tensor, Tensor) {
    let _g = rng_lock();
    tch::manual_seed(seed);
    let (c, d) = (p.size()[0], p.size()[1]);
    let labels = Tensor::arange(c, (Kind::Int64, Device::Cpu)).repeat([per]);
    let noisy = |s: f64| {
        l2_normalize(
            &(p.index_select(0, &labels)
                + Tensor::randn([c * per, d], (Kind::Float, Device::Cpu)) * s),
        )
    };
    (noisy(0.4), noisy(0.3), labels)
}

#[test]
fn odpp_restricted_to_every_class_is_the_full_objective() {
    // candidates = C - 1: every class is in every softmax, so J, its gradient and the refresh
    // are the full objective's (to float tolerance; the hand-written gradient is checked
    // against autograd through the whole objective)
    let (c, d) = (40, 16);
    let old = protos(c, d, 11);
    let (new_bank, old_bank, labels) = odpp_banks(&old, 3, 12);
    // uneven classes: the new bank lacks one sample of each of the last 5 classes
    let n = new_bank.size()[0] - 5;
    let (new_bank, new_labels) = (new_bank.narrow(0, 0, n), labels.narrow(0, 0, n));
    let cfg = OdppConfig {
        steps: 15,
        lr: 0.01,
        mu: 0.7,
        gamma: 0.05,
        ..Default::default()
    };
    let mut full = Odpp::new(
        cfg.clone(),
        old_bank.shallow_clone(),
        labels.shallow_clone(),
        c,
        d,
    );
    let restricted_cfg = OdppConfig {
        candidates: (c - 1) as usize,
        ..cfg
    };
    let mut restricted = Odpp::new(
        restricted_cfg,
        old_bank.shallow_clone(),
        labels.shallow_clone(),
        c,
        d,
    );
    // one point off zero: J and ∂J/∂Δ
    let delta = {
        let _g = rng_lock();
        tch::manual_seed(13);
        Tensor::randn([c, d], (Kind::Float, Device::Cpu)) * 0.05
    };
    let cand = Odpp::candidate_table(&pseudo_old(&old, &delta), (c - 1) as usize);
    let d1 = delta.detach().set_requires_grad(true);
    let j_full = full.objective(&old, &d1, &new_bank, &new_labels);
    j_full.backward();
    let d2 = delta.detach().set_requires_grad(true);
    let banks = ClassBanks::new(
        [(&new_bank, &new_labels, 1.0), (&old_bank, &labels, 0.7)],
        c,
    );
    let j_restricted = restricted.restricted_objective(&old, &d2, &banks, &cand, true);
    assert!(
        (j_full.double_value(&[]) - j_restricted).abs() < 1e-5,
        "{j_full:?} vs {j_restricted}"
    );
    let gap = (d1.grad() - d2.grad()).abs().max().double_value(&[]);
    let scale = d1.grad().abs().max().double_value(&[]);
    assert!(
        gap < 1e-4 * scale,
        "gradients differ by {gap} (largest {scale})"
    );
    // the refreshes agree
    let (a, b) = (
        full.optimise(&old, &new_bank, &new_labels),
        restricted.optimise(&old, &new_bank, &new_labels),
    );
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-4, "J traces {a:?} vs {b:?}");
    }
    let gap = (full.current() - restricted.current())
        .abs()
        .max()
        .double_value(&[]);
    assert!(gap < 1e-4, "Δ differ by {gap}");
}

#[test]
fn odpp_candidates_are_the_own_class_then_the_nearest() {
    let p = protos(300, 8, 21);
    let k = 5;
    let cand = Odpp::candidate_table(&p, k);
    assert_eq!(cand.size(), vec![300, 6]);
    let sims = p.matmul(&p.tr());
    for row in [0i64, 17, 299] {
        let got: Vec<i64> = Vec::try_from(&cand.get(row)).unwrap();
        assert_eq!(got[0], row);
        // brute force: the k most similar others
        let mut order: Vec<(f64, i64)> = (0..300)
            .filter(|&j| j != row)
            .map(|j| (sims.double_value(&[row, j]), j))
            .collect();
        order.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
        let want: Vec<i64> = order[..k].iter().map(|x| x.1).collect();
        assert_eq!(&got[1..], want.as_slice(), "row {row}");
    }
}
