//! `bcl serve`: an HTTP service (axum) over a gallery. `POST /search` takes query vectors as
//! JSON or one image (embedded by the server's query model), `GET /health` and `GET /stats`
//! report liveness, counts, lineage and backfill progress, `GET /` is a status page over them
//! ([`page`]; off with [`ServeConfig::page`]). With a token ([`auth`]) every request must
//! carry it (a browser, as a cookie set by the page's sign-in). Bodies
//! are bounded, bad input gets a 4xx with a JSON reason,
//! slow clients are cut off (a deadline for the request head, another for the whole request),
//! open connections are bounded, and the server stops on its shutdown signal, letting in-flight
//! requests finish up to a deadline.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub mod auth;
pub mod page;
mod request;

use request::{parse_request, SearchParams};

use super::ops::lineage_text;
use super::{
    check_adapted, check_lineage, AdapterLink, GalleryError, GalleryStore, Hit, Lineage, ModelInfo,
};
use crate::data::Dataset;
use crate::model::Embedder;

/// Limits and defaults of the service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Largest request body accepted, in bytes (larger: 413).
    pub max_body_bytes: usize,
    /// Largest k a request may ask for.
    pub max_k: usize,
    /// k when a request does not say.
    pub default_k: usize,
    /// Largest number of query vectors in one request.
    pub max_queries: usize,
    /// Exact search by default (else the approximate index).
    pub exact: bool,
    /// Seconds a client has to send a request's head (line and headers); past it the connection
    /// is closed.
    pub header_timeout_s: f64,
    /// Seconds a whole request may take, body upload included (past it: 408).
    pub request_timeout_s: f64,
    /// Connections served at once; further clients wait in the listen queue.
    pub max_connections: usize,
    /// Seconds the server waits for in-flight requests after its shutdown signal before it
    /// closes their connections.
    pub shutdown_grace_s: f64,
    /// Serve the status page at `/` (off for API-only deployments).
    pub page: bool,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 << 20,
            max_k: 1000,
            default_k: 10,
            max_queries: 256,
            exact: false,
            header_timeout_s: 10.0,
            request_timeout_s: 30.0,
            max_connections: 256,
            shutdown_grace_s: 10.0,
            page: true,
        }
    }
}

impl ServeConfig {
    /// Checks the limits: positive sizes and finite positive durations.
    pub fn validate(&self) -> Result<(), GalleryError> {
        if self.max_k == 0 || self.default_k == 0 || self.default_k > self.max_k {
            return Err(GalleryError::Invalid(format!(
                "need 0 < default_k <= max_k, got default_k {} and max_k {}",
                self.default_k, self.max_k
            )));
        }
        if self.max_queries == 0 || self.max_connections == 0 || self.max_body_bytes == 0 {
            return Err(GalleryError::Invalid(
                "max_queries, max_connections and max_body_bytes must be at least 1".into(),
            ));
        }
        for (name, v) in [
            ("header timeout", self.header_timeout_s),
            ("request timeout", self.request_timeout_s),
            ("shutdown grace", self.shutdown_grace_s),
        ] {
            if !(v > 0.0 && v.is_finite() && v < 1e6) {
                return Err(GalleryError::Invalid(format!(
                    "the {name} must be a positive number of seconds, got {v}"
                )));
            }
        }
        Ok(())
    }

    /// The connection-level limits [`serve`] applies.
    pub fn conn_limits(&self) -> ConnLimits {
        ConnLimits {
            header_timeout: std::time::Duration::from_secs_f64(self.header_timeout_s),
            max_connections: self.max_connections,
            shutdown_grace: std::time::Duration::from_secs_f64(self.shutdown_grace_s),
        }
    }
}

/// What [`serve`] bounds per connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Time to send a request's head.
    pub header_timeout: std::time::Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Time in-flight requests get after the shutdown signal.
    pub shutdown_grace: std::time::Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ServeConfig::default().conn_limits()
    }
}

