//! Helpers shared by the integration tests that run the gRPC service: a real
//! server on ephemeral loopback ports, the shipped default bundle, real
//! Fashion-MNIST test images, a tonic client, and plain-HTTP probes of the
//! metrics port. Each module uses its own subset.
#![allow(dead_code)]
use smoothcert::config::Config;
use smoothcert::data::{self, DatasetKind, Split};
use smoothcert::server::pb;
use smoothcert::server::pb::certifier_client::CertifierClient;
use smoothcert::server::RunningServer;
use statrs::distribution::{ContinuousCDF, Normal};
use std::path::PathBuf;
use tonic::transport::Channel;

/// The shipped default bundle.
pub fn bundle_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/fashion-mnist-sigma0.25")
}

/// A configuration on ephemeral loopback ports, on the CPU, with overrides.
pub fn config(toml_extra: &str) -> Config {
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

/// Starts a server, waits until it is ready, and connects a client.
pub async fn start(cfg: Config) -> (RunningServer, CertifierClient<Channel>) {
    let server = smoothcert::server::start(cfg).await.unwrap();
    server.ready().await.unwrap();
    let client = CertifierClient::connect(format!("http://{}", server.grpc_addr))
        .await
        .unwrap();
    (server, client)
}

/// The first `count` Fashion-MNIST test images and their labels.
pub fn test_images(count: usize) -> (Vec<Vec<f32>>, Vec<i64>) {
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

/// A raw float32 tensor input of the given shape.
pub fn tensor(pixels: &[f32], shape: &[u32]) -> pb::certify_request::Input {
    pb::certify_request::Input::Tensor(pb::Tensor {
        shape: shape.to_vec(),
        data: pixels.iter().flat_map(|p| p.to_le_bytes()).collect(),
    })
}

/// A 28x28 grayscale image as PNG bytes.
pub fn png(pixels: &[f32]) -> Vec<u8> {
    let bytes: Vec<u8> = pixels.iter().map(|p| (p * 255.0).round() as u8).collect();
    let img = image::GrayImage::from_raw(28, 28, bytes).unwrap();
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A request for the default model.
pub fn request(
    input: pb::certify_request::Input,
    options: pb::CertifyOptions,
) -> pb::CertifyRequest {
    pb::CertifyRequest {
        model: String::new(),
        input: Some(input),
        options: Some(options),
        request_id: String::new(),
    }
}

/// The certified L2 radius sigma Phi^-1(p).
pub fn sigma_phi_inv(sigma: f64, p: f64) -> f64 {
    sigma * Normal::new(0.0, 1.0).unwrap().inverse_cdf(p)
}

/// Fetches `/metrics` over plain HTTP/1.1.
pub async fn scrape(server: &RunningServer) -> String {
    http_get(server.metrics_addr, "/metrics").await.1
}

/// `GET path` over plain HTTP/1.1: the status code (0 if the status line
/// does not parse) and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    try_http_get(addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
}

/// [`http_get`] for a port that may be closed or closing: any I/O error is
/// returned instead of failing the test.
pub async fn try_http_get(
    addr: std::net::SocketAddr,
    path: &str,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Parses the exposition text strictly (every sample line is `name{labels} value`)
/// and sums the samples of one metric.
pub fn metric_sum(text: &str, name: &str) -> f64 {
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

/// A copy of the shipped bundle with the given calibration (None: none).
/// Tests calibrate at a small n so that Monte Carlo fallbacks stay cheap; q is
/// set by hand here (`calibrate` is tested on its own): the server only has
/// to apply it.
pub fn bundle_copy(root: &std::path::Path, name: &str, calibration: Option<(f64, u64)>) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(bundle_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    let mut b = smoothcert::model::Bundle::load(&dir).unwrap();
    b.surrogate.as_mut().unwrap().calibration = calibration.map(|(q, n)| p_gap_calibration(q, n));
    b.save().unwrap();
    dir
}

/// A p_gap calibration set by hand (q at n samples, delta 0.05, 191st of 200),
/// recorded for no particular surrogate file.
pub fn p_gap_calibration(q: f64, n: u64) -> smoothcert::model::Calibration {
    smoothcert::model::Calibration {
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
        rank_rule: Default::default(),
        bins: vec![],
        margin_threshold: None,
        surrogate_fnv1a: None,
    }
}

/// A configuration with the given models: (name, bundle, extra keys).
pub fn config_for(models: &[(&str, &std::path::Path, &str)]) -> Config {
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

/// The certificate of a response that must have one.
pub fn certified(r: &pb::CertifyResponse) -> &pb::Certified {
    match r.outcome.as_ref().unwrap() {
        pb::certify_response::Outcome::Certified(c) => c,
        other => panic!("expected a certificate: {other:?}"),
    }
}

/// Runs the calling test alone in a child process of this test binary, for
/// a test that needs libtorch's global state (its one random generator, its
/// thread count) to itself: in the parent, spawns the child and asserts it
/// passed, then returns false; in the child, returns true (run the body).
/// `name` is the test's path, e.g. "pipeline::train_base_resumes".
pub fn in_own_process(name: &str) -> bool {
    const CHILD: &str = "SMOOTHCERT_TEST_CHILD";
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--test-threads", "1", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{name} failed in its own process:\n{text}"
    );
    // A filter that matched nothing would pass vacuously.
    assert!(text.contains("1 passed"), "{name} did not run:\n{text}");
    false
}
