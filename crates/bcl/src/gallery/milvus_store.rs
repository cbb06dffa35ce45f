//! The Milvus gallery store (cargo feature `milvus`), for galleries past one machine, through
//! the `milvus-sdk-rust` crate. One collection holds the items (`id` primary key, `model`, the
//! vector twice: `vec` under an HNSW index for approximate search and `vec_flat` under a FLAT
//! index, so exact search is always there as the reference); a second collection
//! (`<name>_manifest`) holds the manifest as JSON: row 0 the dimension and data source, and one
//! row per registered model keyed by a hash of its id, so that writers registering models at the
//! same time never overwrite each other's registration (Milvus has no transactions to lock the
//! manifest with; an upsert of a row of one's own needs none). The gallery directory keeps only a pointer
//! file (`gallery.json`: backend, URI, collection). Writes are upserts acknowledged by Milvus
//! (durable in its log); `checkpoint` flushes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};

use milvus::v2::prelude::*;
use serde::{Deserialize, Serialize};

use super::{
    prepare_add, prepare_queries, GalleryError, GalleryManifest, GalleryStore, Hit, MilvusConfig,
    Result,
};

const STORE_FILE: &str = super::GALLERY_FILE;
const ID: &str = "id";
const MODEL: &str = "model";
const VEC: &str = "vec";
const VEC_FLAT: &str = "vec_flat";
const MANIFEST: &str = "manifest";
/// Rows per query page when listing items (Milvus caps a query's limit + offset at 16384).
const PAGE: i64 = 16_000;

/// One registered model's row in the manifest collection.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ModelRow {
    /// Registration time (ns since the epoch): the order of arrival.
    order: u128,
    model: super::ModelInfo,
}

/// The manifest collection's key of a model's row: 63 bits of the SHA-256 of its id, never 0
/// (row 0 is the base manifest).
fn model_key(id: &str) -> i64 {
    use sha2::Digest;
    let h = sha2::Sha256::digest(id.as_bytes());
    (i64::from_le_bytes(h[..8].try_into().expect("8 bytes")) & i64::MAX).max(1)
}

/// The pointer file in the gallery directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pointer {
    backend: String,
    milvus: MilvusConfig,
}

/// A gallery in a Milvus collection.
pub struct MilvusStore {
    dir: PathBuf,
    cfg: MilvusConfig,
    rt: tokio::runtime::Runtime,
    client: ClientV2,
    manifest: GalleryManifest,
    len: usize,
    ef: usize,
}

fn err(e: impl std::fmt::Display) -> GalleryError {
    GalleryError::Index(format!("milvus: {e}"))
}

/// The Int64 primary key both collections use (ids are given, never generated).
fn id_field() -> FieldSchema {
    FieldSchema::new()
        .name(ID)
        .data_type(DataType::Int64)
        .primary_key(true)
        .auto_id(false)
}

/// A float-vector field.
fn vector_field(name: &str, dim: u32) -> FieldSchema {
    FieldSchema::new()
        .name(name)
        .data_type(DataType::FloatVector)
        .dimension(dim)
}

fn meta_name(c: &str) -> String {
    format!("{c}_manifest")
}

fn to_i64(ids: &[u64]) -> Result<Vec<i64>> {
    ids.iter()
        .map(|&i| {
            i64::try_from(i).map_err(|_| {
                GalleryError::Invalid(format!("item id {i} is above Milvus's Int64 range"))
            })
        })
        .collect()
}