/// What the service holds: the store (searched under a read lock; a live backfill takes the
/// write lock for one commit at a time), the query model and counters.
pub struct ServeState {
    store: RwLock<Box<dyn GalleryStore>>,
    /// The query model, locked for a forward pass only (images are decoded before).
    embedder: Option<Mutex<Embedder>>,
    /// The query model's input shape (read without its lock).
    input_shape: Option<[usize; 3]>,
    query_model: Option<ModelInfo>,
    /// The adapter the query model's embeddings go through, when it searches the gallery
    /// through one ([`ServeState::with_adapter`]).
    adapter: Option<QueryAdapter>,
    lineage: Option<Lineage>,
    cfg: ServeConfig,
    requests: AtomicU64,
    client_errors: AtomicU64,
    server_errors: AtomicU64,
    searches: AtomicU64,
    search_micros: AtomicU64,
    backfill: Mutex<Option<BackfillStatus>>,
    stop: AtomicBool,
    token: Option<auth::Token>,
    /// The gallery's data set as the status page's thumbnails read it, loaded on first use.
    thumbnails: std::sync::OnceLock<Result<page::Thumbnails, String>>,
}

/// An adapter between the server's query model and the gallery's model: its map (locked for
/// one application), its lineage identity, and the gallery's model for a kind that embeds each
/// query twice (slerp).
pub(super) struct QueryAdapter {
    pub(super) adapter: Mutex<crate::adapt::Adapter>,
    pub(super) link: AdapterLink,
    pub(super) old: Option<Mutex<Embedder>>,
}

/// Progress of a backfill the server runs beside its searches (shown in /stats).
#[derive(Debug, Clone, Serialize)]
pub struct BackfillStatus {
    /// The new model's id.
    pub model: String,
    /// The share of the gallery the new model should reach.
    pub target_fraction: f64,
    /// Items this run re-embeds.
    pub todo: usize,
    /// Items re-embedded so far (each commit durable).
    pub done: usize,
    /// Still working.
    pub running: bool,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
    /// Seconds from its start to its latest commit (or its end).
    pub elapsed_s: f64,
    /// Items re-embedded per second so far (`None` before the first commit).
    pub rate_per_s: Option<f64>,
    /// Seconds left at that rate (`None` before the first commit).
    pub eta_s: Option<f64>,
}

impl BackfillStatus {
    /// Records progress: `done` items after `elapsed_s` seconds, and the rate and time left.
    fn progress(&mut self, done: usize, elapsed_s: f64) {
        self.done = done;
        self.elapsed_s = elapsed_s;
        if done > 0 && elapsed_s > 0.0 {
            let rate = done as f64 / elapsed_s;
            self.rate_per_s = Some(rate);
            self.eta_s = Some(self.todo.saturating_sub(done) as f64 / rate);
        }
    }
}

/// A backfill for the server to run while it keeps serving the mixed gallery.
pub struct LiveBackfill {
    /// The new model (the server's query model, when it has one).
    pub embedder: Embedder,
    /// The data set the gallery was built from.
    pub data: Dataset,
    /// How far and in which order.
    pub plan: super::ops::BackfillPlan,
    /// Items per commit (the write lock is held for one commit's upsert only).
    pub commit: usize,
    /// Images per forward pass.
    pub batch: usize,
    /// Override a failed lineage check.
    pub force: bool,
}

impl ServeState {
    /// Prepares a service over `store`; with a query model, its lineage is checked once here
    /// (`force` overrides a refusal, and /stats then says so). Without one, only vectors are
    /// accepted and they are taken to be in the gallery's space.
    pub fn new(
        store: Box<dyn GalleryStore>,
        embedder: Option<Embedder>,
        cfg: ServeConfig,
        force: bool,
    ) -> Result<Self, GalleryError> {
        let lineage = match &embedder {
            Some(e) => {
                let m = ModelInfo::from_card(&e.card);
                Some(check_lineage(
                    store.manifest(),
                    &store.counts()?,
                    &m,
                    force,
                )?)
            }
            None => None,
        };
        Self::assemble(store, embedder, cfg, lineage)
    }

