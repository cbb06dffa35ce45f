//! The Revisited Oxford/Paris protocol against the golden file (the official `compute_map` on a
//! made-up fixture, with a query that has no easy positive), and malformed ground truth
//! rejected with the file and the reason.

use std::path::{Path, PathBuf};

use bcl::data::images::crop_rect;
use bcl::eval::revisited::{revisited_metrics, QueryGnd, RevisitedGnd};
use tch::Tensor;

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata")
}

fn matrix(v: &serde_json::Value) -> Tensor {
    let rows: Vec<Vec<f64>> = serde_json::from_value(v.clone()).unwrap();
    let d = rows[0].len() as i64;
    Tensor::from_slice(&rows.concat()).view([-1, d])
}

#[test]
fn revisited_matches_the_golden_file() {
    let dir = shared().join("golden");
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("revisited.json")).unwrap())
            .unwrap();
    let gnd = RevisitedGnd::read(&dir.join("revisited_gnd.pkl")).unwrap();
    let kappas: Vec<usize> = serde_json::from_value(golden["kappas"].clone()).unwrap();
    let m = revisited_metrics(&matrix(&golden["Q"]), &matrix(&golden["X"]), &gnd, &kappas).unwrap();
    let got = serde_json::to_value(&m).unwrap();
    let mut queries_without_easy = 0;
    for setup in ["easy", "medium", "hard"] {
        let (e, g) = (&golden["expected"][setup], &got[setup]);
        let close = |a: &serde_json::Value, b: &serde_json::Value, what: &str| {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!((a - b).abs() < 1e-9, "{setup} {what}: {b} vs expected {a}");
        };
        close(&e["map"], &g["map"], "map");
        for k in &kappas {
            close(
                &e["mp_at"][k.to_string()],
                &g["mp_at"][k.to_string()],
                "mP@k",
            );
        }
        let (ea, ga) = (
            e["ap_per_query"].as_array().unwrap(),
            g["ap_per_query"].as_array().unwrap(),
        );
        assert_eq!(ea.len(), ga.len());
        for (a, b) in ea.iter().zip(ga) {
            if a.is_null() {
                assert!(b.is_null(), "{setup}: a query without positives got AP {b}");
                queries_without_easy += usize::from(setup == "easy");
            } else {
                close(a, b, "AP");
            }
        }
    }
    assert!(
        queries_without_easy >= 1,
        "the fixture's query without an easy positive"
    );
}

fn write_pickle(path: &Path, g: &RevisitedGnd) {
    std::fs::write(path, serde_pickle::to_vec(g, Default::default()).unwrap()).unwrap();
}

fn small() -> RevisitedGnd {
    RevisitedGnd {
        imlist: vec!["a".into(), "b".into(), "c".into()],
        qimlist: vec!["q".into()],
        gnd: vec![QueryGnd {
            bbx: Some(vec![1.0, 2.0, 10.0, 12.0]),
            easy: vec![0],
            hard: vec![2],
            junk: vec![1],
        }],
    }
}

