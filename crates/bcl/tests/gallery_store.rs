//! The gallery store: one suite of behaviour every backend must pass (exact search equals brute
//! force, upserts, per-model counts, validation, reopen), the usearch backend's crash safety
//! (torn log tails, a crash mid-checkpoint, a log the snapshot already holds), the recall of its
//! approximate search against exact (reported), and the lineage check.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use bcl::gallery::durable::DurableStore;
use bcl::gallery::flat_hnsw::{FlatHnsw, FlatHnswConfig, FlatHnswStore};
use bcl::gallery::index::VectorIndex;
use bcl::gallery::usearch_store::{UsearchConfig, UsearchStore};
use bcl::gallery::{
    check_lineage, GalleryError, GalleryManifest, GalleryStore, Hit, Lineage, ModelInfo,
};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How the suite makes and reopens a store of one backend.
trait Backend {
    fn create(&self, dir: &Path, dim: usize) -> Box<dyn GalleryStore>;
    fn reopen(&self, dir: &Path) -> Box<dyn GalleryStore>;
}

struct Usearch;

/// The project's own HNSW engine (`gallery::flat_hnsw`) behind the same durable store.
struct Hnsw;

impl Backend for Hnsw {
    fn create(&self, dir: &Path, dim: usize) -> Box<dyn GalleryStore> {
        Box::new(
            FlatHnswStore::create(dir, GalleryManifest::new(dim), FlatHnswConfig::default())
                .unwrap(),
        )
    }
    fn reopen(&self, dir: &Path) -> Box<dyn GalleryStore> {
        Box::new(FlatHnswStore::open(dir).unwrap())
    }
}

impl Backend for Usearch {
    fn create(&self, dir: &Path, dim: usize) -> Box<dyn GalleryStore> {
        Box::new(
            UsearchStore::create(dir, GalleryManifest::new(dim), UsearchConfig::default()).unwrap(),
        )
    }
    fn reopen(&self, dir: &Path) -> Box<dyn GalleryStore> {
        Box::new(UsearchStore::open(dir).unwrap())
    }
}

fn random_rows(n: usize, dim: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n * dim)
        .map(|_| rng.random::<f32>() * 2.0 - 1.0)
        .collect();
    for row in v.chunks_mut(dim) {
        let s = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x /= s);
    }
    v
}

/// Brute-force inner-product top-k over explicit vectors.
fn brute(gallery: &BTreeMap<u64, Vec<f32>>, q: &[f32], k: usize) -> Vec<Hit> {
    let mut s: Vec<Hit> = gallery
        .iter()
        .map(|(&id, v)| Hit {
            id,
            score: v.iter().zip(q).map(|(a, b)| a * b).sum(),
        })
        .collect();
    s.sort_by(|a, b| b.score.total_cmp(&a.score));
    s.truncate(k);
    s
}

fn assert_same(hits: &[Hit], want: &[Hit]) {
    assert_eq!(hits.len(), want.len());
    for (h, w) in hits.iter().zip(want) {
        assert!((h.score - w.score).abs() < 1e-5, "{hits:?} vs {want:?}");
    }
    let ids: Vec<u64> = hits.iter().map(|h| h.id).collect();
    let wids: Vec<u64> = want.iter().map(|h| h.id).collect();
    assert_eq!(ids, wids);
}

/// A new store of `n` random unit vectors of model "a", ids `0..n`.
fn filled(
    b: &dyn Backend,
    dir: &Path,
    n: usize,
    dim: usize,
    rng: &mut ChaCha8Rng,
) -> Box<dyn GalleryStore> {
    let mut s = b.create(dir, dim);
    register(s.as_mut(), "a");
    s.add(
        "a",
        &(0..n as u64).collect::<Vec<_>>(),
        &random_rows(n, dim, rng),
    )
    .unwrap();
    s
}

fn register(store: &mut dyn GalleryStore, id: &str) {
    let mut m = store.manifest().clone();
    m.models.push(ModelInfo::external(id, m.dim));
    store.set_manifest(m).unwrap();
}

/// A new usearch store of dimension `dim` with `cfg`, model "a" registered.
fn usearch_with(dir: &Path, dim: usize, cfg: UsearchConfig) -> UsearchStore {
    let mut s = UsearchStore::create(dir, GalleryManifest::new(dim), cfg).unwrap();
    register(&mut s, "a");
    s
}

fn suite_add_search_reopen(b: &dyn Backend) {
    let dir = tempfile::tempdir().unwrap();
    let dim = 8;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut s = b.create(dir.path(), dim);
    register(s.as_mut(), "a");
    let v = random_rows(100, dim, &mut rng);
    let ids: Vec<u64> = (1000..1100).collect();
    s.add("a", &ids, &v).unwrap();
    let mut truth: BTreeMap<u64, Vec<f32>> = ids
        .iter()
        .zip(v.chunks(dim))
        .map(|(&i, r)| (i, r.to_vec()))
        .collect();
    assert_eq!(s.len(), 100);
    assert_eq!(
        s.counts().unwrap(),
        BTreeMap::from([("a".to_string(), 100)])
    );
    let q = random_rows(10, dim, &mut rng);
    for (row, hits) in q.chunks(dim).zip(s.search_exact(&q, 7).unwrap()) {
        assert_same(&hits, &brute(&truth, row, 7));
    }
    // upsert 30 items with model b (a backfill), unnormalised input is normalised on entry
    register(s.as_mut(), "b");
    let w = random_rows(30, dim, &mut rng);
    let scaled: Vec<f32> = w.iter().map(|x| x * 3.0).collect();
    s.add("b", &ids[..30], &scaled).unwrap();
    for (i, r) in ids[..30].iter().zip(w.chunks(dim)) {
        truth.insert(*i, r.to_vec());
    }
    assert_eq!(s.len(), 100);
    let counts = BTreeMap::from([("a".to_string(), 70), ("b".to_string(), 30)]);
    assert_eq!(s.counts().unwrap(), counts);
    let got = s.vectors(&ids[..2]).unwrap();
    for (g, t) in got.iter().zip(w[..2 * dim].iter()) {
        assert!((g - t).abs() < 1e-5);
    }
    let before = s.search_exact(&q, 5).unwrap();
    for (row, hits) in q.chunks(dim).zip(&before) {
        assert_same(hits, &brute(&truth, row, 5));
    }
    // k larger than the gallery returns everything
    assert_eq!(s.search_exact(&q[..dim], 500).unwrap()[0].len(), 100);
    drop(s);
    let s = b.reopen(dir.path());
    assert_eq!(s.len(), 100);
    assert_eq!(s.counts().unwrap(), counts);
    assert_eq!(s.manifest().models.len(), 2);
    let after = s.search_exact(&q, 5).unwrap();
    for (x, y) in before.iter().zip(&after) {
        assert_same(x, y);
    }
    let models = s.item_models().unwrap();
    assert_eq!(models[&1000], "b");
    assert_eq!(models[&1099], "a");
}

