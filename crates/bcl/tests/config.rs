//! Configuration files are checked where they are read: every bounded setting of the
//! compatibility term outside its range is an error naming the file, the setting and the range
//! (run configurations, experiment bases and each sweep value), and ODPP's logit scale follows
//! `[compat] scale` unless set.

use bcl::experiment::ExperimentConfig;
use bcl::loss::CompatConfig;
use bcl::pipeline::RunConfig;

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
    assert_eq!(c.odpp_resolved().scale, Some(30.0));
    c.odpp.scale = Some(8.0);
    assert_eq!(c.odpp_resolved().scale, Some(8.0));
}
