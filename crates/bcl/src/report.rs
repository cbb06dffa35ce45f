//! Report: the results table (Markdown, CSV, JSON, through [`crate::table`]) and SVG plots (compatibility matrix heat
//! map, training curves). File writes go through [`crate::files`].

pub mod html;

pub use html::{html_report, record_command, write_html_report};

use crate::files::write_atomic;
use crate::layout::RunDir;
use std::path::{Path, PathBuf};

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use tch::{Device, Kind, Tensor};

use crate::eval::models::{EvalReport, ResultRow};
use crate::eval::CompatMatrix;
use crate::table::{Column, Table};
use crate::train::EpochStats;

/// Errors of writing reports.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file could not be written.
    #[error(transparent)]
    File(#[from] crate::files::FileError),
    /// A file a report reads could not be read, or is not what it should be.
    #[error("{path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A plot could not be drawn.
    #[error("{path}: cannot draw plot: {reason}")]
    Plot {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// Renders rows as a Markdown table.
pub fn rows_markdown(rows: &[ResultRow]) -> String {
    let mut t = Table::new(
        std::iter::once(Column::text("method"))
            .chain(ResultRow::FIGURE_HEADERS.map(Column::number))
            .chain([Column::flag("compatible"), Column::number("gain")]),
    );
    for r in rows {
        let mut row = vec![r.label()];
        row.extend(r.figures().map(|v| format!("{v:.4}")));
        row.push(if r.compatible { "yes" } else { "no" }.into());
        row.push(
            r.gain
                .map(|g| format!("{g:.3}"))
                .unwrap_or_else(|| "–".into()),
        );
        t.push(row);
    }
    t.markdown()
}

/// Renders rows as CSV.
pub fn rows_csv(rows: &[ResultRow]) -> String {
    let mut t = Table::new(
        std::iter::once("method")
            .chain(ResultRow::FIGURE_KEYS)
            .chain(["compatible", "gain"])
            .map(Column::text),
    );
    for r in rows {
        let mut row = vec![r.label()];
        row.extend(r.figures().map(|v| format!("{v:.6}")));
        row.push(r.compatible.to_string());
        row.push(r.gain.map(|g| format!("{g:.6}")).unwrap_or_default());
        t.push(row);
    }
    t.csv()
}

/// Renders the compatibility matrix (mAP) as CSV, rows query model, columns gallery model.
pub fn matrix_csv(m: &CompatMatrix) -> String {
    let mut t = Table::new(
        std::iter::once(Column::text("query\\gallery")).chain(m.models.iter().map(Column::number)),
    );
    for (q, row) in m.models.iter().zip(&m.cells) {
        let cells = row.iter().map(|c| {
            c.as_ref()
                .map(|c| format!("{:.6}", c.map))
                .unwrap_or_default()
        });
        t.push(std::iter::once(q.clone()).chain(cells).collect());
    }
    t.csv()
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> ReportError {
    ReportError::Plot {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Draws the compatibility matrix (mAP) as an SVG heat map with the values in the cells.
pub fn plot_matrix(m: &CompatMatrix, path: &Path) -> Result<(), ReportError> {
    let n = m.models.len();
    let cell = 140i32;
    let (left, top) = (150i32, 60i32);
    let size = (
        (left + cell * n as i32 + 20) as u32,
        (top + cell * n as i32 + 50) as u32,
    );
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
        let style = ("sans-serif", 15).into_font();
        root.draw(&Text::new(
            "compatibility matrix, mAP (rows: query model, columns: gallery model)",
            (10, 15),
            style.clone(),
        ))
        .map_err(|e| plot_err(path, e))?;
        for (q, row) in m.cells.iter().enumerate() {
            for (g, c) in row.iter().enumerate() {
                let x0 = left + g as i32 * cell;
                let y0 = top + q as i32 * cell;
                let (color, label) = match c {
                    Some(c) => {
                        let v = c.map.clamp(0.0, 1.0);
                        (
                            RGBColor((255.0 - 200.0 * v) as u8, (255.0 - 120.0 * v) as u8, 255),
                            format!("{:.3}", c.map),
                        )
                    }
                    // a pair the evaluation skipped
                    None => (RGBColor(235, 235, 235), "–".to_string()),
                };
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cell - 2, y0 + cell - 2)],
                    color.filled(),
                ))
                .map_err(|e| plot_err(path, e))?;
                root.draw(&Text::new(
                    label,
                    (x0 + cell / 2 - 20, y0 + cell / 2 - 8),
                    style.clone(),
                ))
                .map_err(|e| plot_err(path, e))?;
            }
            root.draw(&Text::new(
                m.models[q].clone(),
                (10, top + q as i32 * cell + cell / 2 - 8),
                style.clone(),
            ))
            .map_err(|e| plot_err(path, e))?;
        }
        for (g, name) in m.models.iter().enumerate() {
            root.draw(&Text::new(
                name.clone(),
                (left + g as i32 * cell + 10, top + n as i32 * cell + 10),
                style.clone(),
            ))
            .map_err(|e| plot_err(path, e))?;
        }
        root.present().map_err(|e| plot_err(path, e))?;
    }
    Ok(write_atomic(path, svg.as_bytes())?)
}

