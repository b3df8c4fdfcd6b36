//! `sample-counts` / `merge-counts`: counts agree with the closed form of a
//! linear model, shards merge into exactly the unsharded result, a paused run
//! resumes without redoing chunks, mismatched or overlapping files are refused,
//! and margin sums match the closed form.
use smoothcert::data::Split;
use smoothcert::pipeline::counts::{
    merge_counts, sample_counts, Counts, SampleCountsOptions, SampleOutcome, Shard,
};
use smoothcert::testing::{phi, rng_lock, write_threshold_bundle};
use std::path::Path;
use tch::Device;

const N: u64 = 3_000;
const SIGMA: f64 = 0.25;

fn opts(bundle: &Path, out: &Path) -> SampleCountsOptions {
    SampleCountsOptions {
        bundle: bundle.to_path_buf(),
        split: Split::Test,
        data_dir: None,
        n: N,
        skip: 500,
        max: None,
        shard: None,
        chunk: 7,
        batch: Some(512),
        seed: 3,
        margins: false,
        device: Device::Cpu,
        out: out.to_path_buf(),
        pause_after: None,
        show_progress: false,
    }
}

fn finished(o: &SampleCountsOptions) -> Counts {
    match sample_counts(o).unwrap() {
        SampleOutcome::Finished(s) => assert_eq!(s.out, o.out),
        other => panic!("expected a finished run, got {other:?}"),
    }
    Counts::read(&o.out).unwrap()
}

/// `base` sampled as `k` shards in chunks of `chunk` (each file beside
/// `base.out`, and each shard holding only its own inputs), then merged:
/// the merge, and the merged file read back, must equal `whole`. Returns
/// the shard files.
fn merged_shards(
    base: &SampleCountsOptions,
    k: usize,
    chunk: usize,
    whole: &Counts,
) -> Vec<std::path::PathBuf> {
    let dir = base.out.parent().unwrap().to_path_buf();
    let stem = base.out.file_stem().unwrap().to_string_lossy().into_owned();
    let files: Vec<std::path::PathBuf> = (0..k)
        .map(|i| {
            let mut o = base.clone();
            o.out = dir.join(format!("{stem}-s{i}.safetensors"));
            o.shard = Some(Shard { index: i, count: k });
            o.chunk = chunk;
            let part = finished(&o);
            let positions: Vec<usize> = part
                .indices
                .iter()
                .map(|idx| whole.indices.binary_search(idx).unwrap())
                .collect();
            assert!(positions.iter().all(|p| p % k == i), "{positions:?}");
            o.out
        })
        .collect();
    let out = dir.join(format!("{stem}-merged.safetensors"));
    assert_eq!(&merge_counts(&files, &out).unwrap(), whole);
    assert_eq!(&Counts::read(&out).unwrap(), whole);
    files
}

