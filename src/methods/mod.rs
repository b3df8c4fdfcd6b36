//! The certification methods over a model's lanes: a typed request
//! ([`CertifyRequest`], built and checked in [`request`]) carried out as one
//! or more batcher tasks. Single-task methods are one call; AUTO's fallback
//! and SEQUENTIAL's staged test ([`sequential`]) are orchestrated here,
//! beside the engine, so the batcher only batches. The server, offline
//! `certify` and the benchmarks ([`Offline`]) all run this code: one seed
//! gives one answer everywhere.
pub mod offline;
pub mod request;
mod sequential;

pub use offline::Offline;
pub use request::{
    Calibrated, CertifyRequest, Defaults, Field, Limits, ModelTerms, Plan, PredictRequest,
    RequestError, RequestOptions, Sampling, Selection, Target,
};

use crate::batcher::{Answer, BatchError, ModelWorkers};
use crate::engine::requests::TaskParams;
use crate::engine::{Method, Outcome, Task};
use std::time::Instant;

/// Carries out one certificate request: its first task, and for AUTO, where
/// its band says so, Monte Carlo with the same cA (the sequential test when
/// it has a target). The answer names the method that produced it and
/// accounts for every step.
pub async fn certify(
    workers: &ModelWorkers,
    req: &CertifyRequest,
    pixels: Vec<f32>,
    deadline: Instant,
) -> Result<Answer, BatchError> {
    let params = req.task_params();
    match *req.plan() {
        Plan::Sequential { target, .. } => {
            sequential::certify(workers, pixels, params, target, deadline, None).await
        }
        Plan::Auto { band, target, .. } => {
            // The pixels stay for a possible second step.
            let first = workers
                .call(Task::Surrogate, pixels.clone(), params, deadline)
                .await?;
            let Some(class_a) = band.fallback(&first.outcome) else {
                return Ok(Answer {
                    method: Method::Calibrated,
                    ..first
                });
            };
            if let Some(target) = target {
                let fallback = TaskParams {
                    shift: None,
                    ..params
                };
                return sequential::certify(
                    workers,
                    pixels,
                    fallback,
                    target,
                    deadline,
                    Some(first),
                )
                .await;
            }
            let fallback = TaskParams {
                class_a: Some(class_a),
                ..params
            };
            let mut answer = workers
                .call(Task::MonteCarlo, pixels, fallback, deadline)
                .await?;
            if let Outcome::MonteCarlo(_, sel) = &mut answer.outcome {
                sel.drawn = first.outcome.n0_drawn();
            }
            answer.method = Method::MonteCarlo;
            answer.queue += first.queue;
            answer.timing.sampling += first.timing.sampling;
            answer.timing.surrogate += first.timing.surrogate;
            Ok(answer)
        }
        Plan::MonteCarlo { .. } | Plan::Surrogate { .. } | Plan::Calibrated(_) => {
            let task = match req.method() {
                Method::MonteCarlo => Task::MonteCarlo,
                _ => Task::Surrogate,
            };
            let mut answer = workers.call(task, pixels, params, deadline).await?;
            answer.method = req.method().answered_by(&answer.outcome);
            Ok(answer)
        }
    }
}

/// PREDICT: n samples and the binomial test.
pub async fn predict(
    workers: &ModelWorkers,
    req: &PredictRequest,
    pixels: Vec<f32>,
    deadline: Instant,
) -> Result<Answer, BatchError> {
    workers
        .call(Task::Predict, pixels, req.task_params(), deadline)
        .await
}