/// Draws the training loss of each model per epoch as SVG line plots.
pub fn plot_curves(curves: &[(String, Vec<EpochStats>)], path: &Path) -> Result<(), ReportError> {
    let svg = curves_svg(curves, path)?;
    Ok(write_atomic(path, svg.as_bytes())?)
}

/// The training curves' SVG document (`path` names the plot in errors).
pub fn curves_svg(
    curves: &[(String, Vec<EpochStats>)],
    path: &Path,
) -> Result<String, ReportError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
        let max_epoch = curves
            .iter()
            .flat_map(|(_, h)| h.iter().map(|s| s.epoch))
            .max()
            .unwrap_or(1)
            .max(2);
        let max_loss = curves
            .iter()
            .flat_map(|(_, h)| h.iter().map(|s| s.loss_total))
            .fold(0.0f64, f64::max)
            .max(1e-3)
            * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "training loss (classification + λ·compatibility) per epoch",
                ("sans-serif", 18),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(1f64..max_epoch as f64, 0f64..max_loss)
            .map_err(|e| plot_err(path, e))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("loss")
            .draw()
            .map_err(|e| plot_err(path, e))?;
        for (i, (name, hist)) in curves.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    hist.iter().map(|s| (s.epoch as f64, s.loss_total)),
                    color.stroke_width(2),
                ))
                .map_err(|e| plot_err(path, e))?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_err(path, e))?;
        root.present().map_err(|e| plot_err(path, e))?;
    }
    Ok(svg)
}

/// One curve of a frontier plot: (cross-test mAP, self-test mAP, label) points.
#[derive(Debug, Clone)]
pub struct FrontierSeries {
    /// Legend name.
    pub name: String,
    /// Points; drawn in order of cross-test mAP.
    pub points: Vec<(f64, f64, String)>,
    /// Interval bars, one per point in the same order (empty: no bars).
    pub bars: Vec<Bar>,
}

/// The interval bars of one point: (low, high) along each axis; an end that is not finite
/// (an interval over fewer than two seeds) draws no bar on that axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bar {
    /// Horizontal interval.
    pub x: (f64, f64),
    /// Vertical interval.
    pub y: (f64, f64),
}

impl Bar {
    fn x_ends(&self) -> Option<(f64, f64)> {
        (self.x.0.is_finite() && self.x.1.is_finite()).then_some(self.x)
    }

    fn y_ends(&self) -> Option<(f64, f64)> {
        (self.y.0.is_finite() && self.y.1.is_finite()).then_some(self.y)
    }
}

/// Draws self-test mAP against cross-test mAP, one curve per series (with its interval bars),
/// with old→old as a vertical line (right of it: compatible).
pub fn plot_frontier(
    series: &[FrontierSeries],
    old_old: f64,
    title: &str,
    path: &Path,
) -> Result<(), ReportError> {
    plot_xy(
        series,
        ("cross-test mAP (new→old)", "self-test mAP (new→new)"),
        Reference::Vertical(old_old, format!("old→old = {old_old:.3}")),
        title,
        path,
    )
}

/// A reference line of [`plot_xy`].
#[derive(Debug, Clone)]
pub enum Reference {
    /// A vertical line at x, with its legend label.
    Vertical(f64, String),
    /// A horizontal line at y, with its legend label.
    Horizontal(f64, String),
}

/// The plot's chart: SVG, two f64 axes.
type XyChart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Every series has one bar per point, or none.
fn check_bars(series: &[FrontierSeries], path: &Path) -> Result<(), ReportError> {
    match series
        .iter()
        .find(|s| !s.bars.is_empty() && s.bars.len() != s.points.len())
    {
        Some(s) => Err(ReportError::Plot {
            path: path.to_path_buf(),
            reason: format!(
                "series {}: {} bars for {} points",
                s.name,
                s.bars.len(),
                s.points.len()
            ),
        }),
        None => Ok(()),
    }
}

