//! The HTML report: one self-contained page (styles, script and plots inline; nothing is
//! fetched at view time) of a run directory (`bcl demo`, `bcl eval --out`) or an experiment
//! directory, built only from the files the run wrote, so that `bcl report DIR` regenerates it
//! at any time. Tables are rendered from the run's Markdown (pulldown-cmark, raw HTML in a file
//! shown as text) and sort on a click; plots are the run's SVG files as images.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use super::ReportError;
use crate::data::Scenario;
use crate::files::write_atomic;
use crate::layout::{ExperimentDir, ExperimentFile, ModelDir, RunDir};
use crate::perturb::RefreshStats;
use crate::table::{Column, Table};
use crate::train::EpochStats;

/// Largest text file (Markdown, CSV, configuration) a page inlines.
const MAX_TEXT: u64 = 4 << 20;
/// Largest plot a page inlines.
const MAX_SVG: u64 = 8 << 20;

/// What a directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// One protocol run or evaluation: results.md, matrix.csv, the models.
    Run,
    /// An experiment: experiment.toml, the aggregated tables, one run per (scenario, seed).
    Experiment,
}

/// One section of the page.
struct Section {
    id: &'static str,
    title: &'static str,
    body: String,
}

/// Writes `report.html` into `dir` (a run or experiment directory) and returns its path.
pub fn write_html_report(dir: &Path) -> Result<PathBuf, ReportError> {
    let page = html_report(dir)?;
    let path = RunDir::new(dir).html_report();
    write_atomic(&path, page.as_bytes())?;
    Ok(path)
}

/// Records in `dir` the command line that writes it (shown on the page as the way to reproduce
/// it), creating `dir` if needed.
pub fn record_command(dir: &Path, command: &str) -> Result<(), ReportError> {
    std::fs::create_dir_all(dir).map_err(|e| read_err(dir, format!("cannot create: {e}")))?;
    write_atomic(
        &RunDir::new(dir).command(),
        format!("{command}\n").as_bytes(),
    )?;
    Ok(())
}

/// The page of the run or experiment directory `dir`.
pub fn html_report(dir: &Path) -> Result<String, ReportError> {
    let kind = kind_of(dir)?;
    let mut sections = match kind {
        Kind::Run => run_sections(dir)?,
        Kind::Experiment => experiment_sections(dir)?,
    };
    sections.extend(tail_sections(dir, kind)?);
    let title = match kind {
        Kind::Run => "bcl run",
        Kind::Experiment => "bcl experiment",
    };
    Ok(page(title, dir, &sections))
}

fn kind_of(dir: &Path) -> Result<Kind, ReportError> {
    if ExperimentDir::new(dir).config().is_file() {
        return Ok(Kind::Experiment);
    }
    let run = RunDir::new(dir);
    if run.results_csv().is_file() || run.metrics().is_file() {
        return Ok(Kind::Run);
    }
    Err(read_err(
        dir,
        "not a run or experiment directory: it holds neither experiment.toml nor results.csv \
         (give the directory `bcl demo`, `bcl eval --out` or `bcl experiment --out` wrote)"
            .into(),
    ))
}

fn read_err(path: &Path, reason: String) -> ReportError {
    ReportError::Read {
        path: path.to_path_buf(),
        reason,
    }
}

/// The text of `path`: `None` where it does not exist, an error where it cannot be read or is
/// too large to inline.
fn read_text(path: &Path) -> Result<Option<String>, ReportError> {
    let Some(bytes) = read_bounded(path, MAX_TEXT)? else {
        return Ok(None);
    };
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| read_err(path, "not UTF-8 text".into()))
}

fn read_bounded(path: &Path, max: u64) -> Result<Option<Vec<u8>>, ReportError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) if m.is_file() => m,
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(path, e.to_string())),
    };
    if meta.len() > max {
        return Err(read_err(
            path,
            format!(
                "{} bytes, more than the {} a report inlines",
                meta.len(),
                max
            ),
        ));
    }
    std::fs::read(path)
        .map(Some)
        .map_err(|e| read_err(path, e.to_string()))
}

