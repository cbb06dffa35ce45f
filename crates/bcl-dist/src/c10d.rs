//! The c10d process group: the shim's C functions made safe, a heartbeat per rank in the
//! rendezvous store, and errors that name the ranks that stopped.

use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tch::{Device, Tensor};
use torch_sys::C_tensor;

use crate::rendezvous::{Rendezvous, StoreHost};
use crate::{Collective, DistError};

#[repr(C)]
struct RawPg {
    _private: [u8; 0],
}

extern "C" {
    fn bcl_dist_string_free(s: *mut c_char);
    #[allow(clippy::too_many_arguments)]
    fn bcl_dist_new(
        host: *const c_char,
        port: u16,
        is_server: c_int,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        prefix: *const c_char,
        backend: c_int,
        out: *mut *mut RawPg,
        err: *mut *mut c_char,
    ) -> c_int;
    fn bcl_dist_free(pg: *mut RawPg);
    fn bcl_dist_all_reduce_sum(pg: *mut RawPg, t: *mut C_tensor, err: *mut *mut c_char) -> c_int;
    fn bcl_dist_all_gather(
        pg: *mut RawPg,
        input: *mut C_tensor,
        outs: *const *mut C_tensor,
        world: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn bcl_dist_broadcast(
        pg: *mut RawPg,
        t: *mut C_tensor,
        root: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn bcl_dist_barrier(pg: *mut RawPg, err: *mut *mut c_char) -> c_int;
    fn bcl_dist_store_add(
        pg: *mut RawPg,
        key: *const c_char,
        delta: i64,
        out: *mut i64,
        err: *mut *mut c_char,
    ) -> c_int;
}

/// Runs a shim call; its error text on failure.
fn call(f: impl FnOnce(*mut *mut c_char) -> c_int) -> Result<(), String> {
    let mut err: *mut c_char = std::ptr::null_mut();
    if f(&mut err) == 0 {
        return Ok(());
    }
    if err.is_null() {
        return Err("c10d failed without a message".into());
    }
    // SAFETY: the shim returns a malloc'd, NUL-terminated copy of the exception's text.
    let text = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: freed once, by the shim's own allocator.
    unsafe { bcl_dist_string_free(err) };
    // c10d's messages carry the C++ source location and a backtrace; keep the message.
    let message = text
        .split("Exception raised from")
        .next()
        .unwrap_or_default();
    Err(message.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// The communication engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Gloo: CPU tensors (and CUDA tensors through host copies).
    Gloo,
    /// NCCL: CUDA tensors (the `nccl` feature).
    Nccl,
}

/// Settings of a process group.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// The engine.
    pub backend: Backend,
    /// How long a collective (and joining) may wait for the other ranks.
    pub timeout: Duration,
    /// How often each rank proves it is alive in the store.
    pub heartbeat: Duration,
    /// NCCL: the GPU this rank's collectives run on (CPU tensors are copied there and back);
    /// `None` for the GPU of its local rank.
    pub device: Option<Device>,
}

impl Default for GroupOptions {
    fn default() -> Self {
        Self {
            backend: Backend::Gloo,
            timeout: Duration::from_secs(300),
            heartbeat: Duration::from_millis(500),
            device: None,
        }
    }
}

/// A raw pointer the heartbeat thread may use: the shim's store calls on it go through a
/// connection of their own, which c10d's TCPStore locks.
#[derive(Clone, Copy)]
struct PgPtr(*mut RawPg);
// SAFETY: see above; the pointer outlives the heartbeat thread (joined before it is freed).
unsafe impl Send for PgPtr {}
unsafe impl Sync for PgPtr {}

/// A c10d process group joined through the rendezvous store.
pub struct ProcessGroup {
    pg: Mutex<PgPtr>,
    rdv: Rendezvous,
    opts: GroupOptions,
    /// NCCL takes CUDA tensors only: CPU tensors (flags, counts, the card's bytes) are staged
    /// on this GPU; `None` for Gloo, which takes both.
    stage: Option<Device>,
    stop: Arc<AtomicBool>,
    heartbeat: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("rank", &self.rdv.rank)
            .field("world_size", &self.rdv.world_size)
            .field("backend", &self.opts.backend)
            .finish()
    }
}

fn store_add(pg: PgPtr, key: &str, delta: i64) -> Result<i64, String> {
    let key = CString::new(key).map_err(|e| e.to_string())?;
    let mut out = 0i64;
    // SAFETY: pg is live (see PgPtr); key and out outlive the call.
    call(|err| unsafe { bcl_dist_store_add(pg.0, key.as_ptr(), delta, &mut out, err) })?;
    Ok(out)
}

impl ProcessGroup {
    /// Joins the group that `rdv` describes (rank 0 serves the store unless torchrun's agent
    /// does); returns once every rank has joined, or an error after `opts.timeout`.
    pub fn join(rdv: &Rendezvous, opts: GroupOptions) -> Result<Self, DistError> {
        let join_err = |reason: String| DistError::Join {
            rank: rdv.rank,
            world: rdv.world_size,
            addr: format!("{}:{}", rdv.addr, rdv.port),
            reason,
        };
        if opts.backend == Backend::Nccl && !tch::Cuda::is_available() {
            return Err(join_err(
                "the NCCL backend needs a GPU and none is visible here (use Gloo on CPU)".into(),
            ));
        }
        let host = CString::new(rdv.addr.as_str()).map_err(|e| join_err(e.to_string()))?;
        let prefix = CString::new(format!("bcl/attempt_{}/", rdv.attempt))
            .map_err(|e| join_err(e.to_string()))?;
        let is_server = rdv.store == StoreHost::Rank0 && rdv.rank == 0;
        let mut raw: *mut RawPg = std::ptr::null_mut();
        // SAFETY: the strings outlive the call; raw receives an owned pointer on success.
        call(|err| unsafe {
            bcl_dist_new(
                host.as_ptr(),
                rdv.port,
                is_server as c_int,
                rdv.rank as c_int,
                rdv.world_size as c_int,
                opts.timeout.as_millis() as i64,
                prefix.as_ptr(),
                matches!(opts.backend, Backend::Nccl) as c_int,
                &mut raw,
                err,
            )
        })
        .map_err(join_err)?;
        let pg = PgPtr(raw);
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, key, every) = (stop.clone(), format!("hb/{}", rdv.rank), opts.heartbeat);
        let heartbeat = std::thread::Builder::new()
            .name("bcl-dist-heartbeat".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    let _ = store_add(pg, &key, 1);
                    std::thread::sleep(every);
                }
            })
            .map_err(|e| join_err(format!("could not start the heartbeat thread: {e}")))?;
        tracing::info!(rank = rdv.rank, world = rdv.world_size, addr = %rdv.addr, port = rdv.port, "joined the process group");
        let stage = (opts.backend == Backend::Nccl).then(|| {
            opts.device.unwrap_or_else(|| {
                Device::Cuda(rdv.local_rank % tch::Cuda::device_count().max(1) as usize)
            })
        });
        Ok(Self {
            pg: Mutex::new(pg),
            rdv: rdv.clone(),
            opts,
            stage,
            stop,
            heartbeat: Some(heartbeat),
        })
    }

    /// The rendezvous this group was joined with.
    pub fn rendezvous(&self) -> &Rendezvous {
        &self.rdv
    }

    /// Runs one collective under the group's lock; a failure is diagnosed by the heartbeats.
    fn run(
        &self,
        op: &'static str,
        f: impl FnOnce(*mut RawPg, *mut *mut c_char) -> c_int,
    ) -> Result<(), DistError> {
        let pg = *self.pg.lock().unwrap_or_else(|e| e.into_inner());
        call(|err| f(pg.0, err)).map_err(|reason| self.diagnose(op, pg, reason))
    }

    /// Names the ranks whose heartbeat stopped (or the store's host, when the store is gone).
    fn diagnose(&self, op: &'static str, pg: PgPtr, reason: String) -> DistError {
        let (rank, world) = (self.rdv.rank, self.rdv.world_size);
        let read = |r: usize| store_add(pg, &format!("hb/{r}"), 0);
        let wait = (self.opts.heartbeat * 5).max(Duration::from_secs(2));
        let before: Result<Vec<i64>, String> = (0..world).map(read).collect();
        std::thread::sleep(wait);
        let after: Result<Vec<i64>, String> = (0..world).map(read).collect();
        match (before, after) {
            (Ok(b), Ok(a)) => {
                let lost: Vec<usize> = (0..world).filter(|&r| r != rank && a[r] == b[r]).collect();
                if lost.is_empty() {
                    return DistError::Collective {
                        op,
                        rank,
                        world,
                        reason,
                    };
                }
                DistError::Lost {
                    op,
                    rank,
                    world,
                    lost,
                    how: format!("no heartbeat for {:.1} s", wait.as_secs_f64()),
                    reason,
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                let (lost, host) = match self.rdv.store {
                    StoreHost::Rank0 => (vec![0], "rank 0"),
                    StoreHost::Agent => (vec![], "torchrun's agent"),
                };
                DistError::Lost {
                    op,
                    rank,
                    world,
                    lost,
                    how: format!(
                        "the rendezvous store at {}:{}, served by {host}, stopped answering: {e}",
                        self.rdv.addr, self.rdv.port
                    ),
                    reason,
                }
            }
        }
    }
}

