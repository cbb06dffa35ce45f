//! Two real processes on loopback through c10d's Gloo: the collectives' results, a killed rank
//! named by the survivor in bounded time, and the same program under torchrun.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bcl_dist::{all_gather_rows, Collective, GroupOptions, ProcessGroup, Rendezvous};
use tch::{Kind, Tensor};

/// A free loopback port (bound, read, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `world` copies of this test binary as ranks running `scenario`; waits for all.
fn launch(scenario: &str, world: usize) -> Vec<Output> {
    let port = free_port().to_string();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..world)
        .map(|r| {
            Command::new(&exe)
                .args(["--ignored", "--exact", "worker", "--nocapture"])
                .env("BCL_DIST_SCENARIO", scenario)
                .env("RANK", r.to_string())
                .env("LOCAL_RANK", r.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn opts() -> GroupOptions {
    GroupOptions {
        timeout: Duration::from_secs(30),
        ..Default::default()
    }
}

/// The collectives every rank checks; panics (non-zero exit) on a wrong value.
fn check_ops(pg: &ProcessGroup) {
    let (r, w) = (pg.rank() as f64, pg.world_size() as f64);
    // all-reduce: every rank adds [r + 1, 10 (r + 1)]
    let mut t = Tensor::from_slice(&[r + 1.0, 10.0 * (r + 1.0)]).to_kind(Kind::Float);
    pg.all_reduce_sum(&mut t).unwrap();
    let total = w * (w + 1.0) / 2.0;
    assert_eq!(
        Vec::<f32>::try_from(&t).unwrap(),
        vec![total as f32, 10.0 * total as f32]
    );
    // a 4 MiB all-reduce of int64
    let mut big = Tensor::full(
        [1 << 19],
        pg.rank() as i64 + 1,
        (Kind::Int64, tch::Device::Cpu),
    );
    pg.all_reduce_sum(&mut big).unwrap();
    assert_eq!(big.min().int64_value(&[]), total as i64);
    assert_eq!(big.max().int64_value(&[]), total as i64);
    // all-gather: rank r sends a 2x3 block of r
    let mine = Tensor::full([2, 3], r, (Kind::Double, tch::Device::Cpu));
    let all = pg.all_gather(&mine).unwrap();
    assert_eq!(all.len(), pg.world_size());
    for (k, a) in all.iter().enumerate() {
        assert_eq!(a.size(), vec![2, 3]);
        assert_eq!(a.sum(Kind::Double).double_value(&[]), 6.0 * k as f64);
    }
    // rows of different counts: rank r sends r + 1 rows holding r
    let rows = Tensor::full(
        [pg.rank() as i64 + 1, 2],
        r,
        (Kind::Float, tch::Device::Cpu),
    );
    let cat = all_gather_rows(pg, &rows).unwrap();
    let want: Vec<f32> = (0..pg.world_size())
        .flat_map(|k| std::iter::repeat_n(k as f32, 2 * (k + 1)))
        .collect();
    assert_eq!(Vec::<f32>::try_from(&cat.flatten(0, -1)).unwrap(), want);
    // broadcast from the last rank
    let root = pg.world_size() - 1;
    let mut b = Tensor::from_slice(&[r, r, r]);
    pg.broadcast(&mut b, root).unwrap();
    assert_eq!(Vec::<f64>::try_from(&b).unwrap(), vec![root as f64; 3]);
    pg.barrier().unwrap();
}

/// The rank side of every test (started by `launch` or torchrun; skipped in a normal run).
#[test]
#[ignore = "a rank of the multi-process tests, started by them"]
fn worker() {
    let scenario = std::env::var("BCL_DIST_SCENARIO").expect("started by a launcher test");
    let rdv = Rendezvous::from_env().unwrap();
    if scenario == "nccl" {
        return nccl_worker(&rdv);
    }
    let pg = ProcessGroup::join(&rdv, opts()).unwrap();
    match scenario.as_str() {
        "ops" => {
            check_ops(&pg);
            println!("rank {} ok", pg.rank());
        }
        // `die-K`: rank K exits after one all-reduce; the others try a second one.
        s if s.starts_with("die-") => {
            let victim: usize = s[4..].parse().unwrap();
            let mut t = Tensor::ones([4], (Kind::Float, tch::Device::Cpu));
            pg.all_reduce_sum(&mut t).unwrap();
            if pg.rank() == victim {
                std::process::exit(3);
            }
            std::thread::sleep(Duration::from_millis(300));
            let start = Instant::now();
            let e = pg.all_reduce_sum(&mut t).expect_err("a rank is gone");
            println!("after {:.1} s: {e}", start.elapsed().as_secs_f64());
            std::process::exit(4);
        }
        other => panic!("unknown scenario {other}"),
    }
}

#[test]
fn two_ranks_reduce_gather_and_broadcast() {
    let outs = launch("ops", 2);
    for (r, o) in outs.iter().enumerate() {
        assert!(o.status.success(), "rank {r}: {}", text(o));
        assert!(text(o).contains(&format!("rank {r} ok")), "{}", text(o));
    }
}

#[test]
fn three_ranks_reduce_gather_and_broadcast() {
    let outs = launch("ops", 3);
    for (r, o) in outs.iter().enumerate() {
        assert!(o.status.success(), "rank {r}: {}", text(o));
    }
}

#[test]
fn a_killed_rank_is_named_by_the_others_in_bounded_time() {
    let start = Instant::now();
    let outs = launch("die-1", 3);
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(outs[1].status.code(), Some(3), "{}", text(&outs[1]));
    for r in [0, 2] {
        let t = text(&outs[r]);
        assert_eq!(outs[r].status.code(), Some(4), "rank {r}: {t}");
        assert!(t.contains("lost rank(s) [1]"), "rank {r}: {t}");
    }
}

#[test]
fn a_killed_store_host_is_named_by_the_others() {
    let start = Instant::now();
    let outs = launch("die-0", 2);
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "took {:?}",
        start.elapsed()
    );
    let t = text(&outs[1]);
    assert_eq!(outs[1].status.code(), Some(4), "{t}");
    assert!(t.contains("lost rank(s) [0]"), "{t}");
}

/// torchrun from the project's virtual environment (scripts/setup.sh installs torch there).
fn torchrun() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/torchrun")
}

#[test]
fn two_ranks_under_torchrun_use_the_agents_store() {
    let exe = std::env::current_exe().unwrap();
    let run = torchrun();
    assert!(
        run.exists(),
        "{} is missing: run scripts/setup.sh",
        run.display()
    );
    let o = Command::new(run)
        .args(["--standalone", "--nproc-per-node=2", "--no-python"])
        .arg(exe)
        .args(["--ignored", "--exact", "worker", "--nocapture"])
        .env("BCL_DIST_SCENARIO", "ops")
        .output()
        .unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("rank 0 ok") && t.contains("rank 1 ok"), "{t}");
}