/// Escapes text for HTML content and attribute values (pulldown-cmark keeps its escaper to
/// itself).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Markdown to HTML (tables on); any raw HTML in the file is shown as text, and its headings
/// sit two levels down (a file's `#` is an `h3` under the section's `h2`).
fn markdown(md: &str) -> String {
    use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};
    let down = |l: HeadingLevel| HeadingLevel::try_from((l as usize + 2).min(6)).unwrap_or(l);
    let parser = Parser::new_ext(md, Options::ENABLE_TABLES).map(|e| match e {
        Event::Html(s) | Event::InlineHtml(s) => Event::Text(s),
        Event::Start(Tag::Heading {
            level,
            id,
            classes,
            attrs,
        }) => Event::Start(Tag::Heading {
            level: down(level),
            id,
            classes,
            attrs,
        }),
        Event::End(TagEnd::Heading(level)) => Event::End(TagEnd::Heading(down(level))),
        e => e,
    });
    let mut out = String::new();
    pulldown_cmark::html::push_html(&mut out, parser);
    out
}

/// A file the page only shows (Markdown, a plot, configuration, the command): where it cannot
/// be shown (unreadable, not UTF-8, too large to inline) the page says so in its place, and the
/// rest of the page is still written. (Files the page reads figures from, the CSV tables and
/// the models' records, are errors instead.)
fn shown(read: Result<String, ReportError>) -> Result<String, ReportError> {
    Ok(read.unwrap_or_else(|e| {
        format!(
            "<p class=\"skipped\">not shown: {}</p>\n",
            escape(&e.to_string())
        )
    }))
}

/// A Markdown file as HTML, under a caption naming the file; empty where it does not exist.
fn markdown_file(path: &Path) -> Result<String, ReportError> {
    shown(read_text(path).map(|t| match t {
        Some(md) => format!(
            "<div class=\"file\" data-file=\"{}\">{}</div>\n",
            escape(&file_name(path)),
            markdown(&md)
        ),
        None => String::new(),
    }))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// An SVG file as an inline image (a data URL: its scripts, if any, never run); empty where it
/// does not exist.
fn svg_file(path: &Path, alt: &str) -> Result<String, ReportError> {
    shown(read_bounded(path, MAX_SVG).map(|b| match b {
        Some(bytes) => svg_figure(&bytes, alt, &file_name(path)),
        None => String::new(),
    }))
}

fn svg_figure(svg: &[u8], alt: &str, caption: &str) -> String {
    format!(
        "<figure><img alt=\"{}\" src=\"data:image/svg+xml;base64,{}\"><figcaption>{}</figcaption></figure>\n",
        escape(alt),
        base64::engine::general_purpose::STANDARD.encode(svg),
        escape(caption)
    )
}

/// A preformatted block of a text file (configuration, command), with its name.
fn text_block(path: &Path) -> Result<String, ReportError> {
    shown(read_text(path).map(|t| match t {
        Some(t) => format!(
            "<p class=\"name\">{}</p><pre>{}</pre>\n",
            escape(&file_name(path)),
            escape(&t)
        ),
        None => String::new(),
    }))
}

/// The sections of a run directory.
fn run_sections(dir: &Path) -> Result<Vec<Section>, ReportError> {
    let run = RunDir::new(dir);
    let mut out = Vec::new();
    if let Some(csv) = read_text(&run.results_csv())? {
        out.push(Section {
            id: "verdict",
            title: "Verdict",
            body: verdicts(&csv, &run.results_csv())?,
        });
    }
    out.push(Section {
        id: "results",
        title: "Results",
        body: markdown_file(&run.results_md())?,
    });
    let mut matrix = String::new();
    if let Some(csv) = read_text(&run.matrix_csv())? {
        matrix.push_str(&heat_map(&csv, &run.matrix_csv())?);
    }
    let plot = svg_file(&run.matrix_plot(), "compatibility matrix")?;
    if !plot.is_empty() {
        writeln!(
            matrix,
            "<details><summary>as plotted</summary>{plot}</details>"
        )
        .expect("writing to a String");
    }
    if !matrix.is_empty() {
        matrix.insert_str(
            0,
            "<p>mAP of each query model (rows) searching each gallery model's embeddings (columns).</p>\n",
        );
    }
    out.push(Section {
        id: "matrix",
        title: "Compatibility matrix",
        body: matrix,
    });
    let models = model_dirs(&run)?;
    out.push(Section {
        id: "curves",
        title: "Training curves",
        body: curves(&run, &models)?,
    });
    out.push(Section {
        id: "diagnostics",
        title: "Refresh diagnostics",
        body: refresh_diagnostics(&run, &models)?,
    });
    Ok(out)
}

/// One line per method: compatible or not, with the margin the criterion reads.
fn verdicts(csv: &str, path: &Path) -> Result<String, ReportError> {
    let mut r = csv::Reader::from_reader(csv.as_bytes());
    let headers = r
        .headers()
        .map_err(|e| read_err(path, e.to_string()))?
        .clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| read_err(path, format!("no column '{name}'")))
    };
    let (m, cross, old, compat) = (
        col("method")?,
        col("cross_map")?,
        col("old_old_map")?,
        col("compatible")?,
    );
    let mut items = String::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| read_err(path, e.to_string()))?;
        let num = |i: usize| -> Result<f64, ReportError> {
            rec.get(i)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| read_err(path, format!("row '{}': not a number", &rec[m])))
        };
        let (c, o) = (num(cross)?, num(old)?);
        let yes = rec.get(compat) == Some("true");
        writeln!(
            items,
            "<li class=\"{}\"><b>{}</b>: {} (cross-test {c:.4}, old→old {o:.4}, margin <span class=\"margin\">{:+.4}</span>)</li>",
            if yes { "yes" } else { "no" },
            escape(&rec[m]),
            if yes { "compatible" } else { "not compatible" },
            c - o
        )
        .expect("writing to a String");
    }
    Ok(format!(
        "<p class=\"criterion\">{}</p>\n<ul class=\"verdicts\">\n{items}</ul>\n",
        escape(crate::eval::CRITERION)
    ))
}

