//! The gRPC service end to end: a real server on an ephemeral port, the
//! shipped default bundle, real Fashion-MNIST test images, a tonic client.
use base64::Engine;
use smoothcert::config::Config;
use smoothcert::data::{self, DatasetKind, Split};
use smoothcert::server::pb;
use smoothcert::server::pb::certifier_client::CertifierClient;
use smoothcert::server::RunningServer;
use statrs::distribution::{ContinuousCDF, Normal};
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;

fn bundle_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/fashion-mnist-sigma0.25")
}

/// A configuration on ephemeral loopback ports, on the CPU, with overrides.
fn config(toml_extra: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\ngrpc_addr = \"127.0.0.1:0\"\nmetrics_addr = \"127.0.0.1:0\"\n\
             grace_period_ms = 20000\n{toml_extra}\n[[models]]\nbundle = {:?}\ndevice = \"cpu\"\n",
            bundle_dir().display().to_string()
        ),
    )
    .unwrap();
    Config::load_with_env(Some(&file), Some(Default::default())).unwrap()
}

async fn start(cfg: Config) -> (RunningServer, CertifierClient<Channel>) {
    let server = smoothcert::server::start(cfg).await.unwrap();
    server.ready().await.unwrap();
    let client = CertifierClient::connect(format!("http://{}", server.grpc_addr))
        .await
        .unwrap();
    (server, client)
}

fn test_images(count: usize) -> (Vec<Vec<f32>>, Vec<i64>) {
    let ds = data::load(
        DatasetKind::FashionMnist,
        &DatasetKind::FashionMnist.default_dir(),
        Split::Test,
    )
    .unwrap();
    (
        (0..count).map(|i| ds.image(i).to_vec()).collect(),
        ds.labels[..count].to_vec(),
    )
}

fn tensor(pixels: &[f32], shape: &[u32]) -> pb::certify_request::Input {
    pb::certify_request::Input::Tensor(pb::Tensor {
        shape: shape.to_vec(),
        data: pixels.iter().flat_map(|p| p.to_le_bytes()).collect(),
    })
}

