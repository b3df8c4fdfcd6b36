//! A classifier in pixel space: normalization, then the network. Owns its
//! tensors; the noisy sampling and the counting run on its device.
use super::{Arch, BaseSpec, Bundle, ModelError, Normalization, WeightsFormat};
use std::path::Path;
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

mod tally;
pub use tally::StreamTally;
use tally::Tally;

pub enum Network {
    BuiltIn {
        arch: Arch,
        vs: nn::VarStore,
        net: Box<dyn ModuleT>,
    },
    TorchScript(tch::CModule),
    /// A TorchScript module whose parameters sit in a VarStore (tch's
    /// `TrainableCModule`): a copy of a user's base classifier being
    /// fine-tuned into its surrogate. Training and evaluation mode are the
    /// module's own state (a traced module keeps the mode it was traced in).
    TrainableScript {
        vs: nn::VarStore,
        module: tch::TrainableCModule,
    },
}

pub struct Classifier {
    network: Network,
    /// [1, C, 1, 1] on the device; `None` when the network normalizes itself.
    norm: Option<(Tensor, Tensor)>,
    device: Device,
    shape: [usize; 3],
    num_classes: usize,
    /// A surrogate's tail correction, applied to its probabilities.
    tail_map: Option<super::TailMap>,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.network {
            Network::BuiltIn { arch, .. } => arch.name(),
            Network::TorchScript(_) | Network::TrainableScript { .. } => "torchscript",
        };
        f.debug_struct("Classifier")
            .field("network", &kind)
            .field("device", &self.device)
            .field("shape", &self.shape)
            .field("num_classes", &self.num_classes)
            .finish()
    }
}

impl Classifier {
    /// A freshly initialised built-in network (for training).
    pub fn new_builtin(
        arch: Arch,
        shape: [usize; 3],
        num_classes: usize,
        normalization: Option<&Normalization>,
        device: Device,
    ) -> Result<Self, ModelError> {
        let vs = nn::VarStore::new(device);
        let net = arch.build(&vs.root(), shape, num_classes)?;
        let network = Network::BuiltIn { arch, vs, net };
        Ok(Self::of(network, shape, num_classes, normalization, device))
    }

    fn of(
        network: Network,
        shape: [usize; 3],
        num_classes: usize,
        normalization: Option<&Normalization>,
        device: Device,
    ) -> Self {
        Classifier {
            network,
            norm: normalization.map(|n| norm_tensors(n, device)),
            device,
            shape,
            num_classes,
            tail_map: None,
        }
    }

    /// A trainable copy of a TorchScript file: its parameters go into a fresh
    /// VarStore, so the training code's optimizer sees them as it sees a
    /// built-in network's. The file is read, never written.
    pub fn load_trainable_script(
        path: &Path,
        shape: [usize; 3],
        num_classes: usize,
        normalization: Option<&Normalization>,
        device: Device,
    ) -> Result<Self, ModelError> {
        let vs = nn::VarStore::new(device);
        let mut module = tch::TrainableCModule::load(path, vs.root())
            .map_err(|e| ModelError::Bundle(format!("{}: {e}", path.display())))?;
        module.f_set_eval()?;
        let network = Network::TrainableScript { vs, module };
        let model = Self::of(network, shape, num_classes, normalization, device);
        model.check_output()?;
        Ok(model)
    }

    /// Whether the network is a TorchScript module being trained (saved with
    /// [`Classifier::save_script`]).
    pub fn is_script(&self) -> bool {
        matches!(self.network, Network::TrainableScript { .. })
    }

    /// Switches a TorchScript network between training and evaluation mode
    /// (batch norm, dropout); built-in networks take the mode per call in
    /// [`Classifier::forward_t`] and ignore this.
    pub fn set_training(&mut self, train: bool) -> Result<(), ModelError> {
        match (&mut self.network, train) {
            (Network::BuiltIn { .. }, _) => {}
            (Network::TorchScript(m), true) => m.f_set_train()?,
            (Network::TorchScript(m), false) => m.f_set_eval()?,
            (Network::TrainableScript { module, .. }, true) => module.f_set_train()?,
            (Network::TrainableScript { module, .. }, false) => module.f_set_eval()?,
        }
        Ok(())
    }

