//! The standard retrieval benchmarks as evaluations of a set of models: Revisited Oxford/Paris
//! (queries cropped to their boxes, Easy/Medium/Hard mAP and mP@k), GLDv2 retrieval (mAP@100
//! over the index), In-shop (query → gallery Recall@K) and Stanford Online Products
//! (leave-one-out Recall@K). Every model embeds the queries and the gallery once (images
//! decoded in parallel batches from their files, never all in memory); every (query model,
//! gallery model) pair is scored, so the result is a compatibility matrix per benchmark.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::retrieval_metrics;
use super::revisited::{revisited_metrics, RevisitedGnd, SetupMetrics};
use super::search::{map_at_k_lists, topk_search, SearchBlocks};
use super::EvalError;
use crate::data::images::{load_image, ImagePrep};
use crate::data::lists::{self, ImageList};
use crate::data::Dataset;
use crate::model::Embedder;
use crate::table::{Column, Table};

/// Which benchmark and where its files are.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum BenchmarkKind {
    /// Revisited Oxford or Paris: `gnd` is `gnd_roxford5k.pkl` / `gnd_rparis6k.pkl`, `images`
    /// the directory of `<name>.jpg` files.
    Revisited {
        /// The ground-truth pickle.
        gnd: PathBuf,
        /// The image directory.
        images: PathBuf,
        /// k of mP@k.
        #[serde(default = "default_kappas")]
        kappas: Vec<usize>,
    },
    /// GLDv2 retrieval: `dir` holds `index.csv`, `retrieval_solution_v2.1.csv` and the
    /// `index/` and `test/` image trees.
    Gldv2 {
        /// The data set's root.
        dir: PathBuf,
        /// Only the queries of this Usage (`Public`, `Private`), or all.
        #[serde(default)]
        usage: Option<String>,
    },
    /// In-shop Clothes Retrieval: `dir` holds `list_eval_partition.txt` (paths relative to it).
    Inshop {
        /// The data set's root.
        dir: PathBuf,
        /// K of Recall@K.
        #[serde(default = "inshop_ks")]
        ks: Vec<usize>,
    },
    /// Stanford Online Products: `dir` holds `Ebay_test.txt` (paths relative to it).
    Sop {
        /// The data set's root.
        dir: PathBuf,
        /// K of Recall@K.
        #[serde(default = "sop_ks")]
        ks: Vec<usize>,
    },
}

fn default_kappas() -> Vec<usize> {
    vec![1, 5, 10]
}
fn inshop_ks() -> Vec<usize> {
    vec![1, 10, 20, 30, 40, 50]
}
fn sop_ks() -> Vec<usize> {
    vec![1, 10, 100, 1000]
}
fn default_batch() -> usize {
    64
}

/// One benchmark to evaluate on (an `[[benchmark]]` entry of a configuration). Unknown keys
/// are rejected by the flattened kind (serde cannot deny them on a struct with a flattened
/// field).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BenchmarkConfig {
    /// A name for the reports (e.g. "roxford5k").
    pub name: String,
    /// The benchmark and its files.
    #[serde(flatten)]
    pub kind: BenchmarkKind,
    /// Resize (shorter side) and centre crop of every image. The official Revisited
    /// evaluation embeds whole images at up to 1024 px; a square crop is this implementation's
    /// simplification (the same transform the models were trained with).
    #[serde(default)]
    pub image: ImagePrep,
    /// Images per forward pass.
    #[serde(default = "default_batch")]
    pub batch: usize,
}

/// Mean AP and mP@k of one Revisited setup (Easy, Medium or Hard).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SetupFigures {
    /// Mean AP over the queries with a positive in this setup.
    pub map: f64,
    /// Mean precision at each k.
    pub mp_at: BTreeMap<usize, f64>,
}

impl From<&SetupMetrics> for SetupFigures {
    fn from(m: &SetupMetrics) -> Self {
        Self {
            map: m.map,
            mp_at: m.mp_at.clone(),
        }
    }
}

