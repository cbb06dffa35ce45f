//! Collectives for data-parallel `bcl`: a [`Collective`] (all-reduce sum, all-gather,
//! broadcast, barrier) with a one-process implementation ([`Single`]) and one over PyTorch's own
//! distributed engine, c10d ([`ProcessGroup`]: Gloo on CPU, NCCL on GPU with the `nccl`
//! feature), joined from the launcher's environment ([`Rendezvous`]: torchrun, Slurm, or a
//! world of one).
//!
//! c10d is C++ with no C interface, so a small shim (src/shim.cpp, compiled by build.rs against
//! the libtorch that tch links) exposes the few calls used here; tensors cross as tch's
//! `at::Tensor*`.

mod c10d;
mod rendezvous;

pub use c10d::{Backend, GroupOptions, ProcessGroup};
pub use rendezvous::{first_host, Launcher, Rendezvous, StoreHost};

use std::sync::Arc;

use tch::{Kind, Tensor};

/// Errors of joining a process group and of its collectives.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// A launcher variable is malformed or inconsistent.
    #[error("environment variable {var}={value:?}: {reason}")]
    Env {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Joining the rendezvous store or creating the process group failed.
    #[error("rank {rank} of {world} could not join the process group at {addr}: {reason}")]
    Join {
        /// This process's rank.
        rank: usize,
        /// The world size.
        world: usize,
        /// The store's host:port.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// A collective failed and the heartbeats name the ranks that stopped.
    #[error(
        "{op} failed on rank {rank} of {world}: lost rank(s) {lost:?} ({how}); stopping ({reason})"
    )]
    Lost {
        /// The collective.
        op: &'static str,
        /// This process's rank.
        rank: usize,
        /// The world size.
        world: usize,
        /// The ranks that stopped.
        lost: Vec<usize>,
        /// How they were found lost.
        how: String,
        /// libtorch's message.
        reason: String,
    },
    /// A collective failed with every rank still alive (a timeout, a mismatch of shapes).
    #[error("{op} failed on rank {rank} of {world}: {reason}")]
    Collective {
        /// The collective.
        op: &'static str,
        /// This process's rank.
        rank: usize,
        /// The world size.
        world: usize,
        /// libtorch's message.
        reason: String,
    },
    /// A tensor that a collective cannot take.
    #[error("{op}: {reason}")]
    Tensor {
        /// The collective.
        op: &'static str,
        /// What is wrong with the tensor.
        reason: String,
    },
}

/// The collectives data-parallel training needs, identical in meaning on every rank: each is
/// called by every rank in the same order.
pub trait Collective: Send + Sync + std::fmt::Debug {
    /// This process's rank, `0..world_size()`.
    fn rank(&self) -> usize;
    /// The number of processes.
    fn world_size(&self) -> usize;
    /// Replaces `t` on every rank by the sum over ranks (same shape and kind everywhere).
    fn all_reduce_sum(&self, t: &mut Tensor) -> Result<(), DistError>;
    /// Every rank's `t` (same shape and kind everywhere), in rank order.
    fn all_gather(&self, t: &Tensor) -> Result<Vec<Tensor>, DistError>;
    /// Replaces `t` on every rank by rank `root`'s.
    fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<(), DistError>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<(), DistError>;
    /// Whether this rank writes files and shows progress (rank 0).
    fn is_primary(&self) -> bool {
        self.rank() == 0
    }
}

/// The world of one process: every collective is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _t: &mut Tensor) -> Result<(), DistError> {
        Ok(())
    }
    fn all_gather(&self, t: &Tensor) -> Result<Vec<Tensor>, DistError> {
        Ok(vec![t.copy()])
    }
    fn broadcast(&self, _t: &mut Tensor, _root: usize) -> Result<(), DistError> {
        Ok(())
    }
    fn barrier(&self) -> Result<(), DistError> {
        Ok(())
    }
}

/// The collective a run shares among its parts (cheap to clone): a world of one by default.
#[derive(Debug, Clone)]
pub struct World(Arc<dyn Collective>);

impl World {
    /// Shares `c`.
    pub fn new(c: impl Collective + 'static) -> Self {
        Self(Arc::new(c))
    }
}

impl Default for World {
    fn default() -> Self {
        Self(Arc::new(Single))
    }
}

impl std::ops::Deref for World {
    type Target = dyn Collective;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref()
    }
}

/// The contiguous share `[start, end)` of `len` items that `rank` of `world` takes: the shares
/// of consecutive ranks follow each other and differ in size by at most one.
pub fn shard(len: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    let world = world.max(1);
    (len * rank / world)..(len * (rank + 1) / world)
}

