//! The epoch meter: running sums of the losses and the head's accuracy over an epoch's batches,
//! the progress bar (hidden unless asked for), and the epoch's [`EpochStats`].

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use bcl_dist::Collective;
use tch::Tensor;

use super::{EpochStats, StepFigures, TrainError};

/// Accumulates one epoch's figures.
pub(crate) struct EpochMeter {
    t0: Instant,
    bar: ProgressBar,
    cls: f64,
    comp: f64,
    total: f64,
    correct: i64,
    seen: usize,
    batches: usize,
    comm: f64,
}

impl EpochMeter {
    /// A meter for an epoch of `steps` batches; `label` prefixes the bar when `progress`.
    pub(crate) fn start(steps: usize, label: String, progress: bool) -> Self {
        let bar = if progress {
            let b = ProgressBar::new(steps as u64);
            b.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({eta})")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            b.set_prefix(label);
            super::overall::attach(b)
        } else {
            ProgressBar::hidden()
        };
        Self {
            t0: Instant::now(),
            bar,
            cls: 0.0,
            comp: 0.0,
            total: 0.0,
            correct: 0,
            seen: 0,
            batches: 0,
            comm: 0.0,
        }
    }

    /// Adds a step: this rank's items, their mean losses, the number the head got right and
    /// the time in collectives.
    pub(crate) fn add(&mut self, f: &StepFigures) {
        let w = f.items as f64;
        self.cls += f.cls * w;
        self.comp += f.comp * w;
        self.total += f.total * w;
        self.correct += f.correct;
        self.seen += f.items;
        self.comm += f.comm;
        self.bar.inc(1);
        if self.batches.is_multiple_of(20) && self.seen > 0 {
            self.bar
                .set_message(format!("loss {:.3}", self.total / self.seen as f64));
        }
        self.batches += 1;
    }

    /// The epoch's figures over every rank's items (`epoch` 1-based, `lr` the rate of its
    /// last step).
    pub(crate) fn finish(
        self,
        epoch: usize,
        lr: f64,
        dist: &dyn Collective,
    ) -> Result<EpochStats, TrainError> {
        self.bar.finish_and_clear();
        let mut sums = [
            self.cls,
            self.comp,
            self.total,
            self.correct as f64,
            self.seen as f64,
        ];
        if dist.world_size() > 1 {
            let mut t = Tensor::from_slice(&sums);
            dist.all_reduce_sum(&mut t)?;
            sums.copy_from_slice(&Vec::<f64>::try_from(&t).map_err(|e| {
                TrainError::Config(format!("epoch figures from the other ranks: {e}"))
            })?);
        }
        let [cls, comp, total, correct, n] = sums;
        let secs = self.t0.elapsed().as_secs_f64();
        Ok(EpochStats {
            epoch,
            lr,
            loss_cls: cls / n,
            loss_comp: comp / n,
            loss_total: total / n,
            train_acc: correct / n,
            seconds: secs,
            images_per_s: n / secs,
            comm_seconds: self.comm,
        })
    }
}
