//! `sample-counts` and `merge-counts`: the Monte Carlo class-count vectors the
//! surrogate learns from. The costly one-time step, so it is sharded
//! (`--shard i/k` takes every k-th input from the i-th), resumable (inputs are
//! sampled in chunks, each written atomically and never redone), and
//! reproducible (each input draws its noise from its own seed, so with the same
//! forward batch and device, sharding and interruptions change no count).
//! A finished output is never resampled.
use super::{io_err, load_inputs, progress_bar, write_json, Inputs, PipelineError};
use crate::data::{DatasetSource, Split};
use crate::model::{Bundle, Classifier};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Device;

mod merge;
pub use merge::{merge_counts, merge_counts_in_memory, merge_runs};

const META_KEY: &str = "smoothcert";
const FORMAT: u32 = 1;

/// A shard `index/count`: the inputs at positions p with p % count == index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (i, k) = s
            .split_once('/')
            .ok_or_else(|| format!("shard {s:?}: expected i/k, e.g. 0/4"))?;
        let parse = |v: &str| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| format!("shard {s:?}: {v:?} is not a number"))
        };
        let (index, count) = (parse(i)?, parse(k)?);
        if count == 0 || index >= count {
            return Err(format!("shard {s:?}: need 0 <= i < k"));
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// What a counts file holds counts of; stored as JSON in the safetensors metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountsMeta {
    pub format: u32,
    pub bundle: String,
    pub base_weights_fnv1a: String,
    pub dataset: DatasetSource,
    /// [`crate::data::Dataset::fingerprint`] of the split, for a user's
    /// images (folders and manifests can change; built-in datasets cannot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_fnv1a: Option<String>,
    pub split: Split,
    pub n: u64,
    #[serde(flatten)]
    pub noise: super::NoiseRecord,
    pub seed: u64,
    pub num_classes: usize,
    pub skip: usize,
    pub max: Option<usize>,
    /// `None` for a whole (or merged) set.
    pub shard: Option<Shard>,
    /// Whether each input's logit-margin sums were recorded beside its counts
    /// (`sample-counts --margins`); files from before record none.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub margins: bool,
}

impl CountsMeta {
    /// Everything but the shard index must agree for two files to be merged.
    fn same_run(&self, other: &CountsMeta) -> bool {
        let shard_count = |m: &CountsMeta| m.shard.map(|s| s.count);
        shard_count(self) == shard_count(other)
            && CountsMeta {
                shard: None,
                ..self.clone()
            } == CountsMeta {
                shard: None,
                ..other.clone()
            }
    }
}

/// What differs between two runs' metadata, e.g. `seed: 0 there, 1 here`.
fn meta_difference(there: &CountsMeta, here: &CountsMeta) -> String {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(there), serde_json::to_value(here))
    else {
        return String::new();
    };
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let show = |v: Option<&serde_json::Value>| v.map_or("none".to_string(), |v| v.to_string());
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: {} there, {} here", show(a.get(k)), show(b.get(k))))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Counts of `num_classes` classes over `meta.n` noisy copies of each input.
#[derive(Debug, Clone, PartialEq)]
pub struct Counts {
    pub meta: CountsMeta,
    /// Dataset indices, ascending.
    pub indices: Vec<i64>,
    /// Row-major [indices.len(), num_classes].
    pub counts: Vec<i32>,
    /// With `meta.margins`: per input and class, the sum and the sum of
    /// squares of the class's logit margin over the n samples.
    pub margins: Option<MarginSums>,
}

/// Row-major [inputs, num_classes] margin sums of a counts file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MarginSums {
    pub sum: Vec<f64>,
    pub sum_sq: Vec<f64>,
}

impl MarginSums {
    fn extend(&mut self, other: &MarginSums) {
        self.sum.extend_from_slice(&other.sum);
        self.sum_sq.extend_from_slice(&other.sum_sq);
    }
}

