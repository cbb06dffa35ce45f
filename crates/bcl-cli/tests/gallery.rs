//! `bcl gallery` through the binary: a child process killed (SIGKILL) in the middle of a long
//! `add` loses nothing it reported committed and leaves a store that opens; the lineage
//! refusal and its `--force` override.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use tch::{Device, Kind, Tensor};

mod common;

fn bcl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bcl"))
}

fn vectors(path: &Path, n: i64, dim: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    let t = Tensor::randn([n, dim], (Kind::Float, Device::Cpu));
    t.write_npy(path).unwrap();
    t
}

/// `bcl gallery <args> --store STORE --vectors VECTORS`, not yet run.
fn gallery(args: &[&str], store: &Path, vectors: &Path) -> Command {
    let mut c = bcl();
    c.arg("gallery")
        .args(args)
        .arg("--store")
        .arg(store)
        .arg("--vectors")
        .arg(vectors);
    c
}

/// Runs `c`, asserts it succeeded and returns its standard output.
fn ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn status(store: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(bcl().args(["gallery", "status", "--store"]).arg(store))).unwrap()
}

#[test]
fn a_killed_add_keeps_what_it_reported_committed() {
    let dir = tempfile::tempdir().unwrap();
    let (n, dim) = (40_000, 64);
    let v = vectors(&dir.path().join("v.npy"), n, dim, 1);
    // kill after 1, 6 and 17 reported commits of 250 vectors; and after 30 with a log folded
    // into a snapshot every ~3 commits (a record of 250 vectors is 66 kB), so that commits made
    // after automatic checkpoints are checked too
    for (round, (kill_after, checkpoint)) in [(1usize, 0u64), (6, 0), (17, 0), (30, 200_000)]
        .into_iter()
        .enumerate()
    {
        let store = dir.path().join(format!("store-{round}"));
        let checkpoint = checkpoint.to_string();
        let mut child = gallery(
            &[
                "add",
                "--create",
                "--name",
                "ext",
                "--commit",
                "250",
                "--print-commits",
                "--checkpoint-bytes",
                &checkpoint,
            ],
            &store,
            &dir.path().join("v.npy"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut committed = 0usize;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("committed ") {
                committed = rest.split('/').next().unwrap().parse().unwrap();
                if committed >= kill_after * 250 {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL: no destructor, no checkpoint
        let exit = child.wait().unwrap();
        assert!(
            !exit.success(),
            "round {round}: the child finished before the kill"
        );
        assert!(committed >= kill_after * 250);
        if checkpoint != "0" {
            let f: serde_json::Value =
                serde_json::from_slice(&std::fs::read(store.join("gallery.json")).unwrap())
                    .unwrap();
            assert!(
                f["generation"].as_u64().unwrap() >= 5,
                "round {round}: the log was folded into snapshots: {f}"
            );
        }
        let s = status(&store);
        let items = s["items"].as_u64().unwrap() as usize;
        assert!(
            items >= committed,
            "round {round}: {items} items after {committed} were committed"
        );
        assert_eq!(items % 250, 0, "only whole commits survive");
        // the committed vectors are intact: each is its own exact nearest neighbour
        let probe = [0, committed as i64 / 2, committed as i64 - 1];
        let q = Tensor::stack(&probe.iter().map(|&i| v.get(i)).collect::<Vec<_>>(), 0);
        let qp = dir.path().join(format!("q-{round}.npy"));
        q.write_npy(&qp).unwrap();
        let text = ok(&mut gallery(
            &["search", "--exact", "--k", "1", "--name", "ext"],
            &store,
            &qp,
        ));
        for (line, want) in text.lines().zip(probe) {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(r["hits"][0]["id"].as_i64(), Some(want), "{line}");
            assert!(r["hits"][0]["score"].as_f64().unwrap() > 0.9999);
        }
        // and the store still takes writes after the crash
        ok(&mut gallery(&["add", "--name", "ext"], &store, &qp));
        assert_eq!(
            status(&store)["items"].as_u64().unwrap() as usize,
            items + 3
        );
    }
}

#[test]
fn lineage_refusal_and_force_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("g");
    let _ = vectors(&dir.path().join("v.npy"), 300, 8, 2);
    ok(&mut gallery(
        &["add", "--create", "--name", "model-a"],
        &store,
        &dir.path().join("v.npy"),
    ));
    let _ = vectors(&dir.path().join("q.npy"), 2, 8, 3);
    let search = |name: &str, force: bool| {
        let mut c = gallery(
            &["search", "--k", "3", "--name", name],
            &store,
            &dir.path().join("q.npy"),
        );
        if force {
            c.arg("--force");
        }
        c.output().unwrap()
    };
    let refused = search("model-b", false);
    assert!(!refused.status.success());
    let e = String::from_utf8_lossy(&refused.stderr);
    assert!(
        e.contains("model-b") && e.contains("model-a") && e.contains("--force"),
        "{e}"
    );
    let forced = search("model-b", true);
    assert!(forced.status.success());
    assert!(String::from_utf8_lossy(&forced.stderr).contains("overridden"));
    assert_eq!(String::from_utf8_lossy(&forced.stdout).lines().count(), 2);
    let same = search("model-a", false);
    assert!(same.status.success());
    // a model name longer than the store records is refused before anything is written
    let long = "n".repeat(70_000);
    let out = gallery(
        &["add", "--create", "--name", &long],
        &dir.path().join("g2"),
        &dir.path().join("v.npy"),
    )
    .output()
    .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("1 to 256 bytes"), "{e}");
    // a query file of the wrong dimension is an error naming the dimensions
    let _ = vectors(&dir.path().join("w.npy"), 2, 5, 4);
    let out = gallery(
        &["search", "--name", "model-a"],
        &store,
        &dir.path().join("w.npy"),
    )
    .output()
    .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("dimension"), "{e}");
}

/// One GET on a fresh connection with an optional `Authorization` header: the status code.
fn get_status(addr: &str, path: &str, auth: Option<&str>) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(a) = auth {
        head.push_str(&format!("Authorization: {a}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `bcl serve` beyond loopback without a token is refused before it serves anything, a token
/// too short is refused naming where it came from, and with a token file every endpoint
/// answers 401 without it and 200 with it.
#[test]
fn serve_needs_a_token_beyond_loopback_and_checks_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("g");
    let _ = vectors(&dir.path().join("v.npy"), 50, 8, 4);
    ok(&mut gallery(
        &["add", "--create", "--name", "model-a"],
        &store,
        &dir.path().join("v.npy"),
    ));
    let serve = || {
        let mut c = bcl();
        c.args(["serve", "--device", "cpu", "--store"])
            .arg(&store)
            .env_remove("BCL_SERVE_TOKEN");
        c
    };
    let out = serve().args(["--addr", "0.0.0.0:0"]).output().unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("without a token")
            && e.contains("BCL_SERVE_TOKEN")
            && e.contains("--allow-unauthenticated"),
        "{e}"
    );
    let out = serve()
        .args(["--addr", "127.0.0.1:0"])
        .env("BCL_SERVE_TOKEN", "short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("$BCL_SERVE_TOKEN") && e.contains("at least 16"),
        "{e}"
    );

    let token = "0123456789abcdef0123";
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let mut child = serve()
        .args(["--addr", "127.0.0.1:0", "--token-file"])
        .arg(&file)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = lines
        .by_ref()
        .map(|l| l.unwrap())
        .find(|l| l.starts_with("serving"))
        .expect("the server's first line");
    assert!(line.contains("needs the bearer token"), "{line}");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();
    let bearer = format!("Bearer {token}");
    for path in ["/health", "/stats", "/nowhere"] {
        assert_eq!(get_status(&addr, path, None), 401, "{path}");
        assert_eq!(
            get_status(&addr, path, Some("Bearer wrong-token-0000000")),
            401
        );
        assert_eq!(get_status(&addr, path, Some(token)), 401, "no scheme");
    }
    assert_eq!(get_status(&addr, "/health", Some(&bearer)), 200);
    assert_eq!(
        get_status(&addr, "/stats", Some(&format!("bearer {token}"))),
        200
    );
    assert_eq!(get_status(&addr, "/nowhere", Some(&bearer)), 404);
    child.kill().unwrap();
    let _ = child.wait();
}

/// `bcl serve --backfill-fraction` on an address already in use stops, naming the address,
/// before its backfill re-embeds anything: every item keeps the old model's vector.
#[test]
fn serve_on_a_port_in_use_stops_before_its_backfill_touches_the_gallery() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::tiny_config(dir.path(), (4, 30, 10), 2, 16, "");
    let (old, new, store) = (
        dir.path().join("old"),
        dir.path().join("new"),
        dir.path().join("g"),
    );
    ok(bcl()
        .args(["train-old", "--device", "cpu", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&old));
    ok(bcl()
        .args(["train-new", "--device", "cpu", "--method", "bct", "--old"])
        .arg(&old)
        .arg("--out")
        .arg(&new));
    ok(bcl()
        .args(["gallery", "build", "--device", "cpu", "--store"])
        .arg(&store)
        .arg("--model")
        .arg(&old));
    let per_model = || -> Vec<u64> {
        status(&store)["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["items"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(per_model(), vec![40]);

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = bcl()
        .args(["serve", "--device", "cpu", "--backfill-fraction", "1"])
        .args(["--backfill-commit", "1", "--addr", &addr, "--store"])
        .arg(&store)
        .arg("--model")
        .arg(&new)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains(&format!("cannot listen on {addr}")), "{e}");
    assert_eq!(per_model(), vec![40], "the backfill ran: {e}");
    drop(taken);
}
