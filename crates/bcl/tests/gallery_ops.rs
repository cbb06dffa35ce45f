//! Gallery operations with real (tiny) models: build from a data set, search by a declared
//! successor (admitted) and an independent model (refused unless forced), a resumable backfill
//! in the documented order, the data-set check, and an image query over HTTP that gives the
//! same answer as the library.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bcl::data::Dataset;
use bcl::gallery::ops::{self, BackfillStrategy, EmbedOptions};
use bcl::gallery::serve::{router, serve, LiveBackfill, ServeConfig, ServeState};
use bcl::gallery::usearch_store::{UsearchConfig, UsearchStore};
use bcl::gallery::{GalleryError, GalleryManifest, GalleryStore, Lineage, ModelInfo};
use bcl::loss::Method;
use bcl::model::Embedder;
use bcl::run::{self, RunConfig, StepOptions};
use tch::Device;

mod common;

fn opts() -> StepOptions {
    common::cpu_opts(false, None)
}

fn origin(cfg: &RunConfig) -> ops::DataOrigin {
    ops::DataOrigin {
        data: cfg.data.clone(),
        split: bcl::data::Part::Test,
        per_class: None,
    }
}

fn plan(fraction: f64) -> ops::BackfillPlan {
    ops::BackfillPlan {
        fraction,
        strategy: BackfillStrategy::Random,
        seed: 7,
    }
}

/// `root/gallery`: a usearch gallery of `test` embedded by `old`, closed again.
fn old_gallery(root: &Path, cfg: &RunConfig, old: &Embedder, test: &Dataset) -> PathBuf {
    let dir = root.join("gallery");
    let mut store =
        UsearchStore::create(&dir, GalleryManifest::new(16), UsearchConfig::default()).unwrap();
    ops::build(
        &mut store,
        old,
        test,
        &origin(cfg),
        &EmbedOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    dir
}

/// The data and the three models (old, bct, independent) every test uses, trained once per test
/// process (the tests run on threads of one process) under cargo's temporary directory for
/// integration tests; a new process trains them afresh.
fn trained() -> &'static (PathBuf, RunConfig) {
    static TRAINED: std::sync::OnceLock<(PathBuf, RunConfig)> = std::sync::OnceLock::new();
    TRAINED.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gallery_ops-models");
        let _ = std::fs::remove_dir_all(&root);
        let cfg = common::tiny_idx_config(&root.join("data"), 5, 1);
        let run = root.join("run");
        run::train_old(&cfg, &run.join("old"), &opts()).unwrap();
        for m in [Method::BCT, Method::INDEPENDENT] {
            let out = run.join(format!("new-{}", m.as_str()));
            run::train_new(&cfg, &run.join("old"), m, &out, &opts()).unwrap();
        }
        (run, cfg)
    })
}

/// The shared configuration and models: (config, old, bct, independent).
fn models() -> (RunConfig, Embedder, Embedder, Embedder) {
    let (run, cfg) = trained();
    let load = |n: &str| Embedder::load(&run.join(n), Device::Cpu).unwrap();
    (
        cfg.clone(),
        load("old"),
        load("new-bct"),
        load("new-independent"),
    )
}

