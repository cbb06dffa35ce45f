//! The embedding network: the small ResNet-style backbone and ResNet-18/50 in torchvision's
//! layout, GeM pooling, the embedding head with L2 normalisation, and loading torchvision's
//! pretrained weights.

use std::path::Path;

use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

use super::{Backbone, ModelConfig, ModelError, Pooling};

#[derive(Debug)]
struct BasicBlock {
    c1: nn::Conv2D,
    b1: nn::BatchNorm,
    c2: nn::Conv2D,
    b2: nn::BatchNorm,
    short: Option<(nn::Conv2D, nn::BatchNorm)>,
}

fn conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding: k / 2,
        bias: false,
        ..Default::default()
    };
    nn::conv2d(p, cin, cout, k, cfg)
}

impl BasicBlock {
    fn new(p: &nn::Path, cin: i64, cout: i64, stride: i64) -> Self {
        let short = (stride != 1 || cin != cout).then(|| {
            (
                conv(p / "short_conv", cin, cout, 1, stride),
                nn::batch_norm2d(p / "short_bn", cout, Default::default()),
            )
        });
        Self {
            c1: conv(p / "c1", cin, cout, 3, stride),
            b1: nn::batch_norm2d(p / "b1", cout, Default::default()),
            c2: conv(p / "c2", cout, cout, 3, 1),
            b2: nn::batch_norm2d(p / "b2", cout, Default::default()),
            short,
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let y = x.apply(&self.c1).apply_t(&self.b1, train).relu();
        let y = y.apply(&self.c2).apply_t(&self.b2, train);
        let s = match &self.short {
            None => x.shallow_clone(),
            Some((c, b)) => x.apply(c).apply_t(b, train),
        };
        (y + s).relu()
    }
}

/// A residual block of torchvision's ResNets: basic (two 3×3) or bottleneck (1×1, 3×3, 1×1).
#[derive(Debug)]
struct TvBlock {
    convs: Vec<(nn::Conv2D, nn::BatchNorm)>,
    downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
}

fn tv_conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    nn::conv2d(
        p,
        cin,
        cout,
        k,
        nn::ConvConfig {
            stride,
            padding,
            bias: false,
            ..Default::default()
        },
    )
}

impl TvBlock {
    fn new(p: &nn::Path, cin: i64, planes: i64, stride: i64, bottleneck: bool) -> (Self, i64) {
        let bn = |n: &str, c: i64| nn::batch_norm2d(p / n, c, Default::default());
        let (convs, cout) = if bottleneck {
            let out = planes * 4;
            (
                vec![
                    (
                        tv_conv(p / "conv1", cin, planes, 1, 1, 0),
                        bn("bn1", planes),
                    ),
                    (
                        tv_conv(p / "conv2", planes, planes, 3, stride, 1),
                        bn("bn2", planes),
                    ),
                    (tv_conv(p / "conv3", planes, out, 1, 1, 0), bn("bn3", out)),
                ],
                out,
            )
        } else {
            (
                vec![
                    (
                        tv_conv(p / "conv1", cin, planes, 3, stride, 1),
                        bn("bn1", planes),
                    ),
                    (
                        tv_conv(p / "conv2", planes, planes, 3, 1, 1),
                        bn("bn2", planes),
                    ),
                ],
                planes,
            )
        };
        let downsample = (stride != 1 || cin != cout).then(|| {
            let d = p / "downsample";
            (
                tv_conv(&d / "0", cin, cout, 1, stride, 0),
                nn::batch_norm2d(&d / "1", cout, Default::default()),
            )
        });
        (Self { convs, downsample }, cout)
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let last = self.convs.len() - 1;
        let mut y = x.shallow_clone();
        for (i, (c, b)) in self.convs.iter().enumerate() {
            y = y.apply(c).apply_t(b, train);
            if i < last {
                y = y.relu();
            }
        }
        let s = match &self.downsample {
            None => x.shallow_clone(),
            Some((c, b)) => x.apply(c).apply_t(b, train),
        };
        (y + s).relu()
    }
}

#[derive(Debug)]
enum Body {
    Small {
        stem: nn::Conv2D,
        stem_bn: nn::BatchNorm,
        blocks: Vec<BasicBlock>,
    },
    Torchvision {
        conv1: nn::Conv2D,
        bn1: nn::BatchNorm,
        blocks: Vec<TvBlock>,
    },
}

/// The embedding network: backbone, global pooling (average or GeM), a linear projection to
/// `d`, L2 normalisation; and, for a model embedding in another dimension than the model it
/// must be compatible with, the projection head into that model's space.
#[derive(Debug)]
pub struct EmbeddingNet {
    body: Body,
    gem_p: Option<Tensor>,
    head: nn::Linear,
    compat: Option<nn::Linear>,
}

