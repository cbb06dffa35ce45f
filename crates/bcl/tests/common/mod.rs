//! Helpers shared by the integration tests: CPU step options, images of coloured squares (the
//! class is the colour), and a tiny RGB image-folder run configuration.
// Each test binary uses a different part of this module.
#![allow(dead_code)]

pub mod browser;

use std::io::{Read, Write};
use std::path::Path;

use bcl::data::images::ImagePrep;
use bcl::data::DataFormat;
use bcl::run::{RunConfig, StepOptions};
use image::{Rgb, RgbImage};
use proptest::prelude::*;

/// libtorch's random generator is global: a test that compares two trainings (resume equals
/// one go) holds this lock so that no other test of its binary reseeds the generator between
/// a training's seeding and its draws.
pub fn tch_rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Options of a quiet CPU step.
pub fn cpu_opts(resume: bool, stop_after: Option<usize>) -> StepOptions {
    StepOptions {
        resume,
        device: tch::Device::Cpu,
        progress: false,
        probe_test: false,
        stop_after,
        dist: Default::default(),
    }
}

/// The class colours.
pub const COLOURS: [[u8; 3]; 4] = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]];

/// A 40×36 black image with a 16-pixel square of class `c`'s colour, placed by `v`.
pub fn square(c: usize, v: usize) -> RgbImage {
    let h = ((v * 7 + c * 3) % 16) as u32;
    RgbImage::from_fn(40, 36, |x, y| {
        if x >= h && x < h + 16 && y >= h / 2 && y < h / 2 + 16 {
            Rgb(COLOURS[c % 4])
        } else {
            Rgb([0, 0, 0])
        }
    })
}

/// Class folders `root/class<c>/<i>.png` of coloured squares (`seed` moves the squares).
pub fn make_folder(root: &Path, classes: usize, per_class: usize, seed: usize) {
    for c in 0..classes {
        let dir = root.join(format!("class{c}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            square(c, i + 2 * seed)
                .save(dir.join(format!("{i:03}.png")))
                .unwrap();
        }
    }
}

/// A tiny RGB run on the image folder `data` (`classes` colour classes, `prep` sizes): narrow
/// small backbone, 32-d embedding, 4 old and 2 new epochs of batches of 16.
pub fn tiny_rgb_config(data: &Path, classes: usize, prep: ImagePrep) -> RunConfig {
    let mut cfg = RunConfig::default();
    cfg.data.format = DataFormat::ImageFolder;
    cfg.data.dir = data.to_path_buf();
    cfg.data.classes = classes;
    cfg.data.image = prep;
    cfg.model.in_channels = 3;
    cfg.model.width = 8;
    cfg.model.dim = 32;
    for t in [&mut cfg.old, &mut cfg.new] {
        t.batch_size = 16;
        t.lr = 0.05;
    }
    cfg.old.epochs = 4;
    cfg.new.epochs = 2;
    cfg
}

/// A server of `state` with connection limits `limits` on a free loopback port, on a thread of
/// its own: the address, the sender that stops it, and the thread with serve's result.
pub fn start_server(
    state: bcl::gallery::serve::ServeState,
    limits: bcl::gallery::serve::ConnLimits,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<std::io::Result<()>>,
) {
    use bcl::gallery::serve::{router, serve};
    let state = std::sync::Arc::new(state);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (atx, arx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            atx.send(l.local_addr().unwrap()).unwrap();
            serve(l, router(state), limits, async {
                let _ = rx.await;
            })
            .await
        })
    });
    (arx.recv().unwrap(), tx, server)
}

/// One HTTP/1.1 request on a fresh connection; returns the status and the body.
pub fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    ctype: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    http_request_with(addr, method, path, ctype, &[], body)
}

/// [`http_request`] with extra header lines.
pub fn http_request_with(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    ctype: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let (status, _, body) = http_exchange(addr, method, path, ctype, headers, body);
    (status, String::from_utf8_lossy(&body).to_string())
}

