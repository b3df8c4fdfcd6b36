//! `train-surrogate`: the network of Accelerated Smoothing that maps a clean
//! input to an estimate of the base classifier's normalized Monte Carlo class
//! counts, trained with the Jensen-Shannon divergence (the paper) or, for
//! comparison, the soft-label cross-entropy (which weighs log(1 - p) errors in
//! the tail that JS barely sees). A validation split held out from training
//! picks the best epoch; its figures go into the bundle.
use super::counts::Counts;
use super::optim::{learning_rate, save_trained, weights_ext, Adam, Checkpoint};
use super::{io_err, progress_bar, write_json, PipelineError};
use crate::data::{self, Dataset};
use crate::model::{
    Arch, BaseSpec, Bundle, Classifier, SurrogateSpec, SurrogateTraining, WeightsFormat,
};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

pub mod margin_tail;
mod validation;

use margin_tail::TailTargets;
pub use validation::{validate, ValidationFigures};

/// The smallest normal f32: keeps log(m) finite where both distributions are 0.
const TINY: f64 = 1.2e-38;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SurrogateLoss {
    /// Jensen-Shannon divergence between softmax(logits) and the normalized counts.
    Js,
    /// Cross-entropy against the normalized counts (soft labels).
    SoftCe,
}

impl SurrogateLoss {
    pub fn as_str(self) -> &'static str {
        match self {
            SurrogateLoss::Js => "js",
            SurrogateLoss::SoftCe => "soft-ce",
        }
    }

    /// Per-input loss [B] of logits [B, K] against target distributions q [B, K].
    pub fn per_input(self, logits: &Tensor, q: &Tensor) -> Tensor {
        match self {
            SurrogateLoss::Js => js_divergence(logits, q),
            SurrogateLoss::SoftCe => {
                -(q * logits.log_softmax(1, Kind::Float)).sum_dim_intlist(1, false, Kind::Float)
            }
        }
    }
}

/// Jensen-Shannon divergence (nats) between softmax(logits) and q, per input:
/// (KL(p || m) + KL(q || m)) / 2 with m = (p + q) / 2 and 0 log 0 = 0.
/// log p comes from log_softmax, so confident logits stay finite.
pub fn js_divergence(logits: &Tensor, q: &Tensor) -> Tensor {
    let log_p = logits.log_softmax(1, Kind::Float);
    let p = log_p.exp();
    let m = ((&p + q) * 0.5).clamp_min(TINY);
    let log_m = m.log();
    let kl_pm = (&p * (&log_p - &log_m)).sum_dim_intlist(1, false, Kind::Float);
    let kl_qm = (q.xlogy(q) - q.xlogy(&m)).sum_dim_intlist(1, false, Kind::Float);
    (kl_pm + kl_qm) * 0.5
}

/// Where the surrogate's weights start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SurrogateInit {
    /// A copy of the base's TorchScript module, any architecture, fine-tuned
    /// (saved as TorchScript): it already knows the images' features.
    BaseCopy,
    /// A built-in architecture started from the base's weights (the base is
    /// that architecture): the paper's recipe for a model smoothcert trained.
    BaseWeights(Arch),
    /// A built-in architecture from random weights.
    Scratch(Arch),
}

impl SurrogateInit {
    /// The start a surrogate of `bundle` gets: with no architecture named, a
    /// copy of the base (its module, or its built-in weights); a named
    /// architecture trains from scratch unless `from_base_weights` (which
    /// needs the base to be that architecture).
    pub fn choose(
        bundle: &Bundle,
        arch: Option<Arch>,
        from_base_weights: bool,
    ) -> Result<SurrogateInit, PipelineError> {
        let base_arch = match bundle.base.format {
            WeightsFormat::Torchscript => None,
            WeightsFormat::Safetensors => Some(Arch::parse(
                bundle.base.arch.as_deref().unwrap_or_default(),
            )?),
        };
        match (arch, base_arch) {
            (None, None) => Ok(SurrogateInit::BaseCopy),
            (None, Some(a)) => Ok(SurrogateInit::BaseWeights(a)),
            (Some(a), _) if !from_base_weights => Ok(SurrogateInit::Scratch(a)),
            (Some(a), Some(b)) if a == b => Ok(SurrogateInit::BaseWeights(a)),
            (Some(a), _) => Err(PipelineError::Invalid(format!(
                "--init-from-base needs the base's built-in architecture ({:?}), not {}",
                bundle.base.arch,
                a.name()
            ))),
        }
    }

