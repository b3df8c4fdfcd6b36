//! The served path for offline callers (`certify`, the benchmarks): a
//! model's lanes, exactly as the server runs them, driven one request at a
//! time from a blocking thread. One seed gives the same answer here as over
//! gRPC, because it is the same code.
use super::{CertifyRequest, PredictRequest};
use crate::batcher::{no_deadline, Answer, BatchError, BatchingOptions, ModelWorkers, StartError};
use crate::metrics::Metrics;
use crate::model::Bundle;
use std::sync::Arc;
use tch::Device;

pub struct Offline {
    workers: ModelWorkers,
    runtime: tokio::runtime::Runtime,
}

impl Offline {
    pub fn start(
        bundle: &Bundle,
        device: Device,
        forward_batch: i64,
    ) -> Result<Offline, StartError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|source| StartError::Spawn {
                model: bundle.name.clone(),
                lane: "offline runtime",
                source,
            })?;
        // Nobody scrapes an offline run's metrics; the lanes record them anyway.
        let workers = ModelWorkers::start(
            &bundle.name,
            bundle,
            device,
            &BatchingOptions::one_at_a_time(device, forward_batch, bundle.input_shape),
            Arc::new(Metrics::new()),
        )?;
        Ok(Offline { workers, runtime })
    }

    /// One certificate request, without a deadline.
    pub fn certify(&self, req: &CertifyRequest, pixels: Vec<f32>) -> Result<Answer, BatchError> {
        self.runtime
            .block_on(super::certify(&self.workers, req, pixels, no_deadline()))
    }

    /// PREDICT, without a deadline.
    pub fn predict(&self, req: &PredictRequest, pixels: Vec<f32>) -> Result<Answer, BatchError> {
        self.runtime
            .block_on(super::predict(&self.workers, req, pixels, no_deadline()))
    }

    pub fn shutdown(self) {
        self.workers.shutdown();
    }
}
