//! `bcl bench-odpp`: the time of one ODPP refresh on synthetic prototypes and banks, with J
//! before and after (and, with candidates, the full objective's view of the restricted Δ).

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::model::l2_normalize;
use crate::perturb::{pseudo_old, Odpp, OdppConfig};

/// Timing of one ODPP refresh on synthetic prototypes and banks (see [`bench_odpp`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OdppTiming {
    /// Classes C.
    pub classes: i64,
    /// Dimension d.
    pub dim: i64,
    /// Features per class in each bank (new and old).
    pub bank_per_class: i64,
    /// Classes in each sample's softmax beside its own (0: every class).
    pub candidates: usize,
    /// Adam steps timed.
    pub steps: usize,
    /// Seconds of the candidate search (once per refresh; 0 without candidates).
    pub search_seconds: f64,
    /// Wall time of the refresh: the search and the timed steps.
    pub seconds: f64,
    /// Seconds per Adam step (the search excluded).
    pub seconds_per_step: f64,
    /// The optimised objective (restricted with candidates) before and after the steps.
    pub j: (f64, f64),
    /// Steps after which J was higher than before them.
    pub j_rises: usize,
    /// Adam learning rate used.
    pub lr: f64,
    /// With the comparison asked for and candidates: the full objective at Δ = 0, at this
    /// refresh's Δ, and at the Δ of the same steps on the full objective.
    pub full_j: Option<FullObjective>,
}

/// The approximation's effect on J (see [`OdppTiming::full_j`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FullObjective {
    /// Full J at Δ = 0.
    pub at_zero: f64,
    /// Full J at the restricted refresh's Δ.
    pub restricted: f64,
    /// Full J at the full refresh's Δ.
    pub full: f64,
    /// The share of the full refresh's decrease of J that the restricted refresh achieves.
    pub share_of_decrease: f64,
}

/// Times `cfg.steps` projected-Adam steps of ODPP (with `cfg`) for `classes` random prototypes
/// of dimension `dim` with banks of `bank_per_class` noisy features per class (new and old);
/// with `compare` and `cfg.candidates > 0`, also runs the full objective from the same start
/// and scores both Δ on it.
pub fn bench_odpp(
    classes: i64,
    dim: i64,
    bank_per_class: i64,
    cfg: &OdppConfig,
    device: Device,
    compare: bool,
) -> OdppTiming {
    let steps = cfg.steps;
    tch::manual_seed(0);
    let opts = (Kind::Float, device);
    let old = l2_normalize(&Tensor::randn([classes, dim], opts));
    let labels = Tensor::arange(classes, (Kind::Int64, device)).repeat([bank_per_class]);
    let noisy = |p: &Tensor| {
        l2_normalize(
            &(p.index_select(0, &labels)
                + Tensor::randn([classes * bank_per_class, dim], opts) * 0.5),
        )
    };
    let new_bank = noisy(&l2_normalize(
        &(&old + Tensor::randn([classes, dim], opts) * 0.3),
    ));
    let old_bank = noisy(&old);
    let fresh = || {
        Odpp::new(
            cfg.clone(),
            old_bank.shallow_clone(),
            labels.shallow_clone(),
            classes,
            dim,
        )
    };
    let sync = || {
        if let Device::Cuda(_) = device {
            tch::Cuda::synchronize(0);
        }
    };
    let mut odpp = fresh();
    // the candidate search timed apart from the steps (the refresh runs it once)
    let t0 = std::time::Instant::now();
    let candidates = (cfg.candidates > 0)
        .then(|| Odpp::candidate_table(&pseudo_old(&old, odpp.current()), cfg.candidates));
    sync();
    let search_seconds = t0.elapsed().as_secs_f64();
    let trace = odpp.optimise_over(&old, &new_bank, &labels, candidates.as_ref());
    sync();
    let seconds = t0.elapsed().as_secs_f64();
    let full_j = (compare && cfg.candidates > 0).then(|| {
        let mut full = Odpp::new(
            OdppConfig {
                candidates: 0,
                ..cfg.clone()
            },
            old_bank.shallow_clone(),
            labels.shallow_clone(),
            classes,
            dim,
        );
        full.optimise(&old, &new_bank, &labels);
        let j = |d: &Tensor| {
            tch::no_grad(|| {
                full.objective(&old, d, &new_bank, &labels)
                    .double_value(&[])
            })
        };
        let (at_zero, restricted, full_d) =
            (j(&old.zeros_like()), j(odpp.current()), j(full.current()));
        FullObjective {
            at_zero,
            restricted,
            full: full_d,
            share_of_decrease: (at_zero - restricted) / (at_zero - full_d),
        }
    });
    OdppTiming {
        classes,
        dim,
        bank_per_class,
        candidates: cfg.candidates,
        steps,
        search_seconds,
        seconds,
        seconds_per_step: (seconds - search_seconds) / steps.max(1) as f64,
        j: (trace[0], *trace.last().unwrap_or(&f64::NAN)),
        j_rises: trace.windows(2).filter(|w| w[1] > w[0]).count(),
        lr: cfg.lr,
        full_j,
    }
}
