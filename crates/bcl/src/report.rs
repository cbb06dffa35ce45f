//! Report: atomic file writes, the results table (Markdown, CSV, JSON) and SVG plots
//! (compatibility matrix heat map, training curves).

use std::io::Write;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::eval::CompatMatrix;
use crate::train::EpochStats;

/// Errors of writing reports.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file could not be written.
    #[error("{path}: cannot write: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
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

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, synced, then renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let io = |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut tmp = tempfile_in(dir, path).map_err(io)?;
    tmp.1.write_all(bytes).map_err(io)?;
    tmp.1.sync_all().map_err(io)?;
    std::fs::rename(&tmp.0, path).map_err(io)?;
    Ok(())
}

fn tempfile_in(dir: &Path, target: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let base = target.file_name().and_then(|s| s.to_str()).unwrap_or("out");
    for i in 0..1000u32 {
        let p = dir.join(format!(".{base}.{}.{i}.tmp", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
        {
            Ok(f) => return Ok((p, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free temporary file name"))
}

/// One row of the results table: a new model evaluated against the old gallery.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResultRow {
    /// Method name.
    pub method: String,
    /// mAP of the old model against itself (the baseline).
    pub old_old_map: f64,
    /// Self-test mAP `M(new→new)`.
    pub self_map: f64,
    /// Cross-test mAP `M(new→old)`.
    pub cross_map: f64,
    /// Self-test Recall@1.
    pub self_r1: f64,
    /// Cross-test Recall@1.
    pub cross_r1: f64,
    /// Whether `M(new→old) > M(old→old)` (mAP).
    pub compatible: bool,
    /// Update gain on mAP, when an independent model is there to define it.
    pub gain: Option<f64>,
}

/// Renders rows as a Markdown table.
pub fn rows_markdown(rows: &[ResultRow]) -> String {
    let mut s = String::from(
        "| method | old→old mAP | self mAP | cross mAP | self R@1 | cross R@1 | compatible | gain |\n|---|---:|---:|---:|---:|---:|:---:|---:|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {} | {} |\n",
            r.method,
            r.old_old_map,
            r.self_map,
            r.cross_map,
            r.self_r1,
            r.cross_r1,
            if r.compatible { "yes" } else { "no" },
            r.gain
                .map(|g| format!("{g:.3}"))
                .unwrap_or_else(|| "–".into())
        ));
    }
    s
}

/// Renders rows as CSV.
pub fn rows_csv(rows: &[ResultRow]) -> String {
    let mut s =
        String::from("method,old_old_map,self_map,cross_map,self_r1,cross_r1,compatible,gain\n");
    for r in rows {
        s.push_str(&format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:.6},{},{}\n",
            r.method,
            r.old_old_map,
            r.self_map,
            r.cross_map,
            r.self_r1,
            r.cross_r1,
            r.compatible,
            r.gain.map(|g| format!("{g:.6}")).unwrap_or_default()
        ));
    }
    s
}

/// Renders the compatibility matrix (mAP) as CSV, rows query model, columns gallery model.
pub fn matrix_csv(m: &CompatMatrix) -> String {
    let mut s = format!("query\\gallery,{}\n", m.models.join(","));
    for (q, row) in m.models.iter().zip(&m.cells) {
        let cells: Vec<String> = row.iter().map(|c| format!("{:.6}", c.map)).collect();
        s.push_str(&format!("{q},{}\n", cells.join(",")));
    }
    s
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
                let v = c.map.clamp(0.0, 1.0);
                let color = RGBColor((255.0 - 200.0 * v) as u8, (255.0 - 120.0 * v) as u8, 255);
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cell - 2, y0 + cell - 2)],
                    color.filled(),
                ))
                .map_err(|e| plot_err(path, e))?;
                root.draw(&Text::new(
                    format!("{:.3}", c.map),
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
    write_atomic(path, svg.as_bytes())
}

/// Draws the training loss of each model per epoch as SVG line plots.
pub fn plot_curves(curves: &[(String, Vec<EpochStats>)], path: &Path) -> Result<(), ReportError> {
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
    write_atomic(path, svg.as_bytes())
}