    /// Saves a trainable TorchScript network as a TorchScript file in
    /// evaluation mode (what a later load, ours or PyTorch's, expects), via a
    /// temporary file and a rename. Leaves the network in evaluation mode.
    pub fn save_script(&mut self, path: &Path) -> Result<(), ModelError> {
        let Network::TrainableScript { module, .. } = &mut self.network else {
            return Err(ModelError::Bundle(
                "only a TorchScript network saves as TorchScript".into(),
            ));
        };
        module.f_set_eval()?;
        let tmp = path.with_extension("pt.tmp");
        module
            .save(&tmp)
            .map_err(|e| ModelError::Bundle(format!("{}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| ModelError::Bundle(format!("{}: {e}", path.display())))
    }

    /// Loads the base classifier of a bundle onto `device`.
    pub fn load(bundle: &Bundle, device: Device) -> Result<Self, ModelError> {
        Self::load_spec(bundle, &bundle.base, device)
    }

    /// Loads the bundle's surrogate (same input, same normalization; its softmax
    /// estimates the normalized Monte Carlo counts).
    pub fn load_surrogate(bundle: &Bundle, device: Device) -> Result<Self, ModelError> {
        let spec = bundle.surrogate.as_ref().ok_or_else(|| {
            ModelError::Bundle(format!(
                "{}: model.toml has no [surrogate] (train one with train-surrogate)",
                bundle.dir.display()
            ))
        })?;
        let fingerprint = bundle
            .surrogate_fingerprint()
            .map_err(|e| {
                ModelError::Bundle(format!(
                    "{}: {}: {e}",
                    bundle.dir.display(),
                    spec.model.file
                ))
            })?
            .unwrap_or_default();
        spec.check_measured(&fingerprint)
            .map_err(|e| ModelError::Bundle(format!("{}: {e}", bundle.dir.display())))?;
        let mut model = Self::load_spec(bundle, &spec.model, device)?;
        model.tail_map = spec.tail_map.clone();
        Ok(model)
    }

    /// The surrogate's tail correction, if its bundle has one.
    pub fn tail_map(&self) -> Option<&super::TailMap> {
        self.tail_map.as_ref()
    }

    fn load_spec(bundle: &Bundle, spec: &BaseSpec, device: Device) -> Result<Self, ModelError> {
        let path = bundle.dir.join(&spec.file);
        let norm = bundle.normalization.as_ref();
        match spec.format {
            WeightsFormat::Safetensors => {
                let arch_name = spec.arch.as_deref().unwrap_or_default();
                let arch = Arch::parse(arch_name)?;
                // The throw-away initial weights draw from libtorch's global
                // generator: never between another thread's seeding and its
                // draw (a served request's seeded noise).
                let mut model = {
                    let _rng = super::rng_lock();
                    Self::new_builtin(arch, bundle.input_shape, bundle.num_classes(), norm, device)?
                };
                model.load_weights(&path)?;
                Ok(model)
            }
            WeightsFormat::Torchscript => {
                let mut module = tch::CModule::load_on_device(&path, device)
                    .map_err(|e| ModelError::Bundle(format!("{}: {e}", path.display())))?;
                module.set_eval();
                let network = Network::TorchScript(module);
                let model = Self::of(
                    network,
                    bundle.input_shape,
                    bundle.num_classes(),
                    norm,
                    device,
                );
                model.check_output()?;
                Ok(model)
            }
        }
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn input_shape(&self) -> [usize; 3] {
        self.shape
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The trainable variables of a built-in network.
    pub fn var_store(&self) -> Option<&nn::VarStore> {
        match &self.network {
            Network::BuiltIn { vs, .. } | Network::TrainableScript { vs, .. } => Some(vs),
            Network::TorchScript(_) => None,
        }
    }

    pub fn save_weights(&self, path: &Path) -> Result<(), ModelError> {
        let Network::BuiltIn { vs, .. } = &self.network else {
            return Err(ModelError::Bundle(
                "only built-in networks save safetensors weights".into(),
            ));
        };
        vs.save(path)
            .map_err(|e| ModelError::Bundle(format!("{}: {e}", path.display())))
    }

    /// Loads safetensors weights into a built-in network. Every variable must be
    /// there as f32 with its exact shape, and nothing else: a file for another
    /// architecture or precision is refused here rather than failing mid-forward.
    pub fn load_weights(&mut self, path: &Path) -> Result<(), ModelError> {
        let Network::BuiltIn { vs, .. } = &mut self.network else {
            return Err(ModelError::Bundle(
                "TorchScript weights live inside the module".into(),
            ));
        };
        let bad = |what: String| ModelError::Bundle(format!("{}: {what}", path.display()));
        let mut stored: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|e| bad(e.to_string()))?
            .into_iter()
            .collect();
        let _guard = tch::no_grad_guard();
        for (name, mut var) in vs.variables() {
            let src = stored
                .remove(&name)
                .ok_or_else(|| bad(format!("no tensor {name:?}")))?;
            if src.kind() != Kind::Float || src.size() != var.size() {
                return Err(bad(format!(
                    "{name}: {:?} {:?}, expected Float {:?}",
                    src.kind(),
                    src.size(),
                    var.size()
                )));
            }
            var.f_copy_(&src)?;
        }
        if let Some(extra) = stored.keys().next() {
            return Err(bad(format!(
                "unexpected tensor {extra:?} (another architecture?)"
            )));
        }
        Ok(())
    }

    /// Logits for pixel-space inputs [B, C, H, W] already on the device.
    /// `train` switches batch-norm statistics (built-in networks only).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        let x = match &self.norm {
            Some((mean, std)) => x.f_sub(mean)?.f_div(std)?,
            None => x.shallow_clone(),
        };
        match &self.network {
            Network::BuiltIn { net, .. } => Ok(net.forward_t(&x, train)),
            Network::TorchScript(m) => Ok(m.forward_ts(&[x])?),
            Network::TrainableScript { module, .. } => Ok(module.forward_ts(&[x])?),
        }
    }

    /// Evaluation-mode logits, without gradients.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let _guard = tch::no_grad_guard();
        self.forward_t(x, false)
    }

    /// Evaluation-mode logits of `x` [R, C, H, W] from forward passes of
    /// exactly `rows` rows each (zero rows pad the last).
    ///
    /// Kernels choose their algorithm by batch size (libtorch's CPU GEMM
    /// below about 16 rows, cuDNN by shape), so a row's logits can differ in
    /// the last bits, and a near-tied argmax flip, with the number of rows
    /// beside it. At one fixed shape a row's logits do not depend on the
    /// other rows, which is what makes a seeded answer independent of the
    /// requests it was batched with.
    pub fn forward_rows(&self, x: &Tensor, rows: i64) -> Result<Tensor, ModelError> {
        let _guard = tch::no_grad_guard();
        let rows = rows.max(1);
        let size = x.size();
        let r = size.first().copied().unwrap_or(0);
        if r == rows || size.is_empty() {
            return self.forward_t(x, false);
        }
        if r > rows {
            let parts = (0..r)
                .step_by(rows as usize)
                .map(|at| self.forward_rows(&x.f_narrow(0, at, rows.min(r - at))?, rows))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Tensor::f_cat(&parts, 0)?);
        }
        let mut pad = size.clone();
        pad[0] = rows - r;
        let padded = Tensor::f_cat(
            &[
                x.shallow_clone(),
                Tensor::f_zeros(&pad, (x.kind(), x.device()))?,
            ],
            0,
        )?;
        Ok(self.forward_t(&padded, false)?.f_narrow(0, 0, r)?)
    }

