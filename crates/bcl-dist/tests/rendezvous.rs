//! The launcher's environment read into a rendezvous: torchrun, Slurm, none, and the errors.

use std::collections::HashMap;

use bcl_dist::{first_host, DistError, Launcher, Rendezvous, StoreHost};

fn from(vars: &[(&str, &str)]) -> Result<Rendezvous, DistError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Rendezvous::from_vars(|k| map.get(k).cloned())
}

#[test]
fn no_launcher_is_a_world_of_one() {
    let r = from(&[]).unwrap();
    assert_eq!((r.launcher, r.rank, r.world_size), (Launcher::None, 0, 1));
    assert!(!r.is_distributed());
}

#[test]
fn torchrun_variables_with_the_agent_store() {
    let r = from(&[
        ("RANK", "3"),
        ("WORLD_SIZE", "8"),
        ("LOCAL_RANK", "1"),
        ("MASTER_ADDR", "10.0.0.7"),
        ("MASTER_PORT", "29400"),
        ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ("TORCHELASTIC_RESTART_COUNT", "2"),
        ("SLURM_PROCID", "0"),
    ])
    .unwrap();
    assert_eq!(r.launcher, Launcher::Torchrun);
    assert_eq!((r.rank, r.world_size, r.local_rank), (3, 8, 1));
    assert_eq!((r.addr.as_str(), r.port), ("10.0.0.7", 29400));
    assert_eq!((r.store, r.attempt), (StoreHost::Agent, 2));
}

#[test]
fn slurm_variables_take_the_first_host_of_the_step() {
    let r = from(&[
        ("SLURM_PROCID", "5"),
        ("SLURM_NTASKS", "8"),
        ("SLURM_LOCALID", "1"),
        ("SLURM_STEP_NODELIST", "gpu[07-08,11],cpu1"),
    ])
    .unwrap();
    assert_eq!(r.launcher, Launcher::Slurm);
    assert_eq!((r.rank, r.world_size, r.local_rank), (5, 8, 1));
    assert_eq!(
        (r.addr.as_str(), r.port, r.store),
        ("gpu07", 29500, StoreHost::Rank0)
    );
}

#[test]
fn slurm_host_lists() {
    assert_eq!(first_host("node1").as_deref(), Some("node1"));
    assert_eq!(first_host("node[01-04,07],gpu1").as_deref(), Some("node01"));
    assert_eq!(first_host("a,b").as_deref(), Some("a"));
    assert_eq!(first_host("rack[3]-ib").as_deref(), Some("rack3-ib"));
    assert_eq!(first_host(""), None);
    assert_eq!(first_host("node[x-y]"), None);
    assert_eq!(first_host("node]1["), None);
}

#[test]
fn malformed_variables_are_named() {
    let msg = |vars: &[(&str, &str)]| from(vars).unwrap_err().to_string();
    let m = msg(&[("RANK", "one"), ("WORLD_SIZE", "2")]);
    assert!(
        m.contains("RANK") && m.contains("not a non-negative integer"),
        "{m}"
    );
    let m = msg(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")]);
    assert!(m.contains("0..2"), "{m}");
    let m = msg(&[("RANK", "0"), ("WORLD_SIZE", "2")]);
    assert!(m.contains("MASTER_ADDR"), "{m}");
    let m = msg(&[
        ("RANK", "0"),
        ("WORLD_SIZE", "2"),
        ("MASTER_ADDR", "h"),
        ("MASTER_PORT", "70000"),
    ]);
    assert!(m.contains("MASTER_PORT") && m.contains("port"), "{m}");
    let m = msg(&[("RANK", "0")]);
    assert!(m.contains("WORLD_SIZE") && m.contains("not set"), "{m}");
}
