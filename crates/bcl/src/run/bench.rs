//! The training-step bench: the configured model's forward, head loss, backward and SGD update
//! on a fixed random batch, the same step as `bench/torch_reference.py` times in PyTorch; the
//! ODPP refresh bench in `odpp`.

pub mod odpp;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::{RunConfig, RunError};

/// Result of [`bench_step`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResult {
    /// Implementation measured.
    pub r#impl: String,
    /// libtorch intra-op threads.
    pub threads: i32,
    /// Model width.
    pub width: i64,
    /// Blocks per stage.
    pub blocks: i64,
    /// Embedding dimension.
    pub dim: i64,
    /// Images per step.
    pub batch: i64,
    /// Timed steps.
    pub steps: usize,
    /// Wall time of the timed steps.
    pub seconds: f64,
    /// Training throughput.
    pub images_per_s: f64,
    /// The execution settings measured (`[old.exec]`).
    pub exec: crate::exec::ExecConfig,
}

/// Times the training step of the configured model (forward, head loss, backward, SGD update)
/// on a fixed random batch, the same step as `bench/torch_reference.py`; with `embed`, the
/// embedding pass of evaluation instead (eval mode, no gradient: `bench/torch_reference.py
/// --embed` times PyTorch's `inference_mode` loop).
pub fn bench_step(
    cfg: &RunConfig,
    batch: i64,
    size: i64,
    steps: usize,
    warmup: usize,
    device: Device,
    embed: bool,
) -> Result<BenchResult, RunError> {
    use crate::loss::ClassifierHead;
    use crate::model::EmbeddingNet;
    use crate::train::Sgd;
    if batch < 1 || steps < 1 || size < 8 {
        return Err(RunError::Invalid(
            "the batch and the step count must be >= 1 and the image size >= 8".into(),
        ));
    }
    cfg.model.validate()?;
    tch::manual_seed(0);
    let vs = tch::nn::VarStore::new(device);
    let net = EmbeddingNet::new(&(vs.root() / "net"), &cfg.model);
    let classes = cfg.data.classes as i64;
    let head = ClassifierHead::new(
        &(vs.root() / ClassifierHead::PATH),
        &cfg.old.head,
        cfg.model.dim,
        classes,
    );
    let exec = cfg.old.exec;
    exec.prepare(&vs)?;
    let mut opt = Sgd::new(&vs, cfg.old.momentum, cfg.old.weight_decay);
    let x = Tensor::randn(
        [batch, cfg.model.in_channels, size, size],
        (Kind::Float, device),
    );
    let x = exec.input(&x)?;
    let y = Tensor::randint(classes, [batch], (Kind::Int64, device));
    // the training loop's and `Embedder::embed_batch`'s forward, under the execution settings
    // (the batch is laid out once, as the PyTorch reference does; the call's layout is then a
    // no-op)
    let mut step = || -> Result<(), crate::exec::ExecError> {
        if embed {
            let _ = tch::no_grad(|| net.forward_exec(&x, false, &exec))?;
            return Ok(());
        }
        opt.zero_grad();
        let f = net.forward_exec(&x, true, &exec)?;
        let loss = head.loss(&f, &y);
        loss.backward();
        opt.step(0.05);
        Ok(())
    };
    for _ in 0..warmup {
        step()?;
    }
    if let Device::Cuda(_) = device {
        tch::Cuda::synchronize(0);
    }
    let t0 = std::time::Instant::now();
    for _ in 0..steps {
        step()?;
    }
    if let Device::Cuda(_) = device {
        tch::Cuda::synchronize(0);
    }
    let seconds = t0.elapsed().as_secs_f64();
    Ok(BenchResult {
        r#impl: if embed {
            "bcl (tch) embed"
        } else {
            "bcl (tch)"
        }
        .into(),
        threads: tch::get_num_threads(),
        width: cfg.model.width,
        blocks: cfg.model.blocks,
        dim: cfg.model.dim,
        batch,
        steps,
        seconds,
        images_per_s: (steps as i64 * batch) as f64 / seconds,
        exec,
    })
}

/// What data parallelism moves per step for one model and batch (see [`dist_traffic`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DistTraffic {
    /// Ranks.
    pub ranks: usize,
    /// Trainable values (backbone, projection and classifier).
    pub params: i64,
    /// Values of the batch-norm buffers.
    pub buffer_values: i64,
    /// Bytes of the all-reduced gradient buffer (float32, one flag per variable beside).
    pub allreduce_bytes: i64,
    /// Bytes of the buffers broadcast from rank 0 before each step.
    pub broadcast_bytes: i64,
    /// Bytes of the gathered batch features and labels (every rank receives all).
    pub gather_bytes: i64,
    /// Bytes one rank sends per step: a ring all-reduce sends 2(W-1)/W of the buffer, the
    /// broadcast's root (W-1) copies, the all-gather (W-1)/W of the batch's features.
    pub sent_per_rank_bytes: i64,
}

/// The bytes a data-parallel step moves for `model` with a `classes`-way `head` and a global
/// batch of `batch` on `ranks` ranks: counted from the variables the model actually builds.
pub fn dist_traffic(
    model: &crate::model::ModelConfig,
    head: &crate::loss::HeadConfig,
    classes: i64,
    batch: i64,
    ranks: usize,
) -> Result<DistTraffic, RunError> {
    model.validate()?;
    if classes < 2 || batch < 1 || ranks < 1 {
        return Err(RunError::Invalid(
            "need at least 2 classes, a batch of 1 and 1 rank".into(),
        ));
    }
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let _net = crate::model::EmbeddingNet::new(&(vs.root() / "net"), model);
    let _head = crate::loss::ClassifierHead::new(
        &(vs.root() / crate::loss::ClassifierHead::PATH),
        head,
        model.dim,
        classes,
    );
    let vars = vs.variables();
    let count = |trainable: bool| -> i64 {
        vars.values()
            .filter(|t| t.requires_grad() == trainable)
            .map(|t| t.numel() as i64)
            .sum()
    };
    let (params, buffer_values) = (count(true), count(false));
    let n_vars = vars.values().filter(|t| t.requires_grad()).count() as i64;
    let w = ranks as i64;
    let allreduce_bytes = 4 * (params + n_vars + 1);
    let broadcast_bytes = 4 * buffer_values;
    let gather_bytes = 4 * batch * model.dim + 8 * batch;
    let sent_per_rank_bytes = if ranks == 1 {
        0
    } else {
        2 * (w - 1) * allreduce_bytes / w + (w - 1) * broadcast_bytes + (w - 1) * gather_bytes / w
    };
    Ok(DistTraffic {
        ranks,
        params,
        buffer_values,
        allreduce_bytes,
        broadcast_bytes,
        gather_bytes,
        sent_per_rank_bytes,
    })
}
