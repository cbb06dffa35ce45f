//! How a network runs on its device, apart from what it computes: bfloat16 autocast (mixed
//! precision: the network's forward pass in bfloat16 where libtorch's autocast lists an op as
//! safe, weights, gradients, optimiser and losses in float32) and the channels-last (NHWC)
//! layout of activations and convolution weights. Both are settings of training
//! (`[old.exec]`/`[new.exec]`) and of embedding (`Embedder::with_exec`), meant for GPUs
//! (docs/performance.md says what was measured where). libtorch's autocast to bfloat16 and its
//! memory formats are not in tch's API, so a few lines of C++ (`csrc/exec.cpp`, compiled by
//! build.rs against the same libtorch) call them.

use std::ffi::{c_char, c_int, CStr};

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

/// Mixed precision of a network's forward pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Autocast {
    /// float32 throughout.
    #[default]
    Off,
    /// libtorch's autocast to bfloat16 (CPU or CUDA).
    Bf16,
}

impl Autocast {
    /// Every setting, in the order help lists them.
    pub const ALL: [Autocast; 2] = [Autocast::Off, Autocast::Bf16];

    /// The setting's name, as configurations and flags write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Autocast::Off => "off",
            Autocast::Bf16 => "bf16",
        }
    }

    /// What the setting does, in one line.
    pub fn description(self) -> &'static str {
        match self {
            Autocast::Off => "float32 throughout",
            Autocast::Bf16 => "libtorch's autocast to bfloat16 (weights and losses stay float32)",
        }
    }
}

impl std::str::FromStr for Autocast {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown autocast setting {s:?}: expected off or bf16"))
    }
}

/// The execution settings of a network (they change speed and rounding, not the model: the
/// weights stay float32 and a model card does not record them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecConfig {
    /// Mixed precision of the forward pass.
    pub autocast: Autocast,
    /// Activations and 4-D weights in the channels-last layout.
    pub channels_last: bool,
}

/// A failure inside libtorch's autocast or layout calls.
#[derive(Debug, thiserror::Error)]
#[error("libtorch: {0}")]
pub struct ExecError(String);

mod ffi {
    use super::*;
    unsafe extern "C" {
        pub fn bcl_exec_autocast_enter(
            cuda: c_int,
            prev: *mut c_int,
            dtype: *mut c_int,
        ) -> *mut c_char;
        pub fn bcl_exec_autocast_exit(cuda: c_int, prev: c_int, dtype: c_int) -> *mut c_char;
        pub fn bcl_exec_channels_last(
            t: *const torch_sys::C_tensor,
            out: *mut *mut torch_sys::C_tensor,
        ) -> *mut c_char;
        pub fn bcl_exec_is_channels_last(t: *const torch_sys::C_tensor) -> c_int;
        pub fn bcl_exec_free(p: *mut c_char);
    }
}

/// The shim's error message, if it returned one (freed here).
fn check(msg: *mut c_char) -> Result<(), ExecError> {
    if msg.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string the shim allocated with malloc.
    let s = unsafe { CStr::from_ptr(msg) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: freed once, by the shim's own free.
    unsafe { ffi::bcl_exec_free(msg) };
    Err(ExecError(s))
}

/// `t`'s values in the channels-last layout (a 4-D tensor; others are returned as they are).
pub fn channels_last(t: &Tensor) -> Result<Tensor, ExecError> {
    if t.dim() != 4 {
        return Ok(t.shallow_clone());
    }
    let mut out = std::ptr::null_mut();
    // SAFETY: `t` is a live tensor; on success the shim hands over a new at::Tensor that
    // `Tensor::from_ptr` owns from here on.
    unsafe {
        check(ffi::bcl_exec_channels_last(t.as_ptr(), &mut out))?;
        Ok(Tensor::from_ptr(out))
    }
}

/// Whether `t` is laid out channels-last.
pub fn is_channels_last(t: &Tensor) -> bool {
    // SAFETY: `t` is a live tensor; the call only reads its strides.
    unsafe { ffi::bcl_exec_is_channels_last(t.as_ptr()) == 1 }
}

/// Restores the thread's autocast state when dropped (also when the region panics).
struct AutocastGuard {
    cuda: c_int,
    prev: c_int,
    dtype: c_int,
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        // SAFETY: undoes the matching enter on this thread.
        let r = check(unsafe { ffi::bcl_exec_autocast_exit(self.cuda, self.prev, self.dtype) });
        if let Err(e) = r {
            tracing::error!("leaving autocast: {e}");
        }
    }
}

impl ExecConfig {
    /// Whether these are the defaults (float32, contiguous): nothing to do.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Runs `f` (a forward pass on `device`) under this configuration's autocast.
    pub fn run<T>(&self, device: Device, f: impl FnOnce() -> T) -> Result<T, ExecError> {
        if self.autocast == Autocast::Off {
            return Ok(f());
        }
        let cuda = c_int::from(device.is_cuda());
        let (mut prev, mut dtype) = (0, 0);
        // SAFETY: out-pointers to two live ints; the guard undoes it on this thread.
        check(unsafe { ffi::bcl_exec_autocast_enter(cuda, &mut prev, &mut dtype) })?;
        let _guard = AutocastGuard { cuda, prev, dtype };
        Ok(f())
    }

    /// A batch of images laid out for the network (channels-last when set).
    pub fn input(&self, x: &Tensor) -> Result<Tensor, ExecError> {
        match self.channels_last {
            true => channels_last(x),
            false => Ok(x.shallow_clone()),
        }
    }

    /// Lays the 4-D variables of `vs` (convolution weights) out channels-last when set, in
    /// place (as `model.to(memory_format=torch.channels_last)`); values are unchanged.
    pub fn prepare(&self, vs: &nn::VarStore) -> Result<(), ExecError> {
        if !self.channels_last {
            return Ok(());
        }
        tch::no_grad(|| {
            for (_, mut v) in vs.variables() {
                if v.dim() == 4 {
                    let cl = channels_last(&v)?;
                    v.set_data(&cl);
                }
            }
            Ok(())
        })
    }
}
