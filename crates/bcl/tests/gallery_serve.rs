//! The HTTP service on loopback: health, stats, vector search equal to the store's own exact
//! search, clear 4xx answers to malformed, oversized and ill-typed requests, and a graceful
//! shutdown that lets the server future finish.

use std::net::TcpStream;

use bcl::gallery::serve::{ServeConfig, ServeState};
use bcl::gallery::usearch_store::{UsearchConfig, UsearchStore};
use bcl::gallery::{GalleryManifest, GalleryStore, ModelInfo};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod common;
use common::http_request;

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// A server over `store` with `cfg` (its limits included) on a free loopback port, on a thread
/// of its own: the address, the sender that stops it, and the thread with serve's result.
fn start(
    store: UsearchStore,
    cfg: ServeConfig,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<std::io::Result<()>>,
) {
    let limits = cfg.conn_limits();
    let state = ServeState::new(Box::new(store), None, cfg, false).unwrap();
    common::start_server(state, limits)
}

/// A store in `dir` holding `vectors` (ids 0, 1, ...) of one external model, "ext".
fn ext_store(dir: &std::path::Path, dim: usize, vectors: &[f32]) -> UsearchStore {
    let mut store =
        UsearchStore::create(dir, GalleryManifest::new(dim), UsearchConfig::default()).unwrap();
    let mut m = store.manifest().clone();
    m.models.push(ModelInfo::external("ext", dim));
    store.set_manifest(m).unwrap();
    let n = (vectors.len() / dim) as u64;
    store
        .add("ext", &(0..n).collect::<Vec<_>>(), vectors)
        .unwrap();
    store
}

#[test]
fn search_over_http_and_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let dim = 16;
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let v: Vec<f32> = (0..500 * dim).map(|_| rng.random::<f32>() - 0.5).collect();
    let store = ext_store(dir.path(), dim, &v);
    let q: Vec<f32> = (0..dim).map(|_| rng.random::<f32>() - 0.5).collect();
    let want = store.search_exact(&q, 5).unwrap();

    let cfg = ServeConfig {
        max_body_bytes: 16 << 10,
        max_k: 50,
        max_queries: 4,
        ..Default::default()
    };
    let (addr, tx, server) = start(store, cfg);

    let (st, b) = http_request(addr, "GET", "/health", None, b"");
    assert_eq!((st, json(&b)["items"].as_u64()), (200, Some(500)));

    let body = serde_json::json!({ "vector": q, "k": 5, "exact": true }).to_string();
    let (st, b) = http_request(
        addr,
        "POST",
        "/search",
        Some("application/json"),
        body.as_bytes(),
    );
    assert_eq!(st, 200, "{b}");
    let r = json(&b);
    let hits = r["results"][0].as_array().unwrap();
    assert_eq!(hits.len(), 5);
    for (h, w) in hits.iter().zip(&want[0]) {
        assert_eq!(h["id"].as_u64().unwrap(), w.id);
        assert!((h["score"].as_f64().unwrap() - w.score as f64).abs() < 1e-5);
    }
    // several queries, k from the query string, approximate by default
    let body = serde_json::json!({ "vectors": [q.clone(), q.clone()] }).to_string();
    let (st, b) = http_request(
        addr,
        "POST",
        "/search?k=3",
        Some("application/json; charset=utf-8"),
        body.as_bytes(),
    );
    assert_eq!(st, 200, "{b}");
    let r = json(&b);
    assert_eq!(
        (r["k"].as_u64(), r["exact"].as_bool()),
        (Some(3), Some(false))
    );
    assert_eq!(r["results"].as_array().unwrap().len(), 2);

    let bad = |ctype: Option<&str>, path: &str, body: &[u8], status: u16, says: &str| {
        let (st, b) = http_request(addr, "POST", path, ctype, body);
        assert_eq!(st, status, "{b}");
        let e = json(&b)["error"].as_str().unwrap().to_string();
        assert!(e.contains(says), "{e}");
    };
    let j = Some("application/json");
    bad(j, "/search", b"{\"vector\": [1, 2", 400, "malformed JSON");
    bad(
        j,
        "/search",
        b"{\"vector\": [1, 2], \"colour\": 1}",
        400,
        "unknown field",
    );
    bad(j, "/search", b"{\"k\": 3}", 400, "exactly one of");
    bad(
        j,
        "/search",
        b"{\"vector\": [1, 2, 3]}",
        422,
        "dimension is 16",
    );
    let zeros = serde_json::json!({ "vector": vec![0.0; dim] }).to_string();
    bad(j, "/search", zeros.as_bytes(), 422, "all zeros");
    let k0 = serde_json::json!({ "vector": q, "k": 0 }).to_string();
    bad(j, "/search", k0.as_bytes(), 422, "k = 0");
    bad(
        j,
        "/search?k=51",
        serde_json::json!({ "vector": q }).to_string().as_bytes(),
        422,
        "1 to 50",
    );
    bad(j, "/search?k=x", b"{}", 400, "");
    let many = serde_json::json!({ "vectors": vec![q.clone(); 5] }).to_string();
    bad(j, "/search", many.as_bytes(), 422, "at most 4");
    bad(Some("text/plain"), "/search", b"hello", 415, "text/plain");
    bad(None, "/search", b"hello", 415, "Content-Type");
    bad(
        Some("image/png"),
        "/search",
        b"\x89PNG",
        422,
        "no query model",
    );
    let big = vec![b' '; 64 << 10];
    bad(j, "/search", &big, 413, "over the limit");
    let (st, b) = http_request(addr, "GET", "/nowhere", None, b"");
    assert_eq!(st, 404, "{b}");

    let (st, b) = http_request(addr, "GET", "/stats", None, b"");
    assert_eq!(st, 200);
    let s = json(&b);
    assert_eq!(s["items_per_model"]["ext"].as_u64(), Some(500));
    assert_eq!(s["searches"].as_u64(), Some(2));
    assert!(s["client_errors"].as_u64().unwrap() >= 12, "{s}");
    assert_eq!(s["server_errors"].as_u64(), Some(0), "{s}");

    tx.send(()).unwrap();
    server.join().unwrap().unwrap();
    assert!(
        TcpStream::connect(addr).is_err(),
        "the listener is closed after shutdown"
    );
}