/// The figures of one pair, typed by the protocol that made them. Externally tagged in JSON
/// (`{"labelled": {...}}`): an internally tagged enum would buffer its content, and serde's
/// buffer cannot read the integer keys of `mp_at`/`recall_at` back from JSON strings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Figures {
    /// Revisited Oxford/Paris: each setup's mAP and mP@k.
    Revisited {
        /// Easy setup.
        easy: SetupFigures,
        /// Medium setup (the usual headline).
        medium: SetupFigures,
        /// Hard setup.
        hard: SetupFigures,
    },
    /// GLDv2 retrieval: mAP@100 over the index.
    Gldv2 {
        /// mAP@100.
        map_at_100: f64,
    },
    /// Class-labelled retrieval (In-shop, SOP): mAP and Recall@K.
    Labelled {
        /// mAP over the full ranking.
        map: f64,
        /// Recall@K for each configured K.
        recall_at: BTreeMap<usize, f64>,
    },
}

impl Figures {
    /// Every figure as (column name, value) in the report's order, e.g. `medium_map`,
    /// `medium_mp_at_5`, `map_at_100`, `recall_at_1`.
    pub fn columns(&self) -> Vec<(String, f64)> {
        let mut c = Vec::new();
        match self {
            Figures::Revisited { easy, medium, hard } => {
                for (name, s) in [("easy", easy), ("medium", medium), ("hard", hard)] {
                    c.push((format!("{name}_map"), s.map));
                    for (k, v) in &s.mp_at {
                        c.push((format!("{name}_mp_at_{k}"), *v));
                    }
                }
            }
            Figures::Gldv2 { map_at_100 } => c.push(("map_at_100".into(), *map_at_100)),
            Figures::Labelled { map, recall_at } => {
                c.push(("map".into(), *map));
                for (k, v) in recall_at {
                    c.push((format!("recall_at_{k}"), *v));
                }
            }
        }
        c
    }

    /// The figures a summary shows: Medium and Hard mAP (Revisited), mAP@100 (GLDv2), Recall
    /// at the smallest configured K (In-shop, SOP; mAP when no K is configured).
    pub fn headline(&self) -> Vec<(String, f64)> {
        match self {
            Figures::Revisited { medium, hard, .. } => vec![
                ("medium_map".into(), medium.map),
                ("hard_map".into(), hard.map),
            ],
            Figures::Gldv2 { map_at_100 } => vec![("map_at_100".into(), *map_at_100)],
            Figures::Labelled { recall_at, map } => match recall_at.iter().next() {
                Some((k, v)) => vec![(format!("recall_at_{k}"), *v)],
                None => vec![("map".into(), *map)],
            },
        }
    }

    /// One figure by its column name (see [`Figures::columns`]).
    pub fn get(&self, name: &str) -> Option<f64> {
        self.columns()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }
}

/// The figures of one (query model, gallery model) pair.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairResult {
    /// Query model name.
    pub query: String,
    /// Gallery model name.
    pub gallery: String,
    /// The protocol's figures.
    pub figures: Figures,
}

/// A benchmark's compatibility matrix.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchmarkReport {
    /// The benchmark's name.
    pub name: String,
    /// Queries and gallery items.
    pub queries: usize,
    /// Gallery items.
    pub gallery: usize,
    /// Every pair, query-major.
    pub pairs: Vec<PairResult>,
}

/// Images to embed: paths under a root, each with an optional crop box `[x1, y1, x2, y2]`.
#[derive(Debug, Clone)]
pub struct FileSet {
    /// Root directory.
    pub root: PathBuf,
    /// Paths relative to the root.
    pub paths: Vec<PathBuf>,
    /// Crop boxes (Revisited queries), one per path.
    pub boxes: Option<Vec<Option<Vec<f64>>>>,
}

