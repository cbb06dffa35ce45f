//! `bcl gallery ...` and `bcl serve`: argument parsing and printing over `bcl::gallery`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bcl::data::DataConfig;
use bcl::data::Dataset;
use bcl::gallery::ops::{self, BackfillStrategy, EmbedOptions};
use bcl::gallery::serve::{self, ServeConfig, ServeState};
use bcl::gallery::usearch_store::{Quantization, UsearchConfig};
use bcl::layout::ModelDir;

/// `--quantization`'s value.
fn parse_quantization(s: &str) -> Result<Quantization, String> {
    Quantization::parse(s).map_err(|e| e.to_string())
}
use bcl::gallery::{
    self as gal, BackendConfig, GalleryManifest, GalleryStore, Lineage, MilvusConfig, ModelInfo,
};
use bcl::model::Embedder;
use bcl::run::{parse_device, RunConfig};
use clap::{Args, Subcommand};

/// Gallery commands.
#[derive(Subcommand)]
pub enum GalleryCommand {
    /// Create a gallery and embed a data set's images with a model.
    Build(BuildArgs),
    /// Add items: a data set's images embedded by a model, or precomputed vectors (.npy).
    Add(AddArgs),
    /// Top-k of query images (embedded by a model) or query vectors, as JSON lines.
    Search(SearchArgs),
    /// Re-embed items with a new model until a share of the gallery is its (resumable).
    Backfill(BackfillArgs),
    /// Items per model, the lineage graph (declared successions, adapters, measured
    /// cross-tests) and data source, as JSON.
    Status(StatusArgs),
    /// Record an adapter on the gallery's lineage, and/or measure a model's cross-test on the
    /// gallery's own items (through the adapter) and record it.
    Link(LinkArgs),
    /// Upgrade the stored vectors of the old model into the new model's space through a
    /// forward adapter, without re-embedding images (resumable; items tagged with the adapter).
    Upgrade(UpgradeArgs),
    /// Open a gallery whose log is damaged: keep every intact record, report what was lost,
    /// and set the damaged log aside (usearch backend).
    Recover(RecoverArgs),
}

/// `bcl gallery link`.
#[derive(Args)]
pub struct LinkArgs {
    /// Gallery directory.
    #[arg(long)]
    store: PathBuf,
    /// The adapter to record (`bcl adapt fit`): new → old for queries, or forward.
    #[arg(long, required_unless_present = "model")]
    adapter: Option<PathBuf>,
    /// Measure this model's cross-test on the gallery's own items (its data source's images
    /// as queries, through --adapter if given, against the stored vectors) and record it.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The gallery's model, which a slerp adapter reads beside the query model.
    #[arg(long, requires = "model")]
    old_model: Option<PathBuf>,
    /// Record or measure even if the lineage check fails (a warning says what was overridden).
    #[arg(long)]
    force: bool,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 256)]
    batch: usize,
}

/// `bcl gallery upgrade`.
#[derive(Args)]
pub struct UpgradeArgs {
    /// Gallery directory.
    #[arg(long)]
    store: PathBuf,
    /// A forward (old → new) adapter fitted for the gallery's model and the new model.
    #[arg(long)]
    adapter: PathBuf,
    /// Items per durable commit.
    #[arg(long, default_value_t = 4096)]
    commit: usize,
    /// Print one line per durable commit ("committed N/M").
    #[arg(long)]
    print_commits: bool,
}

/// `bcl gallery recover`.
#[derive(Args)]
pub struct RecoverArgs {
    /// Gallery directory.
    #[arg(long)]
    store: PathBuf,
}

