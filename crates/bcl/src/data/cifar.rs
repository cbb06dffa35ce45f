//! CIFAR-100 in its published binary layout (`cifar-100-binary/train.bin`, `test.bin`): records
//! of 1 byte coarse label, 1 byte fine label and 3,072 bytes of pixels (the red, green and blue
//! 32 × 32 planes), read into a [`Dataset`] with the 100 fine labels.

use std::path::Path;

use super::{DataError, Dataset};

/// Bytes per CIFAR-100 record.
pub const RECORD: usize = 2 + 3 * 32 * 32;

fn format_err(path: &Path, reason: String) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        line: None,
        reason,
    }
}

/// Reads one CIFAR-100 binary file (fine labels).
pub fn read_cifar100_file(path: &Path) -> Result<Dataset, DataError> {
    let raw = super::read_nonempty(path)?;
    if raw.len() % RECORD != 0 {
        return Err(format_err(
            path,
            format!(
                "{} bytes is not a whole number of {RECORD}-byte CIFAR-100 records (truncated, or not CIFAR-100; CIFAR-10 records have 3,073 bytes)",
                raw.len()
            ),
        ));
    }
    let n = raw.len() / RECORD;
    let mut pixels = Vec::with_capacity(n * (RECORD - 2));
    let mut labels = Vec::with_capacity(n);
    for (i, rec) in raw.chunks_exact(RECORD).enumerate() {
        let (coarse, fine) = (rec[0], rec[1]);
        if coarse >= 20 || fine >= 100 {
            return Err(format_err(
                path,
                format!("record {i}: labels coarse {coarse} / fine {fine} out of range (20 coarse, 100 fine classes)"),
            ));
        }
        labels.push(fine as i64);
        pixels.extend_from_slice(&rec[2..]);
    }
    Ok(Dataset {
        pixels,
        labels,
        ids: (0..n).collect(),
        channels: 3,
        rows: 32,
        cols: 32,
        classes: 100,
    })
}

/// Reads `train.bin` and `test.bin` from a `cifar-100-binary` directory.
pub fn load_cifar100_dir(dir: &Path) -> Result<(Dataset, Dataset), DataError> {
    let get = |name: &'static str| {
        let p = dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(DataError::Format {
                path: dir.to_path_buf(),
                line: None,
                reason: format!(
                    "missing {name}: a CIFAR-100 directory holds train.bin and test.bin (the 'binary version' archive)"
                ),
            })
        }
    };
    Ok((
        read_cifar100_file(&get("train.bin")?)?,
        read_cifar100_file(&get("test.bin")?)?,
    ))
}

/// Writes a dataset of 3 × 32 × 32 images as a CIFAR-100 binary file (fixtures for tests;
/// the coarse label is written as `fine / 5`).
pub fn write_cifar100_file(path: &Path, data: &Dataset) -> std::io::Result<()> {
    assert_eq!(
        (data.channels, data.rows, data.cols),
        (3, 32, 32),
        "CIFAR images are 3x32x32"
    );
    let mut out = Vec::with_capacity(data.len() * RECORD);
    for (i, &l) in data.labels.iter().enumerate() {
        out.push((l / 5) as u8);
        out.push(l as u8);
        out.extend_from_slice(&data.pixels[i * (RECORD - 2)..(i + 1) * (RECORD - 2)]);
    }
    std::fs::write(path, out)
}