    /// The service over `store` with the query model and the verdict its lineage check gave.
    fn assemble(
        store: Box<dyn GalleryStore>,
        embedder: Option<Embedder>,
        cfg: ServeConfig,
        lineage: Option<Lineage>,
    ) -> Result<Self, GalleryError> {
        cfg.validate()?;
        let query_model = embedder.as_ref().map(|e| ModelInfo::from_card(&e.card));
        Ok(Self {
            store: RwLock::new(store),
            input_shape: embedder.as_ref().map(|e| e.card.input_shape),
            embedder: embedder.map(Mutex::new),
            query_model,
            adapter: None,
            lineage,
            cfg,
            requests: AtomicU64::new(0),
            client_errors: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            searches: AtomicU64::new(0),
            search_micros: AtomicU64::new(0),
            backfill: Mutex::new(None),
            stop: AtomicBool::new(false),
            token: None,
            thumbnails: std::sync::OnceLock::new(),
        })
    }

    /// Requires `token` as `Authorization: Bearer <token>` on every request (401 without it).
    pub fn require_token(mut self, token: auth::Token) -> Self {
        self.token = Some(token);
        self
    }

    /// Whether every request must carry a token.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// A service whose query model searches the gallery through `adapter` (fitted between the
    /// query model and the gallery's model; `old` is the gallery's model, which a slerp adapter
    /// needs to embed each image query a second time): the lineage is checked through the
    /// adapter ([`check_adapted`]; `force` overrides a refusal). JSON vectors are then the
    /// query model's own embeddings, mapped before the search.
    pub fn with_adapter(
        store: Box<dyn GalleryStore>,
        embedder: Embedder,
        adapter: crate::adapt::Adapter,
        old: Option<Embedder>,
        cfg: ServeConfig,
        force: bool,
    ) -> Result<Self, GalleryError> {
        let link = AdapterLink::from_card(&adapter.card);
        super::lineage::check_companion(
            &adapter,
            old.as_ref().map(|o| &o.card),
            "serve the gallery's model beside it",
        )?;
        let query = ModelInfo::from_card(&embedder.card);
        let lineage = check_adapted(store.manifest(), &store.counts()?, &query, &link, force)?;
        let mut st = Self::assemble(store, Some(embedder), cfg, Some(lineage))?;
        st.adapter = Some(QueryAdapter {
            adapter: Mutex::new(adapter),
            link,
            old: old.map(Mutex::new),
        });
        Ok(st)
    }