fn suite_rejects_bad_input(b: &dyn Backend) {
    let dir = tempfile::tempdir().unwrap();
    let mut s = b.create(dir.path(), 4);
    register(s.as_mut(), "a");
    s.add("a", &[1, 2], &[1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0])
        .unwrap();
    let invalid = |r: Result<(), GalleryError>, want: &str| match r {
        Err(GalleryError::Invalid(m)) => assert!(m.contains(want), "{m}"),
        other => panic!("expected Invalid({want}), got {other:?}"),
    };
    invalid(s.add("a", &[3], &[1.0, 0.0, 0.0]), "3 values for 1 vectors");
    invalid(s.add("a", &[3], &[1.0, f32::NAN, 0.0, 0.0]), "non-finite");
    invalid(s.add("a", &[3], &[0.0; 4]), "all zeros");
    invalid(
        s.add("a", &[3, 3], &[1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]),
        "appears twice",
    );
    invalid(s.add("zzz", &[3], &[1.0, 0.0, 0.0, 0.0]), "not registered");
    invalid(s.add("a", &[], &[]), "no vector");
    invalid(
        s.search_exact(&[1.0, 0.0, 0.0, 0.0], 0).map(|_| ()),
        "k must be",
    );
    invalid(
        s.search_exact(&[1.0, 0.0, 0.0], 1).map(|_| ()),
        "dimension 4",
    );
    invalid(
        s.search_approx(&[f32::INFINITY, 0.0, 0.0, 0.0], 1)
            .map(|_| ()),
        "non-finite",
    );
    // the manifest only grows, and its dimension is fixed
    let mut m = s.manifest().clone();
    m.models.clear();
    invalid(s.set_manifest(m), "appended");
    let mut m = s.manifest().clone();
    m.dim = 5;
    invalid(s.set_manifest(m), "dimension");
    assert_eq!(s.len(), 2, "failed adds wrote nothing");
    drop(s);
    assert_eq!(b.reopen(dir.path()).len(), 2, "nor did they reach the disk");
}

#[test]
fn usearch_passes_the_store_suite() {
    suite_add_search_reopen(&Usearch);
    suite_rejects_bad_input(&Usearch);
}

#[test]
fn hnsw_passes_the_store_suite() {
    suite_add_search_reopen(&Hnsw);
    suite_rejects_bad_input(&Hnsw);
}

/// A second index, defined only here: brute force over a map, saved as id and vector bytes.
/// It reaches the gallery through the `VectorIndex` seam alone: the durable store (log,
/// snapshots, store file, exact search) is the one every index shares.
struct FlatIndex {
    dim: usize,
    rows: BTreeMap<u64, Vec<f32>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct FlatConfig {
    checkpoint_bytes: u64,
}

impl VectorIndex for FlatIndex {
    type Config = FlatConfig;
    const BACKEND: &'static str = "flat-test";
    const EXTENSION: &'static str = "flat";

    fn create(dim: usize, _: &FlatConfig) -> bcl::gallery::Result<Self> {
        Ok(Self {
            dim,
            rows: BTreeMap::new(),
        })
    }
    fn load(path: &Path, dim: usize, c: &FlatConfig) -> bcl::gallery::Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| GalleryError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut s = Self::create(dim, c)?;
        for rec in bytes.chunks(8 + 4 * dim) {
            let id = u64::from_le_bytes(rec[..8].try_into().unwrap());
            let v = rec[8..]
                .chunks(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()));
            s.rows.insert(id, v.collect());
        }
        Ok(s)
    }
    fn save(&self, path: &Path) -> bcl::gallery::Result<()> {
        let mut b = Vec::new();
        for (id, v) in &self.rows {
            b.extend_from_slice(&id.to_le_bytes());
            v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
        }
        std::fs::write(path, b).map_err(|e| GalleryError::Index(e.to_string()))
    }
    fn len(&self) -> usize {
        self.rows.len()
    }
    fn reserve(&mut self, _: usize) -> bcl::gallery::Result<()> {
        Ok(())
    }
    fn remove(&mut self, id: u64) -> bcl::gallery::Result<()> {
        self.rows.remove(&id);
        Ok(())
    }
    fn add(&mut self, ids: &[u64], vectors: &[f32]) -> bcl::gallery::Result<()> {
        for (&id, v) in ids.iter().zip(vectors.chunks(self.dim)) {
            self.rows.insert(id, v.to_vec());
        }
        Ok(())
    }
    fn get(&self, id: u64, out: &mut [f32]) -> bcl::gallery::Result<bool> {
        Ok(self.rows.get(&id).map(|v| out.copy_from_slice(v)).is_some())
    }
    fn search(&self, query: &[f32], k: usize) -> bcl::gallery::Result<Vec<Hit>> {
        Ok(brute(&self.rows, query, k))
    }
    fn set_search_expansion(&mut self, _: usize) {}
    fn checkpoint_bytes(c: &FlatConfig) -> u64 {
        c.checkpoint_bytes
    }
}

struct Flat;

impl Backend for Flat {
    fn create(&self, dir: &Path, dim: usize) -> Box<dyn GalleryStore> {
        Box::new(
            DurableStore::<FlatIndex>::create(
                dir,
                GalleryManifest::new(dim),
                FlatConfig::default(),
            )
            .unwrap(),
        )
    }
    fn reopen(&self, dir: &Path) -> Box<dyn GalleryStore> {
        Box::new(DurableStore::<FlatIndex>::open(dir).unwrap())
    }
}