/// The server's limits (issue 11, item 8): a client that never finishes its request head is
/// disconnected, a stalled upload gets 408, connections beyond the limit wait until one closes,
/// and after the shutdown signal a stalled request does not hold the server past its grace.
#[test]
fn slow_clients_are_cut_off_and_connections_bounded() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let mut store = UsearchStore::create(
        dir.path(),
        GalleryManifest::new(4),
        UsearchConfig::default(),
    )
    .unwrap();
    let mut m = store.manifest().clone();
    m.models.push(ModelInfo::external("ext", 4));
    store.set_manifest(m).unwrap();
    store.add("ext", &[1], &[1.0, 0.0, 0.0, 0.0]).unwrap();
    let cfg = ServeConfig {
        header_timeout_s: 0.5,
        request_timeout_s: 1.0,
        max_connections: 2,
        shutdown_grace_s: 1.0,
        ..Default::default()
    };
    let (addr, tx, server) = start(store, cfg);
    let read_all = |s: &mut TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).to_string()
    };

    // a request head that never ends: the connection is closed after the header timeout
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"POST /search HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let got = read_all(&mut s);
    assert!(!got.contains(" 200 "), "{got}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // a body that stops arriving: 408 after the request timeout
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(
        b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"vector\": [",
    )
    .unwrap();
    let got = read_all(&mut s);
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // two silent connections take both slots; a third client waits until one closes
    let a = TcpStream::connect(addr).unwrap();
    let b = TcpStream::connect(addr).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut first = [0u8; 1];
    assert!(
        c.read(&mut first).is_err(),
        "a third connection was served while two held the slots"
    );
    drop((a, b));
    let got = read_all(&mut c);
    assert!(
        got.contains("200 OK") || got.starts_with("TTP/1.1 200"),
        "{got}"
    );

    // shutdown with a stalled upload in flight: the server ends within its grace
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    tx.send(()).unwrap();
    server.join().unwrap().unwrap();
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    drop(s);
}

