//! `train-base`: a base classifier trained with Gaussian noise augmentation
//! (fresh noise at sigma on every batch, Cohen et al.'s recipe), checkpointed
//! every epoch so an interrupted run resumes exactly where it stopped.
use super::{io_err, progress_bar, write_json, PipelineError};
use crate::data::{self, Dataset, DatasetKind, Split};
use crate::model::{
    Arch, BaseSpec, Bundle, Classifier, NoiseKind, NoiseSpec, Normalization, Provenance,
    WeightsFormat,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone)]
pub struct TrainBaseOptions {
    pub dataset: DatasetKind,
    pub data_dir: Option<PathBuf>,
    pub arch: Arch,
    pub sigma: f64,
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
    sigma: f64,
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
    pub sigma: f64,
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

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

/// Adam (Kingma & Ba) written out, so that its moments go into the checkpoint
/// and a resumed run continues with the same optimizer state.
struct Adam {
    params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: i64,
}

impl Adam {
    fn new(model: &Classifier) -> Result<Self, PipelineError> {
        let vs = model
            .var_store()
            .ok_or_else(|| PipelineError::Invalid("train-base needs a built-in network".into()))?;
        let mut params: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let m = params.iter().map(|(_, p)| p.zeros_like()).collect();
        let v = params.iter().map(|(_, p)| p.zeros_like()).collect();
        Ok(Adam {
            params,
            m,
            v,
            step: 0,
        })
    }

    fn step(&mut self, lr: f64) {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let bc1 = 1.0 - BETA1.powi(self.step as i32);
        let bc2 = 1.0 - BETA2.powi(self.step as i32);
        for ((_, p), (m, v)) in self.params.iter().zip(self.m.iter_mut().zip(&mut self.v)) {
            let mut g = p.grad();
            if !g.defined() {
                continue;
            }
            let _ = m.g_mul_scalar_(BETA1).g_add_(&(&g * (1.0 - BETA1)));
            let _ = v.g_mul_scalar_(BETA2).g_add_(&(&g * &g * (1.0 - BETA2)));
            let update = (&*m / bc1) / ((&*v / bc2).sqrt() + EPS) * lr;
            let _ = p.shallow_clone().g_sub_(&update);
            let _ = g.zero_();
        }
    }

    fn moments(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for ((name, _), (m, v)) in self.params.iter().zip(self.m.iter().zip(&self.v)) {
            out.push((format!("m.{name}"), m.shallow_clone()));
            out.push((format!("v.{name}"), v.shallow_clone()));
        }
        out
    }

    fn load_moments(&mut self, path: &Path, step: i64) -> Result<(), PipelineError> {
        let tensors: BTreeMap<String, Tensor> =
            Tensor::read_safetensors(path)?.into_iter().collect();
        let _guard = tch::no_grad_guard();
        for ((name, _), (m, v)) in self.params.iter().zip(self.m.iter_mut().zip(&mut self.v)) {
            for (prefix, dst) in [("m", m), ("v", v)] {
                let key = format!("{prefix}.{name}");
                let src = tensors
                    .get(&key)
                    .filter(|t| t.size() == dst.size())
                    .ok_or_else(|| {
                        PipelineError::Invalid(format!(
                            "{}: {key} missing or of the wrong shape",
                            path.display()
                        ))
                    })?;
                dst.f_copy_(src)?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// The seed of one epoch's shuffling and noise, distinct from the
/// initialisation's (`seed` itself) and from every other epoch's.
fn epoch_seed(seed: u64, epoch: usize) -> i64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(epoch as u64 + 1) as i64
}

/// Cosine decay over the whole run, a function of the epoch alone (resumable).
fn learning_rate(base: f64, epoch: usize, epochs: usize) -> f64 {
    base * 0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / epochs.max(1) as f64).cos())
}

struct Checkpoint {
    dir: PathBuf,
}

impl Checkpoint {
    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    fn weights(&self, epoch: usize) -> PathBuf {
        self.dir.join(format!("weights-{epoch}.safetensors"))
    }
    fn adam(&self, epoch: usize) -> PathBuf {
        self.dir.join(format!("adam-{epoch}.safetensors"))
    }

    fn read(&self) -> Result<Option<CheckpointState>, PipelineError> {
        let path = self.state_path();
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| PipelineError::Invalid(format!("{}: {e}", path.display())))
    }

