//! The overall progress of a job of many models (an experiment): one bar over the models it
//! plans, above each model's epoch bar, with the time left estimated from the models trained so
//! far (models found finished count as done but not towards the pace), and a log line per
//! model so that a run in the background shows its progress in its log too. The training loop
//! reports each model; the job plans them ([`begin`], [`plan_more`]). Per thread: a job and
//! the models it trains run on one thread.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

thread_local! {
    static CURRENT: RefCell<Option<Rc<Overall>>> = const { RefCell::new(None) };
}

/// A job's overall progress.
struct Overall {
    multi: MultiProgress,
    bar: ProgressBar,
    planned: RefCell<u64>,
    state: RefCell<Pace>,
}

/// Models finished so far and the time the trained ones took.
#[derive(Default)]
struct Pace {
    /// Every model reported in this job (stages revisit an old model they share: once).
    seen: std::collections::HashSet<String>,
    trained: u64,
    reused: u64,
    trained_seconds: f64,
    started: Option<Instant>,
}

impl Pace {
    fn done(&self) -> u64 {
        self.trained + self.reused
    }

    /// Seconds left for `left` models at the pace of the trained ones (`None` before one).
    fn eta(&self, left: u64) -> Option<f64> {
        (self.trained > 0).then(|| self.trained_seconds / self.trained as f64 * left as f64)
    }
}

/// The job's progress while it lives; dropping it ends the bar.
pub struct OverallRun(Rc<Overall>);

impl Drop for OverallRun {
    fn drop(&mut self) {
        self.0.bar.finish();
        CURRENT.with(|c| {
            let mut c = c.borrow_mut();
            if c.as_ref().is_some_and(|o| Rc::ptr_eq(o, &self.0)) {
                *c = None;
            }
        });
    }
}

/// Starts tracking a job of `planned` models (`show`: draw the bars on the terminal).
pub fn begin(planned: u64, show: bool) -> OverallRun {
    let target = if show {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let multi = MultiProgress::with_draw_target(target);
    let bar = multi.add(ProgressBar::new(planned.max(1)));
    bar.set_style(
        ProgressStyle::with_template("models [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let o = Rc::new(Overall {
        multi,
        bar,
        planned: RefCell::new(planned),
        state: RefCell::new(Pace {
            started: Some(Instant::now()),
            ..Pace::default()
        }),
    });
    CURRENT.with(|c| *c.borrow_mut() = Some(o.clone()));
    OverallRun(o)
}

/// Adds `n` models to the current job's plan (a grid extended, a choice made), or removes
/// them (negative `n`: a planned model that will not be trained).
pub fn plan_more(n: i64) {
    with_current(|o| {
        let mut p = o.planned.borrow_mut();
        *p = p.saturating_add_signed(n);
        o.bar.set_length((*p).max(o.state.borrow().done()).max(1));
    });
}

/// The epoch bar `bar`, drawn below the job's bar when a job is tracked.
pub(crate) fn attach(bar: ProgressBar) -> ProgressBar {
    let mut bar = Some(bar);
    with_current(|o| {
        if let Some(b) = bar.take() {
            bar = Some(o.multi.add(b));
        }
    });
    bar.expect("the bar is given back")
}

/// Reports a finished model (`name`: its directory): trained now (with its seconds) or found
/// finished (`None`); a model the job reported before is not counted again.
pub(crate) fn model_finished(name: &str, trained_seconds: Option<f64>) {
    with_current(|o| {
        let mut s = o.state.borrow_mut();
        if !s.seen.insert(name.to_string()) && trained_seconds.is_none() {
            return;
        }
        match trained_seconds {
            Some(t) => {
                s.trained += 1;
                s.trained_seconds += t;
            }
            None => s.reused += 1,
        }
        let planned = (*o.planned.borrow()).max(s.done());
        let left = planned - s.done();
        let eta = s.eta(left);
        o.bar.set_length(planned.max(1));
        o.bar.set_position(s.done());
        let pace = match eta {
            Some(e) => format!(
                "{:.0} s per trained model, about {} left",
                s.trained_seconds / s.trained as f64,
                duration(e)
            ),
            None => "no model trained yet in this run".into(),
        };
        o.bar.set_message(format!("({} reused) {pace}", s.reused));
        if trained_seconds.is_some() && s.trained == 1 {
            tracing::info!(
                "first model of this run trained in {:.0} s: the {left} models left take about \
                 {} at that pace",
                s.trained_seconds,
                duration(eta.unwrap_or(0.0))
            );
        }
        let elapsed = s.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
        tracing::info!(
            "progress: {} of about {planned} models ({} trained, {} reused; {name} {}), {} \
             elapsed; {pace}",
            s.done(),
            s.trained,
            s.reused,
            if trained_seconds.is_some() {
                "trained"
            } else {
                "reused"
            },
            duration(elapsed)
        );
    });
}

fn with_current(f: impl FnOnce(&Overall)) {
    let o = CURRENT.with(|c| c.borrow().clone());
    if let Some(o) = o {
        f(&o);
    }
}

/// Seconds as `1 h 05 min`, `12 min` or `40 s`.
pub fn duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", (s + 30) / 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600 + 30) / 60 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(duration(40.4), "40 s");
        assert_eq!(duration(719.0), "12 min");
        assert_eq!(duration(3900.0), "1 h 05 min");
        assert_eq!(duration(-3.0), "0 s");
    }

    #[test]
    fn the_pace_counts_trained_models_only_and_the_plan_grows_past_what_is_done() {
        let run = begin(4, false);
        model_finished("a", None);
        assert_eq!(
            run.0.state.borrow().eta(3),
            None,
            "a reused model sets no pace"
        );
        model_finished("a", None);
        assert_eq!(
            run.0.state.borrow().done(),
            1,
            "a model revisited is counted once"
        );
        model_finished("b", Some(10.0));
        model_finished("c", Some(20.0));
        let s = run.0.state.borrow();
        assert_eq!((s.trained, s.reused, s.done()), (2, 1, 3));
        assert_eq!(s.eta(1), Some(15.0));
        drop(s);
        plan_more(2);
        assert_eq!(run.0.bar.length(), Some(6));
        model_finished("d", Some(15.0));
        plan_more(-5);
        // the bar never claims fewer models than have finished
        assert_eq!(run.0.bar.length(), Some(4));
        drop(run);
        model_finished("after", Some(1.0));
        CURRENT.with(|c| assert!(c.borrow().is_none()));
    }
}
