//! A memory-mapped gallery larger than the search's resident budget is searched in bounded
//! memory: the process's peak resident set grows by about the budget, not by the file's size
//! (and, as the control that shows the measure can fail, by the file's size when the budget
//! holds the whole file). Alone in its binary: the peak is the whole process's.

mod common;

use std::io::Write;

use bcl::eval::mapped::MappedMatrix;
use bcl::eval::search::SearchBlocks;
use tch::{Device, Kind, Tensor};

/// A field of /proc/self/status in bytes (Linux reports kB).
fn status_bytes(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// The peak resident set grown while `f` ran, in bytes (the kernel's peak is reset first).
fn peak_growth(f: impl FnOnce()) -> u64 {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak resident set");
    let before = status_bytes("VmRSS:");
    f();
    status_bytes("VmHWM:").saturating_sub(before)
}

#[test]
fn mapped_search_stays_within_its_resident_budget() {
    let (rows, dim) = (393_216usize, 128usize); // 192 MiB of float32
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gallery.npy");
    // the header, then the rows written a few at a time: the file never sits in this process
    common::write_npy(&path, "<f4", &[rows, dim], &[]);
    let mut f = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap(),
    );
    let mut state = 1u64;
    for _ in 0..rows * dim {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let v = ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
        f.write_all(&v.to_le_bytes()).unwrap();
    }
    f.into_inner().unwrap().sync_all().unwrap();
    let file_bytes = std::fs::metadata(&path).unwrap().len();
    let m = MappedMatrix::open(&path).unwrap();
    tch::manual_seed(0);
    let q = Tensor::randn([64, dim as i64], (Kind::Float, Device::Cpu));
    // warm up: libtorch, the thread pool and the per-thread buffers exist before measuring
    let _ = m.search(&q.narrow(0, 0, 1), 1, SearchBlocks::default(), 1 << 20);

    let budget = 8usize << 20;
    let mut bounded = None;
    let grown = peak_growth(|| bounded = Some(m.search(&q, 10, SearchBlocks::default(), budget)));
    let bounded = bounded.unwrap().unwrap();
    assert!(
        // the window, the threads' buffers and heaps, allocator slack: well under the file
        grown < 6 * budget as u64,
        "peak grew by {grown} bytes searching a {file_bytes}-byte file with an {budget}-byte \
         budget"
    );
    eprintln!(
        "bounded search: peak grew {grown} bytes ({file_bytes}-byte file, {budget}-byte budget)"
    );
    // the control: a budget that holds the whole file keeps it resident, and the measure sees it
    let mut whole = None;
    let grown_whole =
        peak_growth(|| whole = Some(m.search(&q, 10, SearchBlocks::default(), 1 << 30)));
    assert!(
        grown_whole > file_bytes * 8 / 10,
        "the control grew by only {grown_whole} bytes for a {file_bytes}-byte file"
    );
    eprintln!("whole-file budget: peak grew {grown_whole} bytes");
    // and both searches found the same neighbours
    assert!(bounded.indices.equal(&whole.unwrap().unwrap().indices));
}
