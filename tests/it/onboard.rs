//! A user's own TorchScript classifier and RGB image folder, imported into a
//! bundle (`import`) and served: the module's contract is checked with a
//! clear error for each way it can be broken, the accuracies are measured on
//! the folder, and the server certifies one of its images over gRPC.
use crate::common;

use smoothcert::data::{DatasetSource, Split};
use smoothcert::model::{Arch, Bundle};
use smoothcert::pipeline::counts::Shard;
use smoothcert::pipeline::onboard::{import_torchscript, ImportOptions};
use smoothcert::pipeline::steps::{
    run_pipeline, CountsRole, EvalRole, PipelineOptions, StepStatus,
};
use smoothcert::server::pb;
use smoothcert::smoothing::ConformalScore;
use smoothcert::testing::rng_lock;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

const SHAPE: [usize; 3] = [3, 8, 8];

/// An RGB image folder, 5 images per class and split: "bright" images have
/// every channel at 200..240, "dark" ones at 10..50.
fn image_folder(root: &Path) {
    image_folder_of(root, 5)
}

fn image_folder_of(root: &Path, per_class: u8) {
    for split in ["train", "test"] {
        for (class, base) in [("bright", 200u8), ("dark", 10u8)] {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..per_class {
                let v = base + (8 * i) % 40;
                image::RgbImage::from_pixel(8, 8, image::Rgb([v, v, v / 2 + 60]))
                    .save(dir.join(format!("{i}.png")))
                    .unwrap();
            }
        }
    }
}

/// A traced TorchScript module of `shape` with two logits that say how
/// bright the red channel is: [mean - 0.5, 0.5 - mean], in label order
/// (bright, dark), the sorted folder names.
fn module(path: &Path, shape: [i64; 4], outputs: usize) {
    let _rng = rng_lock();
    let example = Tensor::rand(shape, (Kind::Float, Device::Cpu));
    let m = tch::CModule::create_by_tracing("Brightness", "forward", &[example], &mut |xs| {
        // Only 3 x 8 x 8 inputs reshape to 192 values a row.
        let red =
            xs[0]
                .reshape([-1, 192])
                .narrow(1, 0, 64)
                .mean_dim(&[1i64][..], false, Kind::Float)
                - 0.5;
        let cols: Vec<Tensor> = (0..outputs)
            .map(|k| if k == 0 { red.shallow_clone() } else { -&red })
            .collect();
        vec![Tensor::stack(&cols, 1)]
    })
    .unwrap();
    m.save(path).unwrap();
}

/// The answer of a server on `bundle`, started for this request alone, to
/// `png` (a file) with `options`.
async fn certify_served(
    bundle: &Path,
    png: &Path,
    options: pb::CertifyOptions,
) -> pb::CertifyResponse {
    let mut cfg = common::config("");
    cfg.models[0].bundle = bundle.to_path_buf();
    let (server, mut client) = common::start(cfg).await;
    let image = std::fs::read(png).unwrap();
    let resp = client
        .certify(common::request(
            pb::certify_request::Input::Image(image),
            options,
        ))
        .await
        .unwrap()
        .into_inner();
    server.shutdown();
    server.wait().await.unwrap();
    resp
}

