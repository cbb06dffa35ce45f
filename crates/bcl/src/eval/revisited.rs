//! The Revisited Oxford/Paris protocol (Radenović et al. 2018): ground truth from the published
//! `gnd_roxford5k.pkl` / `gnd_rparis6k.pkl` pickles, and Easy/Medium/Hard mAP and mP@k as the
//! official `compute_map` computes them: junk images are dropped from the ranking (the
//! positions of the positives move up), AP is the trapezoidal average of the precisions just
//! before and at each positive, and mP@k uses `min(k, rank of the last positive)`. Queries
//! without a positive in a setup are left out of that setup's averages.
//!
//! The pickle is read with the `serde-pickle` crate, under bounds a crafted file cannot pass: at
//! most [`MAX_GND_BYTES`] bytes, plain data nested at most
//! [`MAX_PICKLE_DEPTH`](super::pickle_bounds::MAX_PICKLE_DEPTH) deep, no keys besides the known ones (an unknown value would be
//! walked whole), and at most [`MAX_GND_VALUES`] list elements and string bytes once memo
//! references are expanded (a pickle may reference one large list or string many times). The
//! bounding boxes are kept for the image pipeline, which must crop each query to its box before
//! embedding (Revisited Oxford/Paris queries are defined by the box, not the whole image).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::Path;

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::EvalError;

/// Largest ground-truth file read (the published ones are under 1 MiB).
pub const MAX_GND_BYTES: u64 = 256 << 20;

/// Most list elements plus string bytes a ground-truth pickle may expand to.
pub const MAX_GND_VALUES: usize = 1 << 24;

thread_local! {
    /// What the pickle being read may still expand to (unbounded outside `RevisitedGnd::read`).
    static BUDGET: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// What one decoded value costs against [`BUDGET`].
trait Cost {
    fn cost(&self) -> usize;
}

impl Cost for String {
    fn cost(&self) -> usize {
        self.len() + 1
    }
}

impl Cost for usize {
    fn cost(&self) -> usize {
        1
    }
}

impl Cost for f64 {
    fn cost(&self) -> usize {
        1
    }
}

impl Cost for QueryGnd {
    fn cost(&self) -> usize {
        1
    }
}

/// A list whose elements are charged to [`BUDGET`] as they are decoded.
fn bounded<'de, D: Deserializer<'de>, T: Deserialize<'de> + Cost>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    struct V<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de> + Cost> Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(x) = seq.next_element::<T>()? {
                let left = BUDGET.get().checked_sub(x.cost()).ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "expands to more than {MAX_GND_VALUES} values (memo references repeated?)"
                    ))
                })?;
                BUDGET.set(left);
                out.push(x);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(V(PhantomData))
}

/// [`bounded`] for an optional list.
fn bounded_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<f64>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<Vec<f64>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list or None")
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            bounded(d).map(Some)
        }
    }
    d.deserialize_option(V)
}

/// Error text with control characters and other non-printing bytes escaped, so that raw bytes
/// quoted from a crafted file cannot drive the terminal that shows the error.
fn quoted(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let printable =
                !c.is_control() && c != '\u{feff}' && !('\u{202a}'..='\u{202e}').contains(&c);
            let v: Vec<char> = if printable {
                vec![c]
            } else {
                c.escape_unicode().collect()
            };
            v
        })
        .collect()
}

/// One query's ground truth: its box and the database indices by difficulty.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueryGnd {
    /// Query box `[x1, y1, x2, y2]` in pixels of the query image.
    #[serde(default, deserialize_with = "bounded_option")]
    pub bbx: Option<Vec<f64>>,
    /// Easy positives (database indices).
    #[serde(default, deserialize_with = "bounded")]
    pub easy: Vec<usize>,
    /// Hard positives.
    #[serde(default, deserialize_with = "bounded")]
    pub hard: Vec<usize>,
    /// Junk: neither positive nor negative; removed from the ranking.
    #[serde(default, deserialize_with = "bounded")]
    pub junk: Vec<usize>,
}

/// The content of a `gnd_*.pkl` file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RevisitedGnd {
    /// Database image names.
    #[serde(deserialize_with = "bounded")]
    pub imlist: Vec<String>,
    /// Query image names.
    #[serde(deserialize_with = "bounded")]
    pub qimlist: Vec<String>,
    /// Ground truth per query, in `qimlist` order.
    #[serde(deserialize_with = "bounded")]
    pub gnd: Vec<QueryGnd>,
}