#[test]
fn an_index_defined_in_a_test_passes_the_store_suite_through_the_durable_store() {
    suite_add_search_reopen(&Flat);
    suite_rejects_bad_input(&Flat);
    // its snapshots and its log: a checkpoint writes its own snapshot file, a reopen replays
    // the log written after it
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut s = filled(&Flat, dir.path(), 40, 6, &mut rng);
    s.checkpoint().unwrap();
    assert!(dir.path().join("index-1.flat").is_file());
    s.add("a", &[100, 101], &random_rows(2, 6, &mut rng))
        .unwrap();
    drop(s);
    let s = Flat.reopen(dir.path());
    assert_eq!(s.len(), 42);
    // a store of one index is not opened as another
    drop(s);
    match UsearchStore::open(dir.path()) {
        Err(GalleryError::Corrupt { reason, .. }) => {
            assert!(reason.contains("flat-test"), "{reason}")
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

/// Exact search equals brute force after an add and some upserts (the property both backends
/// must hold).
fn exact_equals_brute(
    b: &dyn Backend,
    (n, dim, k, upserts, seed): (usize, usize, usize, usize, u64),
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut s = b.create(dir.path(), dim);
    register(s.as_mut(), "a");
    let v = random_rows(n, dim, &mut rng);
    let ids: Vec<u64> = (0..n as u64).map(|i| i * 7 + 3).collect();
    s.add("a", &ids, &v).unwrap();
    let mut truth: BTreeMap<u64, Vec<f32>> = ids
        .iter()
        .zip(v.chunks(dim))
        .map(|(&i, r)| (i, r.to_vec()))
        .collect();
    let m = upserts.min(n);
    let w = random_rows(m, dim, &mut rng);
    if m > 0 {
        s.add("a", &ids[..m], &w).unwrap();
        for (i, r) in ids[..m].iter().zip(w.chunks(dim)) {
            truth.insert(*i, r.to_vec());
        }
    }
    prop_assert_eq!(s.len(), n);
    let q = random_rows(5, dim, &mut rng);
    for (row, hits) in q.chunks(dim).zip(s.search_exact(&q, k).unwrap()) {
        let want = brute(&truth, row, k);
        prop_assert_eq!(hits.len(), want.len());
        for (h, w) in hits.iter().zip(&want) {
            prop_assert!((h.score - w.score).abs() < 1e-5);
        }
        // ties aside, the same items in the same order
        let tied = want
            .windows(2)
            .any(|p| (p[0].score - p[1].score).abs() < 1e-4);
        if !tied {
            let ids: Vec<u64> = hits.iter().map(|h| h.id).collect();
            let wids: Vec<u64> = want.iter().map(|h| h.id).collect();
            prop_assert_eq!(ids, wids);
        }
    }
    Ok(())
}

/// Every score either search of `b` returns is the float64 inner product of the query and the
/// stored vector, in a fresh index and in one loaded from its snapshot.
fn scores_are_inner_products(
    b: &dyn Backend,
    dim: usize,
    n: usize,
    seed: u64,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut s = b.create(dir.path(), dim);
    register(s.as_mut(), "a");
    let v = random_rows(n, dim, &mut rng);
    let ids: Vec<u64> = (0..n as u64).collect();
    s.add("a", &ids, &v).unwrap();
    let q = random_rows(3, dim, &mut rng);
    let k = n.min(10);
    let fresh = [
        s.search_approx(&q, k).unwrap(),
        s.search_exact(&q, k).unwrap(),
    ];
    s.checkpoint().unwrap();
    drop(s);
    let s = b.reopen(dir.path());
    let loaded = [
        s.search_approx(&q, k).unwrap(),
        s.search_exact(&q, k).unwrap(),
    ];
    for hits in fresh.into_iter().chain(loaded) {
        for (row, hits) in q.chunks(dim).zip(hits) {
            prop_assert_eq!(hits.len(), k);
            for h in hits {
                let stored = &v[h.id as usize * dim..][..dim];
                let dot: f64 = stored
                    .iter()
                    .zip(row)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum();
                prop_assert!(
                    (h.score as f64 - dot).abs() < 1e-5,
                    "dim {dim}: {} vs {dot}",
                    h.score
                );
            }
        }
    }
    Ok(())
}

/// Dimensions on both sides of the kernels' steps and tails, gallery sizes and seeds.
fn score_cases() -> impl Strategy<Value = (usize, usize, u64)> {
    (
        prop_oneof![
            1usize..20,
            28usize..36,
            60usize..70,
            120usize..136,
            Just(512),
            Just(1000)
        ],
        1usize..40,
        0u64..1000,
    )
}

fn cases() -> impl Strategy<Value = (usize, usize, usize, usize, u64)> {
    (1usize..150, 2usize..12, 1usize..20, 0usize..40, 0u64..1000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn usearch_exact_search_equals_brute_force(c in cases()) {
        exact_equals_brute(&Usearch, c)?;
    }

    /// Every score either search returns is the inner product of the query and the stored
    /// vector (float64 reference), at dimensions on both sides of the float32 kernels' 8-, 16-,
    /// 32- and 64-lane steps and their tails (`gallery::kernel`, the one this CPU runs), in a
    /// fresh index and in one loaded from its snapshot (loading restores usearch's own metric,
    /// which the store replaces again).
    #[test]
    fn usearch_scores_are_inner_products_at_every_dimension(
        (dim, n, seed) in score_cases(),
    ) {
        scores_are_inner_products(&Usearch, dim, n, seed)?;
    }

    /// The same for the project's own HNSW engine.
    #[test]
    fn hnsw_scores_are_inner_products_at_every_dimension(
        (dim, n, seed) in score_cases(),
    ) {
        scores_are_inner_products(&Hnsw, dim, n, seed)?;
    }

    #[test]
    fn hnsw_exact_search_equals_brute_force(c in cases()) {
        exact_equals_brute(&Hnsw, c)?;
    }

    /// The per-model counts the store keeps (for /stats) equal a walk over every item, after
    /// any sequence of upserts across models and after a reopen.
    #[test]
    fn usearch_counts_follow_every_upsert(
        batches in prop::collection::vec(
            (0usize..3, prop::collection::btree_set(0u64..40, 1..20)),
            1..8,
        )
    ) {
        let dir = tempfile::tempdir().unwrap();
        let dim = 4;
        let models = ["a", "b", "c"];
        let mut s = Usearch.create(dir.path(), dim);
        for m in models {
            register(s.as_mut(), m);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for (m, ids) in &batches {
            let ids: Vec<u64> = ids.iter().copied().collect();
            s.add(models[*m], &ids, &random_rows(ids.len(), dim, &mut rng)).unwrap();
        }
        let walked = s.item_models().unwrap().into_values().fold(
            BTreeMap::new(),
            |mut c: BTreeMap<String, usize>, m| {
                *c.entry(m).or_default() += 1;
                c
            },
        );
        prop_assert_eq!(s.counts().unwrap(), walked.clone());
        drop(s);
        prop_assert_eq!(Usearch.reopen(dir.path()).counts().unwrap(), walked);
    }
}

fn wal(dir: &Path) -> std::path::PathBuf {
    dir.join("wal.log")
}

#[test]
fn a_torn_log_tail_is_cut_and_committed_adds_survive() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut s = Usearch.create(dir.path(), 6);
    register(s.as_mut(), "a");
    for b in 0..3u64 {
        let ids: Vec<u64> = (b * 10..b * 10 + 10).collect();
        s.add("a", &ids, &random_rows(10, 6, &mut rng)).unwrap();
    }
    drop(s); // no checkpoint: everything is in the log
    let good = std::fs::metadata(wal(dir.path())).unwrap().len();
    // a crash mid-append: a length prefix promising more than was written, then a few bytes
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(wal(dir.path()))
        .unwrap();
    f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9]).unwrap();
    drop(f);
    let s = Usearch.reopen(dir.path());
    assert_eq!(s.len(), 30);
    assert_eq!(std::fs::metadata(wal(dir.path())).unwrap().len(), good);
    drop(s);
    // a flipped byte inside the last record: that record fails its checksum and is dropped
    let mut bytes = std::fs::read(wal(dir.path())).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0xff;
    std::fs::write(wal(dir.path()), &bytes).unwrap();
    let s = Usearch.reopen(dir.path());
    assert_eq!(s.len(), 20, "the corrupt last record is not replayed");
}

#[test]
fn a_crash_mid_checkpoint_leaves_a_store_that_opens() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut s = filled(&Usearch, dir.path(), 50, 5, &mut rng);
    s.checkpoint().unwrap(); // generation 1
    let saved_wal_empty = std::fs::metadata(wal(dir.path())).unwrap().len();
    assert_eq!(saved_wal_empty, 0);
    let upd = random_rows(10, 5, &mut rng);
    s.add("a", &(0..10).collect::<Vec<_>>(), &upd).unwrap();
    s.add(
        "a",
        &(50..60).collect::<Vec<_>>(),
        &random_rows(10, 5, &mut rng),
    )
    .unwrap();
    let log = std::fs::read(wal(dir.path())).unwrap();
    let q = random_rows(4, 5, &mut rng);
    let want = s.search_exact(&q, 8).unwrap();
    // the next checkpoint completes its commit but "crashes" before truncating the log:
    // restore the log as it was, so records the snapshot holds are replayed again
    s.checkpoint().unwrap();
    drop(s);
    std::fs::write(wal(dir.path()), &log).unwrap();
    // and leftovers of a later checkpoint that died before its commit
    std::fs::write(dir.path().join("index-3.usearch"), b"half written").unwrap();
    std::fs::write(dir.path().join("index-3.usearch.tmp"), b"junk").unwrap();
    std::fs::write(dir.path().join(".gallery.json.1.0.tmp"), b"{").unwrap();
    let s = Usearch.reopen(dir.path());
    assert_eq!(s.len(), 60);
    for (a, b) in want.iter().zip(s.search_exact(&q, 8).unwrap()) {
        assert_same(a, &b);
    }
    let got = s.vectors(&[0]).unwrap();
    assert!(got.iter().zip(&upd[..5]).all(|(a, b)| (a - b).abs() < 1e-5));
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.ends_with(".tmp") || n == "index-3.usearch"),
        "{names:?}"
    );
}