#[test]
fn counts_shards_resume_and_merge() {
    let _rng = rng_lock();
    let root = tempfile::tempdir().unwrap();
    let bundle = root.path().join("bundle");
    // Class 1 iff the first pixel exceeds 0.8; Fashion-MNIST's corner pixel is 0,
    // so each input sees class 1 with probability 1 - Phi(0.8 / sigma).
    write_threshold_bundle(&bundle, [1, 28, 28], 0.8, SIGMA);

    let whole = finished(&opts(&bundle, &root.path().join("whole.safetensors")));
    assert_eq!(whole.len(), 20);
    assert_eq!(
        whole.indices,
        (0..20).map(|i| i * 500).collect::<Vec<i64>>()
    );
    let p1 = 1.0 - phi(0.8 / SIGMA);
    let total1: i64 = (0..whole.len()).map(|i| i64::from(whole.row(i)[1])).sum();
    let expected = p1 * (N * 20) as f64;
    let sd = (expected * (1.0 - p1)).sqrt();
    assert!(
        (total1 as f64 - expected).abs() < 5.0 * sd,
        "{total1} vs {expected}"
    );

    // Rerunning a finished job samples nothing and keeps the file.
    match sample_counts(&opts(&bundle, &root.path().join("whole.safetensors"))).unwrap() {
        SampleOutcome::Finished(s) => assert_eq!(s.noisy_passes_this_run, 0),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        Counts::read(&root.path().join("whole.safetensors")).unwrap(),
        whole
    );

    // Three shards in chunks of two, merged: the same counts, input for input.
    let shard_files = merged_shards(
        &opts(&bundle, &root.path().join("s.safetensors")),
        3,
        2,
        &whole,
    );

    // Paused after one chunk, then resumed: the chunk is kept, not redone.
    let mut o = opts(&bundle, &root.path().join("paused.safetensors"));
    o.pause_after = Some(1);
    match sample_counts(&o).unwrap() {
        SampleOutcome::Paused {
            chunks_done,
            chunks,
        } => assert_eq!((chunks_done, chunks), (1, 3)),
        other => panic!("expected a pause, got {other:?}"),
    }
    let first_chunk = root
        .path()
        .join("paused.safetensors.parts/chunk-000000.safetensors");
    let kept = std::fs::read(&first_chunk).unwrap();
    o.pause_after = None;
    // Resumed without a forward batch: the run's own (512), not the device's
    // default, so the same noise is drawn and the counts equal the whole run's.
    o.batch = None;
    match sample_counts(&o).unwrap() {
        SampleOutcome::Finished(s) => {
            assert_eq!(s.chunks_resumed, 1);
            assert_eq!(s.noisy_passes_this_run, N * (20 - 7));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(Counts::read(&o.out).unwrap(), whole);
    assert!(!first_chunk.exists(), "parts are removed once joined");
    assert!(!kept.is_empty());

    // Overlapping shards, shards of another split into k, and other runs are refused.
    let err = merge_counts(
        &[o.out.clone(), shard_files[0].clone()],
        &root.path().join("bad.safetensors"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("another run"), "{err}");
    let err = merge_counts(
        &[shard_files[0].clone(), shard_files[0].clone()],
        &root.path().join("bad.safetensors"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("overlap"), "{err}");
    let mut other = opts(&bundle, &root.path().join("other.safetensors"));
    other.n = 1_000;
    other.shard = Some(Shard { index: 1, count: 3 });
    finished(&other);
    let err = merge_counts(
        &[shard_files[0].clone(), other.out.clone()],
        &root.path().join("bad.safetensors"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("another run"), "{err}");

    // A parts folder of another run is not mixed into this one.
    let mut a = opts(&bundle, &root.path().join("mixed.safetensors"));
    a.pause_after = Some(1);
    sample_counts(&a).unwrap();
    a.seed = 4;
    let err = sample_counts(&a).unwrap_err().to_string();
    assert!(err.contains("other parameters"), "{err}");
}

#[test]
fn shard_syntax() {
    assert_eq!(
        "2/5".parse::<Shard>().unwrap(),
        Shard { index: 2, count: 5 }
    );
    for bad in ["5/5", "1", "a/2", "0/0", "-1/3"] {
        assert!(bad.parse::<Shard>().is_err(), "{bad}");
    }
}

#[test]
fn corrupt_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    std::fs::write(&path, b"not safetensors").unwrap();
    assert!(Counts::read(&path).is_err());
    assert!(Counts::read(&dir.path().join("missing.safetensors")).is_err());
}

/// `--margins`: the same counts as without, and margin sums that match the
/// threshold rule's closed form. Its logits are -(x0 - t) and x0 - t with x0
/// ~ N(0, sigma^2) at Fashion-MNIST's blank corner pixel, so class 0's margin
/// is 2 (t - x0) ~ N(2t, (2 sigma)^2) and class 1's is exactly its negative;
/// the margin tail's target from them is then Phi(-t / sigma), the rule's
/// exact miss. Shards merge with each input's margins beside its counts.
#[test]
fn counts_record_margins_that_match_the_closed_form() {
    use smoothcert::smoothing::SelectionMargin;
    let _rng = rng_lock();
    let root = tempfile::tempdir().unwrap();
    let bundle = root.path().join("bundle");
    let t = 0.8;
    write_threshold_bundle(&bundle, [1, 28, 28], t, SIGMA);
    let plain = finished(&opts(&bundle, &root.path().join("plain.safetensors")));
    let mut o = opts(&bundle, &root.path().join("margins.safetensors"));
    o.margins = true;
    let with = finished(&o);
    assert_eq!(with.counts, plain.counts, "margins change no count");
    assert!(plain.margins.is_none() && with.meta.margins);

    let n = N as f64;
    let (mean, sd) = (2.0 * t, 2.0 * SIGMA);
    for i in 0..with.len() {
        let (sum0, sq0) = with.margin(i, 0).unwrap();
        let (sum1, sq1) = with.margin(i, 1).unwrap();
        assert_eq!(
            (sum1, sq1),
            (-sum0, sq0),
            "input {i}: two classes, opposite margins"
        );
        // 5 standard errors of the mean and of the variance.
        assert!(
            (sum0 / n - mean).abs() < 5.0 * sd / n.sqrt(),
            "input {i}: {}",
            sum0 / n
        );
        let var = sq0 / n - (sum0 / n).powi(2);
        let se_var = sd * sd * (2.0 / n).sqrt();
        assert!((var - sd * sd).abs() < 5.0 * se_var, "input {i}: var {var}");
        // The Gaussian margin's miss is the rule's exact one: z = mean / sd
        // has a standard error of sqrt((1 + z^2 / 2) / N) = 0.045, and ln Phi(-z)
        // moves about 3.5 times as fast, so 5 standard errors are 0.8.
        let z = SelectionMargin::from_sums(sum0, sq0, N).unwrap().z();
        let exact = 1.0 - phi(t / SIGMA);
        assert!((phi(-z).ln() - exact.ln()).abs() < 0.8, "input {i}: z {z}");
    }

    let shard_files = merged_shards(&o, 2, 3, &with);
    // A file with margins and one without are two runs.
    let plain_file = root.path().join("plain.safetensors");
    let err = merge_counts(
        &[plain_file, shard_files[0].clone()],
        &root.path().join("x"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("another run"), "{err}");
}
