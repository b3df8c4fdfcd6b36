//! The benchmarks, each printing ratios measured in one run:
//! - `bench`: the engine's noisy counting rate (passes per second) at several
//!   forward batch sizes, next to the same model's plain forward rate (the ceiling);
//! - `bench-certify`: every method against Monte Carlo on the same inputs,
//!   through the served path ([`Offline`]);
//! - `bench-adaptive`: adaptive against fixed n0;
//! - [`serve`]: the gRPC service under load;
//! - [`soak`]: the service under steady mixed load for a long time (RSS, latency, errors).
use crate::engine::requests::TaskParams;
use crate::engine::{Engine, Method, Task};
use crate::methods::{Offline, Target};
use crate::model::{Bundle, Classifier, NoiseStream};
use crate::pipeline::certify::build_offline;
use crate::pipeline::PipelineError;
use crate::smoothing::median;

pub mod serve;
pub(crate) mod server_under_test;
pub mod soak;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub bundle: PathBuf,
    pub device: Device,
    pub batches: Vec<i64>,
    /// Noisy samples per Monte Carlo measurement (and images per plain one).
    pub samples: u64,
    /// Measurements per batch size; the median is reported (a noisy machine
    /// skews single runs).
    pub repeats: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub batch: i64,
    /// Images per second through `logits` alone (no noise, no counting).
    pub plain_forward_per_s: f64,
    /// Noisy forward passes per second of Monte Carlo counting for one input.
    pub mc_passes_per_s: f64,
    /// mc / plain at this batch size: the overhead of noise and counting.
    pub mc_over_plain: f64,
    /// This batch size's Monte Carlo rate over the batch-1 rate (or the smallest measured).
    pub speedup_over_smallest_batch: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub bundle: String,
    pub device: String,
    pub threads: i32,
    pub samples: u64,
    pub repeats: usize,
    pub rows: Vec<BenchRow>,
}

impl BenchReport {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "Monte Carlo throughput, bundle {}, device {}, {} intra-op threads, median of {} measurements of {} samples each\n\n\
             | forward batch | plain forward (img/s) | Monte Carlo (noisy passes/s) | MC / plain | MC vs smallest batch |\n\
             |---:|---:|---:|---:|---:|\n",
            self.bundle, self.device, self.threads, self.repeats, self.samples
        );
        for r in &self.rows {
            s += &format!(
                "| {} | {:.0} | {:.0} | {:.2} | {:.1}x |\n",
                r.batch,
                r.plain_forward_per_s,
                r.mc_passes_per_s,
                r.mc_over_plain,
                r.speedup_over_smallest_batch
            );
        }
        s
    }
}

