//! Drawing the smoothing noise on the device, in pixel space (the model
//! normalizes after it). What a noise certifies is `smoothing::Noise`'s.
use super::ModelError;
use crate::smoothing::Noise;
use tch::{Device, Kind, Tensor};

/// Noise of `shape` from libtorch's generator (the caller seeds it):
/// sigma * N(0, 1), lambda * U(-1, 1), or lambda * Laplace(0, 1) by
/// inversion of a uniform draw.
pub fn draw(noise: Noise, shape: &[i64], device: Device) -> Result<Tensor, ModelError> {
    let opts = (Kind::Float, device);
    Ok(match noise {
        Noise::Gaussian { sigma } => {
            let mut e = Tensor::f_randn(shape, opts)?;
            let _ = e.f_mul_scalar_(sigma)?;
            e
        }
        Noise::Uniform { lambda } => {
            let mut e = Tensor::f_rand(shape, opts)?;
            let _ = e.f_mul_scalar_(2.0 * lambda)?.f_sub_scalar_(lambda)?;
            e
        }
        Noise::Laplace { lambda } => {
            // u in [-1/2, 1/2): x = -lambda sign(u) ln(1 - 2|u|), with
            // 1 - 2|u| kept above 0 (u = -1/2 has probability 2^-24).
            let u = Tensor::f_rand(shape, opts)?.f_sub_scalar(0.5)?;
            let tail = u
                .f_abs()?
                .f_mul_scalar(-2.0)?
                .f_add_scalar(1.0)?
                .f_clamp_min(f64::from(f32::MIN_POSITIVE))?
                .f_log()?;
            u.f_sign()?.f_mul(&tail)?.f_mul_scalar(-lambda)?
        }
    })
}

/// `x` plus one draw of `noise` (none at all for a zero scale: clean inputs).
pub fn add_to(x: &Tensor, noise: Noise) -> Result<Tensor, ModelError> {
    if noise.scale() == 0.0 {
        return Ok(x.shallow_clone());
    }
    Ok(x.f_add(&draw(noise, &x.size(), x.device())?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each noise's draws have its distribution's moments and support:
    /// variance sigma^2, lambda^2 / 3 (uniform) and 2 lambda^2 (Laplace), and
    /// the uniform never leaves [-lambda, lambda].
    #[test]
    fn draws_have_each_distributions_moments() {
        let _rng = crate::testing::rng_lock();
        tch::manual_seed(7);
        let n = 400_000;
        for (noise, var) in [
            (Noise::Gaussian { sigma: 0.25 }, 0.0625),
            (Noise::Uniform { lambda: 0.5 }, 0.25 / 3.0),
            (Noise::Laplace { lambda: 0.25 }, 2.0 * 0.0625),
        ] {
            let e = draw(noise, &[n], Device::Cpu)
                .unwrap()
                .to_kind(Kind::Double);
            let mean = e.mean(Kind::Double).double_value(&[]);
            let v = e.var(true).double_value(&[]);
            let se_var = var * (2.0f64 * 6.0 / n as f64).sqrt();
            assert!(
                mean.abs() < 5.0 * (var / n as f64).sqrt(),
                "{noise}: mean {mean}"
            );
            assert!((v - var).abs() < 5.0 * se_var, "{noise}: var {v} vs {var}");
            let mad = e.abs().mean(Kind::Double).double_value(&[]);
            // E|x|: sigma sqrt(2 / pi), lambda / 2, lambda.
            let want = match noise {
                Noise::Gaussian { sigma } => sigma * (2.0 / std::f64::consts::PI).sqrt(),
                Noise::Uniform { lambda } => lambda / 2.0,
                Noise::Laplace { lambda } => lambda,
            };
            assert!(
                (mad - want).abs() < 0.01 * want,
                "{noise}: E|x| {mad} vs {want}"
            );
        }
        let u = draw(Noise::Uniform { lambda: 0.5 }, &[n], Device::Cpu).unwrap();
        assert!(u.abs().max().double_value(&[]) <= 0.5);
    }
}
