//! Traces over OTLP, as a collector receives them: `smoothcert serve` in its
//! own process with `[traces] otlp_endpoint` set, and a small OTLP/gRPC
//! receiver written in Python (clients/python/otlp_receiver.py, grpcio and
//! opentelemetry-proto) that writes each span it gets as a JSON line.
//!
//! A span per request (model, method, request id, gRPC status), in the
//! caller's trace when it sent a `traceparent`; a span per batch, in no
//! request's trace, linked to the span of every request it served.

use crate::common::{png, test_images};
use crate::replica::{python, Replica};
use serde_json::Value;
use smoothcert::server::pb;
use smoothcert::server::pb::certifier_client::CertifierClient;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MODEL: &str = "fashion-mnist-sigma0.25";
/// The caller's trace of the request that sends a `traceparent`.
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// clients/python/otlp_receiver.py on a port of its own.
struct Receiver {
    port: u16,
    spans: PathBuf,
    child: Child,
}

impl Receiver {
    fn start(dir: &Path) -> Receiver {
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/python/otlp_receiver.py");
        let (port_file, spans) = (dir.join("otlp.port"), dir.join("spans.jsonl"));
        let child = Command::new(python())
            .arg(script)
            .args(["--port", "0", "--port-file"])
            .arg(&port_file)
            .arg("--out")
            .arg(&spans)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(&port_file) {
                break p.trim().parse().unwrap();
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the OTLP receiver did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Receiver { port, spans, child }
    }

    fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.spans)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn certify(image: &[f32], request_id: &str, model: &str) -> pb::CertifyRequest {
    pb::CertifyRequest {
        model: model.into(),
        input: Some(pb::certify_request::Input::Image(png(image))),
        options: Some(pb::CertifyOptions {
            method: pb::Method::Surrogate as i32,
            seed: Some(7),
            ..Default::default()
        }),
        request_id: request_id.into(),
    }
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_and_batch_spans_reach_an_otlp_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path());
    // A batch closes 50 ms after its first request, so that the concurrent
    // requests below share batches.
    let mut server = Replica::new(
        dir.path(),
        "traced",
        &format!(
            "[traces]\notlp_endpoint = \"http://127.0.0.1:{}\"\nservice_name = \"smoothcert-test\"\n\
             export_delay_ms = 100\n[batching]\nmax_queue_delay_ms = 50\n",
            receiver.port
        ),
    );
    server.start();
    server.ready().await;
    let client = CertifierClient::connect(format!("http://127.0.0.1:{}", server.grpc))
        .await
        .unwrap();
    let (images, _) = test_images(8);
    let ids: Vec<String> = (0..8).map(|i| format!("trace-test-{i}")).collect();
    let calls = images.iter().zip(&ids).enumerate().map(|(i, (image, id))| {
        let mut client = client.clone();
        let mut req = tonic::Request::new(certify(image, id, MODEL));
        if i == 0 {
            req.metadata_mut().insert(
                "traceparent",
                format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")
                    .parse()
                    .unwrap(),
            );
        }
        async move { client.certify(req).await.map(|r| r.into_inner()) }
    });
    for answer in join_all(calls).await {
        answer.expect("certified");
    }
    let failed = client
        .clone()
        .certify(certify(
            &images[0],
            "trace-test-unknown-model",
            "no-such-model",
        ))
        .await
        .unwrap_err();
    assert_eq!(failed.code(), tonic::Code::NotFound);