#[test]
fn build_search_backfill_and_serve_an_image() {
    let root = tempfile::tempdir().unwrap();
    let (cfg, old, bct, ind) = models();
    let test = bcl::data::open_test(&cfg.data).unwrap();
    let dir = root.path().join("gallery");
    let eo = EmbedOptions {
        commit: 16,
        ..Default::default()
    };
    let mut commits = Vec::new();
    let mut fresh =
        UsearchStore::create(&dir, GalleryManifest::new(16), UsearchConfig::default()).unwrap();
    let r = ops::build(&mut fresh, &old, &test, &origin(&cfg), &eo, &mut |d, _| {
        commits.push(d)
    })
    .unwrap();
    assert_eq!(r.items, test.len());
    assert_eq!(commits.first(), Some(&16));
    assert_eq!(commits.last(), Some(&test.len()), "one commit per 16 items");
    drop(fresh);
    let mut store = UsearchStore::open(&dir).unwrap();
    assert_eq!(store.counts().unwrap()[&old.card.id], test.len());

    // the stored vectors are the old model's embeddings of the items
    let e0 = ops::embed_items(&old, &test, &[0], 8, 16).unwrap();
    let s0 = store.vectors(&[test.ids[0] as u64]).unwrap();
    assert!(e0.iter().zip(&s0).all(|(a, b)| (a - b).abs() < 1e-5));

    // queries: the bct successor is admitted, the independent model is refused (or forced)
    let q = ops::embed_queries(&bct, &test, 64, 16).unwrap();
    let bct_info = ModelInfo::from_card(&bct.card);
    let (l, hits) = ops::search(&store, Some(&bct_info), &q, 5, true, false).unwrap();
    assert_eq!((l, hits.len()), (Some(Lineage::Successor), test.len()));
    let ind_info = ModelInfo::from_card(&ind.card);
    let qi = ops::embed_queries(&ind, &test, 64, 16).unwrap();
    assert!(matches!(
        ops::search(&store, Some(&ind_info), &qi, 5, true, false),
        Err(GalleryError::Lineage(_))
    ));
    assert!(matches!(
        ops::search(&store, Some(&ind_info), &qi, 5, true, true)
            .unwrap()
            .0,
        Some(Lineage::Forced(_))
    ));

    // backfill to 25% then 60%: resumable, in the seeded order, the new model's vectors in place
    let n = test.len();
    let r1 = ops::backfill(&mut store, &bct, &test, plan(0.25), &eo, &mut |_, _| {}).unwrap();
    let k1 = (0.25 * n as f64).round() as usize;
    assert_eq!((r1.reembedded, r1.by_new_model, r1.total), (k1, k1, n));
    let r2 = ops::backfill(&mut store, &bct, &test, plan(0.6), &eo, &mut |_, _| {}).unwrap();
    let k2 = (0.6 * n as f64).round() as usize;
    assert_eq!((r2.reembedded, r2.by_new_model), (k2 - k1, k2));
    let again = ops::backfill(&mut store, &bct, &test, plan(0.6), &eo, &mut |_, _| {}).unwrap();
    assert_eq!(
        again.reembedded, 0,
        "a repeated call has nothing left to do"
    );
    let order = ops::backfill_positions(n, BackfillStrategy::Random, 7);
    let items = store.item_models().unwrap();
    for (rank, &p) in order.iter().enumerate() {
        let by_new = items[&(test.ids[p] as u64)] == bct.card.id;
        assert_eq!(by_new, rank < k2, "position {p} at rank {rank}");
    }
    let p = order[0];
    let want = ops::embed_items(&bct, &test, &[p], 8, 16).unwrap();
    let got = store.vectors(&[test.ids[p] as u64]).unwrap();
    assert!(want.iter().zip(&got).all(|(a, b)| (a - b).abs() < 1e-5));
    // the old model may no longer search the mixed gallery; the data set must be the same
    let old_info = ModelInfo::from_card(&old.card);
    let qo = ops::embed_queries(&old, &test, 64, 16).unwrap();
    assert!(ops::search(&store, Some(&old_info), &qo, 5, true, false).is_err());
    let other = test.take_per_class(3);
    let e = ops::backfill(&mut store, &bct, &other, plan(1.0), &eo, &mut |_, _| {}).unwrap_err();
    assert!(
        e.to_string()
            .contains("not the one the gallery was built from"),
        "{e}"
    );
    assert!(ops::backfill(&mut store, &bct, &test, plan(1.5), &eo, &mut |_, _| {}).is_err());
    assert!(ops::backfill(&mut store, &ind, &test, plan(1.0), &eo, &mut |_, _| {}).is_err());
    // nor may an unrelated model write into the gallery
    let n_before = store.len();
    let e = ops::embed_into(&mut store, &ind, &test, &[0, 1], &eo, &mut |_, _| {});
    assert!(matches!(e, Err(GalleryError::Lineage(_))), "{e:?}");
    assert_eq!(
        store.counts().unwrap().len(),
        2,
        "nothing of {} was written",
        n_before
    );

    // an image query over HTTP: the server embeds it with the bct model
    let item = 3;
    let want = ops::search(
        &store,
        Some(&bct_info),
        &ops::embed_items(&bct, &test, &[item], 1, 16).unwrap(),
        4,
        true,
        false,
    )
    .unwrap()
    .1;
    let sz = test.item_size();
    let img = image::GrayImage::from_raw(
        test.cols as u32,
        test.rows as u32,
        test.pixels[item * sz..(item + 1) * sz].to_vec(),
    )
    .unwrap();
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let state = Arc::new(
        ServeState::new(Box::new(store), Some(bct), ServeConfig::default(), false).unwrap(),
    );
    let (rt, addr, tx, h) = serve_on_loopback(state);
    let (status, resp) = common::http_request(
        addr,
        "POST",
        "/search?k=4&exact=true",
        Some("image/png"),
        &png,
    );
    assert_eq!(status, 200, "{resp}");
    let body: serde_json::Value = serde_json::from_str(&resp).unwrap();
    let ids: Vec<u64> = body["results"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, want[0].iter().map(|h| h.id).collect::<Vec<_>>());
    assert_eq!(body["model"].as_str(), Some(bct_info.id.as_str()));
    tx.send(()).unwrap();
    rt.block_on(h).unwrap().unwrap();
}

