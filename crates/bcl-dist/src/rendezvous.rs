//! Where a process stands in its job, read from the launcher's environment: torchrun's
//! variables first (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT,
//! TORCHELASTIC_USE_AGENT_STORE), Slurm's next (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, the
//! first host of the step's node list), and a world of one when neither is set.

use crate::DistError;

/// The port of the rendezvous store when the launcher names none (torchrun's default).
pub const DEFAULT_PORT: u16 = 29500;

/// Which launcher set the variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// No launcher: one process.
    None,
    /// torchrun (or anything that sets RANK and WORLD_SIZE the same way: Kubeflow's PyTorchJob).
    Torchrun,
    /// srun.
    Slurm,
}

/// Who serves the rendezvous store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreHost {
    /// Rank 0 hosts it (Slurm, a plain environment).
    Rank0,
    /// torchrun's elastic agent hosts it; every worker is a client.
    Agent,
}

/// A process's place in its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    /// Who launched it.
    pub launcher: Launcher,
    /// Global rank.
    pub rank: usize,
    /// Number of processes.
    pub world_size: usize,
    /// Rank on this node (the GPU it uses).
    pub local_rank: usize,
    /// The rendezvous store's host.
    pub addr: String,
    /// The rendezvous store's port.
    pub port: u16,
    /// Who serves the store.
    pub store: StoreHost,
    /// torchrun's restart count (keys of a restarted attempt never meet the old ones).
    pub attempt: u64,
}

impl Rendezvous {
    /// The world of one process.
    pub fn single() -> Self {
        Self {
            launcher: Launcher::None,
            rank: 0,
            world_size: 1,
            local_rank: 0,
            addr: "127.0.0.1".into(),
            port: DEFAULT_PORT,
            store: StoreHost::Rank0,
            attempt: 0,
        }
    }

    /// Reads the process's environment.
    pub fn from_env() -> Result<Self, DistError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// Reads the variables that `get` returns (the environment, or a test's map).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, DistError> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        if get("RANK").is_some() || get("WORLD_SIZE").is_some() {
            let world = number(&get, "WORLD_SIZE", None)?;
            let rank = number(&get, "RANK", None)?;
            let local = number(&get, "LOCAL_RANK", Some(rank))?;
            let agent = get("TORCHELASTIC_USE_AGENT_STORE")
                .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
            let r = Self {
                launcher: Launcher::Torchrun,
                rank,
                world_size: world,
                local_rank: local,
                addr: master_addr(&get, world, None)?,
                port: port(&get)?,
                store: if agent {
                    StoreHost::Agent
                } else {
                    StoreHost::Rank0
                },
                attempt: number(&get, "TORCHELASTIC_RESTART_COUNT", Some(0))? as u64,
            };
            return r.checked();
        }
        if get("SLURM_PROCID").is_some() {
            let world = number(&get, "SLURM_NTASKS", Some(1))?;
            let rank = number(&get, "SLURM_PROCID", None)?;
            let nodes = get("SLURM_STEP_NODELIST").or_else(|| get("SLURM_JOB_NODELIST"));
            let r = Self {
                launcher: Launcher::Slurm,
                rank,
                world_size: world,
                local_rank: number(&get, "SLURM_LOCALID", Some(0))?,
                addr: master_addr(&get, world, nodes.as_deref())?,
                port: port(&get)?,
                store: StoreHost::Rank0,
                attempt: number(&get, "SLURM_RESTART_COUNT", Some(0))? as u64,
            };
            return r.checked();
        }
        Ok(Self::single())
    }

    fn checked(self) -> Result<Self, DistError> {
        if self.world_size == 0 || self.rank >= self.world_size {
            return Err(DistError::Env {
                var: "RANK".into(),
                value: self.rank.to_string(),
                reason: format!("a rank must lie in 0..{} (the world size)", self.world_size),
            });
        }
        Ok(self)
    }

    /// Whether more than one process takes part.
    pub fn is_distributed(&self) -> bool {
        self.world_size > 1
    }
}

fn number(
    get: &impl Fn(&str) -> Option<String>,
    var: &str,
    default: Option<usize>,
) -> Result<usize, DistError> {
    match (get(var), default) {
        (Some(v), _) => v.trim().parse().map_err(|_| DistError::Env {
            var: var.into(),
            value: v.clone(),
            reason: "not a non-negative integer".into(),
        }),
        (None, Some(d)) => Ok(d),
        (None, None) => Err(DistError::Env {
            var: var.into(),
            value: String::new(),
            reason: "not set, but the launcher's other variables are (set RANK and WORLD_SIZE together, or launch with torchrun)".into(),
        }),
    }
}

fn port(get: &impl Fn(&str) -> Option<String>) -> Result<u16, DistError> {
    match get("MASTER_PORT") {
        None => Ok(DEFAULT_PORT),
        Some(v) => match v.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(DistError::Env {
                var: "MASTER_PORT".into(),
                value: v,
                reason: "not a port number (1-65535)".into(),
            }),
        },
    }
}

fn master_addr(
    get: &impl Fn(&str) -> Option<String>,
    world: usize,
    nodes: Option<&str>,
) -> Result<String, DistError> {
    if let Some(a) = get("MASTER_ADDR") {
        return Ok(a.trim().to_string());
    }
    if let Some(list) = nodes {
        return first_host(list).ok_or_else(|| DistError::Env {
            var: "SLURM_STEP_NODELIST".into(),
            value: list.into(),
            reason: "not a Slurm host list".into(),
        });
    }
    if world > 1 {
        return Err(DistError::Env {
            var: "MASTER_ADDR".into(),
            value: String::new(),
            reason: "not set; with more than one process the rendezvous host must be named (torchrun sets it)".into(),
        });
    }
    Ok("127.0.0.1".into())
}

/// The first host of a Slurm host list: `node[01-04,07],gpu1` gives `node01`.
pub fn first_host(list: &str) -> Option<String> {
    let list = list.trim();
    // the first entry: up to the first comma outside brackets
    let mut depth = 0usize;
    let mut end = list.len();
    for (i, ch) in list.char_indices() {
        match ch {
            '[' => depth += 1,
            ']' => depth = depth.checked_sub(1)?,
            ',' if depth == 0 => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let entry = &list[..end];
    if entry.is_empty() {
        return None;
    }
    let Some(open) = entry.find('[') else {
        return (!entry.contains(']')).then(|| entry.to_string());
    };
    let close = open + entry[open..].find(']')?;
    let inside = &entry[open + 1..close];
    let first = inside.split(',').next()?.split('-').next()?;
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(format!(
        "{}{}{}",
        &entry[..open],
        first,
        &entry[close + 1..]
    ))
}
