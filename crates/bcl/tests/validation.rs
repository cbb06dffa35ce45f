//! The validation part (`[data] validation_per_class`): which training images it holds out
//! (by hand), that no model trains on them and they are disjoint from the test set, that the
//! split records its fingerprint, and that a successor validating on other images is refused.

mod common;

use bcl::data::holdout::hold_out;
use bcl::data::{open, open_part, Part};

#[test]
fn hold_out_by_hand() {
    // two classes interleaved in file order: class 0 at 0, 2, 4, 6, 8; class 1 at 1, 3, 5, 7
    let labels = [0usize, 1, 0, 1, 0, 1, 0, 1, 0];
    // with a training limit: the first 2 of each class train, the next 2 validate
    let (tr, va) = hold_out(&labels, 2, Some(2), 2).unwrap();
    assert_eq!(tr, vec![0, 1, 2, 3]);
    assert_eq!(va, vec![4, 5, 6, 7]);
    // without: the last 2 of each class validate, the rest train
    let (tr, va) = hold_out(&labels, 2, None, 2).unwrap();
    assert_eq!(tr, vec![0, 1, 2, 3, 4]);
    assert_eq!(va, vec![5, 6, 7, 8]);
    // a class with too few images gives what it has: class 1 (4 images) trains on 3 and
    // validates on 1; class 0 (5) on 3 and 2
    let (tr, va) = hold_out(&labels, 2, Some(3), 2).unwrap();
    assert_eq!(tr, vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(va, vec![6, 7, 8]);
    // without a training limit a class with no more images than the part keeps them all for
    // training (as GLDv2's test hold-out does); class 0 (5 > 4) gives its last 4
    let (tr, va) = hold_out(&labels, 2, None, 4).unwrap();
    assert_eq!(tr, vec![0, 1, 3, 5, 7]);
    assert_eq!(va, vec![2, 4, 6, 8]);
    // nothing left to validate on anywhere: an error naming the setting
    let e = hold_out(&labels, 2, Some(5), 2).unwrap_err().to_string();
    assert!(e.contains("validation_per_class"), "{e}");
    let e = hold_out(&labels, 2, None, 5).unwrap_err().to_string();
    assert!(e.contains("no class has images left"), "{e}");
}

#[test]
fn the_validation_part_is_trained_on_by_no_model_and_is_not_the_test_set() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::tiny_idx_config(&dir.path().join("data"), 3, 1);
    cfg.data.train_per_class = Some(40);
    cfg.data.validation_per_class = Some(12);
    let opened = open(&cfg.data).unwrap();
    let train_ids: Vec<usize> = match &opened.train {
        bcl::data::TrainSource::Memory(d) => d.ids.clone(),
        _ => unreachable!("IDX data are in memory"),
    };
    let val = open_part(&cfg.data, Part::Validation).unwrap();
    let test = open_part(&cfg.data, Part::Test).unwrap();
    assert_eq!(train_ids.len(), 3 * 40);
    assert_eq!(val.len(), 3 * 12);
    for c in 0..3 {
        assert_eq!(val.labels.iter().filter(|&&l| l == c).count(), 12);
    }
    assert!(
        val.ids.iter().all(|i| !train_ids.contains(i)),
        "disjoint from training"
    );
    // the ids of the test set index another file: disjointness is by construction (the
    // validation images come from the training file), and their pixels differ
    assert_ne!(
        val.pixels[..val.item_size()],
        test.pixels[..test.item_size()]
    );
    // the fingerprint changes with the part, and is absent without one
    let fp = opened.validation.clone().expect("a validation part");
    cfg.data.validation_per_class = Some(11);
    assert_ne!(open(&cfg.data).unwrap().validation, Some(fp));
    cfg.data.validation_per_class = None;
    assert_eq!(open(&cfg.data).unwrap().validation, None);
    let e = open_part(&cfg.data, Part::Validation)
        .unwrap_err()
        .to_string();
    assert!(e.contains("validation_per_class"), "{e}");
}

#[test]
fn the_split_records_the_validation_part_and_a_successor_must_share_it() {
    use bcl::loss::Method;
    use bcl::run;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::tiny_idx_config(&dir.path().join("data"), 3, 1);
    cfg.data.train_per_class = Some(40);
    cfg.data.validation_per_class = Some(10);
    let opts = common::cpu_opts(false, None);
    let old = dir.path().join("old");
    run::train_old(&cfg, &old, &opts).unwrap();
    let (_, split) = run::old_run(&old).unwrap();
    assert_eq!(split.validation, open(&cfg.data).unwrap().validation);
    assert!(split.validation.is_some());
    // a successor whose data hold out other images is refused, naming the split
    let mut other = cfg.clone();
    other.data.validation_per_class = Some(5);
    let e = run::train_new(&other, &old, Method::BCT, &dir.path().join("bad"), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("validation part differs") && e.contains("split.json"),
        "{e}"
    );
    // the same part trains
    run::train_new(&cfg, &old, Method::BCT, &dir.path().join("bct"), &opts).unwrap();
    // and a configuration without a validation part keeps its split unchanged (no field)
    let plain = dir.path().join("plain");
    cfg.data.validation_per_class = None;
    run::train_old(&cfg, &plain, &opts).unwrap();
    let text = std::fs::read_to_string(plain.join("split.json")).unwrap();
    assert!(!text.contains("validation"), "{text}");
}

#[test]
fn a_zero_validation_part_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::tiny_idx_config(&dir.path().join("data"), 3, 1);
    cfg.data.validation_per_class = Some(0);
    let e = cfg.validate().unwrap_err();
    assert!(e.contains("validation_per_class = 0"), "{e}");
}
