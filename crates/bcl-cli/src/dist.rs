//! The process group of a launched job: joined once from the launcher's environment (torchrun,
//! Slurm; a world of one otherwise), with the device each rank uses.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};
use bcl::dist::{Backend, GroupOptions, ProcessGroup, Rendezvous, World};
use tch::Device;

/// The group of this process, joined at the first call.
static WORLD: OnceLock<World> = OnceLock::new();

/// How long a collective may wait for the other ranks (BCL_DIST_TIMEOUT, in seconds).
fn timeout() -> Result<Duration> {
    match std::env::var("BCL_DIST_TIMEOUT") {
        Err(_) => Ok(Duration::from_secs(300)),
        Ok(v) => {
            let s: f64 = v
                .trim()
                .parse()
                .ok()
                .filter(|s: &f64| *s > 0.0)
                .with_context(|| {
                    format!("BCL_DIST_TIMEOUT={v:?}: expected a number of seconds > 0")
                })?;
            Ok(Duration::from_secs_f64(s))
        }
    }
}

/// This rank's device: a launched rank on CUDA takes the GPU of its local rank (unless the
/// user named one with cuda:N).
pub fn rank_device(requested: &str, device: Device, rdv: &Rendezvous) -> Device {
    match device {
        Device::Cuda(_) if rdv.is_distributed() && !requested.starts_with("cuda:") => {
            Device::Cuda(rdv.local_rank % tch::Cuda::device_count().max(1) as usize)
        }
        d => d,
    }
}

/// The process group of this launch and this rank's device (see [`rank_device`]); NCCL for
/// CUDA where the binary was built with it, Gloo otherwise.
pub fn world(requested: &str, device: Device) -> Result<(World, Device)> {
    let rdv = Rendezvous::from_env()?;
    let device = rank_device(requested, device, &rdv);
    if let Some(w) = WORLD.get() {
        return Ok((w.clone(), device));
    }
    if !rdv.is_distributed() {
        return Ok((WORLD.get_or_init(World::default).clone(), device));
    }
    let backend = match device {
        Device::Cuda(_) if cfg!(feature = "nccl") => Backend::Nccl,
        _ => Backend::Gloo,
    };
    let opts = GroupOptions {
        backend,
        timeout: timeout()?,
        device: Some(device).filter(|d| d.is_cuda()),
        ..Default::default()
    };
    let pg = ProcessGroup::join(&rdv, opts)?;
    Ok((WORLD.get_or_init(|| World::new(pg)).clone(), device))
}

/// Whether this process is rank 0 of its launch (or alone): the one that prints results.
pub fn is_primary() -> bool {
    Rendezvous::from_env().map_or(true, |r| r.rank == 0)
}

/// Refuses a command that runs on one process when a launcher started several: each copy would
/// write the same files.
pub fn refuse_launch() -> Result<()> {
    let rdv = Rendezvous::from_env()?;
    if rdv.is_distributed() {
        anyhow::bail!(
            "this command runs on one process, but a launcher started {} (rank {}); run it without torchrun/srun (the data-parallel commands are train-old, train-new, eval and gallery build)",
            rdv.world_size,
            rdv.rank
        );
    }
    Ok(())
}
