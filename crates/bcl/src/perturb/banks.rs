//! Feature banks arranged by class, for ODPP's objective restricted to candidate classes.

use tch::{Kind, Tensor};

/// Feature banks arranged by class for [`Odpp::restricted_objective`]: `feats [C, b, d]` holds
/// class k's samples of every bank in row k (zero rows pad a class with fewer than the most,
/// `b`), `weights [C, b]` each sample's weight in J (a bank's weight over its size; 0 for
/// padding).
pub struct ClassBanks {
    pub(super) feats: Tensor,
    pub(super) weights: Tensor,
}

impl ClassBanks {
    /// Arranges `banks` (features, labels in `0..classes`, the bank's weight in J).
    pub fn new(banks: [(&Tensor, &Tensor, f64); 2], classes: i64) -> Self {
        tch::no_grad(|| {
            let device = banks[0].0.device();
            let (mut feats, mut labels, mut weights) = (Vec::new(), Vec::new(), Vec::new());
            for (f, y, w) in banks {
                let n = f.size()[0];
                if n == 0 || w == 0.0 {
                    continue;
                }
                feats.push(f.to_kind(Kind::Float));
                labels.push(y.to_kind(Kind::Int64));
                weights.push(Tensor::full([n], w / n as f64, (Kind::Float, device)));
            }
            let d = banks[0].0.size()[1];
            if feats.is_empty() {
                return Self {
                    feats: Tensor::zeros([classes, 1, d], (Kind::Float, device)),
                    weights: Tensor::zeros([classes, 1], (Kind::Float, device)),
                };
            }
            let (f, y, w) = (
                Tensor::cat(&feats, 0),
                Tensor::cat(&labels, 0),
                Tensor::cat(&weights, 0),
            );
            // each sample's position among its class's: rank in the label-sorted order minus
            // the class's first rank
            let (sorted, order) = y.sort(0, false);
            let counts = y.bincount::<Tensor>(None, classes);
            let first = counts.cumsum(0, Kind::Int64) - &counts;
            let pos =
                Tensor::arange(y.size()[0], (Kind::Int64, device)) - first.index_select(0, &sorted);
            let b = counts.max().int64_value(&[]).max(1);
            let mut out_f = Tensor::zeros([classes, b, d], (Kind::Float, device));
            let mut out_w = Tensor::zeros([classes, b], (Kind::Float, device));
            let at = [Some(sorted), Some(pos)];
            let _ = out_f.index_put_(&at, &f.index_select(0, &order), false);
            let _ = out_w.index_put_(&at, &w.index_select(0, &order), false);
            Self {
                feats: out_f,
                weights: out_w,
            }
        })
    }
}
