//! `train-surrogate` end to end on a model whose Monte Carlo counts are known:
//! the surrogate learns them, reports its validation figures, lands in the
//! bundle, and a paused run resumes.
use smoothcert::data::{DatasetKind, Split};
use smoothcert::model::{Arch, Bundle, Classifier};
use smoothcert::pipeline::counts::{sample_counts, SampleCountsOptions, SampleOutcome};
use smoothcert::pipeline::surrogate::{
    train_surrogate, SurrogateLoss, SurrogateOutcome, TrainSurrogateOptions,
};
use smoothcert::testing::{phi, rng_lock, write_threshold_bundle};
use tch::{Device, Kind, Tensor};

#[test]
fn surrogate_learns_known_counts() {
    let _rng = rng_lock();
    let root = tempfile::tempdir().unwrap();
    let bundle_dir = root.path().join("bundle");
    // Every Fashion-MNIST corner pixel is 0, so every input's counts are
    // Binomial(n, Phi(0.3 / 0.25)) for class 0.
    write_threshold_bundle(&bundle_dir, [1, 28, 28], 0.3, 0.25);
    let counts = root.path().join("counts.safetensors");
    let sampled = sample_counts(&SampleCountsOptions {
        bundle: bundle_dir.clone(),
        split: Split::Test,
        data_dir: None,
        n: 2_000,
        skip: 50,
        max: None,
        shard: None,
        chunk: 100,
        batch: Some(2_000),
        seed: 1,
        device: Device::Cpu,
        out: counts.clone(),
        pause_after: None,
        show_progress: false,
    })
    .unwrap();
    assert!(matches!(sampled, SampleOutcome::Finished(_)));

    let mut opts = TrainSurrogateOptions {
        bundle: bundle_dir.clone(),
        counts: vec![counts],
        arch: Arch::SmallCnn,
        loss: SurrogateLoss::Js,
        epochs: 12,
        batch_size: 32,
        learning_rate: 5e-4,
        val_fraction: 0.2,
        nominal_n: Some(100_000),
        data_dir: None,
        seed: 5,
        device: Device::Cpu,
        pause_after: Some(4),
        init_from_base: false,
        show_progress: false,
    };
    // The base here is TorchScript: there are no built-in weights to start from.
    let err = train_surrogate(&TrainSurrogateOptions {
        init_from_base: true,
        ..opts.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("--init-from-base"), "{err}");
    match train_surrogate(&opts).unwrap() {
        SurrogateOutcome::Paused { epochs_done } => assert_eq!(epochs_done, 4),
        other => panic!("expected a pause, got {other:?}"),
    }
    opts.pause_after = None;
    let SurrogateOutcome::Finished(spec) = train_surrogate(&opts).unwrap() else {
        panic!("expected the resumed run to finish");
    };
    let t = spec.training.clone().unwrap();
    assert_eq!(spec.nominal_n, 100_000);
    assert_eq!((t.train_inputs, t.validation_inputs), (160, 40));
    assert_eq!(t.val_top1_agreement, 1.0, "{t:?}");
    assert!(t.val_mean_abs_err_pa < 0.05, "{t:?}");
    assert!(t.val_p95_abs_err_pa >= t.val_mean_abs_err_pa * 0.5, "{t:?}");

    // The bundle now names its surrogate; loaded back, it predicts pA.
    let bundle = Bundle::load(&bundle_dir).unwrap();
    assert_eq!(bundle.surrogate.as_ref(), Some(&*spec));
    let sur = Classifier::load_surrogate(&bundle, Device::Cpu).unwrap();
    // Inputs it was not trained on (the counted ones are every 50th).
    let ds = smoothcert::data::load(
        DatasetKind::FashionMnist,
        &DatasetKind::FashionMnist.default_dir(),
        Split::Test,
    )
    .unwrap();
    let unseen: Vec<f32> = [25, 75, 125, 175]
        .iter()
        .flat_map(|&i| ds.image(i).to_vec())
        .collect();
    let x = Tensor::from_slice(&unseen).view([4, 1, 28, 28]);
    let p = sur.logits(&x).unwrap().softmax(1, Kind::Float);
    let p0 = p.select(1, 0).mean(Kind::Double).double_value(&[]);
    let want = phi(0.3 / 0.25);
    assert!((p0 - want).abs() < 0.06, "p_hat {p0} vs pA {want}");
    assert!(!bundle_dir.join("surrogate-checkpoint").exists());
}