fn png(pixels: &[f32]) -> Vec<u8> {
    let bytes: Vec<u8> = pixels.iter().map(|p| (p * 255.0).round() as u8).collect();
    let img = image::GrayImage::from_raw(28, 28, bytes).unwrap();
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn request(input: pb::certify_request::Input, options: pb::CertifyOptions) -> pb::CertifyRequest {
    pb::CertifyRequest {
        model: String::new(),
        input: Some(input),
        options: Some(options),
        request_id: String::new(),
    }
}

fn sigma_phi_inv(sigma: f64, p: f64) -> f64 {
    sigma * Normal::new(0.0, 1.0).unwrap().inverse_cdf(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certifies_real_test_images_with_both_methods() {
    let (server, mut client) = start(config("")).await;
    let models = client
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    assert_eq!(models.len(), 1);
    let info = &models[0];
    assert!(info.is_default && info.has_surrogate);
    assert_eq!(info.input_shape, vec![1, 28, 28]);
    assert_eq!(info.classes.len(), 10);
    assert_eq!(info.nominal_n, 100_000);
    let sigma = info.sigma;

    let (images, labels) = test_images(12);
    let mut correct = 0;
    for (i, (pixels, &label)) in images.iter().zip(&labels).enumerate() {
        // Alternate the two input forms; both must decode to the same pixels.
        let input = if i % 2 == 0 {
            tensor(pixels, &[1, 28, 28])
        } else {
            pb::certify_request::Input::Image(png(pixels))
        };
        let r = client
            .certify(request(input, pb::CertifyOptions::default()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.method, pb::Method::Surrogate as i32, "the default method");
        let params = r.parameters.unwrap();
        assert_eq!((params.n0, params.n, params.alpha), (100, 100_000, 0.001));
        assert_eq!(params.sigma, sigma);
        match r.outcome.unwrap() {
            pb::certify_response::Outcome::Certified(c) => {
                assert!(c.estimate, "a surrogate radius is flagged as an estimate");
                assert_eq!(c.norm, "L2");
                assert_eq!(c.label, info.classes[c.class_index as usize]);
                assert!((c.radius - sigma_phi_inv(sigma, c.p_a_lower)).abs() < 1e-9);
                correct += usize::from(i64::from(c.class_index) == label);
            }
            pb::certify_response::Outcome::Abstain(a) => {
                assert_ne!(a.reason, pb::AbstainReason::Unspecified as i32);
            }
        }
    }
    assert!(correct >= 9, "{correct}/12 certified and correct");

    // Monte Carlo at a small n: a certificate whose bound is Clopper-Pearson's.
    let seeded = pb::CertifyOptions {
        method: pb::Method::MonteCarlo as i32,
        n: Some(2000),
        seed: Some(42),
        ..Default::default()
    };
    let mc = client
        .certify(request(tensor(&images[0], &[28, 28]), seeded))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mc.method, pb::Method::MonteCarlo as i32);
    let Some(pb::certify_response::Outcome::Certified(c)) = mc.outcome.clone() else {
        panic!("image 0 should be certified: {mc:?}");
    };
    assert!(!c.estimate);
    // Exact one-sided Clopper-Pearson lower bound: the Beta(k, n - k + 1) quantile at alpha.
    let beta = statrs::distribution::Beta::new(c.count_a as f64, (2000 - c.count_a + 1) as f64);
    if c.count_a < 2000 {
        let expected = beta.unwrap().inverse_cdf(0.001);
        assert!(
            (c.p_a_lower - expected).abs() < 1e-6,
            "{} vs {expected}",
            c.p_a_lower
        );
    } else {
        assert!((c.p_a_lower - 0.001f64.powf(1.0 / 2000.0)).abs() < 1e-12);
    }
    // The same seed gives the same answer.
    let again = client
        .certify(request(tensor(&images[0], &[1, 1, 28, 28]), seeded))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.outcome, mc.outcome);

    // PREDICT on the same image.
    let p = client
        .predict(pb::PredictRequest {
            model: String::new(),
            input: Some(pb::predict_request::Input::Tensor(pb::Tensor {
                shape: vec![1, 28, 28],
                data: images[0].iter().flat_map(|p| p.to_le_bytes()).collect(),
            })),
            options: Some(pb::PredictOptions {
                n: Some(1000),
                alpha: Some(0.001),
                seed: Some(1),
            }),
            request_id: "p1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.request_id, "p1");
    assert!(p.count_a >= p.count_b && p.count_a + p.count_b <= 1000);
    server.shutdown();
    server.wait().await.unwrap();
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
            "image",
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
    ];
    for (what, req, code, needle) in cases {
        let status = client.certify(req).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{what}: {:?} lacks {needle:?}",
            status.message()
        );
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

/// Fetches `/metrics` over plain HTTP/1.1.
async fn scrape(server: &RunningServer) -> String {
    http_get(server.metrics_addr, "/metrics").await.1
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Parses the exposition text strictly (every sample line is `name{labels} value`)
/// and sums the samples of one metric.
fn metric_sum(text: &str, name: &str) -> f64 {
    let mut sum = 0.0;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let metric = series.split('{').next().unwrap();
        assert!(
            metric
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name in {line:?}"
        );
        if metric == name {
            sum += value;
        }
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_are_batched_and_answered_correctly() {
    let (server, client) = start(config(
        "[batching]\nmax_batch_requests = 16\nmax_queue_delay_ms = 20\n",
    ))
    .await;
    let (images, _) = test_images(48);
    // Each image alone first (sequential: batches of one), seeded...
    let mut alone = Vec::new();
    for img in &images {
        let opts = pb::CertifyOptions {
            seed: Some(7),
            ..Default::default()
        };
        let r = client
            .clone()
            .certify(request(tensor(img, &[1, 28, 28]), opts))
            .await
            .unwrap();
        alone.push(r.into_inner());
    }
    // ...then all at once: the same answers, in shared batches.
    let handles: Vec<_> = images
        .iter()
        .map(|img| {
            let mut c = client.clone();
            let req = request(
                tensor(img, &[1, 28, 28]),
                pb::CertifyOptions {
                    seed: Some(7),
                    ..Default::default()
                },
            );
            tokio::spawn(async move { c.certify(req).await.map(|r| r.into_inner()) })
        })
        .collect();
    let mut max_batch = 0;
    for (h, a) in handles.into_iter().zip(&alone) {
        let r = h.await.unwrap().unwrap();
        // The same noise, so the same class and (up to a float difference in
        // the surrogate's batched logits) the same count.
        use pb::certify_response::Outcome::*;
        match (r.outcome.unwrap(), a.outcome.clone().unwrap()) {
            (Certified(x), Certified(y)) => {
                assert_eq!(x.class_index, y.class_index);
                assert!(x.count_a.abs_diff(y.count_a) <= 2, "{x:?} vs {y:?}");
            }
            (Abstain(x), Abstain(y)) => {
                assert_eq!((x.reason, x.class_index), (y.reason, y.class_index))
            }
            (x, y) => panic!("batching changed a seeded answer: {x:?} vs {y:?}"),
        }
        max_batch = max_batch.max(r.timing.unwrap().batch_size);
    }
    assert!(max_batch > 1, "no request shared a batch");
    let text = scrape(&server).await;
    let count = metric_sum(&text, "smoothcert_batch_size_count");
    let sum = metric_sum(&text, "smoothcert_batch_size_sum");
    assert!(sum / count > 1.0, "mean batch size {}", sum / count);
    assert!(metric_sum(&text, "smoothcert_forward_passes_total") >= 96.0 * 100.0);
    assert_eq!(metric_sum(&text, "smoothcert_models_loaded"), 1.0);
    assert!(text.contains("code=\"OK\""));
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_answers_every_request_and_reports_bad_ones_inline() {
    let (server, mut client) = start(config("")).await;
    let (images, _) = test_images(6);
    let mut reqs: Vec<pb::CertifyRequest> = images
        .iter()
        .enumerate()
        .map(|(i, img)| pb::CertifyRequest {
            request_id: format!("r{i}"),
            ..request(tensor(img, &[1, 28, 28]), pb::CertifyOptions::default())
        })
        .collect();
    reqs[3].input = Some(tensor(&images[3], &[5]));
    let mut stream = client
        .certify_stream(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(item) = stream.message().await.unwrap() {
        assert_eq!(item.request_id, format!("r{}", item.index));
        match item.result.unwrap() {
            pb::certify_stream_response::Result::Response(r) => {
                assert_ne!(item.index, 3);
                assert_eq!(r.request_id, item.request_id);
            }
            pb::certify_stream_response::Result::Error(e) => {
                assert_eq!(item.index, 3);
                assert_eq!(e.code, Code::InvalidArgument as i32);
            }
        }
        seen.push(item.index);
    }
    seen.sort();
    assert_eq!(seen, (0..6).collect::<Vec<_>>());
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_probes_answer() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let (server, _client) = start(config("")).await;
    let channel = Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in [
        "",
        "smoothcert.v1.Certifier",
        "smoothcert.v1.Certifier/fashion-mnist-sigma0.25",
    ] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "smoothcert.v1.Certifier/none".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    // Reflection v1 and v1alpha list the services, so grpcurl needs no proto file.
    {
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        let mut refl = ServerReflectionClient::new(channel.clone());
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut resp = refl
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            resp.message().await.unwrap().unwrap().message_response
        else {
            panic!("no service list");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(
            names.contains(&"smoothcert.v1.Certifier".to_string()),
            "{names:?}"
        );
        assert!(
            names.contains(&"grpc.health.v1.Health".to_string()),
            "{names:?}"
        );
    }
    {
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        let mut refl = ServerReflectionClient::new(channel);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "smoothcert.v1.Certifier".into(),
            )),
        };
        let mut resp = refl
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let msg = resp.message().await.unwrap().unwrap().message_response;
        assert!(
            matches!(msg, Some(MessageResponse::FileDescriptorResponse(f)) if !f.file_descriptor_proto.is_empty())
        );
    }
    assert_eq!(http_get(server.metrics_addr, "/healthz").await.0, 200);
    assert_eq!(http_get(server.metrics_addr, "/readyz").await.0, 200);
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_work_then_refuses() {
    let (server, client) = start(config("")).await;
    let (images, _) = test_images(1);
    // A few seconds of Monte Carlo work on a CPU.
    let opts = pb::CertifyOptions {
        method: pb::Method::MonteCarlo as i32,
        n: Some(40_000),
        ..Default::default()
    };
    let mut c = client.clone();
    let req = request(tensor(&images[0], &[1, 28, 28]), opts);
    let in_flight = tokio::spawn(async move { c.certify(req).await });
    // A stream that stays open: shutdown must end it, not wait for it.
    let (stream_tx, stream_rx) = tokio::sync::mpsc::channel(4);
    stream_tx
        .send(request(
            tensor(&images[0], &[1, 28, 28]),
            pb::CertifyOptions::default(),
        ))
        .await
        .unwrap();
    let mut responses = client
        .clone()
        .certify_stream(tokio_stream::wrappers::ReceiverStream::new(stream_rx))
        .await
        .unwrap()
        .into_inner();
    assert!(responses.message().await.unwrap().is_some());
    // Shut down once the Monte Carlo request is running (the stream's
    // surrogate batch is the first batch, the Monte Carlo one the second).
    let started = std::time::Instant::now();
    while metric_sum(&scrape(&server).await, "smoothcert_batch_size_count") < 2.0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the request never ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let late = client
        .clone()
        .certify(request(
            tensor(&images[0], &[1, 28, 28]),
            pb::CertifyOptions::default(),
        ))
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::Unavailable, "{late:?}");
    // Draining: load balancers and probes see not-ready while the work finishes.
    assert_eq!(http_get(server.metrics_addr, "/readyz").await.0, 503);
    let channel = Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    );
    let answer = in_flight
        .await
        .unwrap()
        .expect("in-flight request finished");
    assert_eq!(answer.into_inner().method, pb::Method::MonteCarlo as i32);
    assert!(
        responses.message().await.unwrap().is_none(),
        "the stream ended"
    );
    drop(stream_tx);
    tokio::time::timeout(Duration::from_secs(30), server.wait())
        .await
        .expect("server stopped")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_guards_the_certifier_but_not_health() {
    let (server, mut client) = start(config("auth_token = \"s3cret\"")).await;
    let (images, _) = test_images(1);
    let status = client
        .certify(request(
            tensor(&images[0], &[1, 28, 28]),
            pb::CertifyOptions::default(),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut req = tonic::Request::new(request(
        tensor(&images[0], &[1, 28, 28]),
        pb::CertifyOptions::default(),
    ));
    req.metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    client.certify(req).await.unwrap();
    let channel = Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    server.shutdown();
    server.wait().await.unwrap();
}

/// A client that is not ours: Python's grpcio, with stubs compiled from the
/// proto at run time (clients/python/smoothcert_client.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_gets_certificates() {
    let python = std::env::var("SMOOTHCERT_PYTHON")
        .expect("SMOOTHCERT_PYTHON is unset: run scripts/setup.sh (it installs grpcio)");
    let (server, _client) = start(config("")).await;
    let (images, labels) = test_images(2);
    let dir = tempfile::tempdir().unwrap();
    let png_path = dir.path().join("x.png");
    std::fs::write(&png_path, png(&images[0])).unwrap();
    let raw_path = dir.path().join("x.f32");
    std::fs::write(
        &raw_path,
        images[1]
            .iter()
            .flat_map(|p| p.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let addr = server.grpc_addr.to_string();
    let script = |name: &str| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("clients/python")
            .join(name)
            .display()
            .to_string()
    };
    // One Python process per call, off the runtime's threads.
    let python_run = move |args: Vec<String>| {
        let python = python.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(python)
                .args(args)
                .output()
                .unwrap()
        })
    };
    let client = script("smoothcert_client.py");
    let run = |args: &[&str]| {
        let mut argv = vec![client.clone(), "--addr".into(), addr.clone()];
        argv.extend(args.iter().map(|a| a.to_string()));
        python_run(argv)
    };
    let json_of = |out: &std::process::Output| -> serde_json::Value {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };

    let list = json_of(&run(&["list"]).await.unwrap());
    assert_eq!(list["models"][0]["name"], "fashion-mnist-sigma0.25");

    let r = json_of(
        &run(&["certify", "--image", png_path.to_str().unwrap()])
            .await
            .unwrap(),
    );
    assert_eq!(r["method"], "SURROGATE");
    assert_eq!(r["certified"]["class_index"], labels[0]);
    assert_eq!(r["certified"]["estimate"], true);

    let r = json_of(
        &run(&[
            "certify",
            "--tensor",
            raw_path.to_str().unwrap(),
            "--method",
            "MONTE_CARLO",
            "--n",
            "1000",
            "--seed",
            "3",
        ])
        .await
        .unwrap(),
    );
    assert_eq!(r["method"], "MONTE_CARLO");
    assert_eq!(
        r["parameters"]["n"], "1000",
        "proto3 JSON writes uint64 as a string"
    );

    let out = run(&[
        "certify",
        "--tensor",
        raw_path.to_str().unwrap(),
        "--shape",
        "28,27",
    ])
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("INVALID_ARGUMENT: tensor.shape"));

    // The grpcurl stand-in: no proto file, every type learnt by reflection,
    // grpcurl's arguments and JSON mapping.
    let tool = script("grpc_json.py");
    let grpc_json = |data: Option<&str>, target: &[&str]| {
        let mut argv = vec![tool.clone(), "-plaintext".into()];
        if let Some(d) = data {
            argv.extend(["-d".to_string(), d.to_string()]);
        }
        argv.push(addr.clone());
        argv.extend(target.iter().map(|a| a.to_string()));
        python_run(argv)
    };
    let out = grpc_json(None, &["list"]).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        listed.lines().any(|l| l == "smoothcert.v1.Certifier"),
        "{listed}"
    );
    let body = format!(
        "{{\"image\": \"{}\"}}",
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&png_path).unwrap())
    );
    let r = json_of(
        &grpc_json(Some(&body), &["smoothcert.v1.Certifier/Certify"])
            .await
            .unwrap(),
    );
    assert_eq!(r["method"], "SURROGATE");
    assert_eq!(
        r["certified"]["classIndex"], labels[0],
        "grpcurl's camelCase names"
    );
    let out = grpc_json(
        Some("{\"options\": {\"n0\": 0}}"),
        &["smoothcert.v1.Certifier/Certify"],
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Code: InvalidArgument"));
    server.shutdown();
    server.wait().await.unwrap();
}

/// gRPC over TLS (rustls) with the configured certificate and key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_over_tls() {
    use tonic::transport::{Certificate, ClientTlsConfig};
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let server = smoothcert::server::start(config(&format!(
        "tls_cert = {:?}\ntls_key = {:?}",
        cert_path.display().to_string(),
        key_path.display().to_string()
    )))
    .await
    .unwrap();
    server.ready().await.unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(cert.pem()))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{}", server.grpc_addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let models = CertifierClient::new(channel)
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(models.models.len(), 1);
    // A plaintext client gets nowhere.
    let plain = CertifierClient::connect(format!("http://{}", server.grpc_addr)).await;
    if let Ok(mut c) = plain {
        assert!(c.list_models(pb::ListModelsRequest {}).await.is_err());
    }
    server.shutdown();
    server.wait().await.unwrap();
}

/// A copy of the shipped bundle with the given calibration (None: none).
/// Tests calibrate at a small n so that Monte Carlo fallbacks stay cheap; q is
/// set by hand here (`calibrate` is tested on its own): the server only has
/// to apply it.
fn bundle_copy(root: &std::path::Path, name: &str, calibration: Option<(f64, u64)>) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(bundle_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    let mut b = smoothcert::model::Bundle::load(&dir).unwrap();
    b.surrogate.as_mut().unwrap().calibration =
        calibration.map(|(q, n)| smoothcert::model::Calibration {
            delta: 0.05,
            score: smoothcert::smoothing::ConformalScore::PGap,
            q,
            m: 200,
            rank: 191,
            n,
            n0: 100,
            split: Split::Test,
            inputs_file: "calibration_inputs.json".into(),
            seed: 0,
        });
    b.save().unwrap();
    dir
}

fn config_for(models: &[(&str, &std::path::Path, &str)]) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    let mut text =
        "[server]\ngrpc_addr = \"127.0.0.1:0\"\nmetrics_addr = \"127.0.0.1:0\"\n".to_string();
    for (name, bundle, extra) in models {
        text.push_str(&format!(
            "[[models]]\nname = {name:?}\nbundle = {:?}\ndevice = \"cpu\"\n{extra}\n",
            bundle.display().to_string()
        ));
    }
    std::fs::write(&file, text).unwrap();
    Config::load_with_env(Some(&file), Some(Default::default())).unwrap()
}

