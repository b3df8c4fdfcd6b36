//! Flag groups that several commands share, declared once and flattened
//! (`#[command(flatten)]`) into each command's arguments, and the value
//! parsers of flags whose type the library defines.
//!
//! A command whose flag has its own default or help text says so with
//! `#[command(mut_arg(...))]` on its arguments struct; the group keeps the
//! flag's name, type and parsing.
use anyhow::Result;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use smoothcert::config::DEFAULT_AUTO_BAND;
use smoothcert::engine::{AutoBand, CertifyParams};
use smoothcert::model::{cuda_status, parse_device, Arch};
use smoothcert::smoothing::AdaptiveN0;

/// `--noise` and its scale: `--sigma` (gaussian) or `--lambda` (uniform, laplace).
#[derive(clap::Args, Debug, Clone)]
pub struct NoiseArgs {
    /// The smoothing noise: gaussian (L2 certificates), uniform or laplace (L1).
    #[arg(long, default_value = "gaussian", value_parser = ["gaussian", "uniform", "laplace"])]
    noise: String,
    /// The Gaussian's standard deviation.
    #[arg(long)]
    sigma: Option<f64>,
    /// The uniform noise's half-width, or the Laplace noise's scale.
    #[arg(long)]
    lambda: Option<f64>,
}

impl NoiseArgs {
    /// The noise the flags give; `default_sigma` stands in for a missing
    /// --sigma where a command has one.
    pub fn noise(&self, default_sigma: Option<f64>) -> Result<smoothcert::smoothing::Noise> {
        use smoothcert::smoothing::Noise;
        let noise = match (self.noise.as_str(), self.sigma, self.lambda) {
            ("gaussian", sigma, None) => Noise::Gaussian {
                sigma: sigma
                    .or(default_sigma)
                    .ok_or_else(|| anyhow::anyhow!("--noise gaussian needs --sigma"))?,
            },
            ("uniform", None, Some(lambda)) => Noise::Uniform { lambda },
            ("laplace", None, Some(lambda)) => Noise::Laplace { lambda },
            ("gaussian", _, Some(_)) => anyhow::bail!(
                "--lambda is for --noise uniform or laplace; the Gaussian takes --sigma"
            ),
            (kind, Some(_), _) => {
                anyhow::bail!("--sigma is the Gaussian's; --noise {kind} takes --lambda")
            }
            (kind, None, _) => anyhow::bail!("--noise {kind} needs --lambda"),
        };
        noise.validate().map_err(|_| {
            anyhow::anyhow!(
                "--{} must be > 0, got {}",
                noise.scale_name(),
                noise.scale()
            )
        })?;
        Ok(noise)
    }
}

/// `--device`: where the model runs.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    #[arg(long, default_value = "auto")]
    device: String,
}

impl DeviceArgs {
    /// The device `--device` names (cpu, cuda, cuda:N, gpu or auto), logged
    /// with the CUDA status.
    pub fn device(&self) -> Result<tch::Device> {
        let d = parse_device(&self.device)?;
        tracing::info!(device = ?d, cuda = %cuda_status().detail, "device selected");
        Ok(d)
    }

    /// `--device` as given, for options that resolve it themselves.
    pub fn into_spec(self) -> String {
        self.device
    }
}

/// Monte Carlo sampling: n0 selection samples, n estimation samples, the
/// certificate level and the forward batch. `--n` has no default here: a
/// command supplies one (`mut_arg`) or resolves it when absent.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct SamplingArgs {
    #[arg(long, default_value_t = 100)]
    pub n0: u64,
    #[arg(long)]
    pub n: Option<u64>,
    #[arg(long, default_value_t = 0.001)]
    pub alpha: f64,
    /// Forward batch; default: the device's (32 on a CPU, 4096 on a GPU).
    #[arg(long)]
    pub batch: Option<i64>,
}

impl SamplingArgs {
    /// The engine's parameters with `n` estimation samples on `device`, for the bundle at `bundle`.
    pub fn params(self, n: u64, device: tch::Device, bundle: &std::path::Path) -> CertifyParams {
        CertifyParams {
            n0: self.n0,
            n,
            alpha: self.alpha,
            batch: forward_batch(self.batch, device, bundle),
        }
    }
}

/// `--batch` when given, else the forward batch that suits the device and
/// the input shape of the bundle at `bundle` (the server's rule): the fast
/// path for a user who sets nothing. A bundle that does not load gets the
/// small-input size here, and its own error from the command.
pub fn forward_batch(given: Option<i64>, device: tch::Device, bundle: &std::path::Path) -> i64 {
    let input = smoothcert::model::Bundle::load(bundle).map_or([1, 1, 1], |b| b.input_shape);
    given.unwrap_or_else(|| smoothcert::model::forward_batch_for(device, 0, input))
}