/// Where the images come from (defaults: the model's training data, test split).
#[derive(Args)]
pub struct DataArgs {
    /// TOML run configuration whose [data] section names the data (default: the model's own).
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Data directory (overrides the configuration's).
    #[arg(long)]
    pub(crate) data: Option<PathBuf>,
    /// test or train.
    #[arg(long, default_value = "test")]
    pub(crate) split: bcl::data::Part,
    /// Use only the first N images of each class of the split.
    #[arg(long)]
    pub(crate) per_class: Option<usize>,
}

/// Embedding options.
#[derive(Args)]
pub struct EmbedArgs {
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Items per durable commit.
    #[arg(long, default_value_t = 4096)]
    commit: usize,
    /// Print one line per durable commit ("committed N/M") for scripts that must know what
    /// survived an interruption.
    #[arg(long)]
    print_commits: bool,
    #[command(flatten)]
    exec: crate::ExecArgs,
}

/// Where a new gallery lives.
#[derive(Args)]
pub struct BackendArgs {
    /// hnsw or usearch (embedded, in --store) or milvus (a Milvus server; --store keeps a
    /// pointer). Default: hnsw, the project's engine; usearch when --quantization asks for
    /// bf16 or f16, which only usearch keeps.
    #[arg(long, value_enum)]
    backend: Option<BackendArg>,
    /// HNSW graph degree (0: the backend's default, 16).
    #[arg(long, default_value_t = 0)]
    connectivity: usize,
    /// HNSW candidate list while inserting (0: the backend's default, 128).
    #[arg(long, default_value_t = 0)]
    expansion_add: usize,
    /// HNSW candidate list while searching (usearch; 0: default, 64).
    #[arg(long, default_value_t = 0)]
    expansion_search: usize,
    /// Fold the write-ahead log into a snapshot once it passes this many bytes (usearch; 0:
    /// the default, 256 MiB).
    #[arg(long, default_value_t = 0)]
    checkpoint_bytes: u64,
    /// Precision of the vectors inside the index: f32, or bf16/f16 (usearch only; half the
    /// memory each distance reads; the log keeps float32).
    #[arg(long, default_value = "f32", value_parser = parse_quantization)]
    quantization: Quantization,
    /// Milvus server address.
    #[arg(long, default_value = "http://127.0.0.1:19530")]
    milvus_uri: String,
    /// Milvus collection for the items (the manifest goes to <name>_manifest).
    #[arg(long, default_value = "bcl_gallery")]
    milvus_collection: String,
    /// Milvus token (user:password or API key).
    #[arg(long)]
    milvus_token: Option<String>,
}

/// Gallery backends on the command line.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum BackendArg {
    /// The project's own HNSW engine (float32) with a write-ahead log, in the gallery
    /// directory (the default).
    Hnsw,
    /// usearch HNSW (float32, bf16 or f16) with the same log, in the gallery directory.
    Usearch,
    /// A Milvus collection (a `bcl` built with the `milvus` feature).
    Milvus,
}

impl BackendArgs {
    fn config(&self) -> Result<BackendConfig> {
        let embedded = |name| {
            gal::embedded_backend(
                name,
                UsearchConfig {
                    connectivity: self.connectivity,
                    expansion_add: self.expansion_add,
                    expansion_search: self.expansion_search,
                    checkpoint_bytes: self.checkpoint_bytes,
                    quantization: self.quantization,
                },
            )
        };
        Ok(match self.backend {
            None => embedded(None)?,
            Some(BackendArg::Hnsw) => embedded(Some("hnsw"))?,
            Some(BackendArg::Usearch) => embedded(Some("usearch"))?,
            Some(BackendArg::Milvus) => {
                let d = MilvusConfig::default();
                BackendConfig::Milvus(MilvusConfig {
                    uri: self.milvus_uri.clone(),
                    collection: self.milvus_collection.clone(),
                    token: self.milvus_token.clone(),
                    hnsw_m: if self.connectivity > 0 {
                        self.connectivity
                    } else {
                        d.hnsw_m
                    },
                    ef_construction: if self.expansion_add > 0 {
                        self.expansion_add
                    } else {
                        d.ef_construction
                    },
                    ..d
                })
            }
        })
    }
}

/// `bcl gallery build`.
#[derive(Args)]
pub struct BuildArgs {
    /// Gallery directory (must not hold a gallery yet).
    #[arg(long)]
    store: PathBuf,
    /// Model directory that embeds the gallery.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    embed: EmbedArgs,
    #[command(flatten)]
    backend: BackendArgs,
}

/// `bcl gallery add`.
#[derive(Args)]
pub struct AddArgs {
    /// Gallery directory.
    #[arg(long)]
    store: PathBuf,
    /// Model directory that embeds the images.
    #[arg(long, conflicts_with = "vectors")]
    model: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    /// Precomputed vectors, float32 .npy of shape [n, dim] (needs --name).
    #[arg(long, requires = "name")]
    vectors: Option<PathBuf>,
    /// The name of the model that computed --vectors (its identity in the lineage check).
    #[arg(long)]
    name: Option<String>,
    /// Id of the first vector (default: one past the largest id in the gallery).
    #[arg(long)]
    first_id: Option<u64>,
    /// Create the gallery (dimension of --vectors) if the directory holds none.
    #[arg(long)]
    create: bool,
    #[command(flatten)]
    backend: BackendArgs,
    /// Add even if the model fails the lineage check.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    embed: EmbedArgs,
}

