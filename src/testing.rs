//! Test fixtures shared by unit and integration tests: models whose smoothed
//! behaviour is known in closed form, so results can be checked against an
//! independent computation rather than against recorded outputs.
use crate::data::DatasetKind;
use crate::model::{BaseSpec, Bundle, Provenance, WeightsFormat};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Writes a bundle whose base classifier is the TorchScript trace of a
/// linear two-class rule on the first pixel: class 1 iff x[0] > threshold.
///
/// Under Gaussian noise its smoothed classifier is itself, pA is
/// Phi(|x[0] - threshold| / sigma) and the exact certified L2 radius is the
/// distance to the boundary, |x[0] - threshold|.
pub fn write_threshold_bundle(dir: &Path, shape: [usize; 3], threshold: f64, sigma: f64) -> Bundle {
    write_threshold_bundle_with(
        dir,
        shape,
        threshold,
        crate::smoothing::Noise::Gaussian { sigma },
    )
}

/// The same rule under any noise. Under uniform noise on [-lambda, lambda]
/// (|x[0] - threshold| < lambda) pA is (|x[0] - threshold| + lambda) / (2
/// lambda), under Laplace noise 1 - exp(-|x[0] - threshold| / lambda) / 2;
/// either way the exact certified L1 radius is the distance to the boundary.
pub fn write_threshold_bundle_with(
    dir: &Path,
    shape: [usize; 3],
    threshold: f64,
    noise: crate::smoothing::Noise,
) -> Bundle {
    std::fs::create_dir_all(dir).expect("create bundle dir");
    let [c, h, w] = shape.map(|d| d as i64);
    let example = Tensor::rand([2, c, h, w], (Kind::Float, Device::Cpu));
    let module = tch::CModule::create_by_tracing("Threshold", "forward", &[example], &mut |xs| {
        let first = xs[0].flatten(1, -1).select(1, 0);
        let margin = first - threshold;
        vec![Tensor::stack(&[-&margin, margin], 1)]
    })
    .expect("trace");
    module.save(dir.join("base.pt")).expect("save TorchScript");
    let bundle = Bundle {
        name: "threshold".into(),
        version: "test".into(),
        input_shape: shape,
        labels: vec!["low".into(), "high".into()],
        normalization: None,
        noise,
        base: BaseSpec {
            format: WeightsFormat::Torchscript,
            file: "base.pt".into(),
            arch: None,
        },
        provenance: Provenance {
            dataset: Some(DatasetKind::FashionMnist.into()),
            ..Default::default()
        },
        surrogate: None,
        dir: dir.to_path_buf(),
    };
    bundle.save().expect("save bundle");
    bundle
}

/// Standard normal CDF via statrs, for expected values in tests.
pub fn phi(x: f64) -> f64 {
    use statrs::distribution::{ContinuousCDF, Normal};
    Normal::standard().cdf(x)
}

/// An input of `shape` filled with `fill`, first pixel `first`.
pub fn input_with_first_pixel(shape: [usize; 3], first: f64, fill: f64) -> Vec<f32> {
    let mut v = vec![fill as f32; shape.iter().product()];
    v[0] = first as f32;
    v
}

/// libtorch has one global random generator (tch exposes no per-call
/// generator), so tests that seed it, or draw from it, run one at a time.
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