/// The compatibility matrix's CSV as a table whose cells are shaded by value.
fn heat_map(csv: &str, path: &Path) -> Result<String, ReportError> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(csv.as_bytes());
    let headers = r
        .headers()
        .map_err(|e| read_err(path, e.to_string()))?
        .clone();
    let mut rows = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| read_err(path, e.to_string()))?;
        let name = rec.get(0).unwrap_or_default().to_string();
        let cells = (1..headers.len())
            .map(|i| rec.get(i).and_then(|v| v.parse::<f64>().ok()))
            .collect::<Vec<_>>();
        rows.push((name, cells));
    }
    let values = rows.iter().flat_map(|(_, c)| c.iter().flatten().copied());
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let mut h = String::from("<table class=\"heat\"><thead><tr>");
    for name in headers.iter() {
        write!(h, "<th>{}</th>", escape(name)).expect("writing to a String");
    }
    h.push_str("</tr></thead><tbody>\n");
    for (name, cells) in &rows {
        write!(h, "<tr><th scope=\"row\">{}</th>", escape(name)).expect("writing to a String");
        for c in cells {
            match c {
                Some(v) => {
                    let t = if hi > lo { (v - lo) / (hi - lo) } else { 1.0 };
                    let light = 95.0 - 55.0 * t;
                    let ink = if light < 60.0 { "#fff" } else { "#111" };
                    write!(
                        h,
                        "<td style=\"background:hsl(210,65%,{light:.0}%);color:{ink}\">{v:.4}</td>"
                    )
                    .expect("writing to a String");
                }
                None => h.push_str("<td class=\"empty\">–</td>"),
            }
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</tbody></table>\n");
    Ok(h)
}

/// The model directories of a run: `old/` first, then the others by name.
fn model_dirs(run: &RunDir) -> Result<Vec<(String, ModelDir)>, ReportError> {
    let mut dirs: Vec<(String, ModelDir)> = entries(run.path())?
        .into_iter()
        .map(|(name, p)| (name, ModelDir::new(p)))
        .filter(|(_, d)| d.history().is_file())
        .collect();
    let old = run.old();
    dirs.sort_by(|a, b| (a.1 != old).cmp(&(b.1 != old)).then_with(|| a.0.cmp(&b.0)));
    Ok(dirs)
}

/// The run's training curves: its plot where it has one, else drawn from the models' histories.
fn curves(run: &RunDir, models: &[(String, ModelDir)]) -> Result<String, ReportError> {
    let plot = svg_file(&run.curves_plot(), "training curves")?;
    if !plot.is_empty() {
        return Ok(plot);
    }
    let mut curves = Vec::new();
    for (name, d) in models {
        if let Some(h) = read_text(&d.history())? {
            let stats: Vec<EpochStats> = serde_json::from_str(&h)
                .map_err(|e| read_err(&d.history(), format!("not a training history: {e}")))?;
            curves.push((name.clone(), stats));
        }
    }
    if curves.is_empty() {
        return Ok(String::new());
    }
    let svg = super::curves_svg(&curves, &run.curves_plot())?;
    Ok(svg_figure(
        svg.as_bytes(),
        "training curves",
        "training loss per epoch, from each model's history.json",
    ))
}

/// Each refreshing model's refreshes as a table, and the run's prototype plots.
fn refresh_diagnostics(run: &RunDir, models: &[(String, ModelDir)]) -> Result<String, ReportError> {
    let mut body = String::new();
    for (name, d) in models {
        let Some(text) = read_text(&d.refreshes())? else {
            continue;
        };
        let stats: Vec<RefreshStats> = serde_json::from_str(&text)
            .map_err(|e| read_err(&d.refreshes(), format!("not a refresh record: {e}")))?;
        if stats.is_empty() {
            continue;
        }
        let mut t = Table::new([
            Column::number("refresh"),
            Column::number("epoch"),
            Column::number("mean ‖δ‖"),
            Column::number("max ‖δ‖"),
            Column::number("NN sim old"),
            Column::number("NN sim pseudo-old"),
            Column::number("own-nearest"),
            Column::text("J before → after"),
            Column::number("seconds"),
        ]);
        for (i, s) in stats.iter().enumerate() {
            t.push(vec![
                (i + 1).to_string(),
                s.epoch.to_string(),
                format!("{:.4}", s.mean_delta),
                format!("{:.4}", s.max_delta),
                format!("{:.4}", s.nn_sim_before),
                format!("{:.4}", s.nn_sim_after),
                format!("{:.3}", s.own_nearest_share),
                match (s.j_before, s.j_after) {
                    (Some(a), Some(b)) => format!("{a:.4} → {b:.4}"),
                    _ => "–".into(),
                },
                format!("{:.2}", s.seconds),
            ]);
        }
        write!(
            body,
            "<h3>{}</h3>\n{}",
            escape(name),
            markdown(&t.markdown())
        )
        .expect("writing to a String");
    }
    body.push_str(&prototype_plots(run)?);
    Ok(body)
}

/// The run's plots of old against pseudo-old prototypes (`prototypes-<method>.svg`).
fn prototype_plots(run: &RunDir) -> Result<String, ReportError> {
    let mut body = String::new();
    for (name, path) in svgs_in(run.path())? {
        if name.starts_with("prototypes-") {
            body.push_str(&svg_file(&path, "old against pseudo-old prototypes")?);
        }
    }
    Ok(body)
}

/// The entries of `dir` (name and path), by name.
fn entries(dir: &Path) -> Result<Vec<(String, PathBuf)>, ReportError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| read_err(dir, e.to_string()))? {
        let e = e.map_err(|e| read_err(dir, e.to_string()))?;
        out.push((e.file_name().to_string_lossy().into_owned(), e.path()));
    }
    out.sort();
    Ok(out)
}

