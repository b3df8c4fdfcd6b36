//! smoothcert: randomized-smoothing robustness certificates for image classifiers.
//!
//! Modules, one owner each (see DESIGN.md):
//! - [`smoothing`]: the statistics, no torch (Clopper-Pearson, radius, binomial test).
//! - [`data`]: datasets (Fashion-MNIST IDX, CIFAR-10 binary) and single images.
//! - [`model`]: architectures, bundles, devices, noise and counting on the device.
//! - [`engine`]: Monte Carlo CERTIFY and PREDICT over batches of inputs.
//! - [`pipeline`]: training, offline certification, reports, benchmarks.
pub mod data;
pub mod engine;
pub mod fsutil;
pub mod model;
pub mod pipeline;
pub mod smoothing;
#[doc(hidden)]
pub mod testing;
