//! ResNet-18/50 in torchvision's layout (names and parameter counts of torchvision's models
//! without `fc`), GeM pooling against hand values, and loading converted weights: a full
//! load reproduces the source network, a file of another architecture is refused.

use bcl::model::{gem, load_pretrained, Backbone, EmbeddingNet, ModelConfig, Pooling};
use tch::{nn, Device, Kind, Tensor};

fn net(backbone: Backbone, pooling: Pooling, seed: i64) -> (nn::VarStore, EmbeddingNet) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = ModelConfig {
        backbone,
        pooling,
        in_channels: 3,
        dim: 64,
        ..Default::default()
    };
    let n = EmbeddingNet::new(&(vs.root() / "net"), &cfg);
    (vs, n)
}

fn backbone_params(vs: &nn::VarStore) -> i64 {
    vs.variables()
        .iter()
        .filter(|(k, t)| k.starts_with("net.backbone.") && t.requires_grad())
        .map(|(_, t)| t.numel() as i64)
        .sum()
}

#[test]
fn torchvision_layout_and_parameter_counts() {
    // torchvision: resnet18 11,689,512 and resnet50 25,557,032 parameters, fc included
    // (512·1000 + 1000 and 2048·1000 + 1000)
    let (vs18, _) = net(Backbone::Resnet18, Pooling::Avg, 0);
    assert_eq!(backbone_params(&vs18), 11_689_512 - 513_000);
    let (vs50, _) = net(Backbone::Resnet50, Pooling::Avg, 0);
    assert_eq!(backbone_params(&vs50), 25_557_032 - 2_049_000);
    let names = vs18.variables();
    for n in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv2.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_mean",
        "layer4.1.bn2.bias",
    ] {
        assert!(names.contains_key(&format!("net.backbone.{n}")), "{n}");
    }
    assert!(!names.contains_key("net.backbone.layer1.0.downsample.0.weight"));
    let names = vs50.variables();
    for n in [
        "layer1.0.downsample.0.weight",
        "layer3.5.conv3.weight",
        "layer4.2.bn3.weight",
    ] {
        assert!(names.contains_key(&format!("net.backbone.{n}")), "{n}");
    }
    // stride on the 3x3 (v1.5): the 1x1 of layer2.0 keeps 256 -> 128 at full resolution
    assert_eq!(
        names["net.backbone.layer2.0.conv2.weight"].size(),
        [128, 128, 3, 3]
    );
}

#[test]
fn gem_by_hand() {
    // one channel holding 1, 2, 3, 4
    let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([1, 1, 2, 2]);
    let p1 = Tensor::from_slice(&[1.0f32]);
    assert!((gem(&x, &p1).double_value(&[0, 0]) - 2.5).abs() < 1e-5);
    let p3 = Tensor::from_slice(&[3.0f32]);
    let want = ((1.0f64 + 8.0 + 27.0 + 64.0) / 4.0).powf(1.0 / 3.0);
    assert!((gem(&x, &p3).double_value(&[0, 0]) - want).abs() < 1e-4);
    let p50 = Tensor::from_slice(&[50.0f32]);
    assert!(
        (gem(&x, &p50).double_value(&[0, 0]) - 4.0).abs() < 0.15,
        "near the max"
    );
    // a GeM net has its p among the trainable variables
    let (vs, n) = net(Backbone::Resnet18, Pooling::Gem, 0);
    assert!(vs.variables().contains_key("net.gem_p"));
    let f = n.forward_t(
        &Tensor::rand([2, 3, 64, 64], (Kind::Float, Device::Cpu)),
        false,
    );
    assert_eq!(f.size(), [2, 64]);
}

