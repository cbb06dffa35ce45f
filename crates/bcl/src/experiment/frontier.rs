//! Frontiers of self-test against cross-test mAP. Each method contributes its default settings
//! (the main runs) and every swept value of its knobs, on each sweep seed. A setting is summarised
//! by its mean and 95% interval over seeds; on each seed, each method's best compatible setting
//! (highest self-test among the models that meet the criterion on that seed) is compared with
//! the reference's (bct's), paired by seed; the plot draws the means with their interval bars.
//! That per-seed choice reads the same test figures it reports: an oracle figure, labelled so
//! in `frontier.md`; the verdict's protocol, settings chosen on validation and reported on
//! fresh seeds, is [`super::selection`].

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::paired::{cell, interval, Interval};
use super::Knob;
use crate::data::Scenario;
use crate::eval::is_compatible;
use crate::eval::models::AdapterTag;
use crate::files::write_atomic;
use crate::layout::{ExperimentDir, ExperimentFile};
use crate::loss::Method;
use crate::report::{plot_frontier, Bar, FrontierSeries};
use crate::run::{RunConfig, RunError};
use crate::table::{Cell, Column, Table};

/// One point of a frontier: one new model of one run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FrontierPoint {
    /// Scenario.
    pub scenario: Scenario,
    /// Seed.
    pub seed: u64,
    /// Method.
    pub method: Method,
    /// The adapter its cross-test went through (`None`: the model as trained); an adapter
    /// kind is a family of its own, its support size the setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<AdapterTag>,
    /// The swept knob; `None` at the method's default settings (a main run).
    pub knob: Option<Knob>,
    /// The knob's value; `None` at the default settings.
    pub value: Option<f64>,
    /// Self-test mAP.
    pub self_map: f64,
    /// Cross-test mAP.
    pub cross_map: f64,
    /// old→old mAP of the run.
    pub old_old_map: f64,
}

impl FrontierPoint {
    /// Whether the model meets the compatibility criterion on its run.
    pub fn compatible(&self) -> bool {
        is_compatible(self.cross_map, self.old_old_map)
    }

    /// "default", "knob = value", or an adapter's "N pairs".
    pub fn setting(&self) -> String {
        setting_name(self.knob, self.value, self.adapter.as_ref())
    }

    /// The family the point belongs to: its method, and the adapter kind of an adapted row.
    pub fn family(&self) -> Family {
        (self.method, self.adapter.as_ref().map(|t| t.kind.clone()))
    }

    fn same_setting(&self, o: &FrontierPoint) -> bool {
        self.scenario == o.scenario
            && self.method == o.method
            && self.adapter == o.adapter
            && self.knob == o.knob
            && self.value == o.value
    }
}

/// A frontier family: a method, or a method through one adapter kind.
pub type Family = (Method, Option<String>);

/// A family's name in tables and plots: `method` or `method+kind`.
fn family_name(f: &Family) -> String {
    match &f.1 {
        None => f.0.to_string(),
        Some(k) => format!("{}+{k}", f.0),
    }
}

fn setting_name(knob: Option<Knob>, value: Option<f64>, adapter: Option<&AdapterTag>) -> String {
    match (knob, value, adapter) {
        (_, _, Some(t)) => format!("{} pairs", t.support),
        (Some(k), Some(v), None) => format!("{} = {v}", k.as_str()),
        _ => "default".into(),
    }
}

