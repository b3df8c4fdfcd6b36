//! The gRPC service end to end, refusing: every bad input and its status
//! code, client deadlines, and a full queue.

use crate::common::{config, metric_sum, request, scrape, start, tensor, test_images};
use smoothcert::server::pb;
use std::time::Duration;
use tonic::Code;

/// The request fields an INVALID_ARGUMENT may name, spelled as in the proto.
const PROTO_FIELDS: [&str; 11] = [
    "input",
    "image",
    "tensor.shape",
    "tensor.data",
    "options.method",
    "options.n0",
    "options.n",
    "options.alpha",
    "options.seed",
    "options.adaptive_n0",
    "options.target_radius",
];

/// An INVALID_ARGUMENT message starts with the field, as the proto spells it,
/// and names it once: neither the field nor its last part comes again as a
/// prefix of what follows ("image: image: ..." was one).
fn field_named_once(what: &str, message: &str) {
    let (field, rest) = message
        .split_once(": ")
        .unwrap_or_else(|| panic!("{what}: {message:?} names no field"));
    assert!(
        PROTO_FIELDS.contains(&field),
        "{what}: {field:?} is not a request field as the proto spells it ({message:?})"
    );
    let last = field.rsplit('.').next().unwrap_or(field);
    for prefix in [field, last] {
        assert!(
            !rest.starts_with(&format!("{prefix}:")) && !rest.starts_with(&format!("{prefix} ")),
            "{what}: the field is named twice in {message:?}"
        );
    }
}

