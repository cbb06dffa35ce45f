//! Configuration files are checked where they are read: every bounded setting of the
//! compatibility term outside its range is an error naming the file, the setting and the range
//! (run configurations, experiment bases and each sweep value), and ODPP's logit scale follows
//! `[compat] scale` unless set.

use bcl::experiment::ExperimentConfig;
use bcl::loss::CompatConfig;
use bcl::perturb::OdppConfig;
use bcl::run::RunConfig;

/// Writes `body` to a TOML file and reads it as a run configuration; the error text.
fn run_error(body: &str) -> String {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("run.toml");
    std::fs::write(&p, body).unwrap();
    let e = RunConfig::from_toml_file(&p).unwrap_err().to_string();
    assert!(e.contains("run.toml"), "the file is named: {e}");
    e
}

#[test]
fn each_bad_setting_is_named() {
    for (section, key, value) in [
        ("compat", "lambda", "-0.5"),
        ("compat", "scale", "0.0"),
        ("compat.ndpp", "eps", "1.0"),
        ("compat.ndpp", "eps", "-0.1"),
        ("compat.ndpp", "beta", "0.5"),
        ("compat.ndpp", "tau", "0.0"),
        ("compat.ndpp", "alpha", "1.5"),
        ("compat.ndpp", "k", "0"),
        ("compat.odpp", "eps", "1.2"),
        ("compat.odpp", "lr", "0.0"),
        ("compat.odpp", "mu", "-1.0"),
        ("compat.odpp", "gamma", "-1.0"),
        ("compat.odpp", "scale", "-2.0"),
        ("compat.odpp", "old_bank_per_class", "0"),
        ("compat.refresh", "every_steps", "0"),
        ("compat.refresh", "bank_per_class", "0"),
        ("compat.refresh", "ema_momentum", "1.0"),
        ("compat.unibct", "alpha", "1.0"),
        ("compat.unibct", "k", "0"),
        ("compat.ract", "temperature", "0.0"),
        ("compat.lce", "align_weight", "-1.0"),
        ("compat.advbct", "elastic", "-1.0"),
        ("compat.advbct", "hidden", "0"),
        ("compat.advbct", "radius_quantile", "0.0"),
        ("compat.advbct", "radius_quantile", "1.5"),
    ] {
        let e = run_error(&format!("[{section}]\n{key} = {value}\n"));
        let name = format!("{section}.{key}");
        assert!(e.contains(&name), "{name} = {value} not named: {e}");
    }
    // a NaN is no number in range either
    let e = run_error("[compat]\nlambda = nan\n");
    assert!(e.contains("compat.lambda"), "{e}");
    // and the defaults pass
    CompatConfig::default().validate().unwrap();
    RunConfig::default().validate().unwrap();
}

#[test]
fn experiment_bases_and_sweep_values_are_checked() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("exp.toml");
    std::fs::write(&p, "[base.compat.ndpp]\nalpha = 2.0\n").unwrap();
    let e = ExperimentConfig::from_toml_file(&p)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("exp.toml") && e.contains("compat.ndpp.alpha"),
        "{e}"
    );
    std::fs::write(
        &p,
        "[[sweeps]]\nmethod = \"ndpp\"\nknob = \"ndpp-eps\"\nvalues = [0.1, 1.5]\n",
    )
    .unwrap();
    let e = ExperimentConfig::from_toml_file(&p)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ndpp-eps = 1.5") && e.contains("compat.ndpp.eps"),
        "{e}"
    );
}

#[test]
fn odpp_logits_follow_the_influence_loss_scale_unless_set() {
    let mut c = CompatConfig {
        scale: 30.0,
        ..Default::default()
    };
    let resolved = |c: &CompatConfig| bcl::loss::methods::odpp::resolved(c).unwrap();
    assert_eq!(resolved(&c).scale, Some(30.0));
    c.update::<OdppConfig>("odpp", |o| o.scale = Some(8.0))
        .unwrap();
    assert_eq!(resolved(&c).scale, Some(8.0));
}

