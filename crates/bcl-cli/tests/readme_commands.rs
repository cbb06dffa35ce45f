//! The README's command table against the binary's own help: every command `bcl --help` lists
//! (and every `bcl gallery` subcommand) has a row, every row names a real command, and every
//! flag a row shows is one that command takes. The help comes from the clap definitions, so
//! the table cannot drift from the flags unnoticed. Also: completions and the man page are
//! generated from the same definitions.

use std::collections::BTreeSet;
use std::process::Command;

fn bcl(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bcl"))
        .args(args)
        .output()
        .expect("bcl runs");
    assert!(
        out.status.success(),
        "bcl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 help")
}

/// The subcommands a help text lists under `Commands:` (without `help`).
fn commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// The long flags a text names (`--flag`).
fn flags(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(p) = text[i..].find("--") {
        let s = i + p + 2;
        let mut e = s;
        while e < b.len() && (b[e].is_ascii_lowercase() || b[e].is_ascii_digit() || b[e] == b'-') {
            e += 1;
        }
        if e > s && b[s].is_ascii_lowercase() {
            out.insert(format!("--{}", &text[s..e]));
        }
        i = e.max(s);
    }
    out
}

/// The README's command rows: (command path, the first cell's text).
fn readme_rows() -> Vec<(Vec<String>, String)> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let readme = std::fs::read_to_string(&p).expect("README.md");
    let start = readme
        .find("## Command-line reference")
        .expect("the reference section");
    readme[start..]
        .lines()
        .filter_map(|l| l.strip_prefix("| `bcl "))
        .map(|l| {
            let cell = l.split("` |").next().unwrap_or(l).to_string();
            let path = cell
                .split_whitespace()
                .take_while(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
                .take_while(|w| !w.starts_with('-'))
                .map(str::to_string)
                .collect();
            (path, cell)
        })
        .collect()
}

#[test]
fn the_readme_command_table_matches_the_help() {
    let rows = readme_rows();
    let mut leaves: Vec<Vec<String>> = Vec::new();
    for c in commands(&bcl(&["--help"])) {
        let sub = commands(&bcl(&[&c, "--help"]));
        if sub.is_empty() {
            leaves.push(vec![c]);
        } else {
            leaves.extend(sub.into_iter().map(|s| vec![c.clone(), s]));
        }
    }
    for leaf in &leaves {
        assert!(
            rows.iter().any(|(p, _)| p == leaf),
            "README.md has no row for `bcl {}`",
            leaf.join(" ")
        );
    }
    for (path, cell) in &rows {
        assert!(
            leaves.contains(path),
            "README.md row `bcl {cell}`: no such command"
        );
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let known = flags(&bcl(&args));
        for f in flags(cell) {
            assert!(
                known.contains(&f),
                "README.md row `bcl {cell}`: `bcl {}` has no flag {f}",
                path.join(" ")
            );
        }
    }
}

#[test]
fn completions_and_the_man_page_come_from_the_flags() {
    let bash = bcl(&["completions", "bash"]);
    for word in ["train-new", "gallery", "--method", "--resident-mib"] {
        assert!(bash.contains(word), "bash completions lack {word}");
    }
    let fish = bcl(&["completions", "fish"]);
    assert!(fish.contains("complete -c bcl"), "{fish}");
    let man = bcl(&["man"]);
    assert!(
        man.starts_with(".ie") || man.contains(".TH bcl"),
        "{}",
        &man[..200.min(man.len())]
    );
    let dir = tempfile::tempdir().unwrap();
    bcl(&["man", "--out", dir.path().to_str().unwrap()]);
    for page in ["bcl.1", "bcl-train-new.1", "bcl-gallery-build.1"] {
        let text = std::fs::read_to_string(dir.path().join(page)).expect(page);
        assert!(text.contains(".TH"), "{page}");
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_bcl"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("possible values"));
}
