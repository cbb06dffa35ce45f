//! Execution settings (bfloat16 autocast, channels-last): the layout keeps values and only
//! changes strides, autocast is on inside its region and restored after it, an embedder and a
//! training run under both settings give what float32 gives (exactly for the layout, within
//! bfloat16's rounding for autocast), and the settings are read and checked from TOML.

mod common;

use bcl::exec::{channels_last, is_channels_last, Autocast, ExecConfig};
use bcl::model::Embedder;
use bcl::run::{self, RunConfig, StepOptions};
use tch::{Device, Kind, Tensor};

const BF16: ExecConfig = ExecConfig {
    autocast: Autocast::Bf16,
    channels_last: false,
};
const NHWC: ExecConfig = ExecConfig {
    autocast: Autocast::Off,
    channels_last: true,
};

#[test]
fn channels_last_keeps_values_and_changes_strides() {
    let x = Tensor::randn([2, 3, 4, 5], (Kind::Float, Device::Cpu));
    let y = channels_last(&x).unwrap();
    assert!(!is_channels_last(&x) && is_channels_last(&y));
    assert_eq!(y.stride(), vec![60, 1, 15, 3]);
    assert!(y.equal(&x));
    // one channel (a grey-scale stem's weight): NHWC strides all the same, as torch's
    // Module.to(memory_format=channels_last) gives them (contiguous() kept NCHW's)
    let w = Tensor::randn([16, 1, 3, 3], (Kind::Float, Device::Cpu));
    let wl = channels_last(&w).unwrap();
    assert_eq!(wl.stride(), vec![9, 1, 3, 1]);
    assert!(wl.equal(&w));
    // other ranks are left as they are
    let v = Tensor::randn([6], (Kind::Float, Device::Cpu));
    assert!(channels_last(&v).unwrap().equal(&v));
}

#[test]
fn autocast_is_on_inside_its_region_only() {
    let a = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
    let inside = BF16.run(Device::Cpu, || a.matmul(&a.tr())).unwrap();
    assert_eq!(inside.kind(), Kind::BFloat16);
    assert_eq!(
        a.matmul(&a.tr()).kind(),
        Kind::Float,
        "autocast leaked out of its region"
    );
    // a region that panics still restores the state
    let r = std::panic::catch_unwind(|| BF16.run(Device::Cpu, || panic!("inside")));
    assert!(r.is_err());
    assert_eq!(a.matmul(&a.tr()).kind(), Kind::Float);
    let off = ExecConfig::default()
        .run(Device::Cpu, || a.matmul(&a.tr()))
        .unwrap();
    assert_eq!(off.kind(), Kind::Float);
}

#[test]
fn embedder_and_training_under_each_setting() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::tiny_idx_config(&dir.path().join("data"), 4, 1);
    let opts = common::cpu_opts(false, None);
    let plain = run::train_old(&cfg, &dir.path().join("plain"), &opts).unwrap();
    let test = bcl::data::open(&cfg.data).unwrap().test;
    let base = Embedder::load(&plain.dir, Device::Cpu)
        .unwrap()
        .embed_dataset(&test, 16);
    // the layout: the same numbers; autocast: bfloat16's rounding in the feature maps only
    // (the embedding head runs in float32: a head under autocast moved embeddings far enough to
    // reorder near neighbours), so every embedding keeps its direction closely
    let both = ExecConfig {
        autocast: Autocast::Bf16,
        channels_last: true,
    };
    for (exec, tol) in [(NHWC, 1e-5), (BF16, 3e-3), (both, 3e-3)] {
        let e = Embedder::load(&plain.dir, Device::Cpu)
            .unwrap()
            .with_exec(exec)
            .unwrap();
        assert_eq!(e.exec(), exec);
        let f = e.embed_dataset(&test, 16);
        assert_eq!(f.kind(), Kind::Float);
        let diff = (&f - &base).abs().max().double_value(&[]);
        assert!(diff < tol, "{exec:?}: embeddings differ by {diff}");
        let cos = (&f * &base)
            .sum_dim_intlist(1, false, Kind::Float)
            .min()
            .double_value(&[]);
        assert!(cos > 0.9999, "{exec:?}: an embedding turned by cos {cos}");
    }
    // a run under both settings trains, writes a model that loads and embeds, and its first
    // epoch's loss is float32's within bfloat16's rounding
    cfg.old.exec = both;
    let probe = StepOptions {
        probe_test: true,
        ..opts.clone()
    };
    let mixed = run::train_old(&cfg, &dir.path().join("mixed"), &probe).unwrap();
    let (a, b) = (plain.history[0].loss_total, mixed.history[0].loss_total);
    assert!(
        b.is_finite() && (a - b).abs() < 0.05 * a.abs().max(1.0),
        "loss {a} vs {b}"
    );
    // the saved weights are the trained ones (channels-last tensors written in their logical
    // order): the loaded model embeds as the in-memory model did
    let f = Embedder::load(&mixed.dir, Device::Cpu)
        .unwrap()
        .embed_dataset(&test, 16);
    let in_memory = mixed.probe_features.unwrap();
    let diff = (&f - &in_memory).abs().max().double_value(&[]);
    assert!(
        diff < 1e-5,
        "the saved model embeds {diff} away from the trained one"
    );
    let saved = dir.path().join("mixed").join("config.toml");
    let back = RunConfig::from_toml_file(&saved).unwrap();
    assert_eq!(
        back.old.exec, cfg.old.exec,
        "the settings are saved with the run"
    );
}

#[test]
fn settings_are_read_and_checked_from_toml() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(
        &p,
        "[new.exec]\nautocast = \"bf16\"\nchannels_last = true\n",
    )
    .unwrap();
    let c = RunConfig::from_toml_file(&p).unwrap();
    assert_eq!(c.new.exec.autocast, Autocast::Bf16);
    assert!(c.new.exec.channels_last && c.old.exec == ExecConfig::default());
    std::fs::write(&p, "[new.exec]\nautocast = \"fp8\"\n").unwrap();
    let e = RunConfig::from_toml_file(&p).unwrap_err().to_string();
    assert!(e.contains("fp8") && e.contains("bf16"), "{e}");
    std::fs::write(&p, "[new.exec]\nlayout = \"nhwc\"\n").unwrap();
    let e = RunConfig::from_toml_file(&p).unwrap_err().to_string();
    assert!(e.contains("layout"), "{e}");
}