/// Embeds `files` with `model`: batches decoded in parallel (rayon), cropped to their boxes
/// first, then resized and centre-cropped by `prep`; a file that cannot be read is an error
/// naming it. Returns `[N, d]` on the CPU.
pub fn embed_files(
    model: &Embedder,
    files: &FileSet,
    prep: &ImagePrep,
    batch: usize,
) -> Result<Tensor, EvalError> {
    let [c, _, _] = model.card.input_shape;
    if c != 3 {
        return Err(EvalError::Mismatch(format!(
            "model {} takes {c}-channel images; the benchmarks' images are RGB",
            model.card.name
        )));
    }
    let s = prep.crop as usize;
    if model.card.input_shape != [3, s, s] {
        return Err(EvalError::Mismatch(format!(
            "model {} expects input {:?}, the benchmark's image settings give [3, {s}, {s}]",
            model.card.name, model.card.input_shape
        )));
    }
    let idx: Vec<usize> = (0..files.paths.len()).collect();
    let mut out = Vec::new();
    for chunk in idx.chunks(batch.max(1)) {
        let parts: Result<Vec<Vec<u8>>, _> = chunk
            .par_iter()
            .map(|&i| {
                let bbx = files.boxes.as_ref().and_then(|b| b[i].as_deref());
                load_image(&files.root.join(&files.paths[i]), prep, bbx, None)
            })
            .collect();
        let tmp = Dataset {
            pixels: parts?.concat(),
            labels: vec![0; chunk.len()],
            ids: chunk.to_vec(),
            channels: 3,
            rows: s,
            cols: s,
            classes: 1,
        };
        let all: Vec<usize> = (0..chunk.len()).collect();
        let (x, _) = tmp.batch(&all, model.card.normalization, None, model.device());
        out.push(model.embed_batch(&x).to_device(Device::Cpu));
    }
    if out.is_empty() {
        return Err(EvalError::Mismatch("no image to embed".into()));
    }
    Ok(Tensor::cat(&out, 0))
}

/// A benchmark's scoring, read from its files: what makes a retrieved item relevant and
/// which figures to compute for one (query embeddings, gallery embeddings) pair.
pub enum Protocol {
    Revisited {
        gnd: RevisitedGnd,
        kappas: Vec<usize>,
    },
    Gldv2 {
        relevant: Vec<Vec<usize>>,
    },
    Labelled {
        query_labels: Vec<i64>,
        gallery_labels: Vec<i64>,
        leave_one_out: bool,
        ks: Vec<usize>,
    },
}

fn list_files(root: &Path, l: &ImageList) -> FileSet {
    FileSet {
        root: root.to_path_buf(),
        paths: l.items.iter().map(|i| i.path.clone()).collect(),
        boxes: None,
    }
}

/// The files a benchmark embeds and how its pairs are scored.
pub struct Opened {
    /// The query images.
    pub queries: FileSet,
    /// The gallery images (`None`: the queries themselves, leave-one-out).
    pub gallery: Option<FileSet>,
    /// The scoring.
    pub protocol: Protocol,
}

impl BenchmarkKind {
    /// Reads the benchmark's lists and ground truth (no image is decoded yet).
    pub fn open(&self) -> Result<Opened, EvalError> {
        let (queries, gallery, protocol) = self.read()?;
        Ok(Opened {
            queries,
            gallery,
            protocol,
        })
    }

