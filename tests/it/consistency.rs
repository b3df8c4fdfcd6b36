//! One engine: offline `certify` and a served request with the same seed and
//! options give the same counts and radius, for every method that both run.

use crate::common::bundle_dir;
use smoothcert::config::Config;
use smoothcert::data::{self, DatasetKind, Split};
use smoothcert::engine::{input_seed, AutoBand, CertifyParams, Method};
use smoothcert::methods::Target;
use smoothcert::model::forward_batch_for;
use smoothcert::pipeline::certify::{certify, CertifyOptions};
use smoothcert::pipeline::tsv::read_tsv;
use smoothcert::server::pb;
use smoothcert::server::pb::certifier_client::CertifierClient;
use tch::Device;

fn server_config() -> Config {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\ngrpc_addr = \"127.0.0.1:0\"\nmetrics_addr = \"127.0.0.1:0\"\n\
             [batching]\nmax_batch_requests = 8\n\
             [[models]]\nbundle = {:?}\ndevice = \"cpu\"\n",
            bundle_dir().display().to_string()
        ),
    )
    .unwrap();
    Config::load_with_env(Some(&file), Some(Default::default())).unwrap()
}

const SEED: u64 = 20_261_130;
/// SEQUENTIAL's target: within reach of n = 10,000 for confident inputs,
/// after a few thousand samples for most (so stages span several slices).
const TARGET: f64 = 0.6;
const PARAMS: CertifyParams = CertifyParams {
    n0: 64,
    n: 10_000,
    alpha: 0.001,
    // Offline and served forward batches differ on purpose: noise comes in
    // seeded blocks, so the batch must not change an answer; and so do the
    // sequential stage slices (8,000 samples offline, 4,096 served).
    batch: 2_000,
};