/// `(x0, x1, y0, y1)` covering the points, the ends of their bars and the reference line
/// (the unit square when there is nothing to cover).
fn extent(series: &[FrontierSeries], reference: &Reference) -> (f64, f64, f64, f64) {
    let mut all: Vec<(f64, f64)> = Vec::new();
    for s in series {
        for (i, p) in s.points.iter().enumerate() {
            all.push((p.0, p.1));
            if let Some(b) = s.bars.get(i) {
                if let Some((lo, hi)) = b.x_ends() {
                    all.extend([(lo, p.1), (hi, p.1)]);
                }
                if let Some((lo, hi)) = b.y_ends() {
                    all.extend([(p.0, lo), (p.0, hi)]);
                }
            }
        }
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    match reference {
        Reference::Vertical(v, _) => (x0, x1) = (*v, *v),
        Reference::Horizontal(v, _) => (y0, y1) = (*v, *v),
    }
    for &(x, y) in &all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1) = (0.0, 1.0);
    }
    if y0 > y1 {
        (y0, y1) = (0.0, 1.0);
    }
    (x0, x1, y0, y1)
}

/// One series: its interval bars, the line through its points sorted by x (in the legend),
/// the points and their labels.
fn draw_one(
    chart: &mut XyChart,
    s: &FrontierSeries,
    color: RGBAColor,
    path: &Path,
) -> Result<(), ReportError> {
    let mut pts = s.points.clone();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let bars = s.points.iter().zip(&s.bars);
    chart
        .draw_series(bars.clone().filter_map(|(p, b)| {
            b.y_ends()
                .map(|(lo, hi)| ErrorBar::new_vertical(p.0, lo, p.1, hi, color, 6))
        }))
        .map_err(|e| plot_err(path, e))?;
    chart
        .draw_series(bars.filter_map(|(p, b)| {
            b.x_ends()
                .map(|(lo, hi)| ErrorBar::new_horizontal(p.1, lo, p.0, hi, color, 6))
        }))
        .map_err(|e| plot_err(path, e))?;
    chart
        .draw_series(LineSeries::new(
            pts.iter().map(|p| (p.0, p.1)),
            color.stroke_width(2),
        ))
        .map_err(|e| plot_err(path, e))?
        .label(s.name.clone())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    chart
        .draw_series(
            pts.iter()
                .map(|p| Circle::new((p.0, p.1), 4, color.filled())),
        )
        .map_err(|e| plot_err(path, e))?;
    chart
        .draw_series(
            pts.iter()
                .map(|p| Text::new(p.2.clone(), (p.0, p.1), ("sans-serif", 11))),
        )
        .map_err(|e| plot_err(path, e))?;
    Ok(())
}

/// Draws labelled point series joined by lines (sorted by x), with their interval bars, axis
/// descriptions and a reference line, as SVG.
pub fn plot_xy(
    series: &[FrontierSeries],
    axes: (&str, &str),
    reference: Reference,
    title: &str,
    path: &Path,
) -> Result<(), ReportError> {
    check_bars(series, path)?;
    let (x0, x1, y0, y1) = extent(series, &reference);
    let pad = |a: f64, b: f64| ((b - a) * 0.1).max(0.005);
    let (px, py) = (pad(x0, x1), pad(y0, y1));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (820, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d((x0 - px)..(x1 + px), (y0 - py)..(y1 + py))
            .map_err(|e| plot_err(path, e))?;
        chart
            .configure_mesh()
            .x_desc(axes.0)
            .y_desc(axes.1)
            .draw()
            .map_err(|e| plot_err(path, e))?;
        let (line, label) = match &reference {
            Reference::Vertical(v, l) => (vec![(*v, y0 - py), (*v, y1 + py)], l.clone()),
            Reference::Horizontal(v, l) => (vec![(x0 - px, *v), (x1 + px, *v)], l.clone()),
        };
        chart
            .draw_series(LineSeries::new(line, BLACK.stroke_width(1)))
            .map_err(|e| plot_err(path, e))?
            .label(label)
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
        for (i, s) in series.iter().enumerate() {
            draw_one(&mut chart, s, Palette99::pick(i).to_rgba(), path)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerLeft)
            .draw()
            .map_err(|e| plot_err(path, e))?;
        root.present().map_err(|e| plot_err(path, e))?;
    }
    Ok(write_atomic(path, svg.as_bytes())?)
}

