//! Knob sweeps: a method trained at several values of one of its knobs (λ, or a setting of its
//! own section: the registry lists each method's), on the sweep scenarios and seeds, each
//! model in its own directory next to the main runs; their points feed the frontier.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::loss::{Knob, Method};
use crate::run::{train_new, RunConfig, RunError, StepOptions};

/// One sweep: a method trained at several values of one knob.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    /// The method.
    pub method: Method,
    /// The knob (one of the method's, see `bcl methods`).
    pub knob: Knob,
    /// Its values (the base configuration's value is added as a point from the main runs).
    pub values: Vec<f64>,
}

impl Sweep {
    /// Checks that the knob is one of the method's and that every value gives a valid
    /// configuration; the error names the sweep and the value.
    pub fn validate(&self, base: &RunConfig) -> Result<(), String> {
        let knobs = self.method.knobs();
        if !knobs.contains(&self.knob) {
            let names: Vec<&str> = knobs.iter().map(|k| k.name).collect();
            return Err(format!(
                "sweep of {}: {} does not turn the knob {} (its knobs: {})",
                self.method,
                self.method,
                self.knob,
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ));
        }
        for &v in &self.values {
            self.config(base, v)
                .validate()
                .map_err(|e| format!("sweep {} = {v}: {e}", self.knob))?;
        }
        Ok(())
    }

    /// `rc` with the knob at `v`.
    pub fn config(&self, rc: &RunConfig, v: f64) -> RunConfig {
        let mut c = rc.clone();
        c.compat = self.knob.apply(&rc.compat, v);
        c
    }

    /// The directory name of the model at `v` (`sweep-ndpp-ndpp-eps-0.1`).
    pub fn dir_name(&self, v: f64) -> String {
        format!("sweep-{}-{}-{v}", self.method, self.knob)
    }
}

/// A model a sweep trained.
#[derive(Debug, Clone)]
pub struct SweepModel {
    /// The sweep.
    pub sweep: Sweep,
    /// The knob's value.
    pub value: f64,
    /// The model's directory.
    pub dir: PathBuf,
}

/// Trains (or reuses) every sweep's models in the run directory `dir` against `old_dir`.
pub fn train_sweeps(
    sweeps: &[Sweep],
    rc: &RunConfig,
    dir: &Path,
    old_dir: &Path,
    opts: &StepOptions,
) -> Result<Vec<SweepModel>, RunError> {
    let mut out = Vec::new();
    for s in sweeps {
        for &value in &s.values {
            let d = crate::layout::RunDir::new(dir)
                .model(&s.dir_name(value))
                .path()
                .to_path_buf();
            train_new(&s.config(rc, value), old_dir, s.method, &d, opts)?;
            out.push(SweepModel {
                sweep: s.clone(),
                value,
                dir: d,
            });
        }
    }
    Ok(out)
}