/// Variable-store path (under the network's) of the projection head into the old space.
pub const COMPAT_HEAD_PATH: &str = "compat_head";

/// Variable-store path of the torchvision backbones (their `state_dict` names follow it).
pub const BACKBONE_PATH: &str = "backbone";

impl EmbeddingNet {
    /// The embedding dimension `d`.
    pub fn dim(&self) -> i64 {
        self.head.ws.size()[0]
    }

    /// Builds the network's variables under `p`.
    pub fn new(p: &nn::Path, cfg: &ModelConfig) -> Self {
        let (body, width) = match cfg.backbone {
            Backbone::Small => {
                let stem = conv(p / "stem", cfg.in_channels, cfg.width, 3, 1);
                let stem_bn = nn::batch_norm2d(p / "stem_bn", cfg.width, Default::default());
                let mut blocks = Vec::new();
                let mut cin = cfg.width;
                for s in 0..3 {
                    let cout = cfg.width << s;
                    for b in 0..cfg.blocks {
                        let stride = if s > 0 && b == 0 { 2 } else { 1 };
                        blocks.push(BasicBlock::new(
                            &(p / format!("s{s}b{b}")),
                            cin,
                            cout,
                            stride,
                        ));
                        cin = cout;
                    }
                }
                (
                    Body::Small {
                        stem,
                        stem_bn,
                        blocks,
                    },
                    cin,
                )
            }
            Backbone::Resnet18 | Backbone::Resnet50 => {
                let (depths, bottleneck) = match cfg.backbone {
                    Backbone::Resnet18 => ([2, 2, 2, 2], false),
                    _ => ([3, 4, 6, 3], true),
                };
                let bp = p / BACKBONE_PATH;
                let conv1 = tv_conv(&bp / "conv1", cfg.in_channels, 64, 7, 2, 3);
                let bn1 = nn::batch_norm2d(&bp / "bn1", 64, Default::default());
                let mut blocks = Vec::new();
                let mut cin = 64;
                for (l, (&n, planes)) in depths.iter().zip([64, 128, 256, 512]).enumerate() {
                    for b in 0..n {
                        let stride = if l > 0 && b == 0 { 2 } else { 1 };
                        let (blk, cout) = TvBlock::new(
                            &(&bp / format!("layer{}", l + 1) / b.to_string()),
                            cin,
                            planes,
                            stride,
                            bottleneck,
                        );
                        blocks.push(blk);
                        cin = cout;
                    }
                }
                (Body::Torchvision { conv1, bn1, blocks }, cin)
            }
        };
        let gem_p =
            (cfg.pooling == Pooling::Gem).then(|| p.var("gem_p", &[1], nn::Init::Const(cfg.gem_p)));
        let head = nn::linear(p / "head", width, cfg.dim, Default::default());
        let compat = cfg.compat_dim.map(|c| {
            let no_bias = nn::LinearConfig {
                bias: false,
                ..Default::default()
            };
            nn::linear(p / COMPAT_HEAD_PATH, cfg.dim, c, no_bias)
        });
        Self {
            body,
            gem_p,
            head,
            compat,
        }
    }

    /// The dimension of the space the projection head maps into, when the network has one.
    pub fn compat_dim(&self) -> Option<i64> {
        self.compat.as_ref().map(|l| l.ws.size()[0])
    }

    /// The normalised embeddings `f` `[N, d]` mapped into the old model's space by the
    /// projection head and normalised again, `P f / ‖P f‖`; `f` itself when the network has
    /// no head (it embeds in the old model's dimension).
    pub fn to_compat_space(&self, f: &Tensor) -> Tensor {
        match &self.compat {
            None => f.shallow_clone(),
            Some(l) => l2_normalize(&f.apply(l)),
        }
    }

    /// The last feature map of the backbone.
    fn features_t(&self, x: &Tensor, train: bool) -> Tensor {
        match &self.body {
            Body::Small {
                stem,
                stem_bn,
                blocks,
            } => {
                let mut h = x.apply(stem).apply_t(stem_bn, train).relu();
                for b in blocks {
                    h = b.forward_t(&h, train);
                }
                h
            }
            Body::Torchvision { conv1, bn1, blocks } => {
                let mut h = x.apply(conv1).apply_t(bn1, train).relu().max_pool2d(
                    [3, 3],
                    [2, 2],
                    [1, 1],
                    [1, 1],
                    false,
                );
                for b in blocks {
                    h = b.forward_t(&h, train);
                }
                h
            }
        }
    }

