//! The library's atomic writers: a write through a path-taking writer (libtorch's `.npy`)
//! lands whole or not at all, leaves no temporary file behind, and names the file on failure.

use bcl::files::{atomic_temp_target, write_atomic, write_atomic_with};

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_path_writer_lands_whole_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sub").join("x.npy");
    let t = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
    write_atomic_with(&out, |tmp| {
        // the writer is handed a temporary name beside the target, never the target itself
        assert_eq!(
            atomic_temp_target(&tmp.file_name().unwrap().to_string_lossy()),
            Some("x.npy")
        );
        t.write_npy(tmp).map_err(|e| e.to_string())
    })
    .unwrap();
    let back = tch::Tensor::read_npy(&out).unwrap();
    assert_eq!(Vec::<f32>::try_from(&back).unwrap(), vec![1.0, 2.0, 3.0]);
    assert_eq!(names(&dir.path().join("sub")), vec!["x.npy"]);
}

#[test]
fn a_failed_write_keeps_the_old_file_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.npy");
    write_atomic(&out, b"old").unwrap();
    let e = write_atomic_with(&out, |tmp| {
        std::fs::write(tmp, b"half").unwrap();
        Err("the writer failed".into())
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("x.npy") && e.contains("the writer failed"),
        "{e}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
    assert_eq!(names(dir.path()), vec!["x.npy"]);
}