/// Offline `certify` of test images 0, 1000, 2000 and 3000.
fn offline(
    method: Method,
    target: Option<f64>,
    dir: &std::path::Path,
) -> Vec<smoothcert::pipeline::tsv::CertRow> {
    let out = dir.join(format!("{method}.tsv"));
    certify(&CertifyOptions {
        bundle: bundle_dir(),
        method,
        split: Split::Test,
        data_dir: None,
        offset: 0,
        skip: 1000,
        max: Some(4),
        params: PARAMS,
        seed: SEED,
        adaptive_n0: None,
        auto_band: AutoBand {
            low: 0.2,
            high: 0.5,
        },
        target: target.map(|radius| Target {
            radius,
            guided: true,
        }),
        device: Device::Cpu,
        out: out.clone(),
        show_progress: false,
    })
    .unwrap();
    read_tsv(&out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_certify_and_served_requests_agree_row_for_row() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().to_path_buf();
    let (offline_mc, offline_sur, offline_seq) = tokio::task::spawn_blocking(move || {
        (
            offline(Method::MonteCarlo, None, &dir),
            offline(Method::Surrogate, None, &dir),
            offline(Method::Sequential, Some(TARGET), &dir),
        )
    })
    .await
    .unwrap();
    let params = PARAMS;
    assert_eq!(offline_mc.len(), 4);
    assert_eq!(offline_sur.len(), 4);
    assert_eq!(offline_seq.len(), 4);
    assert!(
        offline_seq.iter().any(|r| r.n > 4_096),
        "some sequential run must span slices: {offline_seq:?}"
    );

    let cfg = server_config();
    assert_ne!(
        forward_batch_for(Device::Cpu, cfg.batching.forward_batch, [1, 28, 28]),
        params.batch,
        "the served forward batch should differ from the offline one"
    );
    let server = smoothcert::server::start(cfg).await.unwrap();
    server.ready().await.unwrap();
    let mut client = CertifierClient::connect(format!("http://{}", server.grpc_addr))
        .await
        .unwrap();
    let ds = data::load(
        DatasetKind::FashionMnist,
        &DatasetKind::FashionMnist.default_dir(),
        Split::Test,
    )
    .unwrap();
    for (rows, method) in [
        (&offline_mc, pb::Method::MonteCarlo),
        (&offline_sur, pb::Method::Surrogate),
        (&offline_seq, pb::Method::Sequential),
    ] {
        // Concurrently, so that the surrogate requests share batches.
        let mut pending = Vec::new();
        for row in rows.iter() {
            let mut client = client.clone();
            let pixels = ds.image(row.idx).to_vec();
            let seed = input_seed(SEED, row.idx);
            pending.push(tokio::spawn(async move {
                client
                    .certify(pb::CertifyRequest {
                        model: String::new(),
                        input: Some(pb::certify_request::Input::Tensor(pb::Tensor {
                            shape: vec![1, 28, 28],
                            data: pixels.iter().flat_map(|p| p.to_le_bytes()).collect(),
                        })),
                        options: Some(pb::CertifyOptions {
                            method: method as i32,
                            n0: Some(params.n0),
                            n: Some(params.n),
                            alpha: Some(params.alpha),
                            seed: Some(seed),
                            target_radius: (method == pb::Method::Sequential).then_some(TARGET),
                            ..Default::default()
                        }),
                        request_id: String::new(),
                    })
                    .await
                    .unwrap()
                    .into_inner()
            }));
        }
        for (row, reply) in rows.iter().zip(pending) {
            let served = reply.await.unwrap();
            assert_eq!(served.method, method as i32, "{served:?}");
            let p = served.parameters.as_ref().unwrap();
            assert_eq!(p.seed, input_seed(SEED, row.idx));
            let (class, radius, p_a_lower, count_a) = match served.outcome.unwrap() {
                pb::certify_response::Outcome::Certified(c) => {
                    (c.class_index as i64, c.radius, c.p_a_lower, Some(c.count_a))
                }
                pb::certify_response::Outcome::Abstain(a) => (-1, 0.0, a.p_a_lower, None),
            };
            assert_eq!(class, row.predict, "{method:?} test image {}", row.idx);
            if let Some(count_a) = count_a {
                assert_eq!(count_a, row.count_a, "{method:?} test image {}", row.idx);
            }
            assert!(
                (radius - row.radius).abs() < 2e-6,
                "{method:?} {}: {radius} vs {}",
                row.idx,
                row.radius
            );
            assert!((p_a_lower - row.p_a_lower).abs() < 1e-11);
            assert_eq!(Some(p.n0_drawn), row.n0_drawn);
            if method != pb::Method::Surrogate {
                // The estimation samples drawn: all n, or up to the stopping stage.
                assert_eq!(p.n_drawn, row.n, "{method:?} test image {}", row.idx);
            }
        }
    }
    // Other seeds, other noise: the agreement above is not a coincidence of
    // deterministic inputs.
    let row = &offline_mc[0];
    let other = client
        .certify(pb::CertifyRequest {
            model: String::new(),
            input: Some(pb::certify_request::Input::Tensor(pb::Tensor {
                shape: vec![1, 28, 28],
                data: ds
                    .image(row.idx)
                    .iter()
                    .flat_map(|p| p.to_le_bytes())
                    .collect(),
            })),
            options: Some(pb::CertifyOptions {
                method: pb::Method::MonteCarlo as i32,
                n0: Some(params.n0),
                n: Some(params.n),
                alpha: Some(params.alpha),
                seed: Some(input_seed(SEED, row.idx) ^ 1),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let other_p = match other.outcome.unwrap() {
        pb::certify_response::Outcome::Certified(c) => c.p_a_lower,
        pb::certify_response::Outcome::Abstain(a) => a.p_a_lower,
    };
    // Unless every sample agreed, another seed moves the count and the bound.
    if row.count_a < params.n {
        assert_ne!(other_p, row.p_a_lower);
    }
    server.shutdown();
    server.wait().await.unwrap();
}