impl Counts {
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    pub fn row(&self, i: usize) -> &[i32] {
        let k = self.meta.num_classes;
        &self.counts[i * k..(i + 1) * k]
    }

    /// Input i's margin sum and sum of squares for `class`, where recorded.
    pub fn margin(&self, i: usize, class: usize) -> Option<(f64, f64)> {
        let at = i * self.meta.num_classes + class;
        let m = self.margins.as_ref()?;
        Some((*m.sum.get(at)?, *m.sum_sq.get(at)?))
    }

    /// Refuses counts that another base classifier than `bundle`'s (whose
    /// weights fingerprint is `fingerprint`) was sampled from.
    pub fn check_base(&self, bundle: &Bundle, fingerprint: &str) -> Result<(), PipelineError> {
        if self.meta.base_weights_fnv1a != fingerprint
            || self.meta.num_classes != bundle.num_classes()
        {
            return Err(PipelineError::Invalid(format!(
                "the counts were sampled from another base classifier ({} / {} classes) than {}",
                self.meta.bundle,
                self.meta.num_classes,
                bundle.dir.display()
            )));
        }
        Ok(())
    }

    /// The counted inputs' dataset split at `bundle`'s input shape, from
    /// `data_dir` or where the counts file says it is.
    pub fn dataset(
        &self,
        bundle: &Bundle,
        data_dir: Option<&Path>,
    ) -> Result<crate::data::Dataset, PipelineError> {
        let ds = self.meta.dataset.load(
            self.meta.split,
            bundle.input_shape,
            &bundle.labels,
            data_dir,
        )?;
        if let Some(expected) = &self.meta.dataset_fnv1a {
            if &ds.fingerprint() != expected {
                return Err(PipelineError::Invalid(format!(
                    "the {} split of {} is not the set of images these counts were sampled from                      (images added, removed or changed since); sample them again",
                    self.meta.split, self.meta.dataset
                )));
            }
        }
        Ok(ds)
    }

    /// The counted inputs' images [M, C, H, W] from their dataset split.
    pub fn images(&self, ds: &crate::data::Dataset) -> Result<tch::Tensor, PipelineError> {
        let indices = self
            .indices
            .iter()
            .map(|&idx| {
                usize::try_from(idx)
                    .ok()
                    .filter(|&i| i < ds.len())
                    .ok_or_else(|| {
                        PipelineError::Invalid(format!("counted input {idx} is not in the dataset"))
                    })
            })
            .collect::<Result<Vec<usize>, _>>()?;
        Ok(super::images_tensor(ds, &indices, Device::Cpu))
    }

    pub fn write(&self, path: &Path) -> Result<(), PipelineError> {
        let k = self.meta.num_classes;
        let count_bytes: Vec<u8> = self.counts.iter().flat_map(|c| c.to_le_bytes()).collect();
        let index_bytes: Vec<u8> = self.indices.iter().flat_map(|i| i.to_le_bytes()).collect();
        let f64_bytes = |v: &[f64]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let (sum_bytes, sum_sq_bytes) = match &self.margins {
            Some(m) => (f64_bytes(&m.sum), f64_bytes(&m.sum_sq)),
            None => (Vec::new(), Vec::new()),
        };
        let bad = |e: safetensors::SafeTensorError| {
            PipelineError::Invalid(format!("{}: {e}", path.display()))
        };
        let mut views = vec![
            (
                "counts",
                TensorView::new(Dtype::I32, vec![self.len(), k], &count_bytes).map_err(bad)?,
            ),
            (
                "indices",
                TensorView::new(Dtype::I64, vec![self.len()], &index_bytes).map_err(bad)?,
            ),
        ];
        if self.margins.is_some() {
            views.push((
                "margin_sum",
                TensorView::new(Dtype::F64, vec![self.len(), k], &sum_bytes).map_err(bad)?,
            ));
            views.push((
                "margin_sum_sq",
                TensorView::new(Dtype::F64, vec![self.len(), k], &sum_sq_bytes).map_err(bad)?,
            ));
        }
        let meta =
            serde_json::to_string(&self.meta).map_err(|e| PipelineError::Invalid(e.to_string()))?;
        let bytes =
            safetensors::serialize(views, Some(HashMap::from([(META_KEY.to_string(), meta)])))
                .map_err(bad)?;
        crate::fsutil::write_atomic(path, &bytes).map_err(io_err(path))
    }

