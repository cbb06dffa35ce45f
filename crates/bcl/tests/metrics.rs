//! Retrieval metrics against hand computations and the project's golden file, and the .npy
//! readers' handling of malformed input.

use std::path::{Path, PathBuf};

use bcl::eval::{retrieval_metrics, update_gain, DEFAULT_KS};
use bcl::npy;
use tch::Tensor;

mod common;
use common::write_npy;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join("golden")
}

fn matrix(v: &serde_json::Value) -> Tensor {
    let rows: Vec<Vec<f64>> = serde_json::from_value(v.clone()).unwrap();
    let d = rows[0].len() as i64;
    let flat: Vec<f64> = rows.concat();
    Tensor::from_slice(&flat).view([-1, d])
}

fn ints(v: &serde_json::Value) -> Vec<i64> {
    serde_json::from_value(v.clone()).unwrap()
}

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-6, "{a} vs {b}");
}

#[test]
fn hand_computed_average_precision() {
    // 1-D features: query 0 at +1; gallery scores 0.9 (rel), 0.5 (not), 0.1 (rel), -1 (not).
    let q = Tensor::from_slice(&[1.0f64]).view([1, 1]);
    let g = Tensor::from_slice(&[0.9f64, 0.5, 0.1, -1.0]).view([4, 1]);
    let m = retrieval_metrics(&q, &[7], &g, &[7, 3, 7, 3], false, &[1, 2]).unwrap();
    // AP = (1/1 + 2/3) / 2
    close(m.map, (1.0 + 2.0 / 3.0) / 2.0);
    close(m.map_at_100, (1.0 + 2.0 / 3.0) / 2.0);
    close(m.recall_at[&1], 1.0);
    // a query whose best match is irrelevant
    let m = retrieval_metrics(&q, &[3], &g, &[7, 3, 7, 3], false, &[1, 2]).unwrap();
    close(m.map, (1.0 / 2.0 + 2.0 / 4.0) / 2.0);
    close(m.recall_at[&1], 0.0);
    close(m.recall_at[&2], 1.0);
    // a query with no relevant item is skipped
    let m = retrieval_metrics(&q, &[5], &g, &[7, 3, 7, 3], false, &[1]).unwrap();
    assert_eq!(m.queries, 0);
}

#[test]
fn leave_one_out_excludes_the_query_itself() {
    let f = Tensor::from_slice(&[1.0f32, 0.0, 0.9, 0.1, 0.0, 1.0]).view([3, 2]);
    let m = retrieval_metrics(&f, &[0, 0, 1], &f, &[0, 0, 1], true, &[1]).unwrap();
    // items 0 and 1 find each other first; item 2 has no relevant item and is skipped
    assert_eq!(m.queries, 2);
    close(m.map, 1.0);
}

#[test]
fn matches_golden_leave_one_out() {
    let g: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(golden_dir().join("class_retrieval.json")).unwrap(),
    )
    .unwrap();
    let s = &g["leave_one_out"];
    let f = matrix(&s["F"]);
    let y = ints(&s["labels"]);
    let m = retrieval_metrics(&f, &y, &f, &y, true, &DEFAULT_KS).unwrap();
    close(m.map, s["expected"]["map"].as_f64().unwrap());
    for k in DEFAULT_KS {
        close(
            m.recall_at[&k],
            s["expected"]["recall_at"][k.to_string()].as_f64().unwrap(),
        );
    }
}

#[test]
fn matches_golden_query_gallery() {
    let g: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(golden_dir().join("class_retrieval.json")).unwrap(),
    )
    .unwrap();
    let s = &g["query_gallery"];
    let m = retrieval_metrics(
        &matrix(&s["Q"]),
        &ints(&s["query_labels"]),
        &matrix(&s["G"]),
        &ints(&s["gallery_labels"]),
        false,
        &DEFAULT_KS,
    )
    .unwrap();
    close(m.map, s["expected"]["map"].as_f64().unwrap());
    close(m.map_at_100, s["expected"]["map_at_100"].as_f64().unwrap());
    for k in DEFAULT_KS {
        close(
            m.recall_at[&k],
            s["expected"]["recall_at"][k.to_string()].as_f64().unwrap(),
        );
    }
    // the same in float32 (what models produce) agrees too
    let m32 = retrieval_metrics(
        &matrix(&s["Q"]).to_kind(tch::Kind::Float),
        &ints(&s["query_labels"]),
        &matrix(&s["G"]).to_kind(tch::Kind::Float),
        &ints(&s["gallery_labels"]),
        false,
        &DEFAULT_KS,
    )
    .unwrap();
    assert!((m32.map - m.map).abs() < 1e-5);
}

