//! The docs that state facts about methods agree with the method registry, the only source of
//! those facts: docs/distributed.md's lists of methods exact under data parallelism and
//! computed per rank's share, and docs/architecture.md's recipe for adding a method (the files
//! and the list it names exist and say what the recipe says).

use bcl::loss::{DataParallel, Method};

fn repo_file(rel: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The method names (in backticks) between `<!-- {marker} -->` and the next `<!-- end -->`.
fn listed(doc: &str, marker: &str) -> Vec<String> {
    let open = format!("<!-- {marker} -->");
    let start = doc
        .find(&open)
        .unwrap_or_else(|| panic!("no '{open}' marker"))
        + open.len();
    let end = start + doc[start..].find("<!-- end -->").expect("an end marker");
    doc[start..end]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn distributed_md_lists_each_method_as_the_registry_says() {
    let doc = repo_file("docs/distributed.md");
    let (mut exact, mut shard): (Vec<_>, Vec<_>) = Method::all()
        .map(|m| (m.as_str().to_string(), m.data_parallel()))
        .partition(|(_, d)| *d == DataParallel::Exact);
    let names = |v: &mut Vec<(String, DataParallel)>| -> Vec<String> {
        let mut n: Vec<String> = v.drain(..).map(|x| x.0).collect();
        n.sort();
        n
    };
    let mut doc_exact = listed(&doc, "data-parallel exact");
    let mut doc_shard = listed(&doc, "data-parallel per-shard");
    doc_exact.sort();
    doc_shard.sort();
    assert_eq!(doc_exact, names(&mut exact), "exact under data parallelism");
    assert_eq!(doc_shard, names(&mut shard), "computed per rank's share");
}

#[test]
fn the_add_a_method_recipe_names_what_exists() {
    let doc = repo_file("docs/architecture.md");
    let recipe_start = doc
        .find("### How to add a method")
        .expect("the recipe's heading");
    let recipe = &doc[recipe_start..];
    let recipe = &recipe[..recipe[4..].find("\n### ").map_or(recipe.len(), |i| i + 4)];
    // the files it names exist and hold what it says they hold
    for needle in [
        "crates/bcl/src/loss/methods/",
        "crates/bcl/src/loss/method.rs",
        "BUILTIN",
    ] {
        assert!(recipe.contains(needle), "the recipe names {needle}");
    }
    let registry = repo_file("crates/bcl/src/loss/method.rs");
    assert!(registry.contains("static BUILTIN: &[&dyn MethodSpec]"));
    for m in Method::all() {
        let file = format!("crates/bcl/src/loss/methods/{}.rs", m.as_str());
        let src = repo_file(&file);
        assert!(
            src.contains("pub struct Spec;"),
            "{file}: its registry entry"
        );
        assert!(
            registry.contains(&format!("&methods::{}::Spec,", m.as_str())),
            "{}: one line in BUILTIN",
            m.as_str()
        );
    }
    // the example test it points to exists
    assert!(recipe.contains("crates/bcl/tests/method_plugin.rs"));
    repo_file("crates/bcl/tests/method_plugin.rs");
}