#[test]
fn converted_weights_load_and_wrong_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // a "converted" state_dict: our backbone under torchvision's names, plus fc and a
    // num_batches_tracked buffer as torchvision writes them
    let (src_vs, src) = net(Backbone::Resnet18, Pooling::Avg, 1);
    let mut sd: Vec<(String, Tensor)> = src_vs
        .variables()
        .into_iter()
        .filter_map(|(k, t)| k.strip_prefix("net.backbone.").map(|s| (s.to_string(), t)))
        .collect();
    sd.push((
        "fc.weight".into(),
        Tensor::zeros([1000, 512], (Kind::Float, Device::Cpu)),
    ));
    sd.push((
        "bn1.num_batches_tracked".into(),
        Tensor::from_slice(&[7i64]),
    ));
    for ext in ["npz", "safetensors"] {
        let f = dir.path().join(format!("resnet18.{ext}"));
        if ext == "npz" {
            Tensor::write_npz(&sd, &f).unwrap();
        } else {
            Tensor::write_safetensors(&sd, &f).unwrap();
        }
        let (vs, dst) = net(Backbone::Resnet18, Pooling::Avg, 2);
        let n = load_pretrained(&vs, &f, "net.backbone").unwrap();
        assert_eq!(n, sd.len() - 2);
        // same backbone: the pooled features match (the heads differ: seeds 1 and 2)
        let x = Tensor::rand([2, 3, 64, 64], (Kind::Float, Device::Cpu));
        let a = src_vs.variables()["net.head.weight"].shallow_clone();
        let mut b = vs.variables()["net.head.weight"].shallow_clone();
        tch::no_grad(|| {
            b.copy_(&a);
            let mut bb = vs.variables()["net.head.bias"].shallow_clone();
            bb.copy_(&src_vs.variables()["net.head.bias"]);
        });
        assert!(src
            .forward_t(&x, false)
            .allclose(&dst.forward_t(&x, false), 1e-5, 1e-5, false));
    }
    // ResNet-50 weights into a ResNet-18: refused
    let (vs50, _) = net(Backbone::Resnet50, Pooling::Avg, 3);
    let sd50: Vec<(String, Tensor)> = vs50
        .variables()
        .into_iter()
        .filter_map(|(k, t)| k.strip_prefix("net.backbone.").map(|s| (s.to_string(), t)))
        .collect();
    let f50 = dir.path().join("r50.safetensors");
    Tensor::write_safetensors(&sd50, &f50).unwrap();
    let (vs, _) = net(Backbone::Resnet18, Pooling::Avg, 2);
    let e = load_pretrained(&vs, &f50, "net.backbone")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("r50.safetensors")
            && (e.contains("another architecture") || e.contains("shape")),
        "{e}"
    );
    // a grey-scale model cannot take ImageNet's first convolution
    tch::manual_seed(0);
    let vs1 = nn::VarStore::new(Device::Cpu);
    let _ = EmbeddingNet::new(
        &(vs1.root() / "net"),
        &ModelConfig {
            backbone: Backbone::Resnet18,
            in_channels: 1,
            ..Default::default()
        },
    );
    let e = load_pretrained(&vs1, &dir.path().join("resnet18.npz"), "net.backbone")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("conv1.weight") && e.contains("in_channels = 3"),
        "{e}"
    );
    // a file missing a tensor
    let partial: Vec<(String, Tensor)> = sd
        .iter()
        .filter(|(k, _)| k != "layer3.1.conv1.weight")
        .map(|(k, t)| (k.clone(), t.shallow_clone()))
        .collect();
    let fp = dir.path().join("partial.safetensors");
    Tensor::write_safetensors(&partial, &fp).unwrap();
    let (vs, _) = net(Backbone::Resnet18, Pooling::Avg, 2);
    let e = load_pretrained(&vs, &fp, "net.backbone")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layer3.1.conv1.weight") && e.contains("missing"),
        "{e}"
    );
    let e = load_pretrained(&vs, &dir.path().join("none.npz"), "net.backbone")
        .unwrap_err()
        .to_string();
    assert!(e.contains("none.npz") && e.contains("cannot read"), "{e}");
}

#[test]
fn default_architecture_serialises_as_before_the_new_settings() {
    // checkpoints record the serialised architecture: new settings at their defaults must not
    // change it, or every earlier run would count as another configuration
    assert_eq!(
        serde_json::to_string(&ModelConfig::default()).unwrap(),
        r#"{"width":16,"blocks":1,"dim":128,"in_channels":1}"#
    );
    let r: ModelConfig = toml::from_str("backbone = \"resnet50\"\npooling = \"gem\"").unwrap();
    assert_eq!(
        (r.backbone, r.pooling, r.gem_p),
        (Backbone::Resnet50, Pooling::Gem, 3.0)
    );
    assert!(toml::from_str::<ModelConfig>("backbone = \"vgg\"").is_err());
}