/// The seeds of the `seed-<N>` directories in `dir`, in order (none where `dir` is absent).
fn seeds_in(dir: &Path) -> Result<Vec<u64>, ReportError> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut seeds: Vec<u64> = entries(dir)?
        .iter()
        .filter_map(|(name, _)| ExperimentDir::seed_of(name))
        .collect();
    seeds.sort_unstable();
    Ok(seeds)
}

/// The `.svg` files directly in `dir`, by name.
fn svgs_in(dir: &Path) -> Result<Vec<(String, PathBuf)>, ReportError> {
    files_in(dir, "svg")
}

fn files_in(dir: &Path, ext: &str) -> Result<Vec<(String, PathBuf)>, ReportError> {
    Ok(entries(dir)?
        .into_iter()
        .filter(|(_, p)| p.is_file() && p.extension().is_some_and(|x| x == ext))
        .collect())
}

/// The sections of an experiment directory: the protocol's verdict first, then the tables
/// over seeds, the oracle frontier, deployment, the runs.
fn experiment_sections(dir: &Path) -> Result<Vec<Section>, ReportError> {
    let exp = ExperimentDir::new(dir);
    let scenarios = scenarios_in(dir)?;
    let mut used: Vec<PathBuf> = Vec::new();
    let md = |f: ExperimentFile, used: &mut Vec<PathBuf>| -> Result<String, ReportError> {
        let p = exp.file(f);
        used.push(p.clone());
        markdown_file(&p)
    };
    let svg = |p: PathBuf, alt: &str, used: &mut Vec<PathBuf>| -> Result<String, ReportError> {
        let s = svg_file(&p, alt)?;
        used.push(p);
        Ok(s)
    };
    let mut out = Vec::new();
    let mut body = md(ExperimentFile::SelectionMd, &mut used)?;
    for s in &scenarios {
        body.push_str(&svg(
            exp.selection_plot(s),
            "chosen settings on the report seeds",
            &mut used,
        )?);
        body.push_str(&svg(
            exp.selection_grids_plot(s),
            "grids on the selection seeds (validation)",
            &mut used,
        )?);
    }
    out.push(Section {
        id: "selection",
        title: "Verdict under the protocol (chosen on validation, reported on fresh seeds)",
        body,
    });
    out.push(Section {
        id: "results",
        title: "Results over seeds",
        body: md(ExperimentFile::ResultsMd, &mut used)?,
    });
    out.push(Section {
        id: "paired",
        title: "Paired differences",
        body: md(ExperimentFile::PairedMd, &mut used)?,
    });
    let mut body = md(ExperimentFile::FrontierMd, &mut used)?;
    for s in &scenarios {
        body.push_str(&svg(exp.frontier_plot(s), "frontier", &mut used)?);
    }
    out.push(Section {
        id: "frontier",
        title: "Frontier",
        body,
    });
    let mut body = md(ExperimentFile::BackfillMd, &mut used)?;
    for s in &scenarios {
        body.push_str(&svg(exp.backfill_plot(s), "backfill curve", &mut used)?);
    }
    out.push(Section {
        id: "backfill",
        title: "Backfill curve and flips",
        body,
    });
    let mut body = md(ExperimentFile::SequentialMd, &mut used)?;
    if !body.is_empty() {
        body.push_str(&sequential_plots(&exp)?);
    }
    out.push(Section {
        id: "sequential",
        title: "Sequential upgrades",
        body,
    });
    out.push(Section {
        id: "benchmarks",
        title: "Benchmarks",
        body: md(ExperimentFile::BenchmarksMd, &mut used)?,
    });
    out.push(Section {
        id: "diagnostics",
        title: "Refresh diagnostics",
        body: md(ExperimentFile::DiagnosticsMd, &mut used)?,
    });
    let mut other = String::new();
    for (_, p) in files_in(dir, "md")? {
        if !used.contains(&p) {
            other.push_str(&markdown_file(&p)?);
        }
    }
    for (name, p) in svgs_in(dir)? {
        if !used.contains(&p) {
            other.push_str(&svg_file(&p, &name)?);
        }
    }
    out.push(Section {
        id: "other",
        title: "Other tables and plots",
        body: other,
    });
    out.push(Section {
        id: "runs",
        title: "Runs",
        body: runs(&exp, &scenarios)?,
    });
    Ok(out)
}