/// The distinct values in order of first appearance.
fn distinct<T: PartialEq>(names: impl Iterator<Item = T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for n in names {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// Sorts points by scenario, method, adapter (trained models first), setting (default first,
/// then knob and value) and seed.
pub fn sort_points(points: &mut [FrontierPoint]) {
    points.sort_by(|a, b| {
        (a.scenario, a.method, &a.adapter, a.knob)
            .cmp(&(b.scenario, b.method, &b.adapter, b.knob))
            .then(
                a.value
                    .unwrap_or(f64::NEG_INFINITY)
                    .total_cmp(&b.value.unwrap_or(f64::NEG_INFINITY)),
            )
            .then(a.seed.cmp(&b.seed))
    });
}

/// One setting of one method over the seeds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SettingSummary {
    /// Scenario.
    pub scenario: Scenario,
    /// Method.
    pub method: Method,
    /// The adapter of an adapted family's setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<AdapterTag>,
    /// The swept knob (`None`: default settings).
    pub knob: Option<Knob>,
    /// Its value.
    pub value: Option<f64>,
    /// Seeds.
    pub seeds: usize,
    /// Self-test mAP: mean and 95% interval.
    pub self_map: Interval,
    /// Cross-test mAP: mean and 95% interval.
    pub cross_map: Interval,
    /// Mean old→old mAP of the seeds.
    pub old_old_map: f64,
    /// Seeds on which the setting meets the criterion.
    pub compatible: usize,
}

/// Groups the points by setting (in the order of their first appearance).
pub fn summarise(points: &[FrontierPoint]) -> Vec<SettingSummary> {
    let mut groups: Vec<Vec<&FrontierPoint>> = Vec::new();
    for p in points {
        match groups.iter_mut().find(|g| g[0].same_setting(p)) {
            Some(g) => g.push(p),
            None => groups.push(vec![p]),
        }
    }
    groups
        .into_iter()
        .map(|g| {
            let col = |f: fn(&FrontierPoint) -> f64| g.iter().map(|p| f(p)).collect::<Vec<_>>();
            SettingSummary {
                scenario: g[0].scenario,
                method: g[0].method,
                adapter: g[0].adapter.clone(),
                knob: g[0].knob,
                value: g[0].value,
                seeds: g.len(),
                self_map: interval(&col(|p| p.self_map)),
                cross_map: interval(&col(|p| p.cross_map)),
                old_old_map: super::mean_std(&col(|p| p.old_old_map)).0,
                compatible: g.iter().filter(|p| p.compatible()).count(),
            }
        })
        .collect()
}

/// A method's best compatible setting against the reference's, paired by seed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BestCompatibleRow {
    /// Scenario.
    pub scenario: Scenario,
    /// The method.
    pub method: Method,
    /// The adapter kind of an adapted family (its settings are support sizes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// The method it is compared with.
    pub reference: Method,
    /// The scenario's seeds.
    pub seeds: Vec<u64>,
    /// The method's best compatible setting per seed (`None`: no setting met the criterion).
    pub chosen: Vec<Option<String>>,
    /// The reference's best compatible setting per seed.
    pub reference_chosen: Vec<Option<String>>,
    /// Seeds where both had a compatible setting.
    pub paired_seeds: Vec<u64>,
    /// Self-test mAP of the chosen models, method minus reference, per paired seed.
    pub self_diffs: Vec<f64>,
    /// Cross-test mAP of the same models, method minus reference.
    pub cross_diffs: Vec<f64>,
    /// Mean and 95% interval of the self-test differences.
    pub self_diff: Interval,
    /// Mean and 95% interval of the cross-test differences.
    pub cross_diff: Interval,
}

/// The highest self-test among the compatible points of one family on one run.
fn best<'a>(
    points: &'a [FrontierPoint],
    scenario: Scenario,
    seed: u64,
    family: &Family,
) -> Option<&'a FrontierPoint> {
    points
        .iter()
        .filter(|p| p.scenario == scenario && p.seed == seed && p.family() == *family)
        .filter(|p| p.compatible())
        .fold(None, |b: Option<&FrontierPoint>, p| match b {
            Some(b) if b.self_map >= p.self_map => Some(b),
            _ => Some(p),
        })
}