/// `bcl gallery search`.
#[derive(Args)]
pub struct SearchArgs {
    /// Gallery directory.
    #[arg(long)]
    store: PathBuf,
    /// Query model directory: embeds the data set's images, or vouches for --vectors.
    #[arg(long)]
    model: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    /// Query vectors, float32 .npy [n, dim].
    #[arg(long)]
    vectors: Option<PathBuf>,
    /// The name of the model that computed --vectors (when not a `bcl` model).
    #[arg(long, conflicts_with = "model")]
    name: Option<String>,
    /// Results per query.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Exact search instead of the approximate index.
    #[arg(long)]
    exact: bool,
    /// Search even if the query model fails the lineage check.
    #[arg(long)]
    force: bool,
    /// Only the first N queries.
    #[arg(long)]
    limit: Option<usize>,
    /// Map the query model's embeddings into the gallery's space with this adapter (`bcl adapt
    /// fit` between the query model and the gallery's model): needs --model; the lineage
    /// check then asks that the adapter was fitted for this pair.
    #[arg(long, requires = "model", conflicts_with_all = ["vectors", "name"])]
    adapter: Option<PathBuf>,
    /// The gallery's model, to embed the queries a second time for an adapter that reads
    /// both embeddings (slerp).
    #[arg(long, requires = "adapter")]
    old_model: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
}

/// `bcl gallery backfill`.
#[derive(Args)]
pub struct BackfillArgs {
    /// Gallery directory (built from a data set with `bcl gallery build`).
    #[arg(long)]
    store: PathBuf,
    /// The new model.
    #[arg(long)]
    model: PathBuf,
    /// Share of the gallery the new model should have embedded when this call ends (0 to 1).
    #[arg(long)]
    fraction: f64,
    /// Order of re-embedding: random (seeded) or id-order.
    #[arg(long, value_enum, default_value = "random")]
    strategy: StrategyArg,
    /// Seed of the random order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Backfill even if the model fails the lineage check.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    embed: EmbedArgs,
}

/// Backfill orders on the command line.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum StrategyArg {
    /// Seeded random order.
    Random,
    /// Ascending item id.
    IdOrder,
}

impl From<StrategyArg> for BackfillStrategy {
    fn from(s: StrategyArg) -> Self {
        match s {
            StrategyArg::Random => BackfillStrategy::Random,
            StrategyArg::IdOrder => BackfillStrategy::IdOrder,
        }
    }
}

/// `bcl gallery status`.
#[derive(Args)]
pub struct StatusArgs {
    /// Gallery directory.
    #[arg(long)]
    store: PathBuf,
    /// Also measure recall@k of approximate against exact search with N gallery vectors
    /// (taken from the store) as queries.
    #[arg(long)]
    recall_queries: Option<usize>,
    /// k of that recall.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Candidate list size of approximate search for that probe (HNSW ef; default: the
    /// store's).
    #[arg(long)]
    expansion_search: Option<usize>,
}