    pub fn read(path: &Path) -> Result<Counts, PipelineError> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let bad = |what: String| PipelineError::Invalid(format!("{}: {what}", path.display()));
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let meta_json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or_else(|| bad("not a smoothcert counts file (no metadata)".into()))?;
        let meta: CountsMeta = serde_json::from_str(meta_json).map_err(|e| bad(e.to_string()))?;
        if meta.format != FORMAT {
            return Err(bad(format!(
                "format {} (this build reads {FORMAT})",
                meta.format
            )));
        }
        let counts = st.tensor("counts").map_err(|e| bad(e.to_string()))?;
        let indices = st.tensor("indices").map_err(|e| bad(e.to_string()))?;
        let m = indices.shape().first().copied().unwrap_or(0);
        if counts.dtype() != Dtype::I32
            || indices.dtype() != Dtype::I64
            || counts.shape() != [m, meta.num_classes]
        {
            return Err(bad(format!(
                "tensors counts {:?} {:?} / indices {:?} {:?} do not match {} classes",
                counts.dtype(),
                counts.shape(),
                indices.dtype(),
                indices.shape(),
                meta.num_classes
            )));
        }
        let counts: Vec<i32> = counts
            .data()
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let indices: Vec<i64> = indices
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap_or_default()))
            .collect();
        let margins = if meta.margins {
            let f64s = |name: &str| -> Result<Vec<f64>, PipelineError> {
                let t = st.tensor(name).map_err(|e| bad(e.to_string()))?;
                if t.dtype() != Dtype::F64 || t.shape() != [m, meta.num_classes] {
                    return Err(bad(format!(
                        "tensor {name} {:?} {:?} does not match the counts",
                        t.dtype(),
                        t.shape()
                    )));
                }
                Ok(t.data()
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap_or_default()))
                    .collect())
            };
            Some(MarginSums {
                sum: f64s("margin_sum")?,
                sum_sq: f64s("margin_sum_sq")?,
            })
        } else {
            None
        };
        let out = Counts {
            meta,
            indices,
            counts,
            margins,
        };
        out.check().map_err(bad)?;
        Ok(out)
    }

    /// Rows sum to n and indices ascend: what every consumer relies on.
    fn check(&self) -> Result<(), String> {
        if self.indices.windows(2).any(|w| w[0] >= w[1]) {
            return Err("indices are not strictly ascending".into());
        }
        let cells = self.len() * self.meta.num_classes;
        match &self.margins {
            Some(m) if !self.meta.margins || m.sum.len() != cells || m.sum_sq.len() != cells => {
                return Err("margin sums do not match the counts".into())
            }
            None if self.meta.margins => return Err("the margin sums are missing".into()),
            _ => {}
        }
        for i in 0..self.len() {
            let sum: i64 = self.row(i).iter().map(|&c| i64::from(c)).sum();
            if sum != self.meta.n as i64 || self.row(i).iter().any(|&c| c < 0) {
                return Err(format!(
                    "row of input {} sums to {sum}, not n = {}",
                    self.indices[i], self.meta.n
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct SampleCountsOptions {
    pub bundle: PathBuf,
    pub split: Split,
    pub data_dir: Option<PathBuf>,
    pub n: u64,
    pub skip: usize,
    pub max: Option<usize>,
    pub shard: Option<Shard>,
    /// Inputs per chunk file: the unit of resumption.
    pub chunk: usize,
    /// Forward batch (with the device, it decides which noise an input
    /// draws). `None`: a resumed run's own, else the device's.
    pub batch: Option<i64>,
    pub seed: u64,
    /// Record each input's logit-margin sums beside its counts.
    pub margins: bool,
    pub device: Device,
    pub out: PathBuf,
    /// Sample at most this many chunks now, then stop (a later run continues).
    pub pause_after: Option<usize>,
    pub show_progress: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SampleCountsSummary {
    pub out: PathBuf,
    pub inputs: usize,
    pub n: u64,
    pub shard: Option<Shard>,
    pub chunks: usize,
    pub chunks_resumed: usize,
    pub noisy_passes_this_run: u64,
    pub wall_seconds: f64,
    pub passes_per_second: f64,
}

#[derive(Debug, Clone)]
pub enum SampleOutcome {
    Finished(SampleCountsSummary),
    Paused { chunks_done: usize, chunks: usize },
}

fn parts_dir(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".parts");
    out.with_file_name(name)
}

fn chunk_path(parts: &Path, j: usize) -> PathBuf {
    parts.join(format!("chunk-{j:06}.safetensors"))
}

pub fn sample_counts(opts: &SampleCountsOptions) -> Result<SampleOutcome, PipelineError> {
    if opts.n == 0 || opts.n > i32::MAX as u64 {
        return Err(PipelineError::Invalid(format!(
            "--n must be in 1..={}",
            i32::MAX
        )));
    }
    if opts.skip == 0 || opts.chunk == 0 || opts.batch.is_some_and(|b| b < 1) {
        return Err(PipelineError::Invalid(
            "--skip, --chunk and --batch must be at least 1".into(),
        ));
    }
    let (bundle, ds, meta, indices) = planned_inputs(opts)?;
    // Done before: the file is the result, not a job to redo.
    if let Some(done) = finished_before(opts, &meta)? {
        return Ok(done);
    }
    let chunks: Vec<&[usize]> = indices.chunks(opts.chunk).collect();

    let parts = parts_dir(&opts.out);
    std::fs::create_dir_all(&parts).map_err(io_err(&parts))?;
    let batch = pin_parts(&parts, opts, &meta, bundle.input_shape)?;

    let todo: Vec<usize> = (0..chunks.len())
        .filter(|&j| !chunk_path(&parts, j).exists())
        .collect();
    let resumed = chunks.len() - todo.len();
    if resumed > 0 {
        tracing::info!(resumed, remaining = todo.len(), "resuming sample-counts");
    }
    let model = Classifier::load(&bundle, opts.device)?;
    let todo_inputs: usize = todo.iter().map(|&j| chunks[j].len()).sum();
    let bar = progress_bar(todo_inputs as u64, "sample-counts", opts.show_progress);
    let started = Instant::now();
    let mut passes = 0u64;
    let limit = opts.pause_after.unwrap_or(usize::MAX);
    for &j in todo.iter().take(limit) {
        let chunk = sample_chunk(&model, &ds, chunks[j], &meta, batch, &mut |done| {
            passes += opts.n * done;
            bar.inc(done);
            bar.set_message(format!(
                "{:.0} noisy passes/s",
                passes as f64 / started.elapsed().as_secs_f64()
            ));
        })?;
        chunk.write(&chunk_path(&parts, j))?;
    }
    bar.finish_and_clear();
    let chunks_done = (0..chunks.len())
        .filter(|&j| chunk_path(&parts, j).exists())
        .count();
    if chunks_done < chunks.len() {
        return Ok(SampleOutcome::Paused {
            chunks_done,
            chunks: chunks.len(),
        });
    }

    // Every chunk is there: join them into the output, then drop the parts.
    let all = join_chunks(&parts, chunks.len(), &meta)?;
    all.check().map_err(PipelineError::Invalid)?;
    all.write(&opts.out)?;
    std::fs::remove_dir_all(&parts).map_err(io_err(&parts))?;
    let wall = started.elapsed().as_secs_f64();
    let summary = SampleCountsSummary {
        out: opts.out.clone(),
        inputs: all.len(),
        n: opts.n,
        shard: opts.shard,
        chunks: chunks.len(),
        chunks_resumed: resumed,
        noisy_passes_this_run: passes,
        wall_seconds: wall,
        passes_per_second: passes as f64 / wall.max(1e-9),
    };
    write_json(&crate::fsutil::sidecar(&opts.out, "summary.json"), &summary)?;
    Ok(SampleOutcome::Finished(summary))
}

/// The bundle, the dataset, what the counts file will say of itself, and the
/// inputs this shard samples.
fn planned_inputs(
    opts: &SampleCountsOptions,
) -> Result<(Bundle, crate::data::Dataset, CountsMeta, Vec<usize>), PipelineError> {
    let Inputs {
        bundle,
        source: dataset,
        dataset: ds,
        indices: all_indices,
    } = load_inputs(
        &opts.bundle,
        opts.split,
        opts.data_dir.as_deref(),
        0,
        opts.skip,
        opts.max,
    )?;
    let meta = CountsMeta {
        format: FORMAT,
        bundle: bundle.name.clone(),
        base_weights_fnv1a: super::base_fingerprint(&bundle)?,
        dataset_fnv1a: (!dataset.is_builtin()).then(|| ds.fingerprint()),
        dataset,
        split: opts.split,
        n: opts.n,
        noise: bundle.noise().into(),
        seed: opts.seed,
        num_classes: bundle.num_classes(),
        skip: opts.skip,
        max: opts.max,
        shard: opts.shard,
        margins: opts.margins,
    };
    let indices: Vec<usize> = all_indices
        .into_iter()
        .enumerate()
        .filter(|(pos, _)| opts.shard.is_none_or(|s| pos % s.count == s.index))
        .map(|(_, idx)| idx)
        .collect();
    if indices.is_empty() {
        return Err(PipelineError::Invalid(
            "no inputs to sample (check --skip, --max and --shard)".into(),
        ));
    }
    Ok((bundle, ds, meta, indices))
}

/// The output of an earlier run with these parameters, finished: nothing to
/// do. Counts of another run there are refused.
fn finished_before(
    opts: &SampleCountsOptions,
    meta: &CountsMeta,
) -> Result<Option<SampleOutcome>, PipelineError> {
    if !opts.out.exists() {
        return Ok(None);
    }
    let existing = Counts::read(&opts.out)?;
    if &existing.meta != meta {
        return Err(PipelineError::Invalid(format!(
            "{} holds counts of another run ({}); remove it or choose another --out",
            opts.out.display(),
            meta_difference(&existing.meta, meta)
        )));
    }
    tracing::info!(out = %opts.out.display(), "already sampled; nothing to do");
    Ok(Some(SampleOutcome::Finished(SampleCountsSummary {
        out: opts.out.clone(),
        inputs: existing.len(),
        n: opts.n,
        shard: opts.shard,
        chunks: 0,
        chunks_resumed: 0,
        noisy_passes_this_run: 0,
        wall_seconds: 0.0,
        passes_per_second: 0.0,
    })))
}

/// Pins what every chunk file in `parts` means: the run's parameters, chunk
/// size, forward batch and device (the last two decide which noise an input
/// draws). Returns the forward batch: unset, the run's own when resuming (so
/// a resumed run draws the noise it started with), else the device's.
fn pin_parts(
    parts: &Path,
    opts: &SampleCountsOptions,
    meta: &CountsMeta,
    input_shape: [usize; 3],
) -> Result<i64, PipelineError> {
    let params_path = parts.join("params.json");
    let previous: Option<serde_json::Value> = if params_path.exists() {
        let text = std::fs::read_to_string(&params_path).map_err(io_err(&params_path))?;
        Some(
            serde_json::from_str(&text)
                .map_err(|e| PipelineError::Invalid(format!("{}: {e}", params_path.display())))?,
        )
    } else {
        None
    };
    let batch = opts
        .batch
        .or_else(|| previous.as_ref().and_then(|p| p["batch"].as_i64()))
        .unwrap_or_else(|| crate::model::forward_batch_for(opts.device, 0, input_shape));
    let params = serde_json::json!({
        "meta": meta,
        "chunk": opts.chunk,
        "batch": batch,
        "device": format!("{:?}", opts.device),
    });
    match previous {
        Some(previous) if previous != params => Err(PipelineError::Invalid(format!(
            "{} belongs to a run with other parameters ({previous}); \
             remove it or choose another --out",
            parts.display()
        ))),
        Some(_) => Ok(batch),
        None => {
            write_json(&params_path, &params)?;
            Ok(batch)
        }
    }
}

/// The counts of one chunk's inputs; `progress` hears of each input done.
fn sample_chunk(
    model: &Classifier,
    ds: &crate::data::Dataset,
    chunk: &[usize],
    meta: &CountsMeta,
    batch: i64,
    progress: &mut dyn FnMut(u64),
) -> Result<Counts, PipelineError> {
    let n_samples = i64::try_from(meta.n)
        .map_err(|_| PipelineError::Invalid(format!("--n {} is too large", meta.n)))?;
    let noise = meta
        .noise
        .noise()
        .ok_or_else(|| PipelineError::Invalid("the counts record no whole noise".into()))?;
    let mut rows = Vec::with_capacity(chunk.len() * meta.num_classes);
    let mut margins = meta.margins.then(MarginSums::default);
    for &idx in chunk {
        let x = super::images_tensor(ds, &[idx], Device::Cpu);
        // Training data, not a certificate: the input's n samples come from
        // the global generator seeded per input, as every committed shard's
        // did, so a resumed shard stays one run.
        let (counts, sums) = {
            let _rng = crate::model::rng_lock();
            tch::manual_seed(counts_seed(meta.seed, idx));
            model.sample_tally(&x, n_samples, noise, batch, meta.margins)?
        };
        let counts: Vec<i64> = Vec::try_from(counts.flatten(0, -1))?;
        rows.extend(counts.iter().map(|&v| v as i32));
        // The sums are f64 on the CPU already ([1, classes]).
        if let (Some(all), Some((sum, sum_sq))) = (margins.as_mut(), sums) {
            all.sum.extend(Vec::<f64>::try_from(sum.flatten(0, -1))?);
            all.sum_sq
                .extend(Vec::<f64>::try_from(sum_sq.flatten(0, -1))?);
        }
        progress(1);
    }
    Ok(Counts {
        meta: meta.clone(),
        indices: chunk.iter().map(|&i| i as i64).collect(),
        counts: rows,
        margins,
    })
}

/// The finished chunks joined, in order; a chunk of another run is refused.
fn join_chunks(parts: &Path, chunks: usize, meta: &CountsMeta) -> Result<Counts, PipelineError> {
    let mut all = Counts {
        meta: meta.clone(),
        indices: Vec::new(),
        counts: Vec::new(),
        margins: meta.margins.then(MarginSums::default),
    };
    for j in 0..chunks {
        let part = Counts::read(&chunk_path(parts, j))?;
        if &part.meta != meta {
            return Err(PipelineError::Invalid(format!(
                "{} was written by another run",
                chunk_path(parts, j).display()
            )));
        }
        all.indices.extend(part.indices);
        all.counts.extend(part.counts);
        if let (Some(all), Some(part)) = (all.margins.as_mut(), &part.margins) {
            all.extend(part);
        }
    }
    Ok(all)
}

/// The global generator's seed for input `idx` of a counts run: what every
/// committed shard was sampled with (one generator per input, so no
/// block structure to collide with), kept so that shards resume as one run.
fn counts_seed(seed: u64, idx: usize) -> i64 {
    (seed ^ (idx as u64).wrapping_mul(crate::model::GOLDEN_GAMMA)) as i64
}