impl ProcessGroup {
    /// `t` where the backend takes it: on the staging GPU when there is one and `t` is on
    /// the CPU, else `t` itself (shallow).
    fn on_stage(&self, t: &Tensor) -> Tensor {
        match self.stage {
            Some(dev) if t.device() == Device::Cpu => t.to_device(dev),
            _ => t.shallow_clone(),
        }
    }

    /// Runs the in-place collective `f` on `t`, through the staging GPU when `t` must go
    /// there.
    fn staged(
        &self,
        t: &mut Tensor,
        f: impl FnOnce(&mut Tensor) -> Result<(), DistError>,
    ) -> Result<(), DistError> {
        let mut s = self.on_stage(t);
        f(&mut s)?;
        if s.device() != t.device() {
            t.copy_(&s);
        }
        Ok(())
    }
}

/// The tensor's C pointer, after checking a collective can take it.
fn checked(op: &'static str, t: &mut Tensor) -> Result<*mut C_tensor, DistError> {
    if !t.defined() || !t.is_contiguous() {
        return Err(DistError::Tensor {
            op,
            reason: "the tensor must be defined and contiguous".into(),
        });
    }
    Ok(t.as_mut_ptr())
}

impl Collective for ProcessGroup {
    fn rank(&self) -> usize {
        self.rdv.rank
    }
    fn world_size(&self) -> usize {
        self.rdv.world_size
    }
    fn all_reduce_sum(&self, t: &mut Tensor) -> Result<(), DistError> {
        self.staged(t, |t| {
            let p = checked("all_reduce", t)?;
            // SAFETY: p points to a live tensor for the call's duration.
            self.run("all_reduce", |pg, err| unsafe {
                bcl_dist_all_reduce_sum(pg, p, err)
            })
        })
    }
    fn all_gather(&self, t: &Tensor) -> Result<Vec<Tensor>, DistError> {
        let mut input = self.on_stage(t);
        let p = checked("all_gather", &mut input)?;
        let mut outs: Vec<Tensor> = (0..self.world_size()).map(|_| input.empty_like()).collect();
        let ptrs: Vec<*mut C_tensor> = outs.iter_mut().map(|o| o.as_mut_ptr()).collect();
        // SAFETY: p and every output pointer refer to live tensors for the call's duration.
        self.run("all_gather", |pg, err| unsafe {
            bcl_dist_all_gather(pg, p, ptrs.as_ptr(), ptrs.len() as c_int, err)
        })?;
        Ok(outs.into_iter().map(|o| o.to_device(t.device())).collect())
    }
    fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<(), DistError> {
        if root >= self.world_size() {
            return Err(DistError::Tensor {
                op: "broadcast",
                reason: format!("root {root} is not a rank of {}", self.world_size()),
            });
        }
        self.staged(t, |t| {
            let p = checked("broadcast", t)?;
            // SAFETY: p points to a live tensor for the call's duration.
            self.run("broadcast", |pg, err| unsafe {
                bcl_dist_broadcast(pg, p, root as c_int, err)
            })
        })
    }
    fn barrier(&self) -> Result<(), DistError> {
        // SAFETY: the group is live.
        self.run("barrier", |pg, err| unsafe { bcl_dist_barrier(pg, err) })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
        let pg = self.pg.get_mut().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the heartbeat thread has stopped; nothing else holds the pointer.
        unsafe { bcl_dist_free(pg.0) };
    }
}
