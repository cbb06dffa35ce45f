//! Blocked exact top-k search equals brute force (the full similarity matrix) on random data,
//! for any block sizes and stored precision, in memory or memory-mapped, and bad requests are
//! errors rather than panics.

mod common;

use bcl::eval::mapped::MappedMatrix;
use bcl::eval::search::{topk_search, SearchBlocks};
use proptest::prelude::*;
use tch::{Device, Kind, Tensor};

fn random(n: i64, d: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randn([n, d], (Kind::Float, Device::Cpu))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn blocked_search_equals_brute_force(nq in 1i64..40, ng in 1i64..300, d in 1i64..16, k in 1usize..20,
                                         qb in 1i64..17, gb in 1i64..70, seed in 0i64..1000) {
        let k = k.min(ng as usize);
        let q = random(nq, d, seed);
        let g = random(ng, d, seed + 1);
        let r = topk_search(&q, &g, k, SearchBlocks { query: qb, gallery: gb }).unwrap();
        let (bv, bi) = q.matmul(&g.tr()).topk(k as i64, 1, true, true);
        prop_assert_eq!(r.indices.size(), vec![nq, k as i64]);
        prop_assert!(r.indices.equal(&bi), "indices differ");
        prop_assert!(r.scores.allclose(&bv, 1e-5, 1e-5, false), "scores differ");
    }
}

/// Brute force with the documented tie order: score descending, then gallery index ascending
/// (IEEE comparison: -0.0 and 0.0 tie).
fn brute_force_ties(q: &Tensor, g: &Tensor, k: usize) -> Vec<Vec<(f32, i64)>> {
    let sims = Vec::<Vec<f32>>::try_from(&q.matmul(&g.tr())).unwrap();
    sims.into_iter()
        .map(|row| {
            let mut r: Vec<(f32, i64)> = row.into_iter().zip(0i64..).collect();
            r.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
            r.truncate(k);
            r
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// Small integer vectors tie often: the order is score, then the lower gallery index, for
    /// every block size, k larger than a block and every stored precision.
    #[test]
    fn ties_go_to_the_lower_index(nq in 1i64..20, ng in 1i64..200, d in 1i64..4, k in 1usize..30,
                                  qb in 1i64..9, gb in 1i64..40, seed in 0i64..1000,
                                  kind in 0u8..3) {
        let k = k.min(ng as usize);
        // values in {-1, 0, 1} from a local generator (the global one is shared with the
        // other test of this binary, which reseeds it)
        let mut state = seed as u64 * 2654435761 + 1;
        let mut draw = |n: i64, d: i64| {
            let v: Vec<f32> = (0..n * d)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((state >> 33) % 3) as f32 - 1.0
                })
                .collect();
            Tensor::from_slice(&v).view([n, d])
        };
        let q = draw(nq, d);
        let g = draw(ng, d);
        let r = topk_search(&q, &stored(&g, kind), k, SearchBlocks { query: qb, gallery: gb }).unwrap();
        let want = brute_force_ties(&q, &g, k);
        let got_i = Vec::<Vec<i64>>::try_from(&r.indices).unwrap();
        let got_s = Vec::<Vec<f32>>::try_from(&r.scores).unwrap();
        for (row, w) in want.iter().enumerate() {
            prop_assert_eq!(&got_i[row], &w.iter().map(|x| x.1).collect::<Vec<_>>());
            prop_assert_eq!(&got_s[row], &w.iter().map(|x| x.0).collect::<Vec<_>>());
        }
    }
}