/// A mid-grey PNG of another size than the model's 28 x 28.
fn png_of_size(w: u32, h: u32) -> Vec<u8> {
    let img = image::GrayImage::from_pixel(w, h, image::Luma([128]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn the_field_check_catches_a_doubled_prefix() {
    for bad in [
        "image: image: cannot decode the image: bad",
        "options.n0: n0: must be at least 1",
        "n0: must be at least 1",
    ] {
        let caught = std::panic::catch_unwind(|| field_named_once("bad", bad));
        assert!(caught.is_err(), "{bad:?} passed");
    }
    field_named_once("good", "image: cannot decode the image: bad");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_status_code() {
    let (server, mut client) = start(config(
        "[limits]\nmax_message_bytes = 65536\nmc_queue_capacity = 1\n[batching]\nmax_batch_requests = 1\n",
    ))
    .await;
    let (images, _) = test_images(1);
    let good = &images[0];
    let surrogate = pb::CertifyOptions::default;
    let mut nan = good.clone();
    nan[5] = f32::NAN;
    let mut bright = good.clone();
    bright[7] = 1.5;
    let cases: Vec<(&str, pb::CertifyRequest, Code, &str)> = vec![
        (
            "no input",
            pb::CertifyRequest::default(),
            Code::InvalidArgument,
            "input",
        ),
        (
            "wrong shape",
            request(tensor(good, &[28, 27]), surrogate()),
            Code::InvalidArgument,
            "tensor.shape",
        ),
        (
            "three channels",
            request(tensor(good, &[3, 28, 28]), surrogate()),
            Code::InvalidArgument,
            "tensor.shape",
        ),
        (
            "short data",
            request(tensor(&good[..700], &[1, 28, 28]), surrogate()),
            Code::InvalidArgument,
            "tensor.data",
        ),
        (
            "NaN",
            request(tensor(&nan, &[1, 28, 28]), surrogate()),
            Code::InvalidArgument,
            "element 5 is NaN",
        ),
        (
            "pixel > 1",
            request(tensor(&bright, &[1, 28, 28]), surrogate()),
            Code::InvalidArgument,
            "element 7 is 1.5",
        ),
        (
            "not an image",
            request(
                pb::certify_request::Input::Image(b"GIF89a....".to_vec()),
                surrogate(),
            ),
            Code::InvalidArgument,
            "image: cannot decode the image: ",
        ),
        (
            "oversize",
            request(tensor(&vec![0.5; 20_000], &[20_000]), surrogate()),
            Code::ResourceExhausted,
            "too large",
        ),
        (
            "n0 = 0",
            request(
                tensor(good, &[1, 28, 28]),
                pb::CertifyOptions {
                    n0: Some(0),
                    ..Default::default()
                },
            ),
            Code::InvalidArgument,
            "options.n0",
        ),
        (
            "n too large",
            request(
                tensor(good, &[1, 28, 28]),
                pb::CertifyOptions {
                    n: Some(10_000_000),
                    ..Default::default()
                },
            ),
            Code::InvalidArgument,
            "options.n",
        ),
        (
            "alpha 0",
            request(
                tensor(good, &[1, 28, 28]),
                pb::CertifyOptions {
                    alpha: Some(0.0),
                    ..Default::default()
                },
            ),
            Code::InvalidArgument,
            "options.alpha",
        ),
        (
            "alpha NaN",
            request(
                tensor(good, &[1, 28, 28]),
                pb::CertifyOptions {
                    alpha: Some(f64::NAN),
                    ..Default::default()
                },
            ),
            Code::InvalidArgument,
            "options.alpha",
        ),
        (
            "method 9",
            request(
                tensor(good, &[1, 28, 28]),
                pb::CertifyOptions {
                    method: 9,
                    ..Default::default()
                },
            ),
            Code::InvalidArgument,
            "options.method",
        ),
        (
            "image of another size",
            request(
                pb::certify_request::Input::Image(png_of_size(32, 32)),
                surrogate(),
            ),
            Code::InvalidArgument,
            "image: ",
        ),
        (
            "n0 over the limit",
            request(
                tensor(good, &[1, 28, 28]),
                pb::CertifyOptions {
                    n0: Some(10_000_000),
                    ..Default::default()
                },
            ),
            Code::InvalidArgument,
            "options.n0: ",
        ),
        (
            "CALIBRATED at another n",
            request(
                tensor(good, &[1, 28, 28]),
                pb::CertifyOptions {
                    method: pb::Method::Calibrated as i32,
                    n: Some(1_000),
                    ..Default::default()
                },
            ),
            Code::InvalidArgument,
            "options.n: ",
        ),
        (
            "CALIBRATED at another n0",
            request(
                tensor(good, &[1, 28, 28]),
                pb::CertifyOptions {
                    method: pb::Method::Calibrated as i32,
                    n0: Some(50),
                    ..Default::default()
                },
            ),
            Code::InvalidArgument,
            "options.n0: ",
        ),
        (
            "CALIBRATED with adaptive n0",
            request(
                tensor(good, &[1, 28, 28]),
                pb::CertifyOptions {
                    method: pb::Method::Calibrated as i32,
                    adaptive_n0: Some(true),
                    ..Default::default()
                },
            ),
            Code::InvalidArgument,
            "options.adaptive_n0: ",
        ),
        (
            "SEQUENTIAL without a target",
            request(
                tensor(good, &[1, 28, 28]),
                pb::CertifyOptions {
                    method: pb::Method::Sequential as i32,
                    ..Default::default()
                },
            ),
            Code::InvalidArgument,
            "options.target_radius: ",
        ),
        (
            "a negative target radius",
            request(
                tensor(good, &[1, 28, 28]),
                pb::CertifyOptions {
                    method: pb::Method::Sequential as i32,
                    target_radius: Some(-0.5),
                    ..Default::default()
                },
            ),
            Code::InvalidArgument,
            "options.target_radius: ",
        ),
        (
            "a target radius out of reach",
            request(
                tensor(good, &[1, 28, 28]),
                pb::CertifyOptions {
                    method: pb::Method::Sequential as i32,
                    target_radius: Some(50.0),
                    ..Default::default()
                },
            ),
            Code::InvalidArgument,
            "options.target_radius: ",
        ),
        (
            "a target radius for MONTE_CARLO",
            request(
                tensor(good, &[1, 28, 28]),
                pb::CertifyOptions {
                    method: pb::Method::MonteCarlo as i32,
                    target_radius: Some(0.5),
                    ..Default::default()
                },
            ),
            Code::InvalidArgument,
            "options.target_radius: ",
        ),
    ];
    for (what, req, code, needle) in cases {
        let status = client.certify(req).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{what}: {:?} lacks {needle:?}",
            status.message()
        );
        if code == Code::InvalidArgument {
            field_named_once(what, status.message());
        }
    }
    let mut unknown = request(tensor(good, &[1, 28, 28]), surrogate());
    unknown.model = "no-such-model".into();
    let status = client.certify(unknown).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // A client deadline shorter than the work: DEADLINE_EXCEEDED, and the
    // worker drops the request instead of finishing its 10^6 samples.
    let long = pb::CertifyOptions {
        method: pb::Method::MonteCarlo as i32,
        n: Some(1_000_000),
        ..Default::default()
    };
    let mut req = tonic::Request::new(request(tensor(good, &[1, 28, 28]), long));
    req.set_timeout(Duration::from_millis(1000));
    let started = std::time::Instant::now();
    let status = client.certify(req).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The dropped work shows in the metrics, and the lane is free again soon.
    let mut dropped = false;
    for _ in 0..100 {
        let text = scrape(&server).await;
        if metric_sum(&text, "smoothcert_dropped_total") >= 1.0 {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dropped, "the deadline-exceeded request was not dropped");

    // A full queue refuses at once: one request runs, one waits (capacity 1),
    // the rest get RESOURCE_EXHAUSTED.
    let mut handles = Vec::new();
    for _ in 0..6 {
        let mut c = client.clone();
        let opts = pb::CertifyOptions {
            method: pb::Method::MonteCarlo as i32,
            n: Some(200_000),
            ..Default::default()
        };
        let mut req = tonic::Request::new(request(tensor(good, &[1, 28, 28]), opts));
        req.set_timeout(Duration::from_millis(1500));
        handles.push(tokio::spawn(
            async move { c.certify(req).await.map(|_| ()) },
        ));
    }
    let mut exhausted = 0;
    for h in handles {
        if let Err(s) = h.await.unwrap() {
            exhausted += usize::from(s.code() == Code::ResourceExhausted);
        }
    }
    assert!(exhausted >= 3, "{exhausted} of 6 refused");
    server.shutdown();
    server.wait().await.unwrap();
}
