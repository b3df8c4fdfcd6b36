//! What counting accumulates: per noise stream, class counts on the device
//! and, for selection, margin sums on the CPU.
use super::ModelError;
use tch::{Device, Kind, Tensor};

/// One noise stream's class counts and, when asked, its margin sums per class
/// (empty otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamTally {
    pub counts: Vec<u64>,
    pub margin_sum: Vec<f64>,
    pub margin_sum_sq: Vec<f64>,
}

/// What a tally accumulates: counts [streams * classes] on the device and,
/// when asked, margin sums and sums of squares [streams, classes] on the CPU,
/// where `index_add_` adds in row order (CUDA's adds are atomic, in no fixed
/// order, so a float sum there could differ in its last bits run to run).
pub(super) struct Tally {
    pub(super) counts: Tensor,
    pub(super) margins: Option<(Tensor, Tensor)>,
}

impl Tally {
    /// An empty tally of `streams` streams over `classes` classes on `device`.
    pub(super) fn zeros(
        streams: i64,
        classes: i64,
        margins: bool,
        device: Device,
    ) -> Result<Tally, ModelError> {
        Ok(Tally {
            counts: Tensor::f_zeros([streams * classes], (Kind::Int64, device))?,
            margins: if margins {
                Some((
                    Tensor::f_zeros([streams, classes], (Kind::Double, Device::Cpu))?,
                    Tensor::f_zeros([streams, classes], (Kind::Double, Device::Cpu))?,
                ))
            } else {
                None
            },
        })
    }

    /// Adds each row's margins (when asked for) at its owner's row: the margin
    /// of class c is its logit minus the largest other logit, i.e. minus the
    /// top logit, except for the top class itself (top - second).
    pub(super) fn add_margins(
        &mut self,
        logits: &Tensor,
        owner: &Tensor,
    ) -> Result<(), ModelError> {
        let Some((sum, sum_sq)) = self.margins.as_mut() else {
            return Ok(());
        };
        let (top2, at) = logits.f_topk(2, 1, true, true)?;
        let first = top2.f_narrow(1, 0, 1)?;
        let lead = first.f_sub(&top2.f_narrow(1, 1, 1)?)?;
        let margin = logits
            .f_sub(&first)?
            .f_scatter(1, &at.f_narrow(1, 0, 1)?, &lead)?
            .f_to_kind(Kind::Double)?
            .f_to_device(Device::Cpu)?;
        let owner = owner.f_to_device(Device::Cpu)?;
        let _ = sum.f_index_add_(0, &owner, &margin)?;
        let _ = sum_sq.f_index_add_(0, &owner, &margin.f_square()?)?;
        Ok(())
    }

    /// Each stream's tally on the CPU (`k` classes), `None` for those not `alive`.
    pub(super) fn per_stream(
        &self,
        alive: &[bool],
        k: usize,
    ) -> Result<Vec<Option<StreamTally>>, ModelError> {
        let flat: Vec<i64> = Vec::try_from(self.counts.f_to_device(Device::Cpu)?)?;
        let (sum, sum_sq): (Vec<f64>, Vec<f64>) = match &self.margins {
            Some((sum, sum_sq)) => (
                Vec::try_from(sum.f_flatten(0, -1)?.f_to_device(Device::Cpu)?)?,
                Vec::try_from(sum_sq.f_flatten(0, -1)?.f_to_device(Device::Cpu)?)?,
            ),
            None => (Vec::new(), Vec::new()),
        };
        Ok(flat
            .chunks(k)
            .zip(alive)
            .enumerate()
            .map(|(s, (row, &alive))| {
                alive.then(|| StreamTally {
                    counts: row.iter().map(|&c| c as u64).collect(),
                    margin_sum: sum
                        .get(s * k..(s + 1) * k)
                        .map(<[f64]>::to_vec)
                        .unwrap_or_default(),
                    margin_sum_sq: sum_sq
                        .get(s * k..(s + 1) * k)
                        .map(<[f64]>::to_vec)
                        .unwrap_or_default(),
                })
            })
            .collect())
    }
}
