//! Deployment evaluation: the mixed gallery by hand, the backfill curve's ends equal to the
//! cross-test and the self-test, and flips counted by hand.

use bcl::eval::deploy::{backfill_curve, backfill_order, flips, mixed_gallery, top1_labels};
use bcl::eval::leave_one_out;
use tch::{Device, Kind, Tensor};

#[test]
fn mixed_gallery_and_order() {
    let old = Tensor::zeros([4, 2], (Kind::Float, Device::Cpu));
    let new = Tensor::ones([4, 2], (Kind::Float, Device::Cpu));
    let g = mixed_gallery(&old, &new, &[2, 0, 3, 1], 0.5);
    let rows: Vec<f64> = (0..4).map(|i| g.double_value(&[i, 0])).collect();
    assert_eq!(
        rows,
        [1.0, 0.0, 1.0, 0.0],
        "items 2 and 0 re-embedded first"
    );
    let o = backfill_order(100, 7);
    let mut s = o.clone();
    s.sort_unstable();
    assert_eq!(s, (0..100).collect::<Vec<_>>());
    assert_eq!(o, backfill_order(100, 7));
    assert_ne!(o, backfill_order(100, 8));
}

#[test]
fn curve_ends_are_cross_and_self_test() {
    tch::manual_seed(3);
    let labels: Vec<i64> = (0..60).map(|i| i % 4).collect();
    let centre = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
    let y = Tensor::from_slice(&labels);
    let old = centre.index_select(0, &y) + Tensor::randn([60, 8], (Kind::Float, Device::Cpu));
    let new = centre.index_select(0, &y) + Tensor::randn([60, 8], (Kind::Float, Device::Cpu)) * 0.5;
    let c = backfill_curve(&old, &new, &labels, &[0.0, 0.5, 1.0], 1).unwrap();
    let cross = leave_one_out(&new, &old, &labels).unwrap().map;
    let selft = leave_one_out(&new, &new, &labels).unwrap().map;
    assert!((c[0].metrics.map - cross).abs() < 1e-12);
    assert!((c[2].metrics.map - selft).abs() < 1e-12);
    assert!(backfill_curve(&old, &new, &labels, &[1.5], 1).is_err());
    assert!(backfill_curve(&old, &new.narrow(0, 0, 10), &labels, &[0.0], 1).is_err());
}

#[test]
fn flips_by_hand() {
    // four queries of labels 0, 1, 2, 3; before: right, right, wrong, wrong; after: right,
    // wrong, right, wrong -> one negative flip (query 1), one positive (query 2)
    let labels = [0, 1, 2, 3];
    let f = flips(&[0, 1, 9, 9], &[0, 7, 2, 8], &labels).unwrap();
    assert_eq!(
        (f.negative, f.positive, f.before, f.after),
        (0.25, 0.25, 0.5, 0.5)
    );
    assert!(flips(&[0], &[0, 1], &labels).is_err());
    // top-1 skips the query itself: items 0 and 1 are close, 2 and 3 are close
    let x = Tensor::from_slice(&[1.0f32, 0.0, 0.9, 0.1, 0.0, 1.0, 0.1, 0.9]).view([4, 2]);
    let t = top1_labels(&x, &x, &[5, 5, 6, 7]).unwrap();
    assert_eq!(t, [5, 5, 7, 6]);
}
