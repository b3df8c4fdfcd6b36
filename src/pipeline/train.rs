//! `train-base`: a base classifier trained with Gaussian noise augmentation
//! (fresh noise of the bundle's kind on every batch, Cohen et al.'s recipe), checkpointed
//! every epoch so an interrupted run resumes exactly where it stopped.
use super::optim::{learning_rate, Adam, Checkpoint};
use super::{io_err, progress_bar, write_json, PipelineError};
use crate::data::{self, Dataset, DatasetKind, Split};
use crate::model::{Arch, BaseSpec, Bundle, Classifier, Normalization, Provenance, WeightsFormat};
use crate::smoothing::Noise;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone)]
pub struct TrainBaseOptions {
    pub dataset: DatasetKind,
    pub data_dir: Option<PathBuf>,
    pub arch: Arch,
    /// The smoothing noise trained under (and recorded in the bundle).
    pub noise: Noise,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub seed: u64,
    pub device: Device,
    /// Train on only the first `limit` training images (tests, quick runs).
    pub limit: Option<usize>,
    pub out: PathBuf,
    pub name: Option<String>,
    /// Train at most this many epochs in this invocation, then stop with the
    /// checkpoint in place (a later run resumes). `None`: run to the end.
    pub pause_after: Option<usize>,
    pub show_progress: bool,
}

/// What the checkpoint must agree on to be resumed; anything else is a different run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunKey {
    dataset: DatasetKind,
    arch: String,
    noise: Noise,
    epochs: usize,
    batch_size: usize,
    learning_rate: f64,
    seed: u64,
    limit: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochStats {
    pub epoch: usize,
    pub learning_rate: f64,
    pub train_loss: f64,
    pub train_noisy_accuracy: f64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    key: RunKey,
    epochs_done: usize,
    adam_step: i64,
    history: Vec<EpochStats>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub bundle: PathBuf,
    pub dataset: DatasetKind,
    pub arch: String,
    pub noise: Noise,
    pub epochs: usize,
    pub resumed_from_epoch: usize,
    pub training_seconds: f64,
    pub clean_test_accuracy: f64,
    pub noisy_test_accuracy: f64,
    pub history: Vec<EpochStats>,
}

/// Per-channel mean/std of the training images (normalization inside the model).
pub fn dataset_normalization(ds: &Dataset) -> Normalization {
    let [c, h, w] = ds.shape;
    let plane = h * w;
    let mut sum = vec![0f64; c];
    let mut sq = vec![0f64; c];
    for img in ds.images.chunks(c * plane) {
        for (ch, pixels) in img.chunks(plane).enumerate() {
            for &p in pixels {
                sum[ch] += p as f64;
                sq[ch] += (p as f64) * (p as f64);
            }
        }
    }
    let count = (ds.len() * plane).max(1) as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / count).collect();
    let std = sq
        .iter()
        .zip(&mean)
        .map(|(q, m)| (q / count - m * m).max(1e-12).sqrt())
        .collect();
    Normalization { mean, std }
}

/// The images of a dataset as one [N, C, H, W] float tensor and [N] labels on `device`.
pub fn dataset_tensors(ds: &Dataset, device: Device) -> (Tensor, Tensor) {
    let [c, h, w] = ds.shape.map(|d| d as i64);
    let x = Tensor::from_slice(&ds.images)
        .view([ds.len() as i64, c, h, w])
        .to_device(device);
    let y = Tensor::from_slice(&ds.labels).to_device(device);
    (x, y)
}

/// The seed of one epoch's shuffling and noise, distinct from the
/// initialisation's (`seed` itself) and from every other epoch's.
fn epoch_seed(seed: u64, epoch: usize) -> i64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(epoch as u64 + 1) as i64
}

/// What a `train-base` invocation ended with.
#[derive(Debug, Clone)]
pub enum TrainOutcome {
    /// All epochs done; the bundle is written.
    Finished(TrainSummary),
    /// Stopped early on `pause_after`; the checkpoint holds `epochs_done` epochs.
    Paused { epochs_done: usize },
}

