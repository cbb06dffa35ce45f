//! Paired comparisons over seeds. Runs of one scenario and seed share their split, data and old
//! model, so a method is compared with a reference seed by seed: the per-seed differences of
//! self-test and cross-test mAP, their mean and a 95% Student-t interval, and the same interval
//! Holm-adjusted over the rows of a scenario compared with one reference. A difference is a
//! result only where its interval excludes zero; otherwise it is within the seed spread.

use serde::{Deserialize, Serialize};

use crate::data::Scenario;
use crate::eval::models::{AdapterTag, ResultRow};
use crate::loss::Method;
use crate::table::{Cell, Column, Table};

/// A mean with its 95% interval.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Interval {
    /// The mean.
    pub mean: f64,
    /// Lower end of the 95% interval.
    pub low: f64,
    /// Upper end.
    pub high: f64,
}

impl Interval {
    /// Whether the interval excludes zero (the difference is a result).
    pub fn excludes_zero(&self) -> bool {
        self.low > 0.0 || self.high < 0.0
    }
}

/// The 97.5% quantile of Student's t with `df` degrees of freedom (a table to 30, then the
/// normal's 1.96; hand-written: eleven numbers do not justify a statistics crate).
pub fn t_975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => T[df - 1],
        _ => 1.96,
    }
}

/// Mean and 95% t-interval of `xs` (NaN ends with fewer than two values).
pub fn interval(xs: &[f64]) -> Interval {
    let n = xs.len();
    let (mean, sd) = super::mean_std(xs);
    if n < 2 {
        return Interval {
            mean,
            low: f64::NAN,
            high: f64::NAN,
        };
    }
    let half = t_975(n - 1) * sd / (n as f64).sqrt();
    Interval {
        mean,
        low: mean - half,
        high: mean + half,
    }
}

/// The two-sided p-value of the paired t-test of `xs` (the per-seed differences) against a
/// mean of zero: NaN with fewer than two values; 0 when every difference is the same non-zero
/// number, 1 when all are zero.
pub fn t_test_p(xs: &[f64]) -> f64 {
    use statrs::distribution::{ContinuousCDF, StudentsT};
    let n = xs.len();
    if n < 2 {
        return f64::NAN;
    }
    let (mean, sd) = super::mean_std(xs);
    if sd == 0.0 {
        return if mean == 0.0 { 1.0 } else { 0.0 };
    }
    let t = mean / (sd / (n as f64).sqrt());
    let dist = StudentsT::new(0.0, 1.0, (n - 1) as f64).expect("df >= 1");
    (2.0 * (1.0 - dist.cdf(t.abs()))).min(1.0)
}

/// The positions of the p-values that are not NaN, by ascending p (Holm's order).
fn testable_ascending(p: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..p.len()).filter(|&i| !p[i].is_nan()).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    order
}

/// Holm's step-down adjustment of `p` (family-wise error control over the hypotheses): sorted
/// ascending, the i-th smallest (1-based) is multiplied by `m − i + 1`, made non-decreasing and
/// capped at 1; returned in the input's order. NaN values (untestable) stay NaN and do not
/// count in `m`.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let order = testable_ascending(p);
    let m = order.len();
    let mut out = vec![f64::NAN; p.len()];
    let mut running: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p[i]).min(1.0));
        out[i] = running;
    }
    out
}

/// The Holm step of each hypothesis: its 1-based rank by ascending p-value (NaN: none), the
/// level `0.05 / (m − rank + 1)` its adjusted interval is drawn at.
pub fn holm_levels(p: &[f64]) -> Vec<f64> {
    let order = testable_ascending(p);
    let m = order.len();
    let mut out = vec![f64::NAN; p.len()];
    for (rank, &i) in order.iter().enumerate() {
        out[i] = 0.05 / (m - rank) as f64;
    }
    out
}

/// Mean and the two-sided `1 − alpha` Student-t interval of `xs` (NaN ends with fewer than two
/// values or a NaN level).
pub fn interval_at(xs: &[f64], alpha: f64) -> Interval {
    use statrs::distribution::{ContinuousCDF, StudentsT};
    let n = xs.len();
    let (mean, sd) = super::mean_std(xs);
    if n < 2 || alpha.is_nan() {
        return Interval {
            mean,
            low: f64::NAN,
            high: f64::NAN,
        };
    }
    let dist = StudentsT::new(0.0, 1.0, (n - 1) as f64).expect("df >= 1");
    let half = dist.inverse_cdf(1.0 - alpha / 2.0) * sd / (n as f64).sqrt();
    Interval {
        mean,
        low: mean - half,
        high: mean + half,
    }
}

/// One method against a reference, paired by seed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PairedRow {
    /// Scenario.
    pub scenario: Scenario,
    /// The method.
    pub method: Method,
    /// The adapter of an adapted row (`None`: the model as trained).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<AdapterTag>,
    /// The method it is compared with (as trained).
    pub reference: Method,
    /// Seeds where both ran.
    pub seeds: Vec<u64>,
    /// Self-test mAP, method minus reference, per seed.
    pub self_diffs: Vec<f64>,
    /// Cross-test mAP, method minus reference, per seed.
    pub cross_diffs: Vec<f64>,
    /// Mean and 95% interval of the self-test differences.
    pub self_diff: Interval,
    /// Mean and 95% interval of the cross-test differences.
    pub cross_diff: Interval,
    /// The self-test interval Holm-adjusted over the rows compared with the same reference in
    /// the scenario ([`holm_intervals`]); absent in files written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_holm: Option<Interval>,
    /// The cross-test interval, Holm-adjusted likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_holm: Option<Interval>,
}

