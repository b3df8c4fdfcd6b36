//! The gRPC service end to end, with clients that are not ours: Python's
//! grpcio and the grpcurl stand-in (clients/python).
mod common;

use base64::Engine;
use common::{config, png, start, test_images};
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