/// One HTTP/1.1 request on a fresh connection: the status, the head (status line and header
/// lines, each ending in CRLF) and the body's bytes.
pub fn http_exchange(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    ctype: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(c) = ctype {
        head.push_str(&format!("Content-Type: {c}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes()).unwrap();
    // the server may answer (413) and close before reading an oversized body
    let _ = s.write_all(body);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let (head, body) = match end {
        Some(e) => (&buf[..e + 2], buf[e + 4..].to_vec()),
        None => (&buf[..], Vec::new()),
    };
    let head = String::from_utf8_lossy(head).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    (status, head, body)
}

/// A tiny grey-scale run on generated IDX files in `data` (`classes` classes of 60 training and
/// 10 test images): a 4-wide small backbone, 16-d embedding, batches of 32, `epochs` each.
pub fn tiny_idx_config(data: &Path, classes: usize, epochs: usize) -> RunConfig {
    let (train, test) = bcl::data::synthetic(classes, 60, 10, 3);
    bcl::data::write_idx_dir(data, &train, &test).unwrap();
    let mut cfg = RunConfig::default();
    cfg.data.dir = data.to_path_buf();
    cfg.data.classes = classes;
    cfg.model.width = 4;
    cfg.model.dim = 16;
    for t in [&mut cfg.old, &mut cfg.new] {
        t.batch_size = 32;
        t.epochs = epochs;
    }
    cfg
}

/// Writes a version-1 .npy file with the given dtype descriptor, shape and raw data.
pub fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) {
    let shape_s = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(header.len() as u16).to_le_bytes());
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    std::fs::write(path, b).unwrap();
}

/// One change to a file's (or a request's) bytes, for the mutation fuzzing of readers;
/// positions are taken modulo the length.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// XOR one byte.
    Flip(usize, u8),
    /// Overwrite four bytes with a little- or big-endian extreme (a length field's worst case).
    Extreme(usize, u32, bool),
    /// Cut the file to this length.
    Cut(usize),
    /// Insert bytes.
    Insert(usize, Vec<u8>),
}

/// One mutation.
pub fn mutation() -> impl Strategy<Value = Mutation> {
    let extremes = prop::sample::select(vec![0u32, 1, 0x7fff_ffff, 0x8000_0000, u32::MAX, 65_535]);
    prop_oneof![
        4 => (any::<usize>(), 1u8..=255).prop_map(|(p, x)| Mutation::Flip(p, x)),
        2 => (any::<usize>(), extremes, any::<bool>()).prop_map(|(p, v, be)| Mutation::Extreme(p, v, be)),
        1 => any::<usize>().prop_map(Mutation::Cut),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(p, b)| Mutation::Insert(p, b)),
    ]
}

/// One to four mutations.
pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..5)
}

/// `base` with the mutations applied in order.
pub fn apply(base: &[u8], ms: &[Mutation]) -> Vec<u8> {
    let mut b = base.to_vec();
    for m in ms {
        let n = b.len().max(1);
        match m {
            Mutation::Flip(p, x) => {
                if !b.is_empty() {
                    b[p % n] ^= x;
                }
            }
            Mutation::Extreme(p, v, be) => {
                let bytes = if *be {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                };
                for (i, x) in bytes.iter().enumerate() {
                    if let Some(slot) = b.get_mut(p % n + i) {
                        *slot = *x;
                    }
                }
            }
            Mutation::Cut(p) => b.truncate(p % n),
            Mutation::Insert(p, ins) => {
                let at = p % n;
                b.splice(at.min(b.len())..at.min(b.len()), ins.iter().copied());
            }
        }
    }
    b
}

/// Proptest settings of the fuzz targets: `BCL_FUZZ_CASES` cases (48 by default), failures kept
/// in the test's regression file.
pub fn fuzz_config() -> ProptestConfig {
    let cases = std::env::var("BCL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    }
}