pub fn train_base(opts: &TrainBaseOptions) -> Result<TrainOutcome, PipelineError> {
    check_options(opts)?;
    let (train, test) = datasets(opts)?;
    let normalization = dataset_normalization(&train);
    // The initial weights come from --seed too, so a run is reproducible end to end.
    tch::manual_seed(opts.seed as i64);
    let mut model = Classifier::new_builtin(
        opts.arch,
        train.shape,
        train.classes.len(),
        Some(&normalization),
        opts.device,
    )?;
    let mut adam = Adam::new(&model)?;
    let ckpt = Checkpoint {
        dir: opts.out.join("checkpoint"),
    };
    let mut state = resume(&ckpt, RunKey::of(opts), &mut model, &mut adam)?;
    let resumed_from_epoch = state.epochs_done;

    let (x_train, y_train) = dataset_tensors(&train, opts.device);
    let last_epoch = opts
        .pause_after
        .map_or(opts.epochs, |p| (resumed_from_epoch + p).min(opts.epochs));
    for epoch in state.epochs_done..last_epoch {
        let stats = train_epoch(&mut model, &mut adam, (&x_train, &y_train), opts, epoch)?;
        tracing::info!(
            epoch = stats.epoch,
            loss = stats.train_loss,
            noisy_acc = stats.train_noisy_accuracy,
            seconds = stats.seconds,
            "epoch done"
        );
        state.history.push(stats);
        state.epochs_done = epoch + 1;
        state.adam_step = adam.step;
        ckpt.write(&mut model, &adam, state.epochs_done, &state)?;
    }
    if state.epochs_done < opts.epochs {
        return Ok(TrainOutcome::Paused {
            epochs_done: state.epochs_done,
        });
    }

    let clean_test_accuracy = accuracy(&model, &test, None, opts.seed)?;
    let noisy_test_accuracy = accuracy(&model, &test, Some(opts.noise), opts.seed)?;
    let training_seconds: f64 = state.history.iter().map(|e| e.seconds).sum();
    let provenance = provenance(
        opts,
        training_seconds,
        clean_test_accuracy,
        noisy_test_accuracy,
    );
    write_bundle(&mut model, opts, &train, normalization, provenance)?;
    let summary = TrainSummary {
        bundle: opts.out.clone(),
        dataset: opts.dataset,
        arch: opts.arch.name().to_string(),
        noise: opts.noise,
        epochs: opts.epochs,
        resumed_from_epoch,
        training_seconds,
        clean_test_accuracy,
        noisy_test_accuracy,
        history: state.history,
    };
    write_json(&opts.out.join("train_summary.json"), &summary)?;
    // The bundle is complete: the checkpoint has served its purpose.
    let _ = std::fs::remove_dir_all(&ckpt.dir);
    Ok(TrainOutcome::Finished(summary))
}

/// Checked before any work: a bundle needs a scale > 0, and finding out
/// after the last epoch would waste the whole run.
fn check_options(opts: &TrainBaseOptions) -> Result<(), PipelineError> {
    if opts.noise.validate().is_err() {
        return Err(PipelineError::Invalid(format!(
            "--{} must be > 0, got {}",
            opts.noise.scale_name(),
            opts.noise.scale()
        )));
    }
    if opts.epochs == 0 || opts.batch_size == 0 {
        return Err(PipelineError::Invalid(
            "--epochs and --batch-size must be at least 1".into(),
        ));
    }
    Ok(())
}

impl RunKey {
    fn of(opts: &TrainBaseOptions) -> RunKey {
        RunKey {
            dataset: opts.dataset,
            arch: opts.arch.name().to_string(),
            noise: opts.noise,
            epochs: opts.epochs,
            batch_size: opts.batch_size,
            learning_rate: opts.learning_rate,
            seed: opts.seed,
            limit: opts.limit,
        }
    }
}

/// How the bundle's base was made, for its model.toml.
fn provenance(
    opts: &TrainBaseOptions,
    training_seconds: f64,
    clean_test_accuracy: f64,
    noisy_test_accuracy: f64,
) -> Provenance {
    Provenance {
        dataset: Some(opts.dataset.into()),
        epochs: Some(opts.epochs),
        batch_size: Some(opts.batch_size),
        learning_rate: Some(opts.learning_rate),
        seed: Some(opts.seed),
        training_seconds: Some(training_seconds),
        clean_test_accuracy: Some(clean_test_accuracy),
        noisy_test_accuracy: Some(noisy_test_accuracy),
        created_by: Some(format!(
            "smoothcert {} train-base",
            env!("CARGO_PKG_VERSION")
        )),
    }
}

/// The training split (its first `limit` images, if given) and the test split.
fn datasets(opts: &TrainBaseOptions) -> Result<(data::Dataset, data::Dataset), PipelineError> {
    let data_dir = opts
        .data_dir
        .clone()
        .unwrap_or_else(|| opts.dataset.default_dir());
    let mut train = data::load(opts.dataset, &data_dir, Split::Train)?;
    if let Some(limit) = opts.limit {
        let keep = limit.min(train.len());
        train.images.truncate(keep * train.image_numel());
        train.labels.truncate(keep);
    }
    let test = data::load(opts.dataset, &data_dir, Split::Test)?;
    Ok((train, test))
}

/// The run so far: the checkpoint's weights, optimizer moments and history
/// when it holds this run (`key`), else a fresh state. A checkpoint of
/// another run is refused.
fn resume(
    ckpt: &Checkpoint,
    key: RunKey,
    model: &mut Classifier,
    adam: &mut Adam,
) -> Result<CheckpointState, PipelineError> {
    let Some(saved) = ckpt.read::<CheckpointState>()? else {
        return Ok(CheckpointState {
            key,
            epochs_done: 0,
            adam_step: 0,
            history: vec![],
        });
    };
    if saved.key != key {
        return Err(PipelineError::Invalid(format!(
            "{} holds a checkpoint of a different run ({:?}); remove it or choose another --out",
            ckpt.dir.display(),
            saved.key
        )));
    }
    model.load_weights(&ckpt.weights(saved.epochs_done))?;
    adam.load_moments(&ckpt.adam(saved.epochs_done), saved.adam_step)?;
    tracing::info!(
        epochs_done = saved.epochs_done,
        "resuming train-base from checkpoint"
    );
    Ok(saved)
}