#[test]
fn a_written_ground_truth_reads_back_and_scores_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gnd.pkl");
    write_pickle(&p, &small());
    let g = RevisitedGnd::read(&p).unwrap();
    assert_eq!(g, small());
    // four database images a, b, c, d: a easy, c hard, b junk, d a negative; for q = e1 the
    // ranking is d (0.9), b (0.5), a (0.3), c (0.1)
    let mut g4 = g.clone();
    g4.imlist.push("d".into());
    let q = Tensor::from_slice(&[1.0f64, 0.0]).view([1, 2]);
    let x = Tensor::from_slice(&[0.3f64, 0.0, 0.5, 0.0, 0.1, 0.0, 0.9, 0.0]).view([4, 2]);
    let m = revisited_metrics(&q, &x, &g4, &[1, 5]).unwrap();
    // Medium (positives a, c; junk b): positions 2 and 3 become 1 and 2 once b is out.
    // AP = ½·(0/1 + 1/2)/2 + ½·(1/2 + 2/3)/2 = 5/12 (with b left in it would be 7/24)
    assert!((m.medium.map - 5.0 / 12.0).abs() < 1e-12, "{:?}", m.medium);
    // mP@1 = 0 (d is first); mP@5 uses k = min(5, 3): 2 of the first 3 -> 2/3
    assert_eq!(m.medium.mp_at[&1], 0.0);
    assert!((m.medium.mp_at[&5] - 2.0 / 3.0).abs() < 1e-12);
    // Easy (positive a; junk b and c): position 2 -> 1: AP = (0/1 + 1/2)/2 = 1/4
    assert!((m.easy.map - 0.25).abs() < 1e-12, "{:?}", m.easy);
    // Hard (positive c; junk b and a): position 3 -> 1: AP 1/4 as well
    assert!((m.hard.map - 0.25).abs() < 1e-12, "{:?}", m.hard);
}

#[test]
fn malformed_ground_truth_is_rejected_with_the_file_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gnd.pkl");
    let mut bad = small();
    bad.gnd[0].hard = vec![7];
    write_pickle(&p, &bad);
    let e = RevisitedGnd::read(&p).unwrap_err().to_string();
    assert!(e.contains("gnd.pkl") && e.contains("out of range"), "{e}");

    let mut bad = small();
    bad.qimlist.push("q2".into());
    write_pickle(&p, &bad);
    let e = RevisitedGnd::read(&p).unwrap_err().to_string();
    assert!(e.contains("1 ground-truth entries for 2 queries"), "{e}");

    let mut bad = small();
    bad.gnd[0].bbx = Some(vec![1.0, 2.0, 3.0]);
    write_pickle(&p, &bad);
    let e = RevisitedGnd::read(&p).unwrap_err().to_string();
    assert!(e.contains("bbx"), "{e}");

    let bytes = serde_pickle::to_vec(&small(), Default::default()).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = RevisitedGnd::read(&p).unwrap_err().to_string();
    assert!(
        e.contains("gnd.pkl") && e.contains("not a Revisited"),
        "{e}"
    );

    std::fs::write(&p, b"imlist,qimlist\n").unwrap();
    assert!(RevisitedGnd::read(&p).is_err());
    let e = RevisitedGnd::read(&dir.path().join("missing.pkl"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("missing.pkl") && e.contains("cannot read"),
        "{e}"
    );

    // features that do not fit the ground truth
    let g = small();
    let q = Tensor::from_slice(&[1.0f64, 0.0]).view([1, 2]);
    let x = Tensor::from_slice(&[0.1f64, 0.0]).view([1, 2]);
    let e = revisited_metrics(&q, &x, &g, &[1]).unwrap_err().to_string();
    assert!(e.contains("3 database images"), "{e}");
}

#[test]
fn query_boxes_crop_or_fail_clearly() {
    assert_eq!(
        crop_rect(&[1.2, 2.7, 10.1, 12.0], 100, 100).unwrap(),
        (1, 2, 10, 10)
    );
    // clipped to the image
    assert_eq!(
        crop_rect(&[-5.0, -5.0, 200.0, 50.0], 100, 80).unwrap(),
        (0, 0, 100, 50)
    );
    let e = crop_rect(&[299.0, 335.9, 366.6, 21.3], 500, 500).unwrap_err();
    assert!(e.contains("inverted"), "{e}");
    let e = crop_rect(&[600.0, 10.0, 700.0, 20.0], 500, 500).unwrap_err();
    assert!(e.contains("outside"), "{e}");
}

/// Pickle protocol 2 by hand (the opcodes of Python's `pickletools`): a crafted file is what
/// these tests are about, so they write the bytes themselves.
mod crafted {
    pub fn text(s: &str) -> Vec<u8> {
        let mut v = vec![b'X'];
        v.extend((s.len() as u32).to_le_bytes());
        v.extend(s.as_bytes());
        v
    }

