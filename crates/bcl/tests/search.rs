//! Blocked exact top-k search equals brute force (the full similarity matrix) on random data,
//! for any block sizes, and bad requests are errors rather than panics.

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
    /// every block size and k larger than a block.
    #[test]
    fn ties_go_to_the_lower_index(nq in 1i64..20, ng in 1i64..200, d in 1i64..4, k in 1usize..30,
                                  qb in 1i64..9, gb in 1i64..40, seed in 0i64..1000) {
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
        let r = topk_search(&q, &g, k, SearchBlocks { query: qb, gallery: gb }).unwrap();
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