#[test]
fn blocked_search_equals_a_single_block() {
    // more queries than one block holds for a large gallery: results must not depend on blocking
    let q = Tensor::randn([3000, 8], (tch::Kind::Float, tch::Device::Cpu));
    let g = Tensor::randn([2100, 8], (tch::Kind::Float, tch::Device::Cpu));
    let ql: Vec<i64> = (0..3000).map(|i| i % 7).collect();
    let gl: Vec<i64> = (0..2100).map(|i| i % 7).collect();
    let all = retrieval_metrics(&q, &ql, &g, &gl, false, &DEFAULT_KS).unwrap();
    let parts: Vec<_> = [(0, 1000), (1000, 2000)]
        .iter()
        .map(|&(a, b)| {
            retrieval_metrics(
                &q.narrow(0, a, b - a),
                &ql[a as usize..b as usize],
                &g,
                &gl,
                false,
                &DEFAULT_KS,
            )
            .unwrap()
        })
        .collect();
    let map = (parts[0].map + parts[1].map) / 2.0;
    let first_2000 = retrieval_metrics(
        &q.narrow(0, 0, 2000),
        &ql[..2000],
        &g,
        &gl,
        false,
        &DEFAULT_KS,
    )
    .unwrap();
    close(map, first_2000.map);
    assert_eq!(all.queries, 3000);
}

#[test]
fn mismatched_inputs_are_errors() {
    let a = Tensor::zeros([3, 4], (tch::Kind::Float, tch::Device::Cpu));
    let b = Tensor::zeros([3, 5], (tch::Kind::Float, tch::Device::Cpu));
    assert!(
        retrieval_metrics(&a, &[0, 1, 2], &b, &[0, 1, 2], false, &[1])
            .unwrap_err()
            .to_string()
            .contains("dimension")
    );
    assert!(retrieval_metrics(&a, &[0, 1], &a, &[0, 1, 2], false, &[1]).is_err());
}

#[test]
fn update_gain_and_criterion() {
    close(update_gain(0.6, 0.5, 0.7).unwrap(), 0.5);
    assert!(update_gain(0.6, 0.5, 0.5).is_none());
    assert!(bcl::eval::is_compatible(0.51, 0.5));
    assert!(!bcl::eval::is_compatible(0.5, 0.5));
}

#[test]
fn npy_readers_accept_valid_and_reject_malformed_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f.npy");
    let vals: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    write_npy(&p, "<f4", &[2, 3], &vals);
    let t = npy::read_features(&p).unwrap();
    assert_eq!(t.size(), vec![2, 3]);
    let l = dir.path().join("l.npy");
    write_npy(&l, "<i4", &[2], &[5, 0, 0, 0, 9, 0, 0, 0]);
    assert_eq!(npy::read_labels(&l).unwrap(), vec![5, 9]);

    // 1-D features
    write_npy(&p, "<f4", &[6], &vals);
    assert!(npy::read_features(&p)
        .unwrap_err()
        .to_string()
        .contains("2-D"));
    // integer features
    write_npy(&p, "<i4", &[2, 3], &vals);
    assert!(npy::read_features(&p)
        .unwrap_err()
        .to_string()
        .contains("float32, float64, float16 or bfloat16"));
    // truncated data
    write_npy(&p, "<f4", &[2, 3], &vals[..10]);
    assert!(npy::read_features(&p).is_err());
    // NaN
    let nan: Vec<u8> = [1.0f32, f32::NAN]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    write_npy(&p, "<f4", &[1, 2], &nan);
    assert!(npy::read_features(&p)
        .unwrap_err()
        .to_string()
        .contains("NaN"));
    // not an npy file at all
    std::fs::write(&p, b"hello").unwrap();
    let e = npy::read_features(&p).unwrap_err().to_string();
    assert!(e.contains("not a valid .npy") && e.contains("f.npy"), "{e}");
    // float labels
    write_npy(&l, "<f8", &[1], &1.0f64.to_le_bytes());
    assert!(npy::read_labels(&l)
        .unwrap_err()
        .to_string()
        .contains("integers"));
    // missing file
    assert!(npy::read_labels(&dir.path().join("nope.npy"))
        .unwrap_err()
        .to_string()
        .contains("cannot open"));
}

/// Crafted .npy files (issue 11, item 10): a shape whose product wraps, and a 12-byte version-2
/// file declaring a 4 GiB header, are errors before anything is allocated for them.
#[test]
fn crafted_npy_sizes_are_checked_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f.npy");
    // (2^32, 2^32) float32: 2^64 elements wrap to 0 in 64-bit arithmetic
    write_npy(&p, "<f4", &[1 << 32, 1 << 32], &[]);
    let e = npy::read_features(&p).unwrap_err().to_string();
    assert!(e.contains("does not match") && e.contains("f.npy"), "{e}");
    // a shape asking for more data than the file holds
    write_npy(&p, "<f4", &[1000, 1000], &[0u8; 16]);
    let e = npy::read_features(&p).unwrap_err().to_string();
    assert!(e.contains("does not match"), "{e}");
    // version 2, header length 0xFFFFFFFF, nothing else
    let mut b = b"\x93NUMPY\x02\x00".to_vec();
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    let e = npy::read_features(&p).unwrap_err().to_string();
    assert!(e.contains("the header declares 4294967295 bytes"), "{e}");
    let l = dir.path().join("l.npy");
    std::fs::write(&l, &b).unwrap();
    assert!(npy::read_labels(&l).is_err());
}
