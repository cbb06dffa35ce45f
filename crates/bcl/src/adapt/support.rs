//! The support set an adapter is fitted on: the same items embedded by the old and the new
//! model (optionally with class labels and side information), checked and L2-normalised once,
//! with a fingerprint the adapter's card records.

use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use super::{check_matrix, input, normalize, AdaptError, SupportInfo};
use crate::data::hex;

/// Pairs of old and new vectors of the same items.
#[derive(Debug)]
pub struct SupportSet {
    old: Tensor,
    new: Tensor,
    labels: Option<Vec<i64>>,
    side: Option<Tensor>,
    source: String,
}

/// The raw float32 values of a CPU tensor, row-major.
fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).contiguous().view(-1)).unwrap_or_default()
}

impl SupportSet {
    /// Pairs `old` `[N, d_old]` and `new` `[N, d_new]` (row i of each embeds the same item):
    /// refused if the counts differ, there are fewer than 2 pairs, a value is NaN or infinite,
    /// or a row is zero (it has no direction). Rows are L2-normalised.
    pub fn new(old: &Tensor, new: &Tensor) -> Result<Self, AdaptError> {
        let (old, new) = (old.to_device(Device::Cpu), new.to_device(Device::Cpu));
        for (t, what) in [(&old, "old vectors"), (&new, "new vectors")] {
            if t.dim() != 2 {
                return Err(input(
                    what,
                    format!("expected a matrix, got shape {:?}", t.size()),
                ));
            }
        }
        let (n_old, n_new) = (old.size()[0], new.size()[0]);
        if n_old != n_new {
            return Err(input(
                "support set",
                format!(
                    "{n_old} old vectors but {n_new} new ones: row i of each must embed the \
                     same item"
                ),
            ));
        }
        if n_old < 2 {
            return Err(input(
                "support set",
                format!("{n_old} pairs; at least 2 are needed"),
            ));
        }
        for (t, what) in [(&old, "old vectors"), (&new, "new vectors")] {
            check_matrix(t, what, t.size()[1] as usize, None)?;
            if t.size()[1] == 0 {
                return Err(input(what, "dimension 0"));
            }
            let zero = t
                .to_kind(Kind::Float)
                .norm_scalaropt_dim(2.0, [1], false)
                .eq(0.0)
                .nonzero();
            if zero.size()[0] > 0 {
                return Err(input(
                    what,
                    format!(
                        "row {} is zero (it has no direction to align)",
                        zero.int64_value(&[0, 0])
                    ),
                ));
            }
        }
        Ok(Self {
            old: normalize(&old),
            new: normalize(&new),
            labels: None,
            side: None,
            source: String::new(),
        })
    }

    /// The labelled images of `data` embedded by `old` and `new` (`batch` per forward pass), the
    /// pairs' origin recorded as `source`.
    pub fn embedded(
        old: &crate::model::Embedder,
        new: &crate::model::Embedder,
        data: &crate::data::Dataset,
        batch: usize,
        source: impl Into<String>,
    ) -> Result<Self, AdaptError> {
        Ok(Self::new(
            &old.embed_dataset(data, batch),
            &new.embed_dataset(data, batch),
        )?
        .with_labels(data.labels.clone())?
        .with_source(source))
    }

    /// Adds class labels, one per pair.
    pub fn with_labels(mut self, labels: Vec<i64>) -> Result<Self, AdaptError> {
        if labels.len() != self.len() {
            return Err(input(
                "labels",
                format!("{} labels for {} pairs", labels.len(), self.len()),
            ));
        }
        self.labels = Some(labels);
        Ok(self)
    }

    /// Adds side information `[N, s]` (FCT's: another model's embedding of the same items).
    pub fn with_side(mut self, side: &Tensor) -> Result<Self, AdaptError> {
        let side = side.to_device(Device::Cpu);
        if side.dim() != 2 || side.size()[1] == 0 {
            return Err(input(
                "side information",
                format!("expected an [N, s] matrix, got shape {:?}", side.size()),
            ));
        }
        check_matrix(
            &side,
            "side information",
            side.size()[1] as usize,
            Some(self.len() as i64),
        )?;
        self.side = Some(normalize(&side));
        Ok(self)
    }

    /// Records where the pairs came from (shown on the card).
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.old.size()[0] as usize
    }

    /// Whether it holds no pairs (never true: construction needs 2).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The old model's vectors `[N, d_old]`, normalised.
    pub fn old_vectors(&self) -> &Tensor {
        &self.old
    }

    /// The new model's vectors `[N, d_new]`, normalised.
    pub fn new_vectors(&self) -> &Tensor {
        &self.new
    }

    /// The old model's dimension.
    pub fn old_dim(&self) -> usize {
        self.old.size()[1] as usize
    }

    /// The new model's dimension.
    pub fn new_dim(&self) -> usize {
        self.new.size()[1] as usize
    }

    /// Class labels, if given.
    pub fn labels(&self) -> Option<&[i64]> {
        self.labels.as_deref()
    }

    /// Side information, if given (normalised).
    pub fn side(&self) -> Option<&Tensor> {
        self.side.as_ref()
    }

    /// SHA-256 (16 hex characters) of the normalised pairs, the labels and the side
    /// information.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"bcl-support-v1");
        for t in [Some(&self.old), Some(&self.new), self.side.as_ref()]
            .into_iter()
            .flatten()
        {
            for s in t.size() {
                h.update(s.to_le_bytes());
            }
            h.update(bytemuck::cast_slice::<f32, u8>(&values(t)));
        }
        if let Some(l) = &self.labels {
            h.update(b"labels");
            h.update(bytemuck::cast_slice::<i64, u8>(l));
        }
        hex(&h.finalize()[..8])
    }

    /// The card's record of it.
    pub fn info(&self) -> SupportInfo {
        SupportInfo {
            fingerprint: self.fingerprint(),
            pairs: self.len(),
            labelled: self.labels.is_some(),
            side_dim: self.side.as_ref().map(|s| s.size()[1] as usize),
            source: self.source.clone(),
        }
    }
}