    // Every request's span, and the batch spans that served them.
    let started = Instant::now();
    let (requests, batches) = loop {
        let spans = receiver.spans();
        let requests: HashMap<String, Value> = spans
            .iter()
            .filter(|s| s["name"] == "certify")
            .map(|s| {
                (
                    attr(s, "request_id").as_str().unwrap().to_string(),
                    s.clone(),
                )
            })
            .collect();
        let batches: Vec<Value> = spans.into_iter().filter(|s| s["name"] == "batch").collect();
        let linked: usize = batches
            .iter()
            .map(|b| b["links"].as_array().unwrap().len())
            .sum();
        if requests.len() == 9 && linked >= 8 {
            break (requests, batches);
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "spans received so far: {} requests, {} batch links\n{}",
            requests.len(),
            linked,
            server.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("request span: {}", requests["trace-test-0"]);
    println!("batch span: {}", batches[0]);

    for id in &ids {
        let span = &requests[id];
        assert_eq!(span["kind"], "SERVER", "{span}");
        assert_eq!(span["service"], "smoothcert-test");
        assert_eq!(attr(span, "model"), MODEL, "{span}");
        assert_eq!(attr(span, "method"), "surrogate", "{span}");
        assert_eq!(attr(span, "rpc.system"), "grpc");
        assert_eq!(attr(span, "rpc.method"), "Certify");
        assert_eq!(attr(span, "rpc.grpc.status_code"), 0, "{span}");
        assert_ne!(span["status"], "ERROR", "{span}");
    }
    // The caller's traceparent made its trace the request's.
    let joined = &requests["trace-test-0"];
    assert_eq!(joined["trace_id"], CALLER_TRACE, "{joined}");
    assert_eq!(joined["parent_span_id"], CALLER_SPAN, "{joined}");
    let own_traces: HashSet<&str> = ids[1..]
        .iter()
        .map(|id| requests[id]["trace_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        own_traces.len(),
        7,
        "each request without a caller trace starts its own"
    );
    for id in &ids[1..] {
        assert_eq!(requests[id]["parent_span_id"], "", "{}", requests[id]);
    }
    // A failed request: its status, and the model name it gave.
    let bad = &requests["trace-test-unknown-model"];
    assert_eq!(bad["status"], "ERROR", "{bad}");
    assert_eq!(
        attr(bad, "rpc.grpc.status_code"),
        tonic::Code::NotFound as i32,
        "{bad}"
    );
    assert_eq!(attr(bad, "model"), "no-such-model", "{bad}");

    // Each batch: in no request's trace, linked to exactly the requests it
    // served (as many as its size), and every request served by one.
    let by_span: HashMap<(&str, &str), &str> = requests
        .iter()
        .map(|(id, s)| {
            (
                (
                    s["trace_id"].as_str().unwrap(),
                    s["span_id"].as_str().unwrap(),
                ),
                id.as_str(),
            )
        })
        .collect();
    let mut served = HashSet::new();
    let mut largest = 0;
    for batch in &batches {
        assert_eq!(batch["parent_span_id"], "", "{batch}");
        assert_eq!(attr(batch, "model"), MODEL);
        assert_eq!(attr(batch, "lane"), "surrogate", "{batch}");
        let links = batch["links"].as_array().unwrap();
        assert_eq!(attr(batch, "batch_size"), links.len(), "{batch}");
        for link in links {
            let key = (
                link["trace_id"].as_str().unwrap(),
                link["span_id"].as_str().unwrap(),
            );
            let id = by_span
                .get(&key)
                .unwrap_or_else(|| panic!("a link to no request span: {link}"));
            assert_ne!(
                batch["trace_id"], link["trace_id"],
                "a batch joined a request's trace"
            );
            served.insert(*id);
        }
        largest = largest.max(links.len());
    }
    let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(served, wanted, "requests served by no batch span");
    assert!(largest >= 2, "no batch served two requests: {batches:?}");
    server.terminate().await;
}

/// A collector that is down costs no request: spans are dropped, answers are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let nobody = crate::replica::free_port();
    let mut server = Replica::new(
        dir.path(),
        "uncollected",
        &format!("[traces]\notlp_endpoint = \"http://127.0.0.1:{nobody}\"\nexport_delay_ms = 50\nexport_timeout_ms = 200\n"),
    );
    server.start();
    server.ready().await;
    let mut client = CertifierClient::connect(format!("http://127.0.0.1:{}", server.grpc))
        .await
        .unwrap();
    let (images, _) = test_images(1);
    for i in 0..20 {
        client
            .certify(certify(&images[0], &format!("down-{i}"), MODEL))
            .await
            .expect("answered with the collector down");
    }
    // And it still stops cleanly (the last export gives up after its timeout).
    let stopping = Instant::now();
    server.terminate().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "shutdown waited on the collector"
    );
}

/// Runs the calls concurrently, each in a task of its own; answers in order.
async fn join_all<F>(calls: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = calls.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