#[test]
fn damaged_snapshots_and_a_second_opener_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut s = Usearch.create(dir.path(), 3);
    register(s.as_mut(), "a");
    s.add("a", &[1, 2, 3], &random_rows(3, 3, &mut rng))
        .unwrap();
    s.checkpoint().unwrap();
    // the store is locked while open
    match UsearchStore::open(dir.path()) {
        Err(GalleryError::Locked { path }) => assert_eq!(path, dir.path()),
        other => panic!("{:?}", other.map(|_| ())),
    }
    drop(s);
    let items = dir.path().join("items-1.bin");
    let mut b = std::fs::read(&items).unwrap();
    b[9] ^= 1;
    std::fs::write(&items, &b).unwrap();
    match UsearchStore::open(dir.path()) {
        Err(GalleryError::Corrupt { path, reason }) => {
            assert_eq!(path, items);
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    std::fs::write(dir.path().join("gallery.json"), b"{ not json").unwrap();
    assert!(matches!(
        UsearchStore::open(dir.path()),
        Err(GalleryError::Corrupt { .. })
    ));
    let empty = tempfile::tempdir().unwrap();
    match UsearchStore::open(empty.path()) {
        Err(e @ GalleryError::Missing { .. }) => {
            // a library error names no command (the CLI adds the one that creates a gallery)
            let e = e.to_string();
            assert!(e.contains("no gallery here") && !e.contains("bcl "), "{e}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    // creating over an existing gallery is refused
    let d2 = tempfile::tempdir().unwrap();
    drop(Usearch.create(d2.path(), 3));
    assert!(matches!(
        UsearchStore::create(d2.path(), GalleryManifest::new(3), UsearchConfig::default()),
        Err(GalleryError::Exists { .. })
    ));
}

#[test]
fn approximate_recall_at_10_against_exact() {
    let rng = ChaCha8Rng::seed_from_u64(5);
    let (n, dim) = (20_000, 32);
    for (name, b) in [("usearch", &Usearch as &dyn Backend), ("hnsw", &Hnsw)] {
        let dir = tempfile::tempdir().unwrap();
        let s = filled(b, dir.path(), n, dim, &mut rng.clone());
        let q = bcl::gallery::ops::probe_queries(s.as_ref(), 200, 0.5, 1).unwrap();
        let r = bcl::gallery::ops::ann_recall(s.as_ref(), &q, 10).unwrap();
        // Reported, not a timing: HNSW at the defaults (M 16, ef 128 / 64) on random 32-d unit
        // vectors.
        println!("{name} recall@10 against exact, {n} vectors, d = {dim}: {r:.4}");
        assert!(r > 0.8, "{name} recall@10 {r}");
    }
}

fn info(id: &str, compatible_with: Option<&str>) -> ModelInfo {
    ModelInfo {
        id: id.into(),
        name: format!("model-{id}"),
        method: "bct".into(),
        compatible_with: compatible_with.map(String::from),
        dim: 4,
        compat_dim: None,
        space_of: None,
    }
}

#[test]
fn lineage_admits_the_model_and_its_declared_successor_only() {
    let mut m = GalleryManifest::new(4);
    m.models = vec![info("old", None), info("new", Some("old"))];
    let only_old = BTreeMap::from([("old".to_string(), 10)]);
    let mixed = BTreeMap::from([("old".to_string(), 6), ("new".to_string(), 4)]);
    let only_new = BTreeMap::from([("old".to_string(), 0), ("new".to_string(), 10)]);
    let old = info("old", None);
    let new = info("new", Some("old"));
    let next = info("next", Some("new"));
    let stranger = info("stranger", None);
    assert_eq!(
        check_lineage(&m, &only_old, &old, false).unwrap(),
        Lineage::Same
    );
    assert_eq!(
        check_lineage(&m, &only_old, &new, false).unwrap(),
        Lineage::Successor
    );
    assert_eq!(
        check_lineage(&m, &mixed, &new, false).unwrap(),
        Lineage::Successor
    );
    assert_eq!(
        check_lineage(&m, &only_new, &new, false).unwrap(),
        Lineage::Same
    );
    assert_eq!(
        check_lineage(&m, &BTreeMap::new(), &stranger, false).unwrap(),
        Lineage::Same
    );
    // refusals: an unrelated model; the old model against re-embedded items; a successor of
    // a successor against the first model's vectors (declarations do not chain)
    for (counts, q) in [(&only_old, &stranger), (&mixed, &old), (&only_old, &next)] {
        match check_lineage(&m, counts, q, false) {
            Err(GalleryError::Lineage(t)) => {
                assert!(t.contains(&q.id) && t.contains("force"), "{t}")
            }
            other => panic!("{} on {counts:?}: {other:?}", q.id),
        }
        assert!(matches!(
            check_lineage(&m, counts, q, true).unwrap(),
            Lineage::Forced(_)
        ));
    }
    assert!(check_lineage(&m, &mixed, &next, false).is_err());
    // the dimension is never overridable
    let mut wide = new.clone();
    wide.dim = 8;
    assert!(matches!(
        check_lineage(&m, &only_old, &wide, true),
        Err(GalleryError::Invalid(_))
    ));
}

#[test]
fn a_reopened_store_serves_concurrent_searches() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let mut s = filled(&Usearch, dir.path(), 3000, 16, &mut rng);
    s.checkpoint().unwrap();
    drop(s);
    // reopened from its snapshot (no log to replay), then searched from many threads at once,
    // as the HTTP server does
    let s = Usearch.reopen(dir.path());
    let q = random_rows(1, 16, &mut rng);
    std::thread::scope(|sc| {
        for _ in 0..16 {
            sc.spawn(|| {
                for _ in 0..50 {
                    s.search_approx(&q, 10).unwrap();
                    s.search_exact(&q, 10).unwrap();
                }
            });
        }
    });
}

/// The Milvus backend against milvus-lite, started on loopback by this test and stopped after.
#[cfg(feature = "milvus")]
mod milvus {
    use super::*;
    use bcl::gallery::milvus_store::MilvusStore;
    use bcl::gallery::MilvusConfig;
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A milvus-lite server on a free loopback port, killed on drop.
    struct Lite {
        child: Child,
        uri: String,
        _data: tempfile::TempDir,
    }

    impl Lite {
        fn start() -> Self {
            let exe = std::env::var_os("BCL_MILVUS_LITE")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| {
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/milvus-lite")
                });
            assert!(
                exe.exists(),
                "{}: milvus-lite not found; scripts/setup.sh installs it into .venv (or set \
                 BCL_MILVUS_LITE)",
                exe.display()
            );
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let data = tempfile::tempdir().unwrap();
            let mut child = Command::new(&exe)
                .args([
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "--data-dir",
                ])
                .arg(data.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let t = std::time::Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("milvus-lite exited at start: {status}");
                }
                assert!(
                    t.elapsed().as_secs() < 90,
                    "milvus-lite did not listen within 90 s"
                );
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Self {
                child,
                uri: format!("http://127.0.0.1:{port}"),
                _data: data,
            }
        }
    }

    impl Drop for Lite {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    struct Milvus<'a> {
        lite: &'a Lite,
        n: AtomicUsize,
    }

    impl Backend for Milvus<'_> {
        fn create(&self, dir: &Path, dim: usize) -> Box<dyn GalleryStore> {
            let cfg = MilvusConfig {
                uri: self.lite.uri.clone(),
                collection: format!("t{}", self.n.fetch_add(1, Ordering::Relaxed)),
                ..Default::default()
            };
            Box::new(MilvusStore::create(dir, GalleryManifest::new(dim), cfg).unwrap())
        }
        fn reopen(&self, dir: &Path) -> Box<dyn GalleryStore> {
            Box::new(MilvusStore::open(dir).unwrap())
        }
    }

    #[test]
    fn milvus_passes_the_store_suite() {
        let lite = Lite::start();
        let b = Milvus {
            lite: &lite,
            n: AtomicUsize::new(0),
        };
        suite_add_search_reopen(&b);
        suite_rejects_bad_input(&b);
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(6));
        runner.run(&cases(), |c| exact_equals_brute(&b, c)).unwrap();
        // an existing collection is not overwritten
        let dir = tempfile::tempdir().unwrap();
        let cfg = MilvusConfig {
            uri: lite.uri.clone(),
            collection: "t0".into(),
            ..Default::default()
        };
        let e = MilvusStore::create(dir.path(), GalleryManifest::new(4), cfg)
            .err()
            .unwrap();
        assert!(e.to_string().contains("already exists"), "{e}");
        // two writers registering models at the same time both keep their registration
        // (issue 11, item 6: the manifest was one row, rewritten whole by each writer)
        let dir = tempfile::tempdir().unwrap();
        drop(b.create(dir.path(), 4));
        let mut w1 = MilvusStore::open(dir.path()).unwrap();
        let mut w2 = MilvusStore::open(dir.path()).unwrap();
        register(&mut w1, "x");
        register(&mut w2, "y"); // w2's manifest does not know x yet
        assert_eq!(w2.manifest().models.len(), 2, "w2 sees x after its write");
        w1.add("x", &[1], &[1.0, 0.0, 0.0, 0.0]).unwrap();
        w2.add("y", &[2], &[0.0, 1.0, 0.0, 0.0]).unwrap();
        let s = b.reopen(dir.path());
        let ids: Vec<&str> = s.manifest().models.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["x", "y"]);
        // and the approximate index's recall against exact, reported
        let dir = tempfile::tempdir().unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let s = filled(&b, dir.path(), 5000, 32, &mut rng);
        let q = bcl::gallery::ops::probe_queries(s.as_ref(), 100, 0.5, 1).unwrap();
        let r = bcl::gallery::ops::ann_recall(s.as_ref(), &q, 10).unwrap();
        println!("milvus-lite HNSW recall@10 against exact, 5000 vectors, d = 32: {r:.4}");
        assert!(r > 0.5, "recall@10 {r}");
    }
}

