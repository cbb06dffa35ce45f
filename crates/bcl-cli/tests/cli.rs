//! The `bcl` binary: `metrics` against the golden file through .npy files, and clear errors
//! (non-zero exit, the file and the reason) for bad input.

use std::path::Path;
use std::process::Command;

use tch::Tensor;

mod common;

fn bcl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bcl"))
}

fn golden() -> serde_json::Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata");
    serde_json::from_str(&std::fs::read_to_string(dir.join("golden/class_retrieval.json")).unwrap())
        .unwrap()
}

fn write_matrix(path: &Path, v: &serde_json::Value) {
    let rows: Vec<Vec<f64>> = serde_json::from_value(v.clone()).unwrap();
    let d = rows[0].len() as i64;
    Tensor::from_slice(&rows.concat())
        .view([-1, d])
        .write_npy(path)
        .unwrap();
}

fn write_labels(path: &Path, v: &serde_json::Value) {
    let l: Vec<i64> = serde_json::from_value(v.clone()).unwrap();
    Tensor::from_slice(&l).write_npy(path).unwrap();
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn run_err(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        !out.status.success(),
        "unexpected success: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        !err.contains("panicked"),
        "panic instead of an error: {err}"
    );
    err
}

fn close(a: &serde_json::Value, b: &serde_json::Value) {
    let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
    assert!((a - b).abs() < 1e-6, "{a} vs {b}");
}

#[test]
fn metrics_command_matches_golden() {
    let g = golden();
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    write_matrix(&p("f.npy"), &g["leave_one_out"]["F"]);
    write_labels(&p("fl.npy"), &g["leave_one_out"]["labels"]);
    let out: serde_json::Value = serde_json::from_str(&run_ok(
        bcl()
            .arg("metrics")
            .arg("--query")
            .arg(p("f.npy"))
            .arg("--query-labels")
            .arg(p("fl.npy")),
    ))
    .unwrap();
    let e = &g["leave_one_out"]["expected"];
    close(&out["map"], &e["map"]);
    for k in ["1", "5", "10"] {
        close(&out["recall_at"][k], &e["recall_at"][k]);
    }

    let s = &g["query_gallery"];
    write_matrix(&p("q.npy"), &s["Q"]);
    write_labels(&p("ql.npy"), &s["query_labels"]);
    write_matrix(&p("g.npy"), &s["G"]);
    write_labels(&p("gl.npy"), &s["gallery_labels"]);
    let out: serde_json::Value = serde_json::from_str(&run_ok(
        bcl()
            .arg("metrics")
            .args([
                "--query",
                p("q.npy").to_str().unwrap(),
                "--query-labels",
                p("ql.npy").to_str().unwrap(),
            ])
            .args([
                "--gallery",
                p("g.npy").to_str().unwrap(),
                "--gallery-labels",
                p("gl.npy").to_str().unwrap(),
            ]),
    ))
    .unwrap();
    close(&out["map"], &s["expected"]["map"]);
    close(&out["map_at_100"], &s["expected"]["map_at_100"]);
    for k in ["1", "5", "10"] {
        close(&out["recall_at"][k], &s["expected"]["recall_at"][k]);
    }

    // mismatched label count: a clear error
    let err = run_err(
        bcl()
            .arg("metrics")
            .arg("--query")
            .arg(p("q.npy"))
            .arg("--query-labels")
            .arg(p("fl.npy")),
    );
    assert!(err.contains("labels"), "{err}");
    // a gallery without its labels is refused by the argument parser
    let err = run_err(
        bcl()
            .arg("metrics")
            .arg("--query")
            .arg(p("q.npy"))
            .arg("--query-labels")
            .arg(p("ql.npy"))
            .arg("--gallery")
            .arg(p("g.npy")),
    );
    assert!(err.contains("--gallery-labels"), "{err}");
    // a missing file names itself
    let err = run_err(
        bcl()
            .arg("metrics")
            .arg("--query")
            .arg(p("nope.npy"))
            .arg("--query-labels")
            .arg(p("ql.npy")),
    );
    assert!(
        err.contains("nope.npy") && err.contains("cannot open"),
        "{err}"
    );
}