/// `bcl serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Gallery directory.
    #[arg(long)]
    store: PathBuf,
    /// Query model: lets clients send images, and is checked against the gallery's lineage.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Address to listen on. Beyond loopback a token is required (or
    /// --allow-unauthenticated).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// File holding the bearer token every request must send (`Authorization: Bearer
    /// <token>`; at least 16 characters). Without it, the token is read from $BCL_SERVE_TOKEN
    /// when that is set.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Serve beyond loopback without a token (something in front of the server guards it).
    #[arg(long)]
    allow_unauthenticated: bool,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = ServeConfig::default().max_body_bytes)]
    max_body_bytes: usize,
    /// Largest k a request may ask for.
    #[arg(long, default_value_t = ServeConfig::default().max_k)]
    max_k: usize,
    /// Largest number of query vectors per request.
    #[arg(long, default_value_t = ServeConfig::default().max_queries)]
    max_queries: usize,
    /// Exact search by default (requests may still say "exact").
    #[arg(long)]
    exact: bool,
    /// Seconds a client has to send a request's head before its connection is closed.
    #[arg(long, default_value_t = ServeConfig::default().header_timeout_s)]
    header_timeout: f64,
    /// Seconds a whole request may take, body upload included (then 408).
    #[arg(long, default_value_t = ServeConfig::default().request_timeout_s)]
    request_timeout: f64,
    /// Connections served at once (more wait in the listen queue).
    #[arg(long, default_value_t = ServeConfig::default().max_connections)]
    max_connections: usize,
    /// Seconds in-flight requests (and a live backfill's commit) get after Ctrl-C/SIGTERM.
    #[arg(long, default_value_t = ServeConfig::default().shutdown_grace_s)]
    shutdown_grace: f64,
    /// Serve even if the query model fails the lineage check (/stats says so).
    #[arg(long)]
    force: bool,
    /// No status page at / (an API-only deployment: /search, /health and /stats only).
    #[arg(long)]
    no_page: bool,
    /// Map the query model's embeddings (images, and JSON vectors) into the gallery's space
    /// with this adapter (`bcl adapt fit` between --model and the gallery's model).
    #[arg(long, requires = "model", conflicts_with = "backfill_fraction")]
    adapter: Option<PathBuf>,
    /// The gallery's model, which a slerp adapter needs to embed each image query again.
    #[arg(long, requires = "adapter")]
    old_model: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Candidate list size of approximate search (HNSW ef; default: the store's).
    #[arg(long)]
    expansion_search: Option<usize>,
    /// Re-embed the gallery with --model while serving, until this share is the new model's
    /// (the gallery must have been built from a data set; resumable).
    #[arg(long, requires = "model")]
    backfill_fraction: Option<f64>,
    /// Order of that backfill: random (seeded) or id-order.
    #[arg(long, value_enum, default_value = "random")]
    backfill_strategy: StrategyArg,
    /// Seed of the random backfill order.
    #[arg(long, default_value_t = 0)]
    backfill_seed: u64,
    /// Items per backfill commit (the write lock is held for one commit only).
    #[arg(long, default_value_t = 1024)]
    backfill_commit: usize,
    /// Worker threads of the HTTP runtime (default: the number of cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn load_model(p: &Path, device: &str) -> Result<Embedder> {
    let device = parse_device(device)?;
    Embedder::load(p, device).with_context(|| format!("{}: cannot load the model", p.display()))
}

/// The model in `p` on the embedding flags' device, run with their execution settings.
fn load_embedder(p: &Path, embed: &EmbedArgs) -> Result<Embedder> {
    let device = parse_device(&embed.device)?;
    embed
        .exec
        .load(p, device)
        .with_context(|| format!("{}: cannot load the model", p.display()))
}

/// The data configuration of the run that trained the model in `model_dir` (its
/// `config.toml`); a model without one needs `--config`.
pub fn run_data_config(model_dir: &Path) -> Result<DataConfig> {
    let path = ModelDir::new(model_dir).config();
    if !path.is_file() {
        bail!(
            "{}: no run configuration beside the model, so its data are unknown; give --config \
             with a [data] section",
            path.display()
        );
    }
    Ok(RunConfig::from_toml_file(&path)?.data)
}

/// The data configuration: --config's, else the model's training run's, with flag overrides.
pub(crate) fn data_config(a: &DataArgs, model_dir: Option<&Path>) -> Result<DataConfig> {
    let mut cfg = match (&a.config, model_dir) {
        (Some(p), _) => RunConfig::from_toml_file(p)?.data,
        (None, Some(m)) => run_data_config(m)?,
        (None, None) => DataConfig::default(),
    };
    if let Some(d) = &a.data {
        cfg.dir = d.clone();
    }
    Ok(cfg)
}

pub(crate) fn load_split(a: &DataArgs, cfg: &DataConfig) -> Result<Dataset> {
    let d = bcl::data::open_part(cfg, a.split)?;
    Ok(match a.per_class {
        Some(n) => d.take_per_class(n),
        None => d,
    })
}

fn embed_options(e: &EmbedArgs, force: bool) -> Result<EmbedOptions> {
    if e.batch == 0 || e.commit == 0 {
        bail!("--batch and --commit must be at least 1");
    }
    Ok(EmbedOptions {
        batch: e.batch,
        commit: e.commit,
        progress: std::io::stderr().is_terminal(),
        force,
    })
}

fn committer(print: bool) -> impl FnMut(usize, usize) {
    move |done, total| {
        if print {
            println!("committed {done}/{total}");
        }
    }
}

fn model_dir(p: &Path) -> PathBuf {
    ModelDir::of(p).path().to_path_buf()
}

fn print_lineage(l: &Lineage) {
    if let Lineage::Forced(t) = l {
        eprintln!("warning: --force: lineage check overridden: {t}");
    }
}

fn read_vectors(p: &Path) -> Result<(Vec<f32>, usize)> {
    let t = bcl::npy::read_features(p)?;
    let dim = t.size()[1] as usize;
    let v = Vec::<f32>::try_from(t.to_kind(tch::Kind::Float).contiguous().view([-1]))
        .with_context(|| format!("{}: cannot read as float32", p.display()))?;
    Ok((v, dim))
}