    /// How `[surrogate.training] init` records it.
    pub fn name(self) -> &'static str {
        match self {
            SurrogateInit::BaseCopy => "base-copy",
            SurrogateInit::BaseWeights(_) => "base-weights",
            SurrogateInit::Scratch(_) => "scratch",
        }
    }

    /// The architecture's name: a built-in one, or "torchscript" for a copy.
    pub fn arch_name(self) -> &'static str {
        match self {
            SurrogateInit::BaseCopy => "torchscript",
            SurrogateInit::BaseWeights(a) | SurrogateInit::Scratch(a) => a.name(),
        }
    }

    /// Fine-tuning a network that already works wants a smaller step than
    /// training one from random weights.
    pub fn default_learning_rate(self) -> f64 {
        match self {
            SurrogateInit::BaseCopy => 1e-4,
            SurrogateInit::BaseWeights(_) | SurrogateInit::Scratch(_) => 1e-3,
        }
    }
}

/// The training batch for inputs of `input` [C, H, W]: 128 up to 3 x 32 x 32
/// pixels, fewer in proportion above (at least 8), so that fine-tuning a
/// ResNet-sized copy keeps its activations and gradients within a 24 GB
/// machine or GPU (8 images of 3 x 224 x 224 through a ResNet-50: about 2 GB).
pub fn default_batch_size(input: [usize; 3]) -> usize {
    const PIXELS: usize = 128 * 3 * 32 * 32;
    (PIXELS / input.iter().product::<usize>().max(1)).clamp(8, 128)
}

#[derive(Debug, Clone)]
pub struct TrainSurrogateOptions {
    pub bundle: PathBuf,
    pub counts: Vec<PathBuf>,
    pub init: SurrogateInit,
    pub loss: SurrogateLoss,
    /// The weight of the margin tail's log-miss term beside the loss
    /// ([`margin_tail`]); 0: none. Above 0 the counts need their margins.
    pub margin_tail: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Fraction of the counted inputs held out for validation.
    pub val_fraction: f64,
    /// The sample count the surrogate stands in for (default: the bundle's, else 100,000).
    pub nominal_n: Option<u64>,
    pub data_dir: Option<PathBuf>,
    pub seed: u64,
    pub device: Device,
    pub pause_after: Option<usize>,
    pub show_progress: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunKey {
    arch: String,
    /// The weights' start ([`SurrogateInit::name`]).
    #[serde(default)]
    init: String,
    loss: SurrogateLoss,
    #[serde(default)]
    margin_tail: f64,
    epochs: usize,
    batch_size: usize,
    learning_rate: f64,
    val_fraction: f64,
    seed: u64,
    /// The counts' metadata and a fingerprint of their values: other counts are another run.
    counts: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SurrogateEpoch {
    pub epoch: usize,
    pub train_loss: f64,
    pub validation: ValidationFigures,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    key: RunKey,
    epochs_done: usize,
    adam_step: i64,
    best_epoch: usize,
    /// The best epoch's [`ValidationFigures::selection_score`].
    best_val_js: f64,
    history: Vec<SurrogateEpoch>,
}

#[derive(Debug, Clone)]
pub enum SurrogateOutcome {
    Finished(Box<SurrogateSpec>),
    Paused { epochs_done: usize },
}

/// The bundle file that lists the inputs a surrogate was trained (and
/// validated) on, per split: calibration and evaluation inputs must avoid them.
pub const SURROGATE_INPUTS: &str = "surrogate_inputs.json";

/// Dataset indices of the surrogate's training and validation inputs, per split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SurrogateInputs {
    pub train: Vec<i64>,
    pub test: Vec<i64>,
}

impl SurrogateInputs {
    fn of(runs: &[Counts]) -> SurrogateInputs {
        let mut out = SurrogateInputs::default();
        for run in runs {
            match run.meta.split {
                data::Split::Train => out.train.extend(&run.indices),
                data::Split::Test => out.test.extend(&run.indices),
            }
        }
        out.train.sort_unstable();
        out.test.sort_unstable();
        out
    }