    fn store(&self) -> RwLockReadGuard<'_, Box<dyn GalleryStore>> {
        self.store.read().unwrap_or_else(|p| p.into_inner())
    }

    fn set_backfill(&self, f: impl FnOnce(&mut BackfillStatus)) {
        let mut b = self.backfill.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = b.as_mut() {
            f(b);
        }
    }

    /// Starts re-embedding the gallery with `job.embedder` in a background thread while the
    /// server keeps answering from the mixed gallery. Checked here (data source, lineage, and
    /// that the server's query model, if any, is the new model: the old one could not search
    /// the mixed gallery); each commit is durable, so a stopped backfill resumes where it was.
    pub fn start_backfill(
        self: &Arc<Self>,
        job: LiveBackfill,
    ) -> Result<
        std::thread::JoinHandle<Result<super::ops::BackfillReport, GalleryError>>,
        GalleryError,
    > {
        let model = ModelInfo::from_card(&job.embedder.card);
        if let Some(a) = &self.adapter {
            return Err(GalleryError::Invalid(format!(
                "the server searches through adapter {} ({}): a backfill would mix the new \
                 model's own vectors with the old ones its adapted queries are meant for",
                a.link.id, a.link.kind
            )));
        }
        if let Some(q) = &self.query_model {
            if q.id != model.id {
                return Err(GalleryError::Invalid(format!(
                    "the server's query model {} is not the backfill's model {}: serve the new \
                     model while backfilling",
                    q.name, model.name
                )));
            }
        }
        if job.commit == 0 || job.batch == 0 {
            return Err(GalleryError::Invalid(
                "commit and batch sizes must be at least 1".into(),
            ));
        }
        let todo =
            super::ops::backfill_todo(&**self.store(), &model, &job.data, job.plan, job.force)?;
        super::ops::register_model(
            &mut **self.store.write().unwrap_or_else(|p| p.into_inner()),
            &model,
        )?;
        *self.backfill.lock().unwrap_or_else(|p| p.into_inner()) = Some(BackfillStatus {
            model: model.id.clone(),
            target_fraction: job.plan.fraction,
            todo: todo.positions.len(),
            done: 0,
            running: true,
            error: None,
            elapsed_s: 0.0,
            rate_per_s: None,
            eta_s: None,
        });
        let st = self.clone();
        Ok(std::thread::spawn(move || {
            let t0 = Instant::now();
            let run = || -> Result<usize, GalleryError> {
                let mut done = 0;
                for chunk in todo.positions.chunks(job.commit) {
                    if st.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let dim = st.store().manifest().dim;
                    let v =
                        super::ops::embed_items(&job.embedder, &job.data, chunk, job.batch, dim)?;
                    let ids: Vec<u64> = chunk.iter().map(|&p| job.data.ids[p] as u64).collect();
                    st.store
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .add(&model.id, &ids, &v)?;
                    done += chunk.len();
                    st.set_backfill(|b| b.progress(done, t0.elapsed().as_secs_f64()));
                }
                st.store
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .checkpoint()?;
                Ok(done)
            };
            let r = run();
            st.set_backfill(|b| {
                let done = b.done;
                b.progress(done, t0.elapsed().as_secs_f64());
                b.running = false;
                b.error = r.as_ref().err().map(|e| e.to_string());
            });
            let done = r?;
            Ok(super::ops::BackfillReport {
                reembedded: done,
                by_new_model: todo.by_new_model - (todo.positions.len() - done),
                total: todo.total,
                lineage: lineage_text(&todo.lineage),
            })
        }))
    }

    /// Counts an answer's client or server error, and passes it on.
    fn count_errors(&self, resp: Response) -> Response {
        if resp.status().is_client_error() {
            self.client_errors.fetch_add(1, Ordering::Relaxed);
        } else if resp.status().is_server_error() {
            self.server_errors.fetch_add(1, Ordering::Relaxed);
        }
        resp
    }

    /// Asks background work (a live backfill) to stop at its next commit.
    pub fn stop_background(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[derive(Debug, Serialize)]
struct SearchResponse {
    model: Option<String>,
    exact: bool,
    k: usize,
    results: Vec<Vec<Hit>>,
}

fn error(status: StatusCode, reason: impl Into<String>) -> Response {
    (status, Json(json!({ "error": reason.into() }))).into_response()
}

/// Builds the service's routes over `state`.
pub fn router(state: Arc<ServeState>) -> Router {
    let limit = state.cfg.max_body_bytes;
    let routes = if state.cfg.page {
        Router::new()
            .route("/", get(status_page))
            .route("/item/{id}/image", get(item_image))
    } else {
        Router::new()
    };
    routes
        .route("/health", get(health))
        .route("/stats", get(stats))
        .route("/search", post(search))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint: POST /search, GET /health, GET /stats (and GET /, the status \
                 page, unless it is turned off)",
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_deadline,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            bearer_token,
        ))
        .with_state(state)
}