#[test]
fn a_server_refuses_an_unrelated_query_model() {
    let root = tempfile::tempdir().unwrap();
    let (cfg, old, _bct, ind) = models();
    let test = bcl::data::open_test(&cfg.data).unwrap();
    let dir = old_gallery(root.path(), &cfg, &old, &test);
    let store = UsearchStore::open(&dir).unwrap();
    let e = ServeState::new(Box::new(store), Some(ind), ServeConfig::default(), false)
        .err()
        .unwrap();
    assert!(
        matches!(&e, bcl::gallery::GalleryError::Lineage(t) if t.contains("force")),
        "{e}"
    );
}

#[test]
fn a_server_backfills_while_it_serves() {
    let root = tempfile::tempdir().unwrap();
    let (cfg, old, bct, _ind) = models();
    let test = bcl::data::open_test(&cfg.data).unwrap();
    let dir = old_gallery(root.path(), &cfg, &old, &test);
    let bct_dir = bct.dir.clone();
    let job = |e: Embedder| LiveBackfill {
        embedder: e,
        data: test.clone(),
        plan: plan(1.0),
        commit: 4,
        batch: 8,
        force: false,
    };
    // a server whose query model is the old one may not backfill to another model
    let st = Arc::new(
        ServeState::new(
            Box::new(UsearchStore::open(&dir).unwrap()),
            Some(old),
            ServeConfig::default(),
            false,
        )
        .unwrap(),
    );
    let e = st
        .start_backfill(job(Embedder::load(&bct_dir, Device::Cpu).unwrap()))
        .err()
        .unwrap();
    assert!(e.to_string().contains("serve the new model"), "{e}");
    drop(st);

    let st = Arc::new(
        ServeState::new(
            Box::new(UsearchStore::open(&dir).unwrap()),
            Some(bct),
            ServeConfig::default(),
            false,
        )
        .unwrap(),
    );
    let (rt, addr, tx, h) = serve_on_loopback(st.clone());
    let worker = st
        .start_backfill(job(Embedder::load(&bct_dir, Device::Cpu).unwrap()))
        .unwrap();
    // searches keep being answered while the gallery is re-embedded, one commit at a time
    let q = serde_json::json!({ "vector": vec![0.25f32; 16], "k": 3 }).to_string();
    let mut answered = 0;
    loop {
        let (status, resp) = common::http_request(
            addr,
            "POST",
            "/search",
            Some("application/json"),
            q.as_bytes(),
        );
        assert_eq!(status, 200, "{resp}");
        answered += 1;
        if worker.is_finished() {
            break;
        }
    }
    let r = worker.join().unwrap().unwrap();
    assert_eq!(
        (r.reembedded, r.by_new_model, r.total),
        (test.len(), test.len(), test.len())
    );
    let (_, resp) = common::http_request(addr, "GET", "/stats", None, b"");
    let stats: serde_json::Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(
        stats["backfill"]["done"].as_u64(),
        Some(test.len() as u64),
        "{stats}"
    );
    assert_eq!(stats["backfill"]["running"].as_bool(), Some(false));
    assert_eq!(stats["lineage"].as_str(), Some("same model"), "{stats}");
    assert!(answered >= 1);
    tx.send(()).unwrap();
    rt.block_on(h).unwrap().unwrap();
    drop(st);
    // the re-embedded gallery survived: every item is the new model's after reopening
    let store = UsearchStore::open(&dir).unwrap();
    assert_eq!(store.counts().unwrap().len(), 1);
}

