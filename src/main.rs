//! The `smoothcert` command line: the offline pipeline (train-base, certify,
//! report, bench) and diagnostics.
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use smoothcert::data::{DatasetKind, Split};
use smoothcert::engine::CertifyParams;
use smoothcert::model::{cuda_status, parse_device, Arch};
use smoothcert::pipeline::{bench, certify, counts, report, surrogate, train};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "smoothcert",
    version,
    about = "Randomized-smoothing robustness certificates"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a base classifier with Gaussian noise augmentation and write a bundle.
    TrainBase {
        #[arg(long, default_value = "fashion-mnist")]
        dataset: DatasetKind,
        /// Where the dataset files are (default: the dataset's usual place).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long, default_value = "small-cnn", value_parser = parse_arch)]
        arch: Arch,
        #[arg(long, default_value_t = 0.25)]
        sigma: f64,
        #[arg(long, default_value_t = 10)]
        epochs: usize,
        #[arg(long, default_value_t = 128)]
        batch_size: usize,
        #[arg(long, default_value_t = 1e-3)]
        lr: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Use only the first N training images.
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value = "auto")]
        device: String,
        /// Bundle name in model.toml.
        #[arg(long)]
        name: Option<String>,
        /// Train at most N epochs now and leave the checkpoint; rerun to continue.
        #[arg(long)]
        pause_after: Option<usize>,
        /// The bundle directory to write (holds the checkpoint while training).
        #[arg(long)]
        out: PathBuf,
    },
    /// Monte Carlo class counts over N noisy copies of each input (surrogate training data).
    SampleCounts {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long, default_value = "train")]
        split: Split,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long, default_value_t = 100_000)]
        n: u64,
        /// Every K-th input.
        #[arg(long, default_value_t = 1)]
        skip: usize,
        /// At most M inputs (before sharding).
        #[arg(long)]
        max: Option<usize>,
        /// i/k: this process's share, the inputs at positions p with p % k == i.
        #[arg(long)]
        shard: Option<counts::Shard>,
        /// Inputs per chunk file, the unit of resumption.
        #[arg(long, default_value_t = 50)]
        chunk: usize,
        /// Forward batch size.
        #[arg(long, default_value_t = 1000)]
        batch: i64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = "auto")]
        device: String,
        /// Sample at most K chunks now, then stop; rerun to continue.
        #[arg(long)]
        pause_after: Option<usize>,
        /// Output safetensors file (chunks collect in FILE.parts/ until done).
        #[arg(long)]
        out: PathBuf,
    },
    /// Train the Accelerated Smoothing surrogate on Monte Carlo counts; writes it into the bundle.
    TrainSurrogate {
        #[arg(long)]
        bundle: PathBuf,
        /// Counts file(s) from sample-counts (shards of one run are joined).
        #[arg(long, required = true, num_args = 1..)]
        counts: Vec<PathBuf>,
        #[arg(long, default_value = "small-cnn", value_parser = parse_arch)]
        arch: Arch,
        #[arg(long, value_enum, default_value = "js")]
        loss: surrogate::SurrogateLoss,
        #[arg(long, default_value_t = 20)]
        epochs: usize,
        #[arg(long, default_value_t = 128)]
        batch_size: usize,
        #[arg(long, default_value_t = 1e-3)]
        lr: f64,
        #[arg(long, default_value_t = 0.1)]
        val_fraction: f64,
        /// The sample count the surrogate stands in for (default 100000).
        #[arg(long)]
        nominal_n: Option<u64>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = "auto")]
        device: String,
        #[arg(long)]
        pause_after: Option<usize>,
        /// Start from the base classifier's weights (same architecture).
        #[arg(long)]
        init_from_base: bool,
    },
    /// Join count shards of one run into one file.
    MergeCounts {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Certify inputs of a dataset split; one TSV row per input.
    Certify {
        #[arg(long)]
        bundle: PathBuf,
        /// mc: Monte Carlo CERTIFY (Cohen et al.), a certificate at level 1 - alpha;
        /// surrogate: Accelerated Smoothing's estimate of it (not a guarantee).
        #[arg(long, value_enum, default_value = "mc")]
        method: certify::Method,
        #[arg(long, default_value = "test")]
        split: Split,
        /// Overrides where the bundle's dataset files are.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Certify every K-th input.
        #[arg(long, default_value_t = 1)]
        skip: usize,
        /// Certify at most M inputs.
        #[arg(long)]
        max: Option<usize>,
        #[arg(long, default_value_t = 100)]
        n0: u64,
        /// Samples (mc) or nominal samples (surrogate); default 100000 for mc and the
        /// surrogate's nominal N for surrogate.
        #[arg(long)]
        n: Option<u64>,
        #[arg(long, default_value_t = 0.001)]
        alpha: f64,
        /// Forward batch size the samples are chunked into.
        #[arg(long, default_value_t = 1000)]
        batch: i64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[command(flatten)]
        adaptive: AdaptiveArgs,
        /// AUTO falls back to Monte Carlo when the calibrated pA_lower is in [low, high].
        #[arg(long, default_value_t = smoothcert::config::DEFAULT_AUTO_BAND.0)]
        auto_band_low: f64,
        #[arg(long, default_value_t = smoothcert::config::DEFAULT_AUTO_BAND.1)]
        auto_band_high: f64,
        #[arg(long, default_value = "auto")]
        device: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Recalibrates the surrogate's tail (its miss mass, binned) on Monte Carlo counts
    /// of inputs it never trained on; drops a calibration, which measured it without.
    FitTailMap {
        #[arg(long)]
        bundle: PathBuf,
        /// Counts of held-out inputs (shards of one run are joined).
        #[arg(long, required = true, num_args = 1..)]
        counts: Vec<PathBuf>,
        /// Sparser bins are merged into their neighbour.
        #[arg(long, default_value_t = 40)]
        min_inputs: usize,
        #[arg(long, default_value_t = 1000)]
        batch: i64,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Split-conformal calibration of the surrogate (for methods calibrated and auto):
    /// on inputs held out from its training, with Monte Carlo counts at its nominal N.
    Calibrate {
        #[arg(long)]
        bundle: PathBuf,
        /// Counts at the nominal N of held-out inputs (shards of one run are joined).
        #[arg(long, required = true, num_args = 1..)]
        counts: Vec<PathBuf>,
        /// The overestimation probability to calibrate for.
        #[arg(long, default_value_t = 0.05)]
        delta: f64,
        /// p-gap: s = p_hat[cA] - p_MC[cA], CALIBRATED takes q off p_hat[cA].
        /// log-miss: s = ln(miss_MC + c) - ln(miss_hat + c), c = 1/(2N): the
        /// surrogate's miss 1 - p_hat[cA] is scaled by e^q instead.
        /// root-miss: s = (miss_MC + c)^(1/4) - (miss_hat + c)^(1/4).
        #[arg(long, default_value = "p-gap", value_parser = ["p-gap", "log-miss", "root-miss"])]
        score: String,
        /// Selection samples, as certification will draw them.
        #[arg(long, default_value_t = 100)]
        n0: u64,
        /// Certificate level for the AUTO band table.
        #[arg(long, default_value_t = 0.001)]
        alpha: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 1000)]
        batch: i64,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Certified accuracy vs radius, ACR, abstention and timing of certify TSVs.
    Report {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, value_delimiter = ',', default_value = "0,0.25,0.5,0.75,1.0")]
        radii: Vec<f64>,
        #[arg(long, default_value = "report")]
        out_dir: PathBuf,
    },
    /// Monte Carlo throughput at several forward batch sizes against plain forward passes.
    Bench {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000,4000")]
        batches: Vec<i64>,
        #[arg(long, default_value_t = 10_000)]
        samples: u64,
        /// Measurements per batch size (the median is reported).
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        #[arg(long, default_value = "auto")]
        device: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Also write the figures as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Time Monte Carlo and surrogate certification on the same inputs in one run.
    BenchCertify {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long, default_value_t = 10)]
        inputs: usize,
        #[arg(long, default_value_t = 100)]
        n0: u64,
        #[arg(long, default_value_t = 100_000)]
        n: u64,
        #[arg(long, default_value_t = 0.001)]
        alpha: f64,
        #[arg(long, default_value_t = 1000)]
        batch: i64,
        #[arg(long, default_value = "auto")]
        device: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// AUTO's band (the calibrated methods are timed too when the bundle
        /// is calibrated at this N).
        #[arg(long, default_value_t = smoothcert::config::DEFAULT_AUTO_BAND.0)]
        auto_band_low: f64,
        #[arg(long, default_value_t = smoothcert::config::DEFAULT_AUTO_BAND.1)]
        auto_band_high: f64,
        /// Also write the figures as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Adaptive n0 against fixed n0 on the same inputs: how often cA differs, and
    /// the throughput gained (one request at a time and batched).
    BenchAdaptive {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long, default_value_t = 500)]
        inputs: usize,
        #[arg(long, default_value_t = 100)]
        n0: u64,
        #[arg(long, default_value_t = 10)]
        chunk: u64,
        #[arg(long, default_value_t = 0.001)]
        alpha: f64,
        #[arg(long, default_value_t = 32)]
        batch_requests: usize,
        #[arg(long, default_value_t = 32)]
        batch: i64,
        #[arg(long, default_value = "auto")]
        device: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Load-test the gRPC service in-process: requests/s and p50/p99 latency at
    /// several client concurrencies, dynamic batching against batch size 1, and
    /// both against the offline engine's rate on the same model (the ceiling).
    BenchServe {
        #[arg(long, default_value = "models/fashion-mnist-sigma0.25")]
        bundle: PathBuf,
        #[arg(long, default_value = "auto")]
        device: String,
        /// Concurrent clients, each with one request in flight.
        #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
        concurrency: Vec<usize>,
        /// Requests measured per concurrency level and batching mode.
        #[arg(long, default_value_t = 512)]
        requests: usize,
        #[arg(long, default_value_t = 100)]
        n0: u64,
        #[arg(long, default_value_t = 32)]
        max_batch_requests: usize,
        #[arg(long, default_value_t = 0)]
        max_queue_delay_ms: u64,
        /// HTTP/2 connections shared by the clients.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Also write the figures as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print libtorch, CUDA and thread information.
    Info,
    /// Serve certificates over gRPC (with no arguments: the shipped default
    /// bundle, on the GPU when there is one). Configuration: defaults < --config
    /// FILE < SMOOTHCERT__SECTION__KEY environment variables.
    Serve {
        /// A TOML configuration file (see config/smoothcert.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// Adaptive n0: sequential choice of cA.
#[derive(clap::Args, Debug, Clone, Copy)]
struct AdaptiveArgs {
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
    fn rule(self) -> Option<smoothcert::smoothing::SequentialSelection> {
        self.adaptive_n0
            .then_some(smoothcert::smoothing::SequentialSelection {
                chunk: self.adaptive_chunk,
                alpha: self.adaptive_alpha,
            })
    }
}

fn parse_arch(s: &str) -> Result<Arch, String> {
    Arch::parse(s).map_err(|e| e.to_string())
}

/// Prints a benchmark's Markdown and, when asked, writes its figures as JSON.
fn print_and_save(
    markdown: &str,
    figures: &impl serde::Serialize,
    out: Option<PathBuf>,
) -> Result<()> {
    println!("{markdown}");
    if let Some(out) = out {
        std::fs::write(&out, serde_json::to_vec_pretty(figures)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

fn device(spec: &str) -> Result<tch::Device> {
    let d = parse_device(spec)?;
    tracing::info!(device = ?d, cuda = %cuda_status().detail, "device selected");
    Ok(d)
}

/// Runs the server until SIGTERM or SIGINT, then shuts it down gracefully.
fn serve(config: Option<PathBuf>) -> Result<()> {
    let config = smoothcert::config::Config::load(config.as_deref())?;
    let filter = tracing_subscriber::EnvFilter::new(&config.logging.level);
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.logging.format {
        smoothcert::config::LogFormat::Json => logs.json().init(),
        smoothcert::config::LogFormat::Human => logs.init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        // Listening before start-up, so that a signal during it is not the
        // default (abrupt) one.
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
        let server = smoothcert::server::start(config).await?;
        tracing::info!(
            grpc = %server.grpc_addr,
            metrics = %server.metrics_addr,
            cuda = %cuda_status().detail,
            "listening; loading models"
        );
        let stop = server.stopper();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = int.recv() => tracing::info!("SIGINT"),
            }
            let _ = stop.send(true);
        });
        server.wait().await?;
        tracing::info!("stopped");
        Ok(())
    })
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // `serve` sets up its logging from its configuration.
    if !matches!(cli.command, Command::Serve { .. }) {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    let show_progress = true;
    match cli.command {
        Command::Serve { config } => serve(config)?,
        Command::TrainBase {
            dataset,
            data_dir,
            arch,
            sigma,
            epochs,
            batch_size,
            lr,
            seed,
            limit,
            device: dev,
            name,
            pause_after,
            out,
        } => {
            let opts = train::TrainBaseOptions {
                dataset,
                data_dir,
                arch,
                sigma,
                epochs,
                batch_size,
                learning_rate: lr,
                seed,
                device: device(&dev)?,
                limit,
                out,
                name,
                pause_after,
                show_progress,
            };
            let s = match train::train_base(&opts).context("train-base failed")? {
                train::TrainOutcome::Finished(s) => s,
                train::TrainOutcome::Paused { epochs_done } => {
                    println!(
                        "paused after {epochs_done}/{} epochs; rerun the same command to continue",
                        opts.epochs
                    );
                    return Ok(());
                }
            };
            println!(
                "bundle {}: {} epochs in {:.1} s; test accuracy clean {:.2}%, noisy (sigma {}) {:.2}%",
                s.bundle.display(),
                s.epochs,
                s.training_seconds,
                100.0 * s.clean_test_accuracy,
                s.sigma,
                100.0 * s.noisy_test_accuracy
            );
        }
        Command::FitTailMap {
            bundle,
            counts,
            min_inputs,
            batch,
            data_dir,
            device: dev,
        } => {
            let summary = smoothcert::pipeline::tail_map::fit_tail_map(
                &smoothcert::pipeline::tail_map::FitTailMapOptions {
                    bundle: bundle.clone(),
                    counts,
                    min_inputs,
                    batch,
                    data_dir,
                    device: device(&dev)?,
                },
            )
            .context("fit-tail-map failed")?;
            println!(
                "{}: tail map fitted on {} {} inputs at N = {}; mean |log error| of the miss {:.3} -> {:.3} \
                 ({:.3} cross-fitted){}",
                bundle.display(),
                summary.inputs,
                summary.split,
                summary.counts_n,
                summary.log_error_before,
                summary.log_error_after,
                summary.log_error_cross_fitted,
                if summary.dropped_calibration {
                    "; the calibration was dropped: run calibrate again"
                } else {
                    ""
                }
            );
            for b in &summary.bins {
                println!(
                    "  miss from {:.2e}: {:>5} inputs, predicted {:.2e}, observed {:.2e}, ratio {:.3}",
                    b.low, b.inputs, b.mean_predicted_miss, b.mean_observed_miss, b.ratio
                );
            }
        }
        Command::Calibrate {
            bundle,
            counts,
            delta,
            score,
            n0,
            alpha,
            seed,
            batch,
            data_dir,
            device: dev,
        } => {
            let summary = smoothcert::pipeline::calibrate::calibrate(
                &smoothcert::pipeline::calibrate::CalibrateOptions {
                    bundle: bundle.clone(),
                    counts,
                    delta,
                    score: match score.as_str() {
                        "log-miss" => smoothcert::smoothing::ConformalScore::LogMiss,
                        "root-miss" => smoothcert::smoothing::ConformalScore::RootMiss,
                        _ => smoothcert::smoothing::ConformalScore::PGap,
                    },
                    n0,
                    alpha,
                    seed,
                    batch,
                    data_dir,
                    device: device(&dev)?,
                },
            )
            .context("calibrate failed")?;
            let c = &summary.calibration;
            println!(
                "{}: calibrated on {} {} inputs at N = {}, score {}: q = {:.6} (rank {} of {}) for delta = {}; \
                 {:.1}% of them overestimate (s > 0), {} class mismatches",
                bundle.display(),
                c.m,
                c.split,
                c.n,
                c.score.as_str(),
                c.q,
                c.rank,
                c.m,
                c.delta,
                100.0 * summary.overestimating,
                summary.class_mismatch
            );
            println!(
                "AUTO bands on these inputs (in-sample: the same scores set q; \
                 fallback %, Monte Carlo certificates missed %):"
            );
            for b in &summary.bands {
                println!(
                    "  [{:.2}, {:.2}]: {:.1}% fall back, {:.1}% missed",
                    b.low,
                    b.high,
                    100.0 * b.fallback_fraction,
                    100.0 * b.missed_certificates
                );
            }
        }
        Command::Certify {
            bundle,
            method,
            split,
            data_dir,
            skip,
            max,
            n0,
            n,
            alpha,
            batch,
            seed,
            adaptive,
            auto_band_low,
            auto_band_high,
            device: dev,
            out,
        } => {
            let n = match n {
                Some(n) => n,
                None => certify::default_n(&bundle, method)?,
            };
            let opts = certify::CertifyOptions {
                bundle,
                method,
                split,
                data_dir,
                skip,
                max,
                params: CertifyParams {
                    n0,
                    n,
                    alpha,
                    batch,
                },
                seed,
                adaptive: adaptive.rule(),
                auto_band: smoothcert::engine::AutoBand {
                    low: auto_band_low,
                    high: auto_band_high,
                },
                device: device(&dev)?,
                out,
                show_progress,
            };
            let s = certify::certify(&opts).context("certify failed")?;
            let what = match s.method {
                certify::Method::Mc => "certified accuracy",
                certify::Method::Surrogate => {
                    "ESTIMATED certified accuracy (surrogate, not a guarantee)"
                }
                certify::Method::Calibrated => {
                    "ESTIMATED certified accuracy (calibrated surrogate, not a certificate)"
                }
                certify::Method::Auto => {
                    "accuracy with a radius (mixed: Monte Carlo certificates and calibrated estimates, each row names its method)"
                }
            };
            if let Some(f) = s.fallback_fraction {
                println!("auto: Monte Carlo answered {:.1}% of inputs", 100.0 * f);
            }
            println!(
                "{} ({}): {} inputs, {what} at r=0 {:.1}%, abstained {:.1}%, median {:.3} s/input",
                s.out.display(),
                s.method.as_str(),
                s.inputs,
                100.0 * s.accuracy_at_radius_0,
                100.0 * s.abstention_rate,
                s.median_seconds_per_input
            );
        }
        Command::SampleCounts {
            bundle,
            split,
            data_dir,
            n,
            skip,
            max,
            shard,
            chunk,
            batch,
            seed,
            device: dev,
            pause_after,
            out,
        } => {
            let opts = counts::SampleCountsOptions {
                bundle,
                split,
                data_dir,
                n,
                skip,
                max,
                shard,
                chunk,
                batch,
                seed,
                device: device(&dev)?,
                out,
                pause_after,
                show_progress,
            };
            match counts::sample_counts(&opts).context("sample-counts failed")? {
                counts::SampleOutcome::Finished(s) => println!(
                    "{}: {} inputs x {} samples ({} chunks, {} resumed); {:.0} noisy passes/s",
                    s.out.display(),
                    s.inputs,
                    s.n,
                    s.chunks,
                    s.chunks_resumed,
                    s.passes_per_second
                ),
                counts::SampleOutcome::Paused {
                    chunks_done,
                    chunks,
                } => println!(
                    "paused with {chunks_done}/{chunks} chunks; rerun the same command to continue"
                ),
            }
        }
        Command::TrainSurrogate {
            bundle,
            counts,
            arch,
            loss,
            epochs,
            batch_size,
            lr,
            val_fraction,
            nominal_n,
            data_dir,
            seed,
            device: dev,
            pause_after,
            init_from_base,
        } => {
            let opts = surrogate::TrainSurrogateOptions {
                bundle,
                counts,
                arch,
                loss,
                epochs,
                batch_size,
                learning_rate: lr,
                val_fraction,
                nominal_n,
                data_dir,
                seed,
                device: device(&dev)?,
                pause_after,
                init_from_base,
                show_progress,
            };
            match surrogate::train_surrogate(&opts).context("train-surrogate failed")? {
                surrogate::SurrogateOutcome::Finished(spec) => {
                    let t = spec.training.unwrap_or_default();
                    println!(
                        "surrogate ({} loss, best epoch {}/{}, nominal N {}): validation mean JS {:.5}, \
                         top-1 agreement {:.2}%, |p_hat[cA] - p_MC[cA]| mean {:.4} p95 {:.4}",
                        t.loss,
                        t.best_epoch,
                        t.epochs,
                        spec.nominal_n,
                        t.val_mean_js,
                        100.0 * t.val_top1_agreement,
                        t.val_mean_abs_err_pa,
                        t.val_p95_abs_err_pa
                    );
                }
                surrogate::SurrogateOutcome::Paused { epochs_done } => println!(
                    "paused after {epochs_done}/{epochs} epochs; rerun the same command to continue"
                ),
            }
        }
        Command::MergeCounts { files, out } => {
            let merged = counts::merge_counts(&files, &out).context("merge-counts failed")?;
            println!(
                "{}: {} inputs x {} samples from {} file(s)",
                out.display(),
                merged.len(),
                merged.meta.n,
                files.len()
            );
        }
        Command::Report {
            files,
            radii,
            out_dir,
        } => {
            let md = report::run_report(&files, &report::ReportOptions { radii, out_dir })
                .context("report failed")?;
            println!("{md}");
        }
        Command::Bench {
            bundle,
            batches,
            samples,
            repeats,
            device: dev,
            seed,
            out,
        } => {
            let opts = bench::BenchOptions {
                bundle,
                device: device(&dev)?,
                batches,
                samples,
                repeats,
                seed,
            };
            let r = bench::bench(&opts).context("bench failed")?;
            print_and_save(&r.markdown(), &r, out)?;
        }
        Command::BenchCertify {
            bundle,
            inputs,
            n0,
            n,
            alpha,
            batch,
            device: dev,
            seed,
            auto_band_low,
            auto_band_high,
            out,
        } => {
            let opts = bench::MethodsBenchOptions {
                auto_band: smoothcert::engine::AutoBand {
                    low: auto_band_low,
                    high: auto_band_high,
                },
                bundle,
                device: device(&dev)?,
                inputs,
                params: CertifyParams {
                    n0,
                    n,
                    alpha,
                    batch,
                },
                seed,
            };
            let r = bench::bench_methods(&opts).context("bench-certify failed")?;
            print_and_save(&r.markdown(), &r, out)?;
        }
        Command::BenchAdaptive {
            bundle,
            inputs,
            n0,
            chunk,
            alpha,
            batch_requests,
            batch,
            device: dev,
            seed,
            out,
        } => {
            let r = bench::bench_adaptive(&bench::AdaptiveBenchOptions {
                bundle,
                device: device(&dev)?,
                inputs,
                n0,
                rule: smoothcert::smoothing::SequentialSelection { chunk, alpha },
                batch_requests,
                forward_batch: batch,
                seed,
            })
            .context("bench-adaptive failed")?;
            print_and_save(&r.markdown(), &r, out)?;
        }
        Command::BenchServe {
            bundle,
            device,
            concurrency,
            requests,
            n0,
            max_batch_requests,
            max_queue_delay_ms,
            connections,
            data_dir,
            out,
        } => {
            let opts = smoothcert::pipeline::bench_serve::BenchServeOptions {
                bundle,
                device,
                concurrency,
                requests,
                n0,
                max_batch_requests,
                max_queue_delay_ms,
                connections,
                data_dir,
            };
            let r = smoothcert::pipeline::bench_serve::bench_serve(&opts)
                .context("bench-serve failed")?;
            print_and_save(&r.markdown(), &r, out)?;
        }
        Command::Info => {
            let cuda = cuda_status();
            println!("smoothcert {}", env!("CARGO_PKG_VERSION"));
            println!("intra-op threads: {}", tch::get_num_threads());
            println!(
                "cuda available: {} ({} device(s)); {}",
                cuda.available, cuda.device_count, cuda.detail
            );
            println!("cudnn available: {}", tch::Cuda::cudnn_is_available());
        }
    }
    Ok(())
}
