//! The main table: each (scenario, method) over seeds, mean ± std (`results.md`, `results.csv`),
//! and every method paired by seed against bct and against independent (`paired.md`,
//! `paired.json`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{mean_std, paired};
use crate::data::Scenario;
use crate::eval::models::{AdapterTag, ResultRow};
use crate::files::write_atomic;
use crate::layout::{ExperimentDir, ExperimentFile};
use crate::loss::Method;
use crate::run::RunError;
use crate::table::{Cell, Column, Table};

/// One row of the aggregated table: a method in a scenario, over seeds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AggregateRow {
    /// Scenario.
    pub scenario: Scenario,
    /// Method.
    pub method: Method,
    /// The adapter of an adapted row (`None`: the model as trained).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<AdapterTag>,
    /// Seeds aggregated.
    pub seeds: usize,
    /// (mean, std) of old→old mAP.
    pub old_old_map: (f64, f64),
    /// (mean, std) of self-test mAP.
    pub self_map: (f64, f64),
    /// (mean, std) of cross-test mAP.
    pub cross_map: (f64, f64),
    /// (mean, std) of self-test R@1.
    pub self_r1: (f64, f64),
    /// (mean, std) of cross-test R@1.
    pub cross_r1: (f64, f64),
    /// Seeds meeting the criterion.
    pub compatible: usize,
    /// (mean, std) of the update gain over the seeds where it is defined.
    pub gain: Option<(f64, f64)>,
}

impl AggregateRow {
    /// The row's name in tables: the method, then `+kind@pairs` for an adapted row.
    pub fn label(&self) -> String {
        crate::eval::models::row_label(self.method, self.adapter.as_ref())
    }

    /// (mean, std) of each of [`ResultRow::figures`], in that order.
    pub fn figures(&self) -> [(f64, f64); 5] {
        [
            self.old_old_map,
            self.self_map,
            self.cross_map,
            self.self_r1,
            self.cross_r1,
        ]
    }
}

/// A row's key: scenario, method and adapter.
type RowKey = (Scenario, Method, Option<AdapterTag>);

/// Aggregates per-run rows into mean ± std (sample standard deviation) per scenario and row
/// (method, and adapter for an adapted row).
pub fn aggregate(runs: &[(Scenario, u64, Vec<ResultRow>)]) -> Vec<AggregateRow> {
    let mut groups: BTreeMap<RowKey, Vec<&ResultRow>> = BTreeMap::new();
    let mut order: Vec<RowKey> = Vec::new();
    for (sc, _, rows) in runs {
        for r in rows {
            let key = (*sc, r.method, r.adapter.clone());
            if !groups.contains_key(&key) {
                order.push(key.clone());
            }
            groups.entry(key).or_default().push(r);
        }
    }
    order
        .into_iter()
        .map(|key| {
            let rs = &groups[&key];
            let col = |f: &dyn Fn(&ResultRow) -> f64| {
                mean_std(&rs.iter().map(|r| f(r)).collect::<Vec<_>>())
            };
            let gains: Vec<f64> = rs.iter().filter_map(|r| r.gain).collect();
            AggregateRow {
                scenario: key.0,
                method: key.1,
                adapter: key.2.clone(),
                seeds: rs.len(),
                old_old_map: col(&|r| r.old_old_map),
                self_map: col(&|r| r.self_map),
                cross_map: col(&|r| r.cross_map),
                self_r1: col(&|r| r.self_r1),
                cross_r1: col(&|r| r.cross_r1),
                compatible: rs.iter().filter(|r| r.compatible).count(),
                gain: (!gains.is_empty()).then(|| mean_std(&gains)),
            }
        })
        .collect()
}

fn pm(v: (f64, f64)) -> Cell {
    Cell::mean_std(v.0, v.1, 4)
}

/// The aggregated table as Markdown.
pub fn aggregate_markdown(rows: &[AggregateRow]) -> String {
    let mut t = Table::new(
        [Column::text("scenario"), Column::text("method")]
            .into_iter()
            .chain(
                std::iter::once("seeds")
                    .chain(ResultRow::FIGURE_HEADERS)
                    .map(Column::number),
            )
            .chain([Column::flag("compatible"), Column::number("gain")]),
    );
    for r in rows {
        let mut row: Vec<Cell> = vec![
            r.scenario.to_string().into(),
            r.label().into(),
            r.seeds.to_string().into(),
        ];
        row.extend(r.figures().map(pm));
        row.push(format!("{}/{}", r.compatible, r.seeds).into());
        row.push(
            r.gain
                .map(|g| Cell::mean_std(g.0, g.1, 3))
                .unwrap_or_else(|| "–".into()),
        );
        t.push(row);
    }
    t.markdown()
}

/// The aggregated table as CSV (means and standard deviations in separate columns).
pub fn aggregate_csv(rows: &[AggregateRow]) -> String {
    let mut headers = vec!["scenario".to_string(), "method".into(), "seeds".into()];
    for f in ResultRow::FIGURE_KEYS {
        headers.extend([f.to_string(), format!("{f}_std")]);
    }
    headers.extend(["compatible".into(), "gain".into(), "gain_std".into()]);
    let mut t = Table::new(headers.into_iter().map(Column::text));
    for r in rows {
        let mut row = vec![r.scenario.to_string(), r.label(), r.seeds.to_string()];
        for (m, s) in r.figures() {
            row.extend([format!("{m:.6}"), format!("{s:.6}")]);
        }
        let (g, gs) = r
            .gain
            .map(|g| (format!("{:.6}", g.0), format!("{:.6}", g.1)))
            .unwrap_or_default();
        row.extend([r.compatible.to_string(), g, gs]);
        t.push(row);
    }
    t.csv()
}

/// Writes `results.md`/`.csv` (the aggregate) and `paired.md`/`.json` (every method against
/// bct and against independent, where they ran); returns the aggregate and the pairs.
pub fn write_main_tables(
    runs: &[(Scenario, u64, Vec<ResultRow>)],
    out: &Path,
) -> Result<(Vec<AggregateRow>, Vec<paired::PairedRow>), RunError> {
    let table = aggregate(runs);
    write_atomic(
        &ExperimentDir::new(out).file(ExperimentFile::ResultsMd),
        aggregate_markdown(&table).as_bytes(),
    )?;
    write_atomic(
        &ExperimentDir::new(out).file(ExperimentFile::ResultsCsv),
        aggregate_csv(&table).as_bytes(),
    )?;
    let mut pairs = Vec::new();
    let mut md = String::from(
        "Paired by seed (each scenario and seed shares split, data and old model); mean \
         difference and 95% Student-t interval over seeds. The Holm-adjusted columns correct \
         for the number of rows compared with the same reference in a scenario: each interval \
         is drawn at level 0.05 / (m − rank + 1), its rank that of its paired t-test p-value \
         among the m, and a difference counts as a result only where that interval excludes \
         zero.\n\n",
    );
    for reference in [Method::BCT, Method::INDEPENDENT] {
        let rows = paired::paired(runs, reference);
        if !rows.is_empty() {
            md.push_str(&paired::paired_markdown(&rows));
            md.push('\n');
            pairs.extend(rows);
        }
    }
    let exp = ExperimentDir::new(out);
    write_atomic(&exp.file(ExperimentFile::PairedMd), md.as_bytes())?;
    crate::files::write_json(&exp.file(ExperimentFile::PairedJson), &pairs)?;
    Ok((table, pairs))
}
