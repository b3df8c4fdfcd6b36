//! smoothcert: randomized-smoothing robustness certificates for image classifiers.
//!
//! Modules, one owner each (see DESIGN.md):
//! - [`smoothing`]: the statistics, no torch (Clopper-Pearson, radius, binomial test).
//! - [`data`]: datasets (Fashion-MNIST IDX, CIFAR-10 binary) and single images.
//! - [`model`]: architectures, bundles, devices, noise and counting on the device.
//! - [`engine`]: Monte Carlo CERTIFY and PREDICT over batches of inputs.
//! - [`pipeline`]: training, count sampling, offline certification, reports.
//! - [`bench`]: the benchmarks (engine rate, methods against Monte Carlo, the served rate).
//! - [`allocator`]: glibc malloc thresholds for tensor-sized buffers.
//! - [`batcher`]: dynamic batching on dedicated inference threads.
//! - [`server`]: the gRPC service (tonic), health, reflection, metrics endpoint.
//! - [`config`], [`metrics`]: the service's configuration and Prometheus metrics.
pub mod allocator;
pub mod batcher;
pub mod bench;
pub mod config;
pub mod data;
pub mod engine;
pub mod fsutil;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod server;
pub mod smoothing;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing;