/// Every family's best compatible setting (a method's, or an adapter kind's over its support
/// sizes) against `reference`'s, per scenario, paired by seed.
pub fn best_compatible(points: &[FrontierPoint], reference: Method) -> Vec<BestCompatibleRow> {
    let scenarios = distinct(points.iter().map(|p| p.scenario));
    let mut out = Vec::new();
    for sc in scenarios {
        let here = points.iter().filter(|p| p.scenario == sc);
        let seeds: Vec<u64> = here
            .clone()
            .map(|p| p.seed)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let families = distinct(here.map(FrontierPoint::family));
        let reference_family: Family = (reference, None);
        if !families.contains(&reference_family) {
            continue;
        }
        for f in families.into_iter().filter(|f| *f != reference_family) {
            let mut row = BestCompatibleRow {
                scenario: sc,
                method: f.0,
                adapter: f.1.clone(),
                reference,
                seeds: seeds.clone(),
                chosen: Vec::new(),
                reference_chosen: Vec::new(),
                paired_seeds: Vec::new(),
                self_diffs: Vec::new(),
                cross_diffs: Vec::new(),
                self_diff: interval(&[]),
                cross_diff: interval(&[]),
            };
            for &seed in &seeds {
                let a = best(points, sc, seed, &f);
                let r = best(points, sc, seed, &reference_family);
                row.chosen.push(a.map(FrontierPoint::setting));
                row.reference_chosen.push(r.map(FrontierPoint::setting));
                if let (Some(a), Some(r)) = (a, r) {
                    row.paired_seeds.push(seed);
                    row.self_diffs.push(a.self_map - r.self_map);
                    row.cross_diffs.push(a.cross_map - r.cross_map);
                }
            }
            row.self_diff = interval(&row.self_diffs);
            row.cross_diff = interval(&row.cross_diffs);
            out.push(row);
        }
    }
    out
}

fn mean_ci(i: &Interval) -> Cell {
    Cell::interval(i.mean, i.low, i.high, 4)
}

