//! Headless Chromium for the tests of the pages `bcl` writes and serves (the HTML report, the
//! status page of `bcl serve`): finding the browser, loading a page with its console
//! messages, its DOM after the scripts ran, a screenshot, and reading text back from the DOM.
//! Shared by the library's and the CLI's tests (the CLI's through `#[path]`).
//!
//! Without Chromium the callers skip with a message, unless `BCL_REQUIRE_BROWSER` is set (CI
//! sets it: scripts/setup.sh installs Debian's chromium where apt-get exists).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The browser, or `None` (with a message) where it is not installed and not required.
pub fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("BCL_CHROMIUM")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            ["chromium", "chromium-browser", "google-chrome"]
                .iter()
                .flat_map(|n| {
                    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                        .map(move |d| d.join(n))
                        .collect::<Vec<_>>()
                }),
        )
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("BCL_REQUIRE_BROWSER").is_none(),
            "BCL_REQUIRE_BROWSER is set and no Chromium was found (scripts/setup.sh installs \
             Debian's chromium; BCL_CHROMIUM names another binary)"
        );
        eprintln!(
            "skipping the browser checks: no chromium on PATH (scripts/setup.sh installs \
             Debian's chromium; BCL_CHROMIUM names another binary)"
        );
    }
    found
}

/// Runs headless Chromium on `url` with `args`; returns stdout and the console messages it
/// logged.
pub fn browse(browser: &Path, url: &str, args: &[&str]) -> (String, Vec<String>) {
    let profile = tempfile::tempdir().unwrap();
    let o = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "chromium failed on {url}: {stderr}");
    let console = stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect();
    (String::from_utf8_lossy(&o.stdout).into_owned(), console)
}

/// The `file://` address of a page on disk.
pub fn url_of(page: &Path) -> String {
    format!("file://{}", page.canonicalize().unwrap().display())
}

/// The DOM at `url` after its scripts ran (network requests included); fails on any console
/// message.
pub fn dom(browser: &Path, url: &str) -> String {
    let (dom, console) = browse(browser, url, &["--dump-dom"]);
    assert!(console.is_empty(), "console messages: {console:#?}");
    assert!(dom.contains("</html>"), "no DOM: {dom}");
    dom
}

/// A screenshot of the page in a `w`-pixel-wide window: it must show more than a background.
pub fn assert_not_blank(browser: &Path, url: &str, w: u32) {
    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("shot.png");
    browse(
        browser,
        url,
        &[
            &format!("--screenshot={}", shot.display()),
            &format!("--window-size={w},1400"),
        ],
    );
    let img = image::open(&shot).unwrap().to_rgb8();
    assert_eq!(img.width(), w);
    let dark = img
        .pixels()
        .filter(|p| p.0.iter().all(|&c| c < 100))
        .count();
    let coloured = img
        .pixels()
        .filter(|p| p.0.iter().max().unwrap() - p.0.iter().min().unwrap() > 60)
        .count();
    let n = (img.width() * img.height()) as usize;
    assert!(
        dark > n / 200 && coloured > n / 500,
        "a blank screenshot: {dark} dark and {coloured} coloured of {n} pixels"
    );
}

/// The text of the element whose opening tag contains `open` (its first occurrence), tags
/// dropped; `None` where there is none.
pub fn element_text(dom: &str, open: &str, close: &str) -> Option<String> {
    let start = dom.find(open)?;
    let end = start + dom[start..].find(close)?;
    Some(strip_tags(&dom[start..end]))
}

pub fn strip_tags(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
}

/// The body rows of the first table after `open`, each as its cells' text.
pub fn table_rows(dom: &str, open: &str) -> Vec<Vec<String>> {
    let start = dom.find(open).unwrap();
    let t = &dom[start..];
    let t = &t[t.find("<tbody>").unwrap()..t.find("</tbody>").unwrap()];
    t.split("<tr>")
        .skip(1)
        .map(|row| {
            row.split("<td")
                .skip(1)
                .map(|c| strip_tags(&format!("<td{c}")).trim().to_string())
                .collect()
        })
        .collect()
}