/// Runs a gallery command.
pub fn run_gallery(cmd: GalleryCommand) -> Result<()> {
    match cmd {
        GalleryCommand::Build(a) => gallery_build(a),
        GalleryCommand::Add(a) => gallery_add(a),
        GalleryCommand::Search(a) => gallery_search(a),
        GalleryCommand::Backfill(a) => gallery_backfill(a),
        GalleryCommand::Status(a) => gallery_status(a),
        GalleryCommand::Link(a) => gallery_link(a),
        GalleryCommand::Upgrade(a) => gallery_upgrade(a),
        GalleryCommand::Recover(a) => gallery_recover(a),
    }
}

/// `bcl gallery build` (under a launcher: rank 0 writes the gallery, every rank embeds its
/// share of each commit).
fn gallery_build(a: BuildArgs) -> Result<()> {
    let (world, device) = crate::dist::world(&a.embed.device, parse_device(&a.embed.device)?)?;
    let emb = a
        .embed
        .exec
        .load(&a.model, device)
        .with_context(|| format!("{}: cannot load the model", a.model.display()))?;
    let dcfg = data_config(&a.data, Some(&model_dir(&a.model)))?;
    let data = load_split(&a.data, &dcfg)?;
    let opts = embed_options(&a.embed, false)?;
    if !world.is_primary() {
        ops::follow_build(&emb, &data, &opts, &*world)?;
        return Ok(());
    }
    let origin = ops::DataOrigin {
        data: dcfg.clone(),
        split: a.data.split,
        per_class: a.data.per_class,
    };
    let mut on_commit = committer(a.embed.print_commits);
    let created = gal::create(
        &a.store,
        GalleryManifest::new(emb.card.arch.dim as usize),
        &a.backend.config()?,
    );
    let r = match created {
        Ok(mut s) => ops::build_on(
            Ok(s.as_mut()),
            &emb,
            &data,
            &origin,
            &opts,
            &mut on_commit,
            &*world,
        )?,
        Err(e) => ops::build_on(Err(e), &emb, &data, &origin, &opts, &mut on_commit, &*world)?,
    };
    println!(
        "built {}: {} items embedded by {} ({})",
        a.store.display(),
        r.items,
        r.model.name,
        r.model.id
    );
    Ok(())
}

/// `bcl gallery add`.
fn gallery_add(a: AddArgs) -> Result<()> {
    let opts = embed_options(&a.embed, a.force)?;
    let mut on_commit = committer(a.embed.print_commits);
    if let Some(vp) = &a.vectors {
        let (v, dim) = read_vectors(vp)?;
        let name = a.name.as_deref().unwrap_or_default();
        let info = ModelInfo::external(name, dim);
        let mut store: Box<dyn GalleryStore> =
            if a.create && !a.store.join(gal::GALLERY_FILE).exists() {
                gal::create(&a.store, GalleryManifest::new(dim), &a.backend.config()?)?
            } else {
                gal::open(&a.store)?
            };
        let (l, ids) =
            ops::add_vectors(store.as_mut(), &info, a.first_id, &v, &opts, &mut on_commit)?;
        print_lineage(&l);
        println!(
            "added {} vectors of {name} (ids {}..{}) to {}",
            ids.end - ids.start,
            ids.start,
            ids.end,
            a.store.display()
        );
    } else {
        let Some(mp) = &a.model else {
            bail!("give --model (embed a data set's images) or --vectors with --name");
        };
        let emb = load_embedder(mp, &a.embed)?;
        let dcfg = data_config(&a.data, Some(&model_dir(mp)))?;
        let data = load_split(&a.data, &dcfg)?;
        let mut store = gal::open(&a.store)?;
        let all: Vec<usize> = (0..data.len()).collect();
        let l = ops::embed_into(store.as_mut(), &emb, &data, &all, &opts, &mut on_commit)?;
        print_lineage(&l);
        store.checkpoint()?;
        println!(
            "added {} items embedded by {} to {}",
            data.len(),
            emb.card.name,
            a.store.display()
        );
    }
    Ok(())
}