#[test]
fn bad_requests_are_errors() {
    let q = random(3, 4, 1);
    let g = random(5, 4, 2);
    let e = topk_search(&q, &g, 6, SearchBlocks::default()).unwrap_err();
    assert!(e.to_string().contains("1..=5"), "{e}");
    let e = topk_search(&q, &g, 0, SearchBlocks::default()).unwrap_err();
    assert!(e.to_string().contains("k must"), "{e}");
    let e = topk_search(&q, &random(5, 3, 2), 1, SearchBlocks::default()).unwrap_err();
    assert!(e.to_string().contains("dimension"), "{e}");
    let e = topk_search(
        &q,
        &g,
        1,
        SearchBlocks {
            query: 0,
            gallery: 4,
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("block"), "{e}");
}

/// The gallery in a stored precision (float32, float16 or bfloat16).
fn stored(g: &Tensor, kind: u8) -> Tensor {
    g.to_kind([Kind::Float, Kind::Half, Kind::BFloat16][kind as usize])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// A half-precision gallery is searched exactly as its float32 values would be.
    #[test]
    fn half_precision_galleries_search_their_float32_values(
        nq in 1i64..30, ng in 1i64..200, d in 1i64..16, k in 1usize..20, kind in 1u8..3,
        qb in 1i64..9, gb in 1i64..40, seed in 0i64..1000) {
        let k = k.min(ng as usize);
        let q = random(nq, d, seed);
        let g = stored(&random(ng, d, seed + 1), kind);
        let r = topk_search(&q, &g, k, SearchBlocks { query: qb, gallery: gb }).unwrap();
        let wide = g.to_kind(Kind::Float);
        let want = brute_force_ties(&q, &wide, k);
        let got_i = Vec::<Vec<i64>>::try_from(&r.indices).unwrap();
        let got_s = Vec::<Vec<f32>>::try_from(&r.scores).unwrap();
        for (row, w) in want.iter().enumerate() {
            prop_assert_eq!(&got_i[row], &w.iter().map(|x| x.1).collect::<Vec<_>>());
            for (a, b) in got_s[row].iter().zip(w) {
                prop_assert!((a - b.0).abs() <= 1e-5 * (1.0 + b.0.abs()), "{} vs {}", a, b.0);
            }
        }
    }

    /// A memory-mapped .npy gallery in any stored precision, streamed through windows of any
    /// size (down to one row), returns what the same values in memory return.
    #[test]
    fn mapped_gallery_equals_in_memory(
        nq in 1i64..20, ng in 1i64..300, d in 1i64..12, k in 1usize..25, kind in 0u8..3,
        resident_rows in 1usize..400, seed in 0i64..1000) {
        let k = k.min(ng as usize);
        let q = random(nq, d, seed);
        let g = stored(&random(ng, d, seed + 1), kind);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.npy");
        let (descr, width) = [("<f4", 4), ("<f2", 2), ("<V2", 2)][kind as usize];
        let mut bytes = vec![0u8; (ng * d) as usize * width];
        g.copy_data_u8(&mut bytes, (ng * d) as usize);
        common::write_npy(&path, descr, &[ng as usize, d as usize], &bytes);
        let m = MappedMatrix::open(&path).unwrap();
        prop_assert_eq!((m.rows(), m.dim()), (ng as usize, d as usize));
        let blocks = SearchBlocks { query: 4, gallery: 16 };
        let got = m.search(&q, k, blocks, resident_rows * d as usize * width).unwrap();
        let want = topk_search(&q, &g, k, blocks).unwrap();
        prop_assert!(got.indices.equal(&want.indices), "indices differ");
        prop_assert!(got.scores.allclose(&want.scores, 1e-6, 1e-6, false), "scores differ");
        // reading the file widens it to the same float32 values
        let read = bcl::npy::read_features(&path).unwrap();
        prop_assert!(read.equal(&g.to_kind(Kind::Float)));
    }
}

#[test]
fn mapped_gallery_errors_name_the_file_and_the_fault() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.npy");
    let mut vals: Vec<f32> = (0..12).map(|i| i as f32).collect();
    vals[7] = f32::NAN; // row 2 of 4 × 3
    let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    common::write_npy(&path, "<f4", &[4, 3], &bytes);
    let m = MappedMatrix::open(&path).unwrap();
    let q = random(2, 3, 0);
    // found in whichever window holds it
    for resident in [12, 1 << 20] {
        let e = m
            .search(&q, 1, SearchBlocks::default(), resident)
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 2") && e.contains("g.npy"), "{e}");
    }
    // a gallery smaller than k, a query of another dimension
    let fine: Vec<u8> = (0..12).flat_map(|i| (i as f32).to_le_bytes()).collect();
    common::write_npy(&path, "<f4", &[4, 3], &fine);
    let m = MappedMatrix::open(&path).unwrap();
    let e = m
        .search(&q, 5, SearchBlocks::default(), 1 << 20)
        .unwrap_err();
    assert!(e.to_string().contains("1..=4"), "{e}");
    let e = m
        .search(&random(2, 4, 0), 1, SearchBlocks::default(), 1 << 20)
        .unwrap_err();
    assert!(e.to_string().contains("dimension"), "{e}");
    // a type a gallery is not stored in
    common::write_npy(&path, "<i4", &[4, 3], &fine);
    let e = MappedMatrix::open(&path).unwrap_err().to_string();
    assert!(
        e.contains("float32, float16 or bfloat16") && e.contains("i4"),
        "{e}"
    );
    // big-endian floats
    common::write_npy(&path, ">f4", &[4, 3], &fine);
    assert!(MappedMatrix::open(&path).is_err());
    // data that do not start on a value boundary (a header padded by hand to an odd length)
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 3), }    \n";
    assert_eq!((10 + header.len()) % 4, 2);
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(header.len() as u16).to_le_bytes());
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(&fine);
    std::fs::write(&path, b).unwrap();
    let e = MappedMatrix::open(&path).unwrap_err().to_string();
    assert!(e.contains("not a multiple of 4"), "{e}");
}