/// Each seed's chain matrices (`sequential/seed-N/matrix-<method>.svg`), seeds in order.
fn sequential_plots(exp: &ExperimentDir) -> Result<String, ReportError> {
    let seeds = match exp.sequential(0).path().parent() {
        Some(dir) => seeds_in(dir)?,
        None => Vec::new(),
    };
    let mut body = String::new();
    for seed in seeds {
        let d = exp.sequential(seed);
        for (name, p) in svgs_in(d.path())? {
            body.push_str(&svg_file(&p, &format!("seed {seed}: {name}"))?);
        }
    }
    Ok(body)
}

/// The scenarios an experiment directory holds runs of, by name.
fn scenarios_in(dir: &Path) -> Result<Vec<String>, ReportError> {
    Ok(entries(dir)?
        .into_iter()
        .filter(|(name, p)| p.is_dir() && name.parse::<Scenario>().is_ok())
        .map(|(name, _)| name)
        .collect())
}

/// Each run of the experiment, folded: its matrix, prototype plots and training curves.
fn runs(exp: &ExperimentDir, scenarios: &[String]) -> Result<String, ReportError> {
    let mut body = String::new();
    for s in scenarios {
        for seed in seeds_in(&exp.path().join(s))? {
            let run = exp.run(s, seed);
            let models = model_dirs(&run)?;
            let names = models
                .iter()
                .map(|(n, _)| escape(n))
                .collect::<Vec<_>>()
                .join(", ");
            writeln!(
                body,
                "<details><summary>{} ({} models: {names})</summary>",
                escape(&ExperimentDir::run_key(s, seed)),
                models.len()
            )
            .expect("writing to a String");
            body.push_str(&svg_file(&run.matrix_plot(), "compatibility matrix")?);
            body.push_str(&prototype_plots(&run)?);
            body.push_str(&curves(&run, &models)?);
            body.push_str("</details>\n");
        }
    }
    Ok(body)
}

