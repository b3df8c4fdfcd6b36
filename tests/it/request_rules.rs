//! Every certificate-request rule lives in one constructor
//! (`smoothcert::methods::request`): offline `certify` and the server refuse
//! the same bad request with the same message, each naming the field its own
//! way (`options.n` over gRPC, `--n` on the command line) or the model.

use crate::common::{bundle_copy, config_for, start, tensor, test_images};
use smoothcert::data::Split;
use smoothcert::engine::{AutoBand, CertifyParams, Method};
use smoothcert::methods::{Field, Target};
use smoothcert::pipeline::certify::{certify, CertifyOptions};
use smoothcert::server::pb;
use smoothcert::smoothing::AdaptiveN0;
use std::path::Path;
use tch::Device;
use tonic::Code;

/// One bad request: which model, what it asks, and the field it must name
/// (`None`: the model cannot serve the method at all).
struct Case {
    what: &'static str,
    model: &'static str,
    method: Method,
    n: u64,
    n0: u64,
    adaptive: bool,
    target: Option<f64>,
    field: Option<Field>,
}

fn case(what: &'static str, model: &'static str, method: Method, field: Option<Field>) -> Case {
    Case {
        what,
        model,
        method,
        n: 2_000,
        n0: 100,
        adaptive: false,
        target: None,
        field,
    }
}

fn cases() -> Vec<Case> {
    let target = |r: f64, c: Case| Case {
        target: Some(r),
        ..c
    };
    vec![
        case(
            "SEQUENTIAL without a target",
            "cal",
            Method::Sequential,
            Some(Field::TargetRadius),
        ),
        target(
            -0.5,
            case(
                "a negative target",
                "cal",
                Method::Sequential,
                Some(Field::TargetRadius),
            ),
        ),
        // sigma = 0.25: at most about 2.05 can be certified.
        target(
            50.0,
            case(
                "a target beyond the cap",
                "cal",
                Method::Sequential,
                Some(Field::TargetRadius),
            ),
        ),
        target(
            0.5,
            case(
                "a target for MONTE_CARLO",
                "cal",
                Method::MonteCarlo,
                Some(Field::TargetRadius),
            ),
        ),
        Case {
            n: 1_000,
            ..case(
                "CALIBRATED at another n",
                "cal",
                Method::Calibrated,
                Some(Field::N),
            )
        },
        Case {
            n: 1_000,
            ..case("AUTO at another n", "cal", Method::Auto, Some(Field::N))
        },
        Case {
            n0: 50,
            ..case(
                "CALIBRATED at another n0",
                "cal",
                Method::Calibrated,
                Some(Field::N0),
            )
        },
        Case {
            adaptive: true,
            ..case(
                "CALIBRATED with adaptive n0",
                "cal",
                Method::Calibrated,
                Some(Field::AdaptiveN0),
            )
        },
        case(
            "SURROGATE without a surrogate",
            "bare",
            Method::Surrogate,
            None,
        ),
        case(
            "CALIBRATED without a calibration",
            "uncal",
            Method::Calibrated,
            None,
        ),
    ]
}

fn to_pb(m: Method) -> pb::Method {
    match m {
        Method::MonteCarlo => pb::Method::MonteCarlo,
        Method::Surrogate => pb::Method::Surrogate,
        Method::Calibrated => pb::Method::Calibrated,
        Method::Auto => pb::Method::Auto,
        Method::Sequential => pb::Method::Sequential,
    }
}

/// Offline `certify`'s refusal of `c` on `bundle`.
fn offline_error(c: &Case, bundle: &Path, out: &Path) -> String {
    let opts = CertifyOptions {
        bundle: bundle.to_path_buf(),
        method: c.method,
        split: Split::Test,
        data_dir: None,
        offset: 0,
        skip: 1,
        max: Some(1),
        params: CertifyParams {
            n0: c.n0,
            n: c.n,
            alpha: 0.001,
            batch: 32,
        },
        seed: 1,
        adaptive_n0: c.adaptive.then_some(AdaptiveN0 {
            chunk: 10,
            alpha: 0.001,
        }),
        auto_band: AutoBand {
            low: 0.2,
            high: 0.5,
        },
        target: c.target.map(|radius| Target {
            radius,
            guided: true,
        }),
        device: Device::Cpu,
        out: out.to_path_buf(),
        show_progress: false,
    };
    match certify(&opts) {
        Ok(_) => panic!("{}: offline certify accepted it", c.what),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_certify_and_the_server_refuse_alike() {
    let root = tempfile::tempdir().unwrap();
    let cal = bundle_copy(root.path(), "cal", Some((0.004, 2_000)));
    let uncal = bundle_copy(root.path(), "uncal", None);
    let bare = bundle_copy(root.path(), "bare", None);
    let mut b = smoothcert::model::Bundle::load(&bare).unwrap();
    b.surrogate = None;
    b.save().unwrap();
    let bundles = [("cal", &cal), ("uncal", &uncal), ("bare", &bare)];
    let (server, mut client) = start(config_for(&[
        ("cal", &cal, ""),
        ("uncal", &uncal, ""),
        ("bare", &bare, ""),
    ]))
    .await;
    let (images, _) = test_images(1);
    for (i, c) in cases().into_iter().enumerate() {
        let status = client
            .certify(pb::CertifyRequest {
                model: c.model.into(),
                input: Some(tensor(&images[0], &[1, 28, 28])),
                options: Some(pb::CertifyOptions {
                    method: to_pb(c.method) as i32,
                    n: Some(c.n),
                    n0: Some(c.n0),
                    adaptive_n0: c.adaptive.then_some(true),
                    target_radius: c.target,
                    seed: Some(1),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .expect_err(c.what);
        let (_, bundle) = bundles.iter().find(|(n, _)| *n == c.model).unwrap();
        let out = root.path().join(format!("run-{i}.tsv"));
        // Offline certify runs its own runtime: off this test's.
        let offline = tokio::task::block_in_place(|| offline_error(&c, bundle, &out));
        let (server_prefix, offline_prefix, code) = match c.field {
            Some(f) => (
                format!("{}: ", f.proto()),
                format!("{}: ", f.flag()),
                Code::InvalidArgument,
            ),
            None => (
                format!("model {}: ", c.model),
                format!("{}: ", bundle.display()),
                Code::FailedPrecondition,
            ),
        };
        assert_eq!(status.code(), code, "{}: {status:?}", c.what);
        let served = status
            .message()
            .strip_prefix(&server_prefix)
            .unwrap_or_else(|| {
                panic!("{}: {:?} lacks {server_prefix:?}", c.what, status.message())
            });
        let offline = offline
            .strip_prefix(&offline_prefix)
            .unwrap_or_else(|| panic!("{}: {offline:?} lacks {offline_prefix:?}", c.what));
        assert_eq!(served, offline, "{}", c.what);
        assert!(!served.is_empty(), "{}", c.what);
        assert!(
            !out.exists(),
            "{}: a refused run wrote {}",
            c.what,
            out.display()
        );
    }
    server.shutdown();
}
