//! `merge-counts`: shards of one run joined into one file, and the runs
//! training reads grouped and joined, each input's margins kept beside its
//! counts.
use super::{Counts, CountsMeta, MarginSums};
use crate::pipeline::PipelineError;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Joins shards of one run into one file; refuses shards of different runs and
/// overlapping inputs. Missing shards are reported, not invented.
pub fn merge_counts(files: &[PathBuf], out: &Path) -> Result<Counts, PipelineError> {
    let merged = merge_counts_in_memory(files)?;
    merged.write(out)?;
    Ok(merged)
}

/// The files grouped by run (same bundle, split, N, seed, selection), each
/// group joined as [`merge_counts_in_memory`] joins it: how training reads
/// counts of several splits or selections at once. Runs keep their first
/// file's order.
pub fn merge_runs(files: &[PathBuf]) -> Result<Vec<Counts>, PipelineError> {
    let mut groups: Vec<(CountsMeta, Vec<PathBuf>)> = Vec::new();
    for file in files {
        let meta = Counts::read(file)?.meta;
        match groups.iter_mut().find(|(m, _)| m.same_run(&meta)) {
            Some((_, g)) => g.push(file.clone()),
            None => groups.push((meta, vec![file.clone()])),
        }
    }
    let runs: Vec<Counts> = groups
        .iter()
        .map(|(_, g)| merge_counts_in_memory(g))
        .collect::<Result<_, _>>()?;
    for (i, a) in runs.iter().enumerate() {
        for b in &runs[i + 1..] {
            if a.meta.split == b.meta.split && a.meta.dataset == b.meta.dataset {
                if let Some(idx) = a
                    .indices
                    .iter()
                    .find(|i| b.indices.binary_search(i).is_ok())
                {
                    return Err(PipelineError::Invalid(format!(
                        "input {idx} of the {} split is in two runs of counts",
                        a.meta.split
                    )));
                }
            }
        }
    }
    Ok(runs)
}

/// [`merge_counts`] without writing: the joined counts of `files`.
pub fn merge_counts_in_memory(files: &[PathBuf]) -> Result<Counts, PipelineError> {
    let first = files
        .first()
        .ok_or_else(|| PipelineError::Invalid("merge-counts needs at least one file".into()))?;
    let parts: Vec<Counts> = files
        .iter()
        .map(|f| Counts::read(f))
        .collect::<Result<_, _>>()?;
    let meta = parts[0].meta.clone();
    for (file, part) in files.iter().zip(&parts) {
        if !part.meta.same_run(&meta) {
            return Err(PipelineError::Invalid(format!(
                "{} is from another run than {} ({:?} vs {:?})",
                file.display(),
                first.display(),
                part.meta,
                meta
            )));
        }
    }
    // (index, part, row in part), sorted by index.
    let mut rows: Vec<(i64, usize, usize)> = Vec::new();
    for (p, part) in parts.iter().enumerate() {
        rows.extend((0..part.len()).map(|i| (part.indices[i], p, i)));
    }
    rows.sort_by_key(|r| r.0);
    if let Some(w) = rows.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(PipelineError::Invalid(format!(
            "input {} appears in more than one file: shards overlap",
            w[0].0
        )));
    }
    let shard_indices: BTreeSet<usize> = parts
        .iter()
        .filter_map(|p| p.meta.shard)
        .map(|s| s.index)
        .collect();
    if let Some(of) = meta.shard.map(|s| s.count) {
        if shard_indices.len() < of {
            tracing::warn!(
                have = shard_indices.len(),
                of,
                "merging an incomplete set of shards"
            );
        }
    }
    let margins = meta.margins.then(|| {
        let k = meta.num_classes;
        let cells = |pick: fn(&MarginSums) -> &Vec<f64>| -> Vec<f64> {
            rows.iter()
                .flat_map(|&(_, p, i)| {
                    parts[p]
                        .margins
                        .as_ref()
                        .map(|m| pick(m)[i * k..(i + 1) * k].to_vec())
                        .unwrap_or_default()
                })
                .collect()
        };
        MarginSums {
            sum: cells(|m| &m.sum),
            sum_sq: cells(|m| &m.sum_sq),
        }
    });
    let merged = Counts {
        meta: CountsMeta {
            shard: None,
            ..meta
        },
        indices: rows.iter().map(|r| r.0).collect(),
        counts: rows
            .iter()
            .flat_map(|&(_, p, i)| parts[p].row(i).iter().copied())
            .collect(),
        margins,
    };
    merged.check().map_err(PipelineError::Invalid)?;
    Ok(merged)
}
