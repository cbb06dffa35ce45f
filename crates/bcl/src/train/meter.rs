//! The epoch meter: running sums of the losses and the head's accuracy over an epoch's batches,
//! the progress bar (hidden unless asked for), and the epoch's [`EpochStats`].

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use super::EpochStats;

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
            b
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
        }
    }

    /// Adds a batch of `n` items: its mean losses and the number the head got right.
    pub(crate) fn add(&mut self, n: usize, cls: f64, comp: f64, total: f64, correct: i64) {
        let w = n as f64;
        self.cls += cls * w;
        self.comp += comp * w;
        self.total += total * w;
        self.correct += correct;
        self.seen += n;
        self.bar.inc(1);
        if self.batches.is_multiple_of(20) {
            self.bar
                .set_message(format!("loss {:.3}", self.total / self.seen as f64));
        }
        self.batches += 1;
    }

    /// The epoch's figures (`epoch` 1-based, `lr` the rate of its last step).
    pub(crate) fn finish(self, epoch: usize, lr: f64) -> EpochStats {
        self.bar.finish_and_clear();
        let secs = self.t0.elapsed().as_secs_f64();
        let n = self.seen as f64;
        EpochStats {
            epoch,
            lr,
            loss_cls: self.cls / n,
            loss_comp: self.comp / n,
            loss_total: self.total / n,
            train_acc: self.correct as f64 / n,
            seconds: secs,
            images_per_s: n / secs,
        }
    }
}