pub fn bench(opts: &BenchOptions) -> Result<BenchReport, PipelineError> {
    if opts.batches.is_empty() || opts.batches.iter().any(|&b| b < 1) || opts.samples == 0 {
        return Err(PipelineError::Invalid(
            "--batches needs sizes >= 1 and --samples >= 1".into(),
        ));
    }
    let bundle = Bundle::load(&opts.bundle)?;
    let model = Classifier::load(&bundle, opts.device)?;
    let [c, h, w] = bundle.input_shape.map(|d| d as i64);
    tch::manual_seed(opts.seed as i64);
    let one = Tensor::rand([1, c, h, w], (Kind::Float, opts.device));
    let samples = i64::try_from(opts.samples)
        .map_err(|_| PipelineError::Invalid("--samples is too large".into()))?;
    let mut rows: Vec<BenchRow> = Vec::new();
    for &batch in &opts.batches {
        let x = Tensor::rand([batch, c, h, w], (Kind::Float, opts.device));
        // Warm-up: allocator, kernels, thread pool.
        let _ = model.logits(&x)?;
        let warm = [NoiseStream::whole(0, batch.min(samples) as u64, opts.seed)];
        model.count_streams(&one, &warm, bundle.noise(), batch, &mut |_| true)?;
        sync(opts.device);
        let reps = (samples + batch - 1) / batch;
        let (mut plain_rates, mut mc_rates) = (Vec::new(), Vec::new());
        // Interleaved, so that a slow spell of the machine hits both alike.
        for _ in 0..opts.repeats.max(1) {
            // Plain forward: the same number of images in batches of `batch`, no noise.
            let t = Instant::now();
            for _ in 0..reps {
                let _ = model.logits(&x)?.argmax(1, false);
            }
            sync(opts.device);
            plain_rates.push((reps * batch) as f64 / t.elapsed().as_secs_f64());

            // The engine's counting: one seeded stream, as a Monte Carlo request draws.
            let stream = [NoiseStream::whole(0, opts.samples, opts.seed)];
            let t = Instant::now();
            let counts =
                model.count_streams(&one, &stream, bundle.noise(), batch, &mut |_| true)?;
            mc_rates.push(samples as f64 / t.elapsed().as_secs_f64());
            let total: u64 = counts.iter().flatten().flatten().sum();
            if total != opts.samples {
                return Err(PipelineError::Invalid(
                    "counts do not add up to the samples".into(),
                ));
            }
        }
        let (plain, mc) = (median(&plain_rates), median(&mc_rates));
        rows.push(BenchRow {
            batch,
            plain_forward_per_s: plain,
            mc_passes_per_s: mc,
            mc_over_plain: mc / plain,
            speedup_over_smallest_batch: 1.0,
        });
    }
    let base = rows
        .iter()
        .min_by_key(|r| r.batch)
        .map_or(1.0, |r| r.mc_passes_per_s);
    for r in &mut rows {
        r.speedup_over_smallest_batch = r.mc_passes_per_s / base;
    }
    Ok(BenchReport {
        bundle: bundle.name,
        device: format!("{:?}", opts.device),
        threads: tch::get_num_threads(),
        samples: opts.samples,
        repeats: opts.repeats.max(1),
        rows,
    })
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

#[derive(Debug, Clone)]
pub struct MethodsBenchOptions {
    pub bundle: PathBuf,
    pub device: Device,
    /// Test inputs timed (spread over the split).
    pub inputs: usize,
    pub params: crate::engine::CertifyParams,
    pub seed: u64,
    /// AUTO's band, for the calibrated methods (timed when the bundle is
    /// calibrated at this n).
    pub auto_band: crate::engine::AutoBand,
    /// SEQUENTIAL at each of these radii (guided, cap n), timed on the same
    /// inputs beside Monte Carlo.
    pub target_radii: Vec<f64>,
}

/// SEQUENTIAL at one target radius, on the same inputs as Monte Carlo.
#[derive(Debug, Clone, Serialize)]
pub struct SequentialTimes {
    pub target_radius: f64,
    pub mean_seconds: f64,
    /// Forward passes per input: selection and estimation samples, and the
    /// surrogate's one pass.
    pub mean_passes: f64,
    /// Certified at the target, and by Monte Carlo at the target, of the inputs.
    pub certified: usize,
    pub mc_certified: usize,
    /// Monte Carlo's mean seconds over this one's, both measured in this run.
    pub speedup_mean: f64,
    /// (n0 + n) over the mean passes.
    pub speedup_passes: f64,
}

/// CALIBRATED and AUTO timed on the same inputs as the other two.
#[derive(Debug, Clone, Serialize)]
pub struct CalibratedTimes {
    pub delta: f64,
    pub calibrated_median_seconds: f64,
    /// AUTO's cost is a mixture (an estimate, or a full Monte Carlo run), so
    /// its speedup is by mean seconds, against Monte Carlo's mean.
    pub auto_mean_seconds: f64,
    pub mc_mean_seconds: f64,
    pub auto_fallbacks: usize,
    pub calibrated_speedup: f64,
    pub auto_speedup_mean: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MethodsBenchReport {
    pub bundle: String,
    pub device: String,
    pub inputs: usize,
    pub n0: u64,
    pub n: u64,
    pub batch: i64,
    pub mc_median_seconds: f64,
    pub surrogate_median_seconds: f64,
    /// mc / surrogate, medians of per-input times measured alternately in this run.
    pub speedup: f64,
    /// (n0 + n) / (n0 + 1): the forward-pass ratio, the speedup's ideal.
    pub ideal_speedup: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibrated: Option<CalibratedTimes>,
    pub mc_mean_seconds: f64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sequential: Vec<SequentialTimes>,
}

impl MethodsBenchReport {
    pub fn markdown(&self) -> String {
        let mut text = format!(
            "Monte Carlo vs surrogate certification, bundle {}, device {}, {} inputs, n0 {}, N {}, batch {}\n\n\
             | method | median s/input |\n|---|---:|\n| mc (certificate) | {:.4} |\n| surrogate (estimate) | {:.5} |\n\n\
             speedup {:.1}x; ideal (n0 + N) / (n0 + 1) = {:.1}x; measured / ideal = {:.2}\n",
            self.bundle,
            self.device,
            self.inputs,
            self.n0,
            self.n,
            self.batch,
            self.mc_median_seconds,
            self.surrogate_median_seconds,
            self.speedup,
            self.ideal_speedup,
            self.speedup / self.ideal_speedup
        );
        if let Some(c) = &self.calibrated {
            text.push_str(&format!(
                "\ncalibrated (estimate, delta {}): median {:.5} s/input, speedup {:.1}x\n\
                 auto: mean {:.4} s/input against Monte Carlo's mean {:.4} s ({} of {} inputs fell back), \
                 speedup {:.1}x by mean\n",
                c.delta,
                c.calibrated_median_seconds,
                c.calibrated_speedup,
                c.auto_mean_seconds,
                c.mc_mean_seconds,
                c.auto_fallbacks,
                self.inputs,
                c.auto_speedup_mean
            ));
        }
        if !self.sequential.is_empty() {
            text.push_str(&format!(
                "\nsequential (exact certificate at a target radius, guided, cap {}) against Monte Carlo's mean {:.4} s/input:\n\n\
                 | target | mean s/input | mean passes | certified (MC) | speedup by mean time | by passes |\n|---:|---:|---:|---:|---:|---:|\n",
                self.n, self.mc_mean_seconds
            ));
            for t in &self.sequential {
                text.push_str(&format!(
                    "| {} | {:.4} | {:.0} | {} ({}) | {:.1}x | {:.1}x |\n",
                    t.target_radius,
                    t.mean_seconds,
                    t.mean_passes,
                    t.certified,
                    t.mc_certified,
                    t.speedup_mean,
                    t.speedup_passes
                ));
            }
        }
        text
    }
}

/// The bundle and its test split, with `inputs` indices spread evenly over it.
struct SpreadInputs {
    bundle: Bundle,
    ds: crate::data::Dataset,
    indices: Vec<usize>,
}

impl SpreadInputs {
    fn load(bundle: &std::path::Path, inputs: usize) -> Result<Self, PipelineError> {
        let crate::pipeline::Inputs {
            bundle,
            dataset: ds,
            ..
        } = crate::pipeline::load_inputs(bundle, crate::data::Split::Test, None, 0, 1, None)?;
        if bundle.surrogate.is_none() {
            return Err(PipelineError::Invalid(format!(
                "{} has no surrogate to benchmark",
                bundle.dir.display()
            )));
        }
        let step = (ds.len() / inputs.max(1)).max(1);
        let indices = (0..ds.len()).step_by(step).take(inputs).collect();
        Ok(SpreadInputs {
            bundle,
            ds,
            indices,
        })
    }
}

/// Times every method against Monte Carlo on the same test inputs, one
/// after the other for each input, so all see the same machine; each runs
/// the served path with the input's offline seed.
pub fn bench_methods(opts: &MethodsBenchOptions) -> Result<MethodsBenchReport, PipelineError> {
    opts.params.validate()?;
    if opts.inputs == 0 {
        return Err(PipelineError::Invalid("--inputs must be at least 1".into()));
    }
    let SpreadInputs {
        bundle,
        ds,
        indices,
    } = SpreadInputs::load(&opts.bundle, opts.inputs)?;
    let engine = Offline::start(&bundle, opts.device, opts.params.batch)?;
    // The calibrated methods run only where the calibration holds (its n and n0).
    let calibration = bundle
        .surrogate
        .as_ref()
        .and_then(|s| s.calibration.clone())
        .filter(|c| c.n == opts.params.n && c.n0 == opts.params.n0);
    let runner = MethodRunner {
        bundle: &bundle,
        ds: &ds,
        engine: &engine,
        opts,
    };
    // Warm-up on one input (allocator, kernels, thread pool), not timed.
    runner.time(Method::MonteCarlo, 0)?;
    runner.time(Method::Surrogate, 0)?;
    let times = runner.measure(&indices, calibration.is_some())?;
    engine.shutdown();
    Ok(methods_report(
        opts,
        bundle.name,
        calibration.map(|c| c.delta),
        &times,
        indices.len(),
    ))
}

/// The times `bench_methods` measured, one entry per input.
#[derive(Default)]
struct MethodTimes {
    mc: Vec<f64>,
    sur: Vec<f64>,
    /// CALIBRATED and AUTO, when the bundle's calibration holds.
    cal: Vec<f64>,
    auto: Vec<f64>,
    /// Inputs AUTO left to Monte Carlo.
    fallbacks: usize,
    /// Per target radius: (times, passes, certified, Monte Carlo certified).
    seq: Vec<(Vec<f64>, u64, usize, usize)>,
}

/// One method on one input through the served path, for `bench_methods`.
struct MethodRunner<'a> {
    bundle: &'a Bundle,
    ds: &'a crate::data::Dataset,
    engine: &'a Offline,
    opts: &'a MethodsBenchOptions,
}

impl MethodRunner<'_> {
    /// The seconds `method` took on input `idx` (SEQUENTIAL: at `target`,
    /// guided) with the input's offline seed, and its answer.
    fn run(
        &self,
        method: Method,
        idx: usize,
        target: Option<f64>,
    ) -> Result<(f64, crate::batcher::Answer), PipelineError> {
        let opts = self.opts;
        let target = target.map(|radius| Target {
            radius,
            guided: true,
        });
        let req = build_offline(
            self.bundle,
            method,
            &opts.params,
            None,
            opts.auto_band,
            target,
        )?
        .with_seed(crate::engine::input_seed(opts.seed, idx));
        let t = Instant::now();
        let answer = self.engine.certify(&req, self.ds.image(idx).to_vec())?;
        Ok((t.elapsed().as_secs_f64(), answer))
    }

    /// The seconds `method` took on input `idx`, and the method that answered.
    fn time(&self, method: Method, idx: usize) -> Result<(f64, Method), PipelineError> {
        let (t, answer) = self.run(method, idx, None)?;
        Ok((t, answer.method))
    }

    /// Every method on each of `indices` in turn (the calibrated ones only
    /// when `calibrated`).
    fn measure(&self, indices: &[usize], calibrated: bool) -> Result<MethodTimes, PipelineError> {
        let targets = &self.opts.target_radii;
        let mut times = MethodTimes {
            seq: vec![(Vec::new(), 0, 0, 0); targets.len()],
            ..MethodTimes::default()
        };
        for &idx in indices {
            let (t, mc_answer) = self.run(Method::MonteCarlo, idx, None)?;
            times.mc.push(t);
            times.sur.push(self.time(Method::Surrogate, idx)?.0);
            let label = self.ds.labels[idx];
            for (&target, acc) in targets.iter().zip(times.seq.iter_mut()) {
                let (t, a) = self.run(Method::Sequential, idx, Some(target))?;
                let passes = match &a.outcome {
                    // Selection and estimation samples, and the surrogate's pass.
                    crate::engine::Outcome::Sequential(c, sel) => sel.drawn + c.n + 1,
                    _ => 0,
                };
                acc.0.push(t);
                acc.1 += passes;
                acc.2 += usize::from(certified_at(&a, label, target));
                acc.3 += usize::from(certified_at(&mc_answer, label, target));
            }
            if calibrated {
                times.cal.push(self.time(Method::Calibrated, idx)?.0);
                let (t, by) = self.time(Method::Auto, idx)?;
                times.auto.push(t);
                times.fallbacks += usize::from(by == Method::MonteCarlo);
            }
        }
        Ok(times)
    }
}

