//! Device selection. CUDA support lives in `libtorch_cuda.so`, which the
//! linker drops (`--as-needed`: no symbol of it is referenced), so it is
//! loaded explicitly here; on a machine without a GPU runtime that load fails
//! and everything stays on the CPU.
use super::ModelError;
use std::sync::OnceLock;
use tch::Device;

/// Whether CUDA could be brought up, and why not.
#[derive(Debug, Clone)]
pub struct CudaStatus {
    pub available: bool,
    pub device_count: i64,
    pub detail: String,
}

static CUDA: OnceLock<CudaStatus> = OnceLock::new();

/// Loads libtorch's CUDA backend once (registering its hooks) and reports.
pub fn cuda_status() -> &'static CudaStatus {
    CUDA.get_or_init(|| {
        // Leaked on purpose: the backend must stay loaded for the process lifetime.
        let loaded = unsafe { libloading::Library::new("libtorch_cuda.so") };
        let detail = match loaded {
            Ok(lib) => {
                std::mem::forget(lib);
                "libtorch_cuda.so loaded".to_string()
            }
            Err(e) => format!("libtorch_cuda.so not loadable: {e}"),
        };
        let available = tch::Cuda::is_available();
        let device_count = if available {
            tch::Cuda::device_count()
        } else {
            0
        };
        tracing::debug!(available, device_count, %detail, "CUDA probe");
        CudaStatus {
            available,
            device_count,
            detail,
        }
    })
}

/// Parses `cpu`, `cuda`, `cuda:N` or `auto` (the first GPU when there is one).
pub fn parse_device(spec: &str) -> Result<Device, ModelError> {
    let spec = spec.trim().to_ascii_lowercase();
    let want_cuda = |index: usize| {
        let status = cuda_status();
        if !status.available {
            return Err(ModelError::CudaUnavailable(
                spec.clone(),
                status.detail.clone(),
            ));
        }
        if index as i64 >= status.device_count {
            return Err(ModelError::CudaUnavailable(
                spec.clone(),
                format!("only {} CUDA device(s)", status.device_count),
            ));
        }
        Ok(Device::Cuda(index))
    };
    match spec.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(if cuda_status().available {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }),
        "cuda" | "gpu" => want_cuda(0),
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => want_cuda(i),
            _ => Err(ModelError::InvalidDevice(spec.clone())),
        },
    }
}

/// The forward batch for a device: `configured`, or when 0 the size that suits
/// it and the model's `input` [C, H, W]: 32 on a CPU (where small batches are
/// fastest, and which any model fits); on a GPU 4096 inputs of up to
/// 3 x 32 x 32 pixels, fewer in proportion for larger ones (at least 64:
/// 83 for 3 x 224 x 224), so that a ResNet's activations stay within a few GB.
pub fn forward_batch_for(device: Device, configured: i64, input: [usize; 3]) -> i64 {
    const GPU_BATCH: i64 = 4096;
    const GPU_PIXELS: i64 = GPU_BATCH * 3 * 32 * 32;
    let pixels = input.iter().product::<usize>().max(1) as i64;
    match configured {
        0 if device.is_cuda() => (GPU_PIXELS / pixels).clamp(64, GPU_BATCH),
        0 => 32,
        fb => fb,
    }
}

/// Rows of every surrogate forward pass on a device (inputs are chunked
/// and the last chunk padded to it, see [`super::Classifier::forward_rows`]):
/// 1 on a CPU, where one input costs least per request and the shape never
/// varies; 64 on a GPU, where a pass costs its launches, not its rows.
pub fn surrogate_rows_for(device: Device) -> i64 {
    if device.is_cuda() {
        64
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(parse_device(" CPU ").unwrap(), Device::Cpu);
        for bad in ["", "tpu", "cuda:x", "cuda:-1"] {
            assert!(matches!(
                parse_device(bad),
                Err(ModelError::InvalidDevice(_))
            ));
        }
        let auto = parse_device("auto").unwrap();
        if cuda_status().available {
            assert_eq!(auto, Device::Cuda(0));
        } else {
            assert_eq!(auto, Device::Cpu);
            assert!(matches!(
                parse_device("cuda:0"),
                Err(ModelError::CudaUnavailable(..))
            ));
        }
    }
}
