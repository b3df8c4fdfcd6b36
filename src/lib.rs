//! smoothcert: randomized-smoothing robustness certificates for image classifiers.
//!
//! Modules, one owner each; how they fit together, and the request path
//! through them, is in `docs/ARCHITECTURE.md`:
//! - [`smoothing`]: the statistics, no torch (Clopper-Pearson, radius, binomial test).
//! - [`data`]: datasets (Fashion-MNIST IDX, CIFAR-10 binary) and single images.
//! - [`model`]: architectures, bundles, devices, noise and counting on the device.
//! - [`engine`]: Monte Carlo CERTIFY and PREDICT over batches of inputs.
//! - [`pipeline`]: training, count sampling, offline certification, reports.
//! - [`bench`]: the benchmarks (engine rate, methods against Monte Carlo, the served rate).
//! - [`allocator`]: glibc malloc thresholds for tensor-sized buffers.
//! - [`batcher`]: dynamic batching on dedicated inference threads, and nothing else.
//! - [`methods`]: typed certificate requests, checked in one place, and the
//!   methods carried out over the lanes (AUTO, SEQUENTIAL), online or offline.
//! - [`server`]: the gRPC service (tonic), health, reflection, metrics endpoint.
//! - [`config`], [`metrics`]: the service's configuration and Prometheus metrics.
pub mod allocator;
pub mod batcher;
pub mod bench;
pub mod config;
pub mod data;
pub mod engine;
pub mod fsutil;
pub mod methods;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod server;
pub mod smoothing;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing;
