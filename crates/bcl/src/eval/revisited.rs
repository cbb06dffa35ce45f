//! The Revisited Oxford/Paris protocol (Radenović et al. 2018): ground truth from the published
//! `gnd_roxford5k.pkl` / `gnd_rparis6k.pkl` pickles, and Easy/Medium/Hard mAP and mP@k as the
//! official `compute_map` computes them: junk images are dropped from the ranking (the
//! positions of the positives move up), AP is the trapezoidal average of the precisions just
//! before and at each positive, and mP@k uses `min(k, rank of the last positive)`. Queries
//! without a positive in a setup are left out of that setup's averages.
//!
//! The pickle is read with the `serde-pickle` crate. The bounding boxes are kept for the image
//! pipeline, which must crop each query to its box before embedding (Revisited Oxford/Paris
//! queries are defined by the box, not the whole image).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::EvalError;

/// One query's ground truth: its box and the database indices by difficulty.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueryGnd {
    /// Query box `[x1, y1, x2, y2]` in pixels of the query image.
    #[serde(default)]
    pub bbx: Option<Vec<f64>>,
    /// Easy positives (database indices).
    #[serde(default)]
    pub easy: Vec<usize>,
    /// Hard positives.
    #[serde(default)]
    pub hard: Vec<usize>,
    /// Junk: neither positive nor negative; removed from the ranking.
    #[serde(default)]
    pub junk: Vec<usize>,
}

/// The content of a `gnd_*.pkl` file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RevisitedGnd {
    /// Database image names.
    pub imlist: Vec<String>,
    /// Query image names.
    pub qimlist: Vec<String>,
    /// Ground truth per query, in `qimlist` order.
    pub gnd: Vec<QueryGnd>,
}

fn gnd_err(path: &Path, reason: impl std::fmt::Display) -> EvalError {
    EvalError::Ground {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl RevisitedGnd {
    /// Reads and validates a ground-truth pickle.
    pub fn read(path: &Path) -> Result<Self, EvalError> {
        let bytes = std::fs::read(path).map_err(|e| gnd_err(path, format!("cannot read: {e}")))?;
        let g: Self =
            serde_pickle::from_slice(&bytes, serde_pickle::DeOptions::new()).map_err(|e| {
                gnd_err(
                    path,
                    format!("not a Revisited ground-truth pickle (imlist, qimlist, gnd): {e}"),
                )
            })?;
        g.validate().map_err(|r| gnd_err(path, r))?;
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

/// A query box as a crop rectangle `(left, top, width, height)` in whole pixels, clipped to the
/// image; an error for a box that is empty or inverted after clipping.
pub fn crop_rect(bbx: &[f64], width: u32, height: u32) -> Result<(u32, u32, u32, u32), String> {
    if bbx.len() != 4 {
        return Err(format!("a box has four numbers, got {bbx:?}"));
    }
    let (x1, y1, x2, y2) = (bbx[0], bbx[1], bbx[2], bbx[3]);
    if !(x2 > x1 && y2 > y1) {
        return Err(format!(
            "box {bbx:?} is inverted or empty (x2 must exceed x1 and y2 exceed y1)"
        ));
    }
    let l = x1.max(0.0).floor().min(width as f64) as u32;
    let t = y1.max(0.0).floor().min(height as f64) as u32;
    let r = x2.ceil().clamp(0.0, width as f64) as u32;
    let b = y2.ceil().clamp(0.0, height as f64) as u32;
    if r <= l || b <= t {
        return Err(format!(
            "box {bbx:?} lies outside the {width}x{height} image"
        ));
    }
    Ok((l, t, r - l, b - t))
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

fn setup(
    rankings: &[Vec<usize>],
    lists: &[(Vec<usize>, Vec<usize>)],
    n_db: usize,
    kappas: &[usize],
) -> Result<SetupMetrics, EvalError> {
    let per: Vec<Option<(f64, Vec<f64>)>> = rankings
        .iter()
        .zip(lists)
        .map(|(r, (ok, junk))| score(r, ok, junk, n_db, kappas))
        .collect();
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
    // rank in blocks of queries so that memory stays at block × database
    let block = 16i64;
    let x = x.to_kind(Kind::Double);
    let mut rankings = Vec::with_capacity(nq as usize);
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
            rankings.push(order);
        }
    }
    let g = &gnd.gnd;
    let easy: Vec<_> = g
        .iter()
        .map(|q| (q.easy.clone(), concat(&q.junk, &q.hard)))
        .collect();
    let medium: Vec<_> = g
        .iter()
        .map(|q| (concat(&q.easy, &q.hard), q.junk.clone()))
        .collect();
    let hard: Vec<_> = g
        .iter()
        .map(|q| (q.hard.clone(), concat(&q.junk, &q.easy)))
        .collect();
    Ok(RevisitedMetrics {
        easy: setup(&rankings, &easy, n_db, kappas)?,
        medium: setup(&rankings, &medium, n_db, kappas)?,
        hard: setup(&rankings, &hard, n_db, kappas)?,
    })
}