    /// Class counts of the base classifier over `num` noisy copies of each
    /// input (x plus the noise), drawn and counted on the device.
    ///
    /// The B * num (input, sample) pairs are processed in forward batches of
    /// `batch` that may span inputs, so a small `num` over many inputs fills
    /// batches as well as a large `num` for one input. Returns [B, classes]
    /// int64 counts on the CPU.
    pub fn sample_counts(
        &self,
        inputs: &Tensor,
        num: i64,
        noise: crate::smoothing::Noise,
        batch: i64,
    ) -> Result<Tensor, ModelError> {
        Ok(self.sample_tally(inputs, num, noise, batch, false)?.0)
    }

    /// [`Classifier::sample_counts`], and with `margins` each input's sum and
    /// sum of squares of every class's logit margin over its samples
    /// ([B, classes] f64 on the CPU): the same noise and the same counts.
    pub fn sample_tally(
        &self,
        inputs: &Tensor,
        num: i64,
        noise: crate::smoothing::Noise,
        batch: i64,
        margins: bool,
    ) -> Result<(Tensor, Option<(Tensor, Tensor)>), ModelError> {
        // Fallible (f_) calls throughout: a batch too large for the device's
        // memory is an error for the caller, not a panic.
        let _guard = tch::no_grad_guard();
        let b = inputs.size().first().copied().unwrap_or(0);
        let k = self.num_classes as i64;
        let total = b
            .checked_mul(num)
            .ok_or_else(|| ModelError::Torch(format!("{b} inputs x {num} samples overflows")))?;
        let mut tally = Tally::zeros(b, k, margins, self.device)?;
        let batch = batch.max(1);
        let inputs = inputs.f_to_device(self.device)?.f_to_kind(Kind::Float)?;
        let [c, h, w] = self.shape.map(|d| d as i64);
        let mut start = 0;
        while start < total {
            let end = (start + batch).min(total);
            let owner = Tensor::f_arange_start(start, end, (Kind::Int64, self.device))?
                .f_floor_divide_scalar(num)?;
            let mut noisy = super::noise::draw(noise, &[end - start, c, h, w], self.device)?;
            let _ = noisy.f_add_(&inputs.f_index_select(0, &owner)?)?;
            let logits = self.add_class_counts(&noisy, batch, &owner, &mut tally.counts, b)?;
            tally.add_margins(&logits, &owner)?;
            start = end;
        }
        Ok((
            tally.counts.f_view([b, k])?.f_to_device(Device::Cpu)?,
            tally.margins,
        ))
    }