/// One epoch: the training images in the epoch's seeded order, each batch
/// under fresh noise.
fn train_epoch(
    model: &mut Classifier,
    adam: &mut Adam,
    (x_train, y_train): (&Tensor, &Tensor),
    opts: &TrainBaseOptions,
    epoch: usize,
) -> Result<EpochStats, PipelineError> {
    let started = Instant::now();
    let n = x_train.size()[0];
    let bs = opts.batch_size as i64;
    let steps = (n + bs - 1) / bs;
    // Seeded per epoch: shuffling and noise of epoch e are the same whether or not
    // the run was interrupted before it.
    tch::manual_seed(epoch_seed(opts.seed, epoch));
    let lr = learning_rate(opts.learning_rate, epoch, opts.epochs);
    let perm = Tensor::randperm(n, (Kind::Int64, opts.device));
    let bar = progress_bar(
        steps as u64,
        &format!("epoch {}/{}", epoch + 1, opts.epochs),
        opts.show_progress,
    );
    let (mut loss_sum, mut correct, mut seen) = (0f64, 0i64, 0i64);
    for step in 0..steps {
        let idx = perm.narrow(0, step * bs, bs.min(n - step * bs));
        let x = x_train.index_select(0, &idx);
        let y = y_train.index_select(0, &idx);
        let noisy = crate::model::noise::add_to(&x, opts.noise)?;
        let logits = model.forward_t(&noisy, true)?;
        let loss = logits.cross_entropy_for_logits(&y);
        loss.backward();
        adam.step(lr);
        let b = idx.size()[0];
        loss_sum += loss.double_value(&[]) * b as f64;
        correct += logits
            .argmax(1, false)
            .eq_tensor(&y)
            .sum(Kind::Int64)
            .int64_value(&[]);
        seen += b;
        bar.inc(1);
        if step % 20 == 0 {
            bar.set_message(format!("loss {:.4}", loss_sum / seen as f64));
        }
    }
    bar.finish_and_clear();
    Ok(EpochStats {
        epoch: epoch + 1,
        learning_rate: lr,
        train_loss: loss_sum / seen.max(1) as f64,
        train_noisy_accuracy: correct as f64 / seen.max(1) as f64,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The trained model as a bundle in `opts.out`: weights first, then model.toml.
fn write_bundle(
    model: &mut Classifier,
    opts: &TrainBaseOptions,
    train: &data::Dataset,
    normalization: Normalization,
    provenance: Provenance,
) -> Result<(), PipelineError> {
    let bundle = Bundle {
        name: opts.name.clone().unwrap_or_else(|| {
            format!(
                "{}-{}-{}{}",
                opts.dataset,
                opts.arch.name(),
                opts.noise.scale_name(),
                opts.noise.scale()
            )
        }),
        version: "1".into(),
        input_shape: train.shape,
        labels: train.classes.clone(),
        normalization: Some(normalization),
        noise: opts.noise,
        base: BaseSpec {
            format: WeightsFormat::Safetensors,
            file: "base.safetensors".into(),
            arch: Some(opts.arch.name().to_string()),
        },
        provenance,
        surrogate: None,
        dir: opts.out.clone(),
    };
    let weights = bundle.base_path();
    let tmp = weights.with_extension("tmp.safetensors");
    model.save_weights(&tmp)?;
    std::fs::rename(&tmp, &weights).map_err(io_err(&weights))?;
    Ok(bundle.save()?)
}

/// Test accuracy of the base classifier on clean inputs (`None`) or on one
/// noisy copy of each input.
pub fn accuracy(
    model: &Classifier,
    ds: &Dataset,
    noise: Option<Noise>,
    seed: u64,
) -> Result<f64, PipelineError> {
    let _guard = tch::no_grad_guard();
    tch::manual_seed(seed as i64);
    let (x, y) = dataset_tensors(ds, model.device());
    let mut correct = 0i64;
    let n = ds.len() as i64;
    let chunk = 1000;
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let xb = x.narrow(0, start, len);
        let xb = match noise {
            Some(noise) => crate::model::noise::add_to(&xb, noise)?,
            None => xb,
        };
        let pred = model.logits(&xb)?.argmax(1, false);
        correct += pred
            .eq_tensor(&y.narrow(0, start, len))
            .sum(Kind::Int64)
            .int64_value(&[]);
        start += len;
    }
    Ok(correct as f64 / n.max(1) as f64)
}