    /// The inputs of `split` in the bundle at `dir`; empty when the file is absent
    /// (a surrogate trained before it was written, or none at all). Sorted, for
    /// [`SurrogateInputs::contains`].
    pub fn read(dir: &std::path::Path) -> Result<SurrogateInputs, PipelineError> {
        let path = dir.join(SURROGATE_INPUTS);
        let mut inputs: SurrogateInputs = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| PipelineError::Invalid(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SurrogateInputs::default(),
            Err(e) => return Err(io_err(&path)(e)),
        };
        inputs.train.sort_unstable();
        inputs.test.sort_unstable();
        Ok(inputs)
    }

    /// Whether input `idx` of `split` is among these.
    pub fn contains(&self, split: data::Split, idx: i64) -> bool {
        self.of_split(split).binary_search(&idx).is_ok()
    }

    /// The first of `counts`' inputs that is among these, if any.
    pub fn first_of(&self, counts: &Counts) -> Option<i64> {
        counts
            .indices
            .iter()
            .copied()
            .find(|&i| self.contains(counts.meta.split, i))
    }

    /// Every input the bundle's surrogate was fitted on: its training inputs
    /// and those of its tail map.
    pub fn fitted(bundle: &Bundle) -> Result<SurrogateInputs, PipelineError> {
        let mut all = Self::read(&bundle.dir)?;
        if let Some(map) = bundle.surrogate.as_ref().and_then(|s| s.tail_map.as_ref()) {
            let list = super::InputList::read(&bundle.dir.join(&map.inputs_file))?;
            match list.split {
                data::Split::Train => all.train.extend(list.indices),
                data::Split::Test => all.test.extend(list.indices),
            }
            all.train.sort_unstable();
            all.train.dedup();
            all.test.sort_unstable();
            all.test.dedup();
        }
        Ok(all)
    }

    pub fn of_split(&self, split: data::Split) -> &[i64] {
        match split {
            data::Split::Train => &self.train,
            data::Split::Test => &self.test,
        }
    }
}

/// Images of the counted inputs [M, C, H, W] and their normalized counts [M, K].
fn training_tensors(
    ds: &Dataset,
    counts: &Counts,
    device: Device,
) -> Result<(Tensor, Tensor), PipelineError> {
    let m = counts.len() as i64;
    let x = counts.images(ds)?.to_device(device);
    let q = Tensor::from_slice(&counts.counts)
        .view([m, counts.meta.num_classes as i64])
        .to_kind(Kind::Float)
        / counts.meta.n as f64;
    Ok((x, q.to_device(device)))
}

pub fn train_surrogate(opts: &TrainSurrogateOptions) -> Result<SurrogateOutcome, PipelineError> {
    if opts.counts.is_empty() || opts.epochs == 0 || opts.batch_size == 0 {
        return Err(PipelineError::Invalid(
            "train-surrogate needs --counts, and --epochs and --batch-size of at least 1".into(),
        ));
    }
    if !(opts.val_fraction > 0.0 && opts.val_fraction < 1.0) {
        return Err(PipelineError::Invalid(
            "--val-fraction must be in (0, 1)".into(),
        ));
    }
    margin_tail::check_weight(opts.margin_tail)?;
    let bundle = Bundle::load(&opts.bundle)?;
    let data = TrainingData::load(&bundle, opts)?;
    let mut run = SurrogateRun::resume(&bundle, opts, &data)?;
    let last = opts.pause_after.map_or(opts.epochs, |p| {
        (run.state.epochs_done + p).min(opts.epochs)
    });
    for epoch in run.state.epochs_done..last {
        run.epoch(epoch)?;
    }
    if run.state.epochs_done < opts.epochs {
        return Ok(SurrogateOutcome::Paused {
            epochs_done: run.state.epochs_done,
        });
    }
    let spec = install_best(bundle, opts, &data, &run.state, &run.ckpt)?;
    Ok(SurrogateOutcome::Finished(Box::new(spec)))
}

/// A surrogate training run: the model, its optimizer and the state its
/// checkpoint keeps after every epoch.
struct SurrogateRun<'a> {
    opts: &'a TrainSurrogateOptions,
    data: &'a TrainingData,
    ckpt: Checkpoint,
    /// A TorchScript copy of the base (else built-in weights).
    script: bool,
    model: Classifier,
    adam: Adam,
    state: State,
}