/// `bcl gallery search`.
fn gallery_search(a: SearchArgs) -> Result<()> {
    let store = gal::open(&a.store)?;
    let emb = match &a.model {
        Some(m) => Some(load_model(m, &a.device)?),
        None => None,
    };
    if let (Some(path), Some(e)) = (&a.adapter, &emb) {
        return gallery_search_adapted(&a, store.as_ref(), e, path);
    }
    let (mut queries, ids): (Vec<f32>, Vec<u64>) = match (&a.vectors, &emb) {
        (Some(vp), _) => {
            let (v, dim) = read_vectors(vp)?;
            let n = v.len() / dim;
            (v, (0..n as u64).collect())
        }
        (None, Some(e)) => {
            let data = query_images(&a, e)?;
            (
                ops::embed_queries(e, &data, 256, store.manifest().dim)?,
                data.ids.iter().map(|&i| i as u64).collect(),
            )
        }
        (None, None) => bail!("give --model (query images) or --vectors"),
    };
    let dim = store.manifest().dim;
    if let Some(l) = a.limit {
        queries.truncate(l.min(ids.len()) * dim);
    }
    let info = match (&emb, &a.name) {
        (Some(e), _) => Some(ModelInfo::from_card(&e.card)),
        (None, Some(n)) => Some(ModelInfo::external(n, dim)),
        (None, None) if a.force => None,
        (None, None) => bail!(
            "say which model computed --vectors (--model DIR or --name NAME) so the \
                 lineage can be checked, or pass --force"
        ),
    };
    let (lineage, hits) = ops::search(
        store.as_ref(),
        info.as_ref(),
        &queries,
        a.k,
        a.exact,
        a.force,
    )?;
    if let Some(l) = &lineage {
        print_lineage(l);
    }
    for (q, h) in ids.iter().zip(&hits) {
        println!("{}", serde_json::json!({ "query": q, "hits": h }));
    }
    Ok(())
}

/// The query images of `bcl gallery search --model`: the data part the flags name (by default
/// the model's run's), its first `--limit` items.
fn query_images(a: &SearchArgs, emb: &Embedder) -> Result<Dataset> {
    let dcfg = data_config(&a.data, Some(&emb.dir))?;
    let data = load_split(&a.data, &dcfg)?;
    Ok(match a.limit {
        Some(l) => data.subset(&(0..l.min(data.len())).collect::<Vec<_>>()),
        None => data,
    })
}

/// `bcl gallery search --adapter`: the query model embeds the images in its own space (and
/// the gallery's model a second time for slerp), the adapter maps them into the gallery's space,
/// the lineage check asks that the adapter joins this pair.
fn gallery_search_adapted(
    a: &SearchArgs,
    store: &dyn bcl::gallery::GalleryStore,
    emb: &Embedder,
    path: &Path,
) -> Result<()> {
    let adapter = bcl::adapt::Adapter::load(path)?;
    let data = query_images(a, emb)?;
    let old = a
        .old_model
        .as_deref()
        .map(|o| load_model(o, &a.device))
        .transpose()?;
    let mapped = gal::lineage::adapted_queries(
        &adapter,
        emb,
        old.as_ref(),
        &data,
        256,
        "give the gallery's model with --old-model",
    )
    .with_context(|| path.display().to_string())?;
    let queries = Vec::<f32>::try_from(mapped.contiguous().view([-1]))
        .context("adapted queries to host memory")?;
    let info = ModelInfo::from_card(&emb.card);
    let link = bcl::gallery::AdapterLink::from_card(&adapter.card);
    let (lineage, hits) =
        ops::search_adapted(store, &info, &link, &queries, a.k, a.exact, a.force)?;
    print_lineage(&lineage);
    for (q, h) in data.ids.iter().zip(&hits) {
        println!("{}", serde_json::json!({ "query": q, "hits": h }));
    }
    Ok(())
}