/// Answers 401 (with `WWW-Authenticate: Bearer`) to a request without the server's token, when
/// it has one, before the request reaches any endpoint or its body is read. The token comes in
/// the `Authorization` header, or from a browser signed in to the status page, in its cookie;
/// `GET /?token=T` with the right token is that sign-in ([`page::sign_in`]).
async fn bearer_token(
    State(st): State<Arc<ServeState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(token) = &st.token else {
        return next.run(req).await;
    };
    let in_address = if st.cfg.page {
        page::query_token(req.uri())
    } else {
        None
    };
    if let Some(given) = &in_address {
        if let Some(r) = page::sign_in(token, given) {
            st.requests.fetch_add(1, Ordering::Relaxed);
            return r;
        }
    }
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let cookie = page::cookie_token(req.headers());
    if in_address.is_none()
        && (token.admits(header) || cookie.is_some_and(|c| token.admits_value(c)))
    {
        return next.run(req).await;
    }
    st.requests.fetch_add(1, Ordering::Relaxed);
    st.client_errors.fetch_add(1, Ordering::Relaxed);
    let reason = if in_address.is_some() {
        "the token in the address is not this server's"
    } else if header.is_some() {
        "the Authorization header does not carry this server's token"
    } else if cookie.is_some() {
        "the sign-in cookie does not carry this server's token: open /?token=<token> again"
    } else {
        "this server needs a token: send `Authorization: Bearer <token>` (a browser: open \
         /?token=<token> once)"
    };
    let mut r = error(StatusCode::UNAUTHORIZED, reason);
    r.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    r
}

/// Answers 408 to a request that has not completed (its body upload included) within the
/// configured time, so a stalled upload does not hold its connection and memory for ever.
async fn request_deadline(
    State(st): State<Arc<ServeState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let limit = std::time::Duration::from_secs_f64(st.cfg.request_timeout_s);
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => {
            st.client_errors.fetch_add(1, Ordering::Relaxed);
            error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request did not complete within {} s",
                    st.cfg.request_timeout_s
                ),
            )
        }
    }
}

/// Runs `f` on a blocking thread: the store's lock is a std lock that a backfill commit holds
/// for writing, and an async worker must not wait on it.
async fn blocking(
    st: Arc<ServeState>,
    f: impl FnOnce(&ServeState) -> Response + Send + 'static,
) -> Response {
    tokio::task::spawn_blocking(move || f(&st))
        .await
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn status_page(State(st): State<Arc<ServeState>>) -> Response {
    st.requests.fetch_add(1, Ordering::Relaxed);
    page::page()
}

/// An item's image from the data set the gallery was built from (the page's thumbnails).
async fn item_image(
    State(st): State<Arc<ServeState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    st.requests.fetch_add(1, Ordering::Relaxed);
    let resp = blocking(st.clone(), move |st| {
        let Ok(id) = id.parse::<u64>() else {
            return error(
                StatusCode::BAD_REQUEST,
                format!("item id '{id}' is not a number"),
            );
        };
        let Some(src) = st.store().manifest().source.clone() else {
            return error(
                StatusCode::NOT_FOUND,
                "this gallery was filled with vectors, not from a data set: it has no images",
            );
        };
        let thumbs = st
            .thumbnails
            .get_or_init(|| page::Thumbnails::load(&src).map_err(|e| e.to_string()));
        match thumbs {
            Ok(t) => t.png(id),
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read the gallery's data set: {e}"),
            ),
        }
    })
    .await;
    st.count_errors(resp)
}

async fn health(State(st): State<Arc<ServeState>>) -> Response {
    st.requests.fetch_add(1, Ordering::Relaxed);
    blocking(st, |st| {
        let items = st.store().len();
        Json(json!({ "status": "ok", "items": items })).into_response()
    })
    .await
}

async fn stats(State(st): State<Arc<ServeState>>) -> Response {
    st.requests.fetch_add(1, Ordering::Relaxed);
    blocking(st, stats_now).await
}