    fn read(&self) -> Result<(FileSet, Option<FileSet>, Protocol), EvalError> {
        Ok(match self {
            BenchmarkKind::Revisited {
                gnd,
                images,
                kappas,
            } => {
                let g = RevisitedGnd::read(gnd)?;
                let jpg = |n: &String| PathBuf::from(format!("{n}.jpg"));
                let q = FileSet {
                    root: images.clone(),
                    paths: g.qimlist.iter().map(jpg).collect(),
                    boxes: Some(g.gnd.iter().map(|q| q.bbx.clone()).collect()),
                };
                let x = FileSet {
                    root: images.clone(),
                    paths: g.imlist.iter().map(jpg).collect(),
                    boxes: None,
                };
                (
                    q,
                    Some(x),
                    Protocol::Revisited {
                        gnd: g,
                        kappas: kappas.clone(),
                    },
                )
            }
            BenchmarkKind::Gldv2 { dir, usage } => {
                let index = lists::read_gldv2_index(&dir.join("index.csv"))?;
                let mut sol =
                    lists::read_gldv2_solution(&dir.join("retrieval_solution_v2.1.csv"), &index)?;
                if let Some(u) = usage {
                    sol.retain(|q| &q.usage == u);
                    if sol.is_empty() {
                        return Err(EvalError::Mismatch(format!(
                            "{}: no query with Usage {u}",
                            dir.join("retrieval_solution_v2.1.csv").display()
                        )));
                    }
                }
                let q = FileSet {
                    root: dir.clone(),
                    paths: sol
                        .iter()
                        .map(|s| lists::gldv2_path("test", &s.id))
                        .collect(),
                    boxes: None,
                };
                let x = FileSet {
                    root: dir.clone(),
                    paths: index
                        .iter()
                        .map(|id| lists::gldv2_path("index", id))
                        .collect(),
                    boxes: None,
                };
                let relevant = sol.into_iter().map(|s| s.relevant).collect();
                (q, Some(x), Protocol::Gldv2 { relevant })
            }
            BenchmarkKind::Inshop { dir, ks } => {
                let p = lists::read_inshop(&dir.join("list_eval_partition.txt"))?;
                (
                    list_files(dir, &p.query),
                    Some(list_files(dir, &p.gallery)),
                    Protocol::Labelled {
                        query_labels: p.query.labels(),
                        gallery_labels: p.gallery.labels(),
                        leave_one_out: false,
                        ks: ks.clone(),
                    },
                )
            }
            BenchmarkKind::Sop { dir, ks } => {
                let l = lists::read_sop(&dir.join("Ebay_test.txt"))?;
                let labels = l.labels();
                (
                    list_files(dir, &l),
                    None,
                    Protocol::Labelled {
                        query_labels: labels.clone(),
                        gallery_labels: labels,
                        leave_one_out: true,
                        ks: ks.clone(),
                    },
                )
            }
        })
    }
}

impl Protocol {
    /// Scores queries `q` `[Q, d]` against gallery `g` `[G, d]` (normalised embeddings).
    pub fn score(&self, q: &Tensor, g: &Tensor) -> Result<Figures, EvalError> {
        Ok(match self {
            Protocol::Revisited { gnd, kappas } => {
                let m = revisited_metrics(q, g, gnd, kappas)?;
                Figures::Revisited {
                    easy: (&m.easy).into(),
                    medium: (&m.medium).into(),
                    hard: (&m.hard).into(),
                }
            }
            Protocol::Gldv2 { relevant } => {
                let k = 100.min(g.size()[0].max(1) as usize);
                let t = topk_search(q, g, k, SearchBlocks::default())?;
                let idx = Vec::<Vec<i64>>::try_from(&t.indices)
                    .map_err(|e| EvalError::Mismatch(e.to_string()))?;
                let ranked: Vec<Vec<usize>> = idx
                    .into_iter()
                    .map(|r| r.into_iter().map(|i| i as usize).collect())
                    .collect();
                Figures::Gldv2 {
                    map_at_100: map_at_k_lists(&ranked, relevant, 100)?,
                }
            }
            Protocol::Labelled {
                query_labels,
                gallery_labels,
                leave_one_out,
                ks,
            } => {
                let m = retrieval_metrics(q, query_labels, g, gallery_labels, *leave_one_out, ks)?;
                Figures::Labelled {
                    map: m.map,
                    recall_at: m.recall_at,
                }
            }
        })
    }
}

