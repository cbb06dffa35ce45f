//! A compatibility method defined only in this test file, registered at run time, runs
//! through every place a built-in method does: the registry's lists and configuration checks,
//! `train-new` (its loss, its settings section, its refreshes), the model card, evaluation and
//! an experiment (its rows, its sweep knob, its refresh diagnostics). This is the proof that a
//! method is one file and one registry line: nothing outside this file names it.

mod common;

use bcl::experiment::{run_experiment, ExperimentConfig, Knob, Sweep};
use bcl::loss::{
    check, defaults_table, register, section, BuildContext, CompatConfig, CompatInputs, CompatLoss,
    LossError, Method, MethodSpec, Needs, RefreshConfig,
};
use bcl::model::{l2_normalize, Embedder};
use bcl::perturb::RefreshStats;
use bcl::run::{self, RunConfig};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// `[compat.pull]`: the method's own settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
struct PullSettings {
    /// How far each refresh moves the target from the old prototype toward the new one.
    toward_new: f64,
}

impl Default for PullSettings {
    fn default() -> Self {
        Self { toward_new: 0.25 }
    }
}

/// `pull`: `mean_i (1 − ⟨f_i, t_{y_i}⟩)` against targets `t_k` that start at the old
/// prototypes and, at each refresh, move a share `toward_new` toward the new class means.
struct Pull;

/// The loss `Pull` builds.
struct PullLoss {
    lambda: f64,
    toward_new: f64,
    old: Tensor,
    targets: Tensor,
    refresh: RefreshConfig,
}

impl CompatLoss for PullLoss {
    fn weight(&self) -> f64 {
        self.lambda
    }
    fn loss(&self, inputs: &CompatInputs) -> Result<Option<Tensor>, LossError> {
        let t = self.targets.index_select(0, inputs.labels);
        let cos = (inputs.new * t).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
        Ok(Some((-cos + 1.0).mean(Kind::Float)))
    }
    fn refresh_config(&self) -> Option<&RefreshConfig> {
        Some(&self.refresh)
    }
    fn refresh(
        &mut self,
        bank: &Tensor,
        labels: &Tensor,
        epoch: usize,
        step: usize,
    ) -> Result<Option<RefreshStats>, LossError> {
        let c = self.old.size()[0];
        let Ok(new) = bcl::perturb::class_prototypes(bank, labels, c) else {
            return Ok(None);
        };
        let delta = (new - &self.old) * self.toward_new;
        self.targets = l2_normalize(&(&self.old + &delta));
        let stats = bcl::perturb::GeometryStats::of(&self.old, &delta);
        Ok(Some(RefreshStats::from_geometry(
            epoch, step, stats, None, 0.0,
        )))
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        vec![("targets".into(), self.targets.shallow_clone())]
    }
    fn load_state(&mut self, state: &[(String, Tensor)]) {
        for (n, t) in state {
            if n == "targets" {
                self.targets = t.shallow_clone();
            }
        }
    }
}

const NAME: &str = "pull";

impl MethodSpec for Pull {
    fn name(&self) -> &'static str {
        NAME
    }
    fn description(&self) -> &'static str {
        "test method: cosine pull toward targets that drift from the old to the new prototypes"
    }
    fn needs(&self) -> Needs {
        Needs {
            prototypes: true,
            ..Needs::default()
        }
    }
    fn refreshes(&self) -> bool {
        true
    }
    fn default_settings(&self) -> Option<toml::Table> {
        defaults_table::<PullSettings>()
    }
    fn validate(&self, cfg: &CompatConfig) -> Result<(), String> {
        let s: PullSettings = section(cfg, NAME)?;
        let v = s.toward_new;
        check(
            "compat.pull.toward_new",
            v,
            (0.0..=1.0).contains(&v),
            "in [0, 1]",
        )
    }
    fn config_view(&self, cfg: &CompatConfig) -> Result<serde_json::Value, String> {
        let s: PullSettings = section(cfg, NAME)?;
        Ok(serde_json::json!({ "lambda": cfg.lambda, "refresh": cfg.refresh, "pull": s }))
    }
    fn knobs(&self) -> &'static [Knob] {
        &[Knob {
            name: "pull-toward-new",
            method: Some(NAME),
            key: "toward_new",
        }]
    }
    fn build(&self, cfg: &CompatConfig, ctx: BuildContext) -> Result<Box<dyn CompatLoss>, String> {
        let s: PullSettings = section(cfg, NAME)?;
        let old = ctx.prototypes(NAME)?;
        Ok(Box::new(PullLoss {
            lambda: cfg.lambda,
            toward_new: s.toward_new,
            targets: old.shallow_clone(),
            old,
            refresh: cfg.refresh.clone(),
        }))
    }
}