/// `bcl gallery backfill`.
fn gallery_backfill(a: BackfillArgs) -> Result<()> {
    let emb = load_embedder(&a.model, &a.embed)?;
    let mut store = gal::open(&a.store)?;
    let Some(src) = store.manifest().source.clone() else {
        bail!(
            "{}: this gallery was filled with vectors, not from a data set: there are no \
                 images to re-embed",
            a.store.display()
        );
    };
    let data = ops::load_source(&src)?;
    let strategy = a.strategy.into();
    let r = ops::backfill(
        store.as_mut(),
        &emb,
        &data,
        ops::BackfillPlan {
            fraction: a.fraction,
            strategy,
            seed: a.seed,
        },
        &embed_options(&a.embed, a.force)?,
        &mut committer(a.embed.print_commits),
    )?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

/// `bcl gallery status`.
fn gallery_status(a: StatusArgs) -> Result<()> {
    let mut store = gal::open(&a.store)?;
    if let Some(e) = a.expansion_search {
        store.set_search_expansion(e)?;
    }
    let mut s = serde_json::to_value(ops::status(store.as_ref())?)?;
    if let Some(n) = a.recall_queries {
        let q = ops::probe_queries(store.as_ref(), n, 0.5, 0)?;
        let r = ops::ann_recall(store.as_ref(), &q, a.k)?;
        s["ann_recall"] = serde_json::json!({
            "k": a.k,
            "queries": n,
            "recall": r,
            "expansion_search": a.expansion_search,
        });
    }
    println!("{}", serde_json::to_string_pretty(&s)?);
    Ok(())
}

/// `bcl gallery link`: records the adapter (checked against the lineage), then measures the
/// model's cross-test on the gallery's own items where --model is given.
fn gallery_link(a: LinkArgs) -> Result<()> {
    let mut store = gal::open(&a.store)?;
    let adapter = a
        .adapter
        .as_deref()
        .map(|p| bcl::adapt::Adapter::load(p).with_context(|| format!("--adapter {}", p.display())))
        .transpose()?;
    let mut out = serde_json::Map::new();
    if let Some(ad) = &adapter {
        let (lineage, edge) = gal::lineage::link(store.as_mut(), ad, a.force)?;
        print_lineage(&lineage);
        out.insert("edge".into(), serde_json::to_value(edge)?);
    }
    if let Some(m) = &a.model {
        let emb = load_model(m, &a.device)?;
        let old = a
            .old_model
            .as_deref()
            .map(|o| load_model(o, &a.device))
            .transpose()?;
        if let Some(ad) = &adapter {
            gal::lineage::check_companion(
                ad,
                old.as_ref().map(|o| &o.card),
                "give the gallery's model with --old-model",
            )?;
        }
        let Some(src) = store.manifest().source.clone() else {
            bail!(
                "{}: this gallery was filled with vectors, not from a data set: there are no \
                 images to measure a cross-test on",
                a.store.display()
            );
        };
        let data = ops::load_source(&src)?;
        let (lineage, t) = gal::lineage::measure(
            store.as_mut(),
            &emb,
            adapter.as_ref().map(|ad| (ad, old.as_ref())),
            &data,
            a.batch,
            a.force,
        )
        .with_context(|| match &a.old_model {
            Some(o) => format!("--model {} --old-model {}", m.display(), o.display()),
            None => format!("--model {}", m.display()),
        })?;
        print_lineage(&lineage);
        out.insert("measured".into(), serde_json::to_value(t)?);
    }
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}

/// `bcl gallery upgrade`.
fn gallery_upgrade(a: UpgradeArgs) -> Result<()> {
    if a.commit == 0 {
        bail!("--commit must be at least 1");
    }
    let adapter = bcl::adapt::Adapter::load(&a.adapter)?;
    let mut store = gal::open(&a.store)?;
    let r = gal::lineage::forward_upgrade(
        store.as_mut(),
        &adapter,
        a.commit,
        &mut committer(a.print_commits),
    )
    .with_context(|| format!("{}: upgrading {}", a.adapter.display(), a.store.display()))?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

/// `bcl gallery recover`.
fn gallery_recover(a: RecoverArgs) -> Result<()> {
    let (store, r) = gal::usearch_store::UsearchStore::recover(&a.store)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "items": store.len(),
            "intact_records": r.records,
            "damaged_bytes": r.damaged,
            "lost_sequences": r.lost_sequences,
            "saved_log": r.saved_log,
        }))?
    );
    if !r.lost_sequences.is_empty() {
        eprintln!(
            "warning: {} acknowledged write(s) were in the damaged part of the log and \
                 are lost; the damaged log is kept at {}",
            r.lost_sequences.len(),
            r.saved_log
                .as_deref()
                .map_or_else(|| "?".into(), |p| p.display().to_string())
        );
    }
    Ok(())
}

/// The serve token: from `file` when given, else from $BCL_SERVE_TOKEN when set.
fn serve_token(file: Option<&Path>) -> Result<Option<serve::auth::Token>> {
    let text = match file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("{}: cannot read the token file", f.display()))?,
        None => match std::env::var(serve::auth::TOKEN_ENV) {
            Ok(t) => t,
            Err(std::env::VarError::NotPresent) => return Ok(None),
            Err(e) => bail!("${}: {e}", serve::auth::TOKEN_ENV),
        },
    };
    let from = file.map_or_else(
        || format!("${}", serve::auth::TOKEN_ENV),
        |f| f.display().to_string(),
    );
    Ok(Some(
        serve::auth::Token::new(&text).with_context(|| format!("{from}: not a usable token"))?,
    ))
}