    /// Unnormalised embedding `φ(x)`.
    pub fn raw_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.head_t(&self.features_t(x, train))
    }

    /// L2-normalised embedding under the execution settings `exec`: the backbone runs under
    /// its autocast and layout, the pooling (accumulated in float32) and the embedding head
    /// in float32, so the rounding of bfloat16 stays in the feature maps and never reaches
    /// the embedding's own coordinates (measured: a head under autocast lost 40 points of mAP
    /// on embeddings that differ by little, docs/performance.md).
    pub fn forward_exec(
        &self,
        x: &Tensor,
        train: bool,
        exec: &crate::exec::ExecConfig,
    ) -> Result<Tensor, crate::exec::ExecError> {
        if exec.is_default() {
            return Ok(self.forward_t(x, train));
        }
        let xin = exec.input(x)?;
        let h = exec.run(x.device(), || self.features_t(&xin, train))?;
        Ok(l2_normalize(&self.head_t(&h.to_kind(Kind::Float))))
    }

    /// The pooling and the embedding head over the backbone's last feature map `h`.
    fn head_t(&self, h: &Tensor) -> Tensor {
        let pooled = match &self.gem_p {
            None => h.mean_dim([2i64, 3].as_slice(), false, Kind::Float),
            Some(p) => gem(h, p),
        };
        pooled.apply(&self.head)
    }

    /// L2-normalised embedding `φ(x)/‖φ(x)‖`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        l2_normalize(&self.raw_t(x, train))
    }
}

/// Generalised-mean pooling of a `[B, C, H, W]` map: `(mean_{h,w} max(x, 1e-6)^p)^{1/p}`;
/// p = 1 is average pooling, large p approaches max pooling.
pub fn gem(x: &Tensor, p: &Tensor) -> Tensor {
    x.clamp_min(1e-6)
        .pow(p)
        .mean_dim([2i64, 3].as_slice(), false, Kind::Float)
        .pow(&p.reciprocal())
}

impl ModuleT for EmbeddingNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        EmbeddingNet::forward_t(self, xs, train)
    }
}

/// Copies a torchvision ResNet `state_dict` (a `.safetensors` or `.npz` file) into the
/// backbone variables under `prefix` (e.g. `net.backbone`); `fc.*` and `num_batches_tracked`
/// are skipped. Every backbone variable must be found with its shape, and every name in the
/// file must be known: a file of another architecture is an error, not a partial load.
/// Returns the number of tensors copied.
pub fn load_pretrained(vs: &nn::VarStore, path: &Path, prefix: &str) -> Result<usize, ModelError> {
    let werr = |reason: String| ModelError::Weights {
        path: path.to_path_buf(),
        reason,
    };
    let is_npz = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npz"));
    let tensors = if is_npz {
        Tensor::read_npz(path)
    } else {
        Tensor::read_safetensors(path)
    }
    .map_err(|e| {
        werr(format!(
            "cannot read ({e}); expected a .safetensors or .npz state_dict"
        ))
    })?;
    let vars = vs.variables();
    let mut loaded = std::collections::HashSet::new();
    tch::no_grad(|| -> Result<(), ModelError> {
        for (name, t) in &tensors {
            if name.starts_with("fc.") || name.ends_with("num_batches_tracked") {
                continue;
            }
            let target = format!("{prefix}.{name}");
            let Some(v) = vars.get(&target) else {
                return Err(werr(format!(
                    "'{name}' is not a variable of this backbone: the file holds another architecture"
                )));
            };
            if v.size() != t.size() {
                return Err(werr(format!(
                    "'{name}' has shape {:?} in the file but {:?} here (in_channels = 3 for ImageNet weights)",
                    t.size(),
                    v.size()
                )));
            }
            let mut v = v.shallow_clone();
            v.copy_(&t.to_kind(v.kind()).to_device(v.device()));
            loaded.insert(target);
        }
        Ok(())
    })?;
    let wanted = format!("{prefix}.");
    if let Some(missing) = vars
        .keys()
        .filter(|k| k.starts_with(&wanted))
        .find(|k| !loaded.contains(*k))
    {
        return Err(werr(format!(
            "'{}' is missing from the file",
            &missing[wanted.len()..]
        )));
    }
    Ok(loaded.len())
}

/// Row-wise L2 normalisation with a small floor on the norm.
pub fn l2_normalize(x: &Tensor) -> Tensor {
    let n = x
        .norm_scalaropt_dim(2, [-1i64].as_slice(), true)
        .clamp_min(1e-12);
    x / n
}
