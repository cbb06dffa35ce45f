//! `bcl adapt` end to end: fit on `.npy` pairs and on images embedded by two trained models,
//! apply, show, search through an adapter, and the errors bad input gets.

use std::path::Path;
use std::process::Command;

use tch::{Device, Kind, Tensor};

mod common;

fn bcl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bcl"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn run_err(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{cmd:?} should fail");
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn unit(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2.0, [1], true)
}

#[test]
fn fit_apply_and_search_through_an_adapter_on_vector_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    tch::manual_seed(1);
    let old = unit(&Tensor::randn([300, 8], (Kind::Float, Device::Cpu)));
    let (q, _) = Tensor::linalg_qr(
        &Tensor::randn([16, 16], (Kind::Double, Device::Cpu)),
        "reduced",
    );
    // a wider new model (16 dimensions) whose vectors are the old ones padded and rotated
    let new = old.constant_pad_nd([0, 8]).matmul(&q.to_kind(Kind::Float));
    old.write_npy(p("old.npy")).unwrap();
    new.write_npy(p("new.npy")).unwrap();
    let out = run_ok(
        bcl()
            .args(["adapt", "fit", "--kind", "procrustes", "--device", "cpu"])
            .arg("--old-vectors")
            .arg(p("old.npy"))
            .arg("--new-vectors")
            .arg(p("new.npy"))
            .arg("--out")
            .arg(p("a")),
    );
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (summary["from_dim"].as_u64(), summary["to_dim"].as_u64()),
        (Some(16), Some(8))
    );
    assert!(summary["support_cosine"].as_f64().unwrap() > 0.99999);
    run_ok(
        bcl()
            .args(["adapt", "apply", "--adapter"])
            .arg(p("a"))
            .arg("--input")
            .arg(p("new.npy"))
            .arg("--out")
            .arg(p("mapped.npy")),
    );
    let mapped = Tensor::read_npy(p("mapped.npy")).unwrap();
    let err = (&mapped - &old).abs().max().double_value(&[]);
    assert!(
        err < 1e-5,
        "mapped vectors differ from the old ones by {err}"
    );
    // exact search of the mapped new queries in the old gallery finds each item itself
    let out = run_ok(
        bcl()
            .args(["search", "--k", "1", "--adapter"])
            .arg(p("a"))
            .arg("--query")
            .arg(p("new.npy"))
            .arg("--gallery")
            .arg(p("old.npy"))
            .arg("--out-indices")
            .arg(p("idx.npy")),
    );
    assert!(out.contains("\"dim\":8"), "{out}");
    let idx = Tensor::read_npy(p("idx.npy")).unwrap().view([-1]);
    assert!(idx.equal(&Tensor::arange(300, (Kind::Int64, Device::Cpu))));
    let card = run_ok(bcl().args(["adapt", "show"]).arg(p("a")));
    assert!(card.contains("\"kind\": \"procrustes\""), "{card}");
    let kinds = run_ok(bcl().args(["adapt", "kinds"]));
    for k in ["procrustes", "slerp", "affine", "forward"] {
        assert!(kinds.contains(k), "{kinds}");
    }

    // bad input: counts that differ, a query of the wrong dimension, slerp without labels
    old.narrow(0, 0, 299).write_npy(p("short.npy")).unwrap();
    let e = run_err(
        bcl()
            .args(["adapt", "fit", "--kind", "procrustes", "--device", "cpu"])
            .arg("--old-vectors")
            .arg(p("short.npy"))
            .arg("--new-vectors")
            .arg(p("new.npy"))
            .arg("--out")
            .arg(p("b")),
    );
    assert!(
        e.contains("299 old vectors but 300 new ones") && e.contains("short.npy"),
        "{e}"
    );
    let e = run_err(
        bcl()
            .args(["adapt", "apply", "--adapter"])
            .arg(p("a"))
            .arg("--input")
            .arg(p("old.npy"))
            .arg("--out")
            .arg(p("x.npy")),
    );
    assert!(e.contains("has dimension 8, the adapter expects 16"), "{e}");
    assert!(!p("x.npy").exists());
    let e = run_err(
        bcl()
            .args(["adapt", "fit", "--kind", "slerp", "--device", "cpu"])
            .arg("--old-vectors")
            .arg(p("old.npy"))
            .arg("--new-vectors")
            .arg(p("new.npy"))
            .arg("--out")
            .arg(p("c")),
    );
    assert!(e.contains("labelled support set"), "{e}");
    let e = run_err(bcl().args(["adapt", "fit", "--kind", "procrustes", "--out", "z"]));
    assert!(e.contains("--old-vectors"), "{e}");
}

