//! Mutation fuzzing of every reader of untrusted files (issue 11): a valid file, changed by
//! proptest (bytes flipped or overwritten with extreme length values, the file cut short, bytes
//! inserted), must give a value or a typed error, never a panic, an abort or a huge allocation.
//! cargo-fuzz needs a nightly compiler this project does not install, so the mutations are
//! proptest's, bounded in time by the case count (`BCL_FUZZ_CASES`, default 48 per reader; CI
//! runs the default). A failure prints the minimal mutation; proptest keeps it in
//! `fuzz.proptest-regressions`, which is committed, so every crash found stays a test.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use bcl::data::{read_idx_images, read_idx_labels, synthetic, write_idx_dir};
use bcl::eval::mapped::MappedMatrix;
use bcl::eval::revisited::{QueryGnd, RevisitedGnd};
use bcl::eval::search::SearchBlocks;
use bcl::gallery::usearch_store::{UsearchConfig, UsearchStore};
use bcl::gallery::{GalleryManifest, GalleryStore, ModelInfo};
use bcl::npy;
use proptest::prelude::*;

mod common;
use common::{apply, fuzz_config, mutations, write_npy};

/// Runs `read` on the mutated bytes written to `path`; a panic fails the case (an abort or a
/// stack overflow fails the whole binary, which is as loud).
fn survives<T>(
    path: &Path,
    bytes: &[u8],
    read: impl FnOnce(&Path) -> T,
) -> Result<(), TestCaseError> {
    std::fs::write(path, bytes).unwrap();
    let r = catch_unwind(AssertUnwindSafe(|| read(path)));
    prop_assert!(r.is_ok(), "the reader panicked on {} bytes", bytes.len());
    Ok(())
}

fn idx_files() -> (Vec<u8>, Vec<u8>) {
    let d = tempfile::tempdir().unwrap();
    let (tr, te) = synthetic(3, 4, 2, 1);
    write_idx_dir(d.path(), &tr, &te).unwrap();
    let read = |n: &str| std::fs::read(d.path().join(n)).unwrap();
    (
        read("train-images-idx3-ubyte"),
        read("train-labels-idx1-ubyte"),
    )
}

fn npy_files() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("f.npy");
    let l = d.path().join("l.npy");
    let vals: Vec<u8> = (0..6)
        .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
        .collect();
    write_npy(&f, "<f4", &[2, 3], &vals);
    write_npy(
        &l,
        "<i8",
        &[2],
        &[3u8, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
    );
    let h = d.path().join("h.npy");
    let halves: Vec<u8> = (0..6)
        .flat_map(|i| half::f16::from_f32(i as f32 * 0.5).to_le_bytes())
        .collect();
    write_npy(&h, "<f2", &[2, 3], &halves);
    let read = |p: &Path| std::fs::read(p).unwrap();
    (read(&f), read(&l), read(&h))
}

fn gnd_file() -> Vec<u8> {
    let g = RevisitedGnd {
        imlist: vec!["a".into(), "b".into(), "c".into()],
        qimlist: vec!["q".into()],
        gnd: vec![QueryGnd {
            bbx: Some(vec![1.0, 2.0, 30.0, 40.0]),
            easy: vec![0],
            hard: vec![2],
            junk: vec![1],
        }],
    };
    serde_pickle::to_vec(&g, Default::default()).unwrap()
}

proptest! {
    #![proptest_config(fuzz_config())]

    #[test]
    fn idx_readers_survive_mutation(ms in mutations(), labels in any::<bool>()) {
        let (images, label_file) = idx_files();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        if labels {
            survives(&p, &apply(&label_file, &ms), |p| read_idx_labels(p, 3).map(|_| ()))?;
        } else {
            survives(&p, &apply(&images, &ms), |p| read_idx_images(p).map(|_| ()))?;
        }
    }

    #[test]
    fn npy_readers_survive_mutation(ms in mutations(), which in 0usize..4) {
        let (features, label_file, half) = npy_files();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.npy");
        match which {
            0 => survives(&p, &apply(&label_file, &ms), |p| npy::read_labels(p).map(|_| ()))?,
            1 => survives(&p, &apply(&features, &ms), |p| npy::read_features(p).map(|_| ()))?,
            // the memory-mapped gallery: opened, then searched (its values are checked then)
            w => survives(&p, &apply(if w == 2 { &features } else { &half }, &ms), |p| {
                MappedMatrix::open(p).and_then(|m| {
                    let q = tch::Tensor::ones([1, m.dim() as i64], (tch::Kind::Float, tch::Device::Cpu));
                    m.search(&q, 1, SearchBlocks::default(), 8)
                })
                .map(|_| ())
            })?,
        }
    }

    #[test]
    fn ground_truth_reader_survives_mutation(ms in mutations()) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("gnd.pkl");
        survives(&p, &apply(&gnd_file(), &ms), |p| RevisitedGnd::read(p).map(|_| ()))?;
    }

    /// The store's log, item list and description, each mutated in a closed store: opening it
    /// gives an error or a store whose searches answer.
    #[test]
    fn store_files_survive_mutation(ms in mutations(), which in 0usize..3) {
        let d = tempfile::tempdir().unwrap();
        let dim = 4;
        let mut s = UsearchStore::create(d.path(), GalleryManifest::new(dim), UsearchConfig::default()).unwrap();
        let mut m = s.manifest().clone();
        m.models.push(ModelInfo::external("ext", dim));
        s.set_manifest(m).unwrap();
        let v: Vec<f32> = (0..40 * dim).map(|i| (i % 7) as f32 - 3.0).collect();
        s.add("ext", &(0..20).collect::<Vec<_>>(), &v[..20 * dim]).unwrap();
        s.checkpoint().unwrap();
        s.add("ext", &(20..40).collect::<Vec<_>>(), &v[20 * dim..]).unwrap();
        drop(s);
        let mut files: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy().to_string();
                n == "wal.log" || n.starts_with("items-") || n.ends_with(".json")
            })
            .collect();
        files.sort();
        prop_assert_eq!(files.len(), 3, "{:?}", files);
        let target = files[which].clone();
        let bytes = std::fs::read(&target).unwrap();
        survives(&target, &apply(&bytes, &ms), |_| {
            if let Ok(s) = UsearchStore::open(d.path()) {
                let _ = s.search_exact(&[1.0, 0.0, 0.0, 0.0], 5);
                let _ = s.counts();
            }
        })?;
    }
}