impl PairedRow {
    /// The row's name in tables: the method, then `+kind@pairs` for an adapted row.
    pub fn label(&self) -> String {
        crate::eval::models::row_label(self.method, self.adapter.as_ref())
    }
}

/// Every row (method, or method through an adapter) against `reference` as trained, per
/// scenario, over the seeds where both ran.
pub fn paired(runs: &[(Scenario, u64, Vec<ResultRow>)], reference: Method) -> Vec<PairedRow> {
    let mut out: Vec<PairedRow> = Vec::new();
    let is_reference = |r: &ResultRow| r.method == reference && r.adapter.is_none();
    for (sc, seed, rows) in runs {
        let Some(r) = rows.iter().find(|r| is_reference(r)) else {
            continue;
        };
        for m in rows.iter().filter(|m| !is_reference(m)) {
            let scenario = *sc;
            let i = match out.iter().position(|p| {
                p.scenario == scenario && p.method == m.method && p.adapter == m.adapter
            }) {
                Some(i) => i,
                None => {
                    out.push(PairedRow {
                        scenario,
                        method: m.method,
                        adapter: m.adapter.clone(),
                        reference,
                        seeds: Vec::new(),
                        self_diffs: Vec::new(),
                        cross_diffs: Vec::new(),
                        self_diff: interval(&[]),
                        cross_diff: interval(&[]),
                        self_holm: None,
                        cross_holm: None,
                    });
                    out.len() - 1
                }
            };
            let p = &mut out[i];
            p.seeds.push(*seed);
            p.self_diffs.push(m.self_map - r.self_map);
            p.cross_diffs.push(m.cross_map - r.cross_map);
        }
    }
    for p in &mut out {
        p.self_diff = interval(&p.self_diffs);
        p.cross_diff = interval(&p.cross_diffs);
    }
    let mut scenarios: Vec<Scenario> = Vec::new();
    for p in &out {
        if !scenarios.contains(&p.scenario) {
            scenarios.push(p.scenario);
        }
    }
    for sc in scenarios {
        let idx: Vec<usize> = (0..out.len()).filter(|&i| out[i].scenario == sc).collect();
        let selfs: Vec<&[f64]> = idx.iter().map(|&i| &out[i].self_diffs[..]).collect();
        let crosses: Vec<&[f64]> = idx.iter().map(|&i| &out[i].cross_diffs[..]).collect();
        let p = |xs: &[&[f64]]| -> Vec<f64> { xs.iter().map(|x| t_test_p(x)).collect() };
        let (hs, hc) = (
            holm_intervals(&selfs, &p(&selfs)),
            holm_intervals(&crosses, &p(&crosses)),
        );
        for (k, &i) in idx.iter().enumerate() {
            out[i].self_holm = Some(hs[k]);
            out[i].cross_holm = Some(hc[k]);
        }
    }
    out
}

/// One family's intervals, Holm-adjusted as the protocol's report draws them: each sample's
/// paired t-test p-value (`p`, in the samples' order) ranks it, and its interval is drawn at
/// the level its rank gives ([`holm_levels`]; the first-ranked at Bonferroni's 0.05 / m, the
/// last at 0.05).
pub fn holm_intervals(samples: &[&[f64]], p: &[f64]) -> Vec<Interval> {
    let levels = holm_levels(p);
    samples
        .iter()
        .zip(levels)
        .map(|(x, level)| interval_at(x, level))
        .collect()
}

/// A difference with its interval and verdict (result, within the seed spread, one seed).
pub(crate) fn cell(i: &Interval) -> Cell {
    let verdict = if i.low.is_nan() {
        "one seed"
    } else if i.excludes_zero() {
        "result"
    } else {
        "within the seed spread"
    };
    difference_cell(i, verdict)
}

/// A signed difference with its interval (four decimals) and `verdict` after it.
pub(crate) fn difference_cell(i: &Interval, verdict: &str) -> Cell {
    Cell::Interval {
        estimate: i.mean,
        low: i.low,
        high: i.high,
        digits: 4,
        signed: true,
        note: Some(verdict.into()),
    }
}

/// The paired comparisons as Markdown.
pub fn paired_markdown(rows: &[PairedRow]) -> String {
    let mut t = Table::new([
        Column::text("scenario"),
        Column::text("method"),
        Column::text("minus"),
        Column::number("seeds"),
        Column::text("self mAP difference [95% CI]"),
        Column::text("cross mAP difference [95% CI]"),
        Column::text("self, Holm-adjusted"),
        Column::text("cross, Holm-adjusted"),
    ]);
    let holm = |i: &Option<Interval>| i.as_ref().map_or_else(|| "–".to_string().into(), cell);
    for r in rows {
        t.push(vec![
            r.scenario.to_string().into(),
            r.label().into(),
            r.reference.to_string().into(),
            r.seeds.len().to_string().into(),
            cell(&r.self_diff),
            cell(&r.cross_diff),
            holm(&r.self_holm),
            holm(&r.cross_holm),
        ]);
    }
    t.markdown()
}