#[test]
fn fit_on_images_embedded_by_two_trained_models() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::tiny_config(
        dir.path(),
        (4, 40, 10),
        2,
        16,
        "train_per_class = 30\nvalidation_per_class = 10\n",
    );
    let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    run_ok(
        bcl()
            .args(["train-old", "--device", "cpu", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(&old),
    );
    run_ok(
        bcl()
            .args([
                "train-new",
                "--device",
                "cpu",
                "--method",
                "independent",
                "--old",
            ])
            .arg(&old)
            .arg("--out")
            .arg(&new),
    );
    let a = dir.path().join("slerp");
    let out = run_ok(
        bcl()
            .args([
                "adapt", "fit", "--kind", "slerp", "--device", "cpu", "--old",
            ])
            .arg(&old)
            .arg("--new")
            .arg(&new)
            .arg("--out")
            .arg(&a),
    );
    assert!(out.contains("\"pairs\":40"), "{out}");
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("adapter.json")).unwrap()).unwrap();
    let id = |m: &Path| -> serde_json::Value {
        let c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(m.join("model.json")).unwrap()).unwrap();
        c["id"].clone()
    };
    assert_eq!(card["from"]["id"], id(&new));
    assert_eq!(card["to"]["id"], id(&old));
    assert_eq!(card["direction"], "new-to-old");
    assert!(card["support"]["labelled"].as_bool().unwrap());
    assert!(card["support"]["source"]
        .as_str()
        .unwrap()
        .contains("validation part"));
    assert_eq!(card["fit"]["recall_at_1"].as_array().unwrap().len(), 11);

    // a gallery of the old model's test vectors answers the new model's queries through the
    // adapter (slerp embeds each query with both models); the test set's 40 images, 5 asked
    let store = dir.path().join("g");
    run_ok(
        bcl()
            .args(["gallery", "build", "--device", "cpu", "--store"])
            .arg(&store)
            .arg("--model")
            .arg(&old),
    );
    let search = |adapter: &Path| {
        let mut c = bcl();
        c.args([
            "gallery", "search", "--device", "cpu", "--k", "3", "--limit", "5",
        ])
        .arg("--store")
        .arg(&store)
        .arg("--model")
        .arg(&new)
        .arg("--adapter")
        .arg(adapter);
        c
    };
    let hits = run_ok(search(&a).arg("--old-model").arg(&old));
    let lines: Vec<serde_json::Value> = hits
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{hits}");
    assert!(lines
        .iter()
        .all(|l| l["hits"].as_array().unwrap().len() == 3));
    let e = run_err(&mut search(&a));
    assert!(e.contains("--old-model"), "{e}");
    // an adapter fitted the other way round (the old model's queries into the new space) is
    // refused for the new model's queries, naming the pair
    let back = dir.path().join("back");
    run_ok(
        bcl()
            .args(["adapt", "fit", "--kind", "procrustes", "--device", "cpu"])
            .arg("--old")
            .arg(&new)
            .arg("--new")
            .arg(&old)
            .arg("--out")
            .arg(&back),
    );
    let e = run_err(&mut search(&back));
    assert!(
        e.contains("fitted for the queries of") && e.contains("lineage"),
        "{e}"
    );

    // `bcl eval --adapter`: the independent model through the adapter is one more row (its
    // self-test the model's own) and one more row of the matrix; the reversed adapter is
    // refused, naming it
    let eval = |adapter: &Path| {
        let mut c = bcl();
        c.args(["eval", "--device", "cpu", "--model"])
            .arg(&old)
            .arg("--model")
            .arg(&new)
            .arg("--adapter")
            .arg(adapter);
        c
    };
    let report = dir.path().join("report");
    let out = run_ok(eval(&a).arg("--out").arg(&report));
    assert!(out.contains("| independent+slerp@40 |"), "{out}");
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("metrics.json")).unwrap())
            .unwrap();
    let (rows, adapted) = (&metrics["rows"], &metrics["adapted"]);
    assert_eq!(adapted[0]["adapter"]["kind"], "slerp");
    assert_eq!(adapted[0]["self_map"], rows[0]["self_map"]);
    assert_eq!(
        metrics["matrix"]["models"].as_array().unwrap().len(),
        3,
        "old, new and the adapted row"
    );
    let csv = std::fs::read_to_string(report.join("results.csv")).unwrap();
    assert!(csv.contains("independent+slerp@40,"), "{csv}");
    let e = run_err(&mut eval(&back));
    assert!(
        e.contains(&back.display().to_string()) && e.contains("no old model"),
        "{e}"
    );

    // `bcl gallery link`: the adapter recorded on the gallery's lineage and the new model's
    // cross-test through it measured on the gallery's own items (the old model's test
    // vectors): the same leave-one-out figure as eval's adapted row
    let json = |s: &str| -> serde_json::Value { serde_json::from_str(s.trim()).unwrap() };
    let link = |extra: &[&std::ffi::OsStr]| {
        let mut c = bcl();
        c.args(["gallery", "link", "--device", "cpu", "--store"])
            .arg(&store)
            .args(extra);
        c
    };
    let e = run_err(&mut link(&[
        "--adapter".as_ref(),
        a.as_os_str(),
        "--model".as_ref(),
        new.as_os_str(),
    ]));
    assert!(e.contains("--old-model"), "{e}");
    let linked = json(&run_ok(&mut link(&[
        "--adapter".as_ref(),
        a.as_os_str(),
        "--model".as_ref(),
        new.as_os_str(),
        "--old-model".as_ref(),
        old.as_os_str(),
    ])));
    assert_eq!(linked["edge"]["kind"], "slerp");
    let measured = linked["measured"]["map"].as_f64().unwrap();
    let eval_cross = adapted[0]["cross_map"].as_f64().unwrap();
    assert!(
        (measured - eval_cross).abs() < 1e-4,
        "{measured} vs {eval_cross}"
    );
    assert_eq!(linked["measured"]["items"], 40);

    // `bcl gallery upgrade`: a forward adapter maps the stored vectors into the new space
    // (commits printed); the new model then searches the gallery as its own, its measured
    // cross-test equals eval's forward row, and the status graph shows both edges measured
    let settings = dir.path().join("forward.toml");
    std::fs::write(
        &settings,
        "[forward]\ninner_dim = 32\nepochs = 10\nwarmup_epochs = 1\nbatch = 16\n",
    )
    .unwrap();
    let fwd = dir.path().join("fwd");
    run_ok(
        bcl()
            .args([
                "adapt", "fit", "--kind", "forward", "--device", "cpu", "--old",
            ])
            .arg(&old)
            .arg("--new")
            .arg(&new)
            .arg("--settings")
            .arg(&settings)
            .arg("--out")
            .arg(&fwd),
    );
    let up = run_ok(
        bcl()
            .args([
                "gallery",
                "upgrade",
                "--commit",
                "16",
                "--print-commits",
                "--store",
            ])
            .arg(&store)
            .arg("--adapter")
            .arg(&fwd),
    );
    let lines: Vec<&str> = up.lines().collect();
    assert_eq!(
        &lines[..3],
        ["committed 16/40", "committed 32/40", "committed 40/40"]
    );
    let r = json(lines[3]);
    assert_eq!(
        (r["mapped"].as_u64(), r["already"].as_u64()),
        (Some(40), Some(0))
    );
    let hits = run_ok(
        bcl()
            .args([
                "gallery", "search", "--device", "cpu", "--k", "3", "--limit", "2", "--store",
            ])
            .arg(&store)
            .arg("--model")
            .arg(&new),
    );
    assert_eq!(hits.lines().count(), 2, "{hits}");
    let measured = json(&run_ok(&mut link(&["--model".as_ref(), new.as_os_str()])))["measured"]
        ["map"]
        .as_f64()
        .unwrap();
    let out = dir.path().join("report-fwd");
    run_ok(eval(&fwd).arg("--out").arg(&out));
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    let eval_cross = m["adapted"][0]["cross_map"].as_f64().unwrap();
    assert!(
        (measured - eval_cross).abs() < 1e-4,
        "{measured} vs {eval_cross}"
    );
    let status = json(&run_ok(
        bcl().args(["gallery", "status", "--store"]).arg(&store),
    ));
    let edges = status["lineage"].as_array().unwrap();
    let kinds: Vec<&str> = edges.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["adapter", "forward"], "{status}");
    assert!(
        edges.iter().all(|e| e["measured"]["map"].is_f64()),
        "{status}"
    );
    assert_eq!(edges[1]["adapter"][0], "forward");
}
