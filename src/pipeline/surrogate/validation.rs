//! The surrogate's validation figures on its held-out counted inputs: what
//! picks the best epoch, and what the bundle records of it.
use super::margin_tail::{self, TailTargets};
use super::{js_divergence, PipelineError};
use crate::model::Classifier;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ValidationFigures {
    pub mean_js: f64,
    pub top1_agreement: f64,
    pub mean_abs_err_pa: f64,
    pub p95_abs_err_pa: f64,
    /// Mean squared error of ln(1 - p[cA]) against the margin tail's target,
    /// over the inputs that have one (0 without a margin tail).
    #[serde(default)]
    pub mean_tail_err: f64,
}

impl ValidationFigures {
    /// What picks the best epoch: the validation JS, plus the margin tail's
    /// error at its training weight.
    pub(super) fn selection_score(&self, margin_tail: f64) -> f64 {
        self.mean_js + margin_tail * self.mean_tail_err
    }
}

/// The validation figures of `model` on (x, q).
pub fn validate(
    model: &Classifier,
    x: &Tensor,
    q: &Tensor,
    tail: Option<&TailTargets>,
    chunk: i64,
) -> Result<ValidationFigures, PipelineError> {
    let _guard = tch::no_grad_guard();
    let n = x.size()[0];
    if n == 0 {
        return Ok(ValidationFigures::default());
    }
    let mut js = Vec::new();
    let mut tail_err = Vec::new();
    let mut p_all = Vec::new();
    // The training batch: what fits the device for training fits here.
    let chunk = chunk.max(1);
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let logits = model.logits(&x.narrow(0, start, len))?;
        js.push(js_divergence(&logits, &q.narrow(0, start, len)));
        if let Some(t) = tail {
            let (a, ln) = t.narrow(start, len);
            tail_err.push(margin_tail::per_input(&logits, &a, &ln));
        }
        p_all.push(logits.softmax(1, Kind::Float));
        start += len;
    }
    let js = Tensor::cat(&js, 0);
    let p = Tensor::cat(&p_all, 0);
    let c_a = q.argmax(1, false);
    let agree = p
        .argmax(1, false)
        .eq_tensor(&c_a)
        .to_kind(Kind::Float)
        .mean(Kind::Float);
    let err = (p.gather(1, &c_a.unsqueeze(1), false) - q.gather(1, &c_a.unsqueeze(1), false))
        .abs()
        .squeeze_dim(1);
    let mut errs: Vec<f64> = Vec::try_from(err.to_kind(Kind::Double).to_device(Device::Cpu))?;
    errs.sort_by(f64::total_cmp);
    let p95 = crate::pipeline::report::nearest_rank(&errs, 0.95);
    let mean_tail_err = match tail {
        Some(t) if !tail_err.is_empty() => {
            let with = t.with_target() as f64;
            Tensor::cat(&tail_err, 0)
                .sum(Kind::Double)
                .double_value(&[])
                / with.max(1.0)
        }
        _ => 0.0,
    };
    Ok(ValidationFigures {
        mean_tail_err,
        mean_js: js.mean(Kind::Double).double_value(&[]),
        top1_agreement: agree.double_value(&[]),
        mean_abs_err_pa: errs.iter().sum::<f64>() / errs.len() as f64,
        p95_abs_err_pa: p95,
    })
}