/// Hostile-input and data-loss regressions of the usearch store (issue 11, items 1 to 6).
mod hostile {
    use super::*;

    fn store_with(dir: &Path, dim: usize, checkpoint_bytes: u64) -> UsearchStore {
        let cfg = UsearchConfig {
            checkpoint_bytes,
            ..Default::default()
        };
        usearch_with(dir, dim, cfg)
    }

    /// Adds `batches` batches of 10 vectors (ids `b*10..b*10+10`) one record each.
    fn add_batches(s: &mut UsearchStore, batches: u64, dim: usize, rng: &mut ChaCha8Rng) {
        for b in 0..batches {
            let ids: Vec<u64> = (b * 10..b * 10 + 10).collect();
            s.add("a", &ids, &random_rows(10, dim, rng)).unwrap();
        }
    }

    /// Byte offsets of the log's records (the layout: `[len u32][crc u32][payload]`).
    fn record_offsets(log: &[u8]) -> Vec<usize> {
        let mut at = 0;
        let mut out = Vec::new();
        while at + 8 <= log.len() {
            out.push(at);
            at += 8 + u32::from_le_bytes(log[at..at + 4].try_into().unwrap()) as usize;
        }
        out
    }

    #[test]
    fn writes_after_an_automatic_checkpoint_survive_a_reopen() {
        // item 1: the log is truncated by each automatic checkpoint; later records must land
        // at its start, not after a run of zeros
        let dir = tempfile::tempdir().unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut s = store_with(dir.path(), 8, 2_000); // a record of 10 vectors is ~430 bytes
        for b in 0..40u64 {
            let ids: Vec<u64> = (b * 10..b * 10 + 10).collect();
            s.add("a", &ids, &random_rows(10, 8, &mut rng)).unwrap();
            let log = std::fs::read(wal(dir.path())).unwrap();
            assert!(log.len() <= 2_000 + 430, "add {b}: {} bytes", log.len());
            assert!(
                log.is_empty() || !log.starts_with(&[0; 4]),
                "add {b}: the log after a checkpoint starts with zeros"
            );
        }
        let gen: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("gallery.json")).unwrap())
                .unwrap();
        assert!(gen["generation"].as_u64().unwrap() >= 5, "{gen}");
        drop(s); // as a kill would: no final checkpoint
        let s = UsearchStore::open(dir.path()).unwrap();
        assert_eq!(s.len(), 400, "every acknowledged add is there");
    }

    #[test]
    fn a_damaged_record_before_the_tail_is_refused_then_recovered() {
        // item 2: a flipped bit in record 2 of 22
        let dir = tempfile::tempdir().unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        let mut s = store_with(dir.path(), 6, 0);
        add_batches(&mut s, 22, 6, &mut rng);
        drop(s);
        let mut log = std::fs::read(wal(dir.path())).unwrap();
        let offsets = record_offsets(&log);
        assert_eq!(offsets.len(), 22);
        log[offsets[1] + 40] ^= 0x10;
        std::fs::write(wal(dir.path()), &log).unwrap();
        match UsearchStore::open(dir.path()) {
            Err(GalleryError::Corrupt { path, reason }) => {
                assert_eq!(path, wal(dir.path()));
                assert!(
                    reason.contains("2..=2")
                        && reason.contains("20 intact")
                        && reason.contains("recover the gallery"),
                    "{reason}"
                );
            }
            other => panic!("expected Corrupt, got {:?}", other.map(|s| s.len())),
        }
        assert_eq!(
            std::fs::read(wal(dir.path())).unwrap(),
            log,
            "a refused open leaves the log as it was"
        );
        let (s, r) = UsearchStore::recover(dir.path()).unwrap();
        assert_eq!(s.len(), 210, "every record but the damaged one");
        assert_eq!(r.lost_sequences, vec![2]);
        assert_eq!(r.records, 21);
        let saved = r.saved_log.unwrap();
        assert_eq!(
            std::fs::read(&saved).unwrap(),
            log,
            "the damaged log is kept"
        );
        assert!(s.vectors(&[15]).is_err() && s.vectors(&[25]).is_ok());
        drop(s);
        let s = UsearchStore::open(dir.path()).unwrap();
        assert_eq!(s.len(), 210);
        assert!(saved.exists(), "reopening never removes the saved log");
    }

    #[test]
    fn a_gap_of_zeros_between_consecutive_records_loses_nothing() {
        // the log older versions wrote after an automatic checkpoint: records, a run of zeros,
        // then the next records in sequence; nothing is missing, so it opens with everything
        let dir = tempfile::tempdir().unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        let mut s = store_with(dir.path(), 4, 0);
        add_batches(&mut s, 6, 4, &mut rng);
        drop(s);
        let log = std::fs::read(wal(dir.path())).unwrap();
        let cut = record_offsets(&log)[3];
        let mut holed = log[..cut].to_vec();
        holed.extend(std::iter::repeat_n(0u8, 5000));
        holed.extend_from_slice(&log[cut..]);
        std::fs::write(wal(dir.path()), &holed).unwrap();
        let s = UsearchStore::open(dir.path()).unwrap();
        assert_eq!(s.len(), 60);
        assert!(
            std::fs::metadata(wal(dir.path())).unwrap().len() == 0,
            "the hole is folded away by a checkpoint"
        );
    }

    #[test]
    fn model_ids_too_long_for_the_log_are_refused_at_registration() {
        // item 3: a u16 length field must never truncate a name silently
        let dir = tempfile::tempdir().unwrap();
        let mut s = store_with(dir.path(), 4, 0);
        let mut m = s.manifest().clone();
        m.models.push(ModelInfo::external(&"x".repeat(70_000), 4));
        match s.set_manifest(m) {
            Err(GalleryError::Invalid(t)) => assert!(t.contains("1 to 256 bytes"), "{t}"),
            other => panic!("{other:?}"),
        }
        let mut m = s.manifest().clone();
        m.models.push(ModelInfo::external("a", 4));
        assert!(matches!(s.set_manifest(m), Err(GalleryError::Invalid(t)) if t.contains("twice")));
        let long = "y".repeat(256);
        register(&mut s, &long);
        s.add(&long, &[1], &[1.0, 0.0, 0.0, 0.0]).unwrap();
        drop(s);
        let s = UsearchStore::open(dir.path()).unwrap();
        assert_eq!(s.counts().unwrap()[&long], 1);
    }

    #[test]
    fn the_store_touches_no_file_it_did_not_name() {
        // item 4
        let dir = tempfile::tempdir().unwrap();
        let notes = dir.path().join("index-notes.txt");
        std::fs::write(&notes, b"mine").unwrap();
        match UsearchStore::create(
            dir.path(),
            GalleryManifest::new(4),
            UsearchConfig::default(),
        ) {
            Err(GalleryError::Invalid(t)) => {
                assert!(
                    t.contains("not empty") && t.contains("index-notes.txt"),
                    "{t}"
                )
            }
            other => panic!("{:?}", other.map(|s| s.len())),
        }
        assert!(notes.exists());
        let store = dir.path().join("g");
        let mut rng = ChaCha8Rng::seed_from_u64(14);
        let mut s = store_with(&store, 4, 0);
        add_batches(&mut s, 2, 4, &mut rng);
        s.checkpoint().unwrap();
        drop(s);
        // files a user put into the gallery directory afterwards
        let theirs = [
            "index-notes.txt",
            "items-list.tmp",
            "index-2.usearch.bak",
            "x.tmp",
            ".gallery.json.old.tmp",
        ];
        for f in theirs {
            std::fs::write(store.join(f), b"mine").unwrap();
        }
        // and the store's own leftovers of a checkpoint that died
        std::fs::write(store.join("index-7.usearch.tmp"), b"junk").unwrap();
        std::fs::write(store.join("items-7.bin"), b"junk").unwrap();
        let s = UsearchStore::open(&store).unwrap();
        assert_eq!(s.len(), 20);
        for f in theirs {
            assert!(store.join(f).exists(), "{f} was removed");
        }
        assert!(!store.join("index-7.usearch.tmp").exists());
        assert!(!store.join("items-7.bin").exists());
    }

    /// Rewrites `items-1.bin` with the given body and a valid checksum.
    fn write_items_file(dir: &Path, body: &[u8]) {
        let mut b = body.to_vec();
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        std::fs::write(dir.join("items-1.bin"), b).unwrap();
    }

    #[test]
    fn crafted_counts_dimensions_and_huge_vectors_get_errors_not_panics() {
        // item 5
        let dir = tempfile::tempdir().unwrap();
        let mut s = store_with(dir.path(), 4, 0);
        s.add("a", &[1], &[1.0, 0.0, 0.0, 0.0]).unwrap();
        s.checkpoint().unwrap();
        drop(s);
        // an item count of 2^62 with a valid checksum: n * 12 wraps in usize
        let mut body = (1u64 << 62).to_le_bytes().to_vec();
        body.extend_from_slice(&[0; 4]);
        write_items_file(dir.path(), &body);
        match UsearchStore::open(dir.path()) {
            Err(GalleryError::Corrupt { reason, .. }) => {
                assert!(reason.contains("item count"), "{reason}")
            }
            other => panic!("{:?}", other.map(|s| s.len())),
        }
        // a manifest of dimension 0 (and one too large)
        for dim in [0usize, 1 << 20] {
            let d = tempfile::tempdir().unwrap();
            drop(store_with(d.path(), 4, 0));
            let p = d.path().join("gallery.json");
            let mut v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            v["manifest"]["dim"] = dim.into();
            std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
            match UsearchStore::open(d.path()) {
                Err(GalleryError::Corrupt { path, reason }) => {
                    assert_eq!(path, p);
                    assert!(reason.contains("dimension"), "{reason}");
                }
                other => panic!("dim {dim}: {:?}", other.map(|s| s.len())),
            }
            assert!(UsearchStore::create(
                &d.path().join("new"),
                GalleryManifest::new(dim),
                UsearchConfig::default()
            )
            .is_err());
        }
        // finite but huge (and tiny) components keep their direction
        let d = tempfile::tempdir().unwrap();
        let mut s = store_with(d.path(), 4, 0);
        s.add(
            "a",
            &[1, 2, 3],
            &[
                3e30, 4e30, 0.0, 0.0, 0.0, 0.0, -1e38, 0.0, 1e-40, 0.0, 0.0, 0.0,
            ],
        )
        .unwrap();
        let v = s.vectors(&[1, 2, 3]).unwrap();
        let want = [0.6, 0.8, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0];
        for (g, w) in v.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{v:?}");
        }
        let hits = s.search_exact(&[6e25, 8e25, 0.0, 0.0], 1).unwrap();
        assert_eq!(hits[0][0].id, 1);
        assert!((hits[0][0].score - 1.0).abs() < 1e-5, "{hits:?}");
    }

    #[test]
    fn a_write_that_fails_inside_the_index_poisons_the_store_until_reopened() {
        // item 6: removals happen before additions; a failure between must not leave a store
        // that serves an index and an item list that disagree
        let dir = tempfile::tempdir().unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(15);
        let mut s = store_with(dir.path(), 4, 0);
        add_batches(&mut s, 3, 4, &mut rng);
        let upd = random_rows(5, 4, &mut rng);
        s.fail_next_apply();
        assert!(matches!(
            s.add("a", &[0, 1, 2, 3, 4], &upd),
            Err(GalleryError::Index(_))
        ));
        for r in [
            s.search_exact(&upd[..4], 3).map(|_| ()),
            s.vectors(&[7]).map(|_| ()),
            s.add("a", &[99], &upd[..4]),
            s.checkpoint(),
        ] {
            match r {
                Err(GalleryError::Invalid(t)) => assert!(t.contains("reopen"), "{t}"),
                other => panic!("{other:?}"),
            }
        }
        drop(s);
        // the record reached the log before the index failed: reopening applies it
        let s = UsearchStore::open(dir.path()).unwrap();
        assert_eq!(s.len(), 30);
        let got = s.vectors(&[0]).unwrap();
        assert!(got.iter().zip(&upd[..4]).all(|(a, b)| (a - b).abs() < 1e-5));
    }
}

