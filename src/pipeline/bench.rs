//! `bench`: Monte Carlo throughput (noisy forward passes per second) at several
//! forward batch sizes, next to the same model's plain forward rate — the
//! ceiling — measured in the same run, and printed as ratios.
use super::PipelineError;
use crate::model::{Bundle, Classifier};
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
        let _ = model.sample_counts(&one, batch.min(samples), bundle.sigma(), batch)?;
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

            let t = Instant::now();
            let counts = model.sample_counts(&one, samples, bundle.sigma(), batch)?;
            mc_rates.push(samples as f64 / t.elapsed().as_secs_f64());
            if counts.sum(Kind::Int64).int64_value(&[]) != samples {
                return Err(PipelineError::Invalid(
                    "counts do not add up to the samples".into(),
                ));
            }
        }
        let (plain, mc) = (median(&mut plain_rates), median(&mut mc_rates));
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

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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
}

impl MethodsBenchReport {
    pub fn markdown(&self) -> String {
        format!(
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
        )
    }
}

/// Times Monte Carlo CERTIFY and ACCELERATED on the same test inputs, one after
/// the other for each input, so both see the same machine.
pub fn bench_methods(opts: &MethodsBenchOptions) -> Result<MethodsBenchReport, PipelineError> {
    opts.params.validate()?;
    if opts.inputs == 0 {
        return Err(PipelineError::Invalid("--inputs must be at least 1".into()));
    }
    let super::Inputs {
        bundle,
        dataset: ds,
        ..
    } = super::load_inputs(&opts.bundle, crate::data::Split::Test, None, 1, None)?;
    let base = Classifier::load(&bundle, opts.device)?;
    let surrogate = Classifier::load_surrogate(&bundle, opts.device)?;
    let [c, h, w] = bundle.input_shape.map(|d| d as i64);
    let step = (ds.len() / opts.inputs).max(1);
    // Warm-up on one input (allocator, kernels, thread pool), not timed.
    let first = Tensor::from_slice(ds.image(0))
        .view([1, c, h, w])
        .to_device(opts.device);
    crate::engine::certify(&base, bundle.sigma(), &first, &opts.params)?;
    crate::engine::certify_accelerated(&base, &surrogate, bundle.sigma(), &first, &opts.params)?;
    let (mut mc, mut sur) = (Vec::new(), Vec::new());
    for idx in (0..ds.len()).step_by(step).take(opts.inputs) {
        let x = Tensor::from_slice(ds.image(idx))
            .view([1, c, h, w])
            .to_device(opts.device);
        tch::manual_seed(crate::engine::input_seed(opts.seed, idx));
        let t = Instant::now();
        crate::engine::certify(&base, bundle.sigma(), &x, &opts.params)?;
        mc.push(t.elapsed().as_secs_f64());
        tch::manual_seed(crate::engine::input_seed(opts.seed, idx));
        let t = Instant::now();
        crate::engine::certify_accelerated(&base, &surrogate, bundle.sigma(), &x, &opts.params)?;
        sur.push(t.elapsed().as_secs_f64());
    }
    let (mc, sur) = (median(&mut mc), median(&mut sur));
    let p = &opts.params;
    Ok(MethodsBenchReport {
        bundle: bundle.name,
        device: format!("{:?}", opts.device),
        inputs: opts.inputs,
        n0: p.n0,
        n: p.n,
        batch: p.batch,
        mc_median_seconds: mc,
        surrogate_median_seconds: sur,
        speedup: mc / sur,
        ideal_speedup: (p.n0 + p.n) as f64 / (p.n0 + 1) as f64,
    })
}
