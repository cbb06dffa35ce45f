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