/// Raw HTTP requests (a search with a JSON body, a GET), mutated as the file readers' fuzz
/// targets mutate files, then the write half closed: whatever the server answers (or if it
/// just closes), it must still answer /health afterwards.
#[test]
fn mutated_requests_never_bring_the_server_down() {
    use proptest::prelude::*;
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let dim = 4;
    let v: Vec<f32> = (0..50 * dim).map(|i| (i % 5) as f32 - 2.0).collect();
    let store = ext_store(dir.path(), dim, &v);
    let cfg = ServeConfig {
        header_timeout_s: 0.5,
        request_timeout_s: 1.0,
        max_body_bytes: 4 << 10,
        ..Default::default()
    };
    let (addr, tx, server) = start(store, cfg);
    let body = br#"{"vectors": [[1.0, 0.0, 0.5, -1.0]], "k": 3}"#;
    let search = [
        format!(
            "POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes(),
        body.to_vec(),
    ]
    .concat();
    let get = b"GET /stats?k=5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec();
    let mut runner = proptest::test_runner::TestRunner::new(common::fuzz_config());
    runner
        .run(&(common::mutations(), any::<bool>()), |(ms, use_get)| {
            let raw = common::apply(if use_get { &get } else { &search }, &ms);
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let _ = s.write_all(&raw);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut answer = Vec::new();
            let _ = s.read_to_end(&mut answer);
            let (st, _) = http_request(addr, "GET", "/health", None, b"");
            prop_assert_eq!(st, 200);
            Ok(())
        })
        .unwrap();
    tx.send(()).unwrap();
    server.join().unwrap().unwrap();
}

/// The token's own rules: too short or with spaces refused, a file's newline dropped, the
/// `Bearer` scheme required (its case ignored), and exposure beyond loopback refused without a
/// token unless allowed; and a server with a token answers 401 (with `WWW-Authenticate`) to
/// every request without it and counts those as client errors.
#[test]
fn a_token_guards_every_endpoint() {
    use bcl::gallery::serve::auth::{check_exposure, Token};
    for bad in ["", "short", "0123456789 abcdef"] {
        assert!(Token::new(bad).is_err(), "{bad:?}");
    }
    let t = Token::new("0123456789abcdef\n").unwrap();
    assert!(
        !format!("{t:?}").contains("0123"),
        "Debug must not print the token"
    );
    assert!(t.admits(Some("Bearer 0123456789abcdef")));
    assert!(t.admits(Some("bearer 0123456789abcdef")));
    for h in [
        None,
        Some("0123456789abcdef"),
        Some("Basic 0123456789abcdef"),
        Some("Bearer 0123456789abcdeF"),
        Some("Bearer 0123456789abcde"),
    ] {
        assert!(!t.admits(h), "{h:?}");
    }
    let public: std::net::SocketAddr = "0.0.0.0:8080".parse().unwrap();
    let e = check_exposure(public, None, false).unwrap_err().to_string();
    assert!(
        e.contains("0.0.0.0:8080") && e.contains("BCL_SERVE_TOKEN"),
        "{e}"
    );
    assert!(check_exposure(public, Some(&t), false).is_ok());
    assert!(check_exposure(public, None, true).is_ok());
    for local in ["127.0.0.1:8080", "[::1]:8080"] {
        assert!(
            check_exposure(local.parse().unwrap(), None, false).is_ok(),
            "{local}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let store = ext_store(dir.path(), 4, &[1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
    let cfg = ServeConfig::default();
    let limits = cfg.conn_limits();
    let state = ServeState::new(Box::new(store), None, cfg, false)
        .unwrap()
        .require_token(t);
    let (addr, tx, server) = common::start_server(state, limits);
    let body = serde_json::json!({ "vector": [1.0, 0.0, 0.0, 0.0], "k": 1 }).to_string();
    let (st, b) = http_request(
        addr,
        "POST",
        "/search",
        Some("application/json"),
        body.as_bytes(),
    );
    assert_eq!(st, 401, "{b}");
    assert!(
        json(&b)["error"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer"),
        "{b}"
    );
    let auth = [("Authorization", "Bearer 0123456789abcdef")];
    let (st, b) = common::http_request_with(
        addr,
        "POST",
        "/search",
        Some("application/json"),
        &auth,
        body.as_bytes(),
    );
    assert_eq!(st, 200, "{b}");
    assert_eq!(json(&b)["results"][0][0]["id"], 0);
    let wrong = [("Authorization", "Bearer 0123456789abcdeX")];
    let (st, b) = common::http_request_with(addr, "GET", "/health", None, &wrong, b"");
    assert_eq!(st, 401);
    assert!(b.contains("does not carry"), "{b}");
    let (st, b) = common::http_request_with(addr, "GET", "/stats", None, &auth, b"");
    assert_eq!(st, 200);
    let s = json(&b);
    assert_eq!(s["auth"], "bearer token");
    assert_eq!(s["client_errors"], 2);
    // the 401 carries the challenge
    let (_, raw, _) = common::http_exchange(addr, "GET", "/health", None, &[], b"");
    assert!(
        raw.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{raw}"
    );
    tx.send(()).unwrap();
    server.join().unwrap().unwrap();
}

/// The status page is served at `/` by default, with headers that keep it from loading
/// anything from elsewhere, and not at all when turned off (an API-only deployment), where `/`
/// is an unknown endpoint like any other.
#[test]
fn the_status_page_is_served_unless_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let v = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0];
    let (addr, tx, server) = start(
        ext_store(&dir.path().join("a"), 4, &v),
        ServeConfig::default(),
    );
    let (_, raw_head, page) = common::http_exchange(addr, "GET", "/", None, &[], b"");
    let (head, page) = (
        raw_head.to_ascii_lowercase(),
        String::from_utf8_lossy(&page),
    );
    assert!(head.starts_with("http/1.1 200"), "{raw_head}");
    assert!(
        head.contains("content-type: text/html; charset=utf-8"),
        "{raw_head}"
    );
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{raw_head}"
    );
    assert!(page.contains("<title>bcl gallery</title>"), "{page}");
    assert!(
        page.contains("getJSON('/stats')"),
        "the page reads the JSON endpoint"
    );
    // a gallery of bare vectors has no images to show
    let (status, body) = http_request(addr, "GET", "/item/0/image", None, b"");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("filled with vectors"), "{body}");
    tx.send(()).unwrap();
    server.join().unwrap().unwrap();

    let cfg = ServeConfig {
        page: false,
        ..Default::default()
    };
    let (addr, tx, server) = start(ext_store(&dir.path().join("b"), 4, &v), cfg);
    let (status, body) = http_request(addr, "GET", "/", None, b"");
    assert_eq!(status, 404, "{body}");
    assert!(json(&body)["error"]
        .as_str()
        .unwrap()
        .contains("GET /stats"));
    let (status, _) = http_request(addr, "GET", "/health", None, b"");
    assert_eq!(status, 200);
    tx.send(()).unwrap();
    server.join().unwrap().unwrap();
}
