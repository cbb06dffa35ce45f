//! The HTML report in a real browser (Debian's `chromium`, headless): a demo's and an
//! experiment's page load with no console message, show the run's numbers (read back from the
//! DOM against the run's CSV files), sort a table, and draw a non-blank page in a narrow
//! window; `bcl report` regenerates the same page from the directory's files and refuses a
//! directory that holds no run.
//!
//! Without Chromium the browser checks skip with a message, unless `BCL_REQUIRE_BROWSER` is
//! set (CI sets it).

use std::path::Path;
use std::process::Command;

#[path = "../../bcl/tests/common/browser.rs"]
mod browser;
use browser::{assert_not_blank, chromium, element_text, table_rows, url_of};

fn bcl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bcl"))
}

fn run_ok(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn csv_rows(path: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    lines
        .map(|l| {
            header
                .iter()
                .cloned()
                .zip(l.split(',').map(str::to_string))
                .collect()
        })
        .collect()
}

fn tiny_data(dir: &Path, validation: bool) -> String {
    let (tr, te) = bcl::data::synthetic(4, 60, 10, 3);
    bcl::data::write_idx_dir(&dir.join("d"), &tr, &te).unwrap();
    let holdout = if validation {
        "train_per_class = 45\nvalidation_per_class = 15\n"
    } else {
        ""
    };
    format!(
        "dir = {:?}\nclasses = 4\n{holdout}",
        dir.join("d").display().to_string()
    )
}

#[test]
fn a_demo_page_shows_its_numbers_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "methods = [\"independent\", \"bct\", \"ndpp\"]\n[data]\n{}[model]\nwidth = 4\ndim = 8\n\
             [old]\nepochs = 2\nbatch_size = 16\n[new]\nepochs = 2\nbatch_size = 16\n\
             [compat.refresh]\nbank_per_class = 10\n",
            tiny_data(dir.path(), false)
        ),
    )
    .unwrap();
    let out = dir.path().join("run");
    run_ok(
        bcl()
            .args(["demo", "--device", "cpu", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(&out),
    );
    let page = out.join("report.html");
    let written = std::fs::read(&page).unwrap();
    // the page is built from the directory's files alone: regenerated, it is the same page
    std::fs::remove_file(&page).unwrap();
    let said = run_ok(bcl().arg("report").arg(&out));
    assert_eq!(said.trim(), page.display().to_string());
    assert_eq!(std::fs::read(&page).unwrap(), written);

    // the recorded command reproduces the run
    let command = std::fs::read_to_string(out.join("command.txt")).unwrap();
    assert!(
        command.starts_with("bcl demo --device cpu --config ")
            && command.trim_end().ends_with(&out.display().to_string()),
        "{command}"
    );

    let Some(browser) = chromium() else { return };
    let dom = browser::dom(&browser, &url_of(&page));
    let results = csv_rows(&out.join("results.csv"));
    assert_eq!(results.len(), 3);
    let verdict = element_text(&dom, "<section id=\"verdict\"", "</section>").unwrap();
    let shown = table_rows(&dom, "<section id=\"results\"");
    for r in &results {
        let (cross, old): (f64, f64) = (
            r["cross_map"].parse().unwrap(),
            r["old_old_map"].parse().unwrap(),
        );
        let row = shown
            .iter()
            .find(|row| row[0] == r["method"])
            .unwrap_or_else(|| panic!("no row for {} in {shown:?}", r["method"]));
        assert_eq!(row[3], format!("{cross:.4}"), "{row:?}");
        assert_eq!(row[1], format!("{old:.4}"), "{row:?}");
        let line = verdict
            .lines()
            .find(|l| l.contains(&format!("{} :", r["method"])))
            .unwrap_or_else(|| panic!("no verdict for {}: {verdict}", r["method"]));
        assert!(
            line.contains(&format!("margin  {:+.4}", cross - old)),
            "{line}"
        );
        let compatible = r["compatible"] == "true";
        assert_eq!(!line.contains("not compatible"), compatible, "{line}");
    }
    // the matrix as a heat map: every cell of matrix.csv, shaded
    let heat = element_text(&dom, "<table class=\"heat\"", "</table>").unwrap();
    let matrix = std::fs::read_to_string(out.join("matrix.csv")).unwrap();
    for v in matrix.lines().skip(1).flat_map(|l| l.split(',').skip(1)) {
        let v: f64 = v.parse().unwrap();
        assert!(heat.contains(&format!("{v:.4}")), "{v} not in {heat}");
    }
    assert!(dom.contains("background:hsl("));
    // training curves, refresh diagnostics (ndpp), configuration, command
    let curves = element_text(&dom, "<section id=\"curves\"", "</section>").unwrap();
    assert!(
        dom[dom.find("<section id=\"curves\"").unwrap()..].contains("data:image/svg+xml;base64,"),
        "{curves}"
    );
    let diag = element_text(&dom, "<section id=\"diagnostics\"", "</section>").unwrap();
    assert!(
        diag.contains("new-ndpp") && diag.contains("mean ‖δ‖"),
        "{diag}"
    );
    let config = element_text(&dom, "<section id=\"config\"", "</section>").unwrap();
    assert!(
        config.contains("[data]") && config.contains("dim = 8"),
        "{config}"
    );
    let cmd = element_text(&dom, "<code id=\"command-line\"", "</code>").unwrap();
    assert_eq!(cmd.trim(), command.trim());

    // a sort asked for in the address: cross mAP (column 3), descending
    let sorted = dom_sorted(&browser, &page, "#sort=results:3:desc");
    let crosses = sorted
        .iter()
        .map(|r| r[3].parse::<f64>().unwrap())
        .collect::<Vec<_>>();
    assert!(crosses.windows(2).all(|w| w[0] >= w[1]), "{crosses:?}");
    let ascending = dom_sorted(&browser, &page, "#sort=results:3:asc");
    assert_eq!(ascending.iter().rev().cloned().collect::<Vec<_>>(), sorted);

    assert_not_blank(&browser, &url_of(&page), 400);
    assert_not_blank(&browser, &url_of(&page), 1100);
}

fn dom_sorted(browser: &Path, page: &Path, fragment: &str) -> Vec<Vec<String>> {
    let d = browser::dom(browser, &format!("{}{fragment}", url_of(page)));
    let dir = if fragment.ends_with("desc") {
        "descending"
    } else {
        "ascending"
    };
    assert!(d.contains(&format!("aria-sort=\"{dir}\"")), "not sorted");
    table_rows(&d, "<section id=\"results\"")
}

#[test]
fn an_experiment_page_shows_its_verdict_and_runs_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("e.toml");
    std::fs::write(
        &cfg,
        format!(
            "scenarios = [\"extended-data\"]\nmethods = [\"independent\", \"bct\", \"ndpp\"]\n\
             seeds = [1, 2]\n[base.data]\n{}[base.model]\nwidth = 4\ndim = 16\n\
             [base.old]\nepochs = 1\nbatch_size = 32\nlr = 0.05\n\
             [base.new]\nepochs = 2\nbatch_size = 32\nlr = 0.05\n\
             [base.compat.refresh]\nbank_per_class = 10\n\
             [backfill]\nfractions = [0.0, 0.5, 1.0]\nmethods = [\"bct\"]\nseed = 0\n\
             [sequential]\nfractions = [0.5, 1.0]\nmethods = [\"bct\"]\nseeds = [1]\n\
             [selection]\nseeds = [11]\nreference = \"bct\"\n\
             [[selection.grids]]\nmethod = \"bct\"\nknob = \"lambda\"\nvalues = [4.0]\n\
             [[selection.grids]]\nmethod = \"ndpp\"\nknob = \"ndpp-eps\"\nvalues = [0.1]\n",
            tiny_data(dir.path(), true)
        ),
    )
    .unwrap();
    let out = dir.path().join("exp");
    let said = run_ok(
        bcl()
            .args(["experiment", "--device", "cpu", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(&out),
    );
    let page = out.join("report.html");
    assert!(said.contains(&page.display().to_string()), "{said}");
    let written = std::fs::read(&page).unwrap();
    run_ok(bcl().arg("report").arg(&out));
    assert_eq!(std::fs::read(&page).unwrap(), written);

    let Some(browser) = chromium() else { return };
    let dom = browser::dom(&browser, &url_of(&page));
    for id in [
        "selection",
        "results",
        "paired",
        "backfill",
        "sequential",
        "diagnostics",
        "runs",
        "config",
        "command",
    ] {
        assert!(
            dom.contains(&format!("<section id=\"{id}\"")),
            "no section {id}"
        );
    }
    // the chain's matrix, as the experiment plotted it
    let seq = element_text(&dom, "<section id=\"sequential\"", "</section>").unwrap();
    assert!(seq.contains("matrix-bct.svg"), "{seq}");
    // the protocol's verdict: each compared method's chosen setting, from selection.json
    let selection: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("selection.json")).unwrap())
            .unwrap();
    let verdict = element_text(&dom, "<section id=\"selection\"", "</section>").unwrap();
    assert!(
        verdict.contains("Settings chosen on validation"),
        "{verdict}"
    );
    let reported = selection["report"].as_array().unwrap();
    assert!(!reported.is_empty());
    for r in reported {
        let method = r["method"].as_str().unwrap();
        assert!(
            verdict.contains(&format!(" {method} ")),
            "{method}: {verdict}"
        );
        if r["setting"].is_null() {
            continue;
        }
        // the chosen setting's mean test self-test mAP over the report seeds
        let tests = r["test"].as_object().unwrap();
        let mean = tests
            .values()
            .map(|t| t["self_map"].as_f64().unwrap())
            .sum::<f64>()
            / tests.len() as f64;
        assert!(
            verdict.contains(&format!("{mean:.4}")),
            "{method}: {mean} not in {verdict}"
        );
    }
    // the table over seeds: each method's mean self-test mAP as results.csv has it
    let shown = table_rows(&dom, "<section id=\"results\"");
    for r in csv_rows(&out.join("results.csv")) {
        let method = &r["method"];
        let row = shown
            .iter()
            .find(|row| &row[1] == method || &row[0] == method)
            .unwrap_or_else(|| panic!("no row for {method} in {shown:?}"));
        let self_map: f64 = r["self_map"].parse().unwrap();
        assert!(
            row.iter().any(|c| c.starts_with(&format!("{self_map:.4}"))),
            "{method}: {self_map} not in {row:?}"
        );
    }
    // one folded entry per run: report seeds and the selection seed
    let runs = element_text(&dom, "<section id=\"runs\"", "</section>").unwrap();
    for key in [
        "extended-data/seed-1 ",
        "extended-data/seed-2 ",
        "extended-data/seed-11 ",
    ] {
        assert!(runs.contains(key), "{key} missing: {runs}");
    }
    assert!(dom.contains("bcl experiment --config"));
    assert_not_blank(&browser, &url_of(&page), 400);
}

