//! File I/O every module shares, depending on nothing else in the crate: atomic writes (a
//! temporary file in the same directory, synced, renamed, the directory synced) and JSON/TOML
//! files read and written with errors that name the file.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// What can go wrong reading or writing a file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be written.
    #[error("{path}: cannot write: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file's content is not what was expected (or a value cannot be written as text).
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, synced, then
/// renamed (the directory synced too); `path` is untouched on failure.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    replace_atomically(path, |_, mut file| {
        file.write_all(bytes).map_err(|source| FileError::Write {
            path: path.to_path_buf(),
            source,
        })
    })
}

/// Writes `path` atomically through a writer that takes a file path (libtorch's `.npy` and
/// safetensors writers): `write` fills a temporary file beside `path`, which is then synced and
/// renamed into place, and the directory synced; on failure the temporary file is removed and
/// `path` is untouched.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), FileError> {
    replace_atomically(path, |tmp, file| {
        drop(file);
        write(tmp).map_err(|reason| FileError::Format {
            path: path.to_path_buf(),
            reason,
        })
    })
}

/// The one way a file is replaced: `fill` writes a new temporary file beside `path` (given its
/// name and its open handle), which is then synced and renamed over `path`, and the directory
/// synced so that the rename is durable. On failure the temporary file is removed.
fn replace_atomically(
    path: &Path,
    fill: impl FnOnce(&Path, std::fs::File) -> Result<(), FileError>,
) -> Result<(), FileError> {
    let io = |source| FileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let (tmp, file) = tempfile_in(dir, path).map_err(io)?;
    let done = fill(&tmp, file).and_then(|()| {
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(io)
    });
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A new temporary file `.<target>.<pid>.<i>.tmp` beside the target. Hand-written rather than
/// `tempfile::NamedTempFile` because stores recognise (and clean up after a crash) their own
/// temporary files by this name, and must never touch a file they did not name.
fn tempfile_in(dir: &Path, target: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let base = target.file_name().and_then(|s| s.to_str()).unwrap_or("out");
    for i in 0..1000u32 {
        let p = dir.join(format!(".{base}.{}.{i}.tmp", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
        {
            Ok(f) => return Ok((p, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free temporary file name"))
}

/// The target of one of [`write_atomic`]'s temporary files (`.<target>.<pid>.<i>.tmp`), so a
/// store can recognise its own leftovers of a crash and nothing else.
pub fn atomic_temp_target(name: &str) -> Option<&str> {
    let rest = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (rest, i) = rest.rsplit_once('.')?;
    let (target, pid) = rest.rsplit_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(i) && digits(pid) && !target.is_empty()).then_some(target)
}

/// Writes `value` as pretty JSON, atomically.
pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), FileError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| FileError::Format {
        path: path.to_path_buf(),
        reason: format!("cannot write as JSON: {e}"),
    })?;
    write_atomic(path, text.as_bytes())
}

/// Writes `value` as TOML, atomically.
pub fn write_toml<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), FileError> {
    let text = toml::to_string_pretty(value).map_err(|e| FileError::Format {
        path: path.to_path_buf(),
        reason: format!("cannot write as TOML: {e}"),
    })?;
    write_atomic(path, text.as_bytes())
}

/// The text of a file.
pub fn read_text(path: &Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a JSON file into `T`.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, FileError> {
    serde_json::from_str(&read_text(path)?).map_err(|e| FileError::Format {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Reads a TOML file into `T` (unknown keys are errors where `T` denies them).
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, FileError> {
    toml::from_str(&read_text(path)?).map_err(|e| FileError::Format {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
