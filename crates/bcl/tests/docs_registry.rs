//! The docs that state facts about methods agree with the method registry, the only source of
//! those facts: docs/distributed.md's lists of methods exact under data parallelism and
//! computed per rank's share, and docs/architecture.md's recipe for adding a method (the files
//! and the list it names exist and say what the recipe says); and its recipe for adding an
//! index names every item of the `VectorIndex` trait and the files and test it points to.

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
        let module = m.as_str().replace('-', "_");
        let file = format!("crates/bcl/src/loss/methods/{module}.rs");
        let src = repo_file(&file);
        assert!(
            src.contains("pub struct Spec;"),
            "{file}: its registry entry"
        );
        assert!(
            registry.contains(&format!("&methods::{module}::Spec,")),
            "{}: one line in BUILTIN",
            m.as_str()
        );
    }
    // the example test it points to exists
    assert!(recipe.contains("crates/bcl/tests/method_plugin.rs"));
    repo_file("crates/bcl/tests/method_plugin.rs");
}

#[test]
fn the_add_an_index_recipe_names_what_exists() {
    let doc = repo_file("docs/architecture.md");
    let start = doc
        .find("### How to add an index")
        .expect("the recipe's heading");
    let recipe = &doc[start..];
    let recipe = &recipe[..recipe[4..].find("\n## ").map_or(recipe.len(), |i| i + 4)];
    // every item of the trait is named by the recipe, and every item it names is in the trait
    let index = repo_file("crates/bcl/src/gallery/index.rs");
    let trait_src = &index[index.find("pub trait VectorIndex").expect("the trait")..];
    let mut in_trait: Vec<String> = trait_src
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let name = l
                .strip_prefix("fn ")
                .or_else(|| l.strip_prefix("type "))
                .or_else(|| l.strip_prefix("const "))?;
            Some(name.split(['(', ':', ';', '<']).next()?.trim().to_string())
        })
        .filter(|n| n != "is_empty" && n != "checkpoint_bytes")
        .collect();
    in_trait.sort();
    for item in &in_trait {
        assert!(
            recipe.contains(&format!("`{item}`")),
            "the recipe names `{item}`"
        );
    }
    for (named, file) in [
        ("gallery/wal.rs", "crates/bcl/src/gallery/wal.rs"),
        ("gallery/durable.rs", "crates/bcl/src/gallery/durable.rs"),
        (
            "usearch_store.rs",
            "crates/bcl/src/gallery/usearch_store.rs",
        ),
    ] {
        assert!(recipe.contains(named), "the recipe names {named}");
        repo_file(file);
    }
    // the test it points to defines an index and runs it through the durable store
    assert!(recipe.contains("crates/bcl/tests/gallery_store.rs") && recipe.contains("FlatIndex"));
    let suite = repo_file("crates/bcl/tests/gallery_store.rs");
    assert!(suite.contains("impl VectorIndex for FlatIndex"));
    assert!(suite.contains("DurableStore::<FlatIndex>::create"));
}