/// The status page of `bcl serve` (issue 26, item 3) over a gallery half backfilled from the
/// old model to its BCT successor, behind a token: the page and every endpoint refuse a
/// request without it; `/?token=` signs a browser in (an HttpOnly, same-site cookie and a
/// redirect that drops the token from the address); /stats carries the models, the lineage
/// graph and the backfill's rate and time left; and in headless Chromium the page shows the
/// models, the declared edge, the finished backfill and the limits, and its search box (run
/// from the address, `#vector=...`) returns the hits the JSON endpoint returns.
#[test]
fn the_status_page_shows_the_gallery_and_searches_in_a_browser() {
    use bcl::gallery::serve::auth::Token;
    use common::browser;
    let root = tempfile::tempdir().unwrap();
    let (cfg, old, bct, _ind) = models();
    let test = bcl::data::open_test(&cfg.data).unwrap();
    let dir = old_gallery(root.path(), &cfg, &old, &test);
    let bct_dir = bct.dir.clone();
    let token = "0123456789abcdef0123";
    let st = Arc::new(
        ServeState::new(
            Box::new(UsearchStore::open(&dir).unwrap()),
            Some(bct),
            ServeConfig::default(),
            false,
        )
        .unwrap()
        .require_token(Token::new(token).unwrap()),
    );
    let (rt, addr, tx, h) = serve_on_loopback(st.clone());
    let report = st
        .start_backfill(LiveBackfill {
            embedder: Embedder::load(&bct_dir, Device::Cpu).unwrap(),
            data: test.clone(),
            plan: plan(0.5),
            commit: 4,
            batch: 8,
            force: false,
        })
        .unwrap()
        .join()
        .unwrap()
        .unwrap();

    // without a browser: the sign-in and its refusals
    let (status, body) = common::http_request(addr, "GET", "/", None, b"");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("/?token="), "{body}");
    let (status, body) =
        common::http_request(addr, "GET", "/?token=0123456789abcdef0124", None, b"");
    assert_eq!(status, 401);
    assert!(body.contains("token in the address"), "{body}");
    let (_, raw, _) =
        common::http_exchange(addr, "GET", &format!("/?token={token}"), None, &[], b"");
    let head = raw.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 303"), "{raw}");
    assert!(head.contains("\r\nlocation: /\r\n"), "{raw}");
    assert!(
        head.contains(&format!(
            "set-cookie: bcl_token={token}; path=/; httponly; samesite=strict"
        )),
        "{raw}"
    );
    let cookie = [("Cookie", &*format!("theme=dark; bcl_token={token}"))];
    let (status, page) = common::http_request_with(addr, "GET", "/", None, &cookie, b"");
    assert_eq!(status, 200);
    assert!(page.contains("<title>bcl gallery</title>"));
    let bad_cookie = [("Cookie", "bcl_token=0123456789abcdef0124")];
    let (status, body) = common::http_request_with(addr, "GET", "/stats", None, &bad_cookie, b"");
    assert_eq!(status, 401);
    assert!(body.contains("sign-in cookie"), "{body}");
    let (status, body) = common::http_request_with(addr, "GET", "/stats", None, &cookie, b"");
    assert_eq!(status, 200, "{body}");
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    let models = stats["models"].as_array().unwrap();
    assert_eq!(models.len(), 2, "{stats}");
    let (old_name, new_name) = (
        models[0]["name"].as_str().unwrap(),
        models[1]["name"].as_str().unwrap(),
    );
    let edge = &stats["graph"][0];
    assert_eq!(
        (
            edge["from"].as_str(),
            edge["to"].as_str(),
            edge["kind"].as_str()
        ),
        (
            models[1]["id"].as_str(),
            models[0]["id"].as_str(),
            Some("declared")
        ),
        "{stats}"
    );
    let b = &stats["backfill"];
    assert_eq!(b["done"].as_u64(), Some(report.reembedded as u64), "{b}");
    assert_eq!(b["done"], b["todo"]);
    let (elapsed, rate) = (
        b["elapsed_s"].as_f64().unwrap(),
        b["rate_per_s"].as_f64().unwrap(),
    );
    assert!(elapsed > 0.0 && rate > 0.0, "{b}");
    assert!(
        (rate * elapsed - report.reembedded as f64).abs() < 0.05 * report.reembedded as f64,
        "{b}"
    );
    assert_eq!(b["eta_s"].as_f64(), Some(0.0));

    // an item's image: the data set's pixels as PNG; unknown and malformed ids refused
    assert_eq!(stats["thumbnails"], true);
    let p = 3;
    let id = test.ids[p];
    let (status, png) = get(addr, &format!("/item/{id}/image"), &cookie);
    assert_eq!(status, 200);
    let img = image::load_from_memory(&png).unwrap().to_luma8();
    assert_eq!(
        (img.width() as usize, img.height() as usize),
        (test.cols, test.rows)
    );
    let n = test.item_size();
    assert_eq!(img.into_raw(), test.pixels[p * n..(p + 1) * n].to_vec());
    let (status, body) = get(addr, "/item/999999/image", &cookie);
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    assert_eq!(get(addr, "/item/x1/image", &cookie).0, 400);
    assert_eq!(get(addr, &format!("/item/{id}/image"), &[]).0, 401);

    let q: Vec<f32> = (0..16).map(|i| ((i * 7 % 5) as f32 - 2.0) / 3.0).collect();
    let want = st_search(addr, token, &q);
    let Some(chrome) = browser::chromium() else {
        tx.send(()).unwrap();
        rt.block_on(h).unwrap().unwrap();
        return;
    };
    let vector = q
        .iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let url = format!("http://{addr}/?token={token}#vector={vector}&k=5&exact=1");
    let dom = browser::dom(&chrome, &url);
    let summary = browser::element_text(&dom, "<p id=\"summary\"", "</p>").unwrap();
    assert!(
        summary.contains(&format!("{} items of dimension 16", test.len()))
            && summary.contains(new_name)
            && summary.contains("bearer token"),
        "{summary}"
    );
    let shown = browser::table_rows(&dom, "<section id=\"models\"");
    let half = report.by_new_model;
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert!(
        shown[0][0] == old_name && shown[0][4] == (test.len() - half).to_string(),
        "{shown:?}"
    );
    assert!(
        shown[1][0].starts_with(new_name)
            && shown[1][0].ends_with("(query model)")
            && shown[1][4] == half.to_string(),
        "{shown:?}"
    );
    let edges = browser::element_text(&dom, "<ul id=\"lineage-edges\"", "</ul>").unwrap();
    assert!(
        edges.contains(&format!("{new_name} → {old_name} (declared)")),
        "{edges}"
    );
    assert!(dom.contains("aria-label=\"lineage graph\""));
    let backfill = browser::element_text(&dom, "<p id=\"backfill-text\"", "</p>").unwrap();
    assert!(
        backfill.contains(&format!(
            "finished: {} of {} items",
            report.reembedded, report.reembedded
        )) && backfill.contains("items/s"),
        "{backfill}"
    );
    assert!(dom.contains("<progress"));
    let server = browser::element_text(&dom, "<section id=\"server\"", "</section>").unwrap();
    assert!(
        server.contains("max_k") && server.contains("1000"),
        "{server}"
    );
    let hits = browser::table_rows(&dom, "<section id=\"search\"");
    let got: Vec<(String, String)> = hits.iter().map(|r| (r[1].clone(), r[2].clone())).collect();
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(id, s)| (id.to_string(), format!("{s:.4}")))
        .collect();
    assert_eq!(got, want);
    // each hit's image, from the data set the gallery was built from (the page's requests for
    // them are answered: a failed image load would be a console message)
    for (id, _) in &want {
        assert!(
            dom.contains(&format!("src=\"/item/{id}/image\"")),
            "no thumbnail of {id}"
        );
    }
    browser::assert_not_blank(&chrome, &url, 420);
    tx.send(()).unwrap();
    rt.block_on(h).unwrap().unwrap();
}

/// A server of `st` on a free loopback port: its runtime, address, stop sender and task.
fn serve_on_loopback(
    st: Arc<ServeState>,
) -> (
    tokio::runtime::Runtime,
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let l = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let h = rt.spawn(serve(l, router(st), Default::default(), async {
        let _ = rx.await;
    }));
    (rt, addr, tx, h)
}

/// A GET with `headers`: the status and the body's bytes.
fn get(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
    let (status, _, body) = common::http_exchange(addr, "GET", path, None, headers, b"");
    (status, body)
}

/// The exact top 5 of `q` through the JSON endpoint: (id, score).
fn st_search(addr: std::net::SocketAddr, token: &str, q: &[f32]) -> Vec<(u64, f64)> {
    let body = serde_json::json!({ "vector": q, "k": 5, "exact": true }).to_string();
    let auth = [("Authorization", &*format!("Bearer {token}"))];
    let (status, resp) = common::http_request_with(
        addr,
        "POST",
        "/search",
        Some("application/json"),
        &auth,
        body.as_bytes(),
    );
    assert_eq!(status, 200, "{resp}");
    let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
    v["results"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["id"].as_u64().unwrap(), h["score"].as_f64().unwrap()))
        .collect()
}
