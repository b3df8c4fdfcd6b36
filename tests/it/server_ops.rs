//! The gRPC service end to end, operated: health, reflection and the HTTP
//! probes, shutdown and drain, the bearer token, TLS.

use crate::common::{config, http_get, metric_sum, request, scrape, start, tensor, test_images};
use smoothcert::server::pb;
use smoothcert::server::pb::certifier_client::CertifierClient;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;

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
    // The stream stopped reading at the drain, and says so.
    let end = responses.message().await.unwrap_err();
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
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