    /// Class counts per noise stream: stream s draws `num` noisy copies of input
    /// `inputs[s.input]` from its own `seed`, in blocks of [`NOISE_BLOCK`] whose
    /// noise depends only on (seed, block index). A stream's counts are thus the
    /// same whichever streams share its forward batches, and, since every
    /// forward pass has exactly `batch` rows ([`Classifier::forward_rows`]),
    /// its tally is the same to the bit: what lets a server batch requests
    /// and still answer a seeded request reproducibly. Another `batch` can
    /// change a near-tied sample's class.
    ///
    /// `keep(s)` is asked before each block of stream s; `false` abandons the
    /// stream (a cancelled request), whose result is then `None`.
    pub fn count_streams(
        &self,
        inputs: &Tensor,
        streams: &[NoiseStream],
        noise: crate::smoothing::Noise,
        batch: i64,
        keep: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Vec<Option<Vec<u64>>>, ModelError> {
        Ok(self
            .tally_streams(inputs, streams, noise, batch, keep, false)?
            .into_iter()
            .map(|t| t.map(|t| t.counts))
            .collect())
    }

    /// [`Classifier::count_streams`], and besides the counts each stream's
    /// sum and sum of squares of every class's logit margin (its logit minus
    /// the largest other logit) over its samples: what a Gaussian model of
    /// the margin needs ([`crate::smoothing::SelectionMargin`]). Same noise,
    /// same counts; selection asks for it, the N estimation samples do not.
    pub fn tally_streams(
        &self,
        inputs: &Tensor,
        streams: &[NoiseStream],
        noise: crate::smoothing::Noise,
        batch: i64,
        keep: &mut dyn FnMut(usize) -> bool,
        margins: bool,
    ) -> Result<Vec<Option<StreamTally>>, ModelError> {
        let _guard = tch::no_grad_guard();
        let k = self.num_classes as i64;
        let s_len = streams.len() as i64;
        let inputs = inputs.f_to_device(self.device)?.f_to_kind(Kind::Float)?;
        let b = inputs.size().first().copied().unwrap_or(0);
        if let Some(bad) = streams.iter().find(|s| s.input as i64 >= b) {
            return Err(ModelError::Torch(format!(
                "noise stream for input {} of a batch of {b}",
                bad.input
            )));
        }
        let mut run = StreamTallier {
            classifier: self,
            inputs,
            noise,
            batch: batch.max(1),
            streams: s_len,
            tally: Tally::zeros(s_len, k, margins, self.device)?,
            pending: Pending::default(),
        };
        let mut alive = vec![true; streams.len()];
        for (s, stream) in streams.iter().enumerate() {
            check_slice(stream)?;
            alive[s] = run.draw_stream(s, stream, keep)?;
        }
        run.count_rest()?;
        run.tally.per_stream(&alive, k.max(1) as usize)
    }

    /// Classifies the first `rows` pending noisy inputs, in one forward pass
    /// of `batch` rows, and adds their classes to `counts` [streams * classes].
    fn count_pending(
        &self,
        pending: &mut Pending,
        rows: i64,
        batch: i64,
        tally: &mut Tally,
        streams: i64,
    ) -> Result<(), ModelError> {
        let (noisy, owner) = pending.take(rows)?;
        let logits = self.add_class_counts(&noisy, batch, &owner, &mut tally.counts, streams)?;
        tally.add_margins(&logits, &owner)
    }

    /// Classifies `noisy` [R, C, H, W] (R <= `batch`) in a forward pass of
    /// exactly `batch` rows and adds each row's class to `counts`
    /// [owners * classes] at its owner's slot (`owner` [R]: an input or a
    /// stream). Returns the R rows' logits.
    fn add_class_counts(
        &self,
        noisy: &Tensor,
        batch: i64,
        owner: &Tensor,
        counts: &mut Tensor,
        owners: i64,
    ) -> Result<Tensor, ModelError> {
        let k = self.num_classes as i64;
        let logits = self.forward_rows(noisy, batch)?;
        let size = logits.size();
        if size.len() != 2 || size[1] != k {
            return Err(ModelError::BadOutput {
                got: size,
                classes: self.num_classes,
            });
        }
        let flat = owner.f_mul_scalar(k)?.f_add(&logits.f_argmax(1, false)?)?;
        let _ = counts.f_add_(&flat.f_bincount(None::<Tensor>, owners * k)?)?;
        Ok(logits)
    }

    /// A TorchScript model must map [B, C, H, W] to [B, classes]; fail at load, not per request.
    fn check_output(&self) -> Result<(), ModelError> {
        let [c, h, w] = self.shape.map(|d| d as i64);
        let probe = Tensor::zeros([2, c, h, w], (Kind::Float, self.device));
        let size = self.logits(&probe)?.size();
        if size != [2, self.num_classes as i64] {
            return Err(ModelError::BadOutput {
                got: size,
                classes: self.num_classes,
            });
        }
        Ok(())
    }
}

/// Noise is drawn in blocks of this many samples, each from its own seed.
pub const NOISE_BLOCK: i64 = 1024;

/// Noisy samples of one input under one seed (see [`Classifier::count_streams`]):
/// samples `start .. start + num` of a stream of `len` samples. Block b of
/// the stream is always drawn whole, min(NOISE_BLOCK, len - b * NOISE_BLOCK)
/// samples from its own seed, so any slicing of a stream at any offsets
/// sees the same samples as drawing it in one go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoiseStream {
    /// Row of the inputs tensor.
    pub input: usize,
    pub num: u64,
    pub seed: u64,
    /// The first sample of the slice.
    pub start: u64,
    /// The whole stream's length (>= start + num).
    pub len: u64,
}