/// Sizes from the command line (issue 11, item 13): a k beyond the gallery is all of it, even
/// usize::MAX; a recall probe of 2e8 queries is an error, not an abort.
#[test]
fn huge_k_and_probe_sizes_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let s = filled(&Usearch, dir.path(), 50, 4, &mut rng);
    let q = random_rows(2, 4, &mut rng);
    for k in [10_000_000_000usize, usize::MAX] {
        for hits in s.search_exact(&q, k).unwrap() {
            assert_eq!(hits.len(), 50);
        }
        // approximate search may miss an item the graph does not reach; it must not abort
        for hits in s.search_approx(&q, k).unwrap() {
            assert!((40..=50).contains(&hits.len()), "{}", hits.len());
        }
    }
    match bcl::gallery::ops::probe_queries(s.as_ref(), 200_000_000, 0.5, 0) {
        Err(GalleryError::Invalid(t)) => assert!(t.contains("at most 100000"), "{t}"),
        other => panic!("{:?}", other.map(|v| v.len())),
    }
}

/// An index kept in bfloat16 or float16: searches see the rounded vectors, the setting survives
/// a checkpoint and a reopen (snapshot and log replay), and the log keeps float32.
#[test]
fn half_precision_index_rounds_vectors_and_keeps_its_setting() {
    use bcl::gallery::usearch_store::Quantization;
    for (q, tol) in [(Quantization::Bf16, 1e-2f32), (Quantization::F16, 1e-3)] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = UsearchConfig {
            quantization: q,
            ..Default::default()
        };
        let mut s = usearch_with(dir.path(), 16, cfg);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let rows = random_rows(200, 16, &mut rng);
        let ids: Vec<u64> = (0..200).collect();
        s.add("a", &ids[..100], &rows[..1600]).unwrap();
        s.checkpoint().unwrap();
        s.add("a", &ids[100..], &rows[1600..]).unwrap(); // in the log only
        drop(s);
        let s = UsearchStore::open(dir.path()).unwrap();
        assert_eq!(s.index_config().quantization, q);
        let back = s.vectors(&ids).unwrap();
        let err = back
            .iter()
            .zip(&rows)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            err > 0.0 && err < tol,
            "{q:?}: stored vectors differ by {err}"
        );
        // each vector finds itself first, exactly and approximately, with its rounded score
        for (i, row) in rows.chunks(16).enumerate().step_by(17) {
            for exact in [true, false] {
                let hits = if exact {
                    s.search_exact(row, 1)
                } else {
                    s.search_approx(row, 1)
                };
                let h = &hits.unwrap()[0][0];
                assert_eq!(h.id, i as u64, "{q:?} exact {exact}");
                assert!(
                    (h.score - 1.0).abs() < 4.0 * tol,
                    "{q:?}: score {}",
                    h.score
                );
            }
        }
    }
    assert!(Quantization::parse("int8")
        .unwrap_err()
        .to_string()
        .contains("bf16"));
}

