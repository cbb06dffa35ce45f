//! IDX parsing: valid files (plain and gzipped) and every malformed case gives a clear error.

use std::io::Write;
use std::path::Path;

use bcl::data::{
    load_idx_dir, read_idx_images, read_idx_labels, write_idx_images, write_idx_labels, DataError,
    Dataset,
};

fn gz(path: &Path, bytes: &[u8]) {
    let f = std::fs::File::create(path).unwrap();
    let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap();
}

fn images_bytes(n: u32, r: u32, c: u32, data: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3];
    for d in [n, r, c] {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(data);
    b
}

#[test]
fn reads_plain_and_gzipped_files() {
    let dir = tempfile::tempdir().unwrap();
    let px: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
    write_idx_images(&dir.path().join("a"), &px, 2, 3, 4).unwrap();
    gz(
        &dir.path().join("a.gz"),
        &std::fs::read(dir.path().join("a")).unwrap(),
    );
    for name in ["a", "a.gz"] {
        let (p, n, r, c) = read_idx_images(&dir.path().join(name)).unwrap();
        assert_eq!((n, r, c), (2, 3, 4));
        assert_eq!(p, px);
    }
    write_idx_labels(&dir.path().join("l"), &[3, 0]).unwrap();
    assert_eq!(
        read_idx_labels(&dir.path().join("l"), 10).unwrap(),
        vec![3, 0]
    );
    let d = Dataset::from_idx(&dir.path().join("a.gz"), &dir.path().join("l"), 10).unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(d.labels, vec![3, 0]);
}

#[test]
fn wrong_magic_is_rejected_with_both_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x");
    // a labels file where images are expected
    write_idx_labels(&p, &[1, 2]).unwrap();
    let e = read_idx_images(&p).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::BadMagic {
                found: 0x801,
                expected: 0x803,
                ..
            }
        ),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("0x00000801")
            && msg.contains("0x00000803")
            && msg.contains(&p.display().to_string()),
        "{msg}"
    );
}

#[test]
fn truncated_files_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x");
    // header says 2x3x4 = 24 bytes of pixels, only 20 present
    std::fs::write(&p, images_bytes(2, 3, 4, &[7u8; 20])).unwrap();
    let e = read_idx_images(&p).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::Truncated {
                expected: 40,
                found: 36,
                ..
            }
        ),
        "{e}"
    );
    // header itself cut short
    std::fs::write(&p, &images_bytes(2, 3, 4, &[])[..9]).unwrap();
    assert!(matches!(
        read_idx_images(&p).unwrap_err(),
        DataError::Truncated { expected: 16, .. }
    ));
    // fewer than 4 bytes
    std::fs::write(&p, [0u8, 0]).unwrap();
    assert!(matches!(
        read_idx_images(&p).unwrap_err(),
        DataError::Truncated { .. }
    ));
    // trailing garbage is malformed too
    std::fs::write(&p, images_bytes(1, 1, 1, &[1, 2])).unwrap();
    assert!(matches!(
        read_idx_images(&p).unwrap_err(),
        DataError::Truncated {
            expected: 17,
            found: 18,
            ..
        }
    ));
    // truncated inside a gzip stream
    let full = images_bytes(2, 3, 4, &[7u8; 24]);
    gz(&dir.path().join("y.gz"), &full);
    let gzb = std::fs::read(dir.path().join("y.gz")).unwrap();
    std::fs::write(dir.path().join("y.gz"), &gzb[..gzb.len() / 2]).unwrap();
    let e = read_idx_images(&dir.path().join("y.gz")).unwrap_err();
    assert!(
        matches!(e, DataError::Gzip { .. } | DataError::Truncated { .. }),
        "{e}"
    );
}

#[test]
fn empty_files_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("empty");
    std::fs::write(&p, []).unwrap();
    let e = read_idx_labels(&p, 10).unwrap_err();
    assert!(matches!(e, DataError::Empty { .. }));
    assert!(e.to_string().contains("empty"));
    // zero items declared: a valid header but nothing to train on
    write_idx_images(&dir.path().join("i"), &[], 0, 28, 28).unwrap();
    write_idx_labels(&dir.path().join("l"), &[]).unwrap();
    let e = Dataset::from_idx(&dir.path().join("i"), &dir.path().join("l"), 10).unwrap_err();
    assert!(matches!(e, DataError::Empty { .. }), "{e}");
}

#[test]
fn count_mismatch_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    write_idx_images(&dir.path().join("i"), &[0u8; 3 * 4], 3, 2, 2).unwrap();
    write_idx_labels(&dir.path().join("l"), &[0, 1]).unwrap();
    let e = Dataset::from_idx(&dir.path().join("i"), &dir.path().join("l"), 10).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::CountMismatch {
                n_images: 3,
                n_labels: 2,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn label_out_of_range_is_rejected_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("l");
    write_idx_labels(&p, &[0, 9, 10, 2]).unwrap();
    let e = read_idx_labels(&p, 10).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::LabelOutOfRange {
                label: 10,
                index: 2,
                classes: 10,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn missing_directory_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = load_idx_dir(dir.path(), 10).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::Missing {
                name: "train-images-idx3-ubyte",
                ..
            }
        ),
        "{e}"
    );
    // the library says what is wrong in its own terms; the CLI adds the flag (tests/cli.rs)
    let text = e.to_string();
    assert!(
        text.contains("MNIST-layout IDX files") && !text.contains("--"),
        "{text}"
    );
}

#[test]
fn directory_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = bcl::data::synthetic(4, 5, 2, 3);
    bcl::data::write_idx_dir(dir.path(), &train, &test).unwrap();
    let (tr, te) = load_idx_dir(dir.path(), 4).unwrap();
    assert_eq!(tr.pixels, train.pixels);
    assert_eq!(tr.labels, train.labels);
    assert_eq!(te.labels, test.labels);
}

#[test]
fn a_gzip_bomb_is_cut_at_the_size_its_header_declares() {
    let dir = tempfile::tempdir().unwrap();
    // the header declares 2 × 3 × 4 = 24 bytes of pixels; the stream holds 64 MiB more
    let mut body = images_bytes(2, 3, 4, &[7u8; 24]);
    body.extend(std::iter::repeat_n(0u8, 64 << 20));
    let p = dir.path().join("bomb.gz");
    gz(&p, &body);
    assert!(
        std::fs::metadata(&p).unwrap().len() < 1 << 20,
        "a small file"
    );
    let e = read_idx_images(&p).unwrap_err();
    assert!(
        matches!(&e, DataError::Gzip { reason, .. } if reason.contains("more than the 40 bytes")),
        "{e}"
    );
    // a header declaring more than bcl reads is refused before any body is read
    let p = dir.path().join("huge.gz");
    gz(&p, &images_bytes(u32::MAX, u32::MAX, 4, &[]));
    let e = read_idx_images(&p).unwrap_err();
    assert!(e.to_string().contains("more than the"), "{e}");
    // and a plain file the same
    let p = dir.path().join("huge");
    std::fs::write(&p, images_bytes(u32::MAX, u32::MAX, 4, &[])).unwrap();
    assert!(read_idx_images(&p).is_err());
}

#[test]
fn images_without_pixels_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("i");
    std::fs::write(&p, images_bytes(5, 0, 0, &[])).unwrap();
    let e = read_idx_images(&p).unwrap_err();
    assert!(e.to_string().contains("0 × 0 pixels"), "{e}");
}