/// The /stats document (on a blocking thread; the store's counts are kept, not walked).
fn stats_now(st: &ServeState) -> Response {
    let store = st.store();
    let counts = match store.counts() {
        Ok(c) => c,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    // the verdict for the gallery as it is now (a backfill changes the mix)
    let lineage = st.query_model.as_ref().map(|m| {
        let now = match &st.adapter {
            Some(a) => check_adapted(store.manifest(), &counts, m, &a.link, true),
            None => check_lineage(store.manifest(), &counts, m, true),
        };
        match now {
            Ok(l) => lineage_text(&l),
            Err(e) => e.to_string(),
        }
    });
    let backfill = st
        .backfill
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let searches = st.searches.load(Ordering::Relaxed);
    let micros = st.search_micros.load(Ordering::Relaxed);
    let manifest = store.manifest();
    Json(json!({
        "backend": store.backend(),
        "dim": manifest.dim,
        "items": store.len(),
        "items_per_model": counts,
        "models": manifest.models,
        "graph": super::lineage::graph(manifest),
        "last_measurement": manifest.measured.last(),
        "thumbnails": st.cfg.page && manifest.source.is_some(),
        "query_model": st.query_model,
        "adapter": st.adapter.as_ref().map(|a| json!({ "id": a.link.id, "kind": a.link.kind })),
        "lineage_at_start": st.lineage.as_ref().map(lineage_text),
        "lineage": lineage,
        "backfill": backfill,
        "requests": st.requests.load(Ordering::Relaxed),
        "client_errors": st.client_errors.load(Ordering::Relaxed),
        "server_errors": st.server_errors.load(Ordering::Relaxed),
        "searches": searches,
        "mean_search_ms": if searches > 0 { micros as f64 / searches as f64 / 1000.0 } else { 0.0 },
        "auth": if st.token.is_some() { "bearer token" } else { "none" },
        "limits": st.cfg,
    }))
    .into_response()
}

async fn search(
    State(st): State<Arc<ServeState>>,
    params: Result<Query<SearchParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    st.requests.fetch_add(1, Ordering::Relaxed);
    let resp = blocking(st.clone(), move |st| {
        let params = match params {
            Ok(Query(p)) => p,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
        };
        let body = match body {
            Ok(b) => b,
            Err(e) => {
                let status = e.status();
                let reason = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    format!(
                        "request body over the limit of {} bytes",
                        st.cfg.max_body_bytes
                    )
                } else {
                    e.body_text()
                };
                return error(status, reason);
            }
        };
        let (queries, k, exact) = match parse_request(st, &headers, params, &body) {
            Ok(x) => x,
            Err((status, reason)) => return error(status, reason),
        };
        let t = Instant::now();
        let hits = {
            let store = st.store();
            if exact {
                store.search_exact(&queries, k)
            } else {
                store.search_approx(&queries, k)
            }
        };
        match hits {
            Ok(results) => {
                st.searches.fetch_add(1, Ordering::Relaxed);
                st.search_micros
                    .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                Json(SearchResponse {
                    model: st.query_model.as_ref().map(|m| m.id.clone()),
                    exact,
                    k,
                    results,
                })
                .into_response()
            }
            Err(GalleryError::Invalid(r)) => error(StatusCode::UNPROCESSABLE_ENTITY, r),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    })
    .await;
    st.count_errors(resp)
}

/// Serves `app` on `listener` until `shutdown` completes. Each connection has `limits
/// .header_timeout` to send a request's head; at most `limits.max_connections` are served at
/// once (the rest wait in the listen queue); after `shutdown`, no connection is accepted and
/// in-flight requests get `limits.shutdown_grace` to finish before their connections close.
/// Hand-written over hyper because `axum::serve` exposes none of these limits.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors and the like: transient; back off, keep serving.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(
                "connections still open {} s after the shutdown signal: closing them",
                limits.shutdown_grace.as_secs_f64()
            );
        }
    }
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