/// Gathers every rank's rows of `t` (first dimensions may differ between ranks; the others and
/// the kind must agree) and concatenates them in rank order.
pub fn all_gather_rows(c: &dyn Collective, t: &Tensor) -> Result<Tensor, DistError> {
    if c.world_size() == 1 {
        return Ok(t.shallow_clone());
    }
    let size = t.size();
    let rows = *size.first().ok_or(DistError::Tensor {
        op: "all_gather_rows",
        reason: "a scalar has no rows".into(),
    })?;
    let counts = c.all_gather(&Tensor::from_slice(&[rows]))?;
    let counts: Vec<i64> = counts.iter().map(|n| n.int64_value(&[0])).collect();
    let most = counts.iter().copied().max().unwrap_or(0);
    let mut padded_size = size.clone();
    padded_size[0] = most;
    let padded = Tensor::zeros(&padded_size, (t.kind(), t.device()));
    if rows > 0 {
        padded.narrow(0, 0, rows).copy_(t);
    }
    let parts = c.all_gather(&padded)?;
    let kept: Vec<Tensor> = parts
        .iter()
        .zip(&counts)
        .map(|(p, &n)| p.narrow(0, 0, n))
        .collect();
    Ok(Tensor::cat(&kept, 0))
}

/// Rows computed for `positions` and shared among the ranks of `c`: each rank calls `compute`
/// once with its contiguous share (see [`shard`]; possibly empty, when `compute` returns
/// tensors of zero rows with the right trailing shape), and every rank gets each returned
/// tensor whole, in `positions` order. The one way bcl embeds items across ranks: the old
/// model's training features, a refresh bank, an evaluation's test set.
pub fn share_rows<const N: usize, E: From<DistError>>(
    c: &dyn Collective,
    positions: &[usize],
    compute: impl FnOnce(&[usize]) -> Result<[Tensor; N], E>,
) -> Result<[Tensor; N], E> {
    let mine = &positions[shard(positions.len(), c.rank(), c.world_size())];
    let mut out = compute(mine)?;
    if c.world_size() > 1 {
        for t in out.iter_mut() {
            *t = all_gather_rows(c, t)?;
        }
    }
    Ok(out)
}

/// Rank 0's bytes on every rank (`bytes` is read on rank 0 only).
pub fn broadcast_bytes(c: &dyn Collective, bytes: &[u8]) -> Result<Vec<u8>, DistError> {
    if c.world_size() == 1 {
        return Ok(bytes.to_vec());
    }
    let mut len = Tensor::from_slice(&[bytes.len() as i64]);
    c.broadcast(&mut len, 0)?;
    let n = len.int64_value(&[0]) as usize;
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut buf = if c.rank() == 0 {
        Tensor::from_slice(bytes)
    } else {
        Tensor::zeros([n as i64], (Kind::Uint8, tch::Device::Cpu))
    };
    c.broadcast(&mut buf, 0)?;
    Vec::<u8>::try_from(&buf).map_err(|e| DistError::Tensor {
        op: "broadcast_bytes",
        reason: e.to_string(),
    })
}

/// The first rank (in rank order) for which `failed` is true, on every rank: lets the ranks
/// agree to stop together when a step failed on some of them only.
pub fn first_failed(c: &dyn Collective, failed: bool) -> Result<Option<usize>, DistError> {
    if c.world_size() == 1 {
        return Ok(failed.then_some(0));
    }
    let mut flags = Tensor::zeros([c.world_size() as i64], (Kind::Float, tch::Device::Cpu));
    if failed {
        let _ = flags.get(c.rank() as i64).fill_(1.0);
    }
    c.all_reduce_sum(&mut flags)?;
    let flags = Vec::<f32>::try_from(&flags).map_err(|e| DistError::Tensor {
        op: "first_failed",
        reason: e.to_string(),
    })?;
    Ok(flags.iter().position(|&f| f > 0.0))
}

/// Every rank's outcome of a step that may fail on some ranks only (a check of a directory, a
/// file read): this rank's own error, else `peer(rank)` naming the first rank that failed, so
/// that no rank goes on alone. A failing collective is turned into `E` by `From`.
pub fn agree<T, E: From<DistError>>(
    c: &dyn Collective,
    r: Result<T, E>,
    peer: impl FnOnce(usize) -> E,
) -> Result<T, E> {
    if c.world_size() == 1 {
        return r;
    }
    let first = first_failed(c, r.is_err());
    match (r, first) {
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e.into()),
        (Ok(_), Ok(Some(rank))) => Err(peer(rank)),
        (Ok(v), Ok(None)) => Ok(v),
    }
}
