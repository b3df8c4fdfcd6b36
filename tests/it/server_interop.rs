//! The gRPC service end to end, with clients that are not ours: Python's
//! grpcio (clients/python) and the real grpcurl (scripts/setup.sh installs
//! it), including the README's grpcurl lines run as written.

use crate::common::{config, png, start, test_images};
use base64::Engine;
use std::path::PathBuf;

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

    server.shutdown();
    server.wait().await.unwrap();
}

/// grpcurl, as scripts/setup.sh installs it.
fn grpcurl() -> PathBuf {
    PathBuf::from(
        std::env::var("SMOOTHCERT_GRPCURL")
            .expect("SMOOTHCERT_GRPCURL is unset: run scripts/setup.sh (it installs grpcurl)"),
    )
}

/// Runs grpcurl off the runtime's threads.
async fn run_grpcurl(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(grpcurl())
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// The real grpcurl: no proto file, every type learnt by reflection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_certifies() {
    let (server, _client) = start(config("")).await;
    let (images, labels) = test_images(1);
    let addr = server.grpc_addr.to_string();
    let call = |data: Option<&str>, target: &[&str]| {
        let mut argv = vec!["-plaintext".to_string()];
        if let Some(d) = data {
            argv.extend(["-d".to_string(), d.to_string()]);
        }
        argv.push(addr.clone());
        argv.extend(target.iter().map(|a| a.to_string()));
        run_grpcurl(argv)
    };
    let ok = |out: &std::process::Output| -> String {
        assert!(
            out.status.success(),
            "grpcurl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };

    let listed = ok(&call(None, &["list"]).await);
    for service in [
        "smoothcert.v1.Certifier",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(listed.lines().any(|l| l == service), "{listed}");
    }
    let described = ok(&call(None, &["describe", "smoothcert.v1.CertifyOptions"]).await);
    assert!(described.contains("target_radius"), "{described}");

    let body = format!(
        "{{\"image\": \"{}\"}}",
        base64::engine::general_purpose::STANDARD.encode(png(&images[0]))
    );
    let r: serde_json::Value = serde_json::from_str(&ok(&call(
        Some(&body),
        &["smoothcert.v1.Certifier/Certify"],
    )
    .await))
    .unwrap();
    assert_eq!(r["method"], "SURROGATE");
    assert_eq!(
        r["certified"]["classIndex"], labels[0],
        "grpcurl's camelCase names"
    );

    // A bad request: grpcurl exits 64 + the gRPC code (3, INVALID_ARGUMENT)
    // and prints the service's message, which names the field once.
    let out = call(
        Some("{\"options\": {\"n0\": 0}}"),
        &["smoothcert.v1.Certifier/Certify"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64 + 3), "{stderr}");
    assert!(stderr.contains("Code: InvalidArgument"), "{stderr}");
    assert!(stderr.contains("Message: options.n0: "), "{stderr}");
    server.shutdown();
    server.wait().await.unwrap();
}

/// Every block of the README and docs/ that calls grpcurl, run as written
/// with bash against a live server (the README first, then docs/ by name):
/// only the address and the set-up cache's location are swapped in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_grpcurl_lines_run_as_written() {
    let python = PathBuf::from(std::env::var("SMOOTHCERT_PYTHON").unwrap());
    // $cache/pyclient/bin/python -> $cache
    let cache = python.ancestors().nth(3).unwrap().to_path_buf();
    assert_eq!(
        grpcurl().parent().unwrap(),
        cache.join("bin"),
        "grpcurl is where the README says"
    );
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo.join("docs"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    docs.retain(|p| p.extension().is_some_and(|e| e == "md"));
    docs.sort();
    let pages = std::iter::once(repo.join("README.md")).chain(docs);
    let blocks: Vec<String> = pages
        .flat_map(|page| {
            let text = std::fs::read_to_string(&page).unwrap();
            text.split("```sh\n")
                .skip(1)
                .map(|b| b.split("```").next().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|b| b.lines().any(|l| l.trim_start().starts_with("grpcurl ")))
        .collect();
    assert!(blocks.len() >= 2, "the README's and docs' grpcurl blocks");

    // Both shipped bundles, as the default configuration serves them.
    let uniform = repo.join("models/fashion-mnist-uniform-lambda1.0");
    let (server, _client) = start(config(&format!(
        "default_model = \"fashion-mnist-sigma0.25\"\n[[models]]\nbundle = {:?}\ndevice = \"cpu\"\n",
        uniform.display().to_string()
    )))
    .await;
    let addr = server.grpc_addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    // One shell for all of them, as a reader's: the first block's PATH holds for the next.
    let script = blocks
        .concat()
        .replace("localhost:50051", &addr)
        // The Python client's default address is localhost:50051 too.
        .replace(
            "smoothcert_client.py ",
            &format!("smoothcert_client.py --addr {addr} "),
        )
        .replace("$HOME/.cache/smoothcert", &cache.display().to_string())
        .replace("~/.cache/smoothcert", &cache.display().to_string())
        .replace(
            "clients/python/",
            &format!("{}/clients/python/", repo.display()),
        );
    let cwd = dir.path().to_path_buf();
    let run = script.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("bash")
            .args(["-euo", "pipefail", "-c", &run])
            .current_dir(cwd)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the README's and docs' blocks failed:\n{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let outputs = String::from_utf8_lossy(&out.stdout).to_string();
    for expected in [
        "smoothcert.v1.Certifier",
        "message CertifyRequest",
        "\"method\": \"SURROGATE\"",
        "\"method\": \"MONTE_CARLO\"",
        "\"method\": \"SEQUENTIAL\"",
        "\"status\": \"SERVING\"",
    ] {
        assert!(outputs.contains(expected), "no {expected} in:\n{outputs}");
    }
    server.shutdown();
    server.wait().await.unwrap();
}