fn opts(model: &Path, out: &Path, folder: Option<PathBuf>) -> ImportOptions {
    ImportOptions {
        model: model.to_path_buf(),
        out: out.to_path_buf(),
        name: None,
        labels: vec!["bright".into(), "dark".into()],
        shape: SHAPE,
        noise: smoothcert::smoothing::Noise::Gaussian { sigma: 0.25 },
        normalization: None,
        dataset: folder.map(|image_folder| DatasetSource::ImageFolder { image_folder }),
        max_images: 100,
        seed: 0,
        device: Device::Cpu,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torchscript_classifier_and_an_rgb_folder_to_a_certificate() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    image_folder(&r.join("images"));
    module(&r.join("model.pt"), [2, 3, 8, 8], 2);

    let out = r.join("my-model");
    let s = import_torchscript(&opts(&r.join("model.pt"), &out, Some(r.join("images")))).unwrap();
    // Every test image is far from the boundary: right when clean, and with
    // noise of sigma 0.25 per pixel averaged over 64 pixels, still right.
    assert_eq!((s.images, s.clean_accuracy), (10, Some(1.0)));
    assert_eq!(s.noisy_accuracy, Some(1.0));
    let b = Bundle::load(&out).unwrap();
    assert_eq!((b.name.as_str(), b.input_shape), ("my-model", SHAPE));
    assert_eq!(b.provenance.clean_test_accuracy, Some(1.0));
    assert_eq!(
        std::fs::read_dir(r).unwrap().count(),
        3,
        "only images/, model.pt and the bundle"
    );

    // Served: a Monte Carlo certificate for a dark test image, sent as PNG.
    let resp = certify_served(
        &out,
        &r.join("images/test/dark/2.png"),
        pb::CertifyOptions {
            method: pb::Method::MonteCarlo as i32,
            n: Some(2_000),
            seed: Some(1),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(resp.model, "my-model");
    match resp.outcome {
        Some(pb::certify_response::Outcome::Certified(c)) => {
            assert_eq!((c.class_index, c.label.as_str()), (1, "dark"));
            assert!(c.radius > 0.0 && !c.estimate);
        }
        other => panic!("expected a certificate, got {other:?}"),
    }
}

#[test]
fn every_broken_input_gets_a_clear_error_and_leaves_nothing() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    image_folder(&r.join("images"));
    module(&r.join("model.pt"), [2, 3, 8, 8], 2);
    module(&r.join("three.pt"), [2, 3, 8, 8], 3);
    std::fs::write(r.join("notes.pt"), "not a module").unwrap();
    let out = r.join("b");
    let err = |o: ImportOptions| import_torchscript(&o).unwrap_err().to_string();

    let e = err(opts(&r.join("notes.pt"), &out, None));
    assert!(e.contains("not a TorchScript module"), "{e}");
    let e = err(opts(&r.join("three.pt"), &out, None));
    assert!(
        e.contains("[2, 3]") && e.contains("2 labels need [2, 2]"),
        "{e}"
    );
    let mut grey = opts(&r.join("model.pt"), &out, None);
    grey.shape = [1, 8, 8];
    let e = err(grey);
    assert!(
        e.contains("does not take inputs of shape") && e.contains("[2, 1, 8, 8]"),
        "{e}"
    );
    let mut renamed = opts(&r.join("model.pt"), &out, Some(r.join("images")));
    renamed.labels = vec!["light".into(), "dark".into()];
    let e = err(renamed);
    assert!(e.contains("but the model's labels are"), "{e}");
    let mut one = opts(&r.join("model.pt"), &out, None);
    one.labels.truncate(1);
    assert!(err(one).contains("at least two classes"));
    let e = err(opts(&r.join("missing.pt"), &out, None));
    assert!(e.contains("missing.pt"), "{e}");
    // images/, model.pt, three.pt, notes.pt: nothing else.
    let left: Vec<_> = std::fs::read_dir(r)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 4, "a failed import left files: {left:?}");
    std::fs::write(r.join("file"), "x").unwrap();
    let e = err(opts(&r.join("model.pt"), &r.join("file"), None));
    assert!(e.contains("not a folder"), "{e}");
    std::fs::create_dir(r.join("full")).unwrap();
    std::fs::write(r.join("full/x"), "x").unwrap();
    let e = err(opts(&r.join("model.pt"), &r.join("full"), None));
    assert!(e.contains("not empty"), "{e}");
    std::fs::create_dir(r.join("empty")).unwrap();
    import_torchscript(&opts(&r.join("model.pt"), &r.join("empty"), None)).unwrap();

    import_torchscript(&opts(&r.join("model.pt"), &out, None)).unwrap();
    let e = err(opts(&r.join("model.pt"), &out, None));
    assert!(e.contains("already a bundle"), "{e}");
}

/// The whole path with no step by hand: a TorchScript file and an RGB image
/// folder, `import`, `pipeline` (stopped after the surrogate, then resumed,
/// with a counts worker's share first), and the server answering a
/// calibrated estimate from the pipeline's bundle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torchscript_file_and_an_image_folder_to_a_served_calibrated_surrogate() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    // 24 images per class and split: 48 test images, 12 per role.
    image_folder_of(&r.join("images"), 24);
    module(&r.join("model.pt"), [2, 3, 8, 8], 2);
    let out = r.join("flowers");
    import_torchscript(&opts(&r.join("model.pt"), &out, Some(r.join("images")))).unwrap();
    let b = Bundle::load(&out).unwrap();
    assert!(matches!(
        b.provenance.dataset,
        Some(DatasetSource::ImageFolder { ref image_folder }) if image_folder.is_absolute()
    ));

    let role = |split, n, shards, used: &[usize]| CountsRole {
        split,
        n,
        skip: 1,
        shards,
        used: used.to_vec(),
        margins: false,
    };
    let mut plan = PipelineOptions {
        bundle: out.clone(),
        counts_dir: r.join("counts"),
        reports_dir: r.join("reports"),
        data_dir: None,
        device: Device::Cpu,
        batch: Some(64),
        counts_batch: None,
        counts_device: Device::Cpu,
        seed: 0,
        nominal_n: 200,
        train: role(Split::Train, 100, 2, &[0, 1]),
        tail: Some(role(Split::Test, 100, 4, &[1])),
        calibration: role(Split::Test, 200, 4, &[2]),
        eval: EvalRole {
            offset: 0,
            skip: 4,
            max: None,
            n: 200,
        },
        chunk: 8,
        calibration_chunk: 4,
        // The traced rule has no parameters to fine-tune: a built-in network.
        arch: Some(Arch::SmallCnn),
        learning_rate: None,
        loss: smoothcert::pipeline::surrogate::SurrogateLoss::Js,
        margin_tail: 0.0,
        epochs: 2,
        score: ConformalScore::PGap,
        margin_threshold: Some(2.5),
        auto_band: smoothcert::engine::AutoBand {
            low: 0.2,
            high: 0.5,
        },
        delta: 0.2,
        n0: 20,
        alpha: 0.01,
        radii: vec![0.0, 0.25],
        counts_worker: Some(Shard { index: 1, count: 2 }),
        until: None,
        recalibrate: false,
        show_progress: false,
    };
    // Offline certify runs its own runtime: off this test's.
    let run_pipeline = |p: &PipelineOptions| {
        let p = p.clone();
        std::thread::spawn(move || run_pipeline(&p)).join().unwrap()
    };
    // A worker samples its share of the 4 counts files (the 2nd and 4th) and nothing else.
    let s = run_pipeline(&plan).unwrap();
    assert!(!s.finished);
    let ran: Vec<&str> = s
        .steps
        .iter()
        .filter(|st| st.status == StepStatus::Ran)
        .map(|st| st.step.as_str())
        .collect();
    assert_eq!(ran, ["train-counts", "calibration-counts"]);
    assert!(!r
        .join("counts/train-n100-skip1/shard-0-of-2.safetensors")
        .exists());
    assert!(r
        .join("counts/train-n100-skip1/shard-1-of-2.safetensors")
        .exists());
    assert!(Bundle::load(&out).unwrap().surrogate.is_none());

    // Overlapping roles are refused before anything runs.
    let mut overlapping = plan.clone();
    overlapping.counts_worker = None;
    overlapping.eval.offset = 2;
    let e = run_pipeline(&overlapping).unwrap_err().to_string();
    assert!(e.contains("calibration") && e.contains("evaluation"), "{e}");

    plan.counts_worker = None;
    plan.until = Some("train-surrogate".into());
    let s = run_pipeline(&plan).unwrap();
    assert!(!s.finished);
    assert!(Bundle::load(&out).unwrap().surrogate.is_some());
    assert!(!r.join("reports/mc.tsv").exists());

    plan.until = None;
    let s = run_pipeline(&plan).unwrap();
    assert!(s.finished);
    let status = |name: &str| s.steps.iter().find(|st| st.step == name).unwrap().status;
    assert_eq!(status("train-counts"), StepStatus::DoneBefore);
    assert_eq!(status("train-surrogate"), StepStatus::DoneBefore);
    for step in [
        "tail-counts",
        "fit-tail-map",
        "calibrate",
        "certify-auto",
        "report",
    ] {
        assert_eq!(status(step), StepStatus::Ran, "{step}");
    }
    // The worker's calibration file was kept, its other half sampled now.
    assert!(s
        .steps
        .iter()
        .all(|st| st.seconds_total >= st.seconds_this_run));
    let report = s.report.unwrap();
    for curve in ["mc", "surrogate", "calibrated", "auto"] {
        assert!(report.contains(curve), "{report}");
    }
    assert!(r.join("reports/pipeline_summary.json").exists());
    assert!(r.join("reports/certified_accuracy.png").exists());
    let b = Bundle::load(&out).unwrap();
    let sur = b.surrogate.as_ref().unwrap();
    assert!(sur.tail_map.is_some() && sur.calibration.is_some());
    assert_eq!(sur.nominal_n, 200);

    // A rerun finds everything done but the report.
    let again = run_pipeline(&plan).unwrap();
    assert!(again
        .steps
        .iter()
        .all(|st| st.status == StepStatus::DoneBefore || st.step == "report"));
    // Another margin tail is refused before anything is sampled, and so is
    // one whose train counts would not record margins.
    let err = run_pipeline(&PipelineOptions {
        margin_tail: 0.01,
        train: CountsRole {
            margins: true,
            ..plan.train.clone()
        },
        ..plan.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("--margin-tail 0"), "{err}");
    let err = run_pipeline(&PipelineOptions {
        margin_tail: 0.01,
        ..plan.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("record their margins"), "{err}");

    // Counts of a folder that changed since are refused, not reused.
    let extra = r.join("images/test/bright/zz.png");
    std::fs::copy(r.join("images/test/bright/0.png"), &extra).unwrap();
    let e = run_pipeline(&plan).unwrap_err().to_string();
    assert!(
        e.contains("tail-counts") && e.contains("another run") && e.contains("dataset_fnv1a"),
        "{e}"
    );
    std::fs::remove_file(&extra).unwrap();
    let mut no_map = plan.clone();
    no_map.tail = None;
    let e = run_pipeline(&no_map).unwrap_err().to_string();
    assert!(e.contains("--no-tail-map"), "{e}");
    // A calibration on other inputs than the plan's is not taken for its own.
    let mut moved = plan.clone();
    moved.calibration = role(Split::Test, 200, 4, &[3]);
    let e = run_pipeline(&moved).unwrap_err().to_string();
    assert!(e.contains("other inputs than this plan's"), "{e}");
    // Another calibration is kept unless asked for: a chosen one is never lost.
    let mut other = plan.clone();
    other.delta = 0.1;
    let e = run_pipeline(&other).unwrap_err().to_string();
    assert!(e.contains("--recalibrate"), "{e}");
    other.recalibrate = true;
    let s = run_pipeline(&other).unwrap();
    let status = |name: &str| s.steps.iter().find(|st| st.step == name).unwrap().status;
    assert_eq!(status("calibrate"), StepStatus::Ran);
    assert_eq!(status("certify-calibrated"), StepStatus::Ran);
    assert_eq!(status("certify-monte_carlo"), StepStatus::DoneBefore);

    // Served: a calibrated estimate for a dark test image.
    let resp = certify_served(
        &out,
        &r.join("images/test/dark/2.png"),
        pb::CertifyOptions {
            method: pb::Method::Calibrated as i32,
            seed: Some(1),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(resp.model, "flowers");
    match resp.outcome {
        Some(pb::certify_response::Outcome::Certified(c)) => {
            assert_eq!((c.class_index, c.label.as_str()), (1, "dark"));
            assert!(c.estimate, "a calibrated radius is an estimate");
        }
        other => panic!("expected an estimate, got {other:?}"),
    }
}