fn certified(r: &pb::CertifyResponse) -> &pb::Certified {
    match r.outcome.as_ref().unwrap() {
        pb::certify_response::Outcome::Certified(c) => c,
        other => panic!("expected a certificate: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calibrated_auto_and_adaptive_n0_over_grpc() {
    let root = tempfile::tempdir().unwrap();
    let (q, n) = (0.004, 2_000);
    let cal = bundle_copy(root.path(), "calibrated", Some((q, n)));
    let uncalibrated = bundle_copy(root.path(), "uncalibrated", None);
    let (server, mut client) = start(config_for(&[
        ("cal", &cal, ""),
        (
            "always-mc",
            &cal,
            "auto_band_low = 0.0\nauto_band_high = 1.0",
        ),
        ("plain", &uncalibrated, ""),
    ]))
    .await;
    let models = client
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    let info = models.iter().find(|m| m.name == "cal").unwrap();
    assert!(info.calibrated && info.delta == 0.05);
    let (images, _) = test_images(1);
    let ask =
        |model: &str, method: pb::Method, n: u64, extra: pb::CertifyOptions| pb::CertifyRequest {
            model: model.into(),
            input: Some(tensor(&images[0], &[1, 28, 28])),
            options: Some(pb::CertifyOptions {
                method: method as i32,
                n: Some(n),
                seed: Some(7),
                ..extra
            }),
            request_id: String::new(),
        };

    // CALIBRATED is the surrogate's count less N q, at the same seed (cA alike).
    let plain = client
        .certify(ask("cal", pb::Method::Surrogate, n, Default::default()))
        .await
        .unwrap()
        .into_inner();
    let calibrated = client
        .certify(ask("cal", pb::Method::Calibrated, n, Default::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(calibrated.method, pb::Method::Calibrated as i32);
    assert_eq!(calibrated.requested_method, pb::Method::Calibrated as i32);
    let p = calibrated.parameters.as_ref().unwrap();
    assert_eq!(
        (p.delta, p.calibration_q, p.n0_drawn, p.adaptive_n0),
        (0.05, q, 100, false)
    );
    assert_eq!(p.calibration_score, "p_gap");
    assert_eq!(plain.parameters.as_ref().unwrap().delta, 0.0);
    let (c, s) = (certified(&calibrated), certified(&plain));
    assert!(c.estimate && c.class_index == s.class_index);
    let expected = s.count_a as f64 - q * n as f64;
    assert!(
        (c.count_a as f64 - expected).abs() <= 1.0,
        "{} vs {expected}",
        c.count_a
    );
    let cp = statrs::distribution::Beta::new(c.count_a as f64, (n - c.count_a + 1) as f64)
        .unwrap()
        .inverse_cdf(0.001);
    assert!((c.p_a_lower - cp).abs() < 1e-6);

    // Another n, n0 or selection rule would void the stated delta; a model
    // without calibration refuses.
    for (n0, adaptive, field) in [
        (Some(50), None, "options.n0"),
        (None, Some(true), "options.adaptive_n0"),
    ] {
        let extra = pb::CertifyOptions {
            n0,
            adaptive_n0: adaptive,
            ..Default::default()
        };
        let err = client
            .certify(ask("cal", pb::Method::Calibrated, n, extra))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains(field), "{}", err.message());
    }
    for (model, method, n, field) in [
        ("cal", pb::Method::Calibrated, 3_000, "options.n"),
        ("cal", pb::Method::Auto, 3_000, "options.n"),
        ("plain", pb::Method::Calibrated, 100_000, "options.method"),
        ("plain", pb::Method::Auto, 100_000, "options.method"),
    ] {
        let err = client
            .certify(ask(model, method, n, Default::default()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{model} {method:?}");
        assert!(err.message().contains(field), "{}", err.message());
    }

    // AUTO: a decisive calibrated estimate answers; with a band over all of
    // [0, 1] the Monte Carlo lane answers, with the estimate's cA.
    let auto = client
        .certify(ask("cal", pb::Method::Auto, n, Default::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(auto.method, pb::Method::Calibrated as i32);
    assert_eq!(auto.requested_method, pb::Method::Auto as i32);
    assert_eq!(certified(&auto).count_a, c.count_a);
    let fallback = client
        .certify(ask("always-mc", pb::Method::Auto, n, Default::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fallback.method, pb::Method::MonteCarlo as i32);
    assert_eq!(fallback.requested_method, pb::Method::Auto as i32);
    let f = certified(&fallback);
    assert!(!f.estimate && f.class_index == c.class_index);
    assert_eq!(fallback.parameters.as_ref().unwrap().delta, 0.0);
    let cp = statrs::distribution::Beta::new(f.count_a as f64, (n - f.count_a + 1) as f64)
        .map(|b| b.inverse_cdf(0.001))
        .unwrap_or(0.001f64.powf(1.0 / n as f64));
    assert!((f.p_a_lower - cp).abs() < 1e-6, "{} vs {cp}", f.p_a_lower);
    let text = scrape(&server).await;
    let paths: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("smoothcert_auto_path"))
        .collect();
    assert!(
        paths.iter().any(|l| l.contains("model=\"cal\"")
            && l.contains("path=\"calibrated\"")
            && l.ends_with(" 1")),
        "{paths:?}"
    );
    assert!(
        paths.iter().any(|l| l.contains("model=\"always-mc\"")
            && l.contains("path=\"monte_carlo\"")
            && l.ends_with(" 1")),
        "{paths:?}"
    );

    // Adaptive n0 on a confident image stops early, and says so.
    let adaptive = client
        .certify(ask(
            "cal",
            pb::Method::Surrogate,
            n,
            pb::CertifyOptions {
                adaptive_n0: Some(true),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let p = adaptive.parameters.as_ref().unwrap();
    assert!(
        p.adaptive_n0 && p.n0_drawn >= 10 && p.n0_drawn < 100,
        "{p:?}"
    );
    assert_eq!(certified(&adaptive).class_index, s.class_index);
    server.shutdown();
    server.wait().await.unwrap();
}