    /// Weights and moments first, then the state file that points at them: a
    /// crash at any moment leaves the previous checkpoint intact.
    fn write(
        &self,
        model: &Classifier,
        adam: &Adam,
        state: &CheckpointState,
    ) -> Result<(), PipelineError> {
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let epoch = state.epochs_done;
        model.save_weights(&self.weights(epoch))?;
        Tensor::write_safetensors(&adam.moments(), self.adam(epoch))?;
        write_json(&self.state_path(), state)?;
        if epoch > 0 {
            let _ = std::fs::remove_file(self.weights(epoch - 1));
            let _ = std::fs::remove_file(self.adam(epoch - 1));
        }
        Ok(())
    }
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
    // Checked before any work: a bundle needs sigma > 0, and finding out after
    // the last epoch would waste the whole run.
    if !(opts.sigma > 0.0 && opts.sigma.is_finite()) {
        return Err(PipelineError::Invalid(format!(
            "--sigma must be > 0, got {}",
            opts.sigma
        )));
    }
    if opts.epochs == 0 || opts.batch_size == 0 {
        return Err(PipelineError::Invalid(
            "--epochs and --batch-size must be at least 1".into(),
        ));
    }
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
    let key = RunKey {
        dataset: opts.dataset,
        arch: opts.arch.name().to_string(),
        sigma: opts.sigma,
        epochs: opts.epochs,
        batch_size: opts.batch_size,
        learning_rate: opts.learning_rate,
        seed: opts.seed,
        limit: opts.limit,
    };
    let ckpt = Checkpoint {
        dir: opts.out.join("checkpoint"),
    };
    let mut state = CheckpointState {
        key: key.clone(),
        epochs_done: 0,
        adam_step: 0,
        history: vec![],
    };
    if let Some(saved) = ckpt.read()? {
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
        state = saved;
    }
    let resumed_from_epoch = state.epochs_done;

    let (x_train, y_train) = dataset_tensors(&train, opts.device);
    let n = train.len() as i64;
    let bs = opts.batch_size as i64;
    let steps = (n + bs - 1) / bs;
    let last_epoch = opts
        .pause_after
        .map_or(opts.epochs, |p| (resumed_from_epoch + p).min(opts.epochs));
    for epoch in state.epochs_done..last_epoch {
        let started = Instant::now();
        // Seeded per epoch: shuffling and noise of epoch e are the same whether or not
        // the run was interrupted before it.
        tch::manual_seed(epoch_seed(opts.seed, epoch));
        let lr = learning_rate(opts.learning_rate, epoch, opts.epochs);
        let perm = Tensor::randperm(n, (Kind::Int64, opts.device));
        let bar = progress_bar(
            steps as u64,
            &format!("epoch {}/{}", epoch + 1, opts.epochs),
        );
        if !opts.show_progress {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0i64, 0i64);
        for step in 0..steps {
            let idx = perm.narrow(0, step * bs, bs.min(n - step * bs));
            let x = x_train.index_select(0, &idx);
            let y = y_train.index_select(0, &idx);
            let noisy = &x + x.randn_like() * opts.sigma;
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
        let stats = EpochStats {
            epoch: epoch + 1,
            learning_rate: lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_noisy_accuracy: correct as f64 / seen.max(1) as f64,
            seconds: started.elapsed().as_secs_f64(),
        };
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
        ckpt.write(&model, &adam, &state)?;
    }
    if state.epochs_done < opts.epochs {
        return Ok(TrainOutcome::Paused {
            epochs_done: state.epochs_done,
        });
    }

    let clean_test_accuracy = accuracy(&model, &test, 0.0, opts.seed)?;
    let noisy_test_accuracy = accuracy(&model, &test, opts.sigma, opts.seed)?;
    let training_seconds: f64 = state.history.iter().map(|e| e.seconds).sum();
    let bundle = Bundle {
        name: opts.name.clone().unwrap_or_else(|| {
            format!("{}-{}-sigma{}", opts.dataset, opts.arch.name(), opts.sigma)
        }),
        version: "1".into(),
        input_shape: train.shape,
        labels: train.classes.clone(),
        normalization: Some(normalization),
        noise: NoiseSpec {
            kind: NoiseKind::Gaussian,
            sigma: opts.sigma,
        },
        base: BaseSpec {
            format: WeightsFormat::Safetensors,
            file: "base.safetensors".into(),
            arch: Some(opts.arch.name().to_string()),
        },
        provenance: Provenance {
            dataset: Some(opts.dataset),
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
        },
        dir: opts.out.clone(),
    };
    let weights = bundle.base_path();
    let tmp = weights.with_extension("tmp.safetensors");
    model.save_weights(&tmp)?;
    std::fs::rename(&tmp, &weights).map_err(io_err(&weights))?;
    bundle.save()?;
    let summary = TrainSummary {
        bundle: opts.out.clone(),
        dataset: opts.dataset,
        arch: opts.arch.name().to_string(),
        sigma: opts.sigma,
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

/// Test accuracy of the base classifier on clean inputs (sigma = 0) or on one
/// noisy copy of each input.
pub fn accuracy(
    model: &Classifier,
    ds: &Dataset,
    sigma: f64,
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
        let xb = if sigma > 0.0 {
            &xb + xb.randn_like() * sigma
        } else {
            xb
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