/// Runs `bcl serve` until Ctrl-C or SIGTERM.
pub fn run_serve(a: ServeArgs) -> Result<()> {
    let token = serve_token(a.token_file.as_deref())?;
    // refused before anything opens or starts (a live backfill included), on every address
    // the name resolves to
    let addrs = std::net::ToSocketAddrs::to_socket_addrs(a.addr.as_str())
        .with_context(|| format!("--addr {}: not an address to listen on", a.addr))?;
    for at in addrs {
        serve::auth::check_exposure(at, token.as_ref(), a.allow_unauthenticated)?;
    }
    let mut store = gal::open(&a.store)?;
    if let Some(e) = a.expansion_search {
        store.set_search_expansion(e)?;
    }
    let emb = match &a.model {
        Some(m) => Some(load_model(m, &a.device)?),
        None => None,
    };
    let cfg = ServeConfig {
        max_body_bytes: a.max_body_bytes,
        max_k: a.max_k,
        default_k: ServeConfig::default().default_k.min(a.max_k),
        max_queries: a.max_queries,
        exact: a.exact,
        header_timeout_s: a.header_timeout,
        request_timeout_s: a.request_timeout,
        max_connections: a.max_connections,
        shutdown_grace_s: a.shutdown_grace,
        page: !a.no_page,
    };
    let limits = cfg.conn_limits();
    let source = store.manifest().source.clone();
    let state = match (&a.adapter, emb) {
        (Some(p), Some(e)) => {
            let adapter = bcl::adapt::Adapter::load(p)?;
            let old = a
                .old_model
                .as_deref()
                .map(|o| load_model(o, &a.device))
                .transpose()?;
            ServeState::with_adapter(store, e, adapter, old, cfg, a.force)?
        }
        (_, emb) => ServeState::new(store, emb, cfg, a.force)?,
    };
    let state = Arc::new(match token {
        Some(t) => state.require_token(t),
        None => state,
    });
    // the address is taken before the backfill starts: a port in use stops the command before
    // it changes the gallery
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(t) = a.threads {
        rt.worker_threads(t.max(1));
    }
    let rt = rt.enable_all().build()?;
    let listener = rt.block_on(async {
        tokio::net::TcpListener::bind(&a.addr)
            .await
            .with_context(|| format!("cannot listen on {}", a.addr))
    })?;
    let backfill = match a.backfill_fraction {
        Some(fraction) => {
            let Some(src) = source else {
                bail!(
                    "{}: this gallery was filled with vectors, not from a data set: there are no \
                     images to re-embed",
                    a.store.display()
                );
            };
            let model = a.model.as_deref().unwrap_or(Path::new("."));
            let job = serve::LiveBackfill {
                embedder: load_model(model, &a.device)?,
                data: ops::load_source(&src)?,
                plan: ops::BackfillPlan {
                    fraction,
                    strategy: a.backfill_strategy.into(),
                    seed: a.backfill_seed,
                },
                commit: a.backfill_commit,
                batch: 256,
                force: a.force,
            };
            Some(state.start_backfill(job)?)
        }
        None => None,
    };
    rt.block_on(async {
        let at = listener.local_addr()?;
        eprintln!(
            "serving {} on http://{at} (POST /search, GET /health, GET /stats; {}); Ctrl-C stops",
            a.store.display(),
            if state.has_token() {
                "every request needs the bearer token"
            } else {
                "no token"
            }
        );
        if !a.no_page {
            eprintln!(
                "status page: http://{at}/{}",
                if state.has_token() {
                    " (a browser signs in once at /?token=<the token>)"
                } else {
                    ""
                }
            );
        }
        // On the signal the backfill stops too (at its next commit), not after the last
        // connection closes.
        let st = state.clone();
        serve::serve(listener, serve::router(state.clone()), limits, async move {
            serve::shutdown_signal().await;
            eprintln!("stopping: no new connections; in-flight requests and the backfill finish");
            st.stop_background();
        })
        .await?;
        anyhow::Ok(())
    })?;
    if let Some(h) = backfill {
        state.stop_background();
        match h.join() {
            Ok(Ok(r)) => eprintln!("backfill: {}", serde_json::to_string(&r)?),
            Ok(Err(e)) => eprintln!("backfill stopped: {e}"),
            Err(_) => eprintln!("backfill thread panicked"),
        }
    }
    eprintln!("stopped");
    Ok(())
}
