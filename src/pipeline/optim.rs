//! What the training commands share: Adam with its state in the checkpoint,
//! the per-epoch checkpoint itself, and the learning-rate schedule.
use super::{io_err, write_json, PipelineError};
use crate::model::Classifier;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

/// Adam (Kingma & Ba) written out, so that its moments go into the checkpoint
/// and a resumed run continues with the same optimizer state.
pub(crate) struct Adam {
    params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    pub(crate) step: i64,
}

impl Adam {
    pub(crate) fn new(model: &Classifier) -> Result<Self, PipelineError> {
        let vs = model
            .var_store()
            .ok_or_else(|| PipelineError::Invalid("training needs a trainable network".into()))?;
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

    pub(crate) fn step(&mut self, lr: f64) {
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

    pub(crate) fn load_moments(&mut self, path: &Path, step: i64) -> Result<(), PipelineError> {
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

/// Cosine decay over the whole run, a function of the epoch alone (resumable).
pub(crate) fn learning_rate(base: f64, epoch: usize, epochs: usize) -> f64 {
    base * 0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / epochs.max(1) as f64).cos())
}

/// The file extension of a trained network's weights: a TorchScript module
/// (`script`) or safetensors.
pub(crate) fn weights_ext(script: bool) -> &'static str {
    if script {
        "pt"
    } else {
        "safetensors"
    }
}

/// Writes the network as its kind saves: TorchScript for a copy of the
/// base (so that batch-norm statistics travel with it), safetensors for a
/// built-in one. Temp file and rename: a kill never leaves half a file.
pub(crate) fn save_trained(model: &mut Classifier, path: &Path) -> Result<(), PipelineError> {
    if model.is_script() {
        model.save_script(path)?;
    } else {
        let tmp = path.with_extension("tmp.safetensors");
        model.save_weights(&tmp)?;
        std::fs::rename(&tmp, path).map_err(io_err(path))?;
    }
    Ok(())
}

/// Per-epoch checkpoint of a training run: weights, Adam moments, and a state
/// file (any serde type) naming the epoch they belong to.
pub(crate) struct Checkpoint {
    pub(crate) dir: PathBuf,
}

impl Checkpoint {
    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub(crate) fn weights(&self, epoch: usize) -> PathBuf {
        self.weights_of(epoch, false)
    }
    /// A TorchScript network's checkpoint is its module (`script`), with its
    /// buffers; a built-in one's its safetensors weights.
    pub(crate) fn weights_of(&self, epoch: usize, script: bool) -> PathBuf {
        self.dir
            .join(format!("weights-{epoch}.{}", weights_ext(script)))
    }
    /// The best epoch so far, kept apart from the rolling checkpoint.
    pub(crate) fn best(&self, epoch: usize, script: bool) -> PathBuf {
        self.dir
            .join(format!("best-{epoch}.{}", weights_ext(script)))
    }

    pub(crate) fn adam(&self, epoch: usize) -> PathBuf {
        self.dir.join(format!("adam-{epoch}.safetensors"))
    }

    pub(crate) fn read<S: DeserializeOwned>(&self) -> Result<Option<S>, PipelineError> {
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
    pub(crate) fn write<S: Serialize>(
        &self,
        model: &mut Classifier,
        adam: &Adam,
        epoch: usize,
        state: &S,
    ) -> Result<(), PipelineError> {
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let script = model.is_script();
        save_trained(model, &self.weights_of(epoch, script))?;
        Tensor::write_safetensors(&adam.moments(), self.adam(epoch))?;
        write_json(&self.state_path(), state)?;
        if epoch > 0 {
            let _ = std::fs::remove_file(self.weights_of(epoch - 1, script));
            let _ = std::fs::remove_file(self.adam(epoch - 1));
        }
        Ok(())
    }
}