/// Evaluates every (query model, gallery model) pair of `models` on a benchmark (a pair of
/// different dimensions that no projection head joins is left out).
pub fn evaluate_benchmark(
    cfg: &BenchmarkConfig,
    models: &[Embedder],
) -> Result<BenchmarkReport, EvalError> {
    cfg.image.validate().map_err(EvalError::Mismatch)?;
    if models.is_empty() {
        return Err(EvalError::Mismatch("no model to evaluate".into()));
    }
    let Opened {
        queries: qf,
        gallery: gf,
        protocol,
    } = cfg.kind.open()?;
    let mut qs = Vec::new();
    let mut gs = Vec::new();
    for m in models {
        tracing::info!(benchmark = %cfg.name, model = %m.card.name, "embedding");
        let q = embed_files(m, &qf, &cfg.image, cfg.batch)?;
        let g = match &gf {
            Some(g) => embed_files(m, g, &cfg.image, cfg.batch)?,
            None => q.shallow_clone(),
        };
        qs.push(q);
        gs.push(g);
    }
    let mut pairs = Vec::new();
    for (i, mq) in models.iter().enumerate() {
        for (j, mg) in models.iter().enumerate() {
            // the queries in the gallery model's space (through projection heads along the
            // lineage where dimensions change); a pair no map reaches is left out
            let Some(q) = super::models::in_space_of(models, &qs, i, j) else {
                continue;
            };
            pairs.push(PairResult {
                query: mq.card.name.clone(),
                gallery: mg.card.name.clone(),
                figures: protocol.score(&q, &gs[j])?,
            });
        }
    }
    Ok(BenchmarkReport {
        name: cfg.name.clone(),
        queries: qf.paths.len(),
        gallery: gf.as_ref().map_or(qf.paths.len(), |g| g.paths.len()),
        pairs,
    })
}

/// A Markdown table of a report: one row per pair, one column per figure.
pub fn report_markdown(r: &BenchmarkReport) -> String {
    let names: Vec<String> = r
        .pairs
        .first()
        .map(|p| p.figures.columns().into_iter().map(|(n, _)| n).collect())
        .unwrap_or_default();
    let mut t = Table::new(
        [Column::text("query model"), Column::text("gallery model")]
            .into_iter()
            .chain(names.iter().map(Column::number)),
    );
    for p in &r.pairs {
        let mut row = vec![p.query.clone(), p.gallery.clone()];
        row.extend(p.figures.columns().iter().map(|(_, v)| format!("{v:.4}")));
        t.push(row);
    }
    format!(
        "### {} ({} queries, {} gallery items)\n\n{}",
        r.name,
        r.queries,
        r.gallery,
        t.markdown()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_survive_a_json_round_trip() {
        let setup = SetupFigures {
            map: 0.5,
            mp_at: [(1, 1.0), (5, 0.4)].into(),
        };
        for f in [
            Figures::Revisited {
                easy: setup.clone(),
                medium: setup.clone(),
                hard: setup,
            },
            Figures::Gldv2 { map_at_100: 0.25 },
            Figures::Labelled {
                map: 0.3,
                recall_at: [(1, 0.6), (10, 0.9)].into(),
            },
        ] {
            let text = serde_json::to_string(&f).unwrap();
            assert_eq!(serde_json::from_str::<Figures>(&text).unwrap(), f, "{text}");
        }
    }

    #[test]
    fn columns_and_headline_name_the_figures() {
        let f = Figures::Labelled {
            map: 0.3,
            recall_at: [(10, 0.9), (1, 0.6)].into(),
        };
        assert_eq!(
            f.columns(),
            vec![
                ("map".to_string(), 0.3),
                ("recall_at_1".to_string(), 0.6),
                ("recall_at_10".to_string(), 0.9)
            ]
        );
        assert_eq!(f.headline(), vec![("recall_at_1".to_string(), 0.6)]);
        assert_eq!(f.get("recall_at_10"), Some(0.9));
        assert_eq!(f.get("medium_map"), None);
    }
}
