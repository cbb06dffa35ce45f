//! The optimiser: SGD with momentum and PyTorch-style weight decay, with its momentum buffers
//! exposed for checkpoints.

use tch::nn;
use tch::{Device, Tensor};

/// SGD with momentum and decoupled-from-nothing (PyTorch-style) weight decay.
///
/// Written here rather than using `tch::nn::Sgd` because a resumable checkpoint needs the
/// momentum buffers, which tch's optimiser wrapper does not expose.
pub struct Sgd {
    params: Vec<(String, Tensor)>,
    bufs: Vec<Option<Tensor>>,
    momentum: f64,
    weight_decay: f64,
}

impl Sgd {
    /// An optimiser over the trainable variables of `vs`.
    pub fn new(vs: &nn::VarStore, momentum: f64, weight_decay: f64) -> Self {
        let mut params: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let bufs = params.iter().map(|_| None).collect();
        Self {
            params,
            bufs,
            momentum,
            weight_decay,
        }
    }

    /// Clears the gradients.
    pub fn zero_grad(&mut self) {
        for (_, p) in self.params.iter_mut() {
            p.zero_grad();
        }
    }

    /// One update with learning rate `lr` from the variables' own gradients.
    pub fn step(&mut self, lr: f64) {
        let grads = self.gradients();
        self.step_with(lr, grads);
    }

    /// The variables' gradients, in the optimiser's order (`None` where a variable has none).
    pub fn gradients(&self) -> Vec<Option<Tensor>> {
        self.params
            .iter()
            .map(|(_, p)| Some(p.grad()).filter(Tensor::defined))
            .collect()
    }

    /// The variables' shapes, in the optimiser's order.
    pub fn shapes(&self) -> Vec<Vec<i64>> {
        self.params.iter().map(|(_, p)| p.size()).collect()
    }

    /// Where the variables live.
    pub fn device(&self) -> Device {
        self.params
            .first()
            .map(|(_, p)| p.device())
            .unwrap_or(Device::Cpu)
    }

    /// One update with learning rate `lr` from `grads` (one per variable, in the optimiser's
    /// order; e.g. averaged over ranks): `buf = μ·buf + (g + wd·w)`, `w -= lr·buf`.
    pub fn step_with(&mut self, lr: f64, grads: Vec<Option<Tensor>>) {
        tch::no_grad(|| {
            for (((_, p), buf), g) in self.params.iter_mut().zip(self.bufs.iter_mut()).zip(grads) {
                let Some(g) = g else {
                    continue;
                };
                let d = if self.weight_decay > 0.0 {
                    &g + &*p * self.weight_decay
                } else {
                    g
                };
                let b = match buf.take() {
                    // a copy: without weight decay `d` is the gradient itself, which the next
                    // zero_grad clears in place
                    None => d.copy(),
                    Some(mut b) => {
                        let _ = b.g_mul_scalar_(self.momentum).g_add_(&d);
                        b
                    }
                };
                let _ = p.g_sub_(&(&b * lr));
                *buf = Some(b);
            }
        });
    }

    /// The momentum buffers by variable name, for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.bufs)
            .filter_map(|((n, _), b)| b.as_ref().map(|b| (n.clone(), b.shallow_clone())))
            .collect()
    }

    /// Restores momentum buffers saved by [`Sgd::state`].
    pub fn load_state(&mut self, state: Vec<(String, Tensor)>, device: Device) {
        let map: std::collections::HashMap<String, Tensor> = state.into_iter().collect();
        for ((n, _), b) in self.params.iter().zip(self.bufs.iter_mut()) {
            *b = map.get(n).map(|t| t.to_device(device));
        }
    }
}
