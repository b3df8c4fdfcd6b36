//! Models: built-in architectures and TorchScript, bundles on disk, device
//! placement, and noisy sampling with counting on the device.
mod arch;
mod bundle;
mod classifier;
mod device;
pub mod noise;

pub use arch::Arch;
pub use bundle::{
    BaseSpec, Bundle, BundleError, Calibration, CalibrationBin, Normalization, Provenance,
    SurrogateSpec, SurrogateTraining, TailMap, WeightsFormat, MANIFEST,
};
#[cfg(test)]
pub(crate) use classifier::block_seed;
pub use classifier::{
    splitmix64_mix, Classifier, Network, NoiseStream, StreamTally, GOLDEN_GAMMA, NOISE_BLOCK,
};
pub use device::{cuda_status, forward_batch_for, parse_device, surrogate_rows_for, CudaStatus};

/// libtorch has one global random generator (tch exposes no per-call
/// generator): whoever seeds it and draws from it holds this lock, so that
/// concurrent draws (server workers, tests) do not interleave.
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Failures of model loading and inference; `Clone` so one failed batch can
/// answer every request in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ModelError {
    #[error("invalid device {0:?}: expected cpu, cuda, cuda:N or auto")]
    InvalidDevice(String),
    #[error("device {0} requested but CUDA is not available ({1})")]
    CudaUnavailable(String, String),
    #[error("unknown architecture {0:?}: expected one of {1}")]
    UnknownArch(String, String),
    #[error("bundle: {0}")]
    Bundle(String),
    #[error("libtorch: {0}")]
    Torch(String),
    /// The device ran out of memory: the same work may succeed later, or
    /// with a smaller forward batch.
    #[error("out of device memory: {0}")]
    OutOfMemory(String),
    #[error("model output has shape {got:?}, expected [batch, {classes}]")]
    BadOutput { got: Vec<i64>, classes: usize },
}

impl From<tch::TchError> for ModelError {
    fn from(e: tch::TchError) -> Self {
        let message = e.to_string();
        // libtorch reports CUDA's and the CPU allocator's exhaustion in these words.
        if message.contains("out of memory")
            || message.contains("DefaultCPUAllocator: can't allocate")
        {
            ModelError::OutOfMemory(message)
        } else {
            ModelError::Torch(message)
        }
    }
}

impl ModelError {
    /// Whether a retry of the same work may succeed (the device was short of
    /// memory), as opposed to a fault of the model or the request.
    pub fn is_transient(&self) -> bool {
        matches!(self, ModelError::OutOfMemory(_))
    }
}

impl From<BundleError> for ModelError {
    fn from(e: BundleError) -> Self {
        ModelError::Bundle(e.to_string())
    }
}
