//! Data parallelism inside the training loop: every rank starts from rank 0's variables, each
//! step's gradients are averaged over ranks (each rank's weighted by its share of the batch, so
//! that the step equals the one-process step on the whole batch), batch-norm buffers follow
//! rank 0's as in PyTorch DDP, and ranks agree before they act on what only one of them saw.
//! With a world of one every function returns at once.

use bcl_dist::Collective;
use tch::{Kind, Tensor};

use super::{Sgd, TrainError};

/// Gradients of a step: one per optimised variable, `None` where the variable got none.
pub(crate) type Grads = Vec<Option<Tensor>>;

/// The step's gradients averaged over ranks: rank r's scaled by `local / global` (its items
/// over the batch's), summed. `finite` says whether this rank's loss was finite; the result is
/// `None` when any rank's was not (every rank then stops).
pub(crate) fn average_gradients(
    dist: &dyn Collective,
    opt: &Sgd,
    local: usize,
    global: usize,
    finite: bool,
) -> Result<Option<Grads>, TrainError> {
    let grads = opt.gradients();
    if dist.world_size() == 1 {
        return Ok(finite.then_some(grads));
    }
    let shapes = opt.shapes();
    let device = opt.device();
    let w = local as f64 / global as f64;
    let mut parts: Vec<Tensor> = grads
        .iter()
        .zip(&shapes)
        .map(|(g, s)| match (g, finite) {
            (Some(g), true) => g.to_kind(Kind::Float).flatten(0, -1) * w,
            _ => Tensor::zeros([s.iter().product::<i64>()], (Kind::Float, device)),
        })
        .collect();
    // per variable: how many ranks have a gradient; last: how many ranks diverged
    let mut flags: Vec<f32> = grads
        .iter()
        .map(|g| (g.is_some() && finite) as u8 as f32)
        .collect();
    flags.push((!finite) as u8 as f32);
    parts.push(Tensor::from_slice(&flags).to_device(device));
    let mut flat = Tensor::cat(&parts, 0);
    dist.all_reduce_sum(&mut flat)?;
    let n = flags.len() as i64;
    let reduced_flags = Vec::<f32>::try_from(
        &flat
            .narrow(0, flat.size()[0] - n, n)
            .to_device(tch::Device::Cpu),
    )
    .map_err(|e| TrainError::Config(format!("gradient flags: {e}")))?;
    if reduced_flags[flags.len() - 1] > 0.0 {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(grads.len());
    let mut at = 0i64;
    for ((g, s), &has) in grads.iter().zip(&shapes).zip(&reduced_flags) {
        let numel = s.iter().product::<i64>();
        let kind = g.as_ref().map(Tensor::kind).unwrap_or(Kind::Float);
        out.push((has > 0.0).then(|| flat.narrow(0, at, numel).view(s.as_slice()).to_kind(kind)));
        at += numel;
    }
    Ok(Some(out))
}

/// The variables of `vs` that `keep` accepts, in name order (the same order on every rank; a
/// variable store's own map has none).
pub(crate) fn sorted_variables(
    vs: &tch::nn::VarStore,
    keep: impl Fn(&Tensor) -> bool,
) -> Vec<Tensor> {
    let mut vars: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| keep(t))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars.into_iter().map(|(_, t)| t).collect()
}

/// Replaces `tensors` on every rank by rank 0's (in place; one collective per kind).
pub(crate) fn broadcast_tensors(
    dist: &dyn Collective,
    tensors: &[Tensor],
) -> Result<(), TrainError> {
    if dist.world_size() == 1 || tensors.is_empty() {
        return Ok(());
    }
    let mut kinds: Vec<Kind> = tensors.iter().map(Tensor::kind).collect();
    kinds.sort_by_key(|k| format!("{k:?}"));
    kinds.dedup();
    for kind in kinds {
        let group: Vec<&Tensor> = tensors.iter().filter(|t| t.kind() == kind).collect();
        let mut flat = Tensor::cat(
            &group
                .iter()
                .map(|t| t.detach().flatten(0, -1))
                .collect::<Vec<_>>(),
            0,
        );
        dist.broadcast(&mut flat, 0)?;
        let mut at = 0;
        tch::no_grad(|| {
            for t in group {
                let n = t.numel() as i64;
                let mut dst = t.shallow_clone();
                dst.copy_(&flat.narrow(0, at, n).view(t.size().as_slice()));
                at += n;
            }
        });
    }
    Ok(())
}

/// [`bcl_dist::agree`] for training: another rank's failure is [`TrainError::Peer`].
pub(crate) fn agree<T>(dist: &dyn Collective, r: Result<T, TrainError>) -> Result<T, TrainError> {
    bcl_dist::agree(dist, r, |rank| TrainError::Peer { rank })
}

/// Checks that every rank holds the same `value` of `what` (e.g. the epochs a resumed
/// checkpoint has done): ranks that read different files must not train together.
pub(crate) fn same_everywhere(
    dist: &dyn Collective,
    value: i64,
    what: &str,
) -> Result<(), TrainError> {
    if dist.world_size() == 1 {
        return Ok(());
    }
    let all = dist.all_gather(&Tensor::from_slice(&[value]))?;
    let values: Vec<i64> = all.iter().map(|t| t.int64_value(&[0])).collect();
    if values.iter().any(|&v| v != values[0]) {
        return Err(TrainError::Config(format!(
            "the ranks disagree on {what} ({values:?} by rank): every rank must see the same output directory (a shared filesystem), the same data and the same settings"
        )));
    }
    Ok(())
}