impl NoiseStream {
    /// A whole stream of `num` samples.
    pub fn whole(input: usize, num: u64, seed: u64) -> NoiseStream {
        NoiseStream {
            input,
            num,
            seed,
            start: 0,
            len: num,
        }
    }
}

/// splitmix64's golden-ratio increment.
pub const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's output mix: nearby inputs give unrelated outputs.
pub fn splitmix64_mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of block `block` of a stream: splitmix64 of the pair, so nearby
/// seeds and blocks give unrelated generators.
pub(crate) fn block_seed(seed: u64, block: u64) -> i64 {
    splitmix64_mix(seed ^ block.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA)) as i64
}

/// A stream's slice must lie within the stream.
fn check_slice(stream: &NoiseStream) -> Result<(), ModelError> {
    if stream
        .start
        .checked_add(stream.num)
        .is_none_or(|end| end > stream.len)
    {
        return Err(ModelError::Torch(format!(
            "noise slice {}..+{} of a stream of {}",
            stream.start, stream.num, stream.len
        )));
    }
    Ok(())
}

/// One [`Classifier::tally_streams`] call under way: streams are drawn in
/// turn into `pending`, which is classified a forward batch at a time.
struct StreamTallier<'a> {
    classifier: &'a Classifier,
    /// On the device, as floats.
    inputs: Tensor,
    noise: crate::smoothing::Noise,
    /// Forward batch rows (at least 1).
    batch: i64,
    /// How many streams the tally holds.
    streams: i64,
    tally: Tally,
    pending: Pending,
}