impl<'a> SurrogateRun<'a> {
    /// The run so far: from the checkpoint when it holds this run, else from
    /// the start. A checkpoint of another run is refused.
    fn resume(
        bundle: &Bundle,
        opts: &'a TrainSurrogateOptions,
        data: &'a TrainingData,
    ) -> Result<Self, PipelineError> {
        let key = RunKey {
            arch: opts.init.arch_name().into(),
            init: opts.init.name().into(),
            loss: opts.loss,
            margin_tail: opts.margin_tail,
            epochs: opts.epochs,
            batch_size: opts.batch_size,
            learning_rate: opts.learning_rate,
            val_fraction: opts.val_fraction,
            seed: opts.seed,
            counts: counts_key(&data.runs),
        };
        let ckpt = Checkpoint {
            dir: bundle.dir.join("surrogate-checkpoint"),
        };
        let script = opts.init == SurrogateInit::BaseCopy;
        let saved = match ckpt.read::<State>()? {
            Some(saved) if saved.key != key => {
                return Err(PipelineError::Invalid(format!(
                    "{} holds a checkpoint of a different surrogate run; remove it to start over",
                    ckpt.dir.display()
                )))
            }
            other => other,
        };
        let model = start_model(
            bundle,
            opts,
            saved
                .as_ref()
                .map(|s| ckpt.weights_of(s.epochs_done, script)),
        )?;
        let mut adam = Adam::new(&model)?;
        let mut state = State {
            key,
            epochs_done: 0,
            adam_step: 0,
            best_epoch: 0,
            best_val_js: f64::INFINITY,
            history: vec![],
        };
        if let Some(saved) = saved {
            adam.load_moments(&ckpt.adam(saved.epochs_done), saved.adam_step)?;
            state = saved;
        }
        Ok(SurrogateRun {
            opts,
            data,
            ckpt,
            script,
            model,
            adam,
            state,
        })
    }

    /// Trains and validates epoch `epoch` (from 0), keeps its weights if
    /// they are the best so far, and checkpoints the run.
    fn epoch(&mut self, epoch: usize) -> Result<(), PipelineError> {
        let (opts, data, ckpt, script) = (self.opts, self.data, &self.ckpt, self.script);
        let (model, adam, state) = (&mut self.model, &mut self.adam, &mut self.state);
        let started = Instant::now();
        let train_loss = train_epoch(model, adam, data, opts, epoch)?;
        let validation = validate(
            model,
            &data.x_val,
            &data.q_val,
            data.tail_val.as_ref(),
            opts.batch_size as i64,
        )?;
        tracing::info!(
            epoch = epoch + 1,
            loss = train_loss,
            val_js = validation.mean_js,
            val_top1 = validation.top1_agreement,
            val_p95_err = validation.p95_abs_err_pa,
            val_tail_err = validation.mean_tail_err,
            "surrogate epoch done"
        );
        // The best weights go to best-<epoch> (temp file + rename); the state file
        // written below is what makes them the best, so a kill in between only
        // leaves a stray file.
        let previous_best = state.best_epoch;
        let score = validation.selection_score(opts.margin_tail);
        if score < state.best_val_js {
            std::fs::create_dir_all(&ckpt.dir).map_err(io_err(&ckpt.dir))?;
            save_trained(model, &ckpt.best(epoch + 1, script))?;
            state.best_val_js = score;
            state.best_epoch = epoch + 1;
        }
        state.history.push(SurrogateEpoch {
            epoch: epoch + 1,
            train_loss,
            validation,
            seconds: started.elapsed().as_secs_f64(),
        });
        state.epochs_done = epoch + 1;
        state.adam_step = adam.step;
        ckpt.write(model, adam, state.epochs_done, &*state)?;
        if previous_best != state.best_epoch && previous_best > 0 {
            let _ = std::fs::remove_file(ckpt.best(previous_best, script));
        }
        Ok(())
    }
}