/// NCCL: on a machine with GPUs the ranks all-reduce CUDA tensors (one GPU per local rank, or
/// all on the one GPU); without one, joining fails with c10d's reason, not a crash.
fn nccl_worker(rdv: &Rendezvous) {
    let o = GroupOptions {
        backend: bcl_dist::Backend::Nccl,
        ..opts()
    };
    if !tch::Cuda::is_available() {
        let e = ProcessGroup::join(rdv, o).expect_err("no GPU here");
        println!("rank {} refused: {e}", rdv.rank);
        return;
    }
    let gpu = rdv.local_rank % tch::Cuda::device_count() as usize;
    let pg = ProcessGroup::join(rdv, o).unwrap();
    let w = rdv.world_size as f64;
    let mut t = Tensor::ones([1 << 20], (Kind::Float, tch::Device::Cuda(gpu)));
    pg.all_reduce_sum(&mut t).unwrap();
    assert_eq!(t.sum(Kind::Double).double_value(&[]), w * (1 << 20) as f64);
    // CPU tensors (the loop's flags and counts) go through the rank's GPU and come back
    let mut flags = Tensor::from_slice(&[1.0f64, rdv.rank as f64]);
    pg.all_reduce_sum(&mut flags).unwrap();
    assert_eq!(flags.device(), tch::Device::Cpu);
    assert_eq!(
        Vec::<f64>::try_from(&flags).unwrap(),
        vec![w, w * (w - 1.0) / 2.0]
    );
    let all = pg
        .all_gather(&Tensor::from_slice(&[rdv.rank as i64]))
        .unwrap();
    assert!(all.iter().all(|a| a.device() == tch::Device::Cpu));
    let last = rdv.world_size - 1;
    let mut b = Tensor::from_slice(&[rdv.rank as f32]);
    pg.broadcast(&mut b, last).unwrap();
    assert_eq!(b.double_value(&[0]), last as f64);
    println!("rank {} ok", rdv.rank);
}

#[cfg(feature = "nccl")]
#[test]
fn nccl_ranks_reduce_on_gpus_or_refuse_without_one() {
    // one rank per GPU (NCCL refuses two ranks on one GPU); two ranks to be refused without
    let gpus = tch::Cuda::device_count() as usize;
    let outs = launch("nccl", if gpus == 0 { 2 } else { gpus.min(2) });
    for (r, o) in outs.iter().enumerate() {
        let t = text(o);
        assert!(o.status.success(), "rank {r}: {t}");
        if tch::Cuda::is_available() {
            assert!(t.contains(&format!("rank {r} ok")), "{t}");
        } else {
            assert!(t.contains("could not join") && t.contains("GPU"), "{t}");
        }
    }
}