#[test]
fn bad_training_input_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    // a data directory without IDX files
    let err = run_err(
        bcl()
            .args(["train-old", "--device", "cpu", "--data"])
            .arg(dir.path())
            .arg("--out")
            .arg(dir.path().join("o")),
    );
    assert!(
        err.contains("train-images-idx3-ubyte") && err.contains("--data"),
        "{err}"
    );
    // an unknown method
    let err = run_err(bcl().args(["train-new", "--old", "x", "--method", "magic"]));
    assert!(
        err.contains("'magic'") && err.contains("ndpp, odpp"),
        "{err}"
    );
    // an --old that is not a run directory
    let err = run_err(
        bcl()
            .args(["train-new", "--device", "cpu", "--method", "bct", "--old"])
            .arg(dir.path()),
    );
    assert!(err.contains("config.toml"), "{err}");
    // a fraction out of range
    let (tr, te) = bcl::data::synthetic(3, 4, 2, 1);
    bcl::data::write_idx_dir(&dir.path().join("d"), &tr, &te).unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!("[data]\ndir = {:?}\nclasses = 3\n", dir.path().join("d")),
    )
    .unwrap();
    let err = run_err(
        bcl()
            .args([
                "train-old",
                "--device",
                "cpu",
                "--fraction",
                "1.5",
                "--config",
            ])
            .arg(&cfg)
            .arg("--out")
            .arg(dir.path().join("o")),
    );
    assert!(err.contains("fraction"), "{err}");
    // an unknown configuration key
    std::fs::write(&cfg, "[model]\nwidht = 3\n").unwrap();
    let err = run_err(
        bcl()
            .args(["train-old", "--device", "cpu", "--config"])
            .arg(&cfg),
    );
    assert!(err.contains("c.toml") && err.contains("widht"), "{err}");
    // an unavailable device is an error, not a crash (this machine has no CUDA)
    if !tch::Cuda::is_available() {
        let err = run_err(bcl().args(["bench", "--device", "cuda", "--steps", "1"]));
        assert!(err.contains("no CUDA device"), "{err}");
    }
}

#[test]
fn train_eval_round_trip_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::tiny_config(dir.path(), (4, 30, 10), 2, 16, "");
    let old = dir.path().join("old");
    let new = dir.path().join("new");
    let out = bcl()
        .args(["train-old", "--device", "cpu", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&old)
        .output()
        .unwrap();
    assert!(out.status.success());
    // the log goes to a pipe here: plain text, no terminal colour codes
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("INFO"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "colour codes in a piped log: {log:?}"
    );
    // the same output again without --resume is refused
    let err = run_err(
        bcl()
            .args(["train-old", "--device", "cpu", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(&old),
    );
    assert!(err.contains("--resume"), "{err}");
    run_ok(
        bcl()
            .args([
                "train-new",
                "--device",
                "cpu",
                "--method",
                "bct",
                "--lambda",
                "2",
                "--width",
                "8",
                "--blocks",
                "2",
                "--old",
            ])
            .arg(&old)
            .arg("--out")
            .arg(&new),
    );
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(new.join("model.json")).unwrap()).unwrap();
    assert_eq!(card["method"], "bct");
    // a heterogeneous upgrade: the new model is twice as wide and deep as the old (width 4,
    // one block), in the old model's dimension
    assert_eq!(
        (
            &card["arch"]["width"],
            &card["arch"]["blocks"],
            &card["arch"]["dim"]
        ),
        (&8.into(), &2.into(), &16.into())
    );
    let old_card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(old.join("model.json")).unwrap()).unwrap();
    assert_eq!(
        (&old_card["arch"]["width"], &old_card["arch"]["blocks"]),
        (&4.into(), &1.into())
    );
    assert!(card["note"].as_str().unwrap().contains("lambda=2"));
    let out = run_ok(
        bcl()
            .args(["eval", "--device", "cpu", "--model"])
            .arg(&old)
            .arg("--model")
            .arg(&new)
            .arg("--out")
            .arg(dir.path().join("r")),
    );
    assert!(out.contains("| bct |"), "{out}");
    assert!(dir.path().join("r/compat_matrix.svg").is_file());
}