/// The counted inputs and their normalized counts, split once by the seed
/// into training and validation.
struct TrainingData {
    runs: Vec<Counts>,
    counts_n: u64,
    trained_on: SurrogateInputs,
    x_tr: Tensor,
    q_tr: Tensor,
    x_val: Tensor,
    q_val: Tensor,
    /// With a margin tail: its fit and targets, split as the inputs are.
    tail_fit: Option<margin_tail::TailFit>,
    tail_tr: Option<TailTargets>,
    tail_val: Option<TailTargets>,
}

impl TrainingData {
    fn load(bundle: &Bundle, opts: &TrainSurrogateOptions) -> Result<TrainingData, PipelineError> {
        let runs = super::counts::merge_runs(&opts.counts)?;
        let inputs: usize = runs.iter().map(Counts::len).sum();
        if inputs < 2 {
            return Err(PipelineError::Invalid(format!(
                "{inputs} counted input(s): a training and a validation split need at least 2"
            )));
        }
        let fingerprint = super::base_fingerprint(bundle)?;
        let counts_n = runs[0].meta.n;
        let mut xs = Vec::with_capacity(runs.len());
        let mut qs = Vec::with_capacity(runs.len());
        for counts in &runs {
            counts.check_base(bundle, &fingerprint)?;
            if counts.meta.n != counts_n {
                return Err(PipelineError::Invalid(format!(
                    "counts at N = {} and N = {counts_n} mixed: their targets are not equally precise",
                    counts.meta.n
                )));
            }
            let ds = counts.dataset(bundle, opts.data_dir.as_deref())?;
            let (x, q) = training_tensors(&ds, counts, opts.device)?;
            xs.push(x);
            qs.push(q);
        }
        // Fitted once the counts are known to be of this base and one N.
        let (tail_fit, tail) = if opts.margin_tail > 0.0 {
            let (fit, targets) = margin_tail::fit_and_target(&runs, opts.device)?;
            tracing::info!(
                a = fit.a,
                b = fit.b,
                inputs = fit.inputs,
                "margin tail fitted"
            );
            (Some(fit), Some(targets))
        } else {
            (None, None)
        };
        let (x, q) = (Tensor::cat(&xs, 0), Tensor::cat(&qs, 0));
        // A fixed split from the seed, drawn on the CPU so that the device
        // does not change it: the same inputs are held out on every resume.
        tch::manual_seed(opts.seed as i64);
        let m = inputs as i64;
        let perm = Tensor::randperm(m, (Kind::Int64, Device::Cpu)).to_device(opts.device);
        let n_val = ((m as f64 * opts.val_fraction).round() as i64).clamp(1, m - 1);
        let (val_idx, train_idx) = (perm.narrow(0, 0, n_val), perm.narrow(0, n_val, m - n_val));
        Ok(TrainingData {
            trained_on: SurrogateInputs::of(&runs),
            runs,
            counts_n,
            x_val: x.index_select(0, &val_idx),
            q_val: q.index_select(0, &val_idx),
            x_tr: x.index_select(0, &train_idx),
            q_tr: q.index_select(0, &train_idx),
            tail_fit,
            tail_val: tail.as_ref().map(|t| t.select(&val_idx)),
            tail_tr: tail.as_ref().map(|t| t.select(&train_idx)),
        })
    }

    fn train_inputs(&self) -> i64 {
        self.x_tr.size()[0]
    }

    fn validation_inputs(&self) -> i64 {
        self.x_val.size()[0]
    }
}