#[test]
fn unknown_keys_and_methods_are_named() {
    // a misspelt shared setting lands next to the method sections and is refused by name
    let e = run_error("[compat]\nlamda = 0.3\n");
    assert!(
        e.contains("compat.lamda") && e.contains("unknown setting"),
        "{e}"
    );
    // a misspelt key inside a method's section is named by that method's parser
    let e = run_error("[compat.ndpp]\nepss = 0.1\n");
    assert!(e.contains("compat.ndpp") && e.contains("epss"), "{e}");
    // a section for a method without settings, or for no method at all
    for m in ["bct", "ndppp"] {
        let e = run_error(&format!("[compat.{m}]\nx = 1\n"));
        assert!(e.contains(&format!("compat.{m}")), "{e}");
    }
    // an unknown method in a run's method list names the registered ones
    let e = run_error("methods = [\"bct\", \"ndp\"]\n");
    assert!(e.contains("ndp") && e.contains("ndpp, odpp"), "{e}");
}

#[test]
fn a_sweep_turns_only_a_knob_of_its_method() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("exp.toml");
    // odpp has no ndpp-eps knob
    std::fs::write(
        &p,
        "[[sweeps]]\nmethod = \"odpp\"\nknob = \"ndpp-eps\"\nvalues = [0.1]\n",
    )
    .unwrap();
    let e = ExperimentConfig::from_toml_file(&p)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("exp.toml") && e.contains("ndpp-eps") && e.contains("odpp-eps"),
        "{e}"
    );
    // independent has no knob at all, not even lambda
    std::fs::write(
        &p,
        "[[sweeps]]\nmethod = \"independent\"\nknob = \"lambda\"\nvalues = [0.1]\n",
    )
    .unwrap();
    let e = ExperimentConfig::from_toml_file(&p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("its knobs: none"), "{e}");
    // an unknown knob names the registered ones
    std::fs::write(
        &p,
        "[[sweeps]]\nmethod = \"ndpp\"\nknob = \"ndpp-epsilon\"\nvalues = [0.1]\n",
    )
    .unwrap();
    let e = ExperimentConfig::from_toml_file(&p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ndpp-epsilon") && e.contains("odpp-mu"), "{e}");
}

#[test]
fn knobs_set_and_read_the_method_sections() {
    use bcl::loss::{Knob, Method};
    use bcl::perturb::NdppConfig;
    let base = CompatConfig::default();
    let eps = Knob::named("ndpp-eps").unwrap();
    assert_eq!(eps.value(&base), Some(NdppConfig::default().eps));
    let c = eps.apply(&base, 0.05);
    assert_eq!(c.settings::<NdppConfig>("ndpp").unwrap().eps, 0.05);
    assert_eq!(eps.value(&c), Some(0.05));
    // the other settings of the section keep their values
    assert_eq!(
        c.settings::<NdppConfig>("ndpp").unwrap().k,
        NdppConfig::default().k
    );
    // an optional setting left unset has no base value
    assert_eq!(Knob::named("ndpp-beta").unwrap().value(&base), None);
    assert_eq!(Knob::LAMBDA.apply(&base, 0.3).lambda, 0.3);
    // every method's knobs: lambda where it reads it, then its own
    assert!(Method::INDEPENDENT.knobs().is_empty());
    assert_eq!(Method::BCT.knobs(), vec![Knob::LAMBDA]);
    let names: Vec<&str> = Method::ODPP.knobs().iter().map(|k| k.name).collect();
    assert_eq!(names, ["lambda", "odpp-eps", "odpp-mu"]);
    // a method written by name reads back as itself, in TOML and JSON
    for m in Method::all() {
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(j, format!("\"{m}\""));
        assert_eq!(serde_json::from_str::<Method>(&j).unwrap(), m);
    }
    // a saved configuration lists every method setting and reads back equal
    let mut full = RunConfig::default();
    full.compat.complete();
    let again: RunConfig = toml::from_str(&full.to_toml()).unwrap();
    assert_eq!(again, full);
    assert!(full.to_toml().contains("[compat.advbct]"));
}
