//! Fixtures the binary's tests share: a small generated image set and a configuration for it.

use std::path::{Path, PathBuf};

/// Writes a generated set of `classes` classes (`train` and `test` images each, from `seed`)
/// under `dir/d`, and `dir/c.toml` for it: models of width 4 embedding in `dim`, one epoch of
/// batches of 16 each, then `data_extra` lines in `[data]`. Returns the configuration's path.
pub fn tiny_config(
    dir: &Path,
    (classes, train, test): (usize, usize, usize),
    seed: u64,
    dim: usize,
    data_extra: &str,
) -> PathBuf {
    let (tr, te) = bcl::data::synthetic(classes, train, test, seed);
    bcl::data::write_idx_dir(&dir.join("d"), &tr, &te).unwrap();
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[data]\ndir = {:?}\nclasses = {classes}\n{data_extra}\
             [model]\nwidth = 4\ndim = {dim}\n\
             [old]\nepochs = 1\nbatch_size = 16\n[new]\nepochs = 1\nbatch_size = 16\n",
            dir.join("d")
        ),
    )
    .unwrap();
    cfg
}
