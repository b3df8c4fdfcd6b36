//! The server's one lifecycle, end to end: readiness and health never say
//! ready once draining has begun, a stream lives as long as its client
//! wants, and the grace period ends what is still running.
use crate::common;

use crate::common::{bundle_dir, start, tensor, test_images, try_http_get};
use smoothcert::config::Config;
use smoothcert::server::{pb, Phase};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Unlike `common::config`, no grace period unless `toml_extra` sets one.
/// A configuration on ephemeral ports; `toml_extra` continues the `[server]` table.
fn config(toml_extra: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\ngrpc_addr = \"127.0.0.1:0\"\nmetrics_addr = \"127.0.0.1:0\"\n{toml_extra}\n\
             [[models]]\nbundle = {:?}\ndevice = \"cpu\"\n",
            bundle_dir().display().to_string()
        ),
    )
    .unwrap();
    Config::load_with_env(Some(&file), Some(Default::default())).unwrap()
}

/// Test image 0 with the given method and n, seed 1.
fn request(method: pb::Method, n: Option<u64>) -> pb::CertifyRequest {
    let (images, _) = test_images(1);
    common::request(
        tensor(&images[0], &[1, 28, 28]),
        pb::CertifyOptions {
            method: method as i32,
            n,
            seed: Some(1),
            ..Default::default()
        },
    )
}

/// The status of `/readyz`; 0 when the port is closed: not ready either.
async fn readyz(addr: std::net::SocketAddr) -> u16 {
    try_http_get(addr, "/readyz")
        .await
        .map_or(0, |(status, _)| status)
}

/// With `request_timeout_ms = 2000`, a stream opened and left idle for 3 s
/// still gets certificates: each request's timeout starts when it is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_request_sent_after_the_request_timeout_gets_its_certificate() {
    let (server, mut client) = start(config("[limits]\nrequest_timeout_ms = 2000")).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers = client
        .certify_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_secs(3)).await;
    tx.send(request(pb::Method::Surrogate, None)).await.unwrap();
    let answer = answers.message().await.unwrap().expect("an answer");
    match answer.result.unwrap() {
        pb::certify_stream_response::Result::Response(r) => {
            assert!(matches!(
                r.outcome,
                Some(pb::certify_response::Outcome::Certified(_))
            ));
        }
        pb::certify_stream_response::Result::Error(e) => panic!("{e:?}"),
    }
    // The server's timeout still bounds each request: 2 s of Monte Carlo
    // work on 1 M samples is cut off with DEADLINE_EXCEEDED, inline.
    tx.send(request(pb::Method::MonteCarlo, Some(1_000_000)))
        .await
        .unwrap();
    let answer = answers.message().await.unwrap().expect("an answer");
    match answer.result.unwrap() {
        pb::certify_stream_response::Result::Error(e) => {
            assert_eq!(e.code, Code::DeadlineExceeded as i32, "{e:?}")
        }
        other => panic!("{other:?}"),
    }
    drop(tx);
    assert!(answers.message().await.unwrap().is_none());
    server.shutdown();
    server.wait().await.unwrap();
}

/// Probes polled throughout a shutdown: once the phase is Draining (read
/// before the probe is sent), neither `/readyz` nor health ever says ready.
/// The stream cut short by the drain ends with UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_never_returns_once_draining_has_begun() {
    // A grace period far beyond the in-flight request's few seconds, even on
    // a loaded 2-core machine running other tests beside this one.
    let (server, client) = start(config("grace_period_ms = 120000")).await;
    let server = std::sync::Arc::new(server);
    let mut health = HealthClient::new(
        Channel::from_shared(format!("http://{}", server.grpc_addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    // In flight during the drain: a second or two of Monte Carlo work.
    let in_flight = {
        let mut c = client.clone();
        tokio::spawn(async move {
            c.certify(request(pb::Method::MonteCarlo, Some(10_000)))
                .await
        })
    };
    let (stream_tx, stream_rx) = tokio::sync::mpsc::channel(4);
    let mut stream = client
        .clone()
        .certify_stream(tokio_stream::wrappers::ReceiverStream::new(stream_rx))
        .await
        .unwrap()
        .into_inner();
    stream_tx
        .send(request(pb::Method::Surrogate, None))
        .await
        .unwrap();
    assert!(stream.message().await.unwrap().is_some());

    let prober = {
        let server = server.clone();
        let mut health = health.clone();
        tokio::spawn(async move {
            let (mut after_drain, mut ready_before) = (0usize, 0usize);
            while server.phase() != Phase::Stopped {
                let phase = server.phase();
                let ready = readyz(server.metrics_addr).await;
                let status = health
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .map(|r| r.into_inner().status);
                if phase >= Phase::Draining {
                    after_drain += 1;
                    assert_ne!(ready, 200, "/readyz said ready in phase {phase:?}");
                    if let Ok(s) = status {
                        assert_eq!(s, ServingStatus::NotServing as i32, "in phase {phase:?}");
                    }
                } else if ready == 200 {
                    ready_before += 1;
                }
            }
            (after_drain, ready_before)
        })
    };
    // The Monte Carlo request may finish in well under a second on a fast
    // machine, and a drain with nothing in flight ends at once, closing the
    // listener before the checks below connect. So the test holds one
    // admission of its own until they are done.
    let held = server
        .shared
        .lifecycle
        .admit()
        .expect("admitted while serving");
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.shutdown();
    // Requests after the drain began are refused at once.
    server.shared.lifecycle.reached(Phase::Draining).await;
    let late = client
        .clone()
        .certify(request(pb::Method::Surrogate, None))
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::Unavailable, "{late:?}");
    let h = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.status, ServingStatus::NotServing as i32);
    // The drained stream says that it was cut short.
    let end = stream.message().await.unwrap_err();
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    drop(held);
    // The request in flight finishes within the grace period.
    let answer = in_flight
        .await
        .unwrap()
        .expect("in-flight request finished");
    assert_eq!(answer.into_inner().method, pb::Method::MonteCarlo as i32);
    drop(stream_tx);
    let (after_drain, ready_before) = prober.await.unwrap();
    assert!(ready_before > 0, "the prober saw the server ready first");
    assert!(after_drain > 0, "the prober ran during the drain");
    let server = std::sync::Arc::into_inner(server).unwrap();
    tokio::time::timeout(Duration::from_secs(30), server.wait())
        .await
        .expect("server stopped")
        .unwrap();
}

/// What the grace period's end does: the request still running is answered
/// UNAVAILABLE, its work dropped, and the server stops promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_ends_what_is_still_running() {
    let (server, mut client) = start(config("grace_period_ms = 500")).await;
    let long = tokio::spawn(async move {
        client
            .certify(request(pb::Method::MonteCarlo, Some(1_000_000)))
            .await
    });
    let metrics = server.metrics_addr;
    // Wait until the request is being worked on.
    let started = Instant::now();
    while server.shared.lifecycle.in_flight() == 0 {
        assert!(started.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stop = Instant::now();
    server.shutdown();
    let err = long.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("grace period"), "{err:?}");
    tokio::time::timeout(Duration::from_secs(10), server.wait())
        .await
        .expect("stopped")
        .unwrap();
    // Grace 0.5 s, then at most a second for connections; the dropped Monte
    // Carlo work stops at its next noise block.
    assert!(
        stop.elapsed() < Duration::from_secs(5),
        "{:?}",
        stop.elapsed()
    );
    assert_eq!(readyz(metrics).await, 0, "the metrics port is closed");
}