impl StreamTallier<'_> {
    /// Draws stream `s` block by block, classifying each full forward batch;
    /// `false` when `keep` abandoned it.
    fn draw_stream(
        &mut self,
        s: usize,
        stream: &NoiseStream,
        keep: &mut dyn FnMut(usize) -> bool,
    ) -> Result<bool, ModelError> {
        let device = self.classifier.device;
        let mut drawn = 0u64;
        while drawn < stream.num {
            if !keep(s) {
                return Ok(false);
            }
            let (noisy, len) = self.draw_block(stream, stream.start + drawn, stream.num - drawn)?;
            self.pending.push(
                noisy,
                Tensor::f_full([len], s as i64, (Kind::Int64, device))?,
            );
            while self.pending.rows >= self.batch {
                self.classifier.count_pending(
                    &mut self.pending,
                    self.batch,
                    self.batch,
                    &mut self.tally,
                    self.streams,
                )?;
            }
            drawn += len as u64;
        }
        Ok(true)
    }

    /// Noisy copies of the stream's input: samples from `at` on, at most
    /// `left` and not past `at`'s block. The block is drawn whole from its
    /// own seed and then narrowed, so any slicing sees the same samples.
    fn draw_block(
        &self,
        stream: &NoiseStream,
        at: u64,
        left: u64,
    ) -> Result<(Tensor, i64), ModelError> {
        let block_len = NOISE_BLOCK as u64;
        let block = at / block_len;
        let offset = at % block_len;
        let whole = (stream.len - block * block_len).min(block_len);
        let len = (whole - offset).min(left) as i64;
        let [c, h, w] = self.classifier.shape.map(|d| d as i64);
        let mut noisy = {
            let _rng = super::rng_lock();
            tch::manual_seed(block_seed(stream.seed, block));
            super::noise::draw(self.noise, &[whole as i64, c, h, w], self.classifier.device)?
        };
        if offset > 0 || len < whole as i64 {
            noisy = noisy.f_narrow(0, offset as i64, len)?;
        }
        let _ = noisy.f_add_(&self.inputs.f_narrow(0, stream.input as i64, 1)?)?;
        Ok((noisy, len))
    }

    /// Classifies whatever is still pending, as one last batch padded to
    /// the full forward batch.
    fn count_rest(&mut self) -> Result<(), ModelError> {
        while self.pending.rows > 0 {
            let rows = self.pending.rows;
            self.classifier.count_pending(
                &mut self.pending,
                rows,
                self.batch,
                &mut self.tally,
                self.streams,
            )?;
        }
        Ok(())
    }
}

/// Noisy inputs drawn but not yet classified, with the stream each row belongs to.
#[derive(Default)]
struct Pending {
    noisy: Vec<Tensor>,
    owner: Vec<Tensor>,
    rows: i64,
}

impl Pending {
    fn push(&mut self, noisy: Tensor, owner: Tensor) {
        self.rows += noisy.size()[0];
        self.noisy.push(noisy);
        self.owner.push(owner);
    }

    /// The first `rows` rows; the rest stay pending.
    fn take(&mut self, rows: i64) -> Result<(Tensor, Tensor), ModelError> {
        let noisy = Tensor::f_cat(&self.noisy, 0)?;
        let owner = Tensor::f_cat(&self.owner, 0)?;
        let rest = self.rows - rows;
        self.noisy.clear();
        self.owner.clear();
        self.rows = 0;
        if rest > 0 {
            self.push(
                noisy.f_narrow(0, rows, rest)?,
                owner.f_narrow(0, rows, rest)?,
            );
        }
        Ok((noisy.f_narrow(0, 0, rows)?, owner.f_narrow(0, 0, rows)?))
    }
}

fn norm_tensors(n: &Normalization, device: Device) -> (Tensor, Tensor) {
    let to = |v: &[f64]| {
        Tensor::from_slice(v)
            .to_kind(Kind::Float)
            .view([1, -1, 1, 1])
            .to_device(device)
    };
    (to(&n.mean), to(&n.std))
}

#[cfg(test)]
mod tests;