#[test]
fn metrics_revisited_matches_golden() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join("golden");
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("revisited.json")).unwrap())
            .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    write_matrix(&p("q.npy"), &g["Q"]);
    write_matrix(&p("x.npy"), &g["X"]);
    let gnd = dir.join("revisited_gnd.pkl");
    let out: serde_json::Value = serde_json::from_str(&run_ok(bcl().args([
        "metrics",
        "--protocol",
        "revisited",
        "--gnd",
        gnd.to_str().unwrap(),
        "--query",
        p("q.npy").to_str().unwrap(),
        "--gallery",
        p("x.npy").to_str().unwrap(),
    ])))
    .unwrap();
    for setup in ["easy", "medium", "hard"] {
        let e = &g["expected"][setup];
        close(&out[setup]["map"], &e["map"]);
        for k in ["1", "5", "10"] {
            close(&out[setup]["mp_at"][k], &e["mp_at"][k]);
        }
    }
    assert!(out["easy"]["ap_per_query"][0].is_null());
    // query and database swapped: the counts do not fit the ground truth
    let err = run_err(bcl().args([
        "metrics",
        "--protocol",
        "revisited",
        "--gnd",
        gnd.to_str().unwrap(),
        "--query",
        p("x.npy").to_str().unwrap(),
        "--gallery",
        p("q.npy").to_str().unwrap(),
    ]));
    assert!(err.contains("ground truth lists 7 queries"), "{err}");
    // no ground truth: told what to give
    let err = run_err(bcl().args([
        "metrics",
        "--protocol",
        "revisited",
        "--query",
        p("q.npy").to_str().unwrap(),
        "--gallery",
        p("x.npy").to_str().unwrap(),
    ]));
    assert!(err.contains("--gnd"), "{err}");
}

#[test]
fn metrics_recall_ks_are_configurable() {
    let g = golden();
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    write_matrix(&p("f.npy"), &g["leave_one_out"]["F"]);
    write_labels(&p("fl.npy"), &g["leave_one_out"]["labels"]);
    let args = |ks: &str| {
        let mut c = bcl();
        c.args(["metrics", "--query", p("f.npy").to_str().unwrap()])
            .args(["--query-labels", p("fl.npy").to_str().unwrap(), "--ks", ks]);
        c
    };
    let out: serde_json::Value = serde_json::from_str(&run_ok(&mut args("1,10"))).unwrap();
    let e = &g["leave_one_out"]["expected"];
    close(&out["recall_at"]["1"], &e["recall_at"]["1"]);
    close(&out["recall_at"]["10"], &e["recall_at"]["10"]);
    assert!(out["recall_at"]["5"].is_null());
    let err = run_err(&mut args("0,5"));
    assert!(err.contains("--ks"), "{err}");
}

#[test]
fn benchmark_files_are_checked() {
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("b.toml");
    std::fs::write(&bad, "[[benchmark]]\nname = \"x\"\nkind = \"oxford\"\n").unwrap();
    let e = run_err(
        bcl()
            .args(["benchmark", "--model", "nowhere", "--config"])
            .arg(&bad),
    );
    assert!(e.contains("b.toml") && e.contains("oxford"), "{e}");
    let e = run_err(
        bcl()
            .args(["benchmark", "--model", "nowhere", "--config"])
            .arg(d.path().join("missing.toml")),
    );
    assert!(e.contains("missing.toml"), "{e}");
}