/// A store file that says float32 over a snapshot written in bfloat16 (a hand-edited or
/// swapped file): the index keeps the precision its snapshot holds, so the float32 kernel never
/// reads half-precision vectors as float32; each vector still finds itself with its rounded
/// score (or the store refuses to open, naming why).
#[test]
fn a_snapshot_in_another_precision_than_the_store_file_is_never_read_as_float32() {
    use bcl::gallery::usearch_store::Quantization;
    let dir = tempfile::tempdir().unwrap();
    let cfg = UsearchConfig {
        quantization: Quantization::Bf16,
        ..Default::default()
    };
    let mut s = usearch_with(dir.path(), 16, cfg);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let rows = random_rows(100, 16, &mut rng);
    let ids: Vec<u64> = (0..100).collect();
    s.add("a", &ids, &rows).unwrap();
    s.checkpoint().unwrap();
    drop(s);
    let file = dir.path().join(bcl::gallery::GALLERY_FILE);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("\"bf16\""), "{text}");
    let edited = text
        .replace(",\"quantization\":\"bf16\"", "")
        .replace(",\n    \"quantization\": \"bf16\"", "");
    assert!(!edited.contains("bf16"), "the test's edit missed: {edited}");
    std::fs::write(&file, edited).unwrap();
    let s = match UsearchStore::open(dir.path()) {
        Ok(s) => s,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    for (i, row) in rows.chunks(16).enumerate().step_by(7) {
        let h = &s.search_approx(row, 1).unwrap()[0][0];
        assert_eq!(h.id, i as u64);
        assert!((h.score - 1.0).abs() < 4e-2, "score {}", h.score);
    }
}

/// Without `HnswIndex::reattach`, these builds leave items that their own vector never finds
/// (usearch#735): one build in ten on two threads, the very first build on four.
#[test]
fn every_vector_added_in_parallel_finds_itself() {
    use bcl::gallery::usearch_store::{HnswIndex, Quantization};
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap();
    let ids: Vec<u64> = (0..100).collect();
    for (build, q) in (0..60).zip([Quantization::F32, Quantization::Bf16].iter().cycle()) {
        let v = random_rows(100, 16, &mut ChaCha8Rng::seed_from_u64(build));
        let cfg = UsearchConfig {
            quantization: *q,
            ..Default::default()
        };
        let lost: Vec<u64> = pool.install(|| {
            let mut idx = HnswIndex::create(16, &cfg).unwrap();
            idx.reserve(100).unwrap();
            idx.add(&ids, &v).unwrap();
            assert_eq!(idx.len(), 100);
            ids.iter()
                .filter(|&&i| {
                    let row = &v[i as usize * 16..(i as usize + 1) * 16];
                    idx.search(row, 1).unwrap()[0].id != i
                })
                .copied()
                .collect()
        });
        assert!(lost.is_empty(), "build {build} ({q:?}): {lost:?} not found");
    }
}