fn gnd_err(path: &Path, reason: impl std::fmt::Display) -> EvalError {
    EvalError::Ground {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl RevisitedGnd {
    /// Reads and validates a ground-truth pickle (within the bounds of the module comment).
    pub fn read(path: &Path) -> Result<Self, EvalError> {
        use std::io::Read;
        let f =
            std::fs::File::open(path).map_err(|e| gnd_err(path, format!("cannot read: {e}")))?;
        let mut bytes = Vec::new();
        f.take(MAX_GND_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| gnd_err(path, format!("cannot read: {e}")))?;
        if bytes.len() as u64 > MAX_GND_BYTES {
            return Err(gnd_err(
                path,
                format!("larger than {MAX_GND_BYTES} bytes: not a Revisited ground-truth pickle"),
            ));
        }
        /// Puts the budget back when the read ends, however it ends.
        struct Reset;
        impl Drop for Reset {
            fn drop(&mut self) {
                BUDGET.set(usize::MAX);
            }
        }
        super::pickle_bounds::check_pickle(&bytes).map_err(|e| {
            gnd_err(
                path,
                format!("not a Revisited ground-truth pickle: {}", quoted(&e)),
            )
        })?;
        BUDGET.set(MAX_GND_VALUES);
        let _reset = Reset;
        let g: Self =
            serde_pickle::from_slice(&bytes, serde_pickle::DeOptions::new()).map_err(|e| {
                gnd_err(
                    path,
                    format!(
                        "not a Revisited ground-truth pickle (imlist, qimlist, gnd): {}",
                        quoted(&e.to_string())
                    ),
                )
            })?;
        g.validate().map_err(|r| gnd_err(path, quoted(&r)))?;
        Ok(g)
    }

    /// Checks counts, index ranges and boxes.
    pub fn validate(&self) -> Result<(), String> {
        if self.gnd.len() != self.qimlist.len() {
            return Err(format!(
                "{} ground-truth entries for {} queries",
                self.gnd.len(),
                self.qimlist.len()
            ));
        }
        let n = self.imlist.len();
        for (i, q) in self.gnd.iter().enumerate() {
            for (what, list) in [("easy", &q.easy), ("hard", &q.hard), ("junk", &q.junk)] {
                if let Some(&bad) = list.iter().find(|&&j| j >= n) {
                    return Err(format!(
                        "query {i} ({}): {what} index {bad} is out of range for {n} database images",
                        self.qimlist[i]
                    ));
                }
            }
            if let Some(b) = &q.bbx {
                if b.len() != 4 || b.iter().any(|v| !v.is_finite()) {
                    return Err(format!(
                        "query {i} ({}): bbx must be four finite numbers, got {b:?}",
                        self.qimlist[i]
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The figures of one setup (Easy, Medium or Hard).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SetupMetrics {
    /// Mean AP over the queries with at least one positive.
    pub map: f64,
    /// Mean precision at each k, over the same queries.
    pub mp_at: BTreeMap<usize, f64>,
    /// AP per query; `None` for a query without a positive in this setup.
    pub ap_per_query: Vec<Option<f64>>,
}

/// Easy, Medium and Hard figures.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RevisitedMetrics {
    /// Positives: easy; junk: junk and hard.
    pub easy: SetupMetrics,
    /// Positives: easy and hard; junk: junk.
    pub medium: SetupMetrics,
    /// Positives: hard; junk: junk and easy.
    pub hard: SetupMetrics,
}

/// AP of the (junk-adjusted, 0-based, ascending) positions of the positives, `n_pos` in all:
/// the official trapezoidal rule.
fn official_ap(pos: &[usize], n_pos: usize) -> f64 {
    let step = 1.0 / n_pos as f64;
    pos.iter()
        .enumerate()
        .map(|(j, &rank)| {
            let p0 = if rank == 0 {
                1.0
            } else {
                j as f64 / rank as f64
            };
            let p1 = (j + 1) as f64 / (rank + 1) as f64;
            (p0 + p1) * step / 2.0
        })
        .sum()
}

/// One query's AP and precision at each k.
type QueryScore = (f64, Vec<f64>);

/// AP and precision at each k of one query, given its ranking (database indices, best first).
fn score(
    ranking: &[usize],
    ok: &[usize],
    junk: &[usize],
    n_db: usize,
    kappas: &[usize],
) -> Option<(f64, Vec<f64>)> {
    if ok.is_empty() {
        return None;
    }
    let mut is_ok = vec![false; n_db];
    let mut is_junk = vec![false; n_db];
    for &j in ok {
        is_ok[j] = true;
    }
    for &j in junk {
        is_junk[j] = true;
    }
    // positions with the junk ranked before each positive taken out (as the official code does,
    // an index listed both as positive and as junk counts as junk for the positives after it)
    let mut pos = Vec::new();
    let mut junk_seen = 0usize;
    for (r, &j) in ranking.iter().enumerate() {
        if is_ok[j] {
            pos.push(r - junk_seen);
        }
        if is_junk[j] {
            junk_seen += 1;
        }
    }
    // the official code divides by the number of listed positives (duplicates included)
    let ap = official_ap(&pos, ok.len());
    let last = pos.iter().max().map(|&p| p + 1).unwrap_or(0);
    let pr = kappas
        .iter()
        .map(|&k| {
            let kq = k.min(last);
            pos.iter().filter(|&&p| p < kq).count() as f64 / kq as f64
        })
        .collect();
    Some((ap, pr))
}

/// Averages the per-query scores of one setup (queries without a positive are left out).
fn setup(per: Vec<Option<QueryScore>>, kappas: &[usize]) -> Result<SetupMetrics, EvalError> {
    let scored: Vec<&(f64, Vec<f64>)> = per.iter().flatten().collect();
    if scored.is_empty() {
        return Err(EvalError::Mismatch(
            "no query has a positive in this setup: nothing to average".into(),
        ));
    }
    let n = scored.len() as f64;
    let map = scored.iter().map(|s| s.0).sum::<f64>() / n;
    let mp_at = kappas
        .iter()
        .enumerate()
        .map(|(i, &k)| (k, scored.iter().map(|s| s.1[i]).sum::<f64>() / n))
        .collect();
    Ok(SetupMetrics {
        map,
        mp_at,
        ap_per_query: per.iter().map(|p| p.as_ref().map(|s| s.0)).collect(),
    })
}

fn concat(a: &[usize], b: &[usize]) -> Vec<usize> {
    a.iter().chain(b).copied().collect()
}

/// Easy/Medium/Hard figures of query features `q` `[nq, d]` against database features `x`
/// `[nx, d]` (similarity `⟨x, q⟩`, descending; ties by database index).
pub fn revisited_metrics(
    q: &Tensor,
    x: &Tensor,
    gnd: &RevisitedGnd,
    kappas: &[usize],
) -> Result<RevisitedMetrics, EvalError> {
    let (nq, dq) = q
        .size2()
        .map_err(|_| EvalError::Mismatch("query features must be a [N, d] matrix".into()))?;
    let (nx, dx) = x
        .size2()
        .map_err(|_| EvalError::Mismatch("database features must be a [N, d] matrix".into()))?;
    if dq != dx {
        return Err(EvalError::Mismatch(format!(
            "query features have dimension {dq}, database features {dx}"
        )));
    }
    if nq as usize != gnd.qimlist.len() || nx as usize != gnd.imlist.len() {
        return Err(EvalError::Mismatch(format!(
            "the ground truth lists {} queries and {} database images; the features have {nq} and {nx} rows",
            gnd.qimlist.len(),
            gnd.imlist.len()
        )));
    }
    if kappas.contains(&0) {
        return Err(EvalError::Mismatch("mP@k needs k >= 1".into()));
    }
    let n_db = nx as usize;
    // (positives, junk) per query for each setup: easy, medium, hard
    let g = &gnd.gnd;
    let lists: [Vec<(Vec<usize>, Vec<usize>)>; 3] = [
        g.iter()
            .map(|q| (q.easy.clone(), concat(&q.junk, &q.hard)))
            .collect(),
        g.iter()
            .map(|q| (concat(&q.easy, &q.hard), q.junk.clone()))
            .collect(),
        g.iter()
            .map(|q| (q.hard.clone(), concat(&q.junk, &q.easy)))
            .collect(),
    ];
    // Rank in blocks of queries and score each query as soon as it is ranked: memory stays at
    // one block of similarities and one ranking, whatever the number of queries.
    let block = 16i64;
    let x = x.to_kind(Kind::Double);
    let mut per: [Vec<Option<QueryScore>>; 3] = Default::default();
    let mut qi = 0usize;
    for start in (0..nq).step_by(block as usize) {
        let len = block.min(nq - start);
        let s = q
            .narrow(0, start, len)
            .to_kind(Kind::Double)
            .matmul(&x.tr())
            .to_device(Device::Cpu)
            .contiguous();
        let v: Vec<f64> = Vec::try_from(&s.view([-1]))
            .map_err(|e: tch::TchError| EvalError::Mismatch(e.to_string()))?;
        for row in v.chunks(n_db) {
            let mut order: Vec<usize> = (0..n_db).collect();
            order.sort_unstable_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            for (scores, l) in per.iter_mut().zip(&lists) {
                let (ok, junk) = &l[qi];
                scores.push(score(&order, ok, junk, n_db, kappas));
            }
            qi += 1;
        }
    }
    let [easy, medium, hard] = per;
    Ok(RevisitedMetrics {
        easy: setup(easy, kappas)?,
        medium: setup(medium, kappas)?,
        hard: setup(hard, kappas)?,
    })
}