/// The configuration and the command, last on every page.
fn tail_sections(dir: &Path, kind: Kind) -> Result<Vec<Section>, ReportError> {
    let run = RunDir::new(dir);
    let config = match kind {
        Kind::Run => run.config(),
        Kind::Experiment => ExperimentDir::new(dir).config(),
    };
    let mut command = shown(read_text(&run.command()).map(|c| match c {
        Some(c) => format!(
            "<p>The command that wrote this directory:</p><pre><code id=\"command-line\">{}</code></pre>\n",
            escape(c.trim_end())
        ),
        None => String::new(),
    }))?;
    if kind == Kind::Experiment {
        let d = dir.display().to_string();
        let (cfg, out) = (
            ExperimentDir::new(dir).config().display().to_string(),
            d.clone(),
        );
        writeln!(
            command,
            "<p>From its resolved configuration (resumes: finished models are reused):</p><pre><code>bcl experiment --config {} --out {}</code></pre>",
            escape(&cfg),
            escape(&out)
        )
        .expect("writing to a String");
    }
    writeln!(
        command,
        "<p>Regenerate this page: <code>bcl report {}</code></p>",
        escape(&dir.display().to_string())
    )
    .expect("writing to a String");
    Ok(vec![
        Section {
            id: "config",
            title: "Configuration",
            body: text_block(&config)?,
        },
        Section {
            id: "command",
            title: "Reproduce",
            body: command,
        },
    ])
}

/// The whole page: sections with content, in order, with a table of contents.
fn page(title: &str, dir: &Path, sections: &[Section]) -> String {
    let shown = sections
        .iter()
        .filter(|s| !s.body.trim().is_empty())
        .collect::<Vec<_>>();
    let mut h = String::new();
    write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t}: {d}</title><style>{STYLE}</style></head>\n<body>\n\
         <header><h1>{t}</h1><p class=\"dir\">{d}</p><p class=\"gen\">written by bcl {v}</p>\n<nav>",
        t = escape(title),
        d = escape(&dir.display().to_string()),
        v = env!("CARGO_PKG_VERSION"),
    )
    .expect("writing to a String");
    for s in &shown {
        write!(h, "<a href=\"#{}\">{}</a> ", s.id, escape(s.title)).expect("writing to a String");
    }
    h.push_str("</nav></header>\n<main>\n");
    for s in &shown {
        writeln!(
            h,
            "<section id=\"{}\"><h2>{}</h2>\n{}</section>",
            s.id,
            escape(s.title),
            s.body
        )
        .expect("writing to a String");
    }
    writeln!(h, "</main>\n<script>{SCRIPT}</script>\n</body></html>").expect("writing to a String");
    h
}

const STYLE: &str = "\
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#111;background:#fafafa}\
header{padding:1em 1.2em;background:#fff;border-bottom:1px solid #ddd}\
h1{margin:0;font-size:1.5em}.dir,.gen{margin:.2em 0;color:#555;word-break:break-all}\
nav a{margin-right:.8em;display:inline-block}main{padding:0 1.2em 2em;max-width:1100px}\
section{margin-top:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em}\
table{border-collapse:collapse;margin:.6em 0;display:block;overflow-x:auto;max-width:100%}\
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right;white-space:nowrap}\
th{background:#f0f0f0}thead th{cursor:pointer}td:first-child,th:first-child{text-align:left}\
th[aria-sort=ascending]::after{content:' \\25B2'}th[aria-sort=descending]::after{content:' \\25BC'}\
td.yes,li.yes{color:#176b2c}td.no,li.no{color:#a3261b}ul.verdicts{padding-left:1.2em}\
.criterion{color:#333;font-style:italic}.skipped{color:#a3261b}\
figure{margin:1em 0;overflow-x:auto}figure img{max-width:100%;min-width:480px;height:auto;\
background:#fff;border:1px solid #eee}\
figcaption{color:#666;font-size:.85em}pre{background:#fff;border:1px solid #ddd;padding:.6em;\
overflow-x:auto;max-width:100%}details{margin:.4em 0}summary{cursor:pointer}";