fn per_seed(seeds: &[u64], chosen: &[Option<String>]) -> String {
    seeds
        .iter()
        .zip(chosen)
        .map(|(s, c)| format!("{s}: {}", c.as_deref().unwrap_or("none")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The settings table and the best-compatible comparison as Markdown.
pub fn frontier_markdown(summary: &[SettingSummary], best: &[BestCompatibleRow]) -> String {
    let mut t = Table::new([
        Column::text("scenario"),
        Column::text("method"),
        Column::text("setting"),
        Column::number("seeds"),
        Column::text("self mAP [95% CI]"),
        Column::text("cross mAP [95% CI]"),
        Column::number("old→old"),
        Column::number("compatible"),
    ]);
    for r in summary {
        t.push(vec![
            r.scenario.to_string().into(),
            family_name(&(r.method, r.adapter.as_ref().map(|t| t.kind.clone()))).into(),
            setting_name(r.knob, r.value, r.adapter.as_ref()).into(),
            r.seeds.to_string().into(),
            mean_ci(&r.self_map),
            mean_ci(&r.cross_map),
            format!("{:.4}", r.old_old_map).into(),
            Cell::from(format!("{}/{}", r.compatible, r.seeds)),
        ]);
    }
    let mut s = format!(
        "Frontier points: each setting's self-test and cross-test mAP, mean and 95% Student-t \
         interval over seeds; \"compatible\" counts the seeds where M(new→old) > M(old→old).\n\n{}",
        t.markdown()
    );
    let Some(first) = best.first() else {
        return s;
    };
    let reference = &first.reference;
    let mut t = Table::new([
        Column::text("scenario"),
        Column::text("method"),
        Column::text("oracle: chosen per seed on test"),
        Column::text(format!("{reference} chosen per seed on test")),
        Column::number("seeds paired"),
        Column::text("self mAP difference [95% CI]"),
        Column::text("cross mAP difference [95% CI]"),
    ]);
    for r in best {
        let (sd, cd) = if r.paired_seeds.is_empty() {
            (Cell::from("no compatible setting"), Cell::from("-"))
        } else {
            (cell(&r.self_diff), cell(&r.cross_diff))
        };
        t.push(vec![
            r.scenario.to_string().into(),
            family_name(&(r.method, r.adapter.clone())).into(),
            per_seed(&r.seeds, &r.chosen).into(),
            per_seed(&r.seeds, &r.reference_chosen).into(),
            format!("{}/{}", r.paired_seeds.len(), r.seeds.len()).into(),
            sd,
            cd,
        ]);
    }
    s.push_str(&format!(
        "\nOracle figures: the best compatible setting per seed, chosen on the same test \
         figures it reports (highest self-test among the settings that meet the criterion on \
         that seed), minus {reference}'s, paired by seed; the cross-test difference is that of \
         the same two models. Choosing and reporting on one set biases these differences \
         upwards, more for a method with more settings; the unbiased comparison is \
         `selection.md` (`[selection]`: chosen on validation, reported on fresh seeds).\n\n{}",
        t.markdown()
    ));
    s
}

/// The points as CSV (one row per model).
pub fn frontier_csv(points: &[FrontierPoint]) -> String {
    let mut t = Table::new(
        [
            "scenario",
            "seed",
            "method",
            "knob",
            "value",
            "self_map",
            "cross_map",
            "old_old_map",
        ]
        .map(Column::text),
    );
    for p in points {
        let (knob, value) = match &p.adapter {
            Some(t) => ("support".to_string(), t.support.to_string()),
            None => (
                p.knob.map_or("default", |k| k.as_str()).to_string(),
                p.value.map(|v| v.to_string()).unwrap_or_default(),
            ),
        };
        t.push(vec![
            p.scenario.to_string(),
            p.seed.to_string(),
            family_name(&p.family()),
            knob,
            value,
            format!("{:.6}", p.self_map),
            format!("{:.6}", p.cross_map),
            format!("{:.6}", p.old_old_map),
        ]);
    }
    t.csv()
}

/// The plot's curves for one scenario: per method and knob, the default setting (labelled with
/// the knob's base value) and the swept values; a method without sweeps is one point.
pub fn series(
    summary: &[SettingSummary],
    scenario: Scenario,
    base: &RunConfig,
) -> Vec<FrontierSeries> {
    let here: Vec<&SettingSummary> = summary.iter().filter(|r| r.scenario == scenario).collect();
    let point = |r: &SettingSummary, label: String| {
        (
            (r.cross_map.mean, r.self_map.mean, label),
            Bar {
                x: (r.cross_map.low, r.cross_map.high),
                y: (r.self_map.low, r.self_map.high),
            },
        )
    };
    let mut out = Vec::new();
    // an adapter kind: one curve over its support sizes
    let kinds = distinct(
        here.iter()
            .filter_map(|r| r.adapter.as_ref().map(|t| (r.method, t.kind.clone()))),
    );
    for (m, kind) in kinds {
        let (points, bars) = here
            .iter()
            .filter(|r| r.method == m && r.adapter.as_ref().is_some_and(|t| t.kind == kind))
            .map(|r| {
                point(
                    r,
                    r.adapter
                        .as_ref()
                        .map_or(String::new(), |t| t.support.to_string()),
                )
            })
            .unzip();
        out.push(FrontierSeries {
            name: format!("{m}+{kind} (support pairs)"),
            points,
            bars,
        });
    }
    let here: Vec<&SettingSummary> = here.into_iter().filter(|r| r.adapter.is_none()).collect();
    let methods = distinct(here.iter().map(|r| r.method));
    for m in methods {
        let of_m: Vec<&&SettingSummary> = here.iter().filter(|r| r.method == m).collect();
        let default = of_m.iter().find(|r| r.knob.is_none());
        let knobs: BTreeSet<Knob> = of_m.iter().filter_map(|r| r.knob).collect();
        if knobs.is_empty() {
            if let Some(d) = default {
                let (p, b) = point(d, String::new());
                out.push(FrontierSeries {
                    name: m.to_string(),
                    points: vec![p],
                    bars: vec![b],
                });
            }
            continue;
        }
        for k in knobs {
            let mut pts = Vec::new();
            if let (Some(d), Some(v)) = (default, k.value(&base.compat)) {
                pts.push(point(d, format!("{v}")));
            }
            for r in of_m.iter().filter(|r| r.knob == Some(k)) {
                pts.push(point(
                    r,
                    r.value.map(|v| format!("{v}")).unwrap_or_default(),
                ));
            }
            let (points, bars) = pts.into_iter().unzip();
            out.push(FrontierSeries {
                name: format!("{m} ({})", k.as_str()),
                points,
                bars,
            });
        }
    }
    out
}

/// Everything the frontier produces: summary and comparison (also returned), frontier.csv,
/// frontier.md and one plot per scenario (`frontier-<scenario>.svg`).
pub fn write_frontier(
    points: &[FrontierPoint],
    base: &RunConfig,
    out: &Path,
) -> Result<(Vec<SettingSummary>, Vec<BestCompatibleRow>), RunError> {
    let summary = summarise(points);
    let best = best_compatible(points, Method::BCT);
    let exp = ExperimentDir::new(out);
    write_atomic(
        &exp.file(ExperimentFile::FrontierCsv),
        frontier_csv(points).as_bytes(),
    )?;
    write_atomic(
        &exp.file(ExperimentFile::FrontierMd),
        frontier_markdown(&summary, &best).as_bytes(),
    )?;
    let scenarios = distinct(summary.iter().map(|r| r.scenario));
    for sc in scenarios {
        let here: Vec<&SettingSummary> = summary.iter().filter(|r| r.scenario == sc).collect();
        let oo = here.iter().map(|r| r.old_old_map).sum::<f64>() / here.len() as f64;
        plot_frontier(
            &series(&summary, sc, base),
            oo,
            &format!("{sc}: self-test vs cross-test mAP (mean, 95% interval)"),
            &exp.frontier_plot(&sc.to_string()),
        )?;
    }
    Ok((summary, best))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(
        seed: u64,
        method: &str,
        knob: Option<Knob>,
        value: Option<f64>,
        s: f64,
        c: f64,
    ) -> FrontierPoint {
        FrontierPoint {
            scenario: Scenario::ExtendedClass,
            seed,
            method: Method::named(method).unwrap(),
            adapter: None,
            knob,
            value,
            self_map: s,
            cross_map: c,
            old_old_map: 0.5,
        }
    }

    #[test]
    fn best_compatible_picks_the_highest_self_test_among_compatible_settings() {
        let l = Some(Knob::LAMBDA);
        let e = Some(Knob::named("ndpp-eps").unwrap());
        let points = vec![
            // bct: on seed 1 the default is compatible, λ = 0.3 is better but not compatible
            pt(1, "bct", None, None, 0.70, 0.55),
            pt(1, "bct", l, Some(0.3), 0.80, 0.45),
            pt(2, "bct", None, None, 0.72, 0.60),
            pt(2, "bct", l, Some(0.3), 0.75, 0.52),
            // ndpp: seed 1 only ε = 0.1 compatible; seed 2 both, the default higher
            pt(1, "ndpp", None, None, 0.78, 0.49),
            pt(1, "ndpp", e, Some(0.1), 0.74, 0.51),
            pt(2, "ndpp", None, None, 0.79, 0.53),
            pt(2, "ndpp", e, Some(0.1), 0.76, 0.58),
            // independent: never compatible
            pt(1, "independent", None, None, 0.9, 0.1),
            pt(2, "independent", None, None, 0.9, 0.1),
        ];
        let rows = best_compatible(&points, Method::BCT);
        assert_eq!(rows.len(), 2);
        let n = &rows[0];
        assert_eq!(n.method, Method::NDPP);
        assert_eq!(
            n.chosen,
            vec![Some("ndpp-eps = 0.1".into()), Some("default".into())]
        );
        assert_eq!(
            n.reference_chosen,
            vec![Some("default".into()), Some("lambda = 0.3".into())]
        );
        assert_eq!(n.paired_seeds, vec![1, 2]);
        // 0.74 - 0.70 and 0.79 - 0.75; cross 0.51 - 0.55 and 0.53 - 0.52
        for (a, b) in n.self_diffs.iter().zip([0.04, 0.04]) {
            assert!((a - b).abs() < 1e-12);
        }
        for (a, b) in n.cross_diffs.iter().zip([-0.04, 0.01]) {
            assert!((a - b).abs() < 1e-12);
        }
        assert!((n.self_diff.mean - 0.04).abs() < 1e-12);
        let i = &rows[1];
        assert_eq!(i.method, Method::INDEPENDENT);
        assert!(i.paired_seeds.is_empty() && i.chosen == vec![None, None]);
        let md = frontier_markdown(&summarise(&points), &rows);
        assert!(md.contains("| extended-class | independent | 1: none; 2: none |"));
        assert!(md.contains("no compatible setting"));
    }

    #[test]
    fn an_adapter_kind_is_a_family_whose_settings_are_support_sizes() {
        let tagged = |seed: u64, support: usize, c: f64| FrontierPoint {
            adapter: Some(AdapterTag {
                kind: "procrustes".into(),
                support,
            }),
            ..pt(seed, "independent", None, None, 0.9, c)
        };
        let points = vec![
            pt(1, "bct", None, None, 0.70, 0.55),
            pt(1, "independent", None, None, 0.90, 0.10),
            tagged(1, 100, 0.45),
            tagged(1, 1000, 0.52),
        ];
        let rows = best_compatible(&points, Method::BCT);
        assert_eq!(
            rows.len(),
            2,
            "independent, and independent through procrustes"
        );
        let a = rows.iter().find(|r| r.adapter.is_some()).unwrap();
        assert_eq!(
            (a.method, a.adapter.as_deref()),
            (Method::INDEPENDENT, Some("procrustes"))
        );
        assert_eq!(a.chosen, vec![Some("1000 pairs".into())]);
        assert!((a.self_diffs[0] - 0.20).abs() < 1e-12 && (a.cross_diffs[0] + 0.03).abs() < 1e-12);
        let plain = rows.iter().find(|r| r.adapter.is_none()).unwrap();
        assert_eq!(
            plain.chosen,
            vec![None],
            "the adapted points are not the model's"
        );
        let summary = summarise(&points);
        assert_eq!(summary.len(), 4);
        let curves = series(&summary, Scenario::ExtendedClass, &RunConfig::default());
        let c = curves
            .iter()
            .find(|c| c.name == "independent+procrustes (support pairs)")
            .unwrap();
        let labels: Vec<&str> = c.points.iter().map(|p| p.2.as_str()).collect();
        assert_eq!(labels, ["100", "1000"]);
        assert!(curves
            .iter()
            .all(|c| c.name != "independent" || c.points.len() == 1));
        let csv = frontier_csv(&points);
        assert!(
            csv.contains("independent+procrustes,support,1000,"),
            "{csv}"
        );
        let md = frontier_markdown(&summary, &rows);
        assert!(
            md.contains("| extended-class | independent+procrustes | 1000 pairs |"),
            "{md}"
        );
    }

    #[test]
    fn settings_are_summarised_over_seeds_with_intervals() {
        let points = vec![
            pt(1, "bct", None, None, 0.70, 0.55),
            pt(2, "bct", None, None, 0.72, 0.45),
            pt(3, "bct", None, None, 0.74, 0.65),
        ];
        let s = summarise(&points);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].seeds, s[0].compatible), (3, 2));
        // mean 0.72, sd 0.02, t(2) = 4.303: half width 0.02 * 4.303 / sqrt(3)
        let half = 0.02 * 4.303 / 3f64.sqrt();
        assert!((s[0].self_map.mean - 0.72).abs() < 1e-12);
        assert!((s[0].self_map.high - (0.72 + half)).abs() < 1e-9);
    }
}