static PULL: Pull = Pull;

fn pull() -> Method {
    register(&PULL).expect("pull registers")
}

#[test]
fn a_registered_method_is_listed_parsed_and_checked() {
    let m = pull();
    assert_eq!(register(&PULL).unwrap(), m, "registering twice is a no-op");
    assert_eq!("pull".parse::<Method>().unwrap(), m);
    assert!(Method::names().contains(&"pull"));
    assert!(Knob::named("pull-toward-new").is_ok());
    assert_eq!(m.knobs().len(), 2, "lambda and its own knob");
    // its section has defaults, is completed into saved configurations and is checked
    let mut cfg = CompatConfig::default();
    assert!(cfg.methods.contains_key("pull"));
    cfg.update::<PullSettings>("pull", |s| s.toward_new = 2.0)
        .unwrap();
    let e = cfg.validate().unwrap_err();
    assert!(e.contains("compat.pull.toward_new = 2"), "{e}");
    // another specification under a taken name is refused, and so is a bad name
    struct Impostor(&'static str);
    impl MethodSpec for Impostor {
        fn name(&self) -> &'static str {
            self.0
        }
        fn description(&self) -> &'static str {
            "refused"
        }
        fn config_view(&self, _: &CompatConfig) -> Result<serde_json::Value, String> {
            Ok(serde_json::json!({}))
        }
        fn build(&self, _: &CompatConfig, _: BuildContext) -> Result<Box<dyn CompatLoss>, String> {
            Err("never built".into())
        }
    }
    static TAKEN: Impostor = Impostor("bct");
    static BAD: Impostor = Impostor("Bad Name");
    assert!(register(&TAKEN)
        .unwrap_err()
        .to_string()
        .contains("already registered"));
    assert!(register(&BAD)
        .unwrap_err()
        .to_string()
        .contains("lower-case"));
}

/// A tiny run configuration on generated data with refreshes every few steps.
fn tiny(dir: &std::path::Path) -> RunConfig {
    let mut cfg = common::tiny_idx_config(&dir.join("data"), 4, 2);
    cfg.compat.refresh.every_steps = Some(3);
    cfg.compat.refresh.start_epoch = 0;
    cfg.compat.refresh.bank_per_class = 8;
    cfg
}

#[test]
fn a_registered_method_trains_is_carded_and_evaluated() {
    let m = pull();
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny(dir.path());
    let opts = common::cpu_opts(false, None);
    let old_dir = dir.path().join("old");
    run::train_old(&cfg, &old_dir, &opts).unwrap();
    let new_dir = dir.path().join(m.model_name());
    let out = run::train_new(&cfg, &old_dir, m, &new_dir, &opts).unwrap();
    // the card takes the method's name from the registry; its refreshes were saved
    assert_eq!(out.card.method, "pull");
    assert!(!out.refreshes.is_empty(), "pull refreshes every 3 steps");
    assert!(out.card.compatible_with.is_some());
    // the saved model loads (its card's method parses) and evaluates beside the old one
    let models = [
        Embedder::load(&old_dir, tch::Device::Cpu).unwrap(),
        Embedder::load(&new_dir, tch::Device::Cpu).unwrap(),
    ];
    let test = bcl::data::open_test(&cfg.data).unwrap();
    let report = bcl::eval::models::evaluate_models(&models, &test, 64).unwrap();
    assert_eq!(report.rows.len(), 1);
    assert_eq!(report.rows[0].method, m);
    assert!(report.rows[0].cross_map > 0.0);
}

#[test]
fn a_registered_method_runs_in_an_experiment_with_its_sweep_and_diagnostics() {
    let m = pull();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ExperimentConfig {
        base: tiny(dir.path()),
        ..ExperimentConfig::default()
    };
    cfg.seeds = vec![1];
    cfg.methods = vec![Method::BCT, m];
    cfg.sweeps = vec![Sweep {
        method: m,
        knob: Knob::named("pull-toward-new").unwrap(),
        values: vec![0.5],
    }];
    let out = dir.path().join("exp");
    let report = run_experiment(&cfg, &out, &common::cpu_opts(true, None)).unwrap();
    assert!(report.table.iter().any(|r| r.method == m));
    let results = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(results.contains("| pull"), "{results}");
    let frontier = std::fs::read_to_string(out.join("frontier.md")).unwrap();
    assert!(frontier.contains("pull-toward-new"), "{frontier}");
    // refresh diagnostics come from the registry's `refreshes`, not a list of names
    let diagnostics = std::fs::read_to_string(out.join("diagnostics.md")).unwrap();
    assert!(diagnostics.contains("| pull"), "{diagnostics}");
}