/// Sortable tables (a click on a header; `#sort=<section>:<column>:<asc|desc>` in the address
/// sorts a section's first table on load), and the verdict cells coloured.
const SCRIPT: &str = r#"(function(){
function key(t){var m=t.replace(/[\u2212\u2013]/g,'-').match(/^\s*([+-]?\d+(?:\.\d+)?(?:e[+-]?\d+)?)/i);return m?parseFloat(m[1]):null;}
function sortTable(table,col,dir){var tb=table.tBodies[0];if(!tb||!table.tHead)return;
var rows=Array.prototype.slice.call(tb.rows);
rows.sort(function(a,b){var x=a.cells[col]?a.cells[col].textContent:'',y=b.cells[col]?b.cells[col].textContent:'';
var kx=key(x),ky=key(y),c;if(kx!==null&&ky!==null)c=kx-ky;else if(kx!==null)c=-1;else if(ky!==null)c=1;else c=x.localeCompare(y);
return dir==='desc'?-c:c;});
rows.forEach(function(r){tb.appendChild(r);});
Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,i){th.setAttribute('aria-sort',i===col?(dir==='desc'?'descending':'ascending'):'none');});}
Array.prototype.forEach.call(document.querySelectorAll('table'),function(t){if(!t.tHead)return;
Array.prototype.forEach.call(t.tHead.rows[0].cells,function(th,i){th.tabIndex=0;th.title='sort by this column';
function go(){sortTable(t,i,th.getAttribute('aria-sort')==='ascending'?'desc':'asc');}
th.addEventListener('click',go);th.addEventListener('keydown',function(e){if(e.key==='Enter')go();});});});
Array.prototype.forEach.call(document.querySelectorAll('td'),function(td){var v=td.textContent.trim();if(v==='yes')td.className='yes';else if(v==='no')td.className='no';});
var m=/sort=([\w-]+):(\d+):(asc|desc)/.exec(location.hash);
if(m){var s=document.getElementById(m[1]);var t=s&&s.querySelector('table');if(t)sortTable(t,+m[2],m[3]);}
})();"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_html_in_a_markdown_file_is_shown_as_text() {
        let h =
            markdown("| a | b |\n|---|---|\n| <script>x</script> | 1 |\n\n<img src=x onerror=y>\n");
        assert!(!h.contains("<script>") && !h.contains("<img"), "{h}");
        assert!(h.contains("&lt;script&gt;") && h.contains("<table>"), "{h}");
        let h = markdown("# Title\n\n## Part\n\n##### Deep\n");
        assert!(
            h.contains("<h3>Title</h3>")
                && h.contains("<h4>Part</h4>")
                && h.contains("<h6>Deep</h6>"),
            "{h}"
        );
    }

    #[test]
    fn the_heat_map_keeps_every_cell_and_leaves_unreached_ones_empty() {
        let csv = "query\\gallery,old,new-bct\nold,0.250000,\nnew-bct,0.300000,0.500000\n";
        let h = heat_map(csv, Path::new("matrix.csv")).unwrap();
        assert!(
            h.contains(">0.2500</td>") && h.contains(">0.3000</td>") && h.contains(">0.5000</td>")
        );
        assert_eq!(h.matches("class=\"empty\"").count(), 1, "{h}");
        // the lowest value is lightest, the highest darkest
        assert!(h.contains("hsl(210,65%,95%);color:#111\">0.2500"), "{h}");
        assert!(h.contains("hsl(210,65%,40%);color:#fff\">0.5000"), "{h}");
    }

    #[test]
    fn verdicts_state_the_margin_and_refuse_a_table_without_the_criterion_columns() {
        let csv = "method,old_old_map,self_map,cross_map,self_r1,cross_r1,compatible,gain\n\
                   bct,0.300000,0.400000,0.320000,0.5,0.4,true,0.2\n\
                   independent,0.300000,0.450000,0.100000,0.5,0.1,false,\n";
        let h = verdicts(csv, Path::new("results.csv")).unwrap();
        assert!(
            h.contains("<b>bct</b>: compatible") && h.contains("+0.0200"),
            "{h}"
        );
        assert!(
            h.contains("<b>independent</b>: not compatible") && h.contains("-0.2000"),
            "{h}"
        );
        let e = verdicts("method,x\nbct,1\n", Path::new("results.csv")).unwrap_err();
        assert!(
            e.to_string().contains("results.csv") && e.to_string().contains("cross_map"),
            "{e}"
        );
    }
}