/// Points in a plane.
pub type Points2 = Vec<(f64, f64)>;

/// 2-D principal-component coordinates of the rows of `[a; b]` (both `[C, d]`).
pub fn pca_2d(a: &Tensor, b: &Tensor) -> (Points2, Points2) {
    let x =
        Tensor::cat(&[a.to_kind(Kind::Float), b.to_kind(Kind::Float)], 0).to_device(Device::Cpu);
    let mean = x.mean_dim([0i64].as_slice(), true, Kind::Float);
    let xc = &x - mean;
    let (_, _, v) = xc.svd(true, true);
    let k = v.size()[1].min(2);
    let proj = xc.matmul(&v.narrow(1, 0, k));
    let proj = if k < 2 {
        Tensor::cat(&[proj.shallow_clone(), proj.zeros_like()], 1)
    } else {
        proj
    };
    let c = a.size()[0];
    let pts = |t: Tensor| -> Vec<(f64, f64)> {
        let v: Vec<f32> = Vec::try_from(t.contiguous().view([-1])).expect("floats");
        v.chunks(2).map(|p| (p[0] as f64, p[1] as f64)).collect()
    };
    (pts(proj.narrow(0, 0, c)), pts(proj.narrow(0, c, c)))
}

/// Draws old prototypes (circles) and their pseudo-old prototypes (crosses), joined by
/// arrows, in the first two principal components of both sets.
pub fn plot_prototypes_pca(
    old: &Tensor,
    pseudo: &Tensor,
    title: &str,
    path: &Path,
) -> Result<(), ReportError> {
    let (a, b) = pca_2d(old, pseudo);
    let all: Vec<&(f64, f64)> = a.iter().chain(&b).collect();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for p in &all {
        x0 = x0.min(p.0);
        x1 = x1.max(p.0);
        y0 = y0.min(p.1);
        y1 = y1.max(p.1);
    }
    let (px, py) = (((x1 - x0) * 0.1).max(1e-3), ((y1 - y0) * 0.1).max(1e-3));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (700, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("old (o) and pseudo-old (x) prototypes, PCA: {title}"),
                ("sans-serif", 16),
            )
            .margin(15)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d((x0 - px)..(x1 + px), (y0 - py)..(y1 + py))
            .map_err(|e| plot_err(path, e))?;
        chart
            .configure_mesh()
            .x_desc("PC 1")
            .y_desc("PC 2")
            .draw()
            .map_err(|e| plot_err(path, e))?;
        for (k, (p, q)) in a.iter().zip(&b).enumerate() {
            let color = Palette99::pick(k).to_rgba();
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![*p, *q],
                    color.stroke_width(1),
                )))
                .map_err(|e| plot_err(path, e))?;
            chart
                .draw_series(std::iter::once(Circle::new(*p, 5, color.stroke_width(2))))
                .map_err(|e| plot_err(path, e))?;
            chart
                .draw_series(std::iter::once(Cross::new(*q, 5, color.stroke_width(2))))
                .map_err(|e| plot_err(path, e))?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{k}"),
                    (p.0, p.1),
                    ("sans-serif", 12),
                )))
                .map_err(|e| plot_err(path, e))?;
        }
        root.present().map_err(|e| plot_err(path, e))?;
    }
    Ok(write_atomic(path, svg.as_bytes())?)
}

/// Writes an evaluation's tables and plots into the run directory `dir`: results.md/.csv,
/// metrics.json, matrix.csv, compat_matrix.svg, (when given) training_curves.svg, and the page
/// of them all, report.html.
pub fn write_eval_report(
    dir: &RunDir,
    report: &EvalReport,
    curves: &[(String, Vec<EpochStats>)],
) -> Result<(), ReportError> {
    let rows = report.all_rows();
    write_atomic(&dir.results_md(), rows_markdown(&rows).as_bytes())?;
    write_atomic(&dir.results_csv(), rows_csv(&rows).as_bytes())?;
    write_atomic(&dir.matrix_csv(), matrix_csv(&report.matrix).as_bytes())?;
    crate::files::write_json(&dir.metrics(), report)?;
    plot_matrix(&report.matrix, &dir.matrix_plot())?;
    if !curves.is_empty() {
        plot_curves(curves, &dir.curves_plot())?;
    }
    write_html_report(dir.path())?;
    Ok(())
}