/// One epoch over the training inputs in the epoch's own seeded order;
/// returns the mean training loss.
fn train_epoch(
    model: &mut Classifier,
    adam: &mut Adam,
    data: &TrainingData,
    opts: &TrainSurrogateOptions,
    epoch: usize,
) -> Result<f64, PipelineError> {
    let n_tr = data.train_inputs();
    let bs = opts.batch_size as i64;
    let steps = (n_tr + bs - 1) / bs;
    tch::manual_seed(opts.seed.wrapping_mul(31).wrapping_add(epoch as u64 + 2) as i64);
    let lr = learning_rate(opts.learning_rate, epoch, opts.epochs);
    let order = Tensor::randperm(n_tr, (Kind::Int64, opts.device));
    let bar = progress_bar(
        steps as u64,
        &format!("surrogate epoch {}/{}", epoch + 1, opts.epochs),
        opts.show_progress,
    );
    let (mut loss_sum, mut seen) = (0f64, 0i64);
    model.set_training(true)?;
    for step in 0..steps {
        let idx = order.narrow(0, step * bs, bs.min(n_tr - step * bs));
        let logits = model.forward_t(&data.x_tr.index_select(0, &idx), true)?;
        let mut loss = opts
            .loss
            .per_input(&logits, &data.q_tr.index_select(0, &idx))
            .mean(Kind::Float);
        if let Some(tail) = &data.tail_tr {
            // Averaged over the inputs with a target, as validation averages it.
            let t = tail.select(&idx);
            let with = t.with_target().max(1) as f64;
            loss += margin_tail::per_input(&logits, &t.class_a, &t.ln_miss).sum(Kind::Float)
                * (opts.margin_tail / with);
        }
        loss.backward();
        adam.step(lr);
        let b = idx.size()[0];
        loss_sum += loss.double_value(&[]) * b as f64;
        seen += b;
        bar.inc(1);
    }
    bar.finish_and_clear();
    model.set_training(false)?;
    Ok(loss_sum / seen.max(1) as f64)
}

/// The best epoch by validation JS becomes the bundle's surrogate: its file,
/// as saved, checked by reloading it as serving loads it, then recorded.
fn install_best(
    mut bundle: Bundle,
    opts: &TrainSurrogateOptions,
    data: &TrainingData,
    state: &State,
    ckpt: &Checkpoint,
) -> Result<SurrogateSpec, PipelineError> {
    let script = opts.init == SurrogateInit::BaseCopy;
    let best = state
        .history
        .iter()
        .find(|e| e.epoch == state.best_epoch)
        .map(|e| e.validation.clone())
        .unwrap_or_default();
    let file = format!("surrogate.{}", weights_ext(script));
    let format = if script {
        WeightsFormat::Torchscript
    } else {
        WeightsFormat::Safetensors
    };
    let target = bundle.dir.join(&file);
    let tmp = bundle.dir.join(format!("{file}.tmp"));
    let best_file = ckpt.best(state.best_epoch, script);
    std::fs::copy(&best_file, &tmp).map_err(io_err(&best_file))?;
    std::fs::rename(&tmp, &target).map_err(io_err(&target))?;
    let spec = SurrogateSpec {
        model: BaseSpec {
            format,
            file,
            arch: (!script).then(|| opts.init.arch_name().into()),
        },
        nominal_n: opts
            .nominal_n
            .or(bundle.surrogate.as_ref().map(|s| s.nominal_n))
            .unwrap_or(100_000),
        training: Some(SurrogateTraining {
            loss: opts.loss.as_str().into(),
            margin_tail: (opts.margin_tail > 0.0).then_some(opts.margin_tail),
            margin_tail_probit: data.tail_fit.map(|f| [f.a, f.b]),
            init: Some(opts.init.name().into()),
            learning_rate: Some(opts.learning_rate),
            batch_size: Some(opts.batch_size),
            epochs: opts.epochs,
            best_epoch: state.best_epoch,
            counts_n: data.counts_n,
            train_inputs: data.train_inputs() as usize,
            validation_inputs: data.validation_inputs() as usize,
            seed: opts.seed,
            training_seconds: state.history.iter().map(|e| e.seconds).sum(),
            val_mean_js: best.mean_js,
            val_top1_agreement: best.top1_agreement,
            val_mean_abs_err_pa: best.mean_abs_err_pa,
            val_p95_abs_err_pa: best.p95_abs_err_pa,
        }),
        // A tail map and a calibration belong to the surrogate they measured.
        tail_map: None,
        calibration: None,
    };
    bundle.surrogate = Some(spec.clone());
    // The saved file is the surrogate: loaded back as serving loads it, it
    // must give the best epoch's validation figures, or nothing is recorded.
    let reloaded = Classifier::load_surrogate(&bundle, opts.device)?;
    let again = validate(
        &reloaded,
        &data.x_val,
        &data.q_val,
        data.tail_val.as_ref(),
        opts.batch_size as i64,
    )?
    .mean_js;
    if (again - best.mean_js).abs() > 1e-4 * best.mean_js.abs().max(1e-6) {
        return Err(PipelineError::Invalid(format!(
            "{}: reloaded, the surrogate's validation JS is {again}, not the best epoch's {}",
            target.display(),
            best.mean_js
        )));
    }
    write_json(&bundle.dir.join(SURROGATE_INPUTS), &data.trained_on)?;
    bundle.save()?;
    write_json(&bundle.dir.join("surrogate_summary.json"), &state.history)?;
    let _ = std::fs::remove_dir_all(&ckpt.dir);
    Ok(spec)
}

