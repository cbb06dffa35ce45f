//! Adapters: each kind recovers a map it can represent, SLERP's ends are the old query and the
//! rotated new one, saved adapters load to the same map, and bad inputs are refused with
//! errors that say what is wrong.

use bcl::adapt::{slerp, AdaptError, Adapter, FitConfig, ModelRef, Models, SupportSet};
use tch::{Device, Kind, Tensor};

/// Rows of unit length.
fn unit(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2.0, [1], true)
}

/// `n` random unit vectors in `d` dimensions.
fn vectors(n: i64, d: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    unit(&Tensor::randn([n, d], (Kind::Float, Device::Cpu)))
}

/// A random `d × d` orthogonal matrix.
fn orthogonal(d: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    let a = Tensor::randn([d, d], (Kind::Double, Device::Cpu));
    let (q, _) = Tensor::linalg_qr(&a, "reduced");
    q.to_kind(Kind::Float)
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn models(old_dim: usize, new_dim: usize) -> Models {
    Models {
        old: ModelRef {
            id: Some("0ld0ld0ld0ld0ld0".into()),
            name: Some("old".into()),
            dim: old_dim,
        },
        new: ModelRef {
            id: Some("new0new0new0new0".into()),
            name: Some("new-independent".into()),
            dim: new_dim,
        },
    }
}

fn fit(kind: &str, support: &SupportSet, cfg: &FitConfig) -> Adapter {
    let m = models(support.old_dim(), support.new_dim());
    Adapter::fit(kind, support, cfg, &m, Device::Cpu).unwrap()
}

#[test]
fn procrustes_recovers_a_rotation() {
    let old = vectors(500, 16, 1);
    let q = orthogonal(16, 2);
    let new = old.matmul(&q); // new = old Q, so new Qᵀ = old
    let support = SupportSet::new(&old, &new).unwrap();
    let a = fit("procrustes", &support, &FitConfig::default());
    let r = a.params().get("rotation").unwrap();
    assert!(
        max_abs(r, &q.tr()) < 1e-5,
        "R differs from Qᵀ by {}",
        max_abs(r, &q.tr())
    );
    let mapped = a.apply(&new, None).unwrap();
    assert!(max_abs(&mapped, &old) < 1e-5);
    assert!((a.card.support_cosine - 1.0).abs() < 1e-5);
}

#[test]
fn procrustes_zero_pads_a_narrower_old_space() {
    // d_new = 64 > d_old = 32: new = [old, 0] Q; only R's first 32 columns are determined
    let old = vectors(800, 32, 3);
    let q = orthogonal(64, 4);
    let new = old.constant_pad_nd([0, 32]).matmul(&q);
    let support = SupportSet::new(&old, &new).unwrap();
    let a = fit("procrustes", &support, &FitConfig::default());
    let r = a.params().get("rotation").unwrap();
    assert_eq!(r.size(), [64, 64]);
    let want = q.tr().narrow(1, 0, 32);
    assert!(max_abs(&r.narrow(1, 0, 32), &want) < 1e-5);
    let eye = Tensor::eye(64, (Kind::Float, Device::Cpu));
    assert!(
        max_abs(&r.tr().matmul(r), &eye) < 1e-5,
        "R is not orthogonal"
    );
    let mapped = a.apply(&new, None).unwrap();
    assert_eq!(mapped.size(), [800, 32]);
    assert!(max_abs(&mapped, &old) < 1e-5);
    assert_eq!((a.card.from.dim, a.card.to.dim), (64, 32));
}

#[test]
fn procrustes_maps_into_a_wider_old_space() {
    // d_new = 32 < d_old = 64: old = [new, 0] Q, so R is Q's first 32 rows
    let new = vectors(800, 32, 5);
    let q = orthogonal(64, 6);
    let old = new.constant_pad_nd([0, 32]).matmul(&q);
    let support = SupportSet::new(&old, &new).unwrap();
    let a = fit("procrustes", &support, &FitConfig::default());
    let r = a.params().get("rotation").unwrap();
    assert_eq!(r.size(), [32, 64]);
    assert!(max_abs(r, &q.narrow(0, 0, 32)) < 1e-5);
    assert!(max_abs(&a.apply(&new, None).unwrap(), &old) < 1e-5);
}

#[test]
fn slerp_ends_are_the_old_query_and_the_rotated_new_one() {
    let old = vectors(300, 16, 7);
    let new = vectors(300, 24, 8); // unrelated spaces: the two ends differ
    let support = SupportSet::new(&old, &new).unwrap();
    let rotated = fit("procrustes", &support, &FitConfig::default())
        .apply(&new, None)
        .unwrap();
    for (alpha, want) in [(0.0, &old), (1.0, &rotated)] {
        let mut cfg = FitConfig::default();
        cfg.slerp.alpha = Some(alpha);
        let a = fit("slerp", &support, &cfg);
        let q = a.apply(&new, Some(&old)).unwrap();
        assert!(
            max_abs(&q, want) < 1e-5,
            "alpha {alpha}: off by {}",
            max_abs(&q, want)
        );
    }
    // α = 0 is the old query bit for bit, so its cross-test is old→old exactly (neither above
    // nor below it on rounding: the strict criterion says "not compatible")
    let mut at0 = FitConfig::default();
    at0.slerp.alpha = Some(0.0);
    let q = fit("slerp", &support, &at0)
        .apply(&new, Some(&old))
        .unwrap();
    assert!(q.equal(&old), "off by {}", max_abs(&q, &old));
    let labels: Vec<i64> = (0..300).map(|i| i % 10).collect();
    let map = |q: &Tensor| bcl::eval::leave_one_out(q, &old, &labels).unwrap().map;
    assert_eq!(map(&q), map(&old));
    // halfway lies on the great circle: equal angles to both ends
    let mid = slerp(&old, &rotated, 0.5);
    let cos =
        |a: &Tensor, b: &Tensor| (a * b).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    assert!(max_abs(&cos(&mid, &old), &cos(&mid, &rotated)) < 1e-5);
}

#[test]
fn slerp_chooses_alpha_by_leave_one_out_recall_by_hand() {
    // four items, two classes, in 2-D; new = old rotated by 90°, so Procrustes undoes it and
    // every α scores the old model's leave-one-out Recall@1, computed here by hand: item 0
    // (1, 0) has nearest other item 1 (0.8, 0.6), same class: hit; item 1 → item 0: hit;
    // item 2 (−1, 0) → item 3 (−0.8, −0.6): hit; item 3 → item 2: hit. Recall 1 at every α,
    // and the smallest α wins the tie.
    let old = Tensor::from_slice(&[1.0f32, 0.0, 0.8, 0.6, -1.0, 0.0, -0.8, -0.6]).view([4, 2]);
    let rot = Tensor::from_slice(&[0.0f32, 1.0, -1.0, 0.0]).view([2, 2]);
    let new = old.matmul(&rot);
    let support = SupportSet::new(&old, &new)
        .unwrap()
        .with_labels(vec![0, 0, 1, 1])
        .unwrap();
    let a = fit("slerp", &support, &FitConfig::default());
    assert_eq!(a.card.settings["alpha"], 0.0);
    let scores = a.card.fit["recall_at_1"].as_array().unwrap();
    assert_eq!(scores.len(), 11);
    assert!(scores.iter().all(|s| s["recall"] == 1.0));

    // relabel so that the old model's nearest neighbours miss, and the new model is given
    // vectors that put each item beside its own class: α = 1 must win
    let old = Tensor::from_slice(&[1.0f32, 0.0, 0.8, 0.6, -1.0, 0.0, -0.8, -0.6]).view([4, 2]);
    let labels = vec![0, 1, 1, 0];
    let new = Tensor::from_slice(&[1.0f32, 0.0, -1.0, 0.1, -1.0, 0.0, 1.0, 0.1]).view([4, 2]);
    let support = SupportSet::new(&old, &new)
        .unwrap()
        .with_labels(labels)
        .unwrap();
    let a = fit("slerp", &support, &FitConfig::default());
    let scores = a.card.fit["recall_at_1"].as_array().unwrap();
    assert_eq!(
        scores[0]["recall"], 0.0,
        "old→old misses every item by construction"
    );
    let best = scores
        .iter()
        .map(|s| s["recall"].as_f64().unwrap())
        .fold(0.0, f64::max);
    let chosen = a.card.settings["alpha"].as_f64().unwrap();
    let first_best = scores
        .iter()
        .find(|s| s["recall"].as_f64().unwrap() == best)
        .unwrap()["alpha"]
        .as_f64()
        .unwrap();
    assert!(best > 0.0);
    assert_eq!(chosen, first_best, "the smallest α with the best recall");
}

/// `criterion = "map"`: the card's per-α support figures are the leave-one-out Recall@1 and
/// mAP of the interpolated support queries against the old support vectors, computed here
/// through fixed-α adapters; α is the best mAP (the smallest on ties), and the default still
/// chooses by Recall@1 over the same figures.
#[test]
fn slerp_chooses_alpha_by_support_map_when_asked() {
    use bcl::adapt::SlerpCriterion;
    let old = vectors(300, 16, 11);
    let new =
        (&old.constant_pad_nd([0, 8]) + vectors(300, 24, 12) * 0.8).matmul(&orthogonal(24, 13));
    let labels: Vec<i64> = (0..300).map(|i| i % 10).collect();
    let support = SupportSet::new(&old, &new)
        .unwrap()
        .with_labels(labels.clone())
        .unwrap();
    let mut by_map = FitConfig::default();
    by_map.slerp.criterion = SlerpCriterion::Map;
    let m = fit("slerp", &support, &by_map);
    let r = fit("slerp", &support, &FitConfig::default());
    assert_eq!(
        m.card.fit["criterion"],
        "support mAP, leave-one-out, old-model gallery"
    );
    let figures = m.card.fit["recall_at_1"].as_array().unwrap();
    assert_eq!(figures, r.card.fit["recall_at_1"].as_array().unwrap());
    let mut by_hand = Vec::new();
    for f in figures {
        let alpha = f["alpha"].as_f64().unwrap();
        let mut fixed = FitConfig::default();
        fixed.slerp.alpha = Some(alpha);
        let q = fit("slerp", &support, &fixed)
            .apply(&new, Some(&old))
            .unwrap();
        let e = bcl::eval::leave_one_out(&q, &old, &labels).unwrap();
        assert!(
            (f["map"].as_f64().unwrap() - e.map).abs() < 1e-9,
            "alpha {alpha}"
        );
        assert!(
            (f["recall"].as_f64().unwrap() - e.recall_at[&1]).abs() < 1e-9,
            "alpha {alpha}"
        );
        by_hand.push((alpha, e.recall_at[&1], e.map));
    }
    let best = |key: fn(&(f64, f64, f64)) -> f64| {
        by_hand
            .iter()
            .fold(by_hand[0], |b, s| if key(s) > key(&b) { *s } else { b })
            .0
    };
    assert_eq!(m.card.settings["alpha"], best(|s| s.2));
    assert_eq!(r.card.settings["alpha"], best(|s| s.1));
    // an unknown criterion is refused where settings are read
    let e = toml::from_str::<FitConfig>("[slerp]\ncriterion = \"ndcg\"\n").unwrap_err();
    assert!(
        e.to_string().contains("recall@1") && e.to_string().contains("map"),
        "{e}"
    );
}

#[test]
fn slerp_without_labels_or_alpha_is_refused() {
    let support = SupportSet::new(&vectors(50, 8, 9), &vectors(50, 8, 10)).unwrap();
    let m = models(8, 8);
    let e = Adapter::fit("slerp", &support, &FitConfig::default(), &m, Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("labelled support set"), "{e}");
}

#[test]
fn forward_learns_a_known_linear_map() {
    // new = unit(old A) for a fixed anisotropic A (8 → 16): on unseen vectors the MLP must come
    // close to it, and closer than the best orthogonal map (which cannot stretch)
    let old = vectors(2000, 8, 11);
    tch::manual_seed(12);
    let a_map = Tensor::randn([8, 16], (Kind::Float, Device::Cpu));
    let new = unit(&old.matmul(&a_map));
    let support = SupportSet::new(&old, &new).unwrap();
    let mut cfg = FitConfig::default();
    cfg.forward.inner_dim = 64;
    cfg.forward.batch = 128;
    cfg.forward.epochs = 40;
    cfg.forward.lr = 3e-3;
    let a = fit("forward", &support, &cfg);
    let held_out = vectors(500, 8, 13);
    let want = unit(&held_out.matmul(&a_map));
    let cosine = |got: &Tensor| {
        (got * &want)
            .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
            .mean(Kind::Float)
            .double_value(&[])
    };
    let forward = cosine(&a.apply(&held_out, None).unwrap());
    // the orthogonal baseline old → new: Procrustes with the roles swapped
    let swapped = SupportSet::new(&new, &old).unwrap();
    let orthogonal = cosine(
        &fit("procrustes", &swapped, &FitConfig::default())
            .apply(&held_out, None)
            .unwrap(),
    );
    assert!(
        forward > 0.95 && forward > orthogonal + 0.02,
        "held-out mean cosine: forward {forward}, orthogonal {orthogonal}"
    );
    assert_eq!(a.card.direction, bcl::adapt::Direction::OldToNew);
    assert_eq!((a.card.from.dim, a.card.to.dim), (8, 16));
}

#[test]
fn affine_leaves_orthogonality_only_as_far_as_lambda_allows() {
    // new = unit(old S) with S a stretch: an orthogonal map cannot undo it, an affine one can
    let old = vectors(2000, 8, 14);
    let stretch: Vec<f32> = (0..8).map(|i| 1.0 + 0.25 * i as f32).collect();
    let new = unit(&(&old * Tensor::from_slice(&stretch)));
    let support = SupportSet::new(&old, &new).unwrap();
    let procrustes = fit("procrustes", &support, &FitConfig::default());
    let mut free = FitConfig::default();
    free.affine.lambda = 100.0;
    let mut tight = FitConfig::default();
    tight.affine.lambda = 0.05;
    tight.affine.beta = 100.0;
    let (free, tight) = (
        fit("affine", &support, &free),
        fit("affine", &support, &tight),
    );
    let residual = |a: &Adapter| a.card.fit["orthogonality_residual"].as_f64().unwrap();
    assert!(
        free.card.support_cosine > procrustes.card.support_cosine + 1e-3,
        "free affine {} vs procrustes {}",
        free.card.support_cosine,
        procrustes.card.support_cosine
    );
    assert!(
        residual(&tight) <= 0.05 + 0.02,
        "tight residual {}",
        residual(&tight)
    );
    assert!(residual(&free) > residual(&tight));
}

#[test]
fn saved_adapters_load_to_the_same_map_and_know_their_models() {
    let dir = tempfile::tempdir().unwrap();
    let old = vectors(200, 16, 15);
    let new = vectors(200, 32, 16);
    let support = SupportSet::new(&old, &new)
        .unwrap()
        .with_labels((0..200).map(|i| i % 5).collect())
        .unwrap();
    let mut a = fit("slerp", &support, &FitConfig::default());
    a.save(dir.path()).unwrap();
    let b = Adapter::load(dir.path()).unwrap();
    assert_eq!(a.card, b.card);
    let q = vectors(10, 32, 17);
    let u = vectors(10, 16, 18);
    let (qa, qb) = (
        a.apply(&q, Some(&u)).unwrap(),
        b.apply(&q, Some(&u)).unwrap(),
    );
    assert!(max_abs(&qa, &qb) < 1e-6);
    b.check_models("new0new0new0new0", "0ld0ld0ld0ld0ld0")
        .unwrap();
    let e = b
        .check_models("another-model-id", "0ld0ld0ld0ld0ld0")
        .unwrap_err();
    assert!(matches!(e, AdaptError::OtherModels { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("new0new0new0new0 → 0ld0ld0ld0ld0ld0"),
        "{e}"
    );

    // a changed tensors file no longer matches the card's id
    let weights = dir.path().join("adapter.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&weights, bytes).unwrap();
    let e = Adapter::load(dir.path()).unwrap_err();
    assert!(e.to_string().contains("is not the card's"), "{e}");
}

#[test]
fn bad_inputs_are_refused_with_the_reason() {
    let m = models(8, 8);
    let cfg = FitConfig::default();
    let msg = |r: Result<SupportSet, AdaptError>| r.unwrap_err().to_string();
    // counts differ
    let e = msg(SupportSet::new(&vectors(10, 8, 1), &vectors(9, 8, 2)));
    assert!(e.contains("10 old vectors but 9 new ones"), "{e}");
    // NaN
    let bad = vectors(10, 8, 3);
    let _ = bad.get(4).get(2).fill_(f64::NAN);
    let e = msg(SupportSet::new(&bad, &vectors(10, 8, 4)));
    assert!(e.contains("NaN"), "{e}");
    // a zero row
    let zero = vectors(10, 8, 5);
    let _ = zero.get(3).fill_(0.0);
    let e = msg(SupportSet::new(&vectors(10, 8, 6), &zero));
    assert!(e.contains("row 3 is zero"), "{e}");
    // labels of another length
    let e = SupportSet::new(&vectors(10, 8, 7), &vectors(10, 8, 8))
        .unwrap()
        .with_labels(vec![0; 9])
        .unwrap_err()
        .to_string();
    assert!(e.contains("9 labels for 10 pairs"), "{e}");
    // an unknown kind names the kinds
    let support = SupportSet::new(&vectors(10, 8, 9), &vectors(10, 8, 10)).unwrap();
    let e = Adapter::fit("rotate", &support, &cfg, &m, Device::Cpu).unwrap_err();
    assert!(
        e.to_string().contains("procrustes, slerp, affine, forward"),
        "{e}"
    );
    // a model dimension the vectors do not have
    let wrong = models(8, 12);
    let e = Adapter::fit("procrustes", &support, &cfg, &wrong, Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("the new model embeds in 12"), "{e}");
    // applying to vectors of the wrong dimension, or without SLERP's old query
    let a = Adapter::fit("procrustes", &support, &cfg, &m, Device::Cpu).unwrap();
    let e = a.apply(&vectors(3, 9, 11), None).unwrap_err();
    assert!(
        e.to_string()
            .contains("has dimension 9, the adapter expects 8"),
        "{e}"
    );
    let mut fixed = FitConfig::default();
    fixed.slerp.alpha = Some(0.5);
    let s = Adapter::fit("slerp", &support, &fixed, &m, Device::Cpu).unwrap();
    let e = s.apply(&vectors(3, 8, 12), None).unwrap_err();
    assert!(
        e.to_string()
            .contains("give the old model's embeddings too"),
        "{e}"
    );
    let e = s
        .apply(&vectors(3, 8, 12), Some(&vectors(4, 8, 13)))
        .unwrap_err();
    assert!(
        e.to_string().contains("has 4 rows, its companion has 3"),
        "{e}"
    );
    // an out-of-range setting
    let mut bad_alpha = FitConfig::default();
    bad_alpha.slerp.alpha = Some(1.5);
    let e = Adapter::fit("slerp", &support, &bad_alpha, &m, Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("outside [0, 1]"), "{e}");
    // a card that is not one
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("adapter.json"), "{\"kind\": 3}").unwrap();
    let e = Adapter::load(dir.path()).unwrap_err();
    assert!(e.to_string().contains("not an adapter card"), "{e}");
}

/// A gallery of old vectors answers the new model's queries through an adapter fitted for the
/// pair: the hits are exact search of the mapped queries; an adapter for other models, a
/// gallery holding a third model's vectors, an adapter of the other direction and one of
/// another output dimension are refused (the first two overridable by `force`, the others
/// never).
#[test]
fn a_gallery_is_searched_through_an_adapter_fitted_for_its_pair() {
    use bcl::gallery::ops::{self, EmbedOptions};
    use bcl::gallery::usearch_store::{UsearchConfig, UsearchStore};
    use bcl::gallery::{AdapterLink, GalleryManifest, GalleryStore, Lineage, ModelInfo};
    let (d, n) = (8, 64);
    let r = orthogonal(d, 3);
    let new = vectors(n, d, 4);
    let old = unit(&new.matmul(&r));
    let support = SupportSet::new(&old, &new).unwrap();
    let adapter = fit("procrustes", &support, &FitConfig::default());
    let m = models(d as usize, d as usize);
    let (old_id, new_id) = (m.old.id.clone().unwrap(), m.new.id.clone().unwrap());
    let info = |id: &str, dim: usize| ModelInfo {
        compatible_with: None,
        ..ModelInfo::external(id, dim)
    };
    let dir = tempfile::tempdir().unwrap();
    let mut store = UsearchStore::create(
        &dir.path().join("g"),
        GalleryManifest::new(d as usize),
        UsearchConfig::default(),
    )
    .unwrap();
    let flat = |t: &Tensor| Vec::<f32>::try_from(t.contiguous().view([-1])).unwrap();
    let eo = EmbedOptions::default();
    ops::add_vectors(
        &mut store,
        &info(&old_id, 8),
        None,
        &flat(&old),
        &eo,
        &mut |_, _| {},
    )
    .unwrap();
    let link = AdapterLink::from_card(&adapter.card);
    assert_eq!(
        (link.from.as_deref(), link.to.as_deref()),
        (Some(new_id.as_str()), Some(old_id.as_str()))
    );
    let queries = flat(&adapter.apply(&new.narrow(0, 0, 5), None).unwrap());
    let query = info(&new_id, 8);
    let (l, hits) = ops::search_adapted(&store, &query, &link, &queries, 1, true, false).unwrap();
    assert!(
        matches!(&l, Lineage::Adapted { kind, .. } if kind == "procrustes"),
        "{l:?}"
    );
    // the rotation is recovered: each new vector finds its own old vector first
    let first: Vec<u64> = hits.iter().map(|h| h[0].id).collect();
    assert_eq!(first, vec![0, 1, 2, 3, 4]);
    assert_eq!(hits, store.search_exact(&queries, 1).unwrap());

    // another query model: refused, naming both; force overrides and says so
    let other = info("0th3r0th3r0th3r0", 8);
    let e = ops::search_adapted(&store, &other, &link, &queries, 1, true, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("fitted for the queries of new0new0new0new0") && e.contains("0th3r"),
        "{e}"
    );
    let (l, _) = ops::search_adapted(&store, &other, &link, &queries, 1, true, true).unwrap();
    assert!(matches!(l, Lineage::Forced(_)), "{l:?}");
    // a gallery that also holds a third model's vectors
    let third = info("thirdthirdthird0", 8);
    let forced = EmbedOptions {
        force: true,
        ..EmbedOptions::default()
    };
    ops::add_vectors(
        &mut store,
        &third,
        None,
        &flat(&new.narrow(0, 0, 2)),
        &forced,
        &mut |_, _| {},
    )
    .unwrap();
    let e = ops::search_adapted(&store, &query, &link, &queries, 1, true, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 vectors of model thirdthirdthird0"), "{e}");
    // never overridable: the other direction, another dimension
    let back = AdapterLink {
        maps_queries: false,
        ..link.clone()
    };
    let e = ops::search_adapted(&store, &query, &back, &queries, 1, true, true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not queries"), "{e}");
    let wide = AdapterLink {
        dim: 16,
        ..link.clone()
    };
    let e = ops::search_adapted(&store, &query, &wide, &queries, 1, true, true)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("16-dimensional") && e.contains("dimension 8"),
        "{e}"
    );
}

/// A forward adapter upgrades a gallery's stored vectors into the new space without images:
/// each stored vector becomes the adapter's map of it (by hand), the items are tagged with the
/// adapter and the new model's queries pass the lineage while the old model's no longer do, a
/// second call maps only what is new, the upgrade survives reopening, the lineage graph shows
/// the forward edge, and adapters that cannot upgrade this gallery are refused.
#[test]
fn a_forward_adapter_upgrades_a_gallery_without_images() {
    use bcl::gallery::lineage::{forward_upgrade, graph, link};
    use bcl::gallery::ops::{self, EmbedOptions};
    use bcl::gallery::usearch_store::{UsearchConfig, UsearchStore};
    use bcl::gallery::{check_lineage, GalleryManifest, GalleryStore, Lineage, ModelInfo};

    let d = 8i64;
    let old = vectors(300, d, 21);
    let new = unit(&old.matmul(&orthogonal(d, 22)));
    let mut cfg = FitConfig::default();
    cfg.forward.inner_dim = 32;
    cfg.forward.epochs = 6;
    cfg.forward.warmup_epochs = 1;
    cfg.forward.batch = 64;
    let forward = fit("forward", &SupportSet::new(&old, &new).unwrap(), &cfg);
    let m = models(d as usize, d as usize);
    let (old_id, new_id) = (m.old.id.clone().unwrap(), m.new.id.clone().unwrap());
    let info = |id: &str, compatible_with: Option<&str>| ModelInfo {
        compatible_with: compatible_with.map(String::from),
        ..ModelInfo::external(id, d as usize)
    };
    let flat = |t: &Tensor| Vec::<f32>::try_from(t.contiguous().view([-1])).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g");
    let mut store = UsearchStore::create(
        &path,
        GalleryManifest::new(d as usize),
        UsearchConfig::default(),
    )
    .unwrap();
    let eo = EmbedOptions::default();
    let gallery = old.narrow(0, 0, 200);
    ops::add_vectors(
        &mut store,
        &info(&old_id, None),
        Some(0),
        &flat(&gallery),
        &eo,
        &mut |_, _| {},
    )
    .unwrap();

    let mut commits = Vec::new();
    let r = forward_upgrade(&mut store, &forward, 64, &mut |done, total| {
        commits.push((done, total))
    })
    .unwrap();
    assert_eq!((r.mapped, r.already, r.others), (200, 0, 0));
    assert_eq!(commits, vec![(64, 200), (128, 200), (192, 200), (200, 200)]);
    let tag = format!("adapter:{}", forward.card.id);
    assert_eq!(r.tag, tag);
    let ids: Vec<u64> = (0..200).collect();
    let stored = Tensor::from_slice(&store.vectors(&ids).unwrap()).view([200, d]);
    let by_hand = forward.apply(&gallery, None).unwrap();
    assert!(
        max_abs(&stored, &by_hand) < 1e-5,
        "{}",
        max_abs(&stored, &by_hand)
    );
    assert!(store.item_models().unwrap().values().all(|m| *m == tag));
    // the new model's queries are at home; the old model's are not; a successor of the new
    // model is a successor
    let counts = store.counts().unwrap();
    let man = store.manifest();
    assert_eq!(
        check_lineage(man, &counts, &info(&new_id, None), false).unwrap(),
        Lineage::Same
    );
    let e = check_lineage(man, &counts, &info(&old_id, None), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains(&tag), "{e}");
    assert_eq!(
        check_lineage(
            man,
            &counts,
            &info("v3v3v3v3v3v3v3v3", Some(&new_id)),
            false
        )
        .unwrap(),
        Lineage::Successor
    );
    // more old vectors arrive (forced past the lineage): only they are mapped next time
    let forced = EmbedOptions {
        force: true,
        ..EmbedOptions::default()
    };
    ops::add_vectors(
        &mut store,
        &info(&old_id, None),
        Some(200),
        &flat(&old.narrow(0, 200, 50)),
        &forced,
        &mut |_, _| {},
    )
    .unwrap();
    let r = forward_upgrade(&mut store, &forward, 64, &mut |_, _| {}).unwrap();
    assert_eq!((r.mapped, r.already), (50, 200));
    // the graph: one forward edge between the two models, recorded once
    let edges = graph(store.manifest());
    assert_eq!(edges.len(), 1);
    assert_eq!(edges[0].kind, "forward");
    assert_eq!(
        (edges[0].from.as_str(), edges[0].to.as_str()),
        (old_id.as_str(), new_id.as_str())
    );
    assert_eq!(
        (edges[0].from_name.as_str(), edges[0].to_name.as_str()),
        ("old", "new-independent")
    );
    drop(store);
    let store = UsearchStore::open(&path).unwrap();
    assert_eq!(store.manifest().adapters.len(), 1);
    assert_eq!(store.counts().unwrap().get(&tag), Some(&250));
    let mut store = store;

    // refused: a new → old adapter, a gallery without the old model, another dimension, an
    // adapter fitted on bare vectors
    let procrustes = fit(
        "procrustes",
        &SupportSet::new(&old, &new).unwrap(),
        &FitConfig::default(),
    );
    let e = forward_upgrade(&mut store, &procrustes, 64, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs an old → new adapter"), "{e}");
    let mut other = UsearchStore::create(
        &dir.path().join("h"),
        GalleryManifest::new(d as usize),
        UsearchConfig::default(),
    )
    .unwrap();
    ops::add_vectors(
        &mut other,
        &info("someone-else", None),
        None,
        &flat(&gallery),
        &eo,
        &mut |_, _| {},
    )
    .unwrap();
    let e = forward_upgrade(&mut other, &forward, 64, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("never held"), "{e}");
    let wide_new = unit(&Tensor::cat(&[&new, &new], 1));
    let wide = fit("forward", &SupportSet::new(&old, &wide_new).unwrap(), &cfg);
    let e = forward_upgrade(&mut store, &wide, 64, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("dimension is fixed"), "{e}");
    let bare = Adapter::fit(
        "forward",
        &SupportSet::new(&old, &new).unwrap(),
        &cfg,
        &Models::default(),
        Device::Cpu,
    )
    .unwrap();
    let e = link(&mut store, &bare, false).unwrap_err().to_string();
    assert!(e.contains("names no model"), "{e}");
    assert_eq!(
        store.manifest().adapters.len(),
        1,
        "nothing recorded by a refusal"
    );
}