#[test]
fn help_and_methods_list_every_registered_method() {
    let methods = run_ok(bcl().arg("methods"));
    let help = run_ok(bcl().args(["train-new", "--help"]));
    for m in bcl::loss::Method::all() {
        let row = format!("| {} | {} |", m, m.description());
        assert!(methods.contains(&row), "{row} missing from:\n{methods}");
        assert!(
            help.contains(&format!("- {m}:")),
            "{m} missing from:\n{help}"
        );
    }
    // a name outside the registry is refused with the registered ones
    let out = bcl()
        .args(["train-new", "--old", "x", "--method", "ndp"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("ndpp"), "{err}");
}

#[test]
fn search_maps_float32_and_float16_galleries() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    tch::manual_seed(3);
    let q = Tensor::randn([7, 5], (tch::Kind::Float, tch::Device::Cpu));
    let g = Tensor::randn([40, 5], (tch::Kind::Float, tch::Device::Cpu));
    q.write_npy(p("q.npy")).unwrap();
    for (name, stored) in [
        ("g32.npy", g.shallow_clone()),
        ("g16.npy", g.to_kind(tch::Kind::Half)),
    ] {
        stored.write_npy(p(name)).unwrap();
        let out = run_ok(
            bcl()
                .args(["search", "--k", "4", "--resident-mib", "1"])
                .args([
                    "--query".as_ref(),
                    p("q.npy").as_os_str(),
                    "--gallery".as_ref(),
                    p(name).as_os_str(),
                    "--out-indices".as_ref(),
                    p("i.npy").as_os_str(),
                ]),
        );
        let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let kind = if name == "g16.npy" {
            "float16"
        } else {
            "float32"
        };
        assert_eq!(line["gallery_dtype"], kind, "{out}");
        let want = q
            .matmul(&stored.to_kind(tch::Kind::Float).tr())
            .topk(4, 1, true, true)
            .1;
        let got = Tensor::read_npy(p("i.npy")).unwrap();
        assert!(got.equal(&want), "{name}: {got} vs {want}");
    }
    let search = |gallery: &str, extra: &[&str]| {
        run_err(
            bcl()
                .args(["search", "--query"])
                .arg(p("q.npy"))
                .arg("--gallery")
                .arg(p(gallery))
                .args(extra),
        )
    };
    let e = search("g16.npy", &["--k", "41"]);
    assert!(e.contains("1..=40"), "{e}");
    let e = search("g16.npy", &["--resident-mib", "0"]);
    assert!(e.contains("--resident-mib"), "{e}");
    let bad = g.copy();
    let _ = bad.get(9).get(2).fill_(f64::INFINITY);
    bad.write_npy(p("bad.npy")).unwrap();
    let e = search("bad.npy", &[]);
    assert!(e.contains("bad.npy") && e.contains("row 9"), "{e}");
}

/// `bcl --help` lists the commands in the order a user needs them: the demo first, then
/// training, evaluation and experiments, then the gallery and the server, benchmarks last.
#[test]
fn help_lists_commands_in_the_order_a_user_needs_them() {
    let out = bcl().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let listed: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let at = |c: &str| {
        listed
            .iter()
            .position(|x| *x == c)
            .unwrap_or_else(|| panic!("{c} not in {listed:?}"))
    };
    let order = [
        "demo",
        "train-old",
        "train-new",
        "eval",
        "experiment",
        "gallery",
        "serve",
        "bench",
    ];
    for w in order.windows(2) {
        assert!(at(w[0]) < at(w[1]), "{} after {}: {listed:?}", w[0], w[1]);
    }
    assert_eq!(listed[0], "demo");
    assert!(at("benchmark") > at("serve") && at("bench-loader") > at("serve"));
}

/// `bcl demo` prints, after its table, the criterion in one line and each method's margin
/// (cross − old→old, as in its results.csv) with the verdict the table gives.
#[test]
fn the_demo_prints_the_criterion_and_each_margin() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::tiny_config(dir.path(), (4, 30, 10), 3, 8, "");
    let out = dir.path().join("run");
    let o = bcl()
        .args(["demo", "--device", "cpu", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(
        text.contains("compatible: the new model's queries on the old gallery (cross-test mAP) beat the old model on its own gallery (old→old mAP)"),
        "{text}"
    );
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    for row in metrics["rows"].as_array().unwrap() {
        let m = row["method"].as_str().unwrap();
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(m))
            .unwrap_or_else(|| panic!("no margin line for {m}: {text}"));
        let margin: f64 = line
            .split("margin ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap();
        let want = row["cross_map"].as_f64().unwrap() - row["old_old_map"].as_f64().unwrap();
        assert!((margin - want).abs() < 6e-5, "{m}: {margin} vs {want}");
        let verdict = line.trim_end().ends_with(" compatible") && !line.contains("not compatible");
        assert_eq!(verdict, row["compatible"].as_bool().unwrap(), "{line}");
    }
}