impl MilvusStore {
    /// Runs a client future to completion from synchronous code (also from a thread that is
    /// inside another tokio runtime, such as the HTTP server's blocking pool).
    fn block<F>(&self, f: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| {
                s.spawn(|| self.rt.block_on(f))
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            })
        } else {
            self.rt.block_on(f)
        }
    }

    fn connect(cfg: &MilvusConfig) -> Result<(tokio::runtime::Runtime, ClientV2)> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(err)?;
        let mut cc = ConnectConfig::new()
            .uri(cfg.uri.clone())
            .connect_timeout(std::time::Duration::from_secs(cfg.connect_timeout_s));
        if let Some(t) = &cfg.token {
            cc = cc.token(t.clone());
        }
        let client = rt
            .block_on(ClientV2::new(&cc))
            .map_err(|e| GalleryError::Index(format!("cannot reach Milvus at {}: {e}", cfg.uri)))?;
        Ok((rt, client))
    }

    /// Creates the collections in Milvus and the pointer file in `dir` (refused if either
    /// exists).
    pub fn create(dir: &Path, manifest: GalleryManifest, cfg: MilvusConfig) -> Result<Self> {
        super::validate_dim(manifest.dim)?;
        super::validate_models(&manifest.models)?;
        super::check_fresh_dir(dir, |_| false)?;
        let (rt, client) = Self::connect(&cfg)?;
        let store = Self {
            dir: dir.to_path_buf(),
            cfg,
            rt,
            client,
            manifest,
            len: 0,
            ef: 64,
        };
        store.block(store.create_collections())?;
        store.block(store.write_manifest(&store.manifest, &store.manifest.models))?;
        let text = serde_json::to_string_pretty(&Pointer {
            backend: "milvus".into(),
            milvus: store.cfg.clone(),
        })
        .map_err(err)?;
        crate::files::write_atomic(&dir.join(STORE_FILE), text.as_bytes()).map_err(|e| {
            GalleryError::Corrupt {
                path: dir.join(STORE_FILE),
                reason: e.to_string(),
            }
        })?;
        Ok(store)
    }

    /// Opens the gallery a pointer file in `dir` names.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(STORE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| GalleryError::Io {
            path: path.clone(),
            source,
        })?;
        let p: Pointer = serde_json::from_str(&text).map_err(|e| GalleryError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let (rt, client) = Self::connect(&p.milvus)?;
        let mut store = Self {
            dir: dir.to_path_buf(),
            cfg: p.milvus,
            rt,
            client,
            manifest: GalleryManifest::new(1),
            len: 0,
            ef: 64,
        };
        store.manifest = store.block(store.read_manifest())?;
        super::validate_dim(store.manifest.dim).map_err(|e| GalleryError::Corrupt {
            path: path.clone(),
            reason: format!("the manifest in Milvus: {e}"),
        })?;
        store.len = store.block(store.count(""))?;
        Ok(store)
    }

    /// k as Milvus takes it: at most the gallery's size and Milvus's top-k limit (16,384).
    fn clamp_k(&self, k: usize) -> usize {
        k.min(self.len).clamp(1, 16_384)
    }

    /// The gallery directory (holding the pointer file).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    async fn create_collections(&self) -> Result<()> {
        let c = &self.cfg.collection;
        for name in [c.clone(), meta_name(c)] {
            let has = self
                .client
                .has_collection(
                    HasCollectionRequest::builder()
                        .collection_name(&name)
                        .build()
                        .map_err(err)?,
                )
                .await
                .map_err(err)?;
            if has.exists() {
                return Err(GalleryError::Invalid(format!(
                    "Milvus collection {name} already exists at {}; choose another collection name",
                    self.cfg.uri
                )));
            }
        }
        let dim = self.manifest.dim as u32;
        let items = CollectionSchema::new()
            .add_field(id_field())
            .add_field(
                FieldSchema::new()
                    .name(MODEL)
                    .data_type(DataType::VarChar)
                    .max_length(256),
            )
            .add_field(vector_field(VEC, dim))
            .add_field(vector_field(VEC_FLAT, dim));
        let hnsw = IndexParam::new()
            .field_name(VEC)
            .index_type(IndexType::Hnsw)
            .metric_type(MetricType::Ip)
            .extra_params(HashMap::from([
                ("M".to_string(), self.cfg.hnsw_m.to_string()),
                (
                    "efConstruction".to_string(),
                    self.cfg.ef_construction.to_string(),
                ),
            ]));
        let flat = IndexParam::new()
            .field_name(VEC_FLAT)
            .index_type(IndexType::Flat)
            .metric_type(MetricType::Ip);
        self.create_loaded(c, items, vec![hnsw, flat]).await?;
        let meta = CollectionSchema::new()
            .add_field(id_field())
            .add_field(
                FieldSchema::new()
                    .name(MANIFEST)
                    .data_type(DataType::VarChar)
                    .max_length(65_535),
            )
            .add_field(vector_field(VEC, 2));
        let mflat = IndexParam::new()
            .field_name(VEC)
            .index_type(IndexType::Flat)
            .metric_type(MetricType::L2);
        self.create_loaded(&meta_name(c), meta, vec![mflat]).await
    }

    async fn create_loaded(
        &self,
        name: &str,
        schema: CollectionSchema,
        index: Vec<IndexParam>,
    ) -> Result<()> {
        self.client
            .create_collection(
                CreateCollectionRequest::builder()
                    .collection_name(name)
                    .schema(schema)
                    .index_params(index)
                    .consistency_level(ConsistencyLevel::Strong)
                    .build()
                    .map_err(err)?,
            )
            .await
            .map_err(err)?;
        self.client
            .load_collection(
                LoadCollectionRequest::builder()
                    .collection_name(name)
                    .build()
                    .map_err(err)?,
            )
            .await
            .map_err(err)
    }

    /// Writes the base manifest (row 0: dimension, data source) and a row of its own for each
    /// model of `new_models`.
    async fn write_manifest(
        &self,
        m: &GalleryManifest,
        new_models: &[super::ModelInfo],
    ) -> Result<()> {
        let mut base = m.clone();
        base.models.clear();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut keys = vec![0];
        let mut texts = vec![serde_json::to_string(&base).map_err(err)?];
        for (i, model) in new_models.iter().enumerate() {
            keys.push(model_key(&model.id));
            let row = ModelRow {
                order: now + i as u128,
                model: model.clone(),
            };
            texts.push(serde_json::to_string(&row).map_err(err)?);
        }
        let n = keys.len();
        let columns = vec![
            FieldData::int64(ID, keys),
            FieldData::varchar(MANIFEST, texts),
            FieldData::float_vector(VEC, vec![vec![0.0, 0.0]; n]),
        ];
        self.client
            .upsert(
                UpsertRequest::builder()
                    .insert(
                        InsertRequest::builder()
                            .collection_name(meta_name(&self.cfg.collection))
                            .columns(columns)
                            .build()
                            .map_err(err)?,
                    )
                    .build()
                    .map_err(err)?,
            )
            .await
            .map_err(err)?;
        Ok(())
    }

    /// Reads the manifest: row 0, then the models of their own rows in order of arrival (after
    /// any model listed in row 0 itself, as galleries made before model rows have them).
    async fn read_manifest(&self) -> Result<GalleryManifest> {
        let name = meta_name(&self.cfg.collection);
        let corrupt = |reason: String| GalleryError::Corrupt {
            path: self.dir.join(STORE_FILE),
            reason: format!("the manifest in Milvus collection {name}: {reason}"),
        };
        let r = self
            .query_rows(&name, format!("{ID} >= 0"), &[ID, MANIFEST], None)
            .await?;
        let mut base: Option<GalleryManifest> = None;
        let mut rows: Vec<ModelRow> = Vec::new();
        for row in r.results().rows().map_err(err)? {
            let text = row.get_str(MANIFEST).map_err(err)?;
            if row.get_i64(ID).map_err(err)? == 0 {
                base = Some(serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?);
            } else {
                rows.push(serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?);
            }
        }
        let mut m = base.ok_or_else(|| corrupt("no manifest row".into()))?;
        rows.sort_by(|a, b| (a.order, &a.model.id).cmp(&(b.order, &b.model.id)));
        for r in rows {
            if m.model(&r.model.id).is_none() {
                m.models.push(r.model);
            }
        }
        Ok(m)
    }

    /// `id in [...]`: the SDK's `get` sends a filter template milvus-lite does not parse, so
    /// lookups by id go through `query` with a literal list.
    fn id_filter(ids: &[i64]) -> String {
        let list: Vec<String> = ids.iter().map(i64::to_string).collect();
        format!("{ID} in [{}]", list.join(","))
    }

    async fn query_rows(
        &self,
        collection: &str,
        filter: String,
        fields: &[&str],
        limit: Option<i64>,
    ) -> Result<QueryResponse> {
        let mut b = QueryRequest::builder()
            .collection_name(collection)
            .filter(filter)
            .output_fields(fields.iter().copied())
            .consistency_level(ConsistencyLevel::Strong);
        if let Some(l) = limit {
            b = b.limit(l);
        }
        self.client
            .query(b.build().map_err(err)?)
            .await
            .map_err(err)
    }

    async fn count(&self, filter: &str) -> Result<usize> {
        let r = self
            .query_rows(
                &self.cfg.collection,
                filter.to_string(),
                &["count(*)"],
                None,
            )
            .await?;
        let row = r.results().rows().map_err(err)?.next();
        Ok(match row {
            Some(row) => row.get_i64("count(*)").map_err(err)? as usize,
            None => 0,
        })
    }

    /// Which of `ids` are already stored.
    async fn existing(&self, ids: &[i64]) -> Result<HashSet<i64>> {
        let r = self
            .query_rows(&self.cfg.collection, Self::id_filter(ids), &[ID], None)
            .await?;
        let mut out = HashSet::new();
        for row in r.results().rows().map_err(err)? {
            out.insert(row.get_i64(ID).map_err(err)?);
        }
        Ok(out)
    }

    async fn search_field(
        &self,
        queries: Vec<Vec<f32>>,
        k: usize,
        exact: bool,
    ) -> Result<Vec<Vec<Hit>>> {
        let mut b = SearchRequest::builder()
            .collection_name(&self.cfg.collection)
            .vector_field(if exact { VEC_FLAT } else { VEC })
            .vectors(SearchVectors::Float(queries))
            .limit(k as i64)
            .metric_type(MetricType::Ip)
            .consistency_level(ConsistencyLevel::Strong);
        if !exact {
            b = b.extra_params(HashMap::from([(
                "ef".to_string(),
                self.ef.max(k).to_string(),
            )]));
        }
        let r = self
            .client
            .search(b.build().map_err(err)?)
            .await
            .map_err(err)?;
        let mut out = Vec::new();
        for res in r.results().iter() {
            let mut hits = Vec::new();
            for row in res.rows().map_err(err)? {
                let id = row.get_i64(ID).map_err(err)?;
                let score = row.get_f32("score").map_err(err)?;
                hits.push(Hit {
                    id: id as u64,
                    score,
                });
            }
            out.push(hits);
        }
        Ok(out)
    }
}