/// AUTO's band: where the calibrated estimate falls back to Monte Carlo.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct AutoBandArgs {
    /// AUTO falls back to Monte Carlo when the calibrated pA_lower is in [low, high].
    #[arg(long, default_value_t = DEFAULT_AUTO_BAND.0)]
    pub auto_band_low: f64,
    #[arg(long, default_value_t = DEFAULT_AUTO_BAND.1)]
    pub auto_band_high: f64,
}

impl AutoBandArgs {
    pub fn band(self) -> AutoBand {
        AutoBand {
            low: self.auto_band_low,
            high: self.auto_band_high,
        }
    }
}

/// Adaptive n0: sequential choice of cA.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct AdaptiveArgs {
    /// Choose cA sequentially: samples in chunks, stop once a binomial test at
    /// level alpha / (number of looks) settles the leader; n0 is the cap.
    #[arg(long)]
    adaptive_n0: bool,
    #[arg(long, default_value_t = 10)]
    adaptive_chunk: u64,
    #[arg(long, default_value_t = 0.001)]
    adaptive_alpha: f64,
}

impl AdaptiveArgs {
    /// The selection rule, when `--adaptive-n0` asks for one.
    pub fn rule(self) -> Option<AdaptiveN0> {
        self.adaptive_n0.then_some(AdaptiveN0 {
            chunk: self.adaptive_chunk,
            alpha: self.adaptive_alpha,
        })
    }
}

/// `--arch`: one of [`Arch::NAMES`]; another name is an error that lists them.
pub fn arch_parser() -> impl TypedValueParser<Value = Arch> {
    PossibleValuesParser::new(Arch::NAMES.iter().copied()).try_map(|name| Arch::parse(&name))
}

/// What `calibrate` and `select-calibration` score: a bundle's surrogate on
/// held-out inputs with Monte Carlo counts at its nominal N, cA drawn from n0
/// base-classifier samples as certification draws it.
#[derive(clap::Args, Debug)]
pub struct HeldOutScoringArgs {
    #[arg(long)]
    pub bundle: std::path::PathBuf,
    /// Counts at the nominal N of held-out inputs (shards of one run are joined).
    #[arg(long, required = true, num_args = 1..)]
    pub counts: Vec<std::path::PathBuf>,
    /// The overestimation probability to calibrate for.
    #[arg(long, default_value_t = 0.05)]
    pub delta: f64,
    /// Selection samples, as certification will draw them.
    #[arg(long, default_value_t = 100)]
    pub n0: u64,
    /// Certificate level (which inputs Monte Carlo certifies, and at what radius).
    #[arg(long, default_value_t = 0.001)]
    pub alpha: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Forward batch; default: the device's (32 on a CPU, 4096 on a GPU).
    #[arg(long)]
    pub batch: Option<i64>,
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl HeldOutScoringArgs {
    /// The calibration options these flags give, with `score`, `rank_rule`
    /// and `bin_edges` as the command decides.
    pub fn options(
        self,
        score: smoothcert::smoothing::ConformalScore,
        rank_rule: smoothcert::smoothing::RankRule,
        bin_edges: Vec<f64>,
    ) -> Result<smoothcert::pipeline::calibrate::CalibrateOptions> {
        let device = self.device.device()?;
        Ok(smoothcert::pipeline::calibrate::CalibrateOptions {
            bundle: self.bundle.clone(),
            counts: self.counts,
            delta: self.delta,
            score,
            rank_rule,
            bin_edges,
            margin_threshold: None,
            n0: self.n0,
            alpha: self.alpha,
            seed: self.seed,
            batch: forward_batch(self.batch, device, &self.bundle),
            data_dir: self.data_dir,
            device,
        })
    }
}

/// A margin threshold (a z) or "none": the surrogate's p_hat alone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MarginThreshold(pub Option<f64>);

impl std::str::FromStr for MarginThreshold {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let s = s.trim();
        if s == "none" {
            return Ok(MarginThreshold(None));
        }
        match s.parse::<f64>() {
            Ok(z) if z.is_finite() => Ok(MarginThreshold(Some(z))),
            _ => Err(format!("{s:?}: a z (e.g. 2.5) or none")),
        }
    }
}

impl std::fmt::Display for MarginThreshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(z) => write!(f, "{z}"),
            None => f.write_str("none"),
        }
    }
}
