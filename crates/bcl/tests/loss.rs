//! Loss functions, the head's margins, the learning-rate schedule and the SGD update against
//! numbers computed by hand.

use bcl::loss::{
    margin_logits, Bct, CompatInputs, CompatLoss, HeadConfig, HeadKind, Independent, Method, L2,
};
use bcl::train::{lr_at, Schedule, TrainConfig};
use tch::{Kind, Tensor};

fn t(v: &[f64], shape: &[i64]) -> Tensor {
    Tensor::from_slice(v).to_kind(Kind::Float).view(shape)
}

fn close(a: f64, b: f64, tol: f64) {
    assert!((a - b).abs() < tol, "{a} vs {b}");
}

#[test]
fn bct_influence_loss_by_hand() {
    let f = t(&[1.0, 0.0, 0.6, 0.8], &[2, 2]);
    let p = t(&[1.0, 0.0, 0.0, 1.0], &[2, 2]);
    let y = Tensor::from_slice(&[0i64, 1]);
    let bct = Bct {
        lambda: 1.0,
        scale: 2.0,
        prototypes: p,
    };
    let l = bct
        .loss(&CompatInputs {
            new: &f,
            labels: &y,
            old: None,
            classifier: None,
            progress: 0.0,
        })
        .expect("the loss has its inputs")
        .unwrap()
        .double_value(&[]);
    // sample 1: logits (2, 0) -> log(1 + e^-2); sample 2: logits (1.2, 1.6) -> log(1 + e^-0.4)
    let expected = ((1.0 + (-2.0f64).exp()).ln() + (1.0 + (-0.4f64).exp()).ln()) / 2.0;
    close(l, expected, 1e-6);
}

#[test]
fn bct_gradient_reaches_the_new_features_only() {
    let f = t(&[0.6, 0.8], &[1, 2]).set_requires_grad(true);
    let p = t(&[1.0, 0.0, 0.0, 1.0], &[2, 2]);
    let y = Tensor::from_slice(&[0i64]);
    let bct = Bct {
        lambda: 1.0,
        scale: 1.0,
        prototypes: p.shallow_clone(),
    };
    bct.loss(&CompatInputs {
        new: &f,
        labels: &y,
        old: None,
        classifier: None,
        progress: 0.0,
    })
    .expect("the loss has its inputs")
    .unwrap()
    .backward();
    // d/dz CE = softmax - onehot with z = (0.6, 0.8); d/df = (softmax - onehot) @ P
    let e = (0.6f64.exp(), 0.8f64.exp());
    let s0 = e.0 / (e.0 + e.1);
    let g = f.grad();
    close(g.double_value(&[0, 0]), s0 - 1.0, 1e-6);
    close(g.double_value(&[0, 1]), 1.0 - s0, 1e-6);
    assert!(
        !p.grad().defined(),
        "the old prototypes must receive no gradient"
    );
}

#[test]
fn l2_loss_by_hand() {
    let f = t(&[1.0, 0.0, 0.0, 1.0], &[2, 2]);
    let g = t(&[0.6, 0.8, 0.0, 1.0], &[2, 2]);
    let y = Tensor::from_slice(&[0i64, 1]);
    let l = L2 { lambda: 1.0 }
        .loss(&CompatInputs {
            new: &f,
            labels: &y,
            old: Some(&g),
            classifier: None,
            progress: 0.0,
        })
        .expect("the loss has its inputs")
        .unwrap();
    // (0.4^2 + 0.8^2 + 0) / 2
    close(l.double_value(&[]), 0.4, 1e-6);
    assert!(L2 { lambda: 1.0 }.needs_old_embeddings());
    assert!(Independent
        .loss(&CompatInputs {
            new: &f,
            labels: &y,
            old: None,
            classifier: None,
            progress: 0.0,
        })
        .expect("the loss has its inputs")
        .is_none());
}