impl GalleryStore for MilvusStore {
    fn backend(&self) -> &'static str {
        "milvus"
    }

    fn manifest(&self) -> &GalleryManifest {
        &self.manifest
    }

    fn set_manifest(&mut self, manifest: GalleryManifest) -> Result<()> {
        super::check_manifest_change(&self.manifest, &manifest)?;
        let new_models = manifest.models[self.manifest.models.len()..].to_vec();
        self.block(self.write_manifest(&manifest, &new_models))?;
        // Another writer may have registered models meanwhile: take the server's view.
        self.manifest = self.block(self.read_manifest())?;
        Ok(())
    }

    fn len(&self) -> usize {
        self.len
    }

    fn add(&mut self, model: &str, ids: &[u64], vectors: &[f32]) -> Result<()> {
        let dim = self.manifest.dim;
        let v = prepare_add(&self.manifest, model, ids, vectors)?;
        let ids = to_i64(ids)?;
        let existing = self.block(self.existing(&ids))?;
        let rows: Vec<Vec<f32>> = v.chunks(dim).map(<[f32]>::to_vec).collect();
        let columns = vec![
            FieldData::int64(ID, ids.clone()),
            FieldData::varchar(MODEL, vec![model.to_string(); ids.len()]),
            FieldData::float_vector(VEC, rows.clone()),
            FieldData::float_vector(VEC_FLAT, rows),
        ];
        let req = UpsertRequest::builder()
            .insert(
                InsertRequest::builder()
                    .collection_name(&self.cfg.collection)
                    .columns(columns)
                    .build()
                    .map_err(err)?,
            )
            .build()
            .map_err(err)?;
        self.block(self.client.upsert(req)).map_err(err)?;
        self.len += ids.len() - existing.len();
        Ok(())
    }

    fn search_exact(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Hit>>> {
        let q = prepare_queries(self.manifest.dim, queries, k)?;
        let rows = q.chunks(self.manifest.dim).map(<[f32]>::to_vec).collect();
        self.block(self.search_field(rows, self.clamp_k(k), true))
    }

    fn search_approx(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Hit>>> {
        let q = prepare_queries(self.manifest.dim, queries, k)?;
        let rows = q.chunks(self.manifest.dim).map(<[f32]>::to_vec).collect();
        self.block(self.search_field(rows, self.clamp_k(k), false))
    }

    fn vectors(&self, ids: &[u64]) -> Result<Vec<f32>> {
        let want = to_i64(ids)?;
        let r = self.block(self.query_rows(
            &self.cfg.collection,
            Self::id_filter(&want),
            &[ID, VEC_FLAT],
            None,
        ))?;
        let mut got: HashMap<i64, Vec<f32>> = HashMap::new();
        for row in r.results().rows().map_err(err)? {
            let id = row.get_i64(ID).map_err(err)?;
            if let ResultValue::FloatVector(v) = row.get(VEC_FLAT).map_err(err)? {
                got.insert(id, v.to_vec());
            }
        }
        let mut out = Vec::with_capacity(ids.len() * self.manifest.dim);
        for id in want {
            let v = got
                .get(&id)
                .ok_or_else(|| GalleryError::Invalid(format!("no item with id {id}")))?;
            out.extend_from_slice(v);
        }
        Ok(out)
    }

    fn item_models(&self) -> Result<BTreeMap<u64, String>> {
        // Pages of `id > last`: Milvus returns a query's rows in primary-key order, which is
        // what pymilvus's QueryIterator relies on too.
        let mut out = BTreeMap::new();
        let mut last: i64 = -1;
        loop {
            let r = self.block(self.query_rows(
                &self.cfg.collection,
                format!("{ID} > {last}"),
                &[ID, MODEL],
                Some(PAGE),
            ))?;
            let mut n = 0;
            for row in r.results().rows().map_err(err)? {
                let id = row.get_i64(ID).map_err(err)?;
                out.insert(id as u64, row.get_str(MODEL).map_err(err)?.to_string());
                last = last.max(id);
                n += 1;
            }
            if n < PAGE as usize {
                return Ok(out);
            }
        }
    }

    fn counts(&self) -> Result<BTreeMap<String, usize>> {
        let mut c = BTreeMap::new();
        for m in &self.manifest.models {
            let f = format!("{MODEL} == {}", serde_json::to_string(&m.id).map_err(err)?);
            let n = self.block(self.count(&f))?;
            if n > 0 {
                c.insert(m.id.clone(), n);
            }
        }
        Ok(c)
    }

    fn set_search_expansion(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            return Err(GalleryError::Invalid(
                "the search expansion must be at least 1".into(),
            ));
        }
        self.ef = n;
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<()> {
        let names = [self.cfg.collection.clone(), meta_name(&self.cfg.collection)];
        let req = FlushRequest::builder()
            .collection_names(names)
            .build()
            .map_err(err)?;
        self.block(self.client.flush(req)).map_err(err)?;
        Ok(())
    }
}