/// The project's engine: what 4 threads insert at once is found by its own vector, in small
/// graphs (every insert its own batch) and past the size where inserts run in parallel batches.
#[test]
fn every_vector_the_hnsw_engine_adds_in_parallel_finds_itself() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap();
    for (build, n) in (0..20u64).zip([100usize, 3000].iter().cycle()) {
        let dim = 16;
        let v = random_rows(*n, dim, &mut ChaCha8Rng::seed_from_u64(build));
        let ids: Vec<u64> = (0..*n as u64).map(|i| i * 7 + 3).collect();
        let lost: Vec<u64> = pool.install(|| {
            let mut idx = FlatHnsw::create(dim, &FlatHnswConfig::default()).unwrap();
            // in two calls, so that the second links against a graph the first built
            let half = n / 2;
            idx.add(&ids[..half], &v[..half * dim]).unwrap();
            idx.add(&ids[half..], &v[half * dim..]).unwrap();
            assert_eq!(idx.len(), *n);
            ids.iter()
                .zip(v.chunks(dim))
                .filter(|(&i, row)| idx.search(row, 1).unwrap()[0].id != i)
                .map(|(&i, _)| i)
                .collect()
        });
        assert!(lost.is_empty(), "build {build} of {n}: {lost:?} not found");
    }
}

/// Removal: a removed item is never returned, its vector is gone, the count follows, and the
/// id can be added again with another vector; all of it survives a snapshot.
#[test]
fn the_hnsw_engine_removes_and_reloads() {
    let dim = 12;
    let n = 2000;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let v = random_rows(n, dim, &mut rng);
    let ids: Vec<u64> = (0..n as u64).collect();
    let mut idx = FlatHnsw::create(dim, &FlatHnswConfig::default()).unwrap();
    idx.add(&ids, &v).unwrap();
    let removed: Vec<u64> = (0..n as u64).filter(|i| i % 3 == 0).collect();
    for &i in &removed {
        idx.remove(i).unwrap();
    }
    assert_eq!(idx.len(), n - removed.len());
    let mut out = vec![0.0; dim];
    assert!(!idx.get(0, &mut out).unwrap());
    assert!(idx.get(1, &mut out).unwrap());
    assert_eq!(out, v[dim..2 * dim]);
    let fresh = random_rows(1, dim, &mut rng);
    idx.add(&[0], &fresh).unwrap();
    assert!(idx.get(0, &mut out).unwrap());
    assert_eq!(out, fresh);
    let q = random_rows(50, dim, &mut rng);
    let before: Vec<Vec<Hit>> = q.chunks(dim).map(|r| idx.search(r, 10).unwrap()).collect();
    for hits in &before {
        assert_eq!(hits.len(), 10);
        assert!(hits.iter().all(|h| h.id == 0 || h.id % 3 != 0), "{hits:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.hnsw");
    idx.save(&path).unwrap();
    let back = FlatHnsw::load(&path, dim, &FlatHnswConfig::default()).unwrap();
    assert_eq!(back.len(), idx.len());
    for (r, want) in q.chunks(dim).zip(&before) {
        assert_same(&back.search(r, 10).unwrap(), want);
    }
    // a snapshot read as another dimension is refused, naming both
    match FlatHnsw::load(&path, dim + 1, &FlatHnswConfig::default()) {
        Err(GalleryError::Corrupt { reason, .. }) => assert!(reason.contains("dimension 12")),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

/// A snapshot file of the engine, damaged: every truncation and every flipped byte is refused
/// as corrupt (the checksum), and so is a file whose checksum was recomputed after a link was
/// pointed past the last slot (the structural checks): no file makes a search read out of
/// bounds.
#[test]
fn the_hnsw_engine_refuses_damaged_snapshots() {
    let dim = 4;
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let mut idx = FlatHnsw::create(dim, &FlatHnswConfig::default()).unwrap();
    idx.add(
        &(0..60).collect::<Vec<_>>(),
        &random_rows(60, dim, &mut rng),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.hnsw");
    idx.save(&path).unwrap();
    let good = std::fs::read(&path).unwrap();
    let load = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        FlatHnsw::load(&path, dim, &FlatHnswConfig::default())
    };
    let refused = |r: bcl::gallery::Result<FlatHnsw>, what: &str| match r {
        Err(GalleryError::Corrupt { reason, .. }) => reason,
        other => panic!("{what}: {:?}", other.map(|i| i.len())),
    };
    assert_eq!(load(&good).unwrap().len(), 60);
    for cut in 0..good.len() {
        refused(load(&good[..cut]), &format!("cut at {cut}"));
    }
    for at in 0..good.len() {
        let mut b = good.clone();
        b[at] ^= 0x41;
        refused(load(&b), &format!("byte {at} flipped"));
    }
    // the first level-0 list starts after the header (8 + 4 * 3 + 8 + 4 + 4), the ids, the
    // deletion marks, the levels and the vectors; its first link is one word in
    let header = 8 + 12 + 8 + 8;
    let link = header + 60 * (8 + 1 + 1) + 60 * dim * 4 + 4;
    let mut b = good[..good.len() - 4].to_vec();
    assert!(
        u32::from_le_bytes(b[link - 4..link].try_into().unwrap()) > 0,
        "slot 0 has links"
    );
    b[link..link + 4].copy_from_slice(&1000u32.to_le_bytes());
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let reason = refused(load(&b), "a link past the end");
    assert!(reason.contains("slot 1000"), "{reason}");

    // an upper-level link to a node of level 0 (checksum recomputed): refused, not indexed
    let n = 3000;
    let mut idx = FlatHnsw::create(dim, &FlatHnswConfig::default()).unwrap();
    idx.add(
        &(0..n as u64).collect::<Vec<_>>(),
        &random_rows(n, dim, &mut rng),
    )
    .unwrap();
    idx.save(&path).unwrap();
    let mut b = std::fs::read(&path).unwrap();
    b.truncate(b.len() - 4);
    let levels = b[header + n * 9..header + n * 10].to_vec();
    let flat = levels.iter().position(|&l| l == 0).unwrap();
    // the upper lists follow the level-0 lists, slot by slot (M + 1 words per level)
    let mut at = header + n * 10 + n * dim * 4 + n * 33 * 4;
    let mut patched = false;
    for &l in &levels {
        if l > 0 && u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) > 0 {
            b[at + 4..at + 8].copy_from_slice(&(flat as u32).to_le_bytes());
            patched = true;
            break;
        }
        at += l as usize * 17 * 4;
    }
    assert!(patched, "a node above level 0 with links");
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let reason = refused(load(&b), "an upper link to level 0");
    assert!(reason.contains("whose level is 0"), "{reason}");
}