#[test]
fn report_refuses_a_directory_without_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let o = bcl().arg("report").arg(dir.path()).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("not a run or experiment directory")
            && err.contains(&dir.path().display().to_string()),
        "{err}"
    );
    let o = bcl()
        .arg("report")
        .arg(dir.path().join("missing"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    // a results table that is not one is refused with the file named (below); a file the
    // page only shows is replaced by a note saying why, and the rest is written
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::write(
        run.join("results.csv"),
        "method,old_old_map,self_map,cross_map,self_r1,cross_r1,compatible,gain\n\
         bct,0.3,0.4,0.32,0.5,0.4,true,0.2\n",
    )
    .unwrap();
    std::fs::write(run.join("results.md"), b"| a |\n|---|\n| \xff\xfe |\n").unwrap();
    let big = std::fs::File::create(run.join("compat_matrix.svg")).unwrap();
    big.set_len((8 << 20) + 1).unwrap();
    run_ok(bcl().arg("report").arg(&run));
    let page = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(
        page.contains("<b>bct</b>: compatible"),
        "the verdict is still there"
    );
    for (file, why) in [
        ("results.md", "not UTF-8"),
        ("compat_matrix.svg", "more than the 8388608"),
    ] {
        assert!(
            page.contains(&format!("not shown: {}", run.join(file).display()))
                && page.contains(why),
            "{file}: no note saying {why}"
        );
    }
    // a results table that is not one is refused with the file named
    std::fs::write(dir.path().join("results.csv"), "method,x\nbct,1\n").unwrap();
    let o = bcl().arg("report").arg(dir.path()).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("results.csv") && err.contains("cross_map"),
        "{err}"
    );
    assert!(!dir.path().join("report.html").exists());
}