/// The network to train: from the checkpoint's weights when resuming, else
/// as `opts.init` says.
fn start_model(
    bundle: &Bundle,
    opts: &TrainSurrogateOptions,
    checkpoint: Option<PathBuf>,
) -> Result<Classifier, PipelineError> {
    let norm = bundle.normalization.as_ref();
    let (shape, classes) = (bundle.input_shape, bundle.num_classes());
    if opts.init == SurrogateInit::BaseCopy {
        let from = checkpoint.unwrap_or_else(|| bundle.base_path());
        let model = Classifier::load_trainable_script(&from, shape, classes, norm, opts.device)?;
        let trainable = model
            .var_store()
            .is_some_and(|vs| !vs.trainable_variables().is_empty());
        if !trainable {
            return Err(PipelineError::Invalid(format!(
                "{}: the TorchScript module has no trainable parameters to fine-tune; \
                 name a built-in --arch to train a surrogate from scratch",
                from.display()
            )));
        }
        return Ok(model);
    }
    let arch = match opts.init {
        SurrogateInit::BaseWeights(a) | SurrogateInit::Scratch(a) => a,
        SurrogateInit::BaseCopy => unreachable!("handled above"),
    };
    tch::manual_seed(opts.seed.wrapping_add(1) as i64);
    let mut model = Classifier::new_builtin(arch, shape, classes, norm, opts.device)?;
    match (checkpoint, opts.init) {
        (Some(path), _) => model.load_weights(&path)?,
        (None, SurrogateInit::BaseWeights(_)) => model.load_weights(&bundle.base_path())?,
        (None, _) => {}
    }
    Ok(model)
}

/// The counts' metadata and a fingerprint of their values: other counts are another run.
fn counts_key(runs: &[Counts]) -> String {
    runs.iter()
        .map(|counts| {
            format!(
                "{}:{:016x}",
                serde_json::to_string(&counts.meta).unwrap_or_default(),
                crate::fsutil::fnv1a(
                    &counts
                        .indices
                        .iter()
                        .flat_map(|i| i.to_le_bytes())
                        .chain(counts.counts.iter().flat_map(|c| c.to_le_bytes()))
                        .chain(counts.margins.iter().flat_map(|m| {
                            m.sum.iter().chain(&m.sum_sq).flat_map(|v| v.to_le_bytes())
                        }))
                        .collect::<Vec<u8>>()
                )
            )
        })
        .collect::<Vec<_>>()
        .join(";")
}

#[cfg(test)]
mod tests;