    /// `{k: v, ...}` from already encoded values.
    pub fn dict(items: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut v = vec![0x80, 2, b'}', b'('];
        for (k, val) in items {
            v.extend(text(k));
            v.extend(val);
        }
        v.extend([b'u', b'.']);
        v
    }

    /// `[]` encoded.
    pub fn empty_list() -> Vec<u8> {
        vec![b']']
    }
}

#[test]
fn crafted_ground_truth_pickles_get_errors_not_crashes() {
    use crafted::*;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gnd.pkl");
    let read = |bytes: &[u8]| {
        std::fs::write(&p, bytes).unwrap();
        RevisitedGnd::read(&p).unwrap_err().to_string()
    };
    // one 1 MB string memoised once and referenced 100 times: 100 MB once expanded
    let mut imlist = vec![b']', b'('];
    imlist.extend(text(&"a".repeat(1 << 20)));
    imlist.extend([b'q', 0]);
    for _ in 0..99 {
        imlist.extend([b'h', 0]);
    }
    imlist.push(b'e');
    let e = read(&dict(&[
        ("imlist", imlist),
        ("qimlist", empty_list()),
        ("gnd", empty_list()),
    ]));
    assert!(
        e.contains("gnd.pkl") && e.contains("expands to more than"),
        "{e}"
    );

    // one query's lists (1,000 positives) memoised once and referenced 150,000 times: 150
    // million indices once expanded, from a 300 KB file
    let mut gnd = vec![b']', b'(', b'}', b'('];
    gnd.extend(text("easy"));
    gnd.extend([b']', b'(']);
    for _ in 0..1000 {
        gnd.extend([b'K', 0]);
    }
    gnd.extend([b'e', b'u', b'q', 0]);
    for _ in 0..149_999 {
        gnd.extend([b'h', 0]);
    }
    gnd.push(b'e');
    let mut imlist = vec![b']'];
    imlist.extend(text("a"));
    imlist.push(b'a');
    let e = read(&dict(&[
        ("imlist", imlist),
        ("qimlist", empty_list()),
        ("gnd", gnd),
    ]));
    assert!(e.contains("expands to more than"), "{e}");

    // a list nested a million deep where a list of names belongs
    let depth = 1_000_000;
    let mut nested = vec![b']'; depth];
    nested.extend(vec![b'a'; depth - 1]);
    let e = read(&dict(&[
        ("imlist", nested),
        ("qimlist", empty_list()),
        ("gnd", empty_list()),
    ]));
    assert!(e.contains("not a Revisited"), "{e}");

    // a key the format does not have is refused before its value is walked
    let e = read(&dict(&[
        ("imlist", empty_list()),
        ("qimlist", empty_list()),
        ("gnd", empty_list()),
        ("extra", empty_list()),
    ]));
    assert!(e.contains("extra"), "{e}");

    // raw bytes from the file are quoted, never sent to the terminal as they are
    let mut qimlist = vec![b']'];
    qimlist.extend(text("\u{1b}[2Jq1"));
    qimlist.push(b'a');
    let mut gnd = vec![b']', b'}', b'('];
    gnd.extend(text("easy"));
    gnd.extend([b']', b'K', 9, b'a', b'u', b'a']);
    let e = read(&dict(&[
        ("imlist", empty_list()),
        ("qimlist", qimlist),
        ("gnd", gnd),
    ]));
    assert!(
        e.contains("out of range") && e.contains("\\u{1b}[2Jq1"),
        "{e}"
    );
    assert!(!e.contains('\u{1b}'), "{e:?}");

    // a file over the size bound is refused without being read whole
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(bcl::eval::revisited::MAX_GND_BYTES + 1).unwrap();
    drop(f);
    let e = RevisitedGnd::read(&p).unwrap_err().to_string();
    assert!(e.contains("larger than"), "{e}");
}