#[test]
fn margins_by_hand() {
    let a = std::f64::consts::FRAC_PI_6;
    let f = t(&[1.0, 0.0], &[1, 2]);
    // rows of W are normalised inside: (2cos a, 2 sin a) -> angle a to f
    let w = t(&[2.0 * a.cos(), 2.0 * a.sin(), 0.0, 3.0], &[2, 2]);
    let y = Tensor::from_slice(&[0i64]);
    let cfg = |kind, margin| HeadConfig {
        kind,
        scale: 10.0,
        margin,
    };
    let arc = margin_logits(&f, &w, None, &y, &cfg(HeadKind::Arcface, 0.2));
    close(arc.double_value(&[0, 0]), 10.0 * (a + 0.2).cos(), 1e-5);
    close(arc.double_value(&[0, 1]), 0.0, 1e-5);
    let cosf = margin_logits(&f, &w, None, &y, &cfg(HeadKind::Cosface, 0.2));
    close(cosf.double_value(&[0, 0]), 10.0 * (a.cos() - 0.2), 1e-5);
    let cos = margin_logits(&f, &w, None, &y, &cfg(HeadKind::Cosine, 0.2));
    close(cos.double_value(&[0, 0]), 10.0 * a.cos(), 1e-5);
    // θ = 150°: θ + m < π, still the plain cos(θ + m)
    let far = t(&[-1.0, 0.0], &[1, 2]);
    let arc = margin_logits(&far, &w, None, &y, &cfg(HeadKind::Arcface, 0.2));
    close(
        arc.double_value(&[0, 0]),
        10.0 * (5.0 * a + 0.2).cos(),
        1e-5,
    );
    // θ + m > π: falls back to cos θ − m·sin m (still decreasing in θ)
    let arc = margin_logits(&far, &w, None, &y, &cfg(HeadKind::Arcface, 0.6));
    close(
        arc.double_value(&[0, 0]),
        10.0 * (-(a.cos()) - 0.6 * 0.6f64.sin()),
        1e-5,
    );
}

#[test]
fn method_names_round_trip_and_unknown_is_an_error() {
    for m in Method::all() {
        assert_eq!(m.as_str().parse::<Method>().unwrap(), m);
    }
    let e = "bogus".parse::<Method>().unwrap_err();
    assert!(e.contains("independent, l2, bct"), "{e}");
}

#[test]
fn warmup_then_cosine_schedule() {
    let cfg = TrainConfig {
        lr: 0.1,
        warmup_epochs: 1.0,
        epochs: 3,
        ..Default::default()
    };
    // 10 steps per epoch: warm-up over steps 0..10, then cosine over 20 steps
    close(lr_at(&cfg, 0, 30, 10), 0.01, 1e-12);
    close(lr_at(&cfg, 9, 30, 10), 0.1, 1e-12);
    close(lr_at(&cfg, 10, 30, 10), 0.1, 1e-12);
    close(lr_at(&cfg, 20, 30, 10), 0.05, 1e-12);
    close(
        lr_at(&cfg, 29, 30, 10),
        0.05 * (1.0 + (std::f64::consts::PI * 19.0 / 20.0).cos()),
        1e-12,
    );
    let step = TrainConfig {
        warmup_epochs: 0.0,
        schedule: Schedule::Step {
            milestones: vec![1, 2],
            gamma: 0.1,
        },
        ..cfg
    };
    close(lr_at(&step, 5, 30, 10), 0.1, 1e-12);
    close(lr_at(&step, 15, 30, 10), 0.01, 1e-12);
    close(lr_at(&step, 25, 30, 10), 0.001, 1e-12);
}

#[test]
fn sgd_momentum_and_weight_decay_by_hand() {
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let w = vs.root().var("w", &[1], tch::nn::Init::Const(1.0));
    let mut opt = bcl::train::Sgd::new(&vs, 0.9, 0.1);
    // loss = 3w: gradient 3; with decay d = 3 + 0.1 w
    for _ in 0..2 {
        opt.zero_grad();
        (&w * 3.0).sum(Kind::Float).backward();
        opt.step(0.5);
    }
    // step 1: d = 3.1, buf = 3.1, w = 1 - 1.55 = -0.55
    // step 2: d = 3 - 0.055 = 2.945, buf = 0.9*3.1 + 2.945 = 5.735, w = -0.55 - 2.8675
    close(w.double_value(&[0]), -0.55 - 0.5 * 5.735, 1e-6);
}

#[test]
fn sgd_momentum_without_weight_decay_by_hand() {
    // Without decay the first momentum buffer must not be the gradient tensor itself (which
    // the next zero_grad clears in place).
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let w = vs.root().var("w", &[1], tch::nn::Init::Const(1.0));
    let mut opt = bcl::train::Sgd::new(&vs, 0.9, 0.0);
    for _ in 0..3 {
        opt.zero_grad();
        (&w * 3.0).sum(Kind::Float).backward();
        opt.step(0.5);
    }
    // buffers 3, 5.7, 8.13: w = 1 - 0.5 (3 + 5.7 + 8.13)
    close(w.double_value(&[0]), 1.0 - 0.5 * (3.0 + 5.7 + 8.13), 1e-6);
}