/// Certified and correct at radius r.
fn certified_at(a: &crate::batcher::Answer, label: i64, r: f64) -> bool {
    match a.outcome.decision() {
        Some(crate::smoothing::Decision::Certified { class, radius, .. }) => {
            *class as i64 == label && *radius >= r
        }
        _ => false,
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// `bench_methods`' figures from its times over `inputs` inputs;
/// `calibration_delta` is the calibration's delta when the calibrated
/// methods were timed.
fn methods_report(
    opts: &MethodsBenchOptions,
    bundle: String,
    calibration_delta: Option<f64>,
    times: &MethodTimes,
    inputs: usize,
) -> MethodsBenchReport {
    let mc_mean_seconds = mean(&times.mc);
    let p = &opts.params;
    let sequential = sequential_times(opts, &times.seq, mc_mean_seconds, inputs);
    let calibrated = calibration_delta.map(|delta| {
        let (mc_mean, auto_mean) = (mean(&times.mc), mean(&times.auto));
        let cal_median = median(&times.cal);
        CalibratedTimes {
            delta,
            calibrated_median_seconds: cal_median,
            auto_mean_seconds: auto_mean,
            mc_mean_seconds: mc_mean,
            auto_fallbacks: times.fallbacks,
            calibrated_speedup: median(&times.mc) / cal_median,
            auto_speedup_mean: mc_mean / auto_mean,
        }
    });
    let (mc, sur) = (median(&times.mc), median(&times.sur));
    MethodsBenchReport {
        bundle,
        device: format!("{:?}", opts.device),
        inputs: opts.inputs,
        n0: p.n0,
        n: p.n,
        batch: p.batch,
        mc_median_seconds: mc,
        surrogate_median_seconds: sur,
        speedup: mc / sur,
        ideal_speedup: (p.n0 + p.n) as f64 / (p.n0 + 1) as f64,
        calibrated,
        mc_mean_seconds,
        sequential,
    }
}

/// SEQUENTIAL's figures per target radius, from each target's (times,
/// passes, certified, Monte Carlo certified) over `inputs` inputs.
fn sequential_times(
    opts: &MethodsBenchOptions,
    seq: &[(Vec<f64>, u64, usize, usize)],
    mc_mean_seconds: f64,
    inputs: usize,
) -> Vec<SequentialTimes> {
    let p = &opts.params;
    opts.target_radii
        .iter()
        .zip(seq)
        .map(
            |(&target_radius, (times, passes, certified, mc_certified))| {
                let mean_seconds = mean(times);
                let mean_passes = *passes as f64 / inputs.max(1) as f64;
                SequentialTimes {
                    target_radius,
                    mean_seconds,
                    mean_passes,
                    certified: *certified,
                    mc_certified: *mc_certified,
                    speedup_mean: mc_mean_seconds / mean_seconds,
                    speedup_passes: (p.n0 + p.n) as f64 / mean_passes,
                }
            },
        )
        .collect()
}

#[derive(Debug, Clone)]
pub struct AdaptiveBenchOptions {
    pub bundle: PathBuf,
    pub device: Device,
    /// Test inputs (spread over the split).
    pub inputs: usize,
    /// The n0 cap, and fixed selection's n0.
    pub n0: u64,
    pub adaptive_n0: crate::smoothing::AdaptiveN0,
    /// Requests per batch in the batched measurement (as the server batches).
    pub batch_requests: usize,
    pub forward_batch: i64,
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AdaptiveBenchReport {
    pub bundle: String,
    pub device: String,
    pub inputs: usize,
    pub n0: u64,
    pub chunk: u64,
    pub alpha: f64,
    /// Fraction of inputs whose adaptive cA differs from the fixed-n0 cA.
    pub differing_class_a: f64,
    pub mean_samples_adaptive: f64,
    /// Surrogate certification, one input at a time: median seconds.
    pub fixed_median_seconds: f64,
    pub adaptive_median_seconds: f64,
    /// Fixed over adaptive: the single-request throughput gain.
    pub single_gain: f64,
    /// Inputs per second with `batch_requests` requests per batch.
    pub fixed_batched_rate: f64,
    pub adaptive_batched_rate: f64,
    pub batched_gain: f64,
    pub batch_requests: usize,
}

impl AdaptiveBenchReport {
    pub fn markdown(&self) -> String {
        format!(
            "Adaptive n0 against fixed n0 = {n0} (surrogate certification), bundle {}, device {}, {} inputs; \
             rule: chunks of {}, binomial test at {} / {} looks\n\n\
             | selection | samples / input | median s/input (one at a time) | inputs/s (batches of {}) |\n|---|---:|---:|---:|\n\
             | fixed | {n0} | {:.5} | {:.1} |\n| adaptive | {:.1} | {:.5} | {:.1} |\n\n\
             throughput gain {:.2}x one at a time, {:.2}x batched; cA differs from the fixed choice on {:.1}% of inputs\n",
            self.bundle,
            self.device,
            self.inputs,
            self.chunk,
            self.alpha,
            self.n0.div_ceil(self.chunk.max(1)),
            self.batch_requests,
            self.fixed_median_seconds,
            self.fixed_batched_rate,
            self.mean_samples_adaptive,
            self.adaptive_median_seconds,
            self.adaptive_batched_rate,
            self.single_gain,
            self.batched_gain,
            100.0 * self.differing_class_a,
            n0 = self.n0,
        )
    }
}

/// Surrogate certification with fixed and adaptive n0 on the same inputs,
/// alternately, through the server's request path: how often the choice of
/// cA differs and what the early stop gains.
pub fn bench_adaptive(opts: &AdaptiveBenchOptions) -> Result<AdaptiveBenchReport, PipelineError> {
    opts.adaptive_n0
        .validate()
        .map_err(crate::engine::EngineError::from)?;
    if opts.inputs == 0 || opts.n0 == 0 || opts.batch_requests == 0 {
        return Err(PipelineError::Invalid(
            "--inputs, --n0 and --batch-requests must be at least 1".into(),
        ));
    }
    let SpreadInputs {
        bundle,
        ds,
        indices,
    } = SpreadInputs::load(&opts.bundle, opts.inputs)?;
    let engine = Engine::load(&bundle, opts.device, opts.forward_batch, true)?;
    let runner = AdaptiveRunner {
        engine: &engine,
        ds: &ds,
        opts,
    };
    // Warm-up, not timed.
    let x0 = crate::pipeline::images_tensor(&ds, &[0], opts.device);
    runner.run(&x0, &[runner.req(0, 0, false)])?;
    runner.run(&x0, &[runner.req(0, 0, true)])?;
    let single = runner.one_at_a_time(&indices)?;
    let fixed_rate = runner.batched_rate(&indices, false)?;
    let adaptive_rate = runner.batched_rate(&indices, true)?;
    let (f, a) = (median(&single.fixed_t), median(&single.adaptive_t));
    Ok(AdaptiveBenchReport {
        bundle: bundle.name,
        device: format!("{:?}", opts.device),
        inputs: indices.len(),
        n0: opts.n0,
        chunk: opts.adaptive_n0.chunk,
        alpha: opts.adaptive_n0.alpha,
        differing_class_a: single.differ as f64 / indices.len() as f64,
        mean_samples_adaptive: single.drawn as f64 / indices.len() as f64,
        fixed_median_seconds: f,
        adaptive_median_seconds: a,
        single_gain: f / a,
        fixed_batched_rate: fixed_rate,
        adaptive_batched_rate: adaptive_rate,
        batched_gain: adaptive_rate / fixed_rate,
        batch_requests: opts.batch_requests,
    })
}

/// Fixed and adaptive n0, one input at a time.
struct SingleTimes {
    fixed_t: Vec<f64>,
    adaptive_t: Vec<f64>,
    /// Inputs whose cA differs between the two.
    differ: usize,
    /// Selection samples adaptive n0 drew, over all inputs.
    drawn: u64,
}

/// Surrogate certification through the engine's request path, for `bench_adaptive`.
struct AdaptiveRunner<'a> {
    engine: &'a Engine,
    ds: &'a crate::data::Dataset,
    opts: &'a AdaptiveBenchOptions,
}

impl AdaptiveRunner<'_> {
    /// Request `i` of a batch, on input `idx` with its offline seed.
    fn req(&self, i: usize, idx: usize, adaptive: bool) -> TaskParams {
        let opts = self.opts;
        TaskParams {
            adaptive_n0: adaptive.then_some(opts.adaptive_n0),
            ..TaskParams::new(
                i,
                opts.n0,
                100_000,
                0.001,
                crate::engine::input_seed(opts.seed, idx),
            )
        }
    }

    fn run(
        &self,
        x: &Tensor,
        reqs: &[TaskParams],
    ) -> Result<crate::engine::BatchResult, crate::engine::EngineError> {
        self.engine.run(Task::Surrogate, x, reqs, &mut |_| true)
    }

    /// Each input alone, fixed then adaptive.
    fn one_at_a_time(&self, indices: &[usize]) -> Result<SingleTimes, PipelineError> {
        let (mut fixed_t, mut adaptive_t) = (Vec::new(), Vec::new());
        let (mut differ, mut drawn) = (0usize, 0u64);
        for &idx in indices {
            let x = crate::pipeline::images_tensor(self.ds, &[idx], self.opts.device);
            let t = Instant::now();
            let (f, _, _) = self.run(&x, &[self.req(0, idx, false)])?;
            fixed_t.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let (a, _, _) = self.run(&x, &[self.req(0, idx, true)])?;
            adaptive_t.push(t.elapsed().as_secs_f64());
            if let (
                Some(Some(crate::engine::Outcome::Surrogate(f, _))),
                Some(Some(crate::engine::Outcome::Surrogate(a, sel))),
            ) = (f.first(), a.first())
            {
                differ += usize::from(f.class_a != a.class_a);
                drawn += sel.drawn;
            }
        }
        Ok(SingleTimes {
            fixed_t,
            adaptive_t,
            differ,
            drawn,
        })
    }

    /// Inputs per second with the inputs in groups of batch_requests, as one
    /// server batch each.
    fn batched_rate(&self, indices: &[usize], adaptive: bool) -> Result<f64, PipelineError> {
        let opts = self.opts;
        let started = Instant::now();
        for group in indices.chunks(opts.batch_requests) {
            let x = crate::pipeline::images_tensor(self.ds, group, opts.device);
            let reqs: Vec<TaskParams> = group
                .iter()
                .enumerate()
                .map(|(i, &idx)| self.req(i, idx, adaptive))
                .collect();
            self.run(&x, &reqs)?;
        }
        sync(opts.device);
        Ok(indices.len() as f64 / started.elapsed().as_secs_f64())
    }
}
